//! Real proxies for the tests, started on loopback and killed on drop:
//! `tinyproxy` (HTTP `CONNECT`, optionally with Basic auth), `danted`
//! (Dante, SOCKS5 without authentication) and `microsocks` (SOCKS5 with
//! RFC 1929 user/password).
//!
//! Dante's own user/password method checks system accounts (the password
//! hashes in `/etc/shadow`), so testing it would need a system user with a
//! known password, and root, on every machine that runs the tests;
//! microsocks takes the user and password on its command line. All three
//! are Debian packages that `.ci/run` installs. A missing one fails the
//! test, naming the package.
//!
//! Shared by the `ferrows` and `ferrows-cli` tests (the latter includes
//! this file with `#[path]`).
#![allow(dead_code)]

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A proxy process and its scratch directory.
pub(crate) struct Daemon {
    name: &'static str,
    child: Child,
    dir: PathBuf,
    /// Its loopback port.
    pub(crate) port: u16,
}

impl Daemon {
    /// `127.0.0.1:PORT`.
    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// What the proxy logged so far.
    pub(crate) fn log(&self) -> String {
        fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The path of `program` (in `PATH`, or in /usr/sbin, where `danted` is and
/// which a non-root `PATH` may lack); panics naming the package if absent.
pub(crate) fn find(program: &str, package: &str) -> PathBuf {
    let dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    dirs.into_iter()
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{program} is required by the proxy tests: apt-get install {package} (.ci/run installs it)")
        })
}

fn scratch_dir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ferrows-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `program` as `args(dir, port)` says, on a free port (up to three
/// tries: another process may take the port in between), and waits until
/// it accepts connections.
fn start(name: &'static str, package: &str, args: impl Fn(&Path, u16) -> Vec<String>) -> Daemon {
    let program = find(name, package);
    let mut last_log = String::new();
    for _ in 0..3 {
        let dir = scratch_dir(name);
        let port = free_port();
        let log = fs::File::create(dir.join("log")).unwrap();
        let child = Command::new(&program)
            .args(args(&dir, port))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let mut daemon = Daemon {
            name,
            child,
            dir,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = daemon.child.try_wait() {
                break;
            }
            if TcpStream::connect_timeout(&daemon.addr(), Duration::from_secs(1)).is_ok() {
                return daemon;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        last_log = daemon.log();
        drop(daemon);
    }
    panic!("{name} did not start listening; its log:\n{last_log}");
}

/// tinyproxy allowing `CONNECT` to `ports` only (others get 403), with
/// Basic authentication if `auth` is given (realm "Tinyproxy").
pub(crate) fn tinyproxy(ports: &[u16], auth: Option<(&str, &str)>) -> Daemon {
    let mut extra = String::new();
    for p in ports {
        extra.push_str(&format!("ConnectPort {p}\n"));
    }
    if let Some((user, pass)) = auth {
        extra.push_str(&format!("BasicAuth {user} {pass}\n"));
    }
    start("tinyproxy", "tinyproxy", move |dir, port| {
        let conf = dir.join("tinyproxy.conf");
        fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 32\n\
                 Allow 127.0.0.1\nLogLevel Info\n{extra}"
            ),
        )
        .unwrap();
        vec!["-d".into(), "-c".into(), conf.display().to_string()]
    })
}

/// Dante (`danted`), SOCKS5 without authentication, for clients and
/// servers on loopback; connections to `blocked_port` are refused by a
/// rule (SOCKS reply 2). Debug logging shows each request as the client
/// sent it: `ATYP: 3 address: localhost.PORT` for a name, `ATYP: 1` for an
/// IPv4 address.
pub(crate) fn danted(blocked_port: u16) -> Daemon {
    start("danted", "dante-server", move |dir, port| {
        let conf = dir.join("danted.conf");
        fs::write(
            &conf,
            format!(
                "logoutput: stderr\n\
                 internal: 127.0.0.1 port = {port}\n\
                 external: 127.0.0.1\n\
                 socksmethod: none\n\
                 clientmethod: none\n\
                 client pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 }}\n\
                 socks block {{ from: 0.0.0.0/0 to: 0.0.0.0/0 port = {blocked_port} log: connect }}\n\
                 socks pass {{ from: 127.0.0.0/8 to: 0.0.0.0/0 log: connect }}\n"
            ),
        )
        .unwrap();
        vec![
            "-f".into(),
            conf.display().to_string(),
            "-N".into(),
            "1".into(),
            "-d".into(),
            "1".into(),
            "-p".into(),
            dir.join("danted.pid").display().to_string(),
        ]
    })
}

/// microsocks, SOCKS5 requiring user/password authentication (RFC 1929).
pub(crate) fn microsocks(user: &str, pass: &str) -> Daemon {
    let (user, pass) = (user.to_owned(), pass.to_owned());
    start("microsocks", "microsocks", move |_dir, port| {
        vec![
            "-i".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-u".into(),
            user.clone(),
            "-P".into(),
            pass.clone(),
        ]
    })
}
