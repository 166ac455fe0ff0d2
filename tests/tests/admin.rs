//! The admin listener: its token, the probes and metrics it serves (and the client port no
//! longer does with `--ops-on-client-port false`), the JSON API on one node and across a
//! cluster in a real redis-server, and the `/admin` page in headless Chromium
//! (`tests/browser/admin.mjs`, playwright-core; needs `tests/browser/setup`).

use std::{collections::HashSet, path::PathBuf, process::Stdio, time::Duration};

use serde_json::Value;
use switchboard_tests::{gateway::Gateway, redis::Redis, script::Script, within, ws::Client};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout},
};

const TOKEN: &str = "admin-s3cret";
/// Short leases: a killed node is lost within seconds, and infos are rewritten often.
const LEASE: &[&str] = &["--lease-ttl", "2s", "--lease-refresh", "500ms"];

/// An admin API call with the right token; the body parsed as JSON.
async fn call(gw: &Gateway, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, text) = gw.admin_request(method, path, Some(TOKEN), body).await;
    let v = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("{method} {path} answered {status} with non-JSON {text:?}: {e}")
    });
    (status, v)
}

async fn get(gw: &Gateway, path: &str) -> Value {
    let (status, v) = call(gw, "GET", path, "").await;
    assert_eq!(status, 200, "GET {path}: {v}");
    v
}

/// Polls `GET path` until `done` holds: the admin API's view follows lease renewals, and there
/// is no event to await from outside.
async fn until(gw: &Gateway, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    within(what, async {
        loop {
            let v = get(gw, path).await;
            if done(&v) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

fn node_of<'a>(nodes: &'a Value, id: &str) -> Option<&'a Value> {
    nodes["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["id"].as_str() == Some(id))
}

fn hub_sessions(hubs: &Value, hub: &str) -> Option<u64> {
    hubs["hubs"]
        .as_array()?
        .iter()
        .find(|h| h["hub"].as_str() == Some(hub))
        .and_then(|h| h["sessions"].as_u64())
}

#[tokio::test]
async fn the_admin_api_needs_its_token_and_probes_and_metrics_move_to_the_admin_port() {
    let gw = Gateway::start(&["--admin-token", TOKEN, "--ops-on-client-port", "false"]).await;
    let api = "/admin/api/node";

    let (status, body) = gw.admin_request("GET", api, None, "").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("missing admin token"), "{body}");
    let (status, body) = gw.admin_request("GET", api, Some("wrong"), "").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("invalid admin token"), "{body}");
    let (status, body) = gw.admin_request("POST", "/admin/api/drain", None, "").await;
    assert_eq!(status, 401, "a drain without the token: {body}");

    let node = get(&gw, api).await;
    assert_eq!(node["id"], gw.node_id.as_str());
    assert_eq!(node["state"], "ready");
    assert_eq!(node["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(node["registry"]["kind"], "memory");
    assert_eq!(node["registry"]["healthy"], true);
    assert!(node["stats"]["connects"].is_u64(), "{node}");

    // Open on the admin port: the page (no data in it), probes and metrics.
    let admin = gw.admin_addr.expect("admin listener");
    let open = |path: &'static str| switchboard_tests::raw::http_request(admin, "GET", path, &[]);
    let (status, page) = open("/admin").await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>Switchboard admin</title>"), "{page}");
    assert_eq!(open("/readyz").await, (200, "ready\n".to_owned()));
    assert_eq!(open("/healthz").await.0, 200);
    let (status, metrics) = open("/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("switchboard_connects"), "{metrics}");

    // And gone from the client port, which still upgrades and serves /demo.
    for path in ["/metrics", "/readyz", "/healthz"] {
        assert_eq!(gw.http_get(path).await.0, 404, "{path} on the client port");
    }
    assert_eq!(gw.http_get("/demo").await.0, 200);
    let c = gw.connect("h").await;
    assert_eq!(get(&gw, api).await["sessions"], 1);
    drop(c);

    // Another site's page cannot use the API even with the token.
    let cross = switchboard_tests::raw::http_request(
        admin,
        "GET",
        api,
        &[
            ("Origin", "https://elsewhere.example"),
            ("Authorization", &format!("Bearer {TOKEN}")),
        ],
    )
    .await;
    assert_eq!(cross.0, 403, "{}", cross.1);
}

#[tokio::test]
async fn without_a_token_the_api_is_open_on_loopback_and_the_ops_routes_stay_on_the_client_port() {
    let gw = Gateway::start(&[]).await;
    let (status, body) = gw.admin_request("GET", "/admin/api/node", None, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(gw.http_get("/readyz").await.0, 200);
    assert_eq!(gw.http_get("/metrics").await.0, 200);
    // A name in Host (a rebinding page's) is refused while the API has no token.
    let admin = gw.admin_addr.expect("admin listener");
    let mut s = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect");
    s.write_all(
        b"GET /admin/api/node HTTP/1.1\r\nHost: rebound.example\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("write");
    let mut answer = String::new();
    within("the answer", s.read_to_string(&mut answer))
        .await
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
}

#[tokio::test]
async fn a_public_admin_listener_without_a_token_is_refused_at_start() {
    let out = within(
        "the gateway to refuse its configuration",
        tokio::process::Command::new(switchboard_tests::gateway::gateway_bin())
            .args(["--listen", "127.0.0.1:0", "--backend-listen", "127.0.0.1:0"])
            .args(["--admin-listen", "0.0.0.0:0"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run the gateway");
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--admin-token"), "{stderr}");
    assert!(stderr.contains("0.0.0.0:0"), "{stderr}");
}

#[tokio::test]
async fn sessions_are_found_listed_and_closed_and_a_drain_leaves_the_process_up() {
    let mut gw = Gateway::start(&["--admin-token", TOKEN]).await;
    let mut chat = Vec::new();
    for _ in 0..3 {
        chat.push(gw.connect("chat").await);
    }
    let mut news = gw.connect("news").await;

    let found = get(&gw, &format!("/admin/api/sessions?id={}", chat[0].id)).await;
    let s = &found["sessions"][0];
    assert_eq!(s["id"], chat[0].id.as_str());
    assert_eq!(s["hub"], "chat");
    assert_eq!(s["node"], gw.node_id.as_str());
    assert!(s["remote_addr"]
        .as_str()
        .is_some_and(|a| a.starts_with("127.0.0.1:")));
    assert!(s["connected_at"].as_u64().is_some_and(|t| t > 0));

    // A listing pages with the registry's tokens.
    let mut seen = HashSet::new();
    let mut path = "/admin/api/sessions?hub=chat&page_size=2".to_owned();
    let mut pages = 0;
    loop {
        let page = get(&gw, &path).await;
        pages += 1;
        for s in page["sessions"].as_array().expect("sessions") {
            assert!(seen.insert(s["id"].as_str().expect("id").to_owned()));
        }
        match page["next_page_token"].as_str() {
            Some(t) => path = format!("/admin/api/sessions?hub=chat&page_size=2&page_token={t}"),
            None => break,
        }
    }
    assert_eq!(seen, chat.iter().map(|c| c.id.clone()).collect());
    assert!(pages >= 2);

    let hubs = get(&gw, "/admin/api/hubs").await;
    assert_eq!(hub_sessions(&hubs, "chat"), Some(3), "{hubs}");
    assert_eq!(hub_sessions(&hubs, "news"), Some(1), "{hubs}");
    assert_eq!(hubs["scope"], "node");
    let nodes = get(&gw, "/admin/api/nodes").await;
    assert_eq!(nodes["nodes"].as_array().map(Vec::len), Some(1), "{nodes}");
    assert_eq!(nodes["nodes"][0]["sessions"], 4);

    // Bad input is a 4xx with a reason, never a crash.
    for (method, path, body, status) in [
        ("GET", "/admin/api/sessions?id=nope", "", 400),
        ("GET", "/admin/api/sessions", "", 400),
        ("GET", "/admin/api/sessions?group=g", "", 400),
        ("GET", "/admin/api/sessions?hub=a/b", "", 400),
        (
            "GET",
            "/admin/api/sessions?hub=chat&page_size=lots",
            "",
            400,
        ),
        (
            "GET",
            "/admin/api/sessions?hub=chat&page_token=%FF%FE",
            "",
            400,
        ),
        ("GET", "/admin/api/sessions?hub=chat&hub=news", "", 400),
        ("GET", "/admin/api/sessions?color=red", "", 400),
        (
            "GET",
            "/admin/api/sessions?id=AAAAAAAAAAAAAAAAAAAAAA",
            "",
            404,
        ),
        ("POST", "/admin/api/sessions/nope/close", "", 400),
        (
            "POST",
            "/admin/api/sessions/AAAAAAAAAAAAAAAAAAAAAA/close",
            "",
            404,
        ),
        ("GET", "/admin/api/drain", "", 405),
        ("POST", "/admin/api/node", "", 405),
        ("GET", "/admin/api/whatever", "", 404),
    ] {
        let (got, v) = call(&gw, method, path, body).await;
        assert_eq!(got, status, "{method} {path}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    let target = format!("/admin/api/sessions/{}/close", chat[1].id);
    for body in [
        "{",
        r#"{"code":1005}"#,
        r#"{"code":"x"}"#,
        r#"{"colour":1}"#,
    ] {
        let (got, v) = call(&gw, "POST", &target, body).await;
        assert_eq!(got, 400, "close with {body}: {v}");
    }
    let (got, v) = call(&gw, "POST", &target, &"x".repeat(5_000)).await;
    assert_eq!(got, 413, "{v}");

    // Closed with the operator's code and reason, or the defaults.
    let (got, v) = call(&gw, "POST", &target, r#"{"code":4001,"reason":"bye"}"#).await;
    assert_eq!(got, 200, "{v}");
    assert_eq!(chat[1].closed().await, (4001, "bye".to_owned()));
    let (got, v) = call(
        &gw,
        "POST",
        &format!("/admin/api/sessions/{}/close", news.id),
        "",
    )
    .await;
    assert_eq!(got, 200, "{v}");
    assert_eq!(
        news.closed().await,
        (1000, "closed by an operator".to_owned())
    );

    // A drain closes everything with 1001 and refuses clients, but the process stays up.
    let (got, v) = call(&gw, "POST", "/admin/api/drain", "").await;
    assert_eq!(got, 200, "{v}");
    assert_eq!(v["state"], "draining");
    for i in [0, 2] {
        assert_eq!(chat[i].closed().await.0, 1001);
    }
    assert_eq!(get(&gw, "/admin/api/node").await["state"], "draining");
    let admin = gw.admin_addr.expect("admin listener");
    let readyz = switchboard_tests::raw::http_request(admin, "GET", "/readyz", &[]).await;
    assert_eq!(readyz, (503, "draining\n".to_owned()));
    assert!(Client::try_connect(&gw.ws_url("chat"), &[]).await.is_err());
    let (got, v) = call(&gw, "POST", "/admin/api/drain", "").await;
    assert_eq!((got, &v["already"]), (200, &Value::Bool(true)), "{v}");
    // Still answering as the sessions end (their sockets close); SIGTERM ends it as before.
    drop((chat, news));
    until(&gw, "/admin/api/node", "every session gone", |v| {
        v["sessions"] == 0
    })
    .await;
    gw.signal("TERM");
    let status = gw.wait().await;
    assert!(status.success(), "exit status {status}");
}

/// Two nodes sharing a Redis: `nodes` shows both with their sessions, `hubs` sums them, a
/// session on the other node is found and closed, a drain shows, a killed node turns lost.
#[tokio::test]
async fn in_a_cluster_every_node_is_shown_and_a_session_elsewhere_is_closed() {
    let redis = Redis::start().await;
    let url = redis.url();
    let start = |id: &'static str| {
        let url = url.clone();
        async move {
            let mut args = vec!["--redis-url", &url, "--node-id", id, "--admin-token", TOKEN];
            args.extend_from_slice(&["--redis-prefix", "t"]);
            args.extend_from_slice(LEASE);
            Gateway::start(&args).await
        }
    };
    let a = start("node-a").await;
    let mut b = start("node-b").await;
    let _on_a = [a.connect("chat").await, a.connect("chat").await];
    let mut on_b = [b.connect("chat").await, b.connect("news").await];

    let nodes = until(
        &a,
        "/admin/api/nodes",
        "both nodes with their sessions",
        |v| {
            let n = |id| node_of(v, id).map(|n| (n["state"].clone(), n["sessions"].clone()));
            n("node-a") == Some(("ready".into(), 2.into()))
                && n("node-b") == Some(("ready".into(), 2.into()))
        },
    )
    .await;
    let b_row = node_of(&nodes, "node-b").expect("node-b");
    assert_eq!(b_row["this"], false);
    assert_eq!(b_row["version"], env!("CARGO_PKG_VERSION"));
    assert!(b_row["address"]
        .as_str()
        .is_some_and(|a| a.starts_with("http://")));
    let node = get(&a, "/admin/api/node").await;
    assert_eq!(node["registry"]["kind"], "redis");
    assert_eq!(node["registry"]["healthy"], true);

    let hubs = get(&a, "/admin/api/hubs").await;
    assert_eq!(hubs["scope"], "cluster");
    assert_eq!(hub_sessions(&hubs, "chat"), Some(3), "{hubs}");
    assert_eq!(hub_sessions(&hubs, "news"), Some(1), "{hubs}");

    // Found through the shared registry, closed through its node.
    let found = get(&a, &format!("/admin/api/sessions?id={}", on_b[1].id)).await;
    assert_eq!(found["sessions"][0]["node"], "node-b");
    let listed = get(&a, "/admin/api/sessions?hub=chat").await;
    assert_eq!(
        listed["sessions"].as_array().map(Vec::len),
        Some(3),
        "{listed}"
    );
    let (got, v) = call(
        &a,
        "POST",
        &format!("/admin/api/sessions/{}/close", on_b[1].id),
        r#"{"code":4100,"reason":"from node-a"}"#,
    )
    .await;
    assert_eq!(got, 200, "{v}");
    assert_eq!(on_b[1].closed().await, (4100, "from node-a".to_owned()));

    // B drains: A sees it; B is then killed: A sees it lost.
    let (got, v) = call(&b, "POST", "/admin/api/drain", "").await;
    assert_eq!(got, 200, "{v}");
    assert_eq!(on_b[0].closed().await.0, 1001);
    until(&a, "/admin/api/nodes", "node-b shown draining", |v| {
        node_of(v, "node-b").is_some_and(|n| n["state"] == "draining")
    })
    .await;
    // Another survivor's reap lock keeps node-a from reaping node-b (which would drop it from
    // the node set): what is left to see is a node in the set without a lease.
    redis
        .cli(&["SET", "t:reap:node-b", "elsewhere", "PX", "60000"])
        .await;
    b.signal("KILL");
    b.wait().await;
    until(&a, "/admin/api/nodes", "node-b shown lost", |v| {
        node_of(v, "node-b").is_some_and(|n| n["state"] == "lost")
    })
    .await;
}

/// The admin page in headless Chromium, steered through the script's stdin and stdout.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Browser {
    async fn open(url: &str) -> Browser {
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
        } = Script::spawn("admin.mjs", &[url.as_ref()], &[]);
        Browser {
            child,
            stdin,
            stdout,
        }
    }

    /// Tells the script `line` and checks that it answers `reply`.
    async fn step(&mut self, line: &str, reply: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write to the browser script");
        self.expect(reply).await;
    }

    async fn expect(&mut self, reply: &str) {
        let got = within(
            &format!("the browser script's {reply:?}"),
            self.stdout.next_line(),
        )
        .await
        .expect("read the browser script")
        .unwrap_or_else(|| panic!("the browser script ended before {reply:?}"));
        assert_eq!(got, reply);
    }
}

#[tokio::test]
async fn the_admin_page_shows_the_cluster_finds_and_closes_a_session_and_drains_its_node() {
    let redis = Redis::start().await;
    let url = redis.url();
    let mut gws = Vec::new();
    for id in ["node-a", "node-b"] {
        let mut args = vec!["--redis-url", &url, "--node-id", id, "--admin-token", TOKEN];
        args.extend_from_slice(LEASE);
        gws.push(Gateway::start(&args).await);
    }
    let (a, b) = (&gws[0], &gws[1]);
    let mut on_a = Vec::new();
    for _ in 0..3 {
        on_a.push(a.connect("chat").await);
    }
    let mut on_b = [
        b.connect("chat").await,
        b.connect("chat").await,
        b.connect("news").await,
    ];

    let admin = a.admin_addr.expect("admin listener");
    let mut page = Browser::open(&format!("http://{admin}/admin")).await;
    page.expect("open").await;
    // Without the token the page says why it shows nothing.
    page.step("error-shown 401", "error-shown 401").await;
    page.step(&format!("token {TOKEN}"), "token-ok").await;
    page.step("node node-a ready 3", "node node-a ready 3")
        .await;
    page.step("node node-b ready 3", "node node-b ready 3")
        .await;
    page.step("hub chat 5", "hub chat 5").await;
    page.step("hub news 1", "hub news 1").await;
    page.step("rates", "rates ok").await;

    // A session of the other node, found by ID and closed from this page.
    let id = on_b[1].id.clone();
    page.step(&format!("find-id {id}"), &format!("found {id} node-b"))
        .await;
    page.step(&format!("close {id}"), &format!("closed {id}"))
        .await;
    assert_eq!(
        on_b[1].closed().await,
        (1000, "closed by an operator".to_owned())
    );
    page.step("node node-b ready 2", "node node-b ready 2")
        .await;
    page.step("find-hub chat 4", "found-hub 4").await;

    // Drained from the page: its clients get 1001, the page shows it.
    page.step("drain", "drained").await;
    for c in &mut on_a {
        assert_eq!(c.closed().await.0, 1001);
    }
    page.step("node node-a draining 0", "node node-a draining 0")
        .await;
    assert_eq!(b.http_get("/readyz").await.0, 200, "only node-a drains");
    let _ = &mut on_b;

    // <target>/admin.png: the test executable is in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("test executable path");
    let shot = exe
        .ancestors()
        .nth(3)
        .expect("test executable is in <target>/<profile>/deps")
        .join("admin.png");
    let shot = shot.to_str().expect("a UTF-8 path");
    page.step(&format!("screenshot {shot}"), &format!("shot {shot}"))
        .await;
    page.step("quit", "bye").await;
    let status = within("the browser script to exit", page.child.wait())
        .await
        .expect("wait for the browser script");
    assert!(status.success(), "the browser script failed: {status}");
}

/// Listing by user and by group goes through the registry's indexes (users and groups from
/// client JWTs); names that need escaping in a query arrive intact.
#[tokio::test]
async fn sessions_are_listed_by_user_and_by_group_of_a_hub() {
    let gw = Gateway::start(&["--admin-token", TOKEN, "--jwt-secret", "topsecret"]).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        + 300;
    let connect = |user: &'static str, groups: &'static [&'static str], hub: &'static str| {
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &serde_json::json!({ "sub": user, "exp": exp, "groups": groups }),
            &jsonwebtoken::EncodingKey::from_secret(b"topsecret").expect("an HS256 key"),
        )
        .expect("a JWT");
        let bearer = format!("Bearer {token}");
        let url = gw.ws_url(hub);
        async move { Client::connect_with(&url, &[("authorization", &bearer)]).await }
    };
    let alice = [
        connect("alice@example.org", &["night"], "chat").await,
        connect("alice@example.org", &[], "news").await,
    ];
    let bob = connect("bob", &["night", "staff"], "chat").await;
    let ids = |v: &Value| -> HashSet<String> {
        v["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .map(|s| s["id"].as_str().expect("id").to_owned())
            .collect()
    };

    let by_user = get(&gw, "/admin/api/sessions?user=alice%40example.org").await;
    assert_eq!(ids(&by_user), alice.iter().map(|c| c.id.clone()).collect());
    assert_eq!(by_user["sessions"][0]["user"], "alice@example.org");
    let night = get(&gw, "/admin/api/sessions?group=night&hub=chat").await;
    assert_eq!(
        ids(&night),
        HashSet::from([alice[0].id.clone(), bob.id.clone()])
    );
    let staff = get(&gw, "/admin/api/sessions?hub=chat&group=staff").await;
    assert_eq!(ids(&staff), HashSet::from([bob.id.clone()]));
    assert_eq!(
        staff["sessions"][0]["groups"],
        serde_json::json!(["night", "staff"])
    );
    let nobody = get(&gw, "/admin/api/sessions?user=carol").await;
    assert_eq!(ids(&nobody), HashSet::new());
}
