//! `wss://` over loopback: a CA and a server certificate made in the test
//! with rcgen, the server through `ferrows::tls::server_config` and a
//! tokio-rustls acceptor, the client through `ClientBuilder::tls_config`.
#![cfg(feature = "tls")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::{next_msg, noise, within};
use ferrows::tls::tokio_rustls::TlsAcceptor;
use ferrows::{ClientBuilder, Config, Error, MaybeTlsStream, Message};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A private CA and a server certificate it signed.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

/// Makes a CA and a certificate for `names` signed by it.
fn pki(names: &[&str]) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ferrows test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let params = CertificateParams::new(names).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// A TLS echo server on an ephemeral port, serving `n` connections; each
/// result (TLS or WebSocket failure as text) is returned.
async fn tls_echo_server(
    pki: &Pki,
    config: Config,
    n: usize,
) -> (u16, JoinHandle<Vec<Result<(), String>>>) {
    let tls = ferrows::tls::server_config(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).unwrap();
    let acceptor = TlsAcceptor::from(tls);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let mut results = Vec::new();
        for _ in 0..n {
            let (tcp, _) = listener.accept().await.unwrap();
            let result = async {
                let tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
                let stream = MaybeTlsStream::ServerTls(Box::new(tls));
                let mut ws = ferrows::Handshake::read(stream, config.clone())
                    .await
                    .map_err(|e| e.to_string())?
                    .accept()
                    .await
                    .map_err(|e| e.to_string())?;
                assert!(ws.get_ref().is_tls());
                while let Some(msg) = ws.recv().await {
                    let msg = msg.map_err(|e| e.to_string())?;
                    if msg.is_text() || msg.is_binary() {
                        ws.send(msg).await.map_err(|e| e.to_string())?;
                    }
                }
                Ok(())
            }
            .await;
            results.push(result);
        }
        results
    });
    (port, server)
}

#[tokio::test]
async fn wss_round_trip_with_a_private_ca() {
    let pki = pki(&["localhost", "127.0.0.1"]);
    let (port, server) = tls_echo_server(&pki, Config::default(), 1).await;
    let tls = ferrows::tls::client_config_with_ca(pki.ca_pem.as_bytes()).unwrap();
    let (mut ws, response) = within(
        "connect",
        ClientBuilder::new(format!("wss://127.0.0.1:{port}/secure"))
            .tls_config(tls)
            .connect(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 101);
    assert!(ws.get_ref().is_tls());
    assert!(ws.get_ref().get_ref().peer_addr().is_ok());

    for (i, len) in [0usize, 5, 126, 70_000, 1 << 20].into_iter().enumerate() {
        let data = noise(len, i as u64);
        ws.send(data.clone()).await.unwrap();
        assert_eq!(next_msg(&mut ws).await, Message::binary(data));
    }
    ws.send("über TLS").await.unwrap();
    assert_eq!(next_msg(&mut ws).await.as_text(), Some("über TLS"));

    // The closing handshake over TLS (close_notify and TCP close included).
    within("close", ws.close(1000, "bye")).await.unwrap();
    drop(ws);
    let results = within("server", server).await.unwrap();
    assert_eq!(results, [Ok(())]);
}

#[tokio::test]
async fn wss_by_host_name_with_compression() {
    let pki = pki(&["localhost"]);
    let config = Config::default().compression(true);
    let (port, server) = tls_echo_server(&pki, config.clone(), 1).await;
    let tls = ferrows::tls::client_config_with_ca(pki.ca_pem.as_bytes()).unwrap();
    let (mut ws, _) = within(
        "connect",
        ClientBuilder::new(format!("wss://localhost:{port}/"))
            .tls_config(tls)
            .config(config)
            .connect(),
    )
    .await
    .unwrap();
    assert!(ws.compression().is_some());
    let text = "compressible ".repeat(1000);
    ws.send(text.as_str()).await.unwrap();
    assert_eq!(next_msg(&mut ws).await.as_text(), Some(text.as_str()));
    within("close", ws.close(1000, "")).await.unwrap();
    drop(ws);
    assert_eq!(within("server", server).await.unwrap(), [Ok(())]);
}

#[tokio::test]
async fn a_client_without_the_ca_refuses_the_server() {
    let pki = pki(&["127.0.0.1"]);
    let (port, server) = tls_echo_server(&pki, Config::default(), 1).await;
    // The default roots (Mozilla's) do not include our private CA.
    let result = within(
        "connect",
        ferrows::connect(&format!("wss://127.0.0.1:{port}/")),
    )
    .await;
    match result {
        Err(Error::Tls(why)) => assert!(why.contains("UnknownIssuer"), "{why}"),
        other => panic!("expected a TLS error, got {other:?}"),
    }
    // The server's TLS accept fails too: the client aborted the handshake.
    let results = within("server", server).await.unwrap();
    assert!(results[0].is_err(), "{results:?}");
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let pki = pki(&["example.test"]);
    let (port, _server) = tls_echo_server(&pki, Config::default(), 1).await;
    let tls = ferrows::tls::client_config_with_ca(pki.ca_pem.as_bytes()).unwrap();
    let result = within(
        "connect",
        ClientBuilder::new(format!("wss://127.0.0.1:{port}/"))
            .tls_config(tls)
            .connect(),
    )
    .await;
    match result {
        Err(Error::Tls(why)) => assert!(why.contains("not valid for name"), "{why}"),
        other => panic!("expected a TLS name error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_insecure_config_accepts_any_certificate() {
    let pki = pki(&["example.test"]);
    let (port, server) = tls_echo_server(&pki, Config::default(), 1).await;
    let tls = ferrows::tls::insecure_client_config().unwrap();
    let (mut ws, _) = within(
        "connect",
        ClientBuilder::new(format!("wss://127.0.0.1:{port}/"))
            .tls_config(tls)
            .connect(),
    )
    .await
    .unwrap();
    ws.send("anyone").await.unwrap();
    assert_eq!(next_msg(&mut ws).await.as_text(), Some("anyone"));
    within("close", ws.close(1000, "")).await.unwrap();
    drop(ws);
    assert_eq!(within("server", server).await.unwrap(), [Ok(())]);
}

#[tokio::test]
async fn a_plain_client_against_a_tls_server_fails_cleanly() {
    let pki = pki(&["127.0.0.1"]);
    let (port, server) = tls_echo_server(&pki, Config::default(), 1).await;
    let result = within(
        "connect",
        ferrows::connect(&format!("ws://127.0.0.1:{port}/")),
    )
    .await;
    assert!(result.is_err(), "a ws:// handshake cannot succeed on TLS");
    let results = within("server", server).await.unwrap();
    assert!(results[0].is_err(), "{results:?}");
}

#[test]
fn tls_configs_report_bad_input() {
    let pki = pki(&["localhost"]);
    let tls_err = |r: ferrows::Result<_>| match r {
        Err(Error::Tls(why)) => why,
        Err(other) => panic!("expected a TLS error, got {other:?}"),
        Ok(_) => panic!("expected a TLS error"),
    };
    assert!(
        tls_err(ferrows::tls::client_config_with_ca(b"not a PEM").map(drop))
            .contains("no certificate")
    );
    assert!(
        tls_err(ferrows::tls::server_config(b"", pki.key_pem.as_bytes()).map(drop))
            .contains("no certificate")
    );
    tls_err(ferrows::tls::server_config(pki.cert_pem.as_bytes(), b"no key here").map(drop));
    // A key that does not match the certificate.
    let other = KeyPair::generate().unwrap().serialize_pem();
    tls_err(ferrows::tls::server_config(pki.cert_pem.as_bytes(), other.as_bytes()).map(drop));
    // And the good pair loads.
    assert!(ferrows::tls::server_config(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).is_ok());
    let missing = std::path::Path::new("/nonexistent/ferrows/cert.pem");
    assert!(
        tls_err(ferrows::tls::server_config_from_files(missing, missing).map(drop))
            .contains("reading")
    );
}
