//! The ledger under SIGKILL: the persistence service (the real binary, on real Redis and
//! PostgreSQL) is killed 20 times at random moments while a client trades, aborts and grants
//! through it, retrying every unanswered request with the same id. Each answer is replayed on
//! the in-memory model (`worldmesh_economy::Ledger`), which must give the same outcome; at the
//! end SQL must hold exactly the model's items, gold and outcomes: every item once, gold
//! conserved, no committed trade lost, none applied twice.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use sqlx::Row;
use tokio::process::{Child, Command};
use worldmesh_economy::wire;
use worldmesh_economy::{
    AbortReason, Change, ChangeId, Commit, Item, ItemId, ItemKind, Ledger, Offer, Outcome, Party,
    Place, TradeId,
};
use worldmesh_protocol::grpc::persistence as pb;
use worldmesh_protocol::grpc::persistence::persistence_client::PersistenceClient;
use worldmesh_protocol::ids::EntityId;
use worldmesh_testkit as testing;

const PLAYERS: usize = 8;
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

type Rpc = PersistenceClient<worldmesh_runtime::Channel>;

/// Sends `call` until it is answered (the service may be dead or restarting meanwhile).
async fn until_answered<T, F, Fut>(rpc: &mut Rpc, retries: &mut u64, mut call: F) -> T
where
    F: FnMut(Rpc) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), call(rpc.clone())).await {
            return r.into_inner();
        }
        assert!(Instant::now() < deadline, "persistence never answered");
        *retries += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn outcome(r: &pb::LedgerReply) -> Outcome {
    wire::outcome_from_pb(r).unwrap().expect("an answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trades_and_grants_survive_twenty_sigkills_exactly_once() {
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
        prefix: format!("wmledgercrash:{}:", testing::unique_suffix()),
        child: None,
    };
    service.start();
    let mut rpc: Rpc = PersistenceClient::new(
        worldmesh_runtime::grpc_channel(&format!("http://127.0.0.1:{port}")).unwrap(),
    );
    let mut retries = 0u64;

    // Characters, claimed at epoch 1, each granted 100 gold and two items.
    let mut model = Ledger::default();
    let mut who = Vec::new();
    for i in 0..PLAYERS {
        let req = pb::LoadOrCreateCharacterRequest {
            name: format!("ledgercrash{i}"),
            spawn_x: 0.0,
            spawn_y: 0.0,
        };
        let r = until_answered(&mut rpc, &mut retries, |mut c| {
            let req = req.clone();
            async move { c.load_or_create_character(req).await }
        })
        .await;
        who.push(EntityId(r.character.unwrap().id));
    }
    let block = until_answered(&mut rpc, &mut retries, |mut c| async move {
        c.reserve_ids(pb::ReserveIdsRequest { count: 100_000 })
            .await
    })
    .await;
    let mut next = block.first;
    let mut fresh = move || {
        next += 1;
        next
    };
    for &w in &who {
        let req = pb::ClaimInventoryRequest {
            character: w.0,
            epoch: 1,
        };
        let inv = until_answered(&mut rpc, &mut retries, |mut c| async move {
            c.claim_inventory(req).await
        })
        .await;
        assert!(!inv.fenced);
        model.claim(w, 1).unwrap();
        let changes = vec![
            Change::Gold(100),
            Change::Grant(Item {
                id: ItemId(fresh()),
                kind: ItemKind(1),
                count: 1,
                version: 1,
            }),
            Change::Grant(Item {
                id: ItemId(fresh()),
                kind: ItemKind(2),
                count: 3,
                version: 1,
            }),
        ];
        let id = fresh();
        let req = pb::ChangeInventoryRequest {
            id,
            character: w.0,
            epoch: 1,
            steps: wire::steps_to_pb(&changes),
        };
        let got = until_answered(&mut rpc, &mut retries, |mut c| {
            let req = req.clone();
            async move { c.change_inventory(req).await }
        })
        .await;
        assert_eq!(outcome(&got), model.change(ChangeId(id), w, 1, &changes));
    }

    // The trader: trades between random pairs (items as the model holds them, some gold),
    // now and then an abort racing ahead of the commit, a grant; every request retried with
    // its id until answered; every answer checked against the model.
    let stop = tokio_util::sync::CancellationToken::new();
    let trader = {
        let (stop, who, mut rpc) = (stop.clone(), who.clone(), rpc.clone());
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(17);
            let (mut committed, mut retries, mut ids) = (0u64, 0u64, Vec::new());
            while !stop.is_cancelled() {
                let (a, b) = (
                    who[rng.random_range(0..who.len())],
                    who[rng.random_range(0..who.len())],
                );
                let offer = |rng: &mut rand::rngs::StdRng, w: EntityId| {
                    let held = model.items_of(w);
                    let n = rng.random_range(0..=held.len().min(2));
                    Offer {
                        items: held[..n].iter().map(|i| (i.id, i.version)).collect(),
                        gold: rng.random_range(0..40),
                    }
                };
                let commit = Commit {
                    id: TradeId(fresh()),
                    a: (Party { who: a, epoch: 1 }, offer(&mut rng, a)),
                    b: (Party { who: b, epoch: 1 }, offer(&mut rng, b)),
                };
                ids.push(commit.id.0);
                if rng.random_bool(0.1) {
                    let req = pb::AbortTradeRequest {
                        id: commit.id.0,
                        reason: wire::reason_code(AbortReason::HostLost),
                    };
                    let got = until_answered(&mut rpc, &mut retries, |mut c| async move {
                        c.abort_trade(req).await
                    })
                    .await;
                    assert_eq!(outcome(&got), model.abort(commit.id, AbortReason::HostLost));
                }
                let req = wire::commit_to_pb(&commit);
                let got = until_answered(&mut rpc, &mut retries, |mut c| {
                    let req = req.clone();
                    async move { c.commit_trade(req).await }
                })
                .await;
                let want = model.commit(&commit);
                assert_eq!(outcome(&got), want, "trade {:?}", commit.id);
                committed += u64::from(want == Outcome::Committed);
                if rng.random_bool(0.1) {
                    let (id, w) = (fresh(), a);
                    let changes = [Change::Grant(Item {
                        id: ItemId(fresh()),
                        kind: ItemKind(3),
                        count: 1,
                        version: 1,
                    })];
                    let req = pb::ChangeInventoryRequest {
                        id,
                        character: w.0,
                        epoch: 1,
                        steps: wire::steps_to_pb(&changes),
                    };
                    let got = until_answered(&mut rpc, &mut retries, |mut c| {
                        let req = req.clone();
                        async move { c.change_inventory(req).await }
                    })
                    .await;
                    assert_eq!(outcome(&got), model.change(ChangeId(id), w, 1, &changes));
                    ids.push(id);
                }
            }
            (model, committed, retries, ids)
        })
    };

    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..450))).await;
        service.kill().await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..100))).await;
        service.start();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let (model, committed, trader_retries, ids) = trader.await.unwrap();
    assert!(committed > 50, "trades committed: {committed}");
    assert!(trader_retries > 0, "the kills interrupted requests");

    // SQL holds exactly what the model holds.
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let rows = sqlx::query("SELECT id, count, version, holder FROM items ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    let in_sql: Vec<(u64, u32, u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                r.get::<i64, _>("id") as u64,
                r.get::<i64, _>("count") as u32,
                r.get::<i64, _>("version") as u64,
                r.get::<Option<i64>, _>("holder").unwrap() as u64,
            )
        })
        .collect();
    let mut in_model: Vec<(u64, u32, u64, u64)> = model
        .all_items()
        .map(|(p, i)| {
            let Place::Carried(h) = p else {
                panic!("nothing was dropped")
            };
            (i.id.0, i.count, i.version, h.0)
        })
        .collect();
    in_model.sort_unstable();
    assert_eq!(in_sql, in_model, "every item once, where the model has it");
    let gold: Vec<(i64, i64)> =
        sqlx::query_as("SELECT character_id, gold FROM wallets ORDER BY character_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let want: Vec<(i64, i64)> = {
        let mut w: Vec<(i64, i64)> = who
            .iter()
            .map(|w| (w.0 as i64, model.gold(*w) as i64))
            .collect();
        w.sort_unstable();
        w
    };
    assert_eq!(gold, want);
    assert_eq!(
        gold.iter().map(|(_, g)| g).sum::<i64>(),
        100 * PLAYERS as i64,
        "gold conserved"
    );
    for id in ids {
        let code: Option<i64> = sqlx::query_scalar("SELECT outcome FROM ledger WHERE id = $1")
            .bind(id as i64)
            .fetch_optional(&pool)
            .await
            .unwrap();
        assert_eq!(
            code.map(|c| c as u8),
            model.outcome(id).map(Outcome::code),
            "request {id}"
        );
    }
    println!(
        "{committed} trades committed through {KILLS} SIGKILLs; {} retries",
        retries + trader_retries
    );
    pool.close().await;
    service.kill().await;
    testing::drop_postgres_database(&base, &db).await;
}
