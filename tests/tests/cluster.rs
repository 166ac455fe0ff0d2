//! Several gateway nodes sharing a registry in a real redis-server (and in a real three-master
//! Redis Cluster): any node reaches any session, dead nodes' sessions vanish, Redis outages are
//! survived, nothing is left behind.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use futures_util::future::join_all;
use switchboard_proto::v1::{
    self as pb, attach_request::Kind as Req, attach_response::Kind as Resp, event::Kind as Ev,
    message::Payload, read_response::Result as R, target::Kind as T,
};
use switchboard_tests::{
    gateway::{Api, Gateway},
    redis::{Redis, RedisCluster},
    within,
    ws::Client,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// Short leases so a dead node is noticed within seconds.
const LEASE: &[&str] = &["--lease-ttl", "2s", "--lease-refresh", "500ms"];
/// After the expected count of events, this long without one before "no duplicate" is
/// believed: a lease's lifetime, so a second reaping of a dead node would be heard too.
const QUIET: Duration = Duration::from_secs(2);

async fn nodes(url: &str, n: usize) -> Vec<Gateway> {
    let mut out = Vec::new();
    for i in 0..n {
        let id = format!("node-{}", (b'a' + i as u8) as char);
        let mut args = vec!["--redis-url", url, "--node-id", &id, "--redis-prefix", "t"];
        args.extend_from_slice(LEASE);
        out.push(Gateway::start(&args).await);
    }
    out
}

fn text(s: &str) -> Option<pb::Message> {
    Some(pb::Message {
        payload: Some(Payload::Text(s.into())),
    })
}

fn text_of(m: &pb::InboundMessage) -> String {
    match m.message.as_ref().and_then(|m| m.payload.as_ref()) {
        Some(Payload::Text(t)) => t.clone(),
        other => panic!("expected text, got {other:?}"),
    }
}

async fn send(api: &mut Api, id: &str, s: &str) -> Result<(), tonic::Status> {
    api.send(pb::SendRequest {
        session_id: id.into(),
        message: text(s),
        ..Default::default()
    })
    .await
    .map(drop)
}

async fn cross_node_operations(url: String) {
    let gws = nodes(&url, 3).await;
    let (a, b, c) = (&gws[0], &gws[1], &gws[2]);
    let mut on_a = a.connect("h").await;
    let mut api_b = b.api().await;
    let mut api_c = c.api().await;

    let info = api_c
        .get_session(pb::GetSessionRequest {
            session_id: on_a.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(info.node, "node-a");
    assert_eq!(info.hub, "h");

    send(&mut api_c, &on_a.id, "via c").await.unwrap();
    assert_eq!(on_a.text().await, "via c");
    // A batch through C mixing sessions on A, B and C itself, an unknown one and an item
    // without an ID: each item gets its own answer, in order.
    let mut on_c = c.connect("h").await;
    let mut on_b = b.connect("h").await;
    let results = api_c
        .send_batch(pb::SendBatchRequest {
            items: vec![
                pb::SendRequest {
                    session_id: on_a.id.clone(),
                    message: text("batch a"),
                    ..Default::default()
                },
                pb::SendRequest {
                    session_id: on_c.id.clone(),
                    message: text("batch c"),
                    ..Default::default()
                },
                pb::SendRequest {
                    session_id: "AAAAAAAAAAAAAAAAAAAAAA".into(),
                    message: text("x"),
                    ..Default::default()
                },
                pb::SendRequest {
                    session_id: on_b.id.clone(),
                    message: text("batch b"),
                    ..Default::default()
                },
                pb::SendRequest {
                    session_id: String::new(),
                    message: text("x"),
                    ..Default::default()
                },
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let codes: Vec<u32> = results.iter().map(|r| r.code).collect();
    assert_eq!(
        codes,
        [0, 0, Code::NotFound as u32, 0, Code::InvalidArgument as u32]
    );
    assert_eq!(on_a.text().await, "batch a");
    assert_eq!(on_b.text().await, "batch b");
    assert_eq!(on_c.text().await, "batch c");

    on_a.send_text("read me").await;
    match api_b
        .read(pb::ReadRequest {
            ack: None,
            session_id: on_a.id.clone(),
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
        R::Message(m) => assert_eq!(text_of(&m), "read me"),
        other => panic!("{other:?}"),
    }

    // Attach through B: messages flow both ways through the relay.
    let (tx, reqs) = mpsc::channel(8);
    tx.send(pb::AttachRequest {
        kind: Some(Req::Open(pb::AttachOpen {
            session_id: on_a.id.clone(),
            take_over: false,
            manual_ack: false,
        })),
    })
    .await
    .unwrap();
    let mut stream = api_b
        .attach(ReceiverStream::new(reqs))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        within("attached", stream.message())
            .await
            .unwrap()
            .unwrap()
            .kind,
        Some(Resp::Attached(_))
    ));
    on_a.send_text("to the attached backend").await;
    match within("message", stream.message())
        .await
        .unwrap()
        .unwrap()
        .kind
    {
        Some(Resp::Message(m)) => assert_eq!(text_of(&m), "to the attached backend"),
        other => panic!("{other:?}"),
    }
    tx.send(pb::AttachRequest {
        kind: Some(Req::Write(pb::Message {
            payload: Some(Payload::Text("written via b".into())),
        })),
    })
    .await
    .unwrap();
    assert_eq!(on_a.text().await, "written via b");
    drop(tx);
    drop(stream);

    // Group membership and close, through C.
    api_c
        .join_group(pb::JoinGroupRequest {
            session_id: on_a.id.clone(),
            group: "g".into(),
        })
        .await
        .unwrap();
    let listed = api_b
        .list_sessions(pb::ListSessionsRequest {
            hub: "h".into(),
            group: "g".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.sessions.len(), 1);
    api_c
        .close(pb::CloseRequest {
            session_id: on_a.id.clone(),
            code: 4010,
            reason: "closed via c".into(),
        })
        .await
        .unwrap();
    assert_eq!(on_a.closed().await, (4010, "closed via c".into()));
}

#[tokio::test]
async fn any_node_reaches_a_session_on_another_node() {
    let redis = Redis::start().await;
    cross_node_operations(redis.url()).await;
}

#[tokio::test]
async fn any_node_reaches_a_session_on_another_node_with_redis_cluster() {
    let redis = RedisCluster::start().await;
    cross_node_operations(redis.url()).await;
}

async fn publish_across_nodes(url: String) {
    let gws = nodes(&url, 3).await;
    let mut api = gws[1].api().await;
    // A group with two members on every node.
    let mut members = Vec::new();
    for gw in &gws {
        for _ in 0..2 {
            let c = gw.connect("h").await;
            api.join_group(pb::JoinGroupRequest {
                session_id: c.id.clone(),
                group: "g".into(),
            })
            .await
            .unwrap();
            members.push(c);
        }
    }
    let r = api
        .publish(pb::PublishRequest {
            target: Some(pb::Target {
                kind: Some(T::Group(pb::GroupTarget {
                    hub: "h".into(),
                    group: "g".into(),
                })),
            }),
            exclude: vec![],
            message: text("to the group"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.queued, 6);
    assert!(r.unreachable_nodes.is_empty());
    // An explicit list spanning the nodes, with one excluded.
    let ids: Vec<String> = members.iter().map(|c| c.id.clone()).collect();
    let r = api
        .publish(pb::PublishRequest {
            target: Some(pb::Target {
                kind: Some(T::Sessions(pb::SessionList {
                    session_ids: ids.clone(),
                })),
            }),
            exclude: vec![ids[0].clone()],
            message: text("to the list"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.queued, 5);
    for (i, c) in members.iter_mut().enumerate() {
        assert_eq!(c.text().await, "to the group");
        if i != 0 {
            assert_eq!(c.text().await, "to the list");
        }
    }
    // Exactly once: a marker sent after both shows nothing else was queued in between.
    for c in &members {
        send(&mut api, &c.id, "marker").await.unwrap();
    }
    for c in members.iter_mut() {
        assert_eq!(c.text().await, "marker", "a member got a publish twice");
    }

    // Hub-wide to 3 x 500 sessions.
    let mut crowd = Vec::new();
    for gw in &gws {
        crowd.extend(join_all((0..500).map(|_| gw.connect("crowd"))).await);
    }
    let r = gws[2]
        .api()
        .await
        .publish(pb::PublishRequest {
            target: Some(pb::Target {
                kind: Some(T::Hub("crowd".into())),
            }),
            exclude: vec![],
            message: text("to everyone"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.queued, 1500);
    let got = join_all(crowd.iter_mut().map(|c| c.text())).await;
    assert!(got.iter().all(|t| t == "to everyone"));
    // Exactly once, on every node: a marker sent after (one batch, split by owner) shows
    // nothing else was queued in between.
    let items = crowd
        .iter()
        .map(|c| pb::SendRequest {
            session_id: c.id.clone(),
            message: text("marker"),
            ..Default::default()
        })
        .collect();
    let results = api
        .send_batch(pb::SendBatchRequest { items })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), crowd.len());
    assert!(results.iter().all(|r| r.code == 0), "every marker queued");
    let got = join_all(crowd.iter_mut().map(|c| c.text())).await;
    let twice = got.iter().filter(|t| *t != "marker").count();
    assert_eq!(twice, 0, "{twice} sessions got the hub-wide publish twice");
}

#[tokio::test]
async fn publish_reaches_every_node_holding_a_target_once() {
    let redis = Redis::start().await;
    publish_across_nodes(redis.url()).await;
}

#[tokio::test]
async fn publish_reaches_every_node_holding_a_target_once_with_redis_cluster() {
    let redis = RedisCluster::start().await;
    publish_across_nodes(redis.url()).await;
}

async fn dead_node_vanishes(url: String) {
    let mut gws = nodes(&url, 3).await;
    let mut api_a = gws[0].api().await;
    let mut api_c = gws[2].api().await;
    // Two consumer groups: "workers" with a member on A and one on C, "audit" on C.
    let mut streams = Vec::new();
    for (node, group) in [(0, "workers"), (2, "workers"), (2, "audit")] {
        let s = gws[node]
            .api()
            .await
            .subscribe(pb::SubscribeRequest {
                hub: "h".into(),
                kinds: vec![pb::EventKind::Disconnected as i32],
                consumer_group: group.into(),
            })
            .await
            .unwrap()
            .into_inner();
        streams.push((group, s));
    }
    // The members are registered before any session of B exists, so B routes to them.
    let doomed: Vec<Client> = join_all((0..20).map(|_| gws[1].connect("h"))).await;
    let survivor = gws[0].connect("h").await;
    let ids: HashSet<String> = doomed.iter().map(|c| c.id.clone()).collect();

    gws[1].signal("KILL");
    gws[1].wait().await;

    // Each group hears of every lost session exactly once.
    let (tx, mut rx) = mpsc::channel(64);
    for (group, mut s) in streams {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(e)) = s.message().await {
                if let Some(Ev::Disconnected(c)) = &e.kind {
                    let _ = tx.send((group, e.session_id.clone(), c.closed_by)).await;
                }
            }
        });
    }
    drop(tx);
    let mut seen: HashMap<&str, Vec<String>> = HashMap::new();
    while seen.values().map(Vec::len).sum::<usize>() < 2 * ids.len() {
        let (group, id, by) = within("node-lost events", rx.recv()).await.unwrap();
        assert_eq!(by, pb::Closer::NodeLost as i32);
        seen.entry(group).or_default().push(id);
    }
    // Keep listening until a quiet period: a late duplicate must count too. Bounded: past
    // twice the expected total the counts below fail anyway.
    while seen.values().map(Vec::len).sum::<usize>() < 4 * ids.len() {
        let Ok(next) = tokio::time::timeout(QUIET, rx.recv()).await else {
            break;
        };
        let (group, id, by) = next.unwrap();
        assert_eq!(by, pb::Closer::NodeLost as i32);
        seen.entry(group).or_default().push(id);
    }
    for group in ["workers", "audit"] {
        let got = &seen[group];
        let unique: HashSet<_> = got.iter().cloned().collect();
        assert_eq!(unique, ids, "{group} heard of each lost session");
        assert_eq!(got.len(), ids.len(), "{group} heard of each exactly once");
    }
    // Gone from every listing and lookup, on every surviving node.
    for api in [&mut api_a, &mut api_c] {
        let listed = api
            .list_sessions(pb::ListSessionsRequest {
                hub: "h".into(),
                page_size: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let listed: Vec<_> = listed
            .sessions
            .iter()
            .map(|s| s.session_id.clone())
            .collect();
        assert_eq!(listed, vec![survivor.id.clone()]);
        for id in &ids {
            let err = send(api, id, "anyone?").await.unwrap_err();
            assert_eq!(err.code(), Code::NotFound);
        }
        let states = api
            .check_sessions(pb::CheckSessionsRequest {
                session_ids: ids.iter().cloned().collect(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(states
            .sessions
            .iter()
            .all(|s| s.state == pb::SessionState::Closed as i32));
    }
}

#[tokio::test]
async fn a_killed_nodes_sessions_vanish_and_subscribers_hear_once_per_group() {
    let redis = Redis::start().await;
    dead_node_vanishes(redis.url()).await;
}

#[tokio::test]
async fn a_killed_nodes_sessions_vanish_with_redis_cluster() {
    let redis = RedisCluster::start().await;
    dead_node_vanishes(redis.url()).await;
}

#[tokio::test]
async fn a_redis_outage_keeps_local_sessions_working_and_the_registry_converges() {
    let mut redis = Redis::start().await;
    let url = redis.url();
    let gws = nodes(&url, 2).await;
    let mut on_a = gws[0].connect("h").await;
    let on_b = gws[1].connect("h").await;
    let mut api_a = gws[0].api().await;

    redis.stop().await;
    // Local sends keep working.
    send(&mut api_a, &on_a.id, "still here").await.unwrap();
    assert_eq!(on_a.text().await, "still here");
    // Cross-node sends fail fast and say why.
    let err = send(&mut api_a, &on_b.id, "across").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    // Readiness reports the registry as degraded (it learns so from the failed calls).
    assert_eq!(gws[0].http_get("/readyz").await.0, 503);
    // New clients are still admitted locally (the default policy).
    let late = gws[0].connect("h").await;

    redis.restart_empty().await;
    // Within a few lease refreshes every live session is registered again.
    let want: HashSet<String> = [&on_a.id, &on_b.id, &late.id]
        .into_iter()
        .cloned()
        .collect();
    let mut rounds = 0;
    loop {
        let listed = api_a
            .list_sessions(pb::ListSessionsRequest {
                hub: "h".into(),
                ..Default::default()
            })
            .await;
        if let Ok(l) = listed {
            let got: HashSet<String> = l
                .into_inner()
                .sessions
                .into_iter()
                .map(|s| s.session_id)
                .collect();
            if got == want {
                break;
            }
        }
        rounds += 1;
        assert!(rounds < 200, "the registry never converged");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(gws[0].http_get("/readyz").await.0, 200);
    send(&mut api_a, &on_b.id, "across again").await.unwrap();
}

#[tokio::test]
async fn no_key_is_left_behind_after_clean_shutdown() {
    let redis = Redis::start().await;
    let mut gws = nodes(&redis.url(), 2).await;
    let mut api = gws[0].api().await;
    let mut clients = Vec::new();
    for gw in &gws {
        for _ in 0..5 {
            let c = gw.connect("h").await;
            api.join_group(pb::JoinGroupRequest {
                session_id: c.id.clone(),
                group: "g".into(),
            })
            .await
            .unwrap();
            clients.push(c);
        }
    }
    let _sub = api
        .subscribe(pb::SubscribeRequest {
            hub: "h".into(),
            kinds: vec![],
            consumer_group: "workers".into(),
        })
        .await
        .unwrap();
    for c in clients {
        c.close(1000, "").await;
    }
    drop(_sub);
    drop(api);
    for gw in &mut gws {
        gw.signal("TERM");
        assert!(gw.wait().await.success());
    }
    let keys = redis.cli(&["--scan", "--pattern", "t:*"]).await;
    // What remains is only tombstones of closed sessions, which expire on their own.
    for k in &keys {
        assert!(k.starts_with("t:closed:"), "left behind: {k}");
        let ttl: i64 = redis.cli(&["ttl", k]).await[0].parse().unwrap();
        assert!(ttl > 0, "{k} has no expiry");
    }
    assert_eq!(keys.len(), 10);
}

#[tokio::test]
async fn subscribers_on_any_node_share_a_hubs_events_across_the_cluster() {
    let redis = Redis::start().await;
    let gws = nodes(&redis.url(), 3).await;
    // Group "w": one member on A, one on C. Group "all": one member on B.
    let mut streams = Vec::new();
    for (node, group) in [(0, "w"), (2, "w"), (1, "all")] {
        let s = gws[node]
            .api()
            .await
            .subscribe(pb::SubscribeRequest {
                hub: "h".into(),
                kinds: vec![],
                consumer_group: group.into(),
            })
            .await
            .unwrap()
            .into_inner();
        streams.push((node, group, s));
    }
    const N: usize = 30;
    let (tx, mut rx) = mpsc::channel(256);
    for (node, group, mut s) in streams {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(e)) = s.message().await {
                let kind = match e.kind {
                    Some(Ev::Connected(_)) => 0,
                    Some(Ev::Message(_)) => 1,
                    Some(Ev::Disconnected(_)) => 2,
                    Some(Ev::Suspended(_) | Ev::Resumed(_)) | None => 3,
                };
                let _ = tx.send((node, group, e.session_id, kind)).await;
            }
        });
    }
    drop(tx);
    // Sessions on every node: connect, say something, leave.
    for i in 0..N {
        let mut c = gws[i % 3].connect("h").await;
        c.send_text("hi").await;
        c.close(1000, "").await;
    }
    let mut by_group: HashMap<&str, Vec<(usize, String, u8)>> = HashMap::new();
    while by_group.values().map(Vec::len).sum::<usize>() < 2 * 3 * N {
        let (node, group, id, kind) = within("events", rx.recv()).await.unwrap();
        by_group.entry(group).or_default().push((node, id, kind));
    }
    // Keep listening until a quiet period, so a late duplicate fails the counts below.
    // Bounded: past twice the expected total they fail anyway.
    while by_group.values().map(Vec::len).sum::<usize>() < 2 * 2 * 3 * N {
        let Ok(next) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await else {
            break;
        };
        let (node, group, id, kind) = next.unwrap();
        by_group.entry(group).or_default().push((node, id, kind));
    }
    for group in ["w", "all"] {
        let events = &by_group[group];
        let unique: HashSet<(String, u8)> =
            events.iter().map(|(_, id, k)| (id.clone(), *k)).collect();
        assert_eq!(unique.len(), 3 * N, "{group}: every event once");
        assert_eq!(events.len(), 3 * N, "{group}: no duplicates");
        let mut owner: HashMap<&str, usize> = HashMap::new();
        for (node, id, _) in events {
            let prev = owner.insert(id, *node);
            assert!(
                prev.is_none() || prev == Some(*node),
                "{group}: a session's events were split"
            );
        }
    }
    let members: HashSet<usize> = by_group["w"].iter().map(|(n, _, _)| *n).collect();
    assert_eq!(members, HashSet::from([0, 2]), "both members of w got work");
}

/// Runs the gateway binary with `args` until it exits; returns its status and stderr.
async fn run_to_exit(args: &[&str]) -> (std::process::ExitStatus, String) {
    let out = within(
        "the gateway to refuse its configuration",
        tokio::process::Command::new(switchboard_tests::gateway::gateway_bin())
            .args(["--listen", "127.0.0.1:0", "--backend-listen", "127.0.0.1:0"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run the gateway");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_redis_url_of_the_wrong_kind_is_refused_at_start() {
    // A node of a Redis Cluster behind redis:// would answer MOVED to most registry writes.
    let cluster = RedisCluster::start().await;
    let seed = cluster.url();
    let seed = seed
        .trim_start_matches("redis+cluster://")
        .split(',')
        .next()
        .expect("a seed")
        .to_owned();
    let (status, stderr) = run_to_exit(&["--redis-url", &format!("redis://{seed}")]).await;
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("use redis+cluster://{seed}")),
        "{stderr}"
    );
    // And the reverse: a single server behind redis+cluster://.
    let single = Redis::start().await;
    let port = single.port();
    let (status, stderr) =
        run_to_exit(&["--redis-url", &format!("redis+cluster://127.0.0.1:{port}")]).await;
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("use redis://127.0.0.1:{port}")),
        "{stderr}"
    );
}
