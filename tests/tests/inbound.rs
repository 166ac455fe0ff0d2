//! The inbound path: Read, Attach and Subscribe, and backpressure instead of loss.

use std::collections::{HashMap, HashSet};

use futures_util::future::join_all;
use switchboard_proto::v1::{
    self as pb, attach_request::Kind as Req, attach_response::Kind as Resp, event::Kind as Ev,
    message::Payload, read_response::Result as R,
};
use switchboard_tests::{
    gateway::{Api, Gateway},
    raw::RawWs,
    within,
    ws::{Client, Seen},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

fn secs(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: s,
        nanos: 0,
    })
}

fn millis(ms: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: 0,
        nanos: ms * 1_000_000,
    })
}

async fn read(api: &mut Api, id: &str, timeout: Option<prost_types::Duration>) -> R {
    api.read(pb::ReadRequest {
        ack: None,
        session_id: id.into(),
        timeout,
    })
    .await
    .expect("read")
    .into_inner()
    .result
    .expect("a result")
}

fn text_of(m: &pb::InboundMessage) -> String {
    match m.message.as_ref().and_then(|m| m.payload.as_ref()) {
        Some(Payload::Text(t)) => t.clone(),
        other => panic!("expected text, got {other:?}"),
    }
}

#[tokio::test]
async fn read_returns_a_waiting_message_times_out_and_reports_the_close() {
    let gw = Gateway::start(&["--max-read-timeout", "1s"]).await;
    let mut api = gw.api().await;
    let mut c = gw.connect("h").await;
    c.send_text("first").await;
    c.send_binary(&[1, 2, 3]).await;
    match read(&mut api, &c.id, secs(10)).await {
        R::Message(m) => {
            assert_eq!(m.seq, 1);
            assert_eq!(text_of(&m), "first");
        }
        other => panic!("{other:?}"),
    }
    match read(&mut api, &c.id, secs(10)).await {
        R::Message(m) => {
            assert_eq!(m.seq, 2);
            assert_eq!(
                m.message.unwrap().payload,
                Some(Payload::Binary(vec![1, 2, 3].into()))
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        read(&mut api, &c.id, millis(200)).await,
        R::TimedOut(_)
    ));
    // An hour is asked for; the 1 s cap answers.
    assert!(matches!(
        read(&mut api, &c.id, secs(3600)).await,
        R::TimedOut(_)
    ));

    let err = api
        .read(pb::ReadRequest {
            ack: None,
            session_id: c.id.clone(),
            timeout: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    c.send_text("last words").await;
    let id = c.id.clone();
    c.close(4000, "leaving").await;
    match read(&mut api, &id, secs(10)).await {
        R::Message(m) => assert_eq!(text_of(&m), "last words"),
        other => panic!("{other:?}"),
    }
    match read(&mut api, &id, secs(10)).await {
        R::Closed(closed) => {
            assert_eq!(closed.code, 4000);
            assert_eq!(closed.reason, "leaving");
            assert_eq!(closed.closed_by, pb::Closer::Client as i32);
        }
        other => panic!("{other:?}"),
    }
}

async fn read_after(api: &mut Api, id: &str, ack: u64) -> R {
    api.read(pb::ReadRequest {
        ack: Some(ack),
        session_id: id.into(),
        timeout: millis(100),
    })
    .await
    .expect("read")
    .into_inner()
    .result
    .expect("a result")
}

fn numbered(r: R) -> (u64, String) {
    match r {
        R::Message(m) => {
            assert_eq!(
                m.client_seq, m.seq,
                "a plain session's client_seq is its seq"
            );
            (m.client_seq, text_of(&m))
        }
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn a_read_with_an_ack_answers_again_what_the_backend_did_not_get_even_after_the_close() {
    let gw = Gateway::start(&[]).await;
    let mut api = gw.api().await;
    let mut c = gw.connect("h").await;
    for t in ["one", "two", "three"] {
        c.send_text(t).await;
    }
    let first = within("the first message", async {
        loop {
            if let R::Message(m) = read_after(&mut api, &c.id, 0).await {
                return (m.client_seq, text_of(&m));
            }
        }
    })
    .await;
    assert_eq!(first, (1, "one".into()));
    // The answer was lost on the way: the backend still says 0.
    assert_eq!(numbered(read_after(&mut api, &c.id, 0).await), first);
    assert_eq!(
        numbered(read_after(&mut api, &c.id, 1).await),
        (2, "two".into())
    );
    assert_eq!(
        numbered(read_after(&mut api, &c.id, 2).await),
        (3, "three".into())
    );
    assert!(matches!(
        read_after(&mut api, &c.id, 3).await,
        R::TimedOut(_)
    ));
    c.send_text("last words").await;
    let id = c.id.clone();
    c.close(4000, "leaving").await;
    let last = within("the last message", async {
        loop {
            if let R::Message(m) = read_after(&mut api, &id, 3).await {
                return (m.client_seq, text_of(&m));
            }
        }
    })
    .await;
    assert_eq!(last, (4, "last words".into()));
    assert_eq!(numbered(read_after(&mut api, &id, 3).await), last);
    match read_after(&mut api, &id, 4).await {
        R::Closed(closed) => assert_eq!(closed.code, 4000),
        other => panic!("{other:?}"),
    }
}

/// An attach stream: requests go in through `tx`, responses come out of `rx`.
struct Attached {
    tx: mpsc::Sender<pb::AttachRequest>,
    rx: Streaming<pb::AttachResponse>,
}

async fn attach(api: &mut Api, id: &str, take_over: bool) -> Result<Attached, tonic::Status> {
    attach_with(api, id, take_over, false).await
}

async fn attach_with(
    api: &mut Api,
    id: &str,
    take_over: bool,
    manual_ack: bool,
) -> Result<Attached, tonic::Status> {
    let (tx, reqs) = mpsc::channel(16);
    tx.send(pb::AttachRequest {
        kind: Some(Req::Open(pb::AttachOpen {
            session_id: id.into(),
            take_over,
            manual_ack,
        })),
    })
    .await
    .unwrap();
    let mut rx = api.attach(ReceiverStream::new(reqs)).await?.into_inner();
    match within("attached", rx.message()).await? {
        Some(pb::AttachResponse {
            kind: Some(Resp::Attached(info)),
        }) => assert_eq!(info.session_id, id),
        other => panic!("expected attached, got {other:?}"),
    }
    Ok(Attached { tx, rx })
}

impl Attached {
    async fn next(&mut self) -> Result<Resp, tonic::Status> {
        match within("attach stream", self.rx.message()).await? {
            Some(pb::AttachResponse { kind: Some(k) }) => Ok(k),
            other => panic!("unexpected {other:?}"),
        }
    }

    async fn write(&self, s: &str) {
        self.tx
            .send(pb::AttachRequest {
                kind: Some(Req::Write(pb::Message {
                    payload: Some(Payload::Text(s.into())),
                })),
            })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn attach_streams_messages_in_order_and_carries_writes_and_close() {
    let gw = Gateway::start(&[]).await;
    let mut api = gw.api().await;
    let mut c = gw.connect("h").await;
    c.send_text("before attach").await;
    let mut a = attach(&mut api, &c.id, false).await.unwrap();
    for i in 0..100 {
        c.send_text(&format!("m{i}")).await;
    }
    match a.next().await.unwrap() {
        Resp::Message(m) => assert_eq!((m.seq, text_of(&m).as_str()), (1, "before attach")),
        other => panic!("{other:?}"),
    }
    for i in 0..100 {
        match a.next().await.unwrap() {
            Resp::Message(m) => assert_eq!(text_of(&m), format!("m{i}")),
            other => panic!("{other:?}"),
        }
    }
    a.write("from the backend").await;
    assert_eq!(c.text().await, "from the backend");

    // One attached backend at a time.
    let err = attach(&mut api, &c.id, false).await.err().unwrap();
    assert_eq!(err.code(), Code::FailedPrecondition);
    // Read is refused while attached: the attached backend gets the messages.
    let err = api
        .read(pb::ReadRequest {
            ack: None,
            session_id: c.id.clone(),
            timeout: millis(10),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    a.tx.send(pb::AttachRequest {
        kind: Some(Req::Close(pb::CloseSession {
            code: 4002,
            reason: "done".into(),
        })),
    })
    .await
    .unwrap();
    assert_eq!(c.closed().await, (4002, "done".into()));
    match a.next().await.unwrap() {
        Resp::Closed(closed) => {
            assert_eq!(closed.code, 4002);
            assert_eq!(closed.closed_by, pb::Closer::Backend as i32);
        }
        other => panic!("{other:?}"),
    }
    assert!(within("end of stream", a.rx.message())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn take_over_ends_the_first_stream_and_detaching_leaves_messages_for_read() {
    let gw = Gateway::start(&[]).await;
    let mut api = gw.api().await;
    let mut c = gw.connect("h").await;
    let mut first = attach(&mut api, &c.id, false).await.unwrap();
    let mut second = attach(&mut api, &c.id, true).await.unwrap();
    let err = first.next().await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    c.send_text("to the second").await;
    match second.next().await.unwrap() {
        Resp::Message(m) => assert_eq!(text_of(&m), "to the second"),
        other => panic!("{other:?}"),
    }
    // The backend goes away without a word.
    drop(second);
    // The gateway notices when the stream's transport ends; until then Read is refused.
    let mut n = 0;
    loop {
        match api
            .read(pb::ReadRequest {
                ack: None,
                session_id: c.id.clone(),
                timeout: millis(1),
            })
            .await
        {
            Err(s) if s.code() == Code::FailedPrecondition => {
                n += 1;
                assert!(n < 10_000, "detach never noticed");
                tokio::task::yield_now().await;
            }
            Ok(_) => break,
            Err(s) => panic!("{s}"),
        }
    }
    for i in 0..10 {
        c.send_text(&format!("after detach {i}")).await;
    }
    for i in 0..10 {
        match read(&mut api, &c.id, secs(10)).await {
            R::Message(m) => assert_eq!(text_of(&m), format!("after detach {i}")),
            other => panic!("{other:?}"),
        }
    }
    // And the session itself was never disturbed.
    api.send(pb::SendRequest {
        session_id: c.id.clone(),
        message: Some(pb::Message {
            payload: Some(Payload::Text("still open".into())),
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(c.next().await, Seen::Text("still open".into()));
}

async fn subscribe(api: &mut Api, hub: &str, group: &str) -> Streaming<pb::Event> {
    api.subscribe(pb::SubscribeRequest {
        hub: hub.into(),
        kinds: vec![],
        consumer_group: group.into(),
    })
    .await
    .expect("subscribe")
    .into_inner()
}

#[tokio::test]
async fn subscribe_sees_connected_message_disconnected_in_order() {
    let gw = Gateway::start(&[]).await;
    let mut api = gw.api().await;
    let mut events = subscribe(&mut api, "h", "").await;
    let mut c = gw.connect("h").await;
    let id = c.id.clone();
    c.send_text("hello").await;
    c.close(1000, "").await;
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let e = within("event", events.message()).await.unwrap().unwrap();
        assert_eq!(e.session_id, id);
        assert_eq!(e.hub, "h");
        kinds.push(match e.kind.unwrap() {
            Ev::Connected(info) => {
                assert_eq!(info.session_id, id);
                "connected".to_string()
            }
            Ev::Message(m) => format!("message:{}", text_of(&m)),
            Ev::Disconnected(c) => format!("disconnected:{}", c.code),
            other => format!("unexpected:{other:?}"),
        });
    }
    assert_eq!(kinds, ["connected", "message:hello", "disconnected:1000"]);
}

#[tokio::test]
async fn a_consumer_group_splits_events_once_each_and_another_group_gets_them_all() {
    let gw = Gateway::start(&[]).await;
    let mut api = gw.api().await;
    let members = [
        subscribe(&mut api, "h", "workers").await,
        subscribe(&mut api, "h", "workers").await,
    ];
    let audit = subscribe(&mut api, "h", "audit").await;

    const N: usize = 1000;
    // Every stream's events go to one channel, tagged with the stream's index (2: audit).
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, pb::Event)>();
    for (i, mut s) in members.into_iter().chain([audit]).enumerate() {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(e)) = s.message().await {
                if tx.send((i, e)).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);

    // 1,000 sessions, each: connect, one message, close.
    for chunk in 0..(N / 100) {
        let clients = join_all((0..100).map(|_| gw.connect("h"))).await;
        join_all(
            clients
                .into_iter()
                .enumerate()
                .map(|(k, mut c)| async move {
                    c.send_text(&format!("hello {}", chunk * 100 + k)).await;
                    c.close(1000, "").await;
                }),
        )
        .await;
    }

    // Until the group and the audit stream have each seen N disconnects...
    let mut results: HashMap<usize, Vec<pb::Event>> = (0..3).map(|i| (i, Vec::new())).collect();
    let disconnects = |events: &[pb::Event]| {
        events
            .iter()
            .filter(|e| matches!(e.kind, Some(Ev::Disconnected(_))))
            .count()
    };
    while disconnects(&results[&0]) + disconnects(&results[&1]) < N || disconnects(&results[&2]) < N
    {
        let (i, e) = within("events", rx.recv())
            .await
            .expect("the streams ended");
        results.get_mut(&i).unwrap().push(e);
    }
    // ... and then until a quiet second, so a late duplicate fails the counts below. Bounded:
    // past twice the expected total they fail anyway.
    while results.values().map(Vec::len).sum::<usize>() < 2 * 2 * 3 * N {
        let Ok(next) = tokio::time::timeout(std::time::Duration::from_secs(1), rx.recv()).await
        else {
            break;
        };
        let (i, e) = next.expect("the streams ended");
        results.get_mut(&i).unwrap().push(e);
    }
    // The group: every event exactly once across its two members, 3 per session.
    let mut owner: HashMap<String, usize> = HashMap::new();
    let mut seen = HashSet::new();
    for i in 0..2 {
        for e in &results[&i] {
            let kind = match e.kind {
                Some(Ev::Connected(_)) => 0,
                Some(Ev::Message(_)) => 1,
                Some(Ev::Disconnected(_)) => 2,
                ref other => panic!("unexpected event {other:?}"),
            };
            assert!(seen.insert((e.session_id.clone(), kind)), "duplicate event");
            let prev = owner.insert(e.session_id.clone(), i);
            assert!(
                prev.is_none() || prev == Some(i),
                "a session's events were split"
            );
        }
    }
    assert_eq!(seen.len(), 3 * N);
    assert_eq!(
        results[&0].len() + results[&1].len(),
        3 * N,
        "no duplicates"
    );
    assert!(
        !results[&0].is_empty() && !results[&1].is_empty(),
        "both members worked"
    );
    // The other group got all of them too.
    assert_eq!(results[&2].len(), 3 * N);
    // And the metrics counted each delivery once per group.
    let (status, metrics) = gw.admin_request("GET", "/metrics", None, "").await;
    assert_eq!(status, 200);
    for group in ["workers", "audit"] {
        let line = format!(
            "switchboard_subscriber_events_total{{hub=\"h\",group=\"{group}\"}} {}",
            3 * N
        );
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn with_nobody_reading_the_socket_pauses_and_nothing_is_lost() {
    // The client sends as fast as it can: no per-session rate limit here.
    let gw = Gateway::start(&["--inbox-messages", "256", "--max-messages-per-second", "0"]).await;
    let mut api = gw.api().await;
    let mut c = gw.connect("h").await;
    const N: usize = 10_000;
    let id = c.id.clone();
    let sender = tokio::spawn(async move {
        for i in 0..N {
            c.send_text(&format!("{i:05} {}", "x".repeat(200))).await;
        }
        c
    });
    // The gateway stops reading once the inbox is full: the metric says so.
    let mut polls = 0;
    loop {
        let (_, metrics) = gw.http_get("/metrics").await;
        if metrics.contains("switchboard_paused_sockets 1") {
            break;
        }
        polls += 1;
        assert!(polls < 2_000, "the socket was never paused");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    for i in 0..N {
        match read(&mut api, &id, secs(10)).await {
            R::Message(m) => {
                assert_eq!(m.seq, i as u64 + 1);
                assert!(text_of(&m).starts_with(&format!("{i:05} ")));
            }
            other => panic!("message {i}: {other:?}"),
        }
    }
    let mut c = within("the client to finish sending", sender)
        .await
        .unwrap();
    // A final marker comes next: nothing was read twice.
    c.send_text("end").await;
    match read(&mut api, &id, secs(10)).await {
        R::Message(m) => assert_eq!((m.seq, text_of(&m).as_str()), (N as u64 + 1, "end")),
        other => panic!("after {N} messages: {other:?}"),
    }
    assert!(matches!(
        read(&mut api, &id, millis(50)).await,
        R::TimedOut(_)
    ));
}

#[tokio::test]
async fn a_backend_vanishing_mid_stream_does_not_disturb_the_gateway() {
    let gw = Gateway::start(&[]).await;
    let mut api = gw.api().await;
    let mut watched = gw.connect("h").await;
    let mut other = gw.connect("h").await;
    {
        // A separate connection per backend, so dropping it really cuts the transport.
        let mut doomed = gw.api().await;
        let mut a = attach(&mut doomed, &watched.id, false).await.unwrap();
        let _events = subscribe(&mut doomed, "h", "").await;
        watched.send_text("one").await;
        assert!(matches!(a.next().await.unwrap(), Resp::Message(_)));
        for i in 0..50 {
            watched.send_text(&format!("unread {i}")).await;
        }
    }
    // The gateway serves everyone else meanwhile.
    api.send(pb::SendRequest {
        session_id: other.id.clone(),
        message: Some(pb::Message {
            payload: Some(Payload::Text("hi".into())),
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(other.text().await, "hi");
    // And the watched client can still be attached to, and still talks.
    let mut a = loop {
        match attach(&mut api, &watched.id, false).await {
            Ok(a) => break a,
            Err(s) if s.code() == Code::FailedPrecondition => tokio::task::yield_now().await,
            Err(s) => panic!("{s}"),
        }
    };
    watched.send_text("after").await;
    loop {
        match a.next().await.unwrap() {
            Resp::Message(m) if text_of(&m) == "after" => break,
            Resp::Message(_) => continue,
            other => panic!("{other:?}"),
        }
    }
    let _ = Client::connect(&gw.ws_url("h")).await;
}

#[tokio::test]
async fn with_manual_ack_unacknowledged_messages_return_to_the_inbox_on_detach() {
    let gw = Gateway::start(&[]).await;
    let mut api = gw.api().await;
    let mut c = gw.connect("h").await;
    let mut a = attach_with(&mut api, &c.id, false, true).await.unwrap();
    for i in 1..=3 {
        c.send_text(&format!("m{i}")).await;
    }
    for i in 1..=3 {
        match a.next().await.unwrap() {
            Resp::Message(m) => assert_eq!(text_of(&m), format!("m{i}")),
            other => panic!("{other:?}"),
        }
    }
    // Only the first was processed before the backend went away.
    a.tx.send(pb::AttachRequest {
        kind: Some(Req::Ack(pb::Ack { seq: 1 })),
    })
    .await
    .unwrap();
    // Once the ack is through (a write after it on the same stream proves the order)...
    a.write("ack sent").await;
    assert_eq!(c.text().await, "ack sent");
    drop(a);
    // ... m2 and m3 wait in the inbox for the next reader, in order.
    let mut got = Vec::new();
    while got.len() < 2 {
        match api
            .read(pb::ReadRequest {
                ack: None,
                session_id: c.id.clone(),
                timeout: secs(10),
            })
            .await
        {
            Ok(r) => match r.into_inner().result.unwrap() {
                R::Message(m) => got.push((m.seq, text_of(&m))),
                other => panic!("{other:?}"),
            },
            // Until the gateway notices the stream is gone, the session counts as attached.
            Err(s) if s.code() == Code::FailedPrecondition => tokio::task::yield_now().await,
            Err(s) => panic!("{s}"),
        }
    }
    assert_eq!(got, vec![(2, "m2".to_string()), (3, "m3".to_string())]);
    // A final marker comes next: m2 and m3 came back once.
    c.send_text("m4").await;
    match read(&mut api, &c.id, secs(10)).await {
        R::Message(m) => assert_eq!((m.seq, text_of(&m).as_str()), (4, "m4")),
        other => panic!("{other:?}"),
    }
}

/// One gRPC message in its length-prefixed frame.
fn grpc_frame(req: &pb::AttachRequest) -> bytes::Bytes {
    let body = prost::Message::encode_to_vec(req);
    let mut f = Vec::with_capacity(5 + body.len());
    f.push(0);
    f.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    f.extend_from_slice(&body);
    f.into()
}

/// Sends `frame` as one DATA frame once the stream's flow-control window has room for it;
/// returns whether it had to wait for the window.
async fn send_when_window_allows(
    tx: &mut h2::SendStream<bytes::Bytes>,
    frame: bytes::Bytes,
) -> Result<bool, String> {
    let len = frame.len();
    tx.reserve_capacity(len);
    let mut waited = false;
    while tx.capacity() < len {
        waited = true;
        match std::future::poll_fn(|cx| tx.poll_capacity(cx)).await {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("the stream closed".into()),
        }
    }
    tx.send_data(frame, false).map_err(|e| e.to_string())?;
    Ok(waited)
}

/// Reads the next gRPC message of a response body.
async fn next_grpc(body: &mut h2::RecvStream, buf: &mut Vec<u8>) -> pb::AttachResponse {
    loop {
        if buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() >= 5 + len {
                let msg = prost::Message::decode(&buf[5..5 + len]).expect("an AttachResponse");
                buf.drain(..5 + len);
                return msg;
            }
        }
        let chunk = within("the attach response", body.data())
            .await
            .expect("the response body ended")
            .expect("the response body failed");
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
    }
}

/// A backend writing many small messages, each in its own HTTP/2 DATA frame, to a client that
/// does not read: the writes wait in HTTP/2 flow control, the backend's connection stays up
/// (HTTP/2 stacks close a connection whose unread small frames cost more than a budget tied to
/// its window), and the client gets every message once, in order, when it reads again.
#[tokio::test]
async fn small_attach_writes_to_a_client_that_does_not_read_wait_and_all_arrive() {
    let gw = Gateway::start(&[
        "--outbound-queue-messages",
        "64",
        "--slow-consumer-grace",
        "10m",
    ])
    .await;
    let mut client = RawWs::connect_with_recv_buffer(gw.client_addr, "h", 4096).await;

    // A raw HTTP/2 client: a gRPC library would merge messages that are ready together into
    // one DATA frame, and this test needs one frame per message.
    let tcp = within(
        "backend connect",
        tokio::net::TcpStream::connect(gw.backend_addr),
    )
    .await
    .unwrap();
    let (h2, connection) = within("HTTP/2 handshake", h2::client::handshake(tcp))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let mut h2 = within("HTTP/2 ready", h2.ready()).await.unwrap();
    let request = http::Request::post(format!(
        "http://{}/switchboard.v1.Gateway/Attach",
        gw.backend_addr
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (response, mut tx) = h2.send_request(request, false).unwrap();
    let open = pb::AttachRequest {
        kind: Some(Req::Open(pb::AttachOpen {
            session_id: client.session.clone(),
            ..Default::default()
        })),
    };
    send_when_window_allows(&mut tx, grpc_frame(&open))
        .await
        .unwrap();
    let response = within("the Attach response", response).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut buf = Vec::new();
    assert!(matches!(
        next_grpc(&mut body, &mut buf).await.kind,
        Some(Resp::Attached(_))
    ));

    // 60,000 frames of 13 bytes: far more than the socket, the outbound queue and one stream
    // window hold together, so the writer must wait for the client.
    const N: u32 = 60_000;
    let (held_tx, held) = tokio::sync::oneshot::channel();
    let writer = tokio::spawn(async move {
        let mut held_tx = Some(held_tx);
        for i in 0..N {
            let write = pb::AttachRequest {
                kind: Some(Req::Write(pb::Message {
                    payload: Some(Payload::Binary(i.to_be_bytes().to_vec().into())),
                })),
            };
            if send_when_window_allows(&mut tx, grpc_frame(&write))
                .await
                .map_err(|e| format!("write {i}: {e}"))?
            {
                if let Some(h) = held_tx.take() {
                    let _ = h.send(i);
                }
            }
        }
        Ok::<_, String>(tx)
    });
    let Ok(held_at) = within("the writer to wait for the window", held).await else {
        let ended = within("the writer", writer).await.unwrap().map(drop);
        panic!("the writer ended before its window ran out: {ended:?}");
    };
    // Held back by a full window, not by the start of the connection.
    assert!(held_at > 1_000, "held back after only {held_at} writes");

    for i in 0..N {
        let (opcode, payload) = within("the next message", client.read_frame())
            .await
            .unwrap_or_else(|| panic!("the socket ended before message {i}"));
        assert_eq!((opcode, payload), (0x2, i.to_be_bytes().to_vec()));
    }
    let mut tx = within("the writer", writer).await.unwrap().unwrap();

    // The stream and its connection still work: a close travels through and is reported.
    let close = pb::AttachRequest {
        kind: Some(Req::Close(pb::CloseSession {
            code: 4000,
            reason: "done".into(),
        })),
    };
    send_when_window_allows(&mut tx, grpc_frame(&close))
        .await
        .unwrap();
    // The close is the next frame after the N messages (pings aside): none came twice.
    loop {
        let (opcode, payload) = within("the close", client.read_frame())
            .await
            .expect("the socket ended before the close");
        match opcode {
            0x9 | 0xA => continue,
            0x8 => {
                assert_eq!(payload.get(..2), Some(&4000u16.to_be_bytes()[..]));
                break;
            }
            _ => panic!("a frame after the {N} messages: opcode {opcode} {payload:?}"),
        }
    }
    client.send_frame(true, 0x8, &4000u16.to_be_bytes()).await;
    assert!(matches!(
        next_grpc(&mut body, &mut buf).await.kind,
        Some(Resp::Closed(_))
    ));
    assert!(!connection.is_finished(), "the backend connection ended");
}
