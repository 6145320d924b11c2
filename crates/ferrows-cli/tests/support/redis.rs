//! A real `redis-server` per test: on a free loopback port of the test
//! range (18000–18999), no persistence, killed, frozen, thawed and
//! restarted by pid. Missing `redis-server` is a failure, never a skip.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TempDir;

/// The ports tests may listen on besides port 0 (Redis cannot use 0).
const PORTS: std::ops::Range<u16> = 18_000..19_000;

/// How long Redis may take to answer PING after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A running `redis-server`; killed when dropped.
pub(crate) struct RedisServer {
    child: Option<Child>,
    port: u16,
    password: Option<String>,
    dir: TempDir,
}

impl RedisServer {
    /// Starts `redis-server` on a free port and waits until it answers.
    ///
    /// # Panics
    ///
    /// If `redis-server` is not installed (install it: `apt-get install
    /// redis-server`; `.ci/run` does), or it does not start.
    pub(crate) fn start() -> RedisServer {
        RedisServer::start_inner(None)
    }

    /// [`RedisServer::start`] with `requirepass password`.
    pub(crate) fn start_with_password(password: &str) -> RedisServer {
        RedisServer::start_inner(Some(password.to_owned()))
    }

    fn start_inner(password: Option<String>) -> RedisServer {
        let dir = TempDir::new("redis");
        let mut server = RedisServer {
            child: None,
            port: 0,
            password,
            dir,
        };
        // A port may be taken between the check and Redis' bind: try others.
        for _ in 0..20 {
            let port = free_port();
            server.port = port;
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on any free port in {PORTS:?}");
    }

    /// Runs `redis-server` on `self.port`; false if it exited (the port was
    /// taken), true once it answers PING.
    fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let log = self.dir.0.join("redis.log");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir.0)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run redis-server: {e}. The cluster tests need a real Redis: \
                 apt-get install redis-server (.ci/run installs it)"
            )
        });
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.ping() {
                return true;
            }
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some());
            if exited {
                self.child = None;
                return false;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!(
                    "redis-server on port {port} did not answer PING in {READY_TIMEOUT:?}:\n{log}"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether Redis answers PING (after AUTH if it has a password).
    fn ping(&self) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut request = String::new();
        if let Some(p) = &self.password {
            request.push_str(&format!("AUTH {p}\r\n"));
        }
        request.push_str("PING\r\n");
        if s.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&got).contains("+PONG") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if got.len() > 4096 {
                return false;
            }
        }
        true
    }

    /// `redis://127.0.0.1:PORT/`, with the password if it has one.
    pub(crate) fn url(&self) -> String {
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// The port it listens on.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server is running").id()
    }

    /// SIGKILL, and waits for the exit: everything it held is gone.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: frozen, its connections open but unanswered.
    pub(crate) fn stop(&self) {
        signal("STOP", self.pid());
    }

    /// SIGCONT after [`RedisServer::stop`].
    pub(crate) fn cont(&self) {
        signal("CONT", self.pid());
    }

    /// Starts it again on the same port (empty: no persistence), retrying
    /// for a while if the port is briefly taken.
    pub(crate) fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "redis-server could not listen on port {} again",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A frozen process dies of SIGKILL too.
            signal("CONT", child.id());
        }
        self.kill();
    }
}

fn signal(name: &str, pid: u32) {
    let sent = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -{name} {pid} failed");
}

/// A port of [`PORTS`] nobody listens on now (a different start for each
/// process and call, so parallel tests rarely try the same one).
pub(crate) fn free_port() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let span = u32::from(PORTS.end - PORTS.start);
    let start = (nanos ^ std::process::id().wrapping_mul(2_654_435_761)) % span;
    for i in 0..span {
        let port = PORTS.start + u16::try_from((start + i) % span).expect("in range");
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {PORTS:?}");
}
