//! Pure node plans: cluster state in, desired datapath out. No I/O.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use identityd_wg::config::DeviceConfig;
use identityd_wg::key::PublicKey;
use identityd_wg::plan::{Cidr as WgCidr, PeerSpec};

use crate::daemon::config::{DaemonConfig, EncryptionMode};
use crate::model::{ClusterState, MtlsMode};

/// A peer node as the plan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    /// Node name.
    pub name: String,
    /// Node id (1-based, by sorted name; reported in flow events).
    pub id: u32,
    /// WireGuard public key, when published and valid.
    pub public_key: Option<PublicKey>,
    /// The key it is rotating to, when announced and valid.
    pub next_public_key: Option<PublicKey>,
    /// Underlay endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Pod CIDRs.
    pub pod_cidrs: Vec<String>,
}

/// The path a remote pod CIDR takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutePath {
    /// This node's own pods.
    Local,
    /// Through WireGuard.
    Wireguard,
    /// A peer node's own address, through WireGuard (node encryption; not via the mesh).
    WireguardNode,
    /// No usable path: dropped in strict mode.
    Unavailable,
    /// In clear (encryption disabled).
    Plaintext,
}

/// The desired datapath of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    /// Peers, by name.
    pub peers: Vec<PeerView>,
    /// The WireGuard device config (when encryption is WireGuard).
    pub wireguard: Option<DeviceConfig>,
    /// Classifier routes: CIDR → (path, node id).
    pub routes: BTreeMap<String, (RoutePath, u32)>,
    /// Classifier workloads: local pod IP → mTLS mode.
    pub workloads: BTreeMap<IpAddr, MtlsMode>,
    /// Ports of local strict pods the node's own processes may open TCP to (their probes).
    pub probe_ports: std::collections::BTreeSet<(IpAddr, u16)>,
    /// The cluster's pod ranges strict mode treats as "no path" unless a more specific route
    /// says otherwise: the configured `clusterCIDRs` and every pod CIDR a Kubernetes `Node`
    /// object carries.
    pub cluster_cidrs: Vec<String>,
    /// Things that kept a peer or pod out of the plan.
    pub problems: Vec<String>,
}

/// The node's policy routing without the proxy path: the WireGuard mark's table and, with
/// node encryption, the node-address table the tunnel's own datagrams skip. The mesh adds
/// the proxy path on top of the same config.
#[must_use]
pub fn base_routing(cfg: &DaemonConfig) -> Option<identityd_bpf::routing::RoutingConfig> {
    let w = cfg.wireguard.as_ref()?;
    let wg_mode = cfg.encryption.mode == EncryptionMode::Wireguard;
    Some(identityd_bpf::routing::RoutingConfig {
        wireguard_interface: Some(w.interface.clone()),
        ipv6: false,
        node_encryption_table: (wg_mode && cfg.encryption.node_encryption)
            .then_some(identityd_bpf::routing::NODE_ENCRYPTION_TABLE),
        ..identityd_bpf::routing::RoutingConfig::default()
    })
}

/// Node ids: 1-based positions in the sorted list of node names.
#[must_use]
pub fn node_ids(state: &ClusterState) -> BTreeMap<String, u32> {
    state
        .nodes
        .keys()
        .enumerate()
        .map(|(i, n)| (n.clone(), u32::try_from(i + 1).unwrap_or(u32::MAX)))
        .collect()
}

/// The files of this node's WireGuard keys the device is to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFiles {
    /// The current key (it initiates).
    pub current: std::path::PathBuf,
    /// The next key while a rotation announces it (it answers handshakes).
    pub next: Option<std::path::PathBuf>,
    /// The next key is withdrawn: it still answers but is not sent on.
    pub next_answer_only: bool,
}

/// Computes the node's plan from the cluster state, with only the current key.
#[must_use]
pub fn plan(
    cfg: &DaemonConfig,
    state: &ClusterState,
    key_path: &Path,
    default_mtls: MtlsMode,
) -> NodePlan {
    plan_with_keys(
        cfg,
        state,
        &KeyFiles {
            current: key_path.to_path_buf(),
            next: None,
            next_answer_only: false,
        },
        default_mtls,
    )
}

/// Computes the node's plan from the cluster state and its key files.
#[must_use]
pub fn plan_with_keys(
    cfg: &DaemonConfig,
    state: &ClusterState,
    keys: &KeyFiles,
    default_mtls: MtlsMode,
) -> NodePlan {
    let ids = node_ids(state);
    let mut problems = Vec::new();
    let mut peers = Vec::new();
    // A peer that claims a CIDR or key someone else already has (this node first, with its
    // own config) is left out whole; the others are applied as usual.
    let own_cidrs: Vec<String> = cfg.pod_cidr.iter().cloned().collect();
    let conflicts = crate::model::conflicts::node_conflicts(state, Some((&cfg.name, &own_cidrs)));
    problems.extend(conflicts.rejected.values().cloned());
    if conflicts.unverified && state.nodes.len() > 1 {
        problems.push(
            "no Node object carries spec.podCIDRs: peers' pod CIDRs are their IdentitydNodes' \
             own claims (held only by the first-owner rule)"
                .to_owned(),
        );
    }
    let cluster_cidrs = effective_cluster_cidrs(cfg, state);
    if cfg.encryption.strict_mode && cluster_cidrs.is_empty() {
        problems.push(
            "strict mode knows no cluster CIDR (clusterCIDRs is empty and no Node object carries \
             spec.podCIDRs): a pod CIDR nobody publishes is not recognised as pod traffic"
                .to_owned(),
        );
    }
    for node in state.other_nodes(&cfg.name) {
        if conflicts.is_rejected(&node.metadata.name) {
            continue;
        }
        let name = node.metadata.name.clone();
        let public_key =
            node.spec
                .wireguard
                .as_ref()
                .and_then(|w| match w.public_key.parse::<PublicKey>() {
                    Ok(k) => Some(k),
                    Err(e) => {
                        problems.push(format!(
                            "node {name}: spec.wireguard.publicKey={}: {e}",
                            w.public_key
                        ));
                        None
                    }
                });
        let next_public_key = node.spec.wireguard.as_ref().and_then(|w| {
            let n = w.next_public_key.as_deref()?;
            match n.parse::<PublicKey>() {
                Ok(k) => Some(k),
                Err(e) => {
                    problems.push(format!(
                        "node {name}: spec.wireguard.nextPublicKey={n}: {e}"
                    ));
                    None
                }
            }
        });
        let port = node
            .spec
            .wireguard
            .as_ref()
            .map_or(identityd_wg::DEFAULT_PORT, |w| w.port_u16());
        let endpoint = node
            .spec
            .underlay_addresses
            .iter()
            .find_map(|a| a.parse::<IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, port));
        peers.push(PeerView {
            id: ids.get(&name).copied().unwrap_or(0),
            name,
            public_key,
            next_public_key,
            endpoint,
            pod_cidrs: node.spec.pod_cidrs.clone(),
        });
    }

    let wg_mode = cfg.encryption.mode == EncryptionMode::Wireguard;
    let node_encryption = wg_mode && cfg.encryption.node_encryption;
    let mut routes = BTreeMap::new();
    let self_id = ids.get(&cfg.name).copied().unwrap_or(0);
    // The cluster CIDRs are "no path" wherever no node's pod CIDR is more specific: pod CIDRs
    // of nodes that never published, or were removed, are dropped in strict mode instead of
    // following another route (a CNI's route over the underlay) in clear. The classifier
    // sets them at load; they must stay in the plan, or the first diff removes them.
    for c in &cluster_cidrs {
        routes.insert(c.clone(), (RoutePath::Unavailable, 0));
    }
    if let Some(pc) = &cfg.pod_cidr {
        routes.insert(canonical(pc), (RoutePath::Local, self_id));
    }
    let mut wg_peers = Vec::new();
    for p in &peers {
        let usable = wg_mode && p.public_key.is_some() && p.endpoint.is_some();
        // Node encryption: the peer's own address is one more prefix of its, behind the
        // tunnel for pods (the classifier) and for the node itself (the device's node table).
        let node_addresses: Vec<WgCidr> = match p.endpoint {
            Some(ep) if node_encryption => {
                let host = WgCidr::new(ep.ip(), if ep.is_ipv4() { 32 } else { 128 });
                host.into_iter().collect()
            }
            _ => Vec::new(),
        };
        for a in &node_addresses {
            let path = if usable {
                RoutePath::WireguardNode
            } else {
                RoutePath::Unavailable
            };
            routes.insert(a.to_string(), (path, p.id));
        }
        for c in &p.pod_cidrs {
            let path = if !wg_mode {
                RoutePath::Plaintext
            } else if usable {
                RoutePath::Wireguard
            } else {
                RoutePath::Unavailable
            };
            routes.insert(canonical(c), (path, p.id));
        }
        if let (true, Some(k), Some(ep)) = (usable, p.public_key, p.endpoint) {
            let mut cidrs = Vec::new();
            for c in &p.pod_cidrs {
                match c.parse::<WgCidr>() {
                    Ok(c) => cidrs.push(c),
                    Err(e) => problems.push(format!("node {}: spec.podCIDRs={c}: {e}", p.name)),
                }
            }
            wg_peers.push(PeerSpec {
                public_key: k,
                endpoint: ep,
                pod_cidrs: cidrs,
                keepalive: None,
                next_public_key: p.next_public_key,
                node_addresses,
            });
        }
    }
    let wireguard = match (&cfg.wireguard, wg_mode) {
        (Some(w), true) => Some(DeviceConfig {
            interface: w.interface.clone(),
            key_path: keys.current.clone(),
            next_key_path: keys.next.clone(),
            next_key_answer_only: keys.next.is_some() && keys.next_answer_only,
            listen_port: w.port,
            underlay_mtu: 1500,
            underlay_ipv6: cfg.underlay_address.is_some_and(|a| a.is_ipv6()),
            keepalive: 0,
            cluster_cidrs: cluster_cidrs
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect(),
            local_cidrs: cfg.pod_cidr.iter().filter_map(|c| c.parse().ok()).collect(),
            route_table: 254,
            node_route_table: node_encryption
                .then_some(identityd_bpf::routing::NODE_ENCRYPTION_TABLE),
            fwmark: if node_encryption {
                identityd_bpf::types::IDD_MARK_TUNNEL_SOCKET
            } else {
                0
            },
            persist: true,
            // TUN offloads with UDP GSO/GRO: 3.7 vs 1.2 Gbit/s without (scripts/bench-wg).
            offload: true,
            udp_gso: true,
            udp_gro: true,
            handshake_protection: true,
            backend: identityd_wg::backend::BackendMode::default(),
            peers: wg_peers,
        }),
        _ => None,
    };

    let mut workloads = BTreeMap::new();
    let mut probe_ports = std::collections::BTreeSet::new();
    for pod in state.pods_on_node(&cfg.name) {
        if let Some(ip) = pod.ip() {
            let mode = state.pod_mtls(pod, default_mtls);
            workloads.insert(ip, mode);
            if mode == MtlsMode::Strict && cfg.mtls.allow_node_probes {
                probe_ports.extend(pod.probe_ports().into_iter().map(|p| (ip, p)));
            }
        }
    }
    NodePlan {
        peers,
        wireguard,
        routes,
        workloads,
        probe_ports,
        cluster_cidrs,
        problems,
    }
}

/// `c` as `addr/prefix` in the address's standard form (one key per prefix in the route
/// table, however it was written); unparsable text as it is (it is reported where it is used).
pub(crate) fn canonical(c: &str) -> String {
    c.parse::<crate::model::validate::Cidr>()
        .map_or_else(|_| c.to_owned(), |c| format!("{}/{}", c.addr, c.prefix))
}

/// The configured cluster CIDRs, then the pod CIDRs of the Kubernetes `Node` objects not
/// already among them (written as `addr/prefix`), without duplicates.
#[must_use]
pub fn effective_cluster_cidrs(cfg: &DaemonConfig, state: &ClusterState) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let learned = state
        .node_object_pod_cidrs()
        .into_iter()
        .map(|c| format!("{}/{}", c.addr, c.prefix));
    for c in cfg
        .cluster_cidrs
        .iter()
        .map(|c| canonical(c))
        .chain(learned)
    {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::config::{DaemonConfig, Encryption, Role, Wireguard};
    use crate::model::identityd::{IdentitydNodeSpec, WireguardSpec};
    use crate::model::{IdentitydNode, Object, Pod};

    fn cfg(mode: EncryptionMode) -> DaemonConfig {
        DaemonConfig {
            role: Role::Node,
            name: "n1".into(),
            trust_domain: "cluster.local".into(),
            cluster_source: crate::daemon::config::ClusterSourceKind::File,
            secret_namespaces: Vec::new(),
            cluster_dir: "/c".into(),
            state_dir: "/s".into(),
            run_dir: "/r".into(),
            underlay_address: Some("10.99.0.11".parse().unwrap()),
            pod_cidr: Some("10.244.1.0/24".into()),
            cluster_cidrs: vec!["10.244.0.0/16".into()],
            encryption: Encryption {
                mode,
                strict_mode: true,
                node_encryption: false,
                allow_from: Vec::new(),
            },
            wireguard: Some(Wireguard {
                interface: "idd1".into(),
                port: 51871,
            }),
            pod_interface_prefix: "p-".into(),
            wireguard_binary: None,
            pin_bpf: false,
            tunnel_address: None,
            metrics_address: None,
            flow_events: crate::daemon::config::FlowEventsMode::Drops,
            ca_dir: None,
            listen: None,
            ca: None,
            envoy: None,
            ingress: Default::default(),
            mtls: Default::default(),
            svid_ttl: None,
            report: crate::daemon::config::ReportSettings::default(),
            telemetry: crate::daemon::config::TelemetrySettings::default(),
            startup_taint: String::new(),
        }
    }

    fn node(name: &str, i: u8, key: Option<&str>) -> Object {
        Object::IdentitydNode(IdentitydNode::new(
            name,
            IdentitydNodeSpec {
                pod_cidrs: vec![format!("10.244.{i}.0/24")],
                underlay_addresses: vec![format!("10.99.0.1{i}")],
                wireguard: key.map(|k| WireguardSpec {
                    public_key: k.into(),
                    port: 51871,
                    next_public_key: None,
                }),
                ipsec: None,
                proof: None,
            },
        ))
    }

    const K2: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

    fn node_object(i: u8) -> Object {
        Object::Node(crate::model::Node::new(
            format!("n{i}"),
            &[&format!("10.244.{i}.0/24")],
        ))
    }

    #[test]
    fn node_encryption_puts_peer_node_addresses_behind_the_tunnel_and_marks_the_socket() {
        let state = ClusterState::from_objects(1, [node("n2", 2, Some(K2)), node("n3", 3, None)]);
        let mut c = cfg(EncryptionMode::Wireguard);
        let off = plan(&c, &state, Path::new("/s/k"), MtlsMode::Disabled);
        assert!(!off.routes.contains_key("10.99.0.12/32"));
        let wg = off.wireguard.expect("wireguard");
        assert_eq!((wg.fwmark, wg.node_route_table), (0, None));
        assert!(wg.peers[0].node_addresses.is_empty());
        assert!(base_routing(&c).unwrap().node_encryption_table.is_none());

        c.encryption.node_encryption = true;
        let p = plan(&c, &state, Path::new("/s/k"), MtlsMode::Disabled);
        // n2 has a key: its address goes through WireGuard (not the mesh proxy); n3 has none
        // yet: no path (dropped in strict mode, never in clear).
        assert_eq!(p.routes["10.99.0.12/32"].0, RoutePath::WireguardNode);
        assert_eq!(p.routes["10.99.0.12/32"].1, node_ids(&state)["n2"]);
        assert_eq!(p.routes["10.99.0.13/32"].0, RoutePath::Unavailable);
        let wg = p.wireguard.expect("wireguard");
        assert_eq!(wg.fwmark, identityd_bpf::types::IDD_MARK_TUNNEL_SOCKET);
        assert_eq!(
            wg.node_route_table,
            Some(identityd_bpf::routing::NODE_ENCRYPTION_TABLE)
        );
        assert_eq!(wg.peers.len(), 1);
        assert_eq!(wg.peers[0].node_addresses[0].to_string(), "10.99.0.12/32");
        assert_eq!(
            base_routing(&c).unwrap().node_encryption_table,
            Some(identityd_bpf::routing::NODE_ENCRYPTION_TABLE)
        );
        // Not with encryption off.
        c.encryption.mode = EncryptionMode::Disabled;
        let p = plan(&c, &state, Path::new("/s/k"), MtlsMode::Disabled);
        assert!(!p.routes.contains_key("10.99.0.12/32"));
        assert!(base_routing(&c).unwrap().node_encryption_table.is_none());
    }

    #[test]
    fn node_objects_add_their_pod_cidrs_as_no_path_and_none_known_is_a_problem() {
        // n7 has a Node (the control plane allocated it a range) but never published: its
        // range is "no path", also outside the configured cluster CIDR, and routed into the
        // tunnel, where the device drops it.
        let state = ClusterState::from_objects(
            1,
            [
                node("n2", 2, Some(K2)),
                node_object(1),
                node_object(2),
                Object::Node(crate::model::Node::new("n7", &["10.245.7.0/24"])),
            ],
        );
        let mut c = cfg(EncryptionMode::Wireguard);
        let p = plan(&c, &state, Path::new("/s/k"), MtlsMode::Disabled);
        assert_eq!(
            p.cluster_cidrs,
            [
                "10.244.0.0/16",
                "10.244.1.0/24",
                "10.244.2.0/24",
                "10.245.7.0/24"
            ]
        );
        assert_eq!(p.routes["10.245.7.0/24"], (RoutePath::Unavailable, 0));
        assert_eq!(p.routes["10.244.1.0/24"].0, RoutePath::Local);
        assert_eq!(p.routes["10.244.2.0/24"].0, RoutePath::Wireguard);
        let wg = p.wireguard.expect("wireguard config");
        assert!(
            wg.cluster_cidrs
                .iter()
                .any(|x| x.to_string() == "10.245.7.0/24"),
            "{:?}",
            wg.cluster_cidrs
        );
        assert!(p.problems.is_empty(), "{:?}", p.problems);

        // The chart's default: no clusterCIDRs. The Node objects alone cover the ranges.
        c.cluster_cidrs.clear();
        let p = plan(&c, &state, Path::new("/s/k"), MtlsMode::Disabled);
        assert_eq!(
            p.cluster_cidrs,
            ["10.244.1.0/24", "10.244.2.0/24", "10.245.7.0/24"]
        );
        assert!(p.problems.is_empty(), "{:?}", p.problems);

        // Neither: strict mode knows no pod range, and says so.
        let state = ClusterState::from_objects(1, [node("n2", 2, Some(K2))]);
        let p = plan(&c, &state, Path::new("/s/k"), MtlsMode::Disabled);
        assert!(p.cluster_cidrs.is_empty());
        assert!(
            p.problems
                .iter()
                .any(|x| x.contains("strict mode knows no cluster CIDR")),
            "{:?}",
            p.problems
        );
        // A claim the Node objects do not back is no peer.
        let state = ClusterState::from_objects(
            1,
            [node("n2", 2, Some(K2)), node_object(1), node_object(3)],
        );
        let p = plan(&c, &state, Path::new("/s/k"), MtlsMode::Disabled);
        assert!(p.peers.is_empty() && p.wireguard.unwrap().peers.is_empty());
        assert!(
            p.problems
                .iter()
                .any(|x| x.contains("no Node n2 allocates a pod CIDR")),
            "{:?}",
            p.problems
        );
    }

    #[test]
    fn peers_with_keys_get_wireguard_routes_others_are_dropped() {
        let state = ClusterState::from_objects(
            1,
            [
                node(
                    "n1",
                    1,
                    Some("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="),
                ),
                node("n2", 2, Some(K2)),
                node("n3", 3, None),
                node_object(1),
                node_object(2),
                node_object(3),
                Object::Pod(Pod::new(
                    "shop",
                    "web-1",
                    "n1",
                    "web",
                    "10.244.1.10".parse().unwrap(),
                )),
                Object::Pod(Pod::new(
                    "shop",
                    "web-2",
                    "n2",
                    "web",
                    "10.244.2.10".parse().unwrap(),
                )),
            ],
        );
        let p = plan(
            &cfg(EncryptionMode::Wireguard),
            &state,
            Path::new("/s/k"),
            MtlsMode::Disabled,
        );
        assert_eq!(p.routes["10.244.1.0/24"].0, RoutePath::Local);
        assert_eq!(p.routes["10.244.2.0/24"].0, RoutePath::Wireguard);
        // Pod CIDRs of nodes nobody published stay "no path" under the cluster CIDR.
        assert_eq!(p.routes["10.244.0.0/16"], (RoutePath::Unavailable, 0));
        assert_eq!(
            p.routes["10.244.3.0/24"].0,
            RoutePath::Unavailable,
            "no key yet: dropped in strict mode"
        );
        let wg = p.wireguard.expect("wireguard config");
        assert_eq!(wg.peers.len(), 1);
        assert_eq!(wg.peers[0].endpoint.to_string(), "10.99.0.12:51871");
        assert_eq!(wg.interface, "idd1");
        assert_eq!(p.workloads.len(), 1, "only this node's pods");
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        // Node ids are stable positions by name.
        assert_eq!(p.peers.iter().map(|x| x.id).collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn a_rotating_peer_is_one_peer_with_both_keys_and_this_nodes_next_key_is_in_the_device_config()
    {
        let mut n2 = node("n2", 2, Some(K2));
        if let Object::IdentitydNode(n) = &mut n2 {
            n.spec.wireguard.as_mut().unwrap().next_public_key =
                Some("AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=".into());
        }
        let state = ClusterState::from_objects(1, [n2]);
        let keys = KeyFiles {
            current: "/s/wireguard.key".into(),
            next: Some("/s/wireguard.next.key".into()),
            next_answer_only: false,
        };
        let p = plan_with_keys(
            &cfg(EncryptionMode::Wireguard),
            &state,
            &keys,
            MtlsMode::Disabled,
        );
        let wg = p.wireguard.expect("wireguard config");
        assert_eq!(wg.peers.len(), 1, "both keys, one peer");
        assert_eq!(wg.peers[0].public_key.to_string(), K2);
        assert_eq!(
            wg.peers[0]
                .next_public_key
                .map(|k| k.to_string())
                .as_deref(),
            Some("AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=")
        );
        assert_eq!(wg.key_path, keys.current);
        assert_eq!(wg.next_key_path, keys.next);
        assert_eq!(p.routes["10.244.2.0/24"].0, RoutePath::Wireguard);
    }

    #[test]
    fn a_node_with_a_bad_key_is_refused_and_gets_no_peer() {
        let state = ClusterState::from_objects(1, [node("n2", 2, Some("not-a-key"))]);
        assert!(
            state
                .problems
                .iter()
                .any(|x| x.to_string().contains("publicKey")),
            "the model refuses the object: {:?}",
            state.problems
        );
        let p = plan(
            &cfg(EncryptionMode::Wireguard),
            &state,
            Path::new("/s/k"),
            MtlsMode::Disabled,
        );
        assert!(p.wireguard.unwrap().peers.is_empty());
        assert!(
            !p.routes.contains_key("10.244.2.0/24"),
            "covered by the cluster CIDR: no path, dropped"
        );
    }

    #[test]
    fn encryption_disabled_marks_remote_cidrs_plaintext() {
        let state = ClusterState::from_objects(1, [node("n2", 2, Some(K2))]);
        let p = plan(
            &cfg(EncryptionMode::Disabled),
            &state,
            Path::new("/s/k"),
            MtlsMode::Disabled,
        );
        assert!(p.wireguard.is_none());
        assert_eq!(p.routes["10.244.2.0/24"].0, RoutePath::Plaintext);
    }

    #[test]
    fn probe_ports_of_strict_pods_are_planned_for_ingress_strict() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, annotations: {identityd.io/mtls: strict}}\n---\n\
            apiVersion: v1\nkind: Namespace\nmetadata: {name: open}\n---\n\
            apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\nspec:\n  nodeName: n1\n  containers:\n  - name: c\n    ports: [{name: health, containerPort: 8081}]\n    livenessProbe: {httpGet: {path: /healthz, port: health}, periodSeconds: 5}\n    readinessProbe: {tcpSocket: {port: 8080}}\nstatus: {podIP: 10.244.1.10}\n---\n\
            apiVersion: v1\nkind: Pod\nmetadata: {name: other, namespace: open}\nspec:\n  nodeName: n1\n  containers:\n  - name: c\n    readinessProbe: {tcpSocket: {port: 9000}}\nstatus: {podIP: 10.244.1.11}\n";
        let objects = crate::source::decode::decode_all(text)
            .into_iter()
            .map(|(_, r)| r.expect("valid").expect("object"));
        let state = ClusterState::from_objects(1, objects);
        let mut cfg = cfg(EncryptionMode::Wireguard);
        let p = plan(&cfg, &state, Path::new("/nonexistent"), MtlsMode::Disabled);
        let web: IpAddr = "10.244.1.10".parse().unwrap();
        assert_eq!(
            p.probe_ports.iter().copied().collect::<Vec<_>>(),
            [(web, 8080), (web, 8081)],
            "the named and the numbered probe port of the strict pod, nothing of the other"
        );
        cfg.mtls.allow_node_probes = false;
        let p = plan(&cfg, &state, Path::new("/nonexistent"), MtlsMode::Disabled);
        assert!(p.probe_ports.is_empty());
    }
}
