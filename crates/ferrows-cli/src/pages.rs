//! The browser pages, embedded in the binary (`web/`): each page's
//! stylesheet and scripts are inlined into its HTML once, at first use, so
//! one response is the whole page and it works offline, on any path.

use std::net::SocketAddr;
use std::sync::LazyLock;

use ferrows::Handshake;

use crate::net::{Stream, display_addr};

const STYLE: &str = include_str!("../web/style.css");
const COMMON_JS: &str = include_str!("../web/common.js");

/// The landing page of `ferrows serve`.
static LANDING: LazyLock<String> = LazyLock::new(|| {
    inline(
        include_str!("../web/index.html"),
        &[("index.js", include_str!("../web/index.js"))],
    )
});

/// The echo console.
static ECHO: LazyLock<String> = LazyLock::new(|| {
    inline(
        include_str!("../web/echo.html"),
        &[("echo.js", include_str!("../web/echo.js"))],
    )
});

/// The chat page.
static CHAT: LazyLock<String> = LazyLock::new(|| {
    inline(
        include_str!("../web/chat.html"),
        &[("chat.js", include_str!("../web/chat.js"))],
    )
});

/// The landing page of `ferrows serve`, linking the demos.
pub(crate) fn landing() -> &'static str {
    LANDING.as_str()
}

/// The echo console page.
pub(crate) fn echo() -> &'static str {
    ECHO.as_str()
}

/// The chat page.
pub(crate) fn chat() -> &'static str {
    CHAT.as_str()
}

/// Replaces the page's `<link rel="stylesheet" href="style.css">` and
/// `<script src="NAME"></script>` tags with the files' contents, so the
/// HTML files stay plain documents that also open from disk.
fn inline(html: &str, scripts: &[(&str, &str)]) -> String {
    let mut page = html.replace(
        r#"<link rel="stylesheet" href="style.css">"#,
        &format!("<style>\n{STYLE}</style>"),
    );
    let common = [("common.js", COMMON_JS)];
    for (name, js) in common.iter().chain(scripts) {
        page = page.replace(
            &format!(r#"<script src="{name}"></script>"#),
            &format!("<script>\n{js}</script>"),
        );
    }
    page
}

/// Headers of every page: no external resources may load (the pages work
/// offline and nothing injected could phone home), WebSockets may connect
/// anywhere (the echo console takes a URL), no framing, no sniffing.
fn page_headers() -> Vec<(String, String)> {
    [
        (
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             img-src data:; connect-src 'self' ws: wss:; base-uri 'none'; \
             form-action 'none'; frame-ancestors 'none'",
        ),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("Cache-Control", "no-cache"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Answers a plain HTTP request with `html`: 200 for GET and HEAD, 405
/// for other methods.
pub(crate) async fn respond_page(hs: Handshake<Stream>, peer: SocketAddr, html: &str) {
    let method = hs.request().method().to_owned();
    let path = hs.request().path().to_owned();
    let result = if method == "GET" || method == "HEAD" {
        hs.respond(
            200,
            &page_headers(),
            "text/html; charset=utf-8",
            html.as_bytes(),
        )
        .await
    } else {
        let allow = [("Allow".to_owned(), "GET, HEAD".to_owned())];
        hs.respond(
            405,
            &allow,
            "text/plain; charset=utf-8",
            b"method not allowed: use GET\n",
        )
        .await
    };
    match result {
        Ok(()) => tracing::debug!(peer = %display_addr(peer), %method, %path, "page served"),
        Err(e) => {
            tracing::debug!(peer = %display_addr(peer), %method, %path, error = %e, "page not sent")
        }
    }
}

/// Answers 404 with a short plain-text explanation (for page requests and
/// WebSocket upgrades alike).
pub(crate) async fn not_found(hs: Handshake<Stream>, peer: SocketAddr, text: &str) {
    let path = hs.request().path().to_owned();
    let upgrade = hs.request().is_upgrade();
    tracing::info!(peer = %display_addr(peer), %path, upgrade, "not found: 404");
    let body = format!("{text}\n");
    let _ = hs
        .respond(404, &[], "text/plain; charset=utf-8", body.as_bytes())
        .await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing)]
    use super::*;

    fn all() -> [(&'static str, &'static str); 3] {
        [("landing", landing()), ("echo", echo()), ("chat", chat())]
    }

    #[test]
    fn assets_are_inlined_and_nothing_loads_from_elsewhere() {
        for (name, page) in all() {
            assert!(page.starts_with("<!doctype html>"), "{name}");
            assert!(page.contains("<style>"), "{name}: no inline style");
            assert!(
                page.contains("const ferrows = "),
                "{name}: common.js missing"
            );
            // No tag still points at a file: every src/href is a link
            // within the server or a data: URL.
            for attr in ["src=\"", "href=\""] {
                for (i, _) in page.match_indices(attr) {
                    let value = &page[i + attr.len()..];
                    let value = &value[..value.find('"').unwrap_or(value.len())];
                    assert!(
                        value.starts_with('/') || value.starts_with("data:"),
                        "{name}: {attr}{value}\" is not a page of this server"
                    );
                }
            }
            assert!(!page.contains("<script src"), "{name}: external script");
            assert!(!page.contains("rel=\"stylesheet\""), "{name}: external CSS");
        }
    }

    #[test]
    fn inlined_files_cannot_end_their_element_early() {
        let files = [
            ("style.css", STYLE),
            ("common.js", COMMON_JS),
            ("index.js", include_str!("../web/index.js")),
            ("echo.js", include_str!("../web/echo.js")),
            ("chat.js", include_str!("../web/chat.js")),
        ];
        for (name, text) in files {
            let lower = text.to_ascii_lowercase();
            assert!(!lower.contains("</script"), "{name}");
            assert!(!lower.contains("</style"), "{name}");
            assert!(!lower.contains("<!--"), "{name}");
        }
    }

    #[test]
    fn pages_never_insert_peer_data_as_html() {
        let scripts = [
            include_str!("../web/common.js"),
            include_str!("../web/index.js"),
            include_str!("../web/echo.js"),
            include_str!("../web/chat.js"),
        ];
        for js in scripts {
            for sink in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
            ] {
                assert!(!js.contains(sink), "{sink} in a page script");
            }
        }
    }
}
