//! The transport's ceiling, measured with no worldmesh code in the path: a bare quinn server
//! that echoes every datagram, and N client connections sending datagrams of a given size at
//! a given rate. The server uses the gateway's TLS set-up and socket buffers, so the only
//! difference from a gateway is everything a gateway does beyond echoing. Issues 6 and 7
//! state gateway and cluster figures as ratios to this, measured in the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::stats::Percentiles;
use worldmesh_client::{ClientEndpoint, ClientError};

#[derive(Debug, Clone)]
pub struct EchoConfig {
    pub connections: usize,
    /// Datagrams each connection sends per second.
    pub rate_hz: u32,
    /// Bytes per datagram (at least 16: a sequence number and a timestamp).
    pub payload: usize,
    pub duration: Duration,
    /// Connections opened per second.
    pub ramp_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EchoReport {
    pub connections: usize,
    pub connected: usize,
    pub sent: u64,
    pub delivered: u64,
    /// Echoes received / datagrams sent, over the measured window.
    pub delivered_ratio: f64,
    pub echo_rtt_ms: Percentiles,
    /// Datagrams the server echoed per second.
    pub echoed_per_s: f64,
    /// CPU of this process (server and clients together) per echoed datagram, microseconds.
    pub cpu_us_per_datagram: f64,
    pub duration_s: f64,
}

/// Process CPU time (user + system) so far, from /proc (Linux); 0 elsewhere.
pub fn process_cpu() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / 100.0)
}

async fn serve(endpoint: quinn::Endpoint, echoed: Arc<AtomicU64>, stop: CancellationToken) {
    loop {
        let incoming = tokio::select! {
            _ = stop.cancelled() => return,
            i = endpoint.accept() => match i { Some(i) => i, None => return },
        };
        let (echoed, stop) = (echoed.clone(), stop.clone());
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            loop {
                let d = tokio::select! {
                    _ = stop.cancelled() => return,
                    d = conn.read_datagram() => d,
                };
                let Ok(d) = d else { return };
                if conn.send_datagram(d).is_ok() {
                    echoed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

/// Runs the echo server and its clients in this process and measures them.
pub async fn run(config: EchoConfig) -> Result<EchoReport, ClientError> {
    let socket = worldmesh_gateway::bind_udp(
        (std::net::Ipv4Addr::LOCALHOST, 0).into(),
        worldmesh_gateway::Config::default().socket_buffer_bytes,
    )?;
    socket.set_nonblocking(true)?;
    let addr = socket.local_addr()?;
    let identity = worldmesh_gateway::tls::Identity::self_signed()
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let crypto = worldmesh_gateway::tls::server_crypto(identity)
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let server = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(quinn::ServerConfig::with_crypto(crypto)),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    let stop = CancellationToken::new();
    let echoed = Arc::new(AtomicU64::new(0));
    tokio::spawn(serve(server, echoed.clone(), stop.clone()));

    let client = ClientEndpoint::new(worldmesh_protocol::ALPN)?;
    let sent = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let rtts = Arc::new(std::sync::Mutex::new(
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
    ));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Echoes count when the datagram was *sent* inside the measured window (µs since start).
    let window = Arc::new((AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let gap = Duration::from_secs_f64(1.0 / config.ramp_per_s.max(0.001));
    let payload = config.payload.max(16);
    for i in 0..config.connections {
        let conn = match client.connect(addr).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "echo client could not connect");
                continue;
            }
        };
        let (sent, delivered, rtts, measuring, window, stop) = (
            sent.clone(),
            delivered.clone(),
            rtts.clone(),
            measuring.clone(),
            window.clone(),
            stop.clone(),
        );
        let period = Duration::from_secs_f64(1.0 / config.rate_hz.max(1) as f64);
        tasks.spawn(async move {
            // Random phase, like real clients.
            tokio::time::sleep(period.mul_f64((i as f64 * 0.618_034).fract())).await;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut buf = vec![0u8; payload];
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {
                        let us = started.elapsed().as_micros() as u64;
                        buf[..8].copy_from_slice(&us.to_le_bytes());
                        if conn.send_datagram(Bytes::copy_from_slice(&buf)).is_ok()
                            && measuring.load(Ordering::Relaxed)
                        {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    d = conn.read_datagram() => {
                        let Ok(d) = d else { return };
                        let at = if d.len() >= 8 {
                            u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
                        } else {
                            continue;
                        };
                        if at >= window.0.load(Ordering::Relaxed) && at < window.1.load(Ordering::Relaxed) {
                            let rtt = (started.elapsed().as_micros() as u64).saturating_sub(at);
                            delivered.fetch_add(1, Ordering::Relaxed);
                            let _ = rtts.lock().map(|mut h| h.record(rtt.clamp(1, 60_000_000)));
                        }
                    }
                }
            }
        });
        tokio::time::sleep(gap).await;
    }
    let connected = tasks.len();
    // Settle for a second, then measure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu0, echoed0, t0) = (
        process_cpu(),
        echoed.load(Ordering::Relaxed),
        Instant::now(),
    );
    window
        .0
        .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(config.duration).await;
    window
        .1
        .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    measuring.store(false, Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    let (cpu, echoes) = (
        process_cpu().saturating_sub(cpu0),
        echoed.load(Ordering::Relaxed) - echoed0,
    );
    // Late echoes of the last datagrams still count as delivered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    let (sent, delivered) = (
        sent.load(Ordering::Relaxed),
        delivered.load(Ordering::Relaxed),
    );
    let h = rtts
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(EchoReport {
        connections: config.connections,
        connected,
        sent,
        delivered,
        delivered_ratio: if sent > 0 {
            delivered as f64 / sent as f64
        } else {
            0.0
        },
        echo_rtt_ms: if h.is_empty() {
            Percentiles::default()
        } else {
            Percentiles {
                p50: ms(h.value_at_quantile(0.5)),
                p99: ms(h.value_at_quantile(0.99)),
                max: ms(h.max()),
            }
        },
        echoed_per_s: echoes as f64 / secs,
        cpu_us_per_datagram: if echoes > 0 {
            cpu.as_secs_f64() * 1e6 / echoes as f64
        } else {
            0.0
        },
        duration_s: secs,
    })
}
