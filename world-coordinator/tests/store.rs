//! The coordinator's tables and migrations on real PostgreSQL and SQLite: a fresh database in
//! either start order of coordinator and persistence, and a database made before the
//! coordinator owned its tables (the old migrations, kept in `tests/legacy-migrations/` as
//! they shipped), whose rows the coordinator must adopt as they are.

use std::path::Path;

use sqlx::migrate::Migrator;
use worldmesh_coordinator::store::Store;
use worldmesh_persistence::sql::Sql;
use worldmesh_testkit as testing;
use worldmesh_world::handoff::{Authority, EntityId, HandoffId, Outcome};

fn row() -> Authority {
    Authority {
        zone: worldmesh_world::handoff::ZoneId(7),
        epoch: worldmesh_world::handoff::Epoch(3),
        last: Some((
            HandoffId {
                epoch: worldmesh_world::handoff::Epoch(2),
                attempt: 1,
            },
            Outcome::Committed,
        )),
    }
}

/// Runs `check` on a fresh PostgreSQL database and on a fresh SQLite file.
async fn on_both<F, Fut>(check: F)
where
    F: Fn(String, &'static str) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let base = testing::postgres_base_url();
    let url = testing::fresh_postgres_database(&base)
        .await
        .expect("PostgreSQL must be running (see README)");
    check(url.clone(), "postgres").await;
    testing::drop_postgres_database(&base, &url).await;
    let dir = std::env::temp_dir().join(format!("wm-coord-{}", testing::unique_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    check(
        format!("sqlite://{}?mode=rwc", dir.join("w.db").display()),
        "sqlite",
    )
    .await;
    let _ = std::fs::remove_dir_all(dir);
}

async fn write_and_read_back(store: &Store) {
    store
        .write_rows(&[(worldmesh_world::handoff::EntityId(42), row())])
        .await
        .unwrap();
    let loaded = store.load(1_000).await.unwrap();
    assert_eq!(loaded.rows, vec![(EntityId(42), row())]);
    assert_eq!(
        store
            .read_row(worldmesh_world::handoff::EntityId(42))
            .await
            .unwrap(),
        Some(row())
    );
}

#[tokio::test]
async fn a_fresh_database_works_whichever_service_starts_first() {
    on_both(|url, _| async move {
        let store = Store::connect(&url).await.unwrap();
        let sql = Sql::connect(&url).await.unwrap();
        write_and_read_back(&store).await;
        // Both again, as after a restart: nothing left to apply, nothing refused.
        Store::connect(&url).await.unwrap().close().await;
        Sql::connect(&url).await.unwrap().close().await;
        store.close().await;
        sql.close().await;
    })
    .await;
    on_both(|url, _| async move {
        let sql = Sql::connect(&url).await.unwrap();
        let store = Store::connect(&url).await.unwrap();
        write_and_read_back(&store).await;
        store.close().await;
        sql.close().await;
    })
    .await;
}

#[tokio::test]
async fn a_database_made_before_the_split_keeps_its_rows_and_starts() {
    on_both(|url, backend| async move {
        // The database as the old persistence left it, with a coordinator row in it.
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await.unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/legacy-migrations")
            .join(backend);
        Migrator::new(dir).await.unwrap().run(&pool).await.unwrap();
        sqlx::query(
            "INSERT INTO coordinator_authority \
             (entity_id, zone_id, epoch, last_epoch, last_attempt, last_outcome) \
             VALUES (42, 7, 3, 2, 1, 1)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
        // Today's persistence accepts the migrations it recorded (pinned checksums), and
        // the coordinator adopts its tables with the row in them.
        let sql = Sql::connect(&url).await.unwrap();
        let store = Store::connect(&url).await.unwrap();
        assert_eq!(
            store
                .read_row(worldmesh_world::handoff::EntityId(42))
                .await
                .unwrap(),
            Some(row())
        );
        store.close().await;
        sql.close().await;
    })
    .await;
}
