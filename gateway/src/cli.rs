//! Command-line settings of a gateway (flags with environment fallbacks), shared by the
//! `gateway` binary and `worldmesh gateway`.

use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Parser, Debug)]
#[command(version, about = "worldmesh gateway (QUIC edge)")]
pub struct Args {
    /// UDP address for QUIC.
    #[arg(long, env = "WORLDMESH_GATEWAY_LISTEN", default_value = "0.0.0.0:7000")]
    listen: String,
    #[arg(long, env = "WORLDMESH_GATEWAY_NAME", default_value = "gateway-0")]
    name: String,
    /// PEM certificate chain; without it a self-signed development certificate is generated.
    #[arg(long, env = "WORLDMESH_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "WORLDMESH_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[arg(long, env = "WORLDMESH_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Idle timeout in seconds.
    #[arg(long, env = "WORLDMESH_IDLE_TIMEOUT_S", default_value_t = 10)]
    idle_timeout_s: u64,
    /// Accept guest logins (a name without a password). For development only.
    #[arg(long, env = "WORLDMESH_ALLOW_GUESTS", value_parser = clap::builder::BoolishValueParser::new())]
    allow_guests: bool,
    /// Lifetime of session tokens, seconds.
    #[arg(long, env = "WORLDMESH_TOKEN_TTL_S", default_value_t = 24 * 3600)]
    token_ttl_s: u64,
    /// On SIGTERM, seconds clients get to leave before the gateway exits anyway.
    #[arg(long, env = "WORLDMESH_DRAIN_TIMEOUT_S", default_value_t = 15)]
    drain_timeout_s: u64,
    /// `redis://…` for chat between gateways (a stream every gateway reads); without it chat
    /// beyond `say` reaches this gateway's players only.
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Prefix of every Redis key (the chat stream is `{prefix}chat`).
    #[arg(long, env = "WORLDMESH_REDIS_PREFIX", default_value = "wm:")]
    redis_prefix: String,
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

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = crate::Config {
        name: args.name,
        coordinator_url: args.cluster.coordinator,
        persistence_url: args.cluster.persistence,
        tls: args
            .tls_cert
            .zip(args.tls_key)
            .map(|(cert, key)| crate::TlsFiles { cert, key }),
        max_connections: args.max_connections,
        idle_timeout: Duration::from_secs(args.idle_timeout_s),
        cluster_secret: args.cluster.cluster_secret,
        allow_guests: args.allow_guests,
        token_ttl: Duration::from_secs(args.token_ttl_s),
        drain_timeout: Duration::from_secs(args.drain_timeout_s),
        chat_bus: match &args.redis_url {
            Some(url) => crate::chat::bus::ChatBus::redis(url, &args.redis_prefix),
            None => {
                tracing::warn!(
                    "no REDIS_URL: zone, world and whisper chat reach this gateway's players only"
                );
                crate::chat::bus::ChatBus::local()
            }
        },
        ..Default::default()
    };
    let addr = tokio::net::lookup_host(&args.listen)
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("cannot resolve {}", args.listen))?;
    let socket = crate::bind_udp(addr, config.socket_buffer_bytes)?;
    let shutdown = worldmesh_runtime::shutdown_token();
    // The admin port lives until the process exits, not until the shutdown signal: while
    // draining, /readyz answers 503 and /healthz 200.
    worldmesh_runtime::admin::start(
        &args.service.admin,
        tokio_util::sync::CancellationToken::new(),
    )
    .await?;
    crate::run(socket, config, shutdown).await?;
    Ok(())
}

/// `worldmesh chat …`: operators' chat tools, through the cluster's chat bus (Redis).
#[derive(clap::Args, Debug)]
pub struct ChatArgs {
    #[command(subcommand)]
    command: ChatCommand,
    /// The Redis the gateways' chat bus runs on.
    #[arg(long, env = "REDIS_URL")]
    redis_url: String,
    /// The gateways' key prefix.
    #[arg(long, env = "WORLDMESH_REDIS_PREFIX", default_value = "wm:")]
    redis_prefix: String,
    #[command(flatten)]
    pub process: worldmesh_runtime::service::ProcessArgs,
}

#[derive(clap::Subcommand, Debug)]
enum ChatCommand {
    /// Silences a player on every channel, on any gateway, for a while (logged, with who).
    Silence {
        name: String,
        #[arg(long, default_value_t = 60)]
        minutes: u64,
        /// Who is doing it, for the log.
        #[arg(long, env = "USER", default_value = "operator")]
        by: String,
    },
    /// Lifts a silence.
    Unsilence {
        name: String,
        #[arg(long, env = "USER", default_value = "operator")]
        by: String,
    },
}

pub async fn chat(args: ChatArgs) -> anyhow::Result<()> {
    let bus = crate::chat::bus::ChatBus::redis(&args.redis_url, &args.redis_prefix);
    let publisher = crate::chat::bus::Publisher::new(&bus);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let (name, until, by) = match args.command {
        ChatCommand::Silence { name, minutes, by } => {
            (name, now.as_secs() + minutes.saturating_mul(60), by)
        }
        ChatCommand::Unsilence { name, by } => (name, 0, by),
    };
    anyhow::ensure!(
        worldmesh_protocol::validate_name(&name),
        "{name:?} is not a character name"
    );
    publisher.silence(&name, until).await?;
    tracing::info!(%name, until, %by, "chat silence set");
    println!("{name}: silenced until {until} (Unix seconds; 0 = not silenced)");
    Ok(())
}
