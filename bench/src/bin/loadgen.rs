//! Load generator: opens many WebSocket client sockets at a fixed rate, holds them, and records
//! the send-to-receive time of every stamped message; checks exact delivery (every expected
//! message once, nothing lost, nothing duplicated, nothing misrouted).
//!
//! `loadgen hold --url ws://127.0.0.1:8080/ws/bench --count 5000 --source 127.0.0.2,127.0.0.3`
//! opens the sockets, prints `opened ok=N failed=F secs=S`, and then obeys commands on stdin,
//! one a line:
//!
//! - `finish TAG EXPECT TIMEOUT_MS`: wait until every expected message arrived (or the timeout),
//!   check exactness (each message once, in order per socket, with the bytes the publisher
//!   built for its stamp), write `OUT/TAG.NAME.json` (summary) and `OUT/TAG.NAME.raw.json` (every
//!   sample), print `finished TAG delivered=D expected=E exact=true|false`, and start a new
//!   round. EXPECT is `broadcast:M` (every socket gets sequence numbers 1..=M), `unicast:M:N`
//!   (message j goes to the socket with global index j mod N), `flood:M` (the first socket gets
//!   1..=M) or `none`.
//! - `stats`: print counters.
//! - `close`: close every socket (close handshake), print `closed`, exit.
//!
//! Standalone: `--expect broadcast:10 --hold-seconds 30` finishes by itself.
//!
//! `loadgen churn --url ... --concurrency 64 --seconds 10` connects, completes the upgrade,
//! closes and reconnects in a loop, and prints one JSON summary.
//!
//! Lean by design: one task per socket, no per-socket channel or buffer; every socket of a
//! thread reads into one shared buffer and keeps only its frame parser (about 200 bytes).

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    io::Write as _,
    net::{IpAddr, SocketAddr, ToSocketAddrs},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use http_body_util::Empty;
use switchboard_bench::{
    now_ns,
    payload::{self, Digest},
    procfs,
    results::{RawSamples, RoundSummary, SeqSpan},
    stats::{percentiles_us, Percentiles},
    wire::{self, Event},
    WsUrl,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpSocket, TcpStream},
    sync::watch,
    time::{sleep, sleep_until, timeout},
};

#[derive(Parser)]
#[command(about = "WebSocket load generator for Switchboard, nchan and Pushpin")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Open sockets, hold them, record what arrives.
    Hold(HoldArgs),
    /// Connect, upgrade, close, again, for a while.
    Churn(ChurnArgs),
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ClientKind {
    /// Hand-made handshake and frame parser, shared read buffer (about 1-2 KB per socket).
    Lean,
    /// fastwebsockets' client (hyper handshake, its own 8 KiB read buffer per socket).
    Fastws,
}

#[derive(Args)]
struct HoldArgs {
    /// `ws://host:port/path`; `{i}` in the path becomes the socket's global index.
    #[arg(long)]
    url: String,
    /// Sockets to open.
    #[arg(long)]
    count: u32,
    /// Global index of the first socket (several load generators share one index space).
    #[arg(long, default_value_t = 0)]
    base: u64,
    /// Opens per second.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Source addresses to bind, round robin (127.0.0.2,127.0.0.3,...).
    #[arg(long, value_delimiter = ',')]
    source: Vec<IpAddr>,
    /// Name in output files.
    #[arg(long, default_value = "lg")]
    name: String,
    #[arg(long, default_value = ".")]
    out_dir: PathBuf,
    /// Write `global_index<TAB>session_id` lines here once every socket is open.
    #[arg(long)]
    sessions_file: Option<PathBuf>,
    /// Hard bound on the process's life.
    #[arg(long, default_value_t = 1800)]
    max_seconds: u64,
    /// Bound on one connect + upgrade.
    #[arg(long, default_value_t = 60)]
    handshake_timeout: u64,
    #[arg(long, value_enum, default_value_t = ClientKind::Lean)]
    client: ClientKind,
    /// Offer permessage-deflate as browsers do (lean client only); compressed messages are
    /// inflated to read their stamps.
    #[arg(long)]
    deflate: bool,
    /// PEM file of the certificate authority that signed the server's certificate, for
    /// `wss://` URLs (which always use the fastwebsockets client over rustls).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Standalone: finish one round by itself with this expectation (see EXPECT above).
    #[arg(long)]
    expect: Option<String>,
    /// Standalone: how long to wait for the expected messages.
    #[arg(long, default_value_t = 30)]
    hold_seconds: u64,
    /// Runtime worker threads (1: a current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Do not write raw samples.
    #[arg(long)]
    no_raw: bool,
}

#[derive(Args, Clone)]
struct ChurnArgs {
    #[arg(long)]
    url: String,
    /// Connect-close loops running at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Stop after this many cycles.
    #[arg(long, default_value_t = 1_000_000)]
    max_cycles: u64,
    #[arg(long, value_delimiter = ',')]
    source: Vec<IpAddr>,
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

const OPEN: u8 = 1;
const FAILED: u8 = 2;
const DROPPED: u8 = 3;
const CLOSED: u8 = 4;
const SHARDS: usize = 64;

#[derive(Clone, Copy)]
struct Sample {
    sock: u32,
    seq: u64,
    sent: u64,
    recv: u64,
}

struct Shared {
    url: WsUrl,
    addr: SocketAddr,
    base: u64,
    sources: Vec<IpAddr>,
    handshake_timeout: Duration,
    states: Vec<AtomicU8>,
    samples: Vec<Mutex<Vec<Sample>>>,
    sample_count: AtomicU64,
    opened: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    other: AtomicU64,
    /// Benchmark messages whose bytes are not what the publisher sent, this round.
    corrupt: AtomicU64,
    bytes: AtomicU64,
    /// Bytes read off the sockets (frames as sent, compressed or not), this round.
    wire_bytes: AtomicU64,
    /// Sockets whose server agreed to permessage-deflate.
    deflated: AtomicU64,
    deflate: bool,
    /// Set for `wss://` URLs.
    tls: Option<tokio_rustls::TlsConnector>,
    close_rx: watch::Receiver<bool>,
    sessions: Option<Mutex<Vec<(u64, String)>>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    fn record(&self, sock: u32, prefix: &[u8], len: u64, digest: Digest, now: u64) {
        self.bytes.fetch_add(len, Relaxed);
        match payload::decode(prefix) {
            Some(_) if !intact(prefix, len, digest) => {
                self.corrupt.fetch_add(1, Relaxed);
            }
            Some((seq, sent)) => {
                let s = Sample {
                    sock,
                    seq,
                    sent,
                    recv: now,
                };
                self.samples[sock as usize % SHARDS]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(s);
                self.sample_count.fetch_add(1, Relaxed);
            }
            None => {
                self.other.fetch_add(1, Relaxed);
            }
        }
    }

    fn error(&self, e: &anyhow::Error) {
        let key: String = format!("{e:#}").chars().take(120).collect();
        *self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default() += 1;
    }

    fn source_for(&self, i: u64) -> Option<IpAddr> {
        (!self.sources.is_empty()).then(|| self.sources[i as usize % self.sources.len()])
    }
}

thread_local! {
    /// One read buffer per thread, shared by every socket the thread serves.
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; 256 * 1024]);
    /// The digest of the last message checked on this thread: a broadcast reaches thousands
    /// of sockets with the same bytes, so the payload is rebuilt once, not once per socket.
    static LAST_DIGEST: RefCell<Option<(Vec<u8>, u64, Digest)>> = const { RefCell::new(None) };
}

/// Whether a message's bytes are what the publisher built for its stamp.
fn intact(prefix: &[u8], len: u64, digest: Digest) -> bool {
    LAST_DIGEST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((p, l, d)) = last.as_ref() {
            if p == prefix && *l == len {
                return *d == digest;
            }
        }
        let Some(want) = payload::expected_digest(prefix, len) else {
            return false;
        };
        *last = Some((prefix.to_vec(), len, want));
        want == digest
    })
}

async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream> {
    let sock = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("bind {ip}"))?;
    }
    let s = sock.connect(addr).await.context("connect")?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Connect and upgrade; returns the stream, what the 101 said and bytes read past it.
async fn lean_handshake(
    addr: SocketAddr,
    source: Option<IpAddr>,
    host: &str,
    path: &str,
    index: u64,
    deflate: bool,
) -> Result<(TcpStream, wire::Upgraded, Vec<u8>)> {
    let mut stream = connect(addr, source).await?;
    let key = wire::key_for(index);
    stream
        .write_all(wire::upgrade_request(host, path, &key, deflate).as_bytes())
        .await?;
    let mut head = Vec::with_capacity(512);
    loop {
        let n = stream.read_buf(&mut head).await?;
        if n == 0 {
            bail!("connection closed during the upgrade");
        }
        if let Some(up) = wire::parse_upgrade_response(&head, &key)? {
            let rest = head[up.head_len..].to_vec();
            return Ok((stream, up, rest));
        }
    }
}

fn mask_for(i: u64) -> [u8; 4] {
    ((i as u32).wrapping_mul(2_654_435_761) | 1).to_le_bytes()
}

#[derive(Default)]
struct Owed {
    pong: Option<Vec<u8>>,
    close: Option<u16>,
    error: Option<&'static str>,
}

enum Step {
    More,
    Wait,
    Eof,
}

/// Feeds bytes to the parser, recording messages; what must be answered goes into `owed`.
fn feed(sh: &Shared, parser: &mut wire::Parser, sock: u32, data: &[u8], now: u64, owed: &mut Owed) {
    let r = parser.feed(data, |ev| match ev {
        Event::Message {
            prefix,
            len,
            digest,
            ..
        } => sh.record(sock, prefix, len, digest, now),
        Event::Ping(p) => owed.pong = Some(p.to_vec()),
        Event::Close(code) => owed.close = Some(code),
    });
    if let Err(e) = r {
        owed.error = Some(e);
    }
}

async fn lean_socket(sh: Arc<Shared>, i: u32) {
    let g = sh.base + i as u64;
    let path = sh.url.path(g);
    let hs = Box::pin(lean_handshake(
        sh.addr,
        sh.source_for(g),
        &sh.url.host,
        &path,
        g,
        sh.deflate,
    ));
    let (mut stream, up, rest) = match timeout(sh.handshake_timeout, hs).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return fail(&sh, i, e),
        Err(_) => return fail(&sh, i, anyhow::anyhow!("handshake timed out")),
    };
    drop(path);
    let mut parser = wire::Parser::new();
    if up.deflate {
        parser.set_deflate(true);
        sh.deflated.fetch_add(1, Relaxed);
    }
    if let (Some(table), Some(id)) = (&sh.sessions, up.session) {
        table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((g, id));
    }
    sh.states[i as usize].store(OPEN, Relaxed);
    sh.opened.fetch_add(1, Relaxed);

    let mask = mask_for(g);
    let mut owed = Owed::default();
    feed(&sh, &mut parser, i, &rest, now_ns(), &mut owed);
    drop(rest);
    let mut close_rx = sh.close_rx.clone();
    let mut closing: Option<tokio::time::Instant> = None;
    let end = loop {
        // Answer what the last bytes asked for.
        if let Some(p) = owed.pong.take() {
            if stream
                .write_all(&wire::masked_frame(0xA, &p, mask))
                .await
                .is_err()
            {
                break DROPPED;
            }
        }
        if let Some(e) = owed.error {
            sh.error(&anyhow::anyhow!("protocol: {e}"));
            break DROPPED;
        }
        if let Some(code) = owed.close.take() {
            if closing.is_some() {
                break CLOSED;
            }
            let _ = stream.write_all(&wire::close_frame(code, mask)).await;
            sh.error(&anyhow::anyhow!("server closed with {code}"));
            break DROPPED;
        }
        if closing.is_none() && *close_rx.borrow() {
            let _ = stream.write_all(&wire::close_frame(1000, mask)).await;
            closing = Some(tokio::time::Instant::now() + Duration::from_secs(5));
        }
        tokio::select! {
            biased;
            r = close_rx.changed(), if closing.is_none() => {
                if r.is_err() {
                    break DROPPED;
                }
                continue;
            }
            _ = sleep_until(closing.unwrap_or_else(tokio::time::Instant::now)), if closing.is_some() => break CLOSED,
            r = stream.readable() => if r.is_err() { break DROPPED },
        }
        let step = READ_BUF.with(|b| {
            let mut b = b.borrow_mut();
            match stream.try_read(&mut b[..]) {
                Ok(0) => Step::Eof,
                Ok(n) => {
                    sh.wire_bytes.fetch_add(n as u64, Relaxed);
                    feed(&sh, &mut parser, i, &b[..n], now_ns(), &mut owed);
                    Step::More
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Step::Wait,
                Err(_) => Step::Eof,
            }
        });
        match step {
            Step::More | Step::Wait => {}
            Step::Eof if closing.is_some() => break CLOSED,
            Step::Eof => {
                sh.error(&anyhow::anyhow!("connection ended by the server"));
                break DROPPED;
            }
        }
    };
    if end == DROPPED {
        sh.dropped.fetch_add(1, Relaxed);
    }
    sh.states[i as usize].store(end, Relaxed);
}

fn fail(sh: &Shared, i: u32, e: anyhow::Error) {
    sh.error(&e);
    sh.states[i as usize].store(FAILED, Relaxed);
    sh.failed.fetch_add(1, Relaxed);
}

/// A TLS client trusting only the certificate authority in `ca` (a PEM file).
fn tls_connector(ca: &std::path::Path) -> Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("{}", ca.display()))? {
        roots.add(cert.with_context(|| format!("{}", ca.display()))?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[derive(Clone)]
struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::spawn(fut);
    }
}

/// The same job with fastwebsockets' client: a reference to check the lean parser against.
async fn fastws_socket(sh: Arc<Shared>, i: u32) {
    let g = sh.base + i as u64;
    let hs = async {
        let stream = connect(sh.addr, sh.source_for(g)).await?;
        let req = http::Request::builder()
            .method("GET")
            .uri(format!("http://{}{}", sh.url.host, sh.url.path(g)))
            .header("Host", &sh.url.host)
            .header("Upgrade", "websocket")
            .header("Connection", "upgrade")
            .header(
                "Sec-WebSocket-Key",
                fastwebsockets::handshake::generate_key(),
            )
            .header("Sec-WebSocket-Version", "13")
            .body(Empty::<Bytes>::new())?;
        let (ws, resp) = match &sh.tls {
            None => fastwebsockets::handshake::client(&SpawnExecutor, req, stream).await?,
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(sh.addr.ip().to_string())?;
                let stream = tls.connect(name, stream).await.context("TLS handshake")?;
                fastwebsockets::handshake::client(&SpawnExecutor, req, stream).await?
            }
        };
        let session = resp
            .headers()
            .get("x-switchboard-session")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        anyhow::Ok((ws, session))
    };
    let (ws, session) = match timeout(sh.handshake_timeout, Box::pin(hs)).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return fail(&sh, i, e),
        Err(_) => return fail(&sh, i, anyhow::anyhow!("handshake timed out")),
    };
    if let (Some(table), Some(id)) = (&sh.sessions, session) {
        table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((g, id));
    }
    sh.states[i as usize].store(OPEN, Relaxed);
    sh.opened.fetch_add(1, Relaxed);
    let mut ws = fastwebsockets::FragmentCollector::new(ws);
    let mut close_rx = sh.close_rx.clone();
    let end = loop {
        // Cancelling read_frame is safe here: the socket is dropped right after.
        let frame = tokio::select! {
            _ = close_rx.changed() => break CLOSED,
            f = ws.read_frame() => f,
        };
        match frame {
            Ok(f) => match f.opcode {
                fastwebsockets::OpCode::Text | fastwebsockets::OpCode::Binary => {
                    let p = &f.payload[..f.payload.len().min(payload::PREFIX)];
                    let digest = Digest::of(&f.payload);
                    sh.record(i, p, f.payload.len() as u64, digest, now_ns());
                }
                fastwebsockets::OpCode::Close => {
                    sh.error(&anyhow::anyhow!("server closed"));
                    break DROPPED;
                }
                _ => {}
            },
            Err(e) => {
                sh.error(&anyhow::anyhow!("read: {e}"));
                break DROPPED;
            }
        }
    };
    if end == DROPPED {
        sh.dropped.fetch_add(1, Relaxed);
    }
    sh.states[i as usize].store(end, Relaxed);
}

#[derive(Clone, Debug)]
enum Expect {
    None,
    Broadcast(u64),
    Unicast { m: u64, n: u64 },
    Flood(u64),
}

impl Expect {
    fn parse(s: &str) -> Result<Expect> {
        let parts: Vec<&str> = s.split(':').collect();
        let num = |i: usize| -> Result<u64> {
            parts
                .get(i)
                .context("missing number")?
                .parse()
                .context("bad number")
        };
        Ok(match parts[0] {
            "none" => Expect::None,
            "broadcast" => Expect::Broadcast(num(1)?),
            "unicast" => Expect::Unicast {
                m: num(1)?,
                n: num(2)?.max(1),
            },
            "flood" => Expect::Flood(num(1)?),
            other => bail!("unknown expectation {other}"),
        })
    }

    fn describe(&self) -> String {
        match self {
            Expect::None => "none".into(),
            Expect::Broadcast(m) => format!("broadcast {m}"),
            Expect::Unicast { m, n } => format!("unicast {m} {n}"),
            Expect::Flood(m) => format!("flood {m}"),
        }
    }

    /// Messages socket with global index `g` (local index `local`) should get.
    fn count_for(&self, g: u64, local: u32) -> u64 {
        match *self {
            Expect::None => 0,
            Expect::Broadcast(m) => m,
            Expect::Unicast { m, n } => {
                let r = g % n;
                if r == 0 {
                    m / n
                } else if r <= m {
                    (m - r) / n + 1
                } else {
                    0
                }
            }
            Expect::Flood(m) => {
                if local == 0 {
                    m
                } else {
                    0
                }
            }
        }
    }

    fn wants(&self, g: u64, local: u32, seq: u64) -> bool {
        match *self {
            Expect::None => false,
            Expect::Broadcast(m) => (1..=m).contains(&seq),
            Expect::Unicast { m, n } => (1..=m).contains(&seq) && seq % n == g % n,
            Expect::Flood(m) => local == 0 && (1..=m).contains(&seq),
        }
    }
}

fn reached_open(state: u8) -> bool {
    matches!(state, OPEN | DROPPED | CLOSED)
}

async fn finish(
    sh: &Shared,
    args: &HoldArgs,
    tag: &str,
    expect: &Expect,
    wait: Duration,
) -> Result<RoundSummary> {
    let expected: u64 = sh
        .states
        .iter()
        .enumerate()
        .filter(|(_, s)| reached_open(s.load(Relaxed)))
        .map(|(i, _)| expect.count_for(sh.base + i as u64, i as u32))
        .sum();
    let deadline = Instant::now() + wait;
    while sh.sample_count.load(Relaxed) < expected && Instant::now() < deadline {
        sleep(Duration::from_millis(5)).await;
    }
    // Late duplicates would show up now.
    sleep(Duration::from_millis(200)).await;

    let mut samples: Vec<Sample> = Vec::with_capacity(sh.sample_count.load(Relaxed) as usize);
    for shard in &sh.samples {
        samples.append(&mut shard.lock().unwrap_or_else(|e| e.into_inner()));
    }
    sh.sample_count.store(0, Relaxed);
    // Each socket's samples are still in arrival order (one task records them, into one shard).
    let mut last_seq: HashMap<u32, u64> = HashMap::new();
    let mut out_of_order = 0u64;
    for s in &samples {
        let last = last_seq.entry(s.sock).or_default();
        if s.seq < *last {
            out_of_order += 1;
        }
        *last = (*last).max(s.seq);
    }
    samples.sort_unstable_by_key(|s| (s.sock, s.seq, s.recv));

    let mut delivered = 0u64;
    let mut duplicates = 0u64;
    let mut unexpected = 0u64;
    let corrupt = sh.corrupt.swap(0, Relaxed);
    let mut lat = Vec::with_capacity(samples.len());
    let mut per_seq: BTreeMap<u64, SeqSpan> = BTreeMap::new();
    let mut raw = RawSamples {
        name: args.name.clone(),
        tag: tag.to_owned(),
        ..Default::default()
    };
    let mut first_sent = u64::MAX;
    let mut last_recv = 0u64;
    let mut prev: Option<(u32, u64)> = None;
    for s in &samples {
        let g = sh.base + s.sock as u64;
        if prev == Some((s.sock, s.seq)) {
            duplicates += 1;
            continue;
        }
        prev = Some((s.sock, s.seq));
        if !expect.wants(g, s.sock, s.seq) {
            unexpected += 1;
            continue;
        }
        delivered += 1;
        lat.push(s.recv.saturating_sub(s.sent));
        first_sent = first_sent.min(s.sent);
        last_recv = last_recv.max(s.recv);
        if matches!(expect, Expect::Broadcast(_)) {
            let e = per_seq.entry(s.seq).or_insert(SeqSpan {
                seq: s.seq,
                sent_ns: s.sent,
                last_recv_ns: 0,
                count: 0,
            });
            e.last_recv_ns = e.last_recv_ns.max(s.recv);
            e.count += 1;
        }
        if !args.no_raw {
            raw.sock.push(g);
            raw.seq.push(s.seq);
            raw.sent_ns.push(s.sent);
            raw.recv_ns.push(s.recv);
        }
    }
    let latency_us: Percentiles = percentiles_us(&mut lat);
    let open = sh
        .states
        .iter()
        .filter(|s| reached_open(s.load(Relaxed)))
        .count() as u64;
    let me = std::process::id();
    let cpu = procfs::cpu_ticks(me);
    let summary = RoundSummary {
        name: args.name.clone(),
        tag: tag.to_owned(),
        expect: expect.describe(),
        sockets_open: open,
        sockets_failed: sh.failed.load(Relaxed),
        sockets_dropped: sh.dropped.load(Relaxed),
        expected,
        delivered,
        duplicates,
        unexpected,
        other_messages: sh.other.swap(0, Relaxed),
        corrupt,
        out_of_order,
        exact: delivered == expected
            && duplicates == 0
            && unexpected == 0
            && corrupt == 0
            && out_of_order == 0
            && sh.failed.load(Relaxed) == 0
            && sh.dropped.load(Relaxed) == 0,
        latency_us,
        first_sent_ns: if first_sent == u64::MAX {
            0
        } else {
            first_sent
        },
        last_recv_ns: last_recv,
        bytes: sh.bytes.swap(0, Relaxed),
        wire_bytes: sh.wire_bytes.swap(0, Relaxed),
        deflated_sockets: sh.deflated.load(Relaxed),
        per_seq: per_seq.into_values().collect(),
        self_cpu_ticks: (cpu.user, cpu.system),
        self_rss_kib: procfs::rss_kib(me),
    };
    std::fs::create_dir_all(&args.out_dir)?;
    let base = format!("{tag}.{}", args.name);
    std::fs::write(
        args.out_dir.join(format!("{base}.json")),
        serde_json::to_vec_pretty(&summary)?,
    )?;
    if !args.no_raw {
        let f = std::fs::File::create(args.out_dir.join(format!("{base}.raw.json")))?;
        serde_json::to_writer(std::io::BufWriter::new(f), &raw)?;
    }
    Ok(summary)
}

fn print_line(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

fn errors_line(sh: &Shared) -> String {
    let e = sh.errors.lock().unwrap_or_else(|e| e.into_inner());
    e.iter()
        .map(|(k, v)| format!("{v}x {k}"))
        .collect::<Vec<_>>()
        .join("; ")
}

async fn hold(args: HoldArgs) -> Result<()> {
    let url = WsUrl::parse(&args.url)?;
    let addr = url.host.to_socket_addrs()?.next().context("resolve host")?;
    let url_tls = url.tls;
    let (close_tx, close_rx) = watch::channel(false);
    let n = args.count as usize;
    let sh = Arc::new(Shared {
        url,
        addr,
        base: args.base,
        sources: args.source.clone(),
        handshake_timeout: Duration::from_secs(args.handshake_timeout),
        states: (0..n).map(|_| AtomicU8::new(0)).collect(),
        samples: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
        sample_count: AtomicU64::new(0),
        opened: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        other: AtomicU64::new(0),
        corrupt: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        wire_bytes: AtomicU64::new(0),
        deflated: AtomicU64::new(0),
        deflate: args.deflate,
        tls: match (&args.tls_ca, url_tls) {
            (_, false) => None,
            (Some(ca), true) => Some(tls_connector(ca)?),
            (None, true) => bail!("a wss:// URL needs --tls-ca"),
        },
        close_rx,
        sessions: args
            .sessions_file
            .as_ref()
            .map(|_| Mutex::new(Vec::with_capacity(n))),
        errors: Mutex::new(BTreeMap::new()),
    });

    // Watchdog: the whole process is bounded in time.
    let max = Duration::from_secs(args.max_seconds);
    tokio::spawn(async move {
        sleep(max).await;
        print_line("timeout: --max-seconds reached");
        std::process::exit(3);
    });

    let rss0 = procfs::rss_kib(std::process::id());
    // Open at a fixed rate.
    let started = Instant::now();
    let rate = args.rate.max(1.0);
    let mut next = 0usize;
    while next < n {
        let due = ((started.elapsed().as_secs_f64() * rate) as usize + 1).min(n);
        while next < due {
            let sh = Arc::clone(&sh);
            let i = next as u32;
            match args.client {
                // The lean client reads plain TCP only.
                ClientKind::Lean if !url_tls => tokio::spawn(lean_socket(sh, i)),
                ClientKind::Lean => tokio::spawn(fastws_socket(sh, i)),
                ClientKind::Fastws => tokio::spawn(fastws_socket(sh, i)),
            };
            next += 1;
        }
        sleep(Duration::from_millis(1)).await;
    }
    let open_deadline = Instant::now() + Duration::from_secs(args.handshake_timeout + 5);
    while sh.opened.load(Relaxed) + sh.failed.load(Relaxed) < n as u64
        && Instant::now() < open_deadline
    {
        sleep(Duration::from_millis(10)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    if let (Some(path), Some(table)) = (&args.sessions_file, &sh.sessions) {
        let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
        t.sort();
        let mut text = String::with_capacity(t.len() * 32);
        for (g, id) in t.iter() {
            text.push_str(&format!("{g}\t{id}\n"));
        }
        std::fs::write(path, text)?;
        t.clear();
        t.shrink_to_fit();
    }
    print_line(&format!(
        "opened ok={} failed={} secs={secs:.3} rss0_kib={rss0} rss_kib={}{}",
        sh.opened.load(Relaxed),
        sh.failed.load(Relaxed),
        procfs::rss_kib(std::process::id()),
        if sh.failed.load(Relaxed) > 0 {
            format!(" errors={}", errors_line(&sh))
        } else {
            String::new()
        }
    ));

    if let Some(e) = &args.expect {
        let expect = Expect::parse(e)?;
        if matches!(expect, Expect::None) {
            // Nothing to wait for: just hold the sockets.
            sleep(Duration::from_secs(args.hold_seconds)).await;
        }
        let s = finish(
            &sh,
            &args,
            "standalone",
            &expect,
            Duration::from_secs(args.hold_seconds),
        )
        .await?;
        print_line(&serde_json::to_string(&s)?);
        close_all(&sh, &close_tx).await;
        return Ok(());
    }

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["finish", tag, expect, timeout_ms] => {
                let expect = Expect::parse(expect)?;
                let wait = Duration::from_millis(timeout_ms.parse()?);
                let s = finish(&sh, &args, tag, &expect, wait).await?;
                print_line(&format!(
                    "finished {tag} delivered={} expected={} duplicates={} unexpected={} corrupt={} out_of_order={} dropped={} exact={}{}",
                    s.delivered,
                    s.expected,
                    s.duplicates,
                    s.unexpected,
                    s.corrupt,
                    s.out_of_order,
                    s.sockets_dropped,
                    s.exact,
                    if s.exact { String::new() } else { format!(" errors={}", errors_line(&sh)) }
                ));
            }
            ["stats"] => print_line(&format!(
                "stats opened={} failed={} dropped={} samples={} other={} rss_kib={}",
                sh.opened.load(Relaxed),
                sh.failed.load(Relaxed),
                sh.dropped.load(Relaxed),
                sh.sample_count.load(Relaxed),
                sh.other.load(Relaxed),
                procfs::rss_kib(std::process::id())
            )),
            ["close"] => break,
            [] => {}
            _ => print_line(&format!("error unknown command {line:?}")),
        }
    }
    close_all(&sh, &close_tx).await;
    Ok(())
}

async fn close_all(sh: &Shared, close_tx: &watch::Sender<bool>) {
    let _ = close_tx.send(true);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && sh
            .states
            .iter()
            .any(|s| matches!(s.load(Relaxed), 0 | OPEN))
    {
        sleep(Duration::from_millis(20)).await;
    }
    print_line("closed");
}

#[derive(serde::Serialize)]
struct ChurnSummary {
    cycles: u64,
    errors: u64,
    seconds: f64,
    cycles_per_s: f64,
    handshake_us: Percentiles,
    cycle_us: Percentiles,
    error_kinds: HashMap<String, u64>,
}

/// One connect, upgrade, close handshake, end.
async fn churn_cycle(
    addr: SocketAddr,
    source: Option<IpAddr>,
    url: &WsUrl,
    index: u64,
) -> Result<u64> {
    let t0 = Instant::now();
    let (mut stream, _, rest) =
        lean_handshake(addr, source, &url.host, &url.path(index), index, false).await?;
    let hs = t0.elapsed().as_nanos() as u64;
    let mask = mask_for(index);
    stream.write_all(&wire::close_frame(1000, mask)).await?;
    let mut parser = wire::Parser::new();
    let mut got_close = false;
    let mut buf = rest;
    loop {
        let _ = parser.feed(&buf, |ev| {
            if let Event::Close(_) = ev {
                got_close = true;
            }
        });
        buf.clear();
        if stream.read_buf(&mut buf).await? == 0 {
            break;
        }
    }
    anyhow::ensure!(got_close, "no close frame before the end of the connection");
    Ok(hs)
}

async fn churn(args: ChurnArgs) -> Result<()> {
    let url = WsUrl::parse(&args.url)?;
    anyhow::ensure!(!url.tls, "churn speaks ws:// only");
    let addr = url.host.to_socket_addrs()?.next().context("resolve host")?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let issued = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let url = url.clone();
        let args = args.clone();
        let issued = Arc::clone(&issued);
        workers.push(tokio::spawn(async move {
            let mut hs = Vec::new();
            let mut cycle = Vec::new();
            let mut errors: HashMap<String, u64> = HashMap::new();
            while Instant::now() < deadline {
                let k = issued.fetch_add(1, Relaxed);
                if k >= args.max_cycles {
                    break;
                }
                let source =
                    (!args.source.is_empty()).then(|| args.source[k as usize % args.source.len()]);
                let t0 = Instant::now();
                match timeout(Duration::from_secs(10), churn_cycle(addr, source, &url, k)).await {
                    Ok(Ok(h)) => {
                        hs.push(h);
                        cycle.push(t0.elapsed().as_nanos() as u64);
                    }
                    Ok(Err(e)) => {
                        *errors
                            .entry(format!("{e:#}").chars().take(100).collect())
                            .or_default() += 1
                    }
                    Err(_) => *errors.entry("cycle timed out".into()).or_default() += 1,
                }
            }
            (hs, cycle, errors)
        }));
    }
    let mut hs = Vec::new();
    let mut cycle = Vec::new();
    let mut errors: HashMap<String, u64> = HashMap::new();
    for w in workers {
        let (h, c, e) = w.await?;
        hs.extend(h);
        cycle.extend(c);
        for (k, v) in e {
            *errors.entry(k).or_default() += v;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let s = ChurnSummary {
        cycles: cycle.len() as u64,
        errors: errors.values().sum(),
        seconds: secs,
        cycles_per_s: cycle.len() as f64 / secs,
        handshake_us: percentiles_us(&mut hs),
        cycle_us: percentiles_us(&mut cycle),
        error_kinds: errors,
    };
    print_line(&serde_json::to_string(&s)?);
    Ok(())
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    Ok(if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    })
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Hold(a) => runtime(a.threads)?.block_on(hold(a)),
        Cmd::Churn(a) => runtime(a.threads)?.block_on(churn(a)),
    }
}
