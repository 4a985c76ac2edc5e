//! The read models on the real binaries (Redis and PostgreSQL): fighting bots log in through
//! a gateway; persistence's admin port shows them online per zone and gateway and ranks them
//! by the arena's XP. Persistence is SIGKILLed and started again: both models come back,
//! rebuilt from their SQL checkpoint and the event stream after it. When the bots log out,
//! nobody is online.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::procs::{Core, Proc};
use common::*;
use serde_json::Value;

const BOTS: usize = 12;

async fn json(p: &Proc, path: &str) -> Option<Value> {
    let (status, body) = p.admin_get(path).await?;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

/// Polls `path` on `p` until `ok` holds, for up to 20 s; the last document.
async fn until(p: &Proc, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v = json(p, path).await;
        if let Some(v) = &v
            && ok(v)
        {
            return v.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never matched: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn best_score(v: &Value) -> u64 {
    v["top"][0]["score"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaderboard_and_whos_online_answer_and_are_rebuilt_after_a_restart() {
    let (backend, persistence) = Backend::tiered().await;
    worldmesh_runtime::init_logging("worldmesh-test", "warn");
    let mut core = Core::start_with(
        &persistence,
        2,
        &["--spawn", "1000,1000", "--spawn-spread", "6"],
        &["--game", "arena"],
    )
    .await;
    let gport = common::procs::free_udp_port();
    let _gateway = core.gateway("gateway-0", gport, &[]).await;
    let stats = Arc::new(worldmesh_load_test::Stats::default());
    let bots = tokio::spawn(worldmesh_load_test::run_with(
        bot_config(
            gport,
            BOTS,
            "rm",
            worldmesh_load_test::bot::Behaviour::Fight,
            45,
        ),
        stats.clone(),
        tokio_util::sync::CancellationToken::new(),
    ));

    let online = until(&core.persistence, "/online", |v| v["players"] == BOTS).await;
    assert_eq!(online["by_gateway"]["gateway-0"], BOTS, "{online}");
    let zoned: u64 = online["by_zone"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(z, _)| z.as_str() != "0")
        .map(|(_, n)| n.as_u64().unwrap())
        .sum();
    assert_eq!(zoned, BOTS as u64, "every player in a zone: {online}");
    let board = until(&core.persistence, "/leaderboard", |v| best_score(v) > 0).await;
    eprintln!("before the kill: {board}");
    // Let a checkpoint go to SQL, and a few more events after it into the stream.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let before = json(&core.persistence, "/leaderboard").await.unwrap();

    core.persistence.signal("-KILL");
    tokio::time::sleep(Duration::from_millis(300)).await;
    core.restart_persistence(&[]);
    let online = until(&core.persistence, "/online", |v| v["players"] == BOTS).await;
    eprintln!("after the restart: {online}");
    let after = until(&core.persistence, "/leaderboard", |v| {
        best_score(v) >= best_score(&before)
    })
    .await;
    eprintln!("after the restart: {after}");
    assert!(
        after["top"].as_array().unwrap().len() >= before["top"].as_array().unwrap().len(),
        "nobody fell off the board"
    );

    let report = bots.await.unwrap().expect("the bots ran");
    assert_eq!(report.disconnects, 0, "{report:?}");
    until(&core.persistence, "/online", |v| v["players"] == 0).await;
    drop(core);
    backend.cleanup().await;
}
