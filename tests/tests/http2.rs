//! WebSockets over HTTP/2 (RFC 8441) on the client port, against a real gateway: many sessions on
//! one connection, each a session like an HTTP/1.1 one; closing one leaves the others; HTTP/2
//! flow control holds the gateway back like TCP does; and what is not an extended CONNECT for
//! `websocket` is refused.

use switchboard_proto::v1::{self as pb, message::Payload, target::Kind as T};
use switchboard_tests::{gateway::Gateway, h2ws::H2Connection, within};
use tonic::Code;

fn text(s: &str) -> Option<pb::Message> {
    Some(pb::Message {
        payload: Some(Payload::Text(s.into())),
    })
}

/// The value of one sample of the gateway's metrics.
async fn metric(gw: &Gateway, sample: &str) -> Option<f64> {
    let (_, body) = gw.http_get("/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
}

#[tokio::test]
async fn many_sessions_share_one_http2_connection_and_end_one_by_one() {
    let gw = Gateway::start(&[]).await;
    let mut conn = H2Connection::connect(gw.client_addr, 1 << 20).await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let (status, headers, ws) = conn
            .connect_ws(
                "/ws/news",
                Some("websocket"),
                &[("sec-websocket-extensions", "permessage-deflate")],
            )
            .await;
        assert_eq!(status, 200);
        assert!(
            headers
                .get("sec-websocket-extensions")
                .is_some_and(|v| v.to_str().unwrap().starts_with("permessage-deflate")),
            "{headers:?}"
        );
        sessions.push(ws.expect("a stream"));
    }
    // By the first response the server's SETTINGS have arrived.
    assert!(conn.extended_connect(), "SETTINGS_ENABLE_CONNECT_PROTOCOL");
    let ids: std::collections::HashSet<_> = sessions.iter().map(|s| s.session.clone()).collect();
    assert_eq!(ids.len(), 3, "each stream is its own session");

    let mut api = gw.api().await;
    let publish = |msg: &str| pb::PublishRequest {
        target: Some(pb::Target {
            kind: Some(T::Hub("news".into())),
        }),
        exclude: vec![],
        message: text(msg),
        ..Default::default()
    };
    api.publish(publish("to all")).await.expect("publish");
    for s in &mut sessions {
        assert_eq!(s.read_frame().await, Some((0x1, b"to all".to_vec())));
    }
    // A client message on the second stream reaches the backend.
    sessions[1].send_frame(0x1, b"from h2");
    assert_eq!(
        Some(gw.read_message(&sessions[1].session).await),
        text("from h2")
    );

    // The first session closes; the others keep going on the same connection.
    sessions[0].send_frame(0x8, &1000u16.to_be_bytes());
    assert_eq!(sessions[0].close_code().await, Some(1000));
    api.publish(publish("still here")).await.expect("publish");
    for s in &mut sessions[1..] {
        assert_eq!(s.read_frame().await, Some((0x1, b"still here".to_vec())));
    }
    assert_eq!(
        metric(
            &gw,
            "switchboard_connects_by_transport_total{transport=\"http2\",compression=\"deflate\"}"
        )
        .await,
        Some(3.0)
    );
}

#[tokio::test]
async fn http2_flow_control_holds_a_stream_that_does_not_read() {
    let gw = Gateway::start(&[
        "--max-message-bytes",
        "16384",
        "--outbound-queue-bytes",
        "65536",
        "--slow-consumer-grace",
        "60s",
    ])
    .await;
    // A 16 KiB stream window: the gateway may have that much unread on the stream.
    let mut conn = H2Connection::connect(gw.client_addr, 16 << 10).await;
    let (_, _, stalled) = conn.connect_ws("/ws/h", Some("websocket"), &[]).await;
    let mut stalled = stalled.expect("stream");
    let (_, _, lively) = conn.connect_ws("/ws/h", Some("websocket"), &[]).await;
    let mut lively = lively.expect("stream");
    let mut api = gw.api().await;
    let chunk = "x".repeat(10_000);
    let mut sent = 0;
    let refused = loop {
        assert!(sent < 1000, "the queue never filled: no backpressure");
        let r = api
            .send(pb::SendRequest {
                session_id: stalled.session.clone(),
                message: text(&chunk),
                ..Default::default()
            })
            .await;
        match r {
            Ok(_) => sent += 1,
            Err(s) => break s,
        }
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    // Well under what was offered: the stream window and the queue bound hold it.
    assert!(sent * 10_000 < 200_000, "{sent} messages taken");
    // The other stream on the same connection is not held up.
    api.send(pb::SendRequest {
        session_id: lively.session.clone(),
        message: text("unaffected"),
        ..Default::default()
    })
    .await
    .expect("send");
    assert_eq!(
        lively.read_frame().await,
        Some((0x1, b"unaffected".to_vec()))
    );
    // Reading the stalled stream gives every accepted message, in order, nothing lost.
    for _ in 0..sent {
        let (op, payload) = within("stalled frames", stalled.read_frame())
            .await
            .expect("frame");
        assert_eq!((op, payload.len()), (0x1, 10_000));
    }
}

#[tokio::test]
async fn only_an_extended_connect_for_websocket_opens_a_session() {
    let gw = Gateway::start(&[]).await;
    let mut conn = H2Connection::connect(gw.client_addr, 1 << 20).await;
    let (status, _, _) = conn.connect_ws("/ws/h", Some("webtransport"), &[]).await;
    assert_eq!(status, 426);
    let (status, _, _) = conn
        .connect_ws("/ws/bad%2Fhub", Some("websocket"), &[])
        .await;
    assert_eq!(status, 400);
    let (status, _, _) = conn
        .connect_ws(
            "/ws/h",
            Some("websocket"),
            &[("sec-websocket-version", "8")],
        )
        .await;
    assert_eq!(status, 400);
    // The connection still serves good requests after refusing bad ones.
    let (status, _, ws) = conn.connect_ws("/ws/h", Some("websocket"), &[]).await;
    assert_eq!(status, 200);
    assert!(!ws.expect("stream").session.is_empty());
    // Plain HTTP/1.1 clients are unaffected on the same port.
    let (status, _) = gw.http_get("/healthz").await;
    assert_eq!(status, 200);
}
