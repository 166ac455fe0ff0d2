//! The connect hook (`ConnectHook/Authorize`), served by the test itself over real gRPC.

use std::{net::SocketAddr, time::Duration};

use switchboard_proto::v1::{
    self as pb,
    authorize_response::Decision,
    connect_hook_server::{ConnectHook, ConnectHookServer},
    target::Kind as T,
};
use switchboard_tests::{gateway::Gateway, raw::http_request, ws::Client};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// Admits `?user=NAME` (groups "members", metadata plan=pro, subprotocol "chat.v1" when
/// offered), denies `?deny`, and stalls on `?stall`.
struct TestHook;

#[tonic::async_trait]
impl ConnectHook for TestHook {
    async fn authorize(
        &self,
        req: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let req = req.into_inner();
        let decision = if req.query.contains("stall") {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Decision::Deny(pb::Deny::default())
        } else if let Some(user) = req.query.strip_prefix("user=") {
            assert_eq!(req.path, format!("/ws/{}", req.hub));
            assert!(req.remote_addr.starts_with("127.0.0.1:"));
            assert!(req
                .headers
                .iter()
                .any(|h| h.name == "x-test" && h.value == "yes"));
            Decision::Allow(pb::Allow {
                user: user.into(),
                groups: vec!["members".into()],
                metadata: [("plan".to_string(), "pro".to_string())].into(),
                subprotocol: if req.subprotocols.iter().any(|p| p == "chat.v1") {
                    "chat.v1".into()
                } else {
                    String::new()
                },
            })
        } else {
            Decision::Deny(pb::Deny {
                http_status: 401,
                reason: "bad credentials".into(),
            })
        };
        Ok(Response::new(pb::AuthorizeResponse {
            decision: Some(decision),
        }))
    }
}

async fn start_hook() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ConnectHookServer::new(TestHook))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

#[tokio::test]
async fn an_allowed_client_gets_the_hooks_user_groups_metadata_and_subprotocol() {
    let hook = start_hook().await;
    let gw = Gateway::start(&["--connect-hook", &format!("http://{hook}")]).await;
    let mut c = Client::connect_with(
        &format!("{}?user=alice", gw.ws_url("chat")),
        &[
            ("x-test", "yes"),
            ("sec-websocket-protocol", "other, chat.v1"),
        ],
    )
    .await;
    assert_eq!(c.subprotocol.as_deref(), Some("chat.v1"));
    let mut api = gw.api().await;
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
    assert_eq!(info.groups, vec!["members".to_string()]);
    assert_eq!(info.metadata.get("plan").map(String::as_str), Some("pro"));
    assert_eq!(info.subprotocol, "chat.v1");

    // The hook's user and group are publish targets.
    for kind in [
        T::User(pb::UserTarget {
            hub: "chat".into(),
            user: "alice".into(),
        }),
        T::Group(pb::GroupTarget {
            hub: "chat".into(),
            group: "members".into(),
        }),
    ] {
        let r = api
            .publish(pb::PublishRequest {
                target: Some(pb::Target { kind: Some(kind) }),
                exclude: vec![],
                message: Some(pb::Message {
                    payload: Some(pb::message::Payload::Text("hi alice".into())),
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.queued, 1);
        assert_eq!(c.text().await, "hi alice");
    }
    let users = api
        .list_sessions(pb::ListSessionsRequest {
            user: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(users.sessions.len(), 1);
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
async fn a_denied_client_gets_the_hooks_status_and_reason() {
    let hook = start_hook().await;
    let gw = Gateway::start(&["--connect-hook", &format!("http://{hook}")]).await;
    let (status, body) = http_request(
        gw.client_addr,
        "GET",
        "/ws/chat?who=mallory",
        &upgrade_headers(),
    )
    .await;
    assert_eq!(status, 401);
    assert!(body.contains("bad credentials"), "{body}");
}

#[tokio::test]
async fn an_unreachable_or_slow_hook_refuses_with_503() {
    // A port that was free a moment ago: nothing listens there.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = Gateway::start(&["--connect-hook", &format!("http://{dead}")]).await;
    let (status, _) =
        http_request(gw.client_addr, "GET", "/ws/chat?user=a", &upgrade_headers()).await;
    assert_eq!(status, 503);

    let hook = start_hook().await;
    let gw = Gateway::start(&[
        "--connect-hook",
        &format!("http://{hook}"),
        "--connect-hook-timeout",
        "300ms",
    ])
    .await;
    let (status, _) =
        http_request(gw.client_addr, "GET", "/ws/chat?stall", &upgrade_headers()).await;
    assert_eq!(status, 503);
    // The gateway still admits good clients after both failures.
    let ok = Client::connect_with(
        &format!("{}?user=bob", gw.ws_url("chat")),
        &[("x-test", "yes")],
    )
    .await;
    assert_eq!(ok.id.len(), 22);
}
