//! Chaos: reliable sessions under steady traffic both ways while things fail, on three real
//! gateway nodes sharing a real redis-server. Each run counts every message at both ends and
//! checks, after a quiet period, that each arrived exactly once and in order: gateway → client
//! at the application (after the client's de-duplication), client → backend as `Read` returns
//! them (after the gateway's).
//!
//! The CI variant is small (`SESSIONS` × `MESSAGES`); `SWITCHBOARD_CHAOS=long` runs 50 sessions
//! × 2,000 messages each way (README, "Chaos").
//!
//! Plain sessions on the same nodes get honest answers: a closed connection, and a
//! `disconnected` event, never a silent gap.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use switchboard_proto::v1::{
    self as pb, event::Kind as Ev, gateway_client::GatewayClient, message::Payload as PbPayload,
    read_response::Result as R,
};
use switchboard_sdk::reliable::{ClientEvent, Config, Payload, ReliableClient, State};
use switchboard_tests::{
    gateway::Gateway,
    redis::{free_port, Redis},
    within,
    ws::{Client, Seen},
};
use tokio::{sync::mpsc, task::JoinSet};
use tonic::transport::Channel;

/// What each backend reader was last doing (for a report when a run stalls).
static READS: std::sync::LazyLock<std::sync::Mutex<HashMap<String, ReaderState>>> =
    std::sync::LazyLock::new(Default::default);

/// First client seq missing, node called, last outcome.
type ReaderState = (usize, usize, &'static str);

/// One test at a time: nodes restart on fixed ports, which a test running beside could take
/// in between.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Nodes in every run.
const NODES: usize = 3;
/// After the last expected message, this long without another one before "exactly once" is
/// believed.
const QUIET: Duration = Duration::from_secs(1);
fn long() -> bool {
    std::env::var("SWITCHBOARD_CHAOS").as_deref() == Ok("long")
}

fn scale() -> (usize, u64) {
    if long() {
        (50, 2_000)
    } else {
        (8, 150)
    }
}

/// How long a whole run may take before it is a failure.
fn run_limit() -> Duration {
    Duration::from_secs(if long() { 1_800 } else { 240 })
}

/// Three nodes on fixed addresses, so a node restarted by a test comes back where its clients
/// look for it.
struct Cluster {
    redis: Redis,
    nodes: Vec<Option<Gateway>>,
    addrs: Vec<(u16, u16)>,
    apis: Vec<GatewayClient<Channel>>,
}

impl Cluster {
    async fn start() -> Cluster {
        let redis = Redis::start().await;
        let addrs: Vec<(u16, u16)> = (0..NODES).map(|_| (free_port(), free_port())).collect();
        let apis = addrs
            .iter()
            .map(|(_, b)| {
                let ch = Channel::from_shared(format!("http://127.0.0.1:{b}"))
                    .expect("url")
                    .connect_timeout(Duration::from_secs(1))
                    .timeout(Duration::from_secs(5))
                    .connect_lazy();
                GatewayClient::new(ch)
            })
            .collect();
        let mut c = Cluster {
            redis,
            nodes: (0..NODES).map(|_| None).collect(),
            addrs,
            apis,
        };
        for i in 0..NODES {
            c.start_node(i).await;
        }
        c
    }

    async fn start_node(&mut self, i: usize) {
        let (client, backend) = self.addrs[i];
        let listen = format!("127.0.0.1:{client}");
        let backend_listen = format!("127.0.0.1:{backend}");
        let url = self.redis.url();
        let id = format!("chaos-{i}");
        let args = [
            "--listen",
            &listen,
            "--backend-listen",
            &backend_listen,
            "--redis-url",
            &url,
            "--redis-prefix",
            "chaos",
            "--node-id",
            &id,
            "--lease-ttl",
            "2s",
            "--lease-refresh",
            "500ms",
            "--resume-buffer",
            "100000",
            "--shutdown-grace",
            "5s",
            "--slow-consumer-grace",
            "1s",
        ];
        self.nodes[i] = Some(Gateway::start(&args).await);
    }

    fn urls(&self, first: usize) -> Vec<String> {
        (0..NODES)
            .map(|k| format!("ws://127.0.0.1:{}", self.addrs[(first + k) % NODES].0))
            .collect()
    }

    fn node(&self, i: usize) -> &Gateway {
        self.nodes[i].as_ref().expect("node running")
    }
}

/// What one run saw, for its checks and its report.
#[derive(Default)]
struct Tally {
    /// Gateway → client messages the applications got, per session, in arrival order.
    to_clients: HashMap<String, Vec<(u64, String)>>,
    /// Client → backend messages backends read, per session: client seqs in arrival order.
    to_backends: HashMap<String, Vec<u64>>,
    client_duplicates_dropped: u64,
    resumes: u64,
    resets: u64,
}

/// One reliable client and its application: sends `i:1..=m`, expects `o:1..=m` in order.
struct App {
    client: ReliableClient,
    session: String,
    got: tokio::task::JoinHandle<Vec<(u64, String)>>,
    /// Messages the application has had so far (for a report when a run stalls).
    seen: Arc<AtomicU64>,
}

async fn open_app(urls: Vec<String>, m: u64) -> App {
    let (client, mut events) = ReliableClient::connect(Config::new(urls, "c"));
    let session = within("the first welcome", async {
        loop {
            match events.recv().await {
                Some(ClientEvent::State(State::Open { session, .. })) => return session,
                Some(_) => continue,
                None => panic!("client ended before its welcome"),
            }
        }
    })
    .await;
    let sender = client.clone();
    tokio::spawn(async move {
        for i in 1..=m {
            sender.send_text(format!("i:{i}")).await.expect("send");
        }
    });
    let seen = Arc::new(AtomicU64::new(0));
    let seen_by_app = Arc::clone(&seen);
    let got = tokio::spawn(async move {
        let seen = seen_by_app;
        let mut got = Vec::new();
        // Everything expected, then a quiet period in which nothing more may come.
        while (got.len() as u64) < m {
            match events.recv().await {
                Some(ClientEvent::Message {
                    seq,
                    payload: Payload::Text(t),
                }) => {
                    got.push((seq, t));
                    seen.store(got.len() as u64, Relaxed);
                }
                Some(ClientEvent::Reset { old_session }) => {
                    panic!("session {old_session} was lost")
                }
                Some(_) => continue,
                None => panic!("client ended"),
            }
        }
        let late = tokio::time::timeout(QUIET, async {
            loop {
                match events.recv().await {
                    Some(ClientEvent::Message { seq, payload }) => return (seq, payload),
                    Some(_) => continue,
                    None => std::future::pending().await,
                }
            }
        })
        .await;
        assert!(
            late.is_err(),
            "a message after the last expected one: {late:?}"
        );
        got
    });
    App {
        client,
        session,
        got,
        seen,
    }
}

/// The backend's side of one session: sends `o:1..=m` (retrying through any node, with a
/// message ID so a retry is kept once), and reads until it has `m` client messages.
fn backend(
    apis: Vec<GatewayClient<Channel>>,
    session: String,
    m: u64,
    sent: Arc<AtomicU64>,
    tasks: &mut JoinSet<(String, Vec<u64>)>,
) {
    let mut send_apis = apis.clone();
    let id = session.clone();
    tokio::spawn(async move {
        let mut k = 0usize;
        for i in 1..=m {
            let req = pb::SendRequest {
                session_id: id.clone(),
                message: Some(pb::Message {
                    payload: Some(PbPayload::Text(format!("o:{i}"))),
                }),
                message_id: format!("{id}:{i}"),
                ..Default::default()
            };
            loop {
                let api = &mut send_apis[k % NODES];
                match api.send(req.clone()).await {
                    Ok(_) => break,
                    Err(_) => {
                        k += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            sent.fetch_add(1, Relaxed);
        }
    });
    let mut read_apis = apis;
    tasks.spawn(async move {
        let mut seqs = Vec::new();
        // Reads start at the node the kill test kills: an answer in flight through it when
        // it dies comes again to the next `Read`, whose ack does not cover it, and one it
        // gave but could not record must not come again, as the ack covers it.
        let mut k = 0;
        let mut quiet_reads = 0;
        let mut errors = 0u64;
        let mut ack = 0;
        // Read until everything came, then until one read finds nothing (it also confirms
        // the last message, so the client gets its ack).
        let mut distinct = BTreeSet::new();
        while (distinct.len() as u64) < m || quiet_reads == 0 {
            let req = pb::ReadRequest {
                ack: Some(ack),
                session_id: session.clone(),
                timeout: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
            };
            READS
                .lock()
                .unwrap()
                .insert(session.clone(), (distinct.len(), k % NODES, "calling"));
            // A call stuck past its own timeout counts as failed (see the closing note of the
            // reliable-sessions issue: a Read on a live node that did not answer after a kill).
            let r =
                match tokio::time::timeout(Duration::from_secs(5), read_apis[k % NODES].read(req))
                    .await
                {
                    Ok(r) => r.map(|r| r.into_inner().result),
                    Err(_) => Err(tonic::Status::deadline_exceeded("read did not answer")),
                };
            let missing = (1..=m).find(|i| !distinct.contains(i)).unwrap_or(0) as usize;
            READS.lock().unwrap().insert(
                session.clone(),
                (
                    missing,
                    k % NODES,
                    match &r {
                        Ok(Some(R::Message(_))) => "message",
                        Ok(Some(R::TimedOut(_))) => "timed out",
                        Ok(_) => "closed",
                        Err(_) => "error",
                    },
                ),
            );
            match r {
                Ok(Some(R::Message(msg))) => {
                    let text = match msg.message.and_then(|m| m.payload) {
                        Some(PbPayload::Text(t)) => t,
                        other => panic!("unexpected payload {other:?}"),
                    };
                    assert_eq!(text, format!("i:{}", msg.client_seq), "payload matches seq");
                    // A repeat (at or below the ack) is recorded too: `check` fails on it.
                    seqs.push(msg.client_seq);
                    distinct.insert(msg.client_seq);
                    ack = ack.max(msg.client_seq);
                }
                Ok(Some(R::TimedOut(_))) => {
                    if distinct.len() as u64 >= m {
                        quiet_reads += 1;
                    }
                }
                Ok(other) => panic!("session {session} ended: {other:?}"),
                Err(e) => {
                    errors += 1;
                    if errors.is_multiple_of(500) {
                        println!(
                            "reader of {session}: {} of {m} read, {errors} errors, last: {e:?}",
                            distinct.len()
                        );
                    }
                    k += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        (session, seqs)
    });
}

/// Steady traffic on `n` reliable sessions, both ways.
struct Traffic {
    apps: Vec<App>,
    readers: JoinSet<(String, Vec<u64>)>,
    sent: Arc<AtomicU64>,
}

impl Traffic {
    async fn start(cluster: &Cluster) -> Traffic {
        let (n, m) = scale();
        let mut apps = Vec::new();
        for i in 0..n {
            apps.push(open_app(cluster.urls(i % NODES), m).await);
        }
        let sent = Arc::new(AtomicU64::new(0));
        let mut readers = JoinSet::new();
        for a in &apps {
            backend(
                cluster.apis.clone(),
                a.session.clone(),
                m,
                Arc::clone(&sent),
                &mut readers,
            );
        }
        Traffic {
            apps,
            readers,
            sent,
        }
    }

    /// Waits until a third of the gateway → client messages were sent: the moment to fail.
    async fn a_third_through(&self) {
        let (n, m) = scale();
        let total = n as u64 * m;
        let third = tokio::time::timeout(run_limit(), async {
            while self.sent.load(Relaxed) < total / 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            third.is_ok(),
            "timed out waiting for a third of the traffic"
        );
    }

    /// Waits for everything (and the quiet periods) and says what each end saw.
    async fn finish(self) -> Tally {
        let mut tally = Tally::default();
        let Traffic {
            apps, mut readers, ..
        } = self;
        let watched: Vec<(String, Arc<AtomicU64>, ReliableClient)> = apps
            .iter()
            .map(|a| (a.session.clone(), Arc::clone(&a.seen), a.client.clone()))
            .collect();
        let phase = Arc::new(std::sync::Mutex::new("applications"));
        // Says where a long run waits, every minute, while it waits.
        let watchdog = {
            let phase = Arc::clone(&phase);
            let watched = watched.clone();
            let (_, m) = scale();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    println!("waiting for the {}", phase.lock().unwrap());
                    for (session, seen, client) in &watched {
                        if seen.load(Relaxed) < m {
                            println!(
                                "  session {session}: application had {}, client {:?}",
                                seen.load(Relaxed),
                                client.stats()
                            );
                        }
                    }
                    for (session, r) in READS.lock().unwrap().iter() {
                        if r.0 != 0 {
                            println!("  reader of {session}: {r:?}");
                        }
                    }
                }
            })
        };
        let finished = tokio::time::timeout(run_limit(), async {
            let mut clients = Vec::new();
            for a in apps {
                let got = a.got.await.expect("application task");
                tally.to_clients.insert(a.session.clone(), got);
                // Kept until the backends have read everything: a client dropped with
                // messages the gateway has not acknowledged would take them along.
                clients.push(a.client);
            }
            *phase.lock().unwrap() = "readers";
            while let Some(r) = readers.join_next().await {
                let (session, seqs) = r.expect("reader task");
                tally.to_backends.insert(session, seqs);
            }
            *phase.lock().unwrap() = "clients to close";
            for c in clients {
                let s = c.stats();
                tally.client_duplicates_dropped += s.duplicates;
                tally.resumes += s.resumes;
                tally.resets += s.resets;
                let _ = c.close().await;
            }
        })
        .await;
        watchdog.abort();
        if finished.is_err() {
            for (session, seen, client) in &watched {
                println!(
                    "stalled: session {session}: application had {} messages, client {:?}",
                    seen.load(Relaxed),
                    client.stats()
                );
            }
            println!("readers: {:?}", READS.lock().unwrap());
            panic!("the run did not finish in time");
        }
        tally
    }
}

/// Every session: the application got `o:1..=m` in order, once each, and the backend read
/// client seqs `1..=m` in order, once each.
fn check(tally: &Tally) {
    let (n, m) = scale();
    assert_eq!(tally.to_clients.len(), n);
    for (session, got) in &tally.to_clients {
        let want: Vec<(u64, String)> = (1..=m).map(|i| (i, format!("o:{i}"))).collect();
        assert_eq!(got, &want, "session {session}: gateway → client");
    }
    assert_eq!(tally.to_backends.len(), n);
    for (session, seqs) in &tally.to_backends {
        // Where it first goes wrong, with what came around it, before the verdict.
        if let Some(i) = seqs.iter().zip(1..).position(|(s, want)| *s != want) {
            let from = i.saturating_sub(6);
            panic!(
                "session {session}: client → backend: read {} where {} was due, around: {:?} \
                 ({} reads for {m} messages)",
                seqs[i],
                i + 1,
                &seqs[from..(i + 3).min(seqs.len())],
                seqs.len()
            );
        }
        assert_eq!(
            seqs.len() as u64,
            m,
            "session {session}: every client message reached the backend"
        );
    }
    assert_eq!(tally.resets, 0, "no session was lost");
}

fn report(name: &str, tally: &Tally) {
    let (n, m) = scale();
    println!(
        "chaos {name}: {n} sessions x {m} messages each way: lost 0, duplicates at the \
         application 0, client messages backends read twice 0, resends the clients \
         dropped {}, resumes {}",
        tally.client_duplicates_dropped, tally.resumes
    );
}

/// Lifecycle events of hub `c`, merged from subscriptions on several nodes (each its own
/// consumer group, so each sees every event).
struct Watch {
    tx: mpsc::Sender<pb::Event>,
    rx: mpsc::Receiver<pb::Event>,
}

impl Watch {
    fn new() -> Watch {
        let (tx, rx) = mpsc::channel(100_000);
        Watch { tx, rx }
    }

    async fn subscribe(&self, api: &GatewayClient<Channel>) {
        let kinds = [
            pb::EventKind::Connected,
            pb::EventKind::Disconnected,
            pb::EventKind::Suspended,
            pb::EventKind::Resumed,
        ];
        let mut stream = api
            .clone()
            .subscribe(pb::SubscribeRequest {
                hub: "c".into(),
                kinds: kinds.into_iter().map(|k| k as i32).collect(),
                ..Default::default()
            })
            .await
            .expect("subscribe")
            .into_inner();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(e)) = stream.message().await {
                if tx.send(e).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_node_holding_the_sockets_loses_nothing() {
    let _one_at_a_time = SERIAL.lock().await;
    let mut cluster = Cluster::start().await;
    let mut watch = Watch::new();
    watch.subscribe(&cluster.apis[2]).await;
    // Plain sessions on the node that dies: they must be told.
    let mut plain = Vec::new();
    for _ in 0..3 {
        plain.push(Client::connect(&cluster.node(0).ws_url("c")).await);
    }
    let traffic = Traffic::start(&cluster).await;
    traffic.a_third_through().await;
    let node = cluster.nodes[0].as_mut().expect("node 0");
    node.signal("KILL");
    let _ = node.wait().await;
    cluster.nodes[0] = None;
    let tally = traffic.finish().await;
    // A node killed between handing a client message to a backend and recording it makes
    // the client send it again; the backend's next `Read` says it has it, so it is not read
    // twice.
    check(&tally);
    report("kill -9", &tally);
    let plain_ids: BTreeSet<String> = plain.iter().map(|p| p.id.clone()).collect();
    for mut p in plain {
        assert_eq!(
            p.next().await,
            Seen::Eof,
            "a plain client sees its connection end"
        );
    }
    // Backends hear every plain session disconnect (node lost), and no reliable one.
    let reliable: BTreeSet<String> = tally.to_clients.keys().cloned().collect();
    let mut disconnected = BTreeSet::new();
    within("the plain sessions' disconnected events", async {
        while !plain_ids.is_subset(&disconnected) {
            let e = watch.rx.recv().await.expect("event stream");
            if let Some(Ev::Disconnected(c)) = &e.kind {
                assert!(
                    !reliable.contains(&e.session_id) || c.code == 1000,
                    "reliable session {} reported disconnected: {c:?}",
                    e.session_id
                );
                disconnected.insert(e.session_id.clone());
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_node_loses_nothing() {
    let _one_at_a_time = SERIAL.lock().await;
    let mut cluster = Cluster::start().await;
    let mut watch = Watch::new();
    for api in &cluster.apis {
        watch.subscribe(api).await;
    }
    let traffic = Traffic::start(&cluster).await;
    traffic.a_third_through().await;
    for i in 0..NODES {
        let node = cluster.nodes[i].as_mut().expect("node");
        node.signal("TERM");
        assert!(node.wait().await.success(), "node {i} drained and exited 0");
        cluster.start_node(i).await;
        watch.subscribe(&cluster.apis[i]).await;
    }
    let tally = traffic.finish().await;
    check(&tally);
    report("rolling restart", &tally);
    // No reliable session disconnected, but for the clients' own close at the end.
    let mut reasons = Vec::new();
    while let Ok(e) = watch.rx.try_recv() {
        if let Some(Ev::Disconnected(c)) = e.kind {
            if c.code != 1000 || c.closed_by != pb::Closer::Client as i32 {
                reasons.push((e.session_id, c));
            }
        }
    }
    assert!(
        reasons.is_empty(),
        "disconnected during the restart: {reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_cut_connections_in_a_row_lose_nothing() {
    let _one_at_a_time = SERIAL.lock().await;
    let cluster = Cluster::start().await;
    let traffic = Traffic::start(&cluster).await;
    traffic.a_third_through().await;
    // Each cut once the client has resumed from the previous one.
    for _ in 0..20 {
        let before: Vec<u64> = traffic
            .apps
            .iter()
            .map(|a| a.client.stats().resumes)
            .collect();
        for a in &traffic.apps {
            a.client.cut().await.expect("cut");
        }
        within("every client to resume", async {
            for (a, b) in traffic.apps.iter().zip(&before) {
                while a.client.stats().resumes <= *b {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
        .await;
    }
    let tally = traffic.finish().await;
    check(&tally);
    report("20 cuts", &tally);
    assert!(
        tally.resumes >= 20 * scale().0 as u64,
        "every cut was resumed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_without_persistence_loses_nothing_on_live_connections() {
    let _one_at_a_time = SERIAL.lock().await;
    let mut cluster = Cluster::start().await;
    let traffic = Traffic::start(&cluster).await;
    traffic.a_third_through().await;
    cluster.redis.restart_empty().await;
    let tally = traffic.finish().await;
    check(&tally);
    report("redis restart", &tally);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_frozen_past_the_slow_consumer_grace_resumes_and_loses_nothing() {
    let _one_at_a_time = SERIAL.lock().await;
    let cluster = Cluster::start().await;
    // More than the socket buffers of both ends hold, so the gateway's queue fills.
    let m = 20_000u64;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_reliable-client"))
        .args(["--hub", "c", "--send", "0", "--max-seconds", "120"])
        .args(cluster.urls(0))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("reliable-client");
    let pid = child.id().expect("pid").to_string();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        child.stdout.take().expect("stdout"),
    ));
    let first = within("the client's welcome", lines.next_line())
        .await
        .expect("stdout")
        .expect("a line");
    let session = first
        .strip_prefix("open ")
        .and_then(|r| r.split_whitespace().next())
        .expect("open SESSION")
        .to_owned();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args(["-s", sig, &pid])
            .status()
            .expect("kill");
        assert!(ok.success());
    };
    signal("STOP");
    // Frozen: the socket fills, the gateway closes it with 1013 after the grace and keeps
    // every message for the resume.
    let mut api = cluster.apis[0].clone();
    let mut watch = Watch::new();
    watch.subscribe(&api).await;
    let payload = "x".repeat(1000);
    for i in 1..=m {
        api.send(pb::SendRequest {
            session_id: session.clone(),
            message: Some(pb::Message {
                payload: Some(PbPayload::Text(format!("o:{i}:{payload}"))),
            }),
            ..Default::default()
        })
        .await
        .expect("send");
    }
    within("the frozen client's suspension", async {
        while let Some(e) = watch.rx.recv().await {
            if e.session_id == session && matches!(e.kind, Some(Ev::Suspended(_))) {
                return;
            }
        }
    })
    .await;
    signal("CONT");
    let mut next = 1u64;
    within("every message after the thaw", async {
        while next <= m {
            let line = lines.next_line().await.expect("stdout").expect("line");
            if let Some(rest) = line.strip_prefix("msg ") {
                let (seq, text) = rest.split_once(' ').expect("msg SEQ TEXT");
                assert_eq!(seq.parse::<u64>().expect("seq"), next, "in order");
                assert!(text.starts_with(&format!("o:{next}:")), "{text}");
                next += 1;
            }
        }
    })
    .await;
    drop(child.stdin.take());
    let mut resumed = false;
    while let Ok(Some(line)) = lines.next_line().await {
        if line.starts_with("msg ") {
            panic!("a message after the last: {line}");
        }
        if let Some(stats) = line.strip_prefix("stats ") {
            let f: Vec<u64> = stats
                .split_whitespace()
                .map(|v| v.parse().expect("number"))
                .collect();
            assert_eq!(f[0], m, "delivered each once");
            assert!(f[2] >= 1, "resumed");
            assert_eq!(f[3], 0, "no reset");
            resumed = true;
        }
    }
    assert!(resumed, "the client reported its stats");
}
