//! The local API: a unix socket (`<runDir>/api.sock`, 0600) that answers each connection with
//! the node's status as one JSON document. `identityd status` and `identityd lab status` read it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

/// One peer node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Node name.
    pub name: String,
    /// Underlay endpoint.
    pub endpoint: Option<String>,
    /// The path its pod CIDRs take (`wireguard`, `dropped (no key yet)`, `plaintext`).
    pub path: String,
    /// Seconds since the last WireGuard handshake.
    pub handshake_age_secs: Option<u64>,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
}

/// One task of the node daemon (datapath, identity, mesh) and whether its latest round
/// went through.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentStatus {
    /// `datapath`, `identity` or `mesh`.
    pub name: String,
    /// No errors in its latest round.
    pub ok: bool,
    /// The errors of its latest round.
    pub errors: Vec<String>,
}

/// What a node's classifier enforces of the cluster's NetworkPolicies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicyStatus {
    /// Digest of the compiled policy the maps hold (`None`: the last apply did not write all
    /// of it). Every node enforcing the same cluster policy shows the same digest.
    pub digest: Option<String>,
    /// NetworkPolicies compiled.
    pub policies: u64,
    /// Allow rules in the map.
    pub rules: u64,
    /// Pod addresses in the map (every pod of the cluster).
    pub pods: u64,
    /// Packets dropped, per isolating policy (`namespace/name`) and direction.
    pub drops: Vec<(String, String, u64)>,
    /// Parts of policies the compiler skipped, one line each.
    pub problems: Vec<String>,
}

/// A node's status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node name.
    pub node: String,
    /// WireGuard public key (base64).
    pub public_key: String,
    /// The same, hex (as `wg` prints it in dumps).
    pub public_key_hex: String,
    /// Encryption mode (`wireguard`, `disabled`).
    #[serde(default)]
    pub encryption_mode: String,
    /// Strict mode.
    pub strict_mode: bool,
    /// Version of the cluster state last applied.
    pub cluster_version: u64,
    /// Peers.
    pub peers: Vec<PeerStatus>,
    /// Classifier counters per path: name → (packets, bytes).
    pub counters: Vec<(String, (u64, u64))>,
    /// Interfaces the classifier is attached to.
    pub classifier_interfaces: Vec<String>,
    /// Problems with the cluster state or the plan.
    pub problems: Vec<String>,
    /// Workload SVIDs held: SPIFFE ID → seconds until expiry.
    #[serde(default)]
    pub svids: Vec<(String, u64)>,
    /// xDS state per resource type (version, ACK, NACK).
    #[serde(default)]
    pub xds: Vec<String>,
    /// Envoy restarts by the daemon.
    #[serde(default)]
    pub envoy_restarts: u32,
    /// Restarts of the WireGuard device process by the daemon, after it died.
    #[serde(default)]
    pub wireguard_device_restarts: u64,
    /// Source CIDRs let past ingress strict's encryption rule (`encryption.allowFrom`).
    #[serde(default)]
    pub allow_from: Vec<String>,
    /// NetworkPolicy enforcement (absent: no classifier, or an older daemon).
    #[serde(default)]
    pub network_policy: Option<NetworkPolicyStatus>,
    /// Other nodes' objects whose proof did not verify, one line each (`None`: this node does
    /// not check node proofs — it has no CA).
    #[serde(default)]
    pub unverified_nodes: Option<Vec<String>>,
    /// Age of the WireGuard node key, seconds.
    #[serde(default)]
    pub key_age_secs: Option<u64>,
    /// Roots of the trust bundle the node uses: seconds until each expires.
    #[serde(default)]
    pub bundle_roots: Vec<u64>,
    /// Workloads (`ns/pod`) with an inbound mTLS listener chain on this node's Envoy.
    #[serde(default)]
    pub inbound_workloads: Vec<String>,
    /// Whether the node's Envoy answers `LIVE` on its admin `/ready` (absent: no Envoy).
    #[serde(default)]
    pub envoy_ready: Option<bool>,
    /// CA-issued serving certificates of ingress listeners: DNS names → seconds until expiry.
    #[serde(default)]
    pub ingress_certificates: Vec<(String, u64)>,
    /// Every certificate the identity worker keeps (node SVID, workload SVIDs, serving
    /// certificates): state, expiry, next attempt, failures.
    #[serde(default)]
    pub identities: Vec<crate::daemon::identity::IdentityStatus>,
    /// Each task's health.
    #[serde(default)]
    pub components: Vec<ComponentStatus>,
    /// Ingress strict guards every pod veth (read back from the maps and attachments; absent
    /// from older daemons, which counts as not in place).
    #[serde(default)]
    pub ingress_strict_in_place: bool,
    /// Why it is not.
    #[serde(default)]
    pub ingress_strict_problem: Option<String>,
    /// The userspace WireGuard device's drop and handshake-defence counters (name → value;
    /// empty for the kernel device).
    #[serde(default)]
    pub wireguard_counters: Vec<(String, u64)>,
}

/// Serves `status` on `path` until the task is aborted.
pub async fn serve(path: PathBuf, status: Arc<Mutex<NodeStatus>>) {
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "local API socket");
            return;
        }
    };
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let body = {
            let st = status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            serde_json::to_vec_pretty(&*st).unwrap_or_default()
        };
        tokio::spawn(async move {
            let _ = s.write_all(&body).await;
            let _ = s.shutdown().await;
        });
    }
}

/// Why a node's status could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The socket cannot be reached or read.
    #[error("{}: {source}", path.display())]
    Socket {
        /// The socket.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It answered something that is not a status document.
    #[error("{}: not a status document: {source}", path.display())]
    NotStatus {
        /// The socket.
        path: std::path::PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

/// Reads the status from a node's API socket.
///
/// # Errors
/// When the socket cannot be reached or answers something else than a status.
pub fn fetch(path: &Path) -> Result<NodeStatus, FetchError> {
    use std::io::Read;
    let socket = |source| FetchError::Socket {
        path: path.to_path_buf(),
        source,
    };
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(socket)?;
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(3)));
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(socket)?;
    serde_json::from_slice(&buf).map_err(|source| FetchError::NotStatus {
        path: path.to_path_buf(),
        source,
    })
}

/// Renders a status as a table.
#[must_use]
pub fn render(st: &NodeStatus) -> String {
    let mut out = format!(
        "node {}  wireguard key {}  strict mode {}  cluster version {}\n",
        st.node,
        st.public_key,
        if st.strict_mode { "on" } else { "off" },
        st.cluster_version
    );
    out.push_str(&format!(
        "  {:<10} {:<22} {:<22} {:>10} {:>12} {:>12}\n",
        "peer", "endpoint", "path", "handshake", "rx", "tx"
    ));
    for p in &st.peers {
        out.push_str(&format!(
            "  {:<10} {:<22} {:<22} {:>10} {:>12} {:>12}\n",
            p.name,
            p.endpoint.as_deref().unwrap_or("-"),
            p.path,
            p.handshake_age_secs
                .map_or("never".to_owned(), |a| format!("{a}s ago")),
            p.rx_bytes,
            p.tx_bytes
        ));
    }
    if !st.counters.is_empty() {
        out.push_str("  classifier:");
        for (name, (pk, _)) in &st.counters {
            out.push_str(&format!(" {name}={pk}"));
        }
        out.push('\n');
    }
    for (id, left) in &st.svids {
        out.push_str(&format!("  svid {id} (expires in {}m)\n", left / 60));
    }
    for (names, left) in &st.ingress_certificates {
        out.push_str(&format!(
            "  ingress certificate {names} (expires in {}m)\n",
            left / 60
        ));
    }
    if !st.xds.is_empty() {
        out.push_str(&format!(
            "  envoy xds: {}  (restarts {})\n",
            st.xds.join(" | "),
            st.envoy_restarts
        ));
    }
    for p in &st.problems {
        out.push_str(&format!("  problem: {p}\n"));
    }
    out
}
