//! The gateway's `/demo` page in a real browser: Debian's `chromium`, driven by
//! `tests/browser/demo.mjs` (playwright-core) one step per line, while this test plays the
//! backend over gRPC. Needs `tests/browser/setup` to have run (chromium and `npm ci`).
//!
//! The page runs on the reliable client the gateway serves at `/client.js` (its protocol logic
//! is tested in Node: `tests/browser/client_test.mjs`); here, a page behind a proxy whose
//! connections are cut resumes its session, and keeps every message through a kill -9 of the
//! node holding its socket.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use switchboard_sdk::{Client, Message, ReadOutcome, Receipt, Target};
use switchboard_tests::{gateway::Gateway, pki::Pki, script::Script, within};
use tokio::{
    io::{AsyncWriteExt, BufReader, Lines},
    net::{TcpListener, TcpStream},
    process::{Child, ChildStdin, ChildStdout},
    sync::watch,
    task::JoinSet,
};

/// The page in headless Chromium, steered through the script's stdin and stdout.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Browser {
    /// Opens `url`; the script prints `open` once the page is connected.
    async fn open(url: &str) -> Browser {
        Self::open_trusting(url, None).await
    }

    /// Opens `url` with Chromium trusting the server certificate in `cert` (a PEM file).
    async fn open_trusting(url: &str, cert: Option<&std::path::Path>) -> Browser {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser");
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            PathBuf::from(&chromium).exists() && dir.join("node_modules/playwright-core").exists(),
            "the browser test needs chromium and playwright-core: run tests/browser/setup"
        );
        let Script {
            child,
            stdin,
            stdout,
        } = match cert {
            Some(cert) => Script::spawn(
                "demo.mjs",
                &[url.as_ref()],
                &[("TRUST_CERT", cert.as_os_str())],
            ),
            None => Script::spawn("demo.mjs", &[url.as_ref()], &[]),
        };
        Browser {
            child,
            stdin,
            stdout,
        }
    }

    async fn tell(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to the browser script");
    }

    /// The script's next line, which must start with `word `; returns the rest.
    async fn answer(&mut self, word: &str) -> String {
        let line = within(
            &format!("the browser script's {word:?}"),
            self.stdout.next_line(),
        )
        .await
        .expect("read the browser script")
        .unwrap_or_else(|| panic!("the browser script ended before {word:?}"));
        match line.strip_prefix(word).and_then(|r| r.strip_prefix(' ')) {
            Some(rest) => rest.to_owned(),
            None if line == word => String::new(),
            None => panic!("expected {word:?} from the browser script, got {line:?}"),
        }
    }

    /// Ends the script and checks it exited cleanly (no page error on the way).
    async fn quit(mut self) {
        self.step("quit", "bye").await;
        let status = within("the browser script to exit", self.child.wait())
            .await
            .unwrap();
        assert!(status.success(), "the browser script failed: {status}");
    }

    /// Tells the script `line` and checks that it answers `reply`.
    async fn step(&mut self, line: &str, reply: &str) {
        self.tell(line).await;
        let (word, rest) = reply.split_once(' ').unwrap_or((reply, ""));
        assert_eq!(self.answer(word).await, rest, "after {line:?}");
    }
}

/// The backend's SDK client, on `gw`'s backend port.
async fn backend(gw: &Gateway) -> Client {
    Client::builder()
        .gateway(format!("http://{}", gw.backend_addr))
        .build()
        .await
        .unwrap()
}

/// A loopback TCP proxy in front of the client port: [`Cutter::cut`] drops every connection
/// through it without a WebSocket close (as a network failure would) and holds new ones until
/// [`Cutter::release`].
struct Cutter {
    addr: SocketAddr,
    /// (generation, holding): a connection lives while the generation it started in is current.
    state: Arc<watch::Sender<(u64, bool)>>,
    /// Where new connections go (a load balancer's choice).
    upstream: Arc<std::sync::Mutex<SocketAddr>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Cutter {
    async fn start(upstream: SocketAddr) -> Cutter {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(watch::channel((0u64, false)).0);
        let shared = Arc::clone(&state);
        let upstream = Arc::new(std::sync::Mutex::new(upstream));
        let target = Arc::clone(&upstream);
        // Dropping the accept task drops the set, which aborts every connection's task.
        let accept = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                while conns.try_join_next().is_some() {}
                let mut rx = shared.subscribe();
                let target = Arc::clone(&target);
                conns.spawn(async move {
                    let generation = match rx.wait_for(|&(_, holding)| !holding).await {
                        Ok(s) => s.0,
                        Err(_) => return,
                    };
                    let upstream = *target.lock().unwrap();
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = rx.wait_for(|&(g, _)| g != generation) => {}
                    }
                });
            }
        });
        Cutter {
            addr,
            state,
            upstream,
            accept,
        }
    }

    /// Sends new connections to `upstream`; those open stay where they are.
    fn route_to(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap() = upstream;
    }

    fn cut(&self) {
        self.state.send_modify(|(g, holding)| {
            *g += 1;
            *holding = true;
        });
    }

    fn release(&self) {
        self.state.send_modify(|(_, holding)| *holding = false);
    }
}

impl Drop for Cutter {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[tokio::test]
async fn the_demo_page_shows_its_session_and_messages_sends_what_is_typed_and_reconnects() {
    let gw = Gateway::start(&["--welcome-frame"]).await;
    let (status, body) = gw.http_get("/demo").await;
    assert_eq!(status, 200, "{body}");
    let sb = backend(&gw).await;

    let mut page = Browser::open(&format!("http://{}/demo?hub=lobby", gw.client_addr)).await;
    page.answer("open").await;
    page.tell("session").await;
    let id = page.answer("session").await;
    assert_eq!(sb.session(id.as_str()).await.unwrap().hub, "lobby");

    // What a backend sends to the session, and what it publishes to the hub, is listed.
    sb.send(id.as_str(), "hello from the backend")
        .await
        .unwrap();
    page.step(
        "expect-text hello from the backend",
        "seen hello from the backend",
    )
    .await;
    sb.send(id.as_str(), vec![1u8, 2, 3, 4, 5]).await.unwrap();
    page.step("expect-binary 5", "seen binary 5").await;
    let told = sb
        .publish(Target::hub("lobby"), "to everyone in the lobby")
        .await
        .unwrap();
    assert_eq!(told.queued, 1);
    page.step(
        "expect-text to everyone in the lobby",
        "seen to everyone in the lobby",
    )
    .await;
    // Markup in a message is shown as text (the script also checks no element was made).
    let markup = "<img src=x onerror=alert(1)><b>not bold</b>";
    sb.send(id.as_str(), markup).await.unwrap();
    page.step(&format!("expect-text {markup}"), &format!("seen {markup}"))
        .await;

    // What is typed into the page reaches the backend.
    page.step("type hi from the page", "sent hi from the page")
        .await;
    match within("Read", sb.read(id.as_str(), Duration::from_secs(10)))
        .await
        .unwrap()
    {
        ReadOutcome::Message(m) => {
            assert_eq!(m.message, Message::Text("hi from the page".into()))
        }
        other => panic!("expected the typed message, got {other:?}"),
    }

    // Closed by the backend, the page comes back on its own, as a new session.
    sb.close(id.as_str())
        .code(4000)
        .reason("see you soon")
        .await
        .unwrap();
    page.tell(&format!("session {id}")).await;
    let again = page.answer("session").await;
    assert_ne!(again, id);
    let note = r#"{"type":"file","name":"adt_a01.hl7","bytes":365,"hl7":{"message_type":"ADT^A01","control_id":"MSG00001"}}"#;
    sb.publish(Target::hub("lobby"), note).await.unwrap();
    page.step(&format!("expect-text {note}"), &format!("seen {note}"))
        .await;

    // <target>/demo.png: the test executable is in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("test executable path");
    let shot = exe
        .ancestors()
        .nth(3)
        .expect("test executable is in <target>/<profile>/deps")
        .join("demo.png");
    let shot = shot.to_str().expect("a UTF-8 path");
    page.step(&format!("screenshot {shot}"), &format!("shot {shot}"))
        .await;
    page.quit().await;
}

#[tokio::test]
async fn on_a_gateway_started_with_no_flags_the_page_shows_its_session() {
    // The README's first command: no --welcome-frame. The page asks for the welcome itself.
    let gw = Gateway::start(&[]).await;
    let sb = backend(&gw).await;
    let mut page = Browser::open(&format!("http://{}/demo", gw.client_addr)).await;
    page.answer("open").await;
    page.tell("session").await;
    let id = page.answer("session").await;
    // The default hub is `demo`, and the ID shown is the session's.
    assert_eq!(sb.session(id.as_str()).await.unwrap().hub, "demo");
    let told = sb.publish(Target::hub("demo"), "first").await.unwrap();
    assert_eq!(told.queued, 1);
    page.step("expect-text first", "seen first").await;
    page.quit().await;
}

/// Chromium opens a page's WebSockets on the page's own HTTP/2 connection once the server
/// advertises the extended CONNECT (RFC 8441): over TLS (ALPN `h2`), the demo page's session
/// must come over HTTP/2, and work like any other.
#[tokio::test]
async fn over_tls_the_page_s_websocket_rides_its_http2_connection() {
    let pki = Pki::new("h2 browser test");
    let cert = pki.server("server");
    let gw = Gateway::start(&[
        "--tls-cert",
        cert.cert.to_str().unwrap(),
        "--tls-key",
        cert.key.to_str().unwrap(),
    ])
    .await;
    let sb = backend(&gw).await;
    let url = format!("https://127.0.0.1:{}/demo?hub=lobby", gw.client_addr.port());
    let mut page = Browser::open_trusting(&url, Some(&cert.cert)).await;
    page.answer("open").await;
    page.step("protocol", "protocol h2").await;
    page.tell("session").await;
    let id = page.answer("session").await;
    assert_eq!(sb.session(id.as_str()).await.unwrap().hub, "lobby");
    sb.send(id.as_str(), "over one stream").await.unwrap();
    page.step("expect-text over one stream", "seen over one stream")
        .await;
    page.step("type and back", "sent and back").await;
    match within("Read", sb.read(id.as_str(), Duration::from_secs(10)))
        .await
        .unwrap()
    {
        ReadOutcome::Message(m) => assert_eq!(m.message, Message::Text("and back".into())),
        other => panic!("expected the typed message, got {other:?}"),
    }
    // The proof that the session came over HTTP/2: the gateway counted it so, and nothing came
    // over HTTP/1.1.
    let (status, metrics) = gw.admin_request("GET", "/metrics", None, "").await;
    assert_eq!(status, 200);
    let http2: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("switchboard_connects_by_transport_total{transport=\"http2\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(http2, 1.0, "{metrics}");
    assert!(
        !metrics.contains("transport=\"http1\""),
        "a session came over HTTP/1.1: {metrics}"
    );
    page.quit().await;
}

/// The page's session is reliable: a cut connection is resumed, the session stays the same, and
/// what a backend sent meanwhile is shown once the page is back.
#[tokio::test]
async fn a_page_whose_connection_is_cut_resumes_its_session_and_gets_what_it_missed() {
    let gw = Gateway::start(&[]).await;
    let sb = backend(&gw).await;
    let proxy = Cutter::start(gw.client_addr).await;
    let mut page = Browser::open(&format!("http://{}/demo?hub=lobby", proxy.addr)).await;
    page.answer("open").await;
    page.tell("session").await;
    let id = page.answer("session").await;
    let info = sb.session(id.as_str()).await.unwrap();
    assert!(info.reliable, "the page's session is reliable: {info:?}");
    sb.send(id.as_str(), "before the cut").await.unwrap();
    page.step("expect-text before the cut", "seen before the cut")
        .await;

    proxy.cut();
    // Sent while the page has no connection: kept, and replayed when it resumes.
    sb.send(id.as_str(), "while you were away").await.unwrap();
    proxy.release();
    page.step(
        "expect-text while you were away",
        "seen while you were away",
    )
    .await;
    page.step("session-now", &format!("session {id}")).await;
    // It came back by resuming (not by a live connection the cut missed).
    let (status, metrics) = gw.admin_request("GET", "/metrics", None, "").await;
    assert_eq!(status, 200);
    let resumes: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("switchboard_resumes_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(resumes, 1.0, "{metrics}");
    // The same session carries on both ways.
    page.step("type still here", "sent still here").await;
    match within("Read", sb.read(id.as_str(), Duration::from_secs(10)))
        .await
        .unwrap()
    {
        ReadOutcome::Message(m) => assert_eq!(m.message, Message::Text("still here".into())),
        other => panic!("expected the typed message, got {other:?}"),
    }
    page.quit().await;
}

#[tokio::test]
async fn the_page_keeps_every_message_through_a_kill_of_the_node_holding_its_socket() {
    let redis = switchboard_tests::redis::Redis::start().await;
    let url = redis.url();
    let mut nodes = Vec::new();
    for id in ["page-a", "page-b"] {
        nodes.push(
            Gateway::start(&[
                "--redis-url",
                &url,
                "--node-id",
                id,
                "--lease-ttl",
                "2s",
                "--lease-refresh",
                "500ms",
            ])
            .await,
        );
    }
    // The backend talks to node b, which lives; the page reaches node a through a balancer.
    let sb = backend(&nodes[1]).await;
    let balancer = Cutter::start(nodes[0].client_addr).await;
    let mut page = Browser::open(&format!("http://{}/demo?hub=lobby", balancer.addr)).await;
    page.answer("open").await;
    page.tell("session").await;
    let id = page.answer("session").await;
    assert_eq!(sb.session(id.as_str()).await.unwrap().node, "page-a");

    // Numbered messages without a pause; the node dies a third of the way through.
    const N: u64 = 150;
    let sender = {
        let sb = sb.clone();
        let id = id.clone();
        tokio::spawn(async move {
            for i in 1..=N {
                let text = format!("n:{i}");
                // A retry after an unclear failure keeps the message once (its ID).
                within("a send to be taken", async {
                    while sb
                        .send_with_receipt(
                            id.as_str(),
                            text.as_str(),
                            &text,
                            Receipt::Queued,
                            Duration::from_secs(2),
                        )
                        .await
                        .is_err()
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
                .await;
            }
        })
    };
    page.step("type before the kill", "sent before the kill")
        .await;
    page.step("expect-text n:50", "seen n:50").await;
    balancer.route_to(nodes[1].client_addr);
    nodes[0].signal("KILL");
    nodes[0].wait().await;
    page.step("wait-open", "open").await;
    page.step("session-now", &format!("session {id}")).await;
    page.step("type after the kill", "sent after the kill")
        .await;
    within("every send", sender).await.unwrap();
    page.step(&format!("expect-text n:{N}"), &format!("seen n:{N}"))
        .await;
    page.tell("texts-in").await;
    let texts: Vec<String> = serde_json::from_str(&page.answer("texts-in").await).unwrap();
    let want: Vec<String> = (1..=N).map(|i| format!("n:{i}")).collect();
    assert_eq!(texts, want, "every message once, in order");
    assert_eq!(sb.session(id.as_str()).await.unwrap().node, "page-b");

    // The backend gets what the page typed, once each, on either side of the kill.
    let got = within("the typed messages and a quiet read", async {
        let (mut got, mut ack) = (Vec::new(), 0);
        loop {
            match sb
                .read_after(id.as_str(), ack, Duration::from_millis(500))
                .await
                .unwrap()
            {
                ReadOutcome::Message(m) if m.client_seq > ack => {
                    ack = m.client_seq;
                    got.push(m.message);
                }
                ReadOutcome::Message(_) => {}
                ReadOutcome::TimedOut if got.len() >= 2 => return got,
                ReadOutcome::TimedOut => {}
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
    assert_eq!(
        got,
        vec![
            Message::Text("before the kill".into()),
            Message::Text("after the kill".into())
        ]
    );
    page.quit().await;
}
