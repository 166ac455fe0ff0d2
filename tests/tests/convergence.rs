//! The registry converges: whatever happens to a client, a node or Redis, every open session
//! ends up registered exactly once and nothing else is. Real gateway processes, a real
//! redis-server, real sockets.

use std::{
    collections::{BTreeSet, HashSet},
    net::SocketAddr,
    time::Duration,
};

use futures_util::{future::join_all, stream, StreamExt};
use switchboard_proto::v1::{self as pb, message::Payload, target::Kind as T};
use switchboard_tests::{
    gateway::{Api, Gateway},
    holder::Holder,
    redis::Redis,
    within,
    ws::Client,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const PREFIX: &str = "t";

async fn node(redis: &Redis, id: &str, extra: &[&str]) -> Gateway {
    let url = redis.url();
    let mut args = vec![
        "--redis-url",
        &url,
        "--node-id",
        id,
        "--redis-prefix",
        PREFIX,
    ];
    args.extend_from_slice(extra);
    Gateway::start(&args).await
}

fn text(s: &str) -> Option<pb::Message> {
    Some(pb::Message {
        payload: Some(Payload::Text(s.into())),
    })
}

fn hub(h: &str) -> Option<pb::Target> {
    Some(pb::Target {
        kind: Some(T::Hub(h.into())),
    })
}

async fn publish(api: &mut Api, target: Option<pb::Target>, s: &str) -> pb::PublishResponse {
    api.publish(pb::PublishRequest {
        target,
        exclude: vec![],
        message: text(s),
        ..Default::default()
    })
    .await
    .expect("publish")
    .into_inner()
}

/// A gauge or counter from `/metrics` (the first sample of that name).
async fn metric(gw: &Gateway, name: &str) -> f64 {
    gw.metric(name)
        .await
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Polls `check` until it holds, for at most `limit` (nothing to await from outside: the
/// state lives in another process and in Redis).
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match check().await {
            Ok(()) => return,
            Err(why) if tokio::time::Instant::now() >= deadline => {
                panic!("{what}: not within {limit:?}: {why}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn session_keys(redis: &Redis) -> BTreeSet<String> {
    redis
        .cli(&["--scan", "--pattern", &format!("{PREFIX}:session:*")])
        .await
        .into_iter()
        .filter_map(|k| {
            k.strip_prefix(&format!("{PREFIX}:session:"))
                .map(str::to_owned)
        })
        .collect()
}

async fn node_index(redis: &Redis, node: &str) -> BTreeSet<String> {
    redis
        .cli(&["ZRANGE", &format!("{PREFIX}:idx:node:{node}"), "0", "-1"])
        .await
        .into_iter()
        .collect()
}

/// Every session the node holds is registered, indexed under it, and nothing else is.
async fn registry_matches(
    redis: &Redis,
    node: &str,
    open: &BTreeSet<String>,
) -> Result<(), String> {
    let keys = session_keys(redis).await;
    let index = node_index(redis, node).await;
    if &keys == open && &index == open {
        Ok(())
    } else {
        Err(format!(
            "open {}, records {} ({} extra, {} missing), index {}",
            open.len(),
            keys.len(),
            keys.difference(open).count(),
            open.difference(&keys).count(),
            index.len()
        ))
    }
}

#[derive(Clone, Copy)]
enum Abort {
    /// The request, then `shutdown(SHUT_WR)`: the client says it has no more to send.
    HalfClose,
    /// The request, then a reset (`SO_LINGER` 0 and close).
    Reset,
}

/// Sends a valid upgrade request and walks away in the way given.
async fn abort_upgrade(addr: SocketAddr, how: Abort) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return;
    };
    let req = format!(
        "GET /ws/h HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return;
    }
    match how {
        Abort::HalfClose => {
            let _ = s.shutdown().await;
            // Whatever the gateway answers, the client reads to the end and goes.
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await;
        }
        Abort::Reset => {
            let _ = s.set_zero_linger();
            drop(s);
        }
    }
}

async fn aborted_upgrades_leave_nothing(pause_redis: bool) {
    let redis = Redis::start().await;
    let gw = node(&redis, "node-a", &[]).await;
    let addr = gw.client_addr;
    for how in [Abort::HalfClose, Abort::Reset] {
        let aborts = stream::iter(0..2_000).for_each_concurrent(100, |_| abort_upgrade(addr, how));
        if pause_redis {
            // Registry writes stall for a second in the middle of the aborts.
            let stall = async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                redis.pause();
                tokio::time::sleep(Duration::from_secs(1)).await;
                redis.resume();
            };
            within("2,000 aborted upgrades", async {
                tokio::join!(aborts, stall)
            })
            .await;
        } else {
            within("2,000 aborted upgrades", aborts).await;
        }
    }
    eventually(
        "no session left open or registered",
        Duration::from_secs(10),
        || async {
            let open = metric(&gw, "switchboard_sessions_open").await;
            let keys = session_keys(&redis).await;
            let index = node_index(&redis, "node-a").await;
            if open == 0.0 && keys.is_empty() && index.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{open} open, {} records, {} indexed",
                    keys.len(),
                    index.len()
                ))
            }
        },
    )
    .await;
    // The node still admits and registers a real client.
    let c = gw.connect("h").await;
    let want: BTreeSet<String> = [c.id.clone()].into();
    eventually("the new client registered", Duration::from_secs(5), || {
        registry_matches(&redis, "node-a", &want)
    })
    .await;
}

#[tokio::test]
async fn aborted_upgrades_leave_no_session_behind() {
    aborted_upgrades_leave_nothing(false).await;
}

#[tokio::test]
async fn aborted_upgrades_leave_no_session_behind_while_redis_stalls() {
    aborted_upgrades_leave_nothing(true).await;
}

/// Connects `n` clients to `gw` and has each join `group` through `api`, all at once.
async fn group_members(gw: &Gateway, api: &Api, n: usize, group: &str) -> Vec<Client> {
    let clients = join_all((0..n).map(|_| gw.connect("h"))).await;
    join_all(clients.iter().map(|c| {
        let mut api = api.clone();
        async move {
            api.join_group(pb::JoinGroupRequest {
                session_id: c.id.clone(),
                group: group.into(),
            })
            .await
            .expect("join group")
        }
    }))
    .await;
    clients
}

/// Each client receives `want` next, and then nothing but the marker.
async fn each_gets_once(clients: &mut [Client], want: &str, api: &mut Api) {
    for c in clients.iter_mut() {
        assert_eq!(c.text().await, want, "session {}", c.id);
    }
    for c in clients.iter() {
        api.send(pb::SendRequest {
            session_id: c.id.clone(),
            message: text("marker"),
            ..Default::default()
        })
        .await
        .expect("marker");
    }
    for c in clients.iter_mut() {
        assert_eq!(c.text().await, "marker", "a duplicate reached {}", c.id);
    }
}

#[tokio::test]
async fn a_publish_right_after_nodes_start_reaches_every_node() {
    let redis = Redis::start().await;
    // Default leases: a node would learn another only at its next refresh, seconds later.
    let gws = join_all(["node-a", "node-b", "node-c"].map(|id| node(&redis, id, &[]))).await;
    let mut api_a = gws[0].api().await;
    let members = join_all(gws.iter().map(|gw| group_members(gw, &api_a, 20, "g"))).await;
    let mut members: Vec<Client> = members.into_iter().flatten().collect();
    let group = Some(pb::Target {
        kind: Some(T::Group(pb::GroupTarget {
            hub: "h".into(),
            group: "g".into(),
        })),
    });
    // From every node: whichever pair of nodes started in whichever order.
    for (i, gw) in gws.iter().enumerate() {
        let mut api = gw.api().await;
        let r = publish(&mut api, group.clone(), &format!("to the group {i}")).await;
        assert_eq!(
            (r.queued, r.unreachable_nodes.len()),
            (60, 0),
            "via {i}: {r:?}"
        );
        let r = publish(&mut api, hub("h"), &format!("to the hub {i}")).await;
        assert_eq!(
            (r.queued, r.unreachable_nodes.len()),
            (60, 0),
            "via {i}: {r:?}"
        );
    }
    for c in members.iter_mut() {
        for i in 0..2 {
            assert_eq!(
                c.text().await,
                format!("to the group {i}"),
                "session {}",
                c.id
            );
            assert_eq!(
                c.text().await,
                format!("to the hub {i}"),
                "session {}",
                c.id
            );
        }
        assert_eq!(c.text().await, "to the group 2", "session {}", c.id);
    }
    each_gets_once(&mut members, "to the hub 2", &mut api_a).await;
}

#[tokio::test]
async fn a_node_started_while_publishes_flow_is_reached_once_ready() {
    let redis = Redis::start().await;
    let a = node(&redis, "node-a", &[]).await;
    let b = node(&redis, "node-b", &[]).await;
    let mut on_b = b.connect("h").await;
    // Hub publishes flow through A (bounded) while C starts.
    let flow = {
        let mut api = a.api().await;
        tokio::spawn(async move {
            for i in 0..1_000 {
                let _ = api
                    .publish(pb::PublishRequest {
                        target: hub("h"),
                        exclude: vec![],
                        message: text(&format!("flow {i}")),
                        ..Default::default()
                    })
                    .await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let c = node(&redis, "node-c", &[]).await;
    let mut on_c = c.connect("h").await;
    // Every publish from now on reaches the session on the new node, wherever it is sent.
    let mut api_a = a.api().await;
    let mut api_b = b.api().await;
    for i in 0..20 {
        let api = if i % 2 == 0 { &mut api_a } else { &mut api_b };
        let r = publish(api, hub("h"), &format!("after {i}")).await;
        assert_eq!(
            (r.queued, r.unreachable_nodes.len()),
            (2, 0),
            "publish {i}: {r:?}"
        );
    }
    let mut seen = Vec::new();
    while seen.len() < 20 {
        let t = on_c.text().await;
        if t.starts_with("after ") {
            seen.push(t);
        }
    }
    assert_eq!(
        seen,
        (0..20).map(|i| format!("after {i}")).collect::<Vec<_>>()
    );
    within("the flow of publishes to end", flow)
        .await
        .expect("publisher task");
    drop(c);
    let mut after = 0;
    while after < 20 {
        if on_b.text().await.starts_with("after ") {
            after += 1;
        }
    }
}

#[tokio::test]
async fn registry_writes_lost_during_an_outage_are_repaired() {
    let redis = Redis::start().await;
    let gw = node(&redis, "node-a", &["--reconcile-interval", "2s"]).await;
    let mut clients: Vec<Client> = join_all((0..20).map(|_| gw.connect("h"))).await;

    // Phase 1: Redis frozen while clients come and go.
    redis.pause();
    let mut late: Vec<Client> = join_all((0..10).map(|_| gw.connect("h"))).await;
    for c in clients.drain(..10) {
        c.close(1000, "bye").await;
    }
    redis.resume();

    // Phase 2: Redis refuses writes (out of memory) while clients come and go.
    redis
        .cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .await;
    redis.cli(&["CONFIG", "SET", "maxmemory", "1"]).await;
    late.extend(join_all((0..10).map(|_| gw.connect("h"))).await);
    for c in late.drain(..5) {
        c.close(1000, "bye").await;
    }
    // A write is refused before Redis gets its memory back.
    let probe = redis.cli(&["SET", "probe", "x"]).await;
    assert!(probe.iter().any(|l| l.contains("OOM")), "{probe:?}");
    redis.cli(&["CONFIG", "SET", "maxmemory", "0"]).await;

    let open: BTreeSet<String> = clients
        .iter()
        .chain(late.iter())
        .map(|c| c.id.clone())
        .collect();
    assert_eq!(open.len(), 25);
    eventually(
        "the registry to match the open sessions",
        Duration::from_secs(30),
        || registry_matches(&redis, "node-a", &open),
    )
    .await;
    assert!(metric(&gw, "switchboard_registry_repairs_total").await > 0.0);
    // And it stays so: the sessions are usable through the registry from a second node.
    let b = node(&redis, "node-b", &[]).await;
    let mut api_b = b.api().await;
    let states = api_b
        .check_sessions(pb::CheckSessionsRequest {
            session_ids: open.iter().cloned().collect(),
        })
        .await
        .expect("check")
        .into_inner()
        .sessions;
    assert!(
        states
            .iter()
            .all(|s| s.state == pb::SessionState::Open as i32),
        "{states:?}"
    );
}

#[tokio::test]
async fn listing_goes_on_past_many_dead_entries() {
    let redis = Redis::start().await;
    let gw = node(&redis, "node-a", &[]).await;
    let clients: Vec<Client> = join_all((0..3).map(|_| gw.connect("h"))).await;
    // 500 index entries with no record (what a crash between writes could leave), all
    // sorting before any real ID, so a listing must read past them.
    let fakes: Vec<String> = (0..500)
        .map(|i| format!("----------------{i:05}A"))
        .collect();
    let mut args = vec!["ZADD".to_owned(), format!("{PREFIX}:idx:hub:h")];
    for f in &fakes {
        args.push("0".into());
        args.push(f.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    redis.cli(&args).await;

    let mut api = gw.api().await;
    let mut found = HashSet::new();
    let mut token = String::new();
    for _ in 0..1_000 {
        let page = api
            .list_sessions(pb::ListSessionsRequest {
                hub: "h".into(),
                page_size: 1,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        found.extend(page.sessions.into_iter().map(|s| s.session_id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let want: HashSet<String> = clients.iter().map(|c| c.id.clone()).collect();
    assert_eq!(found, want);
}

#[tokio::test]
async fn a_node_leaving_with_sessions_still_registered_is_reaped_not_forgotten() {
    let redis = Redis::start().await;
    let mut a = node(
        &redis,
        "node-a",
        &[
            "--lease-ttl",
            "2s",
            "--lease-refresh",
            "500ms",
            "--reconcile-interval",
            "3600s",
        ],
    )
    .await;
    let _b = node(
        &redis,
        "node-b",
        &["--lease-ttl", "2s", "--lease-refresh", "500ms"],
    )
    .await;
    // A record A's pool does not hold (as a failed unregister leaves it).
    let ghost = "GHOSTGHOSTGHOSTGHOST0A";
    redis
        .cli(&[
            "HSET",
            &format!("{PREFIX}:session:{ghost}"),
            "node",
            "node-a",
            "hub",
            "h",
        ])
        .await;
    redis
        .cli(&["ZADD", &format!("{PREFIX}:idx:node:node-a"), "0", ghost])
        .await;
    redis
        .cli(&["ZADD", &format!("{PREFIX}:idx:hub:h"), "0", ghost])
        .await;
    a.signal("TERM");
    assert!(a.wait().await.success());
    eventually(
        "the survivor to reap what A left",
        Duration::from_secs(20),
        || async {
            let keys = session_keys(&redis).await;
            let nodes = redis.cli(&["SMEMBERS", &format!("{PREFIX}:nodes")]).await;
            let hub = redis
                .cli(&["ZRANGE", &format!("{PREFIX}:idx:hub:h"), "0", "-1"])
                .await;
            if keys.is_empty() && hub.is_empty() && nodes == ["node-b"] {
                Ok(())
            } else {
                Err(format!(
                    "records {keys:?}, hub index {hub:?}, nodes {nodes:?}"
                ))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn reconciliation_repairs_more_entries_than_one_page_both_ways() {
    // Pages of 1,000: 2,500 held sessions, 1,500 of them stripped from Redis, and 1,500
    // records (with index entries) of sessions this node never held.
    let redis = Redis::start().await;
    let gw = node(
        &redis,
        "node-a",
        &[
            "--reconcile-interval",
            "1s",
            "--ping-interval",
            "5m",
            "--idle-timeout",
            "10m",
        ],
    )
    .await;
    let held = Holder::open(&gw.ws_url("h"), 2_500, 64).await;
    let open: BTreeSet<String> = held.ids.iter().cloned().collect();
    eventually("all 2,500 registered", Duration::from_secs(30), || {
        registry_matches(&redis, "node-a", &open)
    })
    .await;
    let stripped: Vec<&String> = open.iter().take(1_500).collect();
    let mut del = vec!["DEL".to_owned()];
    let mut zrem = vec!["ZREM".to_owned(), format!("{PREFIX}:idx:node:node-a")];
    for id in &stripped {
        del.push(format!("{PREFIX}:session:{id}"));
        zrem.push((*id).clone());
    }
    let ghosts: Vec<String> = (0..1_500).map(|i| format!("GHOST{i:016}A")).collect();
    let mut zadd = vec!["ZADD".to_owned(), format!("{PREFIX}:idx:node:node-a")];
    for g in &ghosts {
        zadd.push("0".into());
        zadd.push(g.clone());
    }
    // Records first, then their index entries: what failed unregisters leave behind.
    for g in &ghosts {
        redis
            .cli(&[
                "HSET",
                &format!("{PREFIX}:session:{g}"),
                "node",
                "node-a",
                "hub",
                "h",
            ])
            .await;
    }
    for args in [&del, &zrem, &zadd] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        redis.cli(&args).await;
    }
    eventually(
        "the registry to match the 2,500 open sessions again",
        Duration::from_secs(30),
        || registry_matches(&redis, "node-a", &open),
    )
    .await;
    assert!(metric(&gw, "switchboard_registry_repairs_total").await >= 3_000.0);
    held.release().await;
}
