//! Open-loop chat: `--chat-rate R --senders K` against a chat room (one
//! server, or several nodes of one room given as several URLs).
//!
//! Every client receives every message; the first K clients also send,
//! together R messages a second on a fixed schedule (sender k sends
//! message numbers k, k+K, k+2K, … and message s is due at `s / R` seconds
//! after the start), whatever the server does: latency counts from the
//! scheduled time, so a server (or a generator) that falls behind shows
//! it in the latency instead of hiding it. A message's delivery time is
//! the time from its schedule to its *last* copy, over all clients and per
//! node (the clients of one URL). Every copy is checked in: copies still
//! missing after the grace time are counted as missing, copies received
//! twice as duplicates.
//!
//! Client `c` connects to URL `c mod n`, so senders spread over the nodes
//! too. Before the schedule starts, client 0 sends one unmeasured message
//! and the run waits until every client has it (a chat server's join
//! notices drained, every node's subscription live).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use ferrows::Config;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;

use super::echo::Errors;
use super::pool::{self, Counters};
use super::stats::{Latencies, Summary};
use super::sys;
use super::wire::{ChatConn, Protocol, Received};

/// Most messages one run may schedule.
pub(crate) const MAX_MESSAGES: u64 = 20_000_000;
/// Most bytes the clients' records of received messages may take.
const MAX_SEEN_BYTES: u64 = 1 << 30;

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct ChatPlan {
    /// Chat server URLs (nodes of one room); clients round-robin.
    pub(crate) urls: Vec<String>,
    /// The wire format.
    pub(crate) protocol: Protocol,
    /// Clients, senders included.
    pub(crate) conns: usize,
    /// Clients that send (the first ones).
    pub(crate) senders: usize,
    /// Messages per second, all senders together.
    pub(crate) rate: f64,
    /// Scheduled but not measured, at the start.
    pub(crate) warmup: Duration,
    /// Measured.
    pub(crate) duration: Duration,
    /// Time allowed after the schedule for the last copies.
    pub(crate) grace: Duration,
    /// Time allowed for the unmeasured first message to reach everyone.
    pub(crate) settle_timeout: Duration,
    /// Generator threads.
    pub(crate) threads: usize,
    /// Handshakes in progress at once.
    pub(crate) handshake_concurrency: usize,
    /// Client connection settings.
    pub(crate) config: Config,
    /// Tells this run's messages from anyone else's.
    pub(crate) run_id: u64,
    /// Server processes to measure (nodes and Redis).
    pub(crate) server_pids: Vec<u32>,
}

impl ChatPlan {
    /// Messages scheduled in all (warm-up included).
    pub(crate) fn messages(&self) -> u64 {
        ((self.warmup + self.duration).as_secs_f64() * self.rate).ceil() as u64
    }

    /// Messages scheduled during the warm-up.
    fn warmup_messages(&self) -> u64 {
        (self.warmup.as_secs_f64() * self.rate).ceil() as u64
    }

    /// Checks the plan's size bounds.
    ///
    /// # Errors
    ///
    /// A plan that would need too much memory, or has no senders.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        let messages = self.messages();
        if self.senders == 0 || self.senders > self.conns {
            anyhow::bail!(
                "--senders {} must be between 1 and --conns {}",
                self.senders,
                self.conns
            );
        }
        if messages > MAX_MESSAGES {
            anyhow::bail!(
                "--chat-rate × (--warmup + --duration) schedules {messages} messages; at most {MAX_MESSAGES}"
            );
        }
        let seen = messages.div_ceil(8).saturating_mul(self.conns as u64);
        if seen > MAX_SEEN_BYTES {
            anyhow::bail!(
                "{} clients × {messages} messages need {} MiB of receipts; at most {} MiB (fewer clients, a lower rate or a shorter run)",
                self.conns,
                seen >> 20,
                MAX_SEEN_BYTES >> 20
            );
        }
        Ok(())
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChatOutcome {
    /// Clients connected.
    pub(crate) connected: usize,
    /// Clients of each URL.
    pub(crate) node_clients: Vec<usize>,
    /// Time to connect them all.
    pub(crate) connect_phase: Duration,
    /// Time for the unmeasured first message to reach everyone.
    pub(crate) settle: Duration,
    /// Messages sent (warm-up included).
    pub(crate) sent: u64,
    /// Messages scheduled in the measured window.
    pub(crate) measured: u64,
    /// Copies of measured messages delivered.
    pub(crate) measured_copies: u64,
    /// Copies received in the CPU window (from the end of the warm-up to
    /// the end of the grace wait).
    pub(crate) window_copies: u64,
    /// That window.
    pub(crate) window: Duration,
    /// Schedule to last copy, per measured message that reached everyone.
    pub(crate) last_copy: Option<Summary>,
    /// Schedule to the last copy among each URL's clients.
    pub(crate) node_last_copy: Vec<Option<Summary>>,
    /// Actual send time minus scheduled time, per message.
    pub(crate) send_lag: Option<Summary>,
    /// Messages (any, warm-up included) that did not reach every client.
    pub(crate) incomplete: u64,
    /// Copies never received, of every message scheduled (a message a failed
    /// sender never sent counts too; its error says so).
    pub(crate) copies_missing: u64,
    /// Copies received twice.
    pub(crate) duplicates: u64,
    /// Each server's CPU time over the window.
    pub(crate) server_cpu: Vec<Option<Duration>>,
    /// The generator's CPU time over the window.
    pub(crate) client_cpu: Option<Duration>,
    /// What went wrong.
    pub(crate) errors: Errors,
}

impl ChatOutcome {
    /// Whether anything counts against the run.
    pub(crate) fn failed(&self) -> bool {
        self.errors.any() || self.copies_missing > 0 || self.duplicates > 0
    }
}

/// Phases of the run, as the clients see them.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Connect,
    /// Client 0 sends the unmeasured message.
    Settle,
    /// The schedule started at this time (ns since the epoch).
    Go(u64),
    Stop,
}

struct Shared {
    plan: ChatPlan,
    epoch: Instant,
    /// What copies of this run's messages start with.
    marker: String,
    /// What senders send before the message number.
    body: String,
    messages: u64,
    /// Per message: copies received.
    count: Vec<AtomicU32>,
    /// Per message: the last copy's arrival (ns since the epoch).
    last_ns: Vec<AtomicU64>,
    /// Per message and node: the last copy's arrival there.
    node_last_ns: Vec<AtomicU64>,
    /// Messages that have reached every client.
    complete: AtomicU64,
    /// Clients that have the unmeasured first message.
    settled: AtomicUsize,
    connected: AtomicUsize,
    failed: AtomicUsize,
    /// Copies received from the start of the CPU window, per worker.
    window_copies: Counters,
    /// Start of the CPU window (ns since the epoch); `u64::MAX` before.
    window_start_ns: AtomicU64,
    notify: Notify,
    gate: Semaphore,
    phase: watch::Receiver<Phase>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn nodes(&self) -> usize {
        self.plan.urls.len().max(1)
    }

    /// When message `seq` is due (ns since the epoch), for a schedule that
    /// started at `start_ns`.
    fn due_ns(&self, start_ns: u64, seq: u64) -> u64 {
        start_ns.saturating_add((seq as f64 * 1e9 / self.plan.rate) as u64)
    }
}

/// One client's record of the messages it has received.
struct Seen(Vec<u64>);

impl Seen {
    fn new(messages: u64) -> Seen {
        Seen(vec![0; usize::try_from(messages.div_ceil(64)).unwrap_or(0)])
    }

    /// Marks `seq`; false if it was marked already (or is out of range).
    fn mark(&mut self, seq: u64) -> bool {
        let bit = 1u64 << (seq % 64);
        let Some(word) = usize::try_from(seq / 64)
            .ok()
            .and_then(|i| self.0.get_mut(i))
        else {
            return false;
        };
        let fresh = *word & bit == 0;
        *word |= bit;
        fresh
    }
}

#[derive(Default)]
struct WorkerStats {
    duplicates: u64,
    send_lag: Option<Latencies>,
    sent: u64,
    errors: Errors,
}

/// Runs the plan; `tick` gets a phase name and a count.
pub(crate) async fn run(
    plan: ChatPlan,
    tick: &mut dyn FnMut(&str, u64),
) -> anyhow::Result<ChatOutcome> {
    plan.check()?;
    let threads = plan.threads.clamp(1, plan.conns.max(1));
    let messages = plan.messages();
    let nodes = plan.urls.len().max(1);
    let slots = usize::try_from(messages)?;
    let (phase_tx, phase_rx) = watch::channel(Phase::Connect);
    let body = format!("bench-{:016x}:", plan.run_id);
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        marker: format!("msg:{body}"),
        body,
        messages,
        count: (0..slots).map(|_| AtomicU32::new(0)).collect(),
        last_ns: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        node_last_ns: (0..slots.saturating_mul(nodes))
            .map(|_| AtomicU64::new(0))
            .collect(),
        complete: AtomicU64::new(0),
        settled: AtomicUsize::new(0),
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        window_copies: Counters::new(threads),
        window_start_ns: AtomicU64::new(u64::MAX),
        notify: Notify::new(),
        gate: Semaphore::new(plan.handshake_concurrency.max(1)),
        phase: phase_rx,
        plan,
    });
    let conns = shared.plan.conns;
    let mut outcome = ChatOutcome {
        node_clients: (0..nodes)
            .map(|n| (n..conns).step_by(nodes).count())
            .collect(),
        ..ChatOutcome::default()
    };
    let started = Instant::now();
    let for_workers = shared.clone();
    let workers = tokio::spawn(pool::run_workers(threads, move |i| {
        worker(i, threads, for_workers.clone())
    }));

    // Connect everyone.
    loop {
        let notified = shared.notify.notified();
        let done = shared.connected.load(Ordering::Acquire) + shared.failed.load(Ordering::Acquire);
        tick("connecting", done as u64);
        if done >= conns {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(250), notified).await;
    }
    outcome.connect_phase = started.elapsed();
    outcome.connected = shared.connected.load(Ordering::Acquire);

    let mut cpu_start = None;
    let mut own_start = None;
    let mut go_start = None;
    if shared.failed.load(Ordering::Acquire) == 0 {
        // The unmeasured first message.
        let settle_started = Instant::now();
        let _ = phase_tx.send(Phase::Settle);
        let deadline = settle_started + shared.plan.settle_timeout;
        let settled = loop {
            let notified = shared.notify.notified();
            let got = shared.settled.load(Ordering::Acquire);
            tick("settling", got as u64);
            if got >= conns {
                break true;
            }
            if Instant::now() >= deadline || shared.failed.load(Ordering::Acquire) > 0 {
                break false;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), notified).await;
        };
        outcome.settle = settle_started.elapsed();
        if settled {
            // The schedule.
            let start = Instant::now() + Duration::from_millis(20);
            let start_ns = u64::try_from((start - shared.epoch).as_nanos()).unwrap_or(u64::MAX);
            let _ = phase_tx.send(Phase::Go(start_ns));
            go_start = Some(start_ns);
            let window_start = start + shared.plan.warmup;
            let schedule_end = window_start + shared.plan.duration;
            while Instant::now() < window_start {
                tick("warm-up", shared.complete.load(Ordering::Acquire));
                tokio::time::sleep_until(
                    window_start.min(Instant::now() + Duration::from_millis(250)),
                )
                .await;
            }
            shared.window_start_ns.store(
                u64::try_from((window_start - shared.epoch).as_nanos()).unwrap_or(u64::MAX),
                Ordering::Release,
            );
            cpu_start = Some(sys::cpu_times(&shared.plan.server_pids));
            own_start = sys::own_cpu_time();
            while Instant::now() < schedule_end {
                tick("sending", shared.complete.load(Ordering::Acquire));
                tokio::time::sleep_until(
                    schedule_end.min(Instant::now() + Duration::from_millis(250)),
                )
                .await;
            }
            // The last copies, up to the grace time.
            let deadline = schedule_end + shared.plan.grace;
            loop {
                let notified = shared.notify.notified();
                let complete = shared.complete.load(Ordering::Acquire);
                tick("last copies", complete);
                if complete >= messages
                    || Instant::now() >= deadline
                    || shared.failed.load(Ordering::Acquire) > 0
                {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
            }
            outcome.window = window_start.elapsed();
        } else {
            outcome.errors.note(format!(
                "the first (unmeasured) message reached {} of {conns} clients in {:.0} s",
                shared.settled.load(Ordering::Acquire),
                shared.plan.settle_timeout.as_secs_f64()
            ));
            outcome.errors.stalled += conns.saturating_sub(shared.settled.load(Ordering::Acquire));
        }
    }
    if let Some(start) = cpu_start {
        outcome.server_cpu = sys::cpu_spent(&start, &sys::cpu_times(&shared.plan.server_pids));
    }
    outcome.client_cpu = sys::own_cpu_time()
        .zip(own_start)
        .map(|(b, a)| b.saturating_sub(a));
    outcome.window_copies = shared.window_copies.total();
    let _ = phase_tx.send(Phase::Stop);

    let mut send_lag = Latencies::new();
    for stats in workers.await?? {
        outcome.duplicates += stats.duplicates;
        outcome.sent += stats.sent;
        if let Some(l) = &stats.send_lag {
            send_lag.merge(l);
        }
        outcome.errors.merge(stats.errors);
    }
    outcome.send_lag = send_lag.summary();
    if let Some(start_ns) = go_start {
        tally(&shared, start_ns, &mut outcome);
    }
    Ok(outcome)
}

/// Latencies, missing copies: once the schedule ran.
fn tally(shared: &Shared, start_ns: u64, outcome: &mut ChatOutcome) {
    let conns = shared.plan.conns as u64;
    let nodes = shared.nodes();
    let first_measured = shared.plan.warmup_messages();
    let mut last = Latencies::new();
    let mut node_last: Vec<Latencies> = (0..nodes).map(|_| Latencies::new()).collect();
    for seq in 0..shared.messages {
        let i = usize::try_from(seq).unwrap_or(usize::MAX);
        let got = shared
            .count
            .get(i)
            .map_or(0, |c| u64::from(c.load(Ordering::Acquire)));
        let measured = seq >= first_measured;
        if measured {
            outcome.measured += 1;
            outcome.measured_copies += got;
        }
        if got < conns {
            outcome.incomplete += 1;
            outcome.copies_missing += conns - got;
            continue;
        }
        if !measured {
            continue;
        }
        let due = shared.due_ns(start_ns, seq);
        let since = |at: u64| Duration::from_nanos(at.saturating_sub(due));
        if let Some(at) = shared.last_ns.get(i) {
            last.record(since(at.load(Ordering::Acquire)));
        }
        for (n, h) in node_last.iter_mut().enumerate() {
            let at = shared
                .node_last_ns
                .get(i.saturating_mul(nodes).saturating_add(n))
                .map_or(0, |a| a.load(Ordering::Acquire));
            if at > 0 {
                h.record(since(at));
            }
        }
    }
    outcome.last_copy = last.summary();
    outcome.node_last_copy = node_last.iter().map(Latencies::summary).collect();
}

async fn worker(i: usize, threads: usize, shared: Arc<Shared>) -> WorkerStats {
    let stats = Rc::new(RefCell::new(WorkerStats::default()));
    let tasks: Vec<_> = pool::share(i, threads, shared.plan.conns)
        .map(|c| tokio::task::spawn_local(client(c, i, shared.clone(), stats.clone())))
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    stats.take()
}

/// What one client does with what it receives.
struct Inbox {
    node: usize,
    worker: usize,
    seen: Seen,
    settled: bool,
    duplicates: u64,
}

impl Inbox {
    fn take(&mut self, shared: &Shared, item: Result<Received, String>) -> Result<(), String> {
        let Received::Line(text) = item? else {
            return Ok(());
        };
        let Some(rest) = text.strip_prefix(&shared.marker) else {
            return Ok(());
        };
        if rest == "settle" {
            if !self.settled {
                self.settled = true;
                shared.settled.fetch_add(1, Ordering::AcqRel);
                shared.notify.notify_one();
            }
            return Ok(());
        }
        let Ok(seq) = rest.parse::<u64>() else {
            return Ok(());
        };
        if seq >= shared.messages {
            return Ok(());
        }
        if !self.seen.mark(seq) {
            self.duplicates += 1;
            return Ok(());
        }
        let now = shared.now_ns();
        let i = usize::try_from(seq).unwrap_or(usize::MAX);
        if let Some(at) = shared.last_ns.get(i) {
            at.fetch_max(now, Ordering::AcqRel);
        }
        let nodes = shared.nodes();
        if let Some(at) = shared
            .node_last_ns
            .get(i.saturating_mul(nodes).saturating_add(self.node))
        {
            at.fetch_max(now, Ordering::AcqRel);
        }
        if now >= shared.window_start_ns.load(Ordering::Relaxed) {
            shared.window_copies.of(self.worker).add(1);
        }
        if let Some(count) = shared.count.get(i) {
            if count.fetch_add(1, Ordering::AcqRel) as usize + 1 >= shared.plan.conns {
                shared.complete.fetch_add(1, Ordering::AcqRel);
                shared.notify.notify_one();
            }
        }
        Ok(())
    }
}

async fn client(c: usize, worker: usize, shared: Arc<Shared>, stats: Rc<RefCell<WorkerStats>>) {
    let plan = &shared.plan;
    let node = c % shared.nodes();
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
            s.errors
                .note(format!("client {c} ({url}): cannot connect: {e}"));
            drop(s);
            shared.failed.fetch_add(1, Ordering::AcqRel);
            shared.notify.notify_one();
            return;
        }
    };
    let mut inbox = Inbox {
        node,
        worker,
        seen: Seen::new(shared.messages),
        settled: false,
        duplicates: 0,
    };
    let sender = c < plan.senders;
    let mut next_seq = c as u64;
    let mut send_lag = Latencies::new();
    let mut sent = 0u64;
    let mut settle_sent = false;
    let mut start_ns = None;
    let mut phase = shared.phase.clone();
    let failed = loop {
        let now_phase = *phase.borrow_and_update();
        match now_phase {
            Phase::Stop => break None,
            Phase::Settle if c == 0 && !settle_sent => {
                settle_sent = true;
                if let Err(e) = ws.send(&format!("{}settle", shared.body)).await {
                    break Some(e);
                }
            }
            Phase::Go(s) => start_ns = Some(s),
            _ => {}
        }
        let due = start_ns
            .filter(|_| sender && next_seq < shared.messages)
            .map(|s| shared.due_ns(s, next_seq));
        let due_at = due.map(|ns| shared.epoch + Duration::from_nanos(ns));
        tokio::select! {
            biased;
            changed = phase.changed() => if changed.is_err() { break None },
            () = async {
                if let Some(at) = due_at {
                    tokio::time::sleep_until(at).await;
                }
            }, if due_at.is_some() => {
                let lag = shared.now_ns().saturating_sub(due.unwrap_or(0));
                if let Err(e) = ws.send(&format!("{}{next_seq}", shared.body)).await {
                    break Some(e);
                }
                send_lag.record(Duration::from_nanos(lag));
                sent += 1;
                next_seq += plan.senders as u64;
            }
            item = ws.recv() => if let Err(e) = inbox.take(&shared, item) {
                break Some(e);
            },
        }
    };
    {
        let mut s = stats.borrow_mut();
        s.duplicates += inbox.duplicates;
        s.sent += sent;
        if sender {
            s.send_lag
                .get_or_insert_with(Latencies::new)
                .merge(&send_lag);
        }
        if let Some(e) = failed {
            s.errors.connection_errors += 1;
            s.errors.note(format!("client {c} ({url}): {e}"));
            drop(s);
            shared.failed.fetch_add(1, Ordering::AcqRel);
            shared.notify.notify_one();
            return;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.close()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_marks_once() {
        let mut s = Seen::new(130);
        assert!(s.mark(0));
        assert!(!s.mark(0));
        assert!(s.mark(129));
        assert!(!s.mark(129));
        assert!(s.mark(64));
        assert!(!s.mark(10_000));
    }

    fn plan(conns: usize, senders: usize, rate: f64, secs: u64) -> ChatPlan {
        ChatPlan {
            urls: vec!["ws://127.0.0.1:1/".to_owned()],
            protocol: Protocol::Ferrows,
            conns,
            senders,
            rate,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(secs),
            grace: Duration::from_secs(1),
            settle_timeout: Duration::from_secs(1),
            threads: 1,
            handshake_concurrency: 1,
            config: Config::default(),
            run_id: 1,
            server_pids: Vec::new(),
        }
    }

    #[test]
    fn plan_bounds() {
        let p = plan(100, 10, 1000.0, 9);
        assert_eq!(p.messages(), 10_000);
        assert_eq!(p.warmup_messages(), 1000);
        assert!(p.check().is_ok());
        assert!(plan(10, 11, 10.0, 1).check().is_err());
        assert!(plan(10, 0, 10.0, 1).check().is_err());
        assert!(plan(10, 1, 1e7, 10).check().is_err());
        assert!(plan(100_000, 1, 100_000.0, 10).check().is_err());
    }
}
