//! fastwebsockets echo server for `scripts/bench-peers`, written as
//! fastwebsockets' own `echo_server` example: hyper serves the upgrade,
//! a `FragmentCollector` reassembles messages, pings are answered
//! automatically (auto-pong), and each text or binary message is written
//! back with `write_frame`, on a single-threaded tokio runtime. The only
//! changes: the port and the message limit come from the command line,
//! TCP_NODELAY is set as on every server in the comparison, and nothing is
//! printed per connection.
//!
//! Usage: `fastwebsockets-echo PORT [MAX_MESSAGE_BYTES]` (listens on
//! 127.0.0.1; default limit 64 MiB, fastwebsockets' own).

use std::process::ExitCode;

use fastwebsockets::{FragmentCollector, OpCode, WebSocketError, upgrade};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use tokio::net::TcpListener;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(Ok(port)), limit) = (
        args.next().map(|p| p.parse::<u16>()),
        args.next().map(|m| m.parse::<usize>()),
    ) else {
        eprintln!("usage: fastwebsockets-echo PORT [MAX_MESSAGE_BYTES]");
        return ExitCode::from(2);
    };
    let limit = match limit {
        None => 64 << 20,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            eprintln!("fastwebsockets-echo: MAX_MESSAGE_BYTES must be a number");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fastwebsockets-echo: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(port, limit)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fastwebsockets-echo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(port: u16, limit: usize) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!("fastwebsockets-echo listening on 127.0.0.1:{port}");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = http1::Builder::new()
                .serve_connection(io, service_fn(move |req| server_upgrade(req, limit)))
                .with_upgrades();
            if let Err(e) = conn.await {
                eprintln!("fastwebsockets-echo: connection: {e:?}");
            }
        });
    }
}

async fn server_upgrade(
    mut req: Request<Incoming>,
    limit: usize,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::task::spawn(async move {
        if let Err(e) = tokio::task::unconstrained(handle_client(fut, limit)).await {
            eprintln!("fastwebsockets-echo: websocket: {e}");
        }
    });
    Ok(response)
}

async fn handle_client(fut: upgrade::UpgradeFut, limit: usize) -> Result<(), WebSocketError> {
    let mut ws = fut.await?;
    ws.set_max_message_size(limit);
    ws.set_auto_pong(true);
    let mut ws = FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
    Ok(())
}
