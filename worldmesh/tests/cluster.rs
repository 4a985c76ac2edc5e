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
    let mut s = worldmesh_client::Session::login(&endpoint, cluster.gateway_addr, "restarter")
        .await
        .unwrap();
    let w = walk(&mut s, 1.0, 1.0).await;
    let end = w.last_self.unwrap();
    // No Bye: the cluster stops under the player, which must still be saved.
    cluster.stop().await;
    drop(s);
    let cluster = start_cluster(persistence, 2).await;
    let again = worldmesh_client::Session::login(&endpoint, cluster.gateway_addr, "restarter")
        .await
        .unwrap();
    assert!(
        distance((again.welcome.x, again.welcome.y), (end.x, end.y)) < 0.03,
        "came back at ({}, {}), left at ({}, {})",
        again.welcome.x,
        again.welcome.y,
        end.x,
        end.y
    );
    again.bye().await.unwrap();
    cluster.stop().await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_in_front_of_the_same_zones() {
    let (backend, persistence) = Backend::embedded();
    let mut config = worldmesh::cluster::ClusterConfig::new(persistence);
    config.zones = 2;
    config.gateways = 2;
    worldmesh_runtime::init_logging("worldmesh-test", "warn");
    let cluster = worldmesh::cluster::Cluster::start(config).await.unwrap();
    assert_eq!(cluster.gateway_addrs.len(), 2);
    let endpoint = endpoint();
    let mut sessions = Vec::new();
    for i in 0..6 {
        let gw = cluster.gateway_addrs[i % 2];
        sessions.push(
            worldmesh_client::Session::login(&endpoint, gw, &format!("twogw{i}"))
                .await
                .unwrap(),
        );
    }
    let spawns: Vec<(worldmesh_protocol::EntityId, (f32, f32))> = sessions
        .iter()
        .map(|s| (s.welcome.entity_id, (s.welcome.x, s.welcome.y)))
        .collect();
    let walks = futures_join(sessions.iter_mut().map(|s| walk(s, 0.0, 2.0))).await;
    for (i, w) in walks.iter().enumerate() {
        let rate = w.snapshots as f64 / w.seconds;
        assert!(
            (16.0..=24.0).contains(&rate),
            "bot {i} on gateway {}: {rate:.1} snapshots/s",
            i % 2
        );
        // Neighbours are seen whichever gateway they came through.
        for (id, at) in &spawns {
            if *id != spawns[i].0 && distance(spawns[i].1, *at) < 80.0 {
                assert!(w.others_seen.contains(id), "bot {i} never saw {id}");
            }
        }
    }
    for s in sessions {
        s.bye().await.unwrap();
    }
    cluster.stop().await;
    backend.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_refuse_links_without_the_cluster_secret() {
    let (backend, persistence) = Backend::embedded();
    let cluster = start_cluster(persistence, 1).await;
    // A gateway that does not know the secret: its players cannot be placed in any zone.
    let rogue = worldmesh_gateway::Config {
        name: "rogue".into(),
        coordinator_url: cluster.coordinator_url.clone(),
        persistence_url: cluster.persistence_url.clone(),
        cluster_secret: Some("wrong".into()),
        allow_guests: true,
        ..Default::default()
    };
    let socket = worldmesh_gateway::bind_udp("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
    let rogue_addr = socket.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let rogue_task = tokio::spawn(worldmesh_gateway::run(socket, rogue, stop.clone()));
    let endpoint = endpoint();
    match worldmesh_client::Session::login(&endpoint, rogue_addr, "intruder").await {
        Err(worldmesh_client::ClientError::Kicked { code, .. }) => {
            assert_eq!(code, worldmesh_protocol::ErrorCode::Unavailable);
        }
        Err(e) => panic!("expected a typed kick, got {e}"),
        Ok(_) => panic!("a gateway without the secret placed a player in a zone"),
    }
    // The real gateway still works.
    worldmesh_client::Session::login(&endpoint, cluster.gateway_addr, "legit")
        .await
        .unwrap()
        .bye()
        .await
        .unwrap();
    stop.cancel();
    let _ = rogue_task.await;
    cluster.stop().await;
    backend.cleanup().await;
}

/// One character, two gateways: the newer login wins and the older session is told why,
/// instead of silently losing its character.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_through_another_gateway_takes_the_character_over() {
    let (backend, persistence) = Backend::embedded();
    let mut config = worldmesh::cluster::ClusterConfig::new(persistence);
    config.zones = 1;
    config.gateways = 2;
    let cluster = worldmesh::cluster::Cluster::start(config).await.unwrap();
    let endpoint = endpoint();
    let mut first = worldmesh_client::Session::login(&endpoint, cluster.gateway_addrs[0], "twice")
        .await
        .unwrap();
    let second = worldmesh_client::Session::login(&endpoint, cluster.gateway_addrs[1], "twice")
        .await
        .expect("the newer login gets the character");
    assert_eq!(second.welcome.entity_id, first.welcome.entity_id);
    let kicked = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match first.next_control().await {
                Some(worldmesh_protocol::ServerMessage::Kick(k)) => return Some(k.code),
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await
    .expect("the older session hears about it");
    assert_eq!(
        kicked,
        Some(worldmesh_protocol::ErrorCode::LoggedInElsewhere)
    );
    second.bye().await.unwrap();
    cluster.stop().await;
    backend.cleanup().await;
}

/// A game installed in every zone, played over QUIC: actions answered once each, refusals by
/// reason, reliable events on the stream and unreliable ones as datagrams.
mod game {
    use std::time::{Duration, Instant};

    use worldmesh::cluster::{Cluster, ClusterConfig};
    use worldmesh_client::Session;
    use worldmesh_game::GameRef;
    use worldmesh_game::action::request;
    use worldmesh_game::prelude::*;
    use worldmesh_protocol::{ActionOutcome, ActionRequest, EntityId, GameEvent, ServerMessage};

    use super::common::*;

    #[derive(bincode::Encode, bincode::Decode)]
    struct Poke {
        strength: u8,
    }

    impl Action for Poke {
        const KIND: ActionKind = ActionKind(1);
        const NAME: &'static str = "poke";
        const REACH: Option<f32> = Some(3.0);
        fn apply(self, ctx: &mut ActionCtx<'_>) -> Result<(), ActionRefusal> {
            if self.strength == 0 {
                return Err(ActionRefusal::Rule(1));
            }
            let target = ctx.target.expect("a reach means a target");
            ctx.to_observers(
                target,
                &Poked {
                    strength: self.strength,
                },
            );
            Ok(())
        }
    }

    #[derive(bincode::Encode, bincode::Decode)]
    struct Poked {
        strength: u8,
    }

    impl ServerEvent for Poked {
        const KIND: EventKind = EventKind(1);
        const NAME: &'static str = "poked";
        const DELIVERY: Delivery = Delivery::Reliable;
    }

    #[derive(bincode::Encode, bincode::Decode)]
    struct Wave;

    impl Action for Wave {
        const KIND: ActionKind = ActionKind(2);
        const NAME: &'static str = "wave";
        const REACH: Option<f32> = None;
        fn apply(self, ctx: &mut ActionCtx<'_>) -> Result<(), ActionRefusal> {
            let me = ctx.actor;
            ctx.to_player(me, me, &Waved);
            Ok(())
        }
    }

    #[derive(bincode::Encode)]
    struct Waved;

    impl ServerEvent for Waved {
        const KIND: EventKind = EventKind(2);
        const NAME: &'static str = "waved";
        const DELIVERY: Delivery = Delivery::Unreliable;
    }

    struct Pokes;

    impl Game for Pokes {
        fn name(&self) -> &'static str {
            "pokes"
        }
        fn register(&self, game: &mut GameRegistry) {
            game.action::<Poke>()
                .action::<Wave>()
                .event::<Poked>()
                .event::<Waved>();
        }
    }

    /// Reads snapshots and control messages until `n` answers came, bounded: the answers and
    /// the events seen meanwhile.
    async fn answers(s: &mut Session, n: usize) -> (Vec<ActionOutcome>, Vec<GameEvent>) {
        let (mut done, mut events) = (Vec::new(), Vec::new());
        let deadline = Instant::now() + Duration::from_secs(10);
        while done.len() < n {
            assert!(Instant::now() < deadline, "answers within 10 s: {done:?}");
            let _ = tokio::time::timeout(Duration::from_secs(1), s.recv_snapshot()).await;
            while let Some(m) = s.try_control() {
                match m {
                    ServerMessage::ActionDone(o) => done.push(o),
                    ServerMessage::Event(e) => events.push(e),
                    _ => {}
                }
            }
        }
        // Events of the answering tick follow its answers within the same tick's frames.
        let _ = tokio::time::timeout(Duration::from_millis(200), s.recv_snapshot()).await;
        while let Some(m) = s.try_control() {
            if let ServerMessage::Event(e) = m {
                events.push(e);
            }
        }
        (done, events)
    }

    /// One zone running [`Pokes`], on embedded storage.
    async fn start_with_pokes() -> (Backend, Cluster) {
        let (backend, persistence) = Backend::embedded();
        worldmesh_runtime::init_logging("worldmesh-test", "warn");
        let mut config = ClusterConfig::new(persistence);
        config.zones = 1;
        config.zone.game = GameRef::new(Pokes);
        (
            backend,
            Cluster::start(config).await.expect("cluster starts"),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_game_is_played_over_quic() {
        let (backend, cluster) = start_with_pokes().await;
        let endpoint = endpoint();
        let mut s = Session::login(&endpoint, cluster.gateway_addr, "poker")
            .await
            .unwrap();
        let me = s.welcome.entity_id;
        let unknown = ActionRequest {
            seq: 4,
            kind: ActionKind(9),
            target: None,
            payload: Vec::new(),
        };
        s.act(request(1, Some(me), &Poke { strength: 2 }).unwrap())
            .await
            .unwrap();
        s.act(request(2, Some(EntityId(999_999)), &Poke { strength: 2 }).unwrap())
            .await
            .unwrap();
        s.act(request(3, Some(me), &Poke { strength: 0 }).unwrap())
            .await
            .unwrap();
        s.act(unknown).await.unwrap();
        // Four is the allowance per tick: the fifth goes once those are answered.
        let (mut done, mut events) = answers(&mut s, 4).await;
        s.act(request(5, None, &Wave).unwrap()).await.unwrap();
        let (more, more_events) = answers(&mut s, 1).await;
        done.extend(more);
        events.extend(more_events);
        let outcomes: Vec<(u32, Option<ActionRefusal>)> =
            done.iter().map(|o| (o.seq, o.refused)).collect();
        assert_eq!(
            outcomes,
            [
                (1, None),
                (2, Some(ActionRefusal::NoTarget)),
                (3, Some(ActionRefusal::Rule(1))),
                (4, Some(ActionRefusal::UnknownKind)),
                (5, None),
            ]
        );
        let poked = events
            .iter()
            .find(|e| e.kind == EventKind(1))
            .expect("the reliable event arrives");
        assert_eq!(poked.entity, me);
        // The unreliable one comes as a datagram on a loss-free loopback.
        assert!(events.iter().any(|e| e.kind == EventKind(2)), "{events:?}");
        s.bye().await.unwrap();
        cluster.stop().await;
        backend.cleanup().await;
    }

    /// A flood of actions is answered action by action (the excess refused as `Flood`), the
    /// player stays; an oversized payload is cut off at the gateway; nobody else notices.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostile_actions_are_refused_and_only_the_offender_is_cut_off() {
        let (backend, cluster) = start_with_pokes().await;
        let endpoint = endpoint();
        let mut flooder = Session::login(&endpoint, cluster.gateway_addr, "flooder")
            .await
            .unwrap();
        let mut bystander = Session::login(&endpoint, cluster.gateway_addr, "bystander")
            .await
            .unwrap();
        let me = flooder.welcome.entity_id;
        for seq in 1..=50 {
            flooder
                .act(request(seq, Some(me), &Poke { strength: 1 }).unwrap())
                .await
                .unwrap();
        }
        let (done, _) = answers(&mut flooder, 50).await;
        let mut seqs: Vec<u32> = done.iter().map(|o| o.seq).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=50).collect::<Vec<_>>(), "each answered once");
        let flooded = done
            .iter()
            .filter(|o| o.refused == Some(ActionRefusal::Flood))
            .count();
        let applied = done.iter().filter(|o| o.refused.is_none()).count();
        assert_eq!(flooded + applied, 50, "{done:?}");
        assert!(
            flooded > 0 && applied >= 4,
            "{flooded} flooded, {applied} applied"
        );
        // Still playing.
        let (done, _) = {
            flooder
                .act(request(51, Some(me), &Poke { strength: 1 }).unwrap())
                .await
                .unwrap();
            answers(&mut flooder, 1).await
        };
        assert_eq!(done[0].refused, None);

        // A payload over the limit is no honest client's: a typed kick.
        let oversized = ActionRequest {
            seq: 52,
            kind: ActionKind(1),
            target: Some(me),
            payload: vec![0; 257],
        };
        flooder.act(oversized).await.unwrap();
        let kicked = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match flooder.next_control().await {
                    Some(ServerMessage::Kick(k)) => return Some(k.code),
                    Some(_) => {}
                    None => return None,
                }
            }
        })
        .await
        .expect("kicked within 10 s");
        assert_eq!(kicked, Some(worldmesh_protocol::ErrorCode::Malformed));
        let w = walk(&mut bystander, 0.0, 1.0).await;
        assert!(w.snapshots >= 15, "the bystander plays on: {w:?}");
        bystander.bye().await.unwrap();
        cluster.stop().await;
        backend.cleanup().await;
    }
}
