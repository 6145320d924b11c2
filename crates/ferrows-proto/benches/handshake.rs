//! Micro-benchmark of the server's opening handshake: parse a browser's
//! upgrade request, validate it, negotiate permessage-deflate and build
//! the 101 response.
//!
//! `cargo bench -p ferrows-proto --bench handshake` (`-- --quick` for a
//! short run).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ferrows_proto::deflate::DeflateConfig;
use ferrows_proto::handshake::{
    Accepted, HandshakeLimits, accept_response, negotiate_deflate, parse_request, validate_request,
};

/// What Chrome sends, deflate offer included.
const REQUEST: &[u8] = b"GET /chat HTTP/1.1\r\n\
Host: 127.0.0.1:9001\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: http://127.0.0.1:9001\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
\r\n";

fn handshake(c: &mut Criterion) {
    let limits = HandshakeLimits::default();
    let deflate = DeflateConfig::default();
    let mut g = c.benchmark_group("server_handshake");
    g.bench_function("parse_validate_respond", |b| {
        b.iter(|| {
            let Ok(Some((req, _))) = parse_request(black_box(REQUEST), &limits) else {
                return 0;
            };
            let Ok(upgrade) = validate_request(&req) else {
                return 0;
            };
            accept_response(&req, &upgrade, &Accepted::default()).map_or(0, |r| black_box(r.len()))
        })
    });
    g.bench_function("parse_validate_negotiate_deflate_respond", |b| {
        b.iter(|| {
            let Ok(Some((req, _))) = parse_request(black_box(REQUEST), &limits) else {
                return 0;
            };
            let Ok(upgrade) = validate_request(&req) else {
                return 0;
            };
            let accepted = Accepted {
                deflate: negotiate_deflate(&req, Some(&deflate)),
                ..Accepted::default()
            };
            accept_response(&req, &upgrade, &accepted).map_or(0, |r| black_box(r.len()))
        })
    });
    g.finish();
}

/// The group lives in a private module: the macro's function is `pub` and
/// undocumented.
mod group {
    use super::*;
    criterion_group!(benches, handshake);
}
criterion_main!(group::benches);
