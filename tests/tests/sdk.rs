//! The Rust SDK (`switchboard-sdk`) against real gateway processes: every operation, its typed
//! errors, the connect-hook helper, and the SDK's examples run as processes.

use std::{
    collections::HashSet,
    process::Stdio,
    time::{Duration, Instant},
};

use futures_util::TryStreamExt;
use switchboard_sdk::{
    Allow, Client, Closer, ConnectRequest, Decision, Error, Event, EventKind, HookServer, Incoming,
    Message, ReadOutcome, RetryPolicy, SessionState, Target,
};
use switchboard_tests::{
    gateway::{example_bin, Gateway},
    raw::http_request,
    redis::Redis,
    within,
    ws::{self, Seen},
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpListener,
    process::{Child, Command},
};

/// An ID of the right shape that no gateway issued.
const UNKNOWN: &str = "AAAAAAAAAAAAAAAAAAAAAA";

async fn client(gw: &Gateway) -> Client {
    let mut b = Client::builder().gateway(format!("http://{}", gw.backend_addr));
    if let Some(t) = &gw.token {
        b = b.token(t);
    }
    b.build().await.expect("client")
}

/// A loopback address where nothing listens (it was free a moment ago).
async fn dead_addr() -> std::net::SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

fn upgrade_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ]
}

#[tokio::test]
async fn send_delivers_text_and_binary_and_names_a_departed_client_gone() {
    let gw = Gateway::start(&[]).await;
    let sb = client(&gw).await;
    let mut c = gw.connect("h").await;

    sb.send(&c.id, "hello").await.unwrap();
    assert_eq!(c.text().await, "hello");
    sb.send(&c.id, vec![1u8, 2, 3]).await.unwrap();
    assert_eq!(c.next().await, Seen::Binary(vec![1, 2, 3]));

    let id = c.id.clone();
    c.close(4000, "leaving").await;
    match sb.send(&id, "too late").await {
        Err(Error::SessionGone { session, closed }) => {
            assert_eq!(session.as_str(), id);
            let closed = closed.expect("the gateway says how it ended");
            assert_eq!(
                (closed.code, closed.reason.as_str(), closed.closed_by),
                (4000, "leaving", Closer::Client)
            );
        }
        other => panic!("expected SessionGone, got {other:?}"),
    }
    match sb.send(UNKNOWN, "anyone?").await {
        Err(e @ Error::SessionNotFound { .. }) => {
            assert!(e.is_session_ended() && !e.is_retryable())
        }
        other => panic!("expected SessionNotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn close_sends_the_code_and_reason_and_refuses_a_bad_code() {
    let gw = Gateway::start(&[]).await;
    let sb = client(&gw).await;
    let mut c = gw.connect("h").await;
    assert!(matches!(
        sb.close(&c.id).code(999).await,
        Err(Error::InvalidArgument(_))
    ));
    sb.close(&c.id).code(4003).reason("kicked").await.unwrap();
    assert_eq!(c.closed().await, (4003, "kicked".into()));

    let mut d = gw.connect("h").await;
    sb.close(&d.id).await.unwrap();
    assert_eq!(d.closed().await.0, 1000);
}

#[tokio::test]
async fn session_and_check_report_open_closed_and_unknown() {
    let gw = Gateway::start(&[]).await;
    let sb = client(&gw).await;
    let open = gw.connect("h").await;
    let gone = gw.connect("h").await;
    let gone_id = gone.id.clone();
    gone.close(1000, "").await;

    let info = sb.session(&open.id).await.unwrap();
    assert_eq!(info.id.as_str(), open.id);
    assert_eq!(info.hub, "h");
    assert_eq!(info.node, gw.node_id);
    assert!(info.remote_addr.starts_with("127.0.0.1:"));
    assert!(info.connected_at.is_some());
    assert!(info.counters.is_some(), "the holding node reports counters");
    assert!(matches!(
        sb.session(&gone_id).await,
        Err(Error::SessionGone { .. })
    ));
    assert!(matches!(
        sb.session(UNKNOWN).await,
        Err(Error::SessionNotFound { .. })
    ));

    let states = sb
        .check([open.id.as_str(), &gone_id, UNKNOWN])
        .await
        .unwrap();
    let states: Vec<_> = states
        .into_iter()
        .map(|(id, s)| (id.to_string(), s))
        .collect();
    assert_eq!(
        states,
        [
            (open.id.clone(), SessionState::Open),
            (gone_id, SessionState::Closed),
            (UNKNOWN.to_string(), SessionState::Unknown),
        ]
    );
    assert!(sb.check(Vec::<String>::new()).await.unwrap().is_empty());
    // A malformed ID is answered on its own; it does not fail the others.
    let states = sb.check(["not an id", UNKNOWN]).await.unwrap();
    let states: Vec<_> = states.into_iter().map(|(_, s)| s).collect();
    assert_eq!(states, [SessionState::Invalid, SessionState::Unknown]);
}

#[tokio::test]
async fn the_session_list_follows_pages_and_filters() {
    let gw = Gateway::start(&[]).await;
    let sb = client(&gw).await;
    let mut clients = Vec::new();
    for _ in 0..25 {
        clients.push(gw.connect("paged").await);
    }
    let _elsewhere = gw.connect("other").await;
    let want: HashSet<String> = clients.iter().map(|c| c.id.clone()).collect();

    let listed: Vec<_> = sb
        .sessions()
        .hub("paged")
        .page_size(10)
        .stream()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(listed.len(), 25, "each session once across three pages");
    let got: HashSet<String> = listed.iter().map(|s| s.id.to_string()).collect();
    assert_eq!(got, want);
    assert!(listed.iter().all(|s| s.hub == "paged"));

    // The same through `next_session` and `all`, with a group filter.
    sb.join(&clients[3].id, "g").await.unwrap();
    sb.join(&clients[7].id, "g").await.unwrap();
    let mut s = sb.sessions().hub("paged").group("g").page_size(1).stream();
    let mut in_group = HashSet::new();
    while let Some(info) = s.next_session().await.unwrap() {
        in_group.insert(info.id.to_string());
    }
    assert_eq!(
        in_group,
        HashSet::from([clients[3].id.clone(), clients[7].id.clone()])
    );
    assert_eq!(sb.sessions().all().await.unwrap().len(), 26);
    // A group needs its hub: the gateway's refusal surfaces as the stream's error.
    assert!(matches!(
        sb.sessions().group("g").all().await,
        Err(Error::InvalidArgument(_))
    ));
}

/// A hook that admits `?user=NAME` as NAME in group "members" and refuses anyone else.
async fn serve_user_hook() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        HookServer::new(|req: ConnectRequest| async move {
            match req.query_param("user") {
                Some(user) if !user.is_empty() => Allow::user(user)
                    .group("members")
                    .metadata("via", req.header("x-via").unwrap_or("none"))
                    .into(),
                _ => Decision::deny(401, "who are you?"),
            }
        })
        .serve(listener),
    );
    addr
}

#[tokio::test]
async fn the_hook_helper_admits_and_refuses_and_publish_reaches_every_target_kind() {
    let hook = serve_user_hook().await;
    let gw = Gateway::start(&["--connect-hook", &format!("http://{hook}")]).await;
    let sb = client(&gw).await;
    let url = |hub: &str, user: &str| format!("{}?user={user}", gw.ws_url(hub));

    let (status, body) =
        http_request(gw.client_addr, "GET", "/ws/h?nobody", &upgrade_headers()).await;
    assert_eq!(status, 401);
    assert!(body.contains("who are you?"), "{body}");

    let mut a = ws::Client::connect_with(&url("h", "alice"), &[("x-via", "test")]).await;
    let mut b = ws::Client::connect(&url("h", "bob")).await;
    let mut c = ws::Client::connect(&url("h", "alice")).await;
    let mut d = ws::Client::connect(&url("other", "alice")).await;

    let info = sb.session(&a.id).await.unwrap();
    assert_eq!(info.user, "alice");
    assert_eq!(info.groups, ["members"]);
    assert_eq!(info.metadata.get("via").map(String::as_str), Some("test"));

    // Hub, minus an exclusion.
    let d1 = sb
        .publish(Target::hub("h"), "hub")
        .exclude(&a.id)
        .await
        .unwrap();
    assert_eq!((d1.queued, d1.refused), (2, 0));
    // A group, joined and left.
    sb.join(&b.id, "room").await.unwrap();
    sb.join(&b.id, "room").await.unwrap();
    let d2 = sb
        .publish(Target::group("h", "room"), "room")
        .await
        .unwrap();
    assert_eq!(d2.queued, 1);
    sb.leave(&b.id, "room").await.unwrap();
    let d3 = sb
        .publish(Target::group("h", "room"), "nobody")
        .await
        .unwrap();
    assert_eq!(d3.queued, 0);
    // A user, everywhere and in one hub.
    let d4 = sb.publish(Target::user("alice"), "alice").await.unwrap();
    assert_eq!(d4.queued, 3);
    let d5 = sb
        .publish(Target::user_in("h", "alice"), "alice in h")
        .exclude_all([&c.id])
        .await
        .unwrap();
    assert_eq!(d5.queued, 1);
    // A list of sessions.
    let d6 = sb
        .publish(
            Target::sessions([&a.id, &d.id]),
            Message::from(&b"list"[..]),
        )
        .await
        .unwrap();
    assert_eq!(d6.queued, 2);

    assert_eq!(a.text().await, "alice");
    assert_eq!(a.text().await, "alice in h");
    assert_eq!(a.next().await, Seen::Binary(b"list".to_vec()));
    assert_eq!(b.text().await, "hub");
    assert_eq!(b.text().await, "room");
    assert_eq!(c.text().await, "hub");
    assert_eq!(c.text().await, "alice");
    assert_eq!(d.text().await, "alice");
    assert_eq!(d.next().await, Seen::Binary(b"list".to_vec()));
    // Nothing else arrived: the next frame each sees is the one sent now.
    for (cl, name) in [(&mut a, "a"), (&mut b, "b"), (&mut c, "c"), (&mut d, "d")] {
        sb.send(&cl.id, name).await.unwrap();
        assert_eq!(cl.text().await, name);
    }
    assert!(matches!(
        sb.publish(Target::hub("bad hub!"), "x").await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn read_after_answers_again_what_its_ack_does_not_cover() {
    let gw = Gateway::start(&[]).await;
    let sb = client(&gw).await;
    let mut c = gw.connect("h").await;
    c.send_text("one").await;
    c.send_text("two").await;
    let secs = Duration::from_secs(10);
    let next = |ack| {
        let sb = sb.clone();
        let id = c.id.clone();
        async move {
            match sb.read_after(&id, ack, secs).await.unwrap() {
                ReadOutcome::Message(m) => (m.client_seq, m.message.as_text().map(str::to_owned)),
                other => panic!("{other:?}"),
            }
        }
    };
    assert_eq!(next(0).await, (1, Some("one".into())));
    // As if that answer never arrived.
    assert_eq!(next(0).await, (1, Some("one".into())));
    assert_eq!(next(1).await, (2, Some("two".into())));
    assert_eq!(
        sb.read_after(&c.id, 2, Duration::from_millis(100))
            .await
            .unwrap(),
        ReadOutcome::TimedOut
    );
}

#[tokio::test]
async fn read_returns_messages_times_out_and_reports_the_close() {
    let gw = Gateway::start(&[]).await;
    let sb = client(&gw).await;
    let mut c = gw.connect("h").await;
    c.send_text("one").await;
    c.send_binary(&[9]).await;
    let secs = Duration::from_secs(10);
    match sb.read(&c.id, secs).await.unwrap() {
        ReadOutcome::Message(m) => {
            assert_eq!((m.seq, m.message.as_text()), (1, Some("one")))
        }
        other => panic!("{other:?}"),
    }
    match sb.read(&c.id, secs).await.unwrap() {
        ReadOutcome::Message(m) => assert_eq!(m.message, Message::from(vec![9u8])),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        sb.read(&c.id, Duration::from_millis(100)).await.unwrap(),
        ReadOutcome::TimedOut
    );
    c.send_text("last").await;
    let id = c.id.clone();
    c.close(4000, "bye").await;
    match sb.read(&id, secs).await.unwrap() {
        ReadOutcome::Message(m) => assert_eq!(m.message.as_text(), Some("last")),
        other => panic!("{other:?}"),
    }
    match sb.read(&id, secs).await.unwrap() {
        ReadOutcome::Closed(closed) => {
            assert_eq!(closed.code, 4000);
            assert_eq!(closed.reason, "bye");
            assert_eq!(closed.closed_by, Closer::Client);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        sb.read(UNKNOWN, secs).await,
        Err(Error::SessionNotFound { .. })
    ));
}

#[tokio::test]
async fn attach_reads_writes_refuses_a_second_backend_and_closes() {
    let gw = Gateway::start(&[]).await;
    let sb = client(&gw).await;
    let mut c = gw.connect("h").await;
    c.send_text("waiting before attach").await;

    let mut first = sb.attach(&c.id).await.unwrap();
    assert_eq!(first.session_id().as_str(), c.id);
    assert_eq!(first.info().hub, "h");
    match first.read().await.unwrap() {
        Incoming::Message(m) => {
            assert_eq!(
                (m.seq, m.message.as_text()),
                (1, Some("waiting before attach"))
            )
        }
        other => panic!("{other:?}"),
    }
    c.send_text("two").await;
    match first.read().await.unwrap() {
        Incoming::Message(m) => assert_eq!((m.seq, m.message.as_text()), (2, Some("two"))),
        other => panic!("{other:?}"),
    }
    first.write("from the backend").await.unwrap();
    assert_eq!(c.text().await, "from the backend");
    first.writer().write(vec![7u8]).await.unwrap();
    assert_eq!(c.next().await, Seen::Binary(vec![7]));

    // One backend at a time; Read is refused while attached.
    assert!(matches!(
        sb.attach(&c.id).await,
        Err(Error::AlreadyAttached { .. })
    ));
    assert!(matches!(
        sb.read(&c.id, Duration::from_millis(10)).await,
        Err(Error::ReadWhileAttached { .. })
    ));

    // Take-over ends the first backend's stream with a typed error.
    let mut second = sb.attach(&c.id).take_over().await.unwrap();
    assert!(matches!(first.read().await, Err(Error::TakenOver)));
    c.send_text("to the second").await;
    match second.read().await.unwrap() {
        Incoming::Message(m) => assert_eq!(m.message.as_text(), Some("to the second")),
        other => panic!("{other:?}"),
    }

    second.close(4002, "done").await.unwrap();
    assert_eq!(c.closed().await, (4002, "done".into()));
    let closed = match second.read().await.unwrap() {
        Incoming::Closed(closed) => closed,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (closed.code, closed.reason.as_str(), closed.closed_by),
        (4002, "done", Closer::Backend)
    );
    // The close is repeated, and writing after it is a typed error.
    assert_eq!(second.read().await.unwrap(), Incoming::Closed(closed));
    assert!(matches!(
        second.write("late").await,
        Err(Error::SessionGone { .. })
    ));
    assert!(matches!(
        sb.attach(UNKNOWN).await,
        Err(Error::SessionNotFound { .. })
    ));
}

/// Reads once the gateway has noticed that the attached backend went away (it notices when
/// the stream's transport ends; until then `Read` is refused).
async fn read_after_detach(sb: &Client, id: &str, wait: Duration) -> ReadOutcome {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sb.read(id, wait).await {
            Err(Error::ReadWhileAttached { .. }) if Instant::now() < deadline => {
                tokio::task::yield_now().await
            }
            other => return other.unwrap(),
        }
    }
}

#[tokio::test]
async fn dropping_a_shared_connection_leaves_the_session_open_for_read() {
    let gw = Gateway::start(&[]).await;
    let sb = client(&gw).await;
    let mut c = gw.connect("h").await;
    drop(sb.attach(&c.id).await.unwrap());
    assert_eq!(
        read_after_detach(&sb, &c.id, Duration::from_millis(100)).await,
        ReadOutcome::TimedOut,
        "nothing was sent yet"
    );
    c.send_text("after the backend left").await;
    match sb.read(&c.id, Duration::from_secs(10)).await.unwrap() {
        ReadOutcome::Message(m) => {
            assert_eq!(m.message.as_text(), Some("after the backend left"))
        }
        other => panic!("{other:?}"),
    }
    sb.send(&c.id, "still open").await.unwrap();
    assert_eq!(c.text().await, "still open");
}

/// A message the client sends while an attached backend is going away (its stream dropped,
/// the gateway not yet aware) may be pulled into the dying stream; unacknowledged, it goes
/// back to the inbox for the next reader.
#[tokio::test]
async fn a_message_sent_while_a_backend_detaches_is_not_lost() {
    let gw = Gateway::start(&[]).await;
    let sb = client(&gw).await;
    for _ in 0..20 {
        let mut c = gw.connect("h").await;
        drop(sb.attach(&c.id).await.unwrap());
        c.send_text("in flight").await;
        match read_after_detach(&sb, &c.id, Duration::from_secs(5)).await {
            ReadOutcome::Message(m) => assert_eq!(m.message.as_text(), Some("in flight")),
            other => panic!("the message was lost: {other:?}"),
        }
    }
}

#[tokio::test]
async fn subscribe_yields_typed_events_in_order() {
    let gw = Gateway::start(&[]).await;
    let sb = client(&gw).await;
    let mut all = sb.subscribe("ev").await.unwrap();
    let mut arrivals = sb
        .subscribe("ev")
        .group("greeters")
        .kinds([EventKind::Connected])
        .await
        .unwrap();

    let mut c = gw.connect("ev").await;
    let id = c.id.clone();
    c.send_text("hello").await;
    c.close(1000, "").await;

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = within("an event", all.recv()).await.unwrap().unwrap();
        assert_eq!(event.session_id().as_str(), id);
        assert_eq!(event.hub(), "ev");
        seen.push(match event {
            Event::Connected(info) => {
                assert_eq!(info.id.as_str(), id);
                "connected".to_string()
            }
            Event::Message { message, .. } => {
                assert_eq!(message.seq, 1);
                format!("message:{}", message.message.as_text().unwrap())
            }
            Event::Disconnected { closed, .. } => {
                assert_eq!(closed.closed_by, Closer::Client);
                format!("disconnected:{}", closed.code)
            }
            other => panic!("{other:?}"),
        });
    }
    assert_eq!(seen, ["connected", "message:hello", "disconnected:1000"]);

    let first = within("a connected event", arrivals.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.kind(), EventKind::Connected);
    assert_eq!(first.session_id().as_str(), id);
    // Only `connected` events reach that subscriber: the next is the next client's arrival.
    let next = gw.connect("ev").await;
    let second = within("a connected event", arrivals.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (second.kind(), second.session_id().as_str()),
        (EventKind::Connected, next.id.as_str())
    );

    assert!(matches!(
        sb.subscribe("bad hub!").await,
        Err(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn the_backend_token_is_sent_and_a_wrong_one_is_unauthenticated() {
    let gw = Gateway::start(&["--backend-token", "s3cret"]).await;
    let c = gw.connect("h").await;
    let good = client(&gw).await;
    assert_eq!(good.sessions().all().await.unwrap().len(), 1);
    good.send(&c.id, "authorized").await.unwrap();

    let addr = format!("http://{}", gw.backend_addr);
    let none = Client::builder().gateway(&addr).build().await.unwrap();
    assert!(matches!(
        none.session(&c.id).await,
        Err(Error::Unauthenticated(_))
    ));
    let wrong = Client::builder()
        .gateway(&addr)
        .token("guess")
        .build()
        .await
        .unwrap();
    match wrong.send(&c.id, "x").await {
        Err(e @ Error::Unauthenticated(_)) => assert!(!e.is_retryable()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn calls_move_past_a_dead_gateway_address_and_fail_fast_without_one() {
    let gw = Gateway::start(&[]).await;
    let mut c = gw.connect("h").await;
    let dead = dead_addr().await;

    // Round robin puts every other call on the dead address; the retry moves it on.
    let both = Client::builder()
        .gateway(format!("http://{dead}"))
        .gateway(format!("http://{}", gw.backend_addr))
        .connect_timeout(Duration::from_secs(2))
        .retry(RetryPolicy::default().max_attempts(2))
        .build()
        .await
        .unwrap();
    for _ in 0..6 {
        let states = both.check([&c.id]).await.unwrap();
        assert_eq!(states[0].1, SessionState::Open);
        assert_eq!(both.session(&c.id).await.unwrap().hub, "h");
    }
    // A send is retried too when its request never left (the connection was refused).
    for i in 0..4 {
        both.send(&c.id, format!("s{i}")).await.unwrap();
        assert_eq!(c.text().await, format!("s{i}"));
    }

    // Nothing but the dead address: a send fails fast as Unavailable, retryable.
    let only_dead = Client::builder()
        .gateway(dead.to_string())
        .connect_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let started = Instant::now();
    match only_dead.send(&c.id, "x").await {
        Err(e @ Error::Unavailable(_)) => assert!(e.is_retryable()),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(
        Client::builder().build().await,
        Err(Error::Config(_))
    ));
}

// ---- Discovery in Redis (feature `redis`) ----

/// Short leases so a dead node is noticed within seconds.
const LEASE: &[&str] = &["--lease-ttl", "2s", "--lease-refresh", "500ms"];

async fn redis_node(url: &str, id: &str) -> Gateway {
    let mut args = vec!["--redis-url", url, "--node-id", id, "--redis-prefix", "sdk"];
    args.extend_from_slice(LEASE);
    Gateway::start(&args).await
}

/// Calls of one gRPC method a gateway answered itself, any status (from `/metrics`).
async fn calls(gw: &Gateway, method: &str) -> u64 {
    let (_, metrics) = gw.http_get("/metrics").await;
    let label = format!("method=\"{method}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("switchboard_grpc_calls_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn with_redis_calls_go_to_the_owner_and_nodes_are_followed_as_they_come_and_go() {
    let redis = Redis::start().await;
    let url = redis.url();
    let a = redis_node(&url, "node-a").await;
    let mut b = redis_node(&url, "node-b").await;
    // No gateway address at all: everything comes from Redis.
    let sb = Client::builder()
        .redis_url(&url)
        .redis_prefix("sdk")
        .discovery_interval(Duration::from_millis(200))
        .build()
        .await
        .unwrap();

    let mut on_a = a.connect("h").await;
    let mut on_b = b.connect("h").await;
    for i in 0..5 {
        sb.send(&on_b.id, format!("b{i}")).await.unwrap();
        assert_eq!(on_b.text().await, format!("b{i}"));
    }
    sb.send(&on_a.id, "a").await.unwrap();
    assert_eq!(on_a.text().await, "a");
    // Straight to the holder: node a never saw the sends for node b's session.
    assert_eq!(calls(&b, "Send").await, 5);
    assert_eq!(calls(&a, "Send").await, 1);
    // Fan-out goes to any node, which reaches the others' sessions (once the nodes have seen
    // each other's leases: probe until then).
    // Round robin alternates the entry node, so two in a row cover both.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut in_a_row = 0;
    while in_a_row < 2 {
        assert!(Instant::now() < deadline, "the nodes never saw each other");
        if sb.publish(Target::hub("h"), "probe").await.unwrap().queued == 2 {
            in_a_row += 1;
        } else {
            in_a_row = 0;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let d = sb.publish(Target::hub("h"), "all").await.unwrap();
    assert_eq!(d.queued, 2);
    assert!(d.unreachable_nodes.is_empty());
    for c in [&mut on_a, &mut on_b] {
        while c.text().await != "all" {}
    }

    // A node joins: its sessions are reached directly once the client has seen it.
    let c = redis_node(&url, "node-c").await;
    let mut on_c = c.connect("h").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let elsewhere = calls(&a, "Send").await + calls(&b, "Send").await;
        sb.send(&on_c.id, "c").await.unwrap();
        assert_eq!(on_c.text().await, "c");
        if calls(&a, "Send").await + calls(&b, "Send").await == elsewhere {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node-c was never called directly"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(calls(&c, "Send").await > 0);

    // A node dies: once its lease expires the client stops picking it.
    b.signal("KILL");
    b.wait().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut in_a_row = 0;
    while in_a_row < 10 {
        assert!(
            Instant::now() < deadline,
            "the dead node stayed in rotation"
        );
        match sb.publish(Target::hub("h"), "still here").await {
            Ok(_) => in_a_row += 1,
            Err(Error::Unavailable(_)) => {
                in_a_row = 0;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    sb.send(&on_a.id, "after").await.unwrap();
    while on_a.text().await != "after" {}
}

// ---- The examples, run as processes ----

/// An example process, killed when dropped.
struct Example {
    _child: Child,
}

/// Starts an example and waits for its stdout line that starts with `ready`; returns the
/// rest of that line.
async fn run_example(name: &str, args: &[&str], ready: &str) -> (Example, String) {
    let mut child = Command::new(example_bin(name))
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("SWITCHBOARD_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn example");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let rest = within(&format!("{name} to be ready"), async {
        loop {
            let line = lines
                .next_line()
                .await
                .expect("read example stdout")
                .unwrap_or_else(|| panic!("{name} exited before it was ready"));
            if let Some(rest) = line.strip_prefix(ready) {
                return rest.trim().to_owned();
            }
        }
    })
    .await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (Example { _child: child }, rest)
}

#[tokio::test]
async fn the_echo_attach_example_echoes_every_new_client() {
    let gw = Gateway::start(&["--backend-token", "tok"]).await;
    let backend = format!("http://{}", gw.backend_addr);
    let (_echo, _) = run_example(
        "echo_attach",
        &["--gateway", &backend, "--token", "tok", "--hub", "echo"],
        "echo_attach: ready",
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(gw.connect("echo").await);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        // Sent at once: the example may not have attached yet; the inbox keeps it.
        c.send_text(&format!("ping {i}")).await;
        c.send_binary(&[i as u8]).await;
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(c.text().await, format!("ping {i}"));
        assert_eq!(c.next().await, Seen::Binary(vec![i as u8]));
        c.send_text("again").await;
        assert_eq!(c.text().await, "again");
    }
}

#[tokio::test]
async fn the_auth_hook_example_admits_the_demo_user_and_token_and_refuses_the_rest() {
    let (_hook, addr) = run_example(
        "auth_hook",
        &["--listen", "127.0.0.1:0"],
        "auth_hook: listening on",
    )
    .await;
    let gw = Gateway::start(&["--connect-hook", &format!("http://{addr}")]).await;

    let by_password = ws::Client::connect(&format!(
        "{}?user=demo&password=demo-password",
        gw.ws_url("chat")
    ))
    .await;
    let by_token = ws::Client::connect_with(
        &gw.ws_url("chat"),
        &[("authorization", "Bearer demo-token")],
    )
    .await;
    let sb = client(&gw).await;
    for c in [&by_password, &by_token] {
        assert_eq!(sb.session(&c.id).await.unwrap().user, "demo");
    }
    for path in [
        "/ws/chat?user=demo&password=wrong",
        "/ws/chat?user=mallory&password=demo-password",
        "/ws/chat",
    ] {
        let (status, _) = http_request(gw.client_addr, "GET", path, &upgrade_headers()).await;
        assert_eq!(status, 401, "{path}");
    }
    let mut headers = upgrade_headers();
    headers.push(("Authorization", "Bearer not-the-token"));
    let (status, _) = http_request(gw.client_addr, "GET", "/ws/chat", &headers).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn the_auth_hook_examples_first_message_mode_closes_wrong_and_late_clients() {
    let gw = Gateway::start(&[]).await;
    let backend = format!("http://{}", gw.backend_addr);
    let (_auth, _) = run_example(
        "auth_hook",
        &[
            "--first-message",
            "--gateway",
            &backend,
            "--hub",
            "chat",
            "--deadline",
            "1s",
        ],
        "auth_hook: watching",
    )
    .await;
    let sb = client(&gw).await;

    let mut good = gw.connect("chat").await;
    good.send_text(r#"{"User":"demo","Password":"demo-password"}"#)
        .await;
    let welcome: serde_json::Value = serde_json::from_str(&good.text().await).unwrap();
    assert_eq!(welcome["type"], "authenticated");
    assert_eq!(welcome["user"], "demo");
    assert_eq!(
        sb.session(&good.id).await.unwrap().groups,
        ["authenticated"]
    );

    let mut wrong = gw.connect("chat").await;
    wrong
        .send_text(r#"{"User":"demo","Password":"guess"}"#)
        .await;
    assert_eq!(wrong.closed().await.0, 4001);

    let mut garbage = gw.connect("chat").await;
    garbage.send_text("hello?").await;
    assert_eq!(garbage.closed().await.0, 4002);

    let mut silent = gw.connect("chat").await;
    let started = Instant::now();
    assert_eq!(silent.closed().await.0, 4008);
    assert!(started.elapsed() >= Duration::from_millis(900));

    // The good client is still open and reachable.
    sb.send(&good.id, "still here").await.unwrap();
    assert_eq!(good.text().await, "still here");
}
