//! Raw bytes on a new client connection: hyper's HTTP/1 server with the gateway's settings,
//! the route decisions of `client::http::route` (hub name, upgrade headers, fastwebsockets'
//! handshake) and, after a 101, the session reader on the upgraded stream
//! (`switchboard_gateway::fuzzing::serve_http`, message limit 1024).
//!
//! Checks: no panic and no hang; every routed request got its own answer, in order (hyper
//! may add its own error answers after them); an upgrade is routed only for a valid hub;
//! messages read after the upgrade are within the limit.
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
