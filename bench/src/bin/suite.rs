//! The benchmark suite: starts every process a scenario needs (gateways, redis-server, the
//! peers nginx+nchan, Pushpin and Bun, load generators, publishers), measures, prints a table
//! per scenario and writes every record to `OUT/suite.json` for `report`.
//!
//! `suite run --out DIR [--quick] [--only fanout,unicast,...] [--peers nchan,pushpin,bun]`
//! `suite smoke` (a few hundred sockets, Switchboard only, exact delivery asserted; the last
//! line is `bench-smoke: N passed, M failed`).
//!
//! Scenarios: `fanout` (idle RSS per connection, then hub-wide broadcasts of 100 B and 2 KiB:
//! latency, time to the last socket, server CPU per delivered message), `multinode` (50k+
//! sockets over three gateway nodes sharing Redis: RSS per connection and one exact
//! broadcast), `unicast` (Send at increasing rates to one socket each of 10k idle sockets, then
//! SendBatch of every message due each millisecond over the same sockets; also through the
//! non-owning node of a two-node Redis cluster), `churn` (connect + upgrade + close
//! loops with the Redis registry; Redis commands and reads per connect), `flood` (one socket,
//! server-to-client throughput at 20 B, 1 KiB, 16 KiB), `compression` (a 2 KiB JSON broadcast
//! to 10k sockets with and without permessage-deflate: idle RSS, server CPU and bytes on the
//! wire per delivered message, gateway and nchan), `tls` (10k sockets over wss:// and over
//! ws:// in the same run: the gateway's idle RSS per connection and broadcast CPU), `http2` (10k idle WebSocket sessions over
//! HTTP/2, 100 per connection: RSS per session), `scale` (100k sockets over six gateway nodes
//! sharing a three-master Redis Cluster: connect rate, gateway RSS, Redis and kernel memory per
//! connection, one exact hub-wide broadcast and its time to the last socket), `subscribe`
//! (50,000 client messages/s to four `Subscribe` consumer groups: rate, event latency, gateway
//! CPU per client message).

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    net::TcpStream as StdTcpStream,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};
use switchboard_bench::{
    procfs::{self, CpuTicks},
    results::{PublishReport, RawSamples, RoundSummary},
    stats::{cdf_us, percentiles_us, quantile, Percentiles},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
    time::{sleep, timeout},
};

#[derive(Parser)]
#[command(about = "Switchboard benchmark suite, with nginx+nchan, Pushpin and Bun side by side")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run scenarios and write OUT/suite.json.
    Run(RunArgs),
    /// A few hundred sockets against one gateway; asserts exact delivery only.
    Smoke(CommonArgs),
}

#[derive(Args, Clone)]
struct CommonArgs {
    /// The gateway binary (default: next to this executable).
    #[arg(long)]
    gateway_bin: Option<PathBuf>,
    /// Scratch folder for logs and samples (default: a new folder under the system temp dir).
    #[arg(long)]
    work: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct RunArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Where suite.json goes.
    #[arg(long)]
    out: PathBuf,
    /// Small sizes and short steps.
    #[arg(long)]
    quick: bool,
    /// Scenarios to run (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Peers to run beside the gateway: nchan, pushpin, bun (default: each one installed; Bun
    /// from `PEERS_DIR/bun/`, see bench/peers/install; `none` for none).
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Folder with the peers' configuration templates.
    #[arg(long)]
    peers_dir: Option<PathBuf>,
}

/// One measured row; `report` takes medians over runs of rows with the same key.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    pub scenario: String,
    pub target: String,
    pub params: BTreeMap<String, f64>,
    pub metrics: BTreeMap<String, f64>,
    pub exact: Option<bool>,
    pub notes: Vec<String>,
    /// Latency CDF: (microseconds, quantile).
    pub cdf: Vec<(f64, f64)>,
}

#[derive(Serialize, Deserialize)]
struct SuiteFile {
    started: String,
    seconds: f64,
    quick: bool,
    machine: BTreeMap<String, String>,
    command: String,
    records: Vec<Record>,
}

struct Env {
    bin_dir: PathBuf,
    gateway_bin: PathBuf,
    peers_dir: PathBuf,
    work: PathBuf,
    clk_tck: u64,
    next_source: u32,
    next_dir: u32,
}

impl Env {
    fn new(common: &CommonArgs, peers_dir: Option<PathBuf>) -> Result<Env> {
        let exe = std::env::current_exe()?;
        let bin_dir = exe.parent().context("exe dir")?.to_path_buf();
        let gateway_bin = common
            .gateway_bin
            .clone()
            .unwrap_or_else(|| bin_dir.join("switchboard-gateway"));
        anyhow::ensure!(
            gateway_bin.exists(),
            "no gateway binary at {} (cargo build --release -p switchboard-gateway)",
            gateway_bin.display()
        );
        let work = match &common.work {
            Some(w) => w.clone(),
            None => std::env::temp_dir().join(format!("switchboard-bench-{}", std::process::id())),
        };
        std::fs::create_dir_all(&work)?;
        // nginx and Pushpin resolve relative paths against their own prefix: use absolute ones.
        let work = std::fs::canonicalize(&work)?;
        let peers_dir =
            peers_dir.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peers"));
        let peers_dir = std::fs::canonicalize(&peers_dir).unwrap_or(peers_dir);
        Ok(Env {
            bin_dir,
            gateway_bin,
            peers_dir,
            work,
            clk_tck: procfs::clock_ticks(),
            next_source: 0,
            next_dir: 0,
        })
    }

    /// Two fresh loopback source addresses (127.0.0.2 ... 127.0.0.254, cycling).
    fn sources(&mut self) -> String {
        let mut v = Vec::new();
        for _ in 0..2 {
            v.push(format!("127.0.0.{}", 2 + self.next_source % 253));
            self.next_source += 1;
        }
        v.join(",")
    }

    fn dir(&mut self, name: &str) -> Result<PathBuf> {
        self.next_dir += 1;
        let d = self.work.join(format!("{:03}-{name}", self.next_dir));
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }

    fn us_per_tick(&self) -> f64 {
        1e6 / self.clk_tck as f64
    }
}

fn port_open(port: u16) -> bool {
    StdTcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().expect("addr"),
        Duration::from_millis(200),
    )
    .is_ok()
}

async fn wait_ports(ports: &[u16], what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ports.iter().all(|&p| port_open(p)) {
        if Instant::now() > deadline {
            bail!("{what} did not open ports {ports:?}");
        }
        sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

async fn stop_child(child: &mut Child, sig: &str) {
    if let Some(pid) = child.id() {
        signal(pid, sig);
    }
    if timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Servers

struct GatewayProc {
    child: Child,
    pid: u32,
    client: String,
    backend: String,
}

async fn start_gateway(env: &mut Env, args: &[String]) -> Result<GatewayProc> {
    let dir = env.dir("gateway")?;
    let stderr = std::fs::File::create(dir.join("stderr.log"))?;
    let (child, client, backend) =
        switchboard_bench::spawn_gateway(Path::new(&env.gateway_bin), args, stderr.into()).await?;
    Ok(GatewayProc {
        pid: child.id().context("pid")?,
        client,
        backend,
        child,
    })
}

struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    async fn start(env: &mut Env) -> Result<Redis> {
        Self::start_with(env, &[]).await
    }

    async fn start_with(env: &mut Env, extra: &[&str]) -> Result<Redis> {
        let dir = env.dir("redis")?;
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawn redis-server (bench/peers/install installs it)")?;
        wait_ports(&[port], "redis-server").await?;
        Ok(Redis { child, port })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn info(&self, section: &str) -> BTreeMap<String, String> {
        self.info_of(&["info", section])
    }

    /// `key:value` lines a redis-cli command prints.
    fn info_of(&self, command: &[&str]) -> BTreeMap<String, String> {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(command)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.lines()
            .filter_map(|l| l.trim().split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// `cmdstat_<name>` → calls.
    fn command_calls(&self) -> BTreeMap<String, u64> {
        self.info("commandstats")
            .into_iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix("cmdstat_")?.to_owned();
                let calls = v
                    .split(',')
                    .find_map(|f| f.strip_prefix("calls="))?
                    .parse()
                    .ok()?;
                Some((name, calls))
            })
            .collect()
    }

    fn reads_processed(&self) -> u64 {
        self.info("stats")
            .get("total_reads_processed")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn used_memory(&self) -> u64 {
        self.info("memory")
            .get("used_memory")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn keys(&self) -> u64 {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "dbsize"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.trim().parse().unwrap_or(0)
    }
}

/// A Redis Cluster of three masters without replicas, persistence off.
struct RedisCluster {
    masters: Vec<Redis>,
}

impl RedisCluster {
    async fn start(env: &mut Env) -> Result<RedisCluster> {
        let mut masters = Vec::new();
        for _ in 0..3 {
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ];
            masters.push(Redis::start_with(env, &extra).await?);
        }
        let addrs: Vec<String> = masters
            .iter()
            .map(|r| format!("127.0.0.1:{}", r.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .await
            .context("redis-cli --cluster create")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !masters.iter().all(|m| {
            m.info_of(&["cluster", "info"])
                .get("cluster_state")
                .map(String::as_str)
                == Some("ok")
        }) {
            if Instant::now() > deadline {
                bail!("the Redis Cluster did not reach cluster_state:ok in 30 s");
            }
            sleep(Duration::from_millis(100)).await;
        }
        Ok(RedisCluster { masters })
    }

    fn url(&self) -> String {
        let addrs: Vec<String> = self
            .masters
            .iter()
            .map(|r| format!("127.0.0.1:{}", r.port))
            .collect();
        format!("redis+cluster://{}", addrs.join(","))
    }

    fn used_memory(&self) -> u64 {
        self.masters.iter().map(Redis::used_memory).sum()
    }

    fn keys(&self) -> u64 {
        self.masters.iter().map(Redis::keys).sum()
    }

    async fn stop(self) {
        for mut m in self.masters {
            stop_child(&mut m.child, "TERM").await;
        }
    }
}

/// A system under test: its processes (for RSS and CPU), its WebSocket URL(s) and how to
/// publish to it.
#[allow(clippy::large_enum_variant)] // one value at a time
enum Server {
    Gateway {
        nodes: Vec<GatewayProc>,
        _redis: Option<Redis>,
    },
    Nchan {
        master: Child,
    },
    Pushpin {
        runner: Child,
        zurl: Child,
        backend: Child,
    },
    Bun {
        child: Child,
    },
}

impl Server {
    /// Every process of the server (gateway nodes; nginx master and workers; Pushpin's runner,
    /// condure, proxy, handler and zurl — not the GRIP backend, which is the application; the
    /// bun process and any child of it).
    fn pids(&self) -> Vec<u32> {
        match self {
            Server::Gateway { nodes, .. } => nodes.iter().map(|n| n.pid).collect(),
            Server::Nchan { master: child } | Server::Bun { child } => child
                .id()
                .map(|p| procfs::tree(p).into_iter().collect())
                .unwrap_or_default(),
            Server::Pushpin { runner, zurl, .. } => {
                let mut v: Vec<u32> = runner
                    .id()
                    .map(|p| procfs::tree(p).into_iter().collect())
                    .unwrap_or_default();
                v.extend(zurl.id());
                v
            }
        }
    }

    fn node_pid(&self, node: usize) -> u32 {
        match self {
            Server::Gateway { nodes, .. } => nodes[node].pid,
            _ => 0,
        }
    }

    fn ws_url(&self, node: usize) -> String {
        match self {
            Server::Gateway { nodes, .. } => format!("ws://{}/ws/bench", nodes[node].client),
            Server::Nchan { .. } => "ws://127.0.0.1:8090/sub/{i}".into(),
            Server::Pushpin { .. } => "ws://127.0.0.1:7999/ws?session={i}".into(),
            Server::Bun { .. } => format!("ws://127.0.0.1:{BUN_PORT}/sub/{{i}}"),
        }
    }

    /// (`--target`, `--endpoint`) for the publisher, publishing through `node`.
    fn publish_to(&self, node: usize) -> (&'static str, String) {
        match self {
            Server::Gateway { nodes, .. } => {
                ("switchboard", format!("http://{}", nodes[node].backend))
            }
            Server::Nchan { .. } => ("nchan", "http://127.0.0.1:8091".into()),
            Server::Pushpin { .. } => ("pushpin", "http://127.0.0.1:5561".into()),
            Server::Bun { .. } => ("bun", format!("http://127.0.0.1:{BUN_PORT}")),
        }
    }

    fn rss_kib(&self) -> u64 {
        procfs::rss_kib_sum(&self.pids())
    }

    fn cpu(&self) -> CpuTicks {
        procfs::cpu_ticks_sum(&self.pids())
    }

    async fn stop(self) {
        match self {
            Server::Gateway { nodes, _redis } => {
                for mut n in nodes {
                    stop_child(&mut n.child, "TERM").await;
                }
                if let Some(mut r) = _redis {
                    stop_child(&mut r.child, "TERM").await;
                }
            }
            Server::Nchan { mut master } => stop_child(&mut master, "QUIT").await,
            Server::Bun { mut child } => stop_child(&mut child, "TERM").await,
            Server::Pushpin {
                mut runner,
                mut zurl,
                mut backend,
            } => {
                stop_child(&mut runner, "TERM").await;
                stop_child(&mut zurl, "TERM").await;
                stop_child(&mut backend, "TERM").await;
            }
        }
        // Let sockets and ports settle before the next server starts.
        sleep(Duration::from_millis(500)).await;
    }
}

async fn gateway_server(env: &mut Env, nodes: usize, redis: bool) -> Result<Server> {
    let r = if redis {
        Some(Redis::start(env).await?)
    } else {
        None
    };
    let mut v = Vec::new();
    for k in 0..nodes {
        let mut args = Vec::new();
        if let Some(r) = &r {
            args.extend(["--redis-url".to_owned(), r.url()]);
            args.extend(["--node-id".to_owned(), format!("bench-{k}")]);
        }
        v.push(start_gateway(env, &args).await?);
    }
    if nodes > 1 {
        // Nodes learn about each other from the lease list, refreshed every lease period.
        sleep(Duration::from_secs(4)).await;
    }
    sleep(Duration::from_millis(300)).await;
    Ok(Server::Gateway {
        nodes: v,
        _redis: r,
    })
}

fn render(template: &Path, dir: &Path, out: &Path) -> Result<()> {
    render_with(template, out, &[("PEERDIR", dir.display().to_string())])
}

/// A peer's configuration with each `(NAME, value)` filled in.
fn render_with(template: &Path, out: &Path, vars: &[(&str, String)]) -> Result<()> {
    let mut text = std::fs::read_to_string(template)
        .with_context(|| format!("read {}", template.display()))?;
    for (name, value) in vars {
        text = text.replace(name, value);
    }
    std::fs::write(out, text)?;
    Ok(())
}

/// Threads the gateway's runtime has here (one per core), the nginx workers of the even row.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The fan-out row of nchan with as many workers as the gateway has threads.
fn nchan_all_workers() -> String {
    format!("nchan-{}w", cores())
}

async fn nchan_server(env: &mut Env, workers: usize) -> Result<Server> {
    anyhow::ensure!(
        !port_open(8090) && !port_open(8091),
        "ports 8090/8091 are taken: another nginx runs"
    );
    let dir = env.dir("nchan")?;
    for d in ["logs", "body", "proxy", "fcgi", "uwsgi", "scgi"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    render_with(
        &env.peers_dir.join("nginx.conf"),
        &dir.join("nginx.conf"),
        &[
            ("PEERDIR", dir.display().to_string()),
            ("WORKERS", workers.to_string()),
        ],
    )?;
    let master = Command::new("nginx")
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-p")
        .arg(&dir)
        .stdout(std::fs::File::create(dir.join("stdout.log"))?)
        .stderr(std::fs::File::create(dir.join("stderr.log"))?)
        .kill_on_drop(true)
        .spawn()
        .context("spawn nginx (bench/peers/install installs it)")?;
    wait_ports(&[8090, 8091], "nginx").await?;
    sleep(Duration::from_millis(500)).await;
    Ok(Server::Nchan { master })
}

async fn pushpin_server(env: &mut Env) -> Result<Server> {
    anyhow::ensure!(
        ![7999, 5561, 8092].iter().any(|&p| port_open(p)),
        "ports 7999/5561/8092 are taken: another Pushpin runs"
    );
    let dir = env.dir("pushpin")?;
    std::fs::create_dir_all(dir.join("run"))?;
    std::fs::create_dir_all(dir.join("log"))?;
    let p = env.peers_dir.clone();
    render(&p.join("pushpin.conf"), &dir, &dir.join("pushpin.conf"))?;
    render(&p.join("zurl.conf"), &dir, &dir.join("zurl.conf"))?;
    render(&p.join("pushpin-routes"), &dir, &dir.join("routes"))?;
    let log = |n: &str| std::fs::File::create(dir.join("log").join(n));
    let zurl = Command::new("zurl")
        .arg(format!("--config={}", dir.join("zurl.conf").display()))
        .arg(format!("--logfile={}", dir.join("log/zurl.log").display()))
        .arg("--loglevel=1")
        .stdout(log("zurl.stdout")?)
        .stderr(log("zurl.stderr")?)
        .kill_on_drop(true)
        .spawn()
        .context("spawn zurl")?;
    let backend = Command::new("node")
        .arg(p.join("grip_backend.js"))
        .stdout(log("grip.stdout")?)
        .stderr(log("grip.stderr")?)
        .kill_on_drop(true)
        .spawn()
        .context("spawn node")?;
    let runner = Command::new("pushpin")
        .arg("--config")
        .arg(dir.join("pushpin.conf"))
        .arg("--logfile")
        .arg(dir.join("log/pushpin.log"))
        .stdout(log("pushpin.stdout")?)
        .stderr(log("pushpin.stderr")?)
        .kill_on_drop(true)
        .spawn()
        .context("spawn pushpin (bench/peers/install installs it)")?;
    wait_ports(&[7999, 5561, 8092], "pushpin").await?;
    sleep(Duration::from_secs(1)).await;
    Ok(Server::Pushpin {
        runner,
        zurl,
        backend,
    })
}

/// Bun's pub/sub script (`bun_pubsub.js`) listens here, for sockets and publishes alike.
const BUN_PORT: u16 = 8097;

/// The Bun binary that bench/peers/install puts under `PEERS_DIR/bun/` (npm package `bun`):
/// `node_modules/.bin/bun` once the package's postinstall has put the platform binary in place
/// of its placeholder script, or else the platform package's own binary. None when neither is
/// there.
fn bun_bin(peers_dir: &Path) -> Option<PathBuf> {
    let modules = peers_dir.join("bun").join("node_modules");
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x64",
        "aarch64" => "aarch64",
        other => other,
    };
    let mut candidates = vec![modules.join(".bin").join("bun")];
    for variant in ["", "-baseline", "-musl", "-musl-baseline"] {
        candidates.push(
            modules
                .join("@oven")
                .join(format!("bun-linux-{arch}{variant}"))
                .join("bin")
                .join("bun"),
        );
    }
    // The placeholder is a small script that only says the postinstall did not run.
    let is_elf = |p: &Path| {
        let mut magic = [0u8; 4];
        std::fs::File::open(p)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok_and(|()| magic == *b"\x7fELF")
    };
    candidates.into_iter().find(|p| is_elf(p))
}

async fn bun_server(env: &mut Env) -> Result<Server> {
    anyhow::ensure!(
        !port_open(BUN_PORT),
        "port {BUN_PORT} is taken: another Bun peer runs"
    );
    let bin = bun_bin(&env.peers_dir).with_context(|| {
        format!(
            "no bun binary under {} (bench/peers/install installs it)",
            env.peers_dir.join("bun").display()
        )
    })?;
    let dir = env.dir("bun")?;
    let child = Command::new(&bin)
        .arg(env.peers_dir.join("bun_pubsub.js"))
        .arg(BUN_PORT.to_string())
        .current_dir(&dir)
        // Bun's opt-out of telemetry and crash-report uploads: nothing leaves loopback.
        .env("DO_NOT_TRACK", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout.log"))?)
        .stderr(std::fs::File::create(dir.join("stderr.log"))?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    wait_ports(&[BUN_PORT], "bun").await?;
    sleep(Duration::from_millis(500)).await;
    Ok(Server::Bun { child })
}

async fn start_server(env: &mut Env, kind: &str) -> Result<Server> {
    match kind {
        "switchboard" => gateway_server(env, 1, false).await,
        "nchan" => nchan_server(env, 1).await,
        t if t == nchan_all_workers() => nchan_server(env, cores()).await,
        "pushpin" => pushpin_server(env).await,
        "bun" => bun_server(env).await,
        other => bail!("unknown target {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Load generators and publishers

struct Loadgen {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    name: String,
    out: PathBuf,
    count: u64,
    opened: u64,
    rss0_kib: u64,
    rss_kib: u64,
    sessions: PathBuf,
}

struct LgSpec {
    url: String,
    count: u64,
    base: u64,
    /// Offer permessage-deflate.
    deflate: bool,
    /// For `wss://` URLs: the certificate authority to trust.
    tls_ca: Option<PathBuf>,
}

fn kv(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

impl Loadgen {
    async fn start(
        env: &mut Env,
        spec: &LgSpec,
        name: &str,
        out: &Path,
        rate: f64,
    ) -> Result<Loadgen> {
        let sessions = out.join(format!("{name}.sessions.tsv"));
        let mut child = Command::new(env.bin_dir.join("loadgen"))
            .arg("hold")
            .args(["--url", &spec.url])
            .args(["--count", &spec.count.to_string()])
            .args(["--base", &spec.base.to_string()])
            .args(["--rate", &format!("{rate}")])
            .args(["--source", &env.sources()])
            .args(["--name", name])
            .arg("--out-dir")
            .arg(out)
            .arg("--sessions-file")
            .arg(&sessions)
            .args(spec.deflate.then_some("--deflate"))
            .args(
                spec.tls_ca
                    .iter()
                    .flat_map(|ca| [OsStr::new("--tls-ca"), ca.as_os_str()]),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(out.join(format!("{name}.stderr")))?)
            .kill_on_drop(true)
            .spawn()
            .context("spawn loadgen")?;
        let stdin = child.stdin.take().context("stdin")?;
        let lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        Ok(Loadgen {
            child,
            stdin,
            lines,
            name: name.to_owned(),
            out: out.to_owned(),
            count: spec.count,
            opened: 0,
            rss0_kib: 0,
            rss_kib: 0,
            sessions,
        })
    }

    async fn line(&mut self, wait: Duration, prefix: &str) -> Result<String> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let l = timeout(left, self.lines.next_line())
                .await
                .with_context(|| format!("{}: no `{prefix}` line in {wait:?}", self.name))??
                .with_context(|| format!("{} exited", self.name))?;
            if l.starts_with(prefix) {
                return Ok(l);
            }
            eprintln!("  [{}] {l}", self.name);
        }
    }

    async fn opened(&mut self, wait: Duration) -> Result<()> {
        let l = self.line(wait, "opened").await?;
        self.opened = kv(&l, "ok").unwrap_or(0);
        self.rss0_kib = kv(&l, "rss0_kib").unwrap_or(0);
        self.rss_kib = kv(&l, "rss_kib").unwrap_or(0);
        if self.opened < self.count {
            eprintln!("  [{}] {l}", self.name);
        }
        Ok(())
    }

    async fn send(&mut self, cmd: &str) -> Result<()> {
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    async fn finish(
        &mut self,
        tag: &str,
        expect: &str,
        wait_ms: u64,
    ) -> Result<(RoundSummary, RawSamples)> {
        self.send(&format!("finish {tag} {expect} {wait_ms}"))
            .await?;
        let l = self
            .line(Duration::from_millis(wait_ms + 60_000), "finished")
            .await?;
        if !l.contains("exact=true") {
            eprintln!("  [{}] {l}", self.name);
        }
        let s: RoundSummary = serde_json::from_slice(&std::fs::read(
            self.out.join(format!("{tag}.{}.json", self.name)),
        )?)?;
        let raw: RawSamples = serde_json::from_slice(&std::fs::read(
            self.out.join(format!("{tag}.{}.raw.json", self.name)),
        )?)?;
        Ok((s, raw))
    }

    async fn close(mut self) {
        let _ = self.send("close").await;
        let _ = self.line(Duration::from_secs(20), "closed").await;
        if timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// Opens `specs` load generators at once and waits until every socket is up.
async fn open_all(
    env: &mut Env,
    specs: &[LgSpec],
    out: &Path,
    total_rate: f64,
) -> Result<Vec<Loadgen>> {
    let rate = total_rate / specs.len() as f64;
    let mut lgs = Vec::new();
    for (k, s) in specs.iter().enumerate() {
        lgs.push(Loadgen::start(env, s, &format!("lg{k}"), out, rate).await?);
    }
    let biggest = specs.iter().map(|s| s.count).max().unwrap_or(0) as f64;
    let wait = Duration::from_secs_f64(biggest / rate + 120.0);
    for lg in &mut lgs {
        lg.opened(wait).await?;
    }
    Ok(lgs)
}

/// Splits `n` sockets over load generators of at most 10,000 (at least two from 2,000 up).
fn split(url: &str, n: u64, base: u64) -> Vec<LgSpec> {
    let k = n.div_ceil(10_000).max(if n >= 2000 { 2 } else { 1 });
    let mut v = Vec::new();
    let mut at = 0;
    for i in 0..k {
        let c = n / k + u64::from(i < n % k);
        v.push(LgSpec {
            url: url.to_owned(),
            count: c,
            base: base + at,
            deflate: false,
            tls_ca: None,
        });
        at += c;
    }
    v
}

async fn publish(
    env: &Env,
    target: &str,
    endpoint: &str,
    args: &[String],
    wait: Duration,
) -> Result<PublishReport> {
    let out = timeout(
        wait,
        Command::new(env.bin_dir.join("publish"))
            .args(["--target", target, "--endpoint", endpoint])
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("publisher timed out")??;
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).with_context(|| format!("publisher said {text:?}"))
}

fn sargs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Merged view of one round over every load generator.
struct Round {
    expected: u64,
    delivered: u64,
    duplicates: u64,
    unexpected: u64,
    /// Messages whose bytes were not what was sent.
    corrupt: u64,
    /// Messages a socket got after one with a higher sequence number.
    out_of_order: u64,
    dropped: u64,
    failed: u64,
    exact: bool,
    latency: Percentiles,
    cdf: Vec<(f64, f64)>,
    /// Per broadcast message: last receive minus send, microseconds.
    to_last_us: Vec<f64>,
    first_sent_ns: u64,
    last_recv_ns: u64,
    /// Bytes the sockets read (frames as the wire carried them).
    wire_bytes: u64,
    /// Sockets whose server agreed to permessage-deflate.
    deflated: u64,
}

async fn finish_all(lgs: &mut [Loadgen], tag: &str, expect: &str, wait_ms: u64) -> Result<Round> {
    let mut lat = Vec::new();
    let mut spans: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut r = Round {
        expected: 0,
        delivered: 0,
        duplicates: 0,
        unexpected: 0,
        corrupt: 0,
        out_of_order: 0,
        dropped: 0,
        failed: 0,
        exact: true,
        latency: Percentiles::default(),
        cdf: Vec::new(),
        to_last_us: Vec::new(),
        first_sent_ns: u64::MAX,
        last_recv_ns: 0,
        wire_bytes: 0,
        deflated: 0,
    };
    for lg in lgs.iter_mut() {
        let (s, raw) = lg.finish(tag, expect, wait_ms).await?;
        r.expected += s.expected;
        r.delivered += s.delivered;
        r.duplicates += s.duplicates;
        r.unexpected += s.unexpected;
        r.corrupt += s.corrupt;
        r.out_of_order += s.out_of_order;
        r.dropped += s.sockets_dropped;
        r.failed += s.sockets_failed;
        r.exact &= s.exact;
        r.wire_bytes += s.wire_bytes;
        r.deflated += s.deflated_sockets;
        if s.delivered > 0 {
            r.first_sent_ns = r.first_sent_ns.min(s.first_sent_ns);
            r.last_recv_ns = r.last_recv_ns.max(s.last_recv_ns);
        }
        lat.extend(
            raw.sent_ns
                .iter()
                .zip(&raw.recv_ns)
                .map(|(s, r)| r.saturating_sub(*s)),
        );
        for sp in s.per_seq {
            let e = spans.entry(sp.seq).or_insert((sp.sent_ns, 0));
            e.1 = e.1.max(sp.last_recv_ns);
        }
    }
    r.latency = percentiles_us(&mut lat);
    r.cdf = cdf_us(&lat, 200);
    r.to_last_us = spans
        .values()
        .map(|(s, l)| l.saturating_sub(*s) as f64 / 1000.0)
        .collect();
    if r.first_sent_ns == u64::MAX {
        r.first_sent_ns = 0;
    }
    Ok(r)
}

async fn close_all(lgs: Vec<Loadgen>) {
    let mut v = Vec::new();
    for lg in lgs {
        v.push(tokio::spawn(lg.close()));
    }
    for h in v {
        let _ = h.await;
    }
}

fn ms(us: f64) -> String {
    format!("{:.1}", us / 1000.0)
}

fn row(cells: &[String]) {
    println!("| {} |", cells.join(" | "));
}

// ---------------------------------------------------------------------------------------------
// Scenarios

struct Plan {
    quick: bool,
    fanout_sizes: Vec<u64>,
    pushpin_max: u64,
    multinode_per_node: u64,
    /// Sockets per node of the six-node Redis Cluster run.
    scale_per_node: u64,
    unicast_sockets: u64,
    unicast_rates: Vec<f64>,
    /// Rates for the gateway driven with `SendBatch` (the `-batch` rows).
    unicast_batch_rates: Vec<f64>,
    /// The publisher's batch period for those rows.
    unicast_batch_ms: f64,
    unicast_seconds: f64,
    churn_seconds: f64,
    flood_seconds: f64,
    /// Sockets of the permessage-deflate broadcast.
    compression_sockets: u64,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                fanout_sizes: vec![1000],
                pushpin_max: 1000,
                multinode_per_node: 1000,
                scale_per_node: 500,
                unicast_sockets: 1000,
                unicast_rates: vec![2000.0, 10000.0],
                unicast_batch_rates: vec![5000.0, 25_000.0],
                unicast_batch_ms: 1.0,
                unicast_seconds: 2.0,
                churn_seconds: 3.0,
                flood_seconds: 1.0,
                compression_sockets: 1000,
            }
        } else {
            Plan {
                quick,
                fanout_sizes: vec![1000, 10_000, 19_000],
                pushpin_max: 10_000,
                multinode_per_node: 17_000,
                scale_per_node: 16_667,
                unicast_sockets: 10_000,
                unicast_rates: vec![5000.0, 10_000.0, 25_000.0, 50_000.0, 100_000.0],
                unicast_batch_rates: vec![10_000.0, 25_000.0, 50_000.0, 75_000.0, 100_000.0],
                unicast_batch_ms: 1.0,
                unicast_seconds: 5.0,
                churn_seconds: 10.0,
                flood_seconds: 3.0,
                compression_sockets: 10_000,
            }
        }
    }
}

fn open_rate(target: &str) -> f64 {
    match target {
        // Pushpin's handshakes go through condure, the proxy, zurl and the GRIP backend.
        "pushpin" => 200.0,
        _ => 4000.0,
    }
}

/// Broadcast messages for a fan-out size: enough deliveries for CPU ticks to mean something.
/// CPU time is counted in 10 ms ticks, so at ~1 µs of user time per delivery 200k deliveries
/// are ~20 ticks, ± several from where the ticks fall; a million make the figure steady. Pushpin
/// costs ~100 µs per delivery, so 200k already make thousands of ticks (and a million would take
/// minutes).
fn broadcast_plan(n: u64, quick: bool, target: &str) -> (u64, u64) {
    let deliveries = if target == "pushpin" {
        200_000
    } else {
        1_000_000
    };
    let count = if quick {
        20
    } else {
        (deliveries / n.max(1)).clamp(10, 100)
    };
    let interval_ms = if n >= 5000 { 200 } else { 50 };
    (count, interval_ms)
}

async fn scenario_fanout(
    env: &mut Env,
    plan: &Plan,
    targets: &[String],
    out: &mut Vec<Record>,
) -> Result<()> {
    println!("\n## Idle sockets and broadcast fan-out (one node / one worker)\n");
    row(&sargs(&[
        "target",
        "sockets",
        "payload",
        "RSS/conn KiB",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "to last p50 ms",
        "user µs/msg",
        "sys µs/msg",
        "delivered/expected",
        "exact",
    ]));
    row(&sargs(&["---"; 13]));
    // One extra nchan row with a worker per core: the gateway's runtime uses every core too.
    let mut targets = targets.to_vec();
    if let Some(i) = targets.iter().position(|t| t == "nchan") {
        targets.insert(i + 1, nchan_all_workers());
    }
    for target in &targets {
        for &n in &plan.fanout_sizes {
            let n = if target == "pushpin" {
                n.min(plan.pushpin_max)
            } else {
                n
            };
            if target == "pushpin" && n < plan.fanout_sizes[0].min(plan.pushpin_max) {
                continue;
            }
            if let Err(e) = fanout_one(env, plan, target, n, out).await {
                println!("| {target} | {n} | failed: {e:#} |");
                out.push(Record {
                    scenario: "fanout".into(),
                    target: target.clone(),
                    params: BTreeMap::from([("sockets".into(), n as f64)]),
                    exact: Some(false),
                    notes: vec![format!("failed: {e:#}")],
                    ..Default::default()
                });
            }
            if target == "pushpin" && n >= plan.pushpin_max {
                break;
            }
        }
    }
    Ok(())
}

async fn fanout_one(
    env: &mut Env,
    plan: &Plan,
    target: &str,
    n: u64,
    out: &mut Vec<Record>,
) -> Result<()> {
    let server = start_server(env, target).await?;
    let dir = env.dir(&format!("fanout-{target}-{n}"))?;
    sleep(Duration::from_millis(500)).await;
    let rss0 = server.rss_kib();
    let specs = split(&server.ws_url(0), n, 0);
    let mut lgs = open_all(env, &specs, &dir, open_rate(target)).await?;
    sleep(Duration::from_secs(1)).await;
    let rss1 = server.rss_kib();
    let opened: u64 = lgs.iter().map(|l| l.opened).sum();
    let per_conn = (rss1.saturating_sub(rss0)) as f64 / opened.max(1) as f64;
    let lg_per_conn = loadgen_kib_per_socket(&lgs);
    out.push(Record {
        scenario: "idle".into(),
        target: target.into(),
        params: BTreeMap::from([("sockets".into(), n as f64)]),
        metrics: BTreeMap::from([
            ("rss_per_conn_kib".into(), per_conn),
            ("rss_before_kib".into(), rss0 as f64),
            ("rss_after_kib".into(), rss1 as f64),
            ("opened".into(), opened as f64),
            ("loadgen_rss_per_conn_kib".into(), lg_per_conn),
        ]),
        exact: None,
        notes: if opened < n {
            vec![format!("only {opened} of {n} sockets opened")]
        } else {
            vec![]
        },
        cdf: vec![],
    });
    let (count, interval) = broadcast_plan(n, plan.quick, target);
    for size in [100u64, 2048] {
        let tag = format!("b{size}");
        let (t, endpoint) = server.publish_to(0);
        let cpu0 = server.cpu();
        let rep = publish(
            env,
            t,
            &endpoint,
            &sargs(&[
                "broadcast",
                "--count",
                &count.to_string(),
                "--size",
                &size.to_string(),
                "--interval-ms",
                &interval.to_string(),
            ]),
            Duration::from_secs(count * interval / 1000 + 120),
        )
        .await?;
        let r = finish_all(&mut lgs, &tag, &format!("broadcast:{count}"), 30_000).await?;
        let cpu = server.cpu().since(cpu0);
        let user = cpu.user as f64 * env.us_per_tick() / r.delivered.max(1) as f64;
        let sys = cpu.system as f64 * env.us_per_tick() / r.delivered.max(1) as f64;
        let to_last = percentiles_of(&r.to_last_us);
        let exact = r.exact && rep.failed == 0;
        row(&[
            target.into(),
            n.to_string(),
            format!("{size} B"),
            format!("{per_conn:.2}"),
            ms(r.latency.p50),
            ms(r.latency.p90),
            ms(r.latency.p99),
            ms(r.latency.max),
            ms(to_last.0),
            format!("{user:.2}"),
            format!("{sys:.2}"),
            format!("{}/{}", r.delivered, r.expected),
            exact.to_string(),
        ]);
        let mut notes = Vec::new();
        if opened < n {
            notes.push(format!(
                "{} of {n} sockets failed to open (not exact, though every open socket may have got everything)",
                n - opened
            ));
        }
        if rep.failed > 0 {
            notes.push(format!("publish errors: {:?}", rep.errors));
        }
        if r.duplicates + r.unexpected + r.corrupt + r.out_of_order + r.dropped > 0 {
            notes.push(format!(
                "duplicates {} unexpected {} corrupt {} out of order {} dropped sockets {}",
                r.duplicates, r.unexpected, r.corrupt, r.out_of_order, r.dropped
            ));
        }
        out.push(Record {
            scenario: "fanout".into(),
            target: target.into(),
            params: BTreeMap::from([
                ("sockets".into(), n as f64),
                ("payload".into(), size as f64),
            ]),
            metrics: BTreeMap::from([
                ("p50_ms".into(), r.latency.p50 / 1000.0),
                ("p90_ms".into(), r.latency.p90 / 1000.0),
                ("p99_ms".into(), r.latency.p99 / 1000.0),
                ("max_ms".into(), r.latency.max / 1000.0),
                ("to_last_p50_ms".into(), to_last.0 / 1000.0),
                ("to_last_max_ms".into(), to_last.1 / 1000.0),
                ("cpu_user_us_per_msg".into(), user),
                ("cpu_sys_us_per_msg".into(), sys),
                ("cpu_total_us_per_msg".into(), user + sys),
                ("delivered".into(), r.delivered as f64),
                ("expected".into(), r.expected as f64),
                ("messages".into(), count as f64),
            ]),
            exact: Some(exact),
            notes,
            cdf: r.cdf,
        });
    }
    close_all(lgs).await;
    server.stop().await;
    Ok(())
}

/// The broadcast of a 2 KiB JSON message with and without permessage-deflate, gateway and
/// nchan (which compresses once per message with `nchan_deflate_message_for_websocket`): idle
/// RSS per connection, server CPU and bytes on the wire per delivered message.
async fn scenario_compression(
    env: &mut Env,
    plan: &Plan,
    targets: &[String],
    out: &mut Vec<Record>,
) -> Result<()> {
    println!(
        "\n## permessage-deflate: broadcast of a 2 KiB JSON message (one node / one worker)\n"
    );
    row(&sargs(&[
        "target",
        "sockets",
        "compression",
        "RSS/conn KiB",
        "wire B/msg",
        "user µs/msg",
        "sys µs/msg",
        "total µs/msg",
        "p50 ms",
        "delivered/expected",
        "exact",
    ]));
    row(&sargs(&["---"; 11]));
    let n = plan.compression_sockets;
    for target in targets
        .iter()
        .filter(|t| *t == "switchboard" || *t == "nchan")
    {
        for deflate in [false, true] {
            if let Err(e) = compression_one(env, plan, target, n, deflate, out).await {
                println!("| {target} | {n} | {deflate} | failed: {e:#} |");
                out.push(failed("compression", target, n, ("deflate", deflate), &e));
            }
        }
    }
    Ok(())
}

/// The record of a measurement that failed: `n` sockets, with or without `flag`.
fn failed(scenario: &str, target: &str, n: u64, flag: (&str, bool), e: &anyhow::Error) -> Record {
    Record {
        scenario: scenario.into(),
        target: target.into(),
        params: BTreeMap::from([
            ("sockets".into(), n as f64),
            (flag.0.into(), f64::from(u8::from(flag.1))),
        ]),
        exact: Some(false),
        notes: vec![format!("failed: {e:#}")],
        ..Default::default()
    }
}

/// One broadcast over sockets opened for it: the server's RSS per open socket before the
/// broadcast, the round, the server's CPU over it, the publisher's report. The load generators
/// are still open (to close, or to use again).
struct Broadcast {
    lgs: Vec<Loadgen>,
    opened: u64,
    rss_per_conn_kib: f64,
    round: Round,
    cpu: CpuTicks,
    publish: PublishReport,
}

async fn open_and_broadcast(
    env: &mut Env,
    plan: &Plan,
    server: &Server,
    target: &str,
    (specs, dir, tag): (&[LgSpec], &Path, &str),
    size: u64,
) -> Result<Broadcast> {
    sleep(Duration::from_millis(500)).await;
    let rss0 = server.rss_kib();
    let n: u64 = specs.iter().map(|s| s.count).sum();
    let mut lgs = open_all(env, specs, dir, open_rate(target)).await?;
    sleep(Duration::from_secs(1)).await;
    let rss1 = server.rss_kib();
    let opened: u64 = lgs.iter().map(|l| l.opened).sum();
    let rss_per_conn_kib = rss1.saturating_sub(rss0) as f64 / opened.max(1) as f64;
    let (count, interval) = broadcast_plan(n, plan.quick, target);
    let (t, endpoint) = server.publish_to(0);
    let cpu0 = server.cpu();
    let publish = publish(
        env,
        t,
        &endpoint,
        &sargs(&[
            "broadcast",
            "--json",
            "--count",
            &count.to_string(),
            "--size",
            &size.to_string(),
            "--interval-ms",
            &interval.to_string(),
        ]),
        Duration::from_secs(count * interval / 1000 + 120),
    )
    .await?;
    let round = finish_all(&mut lgs, tag, &format!("broadcast:{count}"), 30_000).await?;
    let cpu = server.cpu().since(cpu0);
    Ok(Broadcast {
        lgs,
        opened,
        rss_per_conn_kib,
        round,
        cpu,
        publish,
    })
}

async fn compression_one(
    env: &mut Env,
    plan: &Plan,
    target: &str,
    n: u64,
    deflate: bool,
    out: &mut Vec<Record>,
) -> Result<()> {
    const SIZE: u64 = 2048;
    let server = start_server(env, target).await?;
    let dir = env.dir(&format!("compression-{target}-{n}-{deflate}"))?;
    let mut specs = split(&server.ws_url(0), n, 0);
    for s in &mut specs {
        s.deflate = deflate;
    }
    let b = open_and_broadcast(env, plan, &server, target, (&specs, &dir, "deflate"), SIZE).await?;
    let (r, rep, opened, per_conn) = (&b.round, &b.publish, b.opened, b.rss_per_conn_kib);
    let delivered = r.delivered.max(1) as f64;
    let user = b.cpu.user as f64 * env.us_per_tick() / delivered;
    let sys = b.cpu.system as f64 * env.us_per_tick() / delivered;
    let wire = r.wire_bytes as f64 / delivered;
    let exact = r.exact && rep.failed == 0;
    let label = if deflate { "deflate" } else { "none" };
    row(&[
        target.into(),
        n.to_string(),
        label.into(),
        format!("{per_conn:.2}"),
        format!("{wire:.0}"),
        format!("{user:.2}"),
        format!("{sys:.2}"),
        format!("{:.2}", user + sys),
        ms(r.latency.p50),
        format!("{}/{}", r.delivered, r.expected),
        exact.to_string(),
    ]);
    let mut notes = Vec::new();
    if deflate && r.deflated < opened {
        notes.push(format!(
            "the server agreed to permessage-deflate on {} of {opened} sockets",
            r.deflated
        ));
    }
    if rep.failed > 0 {
        notes.push(format!("publish errors: {:?}", rep.errors));
    }
    out.push(Record {
        scenario: "compression".into(),
        target: target.into(),
        params: BTreeMap::from([
            ("sockets".into(), n as f64),
            ("deflate".into(), f64::from(u8::from(deflate))),
        ]),
        metrics: BTreeMap::from([
            ("rss_per_conn_kib".into(), per_conn),
            ("wire_bytes_per_msg".into(), wire),
            ("payload_bytes".into(), SIZE as f64),
            ("cpu_user_us_per_msg".into(), user),
            ("cpu_sys_us_per_msg".into(), sys),
            ("cpu_total_us_per_msg".into(), user + sys),
            ("p50_ms".into(), r.latency.p50 / 1000.0),
            ("p99_ms".into(), r.latency.p99 / 1000.0),
            ("delivered".into(), r.delivered as f64),
            ("expected".into(), r.expected as f64),
            ("deflated_sockets".into(), r.deflated as f64),
            ("opened".into(), opened as f64),
        ]),
        exact: Some(exact),
        notes,
        cdf: vec![],
    });
    close_all(b.lgs).await;
    server.stop().await;
    Ok(())
}

/// The gateway's idle sessions and a broadcast over TLS (`wss://`, rustls), beside the same
/// over plain TCP in the same run: RSS per idle connection, CPU per delivered message.
async fn scenario_tls(env: &mut Env, plan: &Plan, out: &mut Vec<Record>) -> Result<()> {
    println!("\n## TLS: idle sessions and a broadcast of ~100 B (one node)\n");
    row(&sargs(&[
        "target",
        "sockets",
        "transport",
        "RSS/conn KiB",
        "user µs/msg",
        "sys µs/msg",
        "total µs/msg",
        "p50 ms",
        "p99 ms",
        "delivered/expected",
        "exact",
    ]));
    row(&sargs(&["---"; 11]));
    let n = plan.compression_sockets;
    let pki = write_certificates(&env.dir("tls-pki")?)?;
    for tls in [false, true] {
        let transport = if tls { "tls" } else { "plain" };
        if let Err(e) = tls_one(env, plan, n, tls.then_some(&pki), out).await {
            println!("| switchboard | {n} | {transport} | failed: {e:#} |");
            out.push(failed("tls", "switchboard", n, ("tls", tls), &e));
        }
    }
    Ok(())
}

/// A certificate authority and a server certificate for 127.0.0.1 it signed, as PEM files.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn write_certificates(dir: &Path) -> Result<Pki> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?
        .signed_by(&key, &Issuer::new(ca_params, &ca_key))?;
    let pki = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    std::fs::write(&pki.ca, ca.pem())?;
    std::fs::write(&pki.cert, cert.pem())?;
    std::fs::write(&pki.key, key.serialize_pem())?;
    Ok(pki)
}

async fn tls_one(
    env: &mut Env,
    plan: &Plan,
    n: u64,
    pki: Option<&Pki>,
    out: &mut Vec<Record>,
) -> Result<()> {
    let transport = if pki.is_some() { "tls" } else { "plain" };
    let mut args = Vec::new();
    if let Some(pki) = pki {
        args.extend(["--tls-cert".to_owned(), pki.cert.display().to_string()]);
        args.extend(["--tls-key".to_owned(), pki.key.display().to_string()]);
    }
    let server = Server::Gateway {
        nodes: vec![start_gateway(env, &args).await?],
        _redis: None,
    };
    let dir = env.dir(&format!("tls-{transport}-{n}"))?;
    let url = match pki {
        Some(_) => server.ws_url(0).replacen("ws://", "wss://", 1),
        None => server.ws_url(0),
    };
    let mut specs = split(&url, n, 0);
    for s in &mut specs {
        s.tls_ca = pki.map(|p| p.ca.clone());
    }
    let b = open_and_broadcast(
        env,
        plan,
        &server,
        "switchboard",
        (&specs, &dir, transport),
        100,
    )
    .await?;
    let (r, rep) = (&b.round, &b.publish);
    let delivered = r.delivered.max(1) as f64;
    let user = b.cpu.user as f64 * env.us_per_tick() / delivered;
    let sys = b.cpu.system as f64 * env.us_per_tick() / delivered;
    let exact = r.exact && rep.failed == 0;
    row(&[
        "switchboard".into(),
        n.to_string(),
        transport.into(),
        format!("{:.2}", b.rss_per_conn_kib),
        format!("{user:.2}"),
        format!("{sys:.2}"),
        format!("{:.2}", user + sys),
        ms(r.latency.p50),
        ms(r.latency.p99),
        format!("{}/{}", r.delivered, r.expected),
        exact.to_string(),
    ]);
    let mut notes = Vec::new();
    if rep.failed > 0 {
        notes.push(format!("publish errors: {:?}", rep.errors));
    }
    out.push(Record {
        scenario: "tls".into(),
        target: "switchboard".into(),
        params: BTreeMap::from([
            ("sockets".into(), n as f64),
            ("tls".into(), f64::from(u8::from(pki.is_some()))),
        ]),
        metrics: BTreeMap::from([
            ("rss_per_conn_kib".into(), b.rss_per_conn_kib),
            ("cpu_user_us_per_msg".into(), user),
            ("cpu_sys_us_per_msg".into(), sys),
            ("cpu_total_us_per_msg".into(), user + sys),
            ("p50_ms".into(), r.latency.p50 / 1000.0),
            ("p99_ms".into(), r.latency.p99 / 1000.0),
            ("delivered".into(), r.delivered as f64),
            ("expected".into(), r.expected as f64),
            ("opened".into(), b.opened as f64),
            (
                "loadgen_kib_per_socket".into(),
                loadgen_kib_per_socket(&b.lgs),
            ),
        ]),
        exact: Some(exact),
        notes,
        cdf: vec![],
    });
    close_all(b.lgs).await;
    server.stop().await;
    Ok(())
}

/// The load generators' own RSS per socket they opened.
fn loadgen_kib_per_socket(lgs: &[Loadgen]) -> f64 {
    let kib: u64 = lgs
        .iter()
        .map(|l| l.rss_kib.saturating_sub(l.rss0_kib))
        .sum();
    let opened: u64 = lgs.iter().map(|l| l.opened).sum();
    kib as f64 / opened.max(1) as f64
}

/// Idle sessions over HTTP/2 (RFC 8441): `h2hold` opens connections of 100 WebSocket streams
/// each; the gateway's RSS per session, to set beside the HTTP/1.1 idle figure of the same
/// count.
async fn scenario_http2(env: &mut Env, plan: &Plan, out: &mut Vec<Record>) -> Result<()> {
    println!("\n## Idle WebSocket sessions over HTTP/2 (100 per connection)\n");
    row(&sargs(&[
        "target",
        "sessions",
        "per connection",
        "RSS/session KiB",
        "opened",
    ]));
    row(&sargs(&["---"; 5]));
    const PER_CONN: u64 = 100;
    let n = plan.compression_sockets;
    let server = gateway_server(env, 1, false).await?;
    let dir = env.dir(&format!("http2-{n}"))?;
    sleep(Duration::from_millis(500)).await;
    let rss0 = server.rss_kib();
    let url = server.ws_url(0);
    let addr = url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .context("gateway address")?
        .to_owned();
    let mut child = Command::new(env.bin_dir.join("h2hold"))
        .args(["--addr", &addr, "--path", "/ws/bench"])
        .args(["--connections", &(n / PER_CONN).to_string()])
        .args(["--streams", &PER_CONN.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("h2hold.stderr"))?)
        .kill_on_drop(true)
        .spawn()
        .context("spawn h2hold")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let line = timeout(Duration::from_secs(180), async {
        while let Some(l) = lines.next_line().await? {
            if l.starts_with("opened") {
                return Ok(l);
            }
        }
        anyhow::bail!("h2hold exited")
    })
    .await
    .context("h2hold did not open its sessions")??;
    let opened = kv(&line, "ok").unwrap_or(0);
    sleep(Duration::from_secs(1)).await;
    let rss1 = server.rss_kib();
    let per = rss1.saturating_sub(rss0) as f64 / opened.max(1) as f64;
    row(&[
        "switchboard".into(),
        n.to_string(),
        PER_CONN.to_string(),
        format!("{per:.2}"),
        opened.to_string(),
    ]);
    out.push(Record {
        scenario: "http2".into(),
        target: "switchboard".into(),
        params: BTreeMap::from([
            ("sessions".into(), n as f64),
            ("per_connection".into(), PER_CONN as f64),
        ]),
        metrics: BTreeMap::from([
            ("rss_per_session_kib".into(), per),
            ("rss_before_kib".into(), rss0 as f64),
            ("rss_after_kib".into(), rss1 as f64),
            ("opened".into(), opened as f64),
        ]),
        exact: None,
        notes: if opened < n {
            vec![format!("only {opened} of {n} sessions opened")]
        } else {
            vec![]
        },
        cdf: vec![],
    });
    let _ = stdin.write_all(b"close\n").await;
    let _ = timeout(Duration::from_secs(30), child.wait()).await;
    server.stop().await;
    Ok(())
}

/// (median, max) of values.
fn percentiles_of(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let mut s: Vec<u64> = v.iter().map(|x| (x * 1000.0) as u64).collect();
    s.sort_unstable();
    (
        quantile(&s, 0.5) as f64 / 1000.0,
        *s.last().expect("non-empty") as f64 / 1000.0,
    )
}

/// Three hub-wide broadcasts of 100 B published through node 0, `interval_ms` apart, and the
/// round they make at the load generators: what the publisher said, what arrived, and the
/// servers' CPU meanwhile.
async fn broadcasts_through_node_0(
    env: &Env,
    server: &Server,
    lgs: &mut [Loadgen],
    tag: &str,
    interval_ms: u64,
) -> Result<(PublishReport, Round, CpuTicks)> {
    const COUNT: u64 = 3;
    let (t, endpoint) = server.publish_to(0);
    let cpu0 = server.cpu();
    let args = sargs(&[
        "broadcast",
        "--count",
        &COUNT.to_string(),
        "--size",
        "100",
        "--interval-ms",
        &interval_ms.to_string(),
    ]);
    let rep = publish(env, t, &endpoint, &args, Duration::from_secs(180)).await?;
    let r = finish_all(lgs, tag, &format!("broadcast:{COUNT}"), 60_000).await?;
    Ok((rep, r, server.cpu().since(cpu0)))
}

/// What every broadcast row records of its round: latency, counts, the servers' CPU per
/// delivered message.
fn broadcast_metrics(env: &Env, r: &Round, cpu: CpuTicks) -> [(String, f64); 5] {
    [
        ("p50_ms".into(), r.latency.p50 / 1000.0),
        ("p99_ms".into(), r.latency.p99 / 1000.0),
        ("delivered".into(), r.delivered as f64),
        ("expected".into(), r.expected as f64),
        (
            "cpu_total_us_per_msg".into(),
            (cpu.user + cpu.system) as f64 * env.us_per_tick() / r.delivered.max(1) as f64,
        ),
    ]
}

async fn scenario_multinode(env: &mut Env, plan: &Plan, out: &mut Vec<Record>) -> Result<()> {
    let nodes = 3usize;
    let per = plan.multinode_per_node;
    println!(
        "\n## {} sockets over {nodes} gateway nodes sharing Redis\n",
        per * nodes as u64
    );
    let server = gateway_server(env, nodes, true).await?;
    let dir = env.dir("multinode")?;
    let rss0: Vec<u64> = (0..nodes)
        .map(|k| procfs::rss_kib(server.node_pid(k)))
        .collect();
    let mut specs = Vec::new();
    for k in 0..nodes {
        specs.extend(split(&server.ws_url(k), per, k as u64 * per));
    }
    let mut lgs = open_all(env, &specs, &dir, 6000.0).await?;
    sleep(Duration::from_secs(2)).await;
    let rss1: Vec<u64> = (0..nodes)
        .map(|k| procfs::rss_kib(server.node_pid(k)))
        .collect();
    let opened: u64 = lgs.iter().map(|l| l.opened).sum();
    let delta: u64 = rss1
        .iter()
        .zip(&rss0)
        .map(|(a, b)| a.saturating_sub(*b))
        .sum();
    let per_conn = delta as f64 / opened.max(1) as f64;
    let (rep, r, cpu) = broadcasts_through_node_0(env, &server, &mut lgs, "mb", 1000).await?;
    let exact = r.exact && rep.failed == 0 && opened == per * nodes as u64;
    println!("| nodes | sockets | RSS/conn KiB | per node RSS before → after MiB | broadcast p50 / p99 ms | delivered/expected | exact |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    row(&[
        nodes.to_string(),
        opened.to_string(),
        format!("{per_conn:.2}"),
        rss0.iter()
            .zip(&rss1)
            .map(|(a, b)| format!("{:.0}→{:.0}", *a as f64 / 1024.0, *b as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", "),
        format!("{} / {}", ms(r.latency.p50), ms(r.latency.p99)),
        format!("{}/{}", r.delivered, r.expected),
        exact.to_string(),
    ]);
    out.push(Record {
        scenario: "multinode".into(),
        target: "switchboard".into(),
        params: BTreeMap::from([
            ("nodes".into(), nodes as f64),
            ("sockets".into(), (per * nodes as u64) as f64),
        ]),
        metrics: [
            ("rss_per_conn_kib".into(), per_conn),
            ("opened".into(), opened as f64),
        ]
        .into_iter()
        .chain(broadcast_metrics(env, &r, cpu))
        .collect(),
        exact: Some(exact),
        notes: if rep.failed > 0 {
            vec![format!("publish errors: {:?}", rep.errors)]
        } else {
            vec![]
        },
        cdf: vec![],
    });
    close_all(lgs).await;
    server.stop().await;
    Ok(())
}

/// `scale_per_node` sockets on each of six gateway nodes sharing a three-master Redis Cluster
/// (100,000 in all), opened as fast as the nodes take them; then three hub-wide publishes
/// through one node, each to reach every socket once, and a quiet period in which nothing
/// more may arrive. Reports gateway RSS, Redis memory and kernel memory per connection, the
/// connect rate and the time a publish takes to reach the last socket.
async fn scenario_scale(env: &mut Env, plan: &Plan, out: &mut Vec<Record>) -> Result<()> {
    const NODES: usize = 6;
    let per = plan.scale_per_node;
    let sockets = per * NODES as u64;
    println!("\n## {sockets} sockets over {NODES} gateway nodes and a 3-master Redis Cluster\n");
    let redis = RedisCluster::start(env).await?;
    let mut nodes = Vec::new();
    for k in 0..NODES {
        let args = sargs(&[
            "--redis-url",
            &redis.url(),
            "--node-id",
            &format!("scale-{k}"),
        ]);
        nodes.push(start_gateway(env, &args).await?);
    }
    // Nodes learn about each other from the lease list, refreshed every lease period.
    sleep(Duration::from_secs(4)).await;
    let server = Server::Gateway {
        nodes,
        _redis: None,
    };
    let result = scale_run(env, &server, &redis, per, out).await;
    server.stop().await;
    redis.stop().await;
    result
}

async fn scale_run(
    env: &mut Env,
    server: &Server,
    redis: &RedisCluster,
    per: u64,
    out: &mut Vec<Record>,
) -> Result<()> {
    let nodes = server.pids().len();
    let dir = env.dir("scale")?;
    let rss0 = server.rss_kib();
    let (redis_mem0, redis_keys0) = (redis.used_memory(), redis.keys());
    let (tcp0, slab0) = procfs::kernel_socket_kib();
    let mut specs = Vec::new();
    for k in 0..nodes {
        specs.extend(split(&server.ws_url(k), per, k as u64 * per));
    }
    let started = Instant::now();
    let mut lgs = open_all(env, &specs, &dir, 20_000.0).await?;
    let open_secs = started.elapsed().as_secs_f64();
    let opened: u64 = lgs.iter().map(|l| l.opened).sum();
    // Registry writes of the last connects settle; then everything is measured at rest.
    sleep(Duration::from_secs(3)).await;
    let rss1 = server.rss_kib();
    let (redis_mem1, redis_keys1) = (redis.used_memory(), redis.keys());
    let (tcp1, slab1) = procfs::kernel_socket_kib();
    let per_conn = |a: u64, b: u64| a.saturating_sub(b) as f64 / opened.max(1) as f64;
    let rss_per_conn = per_conn(rss1, rss0);
    let redis_per_session = per_conn(redis_mem1, redis_mem0);
    let tcp_per_conn = per_conn(tcp1, tcp0);
    let slab_per_conn = per_conn(slab1, slab0);
    let (rep, r, cpu) = broadcasts_through_node_0(env, server, &mut lgs, "sb", 2000).await?;
    // A late duplicate would arrive after the count was complete: wait, then nothing more.
    sleep(Duration::from_secs(3)).await;
    let quiet = finish_all(&mut lgs, "sq", "none", 5_000).await?;
    let exact = r.exact
        && quiet.exact
        && quiet.delivered + quiet.unexpected + quiet.duplicates == 0
        && rep.failed == 0
        && opened == per * nodes as u64;
    let to_last = percentiles_of(&r.to_last_us);
    println!("| nodes | sockets | connects/s | gateway RSS/conn KiB | Redis B/session | kernel TCP buffers KiB/conn | kernel slab KiB/conn | publish to last socket p50 ms | delivered/expected | exact |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    row(&[
        nodes.to_string(),
        opened.to_string(),
        format!("{:.0}", opened as f64 / open_secs),
        format!("{rss_per_conn:.2}"),
        format!("{redis_per_session:.0}"),
        format!("{tcp_per_conn:.2}"),
        format!("{slab_per_conn:.2}"),
        ms(to_last.0),
        format!("{}/{}", r.delivered, r.expected),
        exact.to_string(),
    ]);
    out.push(Record {
        scenario: "scale".into(),
        target: "switchboard".into(),
        params: BTreeMap::from([
            ("nodes".into(), nodes as f64),
            ("sockets".into(), (per * nodes as u64) as f64),
        ]),
        metrics: [
            ("opened".into(), opened as f64),
            ("connects_per_s".into(), opened as f64 / open_secs),
            ("rss_per_conn_kib".into(), rss_per_conn),
            ("redis_bytes_per_session".into(), redis_per_session),
            (
                "redis_keys_per_session".into(),
                redis_keys1.saturating_sub(redis_keys0) as f64 / opened.max(1) as f64,
            ),
            ("kernel_tcp_kib_per_conn".into(), tcp_per_conn),
            ("kernel_slab_kib_per_conn".into(), slab_per_conn),
            ("to_last_ms".into(), to_last.0 / 1000.0),
        ]
        .into_iter()
        .chain(broadcast_metrics(env, &r, cpu))
        .collect(),
        exact: Some(exact),
        notes: if rep.failed > 0 {
            vec![format!("publish errors: {:?}", rep.errors)]
        } else {
            vec![]
        },
        cdf: vec![],
    });
    close_all(lgs).await;
    // What the closed sessions leave behind: their tombstones (`P:closed:{id}`, kept 10 min so
    // `CheckSessions` can answer "closed"). Counted once the key count stops moving.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut keys = redis.keys();
    loop {
        sleep(Duration::from_secs(1)).await;
        let now = redis.keys();
        if now == keys || Instant::now() > deadline {
            break;
        }
        keys = now;
    }
    let closed = |a: u64, b: u64| a.saturating_sub(b) as f64 / opened.max(1) as f64;
    let (mem2, keys2) = (redis.used_memory(), redis.keys());
    if let Some(r) = out.last_mut() {
        r.metrics.insert(
            "redis_closed_bytes_per_session".into(),
            closed(mem2, redis_mem0),
        );
        r.metrics.insert(
            "redis_closed_keys_per_session".into(),
            closed(keys2, redis_keys0),
        );
    }
    println!(
        "\nafter every socket closed: Redis {:.0} B and {:.2} keys per closed session (tombstones)",
        closed(mem2, redis_mem0),
        closed(keys2, redis_keys0)
    );
    Ok(())
}

/// Client messages to `Subscribe` consumer groups (the `subscribe` tool, which starts its own
/// gateway and checks that every group got every message once and in order per session): at
/// the issue's 50,000/s, and near the machine's ceiling, where sessions on both worker threads
/// publish at once.
async fn scenario_subscribe(env: &mut Env, plan: &Plan, out: &mut Vec<Record>) -> Result<()> {
    let (rates, seconds): (&[u64], u64) = if plan.quick {
        (&[5000], 2)
    } else {
        (&[50_000, 90_000], 8)
    };
    let groups = 4;
    println!("\n## Subscribe: client messages to {groups} consumer groups\n");
    println!(
        "| groups | asked/s | achieved/s | p50 ms | p99 ms | user µs/msg | total µs/msg | exact |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for &rate in rates {
        let o = timeout(
            Duration::from_secs(seconds + 120),
            Command::new(env.bin_dir.join("subscribe"))
                .arg("--gateway-bin")
                .arg(&env.gateway_bin)
                .args(["--rate", &rate.to_string()])
                .args(["--seconds", &seconds.to_string()])
                .args(["--groups", &groups.to_string()])
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .context("subscribe timed out")??;
        let text = String::from_utf8_lossy(&o.stdout);
        let exact = o.status.success();
        let last = text.lines().rfind(|l| l.starts_with('{'));
        let v: serde_json::Value = match (exact, last) {
            (true, Some(l)) => serde_json::from_str(l)?,
            _ => bail!("subscribe at {rate}/s failed: {text}"),
        };
        let metric = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        row(&[
            groups.to_string(),
            rate.to_string(),
            format!("{:.0}", metric("achieved_per_s")),
            format!("{:.1}", metric("p50_ms")),
            format!("{:.1}", metric("p99_ms")),
            format!("{:.2}", metric("cpu_user_us_per_msg")),
            format!("{:.2}", metric("cpu_total_us_per_msg")),
            exact.to_string(),
        ]);
        out.push(Record {
            scenario: "subscribe".into(),
            target: "switchboard".into(),
            params: BTreeMap::from([
                ("groups".into(), groups as f64),
                ("rate".into(), rate as f64),
            ]),
            metrics: [
                "achieved_per_s",
                "p50_ms",
                "p99_ms",
                "cpu_user_us_per_msg",
                "cpu_total_us_per_msg",
            ]
            .into_iter()
            .map(|k| (k.to_owned(), metric(k)))
            .collect(),
            exact: Some(exact),
            notes: vec![],
            cdf: vec![],
        });
    }
    Ok(())
}

/// One way of driving a unicast target: a row name, how the publisher sends and the rates.
struct UnicastMode {
    /// The `target` of its records (`switchboard-batch`, say).
    row: String,
    /// 0: one call per message (`Send`, or an HTTP publish for the peers); otherwise the
    /// publisher's `--batch-ms` (`SendBatch`).
    batch_ms: f64,
    rates: Vec<f64>,
}

impl UnicastMode {
    fn unary(row: &str, plan: &Plan) -> UnicastMode {
        UnicastMode {
            row: row.into(),
            batch_ms: 0.0,
            rates: plan.unicast_rates.clone(),
        }
    }

    fn batch(row: &str, plan: &Plan) -> UnicastMode {
        UnicastMode {
            row: row.into(),
            batch_ms: plan.unicast_batch_ms,
            rates: plan.unicast_batch_rates.clone(),
        }
    }

    fn failed(&self, why: String) -> Record {
        println!("| {} | failed: {why} |", self.row);
        Record {
            scenario: "unicast".into(),
            target: self.row.clone(),
            exact: Some(false),
            notes: vec![format!("failed: {why}")],
            ..Default::default()
        }
    }
}

async fn scenario_unicast(
    env: &mut Env,
    plan: &Plan,
    targets: &[String],
    out: &mut Vec<Record>,
) -> Result<()> {
    println!(
        "\n## Unicast: messages to one of {} idle sockets each, rising rates; one call per \
         message, and (`-batch` rows) one SendBatch of every message due each {} ms\n",
        plan.unicast_sockets, plan.unicast_batch_ms
    );
    row(&sargs(&[
        "target",
        "asked/s",
        "achieved/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "user µs/msg",
        "sys µs/msg",
        "publisher µs/msg",
        "msgs/call",
        "delivered/expected",
        "exact",
    ]));
    row(&sargs(&["---"; 13]));
    // The gateway runs unary then batched over the same open sockets (opening 10k sockets is
    // the slow part); the peers have no batch call here.
    let mut servers: Vec<(String, Vec<UnicastMode>)> = Vec::new();
    for target in targets {
        if target == "switchboard" {
            for kind in ["switchboard", "switchboard-2node"] {
                servers.push((
                    kind.into(),
                    vec![
                        UnicastMode::unary(kind, plan),
                        UnicastMode::batch(&format!("{kind}-batch"), plan),
                    ],
                ));
            }
        } else {
            servers.push((target.clone(), vec![UnicastMode::unary(target, plan)]));
        }
    }
    for (kind, modes) in &servers {
        unicast_one(env, plan, kind, modes, out).await;
    }
    Ok(())
}

/// Starts `kind` (a server of `start_server`, or `switchboard-2node`), opens the sockets once
/// and runs every mode's rates over them; failures become records.
async fn unicast_one(
    env: &mut Env,
    plan: &Plan,
    kind: &str,
    modes: &[UnicastMode],
    out: &mut Vec<Record>,
) {
    let started = async {
        let (server, via) = if kind == "switchboard-2node" {
            (gateway_server(env, 2, true).await?, 1)
        } else {
            (start_server(env, kind).await?, 0)
        };
        let dir = env.dir(&format!("unicast-{kind}"))?;
        let specs = split(&server.ws_url(0), plan.unicast_sockets, 0);
        match open_all(env, &specs, &dir, open_rate(kind)).await {
            Ok(lgs) => Ok((server, via, lgs)),
            Err(e) => {
                server.stop().await;
                Err(e)
            }
        }
    }
    .await;
    let (server, via, mut lgs) = match started {
        Ok(v) => v,
        Err(e) => {
            for m in modes {
                out.push(m.failed(format!("{e:#}")));
            }
            return;
        }
    };
    sleep(Duration::from_secs(1)).await;
    let mut modes = modes.iter();
    for m in modes.by_ref() {
        if let Err(e) = unicast_rates(env, plan, &server, via, &mut lgs, m, out).await {
            out.push(m.failed(format!("{e:#}")));
            break;
        }
    }
    // A failed round may leave the load generators mid-round: later modes would measure
    // nonsense, so they are recorded as not run.
    for m in modes {
        out.push(m.failed("not run: an earlier mode on the same sockets failed".into()));
    }
    close_all(lgs).await;
    server.stop().await;
}

/// One mode's rising rates over already open sockets.
async fn unicast_rates(
    env: &Env,
    plan: &Plan,
    server: &Server,
    via: usize,
    lgs: &mut [Loadgen],
    mode: &UnicastMode,
    out: &mut Vec<Record>,
) -> Result<()> {
    let n = plan.unicast_sockets;
    let sessions: Vec<String> = lgs
        .iter()
        .map(|l| l.sessions.display().to_string())
        .collect();
    let (t, endpoint) = server.publish_to(via);
    let batched = mode.batch_ms > 0.0;
    // Unary: enough concurrent callers to reach the rate. Batched: one call per period carries
    // every due message, so a few in flight suffice; more only pile up behind a slow server.
    let workers = match (t, batched) {
        (_, true) => "16",
        ("switchboard", false) => "256",
        _ => "64",
    };
    for (step, &rate) in mode.rates.iter().enumerate() {
        let tag = format!("{}{step}", if batched { "b" } else { "u" });
        let mut args = sargs(&[
            "unicast",
            "--total",
            &n.to_string(),
            "--rate",
            &format!("{rate}"),
            "--seconds",
            &format!("{}", plan.unicast_seconds),
            "--size",
            "100",
            "--workers",
            workers,
            "--max-seconds",
            &format!("{}", plan.unicast_seconds * 3.0 + 5.0),
        ]);
        if batched {
            args.push("--batch-ms".into());
            args.push(format!("{}", mode.batch_ms));
        }
        for s in &sessions {
            args.push("--sessions".into());
            args.push(s.clone());
        }
        let cpu0 = server.cpu();
        let rep = publish(
            env,
            t,
            &endpoint,
            &args,
            Duration::from_secs_f64(plan.unicast_seconds * 3.0 + 120.0),
        )
        .await?;
        let r = finish_all(lgs, &tag, &format!("unicast:{}:{n}", rep.attempted), 30_000).await?;
        let cpu = server.cpu().since(cpu0);
        let user = cpu.user as f64 * env.us_per_tick() / r.delivered.max(1) as f64;
        let sys = cpu.system as f64 * env.us_per_tick() / r.delivered.max(1) as f64;
        let publisher = (rep.self_cpu_ticks.0 + rep.self_cpu_ticks.1) as f64 * env.us_per_tick()
            / rep.ok.max(1) as f64;
        let per_call = if batched { rep.batch_items_mean } else { 1.0 };
        let exact = r.exact && rep.failed == 0;
        row(&[
            mode.row.clone(),
            format!("{rate:.0}"),
            format!("{:.0}", rep.achieved_per_s),
            ms(r.latency.p50),
            ms(r.latency.p90),
            ms(r.latency.p99),
            ms(r.latency.max),
            format!("{user:.2}"),
            format!("{sys:.2}"),
            format!("{publisher:.2}"),
            format!("{per_call:.1}"),
            format!("{}/{}", r.delivered, r.expected),
            exact.to_string(),
        ]);
        let mut notes = Vec::new();
        if rep.failed > 0 {
            notes.push(format!("{} messages failed: {:?}", rep.failed, rep.errors));
        }
        if r.failed > 0 {
            notes.push(format!("{} sockets failed to open", r.failed));
        }
        // Unary rows keep the parameters they always had (so runs of older revisions group
        // with them); `batch_ms` marks a batched row.
        let mut params = BTreeMap::from([("rate".into(), rate), ("sockets".into(), n as f64)]);
        let mut metrics = BTreeMap::from([
            ("achieved_per_s".into(), rep.achieved_per_s),
            ("p50_ms".into(), r.latency.p50 / 1000.0),
            ("p90_ms".into(), r.latency.p90 / 1000.0),
            ("p99_ms".into(), r.latency.p99 / 1000.0),
            ("max_ms".into(), r.latency.max / 1000.0),
            ("call_p50_ms".into(), rep.call_us.p50 / 1000.0),
            ("call_p99_ms".into(), rep.call_us.p99 / 1000.0),
            ("cpu_user_us_per_msg".into(), user),
            ("cpu_sys_us_per_msg".into(), sys),
            ("cpu_total_us_per_msg".into(), user + sys),
            ("delivered".into(), r.delivered as f64),
            ("expected".into(), r.expected as f64),
            ("failed_calls".into(), rep.failed as f64),
            ("publisher_cpu_us_per_msg".into(), publisher),
        ]);
        if batched {
            params.insert("batch_ms".into(), mode.batch_ms);
            metrics.insert("batch_calls".into(), rep.batch_calls as f64);
            metrics.insert("batch_items_mean".into(), rep.batch_items_mean);
            metrics.insert("batch_items_max".into(), rep.batch_items_max as f64);
        }
        out.push(Record {
            scenario: "unicast".into(),
            target: mode.row.clone(),
            params,
            metrics,
            exact: Some(exact),
            notes,
            cdf: r.cdf,
        });
        // Saturated: a higher rate says nothing new.
        if rep.achieved_per_s < 0.7 * rate {
            break;
        }
    }
    Ok(())
}

async fn scenario_churn(env: &mut Env, plan: &Plan, out: &mut Vec<Record>) -> Result<()> {
    println!("\n## Connect churn: connect, upgrade, close handshake, again (64 at once)\n");
    row(&sargs(&[
        "registry",
        "cycles/s",
        "handshake p50 ms",
        "handshake p99 ms",
        "errors",
        "Redis commands/connect",
        "Redis reads/connect",
        "top commands per connect",
    ]));
    row(&sargs(&["---"; 8]));
    for redis in [true, false] {
        let server = gateway_server(env, 1, redis).await?;
        let url = server.ws_url(0);
        let (calls0, reads0) = match &server {
            Server::Gateway {
                _redis: Some(r), ..
            } => (r.command_calls(), r.reads_processed()),
            _ => (BTreeMap::new(), 0),
        };
        let cpu0 = server.cpu();
        let o = timeout(
            Duration::from_secs_f64(plan.churn_seconds + 60.0),
            Command::new(env.bin_dir.join("loadgen"))
                .args(["churn", "--url", &url, "--concurrency", "64"])
                .args(["--seconds", &format!("{}", plan.churn_seconds)])
                .args(["--source", &env.sources()])
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .context("churn timed out")??;
        let cpu = server.cpu().since(cpu0);
        let v: serde_json::Value = serde_json::from_slice(
            o.stdout
                .split(|b| *b == b'\n')
                .rfind(|l| !l.is_empty())
                .unwrap_or_default(),
        )
        .context("churn output")?;
        let cycles = v["cycles"].as_f64().unwrap_or(0.0);
        let per_s = v["cycles_per_s"].as_f64().unwrap_or(0.0);
        let errors = v["errors"].as_f64().unwrap_or(0.0);
        let (cmds, reads, top) = match &server {
            Server::Gateway {
                _redis: Some(r), ..
            } => {
                let calls1 = r.command_calls();
                let reads1 = r.reads_processed();
                let mut d: Vec<(String, f64)> = calls1
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            (*v - calls0.get(k).copied().unwrap_or(0)) as f64 / cycles.max(1.0),
                        )
                    })
                    .filter(|(_, v)| *v > 0.005)
                    .collect();
                // Ties as printed (two decimals) in name order, so runs list them alike.
                let shown = |v: f64| (v * 100.0).round() as i64;
                d.sort_by(|a, b| shown(b.1).cmp(&shown(a.1)).then_with(|| a.0.cmp(&b.0)));
                let total: f64 = d.iter().map(|x| x.1).sum();
                let top = d
                    .iter()
                    .take(6)
                    .map(|(k, v)| format!("{k} {v:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                (total, (reads1 - reads0) as f64 / cycles.max(1.0), top)
            }
            _ => (0.0, 0.0, String::new()),
        };
        let name = if redis { "redis" } else { "memory" };
        row(&[
            name.into(),
            format!("{per_s:.0}"),
            ms(v["handshake_us"]["p50"].as_f64().unwrap_or(0.0)),
            ms(v["handshake_us"]["p99"].as_f64().unwrap_or(0.0)),
            format!("{errors:.0}"),
            format!("{cmds:.2}"),
            format!("{reads:.2}"),
            top.clone(),
        ]);
        out.push(Record {
            scenario: "churn".into(),
            target: format!("switchboard-{name}"),
            params: BTreeMap::from([("concurrency".into(), 64.0)]),
            metrics: BTreeMap::from([
                ("cycles_per_s".into(), per_s),
                ("errors".into(), errors),
                (
                    "handshake_p50_ms".into(),
                    v["handshake_us"]["p50"].as_f64().unwrap_or(0.0) / 1000.0,
                ),
                (
                    "handshake_p99_ms".into(),
                    v["handshake_us"]["p99"].as_f64().unwrap_or(0.0) / 1000.0,
                ),
                ("redis_commands_per_connect".into(), cmds),
                ("redis_reads_per_connect".into(), reads),
                (
                    "cpu_us_per_cycle".into(),
                    (cpu.user + cpu.system) as f64 * env.us_per_tick() / cycles.max(1.0),
                ),
            ]),
            exact: Some(errors == 0.0),
            notes: if top.is_empty() {
                vec![]
            } else {
                vec![format!("per connect: {top}")]
            },
            cdf: vec![],
        });
        server.stop().await;
    }
    Ok(())
}

async fn scenario_flood(env: &mut Env, plan: &Plan, out: &mut Vec<Record>) -> Result<()> {
    println!("\n## One socket, server-to-client flood (Attach writes)\n");
    row(&sargs(&[
        "payload",
        "msgs/s",
        "MB/s",
        "p50 ms",
        "p99 ms",
        "delivered/expected",
        "exact",
    ]));
    row(&sargs(&["---"; 7]));
    let server = gateway_server(env, 1, false).await?;
    let dir = env.dir("flood")?;
    let specs = split(&server.ws_url(0), 1, 0);
    let mut lgs = open_all(env, &specs, &dir, 100.0).await?;
    let session = std::fs::read_to_string(&lgs[0].sessions)?
        .lines()
        .next()
        .and_then(|l| l.split('\t').nth(1))
        .context("session id")?
        .to_owned();
    let (_, endpoint) = server.publish_to(0);
    for (size, count) in [(20u64, 3_000_000u64), (1024, 1_000_000), (16384, 200_000)] {
        let mut child = Command::new(env.bin_dir.join("publish"))
            .args(["--target", "switchboard", "--endpoint", &endpoint, "flood"])
            .args(["--session", &session, "--count", &count.to_string()])
            .args([
                "--size",
                &size.to_string(),
                "--seconds",
                &format!("{}", plan.flood_seconds),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let l = timeout(
            Duration::from_secs_f64(plan.flood_seconds + 60.0),
            lines.next_line(),
        )
        .await
        .context("flood publisher timed out")??
        .context("flood publisher exited")?;
        let rep: PublishReport = serde_json::from_str(&l)?;
        let r = finish_all(
            &mut lgs,
            &format!("f{size}"),
            &format!("flood:{}", rep.attempted),
            60_000,
        )
        .await?;
        drop(stdin);
        let _ = timeout(Duration::from_secs(10), child.wait()).await;
        let secs = (r.last_recv_ns.saturating_sub(r.first_sent_ns)) as f64 / 1e9;
        let rate = r.delivered as f64 / secs.max(1e-9);
        let mbs = rate * size as f64 / 1e6;
        // A write lost with a failed stream is a failure even if the count matches what
        // the publisher believes it sent.
        let exact = r.exact && rep.failed == 0;
        let notes = if rep.failed > 0 {
            vec![format!("publish errors: {:?}", rep.errors)]
        } else {
            vec![]
        };
        row(&[
            format!("{size} B"),
            format!("{rate:.0}"),
            format!("{mbs:.1}"),
            ms(r.latency.p50),
            ms(r.latency.p99),
            format!("{}/{}", r.delivered, r.expected),
            exact.to_string(),
        ]);
        out.push(Record {
            scenario: "flood".into(),
            target: "switchboard".into(),
            params: BTreeMap::from([("payload".into(), size as f64)]),
            metrics: BTreeMap::from([
                ("msgs_per_s".into(), rate),
                ("mb_per_s".into(), mbs),
                ("p50_ms".into(), r.latency.p50 / 1000.0),
                ("p99_ms".into(), r.latency.p99 / 1000.0),
                ("delivered".into(), r.delivered as f64),
                ("expected".into(), r.expected as f64),
            ]),
            exact: Some(exact),
            notes,
            cdf: vec![],
        });
    }
    close_all(lgs).await;
    server.stop().await;
    Ok(())
}

fn machine() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if let Some(model) = cpuinfo.lines().find_map(|l| {
        l.strip_prefix("model name")
            .and_then(|r| r.split_once(':'))
            .map(|x| x.1.trim().to_owned())
    }) {
        m.insert("cpu".into(), model);
    }
    m.insert(
        "cores".into(),
        std::thread::available_parallelism()
            .map(|n| n.get().to_string())
            .unwrap_or_default(),
    );
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    if let Some(t) = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:")) {
        m.insert("memory".into(), t.trim().to_owned());
    }
    // Which gateway was measured (read-only git queries; the checkout may have local edits).
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(["-C", env!("CARGO_MANIFEST_DIR")])
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    if let Some(rev) = git(&["rev-parse", "--short", "HEAD"]) {
        let dirty =
            git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
        m.insert(
            "revision".into(),
            format!(
                "{rev}{}",
                if dirty {
                    " with uncommitted changes"
                } else {
                    ""
                }
            ),
        );
    }
    if let Ok(o) = std::process::Command::new("uname").arg("-sr").output() {
        m.insert(
            "kernel".into(),
            String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        );
    }
    m
}

fn now_iso() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn have(cmd: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

async fn run(a: RunArgs) -> Result<()> {
    let mut env = Env::new(&a.common, a.peers_dir.clone())?;
    let plan = Plan::new(a.quick);
    let started = Instant::now();
    let started_at = now_iso();
    let mut peers: Vec<String> = if a.peers.is_empty() {
        let mut v = Vec::new();
        if have("nginx") {
            v.push("nchan".to_owned());
        }
        if have("pushpin") && have("zurl") && have("node") {
            v.push("pushpin".to_owned());
        }
        if bun_bin(&env.peers_dir).is_some() {
            v.push("bun".to_owned());
        }
        v
    } else {
        a.peers.iter().filter(|p| *p != "none").cloned().collect()
    };
    for p in &peers {
        if !["nchan", "pushpin", "bun"].contains(&p.as_str()) {
            println!("warning: unknown peer {p:?} left out (nchan, pushpin, bun)");
        }
    }
    peers.retain(|p| p == "nchan" || p == "pushpin" || p == "bun");
    let mut targets = vec!["switchboard".to_owned()];
    targets.extend(peers);
    let want = |s: &str| a.only.is_empty() || a.only.iter().any(|o| o == s);
    println!(
        "# switchboard-bench suite{} — targets: {}; work dir {}",
        if a.quick { " (quick)" } else { "" },
        targets.join(", "),
        env.work.display()
    );
    let mut records = Vec::new();
    let mut errors = Vec::new();
    if want("fanout") {
        if let Err(e) = scenario_fanout(&mut env, &plan, &targets, &mut records).await {
            errors.push(format!("fanout: {e:#}"));
        }
    }
    if want("unicast") {
        if let Err(e) = scenario_unicast(&mut env, &plan, &targets, &mut records).await {
            errors.push(format!("unicast: {e:#}"));
        }
    }
    if want("churn") {
        if let Err(e) = scenario_churn(&mut env, &plan, &mut records).await {
            errors.push(format!("churn: {e:#}"));
        }
    }
    if want("flood") {
        if let Err(e) = scenario_flood(&mut env, &plan, &mut records).await {
            errors.push(format!("flood: {e:#}"));
        }
    }
    if want("compression") {
        if let Err(e) = scenario_compression(&mut env, &plan, &targets, &mut records).await {
            errors.push(format!("compression: {e:#}"));
        }
    }
    if want("tls") {
        if let Err(e) = scenario_tls(&mut env, &plan, &mut records).await {
            errors.push(format!("tls: {e:#}"));
        }
    }
    if want("http2") {
        if let Err(e) = scenario_http2(&mut env, &plan, &mut records).await {
            errors.push(format!("http2: {e:#}"));
        }
    }
    if want("subscribe") {
        if let Err(e) = scenario_subscribe(&mut env, &plan, &mut records).await {
            errors.push(format!("subscribe: {e:#}"));
        }
    }
    if want("scale") {
        if let Err(e) = scenario_scale(&mut env, &plan, &mut records).await {
            errors.push(format!("scale: {e:#}"));
        }
    }
    if want("multinode") {
        if let Err(e) = scenario_multinode(&mut env, &plan, &mut records).await {
            errors.push(format!("multinode: {e:#}"));
        }
    }
    for e in &errors {
        println!("error: {e}");
    }
    let file = SuiteFile {
        started: started_at,
        seconds: started.elapsed().as_secs_f64(),
        quick: a.quick,
        machine: machine(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        records,
    };
    std::fs::create_dir_all(&a.out)?;
    std::fs::write(a.out.join("suite.json"), serde_json::to_vec_pretty(&file)?)?;
    println!(
        "\nsuite finished in {:.0} s; records in {}",
        file.seconds,
        a.out.join("suite.json").display()
    );
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{} scenario(s) failed", errors.len())
    }
}

async fn smoke(common: CommonArgs) -> Result<()> {
    let mut env = Env::new(&common, None)?;
    let mut passed = 0u32;
    let mut failed = 0u32;
    let mut check = |name: &str, ok: bool, detail: String| {
        println!("{} {name}: {detail}", if ok { "ok  " } else { "FAIL" });
        if ok {
            passed += 1;
        } else {
            failed += 1;
        }
    };
    let result: Result<()> = async {
        let server = gateway_server(&mut env, 1, false).await?;
        let dir = env.dir("smoke")?;
        let n = 300u64;
        // Half the sockets negotiate permessage-deflate, so every round checks compressed
        // delivery too.
        let specs = vec![
            LgSpec {
                url: server.ws_url(0),
                count: n / 2,
                base: 0,
                deflate: false,
                tls_ca: None,
            },
            LgSpec {
                url: server.ws_url(0),
                count: n - n / 2,
                base: n / 2,
                deflate: true,
                tls_ca: None,
            },
        ];
        let mut lgs = open_all(&mut env, &specs, &dir, 2000.0).await?;
        let opened: u64 = lgs.iter().map(|l| l.opened).sum();
        check("open", opened == n, format!("{opened}/{n} sockets open"));
        let (t, endpoint) = server.publish_to(0);
        for (size, binary, json) in [
            (100u64, false, false),
            (2048, false, false),
            (2048, false, true),
            (20, true, false),
        ] {
            let mut args = sargs(&[
                "broadcast",
                "--count",
                "5",
                "--size",
                &size.to_string(),
                "--interval-ms",
                "20",
            ]);
            if binary {
                args.push("--binary".into());
            }
            if json {
                args.push("--json".into());
            }
            let rep = publish(&env, t, &endpoint, &args, Duration::from_secs(60)).await?;
            let tag = format!("b{size}{}", if json { "j" } else { "" });
            let r = finish_all(&mut lgs, &tag, "broadcast:5", 20_000).await?;
            let kind = if binary {
                " binary"
            } else if json {
                " JSON"
            } else {
                ""
            };
            check(
                &format!("broadcast {size} B{kind} (half the sockets with permessage-deflate)"),
                r.exact && rep.failed == 0 && rep.queued == 5 * n && r.deflated == n - n / 2,
                format!(
                    "delivered {}/{} duplicates {} unexpected {} queued {} publish errors {:?} deflate sockets {}",
                    r.delivered, r.expected, r.duplicates, r.unexpected, rep.queued, rep.errors, r.deflated
                ),
            );
        }
        let mut args = sargs(&[
            "unicast",
            "--total",
            &n.to_string(),
            "--rate",
            "1000",
            "--seconds",
            "1",
            "--workers",
            "32",
        ]);
        for lg in &lgs {
            args.push("--sessions".into());
            args.push(lg.sessions.display().to_string());
        }
        let rep = publish(&env, t, &endpoint, &args, Duration::from_secs(60)).await?;
        let r = finish_all(
            &mut lgs,
            "u",
            &format!("unicast:{}:{n}", rep.attempted),
            20_000,
        )
        .await?;
        check(
            "unicast Send",
            r.exact && rep.failed == 0 && rep.attempted == 1000,
            format!(
                "delivered {}/{} duplicates {} unexpected {} failed calls {}",
                r.delivered, r.expected, r.duplicates, r.unexpected, rep.failed
            ),
        );
        close_all(lgs).await;

        // Flood one socket through Attach.
        let specs = vec![LgSpec {
            url: server.ws_url(0),
            count: 1,
            base: 0,
            deflate: false,
            tls_ca: None,
        }];
        let mut lgs = open_all(&mut env, &specs, &dir, 100.0).await?;
        let session = std::fs::read_to_string(&lgs[0].sessions)?
            .lines()
            .next()
            .and_then(|l| l.split('\t').nth(1))
            .context("session")?
            .to_owned();
        let mut child = Command::new(env.bin_dir.join("publish"))
            .args(["--target", "switchboard", "--endpoint", &endpoint, "flood"])
            .args([
                "--session",
                &session,
                "--count",
                "20000",
                "--size",
                "20",
                "--seconds",
                "10",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let l = timeout(Duration::from_secs(60), lines.next_line())
            .await
            .context("flood publisher timed out")??
            .context("flood publisher exited")?;
        let rep: PublishReport = serde_json::from_str(&l)?;
        let r = finish_all(&mut lgs, "f", &format!("flood:{}", rep.attempted), 20_000).await?;
        drop(stdin);
        let _ = timeout(Duration::from_secs(10), child.wait()).await;
        check(
            "flood 20 B",
            r.exact && rep.attempted == 20_000 && rep.failed == 0,
            format!(
                "delivered {}/{} (sent {}, errors {:?})",
                r.delivered, r.expected, rep.attempted, rep.errors
            ),
        );
        close_all(lgs).await;

        // Churn.
        let o = timeout(
            Duration::from_secs(60),
            Command::new(env.bin_dir.join("loadgen"))
                .args([
                    "churn",
                    "--url",
                    &server.ws_url(0),
                    "--concurrency",
                    "8",
                    "--seconds",
                    "1",
                ])
                .args(["--source", &env.sources()])
                .stdin(Stdio::null())
                .output(),
        )
        .await??;
        let v: serde_json::Value = serde_json::from_slice(
            o.stdout
                .split(|b| *b == b'\n')
                .rfind(|l| !l.is_empty())
                .unwrap_or_default(),
        )?;
        check(
            "churn",
            v["errors"].as_u64() == Some(0) && v["cycles"].as_u64().unwrap_or(0) > 0,
            format!("{} cycles, {} errors", v["cycles"], v["errors"]),
        );
        server.stop().await;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        check("run", false, format!("{e:#}"));
    }
    let _ = std::fs::remove_dir_all(&env.work);
    println!("bench-smoke: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cli.cmd {
            Cmd::Run(a) => run(a).await,
            Cmd::Smoke(c) => smoke(c).await,
        }
    })
}
