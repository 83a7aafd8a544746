//! The pure planner: this node and its peers in, the desired WireGuard interface config out.
//! No I/O here; [`crate::device`] and [`crate::routes`] apply the plan and its diffs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use crate::key::PublicKey;

/// An IP prefix (`10.244.1.0/24`, `fd00::/64`), host bits cleared.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// A string that is not a valid `ADDRESS/PREFIX`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CIDR {value:?}: {reason}")]
pub struct CidrParseError {
    /// The rejected input.
    pub value: String,
    /// What was expected.
    pub reason: &'static str,
}

impl Cidr {
    /// A prefix from an address and a length; host bits are cleared.
    ///
    /// # Errors
    /// When `prefix` is longer than the address family allows.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, CidrParseError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(CidrParseError {
                value: format!("{addr}/{prefix}"),
                reason: "prefix length longer than the address (max 32 for IPv4, 128 for IPv6)",
            });
        }
        Ok(Self {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// The network address.
    #[must_use]
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    #[must_use]
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies inside this prefix.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }

    /// Whether the two prefixes share any address.
    #[must_use]
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Cidr {
    type Err = CidrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| CidrParseError {
            value: s.to_owned(),
            reason,
        };
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| err("expected ADDRESS/PREFIX, e.g. 10.244.1.0/24"))?;
        let addr: IpAddr = a.parse().map_err(|_| err("not an IPv4 or IPv6 address"))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| err("prefix length is not a number"))?;
        Self::new(addr, prefix).map_err(|e| err(e.reason))
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What the planner needs to know about this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Interface name (≤ 15 bytes, distinct per node: the UAPI socket path is global).
    pub interface: String,
    /// This node's public key (a peer with the same key is refused).
    pub public_key: PublicKey,
    /// UDP listen port.
    pub listen_port: u16,
    /// MTU of the underlay link.
    pub underlay_mtu: u32,
    /// Whether the underlay (outer header) is IPv6.
    pub underlay_ipv6: bool,
    /// Persistent keepalive for peers that do not set their own (seconds, 0 = off).
    pub keepalive: u16,
    /// Prefixes covering all remote pods (e.g. the cluster pod CIDR). They are routed into
    /// the tunnel too, so traffic to a pod CIDR with no peer is dropped by the device rather
    /// than following the default route in clear.
    pub cluster_cidrs: Vec<Cidr>,
    /// This node's own pod CIDRs (never routed into the tunnel, never allowed from a peer).
    pub local_cidrs: Vec<Cidr>,
    /// Routing table for the tunnel routes.
    pub route_table: u32,
    /// Node encryption: the table of the peers' node-address routes (none: off).
    pub node_route_table: Option<u32>,
}

/// One remote node as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerSpec {
    /// The remote node's WireGuard public key.
    pub public_key: PublicKey,
    /// Its underlay address and WireGuard port.
    pub endpoint: SocketAddr,
    /// Its pod CIDRs (become allowed IPs and routes).
    pub pod_cidrs: Vec<Cidr>,
    /// Persistent keepalive override (seconds).
    #[serde(default)]
    pub keepalive: Option<u16>,
    /// The key the remote node is rotating to (published beside its current one): the device
    /// handshakes to it while the current key's sessions keep carrying traffic, and switches
    /// once the new session exists. Written only when set, so older device binaries read the
    /// daemon's configuration unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_public_key: Option<PublicKey>,
    /// Node encryption: the remote node's own addresses (host /32 or /128). They become
    /// allowed IPs and routes in the node route table. Written only when set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_addresses: Vec<Cidr>,
}

/// The per-peer part of a device configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Configured endpoint (the device may learn a newer one when the peer roams).
    pub endpoint: Option<SocketAddr>,
    /// Sources accepted from, and destinations sent to, this peer.
    pub allowed_ips: BTreeSet<Cidr>,
    /// Persistent keepalive in seconds, 0 = off.
    pub keepalive: u16,
    /// The peer's next key, while it rotates.
    pub next_public_key: Option<PublicKey>,
}

/// The desired (or installed) configuration of one WireGuard interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredConfig {
    /// Interface name.
    pub interface: String,
    /// UDP listen port.
    pub listen_port: u16,
    /// Tunnel MTU.
    pub mtu: u32,
    /// Peers by public key.
    pub peers: BTreeMap<PublicKey, PeerConfig>,
    /// Prefixes routed into the interface.
    pub routes: BTreeSet<Cidr>,
    /// Routing table of those routes.
    pub route_table: u32,
    /// Node encryption: peers' node addresses routed into the interface, and their table.
    pub node_routes: Option<(u32, BTreeSet<Cidr>)>,
}

/// Why a plan could not be made. Each names the field, the value and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// Bad interface name.
    #[error("interface={value:?}: expected 1 to 15 bytes of [A-Za-z0-9_.-]")]
    InterfaceName {
        /// The rejected name.
        value: String,
    },
    /// The underlay MTU leaves no room for the tunnel.
    #[error("underlay_mtu={value}: expected at least {min} (tunnel MTU must be >= 1280)")]
    Mtu {
        /// The rejected MTU.
        value: u32,
        /// The smallest accepted value.
        min: u32,
    },
    /// A peer has this node's own key.
    #[error("peers[].public_key={key}: this is the node's own key")]
    SelfPeer {
        /// The key.
        key: PublicKey,
    },
    /// Two peers share a key (current or next).
    #[error("peers[].public_key={key}: listed twice")]
    DuplicatePeer {
        /// The key.
        key: PublicKey,
    },
    /// A peer's pod CIDR overlaps another peer's or this node's.
    #[error("peers[{key}].pod_cidrs={cidr}: overlaps {other} ({owner})")]
    Overlap {
        /// The peer.
        key: PublicKey,
        /// Its prefix.
        cidr: Cidr,
        /// The prefix it overlaps.
        other: Cidr,
        /// Whose that prefix is.
        owner: String,
    },
}

/// The smallest tunnel MTU accepted (IPv6 minimum link MTU).
pub const MIN_TUNNEL_MTU: u32 = 1280;

/// Computes the desired interface config for `node` and its `peers`.
///
/// # Errors
/// See [`PlanError`]: bad interface name, too-small MTU, self or duplicate peer, overlapping
/// pod CIDRs.
pub fn plan(node: &NodeSpec, peers: &[PeerSpec]) -> Result<DesiredConfig, PlanError> {
    let name_ok = !node.interface.is_empty()
        && node.interface.len() <= 15
        && node
            .interface
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !name_ok {
        return Err(PlanError::InterfaceName {
            value: node.interface.clone(),
        });
    }
    let mtu = crate::tunnel_mtu(node.underlay_mtu, node.underlay_ipv6);
    if mtu < MIN_TUNNEL_MTU {
        let overhead = if node.underlay_ipv6 {
            crate::OVERHEAD_V6
        } else {
            crate::OVERHEAD_V4
        };
        return Err(PlanError::Mtu {
            value: node.underlay_mtu,
            min: MIN_TUNNEL_MTU + overhead,
        });
    }
    let mut out = DesiredConfig {
        interface: node.interface.clone(),
        listen_port: node.listen_port,
        mtu,
        peers: BTreeMap::new(),
        routes: BTreeSet::new(),
        route_table: node.route_table,
        node_routes: node.node_route_table.map(|t| (t, BTreeSet::new())),
    };
    let mut owners: Vec<(Cidr, String)> = node
        .local_cidrs
        .iter()
        .map(|c| (*c, "this node's pod CIDR".to_owned()))
        .collect();
    for p in peers {
        if p.public_key == node.public_key {
            return Err(PlanError::SelfPeer { key: p.public_key });
        }
        if let Some(next) = p.next_public_key {
            if next == node.public_key {
                return Err(PlanError::SelfPeer { key: next });
            }
            if next == p.public_key
                || out.peers.contains_key(&next)
                || out.peers.values().any(|c| c.next_public_key == Some(next))
            {
                return Err(PlanError::DuplicatePeer { key: next });
            }
        }
        if out.peers.contains_key(&p.public_key)
            || out
                .peers
                .values()
                .any(|c| c.next_public_key == Some(p.public_key))
        {
            return Err(PlanError::DuplicatePeer { key: p.public_key });
        }
        let mut allowed = BTreeSet::new();
        for c in &p.pod_cidrs {
            if let Some((other, owner)) = owners.iter().find(|(o, _)| o.overlaps(c)) {
                return Err(PlanError::Overlap {
                    key: p.public_key,
                    cidr: *c,
                    other: *other,
                    owner: owner.clone(),
                });
            }
            allowed.insert(*c);
        }
        for c in &allowed {
            owners.push((*c, format!("peer {}", p.public_key)));
            out.routes.insert(*c);
        }
        if let Some((_, node_routes)) = out.node_routes.as_mut() {
            for a in &p.node_addresses {
                if let Some((other, owner)) = owners.iter().find(|(o, _)| o.overlaps(a)) {
                    return Err(PlanError::Overlap {
                        key: p.public_key,
                        cidr: *a,
                        other: *other,
                        owner: owner.clone(),
                    });
                }
                owners.push((*a, format!("peer {} (node address)", p.public_key)));
                node_routes.insert(*a);
                allowed.insert(*a);
            }
        }
        out.peers.insert(
            p.public_key,
            PeerConfig {
                endpoint: Some(p.endpoint),
                allowed_ips: allowed,
                keepalive: p.keepalive.unwrap_or(node.keepalive),
                next_public_key: p.next_public_key,
            },
        );
    }
    // A cluster CIDR that lies inside this node's own pod CIDR (a Node object's allocation of
    // this very node) is not routed into the tunnel: it would replace the route to the local
    // pods. Wider cluster CIDRs are, and the local pod CIDR's more specific route wins.
    for c in &node.cluster_cidrs {
        let local = node
            .local_cidrs
            .iter()
            .any(|l| l.contains(c.addr()) && l.prefix() <= c.prefix());
        if !local {
            out.routes.insert(*c);
        }
    }
    Ok(out)
}

/// How one peer changes between two configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    /// A new peer.
    Add(PublicKey, PeerConfig),
    /// A peer no longer wanted.
    Remove(PublicKey),
    /// A peer whose endpoint and/or allowed IPs changed: updated in place, its session kept.
    Update(PublicKey, PeerConfig),
    /// A peer whose keepalive changed: its tunnel state is rebuilt.
    Replace(PublicKey, PeerConfig),
    /// A rotating peer whose next key became its key (`old` → `new`): the same peer, its
    /// sessions under the new key kept, those under the old one dropped.
    Rekey {
        /// The key it had.
        old: PublicKey,
        /// The key it has now (its former next key).
        new: PublicKey,
        /// Its configuration.
        config: PeerConfig,
    },
}

/// The changes that turn the peers of `current` into those of `desired`; unchanged peers
/// produce nothing (their sessions are not touched).
#[must_use]
pub fn diff_peers(
    current: &BTreeMap<PublicKey, PeerConfig>,
    desired: &BTreeMap<PublicKey, PeerConfig>,
) -> Vec<PeerChange> {
    let mut out = Vec::new();
    // A peer whose next key is now its key (and whose old key is gone) is the same peer.
    let rekeyed = |k: &PublicKey| {
        current
            .iter()
            .find(|(old, c)| c.next_public_key == Some(*k) && !desired.contains_key(*old))
            .map(|(old, _)| *old)
    };
    for k in current.keys() {
        if !desired.contains_key(k) && !desired.keys().any(|n| rekeyed(n) == Some(*k)) {
            out.push(PeerChange::Remove(*k));
        }
    }
    for (k, want) in desired {
        match current.get(k) {
            None => match rekeyed(k) {
                Some(old) => out.push(PeerChange::Rekey {
                    old,
                    new: *k,
                    config: want.clone(),
                }),
                None => out.push(PeerChange::Add(*k, want.clone())),
            },
            Some(have) if have == want => {}
            Some(have) if have.keepalive != want.keepalive => {
                out.push(PeerChange::Replace(*k, want.clone()));
            }
            Some(_) => out.push(PeerChange::Update(*k, want.clone())),
        }
    }
    out
}

/// Routes to add and to delete to go from `current` to `desired`.
#[must_use]
pub fn diff_routes(current: &BTreeSet<Cidr>, desired: &BTreeSet<Cidr>) -> (Vec<Cidr>, Vec<Cidr>) {
    (
        desired.difference(current).copied().collect(),
        current.difference(desired).copied().collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> PublicKey {
        PublicKey::from([n; 32])
    }

    fn node() -> NodeSpec {
        NodeSpec {
            interface: "idd1".into(),
            public_key: key(1),
            listen_port: crate::DEFAULT_PORT,
            underlay_mtu: 1500,
            underlay_ipv6: false,
            keepalive: 25,
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            local_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
            route_table: 254,
            node_route_table: None,
        }
    }

    fn peer(n: u8) -> PeerSpec {
        PeerSpec {
            public_key: key(n),
            endpoint: format!("10.99.0.1{n}:51871").parse().unwrap(),
            pod_cidrs: vec![format!("10.244.{n}.0/24").parse().unwrap()],
            keepalive: None,
            next_public_key: None,
            node_addresses: vec![],
        }
    }

    #[test]
    fn node_addresses_are_allowed_and_routed_only_in_the_node_table() {
        let mut p2 = peer(2);
        p2.node_addresses = vec!["10.99.0.12/32".parse().unwrap()];
        // Without node encryption they are ignored: no allowed IP, no route.
        let d = plan(&node(), std::slice::from_ref(&p2)).unwrap();
        assert!(d.node_routes.is_none());
        assert_eq!(d.peers[&key(2)].allowed_ips.len(), 1);
        let mut n = node();
        n.node_route_table = Some(204);
        let d = plan(&n, &[p2.clone(), peer(3)]).unwrap();
        let allowed: Vec<String> = d.peers[&key(2)]
            .allowed_ips
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(allowed, ["10.99.0.12/32", "10.244.2.0/24"]);
        let (table, routes) = d.node_routes.as_ref().unwrap();
        assert_eq!(*table, 204);
        assert_eq!(
            routes.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["10.99.0.12/32"]
        );
        // Never in the main table: the device's own datagrams go to that address.
        assert!(
            !d.routes
                .iter()
                .any(|r| r.contains("10.99.0.12".parse().unwrap()))
        );
        // A node address inside someone's pod CIDR is refused, naming it.
        let mut bad = peer(3);
        bad.node_addresses = vec!["10.244.2.7/32".parse().unwrap()];
        let e = plan(&n, &[peer(2), bad]).unwrap_err();
        assert!(e.to_string().contains("10.244.2.7/32"), "{e}");
    }

    #[test]
    fn a_cluster_cidr_inside_this_nodes_own_pod_cidr_is_not_routed_into_the_tunnel() {
        // Cluster CIDRs learned from Node objects include this node's own allocation.
        let mut n = node();
        n.cluster_cidrs = [
            "10.244.0.0/16",
            "10.244.1.0/24",
            "10.244.1.128/25",
            "10.244.7.0/24",
        ]
        .iter()
        .map(|c| c.parse().unwrap())
        .collect();
        let d = plan(&n, &[peer(2)]).unwrap();
        let routes: Vec<String> = d.routes.iter().map(ToString::to_string).collect();
        assert_eq!(
            routes,
            ["10.244.0.0/16", "10.244.2.0/24", "10.244.7.0/24"],
            "the local /24 and its /25 stay on the node's own pod routes"
        );
    }

    #[test]
    fn cidr_parses_masks_and_matches() {
        let c: Cidr = "10.244.1.7/24".parse().unwrap();
        assert_eq!(c.to_string(), "10.244.1.0/24");
        assert!(c.contains("10.244.1.200".parse().unwrap()));
        assert!(!c.contains("10.244.2.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let v6: Cidr = "fd00:1::5/64".parse().unwrap();
        assert_eq!(v6.to_string(), "fd00:1::/64");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        let e = "10.0.0.0".parse::<Cidr>().unwrap_err();
        assert!(e.to_string().contains("\"10.0.0.0\""), "{e}");
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        assert!(all.overlaps(&c));
    }

    #[test]
    fn plan_builds_peers_routes_mtu_and_keepalive() {
        let mut p3 = peer(3);
        p3.keepalive = Some(5);
        let d = plan(&node(), &[peer(2), p3]).unwrap();
        assert_eq!(d.mtu, 1440);
        assert_eq!(d.listen_port, 51871);
        assert_eq!(d.peers.len(), 2);
        let p2 = &d.peers[&key(2)];
        assert_eq!(p2.keepalive, 25);
        assert_eq!(p2.endpoint, Some("10.99.0.12:51871".parse().unwrap()));
        assert_eq!(
            p2.allowed_ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.244.2.0/24"]
        );
        assert_eq!(d.peers[&key(3)].keepalive, 5);
        let routes: Vec<_> = d.routes.iter().map(ToString::to_string).collect();
        assert_eq!(routes, ["10.244.0.0/16", "10.244.2.0/24", "10.244.3.0/24"]);
    }

    #[test]
    fn ipv6_underlay_takes_80_bytes() {
        let mut n = node();
        n.underlay_ipv6 = true;
        assert_eq!(plan(&n, &[]).unwrap().mtu, 1420);
        n.underlay_mtu = 9000;
        assert_eq!(plan(&n, &[]).unwrap().mtu, 8920);
    }

    #[test]
    fn plan_rejects_bad_input_naming_the_field() {
        let mut n = node();
        n.interface = "a-name-that-is-too-long".into();
        let e = plan(&n, &[]).unwrap_err();
        assert!(e.to_string().starts_with("interface="), "{e}");

        let mut n = node();
        n.underlay_mtu = 1300;
        let e = plan(&n, &[]).unwrap_err();
        assert_eq!(
            e,
            PlanError::Mtu {
                value: 1300,
                min: 1340
            }
        );

        let e = plan(&node(), &[peer(1)]).unwrap_err();
        assert!(matches!(e, PlanError::SelfPeer { .. }));

        let e = plan(&node(), &[peer(2), peer(2)]).unwrap_err();
        assert!(matches!(e, PlanError::DuplicatePeer { .. }));

        let mut p3 = peer(3);
        p3.pod_cidrs = vec!["10.244.2.128/25".parse().unwrap()];
        let e = plan(&node(), &[peer(2), p3]).unwrap_err();
        assert!(e.to_string().contains("overlaps 10.244.2.0/24"), "{e}");

        let mut p4 = peer(4);
        p4.pod_cidrs = vec!["10.244.1.0/24".parse().unwrap()];
        let e = plan(&node(), &[p4]).unwrap_err();
        assert!(e.to_string().contains("this node's pod CIDR"), "{e}");
    }

    #[test]
    fn diff_touches_only_what_changed() {
        let a = plan(&node(), &[peer(2), peer(3)]).unwrap();
        assert!(diff_peers(&a.peers, &a.peers).is_empty());
        assert_eq!(diff_routes(&a.routes, &a.routes), (vec![], vec![]));

        // Remove peer 3, move peer 2's endpoint, add peer 4.
        let mut p2 = peer(2);
        p2.endpoint = "10.99.0.99:51871".parse().unwrap();
        let b = plan(&node(), &[p2, peer(4)]).unwrap();
        let changes = diff_peers(&a.peers, &b.peers);
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert!(changes.contains(&PeerChange::Remove(key(3))));
        assert!(
            changes
                .iter()
                .find(|c| matches!(c, PeerChange::Update(k, _) if *k == key(2)))
                .is_some()
        );
        assert!(
            changes
                .iter()
                .find(|c| matches!(c, PeerChange::Add(k, _) if *k == key(4)))
                .is_some()
        );
        let (add, del) = diff_routes(&a.routes, &b.routes);
        assert_eq!(add, vec!["10.244.4.0/24".parse::<Cidr>().unwrap()]);
        assert_eq!(del, vec!["10.244.3.0/24".parse::<Cidr>().unwrap()]);

        // A keepalive change rebuilds that peer only.
        let mut p3 = peer(3);
        p3.keepalive = Some(1);
        let c = plan(&node(), &[peer(2), p3]).unwrap();
        assert_eq!(
            diff_peers(&a.peers, &c.peers),
            vec![PeerChange::Replace(key(3), c.peers[&key(3)].clone())]
        );
    }

    #[test]
    fn a_rotating_peer_is_updated_in_place_then_rekeyed_not_replaced() {
        let a = plan(&node(), &[peer(2), peer(3)]).unwrap();
        // Announced: peer 2 publishes its next key 12 beside key 2.
        let mut announced = peer(2);
        announced.next_public_key = Some(key(12));
        let b = plan(&node(), &[announced, peer(3)]).unwrap();
        assert_eq!(
            diff_peers(&a.peers, &b.peers),
            vec![PeerChange::Update(key(2), b.peers[&key(2)].clone())]
        );
        // Retired: key 12 is its only key now; the same peer, not a removal and an addition.
        let mut retired = peer(2);
        retired.public_key = key(12);
        let c = plan(&node(), &[retired, peer(3)]).unwrap();
        assert_eq!(
            diff_peers(&b.peers, &c.peers),
            vec![PeerChange::Rekey {
                old: key(2),
                new: key(12),
                config: c.peers[&key(12)].clone()
            }]
        );
        // Without the announcement the same change is a new peer.
        let changes = diff_peers(&a.peers, &c.peers);
        assert!(changes.contains(&PeerChange::Remove(key(2))), "{changes:?}");
        assert!(
            changes
                .iter()
                .any(|c| matches!(c, PeerChange::Add(k, _) if *k == key(12))),
            "{changes:?}"
        );
        // A next key that is another peer's key, or this node's, is refused.
        let mut clash = peer(2);
        clash.next_public_key = Some(key(3));
        assert_eq!(
            plan(&node(), &[clash, peer(3)]),
            Err(PlanError::DuplicatePeer { key: key(3) })
        );
        let mut own = peer(2);
        own.next_public_key = Some(key(1));
        assert_eq!(
            plan(&node(), &[own]),
            Err(PlanError::SelfPeer { key: key(1) })
        );
    }

    #[test]
    fn removing_a_peer_keeps_the_cluster_route_so_its_pods_are_not_sent_in_clear() {
        let a = plan(&node(), &[peer(2), peer(3)]).unwrap();
        let b = plan(&node(), &[peer(2)]).unwrap();
        let dropped: Cidr = "10.244.3.1/32".parse().unwrap();
        assert!(b.routes.iter().any(|r| r.contains(dropped.addr())));
        let (_, del) = diff_routes(&a.routes, &b.routes);
        assert_eq!(del, vec!["10.244.3.0/24".parse::<Cidr>().unwrap()]);
    }

    proptest::proptest! {
        #[test]
        fn cidr_parse_never_panics_and_round_trips(s in "[0-9a-f:.]{0,40}/[0-9]{0,4}") {
            if let Ok(c) = s.parse::<Cidr>() {
                proptest::prop_assert_eq!(c.to_string().parse::<Cidr>().unwrap(), c);
                proptest::prop_assert!(c.contains(c.addr()));
            }
        }

        #[test]
        fn v4_cidr_contains_exactly_its_prefix(a in proptest::prelude::any::<u32>(), b in proptest::prelude::any::<u32>(), len in 0u8..=32) {
            let c = Cidr::new(IpAddr::V4(Ipv4Addr::from(a)), len).unwrap();
            let m = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            proptest::prop_assert_eq!(c.contains(IpAddr::V4(Ipv4Addr::from(b))), a & m == b & m);
        }
    }
}
