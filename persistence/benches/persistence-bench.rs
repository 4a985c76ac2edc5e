//! `persistence-bench` (`cargo bench -p worldmesh-persistence --bench persistence-bench -- …`):
//! drives the streaming Checkpoint API against real Redis and PostgreSQL,
//! and measures in the same run the two baselines with nothing of worldmesh in between: a
//! plain batched SQL upsert of the same rows (UNNEST) and a plain pipelined Redis write of the
//! same keys. Prints one JSON line.
//!
//! Load: `--zones` streams (default 4), each a zone checkpointing its share of `--entities`
//! in batches of `--batch`, with up to `WINDOW` batches in flight, for `--seconds`. Every
//! checkpoint carries a new version. Then the bench waits for the flusher to drain the stream.
//! - `checkpoints_per_s_acked`: checkpoints acknowledged per second of load.
//! - `checkpoints_per_s_durable`: acked checkpoints divided by the time until the last of them
//!   was in SQL (load time + drain time).
//! - `flush_lag_ms`: age of the oldest checkpoint not yet in SQL, sampled every 50 ms.
//!
//! `--rate` paces the zones to an offered load (checkpoints per second) instead of as fast as
//! acks allow; the lag target is stated at half the throughput target.
//!
//! `--trades` measures the economy's ledger instead: `--pairs` pairs of characters, each pair
//! trading an item and some gold back and forth as fast as answers come (`CommitTrade` over
//! gRPC to the service on Redis + PostgreSQL), against a plain SQL transaction making the same
//! row updates from as many connections as the service's pool, with nothing checked:
//! `trades_per_s`, `baseline_sql_tx_per_s`, their ratio, and the commit latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use tokio_util::sync::CancellationToken;
use worldmesh_persistence::{Config, Store, hot::HotTier};
use worldmesh_protocol::grpc::persistence::persistence_client::PersistenceClient;
use worldmesh_protocol::grpc::persistence::{Character, CheckpointBatch};
use worldmesh_testkit as testing;

/// Batches in flight per stream: enough to hide one round trip and one Redis script.
const WINDOW: usize = 8;

#[derive(Parser, Debug)]
#[command(about = "Benchmark the checkpoint pipeline against real Redis and PostgreSQL")]
struct Args {
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    #[arg(long, default_value_t = 100_000)]
    entities: usize,
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent checkpoint streams (zones).
    #[arg(long, default_value_t = 4)]
    zones: usize,
    /// Offered load in checkpoints per second over all zones (0: as fast as acks allow).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Server database for a fresh benchmark database.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379/")]
    redis_url: String,
    /// Measure trades through the ledger instead of checkpoints.
    #[arg(long)]
    trades: bool,
    /// Pairs of characters trading at once (`--trades`).
    #[arg(long, default_value_t = 64)]
    pairs: usize,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        0.0
    } else {
        sorted[((sorted.len() - 1) as f64 * q).round() as usize]
    }
}

fn character(id: u64, version: u64) -> Character {
    Character {
        id,
        name: format!("b{id}"),
        x: version as f32,
        y: 1.0,
        heading: 0.0,
        epoch: 0,
        version,
        game: Vec::new(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    worldmesh_runtime::init_logging("persistence-bench", "warn");
    let args = Args::parse();
    let db = testing::fresh_postgres_database(&args.database_url).await?;
    let prefix = format!("wmbench:{}:", testing::unique_suffix());
    let config = Config {
        database_url: db.clone(),
        redis_url: Some(args.redis_url.clone()),
        redis_prefix: prefix.clone(),
        ..Config::embedded(std::path::Path::new("unused"))
    };
    let store = Store::connect(&config).await?;
    if args.trades {
        let result = trades(&args, &db, &store).await;
        store.close().await;
        testing::drop_postgres_database(&args.database_url, &db).await;
        return result;
    }
    // The rows exist before the run, as characters do.
    let rows: Vec<worldmesh_persistence::Character> = (1..=args.entities as u64)
        .map(|id| worldmesh_persistence::Character {
            id,
            name: format!("b{id}"),
            x: 0.0,
            y: 1.0,
            heading: 0.0,
            epoch: 0,
            version: 0,
            game: Vec::new(),
        })
        .collect();
    for chunk in rows.chunks(10_000) {
        store.sql().upsert_batch(chunk).await?;
    }
    let phase = Duration::from_secs(args.seconds.max(3) / 3);

    // Baseline 1: plain batched SQL upsert (UNNEST, one statement per batch), nothing else.
    let pool = sqlx::PgPool::connect(&db).await?;
    let started = Instant::now();
    let (mut sql_rows, mut version) = (0u64, 1_000_000i64);
    'sql: loop {
        for chunk in rows.chunks(args.batch) {
            version += 1;
            let ids: Vec<i64> = chunk.iter().map(|c| c.id as i64).collect();
            let xs: Vec<f64> = vec![version as f64; chunk.len()];
            let vs: Vec<i64> = vec![version; chunk.len()];
            sqlx::query(
                "INSERT INTO characters (id, name, x, y, heading, epoch, version) \
                 SELECT id, 'b' || id, x, 1, 0, 0, v FROM UNNEST($1::bigint[], $2::float8[], $3::bigint[]) AS t(id, x, v) \
                 ON CONFLICT (id) DO UPDATE SET x = excluded.x, version = excluded.version, updated_at = CURRENT_TIMESTAMP \
                 WHERE characters.version < excluded.version",
            )
            .bind(&ids)
            .bind(&xs)
            .bind(&vs)
            .execute(&pool)
            .await?;
            sql_rows += chunk.len() as u64;
            if started.elapsed() >= phase {
                break 'sql;
            }
        }
    }
    let baseline_sql = sql_rows as f64 / started.elapsed().as_secs_f64();
    // Put versions back below what the pipeline will write.
    sqlx::query("UPDATE characters SET version = 0")
        .execute(&pool)
        .await?;

    // Baseline 2: plain pipelined Redis writes of the same keys (one HSET per row, one
    // pipeline per batch).
    let mut redis = redis::Client::open(args.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let started = Instant::now();
    let mut redis_rows = 0u64;
    'redis: loop {
        for chunk in rows.chunks(args.batch) {
            let mut pipe = redis::pipe();
            for c in chunk {
                pipe.cmd("HSET")
                    .arg(format!("{prefix}plain:{}", c.id))
                    .arg("epoch")
                    .arg(0)
                    .arg("version")
                    .arg(1)
                    .arg("x")
                    .arg("1")
                    .arg("y")
                    .arg("1")
                    .arg("heading")
                    .arg("0")
                    .ignore();
            }
            let _: () = pipe.query_async(&mut redis).await?;
            redis_rows += chunk.len() as u64;
            if started.elapsed() >= phase {
                break 'redis;
            }
        }
    }
    let baseline_redis = redis_rows as f64 / started.elapsed().as_secs_f64();

    // worldmesh: the persistence service in-process, driven over gRPC.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(worldmesh_persistence::serve(
        listener,
        store.clone(),
        shutdown.clone(),
    ));
    let acked = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let load_for = Duration::from_secs(args.seconds);
    let started = Instant::now();

    // Lag sampler: age of the oldest entry still in the stream.
    let lags = {
        let (mut conn, stream, running) =
            (redis.clone(), HotTier::stream_key(&prefix), running.clone());
        tokio::spawn(async move {
            let mut lags = Vec::new();
            while running.load(Ordering::Relaxed) {
                let oldest: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
                    .arg(&stream)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                let lag = oldest
                    .first()
                    .and_then(|(id, _)| id.split('-').next()?.parse::<u64>().ok())
                    .map_or(0, |ms| now_ms().saturating_sub(ms));
                lags.push(lag as f64);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            lags
        })
    };

    let mut zones = Vec::new();
    for z in 0..args.zones {
        let mut client = PersistenceClient::new(
            worldmesh_runtime::grpc_channel(&url).map_err(anyhow::Error::msg)?,
        );
        let ids: Vec<u64> = (1..=args.entities as u64)
            .filter(|id| *id as usize % args.zones == z)
            .collect();
        let (acked, batch) = (acked.clone(), args.batch);
        // Paced zones send one batch per `gap`.
        let gap = (args.rate > 0)
            .then(|| Duration::from_secs_f64(batch as f64 * args.zones as f64 / args.rate as f64));
        zones.push(tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(WINDOW);
            let mut acks = client
                .checkpoint(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            let permits = Arc::new(tokio::sync::Semaphore::new(WINDOW));
            let sender = {
                let permits = permits.clone();
                tokio::spawn(async move {
                    let (mut version, mut batch_id) = (0u64, 0u64);
                    let mut next = tokio::time::Instant::now();
                    while started.elapsed() < load_for {
                        version += 1;
                        for chunk in ids.chunks(batch) {
                            permits.acquire().await.expect("open").forget();
                            if let Some(gap) = gap {
                                next += gap;
                                tokio::time::sleep_until(next).await;
                            }
                            batch_id += 1;
                            let characters =
                                chunk.iter().map(|&id| character(id, version)).collect();
                            if tx
                                .send(CheckpointBatch {
                                    batch_id,
                                    characters,
                                })
                                .await
                                .is_err()
                                || started.elapsed() >= load_for
                            {
                                return;
                            }
                        }
                    }
                })
            };
            let mut refused = 0u64;
            while let Some(ack) = acks.message().await? {
                permits.add_permits(1);
                if ack.error.is_empty() {
                    acked.fetch_add((batch - ack.rejected.len()) as u64, Ordering::Relaxed);
                } else {
                    refused += 1;
                }
                if sender.is_finished() && permits.available_permits() == WINDOW {
                    break;
                }
            }
            anyhow::Ok(refused)
        }));
    }
    let mut refused = 0;
    for z in zones {
        refused += z.await??;
    }
    let load_time = started.elapsed().as_secs_f64();
    let acked = acked.load(Ordering::Relaxed);
    // Drain: until the stream is empty.
    let stream = HotTier::stream_key(&prefix);
    loop {
        let len: u64 = redis::cmd("XLEN")
            .arg(&stream)
            .query_async(&mut redis)
            .await?;
        if len == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let durable_time = started.elapsed().as_secs_f64();
    running.store(false, Ordering::Relaxed);
    let mut lags = lags.await?;
    lags.sort_by(f64::total_cmp);
    shutdown.cancel();
    let _ = server.await;
    store.close().await;
    pool.close().await;
    testing::drop_postgres_database(&args.database_url, &db).await;
    let _: () = redis::cmd("EVAL")
        .arg("for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end")
        .arg(0)
        .arg(format!("{prefix}*"))
        .query_async(&mut redis)
        .await?;

    let durable = acked as f64 / durable_time;
    println!(
        "{}",
        serde_json::json!({
            "entities": args.entities,
            "batch": args.batch,
            "zones": args.zones,
            "seconds": args.seconds,
            "offered_rate": args.rate,
            "checkpoints_per_s_acked": acked as f64 / load_time,
            "checkpoints_per_s_durable": durable,
            "flush_lag_ms": { "p50": pct(&lags, 0.5), "p99": pct(&lags, 0.99) },
            "baseline_sql_upserts_per_s": baseline_sql,
            "baseline_redis_writes_per_s": baseline_redis,
            "ratio_to_sql_baseline": durable / baseline_sql,
            "batches_refused_backlog": refused,
        })
    );
    Ok(())
}

/// One side of a pair: a character and the item it holds now.
#[derive(Clone, Copy)]
struct Trader {
    id: u64,
    epoch: u64,
}

/// `--trades`: the ledger's commits against a plain SQL transaction of the same row updates.
async fn trades(args: &Args, db: &str, store: &Store) -> anyhow::Result<()> {
    use worldmesh_economy::{Change, ChangeId, Commit, Item, ItemId, ItemKind, Offer, Party};
    use worldmesh_economy::{Outcome, TradeId, wire};

    let ledger = store.ledger();
    let mut traders = Vec::new();
    let first = ledger.reserve_ids(4 * args.pairs as u64 + 10).await?;
    for n in 0..2 * args.pairs as u64 {
        let (c, _) = store.load_or_create(&format!("t{n}"), (0.0, 0.0)).await?;
        ledger
            .claim(c.id, 1)
            .await?
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let loot = [
            Change::Gold(1_000_000),
            Change::Grant(Item {
                id: ItemId(first + n),
                kind: ItemKind(1),
                count: 1,
                version: 1,
            }),
        ];
        let outcome = ledger
            .change(ChangeId(first + 2 * args.pairs as u64 + n), c.id, 1, &loot)
            .await?;
        anyhow::ensure!(outcome == Outcome::Committed, "set-up: {outcome:?}");
        traders.push(Trader { id: c.id, epoch: 1 });
    }
    let items = |pair: usize| {
        (
            ItemId(first + 2 * pair as u64),
            ItemId(first + 2 * pair as u64 + 1),
        )
    };
    let seconds = Duration::from_secs(args.seconds);

    // Baseline: the same row updates in a plain transaction, nothing checked, as many
    // connections as the service's pool.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(db)
        .await?;
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for pair in 0..args.pairs {
        let (pool, done) = (pool.clone(), done.clone());
        let (a, b) = (traders[2 * pair], traders[2 * pair + 1]);
        let (ia, ib) = items(pair);
        tasks.push(tokio::spawn(async move {
            let mut flip = false;
            while started.elapsed() < seconds {
                let (x, y) = if flip { (b, a) } else { (a, b) };
                let mut tx = pool.begin().await?;
                for (who, delta) in [(x.id, 1i64), (y.id, -1)] {
                    sqlx::query("UPDATE wallets SET gold = gold + $1 WHERE character_id = $2")
                        .bind(delta)
                        .bind(who as i64)
                        .execute(&mut *tx)
                        .await?;
                }
                for (item, to) in [(ia, y.id), (ib, x.id)] {
                    sqlx::query(
                        "UPDATE items SET holder = $1, version = version + 1 WHERE id = $2",
                    )
                    .bind(to as i64)
                    .bind(item.0 as i64)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                done.fetch_add(1, Ordering::Relaxed);
                flip = !flip;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let baseline = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    // Back to where the ledger's run starts: every item with its first owner, version known.
    for pair in 0..args.pairs {
        let (ia, ib) = items(pair);
        for (item, who) in [(ia, traders[2 * pair].id), (ib, traders[2 * pair + 1].id)] {
            sqlx::query("UPDATE items SET holder = $1, version = 1 WHERE id = $2")
                .bind(who as i64)
                .bind(item.0 as i64)
                .execute(&pool)
                .await?;
        }
    }
    let gold_before: i64 = sqlx::query_scalar("SELECT SUM(gold)::bigint FROM wallets")
        .fetch_one(&pool)
        .await?;

    // The ledger: CommitTrade over gRPC.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(worldmesh_persistence::serve(
        listener,
        store.clone(),
        shutdown.clone(),
    ));
    let client =
        PersistenceClient::new(worldmesh_runtime::grpc_channel(&url).map_err(anyhow::Error::msg)?);
    let ids = ledger.reserve_ids(1 << 20).await?;
    let next = Arc::new(AtomicU64::new(ids));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for pair in 0..args.pairs {
        let (mut client, next) = (client.clone(), next.clone());
        let (a, b) = (traders[2 * pair], traders[2 * pair + 1]);
        let (ia, ib) = items(pair);
        tasks.push(tokio::spawn(async move {
            let (mut version, mut flip, mut latencies) = (1u64, false, Vec::new());
            while started.elapsed() < seconds {
                let (x, y) = if flip { (b, a) } else { (a, b) };
                let party = |t: Trader, item: ItemId, gold: u64| {
                    (
                        Party {
                            who: worldmesh_protocol::ids::EntityId(t.id),
                            epoch: t.epoch,
                        },
                        Offer {
                            items: vec![(item, version)],
                            gold,
                        },
                    )
                };
                let commit = Commit {
                    id: TradeId(next.fetch_add(1, Ordering::Relaxed)),
                    a: party(x, ia, 2),
                    b: party(y, ib, 1),
                };
                let sent = Instant::now();
                let reply = client
                    .commit_trade(wire::commit_to_pb(&commit))
                    .await?
                    .into_inner();
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                let outcome = wire::outcome_from_pb(&reply)?;
                anyhow::ensure!(outcome == Some(Outcome::Committed), "{outcome:?}");
                version += 1;
                flip = !flip;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let trades = latencies.len() as f64 / elapsed;
    shutdown.cancel();
    let _ = server.await;

    // Nothing made or lost.
    let gold_after: i64 = sqlx::query_scalar("SELECT SUM(gold)::bigint FROM wallets")
        .fetch_one(&pool)
        .await?;
    let item_rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM items")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    println!(
        "{}",
        serde_json::json!({
            "pairs": args.pairs,
            "seconds": args.seconds,
            "trades_committed": latencies.len(),
            "trades_per_s": trades,
            "commit_latency_ms": { "p50": pct(&latencies, 0.5), "p99": pct(&latencies, 0.99) },
            "baseline_sql_tx_per_s": baseline,
            "ratio_to_sql_baseline": trades / baseline,
            "gold_delta": gold_after - gold_before,
            "items": item_rows,
        })
    );
    Ok(())
}
