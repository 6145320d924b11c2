//! `--proxy` and `--no-proxy`, shared by `connect`, `probe` and `bench`.
//!
//! The proxy URL is kept as text and parsed by [`ferrows::Proxy::parse`]
//! when used, so that an invalid one is reported with its credentials
//! redacted (clap would echo the value as typed).

use clap::Args;
use ferrows::{ClientBuilder, Proxy};

/// How a client command reaches the server.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct ProxyArgs {
    /// Connect through this proxy: `http://[USER:PASS@]HOST[:PORT]` (HTTP
    /// CONNECT, Basic auth), `socks5h://[USER:PASS@]HOST[:PORT]` (SOCKS5, the
    /// proxy resolves the server's name) or `socks5://…` (resolved here).
    /// Default: the environment's: https_proxy/HTTPS_PROXY for wss://,
    /// http_proxy/HTTP_PROXY for ws://, then all_proxy/ALL_PROXY, except
    /// for servers in no_proxy/NO_PROXY
    #[arg(long, value_name = "URL")]
    proxy: Option<String>,
    /// Connect directly, ignoring the proxy environment variables
    #[arg(long, conflicts_with = "proxy")]
    no_proxy: bool,
}

impl ProxyArgs {
    /// `builder` set up to connect as the flags say.
    ///
    /// # Errors
    ///
    /// An invalid or unsupported `--proxy` URL (credentials redacted).
    pub(crate) fn apply(&self, builder: ClientBuilder) -> anyhow::Result<ClientBuilder> {
        Ok(match &self.proxy {
            Some(url) => builder.proxy(Proxy::parse(url)?),
            None if self.no_proxy => builder.no_proxy(),
            None => builder,
        })
    }

    /// Checks `--proxy` early, before any work starts.
    ///
    /// # Errors
    ///
    /// As [`ProxyArgs::apply`].
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.proxy {
            Proxy::parse(url)?;
        }
        Ok(())
    }
}
