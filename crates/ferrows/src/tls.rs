//! TLS configuration helpers (rustls, ring provider).
//!
//! Every config is built with an explicit crypto provider, so nothing
//! depends on a process-wide default being installed.
//!
//! Every config made here honours `SSLKEYLOGFILE`: when it names a file,
//! the TLS session secrets are appended to it (NSS key log format, what
//! Wireshark's `tls.keylog_file` reads to decrypt a capture), and a
//! warning is logged once, since anyone with that file can read the
//! traffic.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::error::{Error, Result};

pub use rustls;
pub use tokio_rustls;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The key log for a new config: rustls' `KeyLogFile` when
/// `SSLKEYLOGFILE` is set (warned about once per process), else none.
fn key_log() -> Arc<dyn rustls::KeyLog> {
    static WARNED: std::sync::Once = std::sync::Once::new();
    match std::env::var_os("SSLKEYLOGFILE") {
        Some(path) if !path.is_empty() => {
            WARNED.call_once(|| {
                tracing::warn!(
                    "SSLKEYLOGFILE is set: TLS session keys are written to {} (anyone with that file can decrypt the captured traffic)",
                    std::path::Path::new(&path).display()
                );
            });
            Arc::new(rustls::KeyLogFile::new())
        }
        _ => Arc::new(rustls::NoKeyLog),
    }
}

fn tls_err(e: impl std::fmt::Display) -> Error {
    Error::Tls(e.to_string())
}

fn client_with_roots(roots: RootCertStore) -> Result<Arc<ClientConfig>> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.key_log = key_log();
    Ok(Arc::new(config))
}

fn webpki_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// A client config trusting the Mozilla root certificates (webpki-roots).
///
/// # Errors
///
/// [`Error::Tls`] if the provider rejects the protocol versions (it does not).
pub fn client_config() -> Result<Arc<ClientConfig>> {
    client_with_roots(webpki_roots())
}

/// A client config trusting the CA certificates in `pem` in addition to
/// the Mozilla roots: for servers with a private or self-signed certificate.
///
/// # Errors
///
/// [`Error::Tls`] if `pem` holds no usable certificate.
pub fn client_config_with_ca(pem: &[u8]) -> Result<Arc<ClientConfig>> {
    let mut roots = webpki_roots();
    let mut added = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| Error::Tls(format!("reading CA PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| Error::Tls(format!("CA certificate: {e}")))?;
        added += 1;
    }
    if added == 0 {
        return Err(Error::Tls("no certificate found in the CA PEM".into()));
    }
    client_with_roots(roots)
}

/// A client config that accepts **any** server certificate. Only for
/// testing against servers you control (`ferrows connect --insecure`): it
/// gives up all protection against interception.
///
/// # Errors
///
/// [`Error::Tls`] if the provider rejects the protocol versions (it does not).
pub fn insecure_client_config() -> Result<Arc<ClientConfig>> {
    let provider = provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.key_log = key_log();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct AcceptAnything(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A server config from a PEM certificate chain and a PEM private key
/// (PKCS#8, PKCS#1 or SEC1), offering ALPN `http/1.1`.
///
/// # Errors
///
/// [`Error::Tls`] naming what is wrong with the certificate or key.
pub fn server_config(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Tls(format!("reading certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls(
            "no certificate found in the certificate PEM".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| Error::Tls(format!("reading private key PEM: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(format!("certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.key_log = key_log();
    Ok(Arc::new(config))
}

/// [`server_config`] from files.
///
/// # Errors
///
/// [`Error::Tls`] if a file cannot be read or is not valid.
pub fn server_config_from_files(
    cert_path: &std::path::Path,
    key_path: &std::path::Path,
) -> Result<Arc<ServerConfig>> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| Error::Tls(format!("reading {}: {e}", p.display())))
    };
    server_config(&read(cert_path)?, &read(key_path)?)
}
