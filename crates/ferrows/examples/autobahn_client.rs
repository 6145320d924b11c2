//! The ferrows client under the Autobahn test suite (fuzzingserver mode).
//!
//! ```text
//! cargo run --release --example autobahn_client -- ws://127.0.0.1:9002 [--compression-threshold N]
//! ```
//!
//! Speaks the suite's client protocol: asks `/getCaseCount`, runs every case
//! with `/runCase?case=N&agent=ferrows` echoing each message back unchanged,
//! then asks the server to write its report with `/updateReports`.
//! Compression is offered with a threshold of 0 (every message compressed),
//! as the suite requires, and with `client_no_context_takeover`.

use ferrows::{ClientBuilder, Config, DeflateConfig, Message};

const AGENT: &str = "ferrows";

fn config(threshold: usize) -> Config {
    // The suite's 13.2/13.5/13.6 servers accept only offers that include
    // `client_no_context_takeover` (as Autobahn's own clients send): offer
    // it, so that every compression case runs.
    let deflate = DeflateConfig::default()
        .threshold(threshold)
        .client_no_context_takeover(true);
    Config::default()
        .max_message_size(64 << 20)
        .max_frame_size(64 << 20)
        .deflate(deflate)
}

async fn case_count(base: &str, config: &Config) -> ferrows::Result<u32> {
    let (mut ws, _) = ClientBuilder::new(format!("{base}/getCaseCount"))
        .config(config.clone())
        .connect()
        .await?;
    let mut count = None;
    while let Some(msg) = ws.recv().await {
        if let Message::Text(t) = msg? {
            count = t.as_str().trim().parse().ok();
        }
    }
    count.ok_or_else(|| ferrows::Error::Config("no case count received".into()))
}

async fn run_case(base: &str, case: u32, config: &Config) -> ferrows::Result<()> {
    let url = format!("{base}/runCase?case={case}&agent={AGENT}");
    let (mut ws, _) = ClientBuilder::new(url)
        .config(config.clone())
        .connect()
        .await?;
    while let Some(msg) = ws.recv().await {
        if let msg @ (Message::Text(_) | Message::Binary(_)) = msg? {
            ws.feed(msg).await?;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut base = String::from("ws://127.0.0.1:9001");
    let mut threshold = 0usize;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--compression-threshold" => {
                threshold = match args.next().and_then(|v| v.parse().ok()) {
                    Some(n) => n,
                    None => {
                        eprintln!("--compression-threshold needs a number of bytes");
                        std::process::exit(2);
                    }
                };
            }
            url => base = url.trim_end_matches('/').to_owned(),
        }
    }
    let config = config(threshold);
    let count = match case_count(&base, &config).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("cannot get the case count from {base}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("running {count} cases against {base}");
    for case in 1..=count {
        if let Err(e) = run_case(&base, case, &config).await {
            // Many cases end in an error on purpose (the suite sends bad
            // frames); the server judges the outcome.
            eprintln!("case {case}: {e}");
        }
    }
    let url = format!("{base}/updateReports?agent={AGENT}");
    match ClientBuilder::new(url).config(config).connect().await {
        Ok((mut ws, _)) => while ws.recv().await.is_some() {},
        Err(e) => {
            eprintln!("cannot update the reports: {e}");
            std::process::exit(1);
        }
    }
}
