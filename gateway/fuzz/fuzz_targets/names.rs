//! Names a client or a backend sends: hub names (`config::is_name`, from the upgrade path)
//! and session IDs (`SessionId::parse`, from every backend call), checked against their rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_gateway::fuzzing;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let name_chars = |extra: &[u8]| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
    };
    assert_eq!(
        fuzzing::hub(s),
        (1..=64).contains(&s.len()) && name_chars(b"._-"),
        "hub rule"
    );
    // An ID is what base64url (no padding) makes of 16 bytes: 22 characters whose last one
    // carries 2 data bits and 4 zero bits.
    let canonical = s.len() == 22 && name_chars(b"-_") && s.ends_with(['A', 'Q', 'g', 'w']);
    match fuzzing::session_id(s) {
        Some(id) => {
            assert_eq!(id, s);
            assert!(canonical, "accepted a non-canonical ID");
        }
        None => assert!(!canonical, "refused a canonical ID"),
    }
});
