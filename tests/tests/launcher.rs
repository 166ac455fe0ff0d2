//! The local multi-node launcher (`deploy/local/cluster`) starts Redis and nodes that work as
//! one system, and stops them all on SIGINT.

use std::process::Stdio;

use switchboard_proto::v1::{self as pb, gateway_client::GatewayClient};
use switchboard_tests::{gateway::gateway_bin, within, ws::Client};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};

#[tokio::test]
async fn the_launcher_starts_a_working_cluster_and_stops_it() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/local/cluster");
    let mut child = Command::new("bash")
        .args([script, "2"])
        .env("SWITCHBOARD_BIN", gateway_bin())
        .env("BASE_PORT", "0")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run the launcher");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut nodes = Vec::new();
    loop {
        let line = within("launcher output", lines.next_line())
            .await
            .unwrap()
            .expect("launcher ended early");
        if line.starts_with("ready") {
            break;
        }
        if line.starts_with("node-") {
            let ws = line
                .split_whitespace()
                .find(|w| w.starts_with("ws://"))
                .unwrap();
            let backend = line
                .split_whitespace()
                .find(|w| w.starts_with("http://"))
                .unwrap();
            nodes.push((ws.replace("{hub}", "h"), backend.to_owned()));
        }
    }
    assert_eq!(nodes.len(), 2);
    let mut c = Client::connect(&nodes[0].0).await;
    let mut api = GatewayClient::connect(nodes[1].1.clone()).await.unwrap();
    api.send(pb::SendRequest {
        session_id: c.id.clone(),
        message: Some(pb::Message {
            payload: Some(pb::message::Payload::Text("across nodes".into())),
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(c.text().await, "across nodes");

    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-s", "INT", &pid])
        .status()
        .unwrap()
        .success());
    let status = within("the launcher to stop", child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
    // Everything it started is gone: the node no longer accepts connections.
    let gone = Client::try_connect(&nodes[0].0, &[]).await;
    assert!(gone.is_err());
}
