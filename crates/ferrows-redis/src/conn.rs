//! Opening connections: one attempt with bounded timeouts, or retries until
//! a deadline; errors are classified and never show a password.

use std::time::Duration;

use ferrows::backplane::{TransportError, TransportErrorKind};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};
use tokio::time::Instant;

use crate::{Error, redact};

/// The first delay between connect attempts at startup, doubled up to
/// [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// The longest a single connect attempt may take.
const ATTEMPT_MAX: Duration = Duration::from_secs(2);

/// A Redis server: the client, its redacted name, and the secrets to scrub
/// from any error text.
#[derive(Clone)]
pub(crate) struct Target {
    client: Client,
    server: String,
    secrets: Vec<String>,
}

/// Why one connection attempt failed.
pub(crate) struct Failure {
    /// Redis refused our credentials or permissions: retrying cannot help.
    pub(crate) fatal: bool,
    pub(crate) error: TransportError,
}

impl Target {
    pub(crate) fn open(url: &str) -> Result<Target, Error> {
        let server = redact(url);
        let client =
            Client::open(url).map_err(|e| Error::Url(format!("{server}: {}", e.kind_text())))?;
        let mut secrets = Vec::new();
        if let Some(p) = client.get_connection_info().redis_settings().password() {
            secrets.push(p.to_owned());
        }
        // The raw (maybe percent-encoded) password of the URL too.
        if let Some(rest) = url.split_once("://").map(|(_, r)| r) {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            if let Some((userinfo, _)) = authority.rsplit_once('@') {
                if let Some((_, p)) = userinfo.split_once(':') {
                    secrets.push(p.to_owned());
                }
            }
        }
        secrets.retain(|s| !s.is_empty());
        Ok(Target {
            client,
            server,
            secrets,
        })
    }

    /// The server, redacted.
    pub(crate) fn server(&self) -> &str {
        &self.server
    }

    /// `text` with every secret replaced by `***`.
    pub(crate) fn scrub(&self, text: String) -> String {
        let mut text = text;
        for s in &self.secrets {
            if text.contains(s.as_str()) {
                text = text.replace(s.as_str(), "***");
            }
        }
        text
    }

    /// A transport error for a failed `what`, in words, without secrets.
    pub(crate) fn error(&self, what: &str, e: &RedisError) -> TransportError {
        let kind = if e.is_timeout() {
            TransportErrorKind::Timeout
        } else if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
            TransportErrorKind::Connection
        } else {
            TransportErrorKind::Engine
        };
        let text = if e.is_timeout() {
            "no reply in time".to_owned()
        } else {
            e.to_string()
        };
        TransportError::new(
            kind,
            self.scrub(format!("{what} on {}: {text}", self.server)),
        )
    }

    /// One connection attempt, named `name` (`CLIENT SETNAME`, which also
    /// proves that our credentials work), whose commands time out after
    /// `response`.
    pub(crate) async fn connect_once(
        &self,
        name: &str,
        response: Duration,
        attempt: Duration,
    ) -> Result<MultiplexedConnection, Failure> {
        let attempt = attempt.clamp(Duration::from_millis(10), ATTEMPT_MAX);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(attempt))
            .set_response_timeout(Some(response));
        let work = async {
            let mut conn = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|e| self.failure("connect", &e))?;
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(name)
                .exec_async(&mut conn)
                .await
                .map_err(|e| self.failure("CLIENT SETNAME", &e))?;
            Ok(conn)
        };
        match tokio::time::timeout(attempt + response, work).await {
            Ok(r) => r,
            Err(_) => Err(Failure {
                fatal: false,
                error: TransportError::new(
                    TransportErrorKind::Timeout,
                    format!("connect to {}: no answer in time", self.server),
                ),
            }),
        }
    }

    fn failure(&self, what: &str, e: &RedisError) -> Failure {
        let code = e.code().unwrap_or("");
        let auth = e.kind() == redis::ErrorKind::AuthenticationFailed
            || matches!(code, "NOAUTH" | "WRONGPASS" | "NOPERM");
        if auth {
            let detail = self.scrub(e.detail().unwrap_or("").to_owned());
            let text = match code {
                "NOPERM" => format!(
                    "permission denied on {} ({what}): the Redis user lacks a command or key \
                     ferrows needs; {code} {detail}",
                    self.server
                ),
                _ => format!(
                    "authentication failed on {}: wrong or missing user/password in the URL; \
                     {code} {detail}",
                    self.server
                ),
            };
            return Failure {
                fatal: true,
                error: TransportError::new(TransportErrorKind::Engine, text.trim_end().to_owned()),
            };
        }
        Failure {
            fatal: false,
            error: self.error(what, e),
        }
    }

    /// Connects, retrying (100 ms doubling to 1 s) until `deadline`; a
    /// refusal of our credentials ends it at once.
    pub(crate) async fn connect_until(
        &self,
        name: &str,
        response: Duration,
        deadline: Instant,
    ) -> Result<MultiplexedConnection, Error> {
        let mut delay = RETRY_MIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let failure = match self.connect_once(name, response, left).await {
                Ok(conn) => return Ok(conn),
                Err(f) => f,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if failure.fatal || left.is_zero() {
                return Err(Error::Unreachable {
                    server: self.server.clone(),
                    reason: failure.error.message().to_owned(),
                });
            }
            tracing::debug!(target: "ferrows::redis", "{}; retrying", failure.error);
            tokio::time::sleep(delay.min(left)).await;
            delay = (delay * 2).min(RETRY_MAX);
        }
    }
}

trait KindText {
    fn kind_text(&self) -> String;
}

impl KindText for RedisError {
    /// The error without its arguments (a URL error must not echo the URL).
    fn kind_text(&self) -> String {
        match self.detail() {
            Some(d) if !d.contains('@') => format!("{:?}: {d}", self.kind()),
            _ => format!("{:?}", self.kind()),
        }
    }
}
