//! WebSockets over TLS against a real gateway: TLS 1.3 sessions, whose records the gateway
//! seals and opens itself once upgraded, carry messages of every size both ways; TLS 1.2
//! sessions stay with rustls; a client's key update ends its own connection and nothing else;
//! and a client on another TLS implementation (Node's OpenSSL) talks to the same record layer.

use std::time::Duration;

use futures_util::SinkExt;
use switchboard_proto::v1::{self as pb, message::Payload, read_response};
use switchboard_tests::{
    gateway::{Api, Gateway},
    pki::Pki,
    script::Script,
    within,
    ws::{Client, Seen},
};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream};

struct Tls {
    gw: Gateway,
    pki: Pki,
    url: String,
}

async fn tls_gateway() -> Tls {
    let pki = Pki::new("test CA");
    let server = pki.server("server");
    let s = |p: &std::path::Path| p.display().to_string();
    let gw = Gateway::start(&["--tls-cert", &s(&server.cert), "--tls-key", &s(&server.key)]).await;
    let url = format!("wss://localhost:{}/ws/h", gw.client_addr.port());
    Tls { gw, pki, url }
}

/// Byte `i` is `(i * 31 + salt) % 251` (the Node client builds and checks the same).
fn payload(len: usize, salt: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + salt) % 251) as u8).collect()
}

async fn read_binary(api: &mut Api, id: &str) -> Vec<u8> {
    let r = api
        .read(pb::ReadRequest {
            session_id: id.into(),
            timeout: Some(prost_types::Duration {
                seconds: 10,
                nanos: 0,
            }),
            ack: None,
        })
        .await
        .expect("read")
        .into_inner();
    match r.result {
        Some(read_response::Result::Message(m)) => match m.message.and_then(|m| m.payload) {
            Some(Payload::Binary(b)) => b.to_vec(),
            other => panic!("expected binary, got {other:?}"),
        },
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Sizes around a TLS record (16 KiB of plaintext) and past what one write seals (64 KiB).
const SIZES: [usize; 8] = [0, 1, 125, 16_383, 16_384, 16_385, 65_539, 300_017];

async fn both_ways(api: &mut Api, c: &mut Client) {
    for (k, len) in SIZES.into_iter().enumerate() {
        let down = payload(len, k);
        api.send(pb::SendRequest {
            session_id: c.id.clone(),
            message: Some(pb::Message {
                payload: Some(Payload::Binary(down.clone().into())),
            }),
            ..Default::default()
        })
        .await
        .expect("send");
        assert!(c.next().await == Seen::Binary(down), "{len} bytes down");
        let up = payload(len, k + 1);
        c.send_binary(&up).await;
        assert!(read_binary(api, &c.id).await == up, "{len} bytes up");
    }
}

#[tokio::test]
async fn tls_1_3_and_tls_1_2_sessions_carry_messages_of_every_size_both_ways() {
    let t = tls_gateway().await;
    let mut api = t.gw.api().await;
    let mut v13 = Client::connect_tls_versions(&t.url, &t.pki.ca_pem, &[&rustls::version::TLS13])
        .await
        .unwrap();
    let mut v12 = Client::connect_tls_versions(&t.url, &t.pki.ca_pem, &[&rustls::version::TLS12])
        .await
        .unwrap();
    // Who protects each session's records (counted as the session starts, right after the
    // 101 the client has seen).
    within("both sessions counted", async {
        loop {
            let mut by = Vec::new();
            for records in ["gateway", "rustls"] {
                let name = format!("switchboard_tls_sessions_total{{records=\"{records}\"}}");
                by.push(t.gw.metric(&name).await);
            }
            // TLS 1.3 out of rustls, TLS 1.2 with it.
            if by == [Some(1.0), Some(1.0)] {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    both_ways(&mut api, &mut v13).await;
    both_ways(&mut api, &mut v12).await;
    // A burst of small messages, written in batches.
    for i in 0..500 {
        api.send(pb::SendRequest {
            session_id: v13.id.clone(),
            message: Some(pb::Message {
                payload: Some(Payload::Text(format!("m{i}"))),
            }),
            ..Default::default()
        })
        .await
        .expect("send");
    }
    for i in 0..500 {
        assert_eq!(v13.text().await, format!("m{i}"));
    }
    v13.close(1000, "done").await;
    v12.close(1000, "done").await;
}

#[tokio::test]
async fn a_client_key_update_ends_its_own_connection_and_no_other() {
    let t = tls_gateway().await;
    let mut api = t.gw.api().await;
    let mut other = Client::connect_tls(&t.url, &t.pki.ca_pem).await.unwrap();
    let mut c = Client::connect_tls(&t.url, &t.pki.ca_pem).await.unwrap();
    match c.ws.get_mut() {
        MaybeTlsStream::Rustls(tls) => tls.get_mut().1.refresh_traffic_keys().unwrap(),
        _ => panic!("not a TLS stream"),
    }
    // The key update goes out with the next record.
    let _ = within("send", c.ws.send(Message::text("after the key update"))).await;
    // The gateway cannot follow it: the connection ends (a close frame, then the end).
    let end = within("the connection to end", async {
        loop {
            match c.next().await {
                Seen::Close(code, _) => return Some(code),
                Seen::Eof => return None,
                _ => continue,
            }
        }
    })
    .await;
    assert_ne!(end, Some(1000), "not a normal close");
    let gone = within("the session to end", async {
        loop {
            let r = api
                .get_session(pb::GetSessionRequest {
                    session_id: c.id.clone(),
                })
                .await;
            if r.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    gone.await;
    // The other session goes on.
    both_ways(&mut api, &mut other).await;
    other.close(1000, "done").await;
}

#[tokio::test]
async fn an_openssl_client_speaks_to_the_gateway_s_own_tls_1_3_records() {
    let t = tls_gateway().await;
    let mut api = t.gw.api().await;
    let ca = t.pki.ca_path();
    let sizes = [1usize, 16_385, 70_000];
    let list: Vec<String> = sizes.iter().map(usize::to_string).collect();
    let port = t.gw.client_addr.port().to_string();
    let list = list.join(",");
    let mut node = Script::spawn(
        "openssl_client.mjs",
        &[port.as_ref(), ca.as_os_str(), list.as_ref()],
        &[],
    );
    let session = node.line().await;
    let id = session
        .strip_prefix("session ")
        .expect("a session")
        .to_owned();
    assert_eq!(node.line().await, "protocol TLSv1.3");
    // What it sent, in order and intact.
    for (k, len) in sizes.into_iter().enumerate() {
        assert!(
            read_binary(&mut api, &id).await == payload(len, k),
            "{len} bytes up"
        );
    }
    // What it gets.
    for (k, len) in [5usize, 16_385, 100_000].into_iter().enumerate() {
        api.send(pb::SendRequest {
            session_id: id.clone(),
            message: Some(pb::Message {
                payload: Some(Payload::Binary(payload(len, 100 + k).into())),
            }),
            ..Default::default()
        })
        .await
        .expect("send");
        assert_eq!(node.line().await, format!("got {len} ok"));
    }
    node.stdin
        .write_all(b"close\n")
        .await
        .expect("tell it to close");
    assert_eq!(node.line().await, "closed 1000");
}
