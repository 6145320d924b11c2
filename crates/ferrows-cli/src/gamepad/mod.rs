//! `ferrows serve gamepad` (also `/gamepad` of `ferrows serve`): drive a
//! robot from a browser gamepad, safely.
//!
//! A plain GET returns the page; a WebSocket upgrade on the same path
//! joins the robot. One client drives at a time (the first to send a
//! command; `--drive-token` makes driving require a token); the others are
//! viewers. A single controller task owns the state ([`control`]): it
//! takes every client's messages through one bounded channel, enforces the
//! dead-man and the lease with its own timer, pushes output changes to the
//! output thread ([`output`]), and sends telemetry to every client ten
//! times a second.
//!
//! Nothing here waits on a client: each has a bounded queue of outgoing
//! messages, and a viewer whose queue overflows is dropped. What one client
//! sends is answered to it alone; what every client gets (telemetry, stop
//! notices) is bounded by the server, not by any client: telemetry goes out
//! only on the 10 Hz tick, and auth messages have their own low rate. The
//! driver is never dropped because of that shared traffic: when its queue
//! is full, it misses a snapshot (the next one supersedes it); only a full
//! queue on an answer to its own messages drops it (and stops the robot
//! with reason `stalled`).

mod control;
mod gpio;
mod output;
mod protocol;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use ferrows::{CloseCode, Config, Handshake, Message, Prepared, WebSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::control::{ClientId, Controller, Effect, Settings};
use self::output::{Latency, Output, OutputSpec};
use self::protocol::Inbound;
use crate::duration::{self, Bare};
use crate::net::{self, Io, Stream, display_addr};
use crate::{CommonArgs, pages};

/// Telemetry to every client this often.
const TELEMETRY: Duration = Duration::from_millis(100);

/// Messages queued per client; a client further behind is dropped.
const CLIENT_QUEUE: usize = 64;

/// Events queued for the controller; senders wait when it is full.
const EVENTS: usize = 1024;

/// Stop taking from a client's queue while this many bytes wait to be
/// written to its socket.
const HIGH_WATER_MARK: usize = 64 * 1024;

/// Messages a client may send per second, on average (the page sends at
/// most 60 and a ping a second) ...
const RATE: f64 = 200.0;

/// ... and in a burst.
const BURST: f64 = 100.0;

/// Auth messages a client may send per second, on average (each is answered,
/// and checking a token is the one thing worth guessing at) ...
const AUTH_RATE: f64 = 2.5;

/// ... and in a burst: so at most 10 answers to one client in any 2 s.
const AUTH_BURST: f64 = 5.0;

/// How long the output may take to write its last lines at exit.
const OUTPUT_FINISH: Duration = Duration::from_secs(3);

/// The settings of the robot, shared by `serve gamepad` and `serve`.
#[derive(Args, Debug, Clone)]
pub(crate) struct GamepadArgs {
    /// Where outputs go: log (one line per change), jsonl (JSON lines on
    /// stdout), jsonl:PATH (a file, or a FIFO), gpio:CONFIG.toml (Linux GPIO)
    #[arg(long, value_name = "OUTPUT", default_value = "log", value_parser = output::parse_output)]
    output: OutputSpec,
    /// Stop the motors when no fresh command arrived for this long (a bare
    /// number is ms; also 0.5s)
    #[arg(long, value_name = "DURATION", default_value = "500",
          value_parser = duration::within(Bare::Millis, Duration::from_millis(20), Duration::from_secs(60)))]
    deadman: Duration,
    /// The driver loses control after this long without a command (a bare
    /// number is ms; also 5s, 1m)
    #[arg(long, value_name = "DURATION", default_value = "5000",
          value_parser = duration::within(Bare::Millis, Duration::from_millis(20), Duration::from_secs(3600)))]
    lease_timeout: Duration,
    /// Stick deflection below this counts as centred (0 to 0.9)
    #[arg(long, value_name = "FRACTION", default_value_t = 0.1, value_parser = parse_deadzone)]
    deadzone: f64,
    /// Motor speed at full stick (0.01 to 1)
    #[arg(long, value_name = "FRACTION", default_value_t = 1.0, value_parser = parse_max_speed)]
    max_speed: f64,
    /// Driving requires this token, sent as ?drive_token=… (or ?token=…
    /// when the server has no --token) or {"type":"auth","token":…}
    #[arg(
        long = "drive-token",
        value_name = "TOKEN",
        env = "FERROWS_GAMEPAD_TOKEN",
        hide_env_values = true
    )]
    drive_token: Option<String>,
    /// Digital outputs: buttons 0..N-1 (the standard gamepad has 17)
    #[arg(long, value_name = "N", default_value_t = 17,
          value_parser = clap::value_parser!(u32).range(0..=64))]
    buttons: u32,
    /// Software PWM frequency of the motor enable lines with --output gpio (Hz)
    #[arg(long, value_name = "HZ", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(10..=2000))]
    pwm_hz: u32,
    /// Measure each command's arrival-to-output latency; log p50/p99 at exit
    #[arg(long)]
    latency_stats: bool,
}

fn parse_fraction(text: &str, min: f64, max: f64, what: &str) -> Result<f64, String> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !(min..=max).contains(&v) {
        return Err(format!("{what} must be in {min}..={max}"));
    }
    Ok(v)
}

fn parse_deadzone(text: &str) -> Result<f64, String> {
    parse_fraction(text, 0.0, 0.9, "the dead zone")
}

fn parse_max_speed(text: &str) -> Result<f64, String> {
    parse_fraction(text, 0.01, 1.0, "the maximum speed")
}

/// `ferrows serve gamepad`.
#[derive(Args, Debug)]
pub(crate) struct ServeGamepadArgs {
    /// Address to listen on; `::` is dual-stack (IPv4 and IPv6)
    #[arg(long, value_name = "ADDR", default_value = "::")]
    bind: IpAddr,
    /// Port to listen on; 0 picks a free one
    #[arg(long, value_name = "PORT", default_value_t = 9003)]
    port: u16,
    #[command(flatten)]
    gamepad: GamepadArgs,
    #[command(flatten)]
    common: CommonArgs,
}

enum Event {
    Join {
        id: ClientId,
        token: Option<String>,
        queue: mpsc::Sender<Outbound>,
    },
    Leave {
        id: ClientId,
    },
    Command {
        id: ClientId,
        command: control::Command,
        arrived: std::time::Instant,
    },
    Auth {
        id: ClientId,
        token: String,
    },
    Release {
        id: ClientId,
    },
    Shutdown,
}

enum Outbound {
    Text(Prepared),
    Close(CloseCode, &'static str),
}

/// The robot, as connections see it: cheap to clone.
#[derive(Clone)]
pub(crate) struct Gamepad {
    events: mpsc::Sender<Event>,
    next_id: Arc<AtomicU64>,
    /// The server has a connection token (`--token`): the URL's `?token=`
    /// is that one, not an attempt at the driving token.
    connection_token: bool,
}

/// The running controller; [`Running::finish`] stops it and puts the
/// outputs in the safe state.
pub(crate) struct Running {
    events: mpsc::Sender<Event>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    /// Resolves if the controller ended on its own (it panicked): the
    /// server must stop, its outputs are already safe.
    pub(crate) async fn failed(&mut self) -> anyhow::Error {
        match self.task.as_mut() {
            Some(task) => {
                let result = task.await;
                self.task = None;
                match result {
                    Err(e) if e.is_panic() => anyhow::anyhow!("the gamepad controller panicked"),
                    _ => anyhow::anyhow!("the gamepad controller stopped"),
                }
            }
            None => std::future::pending().await,
        }
    }

    /// Stops the controller: outputs to the safe state, the output's last
    /// lines written (bounded in time).
    pub(crate) async fn finish(mut self) {
        let _ = self.events.send(Event::Shutdown).await;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Opens the output and starts the controller (on the current runtime).
///
/// # Errors
///
/// When the output cannot be opened: a jsonl file in a missing directory,
/// a bad GPIO configuration, a missing GPIO chip.
///
/// `connection_token`: whether the server gates connections with
/// `--token` (the URL's `?token=` is then not a driving token).
pub(crate) fn start(
    args: &GamepadArgs,
    connection_token: bool,
) -> anyhow::Result<(Gamepad, Running)> {
    let settings = Settings {
        deadzone: args.deadzone,
        max_speed: args.max_speed,
        deadman: args.deadman,
        lease_timeout: args.lease_timeout,
        buttons: args.buttons,
        token: args.drive_token.clone().filter(|t| !t.is_empty()),
    };
    let epoch = Instant::now();
    let latency = args.latency_stats.then(|| Arc::new(Latency::default()));
    let output = open_output(args, latency.clone(), epoch.into_std())?;
    tracing::info!(
        output = ?args.output,
        deadman_ms = args.deadman.as_millis(),
        lease_timeout_ms = args.lease_timeout.as_millis(),
        deadzone = args.deadzone,
        max_speed = args.max_speed,
        token = settings.token.is_some(),
        "gamepad ready: outputs in the safe state"
    );
    let (tx, rx) = mpsc::channel(EVENTS);
    let controller = Controller::new(settings);
    let task = tokio::spawn(run_controller(controller, rx, output, epoch, latency));
    Ok((
        Gamepad {
            events: tx.clone(),
            next_id: Arc::new(AtomicU64::new(1)),
            connection_token,
        },
        Running {
            events: tx,
            task: Some(task),
        },
    ))
}

fn open_output(
    args: &GamepadArgs,
    latency: Option<Arc<Latency>>,
    epoch: std::time::Instant,
) -> anyhow::Result<Output> {
    let output = match &args.output {
        OutputSpec::Log => Output::start(
            Box::new(output::LogSink {
                buttons: args.buttons,
            }),
            latency,
            "log",
            epoch,
        )?,
        OutputSpec::JsonlStdout => {
            output::start_jsonl(output::JsonlSink::stdout(args.buttons), latency, epoch)?
        }
        OutputSpec::JsonlPath(path) => {
            output::start_jsonl(output::JsonlSink::path(path, args.buttons)?, latency, epoch)?
        }
        OutputSpec::Gpio(path) => {
            let config = gpio::load_config(path, args.buttons)?;
            open_gpio(&config, args.pwm_hz, latency, epoch)?
        }
    };
    Ok(output)
}

#[cfg(all(feature = "gpio", target_os = "linux"))]
fn open_gpio(
    config: &gpio::GpioConfig,
    pwm_hz: u32,
    latency: Option<Arc<Latency>>,
    epoch: std::time::Instant,
) -> anyhow::Result<Output> {
    let sink = gpio::GpioSink::open(config, pwm_hz)?;
    Ok(Output::start(Box::new(sink), latency, "gpio", epoch)?)
}

#[cfg(not(all(feature = "gpio", target_os = "linux")))]
fn open_gpio(
    config: &gpio::GpioConfig,
    _pwm_hz: u32,
    _latency: Option<Arc<Latency>>,
    _epoch: std::time::Instant,
) -> anyhow::Result<Output> {
    gpio::check_chip(&config.chip)?;
    anyhow::bail!(
        "GPIO output needs Linux and the `gpio` feature (this ferrows was built without it)"
    )
}

fn millis_since(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
}

/// The controller task's state besides the [`Controller`].
struct Hub {
    clients: HashMap<ClientId, mpsc::Sender<Outbound>>,
    output: Output,
    epoch: Instant,
}

impl Hub {
    /// Queues `text` for `id`; a full queue means the client stalled.
    fn send(&mut self, id: ClientId, msg: Outbound) -> Result<(), ClientGone> {
        send_to(&self.clients, id, msg)
    }

    /// Queues `text` for every client; see [`broadcast_to`].
    fn broadcast(&mut self, text: String, driver: Option<ClientId>) -> Vec<ClientGone> {
        broadcast_to(&self.clients, text, driver)
    }
}

/// Queues `msg` for `id`; a full queue means the client stalled.
fn send_to(
    clients: &HashMap<ClientId, mpsc::Sender<Outbound>>,
    id: ClientId,
    msg: Outbound,
) -> Result<(), ClientGone> {
    let Some(queue) = clients.get(&id) else {
        return Ok(());
    };
    match queue.try_send(msg) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(_)) => Err(ClientGone { id, stalled: true }),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(ClientGone { id, stalled: false }),
    }
}

/// Queues `text` for every client. A viewer whose queue is full is returned
/// as gone; the driver (`driver`) is not: traffic every client gets is
/// never the reason it is dropped, it misses this one instead.
fn broadcast_to(
    clients: &HashMap<ClientId, mpsc::Sender<Outbound>>,
    text: String,
    driver: Option<ClientId>,
) -> Vec<ClientGone> {
    let prepared = Prepared::new(Message::text(text));
    clients
        .keys()
        .filter_map(|id| send_to(clients, *id, Outbound::Text(prepared.clone())).err())
        .filter(|g| {
            let skipped = g.stalled && Some(g.id) == driver;
            if skipped {
                tracing::debug!(client = g.id, "driver's queue full: broadcast skipped");
            }
            !skipped
        })
        .collect()
}

struct ClientGone {
    id: ClientId,
    stalled: bool,
}

/// Applies effects (and those of clients found gone meanwhile), in order.
fn apply(
    ctl: &mut Controller,
    hub: &mut Hub,
    effects: Vec<Effect>,
    arrived: Option<std::time::Instant>,
    now: Instant,
) {
    let mut pending: std::collections::VecDeque<Effect> = effects.into();
    let mut gone: Vec<ClientGone> = Vec::new();
    // Bounded: each round removes a client for good.
    for _ in 0..=hub.clients.len() + 1 {
        while let Some(effect) = pending.pop_front() {
            match effect {
                Effect::Output { outputs, reason } => {
                    hub.output.push(output::Frame {
                        t_ms: millis_since(hub.epoch, now),
                        outputs,
                        reason,
                        arrived: if reason == control::Reason::Command {
                            arrived
                        } else {
                            None
                        },
                    });
                }
                Effect::Stopped(cause) => {
                    tracing::info!(cause = cause.as_str(), "robot stopped: {}", cause.text());
                    gone.extend(hub.broadcast(protocol::stop(cause), ctl.driver()));
                }
                Effect::Role { id, role, why } => {
                    if why == control::RoleWhy::Claimed {
                        tracing::info!(client = id, "client drives");
                    }
                    let text = protocol::role(role, why, ctl.driver());
                    if let Err(g) = hub.send(id, Outbound::Text(Prepared::new(Message::text(text))))
                    {
                        gone.push(g);
                    }
                    // Not a broadcast: the others see the new driver in the
                    // next telemetry (at most 100 ms away), so no client can
                    // make every client's traffic grow by asking its role.
                }
                Effect::Refused { id, why } => {
                    let text = protocol::refused(why);
                    if let Err(g) = hub.send(id, Outbound::Text(Prepared::new(Message::text(text))))
                    {
                        gone.push(g);
                    }
                }
                Effect::Disconnect { id } => {
                    tracing::warn!(client = id, "too many wrong tokens: closing");
                    let _ = hub.send(
                        id,
                        Outbound::Close(CloseCode::POLICY_VIOLATION, "too many wrong tokens"),
                    );
                    hub.clients.remove(&id);
                    pending.extend(ctl.disconnect(id, false));
                }
            }
        }
        if gone.is_empty() {
            return;
        }
        for g in gone.drain(..) {
            if hub.clients.remove(&g.id).is_some() && g.stalled {
                tracing::warn!(client = g.id, "client fell behind: dropping it");
            }
            pending.extend(ctl.disconnect(g.id, g.stalled));
        }
    }
}

fn send_telemetry(ctl: &Controller, hub: &mut Hub, now: Instant) -> Vec<ClientGone> {
    let text = protocol::telemetry(
        &ctl.status(),
        ctl.settings().buttons,
        millis_since(hub.epoch, now),
    );
    hub.broadcast(text, ctl.driver())
}

async fn run_controller(
    mut ctl: Controller,
    mut events: mpsc::Receiver<Event>,
    output: Output,
    epoch: Instant,
    latency: Option<Arc<Latency>>,
) {
    let mut hub = Hub {
        clients: HashMap::new(),
        output,
        epoch,
    };
    let mut telemetry = tokio::time::interval(TELEMETRY);
    telemetry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let deadline = ctl.next_deadline();
        // The driver's queue closes the moment its connection task ends:
        // stop at once, not at the next sweep.
        let driver_queue = ctl.driver().and_then(|id| hub.clients.get(&id).cloned());
        let driver_gone = async {
            match &driver_queue {
                Some(q) => q.closed().await,
                None => std::future::pending().await,
            }
        };
        let far = Instant::now() + Duration::from_secs(3600);
        // Biased: the dead-man first; then telemetry (ten times a second,
        // so a busy channel cannot starve it); then client events, in the
        // order each client sent them; the closed-queue backstop last, so
        // a driver's last commands before it left are not overtaken.
        tokio::select! {
            biased;
            () = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                let now = Instant::now();
                let effects = ctl.tick(now);
                apply(&mut ctl, &mut hub, effects, None, now);
            }
            _ = telemetry.tick() => {
                if !hub.output.is_alive() {
                    // It failed (and left its pins low on the way out):
                    // driving on without an output would be a lie.
                    tracing::error!("the output thread stopped: shutting down");
                    break;
                }
                let now = Instant::now();
                // Deadlines first, so telemetry never shows stale outputs.
                let effects = ctl.tick(now);
                apply(&mut ctl, &mut hub, effects, None, now);
                // Sweep viewers whose connection ended without a Leave (the
                // driver's is watched below, after its last events).
                let driver = ctl.driver();
                let closed: Vec<ClientId> = hub
                    .clients
                    .iter()
                    .filter(|(id, q)| q.is_closed() && Some(**id) != driver)
                    .map(|(id, _)| *id)
                    .collect();
                for id in closed {
                    hub.clients.remove(&id);
                    let effects = ctl.disconnect(id, false);
                    apply(&mut ctl, &mut hub, effects, None, now);
                }
                let gone = send_telemetry(&ctl, &mut hub, now);
                for g in gone {
                    hub.clients.remove(&g.id);
                    let effects = ctl.disconnect(g.id, g.stalled);
                    apply(&mut ctl, &mut hub, effects, None, now);
                }
            }
            event = events.recv() => {
                let now = Instant::now();
                match event {
                    None | Some(Event::Shutdown) => break,
                    Some(Event::Join { id, token, queue }) => {
                        let hello = protocol::hello(id, ctl.settings(), &ctl.status());
                        if queue.try_send(Outbound::Text(Prepared::new(Message::text(hello)))).is_ok() {
                            hub.clients.insert(id, queue);
                            let effects = ctl.connect(id, token.as_deref());
                            apply(&mut ctl, &mut hub, effects, None, now);
                        }
                    }
                    Some(Event::Leave { id }) => {
                        hub.clients.remove(&id);
                        let effects = ctl.disconnect(id, false);
                        apply(&mut ctl, &mut hub, effects, None, now);
                    }
                    Some(Event::Command { id, command, arrived }) => {
                        let effects = ctl.command(id, now, &command);
                        apply(&mut ctl, &mut hub, effects, Some(arrived), now);
                    }
                    Some(Event::Auth { id, token }) => {
                        let effects = ctl.auth(id, &token);
                        apply(&mut ctl, &mut hub, effects, None, now);
                    }
                    Some(Event::Release { id }) => {
                        let effects = ctl.release(id);
                        apply(&mut ctl, &mut hub, effects, None, now);
                    }
                }
            }
            () = driver_gone => {
                if let Some(id) = ctl.driver() {
                    hub.clients.remove(&id);
                    let effects = ctl.disconnect(id, false);
                    apply(&mut ctl, &mut hub, effects, None, Instant::now());
                }
            }
        }
    }
    let now = Instant::now();
    let effects = ctl.shutdown();
    apply(&mut ctl, &mut hub, effects, None, now);
    for id in ctl.client_ids() {
        let _ = hub.send(
            id,
            Outbound::Close(CloseCode::GOING_AWAY, "server shutting down"),
        );
    }
    let output = hub.output;
    let finished = tokio::task::spawn_blocking(move || output.finish(OUTPUT_FINISH)).await;
    if !matches!(finished, Ok(true)) {
        tracing::warn!("the output did not finish writing in time");
    }
    if let Some(report) = latency.and_then(|l| l.report()) {
        tracing::info!("gamepad latency (command arrival to output written): {report}");
    }
}

/// Handles one request on a gamepad path: a WebSocket upgrade joins the
/// robot, a plain request gets the page.
pub(crate) async fn handle(
    mut hs: Handshake<Stream>,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
    gamepad: Gamepad,
) {
    if !hs.request().is_upgrade() {
        pages::respond_page(hs, peer, pages::gamepad()).await;
        return;
    }
    // The driving token the URL offers: `?drive_token=`, or `?token=` when
    // that is not the server's connection token (checked by the listener).
    let request = hs.request();
    let token = request
        .query_param("drive_token")
        .or_else(|| {
            (!gamepad.connection_token)
                .then(|| request.query_param("token"))
                .flatten()
        })
        .and_then(protocol::percent_decode);
    let path = hs.request().path().to_owned();
    {
        let config = hs.config_mut();
        config.limits.max_message_size = protocol::MAX_MESSAGE;
        config.limits.max_frame_size = protocol::MAX_MESSAGE;
        config.write_high_water_mark = HIGH_WATER_MARK;
    }
    let mut ws = match hs.accept().await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::info!(peer = %display_addr(peer), error = %e, "handshake refused");
            return;
        }
    };
    let id = gamepad.next_id.fetch_add(1, Ordering::Relaxed);
    let (queue, mut outbound) = mpsc::channel(CLIENT_QUEUE);
    tracing::info!(peer = %display_addr(peer), %path, client = id, "open");
    let joined = gamepad
        .events
        .send(Event::Join { id, token, queue })
        .await
        .is_ok();
    let ending = if joined {
        session(&mut ws, id, &mut outbound, &gamepad.events, shutdown, peer).await
    } else {
        Ending::Close(CloseCode::GOING_AWAY, "robot offline")
    };
    // Off the robot first (a driver stops now), then the closing
    // handshake, which may take up to the close timeout. The controller
    // also sees the queue close; the Leave makes it certain.
    drop(outbound);
    let _ = gamepad.events.send(Event::Leave { id }).await;
    let code = match ending {
        Ending::Ended(code) => code,
        Ending::Close(code, reason) => {
            let _ = ws.close(code, reason).await;
            code
        }
    };
    while ws.recv().await.is_some() {}
    tracing::info!(peer = %display_addr(peer), client = id, close = %code, "closed");
}

/// How a session ended.
enum Ending {
    /// The connection is over (the peer closed, or it failed).
    Ended(CloseCode),
    /// Close it with this code and reason.
    Close(CloseCode, &'static str),
}

/// A token bucket: `rate` messages a second, bursts of `burst`.
struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    /// `RATE` messages a second, bursts of `BURST`: every message.
    fn new(now: Instant) -> RateLimit {
        RateLimit::with(RATE, BURST, now)
    }

    /// `AUTH_RATE` a second, bursts of `AUTH_BURST`: auth messages.
    fn auth(now: Instant) -> RateLimit {
        RateLimit::with(AUTH_RATE, AUTH_BURST, now)
    }

    fn with(rate: f64, burst: f64, now: Instant) -> RateLimit {
        RateLimit {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Logs ignored messages: the first few, then one in a hundred.
struct Complaints {
    count: u64,
    last_reply: Option<Instant>,
}

impl Complaints {
    fn log(&mut self, peer: SocketAddr, id: ClientId, why: &str) {
        self.count += 1;
        if self.count <= 5 || self.count % 100 == 0 {
            tracing::warn!(peer = %display_addr(peer), client = id, ignored = self.count, "message ignored: {why}");
        }
    }

    /// Whether to answer this one (at most 10 a second).
    fn reply_due(&mut self, now: Instant) -> bool {
        let due = self
            .last_reply
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_millis(100));
        if due {
            self.last_reply = Some(now);
        }
        due
    }
}

enum Step {
    Shutdown,
    Out(Option<Outbound>),
    Io(Io),
}

/// Runs one client until its connection ends; returns the close code.
async fn session(
    ws: &mut WebSocket<Stream>,
    id: ClientId,
    outbound: &mut mpsc::Receiver<Outbound>,
    events: &mpsc::Sender<Event>,
    mut shutdown: watch::Receiver<bool>,
    peer: SocketAddr,
) -> Ending {
    let mut limit = RateLimit::new(Instant::now());
    let mut auth_limit = RateLimit::auth(Instant::now());
    let mut complaints = Complaints {
        count: 0,
        last_reply: None,
    };
    loop {
        let backed_up = ws.buffered_amount() >= HIGH_WATER_MARK;
        let step = tokio::select! {
            _ = shutdown.changed() => Step::Shutdown,
            out = outbound.recv(), if !backed_up => Step::Out(out),
            io = net::io(ws, backed_up) => Step::Io(io),
        };
        let msg = match step {
            Step::Shutdown => {
                return Ending::Close(CloseCode::GOING_AWAY, "server shutting down");
            }
            Step::Out(Some(Outbound::Text(p))) => {
                if ws.queue_prepared(&p).is_err() {
                    return Ending::Ended(CloseCode::ABNORMAL);
                }
                while ws.buffered_amount() < HIGH_WATER_MARK {
                    match outbound.try_recv() {
                        Ok(Outbound::Text(p)) => {
                            if ws.queue_prepared(&p).is_err() {
                                return Ending::Ended(CloseCode::ABNORMAL);
                            }
                        }
                        Ok(Outbound::Close(code, reason)) => return Ending::Close(code, reason),
                        Err(_) => break,
                    }
                }
                continue;
            }
            Step::Out(Some(Outbound::Close(code, reason))) => return Ending::Close(code, reason),
            Step::Out(None) => {
                // Dropped by the controller (too slow, or it stopped).
                return Ending::Close(CloseCode::POLICY_VIOLATION, "too slow: fell behind");
            }
            Step::Io(Io::Flushed(Ok(()))) => continue,
            Step::Io(Io::Flushed(Err(_)) | Io::Received(None)) => {
                return Ending::Ended(CloseCode::ABNORMAL);
            }
            Step::Io(Io::Received(Some(Err(e)))) => {
                tracing::debug!(peer = %display_addr(peer), client = id, error = %e, "connection failed");
                return Ending::Ended(e.close_code().unwrap_or(CloseCode::ABNORMAL));
            }
            Step::Io(Io::Received(Some(Ok(msg)))) => msg,
        };
        let arrived = std::time::Instant::now();
        let now = Instant::from_std(arrived);
        let text = match msg {
            Message::Text(text) => text,
            Message::Binary(data) => {
                let why = format!(
                    "binary message ({} bytes): the gamepad protocol is text",
                    data.len()
                );
                complaints.log(peer, id, &why);
                if complaints.reply_due(now) && !backed_up {
                    let _ = ws.queue(protocol::error("bad_message", &why));
                }
                continue;
            }
            Message::Close(frame) => {
                return Ending::Ended(frame.map_or(CloseCode::NO_STATUS, |f| f.code));
            }
            _ => continue,
        };
        if !limit.allow(now) {
            complaints.log(peer, id, "too many messages");
            if complaints.reply_due(now) {
                let _ = ws.queue(protocol::error(
                    "rate_limited",
                    "too many messages: at most 200 a second",
                ));
            }
            continue;
        }
        let event = match protocol::parse(text.as_str()) {
            Ok(Inbound::Pad(command)) => Event::Command {
                id,
                command,
                arrived,
            },
            Ok(Inbound::Auth(token)) => {
                if !auth_limit.allow(now) {
                    complaints.log(peer, id, "too many auth messages");
                    if complaints.reply_due(now) {
                        let _ = ws.queue(protocol::error(
                            "rate_limited",
                            "too many auth messages: at most 10 every 2 seconds",
                        ));
                    }
                    continue;
                }
                Event::Auth { id, token }
            }
            Ok(Inbound::Release) => Event::Release { id },
            Ok(Inbound::Ping(n)) => {
                let _ = ws.queue(protocol::pong(n));
                continue;
            }
            Err(why) => {
                complaints.log(peer, id, &why);
                if complaints.reply_due(now) {
                    let _ = ws.queue(protocol::error("bad_message", &why));
                }
                continue;
            }
        };
        if events.send(event).await.is_err() {
            return Ending::Close(CloseCode::GOING_AWAY, "robot offline");
        }
    }
}

/// `ferrows serve gamepad`: the page on every path, the robot's WebSocket
/// on every path.
pub(crate) async fn serve(args: ServeGamepadArgs) -> anyhow::Result<ExitCode> {
    let config = Config::default()
        .max_message_size(protocol::MAX_MESSAGE)
        .max_frame_size(protocol::MAX_MESSAGE);
    let opts = crate::net_options(&args.common, config)?;
    // The output first: a bad GPIO setup fails before anyone can connect.
    let (gamepad, mut running) = start(&args.gamepad, opts.access.token.is_some())?;
    if let Some(exporter) = opts.exporter() {
        exporter.set_gamepad();
    }
    let listener = net::bind(args.bind, args.port)?;
    let local = listener.local_addr().context("local address")?;
    tracing::info!("listening on {}", display_addr(local));
    let served = tokio::select! {
        served = net::run(listener, opts, move |hs, peer, shutdown| {
            handle(hs, peer, shutdown, gamepad.clone())
        }) => served,
        e = running.failed() => Err(e),
    };
    running.finish().await;
    served.map(|()| ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_values() {
        assert_eq!(parse_deadzone("0.1"), Ok(0.1));
        assert_eq!(parse_deadzone("0"), Ok(0.0));
        assert!(parse_deadzone("0.95").is_err());
        assert!(parse_deadzone("-0.1").is_err());
        assert!(parse_deadzone("NaN").is_err());
        assert_eq!(parse_max_speed("1"), Ok(1.0));
        assert!(parse_max_speed("0").is_err());
        assert!(parse_max_speed("1.5").is_err());
        assert!(parse_max_speed("inf").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_allows_bursts_then_the_rate() {
        let mut limit = RateLimit::new(Instant::now());
        let burst = (0..1000).filter(|_| limit.allow(Instant::now())).count();
        assert_eq!(burst, BURST as usize);
        tokio::time::advance(Duration::from_secs(1)).await;
        let next = (0..1000).filter(|_| limit.allow(Instant::now())).count();
        assert_eq!(next, BURST.min(RATE) as usize);
    }

    #[test]
    fn a_full_queue_drops_a_viewer_but_not_the_driver_on_a_broadcast() {
        let mut clients = HashMap::new();
        let mut receivers = Vec::new();
        for id in 1..=3 {
            let (tx, rx) = mpsc::channel(1);
            clients.insert(id, tx);
            receivers.push(rx);
        }
        // Clients 1 (the driver) and 2 are a message behind; 3 is not.
        for id in [1, 2] {
            assert!(send_to(&clients, id, Outbound::Close(CloseCode::NORMAL, "")).is_ok());
        }
        let gone = broadcast_to(&clients, "telemetry".to_owned(), Some(1));
        let gone: Vec<(ClientId, bool)> = gone.iter().map(|g| (g.id, g.stalled)).collect();
        assert_eq!(gone, [(2, true)]);
        // Its own answers still count: a driver that does not read them goes.
        let own = send_to(&clients, 1, Outbound::Close(CloseCode::NORMAL, ""));
        assert!(matches!(
            own,
            Err(ClientGone {
                id: 1,
                stalled: true
            })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn auth_is_limited_to_ten_in_two_seconds() {
        let mut limit = RateLimit::auth(Instant::now());
        let mut allowed = 0;
        // 100 attempts a second for 2 s.
        for _ in 0..200 {
            allowed += usize::from(limit.allow(Instant::now()));
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert!((9..=10).contains(&allowed), "{allowed} auth answers in 2 s");
    }
}
