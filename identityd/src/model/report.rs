//! `IdentitydNodeReport`: each node daemon's bounded summary of its live state, for
//! `identityd audit --kube` (whole-cluster live checks without reaching any daemon).
//!
//! A separate kind, not `IdentitydNode.status`: every node daemon watches IdentitydNodes, so a
//! status write there would wake every daemon of the cluster; nothing but the auditor reads
//! reports. A report is bounded whatever the cluster size: counts, plus at most
//! [`REPORT_MAX_ITEMS`] named examples per list (the worst peers, the missing SVIDs), never one
//! entry per peer.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How many named examples a report lists per finding (the rest is counted).
pub const REPORT_MAX_ITEMS: usize = 5;

/// `IdentitydNodeReport.spec`: one node's live state at `reportedAt`.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, CustomResource,
)]
#[serde(rename_all = "camelCase")]
#[kube(
    group = "identityd.io",
    version = "v1alpha1",
    kind = "IdentitydNodeReport",
    root = "IdentitydNodeReportCrd",
    doc = "A node daemon's bounded summary of its live state (encryption, peers, SVIDs, Envoy), read by `identityd audit --kube`. Named after the node.",
    shortname = "idr",
    category = "identityd",
    printcolumn = r#"{"name":"Reported","type":"date","jsonPath":".spec.reportedAt"}"#,
    printcolumn = r#"{"name":"Strict","type":"boolean","jsonPath":".spec.strictMode"}"#,
    printcolumn = r#"{"name":"Peers","type":"integer","jsonPath":".spec.peers.expected"}"#,
    printcolumn = r#"{"name":"Unhealthy","type":"integer","jsonPath":".spec.peers.unhealthy"}"#
)]
pub struct NodeReport {
    /// When the daemon wrote this summary (RFC 3339). Reports are rewritten when a summarised
    /// value changes and at least every heartbeat; an old one means the daemon stopped.
    pub reported_at: String,
    /// Encryption backend and mode (`wireguard`, `disabled`).
    pub encryption_mode: String,
    /// Strict mode (traffic without an encrypted path is dropped).
    pub strict_mode: bool,
    /// Ingress strict guards every pod veth (read back from the datapath).
    pub ingress_strict_in_place: bool,
    /// Why it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_strict_problem: Option<String>,
    /// Version of the cluster state the daemon last applied (refreshed with other changes, not
    /// a reason to write on its own).
    pub cluster_version: u64,
    /// The encrypted paths to the other nodes.
    pub peers: PeerSummary,
    /// Classifier packet counters per path (`drop`, `plaintext`, …).
    #[serde(default)]
    pub packets: Vec<PathCount>,
    /// Workload SVIDs.
    pub svids: SvidSummary,
    /// Workloads of strict namespaces on this node (what `svids.missing` examined).
    #[serde(default)]
    pub strict_workloads: u64,
    /// Of those, the ones behind a Service (what `inboundMissing` examined).
    #[serde(default)]
    pub strict_served: u64,
    /// Strict workloads of this node behind a Service without an inbound mTLS listener.
    pub inbound_missing: Examples,
    /// Trust bundle roots.
    pub bundle: BundleSummary,
    /// When the node's WireGuard key was written (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_created_at: Option<String>,
    /// Whether the node's Envoy answers LIVE (absent: the node runs no Envoy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_ready: Option<bool>,
    /// xDS resource types Envoy rejected.
    pub xds_nacks: Examples,
    /// Other nodes' IdentitydNodes this node does not act on, or acts on only in an older
    /// verified version, because their proof did not verify (absent: the node does not check
    /// node proofs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unverified_nodes: Option<Examples>,
    /// Source CIDRs this node lets past ingress strict's encryption rule
    /// (`encryption.allowFrom`; plaintext from them reaches its pods).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<String>,
    /// Digest of the NetworkPolicy the node's classifier enforces (absent: its last apply did
    /// not write all of it, or the node has no classifier). Every node enforcing the cluster's
    /// current policies shows the digest the audit computes from them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy_digest: Option<String>,
    /// Packets NetworkPolicy dropped on this node.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub network_policy_drops: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // Reason: serde's skip_serializing_if passes a reference.
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A count with at most [`REPORT_MAX_ITEMS`] named examples.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Examples {
    /// How many there are.
    pub count: u64,
    /// The first few, as lines for a human.
    #[serde(default)]
    pub items: Vec<String>,
}

impl Examples {
    /// `items` counted, the first `limit` kept.
    #[must_use]
    pub fn of(items: impl IntoIterator<Item = String>, limit: usize) -> Self {
        let mut out = Self::default();
        for i in items {
            out.count += 1;
            if out.items.len() < limit {
                out.items.push(i);
            }
        }
        out
    }

    /// The named examples, then "… and N more" when some were only counted.
    #[must_use]
    pub fn lines(&self, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = self.items.iter().map(|i| format!("{prefix}{i}")).collect();
        let more = self.count.saturating_sub(self.items.len() as u64);
        if more > 0 {
            v.push(format!("{prefix}… and {more} more"));
        }
        v
    }
}

/// `spec.peers`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerSummary {
    /// Other nodes the daemon should have an encrypted path to.
    pub expected: u64,
    /// Of those, with a WireGuard handshake newer than `handshakeMaxAgeSecs`.
    pub recent: u64,
    /// The threshold `recent` was counted with.
    pub handshake_max_age_secs: u64,
    /// Peers without a recent encrypted path (no peer, another path, no or an old handshake).
    pub unhealthy: u64,
    /// The worst few of those, oldest handshake first.
    #[serde(default)]
    pub worst: Vec<PeerProblem>,
}

/// One peer without a recent encrypted path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerProblem {
    /// The peer node.
    pub name: String,
    /// `no peer`, `no handshake`, `path plaintext`, `handshake too old`, …
    pub problem: String,
    /// The last handshake (RFC 3339), when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handshake: Option<String>,
}

/// `spec.packets[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PathCount {
    /// The classifier path (`drop`, `plaintext`, `wireguard`, …).
    pub path: String,
    /// Packets since the classifier was loaded.
    pub packets: u64,
}

/// `spec.svids`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SvidSummary {
    /// SVIDs held.
    pub count: u64,
    /// The earliest expiry among them (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earliest_expiry: Option<String>,
    /// The SVID that expires first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earliest_id: Option<String>,
    /// SVIDs expiring within `minLifetimeSecs` (`ID expires at T`).
    pub expiring: Examples,
    /// The threshold `expiring` was counted with.
    pub min_lifetime_secs: u64,
    /// Workloads of strict namespaces on this node without their SVID.
    pub missing: Examples,
}

/// `spec.bundle`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BundleSummary {
    /// Roots in the trust bundle.
    pub roots: u64,
    /// The earliest expiry among them (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earliest_expiry: Option<String>,
}
