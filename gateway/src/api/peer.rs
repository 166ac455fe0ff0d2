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
        let started = std::time::Instant::now();
        let req = req.into_inner();
        let Some(event) = req.event else {
            return Err(Status::invalid_argument("event is required"));
        };
        let accepted = self.node.events.deliver_local(&req.member, event).await;
        self.node.metrics.grpc("Deliver", tonic::Code::Ok, started);
        Ok(Response::new(pb::DeliverResponse { accepted }))
    }

    async fn release(
        &self,
        req: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let started = std::time::Instant::now();
        let id = crate::api::convert::session_id(&req.into_inner().session_id)?;
        let (taken, pending) = self.node.release(&id).await;
        self.node.metrics.grpc("Release", tonic::Code::Ok, started);
        Ok(Response::new(pb::ReleaseResponse {
            taken,
            pending: pending.as_ref().map(crate::api::convert::inbound),
        }))
    }

    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let started = std::time::Instant::now();
        let node = req.into_inner().node;
        let Some(cluster) = self.node.registry.cluster() else {
            return Err(Status::failed_precondition("this node is not in a cluster"));
        };
        // The caller's word is checked against its lease, not taken.
        let r = match cluster.redis.learn_node(&node).await {
            Ok(true) => {
                tracing::info!(peer = %node, "a node joined");
                Ok(Response::new(pb::JoinResponse {}))
            }
            Ok(false) => Err(Status::failed_precondition(format!(
                "node {node:?} has no lease in the registry"
            ))),
            Err(e) => Err(Status::unavailable(e.to_string())),
        };
        self.node.metrics.grpc(
            "Join",
            r.as_ref().err().map_or(tonic::Code::Ok, Status::code),
            started,
        );
        r
    }
}
