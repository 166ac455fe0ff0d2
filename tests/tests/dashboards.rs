//! The Grafana dashboard and the alert rules in `deploy/` are built on metrics the gateway
//! really exposes: every metric name they use is a family in a live node's `/metrics`.

use std::{collections::BTreeSet, path::PathBuf};

use switchboard_proto::v1 as pb;
use switchboard_tests::{gateway::Gateway, redis::Redis, within};

/// Metric families named in `# TYPE` lines (listed even before a first sample).
fn families(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Metric names in PromQL text: identifiers starting with one of the gateway's prefixes.
fn referenced(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for prefix in ["switchboard_", "process_"] {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let boundary = rest[..at]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if boundary {
                out.insert(name.clone());
            }
            rest = &rest[at + name.len()..];
        }
    }
    out
}

/// The family a sample name belongs to (`_total` of counters, `_bucket` … of histograms).
fn family_of<'a>(name: &'a str, families: &BTreeSet<String>) -> Option<&'a str> {
    if families.contains(name) {
        return Some(name);
    }
    ["_total", "_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|s| name.strip_suffix(s))
        .find(|base| families.contains(*base))
}

fn deploy_file(path: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

#[tokio::test]
async fn dashboards_and_alerts_use_only_metrics_the_gateway_exposes() {
    // A cluster node, so the registry's metrics are there too; families with labels appear
    // once they have a sample, so the node first sees one of everything the files chart.
    let redis = Redis::start().await;
    let url = redis.url();
    let gw = Gateway::start(&["--redis-url", &url]).await;
    let mut api = gw.api().await;
    let mut events = api
        .subscribe(pb::SubscribeRequest {
            hub: "h".into(),
            kinds: vec![pb::EventKind::Connected as i32],
            consumer_group: "g".into(),
        })
        .await
        .expect("subscribe")
        .into_inner();
    let client = gw.connect("h").await;
    within("the connected event", events.message())
        .await
        .expect("event stream")
        .expect("an event");
    client.close(1000, "bye").await;
    assert_eq!(gw.http_get("/ws/h").await.0, 426);
    // A Redis that does not answer: one failed round trip.
    redis.pause();
    let stalled = api
        .get_session(pb::GetSessionRequest {
            session_id: "AAAAAAAAAAAAAAAAAAAAAA".into(),
        })
        .await;
    redis.resume();
    assert!(stalled.is_err(), "{stalled:?}");

    let (status, body) = gw.http_get("/metrics").await;
    assert_eq!(status, 200);
    let have = families(&body);
    for file in ["grafana/switchboard.json", "prometheus/alerts.yaml"] {
        let used = referenced(&deploy_file(file));
        assert!(!used.is_empty(), "{file} names no metric");
        let unknown: Vec<&String> = used
            .iter()
            .filter(|n| family_of(n, &have).is_none())
            .collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics the gateway does not expose: {unknown:?}\nfamilies: {have:?}"
        );
    }
}
