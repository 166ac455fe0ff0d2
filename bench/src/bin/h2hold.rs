//! Holds WebSocket sessions over HTTP/2 (RFC 8441): `--connections` cleartext HTTP/2
//! connections (prior knowledge), each carrying `--streams` WebSockets opened with an extended
//! CONNECT, then idles until stdin says `close` (or `--max-seconds` pass).
//!
//! `h2hold --addr 127.0.0.1:8080 --path /ws/bench --connections 100 --streams 100`
//!
//! Prints `opened ok=N failed=F secs=S rss_kib=R` once every stream is answered, and `closed`
//! at the end. Every stream reads what the gateway sends (and gives the flow-control capacity
//! back), so nothing piles up; nothing is sent but the close.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, StatusCode};
use switchboard_bench::procfs;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpStream,
    sync::watch,
    time::{sleep, timeout},
};

#[derive(Parser)]
#[command(about = "Holds WebSocket sessions over HTTP/2 connections (RFC 8441)")]
struct Cli {
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long, default_value = "/ws/bench")]
    path: String,
    #[arg(long, default_value_t = 100)]
    connections: u32,
    #[arg(long, default_value_t = 100)]
    streams: u32,
    /// Hard bound on the process's life.
    #[arg(long, default_value_t = 600)]
    max_seconds: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let max = Duration::from_secs(cli.max_seconds);
    tokio::spawn(async move {
        sleep(max).await;
        println!("timeout: --max-seconds reached");
        std::process::exit(3);
    });
    let ok = Arc::new(AtomicU64::new(0));
    let (close_tx, close_rx) = watch::channel(false);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..cli.connections {
        let (ok, close_rx) = (Arc::clone(&ok), close_rx.clone());
        let (addr, path, streams) = (cli.addr, cli.path.clone(), cli.streams);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = connection(addr, &path, streams, &ok, close_rx).await {
                eprintln!("connection failed: {e:#}");
            }
        }));
    }
    let want = u64::from(cli.connections) * u64::from(cli.streams);
    let deadline = Instant::now() + Duration::from_secs(120);
    while ok.load(Relaxed) < want && Instant::now() < deadline {
        sleep(Duration::from_millis(20)).await;
    }
    let opened = ok.load(Relaxed);
    println!(
        "opened ok={opened} failed={} secs={:.3} rss_kib={}",
        want - opened,
        started.elapsed().as_secs_f64(),
        procfs::rss_kib(std::process::id())
    );
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim() == "close" {
            break;
        }
    }
    let _ = close_tx.send(true);
    for t in tasks {
        let _ = timeout(Duration::from_secs(10), t).await;
    }
    println!("closed");
    Ok(())
}

/// One HTTP/2 connection with `streams` WebSockets, held until `close` turns true.
async fn connection(
    addr: SocketAddr,
    path: &str,
    streams: u32,
    ok: &AtomicU64,
    mut close: watch::Receiver<bool>,
) -> Result<()> {
    let tcp = TcpStream::connect(addr).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let (send, conn) = h2::client::Builder::new()
        .max_concurrent_streams(streams)
        .handshake::<_, Bytes>(tcp)
        .await
        .context("h2 handshake")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut held = Vec::with_capacity(streams as usize);
    for _ in 0..streams {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("http://{addr}{path}"))
            .header("sec-websocket-version", "13")
            .body(())?;
        req.extensions_mut()
            .insert(h2::ext::Protocol::from_static("websocket"));
        let mut ready = send.clone().ready().await.context("h2 stream slot")?;
        let (resp, stream) = ready.send_request(req, false).context("CONNECT")?;
        let resp = resp.await.context("CONNECT response")?;
        anyhow::ensure!(
            resp.status() == StatusCode::OK,
            "CONNECT answered {}",
            resp.status()
        );
        ok.fetch_add(1, Relaxed);
        let mut body = resp.into_body();
        // Drain what the server sends (a ping now and then), so the stream never stalls.
        tokio::spawn(async move {
            while let Some(Ok(data)) = body.data().await {
                let _ = body.flow_control().release_capacity(data.len());
            }
        });
        held.push(stream);
    }
    let _ = close.wait_for(|c| *c).await;
    for mut s in held {
        // A masked close frame with code 1000, then the end of the stream.
        let frame = vec![0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe8 ^ 2];
        let _ = s.send_data(frame.into(), true);
    }
    sleep(Duration::from_millis(200)).await;
    Ok(())
}
