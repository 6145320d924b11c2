//! Broadcast: many clients of a chat server (`ferrows serve chat`, whose
//! wire format is text `cmd:data`: a client's message `hello` reaches every
//! client, sender included, as `msg:hello`). One client sends a message,
//! and the time until the *last* client has received its copy is the
//! delivery time of that broadcast.
//!
//! First, after every client is connected, an unmeasured round makes sure
//! the server has delivered everything queued before (a chat server
//! announces each join to everyone). Then each measured round starts when
//! the previous one has reached every client.
//!
//! With several URLs (nodes of one room), client `c` connects to URL
//! `c mod n` (the sender is client 0, on the first); the last copy is also
//! measured per node. `--protocol socketio` speaks Socket.IO instead
//! ([`super::wire`]).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use ferrows::Config;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;

use super::echo::Errors;
use super::pool;
use super::stats::{Latencies, Summary};
use super::sys;
use super::wire::{ChatConn, Protocol, Received};

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct BroadcastPlan {
    /// Chat server URLs (nodes of one room); clients round-robin.
    pub(crate) urls: Vec<String>,
    /// The wire format.
    pub(crate) protocol: Protocol,
    /// Clients, the sender included.
    pub(crate) conns: usize,
    /// Measured broadcasts.
    pub(crate) rounds: usize,
    /// Generator threads.
    pub(crate) threads: usize,
    /// Handshakes in progress at once.
    pub(crate) handshake_concurrency: usize,
    /// Client connection settings.
    pub(crate) config: Config,
    /// How long one broadcast may take to reach everyone.
    pub(crate) round_timeout: Duration,
    /// How long the unmeasured first round may take (it waits for the
    /// server to deliver every join notice).
    pub(crate) settle_timeout: Duration,
    /// Tells this run's messages from anyone else's.
    pub(crate) run_id: u64,
    /// Server processes to measure (their CPU times are summed).
    pub(crate) server_pids: Vec<u32>,
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct BroadcastOutcome {
    /// Clients connected.
    pub(crate) connected: usize,
    /// Time to connect them all.
    pub(crate) connect_phase: Duration,
    /// Time for the unmeasured first round (the server's backlog of join
    /// notices drained).
    pub(crate) settle: Duration,
    /// Send to the last client's copy, per round.
    pub(crate) last_copy: Option<Summary>,
    /// Send to the first client's copy, per round.
    pub(crate) first_copy: Option<Summary>,
    /// Send to the last copy among the clients of each URL, per round.
    pub(crate) node_last_copy: Vec<Option<Summary>>,
    /// Rounds that reached every client in time.
    pub(crate) rounds_complete: usize,
    /// Rounds that did not.
    pub(crate) rounds_incomplete: usize,
    /// Copies not received by the round's timeout.
    pub(crate) copies_missing: u64,
    /// Copies received twice.
    pub(crate) duplicates: u64,
    /// Each server's CPU time over the measured rounds.
    pub(crate) server_cpu: Vec<Option<Duration>>,
    /// What went wrong.
    pub(crate) errors: Errors,
}

impl BroadcastOutcome {
    /// Whether anything counts against the run.
    pub(crate) fn failed(&self) -> bool {
        self.errors.any() || self.rounds_incomplete > 0 || self.duplicates > 0
    }
}

/// Arrivals of one round's copies.
struct Slot {
    count: AtomicUsize,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    /// The last arrival among the clients of each URL.
    node_last_ns: Vec<AtomicU64>,
}

struct Shared {
    plan: BroadcastPlan,
    epoch: Instant,
    /// What copies of this run's messages start with: `msg:` and the text
    /// the sender sends before the round number.
    marker: String,
    slots: Vec<Slot>,
    connected: AtomicUsize,
    failed: AtomicUsize,
    notify: Notify,
    gate: Semaphore,
    stop: watch::Receiver<bool>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records a copy of round `r` arriving now; `seen` is the receiving
    /// client's record of rounds received. Returns false for a duplicate.
    fn arrived(&self, r: usize, node: usize, seen: &mut [bool]) -> bool {
        let Some(flag) = seen.get_mut(r) else {
            return true;
        };
        if *flag {
            return false;
        }
        *flag = true;
        let Some(slot) = self.slots.get(r) else {
            return true;
        };
        let ns = self.now_ns();
        slot.first_ns.fetch_min(ns, Ordering::AcqRel);
        slot.last_ns.fetch_max(ns, Ordering::AcqRel);
        if let Some(last) = slot.node_last_ns.get(node) {
            last.fetch_max(ns, Ordering::AcqRel);
        }
        if slot.count.fetch_add(1, Ordering::AcqRel) + 1 >= self.plan.conns {
            self.notify.notify_one();
        }
        true
    }

    /// The round number of a copy of this run's messages.
    fn round_of(&self, text: &str) -> Option<usize> {
        text.strip_prefix(&self.marker)?.parse().ok()
    }
}

#[derive(Default)]
struct WorkerStats {
    duplicates: u64,
    errors: Errors,
}

/// Runs the plan; `tick` gets a phase name and a count.
pub(crate) async fn run(
    plan: BroadcastPlan,
    tick: &mut dyn FnMut(&str, u64),
) -> anyhow::Result<BroadcastOutcome> {
    let receivers = plan.conns.saturating_sub(1);
    let threads = plan.threads.clamp(1, receivers.max(1));
    let (stop_tx, stop_rx) = watch::channel(false);
    let body = format!("bench-{:016x}:", plan.run_id);
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        marker: format!("msg:{body}"),
        slots: (0..=plan.rounds)
            .map(|_| Slot {
                count: AtomicUsize::new(0),
                first_ns: AtomicU64::new(u64::MAX),
                last_ns: AtomicU64::new(0),
                node_last_ns: plan.urls.iter().map(|_| AtomicU64::new(0)).collect(),
            })
            .collect(),
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        notify: Notify::new(),
        gate: Semaphore::new(plan.handshake_concurrency.max(1)),
        stop: stop_rx,
        plan,
    });
    let mut outcome = BroadcastOutcome::default();
    let started = Instant::now();

    let for_workers = shared.clone();
    let workers = tokio::spawn(pool::run_workers(threads, move |i| {
        worker(i, threads, receivers, for_workers.clone())
    }));
    let plan = &shared.plan;
    let first_url = plan.urls.first().map_or("", String::as_str);
    let mut sender =
        match ChatConn::connect(first_url, plan.protocol, &plan.config, &shared.gate).await {
            Ok(ws) => Some(ws),
            Err(e) => {
                outcome.errors.connect_failures += 1;
                outcome.errors.note(format!("sender: cannot connect: {e}"));
                None
            }
        };
    let mut seen = vec![false; shared.slots.len()];
    loop {
        let notified = shared.notify.notified();
        let done = shared.connected.load(Ordering::Acquire) + shared.failed.load(Ordering::Acquire);
        tick("connecting", done as u64);
        if done >= receivers {
            break;
        }
        // Keep reading the sender's socket: join notices pour in.
        if let Some(ws) = sender.as_mut() {
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                item = ws.recv() => if let Err(e) = handle(&shared, item, 0, &mut seen, &mut outcome.duplicates) {
                    outcome.errors.connection_errors += 1;
                    outcome.errors.note(format!("sender: {e}"));
                    sender = None;
                }
            }
        } else {
            let _ = tokio::time::timeout(Duration::from_millis(250), notified).await;
        }
    }
    outcome.connect_phase = started.elapsed();
    outcome.connected = shared.connected.load(Ordering::Acquire) + usize::from(sender.is_some());

    if let (Some(ws), 0) = (sender.as_mut(), shared.failed.load(Ordering::Acquire)) {
        let mut last_copy = Latencies::new();
        let mut first_copy = Latencies::new();
        let mut node_last: Vec<Latencies> =
            shared.plan.urls.iter().map(|_| Latencies::new()).collect();
        let mut cpu_start = None;
        for r in 0..shared.slots.len() {
            tick(if r == 0 { "settling" } else { "broadcasting" }, r as u64);
            let timeout = if r == 0 {
                shared.plan.settle_timeout
            } else {
                shared.plan.round_timeout
            };
            let sent_ns = shared.now_ns();
            let sent = Instant::now();
            if let Err(e) = ws.send(&format!("{body}{r}")).await {
                outcome.errors.connection_errors += 1;
                outcome.errors.note(format!("sender: {e}"));
                break;
            }
            let complete = match wait_round(
                &shared,
                ws,
                r,
                sent + timeout,
                &mut seen,
                &mut outcome.duplicates,
            )
            .await
            {
                Ok(complete) => complete,
                Err(e) => {
                    outcome.errors.connection_errors += 1;
                    outcome.errors.note(format!("sender: {e}"));
                    break;
                }
            };
            let Some(slot) = shared.slots.get(r) else {
                break;
            };
            if r == 0 {
                outcome.settle = sent.elapsed();
                cpu_start = Some(sys::cpu_times(&shared.plan.server_pids));
                if !complete {
                    outcome.rounds_incomplete += 1;
                    outcome.errors.note(format!(
                        "the first (unmeasured) broadcast reached {} of {} clients in {:.0} s",
                        slot.count.load(Ordering::Acquire),
                        shared.plan.conns,
                        timeout.as_secs_f64()
                    ));
                    break;
                }
                continue;
            }
            if complete {
                outcome.rounds_complete += 1;
                let ns = |v: u64| Duration::from_nanos(v.saturating_sub(sent_ns));
                last_copy.record(ns(slot.last_ns.load(Ordering::Acquire)));
                first_copy.record(ns(slot.first_ns.load(Ordering::Acquire)));
                for (h, last) in node_last.iter_mut().zip(&slot.node_last_ns) {
                    let at = last.load(Ordering::Acquire);
                    if at > 0 {
                        h.record(ns(at));
                    }
                }
            } else {
                outcome.rounds_incomplete += 1;
                let got = slot.count.load(Ordering::Acquire);
                outcome.copies_missing += shared.plan.conns.saturating_sub(got) as u64;
            }
        }
        if let Some(start) = cpu_start {
            outcome.server_cpu = sys::cpu_spent(&start, &sys::cpu_times(&shared.plan.server_pids));
        }
        outcome.node_last_copy = node_last.iter().map(Latencies::summary).collect();
        outcome.last_copy = last_copy.summary();
        outcome.first_copy = first_copy.summary();
    }

    let _ = stop_tx.send(true);
    if let Some(mut ws) = sender {
        let _ = tokio::time::timeout(Duration::from_secs(5), ws.close()).await;
    }
    for stats in workers.await?? {
        outcome.duplicates += stats.duplicates;
        outcome.errors.merge(stats.errors);
    }
    Ok(outcome)
}

/// Reads the sender's socket until round `r` has reached every client or
/// `deadline` passes; returns whether it did.
async fn wait_round(
    shared: &Shared,
    ws: &mut ChatConn,
    r: usize,
    deadline: Instant,
    seen: &mut [bool],
    duplicates: &mut u64,
) -> Result<bool, String> {
    let Some(slot) = shared.slots.get(r) else {
        return Ok(false);
    };
    loop {
        let notified = shared.notify.notified();
        if slot.count.load(Ordering::Acquire) >= shared.plan.conns {
            return Ok(true);
        }
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep_until(deadline) => return Ok(false),
            item = ws.recv() => handle(shared, item, 0, seen, duplicates)?,
        }
    }
}

/// Handles one item received by a client of URL `node`.
fn handle(
    shared: &Shared,
    item: Result<Received, String>,
    node: usize,
    seen: &mut [bool],
    duplicates: &mut u64,
) -> Result<(), String> {
    if let Received::Line(text) = item? {
        if let Some(r) = shared.round_of(&text) {
            if !shared.arrived(r, node, seen) {
                *duplicates += 1;
            }
        }
    }
    Ok(())
}

async fn worker(i: usize, threads: usize, receivers: usize, shared: Arc<Shared>) -> WorkerStats {
    let stats = Rc::new(RefCell::new(WorkerStats::default()));
    let tasks: Vec<_> = pool::share(i, threads, receivers)
        .map(|c| tokio::task::spawn_local(receiver(c + 1, shared.clone(), stats.clone())))
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    stats.take()
}

async fn receiver(c: usize, shared: Arc<Shared>, stats: Rc<RefCell<WorkerStats>>) {
    let plan = &shared.plan;
    let node = c % plan.urls.len().max(1);
    let url = plan.urls.get(node).map_or("", String::as_str);
    let mut ws = match ChatConn::connect(url, plan.protocol, &plan.config, &shared.gate).await {
        Ok(ws) => {
            shared.connected.fetch_add(1, Ordering::AcqRel);
            shared.notify.notify_one();
            ws
        }
        Err(e) => {
            let mut s = stats.borrow_mut();
            s.errors.connect_failures += 1;
            s.errors.note(format!("client {c}: cannot connect: {e}"));
            drop(s);
            shared.failed.fetch_add(1, Ordering::AcqRel);
            shared.notify.notify_one();
            return;
        }
    };
    let mut seen = vec![false; shared.slots.len()];
    let mut duplicates = 0;
    let mut stop = shared.stop.clone();
    let failed = loop {
        if *stop.borrow_and_update() {
            break None;
        }
        tokio::select! {
            changed = stop.changed() => if changed.is_err() { break None },
            item = ws.recv() => if let Err(e) = handle(&shared, item, node, &mut seen, &mut duplicates) {
                break Some(e);
            },
        }
    };
    {
        let mut s = stats.borrow_mut();
        s.duplicates += duplicates;
        if let Some(e) = failed {
            s.errors.connection_errors += 1;
            s.errors.note(format!("client {c}: {e}"));
            return;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.close()).await;
}
