//! Holds many WebSocket clients open for a test, outside the test process (whose open-file
//! limit the sockets would otherwise eat).
//!
//! Usage: `hold-sockets --url ws://127.0.0.1:PORT/ws/HUB --count N [--concurrency C]
//! [--ids-file PATH] [--source 127.0.0.2,127.0.0.3] [--max-seconds S]`
//!
//! Opens N clients, at most C upgrades in flight at once; once every one of them got its 101,
//! writes their session IDs (`x-switchboard-session`), one a line, to `--ids-file` and prints
//! `open N` on stdout. Then holds them, reading and discarding whatever the gateway sends,
//! until stdin closes, the process is killed, or `--max-seconds` pass (a forgotten holder
//! never outlives its test for long). Any failed open prints `error ...` on stderr and exits
//! with status 1 before `open`.
//!
//! The client is hand-made (upgrade request, 101 check, no frame parsing) so that an idle
//! socket costs a file descriptor and a task, not a read buffer.

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use futures_util::{stream, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

/// Any 16 bytes in base64 will do: the client does not check `Sec-WebSocket-Accept`.
const KEY: &str = "c3dpdGNoYm9hcmQtaG9sZA==";
/// Bound on one connect + upgrade.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

struct Args {
    addr: SocketAddr,
    host: String,
    path: String,
    count: usize,
    concurrency: usize,
    ids_file: Option<PathBuf>,
    sources: Vec<IpAddr>,
    max_seconds: u64,
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: hold-sockets --url ws://HOST:PORT/PATH --count N [--concurrency C] \
         [--ids-file PATH] [--source IP,IP] [--max-seconds S]"
    );
    ExitCode::from(2)
}

fn parse_args() -> Result<Args, String> {
    let mut url = None;
    let mut count = None;
    let mut concurrency = 64;
    let mut ids_file = None;
    let mut sources = Vec::new();
    let mut max_seconds = 600;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => url = Some(value()?),
            "--count" => count = Some(value()?.parse().map_err(|e| format!("--count: {e}"))?),
            "--concurrency" => {
                concurrency = value()?
                    .parse()
                    .map_err(|e| format!("--concurrency: {e}"))?;
            }
            "--ids-file" => ids_file = Some(PathBuf::from(value()?)),
            "--source" => {
                for s in value()?.split(',').filter(|s| !s.is_empty()) {
                    sources.push(s.parse().map_err(|e| format!("--source {s}: {e}"))?);
                }
            }
            "--max-seconds" => {
                max_seconds = value()?
                    .parse()
                    .map_err(|e| format!("--max-seconds: {e}"))?;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let url = url.ok_or("--url is required")?;
    let rest = url
        .strip_prefix("ws://")
        .ok_or("--url must start with ws://")?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = host
        .parse()
        .map_err(|e| format!("--url host must be IP:PORT: {e}"))?;
    if concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    Ok(Args {
        addr,
        host: host.to_owned(),
        path: path.to_owned(),
        count: count.ok_or("--count is required")?,
        concurrency,
        ids_file,
        sources,
        max_seconds,
    })
}

/// Connects and upgrades; returns the socket and its session ID.
async fn open(args: &Args, i: usize) -> Result<(TcpStream, String), String> {
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if !args.sources.is_empty() {
        let ip = args.sources[i % args.sources.len()];
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let mut s = sock
        .connect(args.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        args.path, args.host
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write upgrade: {e}"))?;
    let mut head = Vec::with_capacity(512);
    let end = loop {
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if head.len() > 16 * 1024 {
            return Err("response head too long".into());
        }
        let n = s
            .read_buf(&mut head)
            .await
            .map_err(|e| format!("read upgrade: {e}"))?;
        if n == 0 {
            return Err("connection closed during the upgrade".into());
        }
    };
    let head = String::from_utf8_lossy(&head[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("101") {
        return Err(format!("upgrade refused: {status}"));
    }
    let id = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("x-switchboard-session"))
        .map(|(_, v)| v.trim().to_owned())
        .ok_or("101 without x-switchboard-session")?;
    Ok((s, id))
}

/// Reads and drops whatever arrives (pings, frames) until the gateway ends the connection.
async fn drain(mut s: TcpStream) {
    let mut buf = [0u8; 256];
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    // Keep the descriptor until the process ends: the peer decides when the socket is done.
    std::future::pending::<()>().await;
}

async fn run(args: Args) -> Result<(), String> {
    let args = Arc::new(args);
    let opened: Vec<Result<(TcpStream, String), String>> = stream::iter(0..args.count)
        .map(|i| {
            let args = Arc::clone(&args);
            async move {
                tokio::time::timeout(HANDSHAKE_TIMEOUT, open(&args, i))
                    .await
                    .unwrap_or_else(|_| Err("upgrade timed out".into()))
                    .map_err(|e| format!("socket {i}: {e}"))
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let mut ids = Vec::with_capacity(args.count);
    for r in opened {
        let (s, id) = r?;
        ids.push(id);
        tokio::spawn(drain(s));
    }
    if let Some(path) = &args.ids_file {
        let mut text = ids.join("\n");
        text.push('\n');
        std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "open {}", ids.len()).map_err(|e| format!("stdout: {e}"))?;
    out.flush().map_err(|e| format!("stdout: {e}"))?;
    drop(out);

    // Hold until stdin closes (the test is done with us) or the lifetime runs out.
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        use std::io::Read as _;
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 64];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        let _ = closed_tx.send(());
    });
    tokio::select! {
        _ = closed_rx => {}
        _ = tokio::time::sleep(Duration::from_secs(args.max_seconds)) => {
            eprintln!("hold-sockets: --max-seconds passed; exiting");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hold-sockets: {e}");
            return usage();
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hold-sockets: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        // Exit at once: the held sockets close with the process.
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("hold-sockets: error {e}");
            ExitCode::FAILURE
        }
    }
}
