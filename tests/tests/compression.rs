//! permessage-deflate (RFC 7692) and strict RFC 6455 framing against a real gateway: what is
//! negotiated, what goes out compressed, what comes in compressed, and what fails the
//! connection (unmasked frames, misplaced RSV1, decompression bombs).

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use switchboard_proto::v1::{self as pb, message::Payload, target::Kind as T};
use switchboard_tests::{gateway::Gateway, raw::RawWs};

const OFFER: &str = "permessage-deflate; client_max_window_bits";
const AGREED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
const RSV1: u8 = 0x40;

fn text(s: &str) -> Option<pb::Message> {
    Some(pb::Message {
        payload: Some(Payload::Text(s.into())),
    })
}

/// A JSON message of about `n` bytes, as a backend would broadcast.
fn json(n: usize) -> String {
    let mut s = String::from("[");
    let mut i = 0;
    while s.len() < n {
        s.push_str(&format!(
            r#"{{"id":{i},"symbol":"ACME","bid":{}.25,"ask":{}.5,"venue":"XNAS"}},"#,
            100 + i % 7,
            101 + i % 5
        ));
        i += 1;
    }
    s.push_str("{}]");
    s
}

/// Compresses as a client does (raw deflate, sync flush, the 4-byte tail removed).
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    assert_eq!(
        c.total_in(),
        data.len() as u64,
        "output buffer large enough"
    );
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// Inflates a server message with a window of `bits` (an inflater with a smaller window than
/// the compressor used fails on far back-references, so this checks the window too).
fn inflate(data: &[u8], bits: u8) -> Vec<u8> {
    let mut d = Decompress::new_with_window_bits(false, bits);
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .expect("valid deflate data within the window");
    out
}

async fn publish(gw: &Gateway, hub: &str, msg: &str) {
    let mut api = gw.api().await;
    api.publish(pb::PublishRequest {
        target: Some(pb::Target {
            kind: Some(T::Hub(hub.into())),
        }),
        exclude: vec![],
        message: text(msg),
        ..Default::default()
    })
    .await
    .expect("publish");
}

#[tokio::test]
async fn a_broadcast_is_compressed_for_clients_that_offered_it_and_plain_for_the_rest() {
    let gw = Gateway::start(&[]).await;
    let mut deflating = RawWs::connect_with(
        gw.client_addr,
        "news",
        &[("Sec-WebSocket-Extensions", OFFER)],
    )
    .await;
    assert_eq!(deflating.header("sec-websocket-extensions"), Some(AGREED));
    let mut plain = RawWs::connect(gw.client_addr, "news").await;
    assert_eq!(plain.header("sec-websocket-extensions"), None);

    let big = json(2048);
    publish(&gw, "news", &big).await;
    let (b0, payload) = deflating.read_frame_head().await.expect("a frame");
    assert_eq!(b0, 0x80 | RSV1 | 0x1, "FIN, RSV1, text");
    assert!(
        payload.len() * 3 < big.len(),
        "{} bytes compressed to {}",
        big.len(),
        payload.len()
    );
    assert_eq!(inflate(&payload, 15), big.as_bytes());
    let (b0, payload) = plain.read_frame_head().await.expect("a frame");
    assert_eq!((b0, payload.as_slice()), (0x81, big.as_bytes()));

    // Under --compression-min-bytes (256), a message goes uncompressed even to a deflate session.
    publish(&gw, "news", "short").await;
    let (b0, payload) = deflating.read_frame_head().await.expect("a frame");
    assert_eq!((b0, payload.as_slice()), (0x81, &b"short"[..]));
}

#[tokio::test]
async fn a_window_limit_the_client_asks_for_is_kept() {
    let gw = Gateway::start(&[]).await;
    let mut c = RawWs::connect_with(
        gw.client_addr,
        "h",
        &[(
            "Sec-WebSocket-Extensions",
            "permessage-deflate; server_max_window_bits=10",
        )],
    )
    .await;
    assert_eq!(
        c.header("sec-websocket-extensions"),
        Some(&*format!("{AGREED}; server_max_window_bits=10"))
    );
    // A block repeated 2,000 bytes apart: with a 32 KiB window the compressor would point
    // back to it, which a 1 KiB window forbids.
    let block: String = (0..2000)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    let msg = block.repeat(4);
    let mut api = gw.api().await;
    api.send(pb::SendRequest {
        session_id: c.session.clone(),
        message: text(&msg),
        ..Default::default()
    })
    .await
    .expect("send");
    let (b0, payload) = c.read_frame_head().await.expect("a frame");
    assert_eq!(b0 & RSV1, RSV1);
    assert_eq!(inflate(&payload, 10), msg.as_bytes());
}

#[tokio::test]
async fn an_offer_the_gateway_cannot_honour_is_declined_not_refused() {
    let gw = Gateway::start(&[]).await;
    for offer in [
        "permessage-deflate; no_such_parameter",
        "permessage-deflate; server_max_window_bits=16",
        "x-webkit-deflate-frame",
    ] {
        let c =
            RawWs::connect_with(gw.client_addr, "h", &[("Sec-WebSocket-Extensions", offer)]).await;
        assert_eq!(c.header("sec-websocket-extensions"), None, "{offer}");
    }
    let off = Gateway::start(&["--compression", "off"]).await;
    let mut c =
        RawWs::connect_with(off.client_addr, "h", &[("Sec-WebSocket-Extensions", OFFER)]).await;
    assert_eq!(c.header("sec-websocket-extensions"), None);
    // Without the extension, RSV1 is a protocol error.
    c.send_raw(0x80 | RSV1 | 0x1, &deflate(b"hello"), true)
        .await;
    assert_eq!(c.close_code().await, Some(1002));
}

#[tokio::test]
async fn one_hub_may_differ_from_the_rest() {
    let gw = Gateway::start(&["--compression", "off", "--hub-compression", "news=on"]).await;
    let news = RawWs::connect_with(
        gw.client_addr,
        "news",
        &[("Sec-WebSocket-Extensions", OFFER)],
    )
    .await;
    assert_eq!(news.header("sec-websocket-extensions"), Some(AGREED));
    let chat = RawWs::connect_with(
        gw.client_addr,
        "chat",
        &[("Sec-WebSocket-Extensions", OFFER)],
    )
    .await;
    assert_eq!(chat.header("sec-websocket-extensions"), None);
}

#[tokio::test]
async fn compressed_client_messages_reach_the_backend_inflated() {
    let gw = Gateway::start(&[]).await;
    let mut c =
        RawWs::connect_with(gw.client_addr, "h", &[("Sec-WebSocket-Extensions", OFFER)]).await;
    let whole = json(5000);
    c.send_raw(0x80 | RSV1 | 0x1, &deflate(whole.as_bytes()), true)
        .await;
    // A compressed message in three frames: RSV1 on the first only.
    let fragmented = json(20_000);
    let compressed = deflate(fragmented.as_bytes());
    let (a, rest) = compressed.split_at(compressed.len() / 3);
    let (b, d) = rest.split_at(rest.len() / 2);
    c.send_raw(RSV1 | 0x1, a, true).await;
    c.send_raw(0x0, b, true).await;
    c.send_raw(0x80, d, true).await;
    // An uncompressed message after them.
    c.send_frame(true, 0x1, b"plain").await;
    for want in [whole.as_str(), fragmented.as_str(), "plain"] {
        assert_eq!(Some(gw.read_message(&c.session).await), text(want));
    }
}

#[tokio::test]
async fn a_decompression_bomb_closes_with_1009_and_spares_the_others() {
    let gw = Gateway::start(&["--max-message-bytes", "65536"]).await;
    let mut bystander =
        RawWs::connect_with(gw.client_addr, "h", &[("Sec-WebSocket-Extensions", OFFER)]).await;
    let mut bomb =
        RawWs::connect_with(gw.client_addr, "h", &[("Sec-WebSocket-Extensions", OFFER)]).await;
    // 32 MiB of zeros: about 32 KiB compressed, so the frame itself is well within the limit.
    let compressed = deflate(&vec![0u8; 32 << 20]);
    assert!(compressed.len() < 40_000, "{}", compressed.len());
    bomb.send_raw(0x80 | RSV1 | 0x2, &compressed, true).await;
    assert_eq!(bomb.close_code().await, Some(1009));
    // Just under the limit inflates fine.
    let at_limit = json(65_000);
    bystander
        .send_raw(0x80 | RSV1 | 0x1, &deflate(at_limit.as_bytes()), true)
        .await;
    assert_eq!(
        Some(gw.read_message(&bystander.session).await),
        text(&at_limit)
    );
}

#[tokio::test]
async fn misplaced_rsv1_and_corrupt_data_fail_the_connection() {
    let gw = Gateway::start(&[]).await;
    let connect =
        || RawWs::connect_with(gw.client_addr, "h", &[("Sec-WebSocket-Extensions", OFFER)]);
    // RSV1 on a control frame.
    let mut c = connect().await;
    c.send_raw(0x80 | RSV1 | 0x9, b"", true).await;
    assert_eq!(c.close_code().await, Some(1002));
    // RSV1 on a continuation frame.
    let mut c = connect().await;
    c.send_raw(0x1, b"a", true).await;
    c.send_raw(0x80 | RSV1, &deflate(b"b"), true).await;
    assert_eq!(c.close_code().await, Some(1002));
    // RSV2 and RSV3 are never allowed.
    let mut c = connect().await;
    c.send_raw(0x80 | 0x20 | 0x1, b"x", true).await;
    assert_eq!(c.close_code().await, Some(1002));
    // Data that is not deflate.
    let mut c = connect().await;
    c.send_raw(0x80 | RSV1 | 0x2, &[0xff; 16], true).await;
    assert_eq!(c.close_code().await, Some(1007));
}

#[tokio::test]
async fn an_unmasked_client_frame_fails_the_connection_with_1002() {
    let gw = Gateway::start(&[]).await;
    let mut c = RawWs::connect(gw.client_addr, "h").await;
    c.send_raw(0x81, b"not masked", false).await;
    assert_eq!(c.close_code().await, Some(1002));
    let mut c = RawWs::connect(gw.client_addr, "h").await;
    c.send_raw(0x89, b"", false).await;
    assert_eq!(c.close_code().await, Some(1002));
}
