//! Where the outputs go (`--output`): a log line, a JSON line (stdout, a
//! file or a FIFO), or GPIO pins.
//!
//! The controller never waits for an output: it pushes each change onto a
//! bounded queue that a dedicated thread writes out. A reader that falls
//! behind (or a FIFO with no reader yet) makes the queue coalesce (the
//! newest state wins), so neither the dead-man timer nor the clients ever
//! wait on a slow consumer, and memory stays bounded.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use super::control::{Outputs, Reason};
use super::protocol::output_line;

/// Changes queued for the output thread before older ones are coalesced.
const QUEUE: usize = 1024;

/// How often a sink that is not ready (a FIFO without a reader) is retried.
const RETRY: Duration = Duration::from_millis(100);

/// The most latency samples kept (`--latency-stats`).
const MAX_SAMPLES: usize = 1_000_000;

/// `--output`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OutputSpec {
    /// One log line per change (stderr).
    Log,
    /// One JSON line per change on stdout.
    JsonlStdout,
    /// One JSON line per change appended to a file, or written to a FIFO.
    JsonlPath(PathBuf),
    /// GPIO pins described by a TOML file.
    Gpio(PathBuf),
}

/// Parses `--output`: `log`, `jsonl`, `jsonl:PATH`, `gpio:CONFIG.toml`.
pub(crate) fn parse_output(text: &str) -> Result<OutputSpec, String> {
    match text {
        "log" => return Ok(OutputSpec::Log),
        "jsonl" | "jsonl:-" => return Ok(OutputSpec::JsonlStdout),
        _ => {}
    }
    if let Some(path) = text.strip_prefix("jsonl:") {
        if path.is_empty() {
            return Err("jsonl: needs a path (or use plain `jsonl` for stdout)".to_owned());
        }
        return Ok(OutputSpec::JsonlPath(PathBuf::from(path)));
    }
    if let Some(path) = text.strip_prefix("gpio:") {
        if path.is_empty() {
            return Err("gpio: needs a configuration file, e.g. gpio:robot.toml".to_owned());
        }
        return Ok(OutputSpec::Gpio(PathBuf::from(path)));
    }
    Err(format!(
        "{text:?}: expected log, jsonl, jsonl:PATH or gpio:CONFIG.toml"
    ))
}

/// One change of the outputs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame {
    /// Milliseconds since the server started (monotonic: a robot that
    /// boots without a clock and then syncs it sees no jump).
    pub(crate) t_ms: u64,
    /// The outputs.
    pub(crate) outputs: Outputs,
    /// Why they changed.
    pub(crate) reason: Reason,
    /// When the command that caused it arrived, for `--latency-stats`.
    pub(crate) arrived: Option<Instant>,
}

/// Whether a sink can take writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// Writing works.
    Ready,
    /// It was (re)opened: the reader has missed what came before, so the
    /// next write is the current state only.
    Fresh,
    /// Not yet (a FIFO no one reads); try again later.
    NotYet,
}

/// A destination for output changes; runs on the output thread, where
/// blocking is allowed.
pub(crate) trait Sink: Send {
    /// Gets ready to write (opens a FIFO once a reader is there).
    fn ready(&mut self) -> Readiness;
    /// Writes changes, oldest first.
    fn write(&mut self, frames: &[Frame]) -> io::Result<()>;
}

/// Arrival-to-output latencies, in microseconds, bounded in count.
#[derive(Debug, Default)]
pub(crate) struct Latency {
    samples: Mutex<Vec<u32>>,
}

impl Latency {
    fn record(&self, d: Duration) {
        let us = u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
        let mut s = lock(&self.samples);
        if s.len() < MAX_SAMPLES {
            s.push(us);
        }
    }

    /// `n=… p50=…µs p99=…µs max=…µs`, or `None` without samples.
    pub(crate) fn report(&self) -> Option<String> {
        let mut s = lock(&self.samples).clone();
        if s.is_empty() {
            return None;
        }
        s.sort_unstable();
        let at = |q: f64| {
            let i = ((s.len() as f64 - 1.0) * q).round() as usize;
            s.get(i).copied().unwrap_or(0)
        };
        Some(format!(
            "n={} p50={}us p90={}us p99={}us max={}us",
            s.len(),
            at(0.5),
            at(0.9),
            at(0.99),
            s.last().copied().unwrap_or(0)
        ))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Frame>,
    closed: bool,
    coalesced: u64,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Set when the output is finishing: a sink stuck writing to a full
    /// FIFO gives up.
    closing: AtomicBool,
}

/// The output: a queue and the thread that writes it to a [`Sink`].
pub(crate) struct Output {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    done: std::sync::mpsc::Receiver<()>,
    last_safe: bool,
    /// The server's start, for `t_ms`.
    epoch: Instant,
}

impl Output {
    /// Starts the output thread for `sink`.
    pub(crate) fn start(
        sink: Box<dyn Sink>,
        latency: Option<Arc<Latency>>,
        name: &str,
        epoch: Instant,
    ) -> io::Result<Output> {
        Output::start_shared(Arc::new(Shared::default()), sink, latency, name, epoch)
    }

    /// Queues a change; never waits for the sink.
    pub(crate) fn push(&mut self, frame: Frame) {
        self.last_safe = frame.outputs.is_safe();
        let mut q = lock(&self.shared.queue);
        if q.frames.len() >= QUEUE {
            // The consumer is far behind: the newest state replaces the
            // newest queued one, so what it reads next is current.
            q.coalesced += 1;
            if let Some(last) = q.frames.back_mut() {
                *last = frame;
            }
        } else {
            q.frames.push_back(frame);
        }
        drop(q);
        self.shared.wake.notify_one();
    }

    /// Stops taking changes and waits up to `timeout` for the last ones
    /// to be written; `false` if the sink did not finish in time (e.g.
    /// stdout is a pipe no one reads).
    pub(crate) fn finish(mut self, timeout: Duration) -> bool {
        self.close();
        let finished = self.done.recv_timeout(timeout).is_ok();
        if finished {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        } else {
            // Wake a sink stuck on a full FIFO so it can give up.
            self.shared.closing.store(true, Ordering::SeqCst);
            if self.done.recv_timeout(Duration::from_millis(200)).is_ok() {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
                return true;
            }
        }
        finished
    }

    /// Whether the output thread is still running (it ends only when
    /// finishing, or if it panicked).
    pub(crate) fn is_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    fn close(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.wake.notify_one();
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if self.thread.is_none() {
            return;
        }
        // Dropped without finish(): the controller failed. Whatever the
        // last change was, the outputs end in the safe state.
        if !self.last_safe {
            let t_ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.push(Frame {
                t_ms,
                outputs: Outputs::SAFE,
                reason: Reason::Shutdown,
                arrived: None,
            });
        }
        self.close();
        let _ = self.done.recv_timeout(Duration::from_secs(1));
    }
}

fn run_worker(shared: &Shared, sink: &mut dyn Sink, latency: Option<&Latency>) {
    let mut current: Option<Frame> = None;
    let mut readiness = Readiness::NotYet;
    let mut failures = 0u64;
    loop {
        let (batch, closed, coalesced) = {
            let mut q = lock(&shared.queue);
            while q.frames.is_empty() && !q.closed {
                if readiness == Readiness::NotYet {
                    let (guard, _) = shared
                        .wake
                        .wait_timeout(q, RETRY)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    q = guard;
                    break;
                }
                q = shared
                    .wake
                    .wait(q)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            let batch: Vec<Frame> = q.frames.drain(..).collect();
            (batch, q.closed, std::mem::take(&mut q.coalesced))
        };
        if coalesced > 0 {
            tracing::warn!(
                coalesced,
                "output consumer fell behind: some intermediate changes were merged"
            );
        }
        if let Some(last) = batch.last() {
            current = Some(*last);
        }
        readiness = sink.ready();
        let result = match readiness {
            Readiness::NotYet => Ok(()),
            // A new reader gets the state as it is now.
            Readiness::Fresh => match current {
                Some(frame) => sink.write(std::slice::from_ref(&frame)),
                None => Ok(()),
            },
            Readiness::Ready if batch.is_empty() => Ok(()),
            Readiness::Ready => sink.write(&batch),
        };
        match result {
            Ok(()) if readiness == Readiness::Ready => {
                if let Some(latency) = latency {
                    let now = Instant::now();
                    for f in &batch {
                        if let Some(t) = f.arrived {
                            latency.record(now.saturating_duration_since(t));
                        }
                    }
                }
            }
            Ok(()) => {}
            Err(e) => {
                // Retry (reopen) on a timer, so a reader that comes back
                // gets the current state without waiting for a change.
                readiness = Readiness::NotYet;
                failures += 1;
                if failures <= 3 || failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures, "output write failed");
                }
            }
        }
        if closed && lock(&shared.queue).frames.is_empty() {
            if readiness == Readiness::NotYet && !batch.is_empty() {
                tracing::warn!(
                    "output closed before it had a reader: the last changes were not written"
                );
            }
            return;
        }
        if shared.closing.load(Ordering::SeqCst) && readiness == Readiness::NotYet {
            return;
        }
    }
}

/// `--output log`: one line per change on the log (stderr).
#[derive(Debug)]
pub(crate) struct LogSink {
    /// Buttons shown.
    pub(crate) buttons: u32,
}

impl Sink for LogSink {
    fn ready(&mut self) -> Readiness {
        Readiness::Ready
    }

    fn write(&mut self, frames: &[Frame]) -> io::Result<()> {
        for f in frames {
            let mut pressed = String::new();
            for i in 0..self.buttons.min(64) {
                if f.outputs.buttons & (1u64 << i) != 0 {
                    if !pressed.is_empty() {
                        pressed.push(',');
                    }
                    let _ = write!(pressed, "{i}");
                }
            }
            tracing::info!(
                "outputs: left={:+.3} right={:+.3} buttons=[{pressed}] reason={}",
                f.outputs.left,
                f.outputs.right,
                f.reason.as_str()
            );
        }
        Ok(())
    }
}

enum Target {
    Stdout {
        broken: bool,
    },
    Path {
        path: PathBuf,
        file: Option<std::fs::File>,
        fifo: bool,
        complained: bool,
    },
}

/// `--output jsonl[:PATH]`: one JSON line per change.
pub(crate) struct JsonlSink {
    target: Target,
    buttons: u32,
    closing: Option<Arc<Shared>>,
}

impl JsonlSink {
    /// JSON lines on stdout.
    pub(crate) fn stdout(buttons: u32) -> JsonlSink {
        JsonlSink {
            target: Target::Stdout { broken: false },
            buttons,
            closing: None,
        }
    }

    /// JSON lines appended to `path` (created if missing), or written to
    /// it if it is a FIFO: opened without blocking, and again whenever a
    /// reader comes back. Fails at once if a regular file cannot be
    /// opened (no such directory, no permission).
    pub(crate) fn path(path: &Path, buttons: u32) -> io::Result<JsonlSink> {
        let fifo = is_fifo(path);
        let file = if fifo {
            None
        } else {
            Some(open_append(path, false).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
            })?)
        };
        Ok(JsonlSink {
            target: Target::Path {
                path: path.to_owned(),
                file,
                fifo,
                complained: false,
            },
            buttons,
            closing: None,
        })
    }

    fn lines(&self, frames: &[Frame]) -> String {
        let mut text = String::new();
        for f in frames {
            text.push_str(&output_line(
                f.t_ms,
                &f.outputs,
                self.buttons,
                f.reason.as_str(),
            ));
            text.push('\n');
        }
        text
    }
}

#[cfg(unix)]
fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

#[cfg(not(unix))]
fn is_fifo(_path: &Path) -> bool {
    false
}

/// Opens for appending; `nonblocking` for a FIFO (fails with ENXIO while
/// no one reads it, instead of blocking the thread).
fn open_append(path: &Path, nonblocking: bool) -> io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.append(true);
    if nonblocking {
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.custom_flags(libc::O_NONBLOCK);
        }
    } else {
        options.create(true);
    }
    options.open(path)
}

/// Writes all of `bytes` to a non-blocking FIFO, waiting while it is full
/// unless the output is closing.
fn write_all_patiently(
    file: &mut std::fs::File,
    mut bytes: &[u8],
    closing: Option<&Shared>,
) -> io::Result<()> {
    while !bytes.is_empty() {
        match file.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if closing.is_some_and(|s| s.closing.load(Ordering::SeqCst)) {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the FIFO's reader stopped reading",
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Sink for JsonlSink {
    fn ready(&mut self) -> Readiness {
        match &mut self.target {
            Target::Stdout { broken: true } => Readiness::NotYet,
            Target::Stdout { broken: false } => Readiness::Ready,
            Target::Path { file: Some(_), .. } => Readiness::Ready,
            Target::Path {
                path,
                file,
                fifo,
                complained,
            } => match open_append(path, *fifo) {
                Ok(f) => {
                    *file = Some(f);
                    *complained = false;
                    tracing::info!(path = %path.display(), "jsonl output: reader connected");
                    Readiness::Fresh
                }
                Err(e) => {
                    if !*complained {
                        *complained = true;
                        if e.raw_os_error() == Some(libc_enxio()) {
                            tracing::info!(path = %path.display(), "jsonl output: waiting for a reader on the FIFO");
                        } else {
                            tracing::warn!(path = %path.display(), error = %e, "jsonl output: cannot open; retrying");
                        }
                    }
                    Readiness::NotYet
                }
            },
        }
    }

    fn write(&mut self, frames: &[Frame]) -> io::Result<()> {
        let text = self.lines(frames);
        let closing = self.closing.clone();
        match &mut self.target {
            Target::Stdout { broken } => {
                let mut out = io::stdout().lock();
                let result = out.write_all(text.as_bytes()).and_then(|()| out.flush());
                if let Err(e) = &result {
                    if e.kind() == io::ErrorKind::BrokenPipe {
                        *broken = true;
                        tracing::warn!("jsonl output: stdout was closed; no more lines");
                    }
                }
                result
            }
            Target::Path { file: None, .. } => Err(io::ErrorKind::NotConnected.into()),
            Target::Path {
                file: Some(f),
                fifo,
                path,
                ..
            } => {
                let result = if *fifo {
                    write_all_patiently(f, text.as_bytes(), closing.as_deref())
                } else {
                    f.write_all(text.as_bytes()).and_then(|()| f.flush())
                };
                if let Err(e) = &result {
                    // The reader left (EPIPE) or something broke: reopen
                    // when a reader is back; it starts from the current
                    // state.
                    tracing::info!(path = %path.display(), error = %e, "jsonl output: reader gone");
                    let Target::Path { file, .. } = &mut self.target else {
                        return result;
                    };
                    *file = None;
                }
                result
            }
        }
    }
}

#[cfg(unix)]
fn libc_enxio() -> i32 {
    libc::ENXIO
}

#[cfg(not(unix))]
fn libc_enxio() -> i32 {
    -1
}

/// Starts the output for `spec` and gives the sink a way to see that the
/// output is closing.
pub(crate) fn start_jsonl(
    mut sink: JsonlSink,
    latency: Option<Arc<Latency>>,
    epoch: Instant,
) -> io::Result<Output> {
    // The sink needs the closing flag of the Output that runs it: build
    // the Output around a sink that shares it.
    let shared = Arc::new(Shared::default());
    sink.closing = Some(shared.clone());
    Output::start_shared(shared, Box::new(sink), latency, "jsonl", epoch)
}

impl Output {
    fn start_shared(
        shared: Arc<Shared>,
        mut sink: Box<dyn Sink>,
        latency: Option<Arc<Latency>>,
        name: &str,
        epoch: Instant,
    ) -> io::Result<Output> {
        let (done_tx, done) = std::sync::mpsc::channel();
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("gamepad-output-{name}"))
            .spawn(move || {
                run_worker(&worker, sink.as_mut(), latency.as_deref());
                drop(sink);
                let _ = done_tx.send(());
            })?;
        Ok(Output {
            shared,
            thread: Some(thread),
            done,
            last_safe: true,
            epoch,
        })
    }
}

// ------------------------------------------------------------ panic safety

type Estop = Arc<dyn Fn() + Send + Sync>;

static ESTOPS: Mutex<Vec<(u64, Estop)>> = Mutex::new(Vec::new());
static NEXT_ESTOP: AtomicU64 = AtomicU64::new(0);
static HOOK: Once = Once::new();

/// Keeps an emergency stop registered; unregisters it when dropped.
pub(crate) struct EstopRegistration(u64);

impl Drop for EstopRegistration {
    fn drop(&mut self) {
        lock(&ESTOPS).retain(|(id, _)| *id != self.0);
    }
}

/// Registers `stop` to run if any thread panics (before the panic
/// message is printed), so hardware goes to the safe state even when the
/// panic would otherwise leave it as it was. `stop` must not panic and
/// must not block for long.
pub(crate) fn register_emergency_stop(stop: Estop) -> EstopRegistration {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            emergency_stop_all();
            previous(info);
        }));
    });
    let id = NEXT_ESTOP.fetch_add(1, Ordering::Relaxed);
    lock(&ESTOPS).push((id, stop));
    EstopRegistration(id)
}

/// Runs every registered emergency stop (from the panic hook).
fn emergency_stop_all() {
    // try_lock: a panic while the registry is held must not deadlock.
    let stops: Vec<Estop> = match ESTOPS.try_lock() {
        Ok(g) => g.iter().map(|(_, s)| s.clone()).collect(),
        Err(std::sync::TryLockError::Poisoned(p)) => {
            p.into_inner().iter().map(|(_, s)| s.clone()).collect()
        }
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    for stop in stops {
        stop();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn frame(t_ms: u64, left: f64, reason: Reason) -> Frame {
        Frame {
            t_ms,
            outputs: Outputs {
                left,
                right: left / 2.0,
                buttons: 0b10,
            },
            reason,
            arrived: Some(Instant::now()),
        }
    }

    fn temp_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "ferrows-gamepad-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ))
    }

    #[test]
    fn output_specs() {
        assert_eq!(parse_output("log"), Ok(OutputSpec::Log));
        assert_eq!(parse_output("jsonl"), Ok(OutputSpec::JsonlStdout));
        assert_eq!(parse_output("jsonl:-"), Ok(OutputSpec::JsonlStdout));
        assert_eq!(
            parse_output("jsonl:/tmp/x.jsonl"),
            Ok(OutputSpec::JsonlPath("/tmp/x.jsonl".into()))
        );
        assert_eq!(
            parse_output("gpio:robot.toml"),
            Ok(OutputSpec::Gpio("robot.toml".into()))
        );
        for bad in ["", "jsonl:", "gpio:", "csv", "LOG"] {
            assert!(parse_output(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn jsonl_file_gets_one_line_per_change_and_latency_is_recorded() {
        let path = temp_path("file");
        let _ = std::fs::remove_file(&path);
        let latency = Arc::new(Latency::default());
        let mut out = start_jsonl(
            JsonlSink::path(&path, 2).unwrap(),
            Some(latency.clone()),
            Instant::now(),
        )
        .unwrap();
        out.push(frame(5, 0.5, Reason::Command));
        out.push(frame(9, 0.0, Reason::Deadman));
        assert!(out.finish(Duration::from_secs(10)));
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            text,
            "{\"t_ms\":5,\"left\":0.5,\"right\":0.25,\"buttons\":[false,true],\"reason\":\"command\"}\n\
             {\"t_ms\":9,\"left\":0.0,\"right\":0.0,\"buttons\":[false,true],\"reason\":\"deadman\"}\n"
        );
        let report = latency.report().unwrap();
        assert!(report.starts_with("n=2 "), "{report}");
    }

    #[test]
    fn a_missing_directory_fails_at_once() {
        let err = JsonlSink::path(Path::new("/nonexistent-dir-ferrows/x.jsonl"), 2)
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("/nonexistent-dir-ferrows"),
            "{err}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn fifo_waits_for_a_reader_without_blocking_and_starts_it_at_the_current_state() {
        use std::io::BufRead;
        let path = temp_path("fifo");
        let _ = std::fs::remove_file(&path);
        let made = std::process::Command::new("mkfifo").arg(&path).status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("mkfifo unavailable: skipping");
            return;
        }
        let mut out =
            start_jsonl(JsonlSink::path(&path, 2).unwrap(), None, Instant::now()).unwrap();
        // No reader: pushing never blocks, the queue takes it all.
        let started = Instant::now();
        for i in 0..2000u32 {
            out.push(frame(
                u64::from(i),
                f64::from(i % 10) / 10.0,
                Reason::Command,
            ));
        }
        out.push(frame(9999, 0.9, Reason::Command));
        assert!(started.elapsed() < Duration::from_secs(2));
        // A reader arrives: its first line is the current state.
        let reader = std::fs::File::open(&path).unwrap();
        let mut lines = std::io::BufReader::new(reader).lines();
        let first = lines.next().unwrap().unwrap();
        assert!(first.starts_with("{\"t_ms\":9999,"), "{first}");
        out.push(frame(10_000, 0.0, Reason::Deadman));
        let next = lines.next().unwrap().unwrap();
        assert!(next.contains("\"reason\":\"deadman\""), "{next}");
        assert!(out.finish(Duration::from_secs(10)));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_dropped_output_ends_in_the_safe_state() {
        let path = temp_path("drop");
        let _ = std::fs::remove_file(&path);
        {
            let mut out =
                start_jsonl(JsonlSink::path(&path, 2).unwrap(), None, Instant::now()).unwrap();
            out.push(frame(1, 1.0, Reason::Command));
            // Dropped without finish(), as when the controller panics.
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let last = text.lines().last().unwrap();
        assert!(
            last.contains(
                "\"left\":0.0,\"right\":0.0,\"buttons\":[false,false],\"reason\":\"shutdown\""
            ),
            "{text}"
        );
    }

    #[test]
    fn emergency_stops_run_on_panic_and_unregister() {
        let hits = Arc::new(AtomicU64::new(0));
        let h = hits.clone();
        let reg = register_emergency_stop(Arc::new(move || {
            h.fetch_add(1, Ordering::SeqCst);
        }));
        let r = std::thread::spawn(|| panic!("test panic: emergency stop expected")).join();
        assert!(r.is_err());
        assert!(hits.load(Ordering::SeqCst) >= 1);
        drop(reg);
        let before = hits.load(Ordering::SeqCst);
        let _ = std::thread::spawn(|| panic!("test panic: none registered")).join();
        assert_eq!(hits.load(Ordering::SeqCst), before);
    }
}
