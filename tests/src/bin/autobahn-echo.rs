//! An echo backend for the Autobahn|Testsuite run (`tests/autobahn/run`).
//!
//! It subscribes to a hub's `connected` events and attaches to every new session, writing each
//! message the client sends back to it with the same kind (text or binary). Everything goes
//! through the public gRPC API, as a real backend would: the fuzzing client therefore tests the
//! whole path — client frames, reassembly, inbox, `Attach`, `send`, outbound queue, encoding.
//!
//! Usage: `autobahn-echo --backend 127.0.0.1:7070 [--hub autobahn] [--token T] [--verbose]`
//!
//! Prints `autobahn-echo ready hub=… backend=…` on stdout once its subscription is in place
//! (clients connecting after that line are echoed), and exits non-zero if the subscription ends.

use std::{process::ExitCode, time::Duration};

use switchboard_proto::v1::{
    self as pb, attach_request::Kind as Req, attach_response::Kind as Resp, event::Kind as Ev,
    gateway_client::GatewayClient,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Channel, Endpoint},
    Request, Status,
};

/// Larger than any message the suite sends (16 MiB) plus protobuf framing.
const MAX_GRPC_MESSAGE: usize = 64 << 20;
/// How long to keep trying to reach the gateway's backend port at start.
const CONNECT_PATIENCE: Duration = Duration::from_secs(30);
/// Writes queued towards the gateway per session before the echo stops reading (backpressure).
const WRITES_IN_FLIGHT: usize = 16;

struct Args {
    backend: String,
    hub: String,
    token: Option<String>,
    verbose: bool,
}

fn usage() -> ExitCode {
    eprintln!("usage: autobahn-echo --backend HOST:PORT [--hub NAME] [--token TOKEN] [--verbose]");
    ExitCode::from(2)
}

fn parse_args() -> Option<Args> {
    let mut args = Args {
        backend: String::new(),
        hub: "autobahn".into(),
        token: None,
        verbose: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--backend" => args.backend = it.next()?,
            "--hub" => args.hub = it.next()?,
            "--token" => args.token = Some(it.next()?),
            "--verbose" => args.verbose = true,
            _ => return None,
        }
    }
    (!args.backend.is_empty()).then_some(args)
}

/// Adds the backend token, if any, to every call.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Api = GatewayClient<InterceptedService<Channel, Bearer>>;

#[tokio::main]
async fn main() -> ExitCode {
    let Some(args) = parse_args() else {
        return usage();
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("autobahn-echo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn connect(backend: &str) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("http://{backend}"))
        .map_err(|e| format!("bad backend address {backend:?}: {e}"))?
        .tcp_nodelay(true)
        .initial_connection_window_size(Some(MAX_GRPC_MESSAGE as u32))
        .initial_stream_window_size(Some(MAX_GRPC_MESSAGE as u32));
    let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
    loop {
        match endpoint.connect().await {
            Ok(ch) => return Ok(ch),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(format!("cannot reach the gateway at {backend}: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let channel = connect(&args.backend).await?;
    let bearer = match &args.token {
        Some(t) => Bearer(Some(
            format!("Bearer {t}")
                .parse()
                .map_err(|_| "the token is not valid metadata".to_owned())?,
        )),
        None => Bearer(None),
    };
    let api: Api = GatewayClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(MAX_GRPC_MESSAGE)
        .max_encoding_message_size(MAX_GRPC_MESSAGE);

    let mut events = api
        .clone()
        .subscribe(pb::SubscribeRequest {
            hub: args.hub.clone(),
            kinds: vec![pb::EventKind::Connected as i32],
            consumer_group: "autobahn-echo".into(),
        })
        .await
        .map_err(|s| format!("Subscribe failed: {s}"))?
        .into_inner();
    println!(
        "autobahn-echo ready hub={} backend={}",
        args.hub, args.backend
    );

    loop {
        let event = events
            .message()
            .await
            .map_err(|s| format!("the Subscribe stream failed: {s}"))?
            .ok_or_else(|| "the Subscribe stream ended".to_owned())?;
        if let Some(Ev::Connected(_)) = event.kind {
            let api = api.clone();
            let verbose = args.verbose;
            tokio::spawn(async move {
                let id = event.session_id;
                match echo(api, &id).await {
                    Ok(closed) if verbose => eprintln!("session {id}: {closed}"),
                    Ok(_) => {}
                    // A client that is already gone by the time it is attached to is no error.
                    Err(s) if s.code() == tonic::Code::NotFound => {}
                    Err(s) => eprintln!("autobahn-echo: session {id}: {s}"),
                }
            });
        }
    }
}

/// Attaches to one session and echoes its messages until it closes; says how it closed.
async fn echo(mut api: Api, id: &str) -> Result<String, Status> {
    let (tx, rx) = mpsc::channel(WRITES_IN_FLIGHT);
    tx.send(pb::AttachRequest {
        kind: Some(Req::Open(pb::AttachOpen {
            session_id: id.to_owned(),
            take_over: false,
            manual_ack: false,
        })),
    })
    .await
    .map_err(|_| Status::internal("request channel closed"))?;
    let mut responses = api.attach(ReceiverStream::new(rx)).await?.into_inner();
    while let Some(resp) = responses.message().await? {
        match resp.kind {
            Some(Resp::Message(pb::InboundMessage {
                message: Some(m), ..
            })) => {
                // Waits while the gateway is not taking writes: backpressure, not loss.
                if tx
                    .send(pb::AttachRequest {
                        kind: Some(Req::Write(m)),
                    })
                    .await
                    .is_err()
                {
                    return Err(Status::internal("request stream ended"));
                }
            }
            Some(Resp::Closed(c)) => {
                return Ok(format!(
                    "closed code={} reason={:?} by={:?}",
                    c.code,
                    c.reason,
                    c.closed_by()
                ))
            }
            Some(Resp::Attached(_) | Resp::Message(_) | Resp::Receipt(_)) | None => {}
        }
    }
    Ok("stream ended".into())
}
