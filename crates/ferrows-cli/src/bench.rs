//! `ferrows bench`: a load generator for WebSocket servers, built on the
//! ferrows client.
//!
//! Three kinds of run:
//!
//! * echo (the default): connections send messages to an echo server and
//!   check every echo byte for byte; closed loop with `--pipeline` messages
//!   in flight per connection, or open loop at a fixed `--rate`
//!   ([`echo`]);
//! * `--idle N`: open N connections, hold them, measure the handshake rate
//!   and the server's memory per connection ([`idle`]);
//! * `--broadcast ROUNDS`: clients of a chat server, one of which sends;
//!   measures the delivery time to the last client ([`broadcast`]);
//! * `--chat-rate R --senders K`: an open-loop chat room, K senders
//!   together sending R messages a second to every client ([`chat`]).
//!
//! The chat modes take several URLs (nodes of one room; clients spread
//! round-robin) and speak `ferrows serve chat`'s format or Socket.IO
//! (`--protocol`, [`wire`]).
//!
//! With `--server-pid`, the server's CPU time (and for `--idle` its memory)
//! over the measured window comes from `/proc`; the chat modes take it
//! repeatedly (every node and Redis) and sum it. `--json` prints one line
//! for scripts (`scripts/bench-peers` collects them).

mod broadcast;
mod chat;
mod echo;
mod idle;
mod payload;
mod pool;
mod stats;
pub(crate) mod sys;
mod wire;

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use ferrows::Config;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

use self::payload::{Content, Kind};
use self::stats::{Summary, fmt_count, fmt_rate, fmt_us};
use self::wire::Protocol;

/// `ferrows bench`.
#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    /// The server to load: ws://HOST:PORT/PATH or wss://…; with --broadcast
    /// or --chat-rate, several (nodes of one room): clients round-robin
    #[arg(value_name = "URL", required = true, num_args = 1..)]
    urls: Vec<String>,
    /// Connections to open (with --broadcast and --chat-rate: clients,
    /// senders included)
    #[arg(long, short = 'c', value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    conns: u64,
    /// Payload size of each message
    #[arg(long, short = 's', value_name = "BYTES", default_value_t = 16,
          value_parser = clap::value_parser!(u64).range(0..=1 << 30))]
    size: u64,
    /// Send text messages
    #[arg(long, conflicts_with = "binary")]
    text: bool,
    /// Send binary messages (the default)
    #[arg(long)]
    binary: bool,
    /// What the payloads contain: `json` compresses like typical text,
    /// `random` hardly at all
    #[arg(long, value_enum, value_name = "KIND", default_value = "random")]
    content: Content,
    /// Messages in flight per connection (closed loop: the next message
    /// goes out when an echo comes back)
    #[arg(long, short = 'p', value_name = "W", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pipeline: u64,
    /// Measured time (seconds; also `500ms`, `2s`, `1m`)
    #[arg(long, short = 'd', value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    duration: Duration,
    /// Time under load before the measurement starts
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_secs_or_zero)]
    warmup: Duration,
    /// Open loop: send this many messages per second in all, on a fixed
    /// schedule whatever the replies; latency counts from the scheduled time
    #[arg(long, value_name = "MSGS/S", conflicts_with = "pipeline", value_parser = parse_rate)]
    rate: Option<f64>,
    /// Offer permessage-deflate (the run says whether the server took it)
    #[arg(long)]
    compress: bool,
    /// Measure this server process too: CPU time per message, and for
    /// --idle memory per connection (Linux /proc); with --broadcast and
    /// --chat-rate repeatable (every node and redis-server), CPU summed
    #[arg(long, value_name = "PID")]
    server_pid: Vec<u32>,
    /// Print one JSON line instead of the report
    #[arg(long)]
    json: bool,
    /// Generator threads [default: the CPUs this process may use]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    threads: Option<u64>,
    /// Open N idle connections, hold them, report handshakes/s and the
    /// server's memory per connection
    #[arg(long, value_name = "N", conflicts_with_all = ["broadcast", "chat_rate", "rate", "pipeline", "conns"],
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    idle: Option<u64>,
    /// How long --idle holds the connections open
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs_or_zero)]
    hold: Duration,
    /// With --idle: exchange one 16-byte message on each connection before
    /// holding it
    #[arg(long, requires = "idle")]
    idle_message: bool,
    /// Handshakes in progress at once
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    handshake_concurrency: u64,
    /// Against a chat server (`ferrows serve chat`): connect --conns
    /// clients, then this many times one client sends and the time until
    /// the last client has its `msg:` copy is measured
    #[arg(long, value_name = "ROUNDS", conflicts_with_all = ["rate", "pipeline", "chat_rate"],
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    broadcast: Option<u64>,
    /// Open-loop chat: --senders clients together send this many messages
    /// a second on a fixed schedule to a chat room; every client receives
    /// every copy; measures schedule → last copy (overall and per URL),
    /// delivered copies/s, missing and duplicate copies
    #[arg(long, value_name = "MSGS/S", conflicts_with_all = ["rate", "pipeline"],
          value_parser = parse_rate)]
    chat_rate: Option<f64>,
    /// With --chat-rate: how many clients send (the first ones, spread
    /// over the URLs like every client)
    #[arg(long, value_name = "K", default_value_t = 1, requires = "chat_rate",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    senders: u64,
    /// The chat wire format of --broadcast and --chat-rate: `ferrows`
    /// (text `hello` → `msg:hello` to all) or `socketio` (Socket.IO 4,
    /// Engine.IO v4 over WebSocket at /socket.io/, event `msg`)
    #[arg(long, value_enum, value_name = "FORMAT", default_value = "ferrows")]
    protocol: Protocol,
    /// Time allowed after the run for outstanding echoes (and, with
    /// --broadcast, for each broadcast to arrive)
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    timeout: Duration,
    /// Add KEY=VALUE to the JSON output's `labels` (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Seed of the payload contents [default: from the clock]
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
}

/// Parses a duration: seconds (`10`, `2.5`), or with a unit (`500ms`,
/// `2s`, `1m`); more than zero, at most a day.
fn parse_secs(text: &str) -> Result<Duration, String> {
    let d = parse_secs_or_zero(text)?;
    if d.is_zero() {
        return Err("must be more than zero".to_owned());
    }
    Ok(d)
}

fn parse_secs_or_zero(text: &str) -> Result<Duration, String> {
    crate::duration::within(
        crate::duration::Bare::Secs,
        Duration::ZERO,
        Duration::from_secs(86_400),
    )(text)
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !(rate.is_finite() && rate > 0.0 && rate <= 1e9) {
        return Err("must be more than 0 and at most 1e9".to_owned());
    }
    Ok(rate)
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Runs `ferrows bench`.
///
/// # Errors
///
/// Setup failures (a bad URL, an unreadable --server-pid); failures during
/// the run are reported in its output and the exit status.
pub(crate) async fn bench_command(args: BenchArgs) -> anyhow::Result<ExitCode> {
    for url in &args.urls {
        ferrows::WsUrl::parse(&args.protocol.endpoint(url))
            .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    }
    for &pid in &args.server_pid {
        sys::check_pid(pid)?;
    }
    let chat_mode = args.broadcast.is_some() || args.chat_rate.is_some();
    if !chat_mode {
        if args.urls.len() > 1 {
            anyhow::bail!(
                "several URLs are for --broadcast and --chat-rate (nodes of one chat room)"
            );
        }
        if args.server_pid.len() > 1 {
            anyhow::bail!("--server-pid is repeatable only with --broadcast and --chat-rate");
        }
        if args.protocol != Protocol::Ferrows {
            anyhow::bail!("--protocol socketio is for --broadcast and --chat-rate");
        }
    }
    let nofile = sys::raise_nofile_limit();
    let conns = to_usize(args.idle.unwrap_or(args.conns));
    let mut notes = Vec::new();
    if let Some(limit) = nofile {
        let needed = conns as u64 + 64;
        if limit < needed {
            notes.push(format!(
                "the open file limit is {limit} (raised to the hard limit), but {conns} connections need about {needed}: expect connection failures (raise the hard limit: ulimit -Hn)"
            ));
        }
    }
    for note in &notes {
        eprintln!("warning: {note}");
    }
    let threads = args
        .threads
        .map_or_else(pool::default_threads, to_usize)
        .max(1);
    let seed = args.seed.unwrap_or_else(clock_seed);
    let progress = if !args.json && std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(1000), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    let mut common = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "url": args.url(),
        "urls": args.urls,
        "protocol": args.protocol.name(),
        "threads": threads,
        "seed": seed,
        "nofile_limit": nofile,
        "argv": std::env::args().collect::<Vec<_>>(),
        "labels": args
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<serde_json::Map<String, Value>>(),
        "warnings": notes,
    });
    let ok = if let Some(n) = args.idle {
        run_idle(&args, to_usize(n), threads, seed, &progress, &mut common).await?
    } else if let Some(rounds) = args.broadcast {
        run_broadcast(
            &args,
            to_usize(rounds),
            threads,
            seed,
            &progress,
            &mut common,
        )
        .await?
    } else if let Some(rate) = args.chat_rate {
        run_chat(&args, rate, threads, seed, &progress, &mut common).await?
    } else {
        run_echo(&args, threads, seed, &progress, &mut common).await?
    };
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

impl BenchArgs {
    /// The first URL (the only one outside the chat modes).
    fn url(&self) -> String {
        self.urls.first().cloned().unwrap_or_default()
    }

    /// The first --server-pid (the only one outside the chat modes).
    fn first_pid(&self) -> Option<u32> {
        self.server_pid.first().copied()
    }
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x5EED, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32)
}

fn client_config(size: usize, pipeline: usize, compress: bool) -> Config {
    let limits = ferrows::Limits::default();
    Config::default()
        .max_message_size(limits.max_message_size.max(size))
        .max_frame_size(limits.max_frame_size.max(size))
        // A closed loop never waits for its own queue: the window is the
        // flow control.
        .write_high_water_mark((64 * 1024usize).max(pipeline.saturating_mul(size + 14) + 4096))
        .close_timeout(Duration::from_secs(2))
        .compression(compress)
}

fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Prints the JSON line or the report, and finishes the progress bar.
fn emit(args: &BenchArgs, progress: &ProgressBar, line: &Value, report: &[String]) {
    progress.finish_and_clear();
    if args.json {
        println!("{line}");
    } else {
        for l in report {
            println!("{l}");
        }
    }
}

fn merge(target: &mut Value, extra: Value) {
    if let (Value::Object(t), Value::Object(e)) = (target, extra) {
        t.extend(e);
    }
}

fn summary_json(s: Option<&Summary>) -> Value {
    s.map_or(Value::Null, |s| json!(s))
}

fn latency_line(label: &str, s: &Summary) -> String {
    format!(
        "{label:<12} p50 {} · p99 {} · p99.9 {} · max {} (mean {})",
        fmt_us(s.p50_us),
        fmt_us(s.p99_us),
        fmt_us(s.p999_us),
        fmt_us(s.max_us),
        fmt_us(s.mean_us)
    )
}

fn errors_json(e: &echo::Errors) -> Value {
    json!({
        "mismatches": e.mismatches,
        "first_mismatch": e.first_mismatch,
        "connect_failures": e.connect_failures,
        "connection_errors": e.connection_errors,
        "stalled": e.stalled,
        "close_errors": e.close_errors,
        "messages": e.messages,
    })
}

fn errors_report(e: &echo::Errors, out: &mut Vec<String>) {
    if e.mismatches > 0 {
        out.push(format!(
            "ERROR        {} echoes differed from what was sent (first: {})",
            fmt_count(e.mismatches),
            e.first_mismatch.as_deref().unwrap_or("?")
        ));
    }
    let counts = [
        (e.connect_failures, "connections could not be opened"),
        (e.connection_errors, "connections failed during the run"),
        (
            e.stalled,
            "connections stalled (echoes missing at the deadline)",
        ),
    ];
    for (n, what) in counts {
        if n > 0 {
            out.push(format!("ERROR        {n} {what}"));
        }
    }
    if e.close_errors > 0 {
        out.push(format!(
            "note         {} closing handshakes failed or timed out (after the measurement)",
            e.close_errors
        ));
    }
    for m in &e.messages {
        out.push(format!("             {m}"));
    }
}

async fn run_echo(
    args: &BenchArgs,
    threads: usize,
    seed: u64,
    progress: &ProgressBar,
    common: &mut Value,
) -> anyhow::Result<bool> {
    let size = to_usize(args.size);
    let pipeline = to_usize(args.pipeline);
    let conns = to_usize(args.conns);
    let kind = if args.text { Kind::Text } else { Kind::Binary };
    let plan = echo::EchoPlan {
        url: args.url(),
        conns,
        size,
        kind,
        content: args.content,
        pipeline,
        rate: args.rate,
        warmup: args.warmup,
        duration: args.duration,
        grace: args.timeout,
        threads,
        handshake_concurrency: to_usize(args.handshake_concurrency),
        config: client_config(size, pipeline, args.compress),
        seed,
        server_pid: args.first_pid(),
    };
    progress.set_style(bar_style("{spinner} {wide_bar} {msg}"));
    let mut tick = |phase: echo::Phase, echoes: u64| match phase {
        echo::Phase::Connecting => {
            progress.set_message(format!("connecting: {echoes} of {conns}"));
            progress.tick();
        }
        echo::Phase::Running(done) => {
            progress.set_position((done * 1000.0) as u64);
            progress.set_message(format!("{} echoes", fmt_count(echoes)));
        }
        echo::Phase::Finishing => progress.set_message("closing"),
    };
    let out = echo::run(plan, &mut tick).await?;

    let secs = out.window.as_secs_f64();
    let rate = if secs > 0.0 {
        out.messages as f64 / secs
    } else {
        0.0
    };
    let mbps = rate * size as f64 / 1e6;
    let client_cpu_pct = out.client_cpu.map(|c| c.as_secs_f64() / secs * 100.0);
    let server = args.first_pid().map(|pid| {
        let cpu = out.server_cpu.map(|c| c.as_secs_f64());
        json!({
            "pid": pid,
            "cpu_s": cpu,
            "cpu_pct": cpu.map(|c| c / secs * 100.0),
            "cpu_ns_per_msg": cpu.filter(|_| out.messages > 0).map(|c| c * 1e9 / out.messages as f64),
        })
    });
    let kind_name = if args.text { "text" } else { "binary" };
    let content_name = match args.content {
        Content::Random => "random",
        Content::Json => "json",
    };
    merge(
        common,
        json!({
            "mode": if args.rate.is_some() { "echo-rate" } else { "echo" },
            "conns": conns,
            "size": size,
            "kind": kind_name,
            "content": content_name,
            "pipeline": if args.rate.is_some() { Value::Null } else { json!(pipeline) },
            "rate": args.rate,
            "warmup_s": args.warmup.as_secs_f64(),
            "duration_s": secs,
            "compress": { "requested": args.compress, "negotiated_conns": out.compressed_conns },
            "messages": out.messages,
            "msgs_per_s": rate,
            "mb_per_s": mbps,
            "latency_us": summary_json(out.latency.as_ref()),
            "send_lag_us": summary_json(out.send_lag.as_ref()),
            "client_cpu_pct": client_cpu_pct,
            "server": server,
            "verified": out.verified,
            "errors": errors_json(&out.errors),
            "ok": !out.errors.any(),
        }),
    );

    let mut report = Vec::new();
    let load = match args.rate {
        Some(r) => format!("{} msg/s scheduled", fmt_rate(r)),
        None => format!("{pipeline} in flight each"),
    };
    report.push(format!(
        "ferrows bench {}: {conns} connections, {load}, {size} B {kind_name} ({content_name}){}, {:.1} s warm-up + {:.1} s measured, {threads} generator thread{}",
        args.url(),
        if args.compress { ", compression offered" } else { "" },
        args.warmup.as_secs_f64(),
        args.duration.as_secs_f64(),
        if threads == 1 { "" } else { "s" },
    ));
    if out.errors.connect_failures == 0 {
        report.push(format!(
            "messages     {} echoes in {secs:.2} s: {} msg/s, {mbps:.2} MB/s",
            fmt_count(out.messages),
            fmt_rate(rate),
        ));
        if let Some(l) = &out.latency {
            let label = if args.rate.is_some() {
                "latency"
            } else {
                "round trip"
            };
            report.push(latency_line(label, l));
        }
        if let Some(l) = &out.send_lag {
            report.push(latency_line("send lag", l));
        }
        if let Some(pct) = client_cpu_pct {
            let saturated = pct >= 90.0 * threads as f64;
            report.push(format!(
                "generator    CPU {pct:.0} % ({threads} thread{}){}",
                if threads == 1 { "" } else { "s" },
                if saturated {
                    ": saturated, the server may be faster than this shows"
                } else {
                    ""
                }
            ));
        }
        if let (Some(pid), Some(cpu)) = (args.first_pid(), out.server_cpu) {
            let c = cpu.as_secs_f64();
            let per = if out.messages > 0 {
                format!(" = {:.0} ns per message", c * 1e9 / out.messages as f64)
            } else {
                String::new()
            };
            report.push(format!(
                "server       pid {pid}: {c:.2} s CPU in {secs:.2} s ({:.0} %){per}",
                c / secs * 100.0
            ));
        }
        report.push(format!(
            "checked      {} echoes byte for byte{}",
            fmt_count(out.verified),
            if out.errors.mismatches == 0 {
                ": all equal"
            } else {
                ""
            }
        ));
        if args.compress {
            report.push(format!(
                "compression  negotiated on {} of {conns} connections",
                out.compressed_conns
            ));
        }
    }
    errors_report(&out.errors, &mut report);
    emit(args, progress, common, &report);
    Ok(!out.errors.any())
}

async fn run_idle(
    args: &BenchArgs,
    conns: usize,
    threads: usize,
    seed: u64,
    progress: &ProgressBar,
    common: &mut Value,
) -> anyhow::Result<bool> {
    let plan = idle::IdlePlan {
        url: args.url(),
        conns,
        hold: args.hold,
        threads,
        handshake_concurrency: to_usize(args.handshake_concurrency),
        message: args.idle_message,
        config: client_config(16, 1, args.compress),
        seed,
        server_pid: args.first_pid(),
    };
    progress.set_length(conns as u64);
    progress.set_style(bar_style("{spinner} {wide_bar} {pos}/{len} {msg}"));
    let mut tick = |settled: u64| {
        progress.set_position(settled);
        if settled >= conns as u64 {
            progress.set_message("holding");
        }
    };
    let out = idle::run(plan, &mut tick).await?;
    let hs_rate = out.handshakes_per_s();
    let per_conn = out.rss_per_conn();
    let cpu_per_hs = out
        .handshake_server_cpu
        .filter(|_| out.opened > 0)
        .map(|c| c.as_secs_f64() * 1e6 / out.opened as f64);
    let phase = out.handshake_phase.as_secs_f64();
    let client_cpu_pct = out
        .handshake_client_cpu
        .filter(|_| phase > 0.0)
        .map(|c| c.as_secs_f64() / phase * 100.0);
    let server = args.first_pid().map(|pid| {
        json!({
            "pid": pid,
            "rss_before_kib": out.rss_before.map(|r| r.current_kib),
            "rss_connected_kib": out.rss_connected.map(|r| r.current_kib),
            "rss_after_kib": out.rss_after.map(|r| r.current_kib),
            "rss_peak_kib": out.rss_after.map(|r| r.peak_kib),
            "rss_per_conn_bytes": per_conn,
            "cpu_us_per_handshake": cpu_per_hs,
        })
    });
    merge(
        common,
        json!({
            "mode": "idle",
            "conns": conns,
            "opened": out.opened,
            "held": out.held,
            "hold_s": args.hold.as_secs_f64(),
            "idle_message": args.idle_message,
            "handshake_concurrency": args.handshake_concurrency,
            "handshake_s": out.handshake_phase.as_secs_f64(),
            "handshakes_per_s": hs_rate,
            "handshake_us": summary_json(out.handshake_latency.as_ref()),
            "client_cpu_pct": client_cpu_pct,
            "server": server,
            "errors": errors_json(&out.errors),
            "ok": !out.errors.any() && out.held == conns,
        }),
    );
    let mut report = vec![format!(
        "ferrows bench {} --idle {conns}: {} handshakes at once, held {:.1} s, {threads} generator thread{}",
        args.url(),
        args.handshake_concurrency,
        args.hold.as_secs_f64(),
        if threads == 1 { "" } else { "s" },
    )];
    report.push(format!(
        "handshakes   {} opened in {:.2} s: {} per second",
        fmt_count(out.opened as u64),
        out.handshake_phase.as_secs_f64(),
        fmt_rate(hs_rate)
    ));
    if let Some(l) = &out.handshake_latency {
        report.push(latency_line("each", l));
    }
    if let Some(pct) = client_cpu_pct {
        report.push(format!(
            "generator    CPU {pct:.0} % during the handshakes{}",
            if pct >= 90.0 * threads as f64 {
                ": saturated, the server may be faster than this shows"
            } else {
                ""
            }
        ));
    }
    if let (Some(pid), Some(before), Some(after)) =
        (args.first_pid(), out.rss_before, out.rss_after)
    {
        report.push(format!(
            "server       pid {pid}: RSS {} KiB before, {} KiB with {} connections open{}",
            fmt_count(before.current_kib),
            fmt_count(after.current_kib),
            fmt_count(out.held as u64),
            per_conn.map_or(String::new(), |b| format!(": {b:.0} bytes per connection")),
        ));
    }
    if let Some(us) = cpu_per_hs {
        report.push(format!("server CPU   {us:.1} µs per handshake"));
    }
    errors_report(&out.errors, &mut report);
    emit(args, progress, common, &report);
    Ok(!out.errors.any() && out.held == conns)
}

async fn run_broadcast(
    args: &BenchArgs,
    rounds: usize,
    threads: usize,
    seed: u64,
    progress: &ProgressBar,
    common: &mut Value,
) -> anyhow::Result<bool> {
    let conns = to_usize(args.conns);
    let plan = broadcast::BroadcastPlan {
        urls: args.urls.clone(),
        protocol: args.protocol,
        conns,
        rounds,
        threads,
        handshake_concurrency: to_usize(args.handshake_concurrency),
        config: client_config(64, 1, args.compress),
        round_timeout: args.timeout,
        settle_timeout: args.timeout.max(Duration::from_secs(120)),
        run_id: seed,
        server_pids: args.server_pid.clone(),
    };
    progress.set_style(bar_style("{spinner} {msg}"));
    let mut tick = |phase: &str, n: u64| {
        progress.set_message(format!("{phase}: {n}"));
        progress.tick();
    };
    let out = broadcast::run(plan, &mut tick).await?;
    let copies = out.rounds_complete as u64 * conns as u64;
    let (server, servers, cpu_per_copy) = servers_json(&args.server_pid, &out.server_cpu, copies);
    merge(
        common,
        json!({
            "mode": "broadcast",
            "conns": conns,
            "rounds": rounds,
            "connected": out.connected,
            "connect_s": out.connect_phase.as_secs_f64(),
            "settle_s": out.settle.as_secs_f64(),
            "last_copy_us": summary_json(out.last_copy.as_ref()),
            "first_copy_us": summary_json(out.first_copy.as_ref()),
            "rounds_complete": out.rounds_complete,
            "rounds_incomplete": out.rounds_incomplete,
            "copies_missing": out.copies_missing,
            "duplicates": out.duplicates,
            "nodes": nodes_json(&args.urls, &nodes_of(&args.urls, conns), &out.node_last_copy),
            "server": server,
            "servers": servers,
            "errors": errors_json(&out.errors),
            "ok": !out.failed(),
        }),
    );
    let mut report = vec![format!(
        "ferrows bench {} --broadcast {rounds}: {conns} clients{}, {threads} generator thread{}",
        args.urls.join(" "),
        protocol_note(args.protocol),
        if threads == 1 { "" } else { "s" },
    )];
    report.push(format!(
        "clients      {} connected in {:.2} s; join notices delivered after {:.2} s more",
        fmt_count(out.connected as u64),
        out.connect_phase.as_secs_f64(),
        out.settle.as_secs_f64()
    ));
    report.push(format!(
        "broadcasts   {} of {rounds} reached every client{}",
        out.rounds_complete,
        if out.copies_missing > 0 {
            format!(" ({} copies missing)", fmt_count(out.copies_missing))
        } else {
            String::new()
        }
    ));
    if let Some(l) = &out.last_copy {
        report.push(latency_line("last copy", l));
    }
    if let Some(l) = &out.first_copy {
        report.push(latency_line("first copy", l));
    }
    node_lines(&args.urls, &out.node_last_copy, &mut report);
    server_lines(&args.server_pid, &out.server_cpu, cpu_per_copy, &mut report);
    if out.duplicates > 0 {
        report.push(format!(
            "ERROR        {} copies arrived twice",
            out.duplicates
        ));
    }
    errors_report(&out.errors, &mut report);
    emit(args, progress, common, &report);
    Ok(!out.failed())
}

/// Clients of each URL when `conns` are spread round-robin.
fn nodes_of(urls: &[String], conns: usize) -> Vec<usize> {
    let n = urls.len().max(1);
    (0..n).map(|i| (i..conns).step_by(n).count()).collect()
}

fn nodes_json(urls: &[String], clients: &[usize], last: &[Option<Summary>]) -> Value {
    Value::Array(
        urls.iter()
            .enumerate()
            .map(|(i, url)| {
                json!({
                    "url": url,
                    "clients": clients.get(i),
                    "last_copy_us": summary_json(last.get(i).and_then(Option::as_ref)),
                })
            })
            .collect(),
    )
}

/// The `server` object (all measured processes summed; `pid` the first),
/// the `servers` list (each process), and CPU ns per copy.
fn servers_json(
    pids: &[u32],
    spent: &[Option<Duration>],
    copies: u64,
) -> (Value, Value, Option<f64>) {
    let total = sys::cpu_total(spent);
    let per_copy = total
        .filter(|_| copies > 0)
        .map(|c| c.as_secs_f64() * 1e9 / copies as f64);
    let server = pids.first().map_or(Value::Null, |&pid| {
        json!({
            "pid": pid,
            "cpu_s": total.map(|c| c.as_secs_f64()),
            "cpu_ns_per_copy": per_copy,
        })
    });
    let servers = pids
        .iter()
        .enumerate()
        .map(|(i, &pid)| {
            let cpu = spent.get(i).copied().flatten();
            json!({
                "pid": pid,
                "name": sys::process_name(pid),
                "cpu_s": cpu.map(|c| c.as_secs_f64()),
                "cpu_ns_per_copy": cpu
                    .filter(|_| copies > 0)
                    .map(|c| c.as_secs_f64() * 1e9 / copies as f64),
            })
        })
        .collect();
    (server, Value::Array(servers), per_copy)
}

fn protocol_note(p: Protocol) -> &'static str {
    match p {
        Protocol::Ferrows => "",
        Protocol::Socketio => " (Socket.IO)",
    }
}

fn node_lines(urls: &[String], last: &[Option<Summary>], out: &mut Vec<String>) {
    if urls.len() < 2 {
        return;
    }
    for (url, s) in urls.iter().zip(last) {
        if let Some(s) = s {
            out.push(latency_line("  on node", s).replacen("on node", &format!("{url}:"), 1));
        }
    }
}

fn server_lines(
    pids: &[u32],
    spent: &[Option<Duration>],
    per_copy: Option<f64>,
    out: &mut Vec<String>,
) {
    for (i, &pid) in pids.iter().enumerate() {
        if let Some(c) = spent.get(i).copied().flatten() {
            out.push(format!(
                "server       pid {pid} ({}): {:.2} s CPU",
                sys::process_name(pid).unwrap_or_default(),
                c.as_secs_f64()
            ));
        }
    }
    if let Some(ns) = per_copy {
        out.push(format!(
            "server CPU   {ns:.0} ns per copy delivered{}",
            if pids.len() > 1 {
                " (all measured processes)"
            } else {
                ""
            }
        ));
    }
}

async fn run_chat(
    args: &BenchArgs,
    rate: f64,
    threads: usize,
    seed: u64,
    progress: &ProgressBar,
    common: &mut Value,
) -> anyhow::Result<bool> {
    let conns = to_usize(args.conns);
    let senders = to_usize(args.senders);
    let plan = chat::ChatPlan {
        urls: args.urls.clone(),
        protocol: args.protocol,
        conns,
        senders,
        rate,
        warmup: args.warmup,
        duration: args.duration,
        grace: args.timeout,
        settle_timeout: args.timeout,
        threads,
        handshake_concurrency: to_usize(args.handshake_concurrency),
        // Clients must keep up with the room, not throttle it.
        config: client_config(64, 1, args.compress).write_high_water_mark(1 << 20),
        run_id: seed,
        server_pids: args.server_pid.clone(),
    };
    plan.check()?;
    progress.set_style(bar_style("{spinner} {msg}"));
    let mut tick = |phase: &str, n: u64| {
        progress.set_message(format!("{phase}: {n}"));
        progress.tick();
    };
    let out = chat::run(plan, &mut tick).await?;
    let secs = args.duration.as_secs_f64();
    let window = out.window.as_secs_f64();
    let copies_per_s = out.measured_copies as f64 / secs;
    let (server, servers, cpu_per_copy) =
        servers_json(&args.server_pid, &out.server_cpu, out.window_copies);
    let client_cpu_pct = out
        .client_cpu
        .filter(|_| window > 0.0)
        .map(|c| c.as_secs_f64() / window * 100.0);
    let saturated = client_cpu_pct.is_some_and(|p| p >= 90.0 * threads as f64);
    merge(
        common,
        json!({
            "mode": "chat",
            "conns": conns,
            "senders": senders,
            "chat_rate": rate,
            "warmup_s": args.warmup.as_secs_f64(),
            "duration_s": secs,
            "connected": out.connected,
            "connect_s": out.connect_phase.as_secs_f64(),
            "settle_s": out.settle.as_secs_f64(),
            "messages_sent": out.sent,
            "messages_measured": out.measured,
            "messages_incomplete": out.incomplete,
            "copies_delivered": out.measured_copies,
            "copies_per_s": copies_per_s,
            "copies_missing": out.copies_missing,
            "duplicates": out.duplicates,
            "last_copy_us": summary_json(out.last_copy.as_ref()),
            "send_lag_us": summary_json(out.send_lag.as_ref()),
            "nodes": nodes_json(&args.urls, &out.node_clients, &out.node_last_copy),
            "client_cpu_pct": client_cpu_pct,
            "generator_saturated": saturated,
            "cpu_window_s": window,
            "cpu_window_copies": out.window_copies,
            "server": server,
            "servers": servers,
            "errors": errors_json(&out.errors),
            "ok": !out.failed(),
        }),
    );
    let mut report = vec![format!(
        "ferrows bench {} --chat-rate {rate}{}: {conns} clients, {senders} sender{}, {:.1} s warm-up + {secs:.1} s measured, {threads} generator thread{}",
        args.urls.join(" "),
        protocol_note(args.protocol),
        if senders == 1 { "" } else { "s" },
        args.warmup.as_secs_f64(),
        if threads == 1 { "" } else { "s" },
    )];
    report.push(format!(
        "clients      {} connected in {:.2} s; first message everywhere after {:.2} s more",
        fmt_count(out.connected as u64),
        out.connect_phase.as_secs_f64(),
        out.settle.as_secs_f64()
    ));
    report.push(format!(
        "messages     {} sent, {} measured: {} copies delivered = {} copies/s",
        fmt_count(out.sent),
        fmt_count(out.measured),
        fmt_count(out.measured_copies),
        fmt_rate(copies_per_s)
    ));
    if let Some(l) = &out.last_copy {
        report.push(latency_line("last copy", l));
    }
    node_lines(&args.urls, &out.node_last_copy, &mut report);
    if let Some(l) = &out.send_lag {
        report.push(latency_line("send lag", l));
    }
    if let Some(pct) = client_cpu_pct {
        report.push(format!(
            "generator    CPU {pct:.0} % ({threads} thread{}){}",
            if threads == 1 { "" } else { "s" },
            if saturated {
                ": saturated, the servers may be faster than this shows"
            } else {
                ""
            }
        ));
    }
    server_lines(&args.server_pid, &out.server_cpu, cpu_per_copy, &mut report);
    if out.copies_missing > 0 {
        report.push(format!(
            "ERROR        {} copies missing ({} messages did not reach every client)",
            fmt_count(out.copies_missing),
            fmt_count(out.incomplete)
        ));
    }
    if out.duplicates > 0 {
        report.push(format!(
            "ERROR        {} copies arrived twice",
            out.duplicates
        ));
    }
    errors_report(&out.errors, &mut report);
    emit(args, progress, common, &report);
    Ok(!out.failed())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_secs("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_secs("2.5").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_secs("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_secs("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_secs("3s").unwrap(), Duration::from_secs(3));
        assert!(parse_secs("0").is_err());
        assert_eq!(parse_secs_or_zero("0").unwrap(), Duration::ZERO);
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("soon").is_err());
        assert!(parse_secs("2d").is_err());
    }

    #[test]
    fn labels_and_rates() {
        assert_eq!(
            parse_label("row=16B text").unwrap(),
            ("row".to_owned(), "16B text".to_owned())
        );
        assert_eq!(parse_label("k=a=b").unwrap().1, "a=b");
        assert!(parse_label("novalue").is_err());
        assert!(parse_label("=x").is_err());
        assert_eq!(parse_rate("1000").unwrap(), 1000.0);
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("nan").is_err());
    }
}
