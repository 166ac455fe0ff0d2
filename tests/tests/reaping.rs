//! Reaping of dead nodes at scale: real gateway processes sharing one real redis-server, a node
//! killed with SIGKILL while it holds thousands of sessions (held by `hold-sockets` processes),
//! and a survivor that must announce every lost session exactly once, leave nothing of the dead
//! node in Redis, and keep its own lease while it announces to a slow subscriber.
//!
//! The gateway does not raise its own open-file limit: a node holding 12,000 sessions needs a
//! soft `ulimit -n` above that (20,000 where these tests were written). The test process holds
//! none of those sockets; each `hold-sockets` process holds at most 6,000.

use std::{
    collections::{HashMap, HashSet},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use switchboard_proto::v1::{self as pb, event::Kind as Ev, message::Payload};
use switchboard_tests::{
    gateway::{Api, Gateway},
    holder::Holder,
    redis::Redis,
    within,
    ws::Client,
};
use tokio::sync::mpsc;

/// Short leases so a dead node is noticed within seconds.
const LEASE_TTL: Duration = Duration::from_secs(2);
const LEASE: &[&str] = &["--lease-ttl", "2s", "--lease-refresh", "500ms"];
/// After the expected count, this long without an event before "no duplicate" is believed.
const QUIET: Duration = Duration::from_secs(3 * LEASE_TTL.as_secs());
/// While still short of the expected count, this long without an event means no more come.
const STALL: Duration = Duration::from_secs(20);
const PREFIX: &str = "t";

/// A cluster node. Held clients never answer pings, so the idle timeout is out of the way.
async fn node(url: &str, id: &str, extra: &[&str]) -> Gateway {
    let mut args = vec![
        "--redis-url",
        url,
        "--node-id",
        id,
        "--redis-prefix",
        PREFIX,
    ];
    args.extend_from_slice(LEASE);
    args.extend_from_slice(&["--ping-interval", "5m", "--idle-timeout", "10m"]);
    args.extend_from_slice(extra);
    Gateway::start(&args).await
}

/// `count` sessions on `hub` of `gw`, held by `processes` hold-sockets processes.
async fn hold(gw: &Gateway, hub: &str, count: usize, processes: usize) -> Vec<Holder> {
    let url = gw.ws_url(hub);
    let each = count / processes;
    futures_util::future::join_all((0..processes).map(|i| {
        let n = if i + 1 == processes {
            count - each * (processes - 1)
        } else {
            each
        };
        let url = url.clone();
        async move { Holder::open(&url, n, 64).await }
    }))
    .await
}

async fn int(redis: &Redis, args: &[&str]) -> i64 {
    let out = redis.cli(args).await;
    out.first()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("redis-cli {args:?} answered {out:?}"))
}

/// How many `P:session:*` hashes name `node` as their owner (one server-side script, no scan
/// from the test).
async fn session_hashes_of(redis: &Redis, node: &str) -> i64 {
    let script = "local n = 0 \
        for _, k in ipairs(redis.call('KEYS', ARGV[1])) do \
          if redis.call('HGET', k, 'node') == ARGV[2] then n = n + 1 end \
        end \
        return n";
    let pattern = format!("{PREFIX}:session:*");
    int(redis, &["EVAL", script, "0", &pattern, node]).await
}

/// Every session `api` lists on `hub`, all pages.
async fn list_all(api: &mut Api, hub: &str, node: &str) -> Vec<String> {
    let mut all = Vec::new();
    let mut token = String::new();
    for _ in 0..1000 {
        let page = api
            .list_sessions(pb::ListSessionsRequest {
                hub: hub.into(),
                node: node.into(),
                page_size: 1000,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("list sessions")
            .into_inner();
        all.extend(page.sessions.into_iter().map(|s| s.session_id));
        if page.next_page_token.is_empty() {
            return all;
        }
        token = page.next_page_token;
    }
    panic!("ListSessions never reached its last page");
}

/// A `disconnected` event as the test sees it.
struct Lost {
    id: String,
    closed_by: i32,
}

/// Reads `disconnected` events of a Subscribe stream into a channel, pausing `pace` after each.
async fn subscribe_disconnects(
    api: &mut Api,
    hub: &str,
    group: &str,
    pace: Option<Duration>,
) -> mpsc::UnboundedReceiver<Lost> {
    let mut stream = api
        .subscribe(pb::SubscribeRequest {
            hub: hub.into(),
            kinds: vec![pb::EventKind::Disconnected as i32],
            consumer_group: group.into(),
        })
        .await
        .expect("subscribe")
        .into_inner();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(e)) = stream.message().await {
            if let Some(Ev::Disconnected(c)) = &e.kind {
                let lost = Lost {
                    id: e.session_id.clone(),
                    closed_by: c.closed_by,
                };
                if tx.send(lost).is_err() {
                    return;
                }
            }
            if let Some(p) = pace {
                tokio::time::sleep(p).await;
            }
        }
    });
    rx
}

/// What a subscriber heard: every event, in order of arrival.
struct Heard {
    events: Vec<Lost>,
    /// Whether `want` events had arrived before the stream stalled.
    reached: bool,
}

/// Collects events until `want` have arrived (or none came for [`STALL`]), then keeps
/// collecting until none came for [`QUIET`], so that a late duplicate is counted too.
async fn hear(rx: &mut mpsc::UnboundedReceiver<Lost>, want: usize) -> Heard {
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while events.len() < want && Instant::now() < deadline {
        match tokio::time::timeout(STALL, rx.recv()).await {
            Ok(Some(e)) => events.push(e),
            Ok(None) | Err(_) => break,
        }
    }
    let reached = events.len() >= want;
    while Instant::now() < deadline {
        match tokio::time::timeout(QUIET, rx.recv()).await {
            Ok(Some(e)) => events.push(e),
            Ok(None) | Err(_) => break,
        }
    }
    Heard { events, reached }
}

/// Whether the events name each of `ids` once, with reason "node lost", and nothing else.
fn check_once(heard: &Heard, ids: &HashSet<String>, problems: &mut Vec<String>) {
    let mut times: HashMap<&str, usize> = HashMap::new();
    for e in &heard.events {
        *times.entry(e.id.as_str()).or_default() += 1;
    }
    let distinct_expected = ids
        .iter()
        .filter(|id| times.contains_key(id.as_str()))
        .count();
    let twice = times.values().filter(|n| **n > 1).count();
    let strangers = times.keys().filter(|id| !ids.contains(**id)).count();
    let not_node_lost = heard
        .events
        .iter()
        .filter(|e| e.closed_by != pb::Closer::NodeLost as i32)
        .count();
    if !heard.reached || distinct_expected != ids.len() {
        let stalled = if heard.reached {
            String::new()
        } else {
            format!(", then none for {STALL:?}")
        };
        problems.push(format!(
            "heard of {distinct_expected} of the {} lost sessions ({} events in all{stalled})",
            ids.len(),
            heard.events.len()
        ));
    }
    if heard.events.len() != times.len() {
        problems.push(format!(
            "{} events for {} distinct sessions: {twice} sessions announced more than once",
            heard.events.len(),
            times.len()
        ));
    }
    if strangers > 0 {
        problems.push(format!(
            "{strangers} announced sessions were not the dead node's"
        ));
    }
    if not_node_lost > 0 {
        problems.push(format!("{not_node_lost} events not closed by NODE_LOST"));
    }
}

/// Whatever of `node` is left in Redis and in the survivor's listings.
async fn check_gone(
    redis: &Redis,
    survivor: &mut Api,
    hub: &str,
    node: &str,
    ids: &HashSet<String>,
    problems: &mut Vec<String>,
) {
    let hashes = session_hashes_of(redis, node).await;
    if hashes != 0 {
        problems.push(format!("{hashes} {PREFIX}:session:* hashes of {node} left"));
    }
    let index = format!("{PREFIX}:idx:node:{node}");
    let indexed = int(redis, &["ZCARD", &index]).await;
    if indexed != 0 {
        problems.push(format!("{index} still holds {indexed} sessions"));
    }
    let registered = int(redis, &["SISMEMBER", &format!("{PREFIX}:nodes"), node]).await;
    if registered != 0 {
        problems.push(format!("{node} is still in {PREFIX}:nodes"));
    }
    let hub_index = format!("{PREFIX}:idx:hub:{hub}");
    let in_hub = redis.cli(&["ZRANGE", &hub_index, "0", "-1"]).await;
    let in_hub = in_hub.iter().filter(|id| ids.contains(*id)).count();
    if in_hub != 0 {
        problems.push(format!(
            "{hub_index} still holds {in_hub} of {node}'s sessions"
        ));
    }
    let listed = list_all(survivor, hub, "").await;
    let listed = listed.iter().filter(|id| ids.contains(*id)).count();
    if listed != 0 {
        problems.push(format!("the survivor lists {listed} of {node}'s sessions"));
    }
    let by_node = list_all(survivor, "", node).await;
    if !by_node.is_empty() {
        problems.push(format!(
            "the survivor lists {} sessions on {node}",
            by_node.len()
        ));
    }
}

fn text(s: &str) -> Option<pb::Message> {
    Some(pb::Message {
        payload: Some(Payload::Text(s.into())),
    })
}

/// Each of `clients` still open: a send through `api` reaches it.
async fn still_open(api: &mut Api, clients: &mut [Client]) {
    for c in clients.iter_mut() {
        api.send(pb::SendRequest {
            session_id: c.id.clone(),
            message: text("still here?"),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("send to {}: {s}", c.id));
        assert_eq!(c.text().await, "still here?");
    }
}

/// 12,000 sessions (more than one bounded pass of the reaper) on a node killed with SIGKILL:
/// a consumer group on the survivor hears of each exactly once, and nothing of the dead node
/// is left in Redis or in the survivor's listings.
#[tokio::test]
async fn a_killed_node_with_12000_sessions_is_announced_once_each_and_fully_removed() {
    const N: usize = 12_000;
    let redis = Redis::start().await;
    let url = redis.url();
    let a = node(&url, "node-a", &[]).await;
    let mut b = node(&url, "node-b", &[]).await;
    let mut api_a = a.api().await;
    let mut rx = subscribe_disconnects(&mut api_a, "h", "audit", None).await;
    let mut own = vec![a.connect("h").await, a.connect("h").await];

    let holders = hold(&b, "h", N, 2).await;
    let ids: HashSet<String> = holders.iter().flat_map(|h| h.ids.iter().cloned()).collect();
    assert_eq!(ids.len(), N, "session IDs are distinct");
    let index = format!("{PREFIX}:idx:node:node-b");
    assert_eq!(int(&redis, &["ZCARD", &index]).await, N as i64);

    let killed = Instant::now();
    b.signal("KILL");
    b.wait().await;

    let heard = hear(&mut rx, N).await;
    let announced = killed.elapsed();
    let mut problems = Vec::new();
    check_once(&heard, &ids, &mut problems);
    check_gone(&redis, &mut api_a, "h", "node-b", &ids, &mut problems).await;
    let own_ids: HashSet<String> = own.iter().map(|c| c.id.clone()).collect();
    let listed: HashSet<String> = list_all(&mut api_a, "h", "").await.into_iter().collect();
    if listed != own_ids {
        problems.push(format!(
            "the survivor lists {} sessions on the hub, not just its own {}",
            listed.len(),
            own_ids.len()
        ));
    }
    eprintln!(
        "{N} lost sessions: {} events in {announced:?} after the kill",
        heard.events.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("; "));
    still_open(&mut api_a, &mut own).await;
    for h in holders {
        h.release().await;
    }
}

/// A survivor announcing 10,000 lost sessions to a slow subscriber (seconds of work) keeps
/// renewing its own lease meanwhile: its lease never lapses, a third node started meanwhile
/// never takes it for dead, its own sessions stay registered and open, and nobody hears that
/// they were lost.
#[tokio::test]
async fn a_survivor_busy_announcing_to_a_slow_subscriber_keeps_its_lease() {
    const N: usize = 10_000;
    let redis = Redis::start().await;
    let url = redis.url();
    // The slow member must not be cut off: it reads, just slowly.
    let a = node(&url, "node-a", &["--subscriber-timeout", "5m"]).await;
    let mut b = node(&url, "node-b", &[]).await;
    let mut api_a = a.api().await;
    // About one event per millisecond, through a small HTTP/2 window so that the gateway, not
    // the client's buffers, holds what is not read yet: 10,000 take several lease lifetimes.
    let mut slow = a.api_with_stream_window(4096).await;
    let mut rx =
        subscribe_disconnects(&mut slow, "h", "slow", Some(Duration::from_millis(1))).await;
    let mut own = vec![
        a.connect("h").await,
        a.connect("h").await,
        a.connect("h").await,
    ];
    let own_ids: HashSet<String> = own.iter().map(|c| c.id.clone()).collect();

    let holders = hold(&b, "h", N, 2).await;
    let ids: HashSet<String> = holders.iter().flat_map(|h| h.ids.iter().cloned()).collect();
    assert_eq!(ids.len(), N, "session IDs are distinct");
    assert_eq!(
        int(&redis, &["ZCARD", &format!("{PREFIX}:idx:node:node-b")]).await,
        N as i64
    );

    // Watch A's lease and its sessions' records every ~100 ms from the kill to the end.
    let lease = format!("{PREFIX}:node:node-a");
    let own_keys: Vec<String> = own_ids
        .iter()
        .map(|id| format!("{PREFIX}:session:{id}"))
        .collect();
    let stop = AtomicBool::new(false);
    let killed = Instant::now();
    let watch = async {
        let mut polls = 0u32;
        // (seconds after the kill, PTTL) of each poll that found the lease missing, and
        // (seconds, how many registered) of each that found an own session unregistered.
        let mut no_lease: Vec<(f64, i64)> = Vec::new();
        let mut unregistered: Vec<(f64, i64)> = Vec::new();
        let mut exists = vec!["EXISTS"];
        exists.extend(own_keys.iter().map(String::as_str));
        // Bounded: at most 6,000 polls (10 minutes).
        while !stop.load(Ordering::SeqCst) && polls < 6_000 {
            polls += 1;
            let pttl = int(&redis, &["PTTL", &lease]).await;
            let registered = int(&redis, &exists).await;
            let at = killed.elapsed().as_secs_f64();
            if pttl <= 0 {
                no_lease.push((at, pttl));
            }
            if registered != own_keys.len() as i64 {
                unregistered.push((at, registered));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (polls, no_lease, unregistered)
    };
    let work = async {
        b.signal("KILL");
        b.wait().await;
        // Once A is announcing (B is off the node set by then, and A holds its reap lock), a
        // third node joins: if A's lease lapses, C takes A for dead.
        let first = within("the first node-lost event", rx.recv())
            .await
            .expect("the subscription ended");
        let c = node(&url, "node-c", &[]).await;
        let mut heard = hear(&mut rx, N - 1).await;
        heard.events.insert(0, first);
        heard.reached = heard.events.len() >= N;
        stop.store(true, Ordering::SeqCst);
        (heard, c)
    };
    let ((polls, no_lease, unregistered), (heard, c)) = tokio::join!(watch, work);
    let mut api_c = c.api().await;
    let announced = killed.elapsed();

    let mut problems = Vec::new();
    if let (Some(first), Some(last)) = (no_lease.first(), no_lease.last()) {
        problems.push(format!(
            "node-a's lease was missing in {} of {polls} polls while it announced (PTTL {} at \
             {:.1}s after the kill, last at {:.1}s)",
            no_lease.len(),
            first.1,
            first.0,
            last.0
        ));
    }
    if let (Some(first), Some(last)) = (unregistered.first(), unregistered.last()) {
        problems.push(format!(
            "node-a's own sessions were unregistered in {} polls ({}/{} registered at {:.1}s, \
             last at {:.1}s)",
            unregistered.len(),
            first.1,
            own_keys.len(),
            first.0,
            last.0
        ));
    }
    let about_own = heard
        .events
        .iter()
        .filter(|e| own_ids.contains(&e.id))
        .count();
    if about_own > 0 {
        problems.push(format!(
            "{about_own} disconnected events for node-a's own live sessions"
        ));
    }
    let own_set: HashSet<String> = own_ids.clone();
    let mut of_b = Heard {
        events: Vec::new(),
        reached: heard.reached,
    };
    of_b.events = heard
        .events
        .into_iter()
        .filter(|e| !own_set.contains(&e.id))
        .collect();
    check_once(&of_b, &ids, &mut problems);
    for (name, api) in [("node-a", &mut api_a), ("node-c", &mut api_c)] {
        let listed: HashSet<String> = list_all(api, "h", "").await.into_iter().collect();
        if listed != own_ids {
            problems.push(format!(
                "{name} lists {} sessions on the hub ({} of node-a's 3)",
                listed.len(),
                listed.intersection(&own_ids).count()
            ));
        }
    }
    eprintln!(
        "{N} lost sessions to a slow subscriber: {} events in {announced:?}, {polls} lease polls",
        of_b.events.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("; "));
    still_open(&mut api_a, &mut own).await;
    for h in holders {
        h.release().await;
    }
}
