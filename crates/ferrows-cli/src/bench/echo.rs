//! Echo load: every connection sends messages and checks each echo.
//!
//! Closed loop (the default): each connection keeps `pipeline` messages in
//! flight, sending the next one as each echo arrives. Sends are corked:
//! `feed` queues, and `recv` writes what is queued before it waits, so a
//! window of messages goes out in one write. Latency is measured from the
//! `feed` to the arrival of the echo, for echoes arriving inside the
//! measured window.
//!
//! Open loop (`--rate`): each connection sends on a fixed schedule whether
//! or not echoes come back (a reading and a writing half), and latency is
//! measured from the *scheduled* send time, so a server that stalls is
//! charged for every message the stall delayed (no coordinated omission).
//! Latency is recorded for every message scheduled inside the window, also
//! when its echo arrives after it.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferrows::{Config, Message};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;

use super::payload::{Content, Kind, Payloads};
use super::pool::{self, Counters, Ws};
use super::stats::{Latencies, Summary};
use super::sys;

/// Before each scheduled send, the open loop sleeps until this long before
/// the send time (tokio's timer has millisecond granularity), then yields
/// in a loop until the time comes.
const SPIN: Duration = Duration::from_micros(1500);

/// Connection errors kept word for word (the rest are only counted).
const KEEP_ERRORS: usize = 5;

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct EchoPlan {
    /// Server URL.
    pub(crate) url: String,
    /// Connections.
    pub(crate) conns: usize,
    /// Payload size in bytes.
    pub(crate) size: usize,
    /// Text or binary.
    pub(crate) kind: Kind,
    /// Payload content.
    pub(crate) content: Content,
    /// Messages in flight per connection (closed loop).
    pub(crate) pipeline: usize,
    /// Messages per second over all connections (open loop).
    pub(crate) rate: Option<f64>,
    /// Time before the measured window.
    pub(crate) warmup: Duration,
    /// The measured window.
    pub(crate) duration: Duration,
    /// Time allowed after the window for outstanding echoes.
    pub(crate) grace: Duration,
    /// Generator threads.
    pub(crate) threads: usize,
    /// Handshakes in progress at once.
    pub(crate) handshake_concurrency: usize,
    /// Client connection settings.
    pub(crate) config: Config,
    /// Seed of the payload contents.
    pub(crate) seed: u64,
    /// Server process to measure.
    pub(crate) server_pid: Option<u32>,
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct EchoOutcome {
    /// Echoes received inside the measured window.
    pub(crate) messages: u64,
    /// The measured window as it actually was (between the two samples).
    pub(crate) window: Duration,
    /// Round-trip times.
    pub(crate) latency: Option<Summary>,
    /// Open loop: how late sends went out against their schedule.
    pub(crate) send_lag: Option<Summary>,
    /// The generator's CPU time over the window.
    pub(crate) client_cpu: Option<Duration>,
    /// The server's CPU time over the window.
    pub(crate) server_cpu: Option<Duration>,
    /// Connections that negotiated permessage-deflate.
    pub(crate) compressed_conns: usize,
    /// Echoes checked byte for byte and found equal (whole run).
    pub(crate) verified: u64,
    /// What went wrong.
    pub(crate) errors: Errors,
}

/// What went wrong during a run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Errors {
    /// Echoes that differ from what was sent.
    pub(crate) mismatches: u64,
    /// The first mismatch, described.
    pub(crate) first_mismatch: Option<String>,
    /// Connections that could not be opened.
    pub(crate) connect_failures: usize,
    /// Connections that failed during the run (closed by the server,
    /// protocol or I/O error).
    pub(crate) connection_errors: usize,
    /// Connections still waiting for echoes at the deadline.
    pub(crate) stalled: usize,
    /// Connections whose closing handshake failed or timed out.
    pub(crate) close_errors: usize,
    /// The first few error messages.
    pub(crate) messages: Vec<String>,
}

impl Errors {
    /// Whether anything counts against the run (close errors do not: the
    /// measurement is over by then).
    pub(crate) fn any(&self) -> bool {
        self.mismatches > 0
            || self.connect_failures > 0
            || self.connection_errors > 0
            || self.stalled > 0
    }

    /// Keeps `what` if fewer than a few messages are kept.
    pub(crate) fn note(&mut self, what: String) {
        if self.messages.len() < KEEP_ERRORS {
            self.messages.push(what);
        }
    }

    /// Adds `other`'s counts and messages.
    pub(crate) fn merge(&mut self, other: Errors) {
        self.mismatches += other.mismatches;
        if self.first_mismatch.is_none() {
            self.first_mismatch = other.first_mismatch;
        }
        self.connect_failures += other.connect_failures;
        self.connection_errors += other.connection_errors;
        self.stalled += other.stalled;
        self.close_errors += other.close_errors;
        for m in other.messages {
            self.note(m);
        }
    }
}

/// The phases of a run, the same for every connection.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    /// Sending starts.
    start: Instant,
    /// The measured window opens.
    t0: Instant,
    /// The measured window closes; no message is sent after it.
    t1: Instant,
    /// Connections still waiting for echoes now are stalled.
    deadline: Instant,
}

#[derive(Debug, Clone, Copy)]
enum Go {
    Wait,
    Start(Schedule),
    Abort,
}

/// What the coordinator and the workers share.
struct Shared {
    plan: EchoPlan,
    /// Echoes received, per worker.
    echoes: Counters,
    connected: AtomicUsize,
    failed: AtomicUsize,
    settled: Notify,
    gate: Semaphore,
    go: watch::Receiver<Go>,
    /// Payload variants per connection.
    variants: usize,
}

/// Per-worker results, gathered without locks.
#[derive(Default)]
struct WorkerStats {
    latency: Option<Latencies>,
    send_lag: Option<Latencies>,
    verified: u64,
    compressed: usize,
    errors: Errors,
}

impl WorkerStats {
    fn latency(&mut self) -> &mut Latencies {
        self.latency.get_or_insert_with(Latencies::new)
    }

    fn send_lag(&mut self) -> &mut Latencies {
        self.send_lag.get_or_insert_with(Latencies::new)
    }
}

/// One connection's view.
struct Ctx {
    shared: Arc<Shared>,
    stats: Rc<RefCell<WorkerStats>>,
    worker: usize,
    payloads: Payloads,
}

impl Ctx {
    /// Checks an echo of the `seq`-th message, counts it.
    fn echoed(&self, seq: u64, echo: &Message) {
        self.shared.echoes.of(self.worker).add(1);
        let mut stats = self.stats.borrow_mut();
        match self.payloads.check(seq, echo) {
            Ok(()) => stats.verified += 1,
            Err(m) => {
                stats.errors.mismatches += 1;
                if stats.errors.first_mismatch.is_none() {
                    stats.errors.first_mismatch = Some(format!("message {seq}: {m}"));
                }
            }
        }
    }
}

/// How many distinct payloads each connection cycles through: more than
/// it can have in flight (so any reordering shows), within a memory budget.
fn variant_count(plan: &EchoPlan) -> usize {
    const BUDGET: usize = 512 << 20;
    let per_variant = plan.size.max(1).saturating_mul(plan.conns.max(1));
    let affordable = (BUDGET / per_variant).max(1);
    let wanted = match plan.rate {
        None => (2 * plan.pipeline).max(8),
        Some(_) => 64,
    };
    let least = match plan.rate {
        None => plan.pipeline + 1,
        Some(_) => 2,
    };
    wanted.min(affordable).max(least)
}

/// Runs the plan; `tick` is called about four times a second with the
/// fraction of the run done and the echoes so far.
pub(crate) async fn run(
    plan: EchoPlan,
    tick: &mut dyn FnMut(Phase, u64),
) -> anyhow::Result<EchoOutcome> {
    let threads = plan.threads.clamp(1, plan.conns.max(1));
    let (go_tx, go_rx) = watch::channel(Go::Wait);
    let shared = Arc::new(Shared {
        variants: variant_count(&plan),
        echoes: Counters::new(threads),
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        settled: Notify::new(),
        gate: Semaphore::new(plan.handshake_concurrency.max(1)),
        go: go_rx,
        plan,
    });
    let for_workers = shared.clone();
    let workers = tokio::spawn(pool::run_workers(threads, move |i| {
        worker(i, threads, for_workers.clone())
    }));

    // Every connection opens (or fails) within its handshake timeout.
    let conns = shared.plan.conns;
    loop {
        let settled = shared.settled.notified();
        let done = shared.connected.load(Ordering::Acquire) + shared.failed.load(Ordering::Acquire);
        tick(Phase::Connecting, done as u64);
        if done >= conns {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(250), settled).await;
    }
    if shared.failed.load(Ordering::Acquire) > 0 {
        let _ = go_tx.send(Go::Abort);
        let results = workers.await??;
        let mut outcome = EchoOutcome::default();
        for stats in results {
            outcome.errors.merge(stats.errors);
        }
        return Ok(outcome);
    }

    let plan = &shared.plan;
    let start = Instant::now() + Duration::from_millis(20);
    let t0 = start + plan.warmup;
    let t1 = t0 + plan.duration;
    let schedule = Schedule {
        start,
        t0,
        t1,
        deadline: t1 + plan.grace,
    };
    let _ = go_tx.send(Go::Start(schedule));

    wait_until(t0, start, t1, &shared, tick).await;
    let first = Sample::take(&shared);
    wait_until(t1, start, t1, &shared, tick).await;
    let last = Sample::take(&shared);
    tick(Phase::Finishing, shared.echoes.total());

    let results = workers.await??;
    let mut outcome = EchoOutcome {
        messages: last.echoes - first.echoes,
        window: last.at - first.at,
        client_cpu: last
            .own_cpu
            .zip(first.own_cpu)
            .map(|(b, a)| b.saturating_sub(a)),
        server_cpu: last
            .server_cpu
            .zip(first.server_cpu)
            .map(|(b, a)| b.saturating_sub(a)),
        ..EchoOutcome::default()
    };
    let mut latency = Latencies::new();
    let mut lag: Option<Latencies> = None;
    for stats in results {
        if let Some(l) = &stats.latency {
            latency.merge(l);
        }
        if let Some(l) = &stats.send_lag {
            lag.get_or_insert_with(Latencies::new).merge(l);
        }
        outcome.verified += stats.verified;
        outcome.compressed_conns += stats.compressed;
        outcome.errors.merge(stats.errors);
    }
    outcome.latency = latency.summary();
    outcome.send_lag = lag.and_then(|l| l.summary());
    Ok(outcome)
}

/// Sleeps until `until`, reporting progress about four times a second.
async fn wait_until(
    until: Instant,
    start: Instant,
    end: Instant,
    shared: &Shared,
    tick: &mut dyn FnMut(Phase, u64),
) {
    let total = (end - start).as_secs_f64().max(1e-9);
    loop {
        let now = Instant::now();
        let done = now.saturating_duration_since(start).as_secs_f64() / total;
        tick(Phase::Running(done.min(1.0)), shared.echoes.total());
        if now >= until {
            return;
        }
        tokio::time::sleep_until(until.min(now + Duration::from_millis(250))).await;
    }
}

/// Where a run is, for progress display.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Phase {
    /// Opening connections (the count is of those settled).
    Connecting,
    /// Sending: the fraction of warm-up plus window elapsed.
    Running(f64),
    /// Waiting for the last echoes and closing.
    Finishing,
}

/// Counters read at one instant.
struct Sample {
    at: Instant,
    echoes: u64,
    own_cpu: Option<Duration>,
    server_cpu: Option<Duration>,
}

impl Sample {
    fn take(shared: &Shared) -> Sample {
        Sample {
            at: Instant::now(),
            echoes: shared.echoes.total(),
            own_cpu: sys::own_cpu_time(),
            server_cpu: shared
                .plan
                .server_pid
                .and_then(|pid| sys::process_cpu_time(pid).ok()),
        }
    }
}

async fn worker(i: usize, threads: usize, shared: Arc<Shared>) -> WorkerStats {
    let stats = Rc::new(RefCell::new(WorkerStats::default()));
    let tasks: Vec<_> = pool::share(i, threads, shared.plan.conns)
        .map(|c| {
            let payloads = Payloads::new(
                u32::try_from(c).unwrap_or(u32::MAX),
                shared.plan.size,
                shared.plan.kind,
                shared.plan.content,
                shared.variants,
                shared.plan.seed,
            );
            let ctx = Ctx {
                shared: shared.clone(),
                stats: stats.clone(),
                worker: i,
                payloads,
            };
            tokio::task::spawn_local(connection(c, ctx))
        })
        .collect();
    for task in tasks {
        // A task only fails by panicking, which the thread's join reports.
        let _ = task.await;
    }
    stats.take()
}

async fn connection(c: usize, ctx: Ctx) {
    let shared = ctx.shared.clone();
    let plan = &shared.plan;
    let ws = match pool::connect(&plan.url, &plan.config, &shared.gate).await {
        Ok((ws, _)) => {
            if ws.compression().is_some() {
                ctx.stats.borrow_mut().compressed += 1;
            }
            shared.connected.fetch_add(1, Ordering::AcqRel);
            shared.settled.notify_one();
            ws
        }
        Err(e) => {
            let mut stats = ctx.stats.borrow_mut();
            stats.errors.connect_failures += 1;
            stats
                .errors
                .note(format!("connection {c}: cannot connect: {e}"));
            drop(stats);
            shared.failed.fetch_add(1, Ordering::AcqRel);
            shared.settled.notify_one();
            return;
        }
    };
    let mut go = shared.go.clone();
    let schedule = loop {
        let state = *go.borrow_and_update();
        match state {
            Go::Start(s) => break Some(s),
            Go::Abort => break None,
            Go::Wait => {}
        }
        if go.changed().await.is_err() {
            break None;
        }
    };
    let Some(schedule) = schedule else {
        let mut ws = ws;
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(1001, "bench aborted")).await;
        return;
    };
    let run = async {
        match plan.rate {
            None => closed_loop(ws, &ctx, schedule).await,
            Some(rate) => {
                let per_conn = rate / plan.conns as f64;
                let interval_ns = 1e9 / per_conn;
                // Spread the connections' schedules over one interval.
                let offset_ns = interval_ns * c as f64 / plan.conns as f64;
                open_loop(ws, &ctx, schedule, interval_ns, offset_ns).await
            }
        }
    };
    let outcome = tokio::time::timeout_at(schedule.deadline, run).await;
    let mut stats = ctx.stats.borrow_mut();
    match outcome {
        Ok(Ok(Closed::Cleanly)) => {}
        Ok(Ok(Closed::Badly(e))) => {
            stats.errors.close_errors += 1;
            stats.errors.note(format!("connection {c}: closing: {e}"));
        }
        Ok(Err(e)) => {
            stats.errors.connection_errors += 1;
            stats.errors.note(format!("connection {c}: {e}"));
        }
        Err(_) => {
            stats.errors.stalled += 1;
            stats.errors.note(format!(
                "connection {c}: echoes still missing {:.1} s after the end of the run",
                plan.grace.as_secs_f64()
            ));
        }
    }
}

/// How a connection ended after its run.
enum Closed {
    Cleanly,
    Badly(String),
}

/// What a connection's receive loop got that was not an echo.
fn unexpected(item: Option<ferrows::Result<Message>>) -> String {
    match item {
        None => "the server ended the connection".to_owned(),
        Some(Err(e)) => e.to_string(),
        Some(Ok(Message::Close(Some(frame)))) => format!(
            "the server closed the connection: {} {}",
            u16::from(frame.code),
            frame.reason()
        ),
        Some(Ok(Message::Close(None))) => "the server closed the connection".to_owned(),
        Some(Ok(other)) => format!("unexpected {} bytes from the server", other.len()),
    }
}

async fn closed_loop(mut ws: Ws, ctx: &Ctx, s: Schedule) -> Result<Closed, String> {
    let pipeline = ctx.shared.plan.pipeline.max(1);
    let mut in_flight: VecDeque<(Instant, u64)> = VecDeque::with_capacity(pipeline);
    let mut seq = 0u64;
    tokio::time::sleep_until(s.start).await;
    let now = Instant::now();
    for _ in 0..pipeline {
        ws.feed(ctx.payloads.message(seq))
            .await
            .map_err(|e| e.to_string())?;
        in_flight.push_back((now, seq));
        seq += 1;
    }
    while let Some(&(sent, sent_seq)) = in_flight.front() {
        let item = ws.recv().await;
        let now = Instant::now();
        let echo = match item {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => m,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => return Err(unexpected(other)),
        };
        in_flight.pop_front();
        ctx.echoed(sent_seq, &echo);
        if now >= s.t0 && now < s.t1 {
            ctx.stats.borrow_mut().latency().record(now - sent);
        }
        if now < s.t1 {
            ws.feed(ctx.payloads.message(seq))
                .await
                .map_err(|e| e.to_string())?;
            in_flight.push_back((now, seq));
            seq += 1;
        }
    }
    Ok(match ws.close(1000, "bench done").await {
        Ok(()) => Closed::Cleanly,
        Err(e) => Closed::Badly(e.to_string()),
    })
}

/// Waits until `due`: a timer sleep to within [`SPIN`] of it, then yields
/// until the time has come.
async fn pace_until(due: Instant) {
    if due.saturating_duration_since(Instant::now()) > SPIN {
        tokio::time::sleep_until(due - SPIN).await;
    }
    while Instant::now() < due {
        tokio::task::yield_now().await;
    }
}

async fn open_loop(
    ws: Ws,
    ctx: &Ctx,
    s: Schedule,
    interval_ns: f64,
    offset_ns: f64,
) -> Result<Closed, String> {
    let (mut reader, mut writer) = ws.split();
    let due_at =
        |k: u64| s.start + Duration::from_nanos((offset_ns + k as f64 * interval_ns) as u64);
    // Scheduled send times of the messages awaiting their echo, in order.
    let in_flight: RefCell<VecDeque<(Instant, u64)>> = RefCell::new(VecDeque::new());
    let sending_done = Cell::new(false);
    let wake = Notify::new();

    let send = async {
        let mut k = 0u64;
        let result = loop {
            let due = due_at(k);
            if due >= s.t1 {
                break Ok(());
            }
            pace_until(due).await;
            let now = Instant::now();
            let mut failed = None;
            // Send everything due by now: after a stall, the backlog goes
            // out at once, each message still timed from its schedule.
            loop {
                let due = due_at(k);
                if due > now || due >= s.t1 {
                    break;
                }
                in_flight.borrow_mut().push_back((due, k));
                if let Err(e) = writer.feed(ctx.payloads.message(k)).await {
                    failed = Some(e.to_string());
                    break;
                }
                if due >= s.t0 {
                    ctx.stats.borrow_mut().send_lag().record(now - due);
                }
                k += 1;
            }
            if let Some(e) = failed {
                break Err(e);
            }
            if let Err(e) = writer.flush().await {
                break Err(e.to_string());
            }
        };
        sending_done.set(true);
        wake.notify_one();
        result
    };

    let receive = async {
        loop {
            if sending_done.get() && in_flight.borrow().is_empty() {
                return Ok(());
            }
            let item = tokio::select! {
                item = reader.recv() => item,
                () = wake.notified() => continue,
            };
            let now = Instant::now();
            let echo = match item {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => m,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return Err(unexpected(other)),
            };
            let Some((due, seq)) = in_flight.borrow_mut().pop_front() else {
                return Err("an echo of a message that was not sent".to_owned());
            };
            ctx.echoed(seq, &echo);
            if due >= s.t0 && due < s.t1 {
                ctx.stats
                    .borrow_mut()
                    .latency()
                    .record(now.saturating_duration_since(due));
            }
        }
    };

    let (sent, received) = tokio::join!(send, receive);
    received?;
    sent?;
    if let Err(e) = writer.close(1000, "bench done").await {
        return Ok(Closed::Badly(e.to_string()));
    }
    loop {
        match reader.recv().await {
            None => return Ok(Closed::Cleanly),
            Some(Err(e)) => return Ok(Closed::Badly(e.to_string())),
            Some(Ok(_)) => {}
        }
    }
}
