//! The opening handshake over HTTP/2 (RFC 8441, Extended CONNECT), both
//! roles, as pure functions over header lists: the HTTP/2 framing itself
//! belongs to an HTTP/2 implementation.
//!
//! What differs from HTTP/1.1 (RFC 8441 §4–5): the request is a `CONNECT`
//! with the pseudo-header `:protocol: websocket` (allowed only after the
//! server sent `SETTINGS_ENABLE_CONNECT_PROTOCOL = 1`); there is no
//! `Upgrade`, `Connection`, `Sec-WebSocket-Key` or `Sec-WebSocket-Accept`;
//! the server accepts with `200` instead of `101`. `Sec-WebSocket-Version`,
//! subprotocols and permessage-deflate are negotiated exactly as over
//! HTTP/1.1 (the same functions: [`super::negotiate_deflate`] and the
//! subprotocol check of [`super::accept_response`]).
//!
//! Server side: [`request`] builds a [`Request`] from the stream's
//! pseudo-headers and fields, [`validate_request`] checks it, and
//! [`accept_response`] (or a [`HandshakeError`]'s status) is the answer.
//! Client side: [`request_fields`] lists the fields to send with
//! `:method CONNECT` and `:protocol websocket`, [`validate_response`]
//! checks the answer.
//!
//! ```
//! use ferrows_proto::handshake::{self, Accepted, Headers, h2};
//!
//! let mut fields = Headers::new();
//! fields.push("sec-websocket-version", "13");
//! fields.push("sec-websocket-protocol", "chat");
//! let req = h2::request("CONNECT", Some("websocket"), "/chat", Some("example.com"), fields);
//! h2::validate_request(&req, Some("websocket")).unwrap();
//! let accepted = Accepted { protocol: Some("chat".into()), ..Accepted::default() };
//! let response = h2::accept_response(&req, &accepted).unwrap();
//! assert_eq!(response.status, 200);
//! assert_eq!(response.headers, [("Sec-WebSocket-Protocol".to_owned(), "chat".to_owned())]);
//! ```

use super::{
    Accepted, ClientHandshakeError, ClientRequest, HandshakeError, Headers, Negotiated, Request,
    Response, check_agreement, is_safe_field, is_token, reason_phrase,
};
use crate::deflate::DeflateConfig;

/// The value of [`Request`]'s version field that means HTTP/2.
pub(crate) const VERSION_2: u8 = 20;

/// The `:protocol` value of a WebSocket Extended CONNECT.
pub const PROTOCOL: &str = "websocket";

/// Header fields that HTTP/2 forbids (RFC 9113 §8.2.2) or that RFC 8441
/// leaves out: a client must not send them, a server refuses them.
const FORBIDDEN: [&str; 8] = [
    "connection",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "sec-websocket-key",
    "sec-websocket-accept",
    "host",
];

/// A [`Request`] from an HTTP/2 request's pseudo-headers and fields:
/// `method` (`:method`), `protocol` (`:protocol`), `path` (`:path`),
/// `authority` (`:authority`). The authority is also readable as the
/// `host` header (unless the fields already have one), so that code
/// written for HTTP/1.1 requests finds it where it looks;
/// [`Request::version`] says `"HTTP/2"`.
pub fn request(
    method: &str,
    protocol: Option<&str>,
    path: &str,
    authority: Option<&str>,
    fields: Headers,
) -> Request {
    let mut headers = Headers::new();
    if let Some(authority) = authority.filter(|_| fields.count("host") == 0) {
        headers.push("host", authority);
    }
    for (name, value) in fields.iter() {
        headers.push(name, value);
    }
    if let Some(protocol) = protocol {
        headers.push(":protocol", protocol);
    }
    Request {
        method: method.to_owned(),
        target: path.to_owned(),
        version: VERSION_2,
        headers,
    }
}

/// Checks that `req` (built by [`request`]) with `:protocol` `protocol` is
/// a valid WebSocket Extended CONNECT (RFC 8441 §4–5).
///
/// Errors, as HTTP statuses for the stream's response:
/// * 405 with `Allow: CONNECT` if the method is not `CONNECT`;
/// * 400 if `:protocol` is missing (a classic CONNECT is not served);
/// * 501 if `:protocol` is not `websocket`;
/// * 426 with `Sec-WebSocket-Version: 13` for a missing or other version,
///   as over HTTP/1.1;
/// * 400 for an empty path, `Sec-WebSocket-Key` or another field that has
///   no place in an HTTP/2 request.
pub fn validate_request(req: &Request, protocol: Option<&str>) -> Result<(), HandshakeError> {
    if req.method != "CONNECT" {
        return Err(
            HandshakeError::new(405, "a WebSocket over HTTP/2 is opened with CONNECT")
                .with_header("Allow", "CONNECT"),
        );
    }
    let Some(protocol) = protocol else {
        return Err(HandshakeError::bad(
            "CONNECT without :protocol: only Extended CONNECT (RFC 8441) is served",
        ));
    };
    if !protocol.eq_ignore_ascii_case(PROTOCOL) {
        return Err(HandshakeError::new(
            501,
            format!("unsupported :protocol {protocol:?}: only \"websocket\" is served"),
        ));
    }
    if req.target.is_empty() || !req.target.starts_with('/') {
        return Err(HandshakeError::bad(":path must be an absolute path"));
    }
    let versions: Vec<&str> = req.headers.tokens("sec-websocket-version").collect();
    if versions != ["13"] || req.headers.count("sec-websocket-version") != 1 {
        return Err(
            HandshakeError::new(426, "unsupported WebSocket version: 13 required")
                .with_header("Sec-WebSocket-Version", "13"),
        );
    }
    for name in ["sec-websocket-key", "sec-websocket-accept", "upgrade"] {
        if req.headers.count(name) != 0 {
            return Err(HandshakeError::new(
                400,
                format!("{name} has no place in an HTTP/2 WebSocket request (RFC 8441 §5)"),
            ));
        }
    }
    Ok(())
}

/// An HTTP/2 response: the `:status` and the fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H2Response {
    /// `:status`: 200 to accept.
    pub status: u16,
    /// The fields in order (names as given; HTTP/2 sends them lower-cased).
    pub headers: Vec<(String, String)>,
}

/// The `200` response accepting `req` with the server's choices, checked
/// as over HTTP/1.1: 500 if the subprotocol was not offered or a header is
/// not a valid field. Headers that HTTP/2 forbids are refused with 500 too.
pub fn accept_response(req: &Request, accepted: &Accepted) -> Result<H2Response, HandshakeError> {
    let fields = super::accepted_fields(req, accepted)?;
    if let Some((name, _)) = fields
        .iter()
        .find(|(n, _)| FORBIDDEN.iter().any(|f| n.eq_ignore_ascii_case(f)))
    {
        return Err(HandshakeError::new(
            500,
            format!("header {name:?} has no place in an HTTP/2 response"),
        ));
    }
    Ok(H2Response {
        status: 200,
        headers: fields
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect(),
    })
}

/// The fields of a client's Extended CONNECT for `request` (sent with
/// `:method CONNECT`, `:protocol websocket`, `:scheme https`, `:path
/// request.target` and `:authority request.host`): `sec-websocket-version:
/// 13`, the subprotocol and extension offers and the extra headers. Its
/// `key` is not sent. Fails like [`ClientRequest::encode`], and for extra
/// headers HTTP/2 forbids (`Connection`, `Upgrade`, `Host`, …).
pub fn request_fields(
    request: &ClientRequest,
) -> Result<Vec<(String, String)>, ClientHandshakeError> {
    if let Some(p) = request.protocols.iter().find(|p| !is_token(p)) {
        return Err(ClientHandshakeError::InvalidRequest(format!(
            "subprotocol {p:?} is not an HTTP token"
        )));
    }
    if let Some((n, _)) = request.headers.iter().find(|(n, v)| !is_safe_field(n, v)) {
        return Err(ClientHandshakeError::InvalidRequest(format!(
            "header {n:?} is not a valid field"
        )));
    }
    if let Some((n, _)) = request
        .headers
        .iter()
        .find(|(n, _)| FORBIDDEN.iter().any(|f| n.eq_ignore_ascii_case(f)))
    {
        return Err(ClientHandshakeError::InvalidRequest(format!(
            "header {n:?} has no place in an HTTP/2 request"
        )));
    }
    if !request.target.starts_with('/') || request.target.bytes().any(|b| b <= b' ' || b == 0x7F) {
        return Err(ClientHandshakeError::InvalidRequest("invalid path".into()));
    }
    if !is_safe_field("host", &request.host) || request.host.is_empty() {
        return Err(ClientHandshakeError::InvalidRequest("invalid host".into()));
    }
    let mut fields = vec![("sec-websocket-version".to_owned(), "13".to_owned())];
    if !request.protocols.is_empty() {
        fields.push((
            "sec-websocket-protocol".to_owned(),
            request.protocols.join(", "),
        ));
    }
    if let Some(ext) = &request.extensions {
        if !is_safe_field("sec-websocket-extensions", ext) {
            return Err(ClientHandshakeError::InvalidRequest(
                "invalid extension offer".into(),
            ));
        }
        fields.push(("sec-websocket-extensions".to_owned(), ext.clone()));
    }
    for (name, value) in &request.headers {
        fields.push((name.to_ascii_lowercase(), value.clone()));
    }
    Ok(fields)
}

/// A [`Response`] from an HTTP/2 response's `:status` and fields (for the
/// client's caller; [`Response::to_head_string`] says `HTTP/2`).
pub fn response(status: u16, fields: Headers) -> Response {
    Response {
        status,
        reason: reason_phrase(status).to_owned(),
        version: VERSION_2,
        headers: fields,
    }
}

/// Checks a server's answer to an Extended CONNECT strictly: status 200,
/// only an offered subprotocol, only offered extensions with valid
/// parameters (the same checks as [`super::validate_response`], without
/// the accept key, which HTTP/2 does not use).
pub fn validate_response(
    status: u16,
    headers: &Headers,
    request: &ClientRequest,
    deflate: Option<&DeflateConfig>,
) -> Result<Negotiated, ClientHandshakeError> {
    if status != 200 {
        return Err(ClientHandshakeError::NotOk { status });
    }
    check_agreement(headers, request, deflate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::negotiate_deflate;

    fn fields(list: &[(&str, &str)]) -> Headers {
        let mut h = Headers::new();
        for (n, v) in list {
            h.push(*n, *v);
        }
        h
    }

    fn connect(list: &[(&str, &str)]) -> Request {
        request(
            "CONNECT",
            Some("websocket"),
            "/chat?room=1",
            Some("example.com"),
            fields(list),
        )
    }

    #[test]
    fn accepts_the_rfc_8441_example() {
        // RFC 8441 §5.1.
        let req = connect(&[
            ("sec-websocket-protocol", "chat, superchat"),
            ("sec-websocket-extensions", "permessage-deflate"),
            ("sec-websocket-version", "13"),
            ("origin", "http://www.example.com"),
        ]);
        assert_eq!(validate_request(&req, Some("websocket")), Ok(()));
        assert_eq!(req.version(), "HTTP/2");
        assert_eq!(req.path(), "/chat");
        assert_eq!(req.query_param("room"), Some("1"));
        assert_eq!(req.header("host"), Some("example.com"));
        assert!(req.is_upgrade(), "routers see it as a WebSocket request");
        let get = request("GET", None, "/", Some("h"), Headers::new());
        assert!(!get.is_upgrade());
        assert_eq!(
            req.subprotocols().collect::<Vec<_>>(),
            ["chat", "superchat"]
        );
        let deflate = negotiate_deflate(&req, Some(&DeflateConfig::default()));
        assert!(deflate.is_some());
        let accepted = Accepted {
            protocol: Some("chat".into()),
            deflate,
            headers: vec![("x-served-by".into(), "ferrows".into())],
        };
        let resp = accept_response(&req, &accepted).unwrap();
        assert_eq!(resp.status, 200);
        let names: Vec<&str> = resp.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "Sec-WebSocket-Protocol",
                "Sec-WebSocket-Extensions",
                "x-served-by"
            ]
        );
        // The HTTP/1.1 validator refuses it: the two paths do not mix.
        assert!(crate::handshake::validate_request(&req).is_err());
    }

    #[test]
    fn refusals_map_to_statuses() {
        let ok = [("sec-websocket-version", "13")];
        let get = request("GET", None, "/", Some("h"), fields(&ok));
        let e = validate_request(&get, None).unwrap_err();
        assert_eq!(e.status, 405);
        assert_eq!(e.headers, [("Allow".to_owned(), "CONNECT".to_owned())]);
        let classic = request("CONNECT", None, "/", Some("h"), fields(&ok));
        assert_eq!(validate_request(&classic, None).unwrap_err().status, 400);
        let other = request("CONNECT", Some("webtransport"), "/", Some("h"), fields(&ok));
        assert_eq!(
            validate_request(&other, Some("webtransport"))
                .unwrap_err()
                .status,
            501
        );
        assert_eq!(
            validate_request(&connect(&ok), Some("WebSocket")),
            Ok(()),
            "tokens compare case-insensitively"
        );
        for bad_version in [&[][..], &[("sec-websocket-version", "8")][..]] {
            let e = validate_request(&connect(bad_version), Some("websocket")).unwrap_err();
            assert_eq!(e.status, 426);
            assert_eq!(
                e.headers,
                [("Sec-WebSocket-Version".to_owned(), "13".to_owned())]
            );
        }
        let keyed = connect(&[
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        assert_eq!(
            validate_request(&keyed, Some("websocket"))
                .unwrap_err()
                .status,
            400
        );
        let star = request("CONNECT", Some("websocket"), "*", None, fields(&ok));
        assert_eq!(
            validate_request(&star, Some("websocket"))
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn response_refuses_unoffered_protocol_and_forbidden_headers() {
        let req = connect(&[("sec-websocket-version", "13")]);
        let chosen = Accepted {
            protocol: Some("chat".into()),
            ..Accepted::default()
        };
        assert_eq!(accept_response(&req, &chosen).unwrap_err().status, 500);
        let hop = Accepted {
            headers: vec![("Connection".into(), "close".into())],
            ..Accepted::default()
        };
        assert_eq!(accept_response(&req, &hop).unwrap_err().status, 500);
        let injected = Accepted {
            headers: vec![("x".into(), "a\r\nb".into())],
            ..Accepted::default()
        };
        assert_eq!(accept_response(&req, &injected).unwrap_err().status, 500);
    }

    #[test]
    fn client_fields_and_response() {
        let mut cr = ClientRequest::new("example.com", "/chat");
        cr.protocols = vec!["chat".into(), "superchat".into()];
        cr.extensions = Some("permessage-deflate; client_max_window_bits".into());
        cr.headers = vec![("Origin".into(), "https://example.com".into())];
        let f = request_fields(&cr).unwrap();
        assert_eq!(
            f,
            [
                ("sec-websocket-version".to_owned(), "13".to_owned()),
                (
                    "sec-websocket-protocol".to_owned(),
                    "chat, superchat".to_owned()
                ),
                (
                    "sec-websocket-extensions".to_owned(),
                    "permessage-deflate; client_max_window_bits".to_owned()
                ),
                ("origin".to_owned(), "https://example.com".to_owned()),
            ]
        );
        assert!(!f.iter().any(|(n, _)| n == "sec-websocket-key"));

        let deflate = DeflateConfig::default();
        let ok = fields(&[
            ("sec-websocket-protocol", "chat"),
            ("sec-websocket-extensions", "permessage-deflate"),
        ]);
        let n = validate_response(200, &ok, &cr, Some(&deflate)).unwrap();
        assert_eq!(n.protocol.as_deref(), Some("chat"));
        assert!(n.deflate.is_some());
        assert_eq!(
            validate_response(101, &ok, &cr, Some(&deflate)),
            Err(ClientHandshakeError::NotOk { status: 101 })
        );
        let e = validate_response(404, &Headers::new(), &cr, None).unwrap_err();
        assert!(e.to_string().contains("404 Not Found"), "{e}");
        let unoffered = fields(&[("sec-websocket-protocol", "mqtt")]);
        assert!(matches!(
            validate_response(200, &unoffered, &cr, Some(&deflate)),
            Err(ClientHandshakeError::UnexpectedProtocol(_))
        ));
        assert!(matches!(
            validate_response(200, &ok, &cr, None),
            Err(ClientHandshakeError::UnexpectedExtension(_))
        ));

        let mut hop = ClientRequest::new("example.com", "/");
        hop.headers = vec![("Connection".into(), "keep-alive".into())];
        assert!(matches!(
            request_fields(&hop),
            Err(ClientHandshakeError::InvalidRequest(_))
        ));
        let relative = ClientRequest::new("example.com", "chat");
        assert!(request_fields(&relative).is_err());
    }
}
