//! Authentication, two ways.
//!
//! **Hook mode** (default): a connect hook that lets a client in when its query string carries
//! the demo user and password (`/ws/chat?user=demo&password=demo-password`) or when it sends
//! `Authorization: Bearer demo-token`, and refuses everyone else with 401 before the upgrade.
//!
//! ```sh
//! cargo run -p switchboard-sdk --example auth_hook -- --listen 127.0.0.1:9000 &
//! cargo run -p switchboard-gateway -- --connect-hook http://127.0.0.1:9000
//! ```
//! Prints `auth_hook: listening on ADDR` once the hook is served.
//!
//! **First-message mode** (`--first-message`): for clients that cannot put credentials in the
//! URL and send `{"User": "...", "Password": "..."}` as their first message instead. Every new
//! session of the hub is read once, within `--deadline`: the right credentials get
//! `{"type":"authenticated","user":...}` and the group `authenticated`; wrong ones are closed
//! with 4001, a first message that is not credentials with 4002, silence with 4008.
//!
//! ```sh
//! cargo run -p switchboard-gateway &
//! cargo run -p switchboard-sdk --example auth_hook -- --first-message --hub chat --deadline 5s
//! ```
//! Prints `auth_hook: watching hub=...` once subscribed.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use clap::Parser;
use serde::Deserialize;
use switchboard_sdk::{
    Allow, Client, ConnectRequest, Decision, Event, EventKind, HookServer, ReadOutcome, SessionId,
};
use tokio::{net::TcpListener, task::JoinSet};

#[derive(Parser, Debug, Clone)]
#[command(about = "A demo connect hook, or a first-message authenticator")]
struct Args {
    /// The demo user that is let in.
    #[arg(long, default_value = "demo")]
    user: String,
    /// The demo user's password.
    #[arg(long, default_value = "demo-password")]
    password: String,
    /// A bearer token that is let in too (as the demo user).
    #[arg(long, default_value = "demo-token")]
    bearer: String,

    /// Hook mode: where to serve `switchboard.v1.ConnectHook` (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,

    /// First-message mode instead of hook mode.
    #[arg(long)]
    first_message: bool,
    /// First-message mode: a gateway's backend address; repeat for several nodes.
    #[arg(
        long = "gateway",
        default_value = "http://127.0.0.1:7070",
        env = "SWITCHBOARD_GATEWAY"
    )]
    gateways: Vec<String>,
    /// First-message mode: the gateway's backend token, if it requires one.
    #[arg(long, env = "SWITCHBOARD_BACKEND_TOKEN", default_value = "")]
    backend_token: String,
    /// First-message mode: the hub whose new sessions must authenticate.
    #[arg(long, default_value = "chat")]
    hub: String,
    /// First-message mode: how long a client has to send its credentials (`5s`, `500ms`).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    deadline: Duration,
}

/// Close code for wrong credentials.
const WRONG_CREDENTIALS: u16 = 4001;
/// Close code for a first message that is not credentials.
const NOT_CREDENTIALS: u16 = 4002;
/// Close code for no credentials within the deadline.
const TOO_LATE: u16 = 4008;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.first_message {
        first_message(args).await
    } else {
        hook(args).await
    }
}

/// Hook mode: one async function decides.
async fn hook(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("auth_hook: listening on {}", listener.local_addr()?);
    let decide = move |req: ConnectRequest| {
        let args = args.clone();
        async move {
            let by_password = req.query_param("user").as_deref() == Some(&args.user)
                && req.query_param("password").as_deref() == Some(&args.password);
            let by_token = req.bearer_token() == Some(args.bearer.as_str());
            if by_password || by_token {
                tracing::info!(hub = %req.hub, from = %req.remote_addr, "let in");
                Allow::user(&args.user).into()
            } else {
                tracing::info!(hub = %req.hub, from = %req.remote_addr, "refused");
                Decision::deny(401, "invalid credentials")
            }
        }
    };
    HookServer::new(decide)
        .serve_with_shutdown(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// What a client sends first in first-message mode.
#[derive(Deserialize)]
struct Credentials {
    #[serde(rename = "User")]
    user: String,
    #[serde(rename = "Password")]
    password: String,
}

/// First-message mode: Subscribe to arrivals, Read each newcomer's first message.
async fn first_message(args: Args) -> anyhow::Result<()> {
    let client = Client::builder()
        .gateways(&args.gateways)
        .token(&args.backend_token)
        .build()
        .await
        .context("configuring the client")?;
    // Only `connected`: the clients' messages stay in their inboxes for `read`.
    let mut events = client
        .subscribe(&args.hub)
        .group("auth_hook")
        .kinds([EventKind::Connected])
        .await
        .context("subscribing")?;
    println!("auth_hook: watching hub={}", args.hub);
    let mut checks = JoinSet::new();
    loop {
        tokio::select! {
            event = events.recv() => match event.context("reading events")? {
                Some(Event::Connected(info)) => {
                    let (client, args) = (client.clone(), args.clone());
                    checks.spawn(async move {
                        if let Err(e) = authenticate(&client, &args, &info.id).await {
                            tracing::warn!(session = %info.id, error = %e, "authentication failed");
                        }
                    });
                }
                Some(_) => {}
                None => anyhow::bail!("the gateway ended the subscription"),
            },
            Some(_) = checks.join_next(), if !checks.is_empty() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn authenticate(client: &Client, args: &Args, id: &SessionId) -> anyhow::Result<()> {
    let first = client.read(id, args.deadline).await?;
    let message = match first {
        ReadOutcome::Message(m) => m.message,
        ReadOutcome::TimedOut => {
            tracing::info!(session = %id, "no credentials in time");
            return close(client, id, TOO_LATE, "authentication timeout").await;
        }
        ReadOutcome::Closed(_) => return Ok(()),
    };
    let Some(creds) = message
        .as_text()
        .and_then(|t| serde_json::from_str::<Credentials>(t).ok())
    else {
        return close(
            client,
            id,
            NOT_CREDENTIALS,
            "expected {\"User\",\"Password\"}",
        )
        .await;
    };
    if creds.user != args.user || creds.password != args.password {
        tracing::info!(session = %id, user = %creds.user, "wrong credentials");
        return close(client, id, WRONG_CREDENTIALS, "invalid credentials").await;
    }
    client.join(id, "authenticated").await?;
    let welcome = serde_json::json!({"type": "authenticated", "user": creds.user});
    client.send(id, welcome.to_string()).await?;
    tracing::info!(session = %id, user = %creds.user, "authenticated");
    Ok(())
}

/// Closes a session; one that is already gone needs no closing.
async fn close(client: &Client, id: &SessionId, code: u16, reason: &str) -> anyhow::Result<()> {
    match client.close(id).code(code).reason(reason).await {
        Err(e) if e.is_session_ended() => Ok(()),
        r => Ok(r?),
    }
}

/// `5s`, `500ms`, `2m` or a number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration like 5s, 500ms or 2m");
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}
