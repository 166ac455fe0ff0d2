//! Real `redis-server` processes for tests: one server, or a three-master Redis Cluster, on
//! free loopback ports in a temporary directory, killed when dropped.

use std::{path::Path, process::Stdio};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::within;

/// A free loopback port (bound and released; the server binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

struct Server {
    child: Child,
    port: u16,
}

async fn start_server(dir: &Path, extra: &[&str]) -> Server {
    // A port taken between probing and binding makes redis exit; try a few.
    for _ in 0..5 {
        let port = free_port();
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--logfile", ""])
            .arg("--dir")
            .arg(dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (tests/run installs it)");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = within("redis-server to start", async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Ready to accept connections") {
                    return true;
                }
            }
            false
        })
        .await;
        if ready {
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Server { child, port };
        }
        let _ = child.kill().await;
    }
    panic!("redis-server did not start");
}

/// One Redis server.
pub struct Redis {
    server: Server,
    dir: tempfile::TempDir,
}

impl Redis {
    pub async fn start() -> Redis {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = start_server(dir.path(), &[]).await;
        Redis { server, dir }
    }

    pub fn port(&self) -> u16 {
        self.server.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.server.port)
    }

    /// Stops the server (the data is gone: it keeps none on disk).
    pub async fn stop(&mut self) {
        let _ = self.server.child.kill().await;
        let _ = self.server.child.wait().await;
    }

    /// Starts an empty server again on the same port.
    pub async fn restart_empty(&mut self) {
        self.stop().await;
        let port = self.server.port.to_string();
        let mut child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--logfile", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        within("redis-server to restart", async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Ready to accept connections") {
                    return;
                }
            }
            panic!("redis-server exited");
        })
        .await;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.server.child = child;
    }

    /// Runs `redis-cli` against this server and returns its output lines.
    pub async fn cli(&self, args: &[&str]) -> Vec<String> {
        cli(self.server.port, args).await
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.server.child.id().expect("redis-server running");
        let status = std::process::Command::new("kill")
            .args(["-s", signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {signal} redis-server");
    }
}

async fn cli(port: u16, args: &[&str]) -> Vec<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .await
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

/// A Redis Cluster of three masters.
pub struct RedisCluster {
    servers: Vec<Server>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut servers = Vec::new();
        for i in 0..3 {
            let sub = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&sub).expect("node dir");
            servers.push(
                start_server(
                    &sub,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                    ],
                )
                .await,
            );
        }
        let addrs: Vec<String> = servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = Command::new("redis-cli")
            .args(&args)
            .output()
            .await
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // The cluster is usable once every node agrees it is ok.
        within("the cluster to converge", async {
            loop {
                let mut ok = 0;
                for s in &servers {
                    let info = cli(s.port, &["cluster", "info"]).await;
                    if info.iter().any(|l| l.trim() == "cluster_state:ok") {
                        ok += 1;
                    }
                }
                if ok == servers.len() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
        .await;
        RedisCluster { servers, _dir: dir }
    }

    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// Every key matching `pattern`, across the masters.
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut all = Vec::new();
        for s in &self.servers {
            all.extend(cli(s.port, &["--scan", "--pattern", pattern]).await);
        }
        all
    }
}
