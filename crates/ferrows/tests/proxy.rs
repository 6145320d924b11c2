//! Connecting through real proxies started on loopback: tinyproxy (HTTP
//! `CONNECT`, with and without Basic auth), Dante (SOCKS5) and microsocks
//! (SOCKS5 with user/password); `ws://` and `wss://`, `ClientBuilder` and
//! `EventClient`, the refusals as typed errors, and the bounds (timeout,
//! reply size) against hostile "proxies".
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;
mod proxies;

use std::time::{Duration, Instant};

use common::{echo_server, next_msg, within};
use ferrows::event_client::{Event, EventClient};
use ferrows::proxy::{NoProxy, ProxyError};
use ferrows::{ClientBuilder, Config, Error, Message, Proxy};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

fn port_of(url: &str) -> u16 {
    url.trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Connects to `url` through `proxy` and checks an echo.
async fn echo_through(url: &str, proxy: &str) {
    let (mut ws, response) = within(
        "connect through the proxy",
        ClientBuilder::new(url)
            .proxy(Proxy::parse(proxy).unwrap())
            .connect(),
    )
    .await
    .unwrap_or_else(|e| panic!("{url} through {proxy}: {e}"));
    assert_eq!(response.status(), 101);
    ws.send("through the tunnel").await.unwrap();
    assert_eq!(next_msg(&mut ws).await, Message::text("through the tunnel"));
    ws.close(1000, "").await.unwrap();
}

/// Connects to `url` through `proxy`, expecting a proxy error.
async fn proxy_error(url: &str, proxy: &str) -> ProxyError {
    let result = within(
        "a proxy refusal",
        ClientBuilder::new(url)
            .proxy(Proxy::parse(proxy).unwrap())
            .connect(),
    )
    .await;
    match result {
        Err(Error::Proxy(e)) => e,
        Err(other) => panic!("expected a proxy error, got {other}"),
        Ok(_) => panic!("connected through {proxy}, expected a refusal"),
    }
}

#[tokio::test]
async fn http_connect_through_tinyproxy() {
    let (url, _server) = echo_server(Config::default()).await;
    let port = port_of(&url);
    let proxy = proxies::tinyproxy(&[port], None);
    echo_through(&url, &format!("http://127.0.0.1:{}", proxy.port)).await;
    // Without a scheme, a proxy URL is taken as http://.
    echo_through(&url, &format!("127.0.0.1:{}", proxy.port)).await;
    let log = proxy.log();
    assert!(
        log.matches(&format!("CONNECT 127.0.0.1:{port} HTTP/1.1"))
            .count()
            >= 2,
        "{log}"
    );

    // A port tinyproxy does not allow: 403, named.
    let (other, _server2) = echo_server(Config::default()).await;
    let e = proxy_error(&other, &format!("http://127.0.0.1:{}", proxy.port)).await;
    assert!(
        matches!(e, ProxyError::Refused { status: 403, .. }),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains(&format!(
            "refused the tunnel to 127.0.0.1:{}: 403",
            port_of(&other)
        )),
        "{msg}"
    );
}

#[tokio::test]
async fn http_connect_with_basic_auth_and_407() {
    let (url, _server) = echo_server(Config::default()).await;
    let proxy = proxies::tinyproxy(&[port_of(&url)], Some(("alice", "s3cret")));
    let p = proxy.port;
    echo_through(&url, &format!("http://alice:s3cret@127.0.0.1:{p}")).await;
    // Percent-encoded credentials are decoded.
    echo_through(&url, &format!("http://%61lice:s3cr%65t@127.0.0.1:{p}")).await;

    let e = proxy_error(&url, &format!("http://127.0.0.1:{p}")).await;
    match &e {
        ProxyError::AuthRequired {
            status,
            realm,
            credentials_sent,
            ..
        } => {
            assert_eq!(*status, 407);
            assert_eq!(realm.as_deref(), Some("Tinyproxy"));
            assert!(!credentials_sent);
        }
        other => panic!("expected 407, got {other:?}"),
    }
    assert!(
        e.to_string()
            .contains("requires authentication (407, realm \"Tinyproxy\")"),
        "{e}"
    );

    // Wrong credentials: tinyproxy answers 401 (with WWW-Authenticate),
    // which to a CONNECT can only be the proxy's.
    let e = proxy_error(&url, &format!("http://alice:wrong-pw@127.0.0.1:{p}")).await;
    match &e {
        ProxyError::AuthRequired {
            realm,
            credentials_sent,
            ..
        } => {
            assert_eq!(realm.as_deref(), Some("Tinyproxy"));
            assert!(credentials_sent);
        }
        other => panic!("expected an authentication error, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(msg.contains("rejected the credentials"), "{msg}");
    assert!(!msg.contains("wrong-pw") && !format!("{e:?}").contains("wrong-pw"));
    assert!(msg.contains(&format!("http://***@127.0.0.1:{p}")), "{msg}");
}

#[tokio::test]
async fn socks5_through_dante_with_remote_and_local_names() {
    let (url, _server) = echo_server(Config::default()).await;
    let port = port_of(&url);
    let blocked = common::listen().await;
    let blocked_port = port_of(&blocked.1);
    let proxy = proxies::danted(blocked_port);
    let p = proxy.port;
    echo_through(&url, &format!("socks5h://127.0.0.1:{p}")).await;
    // socks5h://: the proxy gets the name; socks5://: the address.
    let by_name = format!("ws://localhost:{port}/");
    echo_through(&by_name, &format!("socks5h://127.0.0.1:{p}")).await;
    let name = format!("Packet: VER: 5 CMD: 1 FLAG: 0 ATYP: 3 address: localhost.{port}");
    let address = format!("Packet: VER: 5 CMD: 1 FLAG: 0 ATYP: 1 address: 127.0.0.1.{port}");
    let log = proxy.log();
    assert_eq!(log.matches(&name).count(), 1, "{log}");
    assert_eq!(log.matches(&address).count(), 1, "{log}");
    echo_through(&by_name, &format!("socks5://127.0.0.1:{p}")).await;
    let log = proxy.log();
    assert_eq!(
        log.matches(&name).count(),
        1,
        "socks5:// must send the address: {log}"
    );
    assert_eq!(log.matches(&address).count(), 2, "{log}");

    // A rule refuses the port: reply 2, by name.
    let e = proxy_error(&blocked.1, &format!("socks5h://127.0.0.1:{p}")).await;
    assert!(matches!(e, ProxyError::Socks { code: 2, .. }), "{e:?}");
    assert!(
        e.to_string()
            .ends_with("connection not allowed by ruleset (SOCKS reply 2)"),
        "{e}"
    );
    // Nothing listens: the destination refuses.
    drop(blocked);
    let closed = common::listen().await;
    let closed_url = closed.1.clone();
    drop(closed);
    let e = proxy_error(&closed_url, &format!("socks5h://127.0.0.1:{p}")).await;
    assert!(matches!(e, ProxyError::Socks { code: 5, .. }), "{e:?}");
    assert!(
        e.to_string()
            .ends_with("connection refused by destination (SOCKS reply 5)"),
        "{e}"
    );
}

#[tokio::test]
async fn socks5_user_password_through_microsocks() {
    let (url, _server) = echo_server(Config::default()).await;
    let proxy = proxies::microsocks("bob", "pa:ss@word");
    let p = proxy.port;
    echo_through(&url, &format!("socks5h://bob:pa%3Ass%40word@127.0.0.1:{p}")).await;
    echo_through(&url, &format!("socks5://bob:pa%3Ass%40word@127.0.0.1:{p}")).await;

    let e = proxy_error(&url, &format!("socks5h://bob:nope@127.0.0.1:{p}")).await;
    assert!(matches!(e, ProxyError::SocksAuthFailed { .. }), "{e:?}");
    assert!(!e.to_string().contains("nope"), "{e}");
    let e = proxy_error(&url, &format!("socks5h://127.0.0.1:{p}")).await;
    assert!(
        matches!(
            e,
            ProxyError::SocksNoMethod {
                offered_password: false,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("requires authentication"), "{e}");
}

#[tokio::test]
async fn dante_accepts_a_client_that_offers_credentials_too() {
    // With credentials, the client offers both methods; Dante (no auth
    // configured) picks none and the tunnel opens.
    let (url, _server) = echo_server(Config::default()).await;
    let proxy = proxies::danted(1);
    echo_through(&url, &format!("socks5h://u:p@127.0.0.1:{}", proxy.port)).await;
}

mod tls {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

    /// A CA (PEM) and a certificate and key for `localhost` it signed.
    pub(crate) fn pki() -> (String, String, String) {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "ferrows proxy test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        (ca.pem(), cert.pem(), key.serialize_pem())
    }
}

#[tokio::test]
async fn wss_through_http_and_socks_tunnels() {
    let (ca, cert, key) = tls::pki();
    let server_tls = ferrows::tls::server_config(cert.as_bytes(), key.as_bytes()).unwrap();
    let acceptor = ferrows::tls::tokio_rustls::TlsAcceptor::from(server_tls);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let tls = acceptor.accept(tcp).await.unwrap();
                let mut ws = ferrows::accept(ferrows::MaybeTlsStream::ServerTls(Box::new(tls)))
                    .await
                    .unwrap();
                while let Some(Ok(msg)) = ws.recv().await {
                    if msg.is_text() && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let client_tls = ferrows::tls::client_config_with_ca(ca.as_bytes()).unwrap();
    let http = proxies::tinyproxy(&[port], None);
    let socks = proxies::danted(1);
    let url = format!("wss://localhost:{port}/secure");
    for proxy in [
        format!("http://127.0.0.1:{}", http.port),
        format!("socks5h://127.0.0.1:{}", socks.port),
    ] {
        let (mut ws, _) = within(
            "wss through a proxy",
            ClientBuilder::new(&url)
                .tls_config(client_tls.clone())
                .proxy(Proxy::parse(&proxy).unwrap())
                .connect(),
        )
        .await
        .unwrap_or_else(|e| panic!("through {proxy}: {e}"));
        assert!(ws.get_ref().is_tls());
        ws.send("encrypted").await.unwrap();
        assert_eq!(next_msg(&mut ws).await, Message::text("encrypted"));
        ws.close(1000, "").await.unwrap();
    }
    // The proxies saw the name and port, nothing else.
    assert!(
        http.log().contains(&format!("CONNECT localhost:{port}")),
        "{}",
        http.log()
    );
    assert!(
        socks
            .log()
            .contains(&format!("ATYP: 3 address: localhost.{port}")),
        "{}",
        socks.log()
    );
}

#[tokio::test]
async fn event_client_through_a_proxy() {
    let (url, _server) = echo_server(Config::default()).await;
    let proxy = proxies::microsocks("eve", "pw");
    let (client, mut events) = EventClient::builder(&url)
        .reconnect(false)
        .ping_interval(None)
        .proxy(Proxy::parse(&format!("socks5h://eve:pw@127.0.0.1:{}", proxy.port)).unwrap())
        .start()
        .unwrap();
    match within("connected", events.recv()).await.unwrap() {
        Event::Connected { .. } => {}
        other => panic!("{other:?}"),
    }
    client
        .send_text("via socks", Duration::from_secs(10))
        .await
        .unwrap();
    match within("data", events.recv()).await.unwrap() {
        Event::Data { data, .. } => assert_eq!(&data[..], b"via socks"),
        other => panic!("{other:?}"),
    }
    client.stop().await;

    // A refusal is an error event carrying the proxy error.
    let (_client, mut events) = EventClient::builder(&url)
        .reconnect(false)
        .ping_interval(None)
        .proxy(Proxy::parse(&format!("socks5h://eve:bad@127.0.0.1:{}", proxy.port)).unwrap())
        .start()
        .unwrap();
    match within("an error", events.recv()).await.unwrap() {
        Event::Error {
            error: Some(error), ..
        } => assert!(
            matches!(*error, Error::Proxy(ProxyError::SocksAuthFailed { .. })),
            "{error}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn bypass_list_and_no_proxy_connect_directly() {
    let (url, _server) = echo_server(Config::default()).await;
    // Nothing listens on the proxy's port: only a direct connection works.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let proxy = Proxy::parse(&format!("http://127.0.0.1:{dead}")).unwrap();
    let e = within(
        "unreachable proxy",
        ClientBuilder::new(&url).proxy(proxy.clone()).connect(),
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(e, Error::Proxy(ProxyError::Connect { .. })), "{e}");
    assert!(
        e.to_string()
            .starts_with("cannot connect to proxy http://127.0.0.1:"),
        "{e}"
    );
    let bypassing = proxy.bypass(NoProxy::parse("127.0.0.0/8"));
    let (mut ws, _) = within(
        "direct",
        ClientBuilder::new(&url).proxy(bypassing).connect(),
    )
    .await
    .unwrap();
    ws.send("direct").await.unwrap();
    assert_eq!(next_msg(&mut ws).await, Message::text("direct"));
    let (mut ws, _) = within("direct", ClientBuilder::new(&url).no_proxy().connect())
        .await
        .unwrap();
    ws.send("direct").await.unwrap();
    assert_eq!(next_msg(&mut ws).await, Message::text("direct"));
}

/// A "proxy" that accepts and then runs `behave` on the connection.
async fn hostile_proxy<F, Fut>(behave: F) -> u16
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(behave(tcp));
        }
    });
    port
}

#[tokio::test]
async fn a_silent_proxy_times_out_and_a_huge_reply_is_refused() {
    // Silent: reads the request, never answers.
    let silent = hostile_proxy(|mut tcp| async move {
        let mut buf = [0u8; 1024];
        while tcp.read(&mut buf).await.is_ok_and(|n| n > 0) {}
    })
    .await;
    let builder = ClientBuilder::new("ws://127.0.0.1:9/")
        .config(Config::default().handshake_timeout(Duration::from_millis(500)))
        .proxy(Proxy::parse(&format!("http://127.0.0.1:{silent}")).unwrap());
    let started = Instant::now();
    let e = within("timeout", builder.open_stream())
        .await
        .err()
        .unwrap();
    assert!(e.is_timeout(), "{e}");
    assert!(matches!(e, Error::Proxy(ProxyError::Timeout { .. })), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        e.to_string()
            .contains("did not open a tunnel to 127.0.0.1:9 within 500ms"),
        "{e}"
    );

    // An endless head: refused past 16 KiB, not read forever.
    let endless = hostile_proxy(|mut tcp| async move {
        let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\n").await;
        let line = b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        for _ in 0..10_000 {
            if tcp.write_all(line).await.is_err() {
                return;
            }
        }
    })
    .await;
    let e = within(
        "huge reply",
        ClientBuilder::new("ws://127.0.0.1:9/")
            .proxy(Proxy::parse(&format!("http://127.0.0.1:{endless}")).unwrap())
            .open_stream(),
    )
    .await
    .err()
    .unwrap();
    assert!(
        matches!(&e, Error::Proxy(ProxyError::BadReply { why, .. }) if why.contains("larger than 16384")),
        "{e}"
    );

    // Not a proxy at all (an HTTP server answering SOCKS with text).
    let http = hostile_proxy(|mut tcp| async move {
        let _ = tcp.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
    })
    .await;
    let e = within(
        "not socks",
        ClientBuilder::new("ws://127.0.0.1:9/")
            .proxy(Proxy::parse(&format!("socks5h://127.0.0.1:{http}")).unwrap())
            .open_stream(),
    )
    .await
    .err()
    .unwrap();
    assert!(e.to_string().contains("not a SOCKS5 server"), "{e}");
}

#[tokio::test]
async fn bytes_after_the_connect_reply_belong_to_the_tunnel() {
    // A proxy that sends its 200 and the server's first bytes in one
    // write: they must not be swallowed with the reply head.
    let eager = hostile_proxy(|mut tcp| async move {
        let mut buf = [0u8; 1024];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => return,
            }
        }
        let _ = tcp
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\nhello from the server")
            .await;
    })
    .await;
    let proxy = Proxy::parse(&format!("http://127.0.0.1:{eager}")).unwrap();
    let mut tcp = within(
        "tunnel",
        proxy.connect("example.invalid", 443, Duration::from_secs(10)),
    )
    .await
    .unwrap();
    let mut rest = String::new();
    within("the bytes after the head", tcp.read_to_string(&mut rest))
        .await
        .unwrap();
    assert_eq!(rest, "hello from the server");
}
