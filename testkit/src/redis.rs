//! A `redis-server` of a test's own, for tests that kill and restart Redis.

use crate::unique_suffix;

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
        let port = crate::ports::free_tcp_port();
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
