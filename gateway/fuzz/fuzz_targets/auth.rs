//! What a client sends for the upgrade's own checks (`gate::Gate`): the token search
//! (`jwt::find_token` over the Authorization header and the query string), JWT verification
//! (HS256, audience and issuer configured) of the token found and of a token with fuzzed header
//! and claims that *is* signed with the right secret (so the claim checks behind the signature
//! are reached), and the Origin allow-list.
//!
//! Input: NUL-separated fields: Authorization value, query string, JWT header, JWT claims,
//! Origin, hub (missing fields are absent).
//!
//! Checks: no panic; a bearer header is found as such; an accepted token names a non-empty
//! user; the Origin answer follows the allow-list rule (trimmed, no trailing slash, ASCII case
//! ignored; no Origin is allowed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_gateway::fuzzing::{self, Auth};

const SECRET: &str = "fuzz-secret";

thread_local! {
    static AUTH: Auth = Auth::from_args(
        &[
            "--jwt-secret",
            SECRET,
            "--jwt-audience",
            "app",
            "--jwt-issuer",
            "https://issuer.example",
            "--allowed-origin",
            "https://app.example",
            "--allowed-origin",
            "chat=https://chat.example:8443",
        ]
        .map(String::from),
    )
    .expect("fuzz gate");
}

fuzz_target!(|data: &[u8]| {
    let mut fields = data.split(|b| *b == 0);
    let mut next = || fields.next().map(String::from_utf8_lossy);
    let (auth, query, header, claims, origin, hub) =
        (next(), next(), next(), next(), next(), next());
    AUTH.with(|gate| {
        let found = fuzzing::find_token(auth.as_deref(), query.as_deref(), &[]);
        if let Some(t) = auth.as_deref().and_then(|a| a.strip_prefix("Bearer ")) {
            assert_eq!(found.as_deref(), Some(t.trim()), "bearer header not used");
        }
        if let Some(token) = &found {
            check(gate.verify(token));
        }
        if let (Some(h), Some(c)) = (&header, &claims) {
            let token = fuzzing::sign_hs256(SECRET.as_bytes(), h.as_bytes(), c.as_bytes())
                .expect("secret is not empty");
            check(gate.verify(&token));
        }
        let hub = hub.as_deref().unwrap_or("chat");
        let allowed = gate.origin_allowed(hub, origin.as_deref());
        let expected = match origin.as_deref() {
            None => true,
            Some(o) => {
                let o = o.trim().trim_end_matches('/').to_ascii_lowercase();
                o == "https://app.example" || (hub == "chat" && o == "https://chat.example:8443")
            }
        };
        assert_eq!(allowed, expected, "origin {origin:?} on hub {hub:?}");
    });
});

fn check(verified: Option<Result<(String, Vec<String>), String>>) {
    match verified.expect("a JWT verifier is configured") {
        Ok((user, _groups)) => assert!(!user.is_empty(), "accepted a token without a user"),
        Err(why) => assert!(!why.is_empty()),
    }
}
