//! Many WebSocket clients held open by `hold-sockets` processes (`src/bin/hold-sockets.rs`),
//! so a test can give a gateway thousands of sessions without spending its own file
//! descriptors on them.

use std::{path::PathBuf, process::Stdio, sync::OnceLock, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, ChildStdin, Command},
};

use crate::gateway::cargo_build;

/// The `hold-sockets` binary, built once per test binary with the same profile as the tests.
pub fn hold_sockets_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        cargo_build("switchboard-tests", &["--bin", "hold-sockets"]).join("hold-sockets")
    })
    .clone()
}

/// One `hold-sockets` process and the sessions it holds; its sockets close when it is
/// dropped (the process is killed) or [`Holder::release`]d.
pub struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Session IDs of the held clients, in no particular order.
    pub ids: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Holder {
    /// Starts a holder of `count` clients of `url` (`ws://IP:PORT/ws/HUB`), at most
    /// `concurrency` upgrades at once, and waits until all of them are open.
    pub async fn open(url: &str, count: usize, concurrency: usize) -> Holder {
        let dir = tempfile::tempdir().expect("temp dir");
        let ids_file = dir.path().join("ids");
        let mut child = Command::new(hold_sockets_bin())
            .args(["--url", url])
            .args(["--count", &count.to_string()])
            .args(["--concurrency", &concurrency.to_string()])
            .arg("--ids-file")
            .arg(&ids_file)
            // A bound on the process's life in case the test forgets it.
            .args(["--max-seconds", "900"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn hold-sockets");
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        // Generous, and scaled to the work: a debug-build gateway on a busy machine.
        let patience = Duration::from_secs(60) + Duration::from_millis(20 * count as u64);
        let line = match tokio::time::timeout(patience, lines.next_line()).await {
            Ok(l) => l.expect("read hold-sockets stdout"),
            Err(_) => panic!("hold-sockets did not open {count} clients within {patience:?}"),
        };
        let line = line.unwrap_or_else(|| panic!("hold-sockets exited before opening {count}"));
        assert_eq!(line, format!("open {count}"), "hold-sockets said {line:?}");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let ids: Vec<String> = std::fs::read_to_string(&ids_file)
            .expect("hold-sockets wrote its IDs")
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(ids.len(), count, "one ID per held client");
        Holder {
            child,
            stdin,
            ids,
            _dir: dir,
        }
    }

    /// Closes the held clients (without close handshakes) and waits for the process to end.
    pub async fn release(mut self) {
        drop(self.stdin.take());
        let _ = crate::within("hold-sockets to exit", self.child.wait()).await;
    }
}
