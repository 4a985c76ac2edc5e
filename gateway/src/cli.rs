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
    #[arg(
        long,
        env = "WORLDMESH_COORDINATOR_URL",
        default_value = "http://127.0.0.1:7100"
    )]
    coordinator: String,
    #[arg(
        long,
        env = "WORLDMESH_PERSISTENCE_URL",
        default_value = "http://127.0.0.1:7200"
    )]
    persistence: String,
    /// PEM certificate chain; without it a self-signed development certificate is generated.
    #[arg(long, env = "WORLDMESH_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "WORLDMESH_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[arg(long, env = "WORLDMESH_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Secret presented to zones on every link.
    #[arg(long, env = "WORLDMESH_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// Idle timeout in seconds.
    #[arg(long, env = "WORLDMESH_IDLE_TIMEOUT_S", default_value_t = 10)]
    idle_timeout_s: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = crate::Config {
        name: args.name,
        coordinator_url: args.coordinator,
        persistence_url: args.persistence,
        tls: args
            .tls_cert
            .zip(args.tls_key)
            .map(|(cert, key)| crate::TlsFiles { cert, key }),
        max_connections: args.max_connections,
        idle_timeout: Duration::from_secs(args.idle_timeout_s),
        cluster_secret: args.cluster_secret,
        ..Default::default()
    };
    let addr = tokio::net::lookup_host(&args.listen)
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("cannot resolve {}", args.listen))?;
    let socket = crate::bind_udp(addr, config.socket_buffer_bytes)?;
    crate::run(socket, config, worldmesh_runtime::shutdown_token()).await?;
    Ok(())
}
