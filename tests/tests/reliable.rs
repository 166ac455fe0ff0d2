//! Reliable sessions (`switchboard.reliable.v1`, docs/reliable.md) on the wire: the welcome,
//! numbered messages both ways, acks, suspension, resume with replay, refusals, the bounds,
//! on one node and across nodes sharing a real redis-server.

use std::time::Duration;

use switchboard_proto::v1::{self as pb, event::Kind as Ev, message::Payload, read_response};
use switchboard_tests::{
    envelope::{Got, RelClient},
    gateway::{Api, Gateway},
    redis::Redis,
    within,
};
use tonic::Streaming;

fn base(gw: &Gateway) -> String {
    format!("ws://{}", gw.client_addr)
}

async fn send(api: &mut Api, id: &str, text: &str) -> Result<(), tonic::Status> {
    api.send(pb::SendRequest {
        session_id: id.into(),
        message: Some(pb::Message {
            payload: Some(Payload::Text(text.into())),
        }),
        ..Default::default()
    })
    .await
    .map(drop)
}

async fn subscribe(api: &mut Api, hub: &str) -> Streaming<pb::Event> {
    // Lifecycle events only: client messages stay for Read.
    let kinds = [
        pb::EventKind::Connected,
        pb::EventKind::Disconnected,
        pb::EventKind::Suspended,
        pb::EventKind::Resumed,
    ];
    api.subscribe(pb::SubscribeRequest {
        hub: hub.into(),
        kinds: kinds.into_iter().map(|k| k as i32).collect(),
        ..Default::default()
    })
    .await
    .expect("subscribe")
    .into_inner()
}

/// The next event of `kind`'s sort for `session`, skipping others.
async fn event(events: &mut Streaming<pb::Event>, session: &str, want: &str) -> Ev {
    loop {
        let e = within("an event", events.message())
            .await
            .expect("event stream")
            .expect("event stream open");
        if e.session_id != session {
            continue;
        }
        let kind = e.kind.expect("event kind");
        let name = match &kind {
            Ev::Connected(_) => "connected",
            Ev::Message(_) => "message",
            Ev::Disconnected(_) => "disconnected",
            Ev::Suspended(_) => "suspended",
            Ev::Resumed(_) => "resumed",
        };
        if name == want {
            return kind;
        }
        assert!(
            !matches!(kind, Ev::Disconnected(_)),
            "unexpected disconnected while waiting for {want}: {kind:?}"
        );
    }
}

async fn state(api: &mut Api, id: &str) -> pb::SessionState {
    let r = api
        .check_sessions(pb::CheckSessionsRequest {
            session_ids: vec![id.into()],
        })
        .await
        .expect("check")
        .into_inner();
    r.sessions[0].state()
}

/// A Read (with `ack`, when given) waiting up to `millis`: the message's (client seq, text),
/// or `None` when it timed out.
async fn read_msg(api: &mut Api, id: &str, ack: Option<u64>, millis: i32) -> Option<(u64, String)> {
    let r = api
        .read(pb::ReadRequest {
            ack,
            session_id: id.into(),
            timeout: Some(prost_types::Duration {
                seconds: i64::from(millis / 1000),
                nanos: (millis % 1000) * 1_000_000,
            }),
        })
        .await
        .expect("read")
        .into_inner();
    match r.result {
        Some(read_response::Result::Message(m)) => match m.message.and_then(|m| m.payload) {
            Some(Payload::Text(t)) => Some((m.client_seq, t)),
            other => panic!("expected text, got {other:?}"),
        },
        Some(read_response::Result::TimedOut(_)) => None,
        other => panic!("expected a message or a time-out, got {other:?}"),
    }
}

/// A short Read that finds nothing (and so confirms the previous one).
async fn read_nothing(api: &mut Api, id: &str) -> bool {
    read_msg(api, id, None, 100).await.is_none()
}

async fn read_text(api: &mut Api, id: &str) -> (u64, String) {
    read_msg(api, id, None, 10_000)
        .await
        .expect("a message within 10 s")
}

/// A Read that says it has client messages up to `ack`, waiting up to 100 ms.
async fn read_after(api: &mut Api, id: &str, ack: u64) -> Option<(u64, String)> {
    read_msg(api, id, Some(ack), 100).await
}

/// The next message after `ack`, by short Reads until one answers (within the patience).
async fn next_after(api: &mut Api, id: &str, ack: u64) -> (u64, String) {
    within("a message", async {
        loop {
            if let Some(m) = read_after(api, id, ack).await {
                return m;
            }
        }
    })
    .await
}

#[tokio::test]
async fn messages_are_numbered_both_ways_and_client_messages_are_acked_once_a_backend_has_them() {
    let gw = Gateway::start(&[]).await;
    let mut api = gw.api().await;
    let mut c = RelClient::open(&base(&gw), "h").await;
    assert!(!c.welcome.resumed);
    assert_eq!(c.welcome.ack, 0);
    for i in 1..=3 {
        send(&mut api, c.session(), &format!("m{i}")).await.unwrap();
    }
    for i in 1..=3 {
        assert_eq!(c.message().await, (i, format!("m{i}")));
    }
    c.ack(3).await;
    c.send(1, "hello").await;
    c.send(2, "again").await;
    // Not acknowledged while it waits in the inbox (a backend has not got it yet), nor when a
    // Read answers it (the answer may be lost with the node): once the backend reads again.
    let (client_seq, text) = read_text(&mut api, c.session()).await;
    assert_eq!((client_seq, text.as_str()), (1, "hello"));
    assert_eq!(read_text(&mut api, c.session()).await, (2, "again".into()));
    c.acked(1).await;
    assert!(read_nothing(&mut api, c.session()).await);
    c.acked(2).await;
    // A resend of what was taken is a duplicate: dropped, and answered with the ack.
    c.send(2, "again").await;
    c.acked(2).await;
    c.send(3, "third").await;
    assert_eq!(read_text(&mut api, c.session()).await, (3, "third".into()));
}

#[tokio::test]
async fn a_dropped_connection_suspends_the_session_and_a_resume_replays_what_was_missed_in_order() {
    let gw = Gateway::start(&[]).await;
    let mut api = gw.api().await;
    let mut events = subscribe(&mut api, "h").await;
    let mut c = RelClient::open(&base(&gw), "h").await;
    let id = c.session().to_owned();
    event(&mut events, &id, "connected").await;
    send(&mut api, &id, "one").await.unwrap();
    send(&mut api, &id, "two").await.unwrap();
    assert_eq!(c.message().await, (1, "one".into()));
    assert_eq!(c.message().await, (2, "two".into()));
    c.ack(1).await;
    let w = c.drop_connection();
    event(&mut events, &id, "suspended").await;
    assert_eq!(state(&mut api, &id).await, pb::SessionState::Suspended);
    let info = api
        .get_session(pb::GetSessionRequest {
            session_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert!(info.reliable && info.suspended);
    // Sends go on while nobody is connected.
    send(&mut api, &id, "three").await.unwrap();
    send(&mut api, &id, "four").await.unwrap();
    // The client got 1 and 2 (its ack of 2 never left): everything after 2 comes back.
    let mut c = RelClient::resume(&base(&gw), "h", &w, 2).await.unwrap();
    assert!(c.welcome.resumed);
    assert_eq!(c.session(), id);
    event(&mut events, &id, "resumed").await;
    assert_eq!(c.message().await, (3, "three".into()));
    assert_eq!(c.message().await, (4, "four".into()));
    send(&mut api, &id, "five").await.unwrap();
    assert_eq!(c.message().await, (5, "five".into()));
    assert_eq!(state(&mut api, &id).await, pb::SessionState::Open);
}

#[tokio::test]
async fn a_resume_with_an_earlier_ack_gets_every_unacknowledged_message_again() {
    let gw = Gateway::start(&[]).await;
    let mut api = gw.api().await;
    let mut c = RelClient::open(&base(&gw), "h").await;
    let id = c.session().to_owned();
    for i in 1..=5 {
        send(&mut api, &id, &format!("m{i}")).await.unwrap();
    }
    for i in 1..=5 {
        assert_eq!(c.message().await.0, i);
    }
    c.ack(2).await;
    // A resume while the first connection still looks open replaces it.
    let mut again = RelClient::resume(&base(&gw), "h", &c.welcome.clone(), 2)
        .await
        .unwrap();
    assert!(again.welcome.resumed);
    for i in 3..=5 {
        assert_eq!(again.message().await, (i, format!("m{i}")));
    }
    assert_eq!(c.next().await, Got::Close(4001, "replaced".into()));
}

#[tokio::test]
async fn resumes_are_refused_with_4401_for_a_wrong_token_an_ended_session_or_another_hub() {
    let gw = Gateway::start(&[]).await;
    let c = RelClient::open(&base(&gw), "h").await;
    let mut w = c.welcome.clone();
    let good = w.token.clone();
    w.token = "not-the-token".into();
    assert_eq!(
        RelClient::resume(&base(&gw), "h", &w, 0).await.err(),
        Some(4401)
    );
    w.token = good;
    assert_eq!(
        RelClient::resume(&base(&gw), "other", &w, 0).await.err(),
        Some(4401)
    );
    // The wrong attempts changed nothing: the right one still resumes.
    let c = RelClient::resume(&base(&gw), "h", &w, 0).await.unwrap();
    // A client's close frame ends the session for good.
    c.ws.close(1000, "bye").await;
    let mut api = gw.api().await;
    within("the session to end", async {
        while state(&mut api, &w.session).await != pb::SessionState::Closed {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        RelClient::resume(&base(&gw), "h", &w, 0).await.err(),
        Some(4401)
    );
}

#[tokio::test]
async fn protocol_violations_close_with_their_codes() {
    let gw = Gateway::start(&[]).await;
    let mut c = RelClient::open(&base(&gw), "h").await;
    c.send(2, "skips one").await;
    assert!(matches!(c.next().await, Got::Close(1002, r) if r.contains("gap")));

    let mut c = RelClient::open(&base(&gw), "h").await;
    c.ack(1).await;
    assert!(matches!(c.next().await, Got::Close(1002, r) if r.contains("beyond")));

    let mut c = RelClient::open(&base(&gw), "h").await;
    c.ws.send_text("{not json").await;
    assert!(matches!(c.next().await, Got::Close(1007, _)));

    let mut c = RelClient::open(&base(&gw), "h").await;
    c.ws.send_binary(b"{}").await;
    assert!(matches!(c.next().await, Got::Close(1003, _)));
}

#[tokio::test]
async fn a_suspended_session_ends_when_its_window_passes_or_its_buffer_overflows() {
    let gw = Gateway::start(&["--resume-window", "1s", "--resume-buffer", "3"]).await;
    let mut api = gw.api().await;
    let mut events = subscribe(&mut api, "h").await;

    // Window: nobody resumes, the session ends and backends hear it once.
    let c = RelClient::open(&base(&gw), "h").await;
    let id = c.session().to_owned();
    let w = c.drop_connection();
    event(&mut events, &id, "suspended").await;
    match event(&mut events, &id, "disconnected").await {
        Ev::Disconnected(closed) => assert!(closed.reason.contains("resume window")),
        other => panic!("{other:?}"),
    }
    assert_eq!(state(&mut api, &id).await, pb::SessionState::Closed);
    assert_eq!(
        RelClient::resume(&base(&gw), "h", &w, 0).await.err(),
        Some(4401)
    );

    // Buffer: the fourth unacknowledged message is refused and the session ends.
    let mut c = RelClient::open(&base(&gw), "h").await;
    let id = c.session().to_owned();
    for i in 1..=3 {
        send(&mut api, &id, &format!("m{i}")).await.unwrap();
    }
    let refused = send(&mut api, &id, "m4").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    loop {
        match c.next().await {
            Got::Message { .. } => continue,
            Got::Close(code, reason) => {
                assert_eq!((code, reason.as_str()), (1008, "resume buffer full"));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    match event(&mut events, &id, "disconnected").await {
        Ev::Disconnected(closed) => assert_eq!(closed.code, 1008),
        other => panic!("{other:?}"),
    }
}

/// Two leases: long enough for a second reaping to be heard.
const QUIET: Duration = Duration::from_secs(4);

/// Short leases so a dead node is noticed within seconds.
const LEASE: &[&str] = &["--lease-ttl", "2s", "--lease-refresh", "500ms"];

async fn cluster(redis: &Redis, n: usize) -> Vec<Gateway> {
    let url = redis.url();
    let mut out = Vec::new();
    for i in 0..n {
        let id = format!("node-{}", (b'a' + i as u8) as char);
        let mut args = vec!["--redis-url", &url, "--node-id", &id, "--redis-prefix", "r"];
        args.extend_from_slice(LEASE);
        out.push(Gateway::start(&args).await);
    }
    out
}

#[tokio::test]
async fn a_session_resumes_on_another_node_after_its_node_is_killed() {
    let redis = Redis::start().await;
    let mut nodes = cluster(&redis, 2).await;
    let mut api_b = nodes[1].api().await;
    let mut events = subscribe(&mut api_b, "h").await;
    let mut c = RelClient::open(&base(&nodes[0]), "h").await;
    let id = c.session().to_owned();
    event(&mut events, &id, "connected").await;
    // Sent through node b, kept by node a (which holds the socket) in Redis.
    for i in 1..=3 {
        send(&mut api_b, &id, &format!("m{i}")).await.unwrap();
    }
    assert_eq!(c.message().await, (1, "m1".into()));
    c.ack(1).await;
    c.send(1, "before").await;
    let (seq, text) = read_text(&mut api_b, &id).await;
    assert_eq!((seq, text.as_str()), (1, "before"));
    assert!(read_nothing(&mut api_b, &id).await);
    c.acked(1).await;
    let w = c.drop_connection();
    nodes[0].signal("KILL");
    nodes[0].wait().await;
    // While nobody holds the session, a Send is refused (UNAVAILABLE) until the dead node's
    // lease is gone, then kept in Redis by whichever node takes the call.
    within("a send to the orphaned session", async {
        loop {
            match send(&mut api_b, &id, "m4").await {
                Ok(()) => return,
                Err(s) => assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    event(&mut events, &id, "suspended").await;
    // Adopted by node b once node a is known dead: a hub-wide publish reaches it too.
    let published = api_b
        .publish(pb::PublishRequest {
            target: Some(pb::Target {
                kind: Some(pb::target::Kind::Hub("h".into())),
            }),
            message: Some(pb::Message {
                payload: Some(Payload::Text("to all".into())),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(published.queued, 1, "{published:?}");
    // The client got m1 only; m2 and m3 were kept in Redis before Send answered.
    let mut c = RelClient::resume(&base(&nodes[1]), "h", &w, 1)
        .await
        .unwrap();
    assert!(c.welcome.resumed);
    assert_eq!(
        c.welcome.ack, 1,
        "the gateway still knows client message 1 was taken"
    );
    assert_eq!(c.message().await, (2, "m2".into()));
    assert_eq!(c.message().await, (3, "m3".into()));
    assert_eq!(c.message().await, (4, "m4".into()));
    assert_eq!(c.message().await, (5, "to all".into()));
    c.send(2, "after").await;
    assert_eq!(read_text(&mut api_b, &id).await, (2, "after".into()));
    let info = api_b
        .get_session(pb::GetSessionRequest {
            session_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(info.node, nodes[1].node_id);
    // The dead node was reaped (its sessions suspended, above); the session lives on at b and
    // backends never hear it disconnect: a quiet period of two leases proves it.
    let quiet = tokio::time::timeout(QUIET, event(&mut events, &id, "disconnected")).await;
    assert!(quiet.is_err(), "no disconnected event: {quiet:?}");
    assert_eq!(state(&mut api_b, &id).await, pb::SessionState::Open);
    send(&mut api_b, &id, "m5").await.unwrap();
    assert_eq!(c.message().await, (6, "m5".into()));
}

#[tokio::test]
async fn a_read_answer_the_backend_did_not_get_comes_again_on_the_node_that_holds_the_session_now()
{
    let redis = Redis::start().await;
    let nodes = cluster(&redis, 2).await;
    let (mut api_a, mut api_b) = (nodes[0].api().await, nodes[1].api().await);
    let mut c = RelClient::open(&base(&nodes[0]), "h").await;
    let id = c.session().to_owned();
    c.send(1, "one").await;
    // Answered, and (as far as the gateway can tell) lost on the way: the backend says it
    // has nothing yet, so it comes again, and the client is not acknowledged for it.
    let first = next_after(&mut api_b, &id, 0).await;
    assert_eq!(first, (1, "one".into()));
    assert_eq!(
        read_after(&mut api_b, &id, 0).await,
        Some((1, "one".into()))
    );
    // The client moves to node b while the answer is unconfirmed: node a hands it over.
    let w = c.drop_connection();
    let mut c = RelClient::resume(&base(&nodes[1]), "h", &w, 0)
        .await
        .unwrap();
    assert_eq!(c.welcome.ack, 0, "the answer was never confirmed");
    // The client resends it; the backend has it already (or will, from the handed answer).
    c.send(1, "one").await;
    c.send(2, "two").await;
    assert_eq!(
        read_after(&mut api_a, &id, 0).await,
        Some((1, "one".into()))
    );
    assert_eq!(
        read_after(&mut api_a, &id, 1).await,
        Some((2, "two".into()))
    );
    c.acked(1).await;
    assert_eq!(read_after(&mut api_b, &id, 2).await, None);
    c.acked(2).await;
    // Nothing more: the resend of 1 was a duplicate, not a third copy.
    assert_eq!(read_after(&mut api_b, &id, 2).await, None);
}

#[tokio::test]
async fn a_message_a_backend_read_from_a_node_killed_before_recording_it_is_not_read_again() {
    let redis = Redis::start().await;
    let mut nodes = cluster(&redis, 2).await;
    let mut api_b = nodes[1].api().await;
    let mut c = RelClient::open(&base(&nodes[0]), "h").await;
    let id = c.session().to_owned();
    c.send(1, "one").await;
    // Read through node b from node a, which dies before the next Read confirms the answer:
    // nothing recorded that the backend has it, and the client was never acknowledged.
    let first = next_after(&mut api_b, &id, 0).await;
    assert_eq!(first, (1, "one".into()));
    let w = c.drop_connection();
    nodes[0].signal("KILL");
    nodes[0].wait().await;
    let mut c = RelClient::resume(&base(&nodes[1]), "h", &w, 0)
        .await
        .unwrap();
    assert_eq!(c.welcome.ack, 0, "the answer was never confirmed");
    c.send(1, "one").await;
    c.send(2, "two").await;
    // The backend's ack says it has 1: the resend is recorded, not answered again.
    let next = next_after(&mut api_b, &id, 1).await;
    assert_eq!(next, (2, "two".into()));
    c.acked(1).await;
    assert_eq!(read_after(&mut api_b, &id, 2).await, None);
    c.acked(2).await;
}

#[tokio::test]
async fn a_resume_while_the_old_connection_waits_for_inbox_room_loses_no_client_message() {
    let gw = Gateway::start(&["--inbox-messages", "4"]).await;
    let mut api = gw.api().await;
    let mut c1 = RelClient::open(&base(&gw), "h").await;
    let id = c1.session().to_owned();
    for i in 1..=10 {
        c1.send(i, &format!("m{i}")).await;
    }
    // Nobody reads: the inbox fills and the connection's reader waits with message 5.
    within("a full inbox", async {
        loop {
            let info = api
                .get_session(pb::GetSessionRequest {
                    session_id: id.clone(),
                })
                .await
                .unwrap()
                .into_inner()
                .session
                .unwrap();
            if info.counters.is_some_and(|c| c.inbox_depth == 4) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // A second connection resumes the session on the same node, and sends everything again
    // (nothing was acknowledged).
    let mut c2 = RelClient::resume(&base(&gw), "h", &c1.welcome, 0)
        .await
        .unwrap();
    assert_eq!(c2.welcome.ack, 0);
    for i in 1..=10 {
        c2.send(i, &format!("m{i}")).await;
    }
    let mut ack = 0;
    let got = within("every client message", async {
        let mut got = Vec::new();
        while got.len() < 10 {
            if let Some((seq, text)) = read_after(&mut api, &id, ack).await {
                ack = seq;
                got.push((seq, text));
            }
        }
        got
    })
    .await;
    let want: Vec<(u64, String)> = (1..=10).map(|i| (i, format!("m{i}"))).collect();
    assert_eq!(got, want, "once each, in order");
    assert_eq!(read_after(&mut api, &id, ack).await, None, "nothing more");
    c2.acked(10).await;
    drop(c1);
}

#[tokio::test]
async fn a_drained_node_sends_reliable_clients_elsewhere_and_backends_never_see_them_leave() {
    let redis = Redis::start().await;
    let mut nodes = cluster(&redis, 2).await;
    let mut api_b = nodes[1].api().await;
    let mut events = subscribe(&mut api_b, "h").await;
    let mut c = RelClient::open(&base(&nodes[0]), "h").await;
    let id = c.session().to_owned();
    event(&mut events, &id, "connected").await;
    send(&mut api_b, &id, "m1").await.unwrap();
    assert_eq!(c.message().await, (1, "m1".into()));
    nodes[0].signal("TERM");
    match c.next().await {
        Got::Close(code, reason) => {
            assert_eq!(code, 1012);
            assert!(reason.contains("resume elsewhere"), "{reason}");
        }
        other => panic!("expected 1012, got {other:?}"),
    }
    let w = c.welcome.clone();
    event(&mut events, &id, "suspended").await;
    send(&mut api_b, &id, "m2").await.unwrap();
    let mut c = RelClient::resume(&base(&nodes[1]), "h", &w, 1)
        .await
        .unwrap();
    event(&mut events, &id, "resumed").await;
    assert_eq!(c.message().await, (2, "m2".into()));
    assert!(nodes[0].wait().await.success(), "a drain exits 0");
    send(&mut api_b, &id, "m3").await.unwrap();
    assert_eq!(c.message().await, (3, "m3".into()));
}

async fn send_waiting(
    api: &mut Api,
    id: &str,
    text: &str,
    receipt: pb::Receipt,
    millis: i32,
) -> pb::Receipt {
    api.send(pb::SendRequest {
        session_id: id.into(),
        message: Some(pb::Message {
            payload: Some(Payload::Text(text.into())),
        }),
        receipt: receipt as i32,
        receipt_timeout: Some(prost_types::Duration {
            seconds: i64::from(millis / 1000),
            nanos: (millis % 1000) * 1_000_000,
        }),
        ..Default::default()
    })
    .await
    .expect("send")
    .into_inner()
    .reached()
}

#[tokio::test]
async fn a_send_can_wait_until_the_message_is_written_or_acknowledged() {
    let gw = Gateway::start(&[]).await;
    let mut api = gw.api().await;
    let mut c = RelClient::open(&base(&gw), "h").await;
    let id = c.session().to_owned();
    // Written at once to a reading client, but not acknowledged: the deadline answers how
    // far it got.
    let reached = send_waiting(&mut api, &id, "m1", pb::Receipt::Acked, 300).await;
    assert_eq!(reached, pb::Receipt::Written);
    assert_eq!(c.message().await, (1, "m1".into()));
    // Acknowledged while the call waits.
    let waiting = tokio::spawn({
        let mut api = api.clone();
        let id = id.clone();
        async move { send_waiting(&mut api, &id, "m2", pb::Receipt::Acked, 10_000).await }
    });
    assert_eq!(c.message().await, (2, "m2".into()));
    c.ack(2).await;
    assert_eq!(waiting.await.unwrap(), pb::Receipt::Acked);
    // A suspended session keeps the message but nothing is written.
    let mut events = subscribe(&mut api, "h").await;
    let _w = c.drop_connection();
    event(&mut events, &id, "suspended").await;
    let reached = send_waiting(&mut api, &id, "m3", pb::Receipt::Written, 300).await;
    assert_eq!(reached, pb::Receipt::Queued);

    // A plain session: written.
    let plain = gw.connect("h").await;
    let reached = send_waiting(&mut api, &plain.id, "hi", pb::Receipt::Written, 5_000).await;
    assert_eq!(reached, pb::Receipt::Written);
}

#[tokio::test]
async fn attach_writes_can_ask_for_receipts_which_come_back_on_the_stream() {
    use switchboard_sdk::{Client, Incoming, Receipt};
    let gw = Gateway::start(&["--max-message-bytes", "4096"]).await;
    let sdk = Client::builder()
        .gateway(format!("http://{}", gw.backend_addr))
        .build()
        .await
        .unwrap();
    let mut c = RelClient::open(&base(&gw), "h").await;
    let mut conn = sdk.attach(c.session()).await.unwrap();
    let long = Duration::from_secs(10);
    conn.write_tracked(1, "m1", "", Receipt::Acked, long)
        .await
        .unwrap();
    assert_eq!(c.message().await, (1, "m1".into()));
    // A client message on the same stream meanwhile; then the client's ack.
    c.send(1, "hello").await;
    match within("the client's message", conn.read()).await.unwrap() {
        Incoming::Message(m) => assert_eq!(m.client_seq, 1),
        other => panic!("expected the message, got {other:?}"),
    }
    c.ack(1).await;
    assert_eq!(
        within("the receipt", conn.read()).await.unwrap(),
        Incoming::Receipt {
            id: 1,
            reached: Receipt::Acked
        }
    );
    // Not acknowledged by the deadline: written is as far as it got.
    conn.write_tracked(2, "m2", "", Receipt::Acked, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(c.message().await, (2, "m2".into()));
    assert_eq!(
        within("the receipt", conn.read()).await.unwrap(),
        Incoming::Receipt {
            id: 2,
            reached: Receipt::Written
        }
    );
    // More writes than the receipts one stream may have due, each answered once.
    let plain = gw.connect("p").await;
    let mut pconn = sdk.attach(plain.id.as_str()).await.unwrap();
    let writer = pconn.writer();
    const N: u64 = 1_500;
    let writes = tokio::spawn(async move {
        for i in 0..N {
            writer
                .write_tracked(i, format!("w{i}"), "", Receipt::Written, long)
                .await
                .unwrap();
        }
    });
    let mut seen = std::collections::BTreeSet::new();
    while (seen.len() as u64) < N {
        match within("a receipt", pconn.read()).await.unwrap() {
            Incoming::Receipt { id, reached } => {
                assert_eq!(reached, Receipt::Written);
                assert!(seen.insert(id), "receipt {id} twice");
            }
            other => panic!("expected a receipt, got {other:?}"),
        }
    }
    writes.await.unwrap();
    // A tracked write the gateway refuses (over the size limit) ends the stream.
    pconn
        .writer()
        .write_tracked(N, "x".repeat(5_000), "", Receipt::Written, long)
        .await
        .unwrap();
    let ended = within("the end of the stream", pconn.read()).await;
    assert!(ended.is_err(), "{ended:?}");
    drop(plain);
}

#[tokio::test]
async fn a_publish_answers_each_session_s_outcome_on_every_node() {
    let redis = Redis::start().await;
    let nodes = cluster(&redis, 2).await;
    let mut api = nodes[0].api().await;
    let a = RelClient::open(&base(&nodes[0]), "h").await;
    let b = nodes[1].connect("h").await;
    let r = api
        .publish(pb::PublishRequest {
            target: Some(pb::Target {
                kind: Some(pb::target::Kind::Hub("h".into())),
            }),
            message: Some(pb::Message {
                payload: Some(Payload::Text("all".into())),
            }),
            outcomes: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.queued, 2);
    let mut got: Vec<(String, pb::Outcome)> = r
        .outcomes
        .iter()
        .map(|o| (o.session_id.clone(), o.outcome()))
        .collect();
    got.sort();
    let mut want = vec![
        (a.session().to_owned(), pb::Outcome::Queued),
        (b.id.clone(), pb::Outcome::Queued),
    ];
    want.sort();
    assert_eq!(got, want);
}

/// Redis restarted without persistence loses every session's kept state. The guarantee then:
/// a session whose connection is live goes on (its node writes the state again from what it
/// knows), and every message sent after Redis is back is kept and survives a resume on another
/// node. What the client had not acknowledged before the restart is kept only by the node that
/// wrote it on the connection, not in Redis.
#[tokio::test]
async fn after_redis_loses_its_data_live_reliable_sessions_go_on_and_keep_what_is_sent_next() {
    let mut redis = Redis::start().await;
    let nodes = cluster(&redis, 2).await;
    let mut api_a = nodes[0].api().await;
    let mut api_b = nodes[1].api().await;
    let mut c = RelClient::open(&base(&nodes[0]), "h").await;
    let id = c.session().to_owned();
    send(&mut api_a, &id, "m1").await.unwrap();
    assert_eq!(c.message().await, (1, "m1".into()));
    c.ack(1).await;
    redis.restart_empty().await;
    // The connection never noticed; the node holding it keeps numbering from where it was.
    within("a send after the restart", async {
        while send(&mut api_a, &id, "m2").await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(c.message().await, (2, "m2".into()));
    // Once reconciliation has registered the session again, any node reaches it.
    within("node b to reach the session again", async {
        while send(&mut api_b, &id, "m3").await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(c.message().await, (3, "m3".into()));
    // m2 and m3 were kept in the rewritten state: a resume on node b gets them again.
    let w = c.drop_connection();
    let mut c = RelClient::resume(&base(&nodes[1]), "h", &w, 1)
        .await
        .unwrap();
    assert!(c.welcome.resumed);
    assert_eq!(c.message().await, (2, "m2".into()));
    assert_eq!(c.message().await, (3, "m3".into()));
}

/// A suspended session's state in Redis carries the resume window as TTL, so it leaves Redis by
/// itself even if no gateway is left to end it; the memory it takes is printed (the figure in
/// docs/reliable.md): per session, with 10 kept messages of 100 bytes.
#[tokio::test]
async fn a_suspended_session_s_state_in_redis_expires_with_its_window() {
    const SESSIONS: usize = 200;
    const KEPT: usize = 10;
    let redis = Redis::start().await;
    let url = redis.url();
    let gw = Gateway::start(&[
        "--redis-url",
        &url,
        "--redis-prefix",
        "m",
        "--resume-window",
        "60s",
    ])
    .await;
    let mut api = gw.api().await;
    let used = |lines: Vec<String>| -> u64 {
        lines
            .iter()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("used_memory")
    };
    let before = used(redis.cli(&["info", "memory"]).await);
    let mut events = subscribe(&mut api, "h").await;
    let mut ids = Vec::new();
    let mut first_welcome = None;
    for _ in 0..SESSIONS {
        let mut c = RelClient::open(&base(&gw), "h").await;
        let id = c.session().to_owned();
        first_welcome.get_or_insert_with(|| c.welcome.clone());
        for i in 0..KEPT {
            send(&mut api, &id, &format!("{i:0>100}")).await.unwrap();
        }
        for _ in 0..KEPT {
            c.message().await;
        }
        c.drop_connection();
        ids.push(id);
    }
    for id in &ids {
        event(&mut events, id, "suspended").await;
    }
    let after = used(redis.cli(&["info", "memory"]).await);
    println!(
        "redis memory per suspended session ({KEPT} kept messages of 100 B, record and \
         indexes included): {} bytes",
        after.saturating_sub(before) / SESSIONS as u64
    );
    // (`m:relids:{ID}` exists only for messages sent with an ID; none here.)
    for key in [
        format!("m:rel:{{{}}}", ids[0]),
        format!("m:relout:{{{}}}", ids[0]),
        format!("m:session:{}", ids[0]),
    ] {
        let bytes = redis.cli(&["memory", "usage", &key]).await;
        println!("  {key}: {} bytes", bytes.join(""));
        let ttl: i64 = redis.cli(&["pttl", &key]).await[0].parse().expect("pttl");
        assert!(
            ttl > 0 && ttl <= 60_000,
            "{key} expires with the resume window (pttl {ttl})"
        );
    }
    // Resumed on the same node: the window ends in Redis too, so the state of the live session
    // never expires under it.
    let w = first_welcome.expect("a session");
    let _c = RelClient::resume(&base(&gw), "h", &w, KEPT as u64)
        .await
        .unwrap();
    event(&mut events, &ids[0], "resumed").await;
    for key in [
        format!("m:rel:{{{}}}", ids[0]),
        format!("m:relout:{{{}}}", ids[0]),
        format!("m:session:{}", ids[0]),
    ] {
        let ttl: i64 = redis.cli(&["pttl", &key]).await[0].parse().expect("pttl");
        assert_eq!(ttl, -1, "{key} has no TTL once resumed");
    }
    let suspended = redis
        .cli(&["hget", &format!("m:rel:{{{}}}", ids[0]), "suspended"])
        .await;
    assert!(
        suspended.iter().all(|l| l.is_empty() || l == "0"),
        "{suspended:?}"
    );
}

#[tokio::test]
async fn a_read_waiting_when_the_client_resumes_on_the_same_node_gets_what_it_sends_there() {
    let gw = Gateway::start(&[]).await;
    let mut api = gw.api().await;
    let c1 = RelClient::open(&base(&gw), "h").await;
    let id = c1.session().to_owned();
    // A Read waits (far longer than the test's patience) on the first connection.
    let read = tokio::spawn({
        let (mut api, id) = (api.clone(), id.clone());
        async move { read_msg(&mut api, &id, Some(0), 120_000).await }
    });
    within("the read to wait", async {
        while gw.metric("switchboard_reads_waiting").await != Some(1.0) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // The client resumes on the same node, and sends there: the waiting Read follows the
    // session to its new connection.
    let mut c2 = RelClient::resume(&base(&gw), "h", &c1.welcome, 0)
        .await
        .unwrap();
    c2.send(1, "after the resume").await;
    let got = within("the waiting read", read).await.unwrap();
    assert_eq!(got, Some((1, "after the resume".into())));
    assert_eq!(read_after(&mut api, &id, 1).await, None, "nothing more");
    c2.acked(1).await;
    assert_eq!(gw.metric("switchboard_reads_waiting").await, Some(0.0));
    drop(c1);
}

/// Opens an `Attach` stream with `manual_ack`: its requests, its responses (past `attached`).
async fn attach_manual(
    api: &mut Api,
    id: &str,
) -> (
    tokio::sync::mpsc::Sender<pb::AttachRequest>,
    Streaming<pb::AttachResponse>,
) {
    use pb::{attach_request::Kind as Req, attach_response::Kind as Resp};
    let (tx, reqs) = tokio::sync::mpsc::channel(16);
    tx.send(pb::AttachRequest {
        kind: Some(Req::Open(pb::AttachOpen {
            session_id: id.into(),
            take_over: false,
            manual_ack: true,
        })),
    })
    .await
    .unwrap();
    let mut rx = api
        .attach(tokio_stream::wrappers::ReceiverStream::new(reqs))
        .await
        .unwrap()
        .into_inner();
    match within("attached", rx.message()).await.unwrap() {
        Some(pb::AttachResponse {
            kind: Some(Resp::Attached(_)),
        }) => {}
        other => panic!("expected attached, got {other:?}"),
    }
    (tx, rx)
}

/// The next client message on an `Attach` stream: (stream seq, client seq, text).
async fn attached_message(rx: &mut Streaming<pb::AttachResponse>) -> (u64, u64, String) {
    match within("a message on the stream", rx.message()).await {
        Ok(Some(pb::AttachResponse {
            kind: Some(pb::attach_response::Kind::Message(m)),
        })) => match m.message.and_then(|m| m.payload) {
            Some(Payload::Text(t)) => (m.seq, m.client_seq, t),
            other => panic!("expected text, got {other:?}"),
        },
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn a_backend_attached_across_a_resume_on_the_same_node_attaches_again_and_loses_nothing() {
    use pb::attach_request::Kind as Req;
    let gw = Gateway::start(&[]).await;
    let mut api = gw.api().await;
    let mut c1 = RelClient::open(&base(&gw), "h").await;
    let id = c1.session().to_owned();
    let (tx, mut rx) = attach_manual(&mut api, &id).await;
    c1.send(1, "one").await;
    c1.send(2, "two").await;
    // The backend gets both and acknowledges only the first.
    let (seq, client_seq, _) = attached_message(&mut rx).await;
    assert_eq!(client_seq, 1);
    assert_eq!(attached_message(&mut rx).await.1, 2);
    tx.send(pb::AttachRequest {
        kind: Some(Req::Ack(pb::Ack { seq })),
    })
    .await
    .unwrap();
    c1.acked(1).await;
    // The client resumes on the same node and sends what was not acknowledged, and more.
    let mut c2 = RelClient::resume(&base(&gw), "h", &c1.welcome, 0)
        .await
        .unwrap();
    assert_eq!(c2.welcome.ack, 1);
    c2.send(2, "two").await;
    c2.send(3, "three").await;
    // The stream on the old connection ends with a status that says to attach again.
    let ended = within("the old stream to end", async {
        loop {
            match rx.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await;
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    // Attached again: the unacknowledged message first, then the new one, once each.
    let (tx, mut rx) = attach_manual(&mut api, &id).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let (seq, client_seq, text) = attached_message(&mut rx).await;
        got.push((client_seq, text));
        tx.send(pb::AttachRequest {
            kind: Some(Req::Ack(pb::Ack { seq })),
        })
        .await
        .unwrap();
    }
    assert_eq!(got, [(2, "two".to_owned()), (3, "three".to_owned())]);
    c2.acked(3).await;
    // Nothing more comes.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.message())
            .await
            .is_err(),
        "a message after the last one"
    );
    drop(c1);
}
