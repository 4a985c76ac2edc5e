//! TLS for the QUIC endpoint: a certificate and key from PEM files in production, or a fresh
//! self-signed development certificate when none is configured.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::Error;

#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A certificate chain and key ready for rustls.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    pub fn load(files: &TlsFiles) -> Result<Self, Error> {
        let chain = CertificateDer::pem_file_iter(&files.cert)
            .and_then(std::iter::Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| {
                Error::Tls(format!("reading certificate {}: {e}", files.cert.display()))
            })?;
        if chain.is_empty() {
            return Err(Error::Tls(format!(
                "no certificate in {}",
                files.cert.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| Error::Tls(format!("reading key {}: {e}", files.key.display())))?;
        Ok(Self { chain, key })
    }

    /// A self-signed certificate for `localhost` and 127.0.0.1, made at start: fine for local
    /// clusters and tests, where clients skip verification or pin this certificate.
    pub fn self_signed() -> Result<Self, Error> {
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .map_err(|e| Error::Tls(e.to_string()))?;
        Ok(Self {
            chain: vec![ck.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der())),
        })
    }
}

/// The rustls server configuration: TLS 1.3 only (QUIC requires it), ring as the one crypto
/// provider, and the protocol's ALPN, so a client of another protocol version fails the
/// handshake with `no_application_protocol` instead of speaking frames we cannot read.
pub fn server_crypto(
    identity: Identity,
) -> Result<Arc<quinn::crypto::rustls::QuicServerConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    config.alpn_protocols = vec![worldmesh_protocol::ALPN.to_vec()];
    Ok(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(config)
            .map_err(|e| Error::Tls(e.to_string()))?,
    ))
}
