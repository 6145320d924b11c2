//! Idle connections: how fast a server accepts them and what holding them
//! costs it in memory.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use ferrows::{Config, Message};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;

use super::echo::Errors;
use super::payload::{Content, Kind, Payloads};
use super::pool::{self, Ws};
use super::stats::{Latencies, Summary};
use super::sys::{self, Rss};

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct IdlePlan {
    /// Server URL.
    pub(crate) url: String,
    /// Connections to open.
    pub(crate) conns: usize,
    /// How long to hold them open.
    pub(crate) hold: Duration,
    /// Generator threads.
    pub(crate) threads: usize,
    /// Handshakes in progress at once.
    pub(crate) handshake_concurrency: usize,
    /// Exchange one message on each connection before holding it.
    pub(crate) message: bool,
    /// Client connection settings.
    pub(crate) config: Config,
    /// Seed of the message contents.
    pub(crate) seed: u64,
    /// Server process to measure.
    pub(crate) server_pid: Option<u32>,
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct IdleOutcome {
    /// Connections opened.
    pub(crate) opened: usize,
    /// From the first handshake started to the last one finished.
    pub(crate) handshake_phase: Duration,
    /// Time of each TCP connect + WebSocket handshake, including the wait
    /// in the server's accept queue.
    pub(crate) handshake_latency: Option<Summary>,
    /// The server's CPU time during the handshake phase.
    pub(crate) handshake_server_cpu: Option<Duration>,
    /// The generator's CPU time during the handshake phase.
    pub(crate) handshake_client_cpu: Option<Duration>,
    /// Server memory before connecting.
    pub(crate) rss_before: Option<Rss>,
    /// Server memory when every connection was open.
    pub(crate) rss_connected: Option<Rss>,
    /// Server memory at the end of the hold.
    pub(crate) rss_after: Option<Rss>,
    /// Connections still open at the end of the hold.
    pub(crate) held: usize,
    /// What went wrong.
    pub(crate) errors: Errors,
}

impl IdleOutcome {
    /// Handshakes per second over the handshake phase.
    pub(crate) fn handshakes_per_s(&self) -> f64 {
        let secs = self.handshake_phase.as_secs_f64();
        if secs > 0.0 {
            self.opened as f64 / secs
        } else {
            0.0
        }
    }

    /// Server RSS growth per held connection, in bytes, from before
    /// connecting to the end of the hold.
    pub(crate) fn rss_per_conn(&self) -> Option<f64> {
        let (before, after) = (self.rss_before?, self.rss_after?);
        if self.held == 0 {
            return None;
        }
        let grown = after.current_kib as f64 - before.current_kib as f64;
        Some(grown * 1024.0 / self.held as f64)
    }
}

struct Shared {
    plan: IdlePlan,
    epoch: Instant,
    /// Connections settled: opened (and, with `message`, echoed) or failed.
    settled: AtomicUsize,
    opened: AtomicUsize,
    /// The latest end of a handshake, in ns since `epoch`.
    last_handshake_ns: AtomicU64,
    notify: Notify,
    gate: Semaphore,
    stop: watch::Receiver<bool>,
}

#[derive(Default)]
struct WorkerStats {
    handshakes: Option<Latencies>,
    held: usize,
    errors: Errors,
}

/// Runs the plan; `tick` gets the connections settled so far.
pub(crate) async fn run(plan: IdlePlan, tick: &mut dyn FnMut(u64)) -> anyhow::Result<IdleOutcome> {
    let threads = plan.threads.clamp(1, plan.conns.max(1));
    let pid = plan.server_pid;
    let rss_before = pid.and_then(|p| sys::process_rss(p).ok());
    let cpu_before = pid.and_then(|p| sys::process_cpu_time(p).ok());
    let own_before = sys::own_cpu_time();
    let (stop_tx, stop_rx) = watch::channel(false);
    let epoch = Instant::now();
    let shared = Arc::new(Shared {
        settled: AtomicUsize::new(0),
        opened: AtomicUsize::new(0),
        last_handshake_ns: AtomicU64::new(0),
        notify: Notify::new(),
        gate: Semaphore::new(plan.handshake_concurrency.max(1)),
        stop: stop_rx,
        epoch,
        plan,
    });
    let for_workers = shared.clone();
    let workers = tokio::spawn(pool::run_workers(threads, move |i| {
        worker(i, threads, for_workers.clone())
    }));
    let conns = shared.plan.conns;
    loop {
        let notified = shared.notify.notified();
        let settled = shared.settled.load(Ordering::Acquire);
        tick(settled as u64);
        if settled >= conns {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(250), notified).await;
    }
    let handshake_phase = Duration::from_nanos(shared.last_handshake_ns.load(Ordering::Acquire));
    let cpu_connected = pid.and_then(|p| sys::process_cpu_time(p).ok());
    let own_connected = sys::own_cpu_time();
    let rss_connected = pid.and_then(|p| sys::process_rss(p).ok());
    let hold_end = Instant::now() + shared.plan.hold;
    while Instant::now() < hold_end {
        tick(conns as u64);
        tokio::time::sleep_until(hold_end.min(Instant::now() + Duration::from_millis(250))).await;
    }
    let rss_after = pid.and_then(|p| sys::process_rss(p).ok());
    let _ = stop_tx.send(true);
    let results = workers.await??;
    let mut outcome = IdleOutcome {
        opened: shared.opened.load(Ordering::Acquire),
        handshake_phase,
        handshake_server_cpu: cpu_connected
            .zip(cpu_before)
            .map(|(b, a)| b.saturating_sub(a)),
        handshake_client_cpu: own_connected
            .zip(own_before)
            .map(|(b, a)| b.saturating_sub(a)),
        rss_before,
        rss_connected,
        rss_after,
        ..IdleOutcome::default()
    };
    let mut handshakes = Latencies::new();
    for stats in results {
        if let Some(h) = &stats.handshakes {
            handshakes.merge(h);
        }
        outcome.held += stats.held;
        outcome.errors.merge(stats.errors);
    }
    outcome.handshake_latency = handshakes.summary();
    Ok(outcome)
}

async fn worker(i: usize, threads: usize, shared: Arc<Shared>) -> WorkerStats {
    let stats = Rc::new(RefCell::new(WorkerStats::default()));
    let tasks: Vec<_> = pool::share(i, threads, shared.plan.conns)
        .map(|c| tokio::task::spawn_local(connection(c, shared.clone(), stats.clone())))
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    stats.take()
}

fn settle(shared: &Shared) {
    shared.settled.fetch_add(1, Ordering::AcqRel);
    shared.notify.notify_one();
}

async fn connection(c: usize, shared: Arc<Shared>, stats: Rc<RefCell<WorkerStats>>) {
    let plan = &shared.plan;
    let mut ws = match pool::connect(&plan.url, &plan.config, &shared.gate).await {
        Ok((ws, took)) => {
            let end = u64::try_from(shared.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
            shared.last_handshake_ns.fetch_max(end, Ordering::AcqRel);
            shared.opened.fetch_add(1, Ordering::AcqRel);
            stats
                .borrow_mut()
                .handshakes
                .get_or_insert_with(Latencies::new)
                .record(took);
            ws
        }
        Err(e) => {
            let mut s = stats.borrow_mut();
            s.errors.connect_failures += 1;
            s.errors
                .note(format!("connection {c}: cannot connect: {e}"));
            drop(s);
            settle(&shared);
            return;
        }
    };
    if plan.message {
        if let Err(e) = one_echo(&mut ws, c, plan.seed).await {
            let mut s = stats.borrow_mut();
            if e.starts_with("echo differs") {
                s.errors.mismatches += 1;
                if s.errors.first_mismatch.is_none() {
                    s.errors.first_mismatch = Some(format!("connection {c}: {e}"));
                }
            } else {
                s.errors.connection_errors += 1;
                s.errors.note(format!("connection {c}: {e}"));
            }
            drop(s);
            settle(&shared);
            return;
        }
    }
    settle(&shared);
    let mut stop = shared.stop.clone();
    // Hold: keep receiving, which answers the server's pings.
    let ended = loop {
        if *stop.borrow_and_update() {
            break None;
        }
        tokio::select! {
            changed = stop.changed() => if changed.is_err() { break None },
            item = ws.recv() => match item {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(frame))) => {
                    break Some(format!("closed by the server during the hold ({frame:?})"))
                }
                Some(Ok(other)) => {
                    break Some(format!("unexpected {} bytes during the hold", other.len()))
                }
                Some(Err(e)) => break Some(format!("error during the hold: {e}")),
                None => break Some("ended by the server during the hold".to_owned()),
            },
        }
    };
    {
        let mut s = stats.borrow_mut();
        match ended {
            None => s.held += 1,
            Some(e) => {
                s.errors.connection_errors += 1;
                s.errors.note(format!("connection {c}: {e}"));
                return;
            }
        }
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), ws.close(1000, "bench done")).await;
    if !matches!(closed, Ok(Ok(()))) {
        stats.borrow_mut().errors.close_errors += 1;
    }
}

async fn one_echo(ws: &mut Ws, c: usize, seed: u64) -> Result<(), String> {
    let payloads = Payloads::new(
        u32::try_from(c).unwrap_or(u32::MAX),
        16,
        Kind::Text,
        Content::Random,
        1,
        seed,
    );
    ws.send(payloads.message(0))
        .await
        .map_err(|e| e.to_string())?;
    let echo = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.recv().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(m)) => return Ok(m),
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("ended by the server".to_owned()),
            }
        }
    })
    .await
    .map_err(|_| "no echo within 10 s".to_owned())??;
    payloads
        .check(0, &echo)
        .map_err(|m| format!("echo differs: {m}"))
}
