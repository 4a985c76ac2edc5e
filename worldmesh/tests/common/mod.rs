//! Shared helpers of the cluster tests: start a cluster on real backends, drive real QUIC
//! clients.

#![allow(dead_code, unused_imports)]

pub use worldmesh_testkit::Backend;
pub use worldmesh_testkit::procs;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use worldmesh::cluster::{Cluster, ClusterConfig};
use worldmesh_client::View;
use worldmesh_client::{ClientEndpoint, Session};
use worldmesh_protocol::ids::EntityId;
use worldmesh_protocol::{EntityState, Input};

pub async fn start_cluster(persistence: worldmesh_persistence::Config, zones: usize) -> Cluster {
    worldmesh_runtime::init_logging("worldmesh-test", "warn");
    let mut config = ClusterConfig::new(persistence);
    config.zones = zones;
    Cluster::start(config).await.expect("cluster starts")
}

pub fn endpoint() -> ClientEndpoint {
    ClientEndpoint::new(worldmesh_protocol::ALPN).expect("client endpoint")
}

/// What one bot saw while walking.
#[derive(Debug, Default)]
pub struct Walk {
    pub snapshots: usize,
    pub seconds: f64,
    pub first_self: Option<EntityState>,
    pub last_self: Option<EntityState>,
    /// Entity ids of others seen at least once.
    pub others_seen: std::collections::BTreeSet<EntityId>,
}

/// Walks in a straight line for `secs` (an input every 50 ms), recording snapshots; then stops
/// and waits until a snapshot shows it standing still with its stop input applied.
pub async fn walk(session: &mut Session, heading: f32, secs: f64) -> Walk {
    let me = session.welcome.entity_id;
    let mut walk = Walk::default();
    let mut seq = 0u32;
    // Snapshots that queued up while the other bots logged in are not part of the walk.
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(1), session.recv_snapshot()).await
    {}
    let start = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    let record = |walk: &mut Walk, s: &View| {
        walk.snapshots += 1;
        if !s.newest {
            return;
        }
        for e in &s.entities {
            if e.id == me {
                walk.first_self.get_or_insert(*e);
                walk.last_self = Some(*e);
            } else {
                walk.others_seen.insert(e.id);
            }
        }
    };
    while start.elapsed().as_secs_f64() < secs {
        tokio::select! {
            _ = ticker.tick() => {
                seq += 1;
                session.send_input(Input { seq, ack_tick: session.ack_tick(), heading, speed: 3.0, actions: 0 }).expect("send input");
            }
            s = session.recv_snapshot() => record(&mut walk, &s.expect("snapshot")),
        }
    }
    walk.seconds = start.elapsed().as_secs_f64();
    // Stop, and wait for the server to confirm it applied the stop.
    seq += 1;
    let stop = seq;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(
            Instant::now() < deadline,
            "the stop input was never acknowledged"
        );
        session
            .send_input(Input {
                seq: stop,
                ack_tick: session.ack_tick(),
                heading,
                speed: 0.0,
                actions: 0,
            })
            .expect("send input");
        let s = tokio::time::timeout(Duration::from_millis(200), session.recv_snapshot()).await;
        if let Ok(s) = s {
            let s = s.expect("snapshot");
            let mine = s.entities.iter().find(|e| e.id == me).copied();
            if s.newest && s.last_input_seq == stop && mine.is_some_and(|e| e.speed == 0.0) {
                walk.last_self = mine;
                return walk;
            }
        }
    }
}

pub fn distance(a: (f32, f32), b: (f32, f32)) -> f32 {
    ((a.0 - b.0).powi(2) + (a.1 - b.1).powi(2)).sqrt()
}

/// The walk-and-come-back scenario of the foundation issue, on whichever backend.
pub async fn walk_and_reconnect(gateway: SocketAddr, prefix: &str, bots: usize) {
    let endpoint = endpoint();
    let names: Vec<String> = (0..bots).map(|i| format!("{prefix}{i}")).collect();
    let mut sessions = Vec::new();
    for n in &names {
        let t = Instant::now();
        sessions.push(
            Session::login(&endpoint, gateway, n)
                .await
                .unwrap_or_else(|e| panic!("{n} logs in: {e}")),
        );
        tracing::debug!("{n} logged in in {:?}", t.elapsed());
    }
    let spawns: Vec<(EntityId, (f32, f32))> = sessions
        .iter()
        .map(|s| (s.welcome.entity_id, (s.welcome.x, s.welcome.y)))
        .collect();
    assert_eq!(sessions[0].welcome.tick_rate_hz, 20);

    let walks = futures_join(
        sessions
            .iter_mut()
            .enumerate()
            .map(|(i, s)| walk(s, i as f32 * 0.6, 3.0)),
    )
    .await;

    for (i, w) in walks.iter().enumerate() {
        let rate = w.snapshots as f64 / w.seconds;
        assert!(
            (16.0..=24.0).contains(&rate),
            "bot {i}: {rate:.1} snapshots/s, expected 20 ± 20%"
        );
        let (first, last) = (
            w.first_self.expect("saw itself"),
            w.last_self.expect("saw itself"),
        );
        let moved = distance((first.x, first.y), (last.x, last.y));
        assert!(
            moved > 6.0,
            "bot {i} moved only {moved:.2} m in 3 s at 3 m/s"
        );
        // Everyone who spawned within 70 m (and so stayed within 100 m: 3 s × 3 m/s each way)
        // must have been seen.
        let me = spawns[i];
        for (id, at) in &spawns {
            if *id != me.0 && distance(me.1, *at) < 70.0 {
                assert!(
                    w.others_seen.contains(id),
                    "bot {i} never saw entity {id} {:.1} m away",
                    distance(me.1, *at)
                );
            }
        }
    }
    assert!(
        walks.iter().any(|w| !w.others_seen.is_empty()),
        "no bot saw another bot"
    );

    let ends: Vec<EntityState> = walks.iter().map(|w| w.last_self.unwrap()).collect();
    for s in sessions {
        s.bye().await.expect("clean logout");
    }
    for (i, n) in names.iter().enumerate() {
        let again = Session::login(&endpoint, gateway, n)
            .await
            .unwrap_or_else(|e| panic!("{n} logs in again: {e}"));
        let back = (again.welcome.x, again.welcome.y);
        // Snapshots carry positions quantised to 1/32 m; Welcome carries the exact one.
        assert!(
            distance(back, (ends[i].x, ends[i].y)) < 0.03,
            "bot {i} left at ({}, {}) but came back at {back:?}",
            ends[i].x,
            ends[i].y
        );
        assert_eq!(
            again.welcome.entity_id,
            EntityId(spawns[i].0.into()),
            "same character"
        );
        again.bye().await.unwrap();
    }
}

/// Polls futures concurrently on this task (no spawn, so they may borrow).
pub async fn futures_join<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    futures::future::join_all(futs).await
}

/// A 400 m world of 50 m cells: with two zones the border runs at x = 200, and everyone
/// spawns 10 m west of it.
pub fn small_world(
    persistence: worldmesh_persistence::Config,
) -> worldmesh::cluster::ClusterConfig {
    let mut config = worldmesh::cluster::ClusterConfig::new(persistence);
    config.zones = 2;
    config.coordinator.geometry = worldmesh_coordinator::Geometry {
        max_x: 400.0,
        max_y: 400.0,
        cell_size: 50.0,
        spawn_points: vec![(190.0, 200.0)],
        ..Default::default()
    };
    config
}

pub async fn owner(coordinator: &str, entity: u64) -> (u64, u64) {
    let mut c =
        worldmesh_protocol::grpc::coordinator::coordinator_client::CoordinatorClient::connect(
            coordinator.to_owned(),
        )
        .await
        .unwrap();
    let r = c
        .locate_entity(worldmesh_protocol::grpc::coordinator::LocateEntityRequest {
            entity_id: entity,
        })
        .await
        .unwrap()
        .into_inner();
    (r.zone.map_or(0, |z| z.zone_id), r.epoch)
}

/// Walks along a heading until `until` says stop; returns what was seen. Checks on the way
/// that snapshots keep coming, their ticks keep growing, and the character never jumps.
pub async fn walk_until(
    s: &mut worldmesh_client::Session,
    seq: &mut u32,
    heading: f32,
    until: impl Fn(f32) -> bool,
) -> f32 {
    let me = s.welcome.entity_id;
    let mut last_tick = 0u32;
    let mut last_x: Option<f32> = None;
    let mut last_snapshot = Instant::now();
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "walk did not finish"
        );
        tokio::select! {
            _ = ticker.tick() => {
                *seq += 1;
                s.send_input(Input { seq: *seq, ack_tick: s.ack_tick(), heading, speed: 6.0, actions: 0 }).unwrap();
                assert!(
                    last_snapshot.elapsed() < Duration::from_millis(500),
                    "no snapshot for {:?}: the stream broke",
                    last_snapshot.elapsed()
                );
            }
            v = s.recv_snapshot() => {
                let v = v.expect("snapshot");
                last_snapshot = Instant::now();
                if !v.newest {
                    continue;
                }
                assert!(v.tick > last_tick, "tick went from {last_tick} to {}", v.tick);
                last_tick = v.tick;
                let Some(e) = v.entities.iter().find(|e| e.id == me) else { continue };
                if let Some(x) = last_x {
                    assert!((e.x - x).abs() < 3.0, "jumped from x={x} to x={}", e.x);
                }
                last_x = Some(e.x);
                if until(e.x) {
                    return e.x;
                }
            }
        }
    }
}

/// A bot fleet for a process test: `n` bots of `behaviour` on the gateway at UDP `port` for
/// `secs`, new characters (`{prefix}{unique}-{i}`, logging in to accounts), 20 a second, no
/// chat, no status lines. Adjust the rest with struct update syntax.
pub fn bot_config(
    port: u16,
    n: usize,
    prefix: &str,
    behaviour: worldmesh_load_test::bot::Behaviour,
    secs: u64,
) -> worldmesh_load_test::Config {
    worldmesh_load_test::Config {
        gateways: vec![([127, 0, 0, 1], port).into()],
        bots: n,
        ramp_per_s: 20.0,
        duration: Some(Duration::from_secs(secs)),
        name_prefix: format!("{prefix}{}-", worldmesh_testkit::unique_suffix()),
        behaviour,
        chat_every_s: 0.0,
        status_every: None,
        ..Default::default()
    }
}

/// How long [`next_control`] waits for a matching message.
pub const CONTROL_WAIT: Duration = Duration::from_secs(10);

/// The next control message `pick` accepts, within [`CONTROL_WAIT`]; others are skipped
/// (printed). Panics on a kick, the end of the stream or the deadline.
pub async fn next_control<T>(
    s: &mut Session,
    mut pick: impl FnMut(worldmesh_protocol::ServerMessage) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + CONTROL_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, s.next_control()).await {
            Ok(Some(worldmesh_protocol::ServerMessage::Kick(k))) => panic!("kicked: {k:?}"),
            Ok(Some(m)) => {
                let shown = format!("{m:?}");
                if let Some(t) = pick(m) {
                    return t;
                }
                eprintln!("skipped: {shown}");
            }
            Ok(None) => panic!("the control stream ended"),
            Err(_) => panic!("nothing matching within {CONTROL_WAIT:?}"),
        }
    }
}

/// The next inventory `pick` accepts.
pub async fn next_inventory(
    s: &mut Session,
    pick: impl Fn(&worldmesh_protocol::InventoryView) -> bool,
) -> worldmesh_protocol::InventoryView {
    next_control(s, |m| match m {
        worldmesh_protocol::ServerMessage::Inventory(v) if pick(&v) => Some(v),
        _ => None,
    })
    .await
}

/// Stops walking and lets the character come to rest (half a second of still inputs).
pub async fn stand_still(s: &mut Session, seq: &mut u32) {
    for _ in 0..10 {
        *seq += 1;
        s.send_input(Input {
            seq: *seq,
            ack_tick: s.ack_tick(),
            heading: 0.0,
            speed: 0.0,
            actions: 0,
        })
        .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
