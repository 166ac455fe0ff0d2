//! The Rust client library for Switchboard backends.
//!
//! A Switchboard gateway holds the browsers' WebSockets; a backend names a session by its ID
//! and asks the gateway to send to it, read from it, close it, or publish to many sessions at
//! once, from any process, at any time. This crate is that API in plain Rust: no protobuf
//! types, no node addresses, typed errors.
//!
//! # Quick start
//!
//! "When a file arrives, tell every open browser":
//!
//! ```no_run
//! use switchboard_sdk::{Client, Target};
//!
//! # async fn on_file_arrived(name: &str) -> Result<(), switchboard_sdk::Error> {
//! let client = Client::builder()
//!     .gateway("http://127.0.0.1:7070")
//!     .token("s3cret")
//!     .build()
//!     .await?;
//!
//! let told = client
//!     .publish(Target::hub("files"), format!(r#"{{"new_file":"{name}"}}"#))
//!     .await?;
//! println!("told {} browsers", told.queued);
//! # Ok(()) }
//! ```
//!
//! Hold one client's connection as if the backend owned the socket (an echo):
//!
//! ```no_run
//! use switchboard_sdk::{Client, Event, EventKind, Incoming};
//!
//! # async fn run(client: Client) -> Result<(), switchboard_sdk::Error> {
//! let mut events = client.subscribe("echo").kinds([EventKind::Connected]).await?;
//! while let Some(Event::Connected(info)) = events.recv().await? {
//!     let mut conn = client.attach(&info.id).await?;
//!     tokio::spawn(async move {
//!         while let Ok(Incoming::Message(m)) = conn.read().await {
//!             let _ = conn.write(m.message).await;
//!         }
//!     });
//! }
//! # Ok(()) }
//! ```
//!
//! Decide who may connect (start the gateway with `--connect-hook http://127.0.0.1:9000`):
//!
//! ```no_run
//! use switchboard_sdk::{Allow, ConnectRequest, Decision, HookServer};
//!
//! # async fn run() -> Result<(), switchboard_sdk::Error> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9000").await.unwrap();
//! HookServer::new(|req: ConnectRequest| async move {
//!     match req.bearer_token() {
//!         Some("alice-token") => Allow::user("alice").into(),
//!         _ => Decision::deny(401, "who are you?"),
//!     }
//! })
//! .serve(listener)
//! .await
//! # }
//! ```
//!
//! # What is where
//!
//! - [`Client`] (module `client`): every call of the backend API. Calls with optional parts
//!   return builders that are awaited directly ([`Publish`], [`Close`], [`Attach`],
//!   [`Subscribe`]) or turned into a stream ([`ListSessions`]). Routing, deadlines and retries
//!   live here too; with the `redis` feature, live gateway nodes and the node holding each
//!   session are read from Redis.
//! - [`SharedConnection`] (module `connection`): one attached session: read, write, close.
//! - [`Subscription`] (module `events`): a hub's [`Event`]s.
//! - [`ConnectHook`], [`HookServer`] (module `hook`): admission of new clients.
//! - The vocabulary (module `types`): [`SessionId`], [`Message`], [`SessionInfo`], [`Closed`],
//!   [`Target`], [`Event`] ...
//! - [`Error`] (module `error`): one enum, mapped from the gateway's statuses in one place.
//!
//! # Features
//!
//! - `redis`: `ClientBuilder::redis_url` and friends, for a cluster of gateway nodes.
//!
//! # Retries
//!
//! Calls that are safe to repeat (`session`, `check`, `sessions`, `join`, `leave`, opening
//! `attach` and `subscribe`) are retried on [`Error::Unavailable`] per the [`RetryPolicy`],
//! on another node when there is one. `send`, `publish`, `close` and `read` are retried only
//! when their request certainly never left (the connection was refused): once it may have
//! reached a gateway, a repeat could deliver twice or lose a message. [`Error::is_retryable`]
//! tells a caller whether trying again later may help.

#![deny(missing_docs)]

mod client;
mod connection;
mod convert;
mod error;
mod events;
mod hook;
#[cfg(feature = "reliable")]
pub mod reliable;
mod types;

pub use client::{
    Attach, Client, ClientBuilder, Close, ListSessions, Publish, RetryPolicy, SessionStream,
    Subscribe,
};
pub use connection::{ConnectionWriter, SharedConnection};
pub use error::{Error, Result};
pub use events::Subscription;
pub use hook::{Allow, ConnectHook, ConnectRequest, Decision, HookServer};
pub use types::{
    Closed, Closer, Delivery, Event, EventKind, Inbound, Incoming, Message, ReadOutcome, Receipt,
    SessionCounters, SessionId, SessionInfo, SessionOutcome, SessionState, Target,
};
