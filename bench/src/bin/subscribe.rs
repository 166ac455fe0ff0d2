//! `Subscribe` throughput: client sockets send stamped messages at a paced total rate, and
//! `--groups` consumer groups (one member each) receive every one as a hub event. Starts its
//! own gateway, checks that every group got every message exactly once and in order per
//! session, and prints the achieved rate, event latency and the gateway's CPU per client
//! message; the last line is the same as one JSON object (for the suite).
//!
//! `subscribe --gateway-bin target/release/switchboard-gateway [--rate 50000] [--seconds 10]
//! [--sockets 100] [--groups 4] [--size 100]`

use std::{
    collections::HashMap,
    process::Stdio,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use switchboard_bench::{
    now_ns, payload,
    procfs::{self, CpuTicks},
    stats::percentiles_us,
    wire,
};
use switchboard_proto::v1::{
    self as pb, event::Kind as Ev, gateway_client::GatewayClient, message::Payload,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinSet,
    time::timeout,
};

#[derive(Parser, Debug)]
#[command(about = "Subscribe throughput: client messages to N consumer groups")]
struct Cli {
    /// The gateway binary to start (on loopback, ports chosen by the system).
    #[arg(long)]
    gateway_bin: String,
    /// Client messages per second, all sockets together.
    #[arg(long, default_value_t = 50_000)]
    rate: u64,
    /// How long the sockets send.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 100)]
    sockets: u64,
    /// Consumer groups, one member each; every group gets every message.
    #[arg(long, default_value_t = 4)]
    groups: usize,
    /// Bytes per message (at least the 33-byte stamp).
    #[arg(long, default_value_t = 100)]
    size: usize,
}

const HUB: &str = "bench";

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(
        cli.size >= payload::TEXT_STAMP && cli.size <= 125,
        "--size 33..=125"
    );
    anyhow::ensure!(
        cli.sockets > 0 && cli.rate >= cli.sockets,
        "--rate at least --sockets"
    );
    let (mut gateway, client, backend) = switchboard_bench::spawn_gateway(
        std::path::Path::new(&cli.gateway_bin),
        &[],
        Stdio::inherit(),
    )
    .await?;
    let pid = gateway.id().context("gateway pid")?;

    // The groups subscribe first, so no message goes to the inbox instead.
    let per_socket = cli.rate * cli.seconds / cli.sockets;
    let expected = per_socket * cli.sockets;
    let received = Arc::new(AtomicU64::new(0));
    let mut groups = JoinSet::new();
    for g in 0..cli.groups {
        let mut api = GatewayClient::connect(format!("http://{backend}")).await?;
        let mut events = api
            .subscribe(pb::SubscribeRequest {
                hub: HUB.into(),
                consumer_group: format!("g{g}"),
                kinds: vec![pb::EventKind::Message as i32],
            })
            .await?
            .into_inner();
        let received = Arc::clone(&received);
        groups.spawn(async move {
            let mut last: HashMap<String, u64> = HashMap::new();
            let mut latencies = Vec::with_capacity(expected as usize);
            let mut count = 0u64;
            while count < expected {
                let Some(e) = events.message().await? else {
                    bail!("group g{g}: the stream ended after {count} of {expected}");
                };
                let Some(Ev::Message(m)) = e.kind else {
                    continue;
                };
                let text = match m.message.and_then(|m| m.payload) {
                    Some(Payload::Text(t)) => t,
                    other => bail!("group g{g}: unexpected payload {other:?}"),
                };
                let (seq, sent) = payload::decode(text.as_bytes())
                    .ok_or_else(|| anyhow!("group g{g}: unstamped message {text:?}"))?;
                let prev = last.entry(e.session_id).or_insert(0);
                anyhow::ensure!(
                    seq == *prev + 1 && m.seq == seq,
                    "group g{g}: message {seq} (inbound seq {}) after {prev}",
                    m.seq
                );
                *prev = seq;
                latencies.push(now_ns().saturating_sub(sent));
                count += 1;
                received.fetch_add(1, Relaxed);
            }
            let finished = Instant::now();
            // Anything more within a quiet second would be a duplicate.
            match timeout(Duration::from_secs(1), events.message()).await {
                Ok(Ok(Some(e))) if matches!(e.kind, Some(Ev::Message(_))) => {
                    bail!("group g{g}: a message beyond the {expected} sent")
                }
                _ => {}
            }
            Ok((latencies, finished))
        });
    }

    let mut sockets = Vec::new();
    for i in 0..cli.sockets {
        sockets.push(open(&client, i).await?);
    }
    let cpu_before = procfs::cpu_ticks(pid);
    let started = Instant::now();
    let mut senders = JoinSet::new();
    for mut s in sockets {
        let size = cli.size;
        let period = Duration::from_secs_f64(cli.sockets as f64 / cli.rate as f64);
        senders.spawn(async move {
            // Paced by the clock, in bursts of whatever is due, so a late wake-up catches up.
            let start = tokio::time::Instant::now();
            let mut sent = 0u64;
            while sent < per_socket {
                let due = ((start.elapsed().as_secs_f64() / period.as_secs_f64()) as u64 + 1)
                    .min(per_socket);
                let mut burst = Vec::new();
                for seq in sent + 1..=due {
                    let text = payload::text(seq, now_ns(), size);
                    burst.extend(wire::masked_frame(0x1, text.as_bytes(), [1, 2, 3, 4]));
                }
                s.write_all(&burst).await?;
                sent = due;
                tokio::time::sleep_until(start + period.mul_f64(sent as f64)).await;
            }
            anyhow::Ok(s)
        });
    }
    let mut open_sockets = Vec::new();
    while let Some(r) = senders.join_next().await {
        open_sockets.push(r??);
    }
    let sending = started.elapsed();
    let mut latencies = Vec::new();
    let mut last = started;
    let all = timeout(Duration::from_secs(cli.seconds * 4 + 30), async {
        while let Some(r) = groups.join_next().await {
            let (l, finished) = r??;
            latencies.extend(l);
            last = last.max(finished);
        }
        anyhow::Ok(())
    })
    .await;
    let done = last.duration_since(started);
    // Includes the quiet second, in which the gateway has nothing to do.
    let cpu = procfs::cpu_ticks(pid).since(cpu_before);
    match all {
        Ok(r) => r?,
        Err(_) => bail!(
            "timed out: {} of {} events arrived",
            received.load(Relaxed),
            expected * cli.groups as u64
        ),
    }
    drop(open_sockets);
    let p = percentiles_us(&mut latencies);
    let us = |ticks: u64| ticks as f64 * 1e6 / procfs::clock_ticks() as f64 / expected as f64;
    let CpuTicks { user, system } = cpu;
    println!(
        "subscribe: {} sockets sent {expected} messages at {:.0}/s (asked {}/s) in {:.2} s; \
         {} groups got every one once and in order, the last after {:.2} s; event latency \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; gateway CPU per client message {:.2} µs \
         user, {:.2} µs total ({} group deliveries each)",
        cli.sockets,
        expected as f64 / sending.as_secs_f64(),
        cli.rate,
        sending.as_secs_f64(),
        cli.groups,
        done.as_secs_f64(),
        p.p50 / 1000.0,
        p.p99 / 1000.0,
        p.max / 1000.0,
        us(user),
        us(user + system),
        cli.groups,
    );
    println!(
        "{}",
        serde_json::json!({
            "sockets": cli.sockets,
            "groups": cli.groups,
            "asked_per_s": cli.rate,
            "achieved_per_s": expected as f64 / sending.as_secs_f64(),
            "p50_ms": p.p50 / 1000.0,
            "p99_ms": p.p99 / 1000.0,
            "cpu_user_us_per_msg": us(user),
            "cpu_total_us_per_msg": us(user + system),
        })
    );
    gateway.start_kill()?;
    Ok(())
}

/// A client WebSocket on hub [`HUB`], upgraded; the gateway sends nothing to it.
async fn open(addr: &str, i: u64) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let key = wire::key_for(i);
    s.write_all(wire::upgrade_request(addr, &format!("/ws/{HUB}"), &key, false).as_bytes())
        .await?;
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "socket {i}: closed during the upgrade");
        buf.extend_from_slice(&chunk[..n]);
        if wire::parse_upgrade_response(&buf, &key)?.is_some() {
            return Ok(s);
        }
    }
}
