//! A node's bounded live-state summary ([`NodeReport`]) and when to write it.
//!
//! [`summarise`] is pure: the node daemon runs it on its own status and cluster state and
//! writes the result as its `IdentitydNodeReport`; `identityd audit --source` runs the same
//! function on each daemon's status, so the live checks have one implementation over one
//! shape ([`crate::audit::report_checks`]), whether the statuses were fetched from the daemons
//! or the summaries read from the API server.
//!
//! [`ReportThrottle`] keeps the API quiet: a report is written when a summarised value
//! changes (counters only when their order of magnitude does, the cluster version never on
//! its own), at most every `minInterval`, and at least every `heartbeat` so that an old
//! report means a stopped daemon.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use identityd_certs::inspect::rfc3339;

use crate::daemon::api::NodeStatus;
use crate::model::report::{
    BundleSummary, Examples, NodeReport, PathCount, PeerProblem, PeerSummary, SvidSummary,
};
use crate::model::{ClusterState, MtlsMode};

/// The classifier paths whose packet counts a report carries.
pub const REPORTED_PATHS: [&str; 2] = ["drop", "plaintext"];

/// Thresholds and sizes of a summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SummaryLimits {
    /// Named examples per list (the daemon: [`crate::model::report::REPORT_MAX_ITEMS`]; the
    /// auditor summarising statuses it fetched: all).
    pub max_items: usize,
    /// A peer counts as recent with a handshake at most this old.
    pub handshake_max_age_secs: u64,
    /// SVIDs expiring sooner are listed as expiring.
    pub svid_min_lifetime_secs: u64,
}

impl Default for SummaryLimits {
    fn default() -> Self {
        Self {
            max_items: crate::model::report::REPORT_MAX_ITEMS,
            handshake_max_age_secs: 180,
            svid_min_lifetime_secs: 600,
        }
    }
}

fn at(now: SystemTime, secs_ago: u64) -> String {
    rfc3339(
        now.checked_sub(Duration::from_secs(secs_ago))
            .unwrap_or(now),
    )
}

fn after(now: SystemTime, secs: u64) -> String {
    rfc3339(now + Duration::from_secs(secs))
}

/// The summary of `status` (node `status.node`) against `state`, at `now`. Peers are expected
/// for every other IdentitydNode of `state`; strict workloads are the state's pods on this node.
#[must_use]
pub fn summarise(
    status: &NodeStatus,
    state: &ClusterState,
    trust_domain: &str,
    limits: &SummaryLimits,
    now: SystemTime,
) -> NodeReport {
    let node = status.node.as_str();
    let n = limits.max_items;

    // Peers: one problem per other node without a recent WireGuard path, oldest first
    // (no peer and no handshake are "oldest").
    let expected: BTreeSet<&str> = state
        .nodes
        .keys()
        .map(String::as_str)
        .filter(|k| *k != node)
        .collect();
    let mut problems: Vec<(u64, PeerProblem)> = Vec::new();
    let mut recent = 0_u64;
    for other in &expected {
        let p = status.peers.iter().find(|p| p.name == *other);
        let problem = match p {
            None => Some((u64::MAX, "no peer".to_owned(), None)),
            Some(p) if p.path != "wireguard" => Some((
                u64::MAX - 1,
                format!("path {}", p.path),
                p.handshake_age_secs,
            )),
            Some(p) => match p.handshake_age_secs {
                None => Some((u64::MAX - 2, "no handshake".to_owned(), None)),
                Some(a) if a > limits.handshake_max_age_secs => {
                    Some((a, format!("handshake {a}s ago"), Some(a)))
                }
                Some(_) => None,
            },
        };
        match problem {
            None => recent += 1,
            Some((rank, problem, age)) => problems.push((
                rank,
                PeerProblem {
                    name: (*other).to_owned(),
                    problem,
                    last_handshake: age.map(|a| at(now, a)),
                },
            )),
        }
    }
    problems.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.name.cmp(&b.1.name)));
    let unhealthy = problems.len() as u64;
    let peers = PeerSummary {
        expected: expected.len() as u64,
        recent,
        handshake_max_age_secs: limits.handshake_max_age_secs,
        unhealthy,
        worst: problems.into_iter().take(n).map(|(_, p)| p).collect(),
    };

    // SVIDs, and the strict workloads of this node that lack theirs.
    let earliest = status.svids.iter().min_by_key(|(_, left)| *left);
    let expiring = Examples::of(
        status
            .svids
            .iter()
            .filter(|(_, left)| *left < limits.svid_min_lifetime_secs)
            .map(|(id, left)| format!("{id} expires in {left}s (at {})", after(now, *left))),
        n,
    );
    let strict_here = || {
        state.pods.values().filter(move |p| {
            p.spec.node_name.as_deref() == Some(node)
                && state.pod_mtls(p, MtlsMode::Disabled) == MtlsMode::Strict
        })
    };
    let missing = Examples::of(
        strict_here().filter_map(|pod| {
            let id = format!(
                "spiffe://{trust_domain}/ns/{}/sa/{}",
                pod.namespace(),
                pod.service_account()
            );
            (!status.svids.iter().any(|(i, _)| *i == id))
                .then(|| format!("{}/{}: no SVID {id}", pod.namespace(), pod.metadata.name))
        }),
        n,
    );
    let backed = state.services_with_endpoints();
    let served = || {
        strict_here()
            .filter(|pod| pod.ip().is_some())
            .filter(|pod| {
                backed.iter().any(|se| {
                    se.endpoints.iter().any(|e| {
                        e.pod.metadata.name == pod.metadata.name
                            && e.pod.namespace() == pod.namespace()
                    })
                })
            })
    };
    let inbound_missing = Examples::of(
        served().filter_map(|pod| {
            let key = format!("{}/{}", pod.namespace(), pod.metadata.name);
            (!status.inbound_workloads.contains(&key))
                .then(|| format!("{key}: no inbound mTLS listener"))
        }),
        n,
    );
    NodeReport {
        reported_at: rfc3339(now),
        encryption_mode: status.encryption_mode.clone(),
        strict_mode: status.strict_mode,
        ingress_strict_in_place: status.ingress_strict_in_place,
        ingress_strict_problem: status.ingress_strict_problem.clone(),
        cluster_version: status.cluster_version,
        peers,
        // The paths that mean something is wrong; traffic on the encrypted ones is telemetry,
        // not audit state, and would make every report change all the time.
        packets: status
            .counters
            .iter()
            .filter(|(path, _)| REPORTED_PATHS.contains(&path.as_str()))
            .map(|(path, (p, _))| PathCount {
                path: path.clone(),
                packets: *p,
            })
            .collect(),
        svids: SvidSummary {
            count: status.svids.len() as u64,
            earliest_expiry: earliest.map(|(_, left)| after(now, *left)),
            earliest_id: earliest.map(|(id, _)| id.clone()),
            expiring,
            min_lifetime_secs: limits.svid_min_lifetime_secs,
            missing,
        },
        strict_workloads: strict_here().count() as u64,
        strict_served: served().count() as u64,
        inbound_missing,
        bundle: BundleSummary {
            roots: status.bundle_roots.len() as u64,
            earliest_expiry: status.bundle_roots.iter().min().map(|l| after(now, *l)),
        },
        key_created_at: status.key_age_secs.map(|a| at(now, a)),
        envoy_ready: status.envoy_ready,
        xds_nacks: Examples::of(status.xds.iter().filter(|x| x.contains("NACK")).cloned(), n),
        unverified_nodes: status
            .unverified_nodes
            .as_ref()
            .map(|u| Examples::of(u.iter().cloned(), n)),
        allow_from: status.allow_from.iter().take(n).cloned().collect(),
        network_policy_digest: status
            .network_policy
            .as_ref()
            .and_then(|p| p.digest.clone()),
        network_policy_drops: status
            .network_policy
            .as_ref()
            .map_or(0, |p| p.drops.iter().map(|d| d.2).sum()),
    }
}

/// What decides a write: the report without its timestamp and cluster version, with each
/// counter reduced to its order of magnitude (a steady trickle of drops is one write per
/// doubling, not one per packet).
fn fingerprint(r: &NodeReport) -> NodeReport {
    let mut f = r.clone();
    f.reported_at.clear();
    f.cluster_version = 0;
    for c in &mut f.packets {
        c.packets = u64::from(u64::BITS - c.packets.leading_zeros());
    }
    f.network_policy_drops = u64::from(u64::BITS - f.network_policy_drops.leading_zeros());
    // Expiries move on every renewal; what matters is whether something is expiring, which
    // `expiring` and the bundle's root count say.
    f.svids.earliest_expiry = None;
    f.svids.earliest_id = None;
    f.svids.expiring.items.clear();
    f.bundle.earliest_expiry = None;
    f
}

/// When a node writes its report. Times are seconds on a monotonic clock.
#[derive(Debug, Clone)]
pub struct ReportThrottle {
    /// At most one write per this many seconds.
    pub min_interval_secs: u64,
    /// At least one write per this many seconds, changed or not.
    pub heartbeat_secs: u64,
    last: Option<(u64, NodeReport)>,
}

impl ReportThrottle {
    /// A throttle that has written nothing yet.
    #[must_use]
    pub fn new(min_interval_secs: u64, heartbeat_secs: u64) -> Self {
        Self {
            min_interval_secs,
            heartbeat_secs,
            last: None,
        }
    }

    /// Whether `report` should be written at `now` (the first report always is).
    #[must_use]
    pub fn due(&self, now: u64, report: &NodeReport) -> bool {
        match &self.last {
            None => true,
            Some((t, last)) => {
                let since = now.saturating_sub(*t);
                since >= self.heartbeat_secs
                    || (since >= self.min_interval_secs && fingerprint(report) != *last)
            }
        }
    }

    /// Records that `report` was written at `now`.
    pub fn written(&mut self, now: u64, report: &NodeReport) {
        self.last = Some((now, fingerprint(report)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::api::PeerStatus;

    fn state(nodes: usize) -> ClusterState {
        let objs: Vec<_> = (0..nodes)
            .map(|i| {
                crate::model::Object::IdentitydNode(crate::model::IdentitydNode::new(
                    format!("n{i}"),
                    crate::model::IdentitydNodeSpec {
                        pod_cidrs: vec![format!("10.{}.{}.0/24", 10 + i / 256, i % 256)],
                        underlay_addresses: vec![format!("192.0.{}.{}", i / 250, 1 + i % 250)],
                        ..Default::default()
                    },
                ))
            })
            .collect();
        ClusterState::from_objects(1, objs)
    }

    fn status(nodes: usize, stale: &[usize]) -> NodeStatus {
        NodeStatus {
            node: "n0".into(),
            encryption_mode: "wireguard".into(),
            strict_mode: true,
            ingress_strict_in_place: true,
            peers: (1..nodes)
                .map(|i| PeerStatus {
                    name: format!("n{i}"),
                    path: "wireguard".into(),
                    handshake_age_secs: Some(if stale.contains(&i) {
                        900 + i as u64
                    } else {
                        30
                    }),
                    ..Default::default()
                })
                .collect(),
            counters: vec![("wireguard".into(), (1000, 100_000))],
            ..Default::default()
        }
    }

    #[test]
    fn a_report_stays_small_at_5000_nodes() {
        let st = state(5000);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let stale: Vec<usize> = (1..5000).step_by(7).collect();
        let r = summarise(
            &status(5000, &stale),
            &st,
            "cluster.local",
            &SummaryLimits::default(),
            now,
        );
        assert_eq!(r.peers.expected, 4999);
        assert_eq!(r.peers.unhealthy, stale.len() as u64);
        assert_eq!(r.peers.recent, 4999 - stale.len() as u64);
        assert_eq!(r.peers.worst.len(), 5);
        // The oldest handshake first.
        assert_eq!(
            r.peers.worst[0].name,
            format!("n{}", stale[stale.len() - 1])
        );
        let bytes = serde_json::to_vec(&r).unwrap().len();
        println!("report of a node with 4999 peers, 715 unhealthy: {bytes} bytes");
        assert!(bytes < 2048, "{bytes}");
    }

    #[test]
    fn the_throttle_writes_on_change_heartbeat_and_never_more_than_the_interval() {
        let st = state(10);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let l = SummaryLimits::default();
        let mut t = ReportThrottle::new(30, 300);
        let mut s = status(10, &[]);
        let r = summarise(&s, &st, "cluster.local", &l, now);
        assert!(t.due(0, &r));
        t.written(0, &r);
        // Counters ticking within their order of magnitude and a new cluster version: quiet.
        s.counters = vec![("wireguard".into(), (1020, 102_000))];
        s.cluster_version = 9;
        let r = summarise(&s, &st, "cluster.local", &l, now);
        assert!(!t.due(100, &r));
        // A peer going stale: written, but not before the minimum interval.
        let s2 = status(10, &[3]);
        let r2 = summarise(&s2, &st, "cluster.local", &l, now);
        assert!(!t.due(10, &r2));
        assert!(t.due(30, &r2));
        t.written(30, &r2);
        assert!(!t.due(200, &r2));
        assert!(t.due(330, &r2), "heartbeat");
    }

    /// Writes per second across a 5,000-node cluster over a simulated hour: every node's
    /// traffic counters tick, the cluster version changes every 10 s, a tenth of the nodes
    /// drop a steady 50 packets/s, and 1% of the nodes flap a peer every 5 minutes.
    #[test]
    fn a_5000_node_cluster_stays_quiet() {
        let nodes = 5000_usize;
        let st = state(12);
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let l = SummaryLimits::default();
        let mut throttles: Vec<ReportThrottle> =
            (0..nodes).map(|_| ReportThrottle::new(30, 300)).collect();
        let mut writes = 0_u64;
        let hour = 3600_u64;
        for sec in (0..hour).step_by(10) {
            // The four kinds of node at this instant (flapping × dropping).
            let reports: Vec<NodeReport> = (0..4)
                .map(|k| {
                    let flapping = k & 1 == 1 && (sec / 300) % 2 == 1;
                    let mut s = status(12, if flapping { &[2] } else { &[] });
                    s.cluster_version = sec;
                    s.counters = vec![("wireguard".into(), (1000 + sec * 5000, 0))];
                    if k & 2 == 2 {
                        s.counters.push(("drop".into(), (sec * 50, 0)));
                    }
                    summarise(
                        &s,
                        &st,
                        "cluster.local",
                        &l,
                        base + Duration::from_secs(sec),
                    )
                })
                .collect();
            for (i, t) in throttles.iter_mut().enumerate() {
                let k = usize::from(i % 100 == 0) | (usize::from(i % 10 == 1) << 1);
                let r = &reports[k];
                if t.due(sec, r) {
                    t.written(sec, r);
                    writes += 1;
                }
            }
        }
        let per_sec = writes as f64 / hour as f64;
        println!("5000 nodes, 1 h: {writes} report writes, {per_sec:.1}/s");
        // The heartbeat alone is 5000/300 ≈ 16.7/s; drops and flapping add little.
        assert!(per_sec < 20.0, "{per_sec}");
    }
}
