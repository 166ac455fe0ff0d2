//! Security and abuse limits against a real gateway: TLS (wss, gRPC, mutual TLS, reload on
//! SIGHUP), JWTs, the Origin allow-list, connection and rate limits, slowloris, scoped backend
//! tokens, and that a client can never address another session.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, EncodingKey, Header};
use switchboard_proto::v1::{
    self as pb, gateway_client::GatewayClient, message::Payload, read_response::Result as R,
    target::Kind as T,
};
use switchboard_tests::{
    gateway::Gateway,
    pki::Pki,
    raw::{http_request, RawWs},
    within,
    ws::{Client, Seen},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{
    transport::{Certificate, ClientTlsConfig, Endpoint, Identity},
    Code,
};

fn text(s: &str) -> Option<pb::Message> {
    Some(pb::Message {
        payload: Some(Payload::Text(s.into())),
    })
}

fn upgrade_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ]
}

async fn tls_api(
    gw: &Gateway,
    pki: &Pki,
    client: Option<&switchboard_tests::pki::CertFiles>,
) -> Result<GatewayClient<tonic::transport::Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    if let Some(c) = client {
        tls = tls.identity(Identity::from_pem(&c.cert_pem, &c.key_pem));
    }
    let channel = Endpoint::from_shared(format!("https://{}", gw.backend_addr))?
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(GatewayClient::new(channel))
}

#[tokio::test]
async fn wss_and_grpc_over_tls_work_and_mutual_tls_refuses_a_backend_without_a_certificate() {
    let pki = Pki::new("test CA");
    let server = pki.server("server");
    let backend = pki.client("backend");
    let s = |p: &std::path::Path| p.display().to_string();
    let gw = Gateway::start(&[
        "--tls-cert",
        &s(&server.cert),
        "--tls-key",
        &s(&server.key),
        "--backend-tls-cert",
        &s(&server.cert),
        "--backend-tls-key",
        &s(&server.key),
        "--backend-client-ca",
        &s(&pki.ca_path()),
    ])
    .await;
    let url = format!("wss://localhost:{}/ws/h", gw.client_addr.port());
    let mut c = Client::connect_tls(&url, &pki.ca_pem).await.unwrap();

    let mut api = tls_api(&gw, &pki, Some(&backend)).await.unwrap();
    api.send(pb::SendRequest {
        session_id: c.id.clone(),
        message: text("over TLS"),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(c.text().await, "over TLS");

    // Without a client certificate the handshake (or the first call) fails.
    let refused = match tls_api(&gw, &pki, None).await {
        Err(_) => true,
        Ok(mut api) => api
            .check_sessions(pb::CheckSessionsRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "a backend without a client certificate got in");
    // Plain ws:// to a wss listener does not get a session either.
    assert!(Client::try_connect(&gw.ws_url("h"), &[]).await.is_err());
}

#[tokio::test]
async fn sighup_reloads_the_certificate_without_dropping_sessions() {
    let old = Pki::new("old CA");
    let new = Pki::new("new CA");
    let cert = old.server("server");
    let s = |p: &std::path::Path| p.display().to_string();
    let gw = Gateway::start(&["--tls-cert", &s(&cert.cert), "--tls-key", &s(&cert.key)]).await;
    let url = format!("wss://localhost:{}/ws/h", gw.client_addr.port());
    let mut before = Client::connect_tls(&url, &old.ca_pem).await.unwrap();

    // Replace the files with a certificate from the new CA, then SIGHUP.
    let replacement = new.server("server");
    std::fs::copy(&replacement.cert, &cert.cert).unwrap();
    std::fs::copy(&replacement.key, &cert.key).unwrap();
    gw.signal("HUP");
    // The reload is asynchronous: new handshakes switch over within a moment.
    let mut tries = 0;
    let mut after = loop {
        match Client::connect_tls(&url, &new.ca_pem).await {
            Ok(c) => break c,
            Err(_) => {
                tries += 1;
                assert!(tries < 100, "the new certificate was never served");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let mut api = gw.api().await;
    for c in [&mut before, &mut after] {
        api.send(pb::SendRequest {
            session_id: c.id.clone(),
            message: text("still here"),
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(c.text().await, "still here");
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt(claims: serde_json::Value, secret: &str) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn jwts_set_user_and_groups_and_bad_ones_get_401() {
    let gw = Gateway::start(&[
        "--jwt-secret",
        "topsecret",
        "--jwt-audience",
        "switchboard",
        "--jwt-issuer",
        "https://auth.example",
    ])
    .await;
    let good = |sub: &str| {
        jwt(
            serde_json::json!({"sub": sub, "exp": now() + 300, "aud": "switchboard",
                "iss": "https://auth.example", "groups": ["staff", "night"]}),
            "topsecret",
        )
    };
    let mut api = gw.api().await;
    // Header.
    let bearer = format!("Bearer {}", good("alice"));
    let c = Client::connect_with(&gw.ws_url("h"), &[("authorization", &bearer)]).await;
    let info = api
        .get_session(pb::GetSessionRequest {
            session_id: c.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(info.user, "alice");
    assert_eq!(info.groups, ["night", "staff"]);
    // Query parameter.
    let c = Client::connect(&format!("{}?token={}", gw.ws_url("h"), good("bob"))).await;
    let info = api
        .get_session(pb::GetSessionRequest {
            session_id: c.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(info.user, "bob");
    // Subprotocol: the token entry is never chosen as the session's protocol.
    let protos = format!("switchboard.bearer, bearer.{}", good("carol"));
    let c = Client::connect_with(&gw.ws_url("h"), &[("sec-websocket-protocol", &protos)]).await;
    assert_eq!(c.subprotocol.as_deref(), Some("switchboard.bearer"));
    let info = api
        .get_session(pb::GetSessionRequest {
            session_id: c.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(info.user, "carol");

    let bad = [
        (
            "expired",
            jwt(
                serde_json::json!({"sub": "x", "exp": now() - 600, "aud": "switchboard", "iss": "https://auth.example"}),
                "topsecret",
            ),
        ),
        (
            "signature",
            jwt(
                serde_json::json!({"sub": "x", "exp": now() + 300, "aud": "switchboard", "iss": "https://auth.example"}),
                "guessed",
            ),
        ),
        (
            "audience",
            jwt(
                serde_json::json!({"sub": "x", "exp": now() + 300, "aud": "other", "iss": "https://auth.example"}),
                "topsecret",
            ),
        ),
    ];
    for (why, token) in bad {
        let path = format!("/ws/h?token={token}");
        let (status, body) = http_request(gw.client_addr, "GET", &path, &upgrade_headers()).await;
        assert_eq!(status, 401, "{why}");
        assert!(body.contains(why), "{why}: {body}");
        assert!(!body.contains(&token), "the token is never echoed");
    }
    let (status, body) = http_request(gw.client_addr, "GET", "/ws/h", &upgrade_headers()).await;
    assert_eq!(status, 401);
    assert!(body.contains("missing"), "{body}");
}

#[tokio::test]
async fn a_disallowed_origin_gets_403() {
    let gw = Gateway::start(&["--allowed-origin", "chat=https://app.example"]).await;
    let ok = Client::connect_with(&gw.ws_url("chat"), &[("origin", "https://app.example")]).await;
    assert_eq!(ok.id.len(), 22);
    let mut headers = upgrade_headers();
    headers.push(("Origin", "https://evil.example"));
    let (status, _) = http_request(gw.client_addr, "GET", "/ws/chat", &headers).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn the_per_ip_limit_refuses_with_429_and_frees_up_after_disconnects() {
    let gw = Gateway::start(&["--max-connections-per-ip", "2"]).await;
    let mut api = gw.api().await;
    let first = gw.connect("h").await;
    let _second = gw.connect("h").await;
    let (status, body) = http_request(gw.client_addr, "GET", "/ws/h", &upgrade_headers()).await;
    assert_eq!(status, 429, "{body}");
    let id = first.id.clone();
    first.close(1000, "").await;
    // The slot is free once the session has ended (Read reports the close).
    loop {
        let r = api
            .read(pb::ReadRequest {
                ack: None,
                session_id: id.clone(),
                timeout: Some(prost_types::Duration {
                    seconds: 10,
                    nanos: 0,
                }),
            })
            .await
            .unwrap()
            .into_inner();
        if let Some(R::Closed(_)) = r.result {
            break;
        }
    }
    let _third = gw.connect("h").await;
}

#[tokio::test]
async fn a_slowloris_client_is_dropped_while_normal_clients_connect() {
    let gw = Gateway::start(&["--handshake-timeout", "1s"]).await;
    let mut slow = stalled_request(&gw).await;
    // While it dawdles, others get in.
    let normal = gw.connect("h").await;
    assert_eq!(normal.id.len(), 22);
    // The gateway hangs up on it once the handshake timeout passes (the bound here is only
    // a safety net).
    let mut buf = Vec::new();
    let n = within("the slow client to be dropped", slow.read_to_end(&mut buf))
        .await
        .unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

/// A metric's value, 0 before it has one.
async fn metric(gw: &Gateway, name: &str) -> f64 {
    gw.metric(name).await.unwrap_or(0.0)
}

/// A client that sends half a request and then nothing: a handshake that never finishes.
async fn stalled_request(gw: &Gateway) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(gw.client_addr)
        .await
        .unwrap();
    tcp.write_all(b"GET /ws/h HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    tcp
}

#[tokio::test]
async fn connections_over_max_handshakes_wait_for_a_place_that_an_upgrade_or_an_abort_frees() {
    let gw = Gateway::start(&["--max-handshakes", "2"]).await;
    // An upgrade gives its place back: more sessions than places, one after another.
    let mut sessions = Vec::new();
    for _ in 0..5 {
        sessions.push(gw.connect("h").await);
    }
    // Two clients stall mid-request and hold both places.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(stalled_request(&gw).await);
    }
    within("both places to be taken", async {
        while metric(&gw, "switchboard_handshakes").await < 2.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // A third waits in the listen queue: not accepted, so not upgraded, while they stall.
    let url = gw.ws_url("h");
    let mut third = tokio::spawn(async move { Client::connect(&url).await });
    within("the listener to stop accepting", async {
        while metric(&gw, "switchboard_handshake_waits_total").await == 0.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut third)
            .await
            .is_err(),
        "the third connection was upgraded while both places were taken"
    );
    // One stalled client aborts mid-handshake: its place is free, the third gets in.
    drop(stalled.pop());
    let third = within("the waiting client to get in", third).await.unwrap();
    assert_eq!(third.id.len(), 22);
    // The sessions opened before are all still there, beside the third.
    assert_eq!(metric(&gw, "switchboard_sessions_open").await, 6.0);
    drop(sessions);
    drop(stalled);
    within("every place to be free", async {
        while metric(&gw, "switchboard_handshakes").await > 0.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_flooding_client_is_closed_with_1008_and_others_still_get_their_messages() {
    let gw = Gateway::start(&["--max-messages-per-second", "50"]).await;
    let mut api = gw.api().await;
    let mut normal = gw.connect("h").await;
    let mut flood = RawWs::connect(gw.client_addr, "h").await;
    for _ in 0..500 {
        flood.send_frame(true, 0x1, b"spam").await;
    }
    assert_eq!(flood.close_code().await, Some(1008));
    api.send(pb::SendRequest {
        session_id: normal.id.clone(),
        message: text("unaffected"),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(normal.next().await, Seen::Text("unaffected".into()));
    let (_, metrics) = gw.http_get("/metrics").await;
    assert!(
        metrics.contains("switchboard_rate_limited_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_scoped_backend_token_cannot_touch_other_hubs() {
    let gw = Gateway::start(&[
        "--backend-token",
        "admin",
        "--scoped-backend-token",
        "chat=chat-only",
    ])
    .await;
    let in_chat = gw.connect("chat").await;
    let in_news = gw.connect("news").await;
    let mut scoped = gw.api_with_token(Some("chat-only")).await;
    scoped
        .send(pb::SendRequest {
            session_id: in_chat.id.clone(),
            message: text("ok"),
            ..Default::default()
        })
        .await
        .unwrap();
    let denied = scoped
        .send(pb::SendRequest {
            session_id: in_news.id.clone(),
            message: text("no"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied}");
    let denied = scoped
        .publish(pb::PublishRequest {
            target: Some(pb::Target {
                kind: Some(T::Hub("news".into())),
            }),
            exclude: vec![],
            message: text("no"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = scoped
        .subscribe(pb::SubscribeRequest {
            hub: "news".into(),
            kinds: vec![],
            consumer_group: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    // It learns nothing about the other hub's sessions.
    let states = scoped
        .check_sessions(pb::CheckSessionsRequest {
            session_ids: vec![in_chat.id.clone(), in_news.id.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    let states: Vec<i32> = states.sessions.iter().map(|s| s.state).collect();
    assert_eq!(
        states,
        [
            pb::SessionState::Open as i32,
            pb::SessionState::Unknown as i32
        ]
    );
}

#[tokio::test]
async fn a_client_cannot_name_another_session() {
    let gw = Gateway::start(&[]).await;
    let mut api = gw.api().await;
    let victim = gw.connect("a").await;
    // An attacker copies the victim's ID into everything a client controls.
    let url = format!("{}?session={}&id={}", gw.ws_url("b"), victim.id, victim.id);
    let mut attacker = Client::connect_with(&url, &[("x-switchboard-session", &victim.id)]).await;
    assert_ne!(
        attacker.id, victim.id,
        "the gateway always issues a fresh ID"
    );
    attacker.send_text("pretending").await;
    // The message lands in the attacker's own session; the victim's inbox stays empty.
    match api
        .read(pb::ReadRequest {
            ack: None,
            session_id: attacker.id.clone(),
            timeout: Some(prost_types::Duration {
                seconds: 10,
                nanos: 0,
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap()
    {
        R::Message(_) => {}
        other => panic!("{other:?}"),
    }
    let victims = api
        .read(pb::ReadRequest {
            ack: None,
            session_id: victim.id.clone(),
            timeout: Some(prost_types::Duration {
                seconds: 0,
                nanos: 100_000_000,
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert!(matches!(victims, R::TimedOut(_)));
}

#[tokio::test]
async fn nodes_call_each_other_over_mutual_tls() {
    let redis = switchboard_tests::redis::Redis::start().await;
    let pki = Pki::new("cluster CA");
    let node_cert = pki.server("node");
    let backend = pki.client("backend");
    let s = |p: &std::path::Path| p.display().to_string();
    let url = redis.url();
    let (cert, key, ca) = (s(&node_cert.cert), s(&node_cert.key), s(&pki.ca_path()));
    let mut nodes = Vec::new();
    for id in ["tls-a", "tls-b"] {
        nodes.push(
            Gateway::start(&[
                "--redis-url",
                &url,
                "--node-id",
                id,
                "--backend-token",
                "cluster-secret",
                "--backend-tls-cert",
                &cert,
                "--backend-tls-key",
                &key,
                "--backend-client-ca",
                &ca,
            ])
            .await,
        );
    }
    let mut on_a = nodes[0].connect("h").await;
    // A backend with its client certificate calls node B; B forwards to A over mutual TLS.
    let mut api_b = tls_api(&nodes[1], &pki, Some(&backend)).await.unwrap();
    let mut req = tonic::Request::new(pb::SendRequest {
        session_id: on_a.id.clone(),
        message: text("across TLS"),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("authorization", "Bearer cluster-secret".parse().unwrap());
    api_b.send(req).await.unwrap();
    assert_eq!(on_a.text().await, "across TLS");
}
