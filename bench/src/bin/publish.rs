//! Publisher: stamps messages (sequence number + send time) and sends them to a hub, to one
//! session at a time, or as a flood to one session; prints one JSON report line.
//!
//! Targets:
//! - `switchboard`: the gRPC API (`--endpoint http://127.0.0.1:7070`): `Publish` to a hub,
//!   `Send` to session IDs read from load generators' `--sessions-file`s (or, with `unicast
//!   --batch-ms`, every message due in a period in one `SendBatch`), `Attach` writes for a
//!   flood (a stream with backpressure, no call per message).
//! - `nchan`: `POST {endpoint}/pub/all` or `/pub/<index>` (`--endpoint http://127.0.0.1:8091`).
//! - `pushpin`: `POST {endpoint}/publish/` with a JSON item for channel `all` or `<index>`
//!   (`--endpoint http://127.0.0.1:5561`).
//! - `bun`: as nchan, `POST {endpoint}/pub/all` or `/pub/<index>` to `bench/peers/bun_pubsub.js`
//!   (`--endpoint http://127.0.0.1:8097`).
//!
//! Unicast message j (1, 2, ...) goes to the socket with global index j mod N, which is what a
//! load generator's `unicast:M:N` expectation checks.

// Requests end in `..Default::default()` so that fields added to the API later leave the
// publisher compiling (with their defaults), even where every field is set today.
#![allow(clippy::needless_update)]

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use switchboard_bench::{
    now_ns, payload, procfs,
    results::PublishReport,
    stats::{percentiles_us, Percentiles},
};
use switchboard_proto::v1::{
    self as pb, attach_request, gateway_client::GatewayClient, message::Payload, target,
};
use tokio::{
    net::TcpStream,
    sync::Semaphore,
    task::JoinSet,
    time::{interval, sleep_until, timeout, MissedTickBehavior},
};
use tonic::transport::{Channel, Endpoint};

#[derive(Parser)]
#[command(about = "Stamped messages to Switchboard (gRPC), nchan, Pushpin or Bun (HTTP)")]
struct Cli {
    #[arg(long, value_enum)]
    target: Target,
    /// `http://host:port` of the gRPC backend port or of the peer's publish port.
    #[arg(long)]
    endpoint: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Target {
    Switchboard,
    Nchan,
    Pushpin,
    Bun,
}

#[derive(Subcommand)]
enum Cmd {
    /// One message to every socket, `count` times, `interval_ms` apart.
    Broadcast(BroadcastArgs),
    /// Messages to one socket each, at a fixed rate.
    Unicast(UnicastArgs),
    /// As many messages as the stream takes to one session (Switchboard only, via Attach).
    Flood(FloodArgs),
}

#[derive(Args)]
struct BroadcastArgs {
    /// Switchboard hub.
    #[arg(long, default_value = "bench")]
    hub: String,
    #[arg(long)]
    count: u64,
    #[arg(long, default_value_t = 100)]
    size: usize,
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    /// Binary frames (Switchboard only).
    #[arg(long)]
    binary: bool,
    /// Pad text with JSON records (compresses like typical JSON) instead of `x`.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct UnicastArgs {
    /// Sockets in all (N): message j goes to global index j mod N.
    #[arg(long)]
    total: u64,
    /// `index<TAB>session` files (Switchboard).
    #[arg(long)]
    sessions: Vec<PathBuf>,
    /// Messages per second asked for.
    #[arg(long)]
    rate: f64,
    #[arg(long)]
    seconds: f64,
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Calls in flight at most (each worker has one).
    #[arg(long, default_value_t = 256)]
    workers: usize,
    /// gRPC connections (HTTP/2) shared by the workers; HTTP targets use one per worker.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Stop issuing after this long even if behind schedule.
    #[arg(long, default_value_t = 60.0)]
    max_seconds: f64,
    /// Switchboard only: batch period in milliseconds. Every period, every message already due
    /// goes out in one `SendBatch` call (at most `--workers` calls in flight, spread over the
    /// connections); each message is stamped with its due time, so the wait for the batch
    /// counts in the measured latency. 0 = one unary `Send` per message.
    #[arg(long, default_value_t = 0.0)]
    batch_ms: f64,
    /// Most encoded bytes in one `SendBatch` request: more due messages than fit go in further
    /// calls. The gateway refuses requests over its `max_message_bytes` + 64 KiB (1 MiB +
    /// 64 KiB by default), which 10,000 items of 100 B exceed.
    #[arg(long, default_value_t = 1 << 20)]
    batch_max_bytes: usize,
}

#[derive(Args)]
struct FloodArgs {
    #[arg(long)]
    session: String,
    #[arg(long)]
    count: u64,
    #[arg(long, default_value_t = 20)]
    size: usize,
    /// Stop writing after this long.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// After writing, keep the stream open until stdin closes, at most this long.
    #[arg(long, default_value_t = 60.0)]
    linger: f64,
}

fn message(seq: u64, size: usize, binary: bool) -> pb::Message {
    message_at(seq, now_ns(), size, binary)
}

/// A message stamped with `sent_ns` (a batched message's due time rather than the moment its
/// batch leaves).
fn message_at(seq: u64, sent_ns: u64, size: usize, binary: bool) -> pb::Message {
    let p = if binary || size < payload::TEXT_STAMP {
        Payload::Binary(payload::binary(seq, sent_ns, size).into())
    } else {
        Payload::Text(payload::text(seq, sent_ns, size))
    };
    pb::Message { payload: Some(p) }
}

async fn grpc(endpoint: &str) -> Result<GatewayClient<Channel>> {
    let ch = Endpoint::from_shared(endpoint.to_owned())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("connect {endpoint}"))?;
    Ok(GatewayClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// One HTTP/1.1 connection, kept alive unless the server says `Connection: close` (Pushpin's
/// publish port does after every response), then opened again for the next request.
struct Http {
    host: String,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    closed: bool,
}

impl Http {
    async fn connect(endpoint: &str) -> Result<Http> {
        let host = endpoint
            .strip_prefix("http://")
            .context("endpoint must be http://")?
            .trim_end_matches('/')
            .to_owned();
        let sender = Self::open(&host).await?;
        Ok(Http {
            host,
            sender,
            closed: false,
        })
    }

    async fn open(host: &str) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(host).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn post(&mut self, path: &str, content_type: &str, body: Bytes) -> Result<()> {
        if self.closed || self.sender.is_closed() || self.sender.ready().await.is_err() {
            self.sender = Self::open(&self.host).await?;
            self.closed = false;
        }
        let req = http::Request::post(path)
            .header("Host", &self.host)
            .header("Content-Type", content_type)
            .body(Full::new(body))?;
        let resp = self.sender.send_request(req).await?;
        self.closed = resp
            .headers()
            .get("connection")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(100)])
            );
        }
        Ok(())
    }
}

/// A peer publish of one text message to `channel`.
async fn peer_publish(http: &mut Http, target: Target, channel: &str, text: String) -> Result<()> {
    match target {
        Target::Nchan | Target::Bun => {
            http.post(&format!("/pub/{channel}"), "text/plain", text.into())
                .await
        }
        Target::Pushpin => {
            let body = serde_json::json!({
                "items": [{"channel": channel, "formats": {"ws-message": {"content": text}}}]
            });
            http.post(
                "/publish/",
                "application/json",
                serde_json::to_vec(&body)?.into(),
            )
            .await
        }
        Target::Switchboard => unreachable!("gRPC target"),
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    errors: BTreeMap<String, u64>,
    call_ns: Vec<u64>,
    queued: u64,
    refused: u64,
    /// Items per `SendBatch` call (batched unicast only).
    batch_items: Vec<u64>,
}

impl Tally {
    fn error(&mut self, e: impl std::fmt::Display) {
        self.failed += 1;
        *self
            .errors
            .entry(e.to_string().chars().take(120).collect())
            .or_default() += 1;
    }

    fn merge(&mut self, o: Tally) {
        self.ok += o.ok;
        self.failed += o.failed;
        self.queued += o.queued;
        self.refused += o.refused;
        self.call_ns.extend(o.call_ns);
        self.batch_items.extend(o.batch_items);
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    fn report(
        mut self,
        target: Target,
        mode: &str,
        attempted: u64,
        elapsed: f64,
        rate: f64,
    ) -> PublishReport {
        let call_us: Percentiles = percentiles_us(&mut self.call_ns);
        let cpu = procfs::cpu_ticks(std::process::id());
        let batch_calls = self.batch_items.len() as u64;
        let batch_items_mean = if batch_calls == 0 {
            0.0
        } else {
            self.batch_items.iter().sum::<u64>() as f64 / batch_calls as f64
        };
        PublishReport {
            target: format!("{target:?}").to_lowercase(),
            mode: mode.into(),
            attempted,
            ok: self.ok,
            failed: self.failed,
            errors: self.errors.into_iter().collect(),
            elapsed_s: elapsed,
            achieved_per_s: self.ok as f64 / elapsed.max(1e-9),
            target_per_s: rate,
            queued: self.queued,
            refused: self.refused,
            call_us,
            self_cpu_ticks: (cpu.user, cpu.system),
            batch_calls,
            batch_items_mean,
            batch_items_max: self.batch_items.iter().copied().max().unwrap_or(0),
        }
    }
}

async fn broadcast(target: Target, endpoint: &str, a: BroadcastArgs) -> Result<PublishReport> {
    let mut tally = Tally::default();
    let start = Instant::now();
    let interval = Duration::from_millis(a.interval_ms);
    match target {
        Target::Switchboard => {
            let mut client = grpc(endpoint).await?;
            for seq in 1..=a.count {
                sleep_until((start + interval * (seq as u32 - 1)).into()).await;
                let t = Instant::now();
                let req = pb::PublishRequest {
                    target: Some(pb::Target {
                        kind: Some(target::Kind::Hub(a.hub.clone())),
                    }),
                    message: Some(if a.json {
                        pb::Message {
                            payload: Some(Payload::Text(payload::text_json(seq, now_ns(), a.size))),
                        }
                    } else {
                        message(seq, a.size, a.binary)
                    }),
                    ..Default::default()
                };
                match client.publish(req).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        tally.ok += 1;
                        tally.queued += r.queued;
                        tally.refused += r.refused;
                        if !r.unreachable_nodes.is_empty() {
                            tally.error(format!("unreachable nodes {:?}", r.unreachable_nodes));
                        }
                    }
                    Err(e) => tally.error(format!("{:?}: {}", e.code(), e.message())),
                }
                tally.call_ns.push(t.elapsed().as_nanos() as u64);
            }
        }
        Target::Nchan | Target::Pushpin | Target::Bun => {
            let mut http = Http::connect(endpoint).await?;
            for seq in 1..=a.count {
                sleep_until((start + interval * (seq as u32 - 1)).into()).await;
                let t = Instant::now();
                let size = a.size.max(payload::TEXT_STAMP);
                let text = if a.json {
                    payload::text_json(seq, now_ns(), size)
                } else {
                    payload::text(seq, now_ns(), size)
                };
                match peer_publish(&mut http, target, "all", text).await {
                    Ok(()) => tally.ok += 1,
                    Err(e) => {
                        tally.error(format!("{e:#}"));
                        http = Http::connect(endpoint).await?;
                    }
                }
                tally.call_ns.push(t.elapsed().as_nanos() as u64);
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(tally.report(target, "broadcast", a.count, elapsed, 0.0))
}

fn read_sessions(files: &[PathBuf], total: u64) -> Result<Vec<Option<String>>> {
    let mut ids = vec![None; total as usize];
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?;
        for line in text.lines() {
            let (g, id) = line.split_once('\t').context("bad sessions line")?;
            let g: usize = g.parse()?;
            if g < ids.len() {
                ids[g] = Some(id.to_owned());
            }
        }
    }
    Ok(ids)
}

/// The most items one `SendBatch` call may carry (the API's limit).
const MAX_BATCH: usize = 10_000;

/// An upper bound on the bytes one item adds to an encoded `SendBatchRequest`: the session ID
/// and the payload, plus a tag and a length varint (at most 5 bytes below 4 GiB) for each of
/// the item, its session ID, its message and the message's payload.
fn item_bytes(session_id: &str, payload: usize) -> usize {
    session_id.len() + payload + 4 * (1 + 5)
}

async fn unicast(target: Target, endpoint: &str, a: UnicastArgs) -> Result<PublishReport> {
    // Checked here because `Duration::from_secs_f64` panics on negative, NaN or infinite input
    // and `j % total` on a zero total.
    anyhow::ensure!(a.total > 0, "--total must be at least 1");
    anyhow::ensure!(
        a.rate.is_finite() && a.rate > 0.0,
        "--rate must be a positive number"
    );
    anyhow::ensure!(
        a.seconds.is_finite() && a.seconds >= 0.0,
        "--seconds must be a non-negative number"
    );
    anyhow::ensure!(
        a.max_seconds.is_finite() && a.max_seconds >= 0.0,
        "--max-seconds must be a non-negative number"
    );
    anyhow::ensure!(
        a.batch_ms.is_finite() && (0.0..=60_000.0).contains(&a.batch_ms),
        "--batch-ms must be between 0 and 60000"
    );
    if a.batch_ms > 0.0 {
        anyhow::ensure!(
            target == Target::Switchboard,
            "--batch-ms is for the switchboard target only (SendBatch)"
        );
        return unicast_batched(endpoint, a).await;
    }
    let m_total = (a.rate * a.seconds).round() as u64;
    let sessions = Arc::new(if target == Target::Switchboard {
        read_sessions(&a.sessions, a.total)?
    } else {
        Vec::new()
    });
    let mut clients = Vec::new();
    if target == Target::Switchboard {
        for _ in 0..a.connections.max(1) {
            clients.push(grpc(endpoint).await?);
        }
    }
    let next = Arc::new(AtomicU64::new(1));
    let start = Instant::now();
    let stop_at = start + Duration::from_secs_f64(a.max_seconds);
    let mut workers = Vec::new();
    for w in 0..a.workers.max(1) {
        let next = Arc::clone(&next);
        let sessions = Arc::clone(&sessions);
        let client = clients.get(w % clients.len().max(1)).cloned();
        let endpoint = endpoint.to_owned();
        let (rate, total, size) = (a.rate, a.total, a.size);
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut http = if target == Target::Switchboard {
                None
            } else {
                match Http::connect(&endpoint).await {
                    Ok(h) => Some(h),
                    Err(e) => {
                        tally.error(format!("connect: {e:#}"));
                        return tally;
                    }
                }
            };
            let mut client = client;
            loop {
                if Instant::now() >= stop_at {
                    break;
                }
                let j = next.fetch_add(1, Relaxed);
                if j > m_total {
                    break;
                }
                let due = start + Duration::from_secs_f64((j - 1) as f64 / rate);
                sleep_until(due.into()).await;
                let g = j % total;
                let t = Instant::now();
                let r = match (&mut client, &mut http) {
                    (Some(c), _) => match sessions.get(g as usize).and_then(|s| s.clone()) {
                        Some(id) => c
                            .send(pb::SendRequest {
                                session_id: id,
                                message: Some(message(j, size, false)),
                                ..Default::default()
                            })
                            .await
                            .map(|_| ())
                            .map_err(|e| format!("{:?}: {}", e.code(), e.message())),
                        None => Err("no session for that socket".to_owned()),
                    },
                    (None, Some(h)) => {
                        let text = payload::text(j, now_ns(), size.max(payload::TEXT_STAMP));
                        peer_publish(h, target, &g.to_string(), text)
                            .await
                            .map_err(|e| format!("{e:#}"))
                    }
                    (None, None) => unreachable!(),
                };
                tally.call_ns.push(t.elapsed().as_nanos() as u64);
                match r {
                    Ok(()) => tally.ok += 1,
                    Err(e) => {
                        tally.error(e);
                        if let Some(h) = &mut http {
                            if let Ok(fresh) = Http::connect(&endpoint).await {
                                *h = fresh;
                            }
                        }
                    }
                }
            }
            tally
        }));
    }
    let mut tally = Tally::default();
    for w in workers {
        tally.merge(w.await?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Every fetched sequence number was sent: the attempted set is 1..=attempted.
    let attempted = (next.load(Relaxed) - 1).min(m_total);
    Ok(tally.report(target, "unicast", attempted, elapsed, a.rate))
}

/// Batched unicast: a scheduler wakes every `--batch-ms`, takes every message whose due time
/// (start + (j-1)/rate) has passed and sends them in one `SendBatch` call (several calls when
/// more than [`MAX_BATCH`] items or `--batch-max-bytes` are due). At most `--workers` calls
/// are in flight, round robin over the `--connections` channels; while none is free, due
/// messages accumulate for the next call.
///
/// Each message carries its due time as its send stamp, not the moment its batch leaves, so the
/// wait for the tick, for a free call slot and for the rest of the batch all count in the
/// latency the load generators measure.
async fn unicast_batched(endpoint: &str, a: UnicastArgs) -> Result<PublishReport> {
    let m_total = (a.rate * a.seconds).round() as u64;
    let sessions = read_sessions(&a.sessions, a.total)?;
    let mut clients = Vec::new();
    for _ in 0..a.connections.max(1) {
        clients.push(grpc(endpoint).await?);
    }
    let permits = Arc::new(Semaphore::new(a.workers.max(1)));
    let mut calls: JoinSet<Tally> = JoinSet::new();
    let mut tally = Tally::default();
    let mut ticks = interval(Duration::from_secs_f64(a.batch_ms / 1000.0));
    // After a stall (no free call slot), wake on the regular grid rather than in a burst of
    // catch-up ticks: whatever became due meanwhile goes out in the next call anyway.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let start = Instant::now();
    let stop_at = start + Duration::from_secs_f64(a.max_seconds);
    let due = |j: u64| start + Duration::from_secs_f64((j - 1) as f64 / a.rate);
    // The first sequence number not issued yet: 1..next were each put in exactly one call (or
    // counted failed for want of a session), so `attempted` is exact.
    let mut next = 1u64;
    // More was due than one call carries: send the rest without waiting for a tick.
    let mut backlog = false;
    let mut made = 0usize;
    while next <= m_total {
        if !backlog {
            ticks.tick().await;
        }
        // Fold in finished calls so their tallies don't pile up in the set.
        while let Some(r) = calls.try_join_next() {
            tally.merge(r?);
        }
        let left = stop_at.saturating_duration_since(Instant::now());
        let Ok(permit) = timeout(left, Arc::clone(&permits).acquire_owned()).await else {
            break;
        };
        let permit = permit.context("call slots closed")?;
        // Wall clock first: a stamp taken a little early overstates latency rather than hiding
        // any of it.
        let wall = now_ns();
        let now = Instant::now();
        if now >= stop_at {
            break;
        }
        // Message j is due once (j-1)/rate seconds have passed.
        let due_now = ((now - start).as_secs_f64() * a.rate).floor() as u64 + 1;
        let last = due_now.min(m_total);
        if last < next {
            backlog = false;
            continue;
        }
        let mut items = Vec::with_capacity(((last - next + 1) as usize).min(MAX_BATCH));
        let mut bytes = 0;
        while next <= last && items.len() < MAX_BATCH {
            let j = next;
            match sessions.get((j % a.total) as usize).and_then(|s| s.clone()) {
                Some(id) => {
                    // Payloads are never shorter than a stamp.
                    let b = item_bytes(&id, a.size.max(payload::TEXT_STAMP));
                    // Full: the rest goes in the next call (one item always goes, so a tiny
                    // limit cannot stall the loop).
                    if !items.is_empty() && bytes + b > a.batch_max_bytes {
                        break;
                    }
                    bytes += b;
                    let late = now.saturating_duration_since(due(j)).as_nanos() as u64;
                    items.push(pb::SendRequest {
                        session_id: id,
                        message: Some(message_at(j, wall.saturating_sub(late), a.size, false)),
                        ..Default::default()
                    });
                }
                None => tally.error("no session for that socket"),
            }
            next += 1;
        }
        backlog = next <= last;
        if items.is_empty() {
            continue;
        }
        let mut client = clients[made % clients.len()].clone();
        made += 1;
        calls.spawn(async move {
            // Held until the call is answered: bounds the calls in flight.
            let _permit = permit;
            let mut t = Tally::default();
            let n = items.len();
            t.batch_items.push(n as u64);
            let started = Instant::now();
            let r = client
                .send_batch(pb::SendBatchRequest {
                    items,
                    ..Default::default()
                })
                .await;
            t.call_ns.push(started.elapsed().as_nanos() as u64);
            match r {
                Ok(resp) => {
                    let results = resp.into_inner().results;
                    for res in results.iter().take(n) {
                        if res.code == 0 {
                            t.ok += 1;
                        } else {
                            let code = tonic::Code::from(res.code as i32);
                            t.error(format!("{code:?}: {}", res.message));
                        }
                    }
                    // A short answer leaves items whose fate is unknown: count them failed.
                    for _ in results.len()..n {
                        t.error("SendBatch answered fewer results than items");
                    }
                }
                Err(e) => {
                    let msg = format!("{:?}: {}", e.code(), e.message());
                    for _ in 0..n {
                        t.error(&msg);
                    }
                }
            }
            t
        });
    }
    while let Some(r) = calls.join_next().await {
        tally.merge(r?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(tally.report(
        Target::Switchboard,
        "unicast-batch",
        next - 1,
        elapsed,
        a.rate,
    ))
}

async fn flood(target: Target, endpoint: &str, a: FloodArgs) -> Result<PublishReport> {
    anyhow::ensure!(
        target == Target::Switchboard,
        "flood is for Switchboard only"
    );
    let mut client = grpc(endpoint).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::AttachRequest>(1024);
    tx.send(pb::AttachRequest {
        kind: Some(attach_request::Kind::Open(pb::AttachOpen {
            session_id: a.session.clone(),
            take_over: true,
            ..Default::default()
        })),
    })
    .await?;
    let mut responses = client
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    responses
        .message()
        .await?
        .context("no `attached` response")?;
    // The stream's end, if it ends early: an error here means writes were lost with it.
    let mut drain = tokio::spawn(async move {
        loop {
            match responses.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    });
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.seconds);
    let mut sent = 0;
    let mut stream_failed = false;
    for seq in 1..=a.count {
        if Instant::now() >= deadline {
            break;
        }
        let req = pb::AttachRequest {
            kind: Some(attach_request::Kind::Write(message(seq, a.size, true))),
        };
        if tx.send(req).await.is_err() {
            stream_failed = true;
            break;
        }
        sent = seq;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut tally = Tally {
        ok: sent,
        ..Default::default()
    };
    if stream_failed || drain.is_finished() {
        match tokio::time::timeout(Duration::from_secs(5), &mut drain).await {
            Ok(Ok(Some(status))) => tally.error(format!("the Attach stream failed: {status}")),
            _ => tally.error("the Attach stream ended while writing"),
        }
    }
    let report = tally.report(target, "flood", sent, elapsed, 0.0);
    // Writes still buffered in the HTTP/2 stream would be lost if the call ended now: print the
    // report, then hold the stream until stdin closes (the suite closes it once the client got
    // everything), at most `--linger` seconds.
    println!("{}", serde_json::to_string(&report)?);
    let mut stdin = tokio::io::stdin();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs_f64(a.linger),
        tokio::io::AsyncReadExt::read_to_end(&mut stdin, &mut sink),
    )
    .await;
    drop(tx);
    drain.abort();
    Ok(report)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        match cli.cmd {
            Cmd::Broadcast(a) => broadcast(cli.target, &cli.endpoint, a).await.map(Some),
            Cmd::Unicast(a) => unicast(cli.target, &cli.endpoint, a).await.map(Some),
            // Printed before it lingers.
            Cmd::Flood(a) => flood(cli.target, &cli.endpoint, a).await.map(|_| None),
        }
    })?;
    if let Some(r) = report {
        println!("{}", serde_json::to_string(&r)?);
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
