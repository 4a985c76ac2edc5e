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
