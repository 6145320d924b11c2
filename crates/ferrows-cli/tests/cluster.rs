//! Three `ferrows serve chat --redis` processes on one real `redis-server`
//! are one room (issue 8, SCALEOUT §6.2 item 3): every message reaches
//! every client on every server exactly once in per-sender order, join and
//! leave notices name the server, the same tick n reaches everyone at the
//! same time, `/status` reports the backplane; and when Redis is killed or
//! frozen, every client's messages plus the losses it was told about add
//! up exactly to what was sent. Refusals: a mismatched --tick (exit 2), an
//! unreachable Redis (exit 1), and a password that never shows.
//!
//! The tests of this file share the machine's two cores with everything
//! else: they run one at a time (a lock here, a test group in
//! `.config/nextest.toml`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[allow(dead_code)]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrows::Message;
use support::redis::RedisServer;
use support::{Server, within};

/// The tick every node runs with.
const TICK: Duration = Duration::from_millis(200);

/// The message every node sends when Redis goes away.
const DOWN: &str =
    "* lost contact with the other servers: messages now reach only people on this server";
/// ... and when it is back.
const UP: &str = "* back in contact with the other servers";

/// One test at a time within this binary (`cargo test` runs tests as
/// threads; nextest as processes, serialized by its config).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `ferrows serve chat` on a free port, in the room of `redis`.
fn node(redis_url: &str, name: &str, extra: &[&str]) -> Server {
    let mut args = vec![
        "serve",
        "chat",
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--tick",
        "200ms",
        "--node-name",
        name,
    ];
    args.extend_from_slice(extra);
    Server::start_with_env(&args, &[("FERROWS_REDIS_URL", redis_url)])
}

fn nodes(redis: &RedisServer, n: usize) -> Vec<Server> {
    (1..=n)
        .map(|k| node(&redis.url(), &format!("n{k}"), &[]))
        .collect()
}

/// What a client received: each text with its arrival time.
type Log = Arc<Mutex<Vec<(Instant, String)>>>;

/// A chat client: a task records what arrives, the writer sends.
struct Client {
    /// Its id in join notices, e.g. `3@n1`.
    id: String,
    log: Log,
    writer: ferrows::WsWriter<ferrows::MaybeTlsStream<tokio::net::TcpStream>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Client {
    /// Connects to `server` and waits for its own join notice: the first
    /// whose id ends with `suffix` (`@<node>`; a join on another node may
    /// arrive between this client's joining and its notice).
    async fn join(server: &Server, suffix: &str) -> Client {
        let ws = support::connect(&server.ws_url("/")).await;
        let (mut reader, writer) = ws.split();
        let log: Log = Arc::default();
        let sink = log.clone();
        let reader = tokio::spawn(async move {
            while let Some(Ok(msg)) = reader.recv().await {
                if let Message::Text(t) = msg {
                    sink.lock()
                        .unwrap()
                        .push((Instant::now(), t.as_str().to_owned()));
                }
            }
        });
        let mut client = Client {
            id: String::new(),
            log,
            writer,
            reader,
        };
        // Earlier clients of this node were announced before it joined.
        let own = format!("{suffix} joined");
        let first = client
            .wait_msg(|m| m.starts_with("* client ") && m.ends_with(&own), 10)
            .await;
        client.id = first
            .strip_prefix("* client ")
            .and_then(|s| s.strip_suffix(" joined"))
            .unwrap()
            .to_owned();
        client
    }

    /// The `msg:` texts so far.
    fn msgs(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, t)| t.strip_prefix("msg:").map(str::to_owned))
            .collect()
    }

    /// The ticks so far, with their arrival times.
    fn ticks(&self) -> Vec<(u64, Instant)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(at, t)| Some((t.strip_prefix("tick:")?.parse().ok()?, *at)))
            .collect()
    }

    /// Waits (bounded) for a `msg:` matching `pred`; returns it.
    async fn wait_msg(&self, pred: impl Fn(&str) -> bool, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(m) = self.msgs().into_iter().find(|m| pred(m)) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "no such message within {secs} s; got {:?}",
                self.msgs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn send(&mut self, text: &str) {
        within(5, self.writer.send(Message::text(text.to_owned())))
            .await
            .expect("send");
    }

    async fn close(mut self) {
        let _ = within(5, self.writer.close(1000, "bye")).await;
        let _ = within(5, self.reader).await;
    }
}

/// `GET /status` of `server`, parsed.
async fn status(server: &Server) -> serde_json::Value {
    let r = support::http(server.addr, "GET", "/status", "").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

/// The chat messages of each sender (`<sender> <i>`) a client got, in order.
fn by_sender(msgs: &[String]) -> HashMap<String, Vec<u64>> {
    let mut got: HashMap<String, Vec<u64>> = HashMap::new();
    for m in msgs {
        let Some((sender, i)) = m.split_once(' ') else {
            continue;
        };
        if let (false, Ok(i)) = (sender.starts_with('*'), i.parse()) {
            got.entry(sender.to_owned()).or_default().push(i);
        }
    }
    got
}

/// The sum of the loss notices a client got.
fn noticed_lost(msgs: &[String]) -> u64 {
    msgs.iter()
        .filter_map(|m| {
            m.strip_prefix("* ")?
                .strip_suffix(" messages from other servers were lost")?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Ticks strictly increase (never repeat, never go back).
fn assert_increasing(who: &str, ticks: &[(u64, Instant)]) {
    for w in ticks.windows(2) {
        assert!(w[1].0 > w[0].0, "{who}: tick {} after {}", w[1].0, w[0].0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_are_one_room() {
    let _one = ONE_AT_A_TIME.lock().await;
    let redis = RedisServer::start();
    // Started 330 ms apart (not a multiple of the tick): nodes ticking on
    // their own timers would send each n at least 330 ms apart.
    let mut nodes = Vec::new();
    for k in 1..=3 {
        if k > 1 {
            tokio::time::sleep(Duration::from_millis(330)).await;
        }
        nodes.push(node(&redis.url(), &format!("n{k}"), &[]));
    }
    // Two clients per node, joined one after the other: n1 n2 n3 n1 n2 n3.
    let mut clients = Vec::new();
    for _ in 0..2 {
        for (k, node) in nodes.iter().enumerate() {
            clients.push(Client::join(node, &format!("@n{}", k + 1)).await);
        }
    }
    for (i, c) in clients.iter().enumerate() {
        let node = format!("@n{}", i % 3 + 1);
        assert!(c.id.ends_with(&node), "{} is on {node}", c.id);
    }
    // Every client hears of every later join, across nodes, once.
    for (i, c) in clients.iter().enumerate() {
        for later in &clients[i + 1..] {
            let notice = format!("* client {} joined", later.id);
            c.wait_msg(|m| m == notice, 10).await;
        }
    }

    // Every client sends 25 messages, 50 a second (100 a node).
    const EACH: u64 = 25;
    let start = Instant::now();
    for i in 0..EACH {
        for (k, c) in clients.iter_mut().enumerate() {
            c.send(&format!("c{k} {i}")).await;
        }
        tokio::time::sleep_until((start + Duration::from_millis(20 * (i + 1))).into()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for (k, c) in clients.iter().enumerate() {
        loop {
            let got = by_sender(&c.msgs());
            let complete =
                got.len() == clients.len() && got.values().all(|v| v.len() as u64 >= EACH);
            if complete {
                // Exactly once, in each sender's order.
                for (sender, seq) in &got {
                    let want: Vec<u64> = (0..EACH).collect();
                    assert_eq!(seq, &want, "client {k} got {sender}'s messages");
                }
                break;
            }
            assert!(Instant::now() < deadline, "client {k} got {got:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // The same tick n reaches all six within 50 ms; no repeats or gaps.
    // (Ten ticks at least on the last client to join.)
    let deadline = Instant::now() + Duration::from_secs(20);
    while clients.last().unwrap().ticks().len() < 11 {
        assert!(Instant::now() < deadline, "ticks stopped");
        tokio::time::sleep(TICK).await;
    }
    let ticks: Vec<Vec<(u64, Instant)>> = clients.iter().map(Client::ticks).collect();
    let mut spreads = Vec::new();
    for (k, t) in ticks.iter().enumerate() {
        assert!(t.len() >= 10, "client {k}: {t:?}");
        for w in t.windows(2) {
            assert_eq!(w[1].0, w[0].0 + 1, "client {k}'s ticks are consecutive");
        }
    }
    for (n, _) in &ticks[0] {
        let ats: Vec<Instant> = ticks
            .iter()
            .filter_map(|t| t.iter().find(|(m, _)| m == n).map(|(_, at)| *at))
            .collect();
        if ats.len() == ticks.len() {
            let first = ats.iter().min().unwrap();
            let last = ats.iter().max().unwrap();
            spreads.push((*n, *last - *first));
        }
    }
    assert!(spreads.len() >= 10, "common ticks: {spreads:?}");
    let mut sorted: Vec<Duration> = spreads.iter().map(|(_, s)| *s).collect();
    sorted.sort();
    eprintln!(
        "tick spread over 6 clients on 3 nodes: median {:?}, max {:?} ({} ticks)",
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
        sorted.len()
    );
    let within_50 = spreads
        .iter()
        .filter(|(_, s)| *s <= Duration::from_millis(50))
        .count();
    // A loaded machine may delay a reader now and then; nodes ticking on
    // their own timers would be apart by a random part of 200 ms every time.
    assert!(
        within_50 * 10 >= spreads.len() * 8,
        "tick spreads over the six clients: {spreads:?}"
    );

    // /status of every node.
    let mut epochs = Vec::new();
    for (k, node) in nodes.iter().enumerate() {
        let s = status(node).await;
        let name = format!("n{}", k + 1);
        assert_eq!(s["clients"], 2, "{s}");
        assert_eq!(s["room"], "chat", "{s}");
        assert_eq!(s["node"], name.as_str(), "{s}");
        let id = s["node_id"].as_str().unwrap();
        assert!(
            id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{s}"
        );
        let b = &s["backplane"];
        assert_eq!(b["state"], "up", "{s}");
        assert_eq!(b["server"], redis.url().as_str(), "{s}");
        // Two joins and 2 × 25 messages of its own, at least.
        assert!(b["published"].as_u64().unwrap() >= 2 + 2 * EACH, "{s}");
        // The four other clients' messages and their joins.
        assert!(b["received"].as_u64().unwrap() >= 4 * EACH, "{s}");
        assert!(b["delivered"].as_u64().unwrap() >= 4 * EACH, "{s}");
        for zero in ["lost", "not_sent", "duplicates_dropped", "stream_resets"] {
            assert_eq!(b[zero], 0, "{zero}: {s}");
        }
        assert!(b["resumes"].is_u64(), "{s}");
        assert_eq!(s["clock"]["period_ms"], 200, "{s}");
        assert!(s["clock"]["rtt_ms"].is_f64(), "{s}");
        epochs.push(s["clock"]["epoch_ms"].as_u64().unwrap());
    }
    assert!(
        epochs.iter().all(|e| *e == epochs[0]),
        "one epoch: {epochs:?}"
    );

    // A client leaves: everyone else hears it, with its node.
    let leaver = clients.pop().unwrap();
    let notice = format!("* client {} left", leaver.id);
    leaver.close().await;
    for c in &clients {
        c.wait_msg(|m| m == notice, 10).await;
    }
    assert_eq!(status(&nodes[2]).await["clients"], 1);
    for c in clients {
        c.close().await;
    }
}

/// What happens to Redis in a chaos run.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// SIGKILL, and a new empty Redis on the same port this much later.
    Kill(Duration),
    /// SIGSTOP, and SIGCONT this much later.
    Freeze(Duration),
}

/// What the clients of a chaos run got.
struct Chaos {
    /// Per client: its messages.
    msgs: Vec<Vec<String>>,
    ticks: Vec<Vec<(u64, Instant)>>,
    /// Messages sent by each sender (`s1`, `s2`, `s3`).
    sent: u64,
    statuses: Vec<serde_json::Value>,
}

/// Three nodes, two clients each; the first client of every node sends 50
/// messages a second for 1.5 s, through `fault`, and 3 s after. Returns
/// once every client's messages plus its loss notices add up to what was
/// sent (or panics after 30 s).
async fn chaos(fault: Fault) -> Chaos {
    let redis = RedisServer::start();
    let nodes = nodes(&redis, 3);
    let mut clients = Vec::new();
    for (k, node) in nodes.iter().enumerate() {
        let suffix = format!("@n{}", k + 1);
        clients.push(Client::join(node, &suffix).await);
        clients.push(Client::join(node, &suffix).await);
    }
    // The last join has reached everyone (so every node has seen every
    // other's first entry: its baseline).
    let last = clients.last().unwrap().id.clone();
    for c in &clients {
        let notice = format!("* client {last} joined");
        c.wait_msg(|m| m == notice, 10).await;
    }

    let fault_at = Duration::from_millis(1500);
    let fault_len = match fault {
        Fault::Kill(d) | Fault::Freeze(d) => d,
    };
    let total = fault_at + fault_len + Duration::from_secs(3);
    let mut redis = redis;
    let faulty = tokio::task::spawn_blocking(move || {
        std::thread::sleep(fault_at);
        match fault {
            Fault::Kill(d) => {
                redis.kill();
                std::thread::sleep(d);
                redis.restart();
            }
            Fault::Freeze(d) => {
                redis.stop();
                std::thread::sleep(d);
                redis.cont();
            }
        }
        redis
    });
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < total {
        for k in 0..3 {
            clients[2 * k].send(&format!("s{} {sent}", k + 1)).await;
        }
        sent += 1;
        tokio::time::sleep_until((start + Duration::from_millis(20 * sent)).into()).await;
    }
    let redis = faulty.await.unwrap();

    // Loss notices wait up to 5 s after the previous one.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (k, c) in clients.iter().enumerate() {
        loop {
            let msgs = c.msgs();
            let got = by_sender(&msgs);
            let received: u64 = got.values().map(|v| v.len() as u64).sum();
            // Never more than sent, never twice, never out of order.
            for (sender, seq) in &got {
                assert!(
                    seq.windows(2).all(|w| w[1] > w[0]),
                    "client {k}: {sender}'s messages out of order or twice: {seq:?}"
                );
                assert!(seq.iter().all(|i| *i < sent), "{sender}: {seq:?}");
            }
            if received + noticed_lost(&msgs) == 3 * sent {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "client {k}: received {received} + noticed lost {} != sent {}\n{msgs:?}",
                noticed_lost(&msgs),
                3 * sent
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // No late extra notice of loss either.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut statuses = Vec::new();
    for node in &nodes {
        statuses.push(status(node).await);
    }
    eprintln!(
        "{fault:?}: sent {} per sender; per client noticed lost {:?}; per node not_sent {:?}, lost {:?}, duplicates_dropped {:?}",
        sent,
        clients
            .iter()
            .map(|c| noticed_lost(&c.msgs()))
            .collect::<Vec<_>>(),
        statuses
            .iter()
            .map(|s| s["backplane"]["not_sent"].clone())
            .collect::<Vec<_>>(),
        statuses
            .iter()
            .map(|s| s["backplane"]["lost"].clone())
            .collect::<Vec<_>>(),
        statuses
            .iter()
            .map(|s| s["backplane"]["duplicates_dropped"].clone())
            .collect::<Vec<_>>(),
    );
    let run = Chaos {
        msgs: clients.iter().map(Client::msgs).collect(),
        ticks: clients.iter().map(Client::ticks).collect(),
        sent,
        statuses,
    };
    for c in clients {
        c.close().await;
    }
    drop(redis);
    run
}

impl Chaos {
    fn check_exact(&self) {
        for (k, msgs) in self.msgs.iter().enumerate() {
            let got = by_sender(msgs);
            let received: u64 = got.values().map(|v| v.len() as u64).sum();
            assert_eq!(received + noticed_lost(msgs), 3 * self.sent, "client {k}");
            // A client's own node's senders reach it whatever Redis does.
            let own = format!("s{}", k / 2 + 1);
            assert_eq!(got[&own].len() as u64, self.sent, "client {k}: {own}");
        }
        for (k, t) in self.ticks.iter().enumerate() {
            assert_increasing(&format!("client {k}"), t);
            // Ticks kept coming through the fault.
            for w in t.windows(2) {
                assert!(
                    w[1].1 - w[0].1 < Duration::from_secs(1),
                    "client {k}: no tick between {} and {}",
                    w[0].0,
                    w[1].0
                );
            }
        }
    }

    fn all_saw(&self, notice: &str) -> bool {
        self.msgs.iter().all(|m| m.iter().any(|t| t == notice))
    }

    fn lost_total(&self) -> u64 {
        self.msgs.iter().map(|m| noticed_lost(m)).sum()
    }
}

/// Redis killed for 1 s, inside the relay's 2 s hold: every message that
/// was waiting for Redis is sent after the restart (`not_sent` stays 0) and
/// arrives once. What Redis had acknowledged but a node had not read yet
/// dies with it (no persistence): each publisher finds its last entry gone
/// and publishes again what it had acknowledged within the hold, so
/// nothing is lost (before that, 0 to 3 of 550 per client were).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_for_a_second_holds_and_retries() {
    let _one = ONE_AT_A_TIME.lock().await;
    let run = chaos(Fault::Kill(Duration::from_secs(1))).await;
    run.check_exact();
    assert!(run.all_saw(DOWN), "{:?}", run.msgs);
    assert!(run.all_saw(UP), "{:?}", run.msgs);
    for (k, msgs) in run.msgs.iter().enumerate() {
        let lost = noticed_lost(msgs);
        assert_eq!(lost, 0, "client {k} lost {lost}: {:?}", run.statuses);
    }
    // The publishers found the new Redis without their entries.
    let republished: u64 = run
        .statuses
        .iter()
        .map(|s| s["backplane"]["republished"].as_u64().unwrap())
        .sum();
    assert!(republished >= 1, "{:?}", run.statuses);
    for s in &run.statuses {
        let b = &s["backplane"];
        assert_eq!(b["state"], "up", "{s}");
        assert_eq!(b["not_sent"], 0, "{s}");
        assert_eq!(b["lost"], 0, "{s}");
        // The reader came back (the new Redis has an empty stream).
        let back = b["resumes"].as_u64().unwrap() + b["stream_resets"].as_u64().unwrap();
        assert!(back >= 1, "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_for_five_seconds_counts_every_loss() {
    let _one = ONE_AT_A_TIME.lock().await;
    let run = chaos(Fault::Kill(Duration::from_secs(5))).await;
    run.check_exact();
    // Held 2 s, then not sent: the other nodes' clients were told.
    assert!(run.lost_total() > 0, "{:?}", run.statuses);
    assert!(run.all_saw(DOWN), "{:?}", run.msgs);
    assert!(run.all_saw(UP), "{:?}", run.msgs);
    for s in &run.statuses {
        let b = &s["backplane"];
        assert_eq!(b["state"], "up", "{s}");
        assert!(b["not_sent"].as_u64().unwrap() > 0, "{s}");
        assert!(b["lost"].as_u64().unwrap() > 0, "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_for_two_seconds_counts_every_loss() {
    let _one = ONE_AT_A_TIME.lock().await;
    let run = chaos(Fault::Freeze(Duration::from_secs(2))).await;
    run.check_exact();
    for s in &run.statuses {
        assert_eq!(s["backplane"]["state"], "up", "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_mismatched_tick_unreachable_redis_and_no_password_shown() {
    let _one = ONE_AT_A_TIME.lock().await;
    const PASSWORD: &str = "Sesame-7fq2K";
    let redis = RedisServer::start_with_password(PASSWORD);
    let url = redis.url();
    let first = node(&url, "n1", &[]);

    // Another --tick than the room's: exit 2, saying both.
    let (status, stderr) = support::run_to_exit(
        &[
            "serve",
            "chat",
            "--port",
            "0",
            "--tick",
            "500ms",
            "--node-name",
            "n2",
        ],
        &[("FERROWS_REDIS_URL", &url)],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("500ms"), "{stderr}");
    assert!(stderr.contains("200ms"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");

    // Nobody listens: exit 1 after the 10 s startup wait, with the reason.
    let closed = support::redis::free_port();
    let unreachable = format!("redis://:{PASSWORD}@127.0.0.1:{closed}/");
    let started = Instant::now();
    let (status, stderr) = support::run_to_exit(
        &["serve", "chat", "--port", "0", "--redis", &unreachable],
        &[],
    );
    let took = started.elapsed();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(20),
        "{took:?}"
    );
    assert!(stderr.contains(&format!("127.0.0.1:{closed}")), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");

    // A wrong password: exit 1, neither password shown.
    let wrong = format!("redis://:Wrong-{PASSWORD}@127.0.0.1:{}/", redis.port());
    let (status, stderr) = support::run_to_exit(
        &["serve", "chat", "--port", "0", "--node-name", "n3"],
        &[("FERROWS_REDIS_URL", &wrong)],
    );
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");

    // The running node: its log, /status and --help never show it.
    let s = status_text(&first).await;
    assert!(!s.contains(PASSWORD), "{s}");
    assert!(s.contains("\"state\":\"up\""), "{s}");
    assert!(!first.log().contains(PASSWORD), "{}", first.log());
    assert!(
        first.log().contains("backplane=redis://"),
        "{}",
        first.log()
    );
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_ferrows"))
        .args(["serve", "chat", "--help"])
        .env("FERROWS_REDIS_URL", &url)
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("FERROWS_REDIS_URL"), "{help}");
    assert!(!help.contains(PASSWORD), "{help}");
}

async fn status_text(server: &Server) -> String {
    support::http(server.addr, "GET", "/status", "").await.body
}

#[tokio::test]
async fn without_redis_status_has_clients_only() {
    let server = Server::start(&["serve", "chat", "--bind", "127.0.0.1", "--port", "0"]);
    let c = Client::join(&server, "").await;
    assert!(
        c.id.parse::<u64>().is_ok(),
        "plain ids without --redis: {}",
        c.id
    );
    let s = status(&server).await;
    assert_eq!(s, serde_json::json!({ "clients": 1, "backplane": null }));
    // `ferrows serve` answers /status too.
    let all = Server::start(&["serve", "--bind", "127.0.0.1", "--port", "0"]);
    let s = status(&all).await;
    assert_eq!(s, serde_json::json!({ "clients": 0, "backplane": null }));
    c.close().await;
}
