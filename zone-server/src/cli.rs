//! Command-line settings of one zone server (flags with environment fallbacks), shared by the
//! `zone-server` binary and `worldmesh zone`.

use std::time::Duration;

#[derive(clap::Parser, Debug)]
#[command(version, about = "worldmesh zone server")]
pub struct Args {
    /// gRPC listen address (gateway links).
    #[arg(long, env = "WORLDMESH_ZONE_LISTEN", default_value = "0.0.0.0:7300")]
    listen: String,
    /// Stable zone name (e.g. the pod name).
    #[arg(long, env = "WORLDMESH_ZONE_NAME", default_value = "zone-0")]
    name: String,
    /// Address gateways reach this zone at, e.g. http://zone-0.zones:7300.
    #[arg(long, env = "WORLDMESH_ZONE_ADVERTISE")]
    advertise: Option<String>,
    /// View radius in metres.
    #[arg(long, env = "WORLDMESH_VIEW_RADIUS", default_value_t = 100.0)]
    view_radius: f32,
    /// Checkpoint interval in milliseconds.
    #[arg(long, env = "WORLDMESH_CHECKPOINT_MS", default_value_t = 1000)]
    checkpoint_ms: u64,
    /// Most entities one player replicates besides itself: the nearest (0: no cap). Bounds
    /// the tick's cost per player in a crowd.
    #[arg(long, env = "WORLDMESH_MAX_VISIBLE", default_value_t = crate::sim::snapshot::DEFAULT_MAX_VISIBLE)]
    max_visible: usize,
    /// Update far entities every tick, like near ones (turns level of detail off).
    #[arg(long, env = "WORLDMESH_NO_LOD")]
    no_lod: bool,
    /// Threads that encode snapshots, the tick thread included (0: one per core).
    #[arg(long, env = "WORLDMESH_SNAPSHOT_THREADS", default_value_t = 0)]
    snapshot_threads: usize,
    /// The game the zone runs (every zone of a cluster must run the same one). The
    /// `zone-server` binary knows only `none`; `worldmesh zone` knows the games in the
    /// repository (`arena`, `paint`).
    #[arg(long, env = "WORLDMESH_GAME", default_value = "none")]
    pub game: String,
    #[command(flatten)]
    cluster: worldmesh_runtime::service::ClusterArgs,
    #[command(flatten)]
    service: worldmesh_runtime::service::ServiceArgs,
}

impl Args {
    /// The flags every service has (threads, log format, admin port).
    pub fn service(&self) -> &worldmesh_runtime::service::ServiceArgs {
        &self.service
    }
}

/// Runs a zone with the game `args.game` names, as `games` resolves names (`None`: unknown).
pub async fn run(
    args: Args,
    games: impl Fn(&str) -> Option<worldmesh_game::GameRef>,
) -> anyhow::Result<()> {
    let game = games(&args.game)
        .ok_or_else(|| anyhow::anyhow!("unknown game {:?} (--game)", args.game))?;
    let config = crate::Config {
        name: args.name,
        advertise: args.advertise,
        coordinator_url: args.cluster.coordinator,
        persistence_url: args.cluster.persistence,
        view_radius: args.view_radius,
        checkpoint_interval: Duration::from_millis(args.checkpoint_ms),
        cluster_secret: args.cluster.cluster_secret,
        game,
        snapshots: crate::sim::snapshot::SnapshotConfig {
            max_visible: args.max_visible,
            lod: !args.no_lod,
            threads: match args.snapshot_threads {
                0 => crate::sim::snapshot::SnapshotConfig::default().threads,
                n => n,
            },
        },
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    let shutdown = worldmesh_runtime::shutdown_token();
    // The admin port lives until the process exits, not until the shutdown signal: while
    // draining, /readyz answers 503 and /healthz 200.
    worldmesh_runtime::admin::start(
        &args.service.admin,
        tokio_util::sync::CancellationToken::new(),
    )
    .await?;
    crate::run(listener, config, shutdown).await?;
    Ok(())
}
