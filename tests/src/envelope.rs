//! A bare `switchboard.reliable.v1` client for protocol tests: it speaks the envelopes of
//! docs/reliable.md by hand and does nothing on its own (no automatic acks, resumes or
//! de-duplication), so a test can put the gateway in any state the protocol allows.

use serde_json::{json, Value};

use crate::ws::{Client, Seen};

pub const PROTOCOL: &str = "switchboard.reliable.v1";

/// What a welcome said.
#[derive(Debug, Clone)]
pub struct Welcome {
    pub session: String,
    pub token: String,
    pub resumed: bool,
    pub ack: u64,
}

/// A gateway envelope (or the end of the connection).
#[derive(Debug, Clone, PartialEq)]
pub enum Got {
    Message { seq: u64, text: String },
    Binary { seq: u64, bytes: Vec<u8> },
    Ack(u64),
    Close(u16, String),
    Eof,
}

pub struct RelClient {
    pub ws: Client,
    pub welcome: Welcome,
}

impl RelClient {
    /// Opens a new reliable session on `base` (`ws://host:port`) and reads its welcome.
    pub async fn open(base: &str, hub: &str) -> RelClient {
        let ws = Client::connect_with(
            &format!("{base}/ws/{hub}"),
            &[("sec-websocket-protocol", PROTOCOL)],
        )
        .await;
        Self::welcomed(ws).await
    }

    /// Resumes `w`'s session on `base`, having received gateway messages up to `ack`. Returns
    /// the client after its welcome, or the close code the gateway answered with.
    pub async fn resume(base: &str, hub: &str, w: &Welcome, ack: u64) -> Result<RelClient, u16> {
        let url = format!(
            "{base}/ws/{hub}?session={}&resume_token={}&ack={ack}",
            w.session, w.token
        );
        let mut ws = Client::connect_with(&url, &[("sec-websocket-protocol", PROTOCOL)]).await;
        match ws.next().await {
            Seen::Text(t) => Ok(RelClient {
                welcome: parse_welcome(&t),
                ws,
            }),
            Seen::Close(code, _) => Err(code),
            other => panic!("expected a welcome or a close, got {other:?}"),
        }
    }

    async fn welcomed(mut ws: Client) -> RelClient {
        assert_eq!(ws.subprotocol.as_deref(), Some(PROTOCOL));
        let t = ws.text().await;
        RelClient {
            welcome: parse_welcome(&t),
            ws,
        }
    }

    pub fn session(&self) -> &str {
        &self.welcome.session
    }

    /// The next envelope.
    pub async fn next(&mut self) -> Got {
        match self.ws.next().await {
            Seen::Text(t) => {
                let v: Value = serde_json::from_str(&t).expect("envelope is JSON");
                let seq = v["seq"].as_u64().expect("envelope has a seq");
                match v["type"].as_str() {
                    Some("ack") => Got::Ack(seq),
                    Some("message") => match (v["text"].as_str(), v["binary"].as_str()) {
                        (Some(text), None) => Got::Message {
                            seq,
                            text: text.to_owned(),
                        },
                        (None, Some(b)) => Got::Binary {
                            seq,
                            bytes: base64_decode(b),
                        },
                        _ => panic!("message envelope without one payload: {t}"),
                    },
                    _ => panic!("unexpected envelope {t}"),
                }
            }
            Seen::Binary(b) => panic!("a reliable session got a binary frame: {b:?}"),
            Seen::Close(code, reason) => Got::Close(code, reason),
            Seen::Eof => Got::Eof,
        }
    }

    /// The next message envelope (acks are skipped), as (seq, text).
    pub async fn message(&mut self) -> (u64, String) {
        loop {
            match self.next().await {
                Got::Message { seq, text } => return (seq, text),
                Got::Ack(_) => continue,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// Waits for the gateway's ack of client message `seq` (messages are skipped).
    pub async fn acked(&mut self, seq: u64) {
        loop {
            match self.next().await {
                Got::Ack(n) if n >= seq => return,
                Got::Ack(_) | Got::Message { .. } | Got::Binary { .. } => continue,
                other => panic!("expected ack {seq}, got {other:?}"),
            }
        }
    }

    pub async fn send(&mut self, seq: u64, text: &str) {
        let e = json!({"type": "message", "seq": seq, "text": text});
        self.ws.send_text(&e.to_string()).await;
    }

    pub async fn ack(&mut self, seq: u64) {
        let e = json!({"type": "ack", "seq": seq});
        self.ws.send_text(&e.to_string()).await;
    }

    /// Drops the connection without a close frame (the TCP connection is just closed).
    pub fn drop_connection(self) -> Welcome {
        self.welcome
    }
}

fn parse_welcome(t: &str) -> Welcome {
    let v: Value = serde_json::from_str(t).expect("welcome is JSON");
    assert_eq!(v["type"], "welcome", "first frame is the welcome: {t}");
    Welcome {
        session: v["session"].as_str().expect("session").to_owned(),
        token: v["resume_token"].as_str().expect("resume_token").to_owned(),
        resumed: v["resumed"].as_bool().expect("resumed"),
        ack: v["ack"].as_u64().expect("ack"),
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::{engine::general_purpose::STANDARD, Engine};
    STANDARD.decode(s).expect("binary is base64")
}
