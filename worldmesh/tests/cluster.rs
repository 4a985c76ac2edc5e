//! The whole path, end to end, over real QUIC, real gRPC and real storage: bots log in, walk,
//! see themselves and each other at the tick rate, log out, and come back where they left.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_walk_and_come_back_on_redis_and_postgres() {
    let (backend, persistence) = Backend::tiered().await;
    let cluster = start_cluster(persistence, 2).await;
    walk_and_reconnect(cluster.gateway_addr, "walker", 10).await;
    cluster.stop().await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_walk_and_come_back_on_embedded_storage() {
    let (backend, persistence) = Backend::embedded();
    let cluster = start_cluster(persistence, 2).await;
    walk_and_reconnect(cluster.gateway_addr, "walker", 10).await;
    cluster.stop().await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn characters_survive_a_whole_cluster_restart() {
    let (backend, persistence) = Backend::tiered().await;
    let cluster = start_cluster(persistence.clone(), 2).await;
    let endpoint = endpoint();
    let mut s = worldmesh_load_test::Session::login(&endpoint, cluster.gateway_addr, "restarter").await.unwrap();
    let w = walk(&mut s, 1.0, 1.0).await;
    let end = w.last_self.unwrap();
    // No Bye: the cluster stops under the player, which must still be saved.
    cluster.stop().await;
    drop(s);
    let cluster = start_cluster(persistence, 2).await;
    let again = worldmesh_load_test::Session::login(&endpoint, cluster.gateway_addr, "restarter").await.unwrap();
    assert!(distance((again.welcome.x, again.welcome.y), (end.x, end.y)) < 0.03, "came back at ({}, {}), left at ({}, {})", again.welcome.x, again.welcome.y, end.x, end.y);
    again.bye().await.unwrap();
    cluster.stop().await;
    backend.cleanup().await;
}
