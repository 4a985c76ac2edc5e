//! The store against real Redis + PostgreSQL and against embedded SQLite: stale writes are
//! refused in both tiers, loads prefer the newer tier, and a game's component bytes travel
//! with the character in both.

use worldmesh_persistence::{Character, Config, Store};
use worldmesh_testkit as testing;

async fn tiered() -> (Config, String, String) {
    let base = testing::postgres_base_url();
    let db = testing::fresh_postgres_database(&base)
        .await
        .expect("PostgreSQL must be running");
    let config = testing::tiered_config(&db, "wmtest");
    (config, base, db)
}

fn embedded() -> (Config, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("wm-store-{}", testing::unique_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    (Config::embedded(&dir.join("w.db")), dir)
}

async fn stamps_order_writes(store: &Store) {
    let (c, created) = store.load_or_create("ann", (10.0, 20.0)).await.unwrap();
    assert!(created);
    assert_eq!((c.x, c.y, c.epoch, c.version), (10.0, 20.0, 0, 0));
    let (again, created) = store.load_or_create("ann", (99.0, 99.0)).await.unwrap();
    assert!(!created, "a name is created once");
    assert_eq!(again.id, c.id);

    assert!(c.game.is_empty(), "a new character has no game components");
    // The game bytes change with the version, so a refused write shows in them too.
    let v = |version: u64, x: f32| Character {
        version,
        x,
        game: vec![version as u8, 0xff, 0, b'\n', b' '],
        ..c.clone()
    };
    assert!(store.save(&[v(2, 11.0)]).await.unwrap().is_empty());
    // A late, older write is refused and changes nothing.
    assert_eq!(store.save(&[v(1, 5.0)]).await.unwrap(), vec![c.id]);
    // A replay of the same write is harmless.
    assert!(store.save(&[v(2, 11.0)]).await.unwrap().is_empty());
    let loaded = store.load(c.id).await.unwrap().unwrap();
    assert_eq!((loaded.x, loaded.version), (11.0, 2));
    assert_eq!(loaded.game, v(2, 11.0).game);
    // A newer epoch wins over any version of an older one; the old epoch is then fenced.
    let e1 = Character {
        epoch: 1,
        version: 0,
        x: 12.0,
        ..c.clone()
    };
    assert!(store.save(&[e1]).await.unwrap().is_empty());
    assert_eq!(store.save(&[v(50, 0.0)]).await.unwrap(), vec![c.id]);
    assert_eq!(store.load(c.id).await.unwrap().unwrap().x, 12.0);
    assert!(store.load(c.id + 1000).await.unwrap().is_none());
}

/// Waits until the flusher has made version `version` of a character durable in SQL.
async fn wait_durable(store: &Store, id: u64, version: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if store
            .sql()
            .load(id)
            .await
            .unwrap()
            .is_some_and(|c| c.version >= version)
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "version {version} of {id} never reached SQL"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn redis_and_postgres_order_writes_by_stamp() {
    let (config, base, db) = tiered().await;
    let store = Store::connect(&config).await.unwrap();
    assert_eq!(
        (store.sql_backend(), store.hot_backend()),
        ("postgres", "redis")
    );
    stamps_order_writes(&store).await;
    store.close().await;
    testing::drop_postgres_database(&base, &db).await;
}

#[tokio::test]
async fn sqlite_and_memory_order_writes_by_stamp() {
    let (config, dir) = embedded();
    let store = Store::connect(&config).await.unwrap();
    assert_eq!(
        (store.sql_backend(), store.hot_backend()),
        ("sqlite", "memory")
    );
    stamps_order_writes(&store).await;
    store.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn sql_wins_when_redis_lost_data() {
    let (config, base, db) = tiered().await;
    let store = Store::connect(&config).await.unwrap();
    let (c, _) = store.load_or_create("bob", (1.0, 1.0)).await.unwrap();
    store
        .save(&[Character {
            version: 3,
            x: 30.0,
            game: vec![7, 0, 255],
            ..c.clone()
        }])
        .await
        .unwrap();
    wait_durable(&store, c.id, 3).await;
    assert_eq!(
        store.sql().load(c.id).await.unwrap().unwrap().game,
        vec![7, 0, 255],
        "the flusher carries game bytes to SQL"
    );
    // Redis loses the key (a restart without persistence): SQL's copy is served.
    let client = redis::Client::open(testing::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(format!("{}char:{}", config.redis_prefix, c.id))
        .query_async(&mut conn)
        .await
        .unwrap();
    let from_sql = store.load(c.id).await.unwrap().unwrap();
    assert_eq!(
        (from_sql.x, from_sql.game.as_slice()),
        (30.0, &[7, 0, 255][..])
    );
    // Redis holds an *older* state than SQL (it came back from an old snapshot): SQL wins.
    let _: () = redis::cmd("HSET")
        .arg(format!("{}char:{}", config.redis_prefix, c.id))
        .arg(&[
            "epoch", "0", "version", "1", "name", "bob", "x", "7", "y", "1", "heading", "0",
        ])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(store.load(c.id).await.unwrap().unwrap().x, 30.0);
    let (by_name, _) = store.load_or_create("bob", (0.0, 0.0)).await.unwrap();
    assert_eq!(by_name.x, 30.0);
    store.close().await;
    testing::drop_postgres_database(&base, &db).await;
}
