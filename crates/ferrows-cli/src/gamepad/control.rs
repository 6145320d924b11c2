//! The robot's safety logic, with no I/O: who drives (the lease), the
//! dead-man timer, sequence ordering, and the mapping from stick and
//! buttons to motor speeds and digital outputs.
//!
//! Every method takes the current time, so the timing rules are tested
//! with tokio's paused clock; the server's controller task calls
//! [`Controller::tick`] at [`Controller::next_deadline`], independently of
//! any client, so a silent page cannot keep the motors running.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

/// A connection's id, unique for the server's life.
pub(crate) type ClientId = u64;

/// The most digital outputs (buttons) a server drives.
pub(crate) const MAX_BUTTONS: u32 = 64;

/// At most one refusal message per client this often: a page that keeps
/// sending while it is a viewer is told, not flooded.
const REFUSAL_INTERVAL: Duration = Duration::from_secs(1);

/// Wrong tokens a client may send before it is disconnected.
pub(crate) const MAX_BAD_TOKENS: u32 = 3;

/// Motor speeds and digital outputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Outputs {
    /// Left motor speed, −max-speed..max-speed (positive: forward).
    pub(crate) left: f64,
    /// Right motor speed.
    pub(crate) right: f64,
    /// Digital output i is bit i.
    pub(crate) buttons: u64,
}

impl Outputs {
    /// Motors stopped, every digital output off.
    pub(crate) const SAFE: Outputs = Outputs {
        left: 0.0,
        right: 0.0,
        buttons: 0,
    };

    /// Whether these are the safe state.
    pub(crate) fn is_safe(&self) -> bool {
        *self == Outputs::SAFE
    }
}

/// Why the outputs changed (the `reason` of a jsonl line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The driver's command.
    Command,
    /// No fresh command within the dead-man time.
    Deadman,
    /// The driver disconnected (or its connection stalled).
    Disconnect,
    /// The driver released control, or its lease expired.
    Release,
    /// The server is shutting down.
    Shutdown,
}

impl Reason {
    /// The name on the wire and in jsonl.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Command => "command",
            Reason::Deadman => "deadman",
            Reason::Disconnect => "disconnect",
            Reason::Release => "release",
            Reason::Shutdown => "shutdown",
        }
    }
}

/// Why the robot was stopped, in more detail than [`Reason`]: what every
/// client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopCause {
    /// No fresh command from the driver within the dead-man time.
    Deadman,
    /// The driver's connection closed.
    Disconnect,
    /// The driver's connection could not keep up (its queue overflowed).
    Stalled,
    /// The driver sent `release`.
    Release,
    /// The driver sent no command for the lease timeout.
    LeaseExpired,
    /// The server is shutting down.
    Shutdown,
}

impl StopCause {
    /// The jsonl reason of the stop.
    pub(crate) fn reason(self) -> Reason {
        match self {
            StopCause::Deadman => Reason::Deadman,
            StopCause::Disconnect | StopCause::Stalled => Reason::Disconnect,
            StopCause::Release | StopCause::LeaseExpired => Reason::Release,
            StopCause::Shutdown => Reason::Shutdown,
        }
    }

    /// The name on the wire.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StopCause::Deadman => "deadman",
            StopCause::Disconnect => "disconnect",
            StopCause::Stalled => "stalled",
            StopCause::Release => "release",
            StopCause::LeaseExpired => "lease_expired",
            StopCause::Shutdown => "shutdown",
        }
    }

    /// What the page shows.
    pub(crate) fn text(self) -> &'static str {
        match self {
            StopCause::Deadman => "STOPPED: link lost (no command from the driver in time)",
            StopCause::Disconnect => "STOPPED: the driver disconnected",
            StopCause::Stalled => "STOPPED: the driver's connection stalled",
            StopCause::Release => "STOPPED: the driver released control",
            StopCause::LeaseExpired => "STOPPED: the driver's lease expired (no commands)",
            StopCause::Shutdown => "STOPPED: the server is shutting down",
        }
    }
}

/// A client's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Its commands drive the robot.
    Driver,
    /// It sees telemetry; its commands are refused.
    Viewer,
}

impl Role {
    /// The name on the wire.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Driver => "driver",
            Role::Viewer => "viewer",
        }
    }
}

/// Why a client's role changed or was confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RoleWhy {
    /// Its command took the free lease.
    Claimed,
    /// It released control.
    Released,
    /// Its lease expired.
    LeaseExpired,
    /// Its token was accepted.
    Authorized,
}

impl RoleWhy {
    /// The name on the wire.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RoleWhy::Claimed => "claimed",
            RoleWhy::Released => "released",
            RoleWhy::LeaseExpired => "lease_expired",
            RoleWhy::Authorized => "authorized",
        }
    }
}

/// Why a command or request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Another client holds the lease.
    NotDriver {
        /// The driver.
        driver: ClientId,
    },
    /// `--token` is set and this client has not sent it.
    TokenRequired,
    /// The token sent is wrong.
    BadToken,
    /// `release` from a client that is not driving.
    NotDriving,
}

impl Refusal {
    /// The error code on the wire.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Refusal::NotDriver { .. } => "not_driver",
            Refusal::TokenRequired => "token_required",
            Refusal::BadToken => "bad_token",
            Refusal::NotDriving => "not_driving",
        }
    }

    /// What the page shows.
    pub(crate) fn text(self) -> String {
        match self {
            Refusal::NotDriver { driver } => {
                format!("another driver has control (client {driver}); you are a viewer")
            }
            Refusal::TokenRequired => {
                "driving requires the driving token (?drive_token=… or an auth message)".to_owned()
            }
            Refusal::BadToken => "wrong token".to_owned(),
            Refusal::NotDriving => "you are not driving".to_owned(),
        }
    }
}

/// What the server must do after a controller step, in order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Effect {
    /// The outputs changed: apply and record them.
    Output {
        /// The new outputs.
        outputs: Outputs,
        /// Why.
        reason: Reason,
    },
    /// Tell every client the robot was stopped, and why.
    Stopped(StopCause),
    /// Tell `id` its role.
    Role {
        /// The client.
        id: ClientId,
        /// Its role now.
        role: Role,
        /// Why it is told.
        why: RoleWhy,
    },
    /// Tell `id` its message was refused.
    Refused {
        /// The client.
        id: ClientId,
        /// Why.
        why: Refusal,
    },
    /// Close `id` (too many wrong tokens).
    Disconnect {
        /// The client.
        id: ClientId,
    },
}

/// The controller's settings (the command-line flags).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Stick deflection below this (per axis) counts as centred; 0..1.
    pub(crate) deadzone: f64,
    /// Full stick: this speed; 0 < max_speed ≤ 1.
    pub(crate) max_speed: f64,
    /// No fresh command for this long: stop.
    pub(crate) deadman: Duration,
    /// No command from the driver for this long: it loses control.
    pub(crate) lease_timeout: Duration,
    /// How many digital outputs (buttons 0..n).
    pub(crate) buttons: u32,
    /// Driving requires this token, if set.
    pub(crate) token: Option<String>,
}

/// A driving command, from either wire format.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Command {
    /// Its sequence number; `None` for the legacy format (taken in
    /// arrival order).
    pub(crate) seq: Option<u64>,
    /// Axis 0: left (−1) to right (+1).
    pub(crate) x: f64,
    /// Axis 1: up (−1) to down (+1), as the Gamepad API reports it.
    pub(crate) y: f64,
    /// Button i pressed: bit i.
    pub(crate) buttons: u64,
}

/// Per-axis dead zone with rescaling: below `deadzone` is 0, and the rest
/// of the range maps linearly onto 0..1, so there is no jump at its edge.
pub(crate) fn apply_deadzone(value: f64, deadzone: f64) -> f64 {
    let v = if value.is_finite() {
        value.clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let dz = deadzone.clamp(0.0, 0.999);
    if v.abs() <= dz {
        return 0.0;
    }
    v.signum() * (v.abs() - dz) / (1.0 - dz)
}

/// Rounds to 1/1000, so that noise below that does not count as a change
/// and the numbers print short.
fn quantize(value: f64) -> f64 {
    let q = (value * 1000.0).round() / 1000.0;
    // No "-0" in the output.
    if q == 0.0 { 0.0 } else { q }
}

/// Differential drive ("arcade" mixing): stick up drives both motors
/// forward, stick sideways turns on the spot, and in between the outer
/// wheel is faster. Speeds are scaled down together when they would
/// exceed 1 (the turn rate is kept), then by `max_speed`.
pub(crate) fn mix(x: f64, y: f64, deadzone: f64, max_speed: f64) -> (f64, f64) {
    let turn = apply_deadzone(x, deadzone);
    // The Gamepad API's axis 1 is negative when the stick is pushed up.
    let throttle = -apply_deadzone(y, deadzone);
    let mut left = throttle + turn;
    let mut right = throttle - turn;
    let biggest = left.abs().max(right.abs());
    if biggest > 1.0 {
        left /= biggest;
        right /= biggest;
    }
    let max = if max_speed.is_finite() {
        max_speed.clamp(0.0, 1.0)
    } else {
        0.0
    };
    (quantize(left * max), quantize(right * max))
}

/// The mask of the first `count` buttons.
pub(crate) fn button_mask(count: u32) -> u64 {
    if count >= 64 {
        u64::MAX
    } else {
        (1u64 << count) - 1
    }
}

/// The outputs a command asks for.
pub(crate) fn map(command: &Command, settings: &Settings) -> Outputs {
    let (left, right) = mix(command.x, command.y, settings.deadzone, settings.max_speed);
    Outputs {
        left,
        right,
        buttons: command.buttons & button_mask(settings.buttons),
    }
}

/// Compares a token without leaking where it differs through timing.
pub(crate) fn token_matches(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(!x);
    }
    diff == 0
}

#[derive(Debug, Default)]
struct ClientState {
    authorized: bool,
    last_seq: Option<u64>,
    last_refusal: Option<Instant>,
    bad_tokens: u32,
}

#[derive(Debug)]
struct Driver {
    id: ClientId,
    /// The last fresh command.
    last_command: Instant,
    /// The dead-man stop for this silence was done.
    deadman_fired: bool,
}

/// What the controller reports about itself (for telemetry).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Status {
    /// The outputs now.
    pub(crate) outputs: Outputs,
    /// Who drives.
    pub(crate) driver: Option<ClientId>,
    /// Why the robot was last stopped, while no command has moved it since.
    pub(crate) stopped: Option<StopCause>,
    /// Connected clients.
    pub(crate) clients: usize,
}

/// The lease, the dead-man and the outputs. One per robot.
#[derive(Debug)]
pub(crate) struct Controller {
    settings: Settings,
    clients: BTreeMap<ClientId, ClientState>,
    driver: Option<Driver>,
    outputs: Outputs,
    stopped: Option<StopCause>,
}

impl Controller {
    /// A controller with the outputs in the safe state and no driver.
    pub(crate) fn new(settings: Settings) -> Controller {
        Controller {
            settings,
            clients: BTreeMap::new(),
            driver: None,
            outputs: Outputs::SAFE,
            stopped: None,
        }
    }

    /// The settings.
    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The outputs now.
    #[cfg(test)]
    fn outputs(&self) -> Outputs {
        self.outputs
    }

    /// Who drives.
    pub(crate) fn driver(&self) -> Option<ClientId> {
        self.driver.as_ref().map(|d| d.id)
    }

    /// For telemetry.
    pub(crate) fn status(&self) -> Status {
        Status {
            outputs: self.outputs,
            driver: self.driver(),
            stopped: self.stopped,
            clients: self.clients.len(),
        }
    }

    /// The ids of the connected clients.
    pub(crate) fn client_ids(&self) -> Vec<ClientId> {
        self.clients.keys().copied().collect()
    }

    /// When [`Controller::tick`] must run next: the dead-man or the lease
    /// deadline, whichever is first.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let d = self.driver.as_ref()?;
        let lease = d.last_command + self.settings.lease_timeout;
        if d.deadman_fired {
            Some(lease)
        } else {
            Some(lease.min(d.last_command + self.settings.deadman))
        }
    }

    /// A client connected (as a viewer); `token` is the one from its URL,
    /// if any.
    pub(crate) fn connect(&mut self, id: ClientId, token: Option<&str>) -> Vec<Effect> {
        let authorized = match (&self.settings.token, token) {
            (None, _) => true,
            (Some(expected), Some(given)) => token_matches(expected, given),
            (Some(_), None) => false,
        };
        let mut effects = Vec::new();
        let mut state = ClientState {
            authorized,
            ..ClientState::default()
        };
        if token.is_some() && !authorized {
            state.bad_tokens = 1;
            effects.push(Effect::Refused {
                id,
                why: Refusal::BadToken,
            });
        }
        // The hello message already says "viewer".
        self.clients.insert(id, state);
        effects
    }

    /// A client sent a token.
    pub(crate) fn auth(&mut self, id: ClientId, token: &str) -> Vec<Effect> {
        let Some(expected) = self.settings.token.clone() else {
            // No token needed: accept anything, say so.
            return self.role_of(id, RoleWhy::Authorized);
        };
        let Some(client) = self.clients.get_mut(&id) else {
            return Vec::new();
        };
        if token_matches(&expected, token) {
            client.authorized = true;
            client.bad_tokens = 0;
            return self.role_of(id, RoleWhy::Authorized);
        }
        client.bad_tokens = client.bad_tokens.saturating_add(1);
        if client.bad_tokens >= MAX_BAD_TOKENS {
            return vec![
                Effect::Refused {
                    id,
                    why: Refusal::BadToken,
                },
                Effect::Disconnect { id },
            ];
        }
        vec![Effect::Refused {
            id,
            why: Refusal::BadToken,
        }]
    }

    fn role_of(&self, id: ClientId, why: RoleWhy) -> Vec<Effect> {
        if !self.clients.contains_key(&id) {
            return Vec::new();
        }
        let role = if self.driver() == Some(id) {
            Role::Driver
        } else {
            Role::Viewer
        };
        vec![Effect::Role { id, role, why }]
    }

    /// A driving command from `id`, arrived at `now`.
    ///
    /// Out-of-order and duplicate `seq`s are ignored (no effect, and the
    /// dead-man is not refreshed). A command from a client while another
    /// drives is refused (at most one refusal per second); from an
    /// authorized client while no one drives, it takes the lease.
    pub(crate) fn command(&mut self, id: ClientId, now: Instant, cmd: &Command) -> Vec<Effect> {
        let mut effects = self.tick(now);
        let token_required = self.settings.token.is_some();
        let current = self.driver();
        let Some(client) = self.clients.get_mut(&id) else {
            return effects;
        };
        if let Some(seq) = cmd.seq {
            if client.last_seq.is_some_and(|last| seq <= last) {
                return effects;
            }
            client.last_seq = Some(seq);
        }
        let refusal = if token_required && !client.authorized {
            Some(Refusal::TokenRequired)
        } else {
            match current {
                Some(driver) if driver != id => Some(Refusal::NotDriver { driver }),
                _ => None,
            }
        };
        if let Some(why) = refusal {
            let due = client
                .last_refusal
                .is_none_or(|t| now.saturating_duration_since(t) >= REFUSAL_INTERVAL);
            if due {
                client.last_refusal = Some(now);
                effects.push(Effect::Refused { id, why });
            }
            return effects;
        }
        match &mut self.driver {
            Some(d) => {
                d.last_command = now;
                d.deadman_fired = false;
            }
            None => {
                self.driver = Some(Driver {
                    id,
                    last_command: now,
                    deadman_fired: false,
                });
                effects.push(Effect::Role {
                    id,
                    role: Role::Driver,
                    why: RoleWhy::Claimed,
                });
            }
        }
        let outputs = map(cmd, &self.settings);
        if outputs != self.outputs {
            self.outputs = outputs;
            self.stopped = None;
            effects.push(Effect::Output {
                outputs,
                reason: Reason::Command,
            });
        }
        effects
    }

    /// The driver gives up control; from anyone else it is refused.
    pub(crate) fn release(&mut self, id: ClientId) -> Vec<Effect> {
        if self.driver() != Some(id) {
            if self.clients.contains_key(&id) {
                return vec![Effect::Refused {
                    id,
                    why: Refusal::NotDriving,
                }];
            }
            return Vec::new();
        }
        self.driver = None;
        let mut effects = self.stop(StopCause::Release);
        effects.push(Effect::Role {
            id,
            role: Role::Viewer,
            why: RoleWhy::Released,
        });
        effects
    }

    /// A client's connection ended (or stalled: `stalled`).
    pub(crate) fn disconnect(&mut self, id: ClientId, stalled: bool) -> Vec<Effect> {
        self.clients.remove(&id);
        if self.driver() != Some(id) {
            return Vec::new();
        }
        self.driver = None;
        self.stop(if stalled {
            StopCause::Stalled
        } else {
            StopCause::Disconnect
        })
    }

    /// Enforces the dead-man and the lease at `now`.
    pub(crate) fn tick(&mut self, now: Instant) -> Vec<Effect> {
        let Some(d) = &mut self.driver else {
            return Vec::new();
        };
        let silent = now.saturating_duration_since(d.last_command);
        if silent >= self.settings.lease_timeout {
            let id = d.id;
            self.driver = None;
            let mut effects = self.stop(StopCause::LeaseExpired);
            effects.push(Effect::Role {
                id,
                role: Role::Viewer,
                why: RoleWhy::LeaseExpired,
            });
            return effects;
        }
        if silent >= self.settings.deadman && !d.deadman_fired {
            d.deadman_fired = true;
            crate::metrics::DEADMAN_TRIPS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return self.stop(StopCause::Deadman);
        }
        Vec::new()
    }

    /// The server is shutting down: safe state, everyone told.
    pub(crate) fn shutdown(&mut self) -> Vec<Effect> {
        self.driver = None;
        self.stop(StopCause::Shutdown)
    }

    /// Safe outputs (a line only if they were not), everyone told why.
    fn stop(&mut self, cause: StopCause) -> Vec<Effect> {
        let mut effects = Vec::new();
        if !self.outputs.is_safe() {
            self.outputs = Outputs::SAFE;
            effects.push(Effect::Output {
                outputs: Outputs::SAFE,
                reason: cause.reason(),
            });
        }
        self.stopped = Some(cause);
        effects.push(Effect::Stopped(cause));
        effects
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn settings() -> Settings {
        Settings {
            deadzone: 0.1,
            max_speed: 1.0,
            deadman: Duration::from_millis(500),
            lease_timeout: Duration::from_secs(5),
            buttons: 4,
            token: None,
        }
    }

    fn cmd(seq: u64, x: f64, y: f64, buttons: u64) -> Command {
        Command {
            seq: Some(seq),
            x,
            y,
            buttons,
        }
    }

    fn outputs_of(effects: &[Effect]) -> Vec<(Outputs, Reason)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Output { outputs, reason } => Some((*outputs, *reason)),
                _ => None,
            })
            .collect()
    }

    fn stops_of(effects: &[Effect]) -> Vec<StopCause> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Stopped(c) => Some(*c),
                _ => None,
            })
            .collect()
    }

    async fn advance(ms: u64) {
        tokio::time::advance(Duration::from_millis(ms)).await;
    }

    // ------------------------------------------------------------ mapping

    #[test]
    fn deadzone_is_zero_inside_and_continuous_outside() {
        assert_eq!(apply_deadzone(0.05, 0.1), 0.0);
        assert_eq!(apply_deadzone(-0.1, 0.1), 0.0);
        assert_eq!(apply_deadzone(1.0, 0.1), 1.0);
        assert_eq!(apply_deadzone(-1.0, 0.1), -1.0);
        // Just outside the edge: close to 0, no jump to 0.1.
        assert!(apply_deadzone(0.101, 0.1) < 0.002);
        assert!((apply_deadzone(0.55, 0.1) - 0.5).abs() < 1e-9);
        // Out of range and non-finite input is tamed.
        assert_eq!(apply_deadzone(7.0, 0.1), 1.0);
        assert_eq!(apply_deadzone(f64::NAN, 0.1), 0.0);
        assert_eq!(apply_deadzone(f64::INFINITY, 0.1), 0.0);
        assert_eq!(apply_deadzone(0.3, 0.0), 0.3);
    }

    #[test]
    fn differential_drive() {
        // Centred, and inside the dead zone: stopped.
        assert_eq!(mix(0.0, 0.0, 0.1, 1.0), (0.0, 0.0));
        assert_eq!(mix(0.09, -0.09, 0.1, 1.0), (0.0, 0.0));
        // Stick up (axis 1 negative): both forward.
        assert_eq!(mix(0.0, -1.0, 0.1, 1.0), (1.0, 1.0));
        // Down: both backward.
        assert_eq!(mix(0.0, 1.0, 0.1, 1.0), (-1.0, -1.0));
        // Right: spin clockwise, left wheel forward.
        assert_eq!(mix(1.0, 0.0, 0.1, 1.0), (1.0, -1.0));
        assert_eq!(mix(-1.0, 0.0, 0.1, 1.0), (-1.0, 1.0));
        // Up and right: left at full, right stopped (scaled, ratio kept).
        assert_eq!(mix(1.0, -1.0, 0.1, 1.0), (1.0, 0.0));
        // Half up, with max speed 0.5.
        assert_eq!(mix(0.0, -0.55, 0.1, 0.5), (0.25, 0.25));
        // Max speed caps everything.
        let (l, r) = mix(0.3, -1.0, 0.0, 0.4);
        assert!(l.abs() <= 0.4 && r.abs() <= 0.4, "{l} {r}");
        assert!(l > r);
        // No negative zero.
        let (l, r) = mix(0.0, 0.0, 0.1, 1.0);
        assert!(l.is_sign_positive() && r.is_sign_positive());
    }

    #[test]
    fn mixing_stays_in_range_for_any_input() {
        let values = [-5.0, -1.0, -0.7, -0.1, 0.0, 0.05, 0.33, 1.0, 3.0, f64::NAN];
        for x in values {
            for y in values {
                for max in [0.1, 0.5, 1.0] {
                    let (l, r) = mix(x, y, 0.1, max);
                    assert!(l.abs() <= max + 1e-9 && r.abs() <= max + 1e-9);
                    assert!(l.is_finite() && r.is_finite());
                }
            }
        }
    }

    #[test]
    fn buttons_map_to_outputs_by_index_and_extra_ones_are_dropped() {
        let s = settings();
        let out = map(&cmd(1, 0.0, 0.0, 0b1_0101), &s);
        assert_eq!(out.buttons, 0b0101, "button 4 is beyond --buttons 4");
        assert_eq!(button_mask(0), 0);
        assert_eq!(button_mask(3), 0b111);
        assert_eq!(button_mask(64), u64::MAX);
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cret", "s3cre"));
        assert!(!token_matches("s3cret", "s3cret!"));
        assert!(!token_matches("s3cret", "S3cret"));
        assert!(!token_matches("s3cret", ""));
        assert!(token_matches("", ""));
    }

    // ------------------------------------------------------------ lease

    #[tokio::test(start_paused = true)]
    async fn first_command_drives_and_others_are_viewers() {
        let mut c = Controller::new(settings());
        assert!(c.connect(1, None).is_empty());
        c.connect(2, None);
        let now = Instant::now();
        let e = c.command(1, now, &cmd(1, 0.0, -1.0, 1));
        assert!(e.contains(&Effect::Role {
            id: 1,
            role: Role::Driver,
            why: RoleWhy::Claimed
        }));
        assert_eq!(
            outputs_of(&e),
            vec![(
                Outputs {
                    left: 1.0,
                    right: 1.0,
                    buttons: 1
                },
                Reason::Command
            )]
        );
        assert_eq!(c.driver(), Some(1));
        // The viewer is refused and changes nothing.
        let e = c.command(2, now, &cmd(1, 1.0, 0.0, 0));
        assert_eq!(
            e,
            vec![Effect::Refused {
                id: 2,
                why: Refusal::NotDriver { driver: 1 }
            }]
        );
        assert_eq!(c.outputs().left, 1.0);
        // Told at most once a second.
        advance(100).await;
        assert!(
            c.command(2, Instant::now(), &cmd(2, 1.0, 0.0, 0))
                .is_empty()
        );
        advance(1000).await;
        let e = c.command(2, Instant::now(), &cmd(3, 1.0, 0.0, 0));
        let refusals = e
            .iter()
            .filter(|e| matches!(e, Effect::Refused { id: 2, .. }))
            .count();
        assert_eq!(refusals, 1, "{e:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn release_frees_the_lease_for_the_next_client() {
        let mut c = Controller::new(settings());
        c.connect(1, None);
        c.connect(2, None);
        c.command(1, Instant::now(), &cmd(1, 0.0, -0.5, 0));
        // A viewer cannot release.
        assert_eq!(
            c.release(2),
            vec![Effect::Refused {
                id: 2,
                why: Refusal::NotDriving
            }]
        );
        let e = c.release(1);
        assert_eq!(outputs_of(&e), vec![(Outputs::SAFE, Reason::Release)]);
        assert_eq!(stops_of(&e), vec![StopCause::Release]);
        assert!(e.contains(&Effect::Role {
            id: 1,
            role: Role::Viewer,
            why: RoleWhy::Released
        }));
        assert_eq!(c.driver(), None);
        let e = c.command(2, Instant::now(), &cmd(1, 0.0, -1.0, 0));
        assert_eq!(c.driver(), Some(2));
        assert_eq!(outputs_of(&e).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn driver_disconnect_stops_at_once_and_frees_the_lease() {
        let mut c = Controller::new(settings());
        c.connect(1, None);
        c.connect(2, None);
        c.command(1, Instant::now(), &cmd(1, 0.5, -0.5, 0b11));
        // A viewer leaving changes nothing.
        assert!(c.disconnect(2, false).is_empty());
        c.connect(3, None);
        let e = c.disconnect(1, false);
        assert_eq!(outputs_of(&e), vec![(Outputs::SAFE, Reason::Disconnect)]);
        assert_eq!(stops_of(&e), vec![StopCause::Disconnect]);
        assert_eq!(c.driver(), None);
        assert_eq!(c.next_deadline(), None, "no timer without a driver");
        // A stalled driver: same, with its own cause.
        c.command(3, Instant::now(), &cmd(1, 0.0, -1.0, 0));
        let e = c.disconnect(3, true);
        assert_eq!(outputs_of(&e), vec![(Outputs::SAFE, Reason::Disconnect)]);
        assert_eq!(stops_of(&e), vec![StopCause::Stalled]);
    }

    #[tokio::test(start_paused = true)]
    async fn lease_expires_after_the_timeout_without_commands() {
        let mut c = Controller::new(settings());
        c.connect(1, None);
        c.connect(2, None);
        c.command(1, Instant::now(), &cmd(1, 0.0, 0.0, 0));
        assert_eq!(c.driver(), Some(1));
        advance(4_999).await;
        // (The dead-man fired on the way but the outputs were safe.)
        let e = c.tick(Instant::now());
        assert_eq!(stops_of(&e), vec![StopCause::Deadman]);
        assert!(outputs_of(&e).is_empty(), "no change: no line");
        assert_eq!(c.driver(), Some(1));
        advance(1).await;
        let e = c.tick(Instant::now());
        assert_eq!(stops_of(&e), vec![StopCause::LeaseExpired]);
        assert!(e.contains(&Effect::Role {
            id: 1,
            role: Role::Viewer,
            why: RoleWhy::LeaseExpired
        }));
        assert_eq!(c.driver(), None);
        // Now the other client may drive.
        c.command(2, Instant::now(), &cmd(1, 0.0, -1.0, 0));
        assert_eq!(c.driver(), Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn lease_shorter_than_the_deadman_stops_with_release() {
        let mut s = settings();
        s.lease_timeout = Duration::from_millis(300);
        let mut c = Controller::new(s);
        c.connect(1, None);
        c.command(1, Instant::now(), &cmd(1, 0.0, -1.0, 0));
        assert_eq!(
            c.next_deadline(),
            Some(Instant::now() + Duration::from_millis(300))
        );
        advance(300).await;
        let e = c.tick(Instant::now());
        assert_eq!(outputs_of(&e), vec![(Outputs::SAFE, Reason::Release)]);
        assert_eq!(stops_of(&e), vec![StopCause::LeaseExpired]);
    }

    // ------------------------------------------------------------ token

    #[tokio::test(start_paused = true)]
    async fn token_gates_driving() {
        let mut s = settings();
        s.token = Some("abc".to_owned());
        let mut c = Controller::new(s);
        c.connect(1, None);
        c.connect(2, Some("abc"));
        let e = c.connect(3, Some("nope"));
        assert_eq!(
            e,
            vec![Effect::Refused {
                id: 3,
                why: Refusal::BadToken
            }]
        );
        let now = Instant::now();
        assert_eq!(
            c.command(1, now, &cmd(1, 0.0, -1.0, 0)),
            vec![Effect::Refused {
                id: 1,
                why: Refusal::TokenRequired
            }]
        );
        assert_eq!(c.driver(), None);
        assert!(c.outputs().is_safe());
        // An auth message works like the URL token.
        assert_eq!(
            c.auth(1, "wrong"),
            vec![Effect::Refused {
                id: 1,
                why: Refusal::BadToken
            }]
        );
        assert_eq!(
            c.auth(1, "abc"),
            vec![Effect::Role {
                id: 1,
                role: Role::Viewer,
                why: RoleWhy::Authorized
            }]
        );
        c.command(1, now, &cmd(2, 0.0, -1.0, 0));
        assert_eq!(c.driver(), Some(1));
        // The URL-authorized client is a viewer while 1 drives.
        assert!(matches!(
            c.command(2, now, &cmd(1, 0.0, -1.0, 0)).as_slice(),
            [Effect::Refused {
                why: Refusal::NotDriver { driver: 1 },
                ..
            }]
        ));
        // Guessing is cut off.
        c.auth(3, "x");
        let e = c.auth(3, "y");
        assert!(e.contains(&Effect::Disconnect { id: 3 }));
    }

    // ------------------------------------------------------------ dead-man

    #[tokio::test(start_paused = true)]
    async fn deadman_stops_exactly_at_the_deadline_and_driving_resumes() {
        let mut c = Controller::new(settings());
        c.connect(1, None);
        c.connect(2, None);
        let start = Instant::now();
        c.command(1, start, &cmd(1, 0.0, -1.0, 0b1));
        assert_eq!(c.next_deadline(), Some(start + Duration::from_millis(500)));
        advance(499).await;
        assert!(c.tick(Instant::now()).is_empty(), "not before 500 ms");
        advance(1).await;
        let e = c.tick(Instant::now());
        assert_eq!(outputs_of(&e), vec![(Outputs::SAFE, Reason::Deadman)]);
        assert_eq!(stops_of(&e), vec![StopCause::Deadman]);
        assert_eq!(c.status().stopped, Some(StopCause::Deadman));
        // Once per silence.
        advance(100).await;
        assert!(c.tick(Instant::now()).is_empty());
        // The driver keeps its lease: the next command drives again.
        assert_eq!(c.driver(), Some(1));
        let e = c.command(1, Instant::now(), &cmd(2, 0.0, -1.0, 0));
        assert_eq!(
            outputs_of(&e),
            vec![(
                Outputs {
                    left: 1.0,
                    right: 1.0,
                    buttons: 0
                },
                Reason::Command
            )]
        );
        assert_eq!(c.status().stopped, None);
    }

    #[tokio::test(start_paused = true)]
    async fn fresh_commands_keep_the_deadman_away() {
        let mut c = Controller::new(settings());
        c.connect(1, None);
        c.command(1, Instant::now(), &cmd(1, 0.0, -1.0, 0));
        // 100 ms keep-alives (the same stick) for 3 s: no stop, no line.
        for seq in 2..32 {
            advance(100).await;
            let e = c.command(1, Instant::now(), &cmd(seq, 0.0, -1.0, 0));
            assert!(e.is_empty(), "seq {seq}: {e:?}");
        }
        assert_eq!(c.outputs().left, 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn duplicate_and_old_seqs_are_ignored_and_do_not_feed_the_deadman() {
        let mut c = Controller::new(settings());
        c.connect(1, None);
        c.command(1, Instant::now(), &cmd(10, 0.0, -1.0, 0));
        advance(300).await;
        // A replay of seq 10 and an older seq 9 with other values: ignored.
        assert!(
            c.command(1, Instant::now(), &cmd(10, 1.0, 0.0, 0))
                .is_empty()
        );
        assert!(
            c.command(1, Instant::now(), &cmd(9, -1.0, 0.0, 1))
                .is_empty()
        );
        assert_eq!(c.outputs().left, 1.0);
        assert_eq!(c.outputs().right, 1.0);
        // They did not refresh the dead-man: it fires 500 ms after seq 10.
        advance(200).await;
        let e = c.tick(Instant::now());
        assert_eq!(outputs_of(&e), vec![(Outputs::SAFE, Reason::Deadman)]);
        // Seq 11 is fresh. Legacy commands (no seq) always are.
        let e = c.command(1, Instant::now(), &cmd(11, 1.0, 0.0, 0));
        assert_eq!(outputs_of(&e).len(), 1);
        let legacy = Command {
            seq: None,
            x: 0.0,
            y: 0.0,
            buttons: 0,
        };
        let e = c.command(1, Instant::now(), &legacy);
        assert_eq!(outputs_of(&e), vec![(Outputs::SAFE, Reason::Command)]);
        // Sequences are per client: a new driver starts its own.
        c.connect(2, None);
        c.release(1);
        let e = c.command(2, Instant::now(), &cmd(1, 0.0, -1.0, 0));
        assert_eq!(outputs_of(&e).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_tick_still_stops_and_a_command_checks_deadlines_first() {
        let mut c = Controller::new(settings());
        c.connect(1, None);
        c.connect(2, None);
        c.command(1, Instant::now(), &cmd(1, 0.0, -1.0, 0));
        // The lease expired long ago; a viewer's command first expires it,
        // then takes the lease.
        advance(6_000).await;
        let e = c.command(2, Instant::now(), &cmd(1, 0.0, -0.5, 0));
        assert_eq!(
            outputs_of(&e),
            vec![
                (Outputs::SAFE, Reason::Release),
                (
                    Outputs {
                        left: 0.444,
                        right: 0.444,
                        buttons: 0
                    },
                    Reason::Command
                )
            ]
        );
        assert_eq!(c.driver(), Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_goes_safe() {
        let mut c = Controller::new(settings());
        c.connect(1, None);
        c.command(1, Instant::now(), &cmd(1, 0.2, -1.0, 0b10));
        let e = c.shutdown();
        assert_eq!(outputs_of(&e), vec![(Outputs::SAFE, Reason::Shutdown)]);
        assert_eq!(stops_of(&e), vec![StopCause::Shutdown]);
        assert_eq!(c.driver(), None);
        // Already safe: told, but no line.
        let e = c.shutdown();
        assert!(outputs_of(&e).is_empty());
    }
}
