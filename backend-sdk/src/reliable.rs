//! A reference client of reliable sessions (`switchboard.reliable.v1`, docs/reliable.md), for
//! services that talk to Switchboard as clients, and for tests.
//!
//! [`ReliableClient`] keeps one session across connections: it reconnects with capped,
//! jittered back-off over a list of gateway URLs, resumes the session, acknowledges what it
//! received, drops what it received twice, and sends again what the gateway did not
//! acknowledge. The application sees each gateway message once, in order.
//!
//! ```no_run
//! # async fn f() -> Result<(), switchboard_sdk::reliable::ClientError> {
//! use switchboard_sdk::reliable::{ClientEvent, Config, ReliableClient};
//!
//! let config = Config::new(["ws://127.0.0.1:8080", "ws://127.0.0.1:8081"], "chat");
//! let (client, mut events) = ReliableClient::connect(config);
//! client.send_text("hello").await?;
//! while let Some(event) = events.recv().await {
//!     if let ClientEvent::Message { seq, payload } = event {
//!         println!("{seq}: {payload:?}");
//!     }
//! }
//! # Ok(()) }
//! ```

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Duration,
};

use base64::{engine::general_purpose::STANDARD, Engine};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::{net::TcpStream, sync::mpsc, time::Instant};
use tokio_tungstenite::{
    tungstenite::{self, client::IntoClientRequest, protocol::CloseFrame, Message as WsMessage},
    MaybeTlsStream, WebSocketStream,
};

/// The subprotocol of reliable sessions.
pub const PROTOCOL: &str = "switchboard.reliable.v1";
/// Close code of a refused resume: the session cannot be resumed.
pub const RESUME_REFUSED: u16 = 4401;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a [`ReliableClient`] connects and paces itself.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// Gateway base URLs (`ws://host:port` or `wss://…`), tried in turn.
    pub urls: Vec<String>,
    /// The hub (`/ws/{hub}`).
    pub hub: String,
    /// Extra request headers (for example `Authorization`).
    pub headers: Vec<(String, String)>,
    /// First reconnect delay; it doubles per failed attempt up to `backoff_max`, with up to
    /// half of it random (so many clients do not come back at once).
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// How long a connection attempt (TCP, TLS, handshake, welcome) may take.
    pub connect_timeout: Duration,
    /// Acknowledge after this many messages at the latest (the protocol asks for 64 or fewer).
    pub ack_every: u64,
    /// Acknowledge within this long of a message arriving (the protocol asks for 100 ms or
    /// less).
    pub ack_delay: Duration,
    /// Messages sent and not yet acknowledged by the gateway; `send` waits beyond this.
    pub max_unacked: usize,
}

impl Config {
    /// Defaults for a list of gateway URLs and a hub.
    pub fn new<I, S>(urls: I, hub: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Config {
            urls: urls.into_iter().map(Into::into).collect(),
            hub: hub.into(),
            headers: Vec::new(),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            ack_every: 64,
            ack_delay: Duration::from_millis(50),
            max_unacked: 1024,
        }
    }
}

/// A message's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
}

/// Where the client stands.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Connecting (or reconnecting after a loss), to the URL given.
    Connecting {
        /// The gateway tried.
        url: String,
    },
    /// Connected: the welcome arrived.
    Open {
        /// The session ID.
        session: String,
        /// The session went on from an earlier connection (false for a new session).
        resumed: bool,
        /// The gateway connected to.
        url: String,
    },
    /// Ended for good (closed by the application, or by the gateway with a close that ends
    /// the session).
    Closed {
        /// The close code.
        code: u16,
        /// Its reason.
        reason: String,
    },
}

/// What the client reports to the application.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A gateway message, each exactly once and in order.
    Message {
        /// Its sequence number in the session.
        seq: u64,
        /// Its content.
        payload: Payload,
    },
    /// The connection state changed.
    State(State),
    /// The session could not be resumed (it expired, or the gateway lost it): a new one began.
    /// Gateway messages sent to the old one after the last one delivered are lost; messages
    /// the application sent and the gateway had not acknowledged are sent again on the new
    /// session.
    Reset {
        /// The session that was lost.
        old_session: String,
    },
}

/// Why a call on the client failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The client was closed.
    #[error("the reliable client is closed")]
    Closed,
}

/// Counters, for monitoring and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Gateway messages handed to the application.
    pub delivered: u64,
    /// Gateway messages received again (after a resume) and dropped.
    pub duplicates: u64,
    /// Connections made after the first.
    pub reconnects: u64,
    /// Connections that resumed the session.
    pub resumes: u64,
    /// Sessions lost (resume refused).
    pub resets: u64,
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    duplicates: AtomicU64,
    reconnects: AtomicU64,
    resumes: AtomicU64,
    resets: AtomicU64,
}

enum Command {
    Send(Payload),
    Cut,
    Close(tokio::sync::oneshot::Sender<()>),
}

/// A client of one reliable session; cheap to clone, all clones drive the same session.
#[derive(Clone)]
pub struct ReliableClient {
    commands: mpsc::Sender<Command>,
    counters: Arc<Counters>,
    session: Arc<Mutex<Option<String>>>,
}

impl ReliableClient {
    /// Starts the client: it connects in the background (see [`State`] events). Events queue
    /// in a bounded channel: an application that stops reading stops the client reading.
    pub fn connect(config: Config) -> (ReliableClient, mpsc::Receiver<ClientEvent>) {
        let (commands, rx) = mpsc::channel(64);
        let (events, events_rx) = mpsc::channel(1024);
        let client = ReliableClient {
            commands,
            counters: Arc::default(),
            session: Arc::default(),
        };
        let driver = Driver {
            config,
            events,
            counters: Arc::clone(&client.counters),
            session_slot: Arc::clone(&client.session),
            session: None,
            received: 0,
            next_seq: 1,
            unacked: VecDeque::new(),
            commands: rx,
            closing: None,
        };
        tokio::spawn(driver.run());
        (client, events_rx)
    }

    /// Sends a text message: kept until the gateway acknowledges it, sent again after a
    /// resume. Waits while [`Config::max_unacked`] messages are unacknowledged.
    pub async fn send_text(&self, text: impl Into<String>) -> Result<(), ClientError> {
        self.send(Payload::Text(text.into())).await
    }

    /// Sends a binary message (see [`ReliableClient::send_text`]).
    pub async fn send_binary(&self, bytes: impl Into<Vec<u8>>) -> Result<(), ClientError> {
        self.send(Payload::Binary(bytes.into())).await
    }

    async fn send(&self, payload: Payload) -> Result<(), ClientError> {
        self.commands
            .send(Command::Send(payload))
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Drops the current connection without a close frame, as a network failure would; the
    /// client then reconnects and resumes. For tests and drills.
    pub async fn cut(&self) -> Result<(), ClientError> {
        self.commands
            .send(Command::Cut)
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Ends the session for good (a close frame; it cannot be resumed afterwards), once the
    /// gateway has acknowledged every message sent (waiting at most 5 s for that). Dropping
    /// every handle instead abandons the session with whatever it had not acknowledged.
    pub async fn close(&self) -> Result<(), ClientError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.commands
            .send(Command::Close(tx))
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// The current session ID, once a welcome arrived.
    pub fn session(&self) -> Option<String> {
        self.session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            delivered: c.delivered.load(Relaxed),
            duplicates: c.duplicates.load(Relaxed),
            reconnects: c.reconnects.load(Relaxed),
            resumes: c.resumes.load(Relaxed),
            resets: c.resets.load(Relaxed),
        }
    }
}

/// The session as the client knows it.
struct Session {
    id: String,
    token: String,
}

/// How a connection ended.
enum Ended {
    /// Lost (or to be dropped): reconnect and resume.
    Lost,
    /// The session cannot be resumed: start a new one.
    Refused,
    /// Over for good.
    Closed(u16, String),
}

struct Driver {
    config: Config,
    events: mpsc::Sender<ClientEvent>,
    counters: Arc<Counters>,
    session_slot: Arc<Mutex<Option<String>>>,
    session: Option<Session>,
    /// Last gateway seq delivered to the application.
    received: u64,
    /// Seq of the next client message.
    next_seq: u64,
    /// Client messages the gateway has not acknowledged, in seq order.
    unacked: VecDeque<(u64, Payload)>,
    commands: mpsc::Receiver<Command>,
    /// The application asked to close: who waits, and until when unacknowledged messages may
    /// still be delivered.
    closing: Option<(tokio::sync::oneshot::Sender<()>, Instant)>,
}

/// How long a close waits for the gateway to acknowledge what was sent, and then for its
/// answer to the close frame.
const CLOSE_FLUSH: Duration = Duration::from_secs(5);

impl Driver {
    async fn run(mut self) {
        let mut attempt: u32 = 0;
        let mut first = true;
        loop {
            let url = self.config.urls[attempt as usize % self.config.urls.len().max(1)].clone();
            self.event(ClientEvent::State(State::Connecting { url: url.clone() }))
                .await;
            if !first {
                self.counters.reconnects.fetch_add(1, Relaxed);
            }
            first = false;
            let ended = match self.open(&url).await {
                Ok((ws, welcome)) => {
                    attempt = 0;
                    self.connected(ws, welcome, &url).await
                }
                Err(Opened::Refused) => Ended::Refused,
                Err(Opened::Failed) => Ended::Lost,
            };
            match ended {
                Ended::Closed(code, reason) => {
                    self.event(ClientEvent::State(State::Closed { code, reason }))
                        .await;
                    return;
                }
                Ended::Refused => {
                    if let Some(old) = self.session.take() {
                        self.counters.resets.fetch_add(1, Relaxed);
                        self.received = 0;
                        // The new session numbers from 1; what the gateway never acknowledged
                        // goes again, in order.
                        self.next_seq = 1;
                        for (seq, _) in self.unacked.iter_mut() {
                            *seq = self.next_seq;
                            self.next_seq += 1;
                        }
                        self.event(ClientEvent::Reset {
                            old_session: old.id,
                        })
                        .await;
                    }
                    continue;
                }
                Ended::Lost => {}
            }
            attempt = attempt.saturating_add(1);
            if !self.back_off(attempt).await {
                return;
            }
        }
    }

    /// Sleeps before the next attempt, taking sends meanwhile; false once the application
    /// closed the client.
    async fn back_off(&mut self, attempt: u32) -> bool {
        let base = self
            .config
            .backoff_initial
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.config.backoff_max);
        let jitter = base.mul_f64(f64::from(getrandom::u32().unwrap_or(0) % 1000) / 2000.0);
        let until = Instant::now() + base / 2 + jitter;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return true,
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Send(p)) => {
                        self.keep(p);
                    }
                    Some(Command::Cut) => {}
                    Some(Command::Close(done)) => {
                        let _ = done.send(());
                        return false;
                    }
                    None => return false,
                },
            }
        }
    }

    fn keep(&mut self, payload: Payload) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unacked.push_back((seq, payload));
        seq
    }

    async fn event(&self, e: ClientEvent) {
        let _ = self.events.send(e).await;
    }

    async fn open(&mut self, url: &str) -> Result<(Ws, Value), Opened> {
        let mut target = format!("{}/ws/{}", url.trim_end_matches('/'), self.config.hub);
        if let Some(s) = &self.session {
            let query: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("session", &s.id)
                .append_pair("resume_token", &s.token)
                .append_pair("ack", &self.received.to_string())
                .finish();
            target = format!("{target}?{query}");
        }
        let mut req = target.into_client_request().map_err(|_| Opened::Failed)?;
        let headers = req.headers_mut();
        if let Ok(v) = PROTOCOL.parse() {
            headers.insert("sec-websocket-protocol", v);
        }
        for (k, v) in &self.config.headers {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                headers.insert(k, v);
            }
        }
        let attempt = async {
            let (mut ws, _) = tokio_tungstenite::connect_async(req)
                .await
                .map_err(|_| Opened::Failed)?;
            loop {
                match ws.next().await {
                    Some(Ok(WsMessage::Text(t))) => {
                        let v: Value = serde_json::from_str(&t).map_err(|_| Opened::Failed)?;
                        if v["type"] == "welcome" {
                            return Ok((ws, v));
                        }
                        return Err(Opened::Failed);
                    }
                    Some(Ok(WsMessage::Close(Some(CloseFrame { code, .. }))))
                        if u16::from(code) == RESUME_REFUSED =>
                    {
                        return Err(Opened::Refused)
                    }
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                    _ => return Err(Opened::Failed),
                }
            }
        };
        tokio::time::timeout(self.config.connect_timeout, attempt)
            .await
            .unwrap_or(Err(Opened::Failed))
    }

    /// Runs one connection, from its welcome to its end.
    async fn connected(&mut self, mut ws: Ws, welcome: Value, url: &str) -> Ended {
        let id = welcome["session"].as_str().unwrap_or_default().to_owned();
        let token = welcome["resume_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let resumed = welcome["resumed"].as_bool().unwrap_or(false);
        let taken = welcome["ack"].as_u64().unwrap_or(0);
        if resumed {
            self.counters.resumes.fetch_add(1, Relaxed);
        }
        self.session = Some(Session {
            id: id.clone(),
            token,
        });
        *self.session_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(id.clone());
        self.event(ClientEvent::State(State::Open {
            session: id,
            resumed,
            url: url.to_owned(),
        }))
        .await;
        self.gateway_acked(taken);
        // What the gateway has not taken goes again, in order, before anything new.
        for (seq, p) in self.unacked.clone() {
            if ws.send(envelope(seq, &p)).await.is_err() {
                return Ended::Lost;
            }
        }
        let mut unacked_in: u64 = 0;
        let mut ack_at: Option<Instant> = None;
        loop {
            // A close waits (up to its deadline) until the gateway has every message sent.
            if let Some((_, deadline)) = &self.closing {
                if self.unacked.is_empty() || Instant::now() >= *deadline {
                    return self.close_now(&mut ws).await;
                }
            }
            let close_timer = async {
                match &self.closing {
                    Some((_, deadline)) => tokio::time::sleep_until(*deadline).await,
                    None => std::future::pending().await,
                }
            };
            let window_open =
                self.unacked.len() < self.config.max_unacked && self.closing.is_none();
            let ack_timer = async {
                match ack_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                frame = ws.next() => {
                    let t = match frame {
                        Some(Ok(WsMessage::Text(t))) => t,
                        Some(Ok(WsMessage::Close(frame))) => {
                            let (code, reason) = frame
                                .map(|f| (u16::from(f.code), f.reason.to_string()))
                                .unwrap_or((1005, String::new()));
                            return match code {
                                RESUME_REFUSED => Ended::Refused,
                                // The session ends with these; anything else is resumed.
                                1000 | 1002 | 1003 | 1007 | 1008 | 1009 => {
                                    Ended::Closed(code, reason)
                                }
                                _ => Ended::Lost,
                            };
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(_)) | None => return Ended::Lost,
                    };
                    let Ok(v) = serde_json::from_str::<Value>(&t) else {
                        return Ended::Lost;
                    };
                    let seq = v["seq"].as_u64().unwrap_or(0);
                    match v["type"].as_str() {
                        Some("ack") => self.gateway_acked(seq),
                        Some("message") => {
                            if seq <= self.received {
                                self.counters.duplicates.fetch_add(1, Relaxed);
                                continue;
                            }
                            if seq != self.received + 1 {
                                // A gap breaks the contract: resume from what arrived.
                                return Ended::Lost;
                            }
                            let payload = match (v["text"].as_str(), v["binary"].as_str()) {
                                (Some(t), _) => Payload::Text(t.to_owned()),
                                (None, Some(b)) => match STANDARD.decode(b) {
                                    Ok(b) => Payload::Binary(b),
                                    Err(_) => return Ended::Lost,
                                },
                                _ => return Ended::Lost,
                            };
                            self.received = seq;
                            self.counters.delivered.fetch_add(1, Relaxed);
                            self.event(ClientEvent::Message { seq, payload }).await;
                            unacked_in += 1;
                            if unacked_in >= self.config.ack_every {
                                if ws.send(ack(self.received)).await.is_err() {
                                    return Ended::Lost;
                                }
                                unacked_in = 0;
                                ack_at = None;
                            } else if ack_at.is_none() {
                                ack_at = Some(Instant::now() + self.config.ack_delay);
                            }
                        }
                        _ => {}
                    }
                }
                () = close_timer => continue,
                () = ack_timer => {
                    ack_at = None;
                    unacked_in = 0;
                    if ws.send(ack(self.received)).await.is_err() {
                        return Ended::Lost;
                    }
                }
                cmd = self.commands.recv(), if window_open => match cmd {
                    Some(Command::Send(p)) => {
                        let seq = self.keep(p.clone());
                        if ws.send(envelope(seq, &p)).await.is_err() {
                            return Ended::Lost;
                        }
                    }
                    Some(Command::Cut) => return Ended::Lost,
                    Some(Command::Close(done)) => {
                        self.closing = Some((done, Instant::now() + CLOSE_FLUSH));
                    }
                    None => return Ended::Closed(1000, String::new()),
                },
            }
        }
    }

    /// Acknowledges what arrived, sends the close frame and waits for the gateway's answer.
    async fn close_now(&mut self, ws: &mut Ws) -> Ended {
        let _ = ws.send(ack(self.received)).await;
        let _ = ws
            .close(Some(CloseFrame {
                code: tungstenite::protocol::frame::coding::CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
        let _ = tokio::time::timeout(CLOSE_FLUSH, async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        if let Some((done, _)) = self.closing.take() {
            let _ = done.send(());
        }
        Ended::Closed(1000, String::new())
    }

    /// The gateway has every client message up to `seq`.
    fn gateway_acked(&mut self, seq: u64) {
        while self.unacked.front().is_some_and(|(s, _)| *s <= seq) {
            self.unacked.pop_front();
        }
    }
}

enum Opened {
    Refused,
    Failed,
}

fn envelope(seq: u64, p: &Payload) -> WsMessage {
    let v = match p {
        Payload::Text(t) => json!({"type": "message", "seq": seq, "text": t}),
        Payload::Binary(b) => json!({"type": "message", "seq": seq, "binary": STANDARD.encode(b)}),
    };
    WsMessage::text(v.to_string())
}

fn ack(seq: u64) -> WsMessage {
    WsMessage::text(json!({"type": "ack", "seq": seq}).to_string())
}
