//! A real `redis-server` per test, on a free loopback port, without
//! persistence: killed, frozen and restarted by pid.
#![allow(dead_code, unreachable_pub)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::Value;

/// A `redis-server` child process.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: PathBuf,
    extra: Vec<String>,
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local addr").port()
}

impl RedisServer {
    /// Starts one (no password).
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts one with extra arguments (`--requirepass x`, …).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("ferrows-redis-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut server = RedisServer {
            port,
            child: None,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): these tests need it on PATH \
                     (Debian: apt-get install redis-server)"
                )
            });
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits (≤ 10 s) until the server answers PING (or asks for a password).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                s.set_read_timeout(Some(Duration::from_millis(500))).ok();
                let mut buf = [0u8; 64];
                if s.write_all(b"PING\r\n").is_ok() {
                    if let Ok(n) = s.read(&mut buf) {
                        let reply = &buf[..n];
                        if reply.starts_with(b"+PONG") || reply.starts_with(b"-NOAUTH") {
                            return;
                        }
                    }
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "redis-server exited ({status}) on port {}; log: {}",
                    self.port,
                    std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {} not ready in 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} failed");
    }

    /// SIGSTOP: the process freezes, its sockets stay open.
    pub fn stop(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    pub fn cont(&self) {
        self.signal("-CONT");
    }

    /// Starts it again on the same port (empty: no persistence), retrying
    /// while the port is still taken.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpListener::bind(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "port {} stays taken", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
        self.spawn();
    }

    /// A command on a fresh connection.
    pub async fn cmd(&self, args: &[&[u8]]) -> redis::RedisResult<Value> {
        self.cmd_as(&self.url(), args).await
    }

    /// A command on a fresh connection to `url`.
    pub async fn cmd_as(&self, url: &str, args: &[&[u8]]) -> redis::RedisResult<Value> {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd(std::str::from_utf8(args[0]).expect("ascii command"));
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut conn).await
    }

    /// `CLIENT KILL ID` of every client named `name`; returns how many.
    pub async fn client_kill(&self, name: &str) -> usize {
        let list = self.cmd(&[b"CLIENT", b"LIST"]).await.expect("CLIENT LIST");
        let text = match list {
            Value::BulkString(b) => String::from_utf8(b).expect("utf-8"),
            Value::VerbatimString { text, .. } => text,
            other => panic!("CLIENT LIST: {other:?}"),
        };
        let mut killed = 0;
        for line in text.lines() {
            let field = |f: &str| {
                line.split(' ')
                    .find_map(|kv| kv.strip_prefix(f))
                    .unwrap_or("")
                    .to_owned()
            };
            if field("name=") == name {
                let id = field("id=");
                self.cmd(&[b"CLIENT", b"KILL", b"ID", id.as_bytes()])
                    .await
                    .expect("CLIENT KILL");
                killed += 1;
            }
        }
        killed
    }

    /// The stream's length.
    pub async fn xlen(&self, key: &str) -> i64 {
        match self.cmd(&[b"XLEN", key.as_bytes()]).await.expect("XLEN") {
            Value::Int(n) => n,
            other => panic!("XLEN: {other:?}"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // A stopped process dies of SIGKILL too; CONT anyway for tidiness.
            Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status()
                .ok();
        }
        self.kill();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}
