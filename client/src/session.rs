//! A connection to a gateway and a logged-in session over it: login, inputs, snapshots,
//! chat, goodbye.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::sync::mpsc;

use crate::conditioner::{DelayQueue, LinkConditions};
use worldmesh_protocol::codec::{self, FrameHeader, HEADER_LEN};
use worldmesh_protocol::snapshot::{Quantizer, SnapshotDecoder};
use worldmesh_protocol::{
    ActionRequest, Auth, ChatChannel, ChatSay, ChatTo, ClientMessage, EntityState, ErrorCode,
    Hello, Input, Login, Mute, PROTOCOL_VERSION, ServerMessage, SessionToken, Welcome,
};

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("datagram: {0}")]
    Datagram(#[from] quinn::SendDatagramError),
    #[error("kicked: {code}: {message}")]
    Kicked { code: ErrorCode, message: String },
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("timed out")]
    Timeout,
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// A short label for counting errors by reason.
    pub fn reason(&self) -> String {
        match self {
            ClientError::Kicked { code, .. } => format!("kicked_{code:?}"),
            ClientError::Connect(_) => "connect".into(),
            ClientError::Connection(_) => "connection".into(),
            ClientError::Write(_) | ClientError::Datagram(_) => "send".into(),
            ClientError::Protocol(_) => "protocol".into(),
            ClientError::Timeout => "timeout".into(),
            ClientError::Tls(_) | ClientError::Io(_) => "setup".into(),
        }
    }
}

/// Accepts any server certificate: for development clusters, whose gateways generate a
/// self-signed certificate at start. Signatures are still checked, so the handshake is real.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Bytes of datagrams (snapshots, events) a connection holds until the client reads them:
/// a handful of snapshots.
pub const DATAGRAM_RECEIVE_BUFFER: usize = 16 * 1024;

/// Bytes of input datagrams a connection holds while its congestion window is full.
pub const DATAGRAM_SEND_BUFFER: usize = 2 * 1024;

/// A client QUIC endpoint; one serves many connections (bots share one per process).
#[derive(Clone)]
pub struct ClientEndpoint {
    endpoint: quinn::Endpoint,
}

impl ClientEndpoint {
    /// An endpoint offering `alpn` (normally [`worldmesh_protocol::ALPN`]) that accepts any
    /// server certificate (development clusters).
    pub fn new(alpn: &[u8]) -> Result<Self, ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth();
        tls.alpn_protocols = vec![alpn.to_vec()];
        let mut config = quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from(tls).map_err(|e| ClientError::Tls(e.to_string()))?,
        ));
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(Duration::from_secs(2)))
            // A client that reads slower than snapshots come should read the newest, not a
            // backlog (quinn keeps 1.25 MB by default: a minute of snapshots). The oldest
            // beyond this are dropped.
            .datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER))
            // Inputs waiting for the congestion window: the newest matters, so hold a few.
            .datagram_send_buffer_size(DATAGRAM_SEND_BUFFER);
        config.transport_config(Arc::new(transport));
        // One socket carries every bot of the process: thousands of snapshots arrive in the
        // same millisecond after each server tick, so it gets the gateway's large buffers
        // (with the kernel default, a busy bot process drops snapshots on its own socket).
        let socket = bind_udp((std::net::Ipv4Addr::UNSPECIFIED, 0).into())?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| ClientError::Tls("no async runtime for quinn".into()))?;
        let mut endpoint =
            quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)?;
        endpoint.set_default_client_config(config);
        Ok(Self { endpoint })
    }

    /// A QUIC connection to a gateway, before any worldmesh message.
    pub async fn connect(&self, gateway: SocketAddr) -> Result<quinn::Connection, ClientError> {
        Ok(self.endpoint.connect(gateway, "localhost")?.await?)
    }
}

/// The endpoint's UDP socket buffers, each way: a bot process receives thousands of
/// snapshots in the same millisecond after a server tick (the kernel caps it at `rmem_max`).
const SOCKET_BUFFER_BYTES: usize = 8 << 20;

fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer only costs snapshots under bursts, which deltas survive.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A logged-in player.
pub struct Session {
    pub connection: quinn::Connection,
    pub welcome: Welcome,
    /// The session token of an account login (resumes the character on any gateway).
    pub token: Option<SessionToken>,
    send: quinn::SendStream,
    control: mpsc::Receiver<ServerMessage>,
    /// Game events that came as datagrams, handed out with the control messages.
    datagram_events: std::collections::VecDeque<ServerMessage>,
    decoder: SnapshotDecoder,
    quantizer: Quantizer,
    link: LinkConditions,
    inbound: DelayQueue,
    rng: rand::rngs::SmallRng,
}

/// One received snapshot, decoded.
#[derive(Debug, Clone)]
pub struct View {
    pub tick: u32,
    pub last_input_seq: u32,
    /// False when the snapshot arrived after a newer one (it was still decoded).
    pub newest: bool,
    /// Everything the client now shows (the newest view), dequantised.
    pub entities: Vec<EntityState>,
    /// Bytes of the datagram.
    pub bytes: usize,
    /// A full update (no baseline): the first snapshot, or the first from a new zone.
    pub full: bool,
}

impl Session {
    /// A guest login: connects, opens the control stream, sends Hello and waits for Welcome
    /// (or a Kick).
    pub async fn login(
        endpoint: &ClientEndpoint,
        gateway: SocketAddr,
        name: &str,
    ) -> Result<Self, ClientError> {
        Self::login_with(endpoint, gateway, name, None).await
    }

    /// An account login (`auth`: password, registration or token), or a guest one (`None`).
    /// An account login waits for the session token too ([`Session::token`]).
    pub async fn login_with(
        endpoint: &ClientEndpoint,
        gateway: SocketAddr,
        name: &str,
        auth: Option<Auth>,
    ) -> Result<Self, ClientError> {
        let connection = endpoint.connect(gateway).await?;
        let (mut send, recv) = connection.open_bi().await?;
        let account = auth.is_some();
        let first = match auth {
            None => ClientMessage::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                name: name.to_owned(),
            }),
            Some(auth) => ClientMessage::Login(Login {
                protocol_version: PROTOCOL_VERSION,
                name: name.to_owned(),
                auth,
            }),
        };
        let hello =
            codec::encode_to_vec(&first).map_err(|e| ClientError::Protocol(e.to_string()))?;
        send.write_all(&hello).await?;
        let (tx, mut control) = mpsc::channel(64);
        tokio::spawn(read_server_frames(recv, tx));
        let first = tokio::time::timeout(Duration::from_secs(15), control.recv())
            .await
            .map_err(|_| ClientError::Timeout)?;
        match first {
            Some(ServerMessage::Welcome(welcome)) => {
                let quantizer = Quantizer::new(welcome.world);
                let mut token = None;
                if account {
                    match tokio::time::timeout(Duration::from_secs(15), control.recv()).await {
                        Ok(Some(ServerMessage::Session(t))) => token = Some(t),
                        Ok(Some(ServerMessage::Kick(k))) => {
                            return Err(ClientError::Kicked {
                                code: k.code,
                                message: k.message,
                            });
                        }
                        Ok(other) => {
                            return Err(ClientError::Protocol(format!(
                                "expected Session after Welcome, got {other:?}"
                            )));
                        }
                        Err(_) => return Err(ClientError::Timeout),
                    }
                }
                Ok(Self {
                    connection,
                    welcome,
                    token,
                    send,
                    control,
                    datagram_events: std::collections::VecDeque::new(),
                    decoder: SnapshotDecoder::default(),
                    quantizer,
                    link: LinkConditions::default(),
                    inbound: DelayQueue::default(),
                    rng: rand::SeedableRng::from_os_rng(),
                })
            }
            Some(ServerMessage::Kick(k)) => Err(ClientError::Kicked {
                code: k.code,
                message: k.message,
            }),
            Some(other) => Err(ClientError::Protocol(format!(
                "expected Welcome, got {other:?}"
            ))),
            None => Err(match connection.close_reason() {
                Some(e) => ClientError::Connection(e),
                None => ClientError::Protocol("control stream closed before Welcome".into()),
            }),
        }
    }

    /// Puts this client's datagrams through a link conditioner from now on.
    pub fn set_link(&mut self, link: LinkConditions) {
        self.link = link;
    }

    pub fn send_input(&mut self, input: Input) -> Result<(), ClientError> {
        let frame = codec::encode_to_vec(&ClientMessage::Input(input))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        if self.link.is_perfect() {
            return Ok(self.connection.send_datagram(frame.into())?);
        }
        match self.link.fate(&mut self.rng) {
            None => Ok(()),
            Some(delay) if delay.is_zero() => Ok(self.connection.send_datagram(frame.into())?),
            Some(delay) => {
                // A connection that dies meanwhile shows up on the receiving side.
                let connection = self.connection.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = connection.send_datagram(frame.into());
                });
                Ok(())
            }
        }
    }

    /// The newest snapshot tick decoded: what to acknowledge in `Input::ack_tick`.
    pub fn ack_tick(&self) -> u32 {
        self.decoder.ack_tick()
    }

    /// The next snapshot datagram, decoded against the views already held.
    /// Game events that arrive as datagrams meanwhile are kept for [`Session::try_control`].
    pub async fn recv_snapshot(&mut self) -> Result<View, ClientError> {
        let (bytes, snapshot) = loop {
            let bytes = self.next_datagram().await?;
            match codec::decode_frame::<ServerMessage>(&bytes) {
                Ok(ServerMessage::Snapshot(s)) => break (bytes, s),
                Ok(event @ ServerMessage::Event(_)) => self.datagram_events.push_back(event),
                Ok(other) => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected datagram {other:?}"
                    )));
                }
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
        };
        let newest = self
            .decoder
            .apply(&snapshot)
            .map_err(|e| ClientError::Protocol(format!("snapshot {}: {e}", snapshot.tick)))?;
        let entities = self
            .decoder
            .view()
            .iter()
            .map(|(_, e)| self.quantizer.dequantize(e))
            .collect();
        Ok(View {
            tick: snapshot.tick,
            last_input_seq: snapshot.last_input_seq,
            newest,
            entities,
            bytes: bytes.len(),
            full: snapshot.baseline == 0,
        })
    }

    /// The game's replicated components of entity `id` as of the newest snapshot (`None`
    /// when it is not in view or has none). Read one with
    /// [`EntityFields::get`](worldmesh_protocol::snapshot::EntityFields::get) and the game's
    /// type for its kind.
    pub fn fields(
        &self,
        id: worldmesh_protocol::EntityId,
    ) -> Option<&worldmesh_protocol::snapshot::EntityFields> {
        let slot = self.decoder.view().iter().find(|(_, e)| e.id == id.0)?.0;
        self.decoder.fields_of(slot)
    }

    /// The next datagram from the gateway, through the link conditioner.
    async fn next_datagram(&mut self) -> Result<Bytes, ClientError> {
        if self.link.is_perfect() && self.inbound.next_due().is_none() {
            return Ok(self.connection.read_datagram().await?);
        }
        loop {
            if let Some(b) = self.inbound.pop_due(tokio::time::Instant::now()) {
                return Ok(b);
            }
            let wake = self.inbound.next_due();
            tokio::select! {
                d = self.connection.read_datagram() => {
                    let d = d?;
                    if let Some(delay) = self.link.fate(&mut self.rng) {
                        self.inbound.push(tokio::time::Instant::now() + delay, d);
                    }
                }
                _ = async { tokio::time::sleep_until(wake.expect("checked")).await }, if wake.is_some() => {}
            }
        }
    }

    pub async fn say(&mut self, text: &str) -> Result<(), ClientError> {
        let frame = codec::encode_to_vec(&ClientMessage::Chat(ChatSay {
            text: text.to_owned(),
        }))
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(self.send.write_all(&frame).await?)
    }

    /// A line to a channel (say, zone, world, whisper). Lines the gateway accepts come back on
    /// their channel as [`ServerMessage::ChatLine`] (`say`: [`ServerMessage::Chat`]); refused
    /// ones as [`ServerMessage::ChatRefused`]. At most `CHAT_RATE_PER_S` lines a second, in
    /// bursts of `CHAT_BURST`.
    pub async fn chat(&mut self, channel: ChatChannel, text: &str) -> Result<(), ClientError> {
        let frame = codec::encode_to_vec(&ClientMessage::ChatTo(ChatTo {
            channel,
            text: text.to_owned(),
        }))
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(self.send.write_all(&frame).await?)
    }

    /// Stops (`muted`) or resumes hearing `name` on every channel, for this session.
    pub async fn mute(&mut self, name: &str, muted: bool) -> Result<(), ClientError> {
        let frame = codec::encode_to_vec(&ClientMessage::Mute(Mute {
            name: name.to_owned(),
            muted,
        }))
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(self.send.write_all(&frame).await?)
    }

    /// Invites `name` into this player's party (making one if it has none); the invitee gets a
    /// [`ServerMessage::PartyInvite`], members a [`ServerMessage::PartyMember`] when it joins.
    pub async fn party_invite(&mut self, name: &str) -> Result<(), ClientError> {
        self.send_control(&ClientMessage::PartyInvite(name.to_owned()))
            .await
    }

    /// Joins the party `from` invited this player into (leaving any other).
    pub async fn party_accept(&mut self, from: &str) -> Result<(), ClientError> {
        self.send_control(&ClientMessage::PartyAccept(from.to_owned()))
            .await
    }

    pub async fn party_leave(&mut self) -> Result<(), ClientError> {
        self.send_control(&ClientMessage::PartyLeave).await
    }

    /// A trade step (PROTOCOL.md, Trades): open one with a player in range, offer, accept a
    /// revision, cancel. Answered by [`ServerMessage::Trade`] news.
    pub async fn trade(
        &mut self,
        request: worldmesh_protocol::TradeRequest,
    ) -> Result<(), ClientError> {
        self.send_control(&ClientMessage::Trade(request)).await
    }

    /// Drops an item at the character's feet, or picks one up from the ground (PROTOCOL.md,
    /// Items on the ground). Done: a new [`ServerMessage::Inventory`]; refused:
    /// [`ServerMessage::ItemRefused`].
    pub async fn item(
        &mut self,
        request: worldmesh_protocol::ItemRequest,
    ) -> Result<(), ClientError> {
        self.send_control(&ClientMessage::Item(request)).await
    }

    async fn send_control(&mut self, message: &ClientMessage) -> Result<(), ClientError> {
        let frame =
            codec::encode_to_vec(message).map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(self.send.write_all(&frame).await?)
    }

    /// Asks the game to do something (see `PROTOCOL.md`, Action); the answer comes back as
    /// a [`ServerMessage::ActionDone`] with the same `seq`. Build the request with
    /// `worldmesh_game::action::request` from the game's action type, or by hand.
    pub async fn act(&mut self, request: ActionRequest) -> Result<(), ClientError> {
        let frame = codec::encode_to_vec(&ClientMessage::Action(request))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(self.send.write_all(&frame).await?)
    }

    /// A control message, if one arrived (chat, action answers, game events — also those
    /// that came as datagrams — kick).
    pub fn try_control(&mut self) -> Option<ServerMessage> {
        self.datagram_events
            .pop_front()
            .or_else(|| self.control.try_recv().ok())
    }

    /// Waits for the next control message; `None` when the stream ended.
    pub async fn next_control(&mut self) -> Option<ServerMessage> {
        if let Some(event) = self.datagram_events.pop_front() {
            return Some(event);
        }
        self.control.recv().await
    }

    /// Clean logout: Bye, then wait for the gateway to close the connection (it does so after
    /// the character is saved), bounded.
    pub async fn bye(mut self) -> Result<(), ClientError> {
        let frame = codec::encode_to_vec(&ClientMessage::Bye)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.send.write_all(&frame).await?;
        let _ = self.send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.connection.closed()).await;
        Ok(())
    }
}

/// Reads server frames off the control stream into a channel.
async fn read_server_frames(mut recv: quinn::RecvStream, tx: mpsc::Sender<ServerMessage>) {
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; HEADER_LEN];
        if recv.read_exact(&mut header).await.is_err() {
            return;
        }
        let Ok(header) = FrameHeader::parse(header) else {
            return;
        };
        payload.resize(header.len, 0);
        if recv.read_exact(&mut payload).await.is_err() {
            return;
        }
        let Ok(msg) = codec::decode_payload::<ServerMessage>(&payload) else {
            return;
        };
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}
