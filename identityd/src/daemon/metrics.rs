//! Prometheus metrics of a node (`metricsAddress`, default port 9962): built from the same
//! status the local API serves, encoded with `prometheus-client`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::daemon::api::NodeStatus;

type Labels = Vec<(String, String)>;

fn family(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge<i64>> {
    let f = Family::<Labels, Gauge<i64>>::default();
    reg.register(name, help, f.clone());
    f
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The metrics text for a status.
#[must_use]
pub fn render(st: &NodeStatus) -> String {
    let mut reg = Registry::with_prefix("identityd");
    let node = || vec![("node".to_owned(), st.node.clone())];
    let peers = family(&mut reg, "wireguard_peers", "WireGuard peers of this node");
    peers.get_or_create(&node()).set(i(st.peers.len() as u64));
    let hs = family(
        &mut reg,
        "wireguard_handshake_age_seconds",
        "Seconds since the last handshake with a peer (-1: never)",
    );
    let rx = family(&mut reg, "wireguard_rx_bytes", "Bytes received from a peer");
    let tx = family(&mut reg, "wireguard_tx_bytes", "Bytes sent to a peer");
    let path = family(
        &mut reg,
        "peer_path",
        "1 for the path a peer's pod CIDRs take",
    );
    for p in &st.peers {
        let l = vec![
            ("node".to_owned(), st.node.clone()),
            ("peer".to_owned(), p.name.clone()),
        ];
        hs.get_or_create(&l).set(p.handshake_age_secs.map_or(-1, i));
        rx.get_or_create(&l).set(i(p.rx_bytes));
        tx.get_or_create(&l).set(i(p.tx_bytes));
        let mut lp = l.clone();
        lp.push(("path".to_owned(), p.path.clone()));
        path.get_or_create(&lp).set(1);
    }
    let pk = family(
        &mut reg,
        "classifier_packets",
        "Packets per classifier path (drop = strict-mode drops)",
    );
    let by = family(&mut reg, "classifier_bytes", "Bytes per classifier path");
    for (name, (packets, bytes)) in &st.counters {
        let l = vec![
            ("node".to_owned(), st.node.clone()),
            ("path".to_owned(), name.clone()),
        ];
        pk.get_or_create(&l).set(i(*packets));
        by.get_or_create(&l).set(i(*bytes));
    }
    let exp = family(
        &mut reg,
        "svid_expiry_seconds",
        "Seconds until a workload SVID expires",
    );
    for (id, left) in &st.svids {
        exp.get_or_create(&vec![
            ("node".to_owned(), st.node.clone()),
            ("spiffe_id".to_owned(), id.clone()),
        ])
        .set(i(*left));
    }
    let nacks = family(
        &mut reg,
        "xds_nacked_types",
        "Resource types whose latest version Envoy NACKed",
    );
    nacks.get_or_create(&node()).set(i(
        st.xds.iter().filter(|x| x.contains("NACK")).count() as u64
    ));
    let restarts = family(&mut reg, "envoy_restarts", "Envoy restarts by the daemon");
    restarts
        .get_or_create(&node())
        .set(i64::from(st.envoy_restarts));
    let problems = family(
        &mut reg,
        "problems",
        "Problems in the cluster state or the plan",
    );
    problems
        .get_or_create(&node())
        .set(i(st.problems.len() as u64));
    let mut out = String::new();
    let _ = encode(&mut out, &reg);
    out
}

/// Serves `GET /metrics` on `addr` until aborted.
pub async fn serve(addr: SocketAddr, status: Arc<Mutex<NodeStatus>>) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "metrics endpoint");
            return;
        }
    };
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let body = render(
            &status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), s.read(&mut buf)).await;
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::api::PeerStatus;

    #[test]
    fn renders_prometheus_text() {
        let st = NodeStatus {
            node: "n1".into(),
            peers: vec![PeerStatus {
                name: "n2".into(),
                path: "wireguard".into(),
                handshake_age_secs: Some(3),
                rx_bytes: 10,
                tx_bytes: 20,
                endpoint: None,
            }],
            counters: vec![("drop".into(), (5, 500))],
            svids: vec![("spiffe://cluster.local/ns/shop/sa/web".into(), 3500)],
            ..NodeStatus::default()
        };
        let t = render(&st);
        assert!(
            t.contains("identityd_wireguard_handshake_age_seconds{node=\"n1\",peer=\"n2\"} 3"),
            "{t}"
        );
        assert!(
            t.contains("identityd_classifier_packets{node=\"n1\",path=\"drop\"} 5"),
            "{t}"
        );
        assert!(t.contains("identityd_svid_expiry_seconds{node=\"n1\",spiffe_id=\"spiffe://cluster.local/ns/shop/sa/web\"} 3500"), "{t}");
        assert!(t.ends_with("# EOF\n"), "{t}");
    }
}

#[cfg(test)]
mod dashboard {
    /// The Grafana dashboard (`charts/identityd/dashboards/`) queries only exported metrics.
    #[test]
    fn dashboard_uses_exported_metrics() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/identityd/dashboards/identityd.json"
        );
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let full = super::render(&crate::daemon::api::NodeStatus {
            node: "n".into(),
            peers: vec![crate::daemon::api::PeerStatus {
                name: "p".into(),
                ..Default::default()
            }],
            counters: vec![("drop".into(), (0, 0))],
            svids: vec![("spiffe://td/x".into(), 1)],
            ..Default::default()
        });
        let mut n = 0;
        for p in dash["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if word.starts_with("identityd_") {
                        n += 1;
                        assert!(
                            full.contains(&format!("{word}{{"))
                                || full.contains(&format!("{word} ")),
                            "{word} is not exported"
                        );
                    }
                }
            }
        }
        assert!(n >= 8, "the dashboard queries identityd metrics ({n})");
    }
}
