//! Raw bytes on a new client connection: hyper's HTTP/1 server with the gateway's settings,
//! the route decisions of `client::http::route` (hub name, upgrade headers, fastwebsockets'
//! handshake) and, after a 101, the session reader on the upgraded stream
//! (`switchboard_gateway::fuzzing::serve_http`, message limit 1024).
//!
//! The request headers of an upgrade also go through `client::upgrade`'s subprotocol parsing
//! and `deflate::negotiate` (`fuzzing::asked`); the session then accepts compressed messages
//! when permessage-deflate was agreed.
//!
//! Checks: no panic and no hang; every routed request got its own answer, in order (hyper
//! may add its own error answers after them); an upgrade is routed only for a valid hub;
//! subprotocols are trimmed and non-empty; an agreed permessage-deflate answers with both
//! no-context-takeover parameters and a window of 8–15 bits; messages read after the upgrade
//! are within the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_gateway::fuzzing::{self, Route};

fuzz_target!(|data: &[u8]| {
    let ex = fuzzing::serve_http(data, 1024);
    // Every answer is a head without a body (all bodies are empty), so heads end at CRLFCRLF.
    let heads = split_heads(&ex.response);
    assert!(
        heads.len() >= ex.routes.len(),
        "{} requests routed, {} answered",
        ex.routes.len(),
        heads.len()
    );
    for (route, head) in ex.routes.iter().zip(&heads) {
        // hyper answers in the request's version: "HTTP/1.0 " or "HTTP/1.1 ".
        assert!(head.starts_with(b"HTTP/1."), "not a status line");
        assert_eq!(
            head.get(9..12),
            Some(route.status().as_str().as_bytes()),
            "{route:?} answered {:?}",
            String::from_utf8_lossy(head)
        );
        if let Route::Upgrade { hub } = route {
            assert!(fuzzing::hub(hub));
        }
    }
    if let Some(asked) = &ex.asked {
        for p in &asked.subprotocols {
            assert!(!p.is_empty() && p.trim() == p, "subprotocol {p:?}");
        }
        if let Some((bits, answer)) = &asked.deflate {
            assert!((8..=15).contains(bits), "window {bits}");
            assert!(answer.starts_with(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
            ));
        }
    }
    if let Some(session) = &ex.session {
        assert!(matches!(ex.routes.last(), Some(Route::Upgrade { .. })));
        for m in &session.messages {
            assert!(m.payload.len() <= 1024);
        }
    }
});

fn split_heads(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut heads = Vec::new();
    while let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        heads.push(&bytes[..end]);
        bytes = &bytes[end + 4..];
    }
    heads
}
