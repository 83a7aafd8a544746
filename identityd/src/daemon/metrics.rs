//! Prometheus metrics of a node (`metricsAddress`, default port 9962): built from the same
//! status the local API serves, encoded with `prometheus-client`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::daemon::api::NodeStatus;
use crate::daemon::expo::{Exposition, Format, Kind, Labels};
use crate::daemon::telemetry::Telemetry;

#[allow(clippy::cast_precision_loss)]
fn f(v: u64) -> f64 {
    v as f64
}

/// The node's metrics for a status (and its request telemetry, when it has some).
#[must_use]
pub fn exposition(st: &NodeStatus, telemetry: Option<&Telemetry>) -> Exposition {
    let mut e = Exposition::new();
    let node = || vec![("node".to_owned(), st.node.clone())];
    let peer = |p: &str| -> Labels {
        vec![
            ("node".to_owned(), st.node.clone()),
            ("peer".to_owned(), p.to_owned()),
        ]
    };
    e.family(
        "identityd_wireguard_peers",
        "WireGuard peers of this node",
        Kind::Gauge,
    )
    .set(node(), f(st.peers.len() as u64));
    {
        let mut hs = e.family(
            "identityd_wireguard_handshake_age_seconds",
            "Seconds since the last handshake with a peer (-1: never)",
            Kind::Gauge,
        );
        for p in &st.peers {
            hs.set(peer(&p.name), p.handshake_age_secs.map_or(-1.0, f));
        }
    }
    for (name, help, rx) in [
        (
            "identityd_wireguard_received_bytes",
            "Bytes received from a peer (resets when the device restarts)",
            true,
        ),
        (
            "identityd_wireguard_sent_bytes",
            "Bytes sent to a peer (resets when the device restarts)",
            false,
        ),
    ] {
        let mut fam = e.family(name, help, Kind::Counter);
        for p in &st.peers {
            fam.set(peer(&p.name), f(if rx { p.rx_bytes } else { p.tx_bytes }));
        }
    }
    if !st.wireguard_counters.is_empty() {
        // The userspace device's handshake flood defence and drops (absent: kernel device).
        let c = |k: &str| {
            st.wireguard_counters
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| *v)
        };
        if let Some(v) = c("handshake_public_key_operations") {
            e.family(
                "identityd_wireguard_handshake_key_operations",
                "Handshake initiations that reached the public-key step (each costs X25519 work)",
                Kind::Counter,
            )
            .set(node(), f(v));
        }
        let refused: &[(&str, &str)] = &[
            ("invalid_mac", "handshake_invalid_mac"),
            ("cookie", "handshake_cookie_replies"),
            ("rate_limited", "handshake_rate_limited"),
        ];
        let dropped: &[(&str, &str)] = &[
            ("no_peer", "dropped_no_peer"),
            ("no_endpoint", "dropped_no_endpoint"),
            ("invalid", "dropped_invalid"),
            ("not_allowed", "dropped_not_allowed"),
            ("malformed", "dropped_malformed"),
        ];
        for (name, help, reasons) in [
            (
                "identityd_wireguard_handshakes_refused",
                "Handshake messages dropped before any public-key work: invalid_mac (mac1 wrong), cookie (under load, no valid mac2: a cookie reply was sent), rate_limited (under load, over the source's rate)",
                refused,
            ),
            (
                "identityd_wireguard_dropped_packets",
                "Packets the userspace device dropped: no_peer/no_endpoint (from the TUN, never sent in clear), invalid (from the network: no peer, bad MAC or decryption), not_allowed (source outside the peer's allowed IPs), malformed",
                dropped,
            ),
        ] {
            let mut fam = e.family(name, help, Kind::Counter);
            for (reason, key) in reasons {
                if let Some(v) = c(key) {
                    let mut l = node();
                    l.push(("reason".to_owned(), (*reason).to_owned()));
                    fam.set(l, f(v));
                }
            }
        }
        {
            let mut fam = e.family(
                "identityd_wireguard_offload",
                "1 for each I/O offload the userspace device runs with after probing: tun (TSO reads, coalesced writes), udp_gso, udp_gro",
                Kind::Gauge,
            );
            for feature in ["tun", "udp_gso", "udp_gro"] {
                if let Some(v) = c(&format!("offload_{feature}")) {
                    let mut l = node();
                    l.push(("feature".to_owned(), feature.to_owned()));
                    fam.set(l, f(v));
                }
            }
        }
        for (name, help, key) in [
            (
                "identityd_wireguard_udp_gso_sends",
                "UDP GSO sends of the userspace device (each carries several datagrams)",
                "udp_gso_sends",
            ),
            (
                "identityd_wireguard_udp_gro_receives",
                "UDP receives that returned several coalesced datagrams",
                "udp_gro_receives",
            ),
            (
                "identityd_wireguard_tun_coalesced_writes",
                "TUN writes that merged several received TCP segments",
                "tun_coalesced_writes",
            ),
        ] {
            if let Some(v) = c(key) {
                e.family(name, help, Kind::Counter).set(node(), f(v));
            }
        }
    }
    {
        let mut path = e.family(
            "identityd_peer_path",
            "1 for the path a peer's pod CIDRs take",
            Kind::Gauge,
        );
        for p in &st.peers {
            let mut l = peer(&p.name);
            l.push(("path".to_owned(), p.path.clone()));
            path.set(l, 1.0);
        }
    }
    for (name, help, packets) in [
        (
            "identityd_classifier_packets",
            "Packets per classifier path (drop = strict-mode drops)",
            true,
        ),
        (
            "identityd_classifier_bytes",
            "Bytes per classifier path",
            false,
        ),
    ] {
        let mut fam = e.family(name, help, Kind::Counter);
        for (path, (pk, by)) in &st.counters {
            fam.set(
                vec![
                    ("node".to_owned(), st.node.clone()),
                    ("path".to_owned(), path.clone()),
                ],
                f(if packets { *pk } else { *by }),
            );
        }
    }
    {
        let mut exp = e.family(
            "identityd_svid_expiry_seconds",
            "Seconds until a workload SVID expires",
            Kind::Gauge,
        );
        for (id, left) in &st.svids {
            exp.set(
                vec![
                    ("node".to_owned(), st.node.clone()),
                    ("spiffe_id".to_owned(), id.clone()),
                ],
                f(*left),
            );
        }
    }
    e.family(
        "identityd_xds_nacked_types",
        "Resource types whose latest version Envoy NACKed",
        Kind::Gauge,
    )
    .set(
        node(),
        f(st.xds.iter().filter(|x| x.contains("NACK")).count() as u64),
    );
    e.family(
        "identityd_envoy_restarts",
        "Envoy restarts by the daemon",
        Kind::Counter,
    )
    .set(node(), f(u64::from(st.envoy_restarts)));
    e.family(
        "identityd_wireguard_device_restarts",
        "Restarts of the WireGuard device process by the daemon, after it died",
        Kind::Counter,
    )
    .set(node(), f(st.wireguard_device_restarts));
    e.family(
        "identityd_problems",
        "Problems in the cluster state or the plan",
        Kind::Gauge,
    )
    .set(node(), f(st.problems.len() as u64));
    if let Some(t) = telemetry {
        t.export(&mut e);
    }
    e
}

/// The metrics text for a status, classic format.
#[must_use]
pub fn render(st: &NodeStatus) -> String {
    exposition(st, None).render(Format::Classic)
}

/// The request line and the `Accept` header of an HTTP request head.
#[must_use]
pub fn request_head(head: &str) -> (Option<&str>, Option<&str>) {
    let mut lines = head.split("\r\n");
    let path = lines.next().and_then(|l| l.split_whitespace().nth(1));
    let accept = lines.take_while(|l| !l.is_empty()).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("accept").then(|| v.trim())
    });
    (path, accept)
}

/// Serves `GET /metrics` on `addr` until aborted, rendering `body` per request in the format
/// the scraper's `Accept` asks for.
pub async fn serve_with<F>(addr: SocketAddr, body: F)
where
    F: Fn(Format) -> String + Send + Sync + 'static,
{
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "metrics endpoint");
            return;
        }
    };
    let body = Arc::new(body);
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let body = Arc::clone(&body);
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            let mut tmp = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                match tokio::time::timeout(std::time::Duration::from_secs(2), s.read(&mut tmp))
                    .await
                {
                    Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&tmp[..n]),
                    _ => break,
                }
            }
            let head = String::from_utf8_lossy(&buf);
            let (path, accept) = request_head(&head);
            let resp = match path {
                Some("/metrics" | "/") => {
                    let format = Format::from_accept(accept);
                    let text = body(format);
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                        format.content_type(),
                        text.len()
                    )
                }
                _ => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    .to_owned(),
            };
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}

/// Serves the node's metrics on `addr` until aborted.
pub async fn serve(addr: SocketAddr, status: Arc<Mutex<NodeStatus>>, telemetry: Telemetry) {
    serve_with(addr, move |format| {
        let st = status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        exposition(&st, Some(&telemetry)).render(format)
    })
    .await;
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
            wireguard_counters: vec![
                ("handshake_invalid_mac".into(), 7),
                ("handshake_rate_limited".into(), 2),
                ("handshake_public_key_operations".into(), 4),
                ("dropped_invalid".into(), 9),
            ],
            ..NodeStatus::default()
        };
        let t = render(&st);
        for want in [
            "identityd_wireguard_handshakes_refused_total{node=\"n1\",reason=\"invalid_mac\"} 7",
            "identityd_wireguard_handshakes_refused_total{node=\"n1\",reason=\"rate_limited\"} 2",
            "identityd_wireguard_handshake_key_operations_total{node=\"n1\"} 4",
            "identityd_wireguard_dropped_packets_total{node=\"n1\",reason=\"invalid\"} 9",
        ] {
            assert!(t.contains(want), "{want} in {t}");
        }
        // Kernel device: no such counters, no such series.
        let kernel = render(&NodeStatus::default());
        assert!(!kernel.contains("handshakes_refused"), "{kernel}");
        assert!(
            t.contains("identityd_wireguard_handshake_age_seconds{node=\"n1\",peer=\"n2\"} 3"),
            "{t}"
        );
        assert!(
            t.contains("identityd_classifier_packets_total{node=\"n1\",path=\"drop\"} 5"),
            "{t}"
        );
        assert!(
            t.contains("# TYPE identityd_classifier_packets_total counter"),
            "{t}"
        );
        assert!(t.contains("identityd_svid_expiry_seconds{node=\"n1\",spiffe_id=\"spiffe://cluster.local/ns/shop/sa/web\"} 3500"), "{t}");
        assert!(!t.contains("# EOF"), "{t}");
        let om = exposition(&st, None).render(Format::OpenMetrics);
        assert!(
            om.contains("# TYPE identityd_classifier_packets counter"),
            "{om}"
        );
        assert!(om.ends_with("# EOF\n"), "{om}");
    }
}

#[cfg(test)]
mod dashboard {
    use crate::daemon::telemetry::Telemetry;
    use identityd_envoy::telemetry::{AccessRecord, Direction, RecordKind};

    /// The Grafana dashboard (`charts/identityd/dashboards/`) queries only exported series.
    #[test]
    fn dashboard_uses_exported_metrics() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/identityd/dashboards/identityd.json"
        );
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let t = Telemetry::new("n");
        t.ingest_at(
            vec![
                AccessRecord {
                    direction: Some(Direction::Outbound),
                    kind: Some(RecordKind::Http),
                    status: 200,
                    ..Default::default()
                },
                AccessRecord {
                    direction: Some(Direction::Outbound),
                    kind: Some(RecordKind::Tcp),
                    ..Default::default()
                },
            ],
            100,
        );
        let mut names = super::exposition(
            &crate::daemon::api::NodeStatus {
                node: "n".into(),
                peers: vec![crate::daemon::api::PeerStatus {
                    name: "p".into(),
                    ..Default::default()
                }],
                counters: vec![("drop".into(), (0, 0))],
                svids: vec![("spiffe://td/x".into(), 1)],
                ..Default::default()
            },
            Some(&t),
        )
        .series_names();
        // The CA role's panels query the CA's own endpoint.
        let now = std::time::SystemTime::now();
        names.extend(
            crate::daemon::ca::exposition(
                &identityd_certs::service::Counters::default().snapshot(),
                now,
                "",
                now,
            )
            .series_names(),
        );
        let mut n = 0;
        for p in dash["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if word.starts_with("identityd_") {
                        n += 1;
                        assert!(
                            names.iter().any(|s| s == word),
                            "{word} is not exported (exported: {names:?})"
                        );
                    }
                }
            }
        }
        assert!(n >= 12, "the dashboard queries identityd metrics ({n})");
    }
}
