//! permessage-deflate (RFC 7692): negotiation, compression of outgoing messages and bounded
//! inflation of incoming ones.
//!
//! Both directions run without context takeover: the gateway answers every accepted offer with
//! `server_no_context_takeover; client_no_context_takeover`, so each message is compressed and
//! inflated on its own. That is what lets a broadcast be compressed once and the same bytes be
//! queued for every session, and it means a session keeps no compressor or inflater state at
//! all: the (large) zlib states live one per worker thread and are reset per message.

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// What a session agreed to. Everything else about the session's compression is fixed by the
/// gateway (no context takeover both ways, a 32 KiB window for what the client sends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Deflate {
    /// The largest LZ77 window the client will accept in what the gateway sends (8–15 bits).
    pub server_window_bits: u8,
}

impl Deflate {
    /// The window the gateway compresses with for this session, or `None` when it cannot
    /// compress within the client's limit (zlib's raw deflate has no 256-byte window): such a
    /// session gets every message uncompressed, which RFC 7692 allows message by message.
    fn window_bits(self) -> Option<u8> {
        (MIN_WINDOW_BITS..=MAX_WINDOW_BITS)
            .contains(&self.server_window_bits)
            .then_some(self.server_window_bits)
    }

    /// Sessions with the same slot get the same compressed bytes; `None`: never compressed.
    pub(crate) fn window_slot(self) -> Option<usize> {
        self.window_bits().map(|b| usize::from(b - MIN_WINDOW_BITS))
    }
}

/// The smallest window zlib's raw deflate can honour.
const MIN_WINDOW_BITS: u8 = 9;
const MAX_WINDOW_BITS: u8 = 15;
pub(crate) const WINDOWS: usize = (MAX_WINDOW_BITS - MIN_WINDOW_BITS + 1) as usize;

/// The extension's name in `Sec-WebSocket-Extensions`.
const NAME: &str = "permessage-deflate";

/// The four bytes a sync flush ends with, which RFC 7692 §7.2.1 removes from each compressed
/// message and §7.2.2 puts back before inflating.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Picks the first permessage-deflate offer of a request's `Sec-WebSocket-Extensions` values
/// that the gateway can honour, and returns what was agreed with the response header's value.
/// Offers with unknown, repeated or malformed parameters are declined one by one (RFC 7692
/// §5.1), never failing the handshake; `None` when no offer is acceptable.
pub(crate) fn negotiate<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Option<(Deflate, String)> {
    values
        .into_iter()
        .flat_map(split_outside_quotes(','))
        .find_map(|offer| accept(offer.trim()))
}

/// One offer, `permessage-deflate; param[=value]; ...`.
fn accept(offer: &str) -> Option<(Deflate, String)> {
    let mut parts = split_outside_quotes(';')(offer).into_iter();
    if !parts.next()?.trim().eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut server_bits: Option<u8> = None;
    let (mut server_nct, mut client_nct, mut client_bits) = (false, false, false);
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (param.trim(), None),
        };
        let seen = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => {
                std::mem::replace(&mut server_nct, true)
            }
            "client_no_context_takeover" if value.is_none() => {
                std::mem::replace(&mut client_nct, true)
            }
            "server_max_window_bits" => {
                let bits = window_bits(value?)?;
                server_bits.replace(bits).is_some()
            }
            "client_max_window_bits" => {
                if let Some(v) = value {
                    window_bits(v)?;
                }
                std::mem::replace(&mut client_bits, true)
            }
            _ => return None,
        };
        if seen {
            return None;
        }
    }
    // The gateway inflates with the largest window, so whatever limit the client offers for its
    // own window is fine and needs no answer.
    let mut response = format!("{NAME}; server_no_context_takeover; client_no_context_takeover");
    if let Some(bits) = server_bits {
        response.push_str(&format!("; server_max_window_bits={bits}"));
    }
    Some((
        Deflate {
            server_window_bits: server_bits.unwrap_or(MAX_WINDOW_BITS),
        },
        response,
    ))
}

fn window_bits(value: &str) -> Option<u8> {
    // RFC 7692 §7.1.2: 1*DIGIT, 8 to 15, no leading zero.
    if value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|b| (8..=15).contains(b))
}

fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => Some(v),
    }
}

/// Splits on `sep` where it is not inside a quoted string.
fn split_outside_quotes(sep: char) -> impl Fn(&str) -> Vec<&str> {
    move |s| {
        let mut out = Vec::new();
        let (mut start, mut quoted) = (0, false);
        for (i, c) in s.char_indices() {
            if c == '"' {
                quoted = !quoted;
            } else if c == sep && !quoted {
                out.push(&s[start..i]);
                start = i + 1;
            }
        }
        out.push(&s[start..]);
        out
    }
}

thread_local! {
    /// One compressor per window size per worker thread; `None` until first used.
    static COMPRESSORS: RefCell<[Option<Compress>; WINDOWS]> = RefCell::new(Default::default());
    static INFLATER: RefCell<Decompress> =
        RefCell::new(Decompress::new_with_window_bits(false, MAX_WINDOW_BITS));
}

/// Compresses one message for a session that agreed to `deflate`, at zlib `level` (1–9): the
/// payload of a frame with RSV1 set. `None` when this session gets it uncompressed (no window it accepts, or the result
/// would not be smaller).
pub(crate) fn compress(deflate: Deflate, level: u8, payload: &[u8]) -> Option<Vec<u8>> {
    let bits = deflate.window_bits()?;
    let slot = usize::from(bits - MIN_WINDOW_BITS);
    let level = Compression::new(u32::from(level));
    COMPRESSORS.with(|cell| {
        let mut compressors = cell.borrow_mut();
        let c = compressors[slot]
            .get_or_insert_with(|| Compress::new_with_window_bits(level, false, bits));
        c.reset();
        // After a reset nothing is pending, so changing the level cannot fail half-way.
        let out = c
            .set_level(level)
            .ok()
            .and_then(|()| deflate_into(c, payload));
        if out.is_none() {
            // A compressor that failed half-way is not reused.
            compressors[slot] = None;
        }
        out.filter(|o| o.len() < payload.len())
    })
}

fn deflate_into(c: &mut Compress, payload: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    let start = c.total_in();
    loop {
        let taken = usize::try_from(c.total_in() - start).ok()?;
        let input = payload.get(taken..)?;
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64));
        }
        let before = out.len();
        c.compress_vec(input, &mut out, FlushCompress::Sync).ok()?;
        // Done once all input is in and the sync flush fitted with room to spare.
        if c.total_in() - start == payload.len() as u64 && out.len() < out.capacity() {
            break;
        }
        if out.len() == before && out.len() < out.capacity() {
            return None;
        }
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    Some(out)
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InflateError {
    #[error("message inflates to more than {0} bytes")]
    TooBig(usize),
    #[error("invalid compressed data")]
    Corrupt,
}

/// Inflates one message (the compressed payloads of its frames, joined). Never holds more than
/// `max + 1` bytes of output: a message that inflates past `max` stops there, so a small
/// "decompression bomb" costs at most the limit.
pub(crate) fn inflate(compressed: &[u8], max: usize) -> Result<Bytes, InflateError> {
    INFLATER.with(|cell| {
        let mut d = cell.borrow_mut();
        d.reset(false);
        let out = inflate_into(&mut d, compressed, max);
        if out.is_err() {
            // A failed stream leaves zlib in an error state; start the next one fresh.
            *d = Decompress::new_with_window_bits(false, MAX_WINDOW_BITS);
        }
        out.map(Bytes::from)
    })
}

fn inflate_into(
    d: &mut Decompress,
    compressed: &[u8],
    max: usize,
) -> Result<Vec<u8>, InflateError> {
    let cap = max.saturating_add(1);
    // Not `clamp`: the limit may be below the 64-byte floor.
    let mut out: Vec<u8> = Vec::with_capacity(compressed.len().saturating_mul(3).max(64).min(cap));
    for input in [compressed, &TAIL[..]] {
        let start = d.total_in();
        loop {
            let taken = usize::try_from(d.total_in() - start).map_err(|_| InflateError::Corrupt)?;
            let rest = input.get(taken..).ok_or(InflateError::Corrupt)?;
            if out.len() == out.capacity() {
                if out.len() > max {
                    return Err(InflateError::TooBig(max));
                }
                out.reserve_exact(out.capacity().min(cap - out.len()));
            }
            let (in_before, out_before) = (d.total_in(), out.len());
            let status = d
                .decompress_vec(rest, &mut out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            if out.len() > max {
                return Err(InflateError::TooBig(max));
            }
            if status == Status::StreamEnd {
                // A final block (BFINAL) ends the message; anything after it is ignored.
                return Ok(out);
            }
            let all_in = d.total_in() - start == input.len() as u64;
            if all_in && out.len() < out.capacity() {
                break;
            }
            if d.total_in() == in_before && out.len() == out_before && out.len() < out.capacity() {
                // No progress with input and room left: the stream is cut short.
                break;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agreed(header: &str) -> Option<(u8, String)> {
        negotiate([header]).map(|(d, r)| (d.server_window_bits, r))
    }

    #[test]
    fn a_plain_offer_gets_no_context_takeover_both_ways() {
        let (bits, resp) = agreed("permessage-deflate; client_max_window_bits").unwrap();
        assert_eq!(bits, 15);
        assert_eq!(
            resp,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
    }

    #[test]
    fn a_server_window_limit_is_answered_and_kept() {
        let (bits, resp) = agreed("permessage-deflate; server_max_window_bits=10").unwrap();
        assert_eq!(bits, 10);
        assert!(resp.ends_with("; server_max_window_bits=10"), "{resp}");
        let (bits, _) = agreed("permessage-deflate; server_max_window_bits=\"12\"").unwrap();
        assert_eq!(bits, 12);
    }

    #[test]
    fn bad_offers_are_declined_and_the_next_one_taken() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=07",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; mystery",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(agreed(bad), None, "{bad}");
        }
        let (bits, _) =
            agreed("permessage-deflate; mystery, permessage-deflate; server_max_window_bits=11")
                .unwrap();
        assert_eq!(bits, 11);
        let two_headers = negotiate(["foo", "permessage-deflate"]).unwrap();
        assert_eq!(two_headers.0.server_window_bits, 15);
    }

    #[test]
    fn compressed_messages_inflate_back() {
        let json = br#"{"type":"quote","symbol":"ACME","bid":101.25,"ask":101.5}"#.repeat(40);
        for bits in 9..=15 {
            let c = compress(
                Deflate {
                    server_window_bits: bits,
                },
                6,
                &json,
            )
            .unwrap();
            assert!(c.len() * 3 < json.len(), "window {bits}: {} bytes", c.len());
            assert!(!c.ends_with(&TAIL));
            assert_eq!(&inflate(&c, json.len()).unwrap()[..], &json[..]);
        }
    }

    #[test]
    fn no_window_or_no_gain_means_uncompressed() {
        let json = b"{\"a\":1}".repeat(100);
        assert_eq!(
            compress(
                Deflate {
                    server_window_bits: 8
                },
                6,
                &json
            ),
            None
        );
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..2000)
            .map(|_| {
                // xorshift64: bytes with nothing for deflate to find.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert_eq!(
            compress(
                Deflate {
                    server_window_bits: 15
                },
                6,
                &noise
            ),
            None
        );
    }

    #[test]
    fn inflating_stops_at_the_limit() {
        // 10 MB of zeros compress to about 10 KB.
        let big = vec![0u8; 10 << 20];
        let c = compress(
            Deflate {
                server_window_bits: 15,
            },
            6,
            &big,
        )
        .unwrap();
        assert!(c.len() < 64 << 10);
        assert_eq!(inflate(&c, 1 << 20), Err(InflateError::TooBig(1 << 20)));
        // Exactly at the limit is fine.
        assert_eq!(inflate(&c, big.len()).unwrap().len(), big.len());
        // The inflater is usable after a refusal.
        let small = compress(
            Deflate {
                server_window_bits: 15,
            },
            6,
            &b"hello ".repeat(50),
        )
        .unwrap();
        assert_eq!(inflate(&small, 1000).unwrap().len(), 300);
    }

    #[test]
    fn a_limit_below_the_first_allocation_holds() {
        // Found by the `inflate` fuzz target: the first allocation's floor was above the limit.
        let c = compress(
            Deflate {
                server_window_bits: 15,
            },
            6,
            &b"hello ".repeat(20),
        )
        .unwrap();
        for max in [0, 1, 5, 63] {
            assert_eq!(inflate(&c, max), Err(InflateError::TooBig(max)));
        }
        assert_eq!(inflate(&c, 120).unwrap().len(), 120);
    }

    #[test]
    fn garbage_is_corrupt_and_empty_is_empty() {
        assert_eq!(
            inflate(&[0xff, 0xff, 0xff, 0x00], 100),
            Err(InflateError::Corrupt)
        );
        // An empty message compresses to a single empty stored or fixed block.
        assert_eq!(inflate(&[0x02, 0x00], 100).unwrap().len(), 0);
        assert_eq!(inflate(&[], 100).unwrap().len(), 0);
    }
}
