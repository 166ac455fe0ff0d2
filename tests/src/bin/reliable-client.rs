//! One reliable-session client (`switchboard_sdk::reliable`) in a process of its own, so a test
//! can freeze it (SIGSTOP) the way a laptop lid or a stalled phone freezes a browser.
//!
//! Usage: `reliable-client --hub HUB --send N --max-seconds S URL...`
//!
//! Prints `open SESSION RESUMED` on every welcome and `msg SEQ TEXT` for every message, each
//! once and in order (after de-duplication); sends `i:1` … `i:N`; prints `stats DELIVERED
//! DUPLICATES RESUMES RESETS` and exits when stdin closes (after closing the session) or after
//! `--max-seconds`.

use std::{io::Write as _, time::Duration};

use switchboard_sdk::reliable::{ClientEvent, Config, Payload, ReliableClient, State};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (mut hub, mut send, mut max_seconds, mut urls) = (String::new(), 0u64, 60u64, Vec::new());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--hub" => hub = args.next().unwrap_or_default(),
            "--send" => send = args.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            "--max-seconds" => max_seconds = args.next().and_then(|v| v.parse().ok()).unwrap_or(60),
            url => urls.push(url.to_owned()),
        }
    }
    let (client, mut events) = ReliableClient::connect(Config::new(urls, hub));
    let sender = client.clone();
    tokio::spawn(async move {
        for i in 1..=send {
            if sender.send_text(format!("i:{i}")).await.is_err() {
                return;
            }
        }
    });
    let printer = async {
        let mut out = std::io::stdout();
        while let Some(e) = events.recv().await {
            let line = match e {
                ClientEvent::Message {
                    seq,
                    payload: Payload::Text(t),
                } => format!("msg {seq} {t}"),
                ClientEvent::State(State::Open {
                    session, resumed, ..
                }) => format!("open {session} {resumed}"),
                ClientEvent::Reset { old_session } => format!("reset {old_session}"),
                _ => continue,
            };
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    };
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        use std::io::Read as _;
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        let _ = closed_tx.send(());
    });
    let stdin_closed = async {
        let _ = closed_rx.await;
    };
    tokio::select! {
        () = printer => {}
        () = stdin_closed => {}
        () = tokio::time::sleep(Duration::from_secs(max_seconds)) => {}
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), client.close()).await;
    let s = client.stats();
    println!(
        "stats {} {} {} {}",
        s.delivered, s.duplicates, s.resumes, s.resets
    );
}
