//! `bench-report`: turns the JSON lines `scripts/bench-peers` collected
//! (one per `ferrows bench --json` run, labelled with row, server and
//! round) into `RESULTS.md` (the machine, each figure as the median with
//! min–max over the rounds and as a ratio to ferrows, the exact commands)
//! and `chart.svg` (grouped bars of the ratios, drawn with plotters).
//!
//! Usage: `bench-report [RESULTS.jsonl [META.txt [OUT_DIR]]]`, by default
//! `bench-results/raw/results.jsonl`, `bench-results/raw/meta.txt` and
//! `bench-results`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

/// The servers, in display order: label in the results, display name.
const SERVERS: [(&str, &str); 7] = [
    ("ferrows", "ferrows"),
    ("axum-ferrows", "ferrows in axum"),
    ("axum-ws", "axum ws"),
    ("tungstenite", "tokio-tungstenite"),
    ("fastwebsockets", "fastwebsockets"),
    ("node", "Node ws"),
    ("python", "Python websockets"),
];

/// Bar colours, by server label.
fn colour(server: &str) -> RGBColor {
    match server {
        "ferrows" => RGBColor(0xd9, 0x48, 0x1c),
        "tungstenite" => RGBColor(0x35, 0x6f, 0xb5),
        "fastwebsockets" => RGBColor(0x4a, 0xa5, 0x5a),
        "node" => RGBColor(0x8a, 0x5c, 0xb8),
        "python" => RGBColor(0xe0, 0xa8, 0x20),
        "axum-ferrows" => RGBColor(0xf0, 0x8a, 0x5d),
        "axum-ws" => RGBColor(0x7f, 0xa8, 0xd8),
        _ => RGBColor(0x80, 0x80, 0x80),
    }
}

fn display_name(server: &str) -> &str {
    SERVERS
        .iter()
        .find(|(label, _)| *label == server)
        .map_or(server, |(_, name)| name)
}

/// How a figure is read from one result line.
type Extract = fn(&Value) -> Option<f64>;

/// One figure of a row.
struct Metric {
    name: &'static str,
    unit: &'static str,
    extract: Extract,
    /// Whether more is better (throughput) or less (latency, CPU, memory).
    higher_is_better: bool,
    /// Drawn in the chart.
    chart: bool,
    /// Compared with ferrows (false: shown for information only).
    compare: bool,
}

/// One row of the matrix, as `scripts/bench-peers` labels it.
struct Row {
    id: &'static str,
    title: &'static str,
    metrics: Vec<Metric>,
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for key in path {
        cur = cur.get(*key)?;
    }
    cur.as_f64()
}

fn server_us_per_mb(v: &Value) -> Option<f64> {
    let ns = num(v, &["server", "cpu_ns_per_msg"])?;
    let size = num(v, &["size"])?;
    (size > 0.0).then(|| ns / 1000.0 / (size / 1e6))
}

fn metric(
    name: &'static str,
    unit: &'static str,
    extract: Extract,
    higher_is_better: bool,
    chart: bool,
) -> Metric {
    Metric {
        name,
        unit,
        extract,
        higher_is_better,
        chart,
        compare: true,
    }
}

fn info(name: &'static str, unit: &'static str, extract: Extract) -> Metric {
    Metric {
        name,
        unit,
        extract,
        higher_is_better: false,
        chart: false,
        compare: false,
    }
}

fn rows() -> Vec<Row> {
    let throughput = |chart_cpu: bool| {
        vec![
            metric("messages/s", "", |v| num(v, &["msgs_per_s"]), true, true),
            metric(
                "server CPU per message",
                "ns",
                |v| num(v, &["server", "cpu_ns_per_msg"]),
                false,
                chart_cpu,
            ),
            metric(
                "p99 round trip",
                "µs",
                |v| num(v, &["latency_us", "p99_us"]),
                false,
                false,
            ),
            info("generator CPU", "%", |v| num(v, &["client_cpu_pct"])),
        ]
    };
    let bulk = || {
        vec![
            metric("MB/s", "", |v| num(v, &["mb_per_s"]), true, true),
            metric("server CPU per MB", "µs", server_us_per_mb, false, false),
            metric(
                "p99 round trip",
                "µs",
                |v| num(v, &["latency_us", "p99_us"]),
                false,
                false,
            ),
            info("generator CPU", "%", |v| num(v, &["client_cpu_pct"])),
        ]
    };
    vec![
        Row {
            id: "text16",
            title: "16 B text, 100 connections × 16 in flight",
            metrics: throughput(true),
        },
        Row {
            id: "bin1k",
            title: "1 KiB binary, 100 connections × 16 in flight",
            metrics: throughput(true),
        },
        Row {
            id: "bin64k",
            title: "64 KiB binary, 10 connections × 4 in flight",
            metrics: bulk(),
        },
        Row {
            id: "bin1m",
            title: "1 MiB binary, 4 connections × 1 in flight",
            metrics: bulk(),
        },
        Row {
            id: "latency",
            title: "Latency: 16 B text, 1 connection, 1 in flight",
            metrics: vec![
                metric(
                    "p50 round trip",
                    "µs",
                    |v| num(v, &["latency_us", "p50_us"]),
                    false,
                    true,
                ),
                metric(
                    "p99 round trip",
                    "µs",
                    |v| num(v, &["latency_us", "p99_us"]),
                    false,
                    true,
                ),
                metric(
                    "p99.9 round trip",
                    "µs",
                    |v| num(v, &["latency_us", "p999_us"]),
                    false,
                    false,
                ),
                metric(
                    "server CPU per message",
                    "ns",
                    |v| num(v, &["server", "cpu_ns_per_msg"]),
                    false,
                    false,
                ),
            ],
        },
        Row {
            id: "idle",
            title: "Idle connections: {conns} held open",
            metrics: vec![
                metric(
                    "server RSS per connection",
                    "B",
                    |v| num(v, &["server", "rss_per_conn_bytes"]),
                    false,
                    true,
                ),
                metric(
                    "handshakes/s",
                    "",
                    |v| num(v, &["handshakes_per_s"]),
                    true,
                    true,
                ),
                metric(
                    "server CPU per handshake",
                    "µs",
                    |v| num(v, &["server", "cpu_us_per_handshake"]),
                    false,
                    false,
                ),
                metric(
                    "p99 handshake",
                    "µs",
                    |v| num(v, &["handshake_us", "p99_us"]),
                    false,
                    false,
                ),
                info("generator CPU", "%", |v| num(v, &["client_cpu_pct"])),
            ],
        },
        Row {
            id: "deflate",
            title: "permessage-deflate: 1 KiB JSON-like text, 100 connections × 16 in flight",
            metrics: vec![
                metric("messages/s", "", |v| num(v, &["msgs_per_s"]), true, true),
                metric(
                    "server CPU per message",
                    "ns",
                    |v| num(v, &["server", "cpu_ns_per_msg"]),
                    false,
                    false,
                ),
                metric(
                    "p99 round trip",
                    "µs",
                    |v| num(v, &["latency_us", "p99_us"]),
                    false,
                    false,
                ),
                info("generator CPU", "%", |v| num(v, &["client_cpu_pct"])),
            ],
        },
        Row {
            id: "broadcast",
            title: "Broadcast to {conns} chat clients: send → last client's copy",
            metrics: vec![
                metric(
                    "p50 last copy",
                    "µs",
                    |v| num(v, &["last_copy_us", "p50_us"]),
                    false,
                    true,
                ),
                metric(
                    "p99 last copy",
                    "µs",
                    |v| num(v, &["last_copy_us", "p99_us"]),
                    false,
                    false,
                ),
                metric(
                    "server CPU per copy",
                    "ns",
                    |v| num(v, &["server", "cpu_ns_per_copy"]),
                    false,
                    false,
                ),
            ],
        },
    ]
}

/// Median, min and max of some values.
#[derive(Debug, Clone, Copy)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

fn stat(values: &[f64]) -> Option<Stat> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        *v.get(n / 2)?
    } else {
        (*v.get(n / 2 - 1)? + *v.get(n / 2)?) / 2.0
    };
    Some(Stat {
        median,
        min: *v.first()?,
        max: *v.last()?,
        n,
    })
}

/// Three significant digits, with k/M for large numbers.
fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a >= 1e6 {
        format!("{:.3}M", x / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", x / 1e3)
    } else if a >= 1e3 {
        format!("{:.2}k", x / 1e3)
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn fmt_ratio(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.1}×")
    } else if r >= 0.1 {
        format!("{r:.2}×")
    } else {
        format!("{r:.3}×")
    }
}

fn fmt_stat(s: &Stat, unit: &str) -> String {
    let unit = if unit.is_empty() {
        String::new()
    } else {
        format!(" {unit}")
    };
    if s.n > 1 {
        format!(
            "{}{unit} ({}–{})",
            fmt_num(s.median),
            fmt_num(s.min),
            fmt_num(s.max)
        )
    } else {
        format!("{}{unit}", fmt_num(s.median))
    }
}

/// The results of one row and server.
#[derive(Default)]
struct Cell<'a> {
    ok: Vec<&'a Value>,
    failed: Vec<&'a Value>,
    skipped: Vec<String>,
}

fn label<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get("labels")?.get(key)?.as_str()
}

/// The exact bench command of a result, without its `--label`s.
fn bench_command(v: &Value) -> Option<String> {
    let argv = v.get("argv")?.as_array()?;
    let mut out = Vec::new();
    let mut skip = false;
    for a in argv {
        let a = a.as_str()?;
        if skip {
            skip = false;
            continue;
        }
        if a == "--label" {
            skip = true;
            continue;
        }
        if a.starts_with("--label=") {
            continue;
        }
        out.push(shell_quote(a));
    }
    Some(out.join(" "))
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let results = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "bench-results/raw/results.jsonl".into()),
    );
    let meta = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "bench-results/raw/meta.txt".into()),
    );
    let out = PathBuf::from(args.next().unwrap_or_else(|| "bench-results".into()));
    match run(&results, &meta, &out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-report: {e}");
            ExitCode::FAILURE
        }
    }
}

type Grid<'a> = BTreeMap<(&'a str, &'a str), Cell<'a>>;

fn run(results: &Path, meta: &Path, out: &Path) -> Result<(), String> {
    let text =
        std::fs::read_to_string(results).map_err(|e| format!("{}: {e}", results.display()))?;
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("{}:{}: {e}", results.display(), i + 1))
        })
        .collect::<Result<_, _>>()?;
    let meta_text = std::fs::read_to_string(meta).unwrap_or_default();
    let meta: Vec<(String, String)> = meta_text
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();

    let mut grid: Grid<'_> = BTreeMap::new();
    for v in &lines {
        let (Some(row), Some(server)) = (label(v, "row"), label(v, "server")) else {
            continue;
        };
        let cell = grid.entry((row, server)).or_default();
        if let Some(why) = v.get("skipped").and_then(Value::as_str) {
            cell.skipped.push(why.to_owned());
        } else if v.get("ok").and_then(Value::as_bool) == Some(true) {
            cell.ok.push(v);
        } else {
            cell.failed.push(v);
        }
    }

    let rows = rows();
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let md = markdown(&rows, &grid, &meta);
    let md_path = out.join("RESULTS.md");
    std::fs::write(&md_path, md).map_err(|e| format!("{}: {e}", md_path.display()))?;
    let svg_path = out.join("chart.svg");
    chart(&rows, &grid, &svg_path).map_err(|e| format!("{}: {e}", svg_path.display()))?;
    eprintln!(
        "bench-report: wrote {} and {}",
        md_path.display(),
        svg_path.display()
    );
    Ok(())
}

/// A row's title, with `{conns}` replaced by the connections its runs used.
fn row_title(row: &Row, grid: &Grid<'_>) -> String {
    let conns = grid
        .iter()
        .filter(|((r, _), _)| *r == row.id)
        .flat_map(|(_, cell)| cell.ok.iter().chain(cell.failed.iter()))
        .find_map(|v| v.get("conns").and_then(Value::as_u64));
    let conns = conns.map_or_else(|| "?".to_owned(), thousands);
    row.title.replace("{conns}", &conns)
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The servers that appear in a row, in display order.
fn servers_of<'a>(grid: &Grid<'a>, row: &str) -> Vec<&'a str> {
    let mut present: Vec<&'a str> = grid
        .keys()
        .filter(|(r, _)| *r == row)
        .map(|(_, s)| *s)
        .collect();
    present.sort_by_key(|s| {
        SERVERS
            .iter()
            .position(|(label, _)| label == s)
            .unwrap_or(SERVERS.len())
    });
    present
}

fn metric_stat(cell: &Cell<'_>, m: &Metric) -> Option<Stat> {
    let values: Vec<f64> = cell.ok.iter().filter_map(|v| (m.extract)(v)).collect();
    stat(&values)
}

/// `peer ÷ ferrows` of the medians.
fn ratio(grid: &Grid<'_>, row: &str, server: &str, m: &Metric) -> Option<f64> {
    let mine = metric_stat(grid.get(&(row, "ferrows"))?, m)?;
    let theirs = metric_stat(grid.get(&(row, server))?, m)?;
    (mine.median != 0.0).then(|| theirs.median / mine.median)
}

fn markdown(rows: &[Row], grid: &Grid<'_>, meta: &[(String, String)]) -> String {
    let mut md = String::new();
    let get = |k: &str| {
        meta.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let _ = writeln!(md, "# ferrows benchmark results\n");
    let _ = writeln!(
        md,
        "Generated by `scripts/bench-peers`{}. Each server runs alone, pinned to one core \
         (`taskset -c {}`), with `ferrows bench` pinned to another (`taskset -c {}`), on loopback; \
         the servers take turns, round after round ({} round{}, interleaved: A B C D, A B C D, …), \
         each run against a freshly started server. Every figure is the **median over the rounds \
         with min–max** in parentheses, and **×** is the peer's median divided by ferrows' \
         (for throughput, above 1 means the peer is faster; for times, CPU and memory, above 1 \
         means the peer uses more). Every echo was checked byte for byte; a run with any error \
         is left out of the figures and listed under *Failures*.\n",
        get("date").map_or(String::new(), |d| format!(" on {d}")),
        get("server core").unwrap_or("0"),
        get("generator core").unwrap_or("1"),
        get("rounds").unwrap_or("?"),
        if get("rounds") == Some("1") { "" } else { "s" },
    );
    if let Some(d) = get("duration") {
        let _ = writeln!(
            md,
            "Measured window per run: {d} s after a {} s warm-up{}.\n",
            get("warmup").unwrap_or("?"),
            get("hold").map_or(String::new(), |h| format!("; idle connections held {h} s")),
        );
    }
    let _ = writeln!(md, "![Performance relative to ferrows](chart.svg)\n");
    let _ = writeln!(
        md,
        "The generator has one core too: where its CPU (the *generator CPU* column) is near \
         100 %, it, not the server, set the pace, and the throughput shown is a lower bound for \
         that server. *Server CPU per message* (the server's user + system time over the measured \
         window, from `/proc/PID/stat`, divided by the messages echoed) compares servers \
         whatever the generator managed.\n"
    );

    let _ = writeln!(md, "## Machine and versions\n");
    let _ = writeln!(md, "| | |\n| --- | --- |");
    for (k, v) in meta {
        let _ = writeln!(md, "| {k} | {} |", v.replace('|', "\\|"));
    }
    let _ = writeln!(md);

    let _ = writeln!(md, "## Results\n");
    let mut failures = Vec::new();
    let mut commands = Vec::new();
    for row in rows {
        let servers = servers_of(grid, row.id);
        if servers.is_empty() {
            continue;
        }
        let title = row_title(row, grid);
        let _ = writeln!(md, "### {title}\n");
        let mut header = String::from("| server |");
        let mut rule = String::from("| --- |");
        for m in &row.metrics {
            let unit = if m.unit.is_empty() {
                String::new()
            } else {
                format!(" ({})", m.unit)
            };
            let _ = write!(header, " {}{unit} |", m.name);
            rule.push_str(" ---: |");
            if m.compare {
                header.push_str(" × |");
                rule.push_str(" ---: |");
            }
        }
        let _ = writeln!(md, "{header}\n{rule}");
        for server in &servers {
            let Some(cell) = grid.get(&(row.id, *server)) else {
                continue;
            };
            let mut line = format!("| {} |", display_name(server));
            if cell.ok.is_empty() {
                let why = if cell.skipped.is_empty() {
                    format!(
                        "failed ({} run{})",
                        cell.failed.len(),
                        if cell.failed.len() == 1 { "" } else { "s" }
                    )
                } else {
                    format!("skipped: {}", cell.skipped.join("; "))
                };
                let _ = write!(line, " {why} |");
                for _ in 1..row
                    .metrics
                    .iter()
                    .map(|m| 1 + usize::from(m.compare))
                    .sum::<usize>()
                {
                    line.push_str(" |");
                }
            } else {
                for m in &row.metrics {
                    match metric_stat(cell, m) {
                        Some(s) => {
                            let _ = write!(line, " {} |", fmt_stat(&s, ""));
                        }
                        None => line.push_str(" – |"),
                    }
                    if m.compare {
                        match ratio(grid, row.id, server, m) {
                            Some(r) => {
                                let _ = write!(line, " {} |", fmt_ratio(r));
                            }
                            None => line.push_str(" – |"),
                        }
                    }
                }
            }
            let _ = writeln!(md, "{line}");
            for f in &cell.failed {
                let round = label(f, "round").unwrap_or("?");
                let errors = f
                    .get("errors")
                    .map_or_else(|| "no result".to_owned(), Value::to_string);
                failures.push(format!(
                    "{title} / {} / round {round}: {errors}",
                    display_name(server)
                ));
            }
            if let Some(first) = cell.ok.first().or(cell.failed.first()) {
                let server_cmd = label(first, "server_cmd").unwrap_or("?");
                let bench = bench_command(first).unwrap_or_else(|| "?".to_owned());
                let bench = match label(first, "bench_pin").filter(|p| !p.is_empty()) {
                    Some(pin) => format!("{pin} {bench}"),
                    None => bench,
                };
                commands.push((
                    title.clone(),
                    display_name(server).to_owned(),
                    server_cmd.to_owned(),
                    bench,
                ));
            }
        }
        let _ = writeln!(md);
    }

    if !failures.is_empty() {
        let _ = writeln!(md, "## Failures\n");
        for f in &failures {
            let _ = writeln!(md, "- {f}");
        }
        let _ = writeln!(md);
    }

    let _ = writeln!(md, "## The servers\n");
    for line in [
        "ferrows: `ferrows serve echo` (its `--high-water-mark` raised to the message limit; \
         compression, when on, at its defaults: level 1, messages from 256 bytes) and \
         `ferrows serve chat --tick 0`, which also announces every join to everyone (the \
         unmeasured first broadcast waits until those are delivered).",
        "tokio-tungstenite: `bench/peers/src/bin/tungstenite_echo.rs`, its echo-server example: \
         `split()` and `forward`, which flushes only when nothing more is readable; no compression \
         (tungstenite has none).",
        "fastwebsockets: `bench/peers/src/bin/fastwebsockets_echo.rs`, its echo_server example: \
         hyper upgrade, `FragmentCollector`, auto-pong, a current-thread runtime; no compression \
         (fastwebsockets has none).",
        "Node ws: `bench/peers/node/echo.js` (with `bufferutil`), compression at ws' defaults when \
         on; `bench/peers/node/chat.js` for the broadcast row, the ws README's broadcast loop, \
         without join notices.",
        "Python websockets: `bench/peers/python/echo.py`, the asyncio echo of its documentation, \
         compression at its defaults.",
        "ferrows in axum: `bench/peers/src/bin/axum_ferrows_echo.rs`, `ferrows::axum::WebSocketUpgrade` \
         on `axum::serve`, with the echo loop of `ferrows serve echo` (`queue` + `try_recv`); \
         no compression.",
        "axum ws: `bench/peers/src/bin/axum_ws_echo.rs`, `axum::extract::ws` (tokio-tungstenite \
         inside) on `axum::serve`, `split()` and `forward` as for tokio-tungstenite; no compression.",
        "Every server listens on 127.0.0.1, sets TCP_NODELAY and has the same message limit.",
    ] {
        let _ = writeln!(md, "- {line}");
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "## Commands\n");
    let _ = writeln!(
        md,
        "Run everything again with `scripts/bench-peers` (see its header for the settings). \
         The exact commands of the first round (ports and process ids change between runs):\n"
    );
    for (i, (row, server, server_cmd, bench)) in commands.iter().enumerate() {
        let first_of_row = i == 0 || commands.get(i - 1).is_none_or(|c| &c.0 != row);
        let last_of_row = commands.get(i + 1).is_none_or(|c| &c.0 != row);
        if first_of_row {
            let _ = writeln!(md, "**{row}**\n");
        }
        let _ = writeln!(md, "- {server}:\n  ```\n  {server_cmd}\n  {bench}\n  ```");
        if last_of_row {
            let _ = writeln!(md);
        }
    }
    md
}

/// One bar of the chart.
struct Bar {
    server: String,
    value: f64,
}

fn chart(rows: &[Row], grid: &Grid<'_>, path: &Path) -> Result<(), String> {
    // Groups: each charted metric of each row, with the ratio of every
    // server, oriented so that above 1 means better than ferrows.
    let mut groups: Vec<(String, Vec<Bar>)> = Vec::new();
    for row in rows {
        for m in row.metrics.iter().filter(|m| m.chart) {
            let mut bars = Vec::new();
            for server in servers_of(grid, row.id) {
                let Some(r) = ratio(grid, row.id, server, m) else {
                    continue;
                };
                if r <= 0.0 || !r.is_finite() {
                    continue;
                }
                let value = if m.higher_is_better { r } else { 1.0 / r };
                bars.push(Bar {
                    server: server.to_owned(),
                    value,
                });
            }
            if bars.len() > 1 {
                groups.push((
                    format!("{}\n{}", short_row(row.id), short_metric(m.name)),
                    bars,
                ));
            }
        }
    }
    let root = SVGBackend::new(path, (1280, 640)).into_drawing_area();
    draw(&root, &groups).map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

fn short_metric(name: &str) -> &str {
    match name {
        "messages/s" => "msg/s",
        "server CPU per message" => "CPU/msg",
        "p50 round trip" => "p50 RTT",
        "p99 round trip" => "p99 RTT",
        "server RSS per connection" => "RSS/conn",
        "handshakes/s" => "handshakes/s",
        "p50 last copy" => "p50 last copy",
        other => other,
    }
}

fn short_row(id: &str) -> &str {
    match id {
        "text16" => "16 B text",
        "bin1k" => "1 KiB binary",
        "bin64k" => "64 KiB binary",
        "bin1m" => "1 MiB binary",
        "latency" => "1 conn",
        "idle" => "idle conns",
        "deflate" => "deflate 1 KiB",
        "broadcast" => "broadcast",
        other => other,
    }
}

fn draw(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    groups: &[(String, Vec<Bar>)],
) -> Result<(), Box<dyn std::error::Error>> {
    root.fill(&WHITE)?;
    if groups.is_empty() {
        root.draw(&Text::new(
            "no results to compare yet",
            (40, 40),
            ("sans-serif", 20).into_font(),
        ))?;
        return Ok(());
    }
    let (width, _) = root.dim_in_pixel();
    let (plot, legend) = root.split_horizontally(width.saturating_sub(190));
    let (lo, hi) = groups
        .iter()
        .flat_map(|(_, bars)| bars.iter().map(|b| b.value))
        .fold((1.0f64, 1.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let y_lo = (lo / 2.0).max(1e-4);
    let y_hi = (hi * 2.0).min(1e4);
    let n = groups.len();
    let mut chart = ChartBuilder::on(&plot)
        .caption(
            "Each server relative to ferrows (ferrows = 1; above 1: better than ferrows)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(60)
        // `(0..k).into_segmented()` has k + 1 segments: one per group.
        .build_cartesian_2d(
            (0..n.saturating_sub(1)).into_segmented(),
            (y_lo..y_hi).log_scale(),
        )?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|_| String::new())
        .y_desc("ratio (log scale)")
        .y_label_formatter(&|y| format!("{y}×"))
        .draw()?;

    // The ferrows line.
    let (x0, y1) = chart.backend_coord(&(SegmentValue::Exact(0), 1.0));
    let (x1, _) = chart.backend_coord(&(SegmentValue::Exact(n), 1.0));
    root.draw(&PathElement::new(
        vec![(x0, y1), (x1, y1)],
        BLACK.stroke_width(1),
    ))?;

    let centered = |size: u32| {
        TextStyle::from(("sans-serif", size).into_font()).pos(Pos::new(HPos::Center, VPos::Top))
    };
    for (i, (name, bars)) in groups.iter().enumerate() {
        let (left, base) = chart.backend_coord(&(SegmentValue::Exact(i), y_lo));
        let (right, _) = chart.backend_coord(&(SegmentValue::Exact(i + 1), y_lo));
        let width = f64::from(right - left);
        let slot = width * 0.8 / bars.len() as f64;
        for (j, bar) in bars.iter().enumerate() {
            let (_, top) =
                chart.backend_coord(&(SegmentValue::Exact(i), bar.value.clamp(y_lo, y_hi)));
            let bx0 = left + (width * 0.1 + slot * j as f64) as i32;
            let bx1 = left + (width * 0.1 + slot * (j + 1) as f64) as i32 - 2;
            root.draw(&Rectangle::new(
                [(bx0, top), (bx1, base)],
                colour(&bar.server).filled(),
            ))?;
            let text = if bar.value >= 10.0 {
                format!("{:.0}", bar.value)
            } else if bar.value >= 0.1 {
                format!("{:.2}", bar.value)
            } else {
                format!("{:.3}", bar.value)
            };
            root.draw(&Text::new(text, ((bx0 + bx1) / 2, top - 12), centered(9)))?;
        }
        let middle = (left + right) / 2;
        for (k, line) in name.lines().enumerate() {
            root.draw(&Text::new(
                line.to_owned(),
                (middle, base + 6 + 14 * k as i32),
                centered(11),
            ))?;
        }
    }

    // Legend, beside the plot.
    let mut seen: Vec<&str> = Vec::new();
    for (_, bars) in groups {
        for b in bars {
            if !seen.contains(&b.server.as_str()) {
                seen.push(&b.server);
            }
        }
    }
    for (k, server) in seen.iter().enumerate() {
        let y = 60 + 22 * k as i32;
        legend.draw(&Rectangle::new(
            [(10, y), (24, y + 14)],
            colour(server).filled(),
        ))?;
        legend.draw(&Text::new(
            display_name(server).to_owned(),
            (32, y),
            ("sans-serif", 14).into_font(),
        ))?;
    }
    legend.draw(&Text::new(
        "throughput: peer ÷ ferrows;".to_owned(),
        (10, 80 + 22 * seen.len() as i32),
        ("sans-serif", 11).into_font(),
    ))?;
    legend.draw(&Text::new(
        "times, CPU, memory: ferrows ÷ peer".to_owned(),
        (10, 95 + 22 * seen.len() as i32),
        ("sans-serif", 11).into_font(),
    ))?;
    Ok(())
}
