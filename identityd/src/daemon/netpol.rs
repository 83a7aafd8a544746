//! Kubernetes NetworkPolicy compiler: a pure function from a [`ClusterState`] to the maps the
//! datapath enforces ([`PolicyPlan`]). No I/O; the apply step (BPF maps) diffs the plan against
//! what is installed.
//!
//! Semantics are Kubernetes' (networking.k8s.io/v1):
//! - A pod is isolated for ingress (egress) when a NetworkPolicy of its namespace selects it
//!   (`podSelector`) and has that policy type; what it may receive (send) is then the union of
//!   the rules of every such policy for that direction. A pod no policy isolates is open.
//! - Peers: `podSelector` alone picks pods of the policy's namespace; `namespaceSelector`
//!   alone every pod of the namespaces it picks; both, the pods matching the first in the
//!   namespaces matching the second. Namespaces carry `kubernetes.io/metadata.name=<name>`
//!   whether or not the Namespace object says so. An empty `from`/`to` is every peer (pods and
//!   addresses), an empty `ports` every protocol and port.
//! - Pods are those with addresses (`status.podIPs`/`podIP`, all of them), not `hostNetwork`,
//!   not terminated.
//!
//! The compiled form is Cilium's: pods get a numeric *identity* from their namespace, its
//! labels and their labels (pods with the same three share one); each `ipBlock` prefix gets a
//! *CIDR identity*; a rule is a key `(subject identity, direction, peer identity, protocol,
//! port prefix)` ([`RuleKey`]). At run time the datapath looks up a peer address's pod identity
//! and the CIDR identity of its longest matching prefix, and allows a packet when a rule exists
//! for either (or for [`PEER_ANY`]) — [`PolicyPlan::allows`] is that lookup.
//!
//! Identities are hashes, not indexes, so that adding an unrelated object changes no existing
//! identity (only a hash collision, resolved by probing in a deterministic order, can).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::model::netpol::{
    IpBlock, LabelSelector, NAMESPACE_NAME_LABEL, NetworkPolicy, NetworkPolicyPeer,
    NetworkPolicyPort, cidr_within,
};
use crate::model::{Cidr, ClusterState, IntOrString, Kind, NamespacedName, ObjectProblem, Pod};

/// The peer of a rule that matches every source (ingress) or destination (egress).
pub const PEER_ANY: u32 = 0;
/// The bit every CIDR identity has set and no pod identity has.
pub const CIDR_IDENTITY_BIT: u32 = 0x8000_0000;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IP protocol number of SCTP.
pub const PROTO_SCTP: u8 = 132;

/// The 31 bits an identity or policy id hash keeps.
const HASH_MASK: u32 = 0x7fff_ffff;

/// The compiled policy of the whole cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyPlan {
    /// Every pod address of the cluster (all nodes), with its pod's identity and isolation.
    pub pods: BTreeMap<IpAddr, PodPolicy>,
    /// Each distinct `ipBlock` cidr and except prefix → its CIDR identity. An address's CIDR
    /// identity is that of its longest matching prefix here.
    pub cidrs: BTreeMap<Cidr, u32>,
    /// Allowed traffic → the id of (the smallest of) the policies granting it.
    pub rules: BTreeMap<RuleKey, u32>,
    /// Policy id → policy.
    pub policies: BTreeMap<u32, NamespacedName>,
    /// Objects the compiler had to skip a part of (pods sharing an address; parts of policies
    /// that validation would have refused). A named port resolving to nothing is no problem.
    pub problems: Vec<ObjectProblem>,
    /// Policies whose `podSelector` selects no pod (by namespace/name).
    pub selects_nothing: Vec<NamespacedName>,
    /// Namespaces with a default-deny-ingress policy (`podSelector: {}`, type Ingress, no
    /// ingress rule).
    pub default_deny: BTreeSet<String>,
}

/// The policy state of one pod address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodPolicy {
    /// The pod's identity (high bit clear, never 0).
    pub identity: u32,
    /// The id of a policy (the smallest) isolating the pod for ingress; `None`: not isolated.
    pub ingress: Option<u32>,
    /// The id of a policy (the smallest) isolating the pod for egress; `None`: not isolated.
    pub egress: Option<u32>,
}

/// A traffic direction, as seen from the selected (subject) pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Traffic to the subject.
    Ingress,
    /// Traffic from the subject.
    Egress,
}

/// One allowed (subject, direction, peer, protocol, ports) combination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey {
    /// Identity of the selected (local) pods.
    pub subject: u32,
    /// Direction.
    pub direction: Direction,
    /// Pod identity, CIDR identity, or [`PEER_ANY`].
    pub peer: u32,
    /// IP protocol number (6, 17, 132); `None`: every protocol and port.
    pub protocol: Option<u8>,
    /// First port of the block (its low `16 - prefix` bits are zero).
    pub port: u16,
    /// Number of leading port bits that must match: 16 = exactly `port`, 0 = any port of
    /// `protocol`.
    pub prefix: u8,
}

impl PolicyPlan {
    /// The CIDR identity of `addr`: that of the longest prefix of [`PolicyPlan::cidrs`]
    /// containing it.
    #[must_use]
    pub fn cidr_identity(&self, addr: IpAddr) -> Option<u32> {
        self.cidrs
            .iter()
            .filter(|(c, _)| c.contains(addr))
            .max_by_key(|(c, _)| c.prefix)
            .map(|(_, id)| *id)
    }

    /// The peer identities a rule may name to match `addr`: its pod identity, its CIDR
    /// identity, and [`PEER_ANY`].
    fn peers_of(&self, addr: IpAddr) -> [Option<u32>; 3] {
        [
            self.pods.get(&addr).map(|p| p.identity),
            self.cidr_identity(addr),
            Some(PEER_ANY),
        ]
    }

    /// Whether a rule of `subject` in `direction` admits a packet to or from `peers`.
    fn admits(
        &self,
        subject: u32,
        direction: Direction,
        peers: &[Option<u32>; 3],
        protocol: u8,
        dport: u16,
    ) -> bool {
        let key = |peer, protocol, port, prefix| RuleKey {
            subject,
            direction,
            peer,
            protocol,
            port,
            prefix,
        };
        peers.iter().flatten().any(|&peer| {
            self.rules.contains_key(&key(peer, None, 0, 0))
                || (0..=16u8).any(|prefix| {
                    let port = mask_port(dport, prefix);
                    self.rules
                        .contains_key(&key(peer, Some(protocol), port, prefix))
                })
        })
    }

    /// Whether the plan allows a packet from `src` to `dst` (IP protocol `protocol`,
    /// destination port `dport`), evaluated as the datapath does: egress at `src` when it is
    /// an egress-isolated pod, ingress at `dst` when it is an ingress-isolated pod; an address
    /// that is no pod has no side to check.
    #[must_use]
    pub fn allows(&self, src: IpAddr, dst: IpAddr, protocol: u8, dport: u16) -> bool {
        if let Some(p) = self.pods.get(&src)
            && p.egress.is_some()
            && !self.admits(
                p.identity,
                Direction::Egress,
                &self.peers_of(dst),
                protocol,
                dport,
            )
        {
            return false;
        }
        if let Some(p) = self.pods.get(&dst)
            && p.ingress.is_some()
            && !self.admits(
                p.identity,
                Direction::Ingress,
                &self.peers_of(src),
                protocol,
                dport,
            )
        {
            return false;
        }
        true
    }
}

/// `port` with its low `16 - prefix` bits cleared.
fn mask_port(port: u16, prefix: u8) -> u16 {
    if prefix == 0 {
        0
    } else {
        let mask = (0xffff_u32 << (16 - u32::from(prefix.min(16)))) & 0xffff;
        port & u16::try_from(mask).unwrap_or(u16::MAX)
    }
}

/// Splits `start..=end` into maximal aligned power-of-two blocks `(first port, prefix)`.
#[must_use]
pub fn port_blocks(start: u16, end: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut p, end) = (u32::from(start), u32::from(end));
    while p <= end {
        // The largest block aligned at `p`, then shrunk until it ends within the range.
        let mut bits = if p == 0 {
            16
        } else {
            p.trailing_zeros().min(16)
        };
        while p + (1 << bits) - 1 > end {
            bits -= 1;
        }
        out.push((
            u16::try_from(p).unwrap_or(u16::MAX),
            u8::try_from(16 - bits).unwrap_or(16),
        ));
        p += 1 << bits;
    }
    out
}

/// The IP protocol number of a Kubernetes protocol name.
#[must_use]
pub fn protocol_number(name: &str) -> Option<u8> {
    match name {
        "TCP" => Some(PROTO_TCP),
        "UDP" => Some(PROTO_UDP),
        "SCTP" => Some(PROTO_SCTP),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Identities

/// A canonical, unambiguous byte encoding of what an identity is derived from (every string
/// length-prefixed), hashed with SHA-256.
struct Canonical(Vec<u8>);

impl Canonical {
    fn new(tag: &str) -> Self {
        let mut c = Self(Vec::new());
        c.str(tag);
        c
    }

    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(&(b.len() as u64).to_be_bytes());
        self.0.extend_from_slice(b);
    }

    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    fn labels(&mut self, labels: &BTreeMap<String, String>) {
        self.0
            .extend_from_slice(&(labels.len() as u64).to_be_bytes());
        for (k, v) in labels {
            self.str(k);
            self.str(v);
        }
    }

    /// 31 bits of the SHA-256 of the encoding.
    fn hash31(&self) -> u32 {
        let d = ring::digest::digest(&ring::digest::SHA256, &self.0);
        let mut first = [0u8; 4];
        first.copy_from_slice(&d.as_ref()[..4]);
        u32::from_be_bytes(first) & HASH_MASK
    }
}

/// Assigns each key its 31-bit hash (| `high`), avoiding 0 in the low bits when `nonzero`.
/// Collisions are resolved by probing `+1`, the colliding keys taken in sorted order, so the
/// result depends only on the set of keys.
fn assign<K: Ord + Clone>(
    keys: impl IntoIterator<Item = (K, u32)>,
    high: u32,
    nonzero: bool,
) -> BTreeMap<K, u32> {
    let mut sorted: Vec<(u32, K)> = keys.into_iter().map(|(k, h)| (h, k)).collect();
    sorted.sort();
    let mut used = BTreeSet::new();
    let mut out = BTreeMap::new();
    for (h, k) in sorted {
        let mut id = h;
        while (nonzero && id == 0) || used.contains(&id) {
            id = (id + 1) & HASH_MASK;
        }
        used.insert(id);
        out.insert(k, high | id);
    }
    out
}

/// What a pod identity is derived from: namespace, the namespace's labels (with the automatic
/// one) and the pod's labels.
type IdentityKey<'a> = (
    &'a str,
    &'a BTreeMap<String, String>,
    &'a BTreeMap<String, String>,
);

fn pod_identity_hash(key: &IdentityKey<'_>) -> u32 {
    let mut c = Canonical::new("identityd/netpol/pod/v1");
    c.str(key.0);
    c.labels(key.1);
    c.labels(key.2);
    c.hash31()
}

fn cidr_hash(cidr: &Cidr) -> u32 {
    let mut c = Canonical::new("identityd/netpol/cidr/v1");
    match cidr.addr {
        IpAddr::V4(a) => c.bytes(&a.octets()),
        IpAddr::V6(a) => c.bytes(&a.octets()),
    }
    c.bytes(&[cidr.prefix]);
    c.hash31()
}

fn policy_hash(key: &NamespacedName) -> u32 {
    let mut c = Canonical::new("identityd/netpol/policy/v1");
    c.str(&format!("{}/{}", key.namespace, key.name));
    c.hash31()
}

/// A namespace's labels as selectors see them: the Namespace object's, plus
/// `kubernetes.io/metadata.name` (the only label of a namespace without an object).
fn namespace_labels(state: &ClusterState, namespace: &str) -> BTreeMap<String, String> {
    let mut labels = state
        .namespaces
        .get(namespace)
        .map(|n| n.metadata.labels.clone())
        .unwrap_or_default();
    labels.insert(NAMESPACE_NAME_LABEL.to_owned(), namespace.to_owned());
    labels
}

/// Whether a pod takes part in policy: it has an address, is not on the host network and has
/// not terminated.
fn is_policy_pod(pod: &Pod) -> bool {
    !pod.spec.host_network && !pod.is_terminated() && !pod.ips().is_empty()
}

/// One pod identity: what it is derived from and its pods.
struct Identity<'a> {
    id: u32,
    namespace: &'a str,
    namespace_labels: &'a BTreeMap<String, String>,
    labels: &'a BTreeMap<String, String>,
    pods: Vec<&'a Pod>,
}

impl Identity<'_> {
    /// The ports named `name` with protocol `protocol` the identity's pods declare (union).
    fn named_ports(&self, name: &str, protocol: &str) -> BTreeSet<u16> {
        self.pods
            .iter()
            .flat_map(|p| &p.spec.containers)
            .flat_map(|c| &c.ports)
            .filter(|p| {
                p.name.as_deref() == Some(name)
                    && p.protocol.as_deref().unwrap_or("TCP") == protocol
            })
            .filter_map(|p| u16::try_from(p.container_port).ok().filter(|n| *n != 0))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Compilation

/// One `ports[]` entry, resolved except for a name.
enum PortEntry {
    /// Every port of a protocol.
    Protocol(u8),
    /// `port..=endPort` of a protocol.
    Range(u8, u16, u16),
    /// A named container port of a protocol (resolved per target identity).
    Named(u8, String),
}

/// A rule's `ports`: everything, or a list.
enum Ports {
    All,
    List(Vec<PortEntry>),
}

/// A rule's peers: everything, or a set of pod and CIDR identities.
enum Peers {
    Any,
    Set(BTreeSet<u32>),
}

struct Compiler<'a> {
    state: &'a ClusterState,
    identities: Vec<Identity<'a>>,
    /// Identity → its index in `identities`.
    by_id: BTreeMap<u32, usize>,
    plan: PolicyPlan,
}

/// Compiles every NetworkPolicy of `state` into a [`PolicyPlan`]. Pure: same state, same plan.
#[must_use]
pub fn compile(state: &ClusterState) -> PolicyPlan {
    let mut ns_labels: BTreeMap<&str, BTreeMap<String, String>> = BTreeMap::new();
    let mut groups: BTreeMap<(&str, &BTreeMap<String, String>), Vec<&Pod>> = BTreeMap::new();
    for pod in state.pods.values().filter(|p| is_policy_pod(p)) {
        let ns = pod.namespace();
        ns_labels
            .entry(ns)
            .or_insert_with(|| namespace_labels(state, ns));
        groups
            .entry((ns, &pod.metadata.labels))
            .or_default()
            .push(pod);
    }
    let mut identities: Vec<Identity<'_>> = groups
        .into_iter()
        .map(|((namespace, labels), pods)| Identity {
            id: 0,
            namespace,
            namespace_labels: &ns_labels[namespace],
            labels,
            pods,
        })
        .collect();
    let ids = assign(
        identities.iter().map(|i| {
            let key: IdentityKey<'_> = (i.namespace, i.namespace_labels, i.labels);
            (key, pod_identity_hash(&key))
        }),
        0,
        true,
    );
    for i in &mut identities {
        i.id = ids[&(i.namespace, i.namespace_labels, i.labels)];
    }

    let mut c = Compiler {
        state,
        by_id: identities
            .iter()
            .enumerate()
            .map(|(i, id)| (id.id, i))
            .collect(),
        identities: Vec::new(),
        plan: PolicyPlan::default(),
    };
    c.add_pods(&identities);
    c.identities = identities;
    c.add_policies();
    c.plan
}

impl<'a> Compiler<'a> {
    fn add_pods(&mut self, identities: &[Identity<'_>]) {
        let mut owner: BTreeMap<IpAddr, NamespacedName> = BTreeMap::new();
        let mut pods: Vec<(NamespacedName, &Pod, u32)> = identities
            .iter()
            .flat_map(|i| {
                i.pods.iter().map(|p| {
                    (
                        NamespacedName::new(p.namespace(), &p.metadata.name),
                        *p,
                        i.id,
                    )
                })
            })
            .collect();
        pods.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, pod, identity) in pods {
            for ip in pod.ips() {
                if let Some(first) = owner.get(&ip) {
                    self.plan.problems.push(ObjectProblem::new(
                        Kind::Pod,
                        &key,
                        format!("status.podIPs={ip}"),
                        format!("address already held by pod {first}; that pod keeps it"),
                    ));
                    continue;
                }
                owner.insert(ip, key.clone());
                self.plan.pods.insert(
                    ip,
                    PodPolicy {
                        identity,
                        ingress: None,
                        egress: None,
                    },
                );
            }
        }
    }

    fn problem(&mut self, key: &NamespacedName, field: String, message: impl Into<String>) {
        self.plan
            .problems
            .push(ObjectProblem::new(Kind::NetworkPolicy, key, field, message));
    }

    fn add_policies(&mut self) {
        let state = self.state;
        let ids = assign(
            state
                .network_policies
                .keys()
                .map(|k| (k.clone(), policy_hash(k))),
            0,
            true,
        );
        self.plan.policies = ids.iter().map(|(k, id)| (*id, k.clone())).collect();
        self.add_cidrs();

        // Isolation per identity and direction: the smallest id of an isolating policy.
        let mut ingress: BTreeMap<u32, u32> = BTreeMap::new();
        let mut egress: BTreeMap<u32, u32> = BTreeMap::new();
        for (key, policy) in &state.network_policies {
            let pid = ids[key];
            let ns = policy.namespace();
            let types = policy.policy_types();
            let subjects: Vec<usize> = (0..self.identities.len())
                .filter(|&i| {
                    let id = &self.identities[i];
                    id.namespace == ns && policy.spec.pod_selector.matches(id.labels)
                })
                .collect();
            if subjects.is_empty() {
                self.plan.selects_nothing.push(key.clone());
            }
            if types.ingress
                && policy.spec.pod_selector.is_empty()
                && policy.spec.ingress.is_empty()
            {
                self.plan.default_deny.insert(ns.to_owned());
            }
            for &s in &subjects {
                let id = self.identities[s].id;
                if types.ingress {
                    let e = ingress.entry(id).or_insert(pid);
                    *e = (*e).min(pid);
                }
                if types.egress {
                    let e = egress.entry(id).or_insert(pid);
                    *e = (*e).min(pid);
                }
            }
            if types.ingress {
                for (i, rule) in policy.spec.ingress.iter().enumerate() {
                    let base = format!("spec.ingress[{i}]");
                    let peers = self.peers(key, policy, &format!("{base}.from"), &rule.from);
                    let ports = self.ports(key, &format!("{base}.ports"), &rule.ports);
                    for &s in &subjects {
                        self.add_ingress(pid, s, &peers, &ports);
                    }
                }
            }
            if types.egress {
                for (i, rule) in policy.spec.egress.iter().enumerate() {
                    let base = format!("spec.egress[{i}]");
                    let peers = self.peers(key, policy, &format!("{base}.to"), &rule.to);
                    let ports = self.ports(key, &format!("{base}.ports"), &rule.ports);
                    for &s in &subjects {
                        self.add_egress(pid, s, &peers, &ports);
                    }
                }
            }
        }
        for p in self.plan.pods.values_mut() {
            p.ingress = ingress.get(&p.identity).copied();
            p.egress = egress.get(&p.identity).copied();
        }
    }

    /// Every `ipBlock` cidr and except prefix of every policy gets a CIDR identity.
    fn add_cidrs(&mut self) {
        let mut prefixes = BTreeSet::new();
        let state = self.state;
        for (key, policy) in &state.network_policies {
            let ingress = policy.spec.ingress.iter().enumerate().flat_map(|(i, r)| {
                r.from
                    .iter()
                    .enumerate()
                    .map(move |(j, p)| (format!("spec.ingress[{i}].from[{j}]"), p))
            });
            let egress = policy.spec.egress.iter().enumerate().flat_map(|(i, r)| {
                r.to.iter()
                    .enumerate()
                    .map(move |(j, p)| (format!("spec.egress[{i}].to[{j}]"), p))
            });
            for (path, peer) in ingress.chain(egress) {
                let Some(block) = &peer.ip_block else {
                    continue;
                };
                match block.parse() {
                    Some((cidr, except)) => {
                        prefixes.insert(cidr);
                        prefixes.extend(except);
                    }
                    None => self.problem(
                        key,
                        format!("{path}.ipBlock={}", block.cidr),
                        "cidr or an except prefix is not a CIDR; the peer allows nothing",
                    ),
                }
            }
        }
        self.plan.cidrs = assign(
            prefixes.into_iter().map(|c| (c, cidr_hash(&c))),
            CIDR_IDENTITY_BIT,
            false,
        );
    }

    /// The CIDR identities an `ipBlock` allows: those whose prefix P lies inside `cidr` and
    /// inside no `except` prefix.
    ///
    /// Why this is exact: an address's CIDR identity is that of its longest matching prefix L
    /// among all prefixes of the plan, which include `cidr` and every `except` e. Two prefixes
    /// containing the same address are nested. If the address is in `cidr` and in no e, then
    /// `cidr` contains it, so L ⊆ `cidr` (L is at least as long), and L ⊆ e would put the
    /// address in e: L is allowed. Conversely if L ⊆ `cidr` the address is in `cidr`, and if it
    /// were in some e, e would contain it, so L ⊆ e (L is the longest): L is not allowed.
    fn ip_block_peers(&self, block: &IpBlock) -> BTreeSet<u32> {
        let Some((cidr, except)) = block.parse() else {
            return BTreeSet::new();
        };
        self.plan
            .cidrs
            .iter()
            .filter(|(p, _)| cidr_within(p, &cidr) && !except.iter().any(|e| cidr_within(p, e)))
            .map(|(_, id)| *id)
            .collect()
    }

    /// The pod identities a selector peer picks, seen from a policy of `namespace`.
    fn selector_peers(
        &self,
        namespace: &str,
        pod_selector: Option<&LabelSelector>,
        namespace_selector: Option<&LabelSelector>,
    ) -> BTreeSet<u32> {
        self.identities
            .iter()
            .filter(|id| match namespace_selector {
                Some(ns) => ns.matches(id.namespace_labels),
                None => id.namespace == namespace,
            })
            .filter(|id| pod_selector.is_none_or(|s| s.matches(id.labels)))
            .map(|id| id.id)
            .collect()
    }

    fn peers(
        &mut self,
        key: &NamespacedName,
        policy: &NetworkPolicy,
        path: &str,
        peers: &[NetworkPolicyPeer],
    ) -> Peers {
        if peers.is_empty() {
            return Peers::Any;
        }
        let mut out = BTreeSet::new();
        for (j, peer) in peers.iter().enumerate() {
            let selectors = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
            match (&peer.ip_block, selectors) {
                (Some(b), false) => out.extend(self.ip_block_peers(b)),
                (None, true) => out.extend(self.selector_peers(
                    policy.namespace(),
                    peer.pod_selector.as_ref(),
                    peer.namespace_selector.as_ref(),
                )),
                (Some(_), true) => self.problem(
                    key,
                    format!("{path}[{j}]"),
                    "ipBlock combined with a selector; the peer allows nothing",
                ),
                (None, false) => {
                    self.problem(key, format!("{path}[{j}]"), "empty peer; it allows nothing")
                }
            }
        }
        Peers::Set(out)
    }

    fn ports(&mut self, key: &NamespacedName, path: &str, ports: &[NetworkPolicyPort]) -> Ports {
        if ports.is_empty() {
            return Ports::All;
        }
        let mut out = Vec::new();
        for (j, p) in ports.iter().enumerate() {
            let Some(proto) = protocol_number(p.protocol()) else {
                self.problem(
                    key,
                    format!("{path}[{j}].protocol={}", p.protocol()),
                    "unknown protocol; the entry allows nothing",
                );
                continue;
            };
            let entry = match (&p.port, p.end_port) {
                (None, None) => Some(PortEntry::Protocol(proto)),
                (Some(IntOrString::Int(n)), end) => {
                    let start = u16::try_from(*n).ok().filter(|n| *n != 0);
                    let end = match end {
                        None => start,
                        Some(e) => u16::try_from(e).ok(),
                    };
                    match (start, end) {
                        (Some(s), Some(e)) if s <= e => Some(PortEntry::Range(proto, s, e)),
                        _ => None,
                    }
                }
                (Some(IntOrString::String(name)), None) => {
                    Some(PortEntry::Named(proto, name.clone()))
                }
                _ => None,
            };
            match entry {
                Some(e) => out.push(e),
                None => self.problem(
                    key,
                    format!("{path}[{j}]"),
                    "port or endPort out of range; the entry allows nothing",
                ),
            }
        }
        Ports::List(out)
    }

    fn insert(&mut self, key: RuleKey, pid: u32) {
        let e = self.plan.rules.entry(key).or_insert(pid);
        *e = (*e).min(pid);
    }

    /// Inserts `base` (subject, direction, peer) with every (protocol, port block) of
    /// `entries`; named entries are resolved against the pods of identity `named_target`
    /// (`None`: skipped). `named_only` skips the unnamed entries.
    fn insert_entries(
        &mut self,
        pid: u32,
        base: RuleKey,
        entries: &[PortEntry],
        named_target: Option<usize>,
        named_only: bool,
    ) {
        let key = |protocol: u8, port: u16, prefix: u8| RuleKey {
            protocol: Some(protocol),
            port,
            prefix,
            ..base
        };
        for e in entries {
            match e {
                PortEntry::Protocol(proto) if !named_only => self.insert(key(*proto, 0, 0), pid),
                PortEntry::Range(proto, s, end) if !named_only => {
                    for (port, prefix) in port_blocks(*s, *end) {
                        self.insert(key(*proto, port, prefix), pid);
                    }
                }
                PortEntry::Named(proto, name) => {
                    let Some(t) = named_target else { continue };
                    let proto_name = match *proto {
                        PROTO_UDP => "UDP",
                        PROTO_SCTP => "SCTP",
                        _ => "TCP",
                    };
                    for port in self.identities[t].named_ports(name, proto_name) {
                        self.insert(key(*proto, port, 16), pid);
                    }
                }
                PortEntry::Protocol(_) | PortEntry::Range(..) => {}
            }
        }
    }

    /// Ingress rules of subject identity `s`: named ports are the subject's own container
    /// ports.
    fn add_ingress(&mut self, pid: u32, s: usize, peers: &Peers, ports: &Ports) {
        let subject = self.identities[s].id;
        let peer_ids: Vec<u32> = match peers {
            Peers::Any => vec![PEER_ANY],
            Peers::Set(set) => set.iter().copied().collect(),
        };
        for peer in peer_ids {
            let base = RuleKey {
                subject,
                direction: Direction::Ingress,
                peer,
                protocol: None,
                port: 0,
                prefix: 0,
            };
            match ports {
                Ports::All => self.insert(base, pid),
                Ports::List(entries) => self.insert_entries(pid, base, entries, Some(s), false),
            }
        }
    }

    /// Egress rules of subject identity `s`: a named port is the destination's, so it is
    /// resolved per peer pod identity — for an empty `to`, against every pod identity (those
    /// that do not declare the name add nothing). A CIDR peer (`ipBlock`) is addresses, not
    /// pods: no named port resolves for it.
    fn add_egress(&mut self, pid: u32, s: usize, peers: &Peers, ports: &Ports) {
        let base = |peer| RuleKey {
            subject: self.identities[s].id,
            direction: Direction::Egress,
            peer,
            protocol: None,
            port: 0,
            prefix: 0,
        };
        let (peer_ids, named_targets): (Vec<u32>, Vec<(u32, usize)>) = match peers {
            Peers::Any => (
                vec![PEER_ANY],
                self.by_id.iter().map(|(id, i)| (*id, *i)).collect(),
            ),
            Peers::Set(set) => (
                set.iter().copied().collect(),
                set.iter()
                    .filter_map(|id| self.by_id.get(id).map(|i| (*id, *i)))
                    .collect(),
            ),
        };
        let keys: Vec<RuleKey> = peer_ids.into_iter().map(base).collect();
        let named: Vec<(RuleKey, usize)> = named_targets
            .into_iter()
            .map(|(peer, t)| (base(peer), t))
            .collect();
        match ports {
            Ports::All => {
                for k in keys {
                    self.insert(k, pid);
                }
            }
            Ports::List(entries) => {
                for k in keys {
                    self.insert_entries(pid, k, entries, None, false);
                }
                if entries.iter().any(|e| matches!(e, PortEntry::Named(..))) {
                    for (k, t) in named {
                        self.insert_entries(pid, k, entries, Some(t), true);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::IpAddr;

    use proptest::prelude::*;

    use super::*;
    use crate::model::core::PodIp;
    use crate::model::netpol::NetworkPolicySpec;
    use crate::model::{Container, ContainerPort, Namespace, Object};
    use crate::source::decode::decode_all;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn namespace(name: &str, l: &[(&str, &str)]) -> Object {
        let mut n = Namespace::new(name, None);
        n.metadata.labels = labels(l);
        n.into()
    }

    /// A running pod with labels, every address of `ips`, and container ports
    /// `(name, number, protocol)`.
    fn pod_with(
        ns: &str,
        name: &str,
        l: &[(&str, &str)],
        ips: &[&str],
        ports: &[(&str, i64, &str)],
    ) -> Object {
        let mut p = Pod::new(ns, name, "n1", "default", ip(ips[0]));
        p.metadata.labels = labels(l);
        if let Some(st) = p.status.as_mut() {
            st.pod_ips = ips.iter().map(|i| PodIp { ip: (*i).into() }).collect();
        }
        p.spec.containers = vec![Container {
            name: "c".into(),
            ports: ports
                .iter()
                .map(|(n, num, proto)| ContainerPort {
                    name: Some((*n).into()),
                    container_port: *num,
                    protocol: Some((*proto).into()),
                })
                .collect(),
            ..Container::default()
        }];
        p.into()
    }

    fn pod(ns: &str, name: &str, l: &[(&str, &str)], addr: &str) -> Object {
        pod_with(ns, name, l, &[addr], &[])
    }

    /// A NetworkPolicy from the YAML of its `spec` (indented two spaces).
    fn np(ns: &str, name: &str, spec: &str) -> Object {
        let yaml = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
        );
        match decode_all(&yaml).remove(0).1 {
            Ok(Some(o)) => o,
            other => panic!("{yaml}\n{other:?}"),
        }
    }

    fn state(objects: Vec<Object>) -> ClusterState {
        let s = ClusterState::from_objects(1, objects);
        assert!(s.problems.is_empty(), "{:#?}", s.problems);
        s
    }

    fn plan(objects: Vec<Object>) -> PolicyPlan {
        let p = compile(&state(objects));
        assert!(p.problems.is_empty(), "{:#?}", p.problems);
        p
    }

    #[track_caller]
    fn allowed(p: &PolicyPlan, src: &str, dst: &str, proto: u8, port: u16) -> bool {
        p.allows(ip(src), ip(dst), proto, port)
    }

    #[test]
    fn default_deny_ingress_isolates_every_pod_of_the_namespace_for_ingress_only() {
        let p = plan(vec![
            pod("shop", "a", &[("app", "a")], "10.0.0.1"),
            pod("shop", "b", &[("app", "b")], "10.0.0.2"),
            pod("front", "f", &[], "10.0.1.1"),
            np("shop", "deny", "  podSelector: {}\n"),
        ]);
        assert!(!allowed(&p, "10.0.0.2", "10.0.0.1", PROTO_TCP, 80));
        assert!(!allowed(&p, "10.0.0.1", "10.0.0.2", PROTO_UDP, 53));
        assert!(!allowed(&p, "10.0.1.1", "10.0.0.1", PROTO_TCP, 80));
        assert!(!allowed(&p, "192.168.1.1", "10.0.0.1", PROTO_SCTP, 9));
        // Egress is not isolated; the other namespace is open.
        assert!(allowed(&p, "10.0.0.1", "192.168.1.1", PROTO_TCP, 443));
        assert!(allowed(&p, "10.0.0.1", "10.0.1.1", PROTO_TCP, 80));
        assert_eq!(p.default_deny, BTreeSet::from(["shop".to_owned()]));
        assert!(p.rules.is_empty());
        let deny = p.pods[&ip("10.0.0.1")];
        assert!(deny.ingress.is_some() && deny.egress.is_none());
        assert_eq!(p.pods[&ip("10.0.1.1")].ingress, None);
    }

    #[test]
    fn default_deny_egress_isolates_for_egress_only() {
        let p = plan(vec![
            pod("shop", "a", &[], "10.0.0.1"),
            pod("shop", "b", &[("app", "b")], "10.0.0.2"),
            np(
                "shop",
                "deny-egress",
                "  podSelector: {}\n  policyTypes: [Egress]\n",
            ),
        ]);
        assert!(!allowed(&p, "10.0.0.1", "10.0.0.2", PROTO_TCP, 80));
        assert!(!allowed(&p, "10.0.0.1", "8.8.8.8", PROTO_UDP, 53));
        assert!(allowed(&p, "8.8.8.8", "10.0.0.1", PROTO_TCP, 80));
        assert!(p.default_deny.is_empty());
        let a = p.pods[&ip("10.0.0.1")];
        assert!(a.ingress.is_none() && a.egress.is_some());
    }

    #[test]
    fn allow_from_a_namespace_by_its_automatic_name_label() {
        let p = plan(vec![
            // `front` has an object without the automatic label; `monitoring` has no object.
            namespace("front", &[("team", "web")]),
            pod("shop", "api", &[("app", "api")], "10.0.0.1"),
            pod("front", "web", &[], "10.0.1.1"),
            pod("monitoring", "prom", &[], "10.0.2.1"),
            pod("other", "x", &[], "10.0.3.1"),
            np(
                "shop",
                "from-front",
                "  podSelector: {matchLabels: {app: api}}\n  ingress:\n    - from:\n        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: front}}\n        - namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [monitoring]}]}\n",
            ),
        ]);
        assert!(allowed(&p, "10.0.1.1", "10.0.0.1", PROTO_TCP, 8080));
        assert!(allowed(&p, "10.0.2.1", "10.0.0.1", PROTO_UDP, 1));
        assert!(!allowed(&p, "10.0.3.1", "10.0.0.1", PROTO_TCP, 8080));
        // Pods of the policy's own namespace are not in `front`.
        assert!(!allowed(&p, "10.0.0.1", "10.0.0.1", PROTO_TCP, 8080));
        assert!(!allowed(&p, "192.168.1.1", "10.0.0.1", PROTO_TCP, 8080));
    }

    #[test]
    fn pod_and_namespace_selector_in_one_peer_is_an_and() {
        let objects = |peers: &str| {
            vec![
                namespace("x1", &[("team", "x")]),
                namespace("y1", &[("team", "y")]),
                pod("shop", "api", &[("app", "api")], "10.0.0.1"),
                pod("x1", "web", &[("app", "web")], "10.0.1.1"),
                pod("x1", "db", &[("app", "db")], "10.0.1.2"),
                pod("y1", "web", &[("app", "web")], "10.0.2.1"),
                pod("shop", "web", &[("app", "web")], "10.0.0.2"),
                np(
                    "shop",
                    "p",
                    &format!(
                        "  podSelector: {{matchLabels: {{app: api}}}}\n  ingress:\n    - from:\n{peers}"
                    ),
                ),
            ]
        };
        let and = plan(objects(
            "        - namespaceSelector: {matchLabels: {team: x}}\n          podSelector: {matchLabels: {app: web}}\n",
        ));
        assert!(allowed(&and, "10.0.1.1", "10.0.0.1", PROTO_TCP, 80));
        assert!(!allowed(&and, "10.0.1.2", "10.0.0.1", PROTO_TCP, 80));
        assert!(!allowed(&and, "10.0.2.1", "10.0.0.1", PROTO_TCP, 80));
        assert!(!allowed(&and, "10.0.0.2", "10.0.0.1", PROTO_TCP, 80));
        // Two peers are an or: every pod of team x, and web pods of the policy's namespace.
        let or = plan(objects(
            "        - namespaceSelector: {matchLabels: {team: x}}\n        - podSelector: {matchLabels: {app: web}}\n",
        ));
        assert!(allowed(&or, "10.0.1.1", "10.0.0.1", PROTO_TCP, 80));
        assert!(allowed(&or, "10.0.1.2", "10.0.0.1", PROTO_TCP, 80));
        assert!(!allowed(&or, "10.0.2.1", "10.0.0.1", PROTO_TCP, 80));
        assert!(allowed(&or, "10.0.0.2", "10.0.0.1", PROTO_TCP, 80));
    }

    #[test]
    fn ip_block_with_except_is_exact_even_with_other_policies_prefixes() {
        let p = plan(vec![
            pod("shop", "api", &[("app", "api")], "10.0.0.1"),
            pod("other", "inside", &[], "10.1.3.4"),
            pod("other", "excepted", &[], "10.1.2.9"),
            np(
                "shop",
                "p",
                "  podSelector: {}\n  ingress:\n    - from: [{ipBlock: {cidr: 10.1.0.0/16, except: [10.1.2.0/24]}}]\n",
            ),
            // Another policy's prefix nested inside the except: still excepted.
            np(
                "other",
                "q",
                "  podSelector: {matchLabels: {none: none}}\n  ingress:\n    - from: [{ipBlock: {cidr: 10.1.2.128/25}}, {ipBlock: {cidr: 10.1.1.0/24}}]\n",
            ),
        ]);
        assert!(allowed(&p, "10.1.1.1", "10.0.0.1", PROTO_TCP, 80));
        assert!(allowed(&p, "10.1.200.1", "10.0.0.1", PROTO_TCP, 80));
        assert!(!allowed(&p, "10.1.2.3", "10.0.0.1", PROTO_TCP, 80));
        assert!(!allowed(&p, "10.1.2.200", "10.0.0.1", PROTO_TCP, 80));
        assert!(!allowed(&p, "10.2.0.1", "10.0.0.1", PROTO_TCP, 80));
        // Pod addresses match ipBlocks too.
        assert!(allowed(&p, "10.1.3.4", "10.0.0.1", PROTO_TCP, 80));
        assert!(!allowed(&p, "10.1.2.9", "10.0.0.1", PROTO_TCP, 80));
        let cidrs: Vec<String> = p.cidrs.keys().map(ToString::to_string).collect();
        assert_eq!(
            cidrs,
            ["10.1.0.0/16", "10.1.1.0/24", "10.1.2.0/24", "10.1.2.128/25"]
        );
        assert!(p.cidrs.values().all(|id| id & CIDR_IDENTITY_BIT != 0));
        assert_eq!(
            p.selects_nothing,
            [NamespacedName::new("other", "q")],
            "q selects nothing"
        );
    }

    #[test]
    fn named_port_ingress_resolves_against_the_selected_pods() {
        let p = plan(vec![
            pod_with(
                "shop",
                "api",
                &[("app", "api")],
                &["10.0.0.1"],
                &[("http", 8080, "TCP"), ("dns", 53, "UDP")],
            ),
            pod_with(
                "shop",
                "web",
                &[("app", "web")],
                &["10.0.0.2"],
                &[("http", 80, "TCP")],
            ),
            pod("shop", "client", &[("app", "client")], "10.0.0.3"),
            np(
                "shop",
                "p",
                "  podSelector: {}\n  ingress:\n    - ports: [{port: http}, {port: dns, protocol: UDP}, {port: dns}]\n",
            ),
        ]);
        assert!(allowed(&p, "10.0.0.3", "10.0.0.1", PROTO_TCP, 8080));
        assert!(!allowed(&p, "10.0.0.3", "10.0.0.1", PROTO_TCP, 80));
        assert!(!allowed(&p, "10.0.0.3", "10.0.0.1", PROTO_UDP, 8080));
        assert!(allowed(&p, "10.0.0.3", "10.0.0.1", PROTO_UDP, 53));
        // `dns` over TCP is not declared: nothing.
        assert!(!allowed(&p, "10.0.0.3", "10.0.0.1", PROTO_TCP, 53));
        assert!(allowed(&p, "8.8.8.8", "10.0.0.2", PROTO_TCP, 80));
        assert!(!allowed(&p, "8.8.8.8", "10.0.0.2", PROTO_TCP, 8080));
        // The client declares no port: nothing reaches it.
        assert!(!allowed(&p, "10.0.0.1", "10.0.0.3", PROTO_TCP, 8080));
        assert!(p.problems.is_empty());
    }

    #[test]
    fn named_port_egress_resolves_per_destination_identity() {
        let objects = |to: &str| {
            vec![
                pod_with(
                    "shop",
                    "api",
                    &[("app", "api")],
                    &["10.0.0.1"],
                    &[("http", 8080, "TCP")],
                ),
                pod_with(
                    "web",
                    "web",
                    &[("app", "web")],
                    &["10.0.1.1"],
                    &[("http", 80, "TCP")],
                ),
                pod_with(
                    "shop",
                    "db",
                    &[("app", "db")],
                    &["10.0.0.2"],
                    &[("sql", 5432, "TCP")],
                ),
                pod("shop", "client", &[("app", "client")], "10.0.0.3"),
                np(
                    "shop",
                    "p",
                    &format!(
                        "  podSelector: {{matchLabels: {{app: client}}}}\n  policyTypes: [Egress]\n  egress:\n    - ports: [{{port: http}}]\n{to}"
                    ),
                ),
            ]
        };
        // An empty `to`: every pod that declares `http`, on its own number; no address.
        let any = plan(objects(""));
        assert!(allowed(&any, "10.0.0.3", "10.0.0.1", PROTO_TCP, 8080));
        assert!(!allowed(&any, "10.0.0.3", "10.0.0.1", PROTO_TCP, 80));
        assert!(allowed(&any, "10.0.0.3", "10.0.1.1", PROTO_TCP, 80));
        assert!(!allowed(&any, "10.0.0.3", "10.0.1.1", PROTO_TCP, 8080));
        assert!(!allowed(&any, "10.0.0.3", "10.0.0.2", PROTO_TCP, 5432));
        assert!(!allowed(&any, "10.0.0.3", "8.8.8.8", PROTO_TCP, 80));
        assert!(any.rules.keys().all(|k| k.peer != PEER_ANY));
        // A namespace-local selector: only `api`.
        let local = plan(objects("      to: [{podSelector: {}}]\n"));
        assert!(allowed(&local, "10.0.0.3", "10.0.0.1", PROTO_TCP, 8080));
        assert!(!allowed(&local, "10.0.0.3", "10.0.1.1", PROTO_TCP, 80));
        // An ipBlock peer is addresses: a named port resolves to nothing for it.
        let block = plan(objects("      to: [{ipBlock: {cidr: 10.0.0.0/8}}]\n"));
        assert!(!allowed(&block, "10.0.0.3", "10.0.0.1", PROTO_TCP, 8080));
        assert!(block.rules.is_empty());
        assert!(block.pods[&ip("10.0.0.3")].egress.is_some());
    }

    #[test]
    fn end_port_ranges_split_into_aligned_blocks() {
        assert_eq!(
            port_blocks(1000, 1100),
            [
                (1000, 13),
                (1008, 12),
                (1024, 10),
                (1088, 13),
                (1096, 14),
                (1100, 16)
            ]
        );
        assert_eq!(port_blocks(80, 80), [(80, 16)]);
        assert_eq!(port_blocks(0, 65535), [(0, 0)]);
        assert_eq!(port_blocks(1, 65535).len(), 16);
        assert_eq!(port_blocks(32768, 65535), [(32768, 1)]);
        let p = plan(vec![
            pod("shop", "api", &[], "10.0.0.1"),
            np(
                "shop",
                "p",
                "  podSelector: {}\n  ingress:\n    - ports: [{protocol: UDP, port: 1000, endPort: 1100}]\n",
            ),
        ]);
        for port in [1000, 1007, 1008, 1050, 1087, 1099, 1100] {
            assert!(
                allowed(&p, "8.8.8.8", "10.0.0.1", PROTO_UDP, port),
                "{port}"
            );
        }
        for port in [999, 1101, 1104, 0, 65535] {
            assert!(
                !allowed(&p, "8.8.8.8", "10.0.0.1", PROTO_UDP, port),
                "{port}"
            );
        }
        assert!(!allowed(&p, "8.8.8.8", "10.0.0.1", PROTO_TCP, 1050));
        assert_eq!(p.rules.len(), 6);
    }

    #[test]
    fn two_policies_selecting_a_pod_are_unioned() {
        let p = plan(vec![
            pod("shop", "api", &[("app", "api")], "10.0.0.1"),
            pod("shop", "web", &[("app", "web")], "10.0.0.2"),
            pod("shop", "admin", &[("app", "admin")], "10.0.0.3"),
            np(
                "shop",
                "web",
                "  podSelector: {matchLabels: {app: api}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 80}]}]\n",
            ),
            np(
                "shop",
                "admin",
                "  podSelector: {matchExpressions: [{key: app, operator: In, values: [api]}]}\n  ingress: [{from: [{podSelector: {matchLabels: {app: admin}}}], ports: [{port: 22}, {port: 80}]}]\n",
            ),
        ]);
        assert!(allowed(&p, "10.0.0.2", "10.0.0.1", PROTO_TCP, 80));
        assert!(!allowed(&p, "10.0.0.2", "10.0.0.1", PROTO_TCP, 22));
        assert!(allowed(&p, "10.0.0.3", "10.0.0.1", PROTO_TCP, 22));
        assert!(allowed(&p, "10.0.0.3", "10.0.0.1", PROTO_TCP, 80));
        // `web` is selected by no policy: open.
        assert!(allowed(&p, "10.0.0.3", "10.0.0.2", PROTO_TCP, 22));
        let ids: BTreeMap<&str, u32> = p
            .policies
            .iter()
            .map(|(id, k)| (k.name.as_str(), *id))
            .collect();
        assert_eq!(
            p.pods[&ip("10.0.0.1")].ingress,
            Some(ids["web"].min(ids["admin"]))
        );
        // Every rule names the policy granting it: web's peer is web, admin's is admin.
        let web = p.pods[&ip("10.0.0.2")].identity;
        for (k, pid) in &p.rules {
            let by = if k.peer == web {
                ids["web"]
            } else {
                ids["admin"]
            };
            assert_eq!(*pid, by, "{k:?}");
        }
        assert_eq!(p.rules.len(), 3);
    }

    #[test]
    fn policy_types_default_from_the_rules_present() {
        // No policyTypes and an egress rule: isolated both ways.
        let both = plan(vec![
            pod("shop", "a", &[], "10.0.0.1"),
            np(
                "shop",
                "p",
                "  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 8.8.8.8/32}}]}]\n",
            ),
        ]);
        let a = both.pods[&ip("10.0.0.1")];
        assert!(a.ingress.is_some() && a.egress.is_some());
        assert!(allowed(&both, "10.0.0.1", "8.8.8.8", PROTO_UDP, 53));
        assert!(!allowed(&both, "10.0.0.1", "8.8.4.4", PROTO_UDP, 53));
        assert!(!allowed(&both, "8.8.8.8", "10.0.0.1", PROTO_UDP, 53));
        // policyTypes [Egress]: the ingress rules are not used, ingress stays open.
        let egress_only = plan(vec![
            pod("shop", "a", &[], "10.0.0.1"),
            np(
                "shop",
                "p",
                "  podSelector: {}\n  policyTypes: [Egress]\n  ingress: [{from: [{ipBlock: {cidr: 1.1.1.1/32}}]}]\n",
            ),
        ]);
        let a = egress_only.pods[&ip("10.0.0.1")];
        assert!(a.ingress.is_none() && a.egress.is_some());
        assert!(allowed(&egress_only, "8.8.8.8", "10.0.0.1", PROTO_TCP, 1));
        assert!(egress_only.rules.is_empty());
    }

    #[test]
    fn a_pod_with_two_addresses_is_one_identity_on_both() {
        let p = plan(vec![
            pod_with(
                "shop",
                "api",
                &[("app", "api")],
                &["10.0.0.1", "fd00::1"],
                &[],
            ),
            pod_with(
                "shop",
                "web",
                &[("app", "web")],
                &["10.0.0.2", "fd00::2"],
                &[],
            ),
            np(
                "shop",
                "p",
                "  podSelector: {matchLabels: {app: api}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}, {ipBlock: {cidr: 'fd00:1::/64'}}]}]\n",
            ),
        ]);
        let (v4, v6) = (p.pods[&ip("10.0.0.1")], p.pods[&ip("fd00::1")]);
        assert_eq!(v4, v6);
        assert!(v4.ingress.is_some());
        assert!(allowed(&p, "10.0.0.2", "10.0.0.1", PROTO_TCP, 80));
        assert!(allowed(&p, "fd00::2", "fd00::1", PROTO_TCP, 80));
        assert!(allowed(&p, "fd00:1::9", "fd00::1", PROTO_TCP, 80));
        assert!(!allowed(&p, "fd00:2::9", "fd00::1", PROTO_TCP, 80));
        assert!(!allowed(&p, "10.9.9.9", "10.0.0.1", PROTO_TCP, 80));
        assert_eq!(p.pods.len(), 4);
    }

    #[test]
    fn host_network_terminated_and_addressless_pods_take_no_part() {
        let mut host = pod("shop", "host", &[], "192.168.0.10");
        if let Object::Pod(p) = &mut host {
            p.spec.host_network = true;
        }
        let mut done = pod("shop", "done", &[], "10.0.0.9");
        if let Object::Pod(p) = &mut done {
            p.status.as_mut().unwrap().phase = Some("Succeeded".into());
        }
        let mut pending = pod("shop", "pending", &[], "10.0.0.8");
        if let Object::Pod(p) = &mut pending {
            p.status = None;
        }
        let p = plan(vec![
            host,
            done,
            pending,
            pod("shop", "a", &[], "10.0.0.1"),
            np("shop", "deny", "  podSelector: {}\n"),
        ]);
        assert_eq!(p.pods.keys().copied().collect::<Vec<_>>(), [ip("10.0.0.1")]);
        // The host-network pod's address is no pod: nothing isolates it.
        assert!(allowed(&p, "10.0.0.1", "192.168.0.10", PROTO_TCP, 22));
    }

    #[test]
    fn identities_survive_unrelated_objects() {
        let base = vec![
            namespace("shop", &[("team", "x")]),
            pod("shop", "a", &[("app", "api")], "10.0.0.1"),
            pod("shop", "b", &[("app", "api")], "10.0.0.2"),
            pod("shop", "c", &[("app", "web")], "10.0.0.3"),
            pod("front", "d", &[("app", "api")], "10.0.1.1"),
            np(
                "shop",
                "p",
                "  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]}]\n",
            ),
        ];
        let before = plan(base.clone());
        let mut more = base;
        more.extend([
            namespace("extra", &[("team", "y")]),
            pod("extra", "e", &[("app", "api")], "10.0.2.1"),
            pod("shop", "f", &[("app", "new")], "10.0.0.4"),
            np(
                "extra",
                "q",
                "  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 172.16.0.0/12}}]}]\n",
            ),
        ]);
        let after = plan(more);
        for (addr, p) in &before.pods {
            assert_eq!(after.pods[addr].identity, p.identity, "{addr}");
        }
        for (c, id) in &before.cidrs {
            assert_eq!(after.cidrs[c], *id, "{c}");
        }
        for (id, k) in &before.policies {
            assert_eq!(after.policies[id], *k);
        }
        // Same namespace and labels: one identity; another namespace: another.
        let id = |a: &str| before.pods[&ip(a)].identity;
        assert_eq!(id("10.0.0.1"), id("10.0.0.2"));
        assert_ne!(id("10.0.0.1"), id("10.0.0.3"));
        assert_ne!(id("10.0.0.1"), id("10.0.1.1"));
        for p in after.pods.values() {
            assert!(p.identity != 0 && p.identity & CIDR_IDENTITY_BIT == 0);
        }
        assert!(
            after
                .policies
                .keys()
                .all(|id| *id != 0 && id & CIDR_IDENTITY_BIT == 0)
        );
        // Namespace labels are part of the identity.
        let relabelled = plan(vec![
            namespace("shop", &[("team", "z")]),
            pod("shop", "a", &[("app", "api")], "10.0.0.1"),
        ]);
        assert_ne!(relabelled.pods[&ip("10.0.0.1")].identity, id("10.0.0.1"));
    }

    #[test]
    fn colliding_hashes_probe_in_sorted_order_and_avoid_zero() {
        let ids = assign([("b", 5), ("a", 5), ("c", 6), ("z", 0)], 0, true);
        assert_eq!(
            ids,
            BTreeMap::from([("a", 5), ("b", 6), ("c", 7), ("z", 1)])
        );
        let ids = assign(
            [("a", HASH_MASK), ("b", HASH_MASK)],
            CIDR_IDENTITY_BIT,
            false,
        );
        assert_eq!(
            ids,
            BTreeMap::from([("a", u32::MAX), ("b", CIDR_IDENTITY_BIT)])
        );
    }

    #[test]
    fn shared_address_and_policies_selecting_nothing_are_reported() {
        let p = compile(&state(vec![
            pod("shop", "a", &[], "10.0.0.1"),
            pod("shop", "b", &[], "10.0.0.1"),
            np(
                "shop",
                "ghost",
                "  podSelector: {matchLabels: {app: ghost}}\n",
            ),
        ]));
        assert_eq!(p.problems.len(), 1, "{:#?}", p.problems);
        assert_eq!(p.problems[0].object.name, "b");
        assert_eq!(p.selects_nothing, [NamespacedName::new("shop", "ghost")]);
        assert!(p.default_deny.is_empty());
    }

    #[test]
    fn compile_is_deterministic() {
        let objects = vec![
            pod_with(
                "shop",
                "a",
                &[("app", "a")],
                &["10.0.0.1"],
                &[("http", 80, "TCP")],
            ),
            pod("shop", "b", &[("app", "b")], "10.0.0.2"),
            np(
                "shop",
                "p",
                "  podSelector: {}\n  ingress: [{ports: [{port: http}, {port: 1000, endPort: 2000}]}]\n  egress: [{to: [{podSelector: {}}]}]\n",
            ),
        ];
        let s = state(objects);
        assert_eq!(compile(&s), compile(&s));
    }

    // -- property test: the compiled maps against a reference written from the Kubernetes
    // rules, over random namespaces, pods, policies and probes ----------------------------------

    const NAMESPACES: [&str; 3] = ["a", "b", "c"];

    /// Addresses probes use: the pod addresses (`10.0.0.{i+1}`, `fd00::{i+1}`) and others.
    fn v4(i: usize) -> String {
        format!("10.0.0.{}", i + 1)
    }

    fn v6(i: usize) -> String {
        format!("fd00::{:x}", i + 1)
    }

    const OTHERS_V4: [&str; 4] = ["10.0.0.200", "192.168.1.1", "8.8.8.8", "10.0.0.12"];
    const OTHERS_V6: [&str; 2] = ["fd00::ff", "2001:db8::1"];
    /// Probe ports: the declared container ports (twice, they are the interesting ones), range
    /// edges and others.
    const PORTS: [u16; 16] = [
        53, 80, 8080, 1050, 53, 80, 8080, 1050, 1000, 1063, 1064, 1100, 1101, 999, 443, 1040,
    ];
    const MAX_PODS: usize = 8;

    fn small_labels(
        keys: &'static [&'static str],
    ) -> impl Strategy<Value = BTreeMap<String, String>> {
        prop::collection::btree_map(
            prop::sample::select(keys).prop_map(str::to_owned),
            prop::sample::select(&["x", "y"][..]).prop_map(str::to_owned),
            0..=keys.len(),
        )
    }

    fn selector(keys: &'static [&'static str]) -> BoxedStrategy<LabelSelector> {
        let expr = (
            prop::sample::select(keys),
            prop::sample::select(&["In", "NotIn", "Exists", "DoesNotExist"][..]),
            prop::sample::subsequence(&["x", "y"][..], 1..=2),
        )
            .prop_map(
                |(k, op, vals)| crate::model::netpol::LabelSelectorRequirement {
                    key: k.to_owned(),
                    operator: op.to_owned(),
                    values: if matches!(op, "In" | "NotIn") {
                        vals.into_iter().map(str::to_owned).collect()
                    } else {
                        Vec::new()
                    },
                },
            );
        (
            prop::collection::btree_map(
                prop::sample::select(keys).prop_map(str::to_owned),
                prop::sample::select(&["x", "y"][..]).prop_map(str::to_owned),
                0..=1,
            ),
            prop::collection::vec(expr, 0..=1),
        )
            .prop_map(|(match_labels, match_expressions)| LabelSelector {
                match_labels,
                match_expressions,
            })
            .boxed()
    }

    const NS_KEYS: &[&str] = &["team", NAMESPACE_NAME_LABEL];
    const POD_KEYS: &[&str] = &["app", "tier"];

    /// Namespace selectors over `team` and the automatic name label.
    fn ns_selector() -> BoxedStrategy<LabelSelector> {
        (
            prop::option::of(prop::sample::select(NS_KEYS)),
            prop::sample::select(&["a", "b", "x", "y"][..]),
            selector(&["team"]),
        )
            .prop_map(|(key, value, mut s)| {
                if let Some(k) = key {
                    s.match_labels.insert(k.to_owned(), value.to_owned());
                }
                s
            })
            .boxed()
    }

    fn peer() -> BoxedStrategy<NetworkPolicyPeer> {
        let blocks: &[(&str, &[&str])] = &[
            ("10.0.0.0/24", &[]),
            ("10.0.0.0/24", &["10.0.0.0/29"]),
            ("10.0.0.0/28", &["10.0.0.4/30", "10.0.0.8/29"]),
            ("0.0.0.0/0", &["10.0.0.0/24"]),
            ("10.0.0.0/8", &["10.0.0.0/28"]),
            ("192.168.0.0/16", &[]),
            ("fd00::/64", &[]),
            ("fd00::/120", &["fd00::/126"]),
            ("::/0", &["fd00::/125"]),
        ];
        prop_oneof![
            selector(POD_KEYS).prop_map(|s| NetworkPolicyPeer {
                pod_selector: Some(s),
                ..NetworkPolicyPeer::default()
            }),
            ns_selector().prop_map(|s| NetworkPolicyPeer {
                namespace_selector: Some(s),
                ..NetworkPolicyPeer::default()
            }),
            (selector(POD_KEYS), ns_selector()).prop_map(|(p, n)| NetworkPolicyPeer {
                pod_selector: Some(p),
                namespace_selector: Some(n),
                ip_block: None,
            }),
            prop::sample::select(blocks).prop_map(|(cidr, except)| NetworkPolicyPeer {
                ip_block: Some(IpBlock {
                    cidr: cidr.to_owned(),
                    except: except.iter().map(|e| (*e).to_owned()).collect(),
                }),
                ..NetworkPolicyPeer::default()
            }),
        ]
        .boxed()
    }

    fn port() -> BoxedStrategy<NetworkPolicyPort> {
        let protocol = prop::option::of(prop::sample::select(&["TCP", "UDP", "SCTP"][..]))
            .prop_map(|p| p.map(str::to_owned));
        let which = prop_oneof![
            1 => Just((None, None)),
            1 => prop::sample::select(&[53_i64, 80, 8080, 1050][..])
                .prop_map(|n| (Some(IntOrString::Int(n)), None)),
            1 => prop::sample::select(&[(1000_i64, 1100_i64), (1040, 1063), (80, 80), (1, 65535)][..])
                .prop_map(|(a, b)| (Some(IntOrString::Int(a)), Some(b))),
            2 => prop::sample::select(&["http", "dns", "web", "nope"][..])
                .prop_map(|n| (Some(IntOrString::String(n.to_owned())), None)),
        ];
        (protocol, which)
            .prop_map(|(protocol, (port, end_port))| NetworkPolicyPort {
                protocol,
                port,
                end_port,
            })
            .boxed()
    }

    fn policy_spec() -> impl Strategy<Value = NetworkPolicySpec> {
        const TYPES: &[&[&str]] = &[&[], &["Ingress"], &["Egress"], &["Ingress", "Egress"]];
        let rule = || {
            (
                prop::collection::vec(peer(), 0..=2),
                prop::collection::vec(port(), 0..=2),
            )
        };
        (
            prop_oneof![Just(LabelSelector::default()), selector(POD_KEYS)],
            prop::sample::select(TYPES),
            prop::collection::vec(rule(), 0..=2),
            prop::collection::vec(rule(), 0..=2),
        )
            .prop_map(|(pod_selector, types, ingress, egress)| NetworkPolicySpec {
                pod_selector,
                policy_types: types.iter().map(|t| (*t).to_owned()).collect(),
                ingress: ingress
                    .into_iter()
                    .map(
                        |(from, ports)| crate::model::netpol::NetworkPolicyIngressRule {
                            from,
                            ports,
                        },
                    )
                    .collect(),
                egress: egress
                    .into_iter()
                    .map(|(to, ports)| crate::model::netpol::NetworkPolicyEgressRule { to, ports })
                    .collect(),
            })
    }

    #[derive(Debug, Clone)]
    struct PodGen {
        ns: usize,
        labels: BTreeMap<String, String>,
        /// 0..=3 running with v4; 4..=6 running with v4 and v6; 7 host network; 8 failed;
        /// 9 no address.
        kind: u8,
        ports: Vec<(&'static str, i64, &'static str)>,
    }

    fn pod_gen() -> impl Strategy<Value = PodGen> {
        let port = prop::sample::select(
            &[
                ("http", 80, "TCP"),
                ("http", 8080, "TCP"),
                ("dns", 53, "UDP"),
                ("dns", 53, "TCP"),
                ("web", 1050, "TCP"),
                ("web", 1050, "SCTP"),
            ][..],
        );
        (
            // Mostly in `a` and `b`, so that policies select and peers match.
            prop::sample::select(&[0_usize, 0, 1, 1, 2][..]),
            small_labels(POD_KEYS),
            0u8..10,
            prop::collection::vec(port, 1..=2),
        )
            .prop_map(|(ns, labels, kind, ports)| PodGen {
                ns,
                labels,
                kind,
                ports,
            })
    }

    type Probe = (bool, usize, usize, u8, u16);

    /// Objects, probes, and the number of pods (probe indices below it are pod addresses).
    fn world() -> impl Strategy<Value = (Vec<Object>, Vec<Probe>, usize)> {
        let namespaces =
            prop::collection::vec(prop::option::of(small_labels(&["team"])), NAMESPACES.len());
        let policies = prop::collection::vec((0..NAMESPACES.len(), policy_spec()), 1..=5);
        let probes = prop::collection::vec(
            (
                any::<bool>(),
                0..64_usize,
                0..64_usize,
                // Mostly TCP, the protocol rules default to.
                prop::sample::select(&[PROTO_TCP, PROTO_TCP, PROTO_TCP, PROTO_UDP, PROTO_SCTP][..]),
                prop::sample::select(&PORTS[..]),
            ),
            60,
        );
        (
            namespaces,
            prop::collection::vec(pod_gen(), 3..=MAX_PODS),
            policies,
            probes,
        )
            .prop_map(|(namespaces, mut pods, policies, probes)| {
                // Pods of one namespace with the same labels declare the same ports: the plan
                // resolves named ports per identity (the union over its pods).
                let mut by_identity: BTreeMap<(usize, BTreeMap<String, String>), Vec<_>> =
                    BTreeMap::new();
                for p in &mut pods {
                    p.ports = by_identity
                        .entry((p.ns, p.labels.clone()))
                        .or_insert_with(|| p.ports.clone())
                        .clone();
                }
                let mut objects = Vec::new();
                for (i, l) in namespaces.into_iter().enumerate() {
                    if let Some(l) = l {
                        let mut n = Namespace::new(NAMESPACES[i], None);
                        n.metadata.labels = l;
                        objects.push(n.into());
                    }
                }
                for (i, g) in pods.iter().enumerate() {
                    let (a4, a6) = (v4(i), v6(i));
                    let ips: Vec<&str> = if (4..=6).contains(&g.kind) {
                        vec![&a4, &a6]
                    } else {
                        vec![&a4]
                    };
                    let mut o = pod_with(NAMESPACES[g.ns], &format!("p{i}"), &[], &ips, &g.ports);
                    if let Object::Pod(p) = &mut o {
                        p.metadata.labels = g.labels.clone();
                        match g.kind {
                            7 => p.spec.host_network = true,
                            8 => p.status.as_mut().unwrap().phase = Some("Failed".into()),
                            9 => p.status = None,
                            _ => {}
                        }
                    }
                    objects.push(o);
                }
                for (i, (ns, spec)) in policies.into_iter().enumerate() {
                    objects.push(NetworkPolicy::new(NAMESPACES[ns], format!("np{i}"), spec).into());
                }
                let n = pods.len();
                (objects, probes, n)
            })
    }

    /// Probe address `i` (modulo the pods and the other addresses) of one family.
    fn probe_addr(v6_family: bool, i: usize, pods: usize) -> IpAddr {
        let i = i % (pods + OTHERS_V4.len());
        match (v6_family, i.checked_sub(pods)) {
            (false, None) => ip(&v4(i)),
            (true, None) => ip(&v6(i)),
            (false, Some(j)) => ip(OTHERS_V4[j]),
            (true, Some(j)) => ip(OTHERS_V6[j % OTHERS_V6.len()]),
        }
    }

    /// The reference: Kubernetes' rules applied to the objects directly.
    mod reference {
        use super::*;

        fn pod_at(s: &ClusterState, addr: IpAddr) -> Option<&Pod> {
            s.pods.values().find(|p| {
                !p.spec.host_network
                    && !matches!(
                        p.status.as_ref().and_then(|st| st.phase.as_deref()),
                        Some("Succeeded" | "Failed")
                    )
                    && p.ips().contains(&addr)
            })
        }

        fn ns_labels(s: &ClusterState, ns: &str) -> BTreeMap<String, String> {
            let mut l = s
                .namespaces
                .get(ns)
                .map(|n| n.metadata.labels.clone())
                .unwrap_or_default();
            l.insert(NAMESPACE_NAME_LABEL.into(), ns.into());
            l
        }

        fn in_block(addr: IpAddr, b: &IpBlock) -> bool {
            let cidr: Cidr = b.cidr.parse().unwrap();
            cidr.contains(addr)
                && !b
                    .except
                    .iter()
                    .any(|e| e.parse::<Cidr>().unwrap().contains(addr))
        }

        fn peer_matches(
            s: &ClusterState,
            policy_ns: &str,
            peer: Option<&NetworkPolicyPeer>,
            addr: IpAddr,
        ) -> bool {
            let Some(peer) = peer else { return true };
            if let Some(b) = &peer.ip_block {
                return in_block(addr, b);
            }
            let Some(p) = pod_at(s, addr) else {
                return false;
            };
            let ns_ok = match &peer.namespace_selector {
                Some(sel) => sel.matches(&ns_labels(s, p.namespace())),
                None => p.namespace() == policy_ns,
            };
            ns_ok
                && peer
                    .pod_selector
                    .as_ref()
                    .is_none_or(|sel| sel.matches(&p.metadata.labels))
        }

        fn declares(p: Option<&Pod>, name: &str, proto: &str, port: u16) -> bool {
            p.is_some_and(|p| {
                p.spec.containers.iter().flat_map(|c| &c.ports).any(|c| {
                    c.name.as_deref() == Some(name)
                        && c.protocol.as_deref().unwrap_or("TCP") == proto
                        && c.container_port == i64::from(port)
                })
            })
        }

        /// Whether `q` admits (proto, port); a named port is looked up on `named_on`.
        fn port_matches(
            q: &NetworkPolicyPort,
            proto: &str,
            port: u16,
            named_on: Option<&Pod>,
        ) -> bool {
            if q.protocol.as_deref().unwrap_or("TCP") != proto {
                return false;
            }
            match (&q.port, q.end_port) {
                (None, _) => true,
                (Some(IntOrString::Int(n)), None) => i64::from(port) == *n,
                (Some(IntOrString::Int(n)), Some(e)) => (*n..=e).contains(&i64::from(port)),
                (Some(IntOrString::String(name)), _) => declares(named_on, name, proto, port),
            }
        }

        fn types(p: &NetworkPolicy) -> (bool, bool) {
            if p.spec.policy_types.is_empty() {
                (true, !p.spec.egress.is_empty())
            } else {
                (
                    p.spec.policy_types.iter().any(|t| t == "Ingress"),
                    p.spec.policy_types.iter().any(|t| t == "Egress"),
                )
            }
        }

        fn selecting<'a>(s: &'a ClusterState, pod: &Pod) -> Vec<&'a NetworkPolicy> {
            s.network_policies
                .values()
                .filter(|np| {
                    np.namespace() == pod.namespace()
                        && np.spec.pod_selector.matches(&pod.metadata.labels)
                })
                .collect()
        }

        pub(super) fn allows(
            s: &ClusterState,
            src: IpAddr,
            dst: IpAddr,
            proto: u8,
            port: u16,
        ) -> bool {
            let proto = match proto {
                PROTO_TCP => "TCP",
                PROTO_UDP => "UDP",
                _ => "SCTP",
            };
            let (src_pod, dst_pod) = (pod_at(s, src), pod_at(s, dst));
            if let Some(sp) = src_pod {
                let pols: Vec<_> = selecting(s, sp)
                    .into_iter()
                    .filter(|p| types(p).1)
                    .collect();
                let ok = pols.is_empty()
                    || pols.iter().any(|np| {
                        np.spec.egress.iter().any(|r| {
                            let peers: Vec<Option<&NetworkPolicyPeer>> = if r.to.is_empty() {
                                vec![None]
                            } else {
                                r.to.iter().map(Some).collect()
                            };
                            peers.into_iter().any(|peer| {
                                peer_matches(s, np.namespace(), peer, dst)
                                    && (r.ports.is_empty()
                                        || r.ports.iter().any(|q| {
                                            // A named port is the destination pod's; an
                                            // ipBlock peer is addresses, whose ports have no
                                            // names.
                                            let named_on =
                                                if peer.is_some_and(|p| p.ip_block.is_some()) {
                                                    None
                                                } else {
                                                    dst_pod
                                                };
                                            port_matches(q, proto, port, named_on)
                                        }))
                            })
                        })
                    });
                if !ok {
                    return false;
                }
            }
            if let Some(dp) = dst_pod {
                let pols: Vec<_> = selecting(s, dp)
                    .into_iter()
                    .filter(|p| types(p).0)
                    .collect();
                let ok = pols.is_empty()
                    || pols.iter().any(|np| {
                        np.spec.ingress.iter().any(|r| {
                            (r.from.is_empty()
                                || r.from
                                    .iter()
                                    .any(|peer| peer_matches(s, np.namespace(), Some(peer), src)))
                                && (r.ports.is_empty()
                                    || r.ports
                                        .iter()
                                        .any(|q| port_matches(q, proto, port, Some(dp))))
                        })
                    });
                if !ok {
                    return false;
                }
            }
            true
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn plan_allows_exactly_what_kubernetes_allows((objects, probes, pods) in world()) {
            let s = ClusterState::from_objects(1, objects);
            prop_assert!(s.problems.is_empty(), "generated objects are valid: {:#?}", s.problems);
            let p = compile(&s);
            prop_assert!(p.problems.is_empty(), "{:#?}", p.problems);
            for (fam6, a, b, proto, port) in probes {
                let (src, dst) = (probe_addr(fam6, a, pods), probe_addr(fam6, b, pods));
                let want = reference::allows(&s, src, dst, proto, port);
                prop_assert_eq!(
                    p.allows(src, dst, proto, port),
                    want,
                    "{} -> {} proto {} port {}\npolicies: {:#?}\npods: {:#?}",
                    src, dst, proto, port, s.network_policies, s.pods
                );
            }
        }
    }
}
