//! The real binaries as processes (`worldmesh <service>`), for tests that kill, signal or
//! measure one service on its own, and for benchmarks that measure the cluster as deployed.
//! Each process logs to its own file in one directory per run, kept for post-mortems, and
//! dies with the process that started it (`PR_SET_PDEATHSIG`), even one killed outright.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use worldmesh_protocol::grpc::coordinator::{
    GetWorldRequest, coordinator_client::CoordinatorClient,
};

pub use crate::ports::{free_tcp_port, free_udp_port};

/// Where the processes' logs go by default: one directory per run.
///
/// # Panics
/// When the temporary directory cannot be made.
pub fn log_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("wm-mp-{}", crate::unique_suffix()));
        std::fs::create_dir_all(&d).expect("a temporary directory");
        d
    })
}

static BINARY: OnceLock<PathBuf> = OnceLock::new();

/// The `worldmesh` binary to start: the one given to [`use_binary`], else `WORLDMESH_BIN`,
/// else the one beside the running executable (a benchmark in `target/release/`) or one
/// directory up (a test in `target/debug/deps/`).
///
/// # Panics
/// When there is none: build it first (`cargo build --bin worldmesh`).
pub fn binary() -> &'static Path {
    BINARY.get_or_init(|| {
        if let Some(p) = std::env::var_os("WORLDMESH_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("the running executable's path");
        let dir = exe.parent().expect("an executable lives in a directory");
        [dir.join("worldmesh"), dir.join("../worldmesh")]
            .into_iter()
            .find(|p| p.exists())
            .expect("no worldmesh binary beside this executable: cargo build --bin worldmesh")
    })
}

/// Starts processes from `path` from now on (tests pass `env!("CARGO_BIN_EXE_worldmesh")`);
/// `false` if processes were already started from another.
pub fn use_binary(path: impl Into<PathBuf>) -> bool {
    let path = path.into();
    BINARY.get_or_init(|| path.clone()) == &path
}

/// How a [`Proc`] stops when dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGKILL at once: tests, where only what was already durable counts.
    Kill,
    /// SIGTERM, as an orchestrator stops it (it drains and saves), SIGKILL after this long.
    Term(Duration),
}

/// One `worldmesh <service>` process.
pub struct Proc {
    pub name: String,
    pub child: Child,
    /// The admin port (`/metrics`, `/healthz`, `/readyz`).
    pub admin: std::net::SocketAddr,
    /// Its gRPC address (`host:port`), for services that have one.
    pub listen: Option<String>,
    /// Its stdout and stderr.
    pub log: PathBuf,
    stop: Stop,
}

/// How to start a [`Proc`]: [`Launch::new`], adjust, then [`Launch::start`].
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    pub name: &'a str,
    pub args: &'a [String],
    /// `WORLDMESH_CLUSTER_SECRET`.
    pub secret: &'a str,
    pub env: &'a [(&'a str, &'a str)],
    pub log_dir: &'a Path,
    /// `RUST_LOG`.
    pub log_level: &'a str,
    pub stop: Stop,
}

impl<'a> Launch<'a> {
    /// A test's process: logs at `info` into [`log_dir`], killed when dropped.
    pub fn new(name: &'a str, args: &'a [String], secret: &'a str) -> Self {
        Self {
            name,
            args,
            secret,
            env: &[],
            log_dir: log_dir(),
            log_level: "info",
            stop: Stop::Kill,
        }
    }

    /// Spawns it.
    ///
    /// # Errors
    /// The log file cannot be made, or the binary cannot be spawned.
    pub fn start(self) -> std::io::Result<Proc> {
        // Processes of one run share the log directory: never overwrite an earlier one's.
        let path = (0..)
            .map(|i| match i {
                0 => self.log_dir.join(format!("{}.log", self.name)),
                i => self.log_dir.join(format!("{}.{i}.log", self.name)),
            })
            .find(|p| !p.exists())
            .expect("a free log name");
        let log = std::fs::File::create(&path)?;
        let admin: std::net::SocketAddr = ([127, 0, 0, 1], free_tcp_port()).into();
        let listen = self
            .args
            .iter()
            .position(|a| a == "--listen")
            .and_then(|i| self.args.get(i + 1).cloned());
        let mut command = Command::new(binary());
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(|| {
                // The process goes when its parent goes, even on Ctrl-C or SIGKILL (Drop
                // would not run): SIGTERM, so it drains as in production.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .args(self.args)
            // Only what a test passes: a REDIS_URL inherited from the environment (CI sets
            // one) would put every test's gateways on one shared chat stream.
            .env_remove("REDIS_URL")
            .envs(self.env.iter().copied())
            .env("WORLDMESH_CLUSTER_SECRET", self.secret)
            .env("WORLDMESH_ADMIN_LISTEN", admin.to_string())
            .env("RUST_LOG", self.log_level)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(Proc {
            name: self.name.to_owned(),
            child,
            admin,
            listen,
            log: path,
            stop: self.stop,
        })
    }
}

impl Proc {
    /// A test's process ([`Launch::new`]).
    ///
    /// # Panics
    /// When it cannot be spawned.
    pub fn start(name: &str, args: &[String], secret: &str) -> Self {
        Self::start_env(name, args, secret, &[])
    }

    /// [`Proc::start`] with extra environment variables.
    ///
    /// # Panics
    /// When it cannot be spawned.
    pub fn start_env(name: &str, args: &[String], secret: &str, env: &[(&str, &str)]) -> Self {
        Launch {
            env,
            ..Launch::new(name, args, secret)
        }
        .start()
        .expect("spawn worldmesh")
    }

    /// The last `n` lines of its log, for a failing test's message.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(n)..].join("\n");
        format!("--- {} ({}) ---\n{tail}", self.name, self.log.display())
    }

    /// How it exited, if it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
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
        cpu_of(self.child.id())
    }

    /// `GET path` on the admin port: (status, body).
    pub async fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.admin, path).await
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Stop::Term(grace) = self.stop {
            self.signal("-TERM");
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system) of a process so far, seconds, from `/proc/<pid>/stat`.
pub fn cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
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

/// A zone process named `zone-{i}` on a free port.
pub fn zone(i: usize, coordinator: &str, persistence: &str, secret: &str) -> Proc {
    zone_with(i, coordinator, persistence, secret, &[])
}

/// A zone process named `zone-{i}` on a free port, `extra` flags appended (`--game arena`).
pub fn zone_with(
    i: usize,
    coordinator: &str,
    persistence: &str,
    secret: &str,
    extra: &[&str],
) -> Proc {
    let port = free_tcp_port();
    let mut args: Vec<String> = vec![
        "zone".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--name".into(),
        format!("zone-{i}"),
        "--coordinator".into(),
        coordinator.into(),
        "--persistence".into(),
        persistence.into(),
    ];
    args.extend(extra.iter().map(std::string::ToString::to_string));
    Proc::start(&format!("zone-{i}"), &args, secret)
}

/// How many zones the coordinator's map lists (0 while it does not answer).
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
    /// Persistence's Redis and key prefix, which gateways use for chat too.
    redis: (String, String),
}

impl Core {
    /// `coordinator_args` are appended to the coordinator's (e.g. `--spawn x,y`).
    pub async fn start(
        persistence: &worldmesh_persistence::Config,
        zones: usize,
        coordinator_args: &[&str],
    ) -> Self {
        Self::start_with(persistence, zones, coordinator_args, &[]).await
    }

    /// [`Core::start`] with `zone_args` appended to every zone's flags (`--game arena`).
    pub async fn start_with(
        persistence: &worldmesh_persistence::Config,
        zones: usize,
        coordinator_args: &[&str],
        zone_args: &[&str],
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
        args.extend(
            coordinator_args
                .iter()
                .map(std::string::ToString::to_string),
        );
        let mut coordinator = Proc::start("coordinator", &args, &secret);
        let redis = (
            persistence
                .redis_url
                .clone()
                .unwrap_or_else(crate::redis_url),
            persistence.redis_prefix.clone(),
        );
        let persistence_args: Vec<String> = vec![
            "persistence".into(),
            "--listen".into(),
            format!("127.0.0.1:{pport}"),
            "--database-url".into(),
            db,
            "--redis-url".into(),
            redis.0.clone(),
            "--redis-prefix".into(),
            redis.1.clone(),
            // Tests register many accounts; the cost of hashing is measured apart.
            "--argon2-memory-kib".into(),
            "1024".into(),
            "--argon2-iterations".into(),
            "1".into(),
        ];
        let mut persistence = Proc::start("persistence", &persistence_args, &secret);
        let mut zones: Vec<Proc> = (0..zones)
            .map(|i| zone_with(i, &coordinator_url, &persistence_url, &secret, zone_args))
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while live_zones(&coordinator_url).await < zones.len() {
            // A process that died (a port taken meanwhile, a bad flag) fails the test now,
            // with its log, instead of after the deadline without one.
            let mut all: Vec<&mut Proc> = vec![&mut coordinator, &mut persistence];
            all.extend(zones.iter_mut());
            let dead: Vec<String> = all
                .iter_mut()
                .filter_map(|p| p.exited().map(|s| format!("{} exited: {s}", p.name)))
                .collect();
            if !dead.is_empty() || tokio::time::Instant::now() >= deadline {
                let tails: Vec<String> = all.iter().map(|p| p.log_tail(30)).collect();
                panic!(
                    "zones did not register ({}):\n{}",
                    if dead.is_empty() {
                        "deadline".to_owned()
                    } else {
                        dead.join(", ")
                    },
                    tails.join("\n")
                );
            }
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
            redis,
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

    /// A gateway process on `port` (production settings: accounts only; chat through
    /// persistence's Redis, under the test's prefix), `extra` flags appended; returns once its
    /// `/readyz` says ready.
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
            "--redis-url".into(),
            self.redis.0.clone(),
            "--redis-prefix".into(),
            self.redis.1.clone(),
        ];
        args.extend(extra.iter().map(std::string::ToString::to_string));
        let mut g = Proc::start(name, &args, &self.secret);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while g.admin_get("/readyz").await.map(|r| r.0) != Some(200) {
            let exited = g.exited();
            assert!(
                exited.is_none() && tokio::time::Instant::now() < deadline,
                "{name} not ready (exited: {exited:?}):\n{}",
                g.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        g
    }
}
