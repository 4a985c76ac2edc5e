//! The gateway's TLS: a production certificate from PEM files (read with rustls-pki-types),
//! a typed error for a bad one, and a clear refusal for a client of another protocol version
//! (ALPN carries the version, so the mismatch is caught in the handshake).

mod common;

use common::*;
use rustls::pki_types::CertificateDer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_the_certificate_from_pem_files() {
    let dir = std::env::temp_dir().join(format!(
        "worldmesh-tls-{}",
        worldmesh_testkit::unique_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["game.example.com".to_owned()]).unwrap();
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();

    let (backend, persistence) = Backend::embedded();
    let mut config = worldmesh::cluster::ClusterConfig::new(persistence);
    config.zones = 1;
    config.gateway.tls = Some(worldmesh_gateway::TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    });
    let cluster = worldmesh::cluster::Cluster::start(config).await.unwrap();
    let endpoint = endpoint();
    let s = worldmesh_client::Session::login(&endpoint, cluster.gateway_addr, "pemuser")
        .await
        .expect("login over the PEM certificate");
    let served = s
        .connection
        .peer_identity()
        .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok())
        .expect("a certificate chain");
    assert_eq!(
        served[0].as_ref(),
        ck.cert.der().as_ref(),
        "our certificate is served"
    );
    s.bye().await.unwrap();
    cluster.stop().await;
    backend.cleanup().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_bad_pem_file_is_a_typed_error_at_start() {
    let dir = std::env::temp_dir().join(format!(
        "worldmesh-badtls-{}",
        worldmesh_testkit::unique_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(dir.join("key.pem"), "not a key").unwrap();
    let socket = worldmesh_gateway::bind_udp(([127, 0, 0, 1], 0).into(), 1 << 20).unwrap();
    let config = worldmesh_gateway::Config {
        tls: Some(worldmesh_gateway::TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }),
        ..Default::default()
    };
    let err = worldmesh_gateway::run(socket, config, tokio_util::sync::CancellationToken::new())
        .await
        .expect_err("a bad certificate must not start a gateway");
    assert!(
        matches!(err, worldmesh_gateway::Error::Tls(_)),
        "typed TLS error, got {err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_another_protocol_version_is_refused_in_the_handshake() {
    let (backend, persistence) = Backend::embedded();
    let mut config = worldmesh::cluster::ClusterConfig::new(persistence);
    config.zones = 1;
    let cluster = worldmesh::cluster::Cluster::start(config).await.unwrap();
    let future_client = worldmesh_client::ClientEndpoint::new(b"worldmesh/2").unwrap();
    let err = worldmesh_client::Session::login(&future_client, cluster.gateway_addr, "later")
        .await
        .err()
        .expect("refused");
    let text = err.to_string().to_lowercase();
    assert!(
        text.contains("application protocol") || text.contains("known protocol"),
        "the error says the protocol is not supported: {text}"
    );
    // The right version still gets in.
    let s = worldmesh_client::Session::login(&endpoint(), cluster.gateway_addr, "now")
        .await
        .expect("current clients log in");
    s.bye().await.unwrap();
    cluster.stop().await;
    backend.cleanup().await;
}
