//! The SDK's `file_notifier` example as a process against a real gateway: files dropped into
//! the watched folder reach every WebSocket client of the hub, HL7 v2 messages named by their
//! type and control ID; a malformed file is logged and does not stop it.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use switchboard_sdk::{Client, Target};
use switchboard_tests::{
    gateway::{example_bin, Gateway},
    redis::Redis,
    within, ws,
};
use tempfile::TempDir;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

/// A sample file from `tests/data/`.
fn sample(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(name)
}

/// Lines of the example's log kept for the test; far more than a test produces.
const LOG_LINES: usize = 1024;

/// A `file_notifier` process watching its own temporary folder; killed when dropped.
struct Notifier {
    child: Child,
    /// Its stderr (the log), line by line; each line is also echoed to the test's output.
    log: mpsc::Receiver<String>,
    dir: TempDir,
}

impl Notifier {
    /// Starts the example for `hub` of this gateway and waits until it watches its folder.
    async fn start(gw: &Gateway, hub: &str) -> Notifier {
        Self::start_with(&["--gateway", &format!("http://{}", gw.backend_addr)], hub).await
    }

    /// Starts the example with these flags to find the gateways.
    async fn start_with(gateways: &[&str], hub: &str) -> Notifier {
        let dir = tempfile::tempdir().expect("temporary folder");
        let mut child = Command::new(example_bin("file_notifier"))
            .args(gateways)
            .arg("--dir")
            .arg(dir.path())
            .args(["--hub", hub])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn file_notifier");
        let (tx, log) = mpsc::channel(LOG_LINES);
        let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                eprintln!("file_notifier| {line}");
                let _ = tx.try_send(line);
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        within("file_notifier to watch its folder", async {
            loop {
                let line = stdout
                    .next_line()
                    .await
                    .expect("read file_notifier stdout")
                    .expect("file_notifier exited before it watched its folder");
                if line.starts_with("file_notifier: watching") {
                    return;
                }
            }
        })
        .await;
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        Notifier { child, log, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Waits for a log line that contains every one of `words`, and returns it.
    async fn logged(&mut self, words: &[&str]) -> String {
        within(&format!("a log line with {words:?}"), async {
            loop {
                let line = self.log.recv().await.expect("file_notifier's log ended");
                if words.iter().all(|w| line.contains(w)) {
                    return line;
                }
            }
        })
        .await
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("poll file_notifier").is_none()
    }
}

/// The next message a client gets, which must be a JSON file note.
async fn note(c: &mut ws::Client) -> serde_json::Value {
    let text = c.text().await;
    let note: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?} is not JSON: {e}"));
    assert_eq!(note["type"], "file", "{note}");
    note
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {from:?} to {to:?}: {e}"));
}

#[tokio::test]
async fn an_hl7_file_dropped_in_the_folder_is_announced_to_every_client_of_the_hub() {
    let gw = Gateway::start(&[]).await;
    let notifier = Notifier::start(&gw, "files").await;
    let mut clients = [gw.connect("files").await, gw.connect("files").await];
    let mut elsewhere = gw.connect("other").await;

    copy(&sample("adt_a01.hl7"), &notifier.path("adt_a01.hl7"));
    let size = std::fs::metadata(sample("adt_a01.hl7")).unwrap().len();
    for c in &mut clients {
        let n = note(c).await;
        assert_eq!(n["name"], "adt_a01.hl7", "{n}");
        assert_eq!(n["hl7"]["message_type"], "ADT^A01", "{n}");
        assert_eq!(n["hl7"]["control_id"], "MSG00001", "{n}");
        assert_eq!(n["bytes"], size, "{n}");
        assert!(n.get("malformed").is_none(), "{n}");
    }

    // Any other file is announced by its name.
    std::fs::write(notifier.path("scan.pdf"), b"%PDF-1.7\n%%EOF\n").unwrap();
    for c in &mut clients {
        let n = note(c).await;
        assert_eq!(n["name"], "scan.pdf", "{n}");
        assert!(
            n.get("hl7").is_none() && n.get("malformed").is_none(),
            "{n}"
        );
    }

    // Written under a hidden name, then moved in: announced once, under its final name.
    let part = notifier.path(".lab.hl7.part");
    std::fs::write(
        &part,
        "MSH|^~\\&|LAB|GHH|EHR|GHH|20240315090000||ORU^R01^ORU_R01|LAB-77|P|2.5\r\
         OBR|1||55|CBC\r",
    )
    .unwrap();
    std::fs::rename(&part, notifier.path("lab.hl7")).unwrap();
    std::fs::write(notifier.path("last.txt"), "the end\n").unwrap();
    for c in &mut clients {
        let n = note(c).await;
        assert_eq!(n["name"], "lab.hl7", "{n}");
        assert_eq!(n["hl7"]["message_type"], "ORU^R01^ORU_R01", "{n}");
        assert_eq!(n["hl7"]["control_id"], "LAB-77", "{n}");
        assert_eq!(note(c).await["name"], "last.txt");
    }

    // Only the hub was told: the other hub's client gets nothing before this.
    let sb = Client::builder()
        .gateway(format!("http://{}", gw.backend_addr))
        .build()
        .await
        .unwrap();
    sb.publish(Target::hub("other"), "sentinel").await.unwrap();
    assert_eq!(elsewhere.text().await, "sentinel");
}

#[tokio::test]
async fn a_malformed_hl7_file_is_logged_and_announced_as_malformed_and_the_notifier_goes_on() {
    let gw = Gateway::start(&[]).await;
    let mut notifier = Notifier::start(&gw, "files").await;
    let mut c = gw.connect("files").await;

    copy(&sample("malformed.hl7"), &notifier.path("malformed.hl7"));
    let n = note(&mut c).await;
    assert_eq!(n["name"], "malformed.hl7", "{n}");
    assert!(n.get("hl7").is_none(), "{n}");
    assert_eq!(
        n["malformed"],
        "MSH has 4 fields: the message type and control ID are fields 9 and 10"
    );
    let line = notifier
        .logged(&["ERROR", "malformed HL7 file", "malformed.hl7"])
        .await;
    assert!(line.contains("MSH has 4 fields"), "{line}");
    assert!(notifier.is_running(), "a malformed file is not fatal");

    copy(&sample("adt_a01.hl7"), &notifier.path("after.hl7"));
    let n = note(&mut c).await;
    assert_eq!(n["name"], "after.hl7", "{n}");
    assert_eq!(n["hl7"]["message_type"], "ADT^A01", "{n}");
    assert_eq!(n["hl7"]["control_id"], "MSG00001", "{n}");
    assert!(notifier.is_running());
}

#[tokio::test]
async fn a_file_written_in_pieces_is_announced_once_it_is_complete() {
    use std::io::Write;

    let gw = Gateway::start(&[]).await;
    let notifier = Notifier::start(&gw, "files").await;
    let mut c = gw.connect("files").await;
    let whole = std::fs::read(sample("adt_a01.hl7")).unwrap();

    // The first piece alone would be a malformed header (`MSH|^~\&|ADT1|GOOD H`).
    let mut f = std::fs::File::create(notifier.path("slow.hl7")).unwrap();
    f.write_all(&whole[..20]).unwrap();
    // A writer pausing longer than the settle time (250 ms) between pieces: this sleep is the
    // scenario, not a wait for the notifier.
    tokio::time::sleep(Duration::from_millis(800)).await;
    f.write_all(&whole[20..]).unwrap();
    drop(f);

    let n = note(&mut c).await;
    assert_eq!(n["name"], "slow.hl7", "{n}");
    assert_eq!(n["bytes"], whole.len(), "{n}");
    assert_eq!(n["hl7"]["message_type"], "ADT^A01", "{n}");
    assert_eq!(n["hl7"]["control_id"], "MSG00001", "{n}");
}

#[tokio::test]
async fn with_redis_the_notifier_finds_the_gateway_nodes_and_the_clients_of_every_node_are_told() {
    let redis = Redis::start().await;
    let url = redis.url();
    let node = |id: &'static str| {
        let url = url.clone();
        async move {
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
            .await
        }
    };
    let (a, b) = (node("node-a").await, node("node-b").await);
    // A publish through either node reaches both once the nodes have seen each other's leases.
    let _probes = [a.connect("probe").await, b.connect("probe").await];
    for gw in [&a, &b] {
        let sb = Client::builder()
            .gateway(format!("http://{}", gw.backend_addr))
            .build()
            .await
            .unwrap();
        within("the nodes to see each other", async {
            while sb
                .publish(Target::hub("probe"), "probe")
                .await
                .unwrap()
                .queued
                < 2
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
    }

    // The only gateway address given is dead: the nodes come from Redis.
    let notifier = Notifier::start_with(
        &["--gateway", "http://127.0.0.1:1", "--redis-url", &url],
        "files",
    )
    .await;
    let mut clients = [a.connect("files").await, b.connect("files").await];
    copy(&sample("adt_a01.hl7"), &notifier.path("adt_a01.hl7"));
    for c in &mut clients {
        let n = note(c).await;
        assert_eq!(n["hl7"]["message_type"], "ADT^A01", "{n}");
        assert_eq!(n["hl7"]["control_id"], "MSG00001", "{n}");
    }
}
