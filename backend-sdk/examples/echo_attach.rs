//! Echo, the shared-connection way: subscribe to a hub's `connected` events, attach to each
//! new session, and send back whatever its client sends.
//!
//! ```sh
//! cargo run -p switchboard-gateway &
//! cargo run -p switchboard-sdk --example echo_attach -- --hub echo
//! # then, in a browser console:
//! #   const ws = new WebSocket("ws://127.0.0.1:8080/ws/echo");
//! #   ws.onmessage = (e) => console.log(e.data); ws.onopen = () => ws.send("hi");
//! ```
//!
//! Several copies may run with the same `--group`: each new session goes to one of them.
//! Prints `echo_attach: ready hub=...` once subscribed.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use switchboard_sdk::{Client, Event, EventKind, Incoming, SharedConnection};
use tokio::task::JoinSet;

#[derive(Parser, Debug)]
#[command(about = "Attach to every new session of a hub and echo what its client sends")]
struct Args {
    /// A gateway's backend address; repeat for several nodes.
    #[arg(
        long = "gateway",
        default_value = "http://127.0.0.1:7070",
        env = "SWITCHBOARD_GATEWAY"
    )]
    gateways: Vec<String>,
    /// The backend token, if the gateway requires one.
    #[arg(long, env = "SWITCHBOARD_BACKEND_TOKEN", default_value = "")]
    token: String,
    /// The hub whose sessions to echo.
    #[arg(long, default_value = "echo")]
    hub: String,
    /// Consumer group shared by the copies of this program.
    #[arg(long, default_value = "echo_attach")]
    group: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let client = Client::builder()
        .gateways(&args.gateways)
        .token(&args.token)
        .build()
        .await
        .context("configuring the client")?;

    let mut sessions = JoinSet::new();
    loop {
        let mut events = match client
            .subscribe(&args.hub)
            .group(&args.group)
            .kinds([EventKind::Connected])
            .await
        {
            Ok(events) => events,
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "subscribe failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e).context("subscribing"),
        };
        println!("echo_attach: ready hub={} group={}", args.hub, args.group);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(Some(Event::Connected(info))) => {
                        let client = client.clone();
                        sessions.spawn(async move {
                            match client.attach(&info.id).await {
                                Ok(conn) => echo(conn).await,
                                Err(e) => tracing::info!(session = %info.id, error = %e, "could not attach"),
                            }
                        });
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "subscription ended; subscribing again");
                        break;
                    }
                },
                // Reap finished sessions so the set does not grow.
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
                _ = tokio::signal::ctrl_c() => {
                    sessions.shutdown().await;
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends every message back until the session ends.
async fn echo(mut conn: SharedConnection) {
    let id = conn.session_id().clone();
    tracing::info!(session = %id, "attached");
    loop {
        match conn.read().await {
            Ok(Incoming::Message(m)) => {
                if let Err(e) = conn.write(m.message).await {
                    tracing::info!(session = %id, error = %e, "write failed");
                    return;
                }
            }
            Ok(Incoming::Closed(c)) => {
                tracing::info!(session = %id, "session ended: {c}");
                return;
            }
            // This echo asks for no receipts.
            Ok(Incoming::Receipt { .. }) => {}
            Err(e) => {
                tracing::info!(session = %id, error = %e, "detached");
                return;
            }
        }
    }
}
