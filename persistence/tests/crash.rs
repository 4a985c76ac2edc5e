//! Jepsen-style: the persistence service (the real binary, on real Redis and PostgreSQL) is
//! killed with SIGKILL at random moments and restarted, 20 times, while a writer checkpoints.
//! Every acknowledged write must end up in SQL: for each character exactly its latest acked
//! version — none lost, none applied twice, none older overwriting newer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use tokio::process::{Child, Command};
use worldmesh_protocol::grpc::persistence::persistence_client::PersistenceClient;
use worldmesh_protocol::grpc::persistence::{
    Character, LoadOrCreateCharacterRequest, SaveCharactersRequest,
};
use worldmesh_testkit as testing;

const CHARACTERS: usize = 40;
const KILLS: usize = 20;

struct Service {
    port: u16,
    db: String,
    prefix: String,
    child: Option<Child>,
}

impl Service {
    fn start(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_persistence"))
            .env(
                "WORLDMESH_PERSISTENCE_LISTEN",
                format!("127.0.0.1:{}", self.port),
            )
            .env("DATABASE_URL", &self.db)
            .env("REDIS_URL", testing::redis_url())
            .env("WORLDMESH_REDIS_PREFIX", &self.prefix)
            .env("WORLDMESH_TEST_FLUSH_ACK_DELAY_MS", "30")
            .env("RUST_LOG", "error")
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the persistence binary");
        self.child = Some(child);
    }

    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.start_kill().expect("SIGKILL");
            let _ = c.wait().await;
        }
    }
}

async fn client(port: u16) -> PersistenceClient<worldmesh_runtime::Channel> {
    PersistenceClient::new(
        worldmesh_runtime::grpc_channel(&format!("http://127.0.0.1:{port}")).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_checkpoints_survive_sigkill_twenty_times() {
    let base = testing::postgres_base_url();
    let db = testing::fresh_postgres_database(&base)
        .await
        .expect("PostgreSQL must be running");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut service = Service {
        port,
        db: db.clone(),
        prefix: format!("wmcrash:{}:", testing::unique_suffix()),
        child: None,
    };
    service.start();
    let mut rpc = client(port).await;

    // Create the characters (retrying while the service starts).
    let mut ids = Vec::new();
    for i in 0..CHARACTERS {
        let req = LoadOrCreateCharacterRequest {
            name: format!("crash{i}"),
            spawn_x: 0.0,
            spawn_y: 0.0,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Ok(r)) = tokio::time::timeout(
                Duration::from_secs(2),
                rpc.load_or_create_character(req.clone()),
            )
            .await
            {
                ids.push(r.into_inner().character.unwrap().id);
                break;
            }
            assert!(Instant::now() < deadline, "persistence never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // The writer: batches of random characters with the next version each; a batch that
    // fails (the service died under it) is retried unchanged until acked, so every write is
    // eventually acknowledged and the expected final state is exact.
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let (stop, ids) = (stop.clone(), ids.clone());
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let mut version: HashMap<u64, u64> = ids.iter().map(|&id| (id, 0)).collect();
            let mut acked_batches = 0u64;
            let mut retries = 0u64;
            while !stop.is_cancelled() {
                let batch: Vec<Character> = (0..8)
                    .map(|_| ids[rng.random_range(0..ids.len())])
                    .collect::<std::collections::BTreeSet<u64>>()
                    .into_iter()
                    .map(|id| {
                        let v = version.get_mut(&id).unwrap();
                        *v += 1;
                        Character {
                            id,
                            name: String::new(),
                            x: *v as f32,
                            y: 1.0,
                            heading: 0.0,
                            epoch: 0,
                            version: *v,
                            game: Vec::new(),
                        }
                    })
                    .collect();
                let names: Vec<Character> = batch
                    .iter()
                    .map(|c| Character {
                        name: format!("crash{}", ids.iter().position(|i| *i == c.id).unwrap()),
                        ..c.clone()
                    })
                    .collect();
                loop {
                    let call = rpc.save_characters(SaveCharactersRequest {
                        characters: names.clone(),
                    });
                    match tokio::time::timeout(Duration::from_secs(2), call).await {
                        Ok(Ok(r)) => {
                            assert!(
                                r.into_inner().rejected.is_empty(),
                                "fresh versions are never stale"
                            );
                            acked_batches += 1;
                            break;
                        }
                        _ => {
                            retries += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }
            (version, acked_batches, retries)
        })
    };

    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..400))).await;
        service.kill().await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..100))).await;
        service.start();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let (expected, acked_batches, retries) = writer.await.unwrap();
    assert!(
        acked_batches > 50,
        "the writer made progress ({acked_batches} batches)"
    );

    // Let the last incarnation flush, then compare SQL with what was acknowledged.
    let sql_url = db.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let pool = loop {
        if let Ok(p) = sqlx::PgPool::connect(&sql_url).await {
            break p;
        }
    };
    loop {
        let rows: Vec<(i64, i64, f64)> = sqlx::query_as("SELECT id, version, x FROM characters")
            .fetch_all(&pool)
            .await
            .unwrap();
        let got: HashMap<u64, (u64, f64)> = rows
            .into_iter()
            .map(|(id, v, x)| (id as u64, (v as u64, x)))
            .collect();
        type Mismatch = (u64, u64, Option<(u64, f64)>);
        let mismatched: Vec<Mismatch> = expected
            .iter()
            .filter(|(id, v)| got.get(id).map(|g| g.0) != Some(**v))
            .map(|(id, v)| (*id, *v, got.get(id).copied()))
            .collect();
        if mismatched.is_empty() {
            for (id, v) in &expected {
                assert_eq!(
                    got[id].1, *v as f64,
                    "character {id}: the row holds the state of version {v}"
                );
            }
            break;
        }
        if let Some((id, want, have)) = mismatched
            .iter()
            .find(|(_, want, have)| have.is_some_and(|h| h.0 > *want))
        {
            panic!("character {id}: SQL holds version {have:?}, newer than the last acked {want}");
        }
        assert!(
            Instant::now() < deadline,
            "after {KILLS} kills ({retries} retried calls), SQL still differs from the acked state: {mismatched:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{KILLS} SIGKILLs, {acked_batches} acked batches, {retries} retried calls: SQL holds exactly the latest acked version of all {CHARACTERS} characters"
    );
    service.kill().await;
    pool.close().await;
    testing::drop_postgres_database(&base, &db).await;
}
