//! The device process's config file (JSON), re-read on `SIGHUP` or when it changes.
//!
//! ```json
//! { "interface": "idd-n1", "key_path": "/var/lib/identityd/wg.key",
//!   "listen_port": 51871, "underlay_mtu": 1500, "cluster_cidrs": ["10.244.0.0/16"],
//!   "local_cidrs": ["10.244.1.0/24"],
//!   "peers": [ { "public_key": "…base64…", "endpoint": "10.99.0.12:51871",
//!                "pod_cidrs": ["10.244.2.0/24"] } ] }
//! ```

use std::path::{Path, PathBuf};

use crate::backend::BackendMode;
use crate::key::PublicKey;
use crate::plan::{Cidr, NodeSpec, PeerSpec};

/// Errors reading the config file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: read")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid config JSON (the message names the field and position).
    #[error("config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
}

fn default_port() -> u16 {
    crate::DEFAULT_PORT
}
fn default_mtu() -> u32 {
    1500
}
fn default_table() -> u32 {
    254
}
#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn is_true(b: &bool) -> bool {
    *b
}

fn default_true() -> bool {
    true
}

/// The config file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Interface name (distinct per node).
    pub interface: String,
    /// Node key file (generated 0600 if missing).
    pub key_path: PathBuf,
    /// The key the node is rotating to, while it rotates (generated 0600 if missing): the
    /// device answers handshakes addressed to it beside the current key's. When the
    /// rotation ends the daemon names it in `key_path` and removes this; sessions peers built
    /// to it are kept. Written only when set, so older device binaries read the daemon's
    /// configuration unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_key_path: Option<PathBuf>,
    /// The next key only answers and never becomes the preferred sending key (a withdrawn
    /// rotation: peers are dropping their sessions to it). Written only when set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub next_key_answer_only: bool,
    /// UDP port.
    #[serde(default = "default_port")]
    pub listen_port: u16,
    /// Underlay MTU.
    #[serde(default = "default_mtu")]
    pub underlay_mtu: u32,
    /// Whether the underlay is IPv6.
    #[serde(default)]
    pub underlay_ipv6: bool,
    /// Default persistent keepalive (seconds, 0 = off).
    #[serde(default)]
    pub keepalive: u16,
    /// Prefixes covering all remote pods, routed into the tunnel (dropped when no peer).
    #[serde(default)]
    pub cluster_cidrs: Vec<Cidr>,
    /// This node's pod CIDRs.
    #[serde(default)]
    pub local_cidrs: Vec<Cidr>,
    /// Node encryption: the table the peers' node addresses are routed into the tunnel in
    /// (never the main table: the device's own datagrams to those addresses must not loop
    /// back into the tunnel; the node's policy rules send them past it by `fwmark`). Peers'
    /// `node_addresses` are ignored without it. Written only when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_route_table: Option<u32>,
    /// `SO_MARK` of the device's UDP socket (0: none), so policy routing can tell the
    /// device's own datagrams from traffic to be encrypted. Written only when set.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fwmark: u32,
    /// Routing table for tunnel routes (254 = main).
    #[serde(default = "default_table")]
    pub route_table: u32,
    /// Keep the TUN interface when the process exits (`TUNSETPERSIST`).
    #[serde(default = "default_true")]
    pub persist: bool,
    /// TUN offloads (`IFF_VNET_HDR`): one read per TCP (and, Linux ≥ 6.2, UDP) super-packet,
    /// split in userspace, and received TCP segments coalesced into one write. Off when absent
    /// from the file (a device binary older than the daemon's config stays as it was); the
    /// node daemon writes it on.
    #[serde(default)]
    pub offload: bool,
    /// UDP GSO sends (one `sendmsg` per TUN read's segments), probed at start. On by default.
    /// Written only when off, like `handshake_protection`.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub udp_gso: bool,
    /// UDP GRO receives (several datagrams per `recvmsg`), probed at start. On by default.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub udp_gro: bool,
    /// The handshake flood defence (mac1 first, cookies under load, per-source limits).
    /// On by default; `false` only to measure what a flood costs without it.
    /// Written only when off, so a device binary older than the option reads the daemon's
    /// configuration unchanged.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub handshake_protection: bool,
    /// Backend choice.
    #[serde(default)]
    pub backend: BackendMode,
    /// Remote nodes.
    #[serde(default)]
    pub peers: Vec<PeerSpec>,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl DeviceConfig {
    /// Reads and parses `path`.
    ///
    /// # Errors
    /// Read or parse errors, naming the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// The planner's view of this node.
    #[must_use]
    pub fn node_spec(&self, public_key: PublicKey) -> NodeSpec {
        NodeSpec {
            interface: self.interface.clone(),
            public_key,
            listen_port: self.listen_port,
            underlay_mtu: self.underlay_mtu,
            underlay_ipv6: self.underlay_ipv6,
            keepalive: self.keepalive,
            cluster_cidrs: self.cluster_cidrs.clone(),
            local_cidrs: self.local_cidrs.clone(),
            route_table: self.route_table,
            node_route_table: self.node_route_table,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_names_bad_fields() {
        let c: DeviceConfig = serde_json::from_str(
            r#"{"interface":"idd1","key_path":"/tmp/k","peers":[{"public_key":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=","endpoint":"10.0.0.2:51871","pod_cidrs":["10.244.2.0/24"]}]}"#,
        )
        .unwrap();
        assert_eq!(c.listen_port, 51871);
        assert_eq!(c.underlay_mtu, 1500);
        assert!(c.persist);
        assert_eq!(c.peers.len(), 1);
        let e = serde_json::from_str::<DeviceConfig>(
            r#"{"interface":"idd1","key_path":"/tmp/k","peers":[{"public_key":"AQ==","endpoint":"10.0.0.2:1","pod_cidrs":[]}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("\"AQ==\""), "{e}");
        let e =
            serde_json::from_str::<DeviceConfig>(r#"{"interface":"idd1","key_path":"/k","mtu":1}"#)
                .unwrap_err();
        assert!(e.to_string().contains("mtu"), "{e}");
    }
}
