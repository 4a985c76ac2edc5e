//! Accounts and session tokens end to end: real QUIC clients, two gateways, PostgreSQL and
//! Redis behind persistence. Every refusal is a typed Kick; a token resumes the character on
//! the other gateway; forged, expired and revoked tokens are refused.

mod common;

use std::time::Duration;

use common::{Backend, endpoint};
use worldmesh_client::{ClientError, Session};
use worldmesh_gateway::token::{Claims, TokenKey, now_unix_s};
use worldmesh_protocol::grpc::persistence::RevokeTokensRequest;
use worldmesh_protocol::grpc::persistence::persistence_client::PersistenceClient;
use worldmesh_protocol::{Auth, ErrorCode};

async fn refused(
    endpoint: &worldmesh_client::ClientEndpoint,
    gateway: std::net::SocketAddr,
    name: &str,
    auth: Option<Auth>,
) -> ErrorCode {
    match Session::login_with(endpoint, gateway, name, auth).await {
        Err(ClientError::Kicked { code, .. }) => code,
        Err(e) => panic!("{name}: expected a typed kick, got {e}"),
        Ok(_) => panic!("{name}: login accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_and_tokens_across_two_gateways() {
    worldmesh_runtime::init_logging("worldmesh-test", "warn");
    let (backend, persistence) = Backend::tiered().await;
    let mut config = worldmesh::cluster::ClusterConfig::new(worldmesh_persistence::Config {
        // The cost of hashing is measured in BENCHMARKS.md, not paid in every test.
        argon2_memory_kib: 1024,
        argon2_iterations: 1,
        ..persistence
    });
    config.zones = 2;
    config.gateways = 2;
    // Production settings: accounts only.
    config.gateway.allow_guests = false;
    let secret = config
        .gateway
        .cluster_secret
        .clone()
        .expect("cluster secret");
    let cluster = worldmesh::cluster::Cluster::start(config).await.unwrap();
    let (gw1, gw2) = (cluster.gateway_addrs[0], cluster.gateway_addrs[1]);
    let ep = endpoint();
    let password = || Some(Auth::Password("correct horse".into()));

    // Register, walk a little, leave.
    let mut s = Session::login_with(
        &ep,
        gw1,
        "alice",
        Some(Auth::Register("correct horse".into())),
    )
    .await
    .unwrap();
    let entity = s.welcome.entity_id;
    let token = s.token.clone().expect("an account login gets a token");
    let ttl = token.expires_unix_s.saturating_sub(now_unix_s());
    assert!(
        (23 * 3600..=24 * 3600).contains(&ttl),
        "token lifetime {ttl} s"
    );
    let walked = common::walk(&mut s, 0.0, 1.0).await;
    let stood = walked.last_self.expect("saw itself");
    s.bye().await.unwrap();

    // Refusals, each with its own code.
    assert_eq!(
        refused(&ep, gw1, "alice", None).await,
        ErrorCode::AccountRequired
    );
    assert_eq!(
        refused(
            &ep,
            gw1,
            "alice",
            Some(Auth::Password("wrong horse".into()))
        )
        .await,
        ErrorCode::WrongPassword
    );
    assert_eq!(
        refused(&ep, gw2, "mallory", Some(Auth::Password("anything".into()))).await,
        ErrorCode::UnknownAccount
    );
    assert_eq!(
        refused(
            &ep,
            gw2,
            "alice",
            Some(Auth::Register("another horse".into()))
        )
        .await,
        ErrorCode::NameTaken
    );
    assert_eq!(
        refused(&ep, gw2, "bob", Some(Auth::Register("short".into()))).await,
        ErrorCode::InvalidPassword
    );
    let mut forged = token.token.clone();
    forged[10] ^= 1; // another generation, or account, or expiry: the signature says no
    assert_eq!(
        refused(&ep, gw2, "alice", Some(Auth::Token(forged))).await,
        ErrorCode::InvalidToken
    );
    assert_eq!(
        refused(&ep, gw2, "alice", Some(Auth::Token(b"garbage".to_vec()))).await,
        ErrorCode::InvalidToken
    );
    // Signed by another cluster.
    let foreign = TokenKey::from_secret(b"not our secret").sign(&Claims {
        account_id: 1,
        generation: 0,
        expires_unix_s: now_unix_s() + 3600,
        name: "alice".into(),
    });
    assert_eq!(
        refused(&ep, gw2, "alice", Some(Auth::Token(foreign))).await,
        ErrorCode::InvalidToken
    );
    // Ours, but expired.
    let key = TokenKey::from_secret(secret.as_bytes());
    let claims = key.verify(&token.token, 0).unwrap();
    let expired = key.sign(&Claims {
        expires_unix_s: now_unix_s() - 1,
        ..claims.clone()
    });
    assert_eq!(
        refused(&ep, gw2, "alice", Some(Auth::Token(expired))).await,
        ErrorCode::TokenExpired
    );
    // Alice's token presented for another name.
    assert_eq!(
        refused(&ep, gw2, "bob", Some(Auth::Token(token.token.clone()))).await,
        ErrorCode::InvalidToken
    );

    // The token resumes the same character, where it stood, on the other gateway.
    let s = Session::login_with(&ep, gw2, "alice", Some(Auth::Token(token.token.clone())))
        .await
        .unwrap();
    assert_eq!(s.welcome.entity_id, entity);
    assert!(
        (s.welcome.x - stood.x).abs() < 0.5 && (s.welcome.y - stood.y).abs() < 0.5,
        "resumed at ({}, {}), left at ({}, {})",
        s.welcome.x,
        s.welcome.y,
        stood.x,
        stood.y
    );
    s.bye().await.unwrap();

    // Revoked: the old token is refused everywhere; the password gives a fresh one.
    let mut persistence = PersistenceClient::connect(cluster.persistence_url.clone())
        .await
        .unwrap();
    let revoked = persistence
        .revoke_tokens(RevokeTokensRequest {
            name: "alice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.found);
    for gw in [gw1, gw2] {
        assert_eq!(
            refused(&ep, gw, "alice", Some(Auth::Token(token.token.clone()))).await,
            ErrorCode::TokenRevoked
        );
    }
    let s = Session::login_with(&ep, gw1, "alice", password())
        .await
        .unwrap();
    let fresh = s.token.clone().unwrap();
    s.bye().await.unwrap();
    let s = Session::login_with(&ep, gw2, "alice", Some(Auth::Token(fresh.token)))
        .await
        .unwrap();
    assert_eq!(s.welcome.entity_id, entity);
    s.bye().await.unwrap();

    tokio::time::timeout(Duration::from_secs(60), cluster.stop())
        .await
        .expect("cluster stops");
    backend.cleanup().await;
}
