//! Arbitrary bytes as an HTTP request head (server side) and as a response
//! head (client side), plus the extension header grammar.
//!
//! Invariants:
//! - no panic;
//! - a request head that `validate_request` accepts gets a 101 response from
//!   `accept_response` (with the first offered subprotocol and whatever
//!   permessage-deflate `negotiate_deflate` agrees to), and a client that
//!   sent that request accepts the response: same subprotocol, same
//!   compression decision;
//! - a refused request gets a 400 or 426 whose HTTP response parses back
//!   with that status;
//! - a response `validate_response` accepts is a 101 that chose only what
//!   was offered;
//! - a `Sec-WebSocket-Extensions` value that parses prints back to a string
//!   that parses to the same list.
#![no_main]

use ferrows_proto::deflate::DeflateConfig;
use ferrows_proto::extensions;
use ferrows_proto::handshake::{
    Accepted, ClientRequest, HandshakeLimits, accept_response, negotiate_deflate, parse_request,
    parse_response, validate_request, validate_response,
};
use libfuzzer_sys::fuzz_target;

fn limits() -> HandshakeLimits {
    HandshakeLimits::default()
        .max_head_size(4096)
        .max_headers(32)
}

fn server_side(data: &[u8]) {
    let req = match parse_request(data, &limits()) {
        Ok(Some((req, n))) => {
            assert!(n <= data.len() && n <= 4096, "head of {n} bytes");
            req
        }
        Ok(None) => return,
        Err(e) => {
            assert!(matches!(e.status, 400 | 431), "{e}");
            return;
        }
    };
    // Accessors and the trace form must not panic.
    let _ = (
        req.path(),
        req.query(),
        req.query_param("a"),
        req.is_upgrade(),
    );
    let _ = (req.to_head_string(), req.extensions());

    let upgrade = match validate_request(&req) {
        Ok(upgrade) => upgrade,
        Err(e) => {
            assert!(matches!(e.status, 400 | 426), "{e}");
            let response = e.to_response();
            let (parsed, _) = parse_response(&response, &HandshakeLimits::default())
                .expect("error response does not parse")
                .expect("error response is incomplete");
            assert_eq!(parsed.status(), e.status);
            return;
        }
    };
    let config = DeflateConfig::default();
    let accepted = Accepted {
        protocol: req.subprotocols().next().map(str::to_owned),
        deflate: negotiate_deflate(&req, Some(&config)),
        ..Accepted::default()
    };
    let response = accept_response(&req, &upgrade, &accepted).expect("accept_response failed");
    let (parsed, n) = parse_response(&response, &HandshakeLimits::default())
        .expect("101 response does not parse")
        .expect("101 response is incomplete");
    assert_eq!(n, response.len());

    // The client that sent this request.
    let mut client = ClientRequest::new("example.com", "/");
    client.key = req
        .header("sec-websocket-key")
        .expect("validated request without key")
        .trim_matches([' ', '\t'])
        .to_owned();
    client.protocols = req.subprotocols().map(str::to_owned).collect();
    let negotiated = validate_response(&parsed, &client, Some(&config))
        .unwrap_or_else(|e| panic!("client rejects the server's response: {e}"));
    assert_eq!(negotiated.protocol, accepted.protocol);
    assert_eq!(negotiated.deflate.is_some(), accepted.deflate.is_some());
}

fn client_side(data: &[u8]) {
    let resp = match parse_response(data, &limits()) {
        Ok(Some((resp, _))) => resp,
        Ok(None) => return,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let _ = resp.to_head_string();
    let mut client = ClientRequest::new("server.example.com", "/chat");
    client.key = "dGhlIHNhbXBsZSBub25jZQ==".to_owned();
    client.protocols = vec!["chat".to_owned(), "superchat".to_owned()];
    let strict = DeflateConfig::default()
        .server_no_context_takeover(true)
        .client_no_context_takeover(true)
        .server_max_window_bits(10)
        .client_max_window_bits(12);
    for deflate in [None, Some(DeflateConfig::default()), Some(strict)] {
        match validate_response(&resp, &client, deflate.as_ref()) {
            Ok(negotiated) => {
                assert_eq!(resp.status(), 101);
                if let Some(p) = &negotiated.protocol {
                    assert!(client.protocols.contains(p), "{p:?} was not offered");
                }
                match (&deflate, &negotiated.deflate) {
                    (None, Some(_)) => panic!("deflate accepted without an offer"),
                    (_, Some(params)) => {
                        assert!((8..=15).contains(&params.server_max_window_bits));
                        assert!((8..=15).contains(&params.client_max_window_bits));
                    }
                    _ => {}
                }
            }
            // The message (with its diagnosis of a wrong accept key) must
            // not panic.
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}

fn extension_grammar(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(list) = extensions::parse(text) else {
        return;
    };
    let printed = list
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let again = extensions::parse(&printed)
        .unwrap_or_else(|e| panic!("{printed:?} (printed from {text:?}) does not parse: {e}"));
    assert_eq!(again, list, "{text:?} -> {printed:?}");
}

fuzz_target!(|data: &[u8]| {
    server_side(data);
    client_side(data);
    extension_grammar(data);
});
