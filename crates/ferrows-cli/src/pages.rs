//! The browser pages, embedded in the binary (`web/`): each page's
//! stylesheet and scripts are inlined into its HTML once, at first use, so
//! one response is the whole page and it works offline, on any path.

use std::net::SocketAddr;
use std::sync::LazyLock;

use ferrows::Handshake;

use crate::net::{Stream, display_addr};

// Every page's files.
const STYLE: &str = include_str!("../web/style.css");
const COMMON_JS: &str = include_str!("../web/common.js");

// Each page's own files.
const INDEX_JS: &str = include_str!("../web/index.js");
const ECHO_JS: &str = include_str!("../web/echo.js");
const CHAT_JS: &str = include_str!("../web/chat.js");
const GAMEPAD_CSS: &str = include_str!("../web/gamepad.css");
const GAMEPAD_JS: &str = include_str!("../web/gamepad.js");

/// The landing page of `ferrows serve`.
static LANDING: LazyLock<String> = LazyLock::new(|| {
    inline(
        include_str!("../web/index.html"),
        &[],
        &[("index.js", INDEX_JS)],
    )
});

/// The echo console.
static ECHO: LazyLock<String> = LazyLock::new(|| {
    inline(
        include_str!("../web/echo.html"),
        &[],
        &[("echo.js", ECHO_JS)],
    )
});

/// The chat page.
static CHAT: LazyLock<String> = LazyLock::new(|| {
    inline(
        include_str!("../web/chat.html"),
        &[],
        &[("chat.js", CHAT_JS)],
    )
});

/// The gamepad page.
static GAMEPAD: LazyLock<String> = LazyLock::new(|| {
    inline(
        include_str!("../web/gamepad.html"),
        &[("gamepad.css", GAMEPAD_CSS)],
        &[("gamepad.js", GAMEPAD_JS)],
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

/// The gamepad page (`ferrows serve gamepad`, `/gamepad` of `ferrows
/// serve`).
pub(crate) fn gamepad() -> &'static str {
    GAMEPAD.as_str()
}

/// Replaces the page's `<link rel="stylesheet" href="NAME">` and
/// `<script src="NAME"></script>` tags with the files' contents (every
/// page's `style.css` and `common.js`, then its own `styles` and
/// `scripts`), so the HTML files stay plain documents that also open from
/// disk.
fn inline(html: &str, styles: &[(&str, &str)], scripts: &[(&str, &str)]) -> String {
    let mut page = html.to_owned();
    let common = [("style.css", STYLE)];
    for (name, css) in common.iter().chain(styles) {
        page = page.replace(
            &format!(r#"<link rel="stylesheet" href="{name}">"#),
            &format!("<style>\n{css}</style>"),
        );
    }
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

/// Answers a request that is not GET or HEAD with 405.
pub(crate) async fn method_not_allowed(hs: Handshake<Stream>) -> ferrows::Result<()> {
    let allow = [("Allow".to_owned(), "GET, HEAD".to_owned())];
    hs.respond(
        405,
        &allow,
        "text/plain; charset=utf-8",
        b"method not allowed: use GET\n",
    )
    .await
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
        method_not_allowed(hs).await
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

    /// Each page with the elements its files must be inlined as.
    fn all() -> [(&'static str, &'static str, Vec<String>); 4] {
        let style = |css: &str| format!("<style>\n{css}</style>");
        let script = |js: &str| format!("<script>\n{js}</script>");
        let with = |own: Vec<String>| [vec![style(STYLE), script(COMMON_JS)], own].concat();
        [
            ("landing", landing(), with(vec![script(INDEX_JS)])),
            ("echo", echo(), with(vec![script(ECHO_JS)])),
            ("chat", chat(), with(vec![script(CHAT_JS)])),
            (
                "gamepad",
                gamepad(),
                with(vec![style(GAMEPAD_CSS), script(GAMEPAD_JS)]),
            ),
        ]
    }

    /// Every file that is inlined into a page, by name.
    const FILES: [(&str, &str); 7] = [
        ("style.css", STYLE),
        ("common.js", COMMON_JS),
        ("index.js", INDEX_JS),
        ("echo.js", ECHO_JS),
        ("chat.js", CHAT_JS),
        ("gamepad.css", GAMEPAD_CSS),
        ("gamepad.js", GAMEPAD_JS),
    ];

    #[test]
    fn assets_are_inlined_and_nothing_loads_from_elsewhere() {
        for (name, page, elements) in all() {
            assert!(page.starts_with("<!doctype html>"), "{name}");
            // Each of its files, whole, in its own element.
            for element in elements {
                let file = element.lines().nth(1).unwrap_or_default();
                assert!(page.contains(&element), "{name}: {file:?} not inlined");
            }
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
        for (name, text) in FILES {
            let lower = text.to_ascii_lowercase();
            assert!(!lower.contains("</script"), "{name}");
            assert!(!lower.contains("</style"), "{name}");
            assert!(!lower.contains("<!--"), "{name}");
        }
    }

    #[test]
    fn pages_never_insert_peer_data_as_html() {
        for (name, js) in FILES.into_iter().filter(|(n, _)| n.ends_with(".js")) {
            for sink in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
            ] {
                assert!(!js.contains(sink), "{sink} in {name}");
            }
        }
    }
}
