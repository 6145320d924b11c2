//! `--output gpio:CONFIG.toml`: motors and buttons on Linux GPIO lines,
//! through the character device (`/dev/gpiochipN`, with `gpiocdev`).
//!
//! Each motor has a direction line (high: forward, unless `reverse`) and
//! an enable line driven with software PWM at `--pwm-hz` (duty = |speed|);
//! button i drives its line high while pressed. When the direction
//! changes, enable goes low before the direction line moves (an H-bridge
//! never sees full power across a reversal).
//!
//! Every line is requested as an output that starts low, is driven low
//! when the server exits (Drop), and by a panic hook if any thread panics.
//!
//! ```toml
//! chip = "gpiochip0"          # or "/dev/gpiochip0"
//! consumer = "ferrows"        # optional: the label `gpioinfo` shows
//!
//! [left]
//! direction = 17              # line offsets on the chip
//! enable = 18
//!
//! [right]
//! direction = 22
//! enable = 23
//! reverse = true              # optional: this motor is wired backwards
//!
//! [buttons]                   # optional: button index = line offset
//! 0 = 24
//! 1 = 25
//! ```

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// A pulse shorter than this is not worth a pair of system calls: the
/// motor is off (or fully on) instead.
const MIN_PULSE: Duration = Duration::from_micros(20);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    chip: String,
    consumer: Option<String>,
    left: RawMotor,
    right: RawMotor,
    #[serde(default)]
    buttons: BTreeMap<String, u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMotor {
    direction: u32,
    enable: u32,
    #[serde(default)]
    reverse: bool,
}

/// One motor's lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MotorPins {
    /// The direction line's offset.
    pub(crate) direction: u32,
    /// The enable (PWM) line's offset.
    pub(crate) enable: u32,
    /// Forward is the direction line low.
    pub(crate) reverse: bool,
}

/// A validated GPIO configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GpioConfig {
    /// `/dev/gpiochipN`.
    pub(crate) chip: PathBuf,
    /// The label on the requested lines.
    pub(crate) consumer: String,
    /// Left, right.
    pub(crate) motors: [MotorPins; 2],
    /// (button index, line offset), by index.
    pub(crate) buttons: Vec<(u32, u32)>,
}

impl GpioConfig {
    /// Every line, motors first.
    pub(crate) fn lines(&self) -> Vec<u32> {
        let mut lines = Vec::new();
        for m in &self.motors {
            lines.push(m.direction);
            lines.push(m.enable);
        }
        lines.extend(self.buttons.iter().map(|&(_, line)| line));
        lines
    }
}

/// Parses and checks a configuration; `buttons` is `--buttons` (indexes
/// must be below it). Errors name the file and the problem.
pub(crate) fn parse_config(text: &str, buttons: u32) -> Result<GpioConfig, String> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| e.to_string())?;
    let chip = chip_path(&raw.chip)?;
    let mut indexed = Vec::new();
    for (key, line) in raw.buttons {
        let index: u32 = key
            .trim()
            .parse()
            .map_err(|_| format!("[buttons]: {key:?} is not a button index (0, 1, …)"))?;
        if index >= buttons {
            return Err(format!(
                "[buttons]: button {index} does not exist (--buttons {buttons}: 0..{})",
                buttons.saturating_sub(1)
            ));
        }
        indexed.push((index, line));
    }
    indexed.sort_unstable();
    let motor = |m: RawMotor| MotorPins {
        direction: m.direction,
        enable: m.enable,
        reverse: m.reverse,
    };
    let config = GpioConfig {
        chip,
        consumer: raw.consumer.unwrap_or_else(|| "ferrows".to_owned()),
        motors: [motor(raw.left), motor(raw.right)],
        buttons: indexed,
    };
    let mut seen = BTreeMap::new();
    let names = [
        "left.direction",
        "left.enable",
        "right.direction",
        "right.enable",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(config.buttons.iter().map(|(i, _)| format!("buttons.{i}")));
    for (name, line) in names.zip(config.lines()) {
        if let Some(other) = seen.insert(line, name.clone()) {
            return Err(format!("line {line} is used twice: {other} and {name}"));
        }
    }
    if config.consumer.len() > 31 {
        return Err("consumer: at most 31 bytes (the kernel's limit)".to_owned());
    }
    Ok(config)
}

/// `gpiochip0`, `/dev/gpiochip0`.
fn chip_path(name: &str) -> Result<PathBuf, String> {
    let name = name.trim();
    if name.is_empty() {
        return Err("chip: empty; expected e.g. \"gpiochip0\"".to_owned());
    }
    if name.contains('/') {
        Ok(PathBuf::from(name))
    } else {
        Ok(Path::new("/dev").join(name))
    }
}

/// Reads and parses a configuration file.
pub(crate) fn load_config(path: &Path, buttons: u32) -> anyhow::Result<GpioConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read GPIO configuration {}: {e}", path.display()))?;
    parse_config(&text, buttons)
        .map_err(|e| anyhow::anyhow!("GPIO configuration {}: {e}", path.display()))
}

/// Checks that the chip's device exists; the error names it and lists the
/// chips there are.
pub(crate) fn check_chip(chip: &Path) -> anyhow::Result<()> {
    if chip.exists() {
        return Ok(());
    }
    let mut found: Vec<String> = std::fs::read_dir("/dev")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("gpiochip"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    let available = if found.is_empty() {
        "this machine has no GPIO chip (no /dev/gpiochip*)".to_owned()
    } else {
        format!("chips here: {}", found.join(", "))
    };
    anyhow::bail!(
        "GPIO chip {} not found: {available}; set `chip` in the configuration",
        chip.display()
    )
}

// ------------------------------------------------------------ PWM

/// Which line of which motor (0 = left, 1 = right).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Line {
    /// A motor's direction line.
    Direction(usize),
    /// A motor's enable line.
    Enable(usize),
}

/// Sets motor lines (the hardware, or a recording in tests).
pub(crate) trait Pins {
    /// Sets each line to its level (true: high), in one go if possible.
    fn set(&mut self, levels: &[(Line, bool)]) -> io::Result<()>;
}

/// Time for the PWM loop (the real clock, or a virtual one in tests).
pub(crate) trait Clock {
    /// Now.
    fn now(&self) -> Instant;
    /// Sleeps until `t` (returns at once if it has passed).
    fn sleep_until(&self, t: Instant);
}

/// The system's monotonic clock, with thread sleeps.
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, t: Instant) {
        let now = Instant::now();
        if t > now {
            std::thread::sleep(t - now);
        }
    }
}

/// What the PWM thread reads: the speeds it drives, and when to stop.
#[derive(Debug, Default)]
pub(crate) struct PwmShared {
    speeds: [AtomicU64; 2],
    exit: AtomicBool,
    estop: AtomicBool,
}

impl PwmShared {
    /// Sets both speeds (−1..1).
    pub(crate) fn set_speeds(&self, left: f64, right: f64) {
        for (slot, v) in self.speeds.iter().zip([left, right]) {
            let v = if v.is_finite() {
                v.clamp(-1.0, 1.0)
            } else {
                0.0
            };
            slot.store(v.to_bits(), Ordering::SeqCst);
        }
    }

    fn speeds(&self) -> [f64; 2] {
        [
            f64::from_bits(self.speeds[0].load(Ordering::SeqCst)),
            f64::from_bits(self.speeds[1].load(Ordering::SeqCst)),
        ]
    }

    /// Asks the PWM loop to drive everything low and return.
    pub(crate) fn exit(&self) {
        self.exit.store(true, Ordering::SeqCst);
    }

    /// Emergency: the loop drives everything low at its next write.
    pub(crate) fn estop(&self) {
        self.estop.store(true, Ordering::SeqCst);
    }
}

/// One period of PWM for both motors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The direction line level per motor.
    pub(crate) direction: [bool; 2],
    /// How long enable stays high from the period's start: zero is off,
    /// the whole period is always on.
    pub(crate) on: [Duration; 2],
}

/// The plan for `speeds` (−1..1) with period `period`.
pub(crate) fn plan(speeds: [f64; 2], reverse: [bool; 2], period: Duration) -> Plan {
    let mut p = Plan {
        direction: [false; 2],
        on: [Duration::ZERO; 2],
    };
    for m in 0..2 {
        let s = speeds.get(m).copied().unwrap_or(0.0);
        let s = if s.is_finite() {
            s.clamp(-1.0, 1.0)
        } else {
            0.0
        };
        let forward = s >= 0.0;
        let rev = reverse.get(m).copied().unwrap_or(false);
        let on = period.mul_f64(s.abs());
        let on = if on < MIN_PULSE {
            Duration::ZERO
        } else if period.saturating_sub(on) < MIN_PULSE {
            period
        } else {
            on
        };
        if let (Some(d), Some(o)) = (p.direction.get_mut(m), p.on.get_mut(m)) {
            *d = forward != rev;
            *o = on;
        }
    }
    p
}

const ALL_LOW: [(Line, bool); 4] = [
    (Line::Enable(0), false),
    (Line::Enable(1), false),
    (Line::Direction(0), false),
    (Line::Direction(1), false),
];

/// Runs software PWM until [`PwmShared::exit`] or [`PwmShared::estop`],
/// then drives every motor line low. A late wake-up shortens nothing:
/// the next period starts from now (no burst to catch up).
pub(crate) fn run_pwm(
    pins: &mut dyn Pins,
    clock: &dyn Clock,
    shared: &PwmShared,
    reverse: [bool; 2],
    period: Duration,
) -> io::Result<()> {
    pins.set(&ALL_LOW)?;
    let mut direction = [false; 2];
    let mut enabled = [false; 2];
    let mut start = clock.now();
    let stopping = || shared.exit.load(Ordering::SeqCst) || shared.estop.load(Ordering::SeqCst);
    while !stopping() {
        let p = plan(shared.speeds(), reverse, period);
        let mut changes = Vec::with_capacity(4);
        for m in 0..2 {
            let want_dir = p.direction.get(m).copied().unwrap_or(false);
            let want_on = p.on.get(m).is_some_and(|on| !on.is_zero());
            let (Some(dir), Some(en)) = (direction.get_mut(m), enabled.get_mut(m)) else {
                continue;
            };
            // At speed 0 the direction line stays where it is.
            if want_on && *dir != want_dir {
                // Enable off before the direction moves; the kernel
                // applies one request's values in order of the call, so
                // this is two calls.
                if *en {
                    pins.set(&[(Line::Enable(m), false)])?;
                    *en = false;
                }
                changes.push((Line::Direction(m), want_dir));
                *dir = want_dir;
            }
            if want_on != *en {
                changes.push((Line::Enable(m), want_on));
                *en = want_on;
            }
        }
        if !changes.is_empty() {
            pins.set(&changes)?;
        }
        if shared.estop.load(Ordering::SeqCst) {
            break;
        }
        // The falling edges of this period, in time order.
        let mut edges: Vec<(Duration, usize)> = (0..2)
            .filter_map(|m| p.on.get(m).map(|on| (*on, m)))
            .filter(|(on, _)| !on.is_zero() && *on < period)
            .collect();
        edges.sort_unstable();
        for (at, m) in edges {
            clock.sleep_until(start + at);
            pins.set(&[(Line::Enable(m), false)])?;
            if let Some(en) = enabled.get_mut(m) {
                *en = false;
            }
            if shared.estop.load(Ordering::SeqCst) {
                break;
            }
        }
        start += period;
        let now = clock.now();
        if now > start + period {
            start = now;
        }
        clock.sleep_until(start);
    }
    pins.set(&ALL_LOW)
}

// ------------------------------------------------------------ hardware

#[cfg(all(feature = "gpio", target_os = "linux"))]
pub(crate) use hardware::GpioSink;

#[cfg(all(feature = "gpio", target_os = "linux"))]
mod hardware {
    use std::io;
    use std::sync::Arc;
    use std::time::Duration;

    use gpiocdev::Request;
    use gpiocdev::line::{Value, Values};

    use super::{GpioConfig, Line, Pins, PwmShared, SystemClock, check_chip, run_pwm};
    use crate::gamepad::output::{
        EstopRegistration, Frame, Readiness, Sink, register_emergency_stop,
    };

    /// The motor lines of a request.
    struct RequestPins {
        request: Arc<Request>,
        motors: [super::MotorPins; 2],
        estop: Arc<PwmShared>,
        all: Vec<u32>,
    }

    impl RequestPins {
        fn offset(&self, line: Line) -> Option<u32> {
            match line {
                Line::Direction(m) => self.motors.get(m).map(|p| p.direction),
                Line::Enable(m) => self.motors.get(m).map(|p| p.enable),
            }
        }
    }

    impl Pins for RequestPins {
        fn set(&mut self, levels: &[(Line, bool)]) -> io::Result<()> {
            let mut values = Values::default();
            for &(line, high) in levels {
                if let Some(offset) = self.offset(line) {
                    values.set(offset, if high { Value::Active } else { Value::Inactive });
                }
            }
            self.request.set_values(&values).map_err(io::Error::other)?;
            // An emergency stop that raced this write wins: everything low.
            if self.estop.estop.load(std::sync::atomic::Ordering::SeqCst) {
                all_low(&self.request, &self.all);
            }
            Ok(())
        }
    }

    fn all_low(request: &Request, lines: &[u32]) {
        let mut values = Values::default();
        for &l in lines {
            values.set(l, Value::Inactive);
        }
        let _ = request.set_values(&values);
    }

    /// GPIO output: the request, the PWM thread, the panic registration.
    pub(crate) struct GpioSink {
        request: Arc<Request>,
        shared: Arc<PwmShared>,
        thread: Option<std::thread::JoinHandle<()>>,
        buttons: Vec<(u32, u32)>,
        lines: Vec<u32>,
        _estop: EstopRegistration,
    }

    impl GpioSink {
        /// Requests the lines (all low) and starts PWM at `pwm_hz`.
        pub(crate) fn open(config: &GpioConfig, pwm_hz: u32) -> anyhow::Result<GpioSink> {
            check_chip(&config.chip)?;
            let lines = config.lines();
            let request = Request::builder()
                .on_chip(&config.chip)
                .with_consumer(config.consumer.clone())
                .with_lines(&lines)
                .as_output(Value::Inactive)
                .request()
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot request lines {lines:?} on GPIO chip {}: {e}",
                        config.chip.display()
                    )
                })?;
            let request = Arc::new(request);
            let shared = Arc::new(PwmShared::default());
            let estop = {
                let (request, shared, lines) = (request.clone(), shared.clone(), lines.clone());
                register_emergency_stop(Arc::new(move || {
                    shared.estop();
                    all_low(&request, &lines);
                }))
            };
            let mut pins = RequestPins {
                request: request.clone(),
                motors: config.motors,
                estop: shared.clone(),
                all: lines.clone(),
            };
            let reverse = [config.motors[0].reverse, config.motors[1].reverse];
            let period = Duration::from_secs(1) / pwm_hz.max(1);
            let pwm_shared = shared.clone();
            let thread = std::thread::Builder::new()
                .name("gamepad-pwm".to_owned())
                .spawn(move || {
                    if let Err(e) = run_pwm(&mut pins, &SystemClock, &pwm_shared, reverse, period) {
                        tracing::error!(error = %e, "GPIO PWM failed: motors stopped");
                        all_low(&pins.request, &pins.all);
                    }
                })?;
            tracing::info!(chip = %config.chip.display(), ?lines, pwm_hz, "GPIO output ready (all lines low)");
            Ok(GpioSink {
                request,
                shared,
                thread: Some(thread),
                buttons: config.buttons.clone(),
                lines,
                _estop: estop,
            })
        }
    }

    impl Sink for GpioSink {
        fn ready(&mut self) -> Readiness {
            Readiness::Ready
        }

        fn write(&mut self, frames: &[Frame]) -> io::Result<()> {
            // Hardware only cares about the newest state.
            let Some(f) = frames.last() else {
                return Ok(());
            };
            self.shared.set_speeds(f.outputs.left, f.outputs.right);
            if self.buttons.is_empty() {
                return Ok(());
            }
            let mut values = Values::default();
            for &(index, line) in &self.buttons {
                let on = index < 64 && f.outputs.buttons & (1u64 << index) != 0;
                values.set(line, if on { Value::Active } else { Value::Inactive });
            }
            self.request.set_values(&values).map_err(io::Error::other)
        }
    }

    impl Drop for GpioSink {
        fn drop(&mut self) {
            self.shared.set_speeds(0.0, 0.0);
            self.shared.exit();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
            all_low(&self.request, &self.lines);
            tracing::info!("GPIO output: every line low");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;

    use super::*;

    const SAMPLE: &str = r#"
chip = "gpiochip0"

[left]
direction = 17
enable = 18

[right]
direction = 22
enable = 23
reverse = true

[buttons]
0 = 24
3 = 25
"#;

    #[test]
    fn sample_configuration_parses() {
        let c = parse_config(SAMPLE, 17).unwrap();
        assert_eq!(c.chip, PathBuf::from("/dev/gpiochip0"));
        assert_eq!(c.consumer, "ferrows");
        assert_eq!(
            c.motors,
            [
                MotorPins {
                    direction: 17,
                    enable: 18,
                    reverse: false
                },
                MotorPins {
                    direction: 22,
                    enable: 23,
                    reverse: true
                }
            ]
        );
        assert_eq!(c.buttons, vec![(0, 24), (3, 25)]);
        assert_eq!(c.lines(), vec![17, 18, 22, 23, 24, 25]);
        let full = parse_config(
            "chip = \"/dev/gpiochip4\"\nconsumer = \"robot\"\n[left]\ndirection = 1\nenable = 2\n[right]\ndirection = 3\nenable = 4\n",
            17,
        )
        .unwrap();
        assert_eq!(full.chip, PathBuf::from("/dev/gpiochip4"));
        assert_eq!(full.consumer, "robot");
        assert!(full.buttons.is_empty());
    }

    #[test]
    fn bad_configurations_say_what_is_wrong() {
        let base = "chip = \"gpiochip0\"\n[left]\ndirection = 17\nenable = 18\n[right]\ndirection = 22\nenable = 23\n";
        for (text, why) in [
            ("", "chip"),
            ("chip = \"gpiochip0\"\n", "left"),
            (
                &format!("{base}[buttons]\n0 = 18\n") as &str,
                "line 18 is used twice",
            ),
            (
                &format!("{base}[buttons]\n17 = 30\n"),
                "button 17 does not exist",
            ),
            (&format!("{base}[buttons]\nA = 30\n"), "not a button index"),
            (&format!("{base}pwm = 5\n"), "unknown field"),
            (&format!("{base}[buttons]\n0 = -1\n"), "expected u32"),
            (
                &base.replace("enable = 18", "enable = 17"),
                "line 17 is used twice",
            ),
            (
                &base.replace("direction = 22", "direction = \"x\""),
                "direction",
            ),
            (&base.replace("\"gpiochip0\"", "\"\""), "chip: empty"),
            (
                &format!("consumer = \"{}\"\n{base}", "x".repeat(40)),
                "31 bytes",
            ),
        ] {
            let err = parse_config(text, 17).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_missing_chip_is_named() {
        let err = check_chip(Path::new("/dev/gpiochip-ferrows-test-99")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/dev/gpiochip-ferrows-test-99"), "{text}");
        assert!(text.contains("not found"), "{text}");
    }

    #[test]
    fn plans() {
        let period = Duration::from_millis(10);
        let p = plan([0.25, -0.5], [false, false], period);
        assert_eq!(p.direction, [true, false]);
        assert_eq!(
            p.on,
            [Duration::from_micros(2500), Duration::from_millis(5)]
        );
        // Reversed wiring flips the direction line only.
        let p = plan([0.25, -0.5], [true, true], period);
        assert_eq!(p.direction, [false, true]);
        // Full speed is always on, tiny speeds are off.
        let p = plan([1.0, 0.000_1], [false, false], period);
        assert_eq!(p.on, [period, Duration::ZERO]);
        let p = plan([0.999_9, f64::NAN], [false, false], period);
        assert_eq!(p.on, [period, Duration::ZERO]);
        let p = plan([7.0, -7.0], [false, false], period);
        assert_eq!(p.on, [period, period]);
    }

    /// A virtual clock: sleeping moves time, instantly. The loop is told
    /// to exit once time reaches `limit`.
    struct FakeClock {
        now: Rc<Cell<Instant>>,
        limit: Instant,
        shared: Rc<PwmShared>,
        /// Speed changes to make at given times.
        script: RefCell<Vec<(Instant, [f64; 2])>>,
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            self.now.get()
        }

        fn sleep_until(&self, t: Instant) {
            if t > self.now.get() {
                self.now.set(t);
            }
            let mut script = self.script.borrow_mut();
            while script.first().is_some_and(|(at, _)| *at <= t) {
                let (_, [l, r]) = script.remove(0);
                self.shared.set_speeds(l, r);
            }
            if t >= self.limit {
                self.shared.exit();
            }
        }
    }

    /// A recording of the levels set, with the virtual time: a stand-in
    /// for the GPIO hardware this machine does not have.
    struct RecordingPins {
        now: Rc<Cell<Instant>>,
        log: Vec<(Instant, Line, bool)>,
    }

    impl Pins for RecordingPins {
        fn set(&mut self, levels: &[(Line, bool)]) -> io::Result<()> {
            for &(line, high) in levels {
                self.log.push((self.now.get(), line, high));
            }
            Ok(())
        }
    }

    /// High time of `line` within [from, to), from a recording.
    fn high_time(
        log: &[(Instant, Line, bool)],
        line: Line,
        from: Instant,
        to: Instant,
    ) -> Duration {
        let mut level = false;
        let mut since = from;
        let mut total = Duration::ZERO;
        for &(t, l, high) in log {
            if l != line {
                continue;
            }
            let t = t.clamp(from, to);
            if level {
                total += t - since;
            }
            level = high;
            since = t;
        }
        if level {
            total += to - since.max(from);
        }
        total
    }

    fn run(
        script: Vec<(Duration, [f64; 2])>,
        periods: u32,
    ) -> (Instant, Vec<(Instant, Line, bool)>) {
        let t0 = Instant::now();
        let now = Rc::new(Cell::new(t0));
        let shared = Rc::new(PwmShared::default());
        let period = Duration::from_millis(10);
        let clock = FakeClock {
            now: now.clone(),
            limit: t0 + period * periods,
            shared: shared.clone(),
            script: RefCell::new(script.into_iter().map(|(d, s)| (t0 + d, s)).collect()),
        };
        let mut pins = RecordingPins {
            now,
            log: Vec::new(),
        };
        run_pwm(&mut pins, &clock, &shared, [false, false], period).unwrap();
        (t0, pins.log)
    }

    #[test]
    fn pwm_duty_cycles_match_the_speeds() {
        let (t0, log) = run(vec![(Duration::ZERO, [0.3, -0.75])], 100);
        let end = t0 + Duration::from_secs(1);
        let left = high_time(&log, Line::Enable(0), t0, end);
        let right = high_time(&log, Line::Enable(1), t0, end);
        // The first period starts before the first speed is read (all
        // low), so allow one period of difference.
        let close = |got: Duration, want_ms: u64| {
            let want = Duration::from_millis(want_ms);
            got.abs_diff(want) <= Duration::from_millis(10)
        };
        assert!(close(left, 300), "left high {left:?}");
        assert!(close(right, 750), "right high {right:?}");
        let settled = t0 + Duration::from_millis(20);
        assert_eq!(
            high_time(&log, Line::Direction(0), settled, end),
            end - settled
        );
        assert_eq!(high_time(&log, Line::Direction(1), t0, end), Duration::ZERO);
        // It ends with everything low.
        let last: Vec<_> = log.iter().rev().take(4).map(|(_, l, h)| (*l, *h)).collect();
        for line in [
            Line::Enable(0),
            Line::Enable(1),
            Line::Direction(0),
            Line::Direction(1),
        ] {
            assert!(last.contains(&(line, false)), "{line:?} not low at the end");
        }
    }

    #[test]
    fn reversing_turns_enable_off_before_the_direction_moves() {
        let (_, log) = run(
            vec![
                (Duration::ZERO, [1.0, 0.0]),
                (Duration::from_millis(50), [-1.0, 0.0]),
            ],
            10,
        );
        // Find the direction change of motor 0 after it was driven high.
        let flip = log
            .iter()
            .enumerate()
            .skip_while(|(_, (_, l, h))| !(*l == Line::Direction(0) && *h))
            .find(|(_, (_, l, h))| *l == Line::Direction(0) && !*h)
            .map(|(i, _)| i)
            .unwrap();
        let enable_before = log[..flip]
            .iter()
            .rev()
            .find(|(_, l, _)| *l == Line::Enable(0))
            .map(|(_, _, h)| *h);
        assert_eq!(
            enable_before,
            Some(false),
            "enable still high at the reversal: {log:?}"
        );
        // And it comes back on in the new direction.
        assert!(
            log[flip..]
                .iter()
                .any(|(_, l, h)| *l == Line::Enable(0) && *h)
        );
    }

    #[test]
    fn estop_stops_within_one_write() {
        let t0 = Instant::now();
        let now = Rc::new(Cell::new(t0));
        let shared = Rc::new(PwmShared::default());
        shared.set_speeds(0.5, 0.5);
        let clock = FakeClock {
            now: now.clone(),
            limit: t0 + Duration::from_secs(3600),
            shared: shared.clone(),
            script: RefCell::new(Vec::new()),
        };
        struct EstopAfter<'a> {
            inner: RecordingPins,
            writes: u32,
            shared: &'a PwmShared,
        }
        impl Pins for EstopAfter<'_> {
            fn set(&mut self, levels: &[(Line, bool)]) -> io::Result<()> {
                self.writes += 1;
                if self.writes == 5 {
                    self.shared.estop();
                }
                self.inner.set(levels)
            }
        }
        let mut pins = EstopAfter {
            inner: RecordingPins {
                now,
                log: Vec::new(),
            },
            writes: 0,
            shared: &shared,
        };
        run_pwm(
            &mut pins,
            &clock,
            &shared,
            [false, false],
            Duration::from_millis(10),
        )
        .unwrap();
        // Writes 1..5, then one: all low.
        assert!(pins.writes <= 7, "{} writes", pins.writes);
        let log = &pins.inner.log;
        let tail: Vec<_> = log.iter().rev().take(4).map(|(_, l, h)| (*l, *h)).collect();
        assert!(tail.iter().all(|(_, h)| !h), "{tail:?}");
    }
}
