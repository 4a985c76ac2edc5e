//! Graceful drain of a gateway process: on SIGTERM it refuses new connections, kicks its
//! clients with `ShuttingDown` after saving their characters, and exits 0; the clients
//! reconnect through another gateway with their session token and find their characters
//! where they left them.

mod common;

use std::time::{Duration, Instant};

use common::procs::{Core, free_udp_port};
use common::*;
use worldmesh_client::{ClientError, Session};
use worldmesh_protocol::{Auth, ErrorCode, ServerMessage};
use worldmesh_testkit as testing;

const PLAYERS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_gateway_sends_its_players_elsewhere_with_their_tokens() {
    let (backend, persistence) = Backend::tiered().await;
    let core = Core::start(&persistence, 1, &[]).await;
    let (g1port, g2port) = (free_udp_port(), free_udp_port());
    let drain = ["--drain-timeout-s", "10"];
    let mut g1 = core.gateway("gateway-1", g1port, &drain).await;
    let _g2 = core.gateway("gateway-2", g2port, &drain).await;
    let (gw1, gw2): (std::net::SocketAddr, std::net::SocketAddr) = (
        ([127, 0, 0, 1], g1port).into(),
        ([127, 0, 0, 1], g2port).into(),
    );

    // Players log in on gateway 1 and walk a little.
    let ep = endpoint();
    let suffix = testing::unique_suffix();
    let mut players = Vec::new();
    for i in 0..PLAYERS {
        let name = format!("drain{suffix}x{i}");
        let mut s = Session::login_with(
            &ep,
            gw1,
            &name,
            Some(Auth::Register("a fine password".into())),
        )
        .await
        .unwrap();
        let walked = walk(&mut s, i as f32, 0.5).await;
        players.push((name, s, walked.last_self.expect("saw itself")));
    }

    // SIGTERM: every player is told to go elsewhere, after its character is saved.
    let term = Instant::now();
    g1.signal("-TERM");
    // Draining: not ready (load balancers and Kubernetes stop sending players), still alive.
    let mut seen = None;
    while term.elapsed() < Duration::from_secs(2) {
        if let Some((503, body)) = g1.admin_get("/readyz").await {
            seen = Some((body, g1.admin_get("/healthz").await.map(|r| r.0)));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (body, alive) = seen.expect("/readyz turned 503 while draining");
    assert!(body.contains("not draining"), "{body}");
    assert_eq!(alive, Some(200), "/healthz stays 200 while draining");
    let mut resumed = 0;
    for (name, mut s, stood) in players {
        let kick = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                match s.next_control().await {
                    Some(ServerMessage::Kick(k)) => return Some(k.code),
                    Some(_) => continue,
                    None => return None,
                }
            }
        })
        .await
        .expect("kicked in time");
        assert_eq!(kick, Some(ErrorCode::ShuttingDown), "{name}");
        let token = s.token.clone().expect("token");
        let again = Session::login_with(&ep, gw2, &name, Some(Auth::Token(token.token)))
            .await
            .unwrap_or_else(|e| panic!("{name} resumes on gateway 2: {e}"));
        assert_eq!(again.welcome.entity_id, s.welcome.entity_id);
        assert!(
            (again.welcome.x - stood.x).abs() < 1.0 && (again.welcome.y - stood.y).abs() < 1.0,
            "{name} resumed where it stood"
        );
        again.bye().await.unwrap();
        resumed += 1;
    }
    assert_eq!(resumed, PLAYERS);

    // The drained gateway refuses newcomers and exits 0 once its clients are gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = g1.child.try_wait().unwrap() {
            break s;
        }
        match Session::login_with(
            &ep,
            gw1,
            "latecomer",
            Some(Auth::Password("whatever1".into())),
        )
        .await
        {
            Ok(_) => panic!("a draining gateway accepted a login"),
            Err(ClientError::Kicked { code, .. }) => assert_eq!(code, ErrorCode::ShuttingDown),
            Err(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "gateway did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(status.success(), "gateway exit status {status}");
    println!(
        "gateway drained and exited {:.1} s after SIGTERM",
        term.elapsed().as_secs_f64()
    );
    backend.cleanup().await;
}
