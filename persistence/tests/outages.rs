//! Outages of the tiers: a Redis restart (our own redis-server with AOF) and a SQL outage
//! (a TCP proxy in front of PostgreSQL that we cut). Nothing acknowledged is lost; the
//! catch-up time is printed; a full backlog refuses new checkpoints loudly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use worldmesh_persistence::{Character, Config, Error, Store};
use worldmesh_testkit as testing;

async fn wait_all_durable(store: &Store, chars: &[Character], version: u64) -> Duration {
    let started = Instant::now();
    loop {
        let mut done = true;
        for c in chars {
            if store
                .sql()
                .load(c.id)
                .await
                .ok()
                .flatten()
                .is_none_or(|d| d.version != version)
            {
                done = false;
                break;
            }
        }
        if done {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "acked checkpoints never reached SQL"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn create(store: &Store, prefix: &str, n: usize) -> Vec<Character> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(
            store
                .load_or_create(&format!("{prefix}{i}"), (0.0, 0.0))
                .await
                .unwrap()
                .0,
        );
    }
    out
}

fn at(c: &Character, version: u64) -> Character {
    Character {
        version,
        x: version as f32,
        ..c.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_checkpoints_survive_a_redis_restart_with_aof() {
    let base = testing::postgres_base_url();
    let db = testing::fresh_postgres_database(&base)
        .await
        .expect("PostgreSQL must be running");
    let mut redis = testing::RedisServer::start_new().await;
    let dir = redis.dir.clone();
    let config = Config {
        database_url: db.clone(),
        redis_url: Some(redis.url()),
        redis_prefix: "aof:".into(),
        run_flusher: false,
        ..Config::embedded(&dir.join("unused"))
    };

    // Acked into Redis only (no flusher), then Redis is killed.
    let store = Store::connect(&config).await.unwrap();
    let chars = create(&store, "aof", 20).await;
    for v in 1..=10 {
        let batch: Vec<Character> = chars.iter().map(|c| at(c, v)).collect();
        assert!(store.save(&batch).await.unwrap().is_empty());
    }
    store.close().await;
    redis.kill().await;

    // Redis comes back from its AOF; a flusher drains the stream into SQL.
    redis.start().await;
    let store = Store::connect(&Config {
        run_flusher: true,
        ..config
    })
    .await
    .unwrap();
    let catch_up = wait_all_durable(&store, &chars, 10).await;
    println!(
        "Redis SIGKILL + restart from AOF: 200 acked checkpoints all durable {catch_up:?} after the restart"
    );
    store.close().await;
    redis.kill().await;
    let _ = std::fs::remove_dir_all(dir);
    testing::drop_postgres_database(&base, &db).await;
}

/// A TCP proxy that can be cut: while down, live connections are closed and new ones dropped.
async fn proxy(host: String, target: u16) -> (u16, Arc<AtomicBool>, Arc<tokio::sync::Notify>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let up = Arc::new(AtomicBool::new(true));
    let cut = Arc::new(tokio::sync::Notify::new());
    let (up2, cut2) = (up.clone(), cut.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            if !up2.load(Ordering::SeqCst) {
                continue;
            }
            let (cut, host) = (cut2.clone(), host.clone());
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect((host.as_str(), target)).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cut.notified() => {}
                }
            });
        }
    });
    (port, up, cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_outage_backs_off_refuses_beyond_the_backlog_and_catches_up() {
    let base = testing::postgres_base_url();
    let db = testing::fresh_postgres_database(&base)
        .await
        .expect("PostgreSQL must be running");
    // The proxy stands in for whatever host:port DATABASE_URL names.
    let authority = db
        .split_once('@')
        .map_or(&db[..], |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let (host, pg_port) = authority
        .rsplit_once(':')
        .map_or((authority.as_str(), 5432), |(h, p)| {
            (h, p.parse().unwrap_or(5432))
        });
    let (port, up, cut) = proxy(host.to_owned(), pg_port).await;
    let via_proxy = db.replacen(&authority, &format!("127.0.0.1:{port}"), 1);
    let config = Config {
        database_url: via_proxy,
        redis_url: Some(testing::redis_url()),
        redis_prefix: format!("wmout:{}:", testing::unique_suffix()),
        max_backlog: 40,
        ..Config::embedded(std::path::Path::new("unused"))
    };
    let store = Store::connect(&config).await.unwrap();
    let chars = create(&store, "outage", 10).await;

    // SQL goes away.
    up.store(false, Ordering::SeqCst);
    cut.notify_waiters();
    let (mut acked, mut refused) = (0, 0);
    let mut last_acked = 0;
    for v in 1..=60u64 {
        match store
            .save(&chars.iter().map(|c| at(c, v)).collect::<Vec<_>>())
            .await
        {
            Ok(rejected) => {
                assert!(rejected.is_empty());
                acked += 1;
                last_acked = v;
            }
            Err(Error::Backlog(_)) => refused += 1,
            Err(e) => panic!("unexpected error while SQL is down: {e}"),
        }
    }
    assert_eq!(
        (acked, refused),
        (40, 20),
        "Redis acks up to the backlog bound, then refuses loudly"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // SQL comes back: everything acked becomes durable.
    let back = Instant::now();
    up.store(true, Ordering::SeqCst);
    let catch_up = wait_all_durable(&store, &chars, last_acked).await;
    println!(
        "SQL outage: {acked} batches acked while down, {refused} refused at the bound; durable {catch_up:?} after SQL returned"
    );
    assert!(back.elapsed() < Duration::from_secs(30));
    // And the pipeline accepts checkpoints again.
    assert!(
        store
            .save(&chars.iter().map(|c| at(c, 100)).collect::<Vec<_>>())
            .await
            .unwrap()
            .is_empty()
    );
    store.close().await;
    testing::drop_postgres_database(&base, &db).await;
}
