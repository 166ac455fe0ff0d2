//! Clients that stop reading, against a real process: the write deadline closes a socket that
//! takes no byte (and gives its connection slot back only once the socket is gone), and the
//! slow-consumer close (1013) spares a client that reads slowly but steadily.

use std::time::Duration;

use switchboard_proto::v1::{self as pb, message::Payload, target::Kind as T};
use switchboard_tests::{
    gateway::{Api, Gateway},
    raw::RawWs,
    within,
    ws::{Client, Seen},
};
use tokio::io::Interest;
use tonic::Code;

fn binary(b: &[u8]) -> Option<pb::Message> {
    Some(pb::Message {
        payload: Some(Payload::Binary(b.to_vec().into())),
    })
}

fn text(s: &str) -> Option<pb::Message> {
    Some(pb::Message {
        payload: Some(Payload::Text(s.into())),
    })
}

/// Waits for the gateway to have torn a session down (`Read` blocks until it reports the close)
/// and returns how it ended.
async fn wait_closed(api: &mut Api, id: &str) -> pb::Closed {
    // Bounded: each `Read` waits up to 10 s; unread client messages come first.
    for _ in 0..10 {
        let r = api
            .read(pb::ReadRequest {
                ack: None,
                session_id: id.into(),
                timeout: Some(prost_types::Duration {
                    seconds: 10,
                    nanos: 0,
                }),
            })
            .await
            .expect("read")
            .into_inner();
        if let Some(pb::read_response::Result::Closed(c)) = r.result {
            return c;
        }
    }
    panic!("session {id} was never reported closed");
}

/// The value of an unlabelled metric in `/metrics`.
async fn metric(gw: &Gateway, name: &str) -> f64 {
    let (status, body) = gw.http_get("/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

/// A client that never reads, with a receive window of a few KiB: after the 101 it takes
/// nothing, so the gateway's writes stall.
async fn stalled_client(gw: &Gateway) -> RawWs {
    RawWs::connect_with_recv_buffer(gw.client_addr, "h", 4096).await
}

/// Sends 64 KiB messages to `id` (bounded, paced once its queue refuses) until the session is
/// gone.
async fn send_until_gone(api: &mut Api, id: &str) {
    let chunk = vec![7u8; 64 << 10];
    for _ in 0..2_000 {
        let r = api
            .send(pb::SendRequest {
                session_id: id.into(),
                message: binary(&chunk),
                ..Default::default()
            })
            .await;
        match r {
            Ok(_) => {}
            Err(s) if s.code() == Code::ResourceExhausted => {
                // The queue is full; keep offering, without spinning, until the gateway acts.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => return,
        }
    }
    panic!("session {id} still took messages after 2000 sends");
}

/// Waits until the gateway has reset the client's socket. A peer that does not read cannot see
/// an orderly close (the FIN waits behind the unsent bytes), so a reset is the only close it
/// can observe, and the only one that frees the gateway's socket at once.
async fn wait_reset(ws: &RawWs) {
    let ready = within(
        "the gateway to reset the socket",
        ws.stream.ready(Interest::ERROR),
    )
    .await
    .expect("poll the socket");
    assert!(ready.is_error());
    let err = ws.stream.take_error().expect("SO_ERROR");
    assert_eq!(
        err.map(|e| e.kind()),
        Some(std::io::ErrorKind::ConnectionReset)
    );
}

/// With `--max-connections 1`: the one slot is free again, so a new client gets in.
async fn slot_is_free(gw: &Gateway) {
    let c = Client::try_connect(&gw.ws_url("h"), &[]).await;
    assert!(c.is_ok(), "a new client was refused: {:?}", c.err());
}

#[tokio::test]
async fn a_client_that_takes_no_byte_is_reset_after_the_write_timeout_and_frees_its_slot() {
    // The slow-consumer grace is far beyond the test's patience: only the write deadline can
    // close this client in time.
    let gw = Gateway::start(&[
        "--write-timeout",
        "2s",
        "--slow-consumer-grace",
        "5m",
        "--max-connections",
        "1",
    ])
    .await;
    let mut api = gw.api().await;
    let stalled = stalled_client(&gw).await;
    within(
        "the gateway to drop the stalled client",
        send_until_gone(&mut api, &stalled.session),
    )
    .await;
    wait_reset(&stalled).await;
    let closed = wait_closed(&mut api, &stalled.session).await;
    assert_eq!(
        (closed.code, closed.reason.as_str(), closed.closed_by),
        (1006, "write timeout", pb::Closer::Gateway as i32)
    );
    assert_eq!(metric(&gw, "switchboard_write_timeouts_total").await, 1.0);
    assert_eq!(
        metric(&gw, "switchboard_slow_consumer_closes_total").await,
        0.0
    );
    assert_eq!(metric(&gw, "switchboard_sessions_open").await, 0.0);
    slot_is_free(&gw).await;
}

#[tokio::test]
async fn a_slow_consumer_close_that_cannot_be_delivered_still_frees_the_socket_and_slot() {
    // The 1013 comes first, but its close frame waits behind bytes the client never takes.
    let gw = Gateway::start(&[
        "--write-timeout",
        "3s",
        "--slow-consumer-grace",
        "1s",
        "--max-connections",
        "1",
    ])
    .await;
    let mut api = gw.api().await;
    let stalled = stalled_client(&gw).await;
    within(
        "the gateway to drop the stalled client",
        send_until_gone(&mut api, &stalled.session),
    )
    .await;
    wait_reset(&stalled).await;
    let closed = wait_closed(&mut api, &stalled.session).await;
    assert_eq!(
        (closed.code, closed.closed_by),
        (1013, pb::Closer::Gateway as i32)
    );
    assert_eq!(
        metric(&gw, "switchboard_slow_consumer_closes_total").await,
        1.0
    );
    assert_eq!(metric(&gw, "switchboard_sessions_open").await, 0.0);
    slot_is_free(&gw).await;
}

#[tokio::test]
async fn a_session_ended_by_the_close_timeout_does_not_leave_its_socket_to_a_stuck_write() {
    // The write deadline is out of reach: the 1013 goes unanswered, the close timeout ends the
    // session, and that alone must free the socket the flush task is stuck on.
    let gw = Gateway::start(&[
        "--write-timeout",
        "10m",
        "--slow-consumer-grace",
        "1s",
        "--close-timeout",
        "1s",
        "--max-connections",
        "1",
    ])
    .await;
    let mut api = gw.api().await;
    let stalled = stalled_client(&gw).await;
    within(
        "the gateway to drop the stalled client",
        send_until_gone(&mut api, &stalled.session),
    )
    .await;
    wait_reset(&stalled).await;
    let closed = wait_closed(&mut api, &stalled.session).await;
    assert_eq!(
        (closed.code, closed.closed_by),
        (1013, pb::Closer::Gateway as i32)
    );
    assert_eq!(metric(&gw, "switchboard_write_timeouts_total").await, 0.0);
    assert_eq!(metric(&gw, "switchboard_sessions_open").await, 0.0);
    slot_is_free(&gw).await;
}

#[tokio::test]
async fn with_the_default_grace_a_stopped_client_gets_1013_and_a_steady_slow_reader_gets_everything(
) {
    // Defaults only: the slow-consumer grace (5 s), queue bounds and write timeout as shipped.
    let gw = Gateway::start(&[]).await;
    let mut api = gw.api().await;
    let mut stopped = stalled_client(&gw).await;
    let mut steady = gw.connect("h").await;

    // Fill the stopped client's queue so its slow-consumer clock starts: large messages,
    // then small ones into what is left, so that it refuses every message published below.
    for size in [64 << 10, 64] {
        let chunk = vec![7u8; size];
        let mut full = false;
        for _ in 0..2_000 {
            let r = api
                .send(pb::SendRequest {
                    session_id: stopped.session.clone(),
                    message: binary(&chunk),
                    ..Default::default()
                })
                .await;
            match r {
                Ok(_) => {}
                Err(s) if s.code() == Code::ResourceExhausted => {
                    full = true;
                    break;
                }
                Err(s) => panic!("send to the stopped client: {s}"),
            }
        }
        assert!(
            full,
            "the stopped client's queue never refused {size} bytes"
        );
    }

    // The steady client takes one message every 5 ms until the end marker.
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        // Bounded by the publisher's budget plus the marker.
        for _ in 0..=BUDGET {
            match steady.next().await {
                Seen::Text(t) if t == "end" => return (steady, seen),
                Seen::Text(t) => seen.push(t),
                other => panic!("the steady client got {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("no end marker after {BUDGET} messages");
    });

    // A burst faster than the steady client reads, then a slower trickle until the stopped
    // client is closed: every Publish reports it refused (queue full) until then, and neither
    // queued nor refused once it is closing. The budget stays below the queue's 1024 frames,
    // so the steady client cannot be refused whatever its pace.
    const BUDGET: usize = 900;
    const BURST: usize = 300;
    let pad = "x".repeat(500);
    let mut published = 0;
    let mut closing = false;
    while published < BUDGET {
        let r = api
            .publish(pb::PublishRequest {
                target: Some(pb::Target {
                    kind: Some(T::Hub("h".into())),
                }),
                exclude: vec![],
                message: text(&format!("m{published} {pad}")),
                ..Default::default()
            })
            .await
            .expect("publish")
            .into_inner();
        published += 1;
        assert_eq!(r.queued, 1, "the steady client missed message {published}");
        if r.refused == 0 {
            closing = true;
            break;
        }
        if published >= BURST {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(
        closing,
        "the stopped client was not closed within the budget"
    );

    // Now it reads: past what was in flight, the close frame says 1013.
    assert_eq!(within("the 1013", stopped.close_code()).await, Some(1013));
    stopped.send_frame(true, 0x8, &1013u16.to_be_bytes()).await;
    let closed = wait_closed(&mut api, &stopped.session).await;
    assert_eq!(
        (closed.code, closed.closed_by),
        (1013, pb::Closer::Gateway as i32)
    );

    api.publish(pb::PublishRequest {
        target: Some(pb::Target {
            kind: Some(T::Hub("h".into())),
        }),
        exclude: vec![],
        message: text("end"),
        ..Default::default()
    })
    .await
    .expect("publish the end marker");
    let (steady, seen) = within("the steady client's messages", reader)
        .await
        .expect("reader task");
    let want: Vec<String> = (0..published).map(|i| format!("m{i} {pad}")).collect();
    assert_eq!(seen.len(), want.len());
    assert!(seen == want, "messages lost, repeated or out of order");
    // The steady client is still open and was never counted as slow.
    assert!(api
        .get_session(pb::GetSessionRequest {
            session_id: steady.id.clone(),
        })
        .await
        .is_ok());
    assert_eq!(
        metric(&gw, "switchboard_slow_consumer_closes_total").await,
        1.0
    );
    assert_eq!(metric(&gw, "switchboard_sessions_open").await, 1.0);
}
