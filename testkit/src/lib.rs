//! Test and benchmark helpers: nothing here ships in a service. Service crates take it as a
//! dev-dependency; `load-test` (a benchmark tool, not a service) uses it for `cluster-bench`.
//!
//! Tests isolate themselves on the machine's shared PostgreSQL and Redis (a database and a
//! key prefix per test) and run real processes on ports no other test or connection takes.
//!
//! # Layout
//!
//! - [`db`]: a fresh PostgreSQL database per test; [`db::Backend`] (tiered on the machine's
//!   services, or embedded SQLite) with its persistence config.
//! - [`redis`]: a `redis-server` of a test's own, to kill and restart.
//! - [`ports`]: ports for child processes, below the kernel's ephemeral range.
//! - [`procs`]: the `worldmesh` binary as processes (one log file each, admin port, CPU and
//!   memory from `/proc`), and [`procs::Core`]: coordinator, persistence and zones started and
//!   registered.

pub mod db;
pub mod ports;
pub mod procs;
pub mod redis;

pub use db::{Backend, drop_postgres_database, fresh_postgres_database, tiered_config};
pub use redis::RedisServer;

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
