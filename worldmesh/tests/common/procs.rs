//! The real binaries as processes (`worldmesh <service>`), for tests that kill, signal or
//! measure one service on its own. Logs go to one directory per test run, kept for
//! post-mortems.

use std::process::{Child, Command};
use std::time::Duration;

use worldmesh_persistence::testing;
use worldmesh_protocol::grpc::coordinator::{
    GetWorldRequest, coordinator_client::CoordinatorClient,
};

/// Where the processes' logs go: one directory per run.
pub fn log_dir() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("wm-mp-{}", testing::unique_suffix()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

pub struct Proc {
    pub name: String,
    pub child: Child,
    /// The admin port (`/metrics`, `/healthz`, `/readyz`).
    pub admin: std::net::SocketAddr,
    /// Its gRPC address (`host:port`), for services that have one.
    pub listen: Option<String>,
}

impl Proc {
    pub fn start(name: &str, args: &[String], secret: &str) -> Self {
        Self::start_env(name, args, secret, &[])
    }

    /// [`Proc::start`] with extra environment variables.
    pub fn start_env(name: &str, args: &[String], secret: &str, env: &[(&str, &str)]) -> Self {
        // Tests in one binary share the log directory: never overwrite an earlier process's.
        let path = (0..)
            .map(|i| match i {
                0 => log_dir().join(format!("{name}.log")),
                i => log_dir().join(format!("{name}.{i}.log")),
            })
            .find(|p| !p.exists())
            .expect("a free log name");
        let log = std::fs::File::create(path).expect("log file");
        let admin: std::net::SocketAddr = ([127, 0, 0, 1], free_tcp_port()).into();
        let listen = args
            .iter()
            .position(|a| a == "--listen")
            .and_then(|i| args.get(i + 1).cloned());
        let child = Command::new(env!("CARGO_BIN_EXE_worldmesh"))
            .args(args)
            .envs(env.iter().copied())
            .env("WORLDMESH_CLUSTER_SECRET", secret)
            .env("WORLDMESH_ADMIN_LISTEN", admin.to_string())
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn worldmesh");
        Self {
            name: name.to_owned(),
            child,
            admin,
            listen,
        }
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
    }

    /// Resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.child.id())
    }

    /// CPU time used so far (user + system), seconds.
    pub fn cpu_s(&self) -> f64 {
        worldmesh_load_test::cluster_bench::cpu_of(self.child.id())
    }

    /// `GET path` on the admin port: (status, body).
    pub async fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.admin, path).await
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of a process, KiB (0 once it is gone).
pub fn rss_kib_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A minimal HTTP/1.1 GET (the admin port speaks plain HTTP/1.1).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Some((status, body))
}

/// The value of one Prometheus series (`name{labels}` exactly as rendered), 0 if absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == series).then(|| v.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn zone(i: usize, coordinator: &str, persistence: &str, secret: &str) -> Proc {
    let port = free_tcp_port();
    Proc::start(
        &format!("zone-{i}"),
        &[
            "zone".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--name".into(),
            format!("zone-{i}"),
            "--coordinator".into(),
            coordinator.into(),
            "--persistence".into(),
            persistence.into(),
        ],
        secret,
    )
}

pub async fn live_zones(coordinator: &str) -> usize {
    let Ok(mut c) = CoordinatorClient::connect(coordinator.to_owned()).await else {
        return 0;
    };
    c.get_world(GetWorldRequest {})
        .await
        .map_or(0, |w| w.into_inner().zones.len())
}

/// A cluster's core as processes: coordinator and persistence on real PostgreSQL and Redis
/// (from the test's persistence config), plus zones, registered before this returns.
pub struct Core {
    pub secret: String,
    pub coordinator_url: String,
    pub persistence_url: String,
    pub coordinator: Proc,
    pub persistence: Proc,
    pub zones: Vec<Proc>,
    coordinator_args: Vec<String>,
    persistence_args: Vec<String>,
    restarts: usize,
}

impl Core {
    /// `coordinator_args` are appended to the coordinator's (e.g. `--spawn x,y`).
    pub async fn start(
        persistence: &worldmesh_persistence::Config,
        zones: usize,
        coordinator_args: &[&str],
    ) -> Self {
        let secret = worldmesh_runtime::random_secret();
        let db = persistence.database_url.clone();
        let (cport, pport) = (free_tcp_port(), free_tcp_port());
        let coordinator_url = format!("http://127.0.0.1:{cport}");
        let persistence_url = format!("http://127.0.0.1:{pport}");
        let mut args: Vec<String> = vec![
            "coordinator".into(),
            "--listen".into(),
            format!("127.0.0.1:{cport}"),
            "--database-url".into(),
            db.clone(),
        ];
        args.extend(coordinator_args.iter().map(|a| a.to_string()));
        let coordinator = Proc::start("coordinator", &args, &secret);
        let persistence_args: Vec<String> = vec![
            "persistence".into(),
            "--listen".into(),
            format!("127.0.0.1:{pport}"),
            "--database-url".into(),
            db,
            "--redis-url".into(),
            persistence
                .redis_url
                .clone()
                .unwrap_or_else(testing::redis_url),
            "--redis-prefix".into(),
            persistence.redis_prefix.clone(),
            // Tests register many accounts; the cost of hashing is measured apart.
            "--argon2-memory-kib".into(),
            "1024".into(),
            "--argon2-iterations".into(),
            "1".into(),
        ];
        let persistence = Proc::start("persistence", &persistence_args, &secret);
        let zones: Vec<Proc> = (0..zones)
            .map(|i| zone(i, &coordinator_url, &persistence_url, &secret))
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while live_zones(&coordinator_url).await < zones.len() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "zones did not register"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Self {
            secret,
            coordinator_url,
            persistence_url,
            coordinator,
            persistence,
            zones,
            coordinator_args: args,
            persistence_args,
            restarts: 0,
        }
    }

    /// Starts the coordinator again on its address (after the test killed it).
    pub fn restart_coordinator(&mut self) {
        self.restarts += 1;
        let name = format!("coordinator-{}", self.restarts);
        self.coordinator = Proc::start(&name, &self.coordinator_args, &self.secret);
    }

    /// Starts persistence again on its address (after the test killed it), with `env`.
    pub fn restart_persistence(&mut self, env: &[(&str, &str)]) {
        self.restarts += 1;
        let name = format!("persistence-{}", self.restarts);
        self.persistence = Proc::start_env(&name, &self.persistence_args, &self.secret, env);
    }

    /// A gateway process on `port` (production settings: accounts only), `extra` flags
    /// appended; returns once its `/readyz` says ready.
    pub async fn gateway(&self, name: &str, port: u16, extra: &[&str]) -> Proc {
        let mut args: Vec<String> = vec![
            "gateway".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--name".into(),
            name.into(),
            "--coordinator".into(),
            self.coordinator_url.clone(),
            "--persistence".into(),
            self.persistence_url.clone(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let g = Proc::start(name, &args, &self.secret);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while g.admin_get("/readyz").await.map(|r| r.0) != Some(200) {
            assert!(tokio::time::Instant::now() < deadline, "{name} not ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        g
    }
}
