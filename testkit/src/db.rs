//! A PostgreSQL database of a test's own, and the backends a cluster test runs on.

use sqlx::Connection;

use crate::unique_suffix;

/// Creates a fresh, empty database next to the one `base_url` names and returns its URL.
pub async fn fresh_postgres_database(base_url: &str) -> Result<String, sqlx::Error> {
    let name = format!("wm_test_{}", unique_suffix());
    let mut conn = sqlx::PgConnection::connect(base_url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    let (head, _) = base_url
        .rsplit_once('/')
        .ok_or_else(|| sqlx::Error::Configuration("DATABASE_URL has no database path".into()))?;
    let query = base_url
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    Ok(format!("{head}/{name}{query}"))
}

/// Drops a database made by [`fresh_postgres_database`]; errors are ignored (best effort).
pub async fn drop_postgres_database(base_url: &str, url: &str) {
    let Some(name) = url
        .rsplit('/')
        .next()
        .map(|n| n.split('?').next().unwrap_or(n).to_owned())
    else {
        return;
    };
    if let Ok(mut conn) = sqlx::PgConnection::connect(base_url).await {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
        let _ = conn.close().await;
    }
}

/// Where a test's data lives; [`Backend::cleanup`] removes it after the cluster stops.
pub enum Backend {
    /// Real Redis and PostgreSQL, with a fresh database and a unique key prefix.
    Tiered { base_url: String, db_url: String },
    /// SQLite in a temporary directory and the in-process hot tier.
    Embedded { dir: std::path::PathBuf },
}

impl Backend {
    /// A fresh PostgreSQL database and a unique Redis prefix on the machine's services.
    ///
    /// # Panics
    /// When PostgreSQL does not answer: the test cannot run (see the README).
    pub async fn tiered() -> (Self, worldmesh_persistence::Config) {
        let base_url = crate::postgres_base_url();
        let db_url = fresh_postgres_database(&base_url)
            .await
            .expect("PostgreSQL must be running (see README)");
        let config = tiered_config(&db_url, "wmtest");
        (Backend::Tiered { base_url, db_url }, config)
    }

    /// SQLite in a fresh temporary directory.
    ///
    /// # Panics
    /// When the temporary directory cannot be made.
    pub fn embedded() -> (Self, worldmesh_persistence::Config) {
        let dir = std::env::temp_dir().join(format!("worldmesh-test-{}", unique_suffix()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let config = worldmesh_persistence::Config::embedded(&dir.join("world.db"));
        (Backend::Embedded { dir }, config)
    }

    pub async fn cleanup(self) {
        match self {
            Backend::Tiered { base_url, db_url } => {
                drop_postgres_database(&base_url, &db_url).await;
            }
            Backend::Embedded { dir } => {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// A configuration on real Redis and the given database, with a unique key prefix tagged `tag`.
pub fn tiered_config(database_url: &str, tag: &str) -> worldmesh_persistence::Config {
    worldmesh_persistence::Config {
        database_url: database_url.to_owned(),
        redis_url: Some(crate::redis_url()),
        redis_prefix: format!("{tag}:{}:", unique_suffix()),
        max_backlog: worldmesh_persistence::DEFAULT_MAX_BACKLOG,
        run_flusher: true,
        // Tests check the plumbing of accounts, not the cost of hashing.
        argon2_memory_kib: 1024,
        argon2_iterations: 1,
    }
}
