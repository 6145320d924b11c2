//! The opening handshake (RFC 6455 §1.3, §4; RFC 7692 §5, §7.1), both roles,
//! through the public API only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use bytes::BytesMut;
use ferrows_proto::deflate::{self, DeflateConfig, DeflateParams};
use ferrows_proto::handshake::{
    Accepted, ClientHandshakeError, ClientRequest, HandshakeLimits, Request, Response, accept_key,
    accept_response, negotiate_deflate, parse_request, parse_response, validate_request,
    validate_response,
};
use ferrows_proto::{Decoder, Encoder, Incoming, Limits, Role, WriteQueue};

/// The client's handshake of RFC 6455 §1.3.
const RFC_REQUEST: &str = "GET /chat HTTP/1.1\r\n\
Host: server.example.com\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Origin: http://example.com\r\n\
Sec-WebSocket-Protocol: chat, superchat\r\n\
Sec-WebSocket-Version: 13\r\n\
\r\n";

/// The server's answer of RFC 6455 §1.3.
const RFC_RESPONSE: &str = "HTTP/1.1 101 Switching Protocols\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
Sec-WebSocket-Protocol: chat\r\n\
\r\n";

const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fn limits() -> HandshakeLimits {
    HandshakeLimits::default()
}

fn request(text: &str) -> Request {
    let (req, n) = parse_request(text.as_bytes(), &limits()).unwrap().unwrap();
    assert_eq!(n, text.len());
    req
}

fn response(text: &str) -> Response {
    let (resp, n) = parse_response(text.as_bytes(), &limits()).unwrap().unwrap();
    assert_eq!(n, text.len());
    resp
}

/// The client that sent [`RFC_REQUEST`].
fn rfc_client() -> ClientRequest {
    let mut c = ClientRequest::new("server.example.com", "/chat");
    c.key = RFC_KEY.to_owned();
    c.protocols = vec!["chat".to_owned(), "superchat".to_owned()];
    c
}

// ---------------------------------------------------------------------------
// §1.3 / §4.2.2 the accept key
// ---------------------------------------------------------------------------

mod s1_3_accept_key {
    use super::*;

    #[test]
    fn rfc_vector() {
        assert_eq!(accept_key(RFC_KEY.as_bytes()), RFC_ACCEPT);
    }

    #[test]
    fn the_rfc_exchange_is_reproduced_byte_for_byte() {
        let req = request(RFC_REQUEST);
        let upgrade = validate_request(&req).unwrap();
        assert_eq!(upgrade.accept, RFC_ACCEPT);
        let accepted = Accepted {
            protocol: Some("chat".to_owned()),
            ..Accepted::default()
        };
        let bytes = accept_response(&req, &upgrade, &accepted).unwrap();
        assert_eq!(String::from_utf8(bytes).unwrap(), RFC_RESPONSE);
        let negotiated = validate_response(&response(RFC_RESPONSE), &rfc_client(), None).unwrap();
        assert_eq!(negotiated.protocol.as_deref(), Some("chat"));
        assert_eq!(negotiated.deflate, None);
    }

    #[test]
    fn whitespace_around_the_key_is_not_part_of_it() {
        let text = RFC_REQUEST.replace(
            &format!("Sec-WebSocket-Key: {RFC_KEY}"),
            &format!("Sec-WebSocket-Key: \t {RFC_KEY} \t"),
        );
        assert_eq!(
            validate_request(&request(&text)).unwrap().accept,
            RFC_ACCEPT
        );
    }
}

// ---------------------------------------------------------------------------
// §4.2.1 reading the client's handshake, incrementally
// ---------------------------------------------------------------------------

mod s4_2_1_request {
    use super::*;

    #[test]
    fn a_request_fed_byte_by_byte_completes_exactly_at_its_end() {
        let bytes = RFC_REQUEST.as_bytes();
        let mut buf = Vec::new();
        for (i, b) in bytes.iter().enumerate() {
            buf.push(*b);
            let parsed = parse_request(&buf, &limits()).unwrap();
            if i + 1 < bytes.len() {
                assert!(parsed.is_none(), "complete after {} bytes", i + 1);
            } else {
                let (req, n) = parsed.unwrap();
                assert_eq!(n, bytes.len());
                assert_eq!(req.method(), "GET");
                assert_eq!(req.path(), "/chat");
                assert_eq!(req.version(), "HTTP/1.1");
                assert_eq!(req.header("origin"), Some("http://example.com"));
                assert_eq!(
                    req.subprotocols().collect::<Vec<_>>(),
                    ["chat", "superchat"]
                );
                assert!(req.is_upgrade());
                assert_eq!(validate_request(&req).unwrap().accept, RFC_ACCEPT);
            }
        }
    }

    #[test]
    fn bytes_after_the_head_are_left_for_the_websocket_stream() {
        // A client may send its first frame right behind the request.
        let mut wire = RFC_REQUEST.as_bytes().to_vec();
        let frame = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        wire.extend_from_slice(&frame);
        let (req, n) = parse_request(&wire, &limits()).unwrap().unwrap();
        assert_eq!(n, RFC_REQUEST.len());
        validate_request(&req).unwrap();
        let mut rest = BytesMut::from(&wire[n..]);
        let mut d = Decoder::new(Role::Server, Limits::default(), None);
        assert_eq!(
            d.decode(&mut rest).unwrap(),
            Some(Incoming::Text("Hello".into()))
        );
    }

    #[test]
    fn an_endless_head_is_refused_with_431_once_it_passes_the_limit() {
        let limits = HandshakeLimits::default().max_head_size(256);
        let mut buf = b"GET / HTTP/1.1\r\nX-Filler: ".to_vec();
        let mut refused_at = None;
        for i in 0..1000 {
            buf.push(b'a');
            match parse_request(&buf, &limits) {
                Ok(None) => {}
                Ok(Some(_)) => panic!("complete without an end"),
                Err(e) => {
                    assert_eq!(e.status, 431);
                    refused_at = Some(i);
                    break;
                }
            }
        }
        assert_eq!(buf.len(), 256, "refused at {refused_at:?}");
    }

    #[test]
    fn too_many_header_fields_are_refused_with_431() {
        let limits = HandshakeLimits::default().max_headers(8);
        let mut text = String::from("GET / HTTP/1.1\r\n");
        for i in 0..9 {
            text.push_str(&format!("X-{i}: {i}\r\n"));
        }
        text.push_str("\r\n");
        assert_eq!(
            parse_request(text.as_bytes(), &limits).unwrap_err().status,
            431
        );
    }

    #[test]
    fn non_http_is_refused_with_400() {
        for garbage in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            b"GET /\x00 HTTP/1.1\r\n\r\n",
        ] {
            let e = parse_request(garbage, &limits()).unwrap_err();
            assert_eq!(e.status, 400, "{garbage:?}");
        }
    }

    fn refused(text: &str) -> (u16, String) {
        let e = validate_request(&request(text)).unwrap_err();
        let resp = e.to_response();
        // The refusal is a complete HTTP response with that status, and the
        // reason as its body.
        let (parsed, n) = parse_response(&resp, &limits()).unwrap().unwrap();
        assert_eq!(parsed.status(), e.status);
        assert_eq!(resp[n..], *format!("{}\n", e.reason).as_bytes());
        assert_eq!(
            parsed.header("content-length"),
            Some((resp.len() - n).to_string().as_str())
        );
        (e.status, e.reason.into_owned())
    }

    #[test]
    fn every_rule_of_the_request_is_checked() {
        let r = RFC_REQUEST;
        let cases: [(String, u16); 15] = [
            (r.replace("GET /chat", "POST /chat"), 400),
            (r.replace("HTTP/1.1", "HTTP/1.0"), 400),
            (r.replace("Host: server.example.com\r\n", ""), 400),
            (
                r.replace("Host: server.example.com\r\n", "Host: a\r\nHost: b\r\n"),
                400,
            ),
            (r.replace("Upgrade: websocket\r\n", ""), 400),
            (r.replace("Upgrade: websocket", "Upgrade: h2c"), 400),
            (
                r.replace("Connection: Upgrade", "Connection: keep-alive"),
                400,
            ),
            (r.replace("Sec-WebSocket-Version: 13\r\n", ""), 426),
            (r.replace("Version: 13", "Version: 8"), 426),
            (r.replace("Version: 13", "Version: 13, 8"), 426),
            (
                r.replace(
                    "Version: 13\r\n",
                    "Version: 13\r\nSec-WebSocket-Version: 13\r\n",
                ),
                426,
            ),
            (
                r.replace(&format!("Sec-WebSocket-Key: {RFC_KEY}\r\n"), ""),
                400,
            ),
            (
                r.replace(
                    &format!("Sec-WebSocket-Key: {RFC_KEY}\r\n"),
                    &format!("Sec-WebSocket-Key: {RFC_KEY}\r\nSec-WebSocket-Key: {RFC_KEY}\r\n"),
                ),
                400,
            ),
            // 11 bytes, not 16.
            (r.replace(RFC_KEY, "dGhlIHNhbXBsZQ=="), 400),
            (r.replace(RFC_KEY, "not base64!!"), 400),
        ];
        for (text, status) in cases {
            let (got, reason) = refused(&text);
            assert_eq!(got, status, "{reason}\n{text}");
            assert!(!reason.is_empty());
        }
    }

    #[test]
    fn a_426_names_the_supported_version() {
        let text = RFC_REQUEST.replace("Version: 13", "Version: 8");
        let e = validate_request(&request(&text)).unwrap_err();
        let resp = String::from_utf8(e.to_response()).unwrap();
        assert!(
            resp.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{resp}"
        );
        assert!(resp.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{resp}");
    }

    #[test]
    fn header_names_and_tokens_are_case_insensitive() {
        let text = "GET / HTTP/1.1\r\nHOST: x\r\nupgrade: WebSocket\r\nCONNECTION: keep-alive, UPGRADE\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nSEC-WEBSOCKET-VERSION: 13\r\n\r\n";
        assert_eq!(validate_request(&request(text)).unwrap().accept, RFC_ACCEPT);
    }

    #[test]
    fn a_client_request_is_accepted_by_the_server_side() {
        let mut c = ClientRequest::new("example.com:8080", "/game?room=1");
        c.protocols = vec!["v1.game".to_owned()];
        c.headers = vec![("Origin".to_owned(), "http://example.com".to_owned())];
        let bytes = c.encode().unwrap();
        let req = request(std::str::from_utf8(&bytes).unwrap());
        assert_eq!(req.target(), "/game?room=1");
        assert_eq!(req.query_param("room"), Some("1"));
        assert_eq!(req.header("host"), Some("example.com:8080"));
        assert_eq!(
            validate_request(&req).unwrap().accept,
            accept_key(c.key.as_bytes())
        );
    }
}

// ---------------------------------------------------------------------------
// §4.1 the client validates the server's handshake
// ---------------------------------------------------------------------------

mod s4_1_response {
    use super::*;

    fn check(text: &str, deflate: Option<&DeflateConfig>) -> Result<(), ClientHandshakeError> {
        validate_response(&response(text), &rfc_client(), deflate).map(|_| ())
    }

    /// The RFC response with `from` replaced by `to`.
    fn rfc_with(from: &str, to: &str) -> String {
        assert!(RFC_RESPONSE.contains(from));
        RFC_RESPONSE.replace(from, to)
    }

    #[test]
    fn a_response_fed_byte_by_byte_completes_exactly_at_its_end() {
        let bytes = RFC_RESPONSE.as_bytes();
        for k in 0..bytes.len() {
            assert!(
                parse_response(&bytes[..k], &limits()).unwrap().is_none(),
                "{k}"
            );
        }
        let mut with_frame = bytes.to_vec();
        with_frame.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
        let (resp, n) = parse_response(&with_frame, &limits()).unwrap().unwrap();
        assert_eq!(n, bytes.len());
        assert_eq!(resp.status(), 101);
        assert_eq!(resp.reason(), "Switching Protocols");
        assert_eq!(resp.header("sec-websocket-accept"), Some(RFC_ACCEPT));
    }

    #[test]
    fn malformed_responses() {
        for text in [
            &b"HTTP/1.1 1O1 Switching\r\n\r\n"[..],
            b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nNo colon here\r\n\r\n",
        ] {
            assert!(
                matches!(
                    parse_response(text, &limits()),
                    Err(ClientHandshakeError::MalformedResponse(_))
                ),
                "{text:?}"
            );
        }
        let small = HandshakeLimits::default().max_head_size(64);
        let long = format!("HTTP/1.1 101 OK\r\nX: {}\r\n", "a".repeat(100));
        assert!(matches!(
            parse_response(long.as_bytes(), &small),
            Err(ClientHandshakeError::MalformedResponse(_))
        ));
    }

    #[test]
    fn a_status_other_than_101_is_refused() {
        for (status, reason) in [
            (200, "OK"),
            (302, "Found"),
            (400, "Bad Request"),
            (426, "Upgrade Required"),
        ] {
            let text = format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n\r\n");
            assert_eq!(
                check(&text, None),
                Err(ClientHandshakeError::NotSwitching {
                    status,
                    reason: reason.to_owned()
                })
            );
        }
    }

    #[test]
    fn missing_upgrade_connection_or_accept() {
        assert_eq!(
            check(&rfc_with("Upgrade: websocket\r\n", ""), None),
            Err(ClientHandshakeError::MissingUpgrade)
        );
        assert_eq!(
            check(&rfc_with("Upgrade: websocket", "Upgrade: h2c"), None),
            Err(ClientHandshakeError::MissingUpgrade)
        );
        assert_eq!(
            check(&rfc_with("Connection: Upgrade\r\n", ""), None),
            Err(ClientHandshakeError::MissingConnection)
        );
        assert_eq!(
            check(&rfc_with("Connection: Upgrade", "Connection: close"), None),
            Err(ClientHandshakeError::MissingConnection)
        );
        assert_eq!(
            check(
                &rfc_with(&format!("Sec-WebSocket-Accept: {RFC_ACCEPT}\r\n"), ""),
                None
            ),
            Err(ClientHandshakeError::MissingAccept)
        );
    }

    #[test]
    fn a_wrong_accept_is_refused_and_explained() {
        let wrong = [
            ("AAAALMBiTxaQ9kYGzzhZRbK+xOo=", None),
            ("s3ppLMBiTxaQ9kYGzzhZRbK+xOo=", None),
            ("S3PPLMBITXAQ9KYGZZHZRBK+XOO=", Some("case")),
            ("b37a4f2cc0624f1690f64606cf385945b2bec4ea", Some("hex")),
            // The accept of the key without the GUID-appending step.
            ("dGhlIHNhbXBsZSBub25jZQ==", Some("GUID")),
        ];
        for (value, why) in wrong {
            let text = rfc_with(RFC_ACCEPT, value);
            let e = check(&text, None).unwrap_err();
            assert_eq!(
                e,
                ClientHandshakeError::WrongAccept {
                    expected: RFC_ACCEPT.to_owned(),
                    got: value.to_owned()
                }
            );
            if let Some(why) = why {
                assert!(e.to_string().contains(why), "{e}");
            }
        }
        // Two accept headers, even both right.
        let twice = rfc_with(
            "Sec-WebSocket-Protocol",
            &format!("Sec-WebSocket-Accept: {RFC_ACCEPT}\r\nSec-WebSocket-Protocol"),
        );
        assert!(matches!(
            check(&twice, None),
            Err(ClientHandshakeError::WrongAccept { .. })
        ));
    }

    #[test]
    fn only_an_offered_subprotocol_may_be_chosen() {
        assert!(check(RFC_RESPONSE, None).is_ok());
        assert!(check(&rfc_with(": chat", ": superchat"), None).is_ok());
        // No subprotocol chosen is fine.
        assert!(check(&rfc_with("Sec-WebSocket-Protocol: chat\r\n", ""), None).is_ok());
        for bad in [
            rfc_with(": chat", ": mqtt"),
            rfc_with(": chat", ": chat, superchat"),
            rfc_with(
                "Sec-WebSocket-Protocol: chat\r\n",
                "Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: superchat\r\n",
            ),
            // Subprotocols are case-sensitive (RFC 6455 §4.1).
            rfc_with(": chat", ": CHAT"),
        ] {
            assert!(
                matches!(
                    check(&bad, None),
                    Err(ClientHandshakeError::UnexpectedProtocol(_))
                ),
                "{bad}"
            );
        }
        // A client that offered none refuses any.
        let mut plain = rfc_client();
        plain.protocols.clear();
        assert!(matches!(
            validate_response(&response(RFC_RESPONSE), &plain, None),
            Err(ClientHandshakeError::UnexpectedProtocol(_))
        ));
    }

    #[test]
    fn only_offered_extensions_with_valid_parameters_are_accepted() {
        let with_ext = |value: &str| {
            rfc_with(
                "\r\n\r\n",
                &format!("\r\nSec-WebSocket-Extensions: {value}\r\n\r\n"),
            )
        };
        let default = DeflateConfig::default();
        let asking = DeflateConfig::default()
            .server_no_context_takeover(true)
            .server_max_window_bits(10);
        let bad: [(&str, Option<&DeflateConfig>); 13] = [
            ("permessage-deflate", None),
            ("x-webkit-deflate-frame", Some(&default)),
            ("permessage-deflate, permessage-deflate", Some(&default)),
            ("permessage-deflate;", Some(&default)),
            ("permessage-deflate; client_max_window_bits", Some(&default)),
            (
                "permessage-deflate; client_max_window_bits=16",
                Some(&default),
            ),
            (
                "permessage-deflate; server_max_window_bits=7",
                Some(&default),
            ),
            ("permessage-deflate; server_max_window_bits", Some(&default)),
            (
                "permessage-deflate; server_no_context_takeover=1",
                Some(&default),
            ),
            ("permessage-deflate; mystery", Some(&default)),
            (
                "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
                Some(&default),
            ),
            // We asked for server_no_context_takeover and window 10.
            (
                "permessage-deflate; server_max_window_bits=10",
                Some(&asking),
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=11",
                Some(&asking),
            ),
        ];
        for (value, config) in bad {
            let result = check(&with_ext(value), config);
            assert!(
                matches!(result, Err(ClientHandshakeError::UnexpectedExtension(_))),
                "{value}: {result:?}"
            );
        }
        let good: [(&str, &DeflateConfig); 5] = [
            ("permessage-deflate", &default),
            ("PerMessage-Deflate", &default),
            (
                "permessage-deflate; server_max_window_bits=8; client_max_window_bits=8",
                &default,
            ),
            (
                "permessage-deflate; client_no_context_takeover; server_no_context_takeover",
                &default,
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=9",
                &asking,
            ),
        ];
        for (value, config) in good {
            let n = validate_response(&response(&with_ext(value)), &rfc_client(), Some(config))
                .unwrap_or_else(|e| panic!("{value}: {e}"));
            assert!(n.deflate.is_some());
        }
        // Not accepted at all: no compression, and that is fine.
        let n = validate_response(&response(RFC_RESPONSE), &rfc_client(), Some(&default)).unwrap();
        assert_eq!(n.deflate, None);
    }

    #[test]
    fn every_error_has_a_message() {
        let errors = [
            ClientHandshakeError::InvalidRequest("x".into()),
            ClientHandshakeError::MalformedResponse("x".into()),
            ClientHandshakeError::NotSwitching {
                status: 404,
                reason: "Not Found".into(),
            },
            ClientHandshakeError::MissingUpgrade,
            ClientHandshakeError::MissingConnection,
            ClientHandshakeError::MissingAccept,
            ClientHandshakeError::WrongAccept {
                expected: RFC_ACCEPT.into(),
                got: format!("{RFC_ACCEPT}\n"),
            },
            ClientHandshakeError::UnexpectedProtocol("x".into()),
            ClientHandshakeError::UnexpectedExtension("x".into()),
        ];
        for e in &errors {
            assert!(e.to_string().len() > 5, "{e:?}");
        }
        assert!(errors[2].to_string().contains("404"));
        // The classic hand-written-server bug: base64 with a line break.
        assert!(errors[6].to_string().contains("newline"), "{}", errors[6]);
    }

    #[test]
    fn the_client_refuses_to_build_an_invalid_request() {
        let mut c = rfc_client();
        c.protocols = vec!["two words".to_owned()];
        assert!(matches!(
            c.encode(),
            Err(ClientHandshakeError::InvalidRequest(_))
        ));
        let mut c = rfc_client();
        c.headers = vec![("X-Token".to_owned(), "a\r\nSet-Cookie: evil".to_owned())];
        assert!(matches!(
            c.encode(),
            Err(ClientHandshakeError::InvalidRequest(_))
        ));
        let mut c = rfc_client();
        c.headers = vec![("Bad Name".to_owned(), "v".to_owned())];
        assert!(matches!(
            c.encode(),
            Err(ClientHandshakeError::InvalidRequest(_))
        ));
        let mut c = rfc_client();
        c.host = "evil\r\nX: y".to_owned();
        assert!(matches!(
            c.encode(),
            Err(ClientHandshakeError::InvalidRequest(_))
        ));
        let mut c = rfc_client();
        c.target = "/a b".to_owned();
        assert!(matches!(
            c.encode(),
            Err(ClientHandshakeError::InvalidRequest(_))
        ));
    }
}

// ---------------------------------------------------------------------------
// RFC 7692 permessage-deflate negotiated end to end
// ---------------------------------------------------------------------------

mod rfc7692_negotiation {
    use super::*;

    struct Outcome {
        /// The response's Sec-WebSocket-Extensions value, if any.
        header: Option<String>,
        server: Option<DeflateParams>,
        client: Option<DeflateParams>,
    }

    /// The whole handshake: the client's request with its offer, parsed and
    /// answered by the server, the answer validated by the client.
    fn handshake(
        client_cfg: Option<&DeflateConfig>,
        server_cfg: Option<&DeflateConfig>,
    ) -> Outcome {
        let mut c = ClientRequest::new("localhost", "/");
        c.protocols = vec!["chat".to_owned()];
        c.extensions = client_cfg.map(deflate::client_offer);
        let wire = c.encode().unwrap();

        let (req, n) = parse_request(&wire, &limits()).unwrap().unwrap();
        assert_eq!(n, wire.len());
        let upgrade = validate_request(&req).unwrap();
        let negotiated = negotiate_deflate(&req, server_cfg);
        let accepted = Accepted {
            protocol: Some("chat".to_owned()),
            deflate: negotiated.clone(),
            ..Accepted::default()
        };
        let answer = accept_response(&req, &upgrade, &accepted).unwrap();

        let (resp, n) = parse_response(&answer, &limits()).unwrap().unwrap();
        assert_eq!(n, answer.len());
        let result = validate_response(&resp, &c, client_cfg).unwrap();
        assert_eq!(result.protocol.as_deref(), Some("chat"));
        Outcome {
            header: resp.header("sec-websocket-extensions").map(str::to_owned),
            server: negotiated.map(|(params, _)| params),
            client: result.deflate,
        }
    }

    /// Both directions carry messages compressed as negotiated, several in a
    /// row (so context takeover, or its absence, matters).
    fn exchange(
        client_cfg: &DeflateConfig,
        client: DeflateParams,
        server_cfg: &DeflateConfig,
        server: DeflateParams,
    ) {
        let messages = [
            "the quick brown fox jumps over the lazy dog ".repeat(20),
            "the quick brown fox jumps over the lazy dog ".repeat(21),
            "κόσμε κόσμε κόσμε the quick brown fox".repeat(10),
        ];
        let directions = [
            (
                Encoder::new(
                    Role::Client,
                    Some((client.client_compressor(client_cfg), 0)),
                ),
                Decoder::new(
                    Role::Server,
                    Limits::default(),
                    Some(server.server_decompressor()),
                ),
            ),
            (
                Encoder::new(
                    Role::Server,
                    Some((server.server_compressor(server_cfg), 0)),
                ),
                Decoder::new(
                    Role::Client,
                    Limits::default(),
                    Some(client.client_decompressor()),
                ),
            ),
        ];
        for (mut enc, mut dec) in directions {
            for m in &messages {
                let mut q = WriteQueue::new();
                enc.text(m, &mut q).unwrap();
                let wire = q.to_vec();
                assert_ne!(wire[0] & 0x40, 0, "RSV1 not set");
                assert!(wire.len() < m.len() / 2, "not compressed");
                let mut buf = BytesMut::from(&wire[..]);
                assert_eq!(
                    dec.decode(&mut buf).unwrap(),
                    Some(Incoming::Text(m.as_str().into()))
                );
                assert!(buf.is_empty());
            }
        }
    }

    fn agreed(
        client_cfg: DeflateConfig,
        server_cfg: DeflateConfig,
        expected_header: &str,
    ) -> (DeflateParams, DeflateParams) {
        let client_cfg = client_cfg.threshold(0);
        let server_cfg = server_cfg.threshold(0);
        let out = handshake(Some(&client_cfg), Some(&server_cfg));
        assert_eq!(out.header.as_deref(), Some(expected_header));
        let (server, client) = (out.server.unwrap(), out.client.unwrap());
        // Both ends agree on what each side may send...
        assert_eq!(
            server.server_no_context_takeover,
            client.server_no_context_takeover
        );
        assert_eq!(server.server_max_window_bits, client.server_max_window_bits);
        assert_eq!(server.client_max_window_bits, client.client_max_window_bits);
        // ...except that a client that offered to reset its context does so
        // even if the server did not ask (harmless: the server's inflater
        // simply never needs the old context).
        assert_eq!(
            client.client_no_context_takeover,
            server.client_no_context_takeover || client_cfg.client_no_context_takeover
        );
        exchange(&client_cfg, client, &server_cfg, server);
        (server, client)
    }

    #[test]
    fn defaults_on_both_sides() {
        assert_eq!(
            deflate::client_offer(&DeflateConfig::default()),
            "permessage-deflate; client_max_window_bits"
        );
        let (server, _) = agreed(
            DeflateConfig::default(),
            DeflateConfig::default(),
            "permessage-deflate",
        );
        assert_eq!(server, DeflateParams::default());
    }

    #[test]
    fn the_client_asks_the_server_to_reset_and_shrink_its_window() {
        let client = DeflateConfig::default()
            .server_no_context_takeover(true)
            .server_max_window_bits(10);
        let (server, _) = agreed(
            client,
            DeflateConfig::default(),
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=10",
        );
        assert!(server.server_no_context_takeover);
        assert_eq!(server.server_max_window_bits, 10);
    }

    #[test]
    fn the_server_limits_the_client() {
        let server_cfg = DeflateConfig::default()
            .client_no_context_takeover(true)
            .client_max_window_bits(9);
        let (server, client) = agreed(
            DeflateConfig::default(),
            server_cfg,
            "permessage-deflate; client_no_context_takeover; client_max_window_bits=9",
        );
        assert!(server.client_no_context_takeover && client.client_no_context_takeover);
        assert_eq!(client.client_max_window_bits, 9);
    }

    #[test]
    fn both_limit_the_client_window_and_the_smaller_wins() {
        let client_cfg = DeflateConfig::default()
            .client_no_context_takeover(true)
            .client_max_window_bits(12);
        let server_cfg = DeflateConfig::default().client_max_window_bits(10);
        assert_eq!(
            deflate::client_offer(&client_cfg),
            "permessage-deflate; client_no_context_takeover; client_max_window_bits=12"
        );
        let (_, client) = agreed(
            client_cfg,
            server_cfg,
            "permessage-deflate; client_max_window_bits=10",
        );
        assert_eq!(client.client_max_window_bits, 10);
        assert!(client.client_no_context_takeover);
    }

    #[test]
    fn the_server_resets_and_shrinks_its_own_window_unasked() {
        let server_cfg = DeflateConfig::default()
            .server_no_context_takeover(true)
            .server_max_window_bits(9);
        let (server, client) = agreed(
            DeflateConfig::default(),
            server_cfg,
            "permessage-deflate; server_no_context_takeover",
        );
        assert!(server.server_no_context_takeover && client.server_no_context_takeover);
        // The window is not announced (the client did not ask) but used.
        assert_eq!(server.server_max_window_bits, 15);
    }

    #[test]
    fn everything_at_once_with_8_bit_windows() {
        let client_cfg = DeflateConfig::default()
            .server_no_context_takeover(true)
            .client_no_context_takeover(true)
            .server_max_window_bits(8)
            .client_max_window_bits(8);
        let server_cfg = DeflateConfig::default()
            .server_no_context_takeover(true)
            .client_no_context_takeover(true)
            .server_max_window_bits(8)
            .client_max_window_bits(8);
        agreed(
            client_cfg,
            server_cfg,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=8; client_max_window_bits=8",
        );
    }

    #[test]
    fn no_compression_unless_both_want_it() {
        let cfg = DeflateConfig::default();
        for (client, server) in [(Some(&cfg), None), (None, Some(&cfg)), (None, None)] {
            let out = handshake(client, server);
            assert_eq!(out.header, None);
            assert_eq!(out.server, None);
            assert_eq!(out.client, None);
        }
    }

    #[test]
    fn the_server_takes_the_first_acceptable_offer() {
        // A client offering a preferred variant first and a fallback second
        // (RFC 7692 §5.1): the first is malformed, so the second is taken.
        let text = RFC_REQUEST.replace(
            "Origin",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=20, permessage-deflate; server_no_context_takeover\r\nOrigin",
        );
        let req = request(&text);
        let (params, header) = negotiate_deflate(&req, Some(&DeflateConfig::default())).unwrap();
        assert_eq!(header, "permessage-deflate; server_no_context_takeover");
        assert!(params.server_no_context_takeover);
        // Other extensions are ignored, and a request with only unknown ones
        // gets no compression.
        let text = RFC_REQUEST.replace(
            "Origin",
            "Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\nOrigin",
        );
        assert_eq!(
            negotiate_deflate(&request(&text), Some(&DeflateConfig::default())),
            None
        );
    }
}
