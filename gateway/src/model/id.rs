//! Session IDs: 128 bits from the OS CSPRNG, base64url without padding (22 characters).
//!
//! Never derived from anything the client sends (not `Sec-WebSocket-Key`, not a query string),
//! so a client cannot choose, predict or collide with another session's ID.

use std::{fmt, sync::Arc};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};

/// Length of an encoded ID.
pub(crate) const ID_LEN: usize = 22;

/// An opaque session ID; cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(Arc<str>);

impl SessionId {
    /// A fresh random ID.
    pub(crate) fn generate() -> Result<Self, getrandom::Error> {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw)?;
        Ok(Self(URL_SAFE_NO_PAD.encode(raw).into()))
    }

    /// Accepts only strings that could have been generated: anything else cannot name a session,
    /// so it is refused as an invalid argument rather than looked up.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        // 22 characters carry 132 bits, of which the last 4 are zero padding in every encoding
        // of 16 bytes: the last character is one of the four whose low bits are zero.
        let ok = s.len() == ID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && s.ends_with(['A', 'Q', 'g', 'w']);
        ok.then(|| Self(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_unique_url_safe_and_parse_back() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = SessionId::generate().unwrap();
            assert_eq!(id.as_str().len(), ID_LEN);
            assert_eq!(SessionId::parse(id.as_str()).as_ref(), Some(&id));
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn malformed_ids_do_not_parse() {
        assert!(SessionId::parse("").is_none());
        assert!(SessionId::parse("short").is_none());
        assert!(SessionId::parse("aaaaaaaaaaaaaaaaaaaaa/").is_none());
        assert!(SessionId::parse(&"a".repeat(23)).is_none());
        // Right length and alphabet, but non-zero padding bits: no 16 bytes encode to it.
        assert!(SessionId::parse("AAAAAAAAAAAAAAAAAAAAAB").is_none());
        assert!(SessionId::parse("AAAAAAAAAAAAAAAAAAAAAw").is_some());
    }

    #[test]
    fn exactly_the_canonical_encodings_parse() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        for last in b'A'..=b'z' {
            let s = format!("{}{}", "A".repeat(ID_LEN - 1), last as char);
            let decodes = URL_SAFE_NO_PAD.decode(&s).is_ok_and(|b| b.len() == 16);
            assert_eq!(SessionId::parse(&s).is_some(), decodes, "{s}");
        }
    }
}
