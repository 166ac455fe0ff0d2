//! [`SharedConnection`]: one session held by this backend over an `Attach` stream: read what
//! the client sends, write to it, close it, as if the backend owned the socket.

use switchboard_proto::v1::{
    self as pb, attach_request::Kind as Req, attach_response::Kind as Resp,
};
use tokio::sync::mpsc;
use tonic::Streaming;

use crate::{
    convert,
    error::{Error, Result},
    types::{Closed, Incoming, Message, Receipt, SessionId, SessionInfo},
};
use std::time::Duration;

/// Writes and closes waiting to go out on one attach stream. When full, `write` waits: the
/// gateway takes writes as fast as the client's outbound queue drains.
pub(crate) const WRITE_QUEUE: usize = 64;

/// A session's shared connection, made by [`Client::attach`](crate::Client::attach).
///
/// Reading takes `&mut self`; writing takes `&self`, and [`writer`](Self::writer) hands out a
/// cloneable writer for other tasks. Dropping the connection detaches this backend and leaves
/// the session open. Every message [`read`](Self::read) returns is acknowledged to the gateway;
/// messages not yet returned — still in the session's inbox, or already on their way to this
/// stream — go back to the inbox for the next reader, so detaching loses nothing.
///
/// ```no_run
/// # async fn f(client: switchboard_sdk::Client) -> Result<(), switchboard_sdk::Error> {
/// use switchboard_sdk::Incoming;
///
/// let mut conn = client.attach("AAAAAAAAAAAAAAAAAAAAAA").await?;
/// conn.write("hello from the backend").await?;
/// match conn.read().await? {
///     Incoming::Message(m) if m.message.as_text() == Some("bye") => {
///         conn.close(1000, "bye").await?;
///     }
///     Incoming::Message(m) => conn.write(m.message).await?,
///     Incoming::Closed(c) => println!("the client left: {c}"),
///     Incoming::Receipt { .. } => {} // only after a `write_tracked`
/// }
/// # Ok(()) }
/// ```
pub struct SharedConnection {
    info: SessionInfo,
    writer: ConnectionWriter,
    responses: Streaming<pb::AttachResponse>,
    /// Set once the stream has reported the close; later reads repeat it.
    closed: Option<Closed>,
}

impl std::fmt::Debug for SharedConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedConnection")
            .field("session", &self.info.id)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl SharedConnection {
    pub(crate) fn new(
        info: SessionInfo,
        tx: mpsc::Sender<pb::AttachRequest>,
        responses: Streaming<pb::AttachResponse>,
    ) -> Self {
        SharedConnection {
            writer: ConnectionWriter {
                session: info.id.clone(),
                tx,
            },
            info,
            responses,
            closed: None,
        }
    }

    /// The session's ID.
    ///
    /// ```no_run
    /// # fn f(conn: switchboard_sdk::SharedConnection) {
    /// println!("attached to {}", conn.session_id());
    /// # }
    /// ```
    pub fn session_id(&self) -> &SessionId {
        &self.info.id
    }

    /// The session as it was when this backend attached (user, groups, metadata ...).
    ///
    /// ```no_run
    /// # fn f(conn: switchboard_sdk::SharedConnection) {
    /// println!("user {:?}", conn.info().user);
    /// # }
    /// ```
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// The next message the client sent, or the close that ended the session (returned again
    /// by every later call). Messages come in the client's order, starting with any that were
    /// waiting before the attach.
    ///
    /// Fails with [`Error::TakenOver`] when another backend took the session over, and with
    /// [`Error::Unavailable`] when the gateway went away; the session may still be open then.
    ///
    /// ```no_run
    /// # async fn f(mut conn: switchboard_sdk::SharedConnection) -> Result<(), switchboard_sdk::Error> {
    /// use switchboard_sdk::Incoming;
    ///
    /// loop {
    ///     match conn.read().await? {
    ///         Incoming::Message(m) => println!("#{} {:?}", m.seq, m.message),
    ///         Incoming::Receipt { id, reached } => println!("write {id}: {reached:?}"),
    ///         Incoming::Closed(c) => break println!("{c}"),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn read(&mut self) -> Result<Incoming> {
        if let Some(c) = &self.closed {
            return Ok(Incoming::Closed(c.clone()));
        }
        loop {
            let next = self
                .responses
                .message()
                .await
                .map_err(|s| Error::from_status(&s, Some(&self.info.id)))?;
            match next.and_then(|r| r.kind) {
                Some(Resp::Message(m)) => {
                    // Handed to the caller: the gateway may forget it. Unacknowledged
                    // messages go back to the session's inbox if this connection drops.
                    let ack = pb::AttachRequest {
                        kind: Some(Req::Ack(pb::Ack { seq: m.seq })),
                    };
                    let _ = self.writer.tx.send(ack).await;
                    return Ok(Incoming::Message(convert::inbound(m)));
                }
                Some(Resp::Receipt(r)) => {
                    return Ok(Incoming::Receipt {
                        id: r.id,
                        reached: convert::reached(r.reached()),
                    })
                }
                Some(Resp::Closed(c)) => {
                    let c = convert::closed(c);
                    self.closed = Some(c.clone());
                    return Ok(Incoming::Closed(c));
                }
                // Only the first response says `attached`; nothing else is expected.
                Some(Resp::Attached(_)) => continue,
                None => return Err(Error::Detached),
            }
        }
    }

    /// Queues a message for the client. Waits while the client's outbound queue is full.
    ///
    /// A write the gateway refuses (a message over its size limit) ends the stream: the next
    /// [`read`](Self::read) returns the error. Once `read` has returned
    /// [`Incoming::Closed`], writing fails with [`Error::SessionGone`].
    ///
    /// ```no_run
    /// # async fn f(conn: switchboard_sdk::SharedConnection) -> Result<(), switchboard_sdk::Error> {
    /// conn.write("text").await?;
    /// conn.write(vec![1u8, 2, 3]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn write(&self, message: impl Into<Message>) -> Result<()> {
        self.ended()?;
        self.writer.write(message).await
    }

    /// Queues a message and asks for a receipt: [`read`](Self::read) yields
    /// [`Incoming::Receipt`] with `id` once the message was written to the client's socket
    /// ([`Receipt::Written`]) or acknowledged by a reliable client ([`Receipt::Acked`]),
    /// whichever `wait` names, or when `timeout` passes (then `reached` says how far it got).
    /// `message_id` (may be empty) keeps a retried write to a reliable session from being kept
    /// twice. At most 1,024 receipts are due at once per stream; more writes wait.
    ///
    /// ```no_run
    /// # async fn f(mut conn: switchboard_sdk::SharedConnection) -> Result<(), switchboard_sdk::Error> {
    /// use std::time::Duration;
    /// use switchboard_sdk::{Incoming, Receipt};
    ///
    /// conn.write_tracked(7, "invoice 42", "inv-42", Receipt::Acked, Duration::from_secs(5)).await?;
    /// loop {
    ///     match conn.read().await? {
    ///         Incoming::Receipt { id: 7, reached } => break println!("invoice 42: {reached:?}"),
    ///         Incoming::Closed(c) => break println!("{c}"),
    ///         _ => {}
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn write_tracked(
        &self,
        id: u64,
        message: impl Into<Message>,
        message_id: &str,
        wait: Receipt,
        timeout: Duration,
    ) -> Result<()> {
        self.ended()?;
        self.writer
            .write_tracked(id, message, message_id, wait, timeout)
            .await
    }

    /// [`Error::SessionGone`] once [`read`](Self::read) has seen the close.
    fn ended(&self) -> Result<()> {
        match &self.closed {
            Some(c) => Err(Error::SessionGone {
                session: self.info.id.clone(),
                closed: Some(c.clone()),
            }),
            None => Ok(()),
        }
    }

    /// Closes the session with a WebSocket close code and reason. Messages the client sent
    /// before still arrive through [`read`](Self::read), then [`Incoming::Closed`].
    ///
    /// ```no_run
    /// # async fn f(mut conn: switchboard_sdk::SharedConnection) -> Result<(), switchboard_sdk::Error> {
    /// use switchboard_sdk::Incoming;
    ///
    /// conn.close(4000, "done").await?;
    /// while let Incoming::Message(_) = conn.read().await? {}
    /// # Ok(()) }
    /// ```
    pub async fn close(&self, code: u16, reason: impl Into<String>) -> Result<()> {
        self.ended()?;
        self.writer.close(code, reason).await
    }

    /// A cloneable handle that writes to and closes this session from other tasks.
    ///
    /// ```no_run
    /// # async fn f(conn: switchboard_sdk::SharedConnection) -> Result<(), switchboard_sdk::Error> {
    /// let writer = conn.writer();
    /// tokio::spawn(async move {
    ///     let _ = writer.write("tick").await;
    /// });
    /// # Ok(()) }
    /// ```
    pub fn writer(&self) -> ConnectionWriter {
        self.writer.clone()
    }
}

/// Writes to and closes an attached session; from [`SharedConnection::writer`]. Cheap to clone.
///
/// ```no_run
/// # async fn f(conn: switchboard_sdk::SharedConnection) -> Result<(), switchboard_sdk::Error> {
/// let writer = conn.writer();
/// writer.write("from another task").await?;
/// writer.close(1000, "").await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ConnectionWriter {
    session: SessionId,
    tx: mpsc::Sender<pb::AttachRequest>,
}

impl ConnectionWriter {
    /// The session written to.
    ///
    /// ```no_run
    /// # fn f(w: switchboard_sdk::ConnectionWriter) {
    /// println!("{}", w.session_id());
    /// # }
    /// ```
    pub fn session_id(&self) -> &SessionId {
        &self.session
    }

    /// Same as [`SharedConnection::write`]; fails with [`Error::Detached`] once the stream
    /// has ended.
    ///
    /// ```no_run
    /// # async fn f(w: switchboard_sdk::ConnectionWriter) -> Result<(), switchboard_sdk::Error> {
    /// w.write("hello").await?;
    /// # Ok(()) }
    /// ```
    pub async fn write(&self, message: impl Into<Message>) -> Result<()> {
        self.push(Req::Write(convert::message(message.into())))
            .await
    }

    /// Same as [`SharedConnection::write_tracked`]; the receipt comes to the connection's
    /// [`read`](SharedConnection::read).
    ///
    /// ```no_run
    /// # async fn f(w: switchboard_sdk::ConnectionWriter) -> Result<(), switchboard_sdk::Error> {
    /// use std::time::Duration;
    /// use switchboard_sdk::Receipt;
    ///
    /// w.write_tracked(1, "hello", "", Receipt::Written, Duration::from_secs(5)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn write_tracked(
        &self,
        id: u64,
        message: impl Into<Message>,
        message_id: &str,
        wait: Receipt,
        timeout: Duration,
    ) -> Result<()> {
        self.push(Req::TrackedWrite(pb::TrackedWrite {
            id,
            message: Some(convert::message(message.into())),
            message_id: message_id.to_owned(),
            receipt: convert::receipt(wait) as i32,
            receipt_timeout: Some(convert::duration(timeout)),
        }))
        .await
    }

    /// Same as [`SharedConnection::close`].
    ///
    /// ```no_run
    /// # async fn f(w: switchboard_sdk::ConnectionWriter) -> Result<(), switchboard_sdk::Error> {
    /// w.close(4001, "unauthorized").await?;
    /// # Ok(()) }
    /// ```
    pub async fn close(&self, code: u16, reason: impl Into<String>) -> Result<()> {
        self.push(Req::Close(pb::CloseSession {
            code: code.into(),
            reason: reason.into(),
        }))
        .await
    }

    async fn push(&self, kind: Req) -> Result<()> {
        self.tx
            .send(pb::AttachRequest { kind: Some(kind) })
            .await
            .map_err(|_| Error::Detached)
    }
}
