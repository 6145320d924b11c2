//! The generator's threads and what they share.
//!
//! Connections are spread over worker threads, each running a
//! single-threaded tokio runtime: on one core (the usual setup, with the
//! server pinned to another) that is the cheapest way to drive thousands of
//! connections, with no cross-thread wake-ups. Per-thread state lives in
//! `Rc<RefCell<…>>`; what the coordinator must see is atomic.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ferrows::{ClientBuilder, Config, MaybeTlsStream, WebSocket};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// A client connection of the generator.
pub(crate) type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// Runs `work(i)` for `i` in `0..threads`, each on its own thread with a
/// single-threaded runtime, and waits for all of them.
///
/// # Errors
///
/// If a runtime cannot be built or a worker panicked.
pub(crate) async fn run_workers<F, Fut, T>(threads: usize, work: F) -> anyhow::Result<Vec<T>>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let work = Arc::new(work);
    let mut handles = Vec::with_capacity(threads);
    for i in 0..threads {
        let work = work.clone();
        let handle = std::thread::Builder::new()
            .name(format!("bench-{i}"))
            .spawn(move || -> anyhow::Result<T> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let local = tokio::task::LocalSet::new();
                Ok(local.block_on(&rt, work(i)))
            })?;
        handles.push(handle);
    }
    tokio::task::spawn_blocking(move || {
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a generator thread panicked"))?
            })
            .collect::<anyhow::Result<Vec<T>>>()
    })
    .await?
}

/// The connections of `worker` when `total` are spread over `threads`.
pub(crate) fn share(worker: usize, threads: usize, total: usize) -> impl Iterator<Item = usize> {
    (worker..total).step_by(threads.max(1))
}

/// A counter of one worker, alone on its cache line so that workers do not
/// slow each other down.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One counter per worker.
#[derive(Debug)]
pub(crate) struct Counters(Vec<Counter>);

impl Counters {
    /// `n` counters at zero.
    pub(crate) fn new(n: usize) -> Counters {
        Counters((0..n.max(1)).map(|_| Counter::default()).collect())
    }

    /// The counter of worker `i`.
    pub(crate) fn of(&self, i: usize) -> &Counter {
        // There is at least one counter, so `get` cannot miss.
        static SPARE: Counter = Counter(AtomicU64::new(0));
        self.0.get(i % self.0.len().max(1)).unwrap_or(&SPARE)
    }

    /// The sum over all workers.
    pub(crate) fn total(&self) -> u64 {
        self.0.iter().map(Counter::get).sum()
    }
}

/// How every connection of this run reaches the server (`--proxy`,
/// `--no-proxy`, or the environment): set once by `bench_command` for the
/// whole process, rather than carried through every mode's plan.
static PROXY: OnceLock<crate::proxy_args::ProxyArgs> = OnceLock::new();

/// Sets [`PROXY`] (the first call wins: one run per process).
pub(crate) fn set_proxy(proxy: crate::proxy_args::ProxyArgs) {
    let _ = PROXY.set(proxy);
}

/// Connects to `url`, holding one of `gate`'s permits during the TCP and
/// WebSocket handshakes; returns the connection and how long they took.
///
/// # Errors
///
/// The connection error, as text.
pub(crate) async fn connect(
    url: &str,
    config: &Config,
    gate: &Semaphore,
) -> Result<(Ws, Duration), String> {
    let _permit = gate
        .acquire()
        .await
        .map_err(|_| "connecting was cancelled".to_owned())?;
    let started = Instant::now();
    let builder = ClientBuilder::new(url).config(config.clone());
    let builder = match PROXY.get() {
        Some(proxy) => proxy.apply(builder).map_err(|e| e.to_string())?,
        None => builder,
    };
    let (ws, _response) = builder.connect().await.map_err(|e| e.to_string())?;
    Ok((ws, started.elapsed()))
}

/// The number of generator threads to use by default: the CPUs this
/// process may run on (so `taskset -c 1` gives one).
pub(crate) fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
