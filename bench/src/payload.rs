//! The stamp at the start of every benchmark message: a sequence number and the send time.
//!
//! Text form (works through every peer, whose HTTP publish APIs carry text): `#`, 16 hex digits
//! of sequence number, 16 hex digits of nanoseconds since the Unix epoch, then `x` padding up
//! to the payload size. Binary form (Switchboard only, for payloads under 33 bytes): the byte
//! 0xB1 (never the first byte of UTF-8 text), the sequence number and the send time as
//! little-endian u64, then zero padding.

/// Bytes of the text stamp; a load generator keeps this many bytes of each message.
pub const TEXT_STAMP: usize = 33;
/// Bytes of the binary stamp.
pub const BINARY_STAMP: usize = 17;
/// The most a decoder needs to see of a message: the stamp, and the byte after it that tells
/// the padding's form.
pub const PREFIX: usize = TEXT_STAMP + 1;

const BINARY_MARK: u8 = 0xB1;

/// A text payload of `size` bytes (at least [`TEXT_STAMP`]).
pub fn text(seq: u64, sent_ns: u64, size: usize) -> String {
    let mut s = format!("#{seq:016x}{sent_ns:016x}");
    if size > s.len() {
        s.extend(std::iter::repeat_n('x', size - s.len()));
    }
    s
}

/// A text payload of `size` bytes whose padding is JSON records like a market-data feed's
/// (numbers vary from record to record and message to message), so it compresses as typical
/// JSON does rather than as a run of `x`.
pub fn text_json(seq: u64, sent_ns: u64, size: usize) -> String {
    const SYMBOLS: [&str; 6] = ["ACME", "GLOBX", "INITECH", "UMBRL", "HOOLI", "VANDL"];
    let mut s = format!("#{seq:016x}{sent_ns:016x}[");
    let mut i = seq.wrapping_mul(7919);
    while s.len() < size {
        // A small LCG: deterministic, but no two records alike.
        i = i
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let r = i >> 33;
        s.push_str(&format!(
            r#"{{"id":{},"symbol":"{}","bid":{}.{:02},"ask":{}.{:02},"size":{},"venue":"XNAS"}},"#,
            r % 100_000,
            SYMBOLS[(r % 6) as usize],
            90 + r % 20,
            r % 100,
            91 + r % 20,
            (r >> 7) % 100,
            (r >> 11) % 5000
        ));
    }
    s.truncate(size.max(TEXT_STAMP));
    s
}

/// A binary payload of `size` bytes (at least [`BINARY_STAMP`]).
pub fn binary(seq: u64, sent_ns: u64, size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(size.max(BINARY_STAMP));
    v.push(BINARY_MARK);
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&sent_ns.to_le_bytes());
    v.resize(size.max(BINARY_STAMP), 0);
    v
}

/// FNV-1a over a message's bytes, fed in pieces as they arrive: what a load generator keeps of
/// a message's body to check it against what was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest(u64);

impl Default for Digest {
    fn default() -> Self {
        Digest(0xcbf2_9ce4_8422_2325)
    }
}

impl Digest {
    pub fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn of(bytes: &[u8]) -> Digest {
        let mut d = Digest::default();
        d.update(bytes);
        d
    }
}

/// The digest a message that starts with `prefix` and is `len` bytes long must have: the
/// payload the publisher built for that stamp, in the form its first bytes show (text with
/// `x` padding, JSON records, or binary). `None` for a message that is not a benchmark one.
pub fn expected_digest(prefix: &[u8], len: u64) -> Option<Digest> {
    let (seq, sent) = decode(prefix)?;
    let len = usize::try_from(len).ok()?;
    Some(match prefix[0] {
        BINARY_MARK => Digest::of(&binary(seq, sent, len)),
        _ if prefix.len() > TEXT_STAMP && prefix[TEXT_STAMP] == b'[' => {
            Digest::of(text_json(seq, sent, len).as_bytes())
        }
        _ => Digest::of(text(seq, sent, len).as_bytes()),
    })
}

/// `(seq, sent_ns)` from the first bytes of a message, or `None` for a message that is not a
/// benchmark message (a welcome frame, say).
pub fn decode(prefix: &[u8]) -> Option<(u64, u64)> {
    match prefix.first()? {
        b'#' if prefix.len() >= TEXT_STAMP => {
            let hex = |s: &[u8]| -> Option<u64> {
                u64::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
            };
            Some((hex(&prefix[1..17])?, hex(&prefix[17..33])?))
        }
        &BINARY_MARK if prefix.len() >= BINARY_STAMP => {
            let seq = u64::from_le_bytes(prefix[1..9].try_into().ok()?);
            let sent = u64::from_le_bytes(prefix[9..17].try_into().ok()?);
            Some((seq, sent))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let t = text(7, 1_700_000_000_123_456_789, 100);
        assert_eq!(t.len(), 100);
        assert_eq!(decode(t.as_bytes()), Some((7, 1_700_000_000_123_456_789)));
        let b = binary(u64::MAX - 1, 42, 20);
        assert_eq!(b.len(), 20);
        assert_eq!(decode(&b), Some((u64::MAX - 1, 42)));
        assert_eq!(decode(b"{\"type\":\"welcome\"}"), None);
        assert_eq!(decode(&t.as_bytes()[..20]), None);
        let j = text_json(9, 123, 2048);
        assert_eq!(j.len(), 2048);
        assert_eq!(decode(j.as_bytes()), Some((9, 123)));
        assert_ne!(text_json(10, 123, 2048)[33..], j[33..]);
        for m in [t.as_bytes(), &b, j.as_bytes()] {
            let want = expected_digest(&m[..m.len().min(PREFIX)], m.len() as u64);
            assert_eq!(want, Some(Digest::of(m)));
            let mut bent = m.to_vec();
            *bent.last_mut().unwrap() ^= 1;
            assert_ne!(want, Some(Digest::of(&bent)));
        }
    }
}
