//! Hostile and broken clients get a typed Kick and lose their connection; the process and the
//! other players carry on as if nothing happened.

mod common;

use std::time::Duration;

use common::*;
use worldmesh_client::{ClientEndpoint, Session};
use worldmesh_protocol::codec::{self, FrameHeader, HEADER_LEN};
use worldmesh_protocol::*;

/// Reads server frames until a Kick (skipping a Welcome), bounded in time.
async fn read_kick(recv: &mut quinn::RecvStream) -> Kick {
    let read = async {
        let mut payload = Vec::new();
        loop {
            let mut header = [0u8; HEADER_LEN];
            recv.read_exact(&mut header)
                .await
                .expect("a Kick frame before the stream ends");
            let header = FrameHeader::parse(header).expect("valid header from the server");
            payload.resize(header.len, 0);
            recv.read_exact(&mut payload).await.expect("frame payload");
            if let ServerMessage::Kick(k) =
                codec::decode_payload::<ServerMessage>(&payload).expect("server frame decodes")
            {
                return k;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("kick within 10 s")
}

/// The connection ends with the kick's code as the QUIC application close code.
async fn assert_closed_with(conn: &quinn::Connection, code: ErrorCode) {
    let reason = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("closed within 10 s");
    match reason {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(u64::from(c.error_code), code.as_u32() as u64, "close code");
        }
        other => panic!("expected an application close with {code}, got {other}"),
    }
}

/// Opens a control stream, writes raw bytes, expects the given kick.
async fn raw_bytes_are_kicked(
    endpoint: &ClientEndpoint,
    gateway: std::net::SocketAddr,
    bytes: &[u8],
    code: ErrorCode,
) {
    let conn = endpoint.connect(gateway).await.expect("QUIC connect");
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    let kick = read_kick(&mut recv).await;
    assert_eq!(kick.code, code, "kick for {bytes:?}: {}", kick.message);
    assert_closed_with(&conn, code).await;
}

fn frame(msg: &ClientMessage) -> Vec<u8> {
    codec::encode_to_vec(msg).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_kicked_and_nobody_else_notices() {
    let (backend, persistence) = Backend::embedded();
    let cluster = start_cluster(persistence, 2).await;
    let gw = cluster.gateway_addr;
    let endpoint = endpoint();

    // Honest players walk for the whole test.
    let honest = {
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let mut sessions = Vec::new();
            for i in 0..3 {
                sessions.push(
                    Session::login(&endpoint, gw, &format!("honest{i}"))
                        .await
                        .expect("honest login"),
                );
            }
            let walks = futures_join(
                sessions
                    .iter_mut()
                    .enumerate()
                    .map(|(i, s)| walk(s, i as f32, 6.0)),
            )
            .await;
            for s in sessions {
                s.bye().await.unwrap();
            }
            walks
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Garbage where a frame should be: a valid header, then a payload that is no message.
    raw_bytes_are_kicked(
        &endpoint,
        gw,
        &[1, 3, 0, 0, 0, 0xff, 0xff, 0xff],
        ErrorCode::Malformed,
    )
    .await;
    // A frame claiming 1 MiB: refused from its header, before anything is read or allocated.
    raw_bytes_are_kicked(&endpoint, gw, &[1, 0, 0, 0x10, 0], ErrorCode::FrameTooLarge).await;
    // A frame of another protocol version.
    raw_bytes_are_kicked(
        &endpoint,
        gw,
        &[7, 1, 0, 0, 0, 3],
        ErrorCode::UnsupportedVersion,
    )
    .await;
    // A Hello that asks for another protocol version.
    let hello_v2 = frame(&ClientMessage::Hello(Hello {
        protocol_version: 2,
        name: "future".into(),
    }));
    raw_bytes_are_kicked(&endpoint, gw, &hello_v2, ErrorCode::UnsupportedVersion).await;
    // Anything but Hello first.
    raw_bytes_are_kicked(
        &endpoint,
        gw,
        &frame(&ClientMessage::Bye),
        ErrorCode::UnexpectedMessage,
    )
    .await;
    // A name that breaks the rules.
    let bad_name = frame(&ClientMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        name: "no spaces allowed".into(),
    }));
    raw_bytes_are_kicked(&endpoint, gw, &bad_name, ErrorCode::InvalidName).await;

    // Logged in, then a garbage datagram.
    let mut s = Session::login(&endpoint, gw, "datagram-vandal")
        .await
        .unwrap();
    s.connection
        .send_datagram(vec![1, 2, 0, 0, 0, 9, 9].into())
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), s.next_control())
        .await
        .expect("kick in time")
    {
        Some(ServerMessage::Kick(k)) => assert_eq!(k.code, ErrorCode::Malformed),
        other => panic!("expected a Kick, got {other:?}"),
    }
    assert_closed_with(&s.connection, ErrorCode::Malformed).await;

    // Logged in, then an input no honest client sends.
    let mut s = Session::login(&endpoint, gw, "nan-pusher").await.unwrap();
    s.send_input(Input {
        seq: 1,
        ack_tick: 0,
        heading: f32::NAN,
        speed: 1.0,
        actions: 0,
    })
    .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), s.next_control())
        .await
        .expect("kick in time")
    {
        Some(ServerMessage::Kick(k)) => assert_eq!(k.code, ErrorCode::InvalidInput),
        other => panic!("expected a Kick, got {other:?}"),
    }
    assert_closed_with(&s.connection, ErrorCode::InvalidInput).await;

    // Logged in, then an input flood: beyond the rate and burst, then kicked.
    let mut s = Session::login(&endpoint, gw, "flooder").await.unwrap();
    for seq in 1..=1000u32 {
        // Sending fails once the gateway has closed the connection on us.
        if s.send_input(Input {
            seq,
            ack_tick: 0,
            heading: 0.0,
            speed: 1.0,
            actions: 0,
        })
        .is_err()
        {
            break;
        }
        if seq % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    match tokio::time::timeout(Duration::from_secs(10), s.next_control())
        .await
        .expect("kick in time")
    {
        Some(ServerMessage::Kick(k)) => assert_eq!(k.code, ErrorCode::RateLimited),
        other => panic!("expected a Kick, got {other:?}"),
    }
    assert_closed_with(&s.connection, ErrorCode::RateLimited).await;

    // A client of another protocol version fails the TLS handshake (ALPN).
    let old_client = ClientEndpoint::new(b"worldmesh/0").unwrap();
    assert!(
        old_client.connect(gw).await.is_err(),
        "ALPN mismatch must fail the handshake"
    );

    // The honest players never noticed.
    for (i, w) in honest.await.expect("honest players ran").iter().enumerate() {
        let rate = w.snapshots as f64 / w.seconds;
        assert!(
            (16.0..=24.0).contains(&rate),
            "honest bot {i}: {rate:.1} snapshots/s during the attacks"
        );
    }
    // And a fresh login still works.
    Session::login(&endpoint, gw, "latecomer")
        .await
        .expect("gateway still serves")
        .bye()
        .await
        .unwrap();
    cluster.stop().await;
    backend.cleanup().await;
}
