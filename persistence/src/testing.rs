//! Test isolation helpers: each test gets its own PostgreSQL database and Redis key prefix,
//! so test runs (and tests within a run) never collide on the shared services.

use sqlx::Connection;

/// `DATABASE_URL`, or the machine's default PostgreSQL.
pub fn postgres_base_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `REDIS_URL`, or the machine's default Redis.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// A unique name for this test run: process id, time and a counter.
pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

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

/// A configuration on real Redis and the given database, with a unique key prefix tagged `tag`.
pub fn tiered_config(database_url: &str, tag: &str) -> crate::Config {
    crate::Config {
        database_url: database_url.to_owned(),
        redis_url: Some(redis_url()),
        redis_prefix: format!("{tag}:{}:", unique_suffix()),
        max_backlog: crate::DEFAULT_MAX_BACKLOG,
        run_flusher: true,
        // Tests check the plumbing of accounts, not the cost of hashing.
        argon2_memory_kib: 1024,
        argon2_iterations: 1,
    }
}

/// A `redis-server` of a test's own, on a free port, with its append-only file in `dir`
/// (`appendfsync always`, as production runs it): a test may kill it and start it again from
/// its AOF without touching the machine's shared Redis.
pub struct RedisServer {
    pub port: u16,
    pub dir: std::path::PathBuf,
    child: Option<tokio::process::Child>,
}

impl RedisServer {
    /// Starts one in a fresh temporary directory and waits until it answers.
    pub async fn start_new() -> Self {
        let dir = std::env::temp_dir().join(format!("wm-redis-{}", unique_suffix()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut r = Self {
            port,
            dir,
            child: None,
        };
        r.start().await;
        r
    }

    /// (Re)starts the server on its port, loading its AOF, and waits until it answers.
    pub async fn start(&mut self) {
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Ok(c) = redis::Client::open(self.url())
                && let Ok(mut conn) = c.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, and waits until it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.start_kill().expect("kill redis-server");
            let _ = c.wait().await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
