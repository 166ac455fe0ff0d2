//! `switchboard.v1.Peer`: what other nodes of the cluster call on this one.

use std::sync::Arc;

use switchboard_proto::v1::{self as pb, peer_server::Peer};
use tonic::{Request, Response, Status};

use crate::node::Node;

pub(crate) struct PeerService {
    node: Arc<Node>,
}

impl PeerService {
    pub(crate) fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn deliver(
        &self,
        req: Request<pb::DeliverRequest>,
    ) -> Result<Response<pb::DeliverResponse>, Status> {
        let req = req.into_inner();
        let Some(event) = req.event else {
            return Err(Status::invalid_argument("event is required"));
        };
        let accepted = self.node.events.deliver_local(&req.member, event).await;
        self.node.metrics.grpc("Deliver", tonic::Code::Ok);
        Ok(Response::new(pb::DeliverResponse { accepted }))
    }
}
