//! `switchboard.v1.Gateway`: each RPC checks its arguments, calls the node, and maps the result.

use std::{pin::Pin, sync::Arc};

use futures_util::Stream;
use switchboard_proto::v1::{self as pb, gateway_server::Gateway};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::{convert, streams};
use crate::{error::Result, node::Node, registry::ListFilter, session::inbox::Next};

pub(crate) struct GatewayService {
    node: Arc<Node>,
}

impl GatewayService {
    pub(crate) fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    /// Records the call's outcome, logs refusals, and maps the error to its status.
    fn finish<T>(&self, method: &'static str, r: Result<T>) -> Result<Response<T>, Status> {
        match r {
            Ok(v) => {
                self.node.metrics.grpc(method, tonic::Code::Ok);
                Ok(Response::new(v))
            }
            Err(e) => {
                let status = Status::from(e);
                self.node.metrics.grpc(method, status.code());
                tracing::debug!(method, code = ?status.code(), message = status.message(), "call refused");
                Err(status)
            }
        }
    }
}

fn span(method: &'static str, session: &str) -> tracing::Span {
    tracing::debug_span!("grpc", method, session)
}

pub(crate) type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn send(
        &self,
        req: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let req = req.into_inner();
        let r = async {
            let id = convert::session_id(&req.session_id)?;
            let msg = convert::message(req.message)?;
            self.node.send(&id, &msg).await?;
            Ok(pb::SendResponse {})
        }
        .instrument(span("Send", &req.session_id))
        .await;
        self.finish("Send", r)
    }

    async fn publish(
        &self,
        req: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let req = req.into_inner();
        let r = async {
            let target = convert::target(req.target)?;
            let exclude = convert::session_ids(&req.exclude)?;
            let msg = convert::message(req.message)?;
            let d = self.node.publish(&target, &exclude, &msg).await?;
            Ok(pb::PublishResponse {
                queued: d.queued,
                refused: d.refused,
            })
        }
        .instrument(span("Publish", ""))
        .await;
        self.finish("Publish", r)
    }

    async fn close(
        &self,
        req: Request<pb::CloseRequest>,
    ) -> Result<Response<pb::CloseResponse>, Status> {
        let req = req.into_inner();
        let r = async {
            let id = convert::session_id(&req.session_id)?;
            let code = u16::try_from(req.code).unwrap_or(u16::MAX);
            self.node.close(&id, code, &req.reason).await?;
            Ok(pb::CloseResponse {})
        }
        .instrument(span("Close", &req.session_id))
        .await;
        self.finish("Close", r)
    }

    async fn get_session(
        &self,
        req: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let req = req.into_inner();
        let r = async {
            let id = convert::session_id(&req.session_id)?;
            let record = self.node.get(&id).await?;
            Ok(pb::GetSessionResponse {
                session: Some(convert::session_info(record)),
            })
        }
        .instrument(span("GetSession", &req.session_id))
        .await;
        self.finish("GetSession", r)
    }

    async fn check_sessions(
        &self,
        req: Request<pb::CheckSessionsRequest>,
    ) -> Result<Response<pb::CheckSessionsResponse>, Status> {
        let req = req.into_inner();
        let r = async {
            let ids = convert::session_ids(&req.session_ids)?;
            let states = self.node.check(&ids).await?;
            Ok(pb::CheckSessionsResponse {
                sessions: req
                    .session_ids
                    .into_iter()
                    .zip(states.iter())
                    .map(|(id, l)| pb::SessionStatus {
                        session_id: id,
                        state: convert::state(l) as i32,
                    })
                    .collect(),
            })
        }
        .instrument(span("CheckSessions", ""))
        .await;
        self.finish("CheckSessions", r)
    }

    async fn list_sessions(
        &self,
        req: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let req = req.into_inner();
        let r = async {
            let some = |s: String| (!s.is_empty()).then_some(s);
            let filter = ListFilter {
                hub: some(req.hub),
                group: some(req.group),
                user: some(req.user),
                node: some(req.node),
            };
            let cursor = some(req.page_token);
            let page = self
                .node
                .list(&filter, req.page_size as usize, cursor.as_deref())
                .await?;
            Ok(pb::ListSessionsResponse {
                sessions: page
                    .records
                    .into_iter()
                    .map(convert::session_info)
                    .collect(),
                next_page_token: page.next.unwrap_or_default(),
            })
        }
        .instrument(span("ListSessions", ""))
        .await;
        self.finish("ListSessions", r)
    }

    async fn join_group(
        &self,
        req: Request<pb::JoinGroupRequest>,
    ) -> Result<Response<pb::JoinGroupResponse>, Status> {
        let req = req.into_inner();
        let r = async {
            let id = convert::session_id(&req.session_id)?;
            self.node.set_group(&id, &req.group, true).await?;
            Ok(pb::JoinGroupResponse {})
        }
        .instrument(span("JoinGroup", &req.session_id))
        .await;
        self.finish("JoinGroup", r)
    }

    async fn leave_group(
        &self,
        req: Request<pb::LeaveGroupRequest>,
    ) -> Result<Response<pb::LeaveGroupResponse>, Status> {
        let req = req.into_inner();
        let r = async {
            let id = convert::session_id(&req.session_id)?;
            self.node.set_group(&id, &req.group, false).await?;
            Ok(pb::LeaveGroupResponse {})
        }
        .instrument(span("LeaveGroup", &req.session_id))
        .await;
        self.finish("LeaveGroup", r)
    }

    async fn read(
        &self,
        req: Request<pb::ReadRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        use pb::read_response::Result as R;
        let req = req.into_inner();
        let r = async {
            let id = convert::session_id(&req.session_id)?;
            let timeout = convert::timeout(req.timeout)?;
            let result = match self.node.read(&id, timeout).await? {
                Next::Message(m) => R::Message(convert::inbound(&m)),
                Next::TimedOut => R::TimedOut(pb::TimedOut {}),
                Next::Closed(end) => R::Closed(convert::closed(&end)),
            };
            Ok(pb::ReadResponse {
                result: Some(result),
            })
        }
        .instrument(span("Read", &req.session_id))
        .await;
        self.finish("Read", r)
    }

    type AttachStream = BoxStream<pb::AttachResponse>;

    async fn attach(
        &self,
        req: Request<Streaming<pb::AttachRequest>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let r = streams::attach(Arc::clone(&self.node), req.into_inner())
            .instrument(span("Attach", ""))
            .await;
        self.node.metrics.grpc(
            "Attach",
            r.as_ref().err().map_or(tonic::Code::Ok, Status::code),
        );
        r.map(Response::new)
    }

    type SubscribeStream = BoxStream<pb::Event>;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let r = streams::subscribe(&self.node, req.into_inner());
        self.finish("Subscribe", r)
    }
}
