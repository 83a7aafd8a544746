//! The path classifier (`classifier.c`) and its typed loader.
//!
//! ```text
//! idd_routes     LPM trie   pod CIDR → (route kind, node id)        set_route / remove_route
//! idd_workloads  hash       local workload IP → mTLS mode           set_workload / remove_workload
//! idd_path_stats per-CPU    verdict → (packets, bytes)              counters
//! idd_flow_events ring buf  5-tuple, verdict, drop reason           flow_events
//! idd_pol_pods   hash       pod IP → (identity, isolating policies)  set_policy_pod / …
//! idd_pol_cidrs  LPM trie   ipBlock prefix → CIDR identity          set_policy_cidr / …
//! idd_policy     LPM trie   (subject, peer, direction, proto, port) set_policy_rule / …
//! idd_pol_ct     LRU hash   allowed forward 5-tuple → last seen     (datapath only)
//! idd_pol_drops  per-CPU    (policy, direction) → packets dropped   policy_drops
//! ```
//!
//! NetworkPolicy is enforced at the pod veths in both directions: a packet leaving a pod
//! passes the source's egress rules and the destination pod's ingress rules; a packet going
//! into a pod passes its ingress rules on the packet's own source address, unless this node
//! itself sent it (the CNI exception; the node's Envoy delivers mesh traffic that was judged at
//! its source). A packet whose reversed 5-tuple was allowed recently is a reply and passes.
//!
//! The trie holds every pod CIDR the node knows: its own (`RouteKind::Local`), each remote
//! node's (`WireGuard`, `Ipsec`, `Plaintext`) and, as a catch-all, the cluster's whole pod range
//! as `Unavailable`, so that a node whose peer is not configured yet falls to "no path" and,
//! in strict mode, is dropped rather than sent in clear.
//!
//! Between two pods of this node, TCP between mTLS workloads is marked for the node's Envoy
//! (so same-node traffic gets mTLS too), plaintext TCP from a workload into a strict workload
//! is dropped in strict mode, and everything else stays local.
//!
//! With a pin directory the maps and the tc links are pinned on bpffs: a new loader with the
//! same directory re-adopts the maps (their content survives) and atomically replaces the
//! program of each pinned link, so a daemon restart never leaves an interface unclassified.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path as FsPath, PathBuf};
use std::time::Duration;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{
    Array, HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf,
};
use aya::programs::links::{FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader};

use crate::net::{Cidr, mapped, unmapped};
use crate::types::{
    self, IddAddr, IddFlowEvent, IddPathStats, IddPolDropKey, IddPolPod, IddProbe, IddRoute,
    IddWorkload, SK_BUFF_INGRESS_IFINDEX_OFFSET, SK_BUFF_MARK_OFFSET, SK_BUFF_SIZE,
};
use crate::{Direction, Error};

/// The compiled `classifier.c` object, embedded at build time.
pub static CLASSIFIER_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/classifier.o"));

const OBJECT: &str = "classifier";
const PROG: &str = "idd_classifier";
/// Ingress strict: the program on the pod veths' egress (packets into the pod).
const TO_POD: &str = "idd_to_pod";
const TUNNELS: &str = "idd_tunnels";
const PROBES: &str = "idd_probe_ports";
const ROUTES: &str = "idd_routes";
const WORKLOADS: &str = "idd_workloads";
const STATS: &str = "idd_path_stats";
const EVENTS: &str = "idd_flow_events";
const INBOUND_DIRECT: &str = "idd_inbound_direct";
const ALLOW_FROM: &str = "idd_allow_from";
const STATE: &str = "idd_state";
const POL_PODS: &str = "idd_pol_pods";
const POL_CIDRS: &str = "idd_pol_cidrs";
const POLICY: &str = "idd_policy";
const POL_CT: &str = "idd_pol_ct";
const POL_DROPS: &str = "idd_pol_drops";
const PINNED_MAPS: [&str; 14] = [
    STATE,
    ROUTES,
    WORKLOADS,
    STATS,
    EVENTS,
    TUNNELS,
    PROBES,
    INBOUND_DIRECT,
    ALLOW_FROM,
    POL_PODS,
    POL_CIDRS,
    POLICY,
    POL_CT,
    POL_DROPS,
];

/// Default capacity of the route trie (`idd_routes`).
pub const DEFAULT_MAX_ROUTES: u32 = 65_536;
/// The default parent of pin directories: `/sys/fs/bpf/identityd`.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/identityd";
/// How many tunnel interfaces [`Classifier::set_tunnels`] takes.
pub const TUNNELS_MAX: usize = types::IDD_TUNNELS_MAX as usize;
/// Bumped whenever a pinned map's layout changes, so a new daemon never adopts a map of
/// another layout: pins live under `<pin dir>/v<PIN_LAYOUT_VERSION>/`.
/// (Adding a map is no layout change: a new loader adopts the pinned maps it knows and pins
/// the new ones.)
pub const PIN_LAYOUT_VERSION: u32 = 1;

/// Which packets produce a flow event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlowEvents {
    /// None.
    None,
    /// Only drops (the default: cheap, and what `identityd observe` must never miss).
    #[default]
    Drops,
    /// Every classified (pod-to-remote-pod) packet.
    All,
}

/// Load-time settings of the classifier.
#[derive(Debug, Clone)]
pub struct ClassifierConfig {
    /// Strict mode: drop pod-to-remote-pod traffic without an encrypted path (default on).
    pub strict: bool,
    /// Which packets produce flow events.
    pub flow_events: FlowEvents,
    /// Classify packets from any source, not only from this node's pod CIDRs (for the node's
    /// own egress). Default off (pod-facing veths).
    pub any_source: bool,
    /// Capacity of the route trie.
    pub max_routes: u32,
    /// Pin maps and links under this directory (on bpffs) so a restart re-adopts them.
    /// `None`: nothing is pinned and dropping the loader detaches everything.
    pub pin_dir: Option<PathBuf>,
    /// The cluster's whole pod ranges (e.g. `10.244.0.0/16`), set as
    /// [`RouteKind::Unavailable`] routes at load, before anything is attached: a pod CIDR that
    /// has no more specific route yet is then dropped in strict mode, also during start-up.
    /// Traffic to addresses outside every route is not pod traffic and passes.
    pub cluster_cidrs: Vec<Cidr>,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        Self {
            strict: true,
            flow_events: FlowEvents::default(),
            any_source: false,
            max_routes: DEFAULT_MAX_ROUTES,
            pin_dir: None,
            cluster_cidrs: Vec::new(),
        }
    }
}

/// What a pod CIDR leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteKind {
    /// A pod CIDR with no usable path (yet): dropped in strict mode, plaintext otherwise.
    Unavailable,
    /// This node's own pod CIDR.
    Local,
    /// Through WireGuard.
    WireGuard,
    /// Through IPsec.
    Ipsec,
    /// In clear (encryption disabled towards it): dropped in strict mode.
    Plaintext,
    /// A peer node's own address, through WireGuard (node encryption); never through the
    /// mesh proxy.
    WireGuardNode,
}

impl RouteKind {
    fn raw(self) -> u32 {
        match self {
            Self::Unavailable => types::IDD_ROUTE_UNAVAILABLE,
            Self::Local => types::IDD_ROUTE_LOCAL,
            Self::WireGuard => types::IDD_ROUTE_WIREGUARD,
            Self::Ipsec => types::IDD_ROUTE_IPSEC,
            Self::Plaintext => types::IDD_ROUTE_PLAINTEXT,
            Self::WireGuardNode => types::IDD_ROUTE_NODE,
        }
    }

    fn from_raw(v: u32) -> Option<Self> {
        Some(match v {
            types::IDD_ROUTE_UNAVAILABLE => Self::Unavailable,
            types::IDD_ROUTE_LOCAL => Self::Local,
            types::IDD_ROUTE_WIREGUARD => Self::WireGuard,
            types::IDD_ROUTE_IPSEC => Self::Ipsec,
            types::IDD_ROUTE_PLAINTEXT => Self::Plaintext,
            types::IDD_ROUTE_NODE => Self::WireGuardNode,
            _ => return None,
        })
    }
}

/// A route: what a pod CIDR leads to, and which node owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Route {
    /// The path.
    pub kind: RouteKind,
    /// The owning node's id (reported in flow events).
    pub node_id: u32,
}

/// The mTLS mode of a local workload (`identityd.io/mtls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MtlsMode {
    /// No proxy: the packet takes the network path of its route.
    Disabled,
    /// TCP goes through the node's Envoy.
    Permissive,
    /// TCP goes through the node's Envoy.
    Strict,
}

impl MtlsMode {
    fn raw(self) -> u32 {
        match self {
            Self::Disabled => types::IDD_MTLS_DISABLED,
            Self::Permissive => types::IDD_MTLS_PERMISSIVE,
            Self::Strict => types::IDD_MTLS_STRICT,
        }
    }

    fn from_raw(v: u32) -> Option<Self> {
        [Self::Disabled, Self::Permissive, Self::Strict]
            .into_iter()
            .find(|m| m.raw() == v)
    }
}

/// The verdict of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Path {
    /// Not pod-to-remote-pod: passed, mark untouched.
    Pass,
    /// Marked for WireGuard (`0x0e00`).
    WireGuard,
    /// Marked for IPsec (`0x0d00`).
    Ipsec,
    /// Marked for the node's Envoy (`0x0c00`).
    Proxy,
    /// Marked plaintext-allowed (`0x0b00`).
    Plaintext,
    /// Dropped.
    Drop,
}

impl Path {
    /// Every path, in counter order.
    pub const ALL: [Self; 6] = [
        Self::Pass,
        Self::WireGuard,
        Self::Ipsec,
        Self::Proxy,
        Self::Plaintext,
        Self::Drop,
    ];

    /// The mark the classifier sets for this path (`None`: mark untouched / dropped).
    #[must_use]
    pub fn mark(self) -> Option<u32> {
        match self {
            Self::WireGuard => Some(types::IDD_MARK_WIREGUARD),
            Self::Ipsec => Some(types::IDD_MARK_IPSEC),
            Self::Proxy => Some(types::IDD_MARK_PROXY),
            Self::Plaintext => Some(types::IDD_MARK_PLAINTEXT),
            Self::Pass | Self::Drop => None,
        }
    }

    /// A short lowercase name (`wireguard`, `drop`, …).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::WireGuard => "wireguard",
            Self::Ipsec => "ipsec",
            Self::Proxy => "proxy",
            Self::Plaintext => "plaintext",
            Self::Drop => "drop",
        }
    }

    fn index(self) -> u32 {
        match self {
            Self::Pass => types::IDD_PATH_PASS,
            Self::WireGuard => types::IDD_PATH_WIREGUARD,
            Self::Ipsec => types::IDD_PATH_IPSEC,
            Self::Proxy => types::IDD_PATH_PROXY,
            Self::Plaintext => types::IDD_PATH_PLAINTEXT,
            Self::Drop => types::IDD_PATH_DROP,
        }
    }

    fn from_index(v: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.index() == v)
    }
}

/// A pod's NetworkPolicy entry (`idd_pol_pods`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PolicyPod {
    /// Security identity (namespace labels × pod labels).
    pub identity: u32,
    /// Id of a policy isolating the pod for ingress (0: not isolated).
    pub ingress_policy: u32,
    /// Id of a policy isolating the pod for egress (0: not isolated).
    pub egress_policy: u32,
}

/// Which side of the protected pod a NetworkPolicy rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyDirection {
    /// Traffic into the pod.
    Ingress,
    /// Traffic out of the pod.
    Egress,
}

/// One NetworkPolicy allow rule (`idd_policy`): `subject`'s pods may exchange `protocol`
/// traffic to destination ports matching `port`'s first `port_prefix` bits with `peer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyRule {
    /// Identity of the protected pods.
    pub subject: u32,
    /// Direction.
    pub direction: PolicyDirection,
    /// Peer identity (pod or CIDR), or [`types::IDD_PEER_ANY`].
    pub peer: u32,
    /// IP protocol; `None`: every protocol and port.
    pub protocol: Option<u8>,
    /// Destination port (its low `16 - port_prefix` bits zero).
    pub port: u16,
    /// How many leading bits of the port must match: 16 one port, 0 every port.
    pub port_prefix: u8,
}

impl PolicyRule {
    fn key(&self) -> Result<Key<[u8; 12]>, Error> {
        let bad = |why: &str| Error::InvalidRule {
            rule: format!("{self:?}"),
            why: why.to_owned(),
        };
        if self.port_prefix > 16 {
            return Err(bad("port_prefix must be 0..=16"));
        }
        let low_bits = 16 - u32::from(self.port_prefix);
        let low_mask = u16::try_from((1u32 << low_bits) - 1).unwrap_or(u16::MAX);
        if self.port & low_mask != 0 {
            return Err(bad("the port's bits past port_prefix must be zero"));
        }
        if self.protocol.is_none() && (self.port != 0 || self.port_prefix != 0) {
            return Err(bad("a rule for every protocol has no port"));
        }
        let mut d = [0u8; 12];
        d[0..4].copy_from_slice(&self.subject.to_ne_bytes());
        d[4..8].copy_from_slice(&self.peer.to_ne_bytes());
        d[8] = match self.direction {
            PolicyDirection::Ingress => types::IDD_POL_INGRESS,
            PolicyDirection::Egress => types::IDD_POL_EGRESS,
        };
        d[9] = self.protocol.unwrap_or(0);
        d[10..12].copy_from_slice(&self.port.to_be_bytes());
        let len = match self.protocol {
            None => types::IDD_POL_PREFIX_ALL,
            Some(_) => types::IDD_POL_PREFIX_PROTO + u32::from(self.port_prefix),
        };
        Ok(Key::new(len, d))
    }

    fn from_key(len: u32, d: [u8; 12]) -> Option<Self> {
        let direction = match d[8] {
            types::IDD_POL_INGRESS => PolicyDirection::Ingress,
            types::IDD_POL_EGRESS => PolicyDirection::Egress,
            _ => return None,
        };
        let (protocol, port_prefix) = if len <= types::IDD_POL_PREFIX_ALL {
            (None, 0)
        } else {
            (
                Some(d[9]),
                u8::try_from(len.checked_sub(types::IDD_POL_PREFIX_PROTO)?).ok()?,
            )
        };
        Some(Self {
            subject: u32::from_ne_bytes([d[0], d[1], d[2], d[3]]),
            direction,
            peer: u32::from_ne_bytes([d[4], d[5], d[6], d[7]]),
            protocol,
            port: if protocol.is_some() {
                u16::from_be_bytes([d[10], d[11]])
            } else {
                0
            },
            port_prefix,
        })
    }
}

/// A removal's result, with "the key was not there" counted as done.
fn absent_ok(r: Result<(), MapError>, map: &'static str) -> Result<(), Error> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(map_err(map)(e)),
    }
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Strict mode: the remote pod CIDR has no encrypted path.
    NoPath,
    /// Strict mode: the route says plaintext.
    PlaintextRoute,
    /// Ingress strict: from a remote pod CIDR but not out of a tunnel (`ingress-not-encrypted`).
    NotEncrypted,
    /// Ingress strict: a new TCP connection into a strict pod not made by the node's Envoy
    /// (`ingress-not-mtls`).
    NotMtls,
    /// Ingress strict: a new TCP connection into a pod before the node's first plan was
    /// applied (`ingress-not-ready`).
    NotReady,
    /// NetworkPolicy: the source pod's egress rules do not allow it (`policy-denied`).
    PolicyEgress,
    /// NetworkPolicy: the destination pod's ingress rules do not allow it (`policy-denied`).
    PolicyIngress,
    /// A reason this loader does not know (a newer program).
    Other(u8),
}

/// Packets and bytes per path, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathCounters {
    /// Indexed like [`Path::ALL`].
    pub by_path: [IddPathStats; 6],
}

impl PathCounters {
    /// The counters of `path`.
    #[must_use]
    pub fn get(&self, path: Path) -> IddPathStats {
        self.by_path[path.index() as usize]
    }
}

/// One flow event: a classified packet (every one, or only drops; see [`FlowEvents`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowEvent {
    /// `CLOCK_MONOTONIC` nanoseconds.
    pub timestamp_ns: u64,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (0 when not TCP/UDP).
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// IP protocol number.
    pub protocol: u8,
    /// The verdict.
    pub path: Path,
    /// Why it was dropped (`None` unless `path` is `Drop`).
    pub drop_reason: Option<DropReason>,
    /// The destination's node id from the route.
    pub node_id: u32,
    /// The interface it was seen on.
    pub ifindex: u32,
    /// `skb->len`.
    pub len: u32,
    /// `skb->mark` after classification.
    pub mark: u32,
    /// NetworkPolicy drops: the id of a policy isolating the pod (0 otherwise).
    pub policy: u32,
}

impl FlowEvent {
    /// Decodes a ring-buffer record; `None` when it is too short or names an unknown path.
    #[must_use]
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < std::mem::size_of::<IddFlowEvent>() {
            return None;
        }
        let u16_at = |o: usize| u16::from_ne_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let addr_at = |o: usize| {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[o..o + 16]);
            unmapped(a)
        };
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&b[0..8]);
        let path = Path::from_index(u32::from(b[46]))?;
        let drop_reason = match b[47] {
            types::IDD_DROP_NONE => None,
            types::IDD_DROP_NO_PATH => Some(DropReason::NoPath),
            types::IDD_DROP_PLAINTEXT_ROUTE => Some(DropReason::PlaintextRoute),
            types::IDD_DROP_NOT_ENCRYPTED => Some(DropReason::NotEncrypted),
            types::IDD_DROP_NOT_MTLS => Some(DropReason::NotMtls),
            types::IDD_DROP_NOT_READY => Some(DropReason::NotReady),
            types::IDD_DROP_POLICY_EGRESS => Some(DropReason::PolicyEgress),
            types::IDD_DROP_POLICY_INGRESS => Some(DropReason::PolicyIngress),
            other => Some(DropReason::Other(other)),
        };
        Some(Self {
            timestamp_ns: u64::from_ne_bytes(ts),
            src: addr_at(8),
            dst: addr_at(24),
            src_port: u16_at(40),
            dst_port: u16_at(42),
            protocol: b[44],
            path,
            drop_reason,
            node_id: u32_at(48),
            ifindex: u32_at(52),
            len: u32_at(56),
            mark: u32_at(60),
            policy: u32_at(64),
        })
    }
}

/// Reads flow events from the ring buffer. `as_fd()` is readable when events wait (for
/// epoll / `tokio::io::unix::AsyncFd`).
pub struct FlowEventReader {
    ring: RingBuf<MapData>,
}

impl std::fmt::Debug for FlowEventReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowEventReader")
            .field("fd", &self.ring.as_raw_fd())
            .finish()
    }
}

impl FlowEventReader {
    /// Opens the flow-event ring buffer that a running classifier pinned under `pin_dir`
    /// (the [`ClassifierConfig::pin_dir`] it was loaded with), for a separate reader such as
    /// `identityd observe`. A ring buffer has one consumer: events read here are gone for others.
    ///
    /// # Errors
    /// When nothing is pinned there or it is not the classifier's ring buffer.
    pub fn from_pin(pin_dir: &FsPath) -> Result<Self, Error> {
        let path = pin_dir.join(format!("v{PIN_LAYOUT_VERSION}")).join(EVENTS);
        let data = MapData::from_pin(&path).map_err(map_err(EVENTS))?;
        let ring = RingBuf::try_from(Map::RingBuf(data)).map_err(map_err(EVENTS))?;
        Ok(Self { ring })
    }
}

impl FlowEventReader {
    /// The next waiting event, without blocking.
    pub fn try_next(&mut self) -> Option<FlowEvent> {
        loop {
            let item = self.ring.next()?;
            if let Some(ev) = FlowEvent::decode(&item) {
                return Some(ev);
            }
        }
    }

    /// The next event, waiting up to `timeout` for one.
    ///
    /// # Errors
    /// When polling the ring buffer's fd fails.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<FlowEvent>, Error> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(ev) = self.try_next() {
                return Ok(Some(ev));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pfd = libc::pollfd {
                fd: self.ring.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
            // SAFETY: `pfd` is a valid, initialised pollfd that outlives the call, and the
            // count passed is 1.
            #[allow(unsafe_code)]
            let rc = unsafe { libc::poll(&raw mut pfd, 1, ms) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(Error::Io {
                        op: "polling the flow event ring buffer",
                        source: e,
                    });
                }
            }
        }
    }
}

impl AsFd for FlowEventReader {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

/// The result of one `BPF_PROG_TEST_RUN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestRunOutcome {
    /// The tc verdict the program returned (`TC_ACT_OK` = 0, `TC_ACT_SHOT` = 2).
    pub return_value: u32,
    /// `skb->mark` as the kernel wrote it back into `ctx_out`.
    pub mark: u32,
    /// The kernel's average run time per repetition.
    pub duration: Duration,
}

impl TestRunOutcome {
    /// `TC_ACT_OK`.
    pub const TC_ACT_OK: u32 = 0;
    /// `TC_ACT_SHOT`.
    pub const TC_ACT_SHOT: u32 = 2;

    /// The packet was passed on.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.return_value == Self::TC_ACT_OK
    }

    /// The packet was dropped.
    #[must_use]
    pub fn dropped(&self) -> bool {
        self.return_value == Self::TC_ACT_SHOT
    }
}

#[derive(Debug)]
enum Attachment {
    /// Held by the program; detached when the loader drops.
    Owned(SchedClassifierLinkId),
    /// Pinned on bpffs; stays attached after the loader drops.
    Pinned { path: PathBuf, _link: FdLink },
}

/// The classifier, loaded, with typed operations on its maps and attachments.
#[derive(Debug)]
pub struct Classifier {
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
    attachments: HashMap<(String, Direction, &'static str), Attachment>,
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> Error {
    move |e| Error::Map {
        map,
        source: Box::new(e),
    }
}

fn prog_err(op: &'static str, iface: &str) -> impl Fn(aya::programs::ProgramError) -> Error {
    let iface = iface.to_owned();
    move |e| Error::Program {
        op,
        iface: iface.clone(),
        source: Box::new(e),
    }
}

impl Classifier {
    /// Loads the classifier with `config`. With a pin directory, maps already pinned there are
    /// adopted (their content is kept) and missing ones are created and pinned.
    ///
    /// # Errors
    /// When bpffs cannot be prepared, or the kernel refuses the object.
    pub fn load(config: &ClassifierConfig) -> Result<Self, Error> {
        let strict = u32::from(config.strict);
        let events = match config.flow_events {
            FlowEvents::None => types::IDD_EVENTS_NONE,
            FlowEvents::Drops => types::IDD_EVENTS_DROPS,
            FlowEvents::All => types::IDD_EVENTS_ALL,
        };
        let any_source = u32::from(config.any_source);
        let pin_maps = config
            .pin_dir
            .as_ref()
            .map(|d| d.join(format!("v{PIN_LAYOUT_VERSION}")));
        if let Some(dir) = &pin_maps {
            crate::pin::ensure_dir(&dir.join("links"))?;
        }
        let mut loader = EbpfLoader::new();
        loader
            .override_global("IDD_STRICT", &strict, true)
            .override_global("IDD_FLOW_EVENTS", &events, true)
            .override_global("IDD_ANY_SOURCE", &any_source, true)
            .map_max_entries(ROUTES, config.max_routes);
        if let Some(dir) = &pin_maps {
            for m in PINNED_MAPS {
                loader.map_pin_path(m, dir.join(m));
            }
        }
        let mut ebpf = loader.load(CLASSIFIER_OBJ).map_err(|e| Error::Load {
            object: OBJECT,
            source: Box::new(e),
        })?;
        for name in [PROG, TO_POD] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(Error::Missing {
                    object: OBJECT,
                    what: "program",
                    name,
                })?
                .try_into()
                .map_err(prog_err("typing program", ""))?;
            prog.load().map_err(prog_err("loading program", ""))?;
        }
        let mut c = Self {
            ebpf,
            pin_dir: pin_maps,
            attachments: HashMap::new(),
        };
        for cidr in &config.cluster_cidrs {
            c.set_route(
                *cidr,
                Route {
                    kind: RouteKind::Unavailable,
                    node_id: 0,
                },
            )?;
        }
        Ok(c)
    }

    fn prog_named(&self, name: &'static str) -> Result<&SchedClassifier, Error> {
        self.ebpf
            .program(name)
            .ok_or(Error::Missing {
                object: OBJECT,
                what: "program",
                name,
            })?
            .try_into()
            .map_err(prog_err("typing program", ""))
    }

    fn prog(&self) -> Result<&SchedClassifier, Error> {
        self.prog_named(PROG)
    }

    fn prog_mut_named(&mut self, name: &'static str) -> Result<&mut SchedClassifier, Error> {
        self.ebpf
            .program_mut(name)
            .ok_or(Error::Missing {
                object: OBJECT,
                what: "program",
                name,
            })?
            .try_into()
            .map_err(prog_err("typing program", ""))
    }

    fn map_ref(&self, name: &'static str) -> Result<&Map, Error> {
        self.ebpf.map(name).ok_or(Error::Missing {
            object: OBJECT,
            what: "map",
            name,
        })
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, Error> {
        self.ebpf.map_mut(name).ok_or(Error::Missing {
            object: OBJECT,
            what: "map",
            name,
        })
    }

    fn link_pin(&self, iface: &str, ifindex: u32, tag: &str) -> Option<PathBuf> {
        self.pin_dir
            .as_ref()
            .map(|d| d.join("links").join(format!("{iface}-{ifindex}-{tag}")))
    }

    /// Attaches to `iface` (in the calling thread's network namespace) on `dir`. Idempotent:
    /// attaching where this loader is attached already does nothing. With a pin directory, a
    /// link pinned there by an earlier loader is re-adopted: its program is replaced by this
    /// one atomically (no moment without a classifier).
    ///
    /// # Errors
    /// When the interface does not exist or the kernel refuses the attachment.
    pub fn attach(&mut self, iface: &str, dir: Direction) -> Result<(), Error> {
        self.attach_prog(iface, dir, PROG)
    }

    /// Attaches ingress strict (`idd_to_pod`) to the egress of the pod-facing veth `iface`:
    /// packets going into the pod. Idempotent and re-adopting like [`Classifier::attach`].
    ///
    /// # Errors
    /// As [`Classifier::attach`].
    pub fn attach_to_pod(&mut self, iface: &str) -> Result<(), Error> {
        self.attach_prog(iface, Direction::Egress, TO_POD)
    }

    /// Removes ingress strict from `iface` (see [`Classifier::attach_to_pod`]).
    ///
    /// # Errors
    /// As [`Classifier::detach`].
    pub fn detach_to_pod(&mut self, iface: &str) -> Result<(), Error> {
        self.detach_prog(iface, Direction::Egress, TO_POD)
    }

    fn attach_prog(
        &mut self,
        iface: &str,
        dir: Direction,
        prog_name: &'static str,
    ) -> Result<(), Error> {
        let tag = pin_tag(dir, prog_name);
        let key = (iface.to_owned(), dir, prog_name);
        if self.attachments.contains_key(&key) {
            return Ok(());
        }
        let ifindex = crate::pin::ifindex(iface)?;
        let Some(pin) = self.link_pin(iface, ifindex, &tag) else {
            let id = self
                .prog_mut_named(prog_name)?
                .attach_with_options(
                    iface,
                    dir.into(),
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(prog_err("attaching", iface))?;
            self.attachments.insert(key, Attachment::Owned(id));
            return Ok(());
        };
        remove_stale_link_pins(&pin, iface, ifindex, &tag)?;
        let prog = self.prog_mut_named(prog_name)?;
        let id = match PinnedLink::from_pin(&pin) {
            Ok(old) => {
                let link =
                    SchedClassifierLink::try_from(FdLink::from(old)).map_err(|e| Error::Link {
                        op: "re-adopting a pinned link",
                        path: pin.clone(),
                        source: Box::new(e),
                    })?;
                prog.attach_to_link(link)
                    .map_err(prog_err("replacing the program of a pinned link", iface))?
            }
            Err(_) if !pin.exists() => prog
                .attach_with_options(
                    iface,
                    dir.into(),
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(prog_err("attaching", iface))?,
            Err(e) => {
                return Err(Error::Link {
                    op: "opening a pinned link",
                    path: pin,
                    source: Box::new(e),
                });
            }
        };
        let link = prog
            .take_link(id)
            .map_err(prog_err("taking the link", iface))?;
        let fd_link = FdLink::try_from(link).map_err(|e| Error::Link {
            op: "converting to an fd link",
            path: pin.clone(),
            source: Box::new(e),
        })?;
        let link = if pin.exists() {
            fd_link
        } else {
            let pinned = fd_link.pin(&pin).map_err(|e| Error::Pin {
                path: pin.clone(),
                source: Box::new(e),
            })?;
            FdLink::from(pinned)
        };
        self.attachments.insert(
            key,
            Attachment::Pinned {
                path: pin,
                _link: link,
            },
        );
        Ok(())
    }

    /// Detaches from `iface` on `dir`, also a link pinned there by an earlier loader.
    /// Idempotent: detaching where nothing is attached does nothing.
    ///
    /// # Errors
    /// When the kernel refuses the detachment or a pin cannot be removed.
    pub fn detach(&mut self, iface: &str, dir: Direction) -> Result<(), Error> {
        self.detach_prog(iface, dir, PROG)
    }

    fn detach_prog(
        &mut self,
        iface: &str,
        dir: Direction,
        prog_name: &'static str,
    ) -> Result<(), Error> {
        let tag = pin_tag(dir, prog_name);
        match self.attachments.remove(&(iface.to_owned(), dir, prog_name)) {
            Some(Attachment::Owned(id)) => {
                self.prog_mut_named(prog_name)?
                    .detach(id)
                    .map_err(prog_err("detaching", iface))?;
            }
            Some(Attachment::Pinned { path, _link }) => {
                crate::pin::remove_file(&path)?;
                drop(_link);
            }
            None => {
                if let Ok(ifindex) = crate::pin::ifindex(iface)
                    && let Some(pin) = self.link_pin(iface, ifindex, &tag)
                    && pin.exists()
                {
                    crate::pin::remove_file(&pin)?;
                }
            }
        }
        Ok(())
    }

    /// Sets (inserts or replaces) the route of `cidr`.
    ///
    /// # Errors
    /// When the map refuses it (full: see [`ClassifierConfig::max_routes`]).
    pub fn set_route(&mut self, cidr: Cidr, route: Route) -> Result<(), Error> {
        let mut trie: LpmTrie<_, [u8; 16], IddRoute> =
            LpmTrie::try_from(self.map_mut(ROUTES)?).map_err(map_err(ROUTES))?;
        let key = Key::new(cidr.mapped_prefix_len(), cidr.mapped_addr());
        let value = IddRoute {
            kind: route.kind.raw(),
            node_id: route.node_id,
        };
        trie.insert(&key, value, 0).map_err(map_err(ROUTES))
    }

    /// Removes the route of `cidr` (exactly that prefix). Removing a missing route is not an
    /// error.
    ///
    /// # Errors
    /// When the map refuses the operation.
    pub fn remove_route(&mut self, cidr: Cidr) -> Result<(), Error> {
        let mut trie: LpmTrie<_, [u8; 16], IddRoute> =
            LpmTrie::try_from(self.map_mut(ROUTES)?).map_err(map_err(ROUTES))?;
        let key = Key::new(cidr.mapped_prefix_len(), cidr.mapped_addr());
        absent_ok(trie.remove(&key), ROUTES)
    }

    /// Every route installed in the map — what the kernel holds (a pinned map re-adopted
    /// after a restart included), for callers that diff desired state against the machine.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn routes(&self) -> Result<Vec<(Cidr, Route)>, Error> {
        let map = self.map_ref(ROUTES)?;
        let trie: LpmTrie<_, [u8; 16], IddRoute> =
            LpmTrie::try_from(map).map_err(map_err(ROUTES))?;
        let mut out = Vec::new();
        for entry in trie.iter() {
            let (key, r) = entry.map_err(map_err(ROUTES))?;
            let addr = unmapped(key.data());
            let len = key
                .prefix_len()
                .saturating_sub(if addr.is_ipv4() { 96 } else { 0 });
            let (Ok(cidr), Some(kind)) = (
                Cidr::new(addr, u8::try_from(len).unwrap_or(u8::MAX)),
                RouteKind::from_raw(r.kind),
            ) else {
                continue;
            };
            out.push((
                cidr,
                Route {
                    kind,
                    node_id: r.node_id,
                },
            ));
        }
        Ok(out)
    }

    /// Every workload installed in the map (see [`Classifier::routes`]).
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn workloads(&self) -> Result<Vec<(IpAddr, MtlsMode)>, Error> {
        let map = self.map_ref(WORKLOADS)?;
        let m: BpfHashMap<_, IddAddr, IddWorkload> =
            BpfHashMap::try_from(map).map_err(map_err(WORKLOADS))?;
        let mut out = Vec::new();
        for entry in m.iter() {
            let (k, v) = entry.map_err(map_err(WORKLOADS))?;
            if let Some(mode) = MtlsMode::from_raw(v.mtls_mode) {
                out.push((unmapped(k.addr), mode));
            }
        }
        Ok(out)
    }

    /// The route the longest prefix match gives for `addr`, if any.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn lookup_route(&self, addr: IpAddr) -> Result<Option<Route>, Error> {
        let map = self.map_ref(ROUTES)?;
        let trie: LpmTrie<_, [u8; 16], IddRoute> =
            LpmTrie::try_from(map).map_err(map_err(ROUTES))?;
        match trie.get(&Key::new(128, mapped(addr)), 0) {
            Ok(r) => Ok(RouteKind::from_raw(r.kind).map(|kind| Route {
                kind,
                node_id: r.node_id,
            })),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(ROUTES)(e)),
        }
    }

    /// Sets the mTLS mode of the local workload at `addr`.
    ///
    /// # Errors
    /// When the map refuses it (full).
    pub fn set_workload(&mut self, addr: IpAddr, mode: MtlsMode) -> Result<(), Error> {
        let mut m: BpfHashMap<_, IddAddr, IddWorkload> =
            BpfHashMap::try_from(self.map_mut(WORKLOADS)?).map_err(map_err(WORKLOADS))?;
        let key = IddAddr { addr: mapped(addr) };
        let value = IddWorkload {
            mtls_mode: mode.raw(),
            _pad: 0,
        };
        m.insert(key, value, 0).map_err(map_err(WORKLOADS))
    }

    /// Forgets the workload at `addr`. Removing a missing workload is not an error.
    ///
    /// # Errors
    /// When the map refuses the operation.
    pub fn remove_workload(&mut self, addr: IpAddr) -> Result<(), Error> {
        let mut m: BpfHashMap<_, IddAddr, IddWorkload> =
            BpfHashMap::try_from(self.map_mut(WORKLOADS)?).map_err(map_err(WORKLOADS))?;
        absent_ok(m.remove(&IddAddr { addr: mapped(addr) }), WORKLOADS)
    }

    /// Sets the interfaces packets out of a tunnel arrive on (WireGuard, IPsec): ingress
    /// strict accepts remote pods' packets only from these. At most [`TUNNELS_MAX`].
    ///
    /// # Errors
    /// When there are more than [`TUNNELS_MAX`] or the map refuses the update.
    pub fn set_tunnels(&mut self, ifindexes: &[u32]) -> Result<(), Error> {
        if ifindexes.len() > TUNNELS_MAX {
            return Err(Error::Map {
                map: TUNNELS,
                source: Box::new(MapError::OutOfBounds {
                    index: u32::try_from(ifindexes.len()).unwrap_or(u32::MAX),
                    max_entries: types::IDD_TUNNELS_MAX,
                }),
            });
        }
        let mut a: Array<_, u32> =
            Array::try_from(self.map_mut(TUNNELS)?).map_err(map_err(TUNNELS))?;
        for i in 0..types::IDD_TUNNELS_MAX {
            let v = ifindexes.get(i as usize).copied().unwrap_or(0);
            a.set(i, v, 0).map_err(map_err(TUNNELS))?;
        }
        Ok(())
    }

    /// Lets this node's own processes (the kubelet's probes) open TCP connections to `port`
    /// of the local pod at `addr` through ingress strict.
    ///
    /// # Errors
    /// When the map refuses it (full).
    pub fn set_probe_port(&mut self, addr: IpAddr, port: u16) -> Result<(), Error> {
        let mut m: BpfHashMap<_, IddProbe, u32> =
            BpfHashMap::try_from(self.map_mut(PROBES)?).map_err(map_err(PROBES))?;
        let key = IddProbe {
            addr: mapped(addr),
            port,
            _pad: 0,
        };
        m.insert(key, 1, 0).map_err(map_err(PROBES))
    }

    /// Forgets a probe port. Removing a missing one is not an error.
    ///
    /// # Errors
    /// When the map refuses the operation.
    pub fn remove_probe_port(&mut self, addr: IpAddr, port: u16) -> Result<(), Error> {
        let mut m: BpfHashMap<_, IddProbe, u32> =
            BpfHashMap::try_from(self.map_mut(PROBES)?).map_err(map_err(PROBES))?;
        let key = IddProbe {
            addr: mapped(addr),
            port,
            _pad: 0,
        };
        absent_ok(m.remove(&key), PROBES)
    }

    /// Every probe port installed in the map.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn probe_ports(&self) -> Result<Vec<(IpAddr, u16)>, Error> {
        let m: BpfHashMap<_, IddProbe, u32> =
            BpfHashMap::try_from(self.map_ref(PROBES)?).map_err(map_err(PROBES))?;
        let mut out = Vec::new();
        for k in m.keys() {
            let k = k.map_err(map_err(PROBES))?;
            out.push((unmapped(k.addr), k.port));
        }
        Ok(out)
    }

    /// Makes the allow-list of ingress strict's encryption rule (sources admitted into local
    /// pods from outside the tunnel) equal to `cidrs`: adds the missing prefixes, removes the
    /// others, leaves the rest alone. Empty (the default) admits nothing.
    ///
    /// # Errors
    /// When the map cannot be read or refuses an update (full: 1,024 prefixes).
    pub fn set_allow_from(&mut self, cidrs: &[Cidr]) -> Result<(), Error> {
        let installed = self.allow_from()?;
        let mut trie: LpmTrie<_, [u8; 16], u32> =
            LpmTrie::try_from(self.map_mut(ALLOW_FROM)?).map_err(map_err(ALLOW_FROM))?;
        for c in cidrs.iter().filter(|c| !installed.contains(c)) {
            let key = Key::new(c.mapped_prefix_len(), c.mapped_addr());
            trie.insert(&key, 1, 0).map_err(map_err(ALLOW_FROM))?;
        }
        for c in installed.iter().filter(|c| !cidrs.contains(c)) {
            let key = Key::new(c.mapped_prefix_len(), c.mapped_addr());
            match trie.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(map_err(ALLOW_FROM)(e)),
            }
        }
        Ok(())
    }

    /// The allow-list installed in the map (see [`Classifier::set_allow_from`]).
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn allow_from(&self) -> Result<Vec<Cidr>, Error> {
        let trie: LpmTrie<_, [u8; 16], u32> =
            LpmTrie::try_from(self.map_ref(ALLOW_FROM)?).map_err(map_err(ALLOW_FROM))?;
        let mut out = Vec::new();
        for k in trie.keys() {
            let k = k.map_err(map_err(ALLOW_FROM))?;
            let addr = unmapped(k.data());
            let len = k
                .prefix_len()
                .saturating_sub(if addr.is_ipv4() { 96 } else { 0 });
            if let Ok(c) = Cidr::new(addr, u8::try_from(len).unwrap_or(u8::MAX)) {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Says whether the node's first plan (workloads, routes, tunnels) is in the maps. Until
    /// it is, ingress strict refuses every new TCP connection into a local pod that the
    /// node's Envoy did not make (`ingress-not-ready`). The state is pinned with the maps.
    ///
    /// # Errors
    /// When the map refuses the update.
    pub fn set_ready(&mut self, ready: bool) -> Result<(), Error> {
        let mut a: Array<_, u32> = Array::try_from(self.map_mut(STATE)?).map_err(map_err(STATE))?;
        let v = a.get(&0, 0).map_err(map_err(STATE))?;
        let v = if ready {
            v | types::IDD_STATE_READY
        } else {
            v & !types::IDD_STATE_READY
        };
        a.set(0, v, 0).map_err(map_err(STATE))
    }

    /// Whether [`Classifier::set_ready`] said the first plan is applied (a re-adopted pinned
    /// map keeps the last daemon's word).
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn ready(&self) -> Result<bool, Error> {
        let a: Array<_, u32> = Array::try_from(self.map_ref(STATE)?).map_err(map_err(STATE))?;
        Ok(a.get(&0, 0).map_err(map_err(STATE))? & types::IDD_STATE_READY != 0)
    }

    /// The tunnel interfaces set with [`Classifier::set_tunnels`] (non-zero slots).
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn tunnels(&self) -> Result<Vec<u32>, Error> {
        let a: Array<_, u32> = Array::try_from(self.map_ref(TUNNELS)?).map_err(map_err(TUNNELS))?;
        let mut out = Vec::new();
        for i in 0..types::IDD_TUNNELS_MAX {
            let v = a.get(&i, 0).map_err(map_err(TUNNELS))?;
            if v != 0 {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Sets the NetworkPolicy entry of the pod at `addr` (every pod of the cluster has one).
    ///
    /// # Errors
    /// When the map refuses it (full: 65,536 addresses).
    pub fn set_policy_pod(&mut self, addr: IpAddr, pod: PolicyPod) -> Result<(), Error> {
        let mut m: BpfHashMap<_, IddAddr, IddPolPod> =
            BpfHashMap::try_from(self.map_mut(POL_PODS)?).map_err(map_err(POL_PODS))?;
        let value = IddPolPod {
            identity: pod.identity,
            ingress_policy: pod.ingress_policy,
            egress_policy: pod.egress_policy,
            _pad: 0,
        };
        m.insert(IddAddr { addr: mapped(addr) }, value, 0)
            .map_err(map_err(POL_PODS))
    }

    /// Forgets the NetworkPolicy entry of `addr`. Removing a missing one is not an error.
    ///
    /// # Errors
    /// When the map refuses the operation.
    pub fn remove_policy_pod(&mut self, addr: IpAddr) -> Result<(), Error> {
        let mut m: BpfHashMap<_, IddAddr, IddPolPod> =
            BpfHashMap::try_from(self.map_mut(POL_PODS)?).map_err(map_err(POL_PODS))?;
        absent_ok(m.remove(&IddAddr { addr: mapped(addr) }), POL_PODS)
    }

    /// Every pod entry installed (see [`Classifier::routes`]).
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn policy_pods(&self) -> Result<Vec<(IpAddr, PolicyPod)>, Error> {
        let m: BpfHashMap<_, IddAddr, IddPolPod> =
            BpfHashMap::try_from(self.map_ref(POL_PODS)?).map_err(map_err(POL_PODS))?;
        let mut out = Vec::new();
        for entry in m.iter() {
            let (k, v) = entry.map_err(map_err(POL_PODS))?;
            out.push((
                unmapped(k.addr),
                PolicyPod {
                    identity: v.identity,
                    ingress_policy: v.ingress_policy,
                    egress_policy: v.egress_policy,
                },
            ));
        }
        Ok(out)
    }

    /// Sets the CIDR identity of an ipBlock prefix.
    ///
    /// # Errors
    /// When the map refuses it (full: 16,384 prefixes).
    pub fn set_policy_cidr(&mut self, cidr: Cidr, identity: u32) -> Result<(), Error> {
        let mut trie: LpmTrie<_, [u8; 16], u32> =
            LpmTrie::try_from(self.map_mut(POL_CIDRS)?).map_err(map_err(POL_CIDRS))?;
        let key = Key::new(cidr.mapped_prefix_len(), cidr.mapped_addr());
        trie.insert(&key, identity, 0).map_err(map_err(POL_CIDRS))
    }

    /// Removes an ipBlock prefix. Removing a missing one is not an error.
    ///
    /// # Errors
    /// When the map refuses the operation.
    pub fn remove_policy_cidr(&mut self, cidr: Cidr) -> Result<(), Error> {
        let mut trie: LpmTrie<_, [u8; 16], u32> =
            LpmTrie::try_from(self.map_mut(POL_CIDRS)?).map_err(map_err(POL_CIDRS))?;
        let key = Key::new(cidr.mapped_prefix_len(), cidr.mapped_addr());
        absent_ok(trie.remove(&key), POL_CIDRS)
    }

    /// Every ipBlock prefix installed, with its identity.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn policy_cidrs(&self) -> Result<Vec<(Cidr, u32)>, Error> {
        let trie: LpmTrie<_, [u8; 16], u32> =
            LpmTrie::try_from(self.map_ref(POL_CIDRS)?).map_err(map_err(POL_CIDRS))?;
        let mut out = Vec::new();
        for entry in trie.iter() {
            let (key, id) = entry.map_err(map_err(POL_CIDRS))?;
            let addr = unmapped(key.data());
            let len = key
                .prefix_len()
                .saturating_sub(if addr.is_ipv4() { 96 } else { 0 });
            if let Ok(cidr) = Cidr::new(addr, u8::try_from(len).unwrap_or(u8::MAX)) {
                out.push((cidr, id));
            }
        }
        Ok(out)
    }

    /// Installs an allow rule, naming the policy that grants it (`policy`, for counters).
    ///
    /// # Errors
    /// When the rule is malformed (see [`PolicyRule::key`]) or the map refuses it (full:
    /// 262,144 rules).
    pub fn set_policy_rule(&mut self, rule: PolicyRule, policy: u32) -> Result<(), Error> {
        let key = rule.key()?;
        let mut trie: LpmTrie<_, [u8; 12], u32> =
            LpmTrie::try_from(self.map_mut(POLICY)?).map_err(map_err(POLICY))?;
        trie.insert(&key, policy, 0).map_err(map_err(POLICY))
    }

    /// Removes an allow rule. Removing a missing one is not an error.
    ///
    /// # Errors
    /// When the rule is malformed or the map refuses the operation.
    pub fn remove_policy_rule(&mut self, rule: PolicyRule) -> Result<(), Error> {
        let key = rule.key()?;
        let mut trie: LpmTrie<_, [u8; 12], u32> =
            LpmTrie::try_from(self.map_mut(POLICY)?).map_err(map_err(POLICY))?;
        absent_ok(trie.remove(&key), POLICY)
    }

    /// Every allow rule installed, with the policy granting it.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn policy_rules(&self) -> Result<Vec<(PolicyRule, u32)>, Error> {
        let trie: LpmTrie<_, [u8; 12], u32> =
            LpmTrie::try_from(self.map_ref(POLICY)?).map_err(map_err(POLICY))?;
        let mut out = Vec::new();
        for entry in trie.iter() {
            let (key, policy) = entry.map_err(map_err(POLICY))?;
            if let Some(rule) = PolicyRule::from_key(key.prefix_len(), key.data()) {
                out.push((rule, policy));
            }
        }
        Ok(out)
    }

    /// Packets dropped by NetworkPolicy per (isolating policy id, direction), summed over CPUs.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn policy_drops(&self) -> Result<Vec<(u32, PolicyDirection, u64)>, Error> {
        let m: PerCpuHashMap<_, IddPolDropKey, u64> =
            PerCpuHashMap::try_from(self.map_ref(POL_DROPS)?).map_err(map_err(POL_DROPS))?;
        let mut out = Vec::new();
        for entry in m.iter() {
            let (k, values) = entry.map_err(map_err(POL_DROPS))?;
            let dir = if k.direction == u32::from(types::IDD_POL_EGRESS) {
                PolicyDirection::Egress
            } else {
                PolicyDirection::Ingress
            };
            out.push((k.policy, dir, values.iter().sum()));
        }
        out.sort_unstable_by_key(|(p, d, _)| (*p, *d));
        Ok(out)
    }

    /// Packets and bytes per path, summed over CPUs.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn counters(&self) -> Result<PathCounters, Error> {
        let map = self.map_ref(STATS)?;
        let arr: PerCpuArray<_, IddPathStats> =
            PerCpuArray::try_from(map).map_err(map_err(STATS))?;
        let mut out = PathCounters::default();
        for p in Path::ALL {
            let values = arr.get(&p.index(), 0).map_err(map_err(STATS))?;
            let slot = &mut out.by_path[p.index() as usize];
            for v in values.iter() {
                slot.packets += v.packets;
                slot.bytes += v.bytes;
            }
        }
        Ok(out)
    }

    /// Takes the flow-event stream. It can be taken once per loader.
    ///
    /// # Errors
    /// When it was taken already.
    pub fn flow_events(&mut self) -> Result<FlowEventReader, Error> {
        let map = self.ebpf.take_map(EVENTS).ok_or(Error::Missing {
            object: OBJECT,
            what: "map (already taken?)",
            name: EVENTS,
        })?;
        let ring = RingBuf::try_from(map).map_err(map_err(EVENTS))?;
        Ok(FlowEventReader { ring })
    }

    /// Runs the program once per `repeat` on `packet` (an Ethernet frame) with `mark` as the
    /// incoming `skb->mark`, through `BPF_PROG_TEST_RUN`. Counters and flow events are
    /// updated as for a real packet.
    ///
    /// # Errors
    /// When the kernel refuses the test run (too short a packet, no `CAP_BPF`).
    pub fn test_run(&self, packet: &[u8], mark: u32, repeat: u32) -> Result<TestRunOutcome, Error> {
        self.test_run_prog(PROG, packet, mark, 0, repeat)
    }

    /// [`Classifier::test_run`] for ingress strict (`idd_to_pod`), with the interface the
    /// packet arrived on (`skb->ingress_ifindex`; 0: made on this node).
    ///
    /// # Errors
    /// As [`Classifier::test_run`].
    pub fn test_run_to_pod(
        &self,
        packet: &[u8],
        mark: u32,
        ingress_ifindex: u32,
    ) -> Result<TestRunOutcome, Error> {
        self.test_run_prog(TO_POD, packet, mark, ingress_ifindex, 1)
    }

    fn test_run_prog(
        &self,
        prog_name: &'static str,
        packet: &[u8],
        mark: u32,
        ingress_ifindex: u32,
        repeat: u32,
    ) -> Result<TestRunOutcome, Error> {
        let mut ctx_in = [0u8; SK_BUFF_SIZE];
        ctx_in[SK_BUFF_MARK_OFFSET..SK_BUFF_MARK_OFFSET + 4].copy_from_slice(&mark.to_ne_bytes());
        ctx_in[SK_BUFF_INGRESS_IFINDEX_OFFSET..SK_BUFF_INGRESS_IFINDEX_OFFSET + 4]
            .copy_from_slice(&ingress_ifindex.to_ne_bytes());
        let mut ctx_out = [0u8; SK_BUFF_SIZE];
        let mut data_out = vec![0u8; packet.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut data_out),
            ctx_in: Some(&ctx_in),
            ctx_out: Some(&mut ctx_out),
            repeat,
            ..TestRunOptions::default()
        };
        let r = self
            .prog_named(prog_name)?
            .test_run(opts)
            .map_err(prog_err("BPF_PROG_TEST_RUN", ""))?;
        let mut m = [0u8; 4];
        m.copy_from_slice(&ctx_out[SK_BUFF_MARK_OFFSET..SK_BUFF_MARK_OFFSET + 4]);
        Ok(TestRunOutcome {
            return_value: r.return_value,
            mark: u32::from_ne_bytes(m),
            duration: r.duration,
        })
    }

    /// The kernel's id of the loaded program.
    ///
    /// # Errors
    /// When the program's info cannot be read.
    pub fn program_id(&self) -> Result<u32, Error> {
        let info = self
            .prog()?
            .info()
            .map_err(prog_err("reading program info", ""))?;
        Ok(info.id())
    }

    /// The pin directory of this loader's maps and links (`<pin dir>/v<N>`), if pinned.
    #[must_use]
    pub fn pin_dir(&self) -> Option<&FsPath> {
        self.pin_dir.as_deref()
    }
}

/// Removes pins of links to an earlier interface of the same name (deleted and re-created:
/// another ifindex), whose links the kernel has already detached.
/// The suffix of a link pin: the direction for the classifier (`…-ingress`), `to-pod` for
/// ingress strict.
fn pin_tag(dir: Direction, prog_name: &str) -> String {
    if prog_name == TO_POD {
        "to-pod".to_owned()
    } else {
        dir.name().to_owned()
    }
}

fn remove_stale_link_pins(pin: &FsPath, iface: &str, ifindex: u32, tag: &str) -> Result<(), Error> {
    let Some(links) = pin.parent() else {
        return Ok(());
    };
    let Ok(entries) = std::fs::read_dir(links) else {
        return Ok(());
    };
    let (prefix, suffix) = (format!("{iface}-"), format!("-{tag}"));
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let stale = name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(&suffix))
            .is_some_and(|idx| {
                !idx.is_empty()
                    && idx.bytes().all(|b| b.is_ascii_digit())
                    && idx != ifindex.to_string()
            });
        if stale {
            crate::pin::remove_file(&e.path())?;
        }
    }
    Ok(())
}

/// Detaches every link pinned under `pin_dir` and removes the pinned maps and the directory:
/// a full uninstall (`Classifier::load` with the same directory starts empty afterwards).
///
/// # Errors
/// When a pin cannot be removed.
pub fn remove_pins(pin_dir: &FsPath) -> Result<(), Error> {
    crate::pin::remove_tree(pin_dir)
}
