//! Hostile clients: what a gateway facing the internet must shrug off. Each hostile repeats
//! one attack until stopped, reconnecting after every cut-off, and records how the gateway
//! cut it off (the QUIC close code is the protocol's error code). An attack the gateway does
//! not cut off within [`CUT_OFF_DEADLINE`] counts as `not_cut_off`: a failure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;
use worldmesh_protocol::{ClientMessage, ErrorCode, Hello, Input, codec};

use worldmesh_client::{ClientEndpoint, ClientError};

/// Longest a gateway may take to cut an attack off once connected: its login deadline
/// (10 s) plus slack.
pub const CUT_OFF_DEADLINE: Duration = Duration::from_secs(15);
/// Longest a QUIC handshake may take before the attempt counts as `handshake_timeout` (the
/// crowd's own Initial packets lost on a saturated loopback: not the gateway failing to cut
/// anyone off, but reported).
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// Pause between a cut-off and the next attempt, so a few hundred hostiles make steady
/// pressure rather than a reconnect storm that only measures the kernel.
const RECONNECT_GAP: Duration = Duration::from_millis(500);
/// Pause between two spam handshakes of one hostile: 70 spammers make ~350 handshakes/s, a
/// flood the gateway must absorb, while the crowd's own TLS work (it runs on the same 2
/// cores in tests) stays a minor part of the machine.
const SPAM_GAP: Duration = Duration::from_millis(200);

/// One kind of attack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attack {
    /// Random bytes on the control stream.
    RandomBytes,
    /// A frame header announcing 1 MiB.
    Oversized,
    /// Logs in, then sends inputs far faster than the rate limit.
    InputFlood,
    /// Completes QUIC handshakes and drops them at once, five a second.
    HandshakeSpam,
    /// Completes the handshake, then never says anything.
    HalfOpen,
    /// A frame of another protocol version, or a Hello with another version.
    WrongVersion,
    /// Offers another protocol version in ALPN (fails in the TLS handshake).
    WrongAlpn,
}

pub const ATTACKS: [Attack; 7] = [
    Attack::RandomBytes,
    Attack::Oversized,
    Attack::InputFlood,
    Attack::HandshakeSpam,
    Attack::HalfOpen,
    Attack::WrongVersion,
    Attack::WrongAlpn,
];

/// How each attack ended, counted by attack and outcome (an error code name such as
/// `FrameTooLarge`, `alpn_refused`, `dropped_by_client` for spam, or `not_cut_off`).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct HostileReport {
    pub outcomes: BTreeMap<Attack, BTreeMap<String, u64>>,
}

impl HostileReport {
    pub fn attempts(&self, attack: Attack) -> u64 {
        self.outcomes.get(&attack).map_or(0, |o| o.values().sum())
    }

    pub fn count(&self, attack: Attack, outcome: &str) -> u64 {
        self.outcomes
            .get(&attack)
            .and_then(|o| o.get(outcome))
            .copied()
            .unwrap_or(0)
    }

    pub fn not_cut_off(&self) -> u64 {
        self.total("not_cut_off")
    }

    /// Attempts of every attack that ended in `outcome`.
    pub fn total(&self, outcome: &str) -> u64 {
        ATTACKS.iter().map(|a| self.count(*a, outcome)).sum()
    }

    pub fn all_attempts(&self) -> u64 {
        ATTACKS.iter().map(|a| self.attempts(*a)).sum()
    }
}

/// Runs `count` hostiles (attacks assigned round robin) against `gateway` until `stop`.
pub async fn run(gateway: SocketAddr, count: usize, stop: CancellationToken) -> HostileReport {
    let report = Arc::new(Mutex::new(HostileReport::default()));
    let endpoint = ClientEndpoint::new(worldmesh_protocol::ALPN).expect("client endpoint");
    let future = ClientEndpoint::new(b"worldmesh/2").expect("client endpoint");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let attack = ATTACKS[i % ATTACKS.len()];
        let endpoint = if attack == Attack::WrongAlpn {
            future.clone()
        } else {
            endpoint.clone()
        };
        let (report, stop) = (report.clone(), stop.clone());
        tasks.spawn(async move {
            // Spread the start over a second.
            let delay = rand::rng().random_range(0..1000);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let mut attempt = 0u64;
            while !stop.is_cancelled() {
                attempt += 1;
                let name = format!("hostile{i}x{attempt}");
                let outcome = tokio::select! {
                    _ = stop.cancelled() => break,
                    o = attack_once(&endpoint, gateway, attack, &name) => o,
                };
                *report
                    .lock()
                    .expect("report")
                    .outcomes
                    .entry(attack)
                    .or_default()
                    .entry(outcome)
                    .or_default() += 1;
                let gap = if attack == Attack::HandshakeSpam {
                    SPAM_GAP
                } else {
                    RECONNECT_GAP
                };
                tokio::time::sleep(gap).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    report.lock().expect("report").clone()
}

/// How the gateway closed a connection.
fn closed_by(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            let code = c.error_code.into_inner();
            ErrorCode::from_u32(code as u32)
                .map_or_else(|| format!("app_{code}"), |c| format!("{c:?}"))
        }
        quinn::ConnectionError::ConnectionClosed(c)
            if c.error_code == quinn::TransportErrorCode::crypto(120) =>
        {
            "alpn_refused".into()
        }
        quinn::ConnectionError::TimedOut => "idle_timeout".into(),
        // Our CONNECTION_CLOSE was lost and the gateway had already forgotten us.
        quinn::ConnectionError::Reset => "stateless_reset".into(),
        quinn::ConnectionError::LocallyClosed => "dropped_by_client".into(),
        other => format!("transport: {other}"),
    }
}

fn connect_outcome(e: ClientError) -> String {
    match e {
        ClientError::Connection(c) => closed_by(&c),
        other => other.reason(),
    }
}

async fn attack_once(
    endpoint: &ClientEndpoint,
    gateway: SocketAddr,
    attack: Attack,
    name: &str,
) -> String {
    if attack == Attack::InputFlood {
        return flood(endpoint, gateway, name).await;
    }
    let connection = match tokio::time::timeout(HANDSHAKE_DEADLINE, endpoint.connect(gateway)).await
    {
        Err(_) => return "handshake_timeout".into(),
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return connect_outcome(e),
    };
    tokio::time::timeout(CUT_OFF_DEADLINE, attack_connected(connection, attack, name))
        .await
        .unwrap_or_else(|_| "not_cut_off".into())
}

async fn attack_connected(connection: quinn::Connection, attack: Attack, name: &str) -> String {
    match attack {
        Attack::HandshakeSpam => {
            connection.close(0u32.into(), b"spam");
            return "dropped_by_client".into();
        }
        Attack::HalfOpen | Attack::WrongAlpn => {}
        Attack::RandomBytes | Attack::Oversized | Attack::WrongVersion => {
            let bytes = match attack {
                Attack::RandomBytes => {
                    let mut rng = rand::rng();
                    let len = rng.random_range(1..200);
                    (0..len).map(|_| rng.random()).collect::<Vec<u8>>()
                }
                Attack::Oversized => vec![1, 0, 0, 16, 0, 0xff, 0xff, 0xff],
                _ => {
                    let frame_version = rand::rng().random_bool(0.5);
                    if frame_version {
                        vec![2, 1, 0, 0, 0, 3]
                    } else {
                        codec::encode_to_vec(&ClientMessage::Hello(Hello {
                            protocol_version: 2,
                            name: name.to_owned(),
                        }))
                        .expect("encodes")
                    }
                }
            };
            if let Ok((mut send, _recv)) = connection.open_bi().await {
                let _ = send.write_all(&bytes).await;
                // Keep the stream open: the gateway must act on what it got.
                return closed_by(&connection.closed().await);
            }
        }
        Attack::InputFlood => unreachable!("handled above"),
    }
    closed_by(&connection.closed().await)
}

/// Logs in (registering the account), then sends 500 inputs per second (8× the limit).
async fn flood(endpoint: &ClientEndpoint, gateway: SocketAddr, name: &str) -> String {
    let login = crate::bot::login(endpoint, gateway, name, true);
    let session = match tokio::time::timeout(HANDSHAKE_DEADLINE, login).await {
        Err(_) => return "handshake_timeout".into(),
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return format!("login_{}", connect_outcome(e)),
    };
    tokio::time::timeout(CUT_OFF_DEADLINE, flood_session(session))
        .await
        .unwrap_or_else(|_| "not_cut_off".into())
}

async fn flood_session(mut session: crate::Session) -> String {
    let mut seq = 0u32;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    loop {
        tick.tick().await;
        seq = seq.wrapping_add(1);
        let input = Input {
            seq,
            ack_tick: 0,
            heading: 0.0,
            speed: 1.0,
            actions: 0,
        };
        if session.send_input(input).is_err() {
            if let Some(reason) = session.connection.close_reason() {
                return closed_by(&reason);
            }
            return "send_failed".into();
        }
    }
}
