//! The two streaming RPCs: `Attach` (a backend holds one session's messages and writes to it)
//! and `Subscribe` (a backend receives a hub's events, shared within its consumer group).

use std::{sync::Arc, time::Duration};

use futures_util::{stream, StreamExt};
use switchboard_proto::v1::{
    self as pb, attach_request::Kind as Req, attach_response::Kind as Resp,
};
use tonic::{Status, Streaming};

use super::{auth::Grant, convert, service::BoxStream, status::status};
use crate::{
    cluster::GatewayPeer,
    error::{Error, Result},
    events::{EventKind, Kinds, Subscription},
    node::{Attachment, Node, Route, Scope},
    session::inbox::Next,
};

/// How long one wait on the inbox lasts before the stream checks again (it loops; the
/// backend sees no timeout).
const POLL: Duration = Duration::from_secs(3600);

/// Tracked writes of one stream whose receipts are still due; the next one waits for room.
const PENDING_RECEIPTS: usize = 1024;

/// Runs an `Attach` stream: the first request must open a session.
pub(crate) async fn attach(
    node: Arc<Node>,
    scope: Scope,
    grant: Grant,
    mut requests: Streaming<pb::AttachRequest>,
) -> Result<BoxStream<pb::AttachResponse>, Status> {
    let open = match requests.message().await? {
        Some(pb::AttachRequest {
            kind: Some(Req::Open(open)),
        }) => open,
        Some(_) => {
            return Err(Status::invalid_argument(
                "the first request of an Attach stream must be `open`",
            ))
        }
        None => return Err(Status::invalid_argument("empty Attach stream")),
    };
    let id = convert::session_id(&open.session_id)?;
    if !grant.is_all() {
        if let Some(hub) = node.session_hub(&id).await? {
            grant.check_hub(&hub)?;
        }
    }
    if let Route::There { peer } = node.route(scope, &id).await? {
        return relay(&node, *peer, open, requests).await;
    }
    let attachment = node.attach(&id, open.take_over, open.manual_ack).await?;
    tracing::debug!(session = %id, take_over = open.take_over, "backend attached");

    // Receipts of tracked writes join the client's messages on the way out.
    let (receipts, due) = tokio::sync::mpsc::channel(PENDING_RECEIPTS);
    let pending = Arc::new(tokio::sync::Semaphore::new(PENDING_RECEIPTS));
    // Writes and closes from the backend run beside the outbound stream, so a write waiting
    // for room never delays the client's messages reaching the backend.
    let pump = {
        let node = Arc::clone(&node);
        let session = Arc::clone(&attachment.session);
        let ender = Arc::clone(&attachment.ender);
        let acks = Arc::clone(&attachment.acks);
        async move {
            loop {
                let req = tokio::select! {
                    _ = ender.ended() => return,
                    r = requests.message() => r,
                };
                let outcome = match req {
                    Ok(Some(pb::AttachRequest {
                        kind: Some(Req::Write(m)),
                    })) => match convert::message(Some(m)) {
                        Ok(m) => node.send_waiting(&session, &m, "").await.map(drop),
                        Err(e) => Err(e),
                    },
                    Ok(Some(pb::AttachRequest {
                        kind: Some(Req::TrackedWrite(w)),
                    })) => {
                        let permit = tokio::select! {
                            _ = ender.ended() => return,
                            p = Arc::clone(&pending).acquire_owned() => p,
                        };
                        match (tracked_write(&node, &session, w).await, permit) {
                            (Ok(wait), Ok(permit)) => {
                                let receipts = receipts.clone();
                                node.ctx.tasks.spawn(async move {
                                    let _ = receipts.send(wait.await).await;
                                    drop(permit);
                                });
                                Ok(())
                            }
                            (Err(e), _) => Err(e),
                            (_, Err(_)) => return,
                        }
                    }
                    Ok(Some(pb::AttachRequest {
                        kind: Some(Req::Ack(a)),
                    })) => {
                        let client_seq = acks.ack(a.seq);
                        node.taken(&session, client_seq);
                        Ok(())
                    }
                    Ok(Some(pb::AttachRequest {
                        kind: Some(Req::Close(c)),
                    })) => {
                        let code = u16::try_from(c.code).unwrap_or(u16::MAX);
                        node.close(&session.id, code, &c.reason).await
                    }
                    Ok(Some(_)) => Err(Error::InvalidArgument(
                        "only the first request of an Attach stream may be `open`".into(),
                    )),
                    // The backend finished sending; it still receives until the session ends.
                    Ok(None) => return,
                    Err(_) => {
                        ender.end(Error::StreamFailed);
                        return;
                    }
                };
                match outcome {
                    Ok(()) => {}
                    // The session is gone; the stream ends with its `closed` event.
                    Err(Error::Gone { .. }) => {}
                    Err(e) => {
                        ender.end(e);
                        return;
                    }
                }
            }
        }
    };
    node.ctx.tasks.spawn(pump);

    let first = pb::AttachResponse {
        kind: Some(Resp::Attached(convert::session_info(
            attachment.session.record(),
        ))),
    };
    let rest = stream::unfold(Some((node, attachment, due)), |state| async move {
        let (node, att, mut due) = state?;
        // Both branches are cancel-safe: a message is taken from the inbox and handed on in
        // one poll.
        let item = tokio::select! {
            Some(receipt) = due.recv() => Ok(receipt),
            item = next_for_attached(&node, &att) => item,
        };
        match item {
            Ok(
                resp @ pb::AttachResponse {
                    kind: Some(Resp::Closed(_)),
                },
            ) => Some((Ok(resp), None)),
            Ok(resp) => Some((Ok(resp), Some((node, att, due)))),
            Err(status) => Some((Err(status), None)),
        }
    });
    Ok(Box::pin(stream::once(async { Ok(first) }).chain(rest)))
}

/// Queues a tracked write (waiting for room, as a plain write does); answers the wait for its
/// receipt.
async fn tracked_write(
    node: &Arc<Node>,
    session: &Arc<crate::session::Session>,
    w: pb::TrackedWrite,
) -> Result<impl std::future::Future<Output = pb::AttachResponse>> {
    let want = convert::receipt(w.receipt());
    let message = convert::message(w.message)?;
    let wait = match want {
        crate::node::Reached::Queued => Duration::ZERO,
        _ => convert::timeout(w.receipt_timeout)?,
    };
    let sent = node.send_waiting(session, &message, &w.message_id).await?;
    let node = Arc::clone(node);
    Ok(async move {
        let reached = node.receipt(&sent, want, wait).await;
        pb::AttachResponse {
            kind: Some(Resp::Receipt(pb::WriteReceipt {
                id: w.id,
                reached: convert::reached(reached) as i32,
            })),
        }
    })
}

/// Attaches through the node holding the session: requests and responses are relayed as they
/// come, so backpressure and the owner's answers reach the backend unchanged.
async fn relay(
    node: &Node,
    mut owner: GatewayPeer,
    open: pb::AttachOpen,
    mut requests: Streaming<pb::AttachRequest>,
) -> Result<BoxStream<pb::AttachResponse>, Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let _ = tx
        .send(pb::AttachRequest {
            kind: Some(Req::Open(open)),
        })
        .await;
    node.ctx.tasks.spawn(async move {
        while let Ok(Some(req)) = requests.message().await {
            if tx.send(req).await.is_err() {
                break;
            }
        }
    });
    let responses = owner
        .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok(Box::pin(responses))
}

/// The next thing an attached backend receives. The inbox is only read when the transport
/// asks for the next item, so whatever a departing backend did not take stays for the next.
async fn next_for_attached(node: &Node, att: &Attachment) -> Result<pb::AttachResponse, Status> {
    // The stream asks for the next item: it has the previous one.
    node.taken(&att.session, att.acks.take_handed());
    loop {
        let next = tokio::select! {
            biased;
            _ = att.ender.ended() => {
                return Err(att.ender.why().map(status).unwrap_or_else(|| Status::cancelled("detached")));
            }
            _ = node.shutdown.cancelled() => return Err(status(&Error::ShuttingDown)),
            next = async {
                att.acks.window().await;
                att.session.inbox.next(POLL).await
            } => next,
        };
        let kind = match next {
            Next::Message(m) => {
                att.acks.sent(&m);
                Resp::Message(convert::inbound(&m))
            }
            Next::Closed(end) => Resp::Closed(convert::closed(&end)),
            Next::TimedOut => continue,
        };
        return Ok(pb::AttachResponse { kind: Some(kind) });
    }
}

/// Runs a `Subscribe` stream.
pub(crate) async fn subscribe(
    node: &Arc<Node>,
    req: pb::SubscribeRequest,
) -> Result<BoxStream<pb::Event>> {
    if !crate::config::is_name(&req.hub) {
        return Err(Error::InvalidArgument(format!(
            "invalid hub {:?}: 1-64 characters of [A-Za-z0-9._-]",
            req.hub
        )));
    }
    let kinds = kinds(&req.kinds)?;
    let sub = node
        .events
        .subscribe(&req.hub, &req.consumer_group, kinds)
        .await;
    let shutdown = node.shutdown.clone();
    let events = stream::unfold(Some((sub, shutdown)), |state| async move {
        let (mut sub, shutdown): (Subscription, _) = state?;
        let item = tokio::select! {
            biased;
            _ = sub.cut_off.cancelled() => Err(status(&Error::SubscriberTooSlow)),
            _ = shutdown.cancelled() => Err(status(&Error::ShuttingDown)),
            e = sub.events.recv() => match e {
                // The last group to take an event takes it without a copy.
                Some(e) => Ok(Arc::try_unwrap(e).unwrap_or_else(|e| (*e).clone())),
                None => Err(status(&Error::SubscriberTooSlow)),
            },
        };
        match item {
            Ok(ev) => Some((Ok(ev), Some((sub, shutdown)))),
            Err(s) => Some((Err(s), None)),
        }
    });
    Ok(Box::pin(events))
}

fn kinds(requested: &[i32]) -> Result<Kinds> {
    if requested.is_empty() {
        return Ok(Kinds::ALL);
    }
    let mut bits = 0;
    for &r in requested {
        bits |= match pb::EventKind::try_from(r) {
            Ok(pb::EventKind::Connected) => EventKind::Connected as u8,
            Ok(pb::EventKind::Message) => EventKind::Message as u8,
            Ok(pb::EventKind::Disconnected) => EventKind::Disconnected as u8,
            Ok(pb::EventKind::Suspended) => EventKind::Suspended as u8,
            Ok(pb::EventKind::Resumed) => EventKind::Resumed as u8,
            _ => return Err(Error::InvalidArgument(format!("unknown event kind {r}"))),
        };
    }
    Ok(Kinds(bits))
}
