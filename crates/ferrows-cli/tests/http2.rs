//! WebSockets over HTTP/2 (RFC 8441), black-box: `ferrows serve echo
//! --tls-cert …` offers ALPN h2 next to http/1.1 on one port; `ferrows
//! connect --http2` and ferrows' library client reach it over HTTP/2;
//! `--no-http2` turns it off.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[allow(dead_code)] // a part of the shared helpers
mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use ferrows::h2::H2Client;
use ferrows::{ClientBuilder, Config};
use support::{Server, TempDir, next_data, self_signed, within};

/// Runs `ferrows ARGS` with `input` on stdin; returns (success, stdout,
/// stderr).
fn run(args: &[&str], input: &[u8]) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrows"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ferrows");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn serve(cert: &str, key: &str, extra: &[&str]) -> Server {
    let mut args = vec![
        "serve",
        "echo",
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[tokio::test]
async fn connect_http2_reaches_serve_over_h2() {
    let dir = TempDir::new("h2");
    let (cert, key) = self_signed(&dir);
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let server = serve(cert, key, &[]);
    let url = format!("wss://localhost:{}/", server.port());

    let (ok, stdout, stderr) = run(
        &["connect", "--http2", "--compress", "--ca", cert, &url],
        b"over h2\nsecond line\n",
    );
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "over h2\nsecond line\n");
    assert!(stderr.contains("permessage-deflate"), "{stderr}");
    server
        .wait_log(&["compression=true"], Duration::from_secs(10))
        .await;

    // HTTP/1.1 on the same port still works.
    let (ok, stdout, stderr) = run(&["connect", "--ca", cert, &url], b"over h1\n");
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "over h1\n");

    // Many WebSockets on one connection, through the same echo handler.
    let tls = ferrows::tls::client_config_with_ca(&std::fs::read(cert).unwrap()).unwrap();
    let builder = |path: &str| {
        ClientBuilder::new(format!("wss://localhost:{}{path}", server.port()))
            .tls_config(tls.clone())
            .config(Config::default())
    };
    let client = within(10, H2Client::connect(&builder("/"))).await.unwrap();
    let mut sockets = Vec::new();
    for i in 0..20 {
        let (ws, response) = within(10, client.websocket(builder(&format!("/?n={i}"))))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        sockets.push(ws);
    }
    for (i, ws) in sockets.iter_mut().enumerate() {
        ws.send(format!("socket {i}").as_str()).await.unwrap();
    }
    for (i, ws) in sockets.iter_mut().enumerate() {
        let msg = next_data(ws, 10).await;
        assert_eq!(msg.as_text(), Some(format!("socket {i}").as_str()));
    }
    for ws in &mut sockets {
        within(10, ws.close(1000, "")).await.unwrap();
    }
}

#[tokio::test]
async fn no_http2_turns_it_off() {
    let dir = TempDir::new("h2off");
    let (cert, key) = self_signed(&dir);
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let server = serve(cert, key, &["--no-http2"]);
    let url = format!("wss://localhost:{}/", server.port());
    let (ok, _, stderr) = run(&["connect", "--http2", "--ca", cert, &url], b"x\n");
    assert!(!ok);
    assert!(
        stderr.contains("does not offer HTTP/2"),
        "the error should name the cause: {stderr}"
    );
    let (ok, stdout, stderr) = run(&["connect", "--ca", cert, &url], b"h1 only\n");
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "h1 only\n");
}
