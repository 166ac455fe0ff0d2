//! Bounded requests against real gateways: every ID list of one call is capped, a malformed ID
//! in `CheckSessions` is answered on its own, and scoped tokens are checked for whole lists —
//! on a node with Redis, with lists longer than any internal chunk of the registry.

use switchboard_proto::v1::{self as pb, message::Payload, target::Kind as T};
use switchboard_sdk::SessionState;
use switchboard_tests::{
    gateway::{Api, Gateway},
    redis::Redis,
};
use tonic::Code;

/// The documented cap on every ID list of one call.
const CAP: usize = 10_000;

fn text(s: &str) -> Option<pb::Message> {
    Some(pb::Message {
        payload: Some(Payload::Text(s.into())),
    })
}

/// `n` well-formed IDs no gateway issued (22 characters, the last one a valid final digit).
fn unknown_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{i:021}A")).collect()
}

fn sessions(ids: Vec<String>) -> Option<pb::Target> {
    Some(pb::Target {
        kind: Some(T::Sessions(pb::SessionList { session_ids: ids })),
    })
}

async fn check(api: &mut Api, ids: Vec<String>) -> Result<Vec<pb::SessionStatus>, tonic::Status> {
    api.check_sessions(pb::CheckSessionsRequest { session_ids: ids })
        .await
        .map(|r| r.into_inner().sessions)
}

/// The refusal of a call that must fail (without printing a 10,000-entry answer if it did not).
fn refusal<T>(r: Result<T, tonic::Status>) -> tonic::Status {
    match r {
        Ok(_) => panic!("the call was accepted"),
        Err(status) => status,
    }
}

fn assert_over_cap(status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    assert!(
        status.message().contains(field) && status.message().contains(&CAP.to_string()),
        "the refusal names {field} and the cap: {status}"
    );
}

/// Gateways sharing one Redis; every node accepts the full token and a token scoped to `chat`.
async fn nodes(redis: &Redis, n: usize) -> Vec<Gateway> {
    let url = redis.url();
    let mut out = Vec::new();
    for i in 0..n {
        let id = format!("node-{i}");
        out.push(
            Gateway::start(&[
                "--redis-url",
                &url,
                "--node-id",
                &id,
                "--redis-prefix",
                "b",
                "--lease-ttl",
                "5s",
                "--lease-refresh",
                "1s",
                "--backend-token",
                "admin",
                "--scoped-backend-token",
                "chat=chat-only",
            ])
            .await,
        );
    }
    out
}

#[tokio::test]
async fn check_sessions_over_the_cap_is_refused_naming_the_field_and_the_cap() {
    let gw = Gateway::start(&[]).await;
    let mut api = gw.api().await;
    let refused = refusal(check(&mut api, unknown_ids(CAP + 1)).await);
    assert_over_cap(&refused, "session_ids");
}

#[tokio::test]
async fn check_sessions_at_the_cap_answers_every_id_even_a_malformed_one() {
    let redis = Redis::start().await;
    let gws = nodes(&redis, 2).await;
    let (a, b) = (&gws[0], &gws[1]);
    let mut open = Vec::new();
    for gw in [a, b, a, b, a] {
        open.push(gw.connect("chat").await);
    }
    let mut ids = unknown_ids(CAP);
    // Spread across the list, so every chunk of the lookup holds something to find.
    let open_at: Vec<usize> = (0..open.len())
        .map(|k| k * (CAP / open.len()) + 7)
        .collect();
    for (&at, c) in open_at.iter().zip(&open) {
        ids[at] = c.id.clone();
    }
    let malformed_at = CAP / 2 + 3;
    ids[malformed_at] = "not-a-session-id".into();

    let mut api = a.api().await;
    let states = check(&mut api, ids.clone()).await.unwrap();
    assert_eq!(states.len(), CAP, "one answer per ID");
    for (i, (asked, got)) in ids.iter().zip(&states).enumerate() {
        assert_eq!(&got.session_id, asked, "answers come in request order");
        let want = if open_at.contains(&i) {
            pb::SessionState::Open
        } else if i == malformed_at {
            pb::SessionState::Invalid
        } else {
            pb::SessionState::Unknown
        };
        assert_eq!(got.state, want as i32, "ID #{i} {asked:?}");
    }
}

#[tokio::test]
async fn publish_lists_over_the_cap_are_refused_and_lists_at_the_cap_work() {
    let gw = Gateway::start(&[]).await;
    let mut api = gw.api().await;
    let mut client = gw.connect("h").await;

    let refused = refusal(
        api.publish(pb::PublishRequest {
            target: sessions(unknown_ids(CAP + 1)),
            exclude: vec![],
            message: text("too many targets"),
            ..Default::default()
        })
        .await,
    );
    assert_over_cap(&refused, "sessions");

    let refused = refusal(
        api.publish(pb::PublishRequest {
            target: Some(pb::Target {
                kind: Some(T::Hub("h".into())),
            }),
            exclude: unknown_ids(CAP + 1),
            message: text("too many exclusions"),
            ..Default::default()
        })
        .await,
    );
    assert_over_cap(&refused, "exclude");

    let mut targets = unknown_ids(CAP);
    targets[CAP - 1] = client.id.clone();
    let r = api
        .publish(pb::PublishRequest {
            target: sessions(targets),
            exclude: unknown_ids(CAP),
            message: text("at the cap"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.queued, r.refused), (1, 0));
    // The refused publishes queued nothing: this is the first frame the client sees.
    assert_eq!(client.text().await, "at the cap");
}

#[tokio::test]
async fn a_scoped_token_sees_and_reaches_only_its_hub_across_nodes() {
    let redis = Redis::start().await;
    let gws = nodes(&redis, 2).await;
    let (a, b) = (&gws[0], &gws[1]);
    // Sessions of both hubs on both nodes; the scoped caller talks to node A, so B's sessions
    // are known only through the registry.
    let chat_a = a.connect("chat").await;
    let news_a = a.connect("news").await;
    let mut chat_b = b.connect("chat").await;
    let mut news_b = b.connect("news").await;
    let mut scoped = a.api_with_token(Some("chat-only")).await;

    let mut ids = unknown_ids(CAP);
    let asked = [
        (&chat_a.id, pb::SessionState::Open),
        (&news_a.id, pb::SessionState::Unknown),
        (&chat_b.id, pb::SessionState::Open),
        (&news_b.id, pb::SessionState::Unknown),
    ];
    for (k, (id, _)) in asked.iter().enumerate() {
        ids[k * 2_500 + 11] = (*id).clone();
    }
    let states = check(&mut scoped, ids.clone()).await.unwrap();
    assert_eq!(states.len(), CAP);
    for (i, got) in states.iter().enumerate() {
        let want = asked
            .iter()
            .find(|(id, _)| **id == ids[i])
            .map_or(pb::SessionState::Unknown, |(_, s)| *s);
        assert_eq!(got.state, want as i32, "ID #{i} {:?}", ids[i]);
    }

    // A publish naming one session of another hub is refused as a whole...
    let denied = scoped
        .publish(pb::PublishRequest {
            target: sessions(vec![chat_b.id.clone(), news_b.id.clone()]),
            exclude: vec![],
            message: text("refused"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied}");
    // ...and a batch refuses only the items of other hubs.
    let results = scoped
        .send_batch(pb::SendBatchRequest {
            items: [&chat_b.id, &news_b.id, &news_a.id, &chat_a.id]
                .into_iter()
                .map(|id| pb::SendRequest {
                    session_id: id.clone(),
                    message: text("batch"),
                    ..Default::default()
                })
                .collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let codes: Vec<u32> = results.iter().map(|r| r.code).collect();
    assert_eq!(
        codes,
        [
            0,
            Code::PermissionDenied as u32,
            Code::PermissionDenied as u32,
            0
        ]
    );
    scoped
        .publish(pb::PublishRequest {
            target: sessions(vec![chat_b.id.clone()]),
            exclude: vec![],
            message: text("allowed"),
            ..Default::default()
        })
        .await
        .unwrap();
    // Nothing of the refused publish reached anyone, on either hub.
    assert_eq!(chat_b.text().await, "batch");
    assert_eq!(chat_b.text().await, "allowed");
    let mut full = b.api().await;
    full.send(pb::SendRequest {
        session_id: news_b.id.clone(),
        message: text("first"),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(news_b.text().await, "first");
}

#[tokio::test]
async fn the_sdk_checks_any_number_of_ids_and_names_a_malformed_one_invalid() {
    let gw = Gateway::start(&[]).await;
    let sb = switchboard_sdk::Client::builder()
        .gateway(format!("http://{}", gw.backend_addr))
        .build()
        .await
        .unwrap();
    let open = gw.connect("h").await;
    // More than one call's worth: the SDK splits the list and keeps the order.
    let mut ids = unknown_ids(CAP + 2);
    ids[3] = "not an id".into();
    ids[CAP + 1] = open.id.clone();
    let states = sb.check(ids.iter().map(String::as_str)).await.unwrap();
    assert_eq!(states.len(), ids.len());
    for (i, (id, state)) in states.iter().enumerate() {
        assert_eq!(id.as_str(), ids[i]);
        let want = match i {
            3 => SessionState::Invalid,
            i if i == CAP + 1 => SessionState::Open,
            _ => SessionState::Unknown,
        };
        assert_eq!(*state, want, "ID #{i} {id}");
    }
}
