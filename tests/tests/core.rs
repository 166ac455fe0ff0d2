//! The core gateway against a real process: sessions, Send, Publish, Close, lookups, bad input,
//! slow consumers, the backend token, health, reflection and shutdown.

use std::collections::HashSet;

use futures_util::future::join_all;
use switchboard_proto::v1::{self as pb, message::Payload, target::Kind as T};
use switchboard_tests::{
    gateway::Gateway,
    raw::{http_request, http_request_as, RawWs},
    within,
    ws::{Client, Seen},
};
use tonic::Code;

fn text(s: &str) -> Option<pb::Message> {
    Some(pb::Message {
        payload: Some(Payload::Text(s.into())),
    })
}

/// The `switchboard.v1` ErrorInfo detail of a status: its reason and metadata.
fn error_info(s: &tonic::Status) -> (String, std::collections::HashMap<String, String>) {
    use tonic_types::StatusExt;
    let details = s.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {s:?}"));
    assert_eq!(info.domain, "switchboard.v1");
    (info.reason.clone(), info.metadata.clone())
}

fn binary(b: &[u8]) -> Option<pb::Message> {
    Some(pb::Message {
        payload: Some(Payload::Binary(b.to_vec().into())),
    })
}

fn send(id: &str, message: Option<pb::Message>) -> pb::SendRequest {
    pb::SendRequest {
        session_id: id.into(),
        message,
        ..Default::default()
    }
}

fn publish(kind: T, exclude: &[&str], msg: &str) -> pb::PublishRequest {
    pb::PublishRequest {
        target: Some(pb::Target { kind: Some(kind) }),
        exclude: exclude.iter().map(|s| s.to_string()).collect(),
        message: text(msg),
        ..Default::default()
    }
}

async fn get(
    api: &mut switchboard_tests::gateway::Api,
    id: &str,
) -> Result<pb::SessionInfo, tonic::Status> {
    api.get_session(pb::GetSessionRequest {
        session_id: id.into(),
    })
    .await
    .map(|r| r.into_inner().session.expect("session info"))
}

/// Waits for the gateway to have torn a session down, by blocking in `Read` until it reports
/// the close (an event, not a poll).
async fn wait_closed(api: &mut switchboard_tests::gateway::Api, id: &str) -> pb::Closed {
    loop {
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
        match r.result {
            Some(pb::read_response::Result::Closed(c)) => return c,
            // Unread client messages come first; skip them.
            _ => continue,
        }
    }
}

#[tokio::test]
async fn a_session_is_listed_while_connected_and_gone_at_once_after() {
    let gw = Gateway::start(&[]).await;
    let mut api = gw.api().await;
    let client = gw.connect("chat").await;
    let id = client.id.clone();
    assert_eq!(id.len(), 22);

    // Registered before the 101 went out: no waiting needed.
    let info = get(&mut api, &id).await.unwrap();
    assert_eq!(info.hub, "chat");
    assert!(
        info.remote_addr.starts_with("127.0.0.1:"),
        "{}",
        info.remote_addr
    );
    assert!(info.connected_at.is_some());
    assert_eq!(info.node, gw.node_id);

    let listed = api
        .list_sessions(pb::ListSessionsRequest {
            hub: "chat".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.sessions.len(), 1);
    assert_eq!(listed.sessions[0].session_id, id);

    client.close(1000, "bye").await;
    let closed = wait_closed(&mut api, &id).await;
    assert_eq!(closed.code, 1000);
    assert_eq!(closed.reason, "bye");
    let err = get(&mut api, &id).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let listed = api
        .list_sessions(pb::ListSessionsRequest {
            hub: "chat".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.sessions.is_empty());
}

#[tokio::test]
async fn send_delivers_text_and_binary_in_order_and_refuses_unknown_and_closed() {
    let gw = Gateway::start(&[]).await;
    let mut api = gw.api().await;
    let mut c = gw.connect("h").await;
    for i in 0..50 {
        let m = if i % 2 == 0 {
            text(&format!("t{i}"))
        } else {
            binary(&[i as u8; 3])
        };
        api.send(send(&c.id, m)).await.unwrap();
    }
    for i in 0..50 {
        let want = if i % 2 == 0 {
            Seen::Text(format!("t{i}"))
        } else {
            Seen::Binary(vec![i as u8; 3])
        };
        assert_eq!(c.next().await, want);
    }

    let unknown = api
        .send(send("AAAAAAAAAAAAAAAAAAAAAA", text("x")))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(
        unknown.message().contains("not found"),
        "{}",
        unknown.message()
    );
    let (reason, meta) = error_info(&unknown);
    assert_eq!(reason, "SESSION_NOT_FOUND");
    assert_eq!(meta["session"], "AAAAAAAAAAAAAAAAAAAAAA");

    let id = c.id.clone();
    c.close(1000, "").await;
    wait_closed(&mut api, &id).await;
    let closed = api.send(send(&id, text("late"))).await.unwrap_err();
    assert_eq!(closed.code(), Code::NotFound);
    assert!(closed.message().contains("closed"), "{}", closed.message());
    // The same code, told apart by a structured detail rather than by the wording.
    let (reason, meta) = error_info(&closed);
    assert_eq!(reason, "SESSION_CLOSED");
    assert_eq!(meta["session"], id);
    assert_eq!(meta["code"], "1000");
    assert_eq!(meta["closed_by"], "client");

    let empty = api.send(send("", text("x"))).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    let no_message = api.send(send(&id, None)).await.unwrap_err();
    assert_eq!(no_message.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_message_over_the_limit_is_an_invalid_argument() {
    let gw = Gateway::start(&["--max-message-bytes", "1000"]).await;
    let mut api = gw.api().await;
    let c = gw.connect("h").await;
    let err = api.send(send(&c.id, binary(&[0; 1001]))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    api.send(send(&c.id, binary(&[0; 1000]))).await.unwrap();
}

#[tokio::test]
async fn publish_reaches_exactly_the_targeted_sessions_once() {
    let gw = Gateway::start(&[]).await;
    let mut api = gw.api().await;
    // a1, a2, a3 in hub "a"; b1 in hub "b". a1 and a2 in group "g"; a2 and b1 are user "u"
    // (via JoinGroup we cannot set users, so users come from the connect hook test; here the
    // user target is checked to match nobody).
    let mut a1 = gw.connect("a").await;
    let mut a2 = gw.connect("a").await;
    let mut a3 = gw.connect("a").await;
    let mut b1 = gw.connect("b").await;
    for id in [&a1.id, &a2.id] {
        api.join_group(pb::JoinGroupRequest {
            session_id: id.clone(),
            group: "g".into(),
        })
        .await
        .unwrap();
    }

    let r = api
        .publish(publish(T::Hub("a".into()), &[&a3.id], "hub"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.queued, 2);
    let r = api
        .publish(publish(
            T::Group(pb::GroupTarget {
                hub: "a".into(),
                group: "g".into(),
            }),
            &[],
            "group",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.queued, 2);
    let r = api
        .publish(publish(
            T::Sessions(pb::SessionList {
                session_ids: vec![a3.id.clone(), b1.id.clone(), b1.id.clone()],
            }),
            &[],
            "list",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.queued, 2, "a duplicated ID is delivered once");
    let r = api
        .publish(publish(
            T::User(pb::UserTarget {
                hub: String::new(),
                user: "nobody".into(),
            }),
            &[],
            "user",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.queued, 0);
    // A marker after everything: each client must see exactly its messages, then the marker.
    for c in [&a1, &a2, &a3, &b1] {
        api.send(send(&c.id, text("end"))).await.unwrap();
    }
    async fn seen(c: &mut Client) -> Vec<String> {
        let mut got = Vec::new();
        loop {
            let t = c.text().await;
            if t == "end" {
                return got;
            }
            got.push(t);
        }
    }
    assert_eq!(seen(&mut a1).await, ["hub", "group"]);
    assert_eq!(seen(&mut a2).await, ["hub", "group"]);
    assert_eq!(seen(&mut a3).await, ["list"]);
    assert_eq!(seen(&mut b1).await, ["list"]);

    api.leave_group(pb::LeaveGroupRequest {
        session_id: a1.id.clone(),
        group: "g".into(),
    })
    .await
    .unwrap();
    let r = api
        .publish(publish(
            T::Group(pb::GroupTarget {
                hub: "a".into(),
                group: "g".into(),
            }),
            &[],
            "after leave",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.queued, 1);
    assert_eq!(a2.text().await, "after leave");

    let bad = api
        .publish(publish(T::Hub("bad hub!".into()), &[], "x"))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn one_publish_reaches_a_thousand_sessions() {
    let gw = Gateway::start(&[]).await;
    let mut api = gw.api().await;
    let mut clients = join_all((0..1000).map(|_| gw.connect("big"))).await;
    let r = api
        .publish(publish(T::Hub("big".into()), &[], "to all"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.queued, 1000);
    let got = join_all(clients.iter_mut().map(|c| c.text())).await;
    assert!(got.iter().all(|t| t == "to all"));
    let ids: HashSet<_> = clients.iter().map(|c| c.id.clone()).collect();
    assert_eq!(ids.len(), 1000, "session IDs are unique");
}

#[tokio::test]
async fn close_with_code_and_reason_reaches_the_client() {
    let gw = Gateway::start(&[]).await;
    let mut api = gw.api().await;
    let mut c = gw.connect("h").await;
    api.send(send(&c.id, text("before close"))).await.unwrap();
    api.close(pb::CloseRequest {
        session_id: c.id.clone(),
        code: 4001,
        reason: "kicked".into(),
    })
    .await
    .unwrap();
    assert_eq!(c.text().await, "before close");
    assert_eq!(c.closed().await, (4001, "kicked".into()));
    let closed = wait_closed(&mut api, &c.id).await;
    assert_eq!(
        (closed.code, closed.closed_by),
        (4001, pb::Closer::Backend as i32)
    );

    let bad = api
        .close(pb::CloseRequest {
            session_id: c.id.clone(),
            code: 1005,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn check_sessions_answers_open_closed_and_unknown_in_one_call() {
    let gw = Gateway::start(&[]).await;
    let mut api = gw.api().await;
    let open = gw.connect("h").await;
    let gone = gw.connect("h").await;
    let gone_id = gone.id.clone();
    gone.close(1000, "").await;
    wait_closed(&mut api, &gone_id).await;
    let unknown = "ZZZZZZZZZZZZZZZZZZZZZw".to_string();
    let r = api
        .check_sessions(pb::CheckSessionsRequest {
            session_ids: vec![open.id.clone(), gone_id.clone(), unknown.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    let states: Vec<_> = r
        .sessions
        .iter()
        .map(|s| (s.session_id.clone(), s.state))
        .collect();
    assert_eq!(
        states,
        vec![
            (open.id.clone(), pb::SessionState::Open as i32),
            (gone_id, pb::SessionState::Closed as i32),
            (unknown, pb::SessionState::Unknown as i32),
        ]
    );
}

#[tokio::test]
async fn bad_client_input_gets_the_right_code_and_spares_other_sessions() {
    let gw = Gateway::start(&[]).await;
    let mut api = gw.api().await;
    let mut bystander = gw.connect("h").await;

    // 2 MiB message (default limit 1 MiB) → 1009, in one frame and in fragments.
    let mut big = RawWs::connect(gw.client_addr, "h").await;
    big.send_frame(true, 0x2, &vec![0u8; 2 << 20]).await;
    assert_eq!(big.close_code().await, Some(1009));
    let mut fragmented = RawWs::connect(gw.client_addr, "h").await;
    for i in 0..3 {
        let op = if i == 0 { 0x2 } else { 0x0 };
        fragmented
            .send_frame(false, op, &vec![0u8; 512 << 10])
            .await;
    }
    assert_eq!(fragmented.close_code().await, Some(1009));

    // Invalid UTF-8 in a text message → 1007, whole and split over frames.
    let mut bad_utf8 = RawWs::connect(gw.client_addr, "h").await;
    bad_utf8.send_frame(true, 0x1, &[b'o', b'k', 0xff]).await;
    assert_eq!(bad_utf8.close_code().await, Some(1007));
    let mut split = RawWs::connect(gw.client_addr, "h").await;
    split.send_frame(false, 0x1, b"fine so far").await;
    split.send_frame(true, 0x0, &[0xc3]).await;
    assert_eq!(split.close_code().await, Some(1007));

    // A reserved opcode → 1002.
    let mut reserved = RawWs::connect(gw.client_addr, "h").await;
    reserved.send_frame(true, 0x3, b"").await;
    assert_eq!(reserved.close_code().await, Some(1002));

    // HTTP refusals.
    let addr = gw.client_addr;
    assert_eq!(http_request(addr, "GET", "/ws/x", &[]).await.0, 426);
    assert_eq!(http_request(addr, "GET", "/ws/bad%20hub", &[]).await.0, 400);
    assert_eq!(http_request(addr, "GET", "/ws/", &[]).await.0, 400);
    assert_eq!(http_request(addr, "GET", "/nope", &[]).await.0, 404);
    assert_eq!(http_request(addr, "POST", "/ws/x", &[]).await.0, 405);
    assert_eq!(http_request(addr, "POST", "/healthz", &[]).await.0, 405);
    // A complete upgrade request, but over HTTP/1.0, which cannot switch protocols.
    let upgrade_headers = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let (status, body) = http_request_as(addr, "HTTP/1.0", "GET", "/ws/x", &upgrade_headers).await;
    assert_eq!(status, 400);
    assert!(body.contains("HTTP/1.1"), "{body}");

    // The bystander was never touched.
    api.send(send(&bystander.id, text("still here")))
        .await
        .unwrap();
    assert_eq!(bystander.text().await, "still here");
    bystander.send_text("and talking").await;

    // And the metrics count what happened.
    let (status, metrics) = gw.http_get("/metrics").await;
    assert_eq!(status, 200);
    for code in ["1009", "1007", "1002"] {
        assert!(
            metrics.contains(&format!("code=\"{code}\"")),
            "no disconnect with {code} in metrics:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_with_1013_and_others_get_everything() {
    // Grace 0: the close happens the moment the queue refuses, which the test can observe.
    let gw = Gateway::start(&[
        "--slow-consumer-grace",
        "0s",
        "--outbound-queue-messages",
        "64",
        "--outbound-queue-bytes",
        "2000000",
    ])
    .await;
    let mut api = gw.api().await;
    let mut slow = gw.connect("h").await;
    let mut fast = gw.connect("h").await;
    let chunk = vec![7u8; 64 << 10];
    let mut fast_expected = 0;
    let mut refused = None;
    // Bounded: loopback buffers hold a few MiB, so the slow client's queue fills long before.
    for i in 0..10_000 {
        match api.send(send(&slow.id, binary(&chunk))).await {
            Ok(_) => {}
            Err(s) => {
                refused = Some((i, s));
                break;
            }
        }
        api.send(send(&fast.id, text(&format!("m{i}"))))
            .await
            .unwrap();
        fast_expected += 1;
    }
    let (_, status) = refused.expect("the slow client's queue filled up");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
    // Everything sent to the normal client arrives, in order.
    for i in 0..fast_expected {
        assert_eq!(fast.text().await, format!("m{i}"));
    }
    // The slow client, once it reads again, finds the close after what was already in flight.
    assert_eq!(slow.closed().await.0, 1013);
    let closed = wait_closed(&mut api, &slow.id).await;
    assert_eq!(
        (closed.code, closed.closed_by),
        (1013, pb::Closer::Gateway as i32)
    );
    let (_, metrics) = gw.http_get("/metrics").await;
    assert!(
        metrics.contains("switchboard_slow_consumer_closes_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_backend_token_is_enforced_and_health_and_reflection_answer() {
    let gw = Gateway::start(&["--backend-token", "s3cret"]).await;
    let mut no_token = gw.api_with_token(None).await;
    let err = no_token
        .check_sessions(pb::CheckSessionsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut wrong = gw.api_with_token(Some("guess")).await;
    let err = wrong
        .check_sessions(pb::CheckSessionsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut right = gw.api().await;
    right
        .check_sessions(pb::CheckSessionsRequest::default())
        .await
        .unwrap();

    let mut health = tonic_health::pb::health_client::HealthClient::new(gw.channel().await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "switchboard.v1.Gateway".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut reflection = ServerReflectionClient::new(gw.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let reply = within("reflection reply", replies.message())
        .await
        .unwrap()
        .unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"switchboard.v1.Gateway"), "{names:?}");
}

#[tokio::test]
async fn health_readiness_and_metrics_endpoints_answer() {
    let gw = Gateway::start(&[]).await;
    assert_eq!(gw.http_get("/healthz").await, (200, "ok\n".into()));
    assert_eq!(gw.http_get("/readyz").await.0, 200);
    let (status, body) = gw.http_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("switchboard_sessions_open"), "{body}");
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_zero() {
    let mut gw = Gateway::start(&["--shutdown-grace", "10s"]).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(gw.connect("h").await);
    }
    gw.signal("TERM");
    for c in &mut clients {
        assert_eq!(c.closed().await.0, 1001);
    }
    // Our clients answer the close, so the gateway need not wait out the grace period.
    drop(clients);
    let status = gw.wait().await;
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn draining_reports_not_ready_and_a_silent_client_cannot_hold_shutdown_past_the_grace() {
    // The grace must outlast the polite client's close handshake on a loaded machine: the
    // process exits at its end, and a socket closed with the client's close reply still unread
    // is reset, which can cost the client the 1001 it had not read yet.
    let mut gw = Gateway::start(&["--shutdown-grace", "5s", "--close-timeout", "30s"]).await;
    let mut polite = gw.connect("h").await;
    // Never reads, so never answers the close: only the grace period ends it.
    let _silent = RawWs::connect(gw.client_addr, "h").await;
    gw.signal("TERM");
    assert_eq!(polite.closed().await.0, 1001);
    // The drain has begun (the close proves it) and is held open by the silent client.
    assert_eq!(gw.http_get("/readyz").await.0, 503);
    let refused = Client::try_connect(&gw.ws_url("h"), &[]).await;
    assert!(refused.is_err(), "new upgrades are refused while draining");
    let status = gw.wait().await;
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn a_non_loopback_backend_without_a_token_is_refused_at_start() {
    let out = std::process::Command::new(switchboard_tests::gateway::gateway_bin())
        .args(["--backend-listen", "0.0.0.0:0", "--listen", "127.0.0.1:0"])
        .output()
        .expect("run gateway");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--backend-token"));
}

#[tokio::test]
async fn check_config_prints_the_config_with_secrets_redacted() {
    let out = std::process::Command::new(switchboard_tests::gateway::gateway_bin())
        .args(["--check-config", "--backend-token", "hunter2"])
        .output()
        .expect("run gateway");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("max-message-bytes = 1048576  # default"),
        "{stdout}"
    );
    assert!(
        stdout.contains("backend-token = \"<redacted>\"  # flag --backend-token"),
        "{stdout}"
    );
    assert!(!stdout.contains("hunter2"));
}

#[tokio::test]
async fn the_welcome_frame_names_the_session() {
    let gw = Gateway::start(&["--welcome-frame"]).await;
    let mut c = gw.connect("h").await;
    let welcome: serde_json::Value = serde_json::from_str(&c.text().await).unwrap();
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["session"], c.id.as_str());
}

#[tokio::test]
async fn a_client_asks_for_its_welcome_frame_with_a_query_parameter() {
    let gw = Gateway::start(&[]).await;
    let mut api = gw.api().await;
    let mut asked = Client::connect(&format!("{}?welcome=1", gw.ws_url("h"))).await;
    let welcome: serde_json::Value = serde_json::from_str(&asked.text().await).unwrap();
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["session"], asked.id.as_str());
    // Without it (and without --welcome-frame) the first frame is the backend's.
    let mut plain = gw.connect("h").await;
    api.send(pb::SendRequest {
        session_id: plain.id.clone(),
        message: text("first"),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(plain.text().await, "first");
}

#[tokio::test]
async fn raising_the_message_limit_alone_raises_the_queues_with_it() {
    // 8 MiB messages: the queue and inbox bounds (4 MiB by default) follow the limit.
    let gw = Gateway::start(&["--max-message-bytes", "8388608"]).await;
    let mut api = gw.api().await;
    let mut c = gw.connect("h").await;
    let big = "x".repeat(6 << 20);
    api.send(pb::SendRequest {
        session_id: c.id.clone(),
        message: text(&big),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(c.text().await.len(), big.len());
    // Given explicitly and too small, the bound is still refused at start.
    let out = std::process::Command::new(switchboard_tests::gateway::gateway_bin())
        .args([
            "--max-message-bytes",
            "8388608",
            "--outbound-queue-bytes",
            "4194304",
        ])
        .args(["--listen", "127.0.0.1:0", "--backend-listen", "127.0.0.1:0"])
        .args(["--admin-listen", "off"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--outbound-queue-bytes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn send_batch_delivers_each_item_and_reports_each_failure() {
    let gw = Gateway::start(&[]).await;
    let mut api = gw.api().await;
    let mut a = gw.connect("h").await;
    let mut b = gw.connect("h").await;
    let mut items = Vec::new();
    for i in 0..100 {
        let to = if i % 2 == 0 { &a.id } else { &b.id };
        items.push(send(to, text(&format!("m{i}"))));
    }
    items.push(send("AAAAAAAAAAAAAAAAAAAAAA", text("nobody")));
    items.push(send(&a.id, None));
    let results = api
        .send_batch(pb::SendBatchRequest { items })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 102);
    assert!(results[..100].iter().all(|r| r.code == 0));
    assert_eq!(results[100].code, Code::NotFound as u32);
    assert_eq!(results[101].code, Code::InvalidArgument as u32);
    for i in (0..100).step_by(2) {
        assert_eq!(a.text().await, format!("m{i}"));
        assert_eq!(b.text().await, format!("m{}", i + 1));
    }
}
