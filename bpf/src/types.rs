//! Rust mirrors of the C map layouts in `bpf/src/*_types.h`.
//!
//! A test compiles a C probe of the same headers and compares sizes and field offsets.

/// Index of the "seen" slot of the `counters` per-CPU array (`IDD_COUNTER_SEEN`).
pub const IDD_COUNTER_SEEN: u32 = 0;
/// Number of slots in `counters` (`IDD_COUNTER_MAX`).
pub const IDD_COUNTER_MAX: u32 = 1;

/// `struct idd_counter` in `counter_types.h`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IddCounter {
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen (`skb->len`).
    pub bytes: u64,
}

// SAFETY: `IddCounter` is `repr(C)`, has only integer fields and no padding, so every bit
// pattern is a valid value, as `Pod` requires.
#[allow(unsafe_code)]
unsafe impl aya::Pod for IddCounter {}

/// `IDD_MARK_MASK`: the bits of `skb->mark` the classifier owns.
pub const IDD_MARK_MASK: u32 = 0x0f00;
/// `IDD_MARK_WIREGUARD`.
pub const IDD_MARK_WIREGUARD: u32 = 0x0e00;
/// `IDD_MARK_IPSEC`.
pub const IDD_MARK_IPSEC: u32 = 0x0d00;
/// `IDD_MARK_PROXY`.
pub const IDD_MARK_PROXY: u32 = 0x0c00;
/// `IDD_MARK_PLAINTEXT`.
pub const IDD_MARK_PLAINTEXT: u32 = 0x0b00;
/// The mark of the tunnel device's own UDP socket (`SO_MARK`): with node encryption its
/// datagrams to peer node addresses take the main table, not the tunnel (no loop). The
/// classifier never sets it.
pub const IDD_MARK_TUNNEL_SOCKET: u32 = 0x0900;
/// `IDD_MARK_FROM_PROXY`: set (SO_MARK) by the node's Envoy on connections to local pods.
pub const IDD_MARK_FROM_PROXY: u32 = 0x0a00;
/// `IDD_TUNNELS_MAX`: slots of the `idd_tunnels` array.
pub const IDD_TUNNELS_MAX: u32 = 4;

/// `IDD_ROUTE_*`: what a pod CIDR leads to.
pub const IDD_ROUTE_UNAVAILABLE: u32 = 0;
/// `IDD_ROUTE_LOCAL`.
pub const IDD_ROUTE_LOCAL: u32 = 1;
/// `IDD_ROUTE_WIREGUARD`.
pub const IDD_ROUTE_WIREGUARD: u32 = 2;
/// `IDD_ROUTE_IPSEC`.
pub const IDD_ROUTE_IPSEC: u32 = 3;
/// `IDD_ROUTE_PLAINTEXT`.
pub const IDD_ROUTE_PLAINTEXT: u32 = 4;
/// `IDD_ROUTE_NODE`: a peer node's own address through WireGuard (node encryption), never
/// through the mesh proxy.
pub const IDD_ROUTE_NODE: u32 = 5;

/// `IDD_PATH_*`: a packet's verdict and its slot in `idd_path_stats`.
pub const IDD_PATH_PASS: u32 = 0;
/// `IDD_PATH_WIREGUARD`.
pub const IDD_PATH_WIREGUARD: u32 = 1;
/// `IDD_PATH_IPSEC`.
pub const IDD_PATH_IPSEC: u32 = 2;
/// `IDD_PATH_PROXY`.
pub const IDD_PATH_PROXY: u32 = 3;
/// `IDD_PATH_PLAINTEXT`.
pub const IDD_PATH_PLAINTEXT: u32 = 4;
/// `IDD_PATH_DROP`.
pub const IDD_PATH_DROP: u32 = 5;
/// `IDD_PATH_MAX`: number of slots in `idd_path_stats`.
pub const IDD_PATH_MAX: u32 = 6;

/// `IDD_DROP_NONE`.
pub const IDD_DROP_NONE: u8 = 0;
/// `IDD_DROP_NO_PATH`.
pub const IDD_DROP_NO_PATH: u8 = 1;
/// `IDD_DROP_PLAINTEXT_ROUTE`.
pub const IDD_DROP_PLAINTEXT_ROUTE: u8 = 2;
/// `IDD_DROP_NOT_ENCRYPTED`.
pub const IDD_DROP_NOT_ENCRYPTED: u8 = 3;
/// `IDD_DROP_NOT_MTLS`.
pub const IDD_DROP_NOT_MTLS: u8 = 4;
/// `IDD_DROP_NOT_READY`.
pub const IDD_DROP_NOT_READY: u8 = 5;
/// `IDD_DROP_POLICY_EGRESS`: NetworkPolicy, the source pod's egress rules.
pub const IDD_DROP_POLICY_EGRESS: u8 = 6;
/// `IDD_DROP_POLICY_INGRESS`: NetworkPolicy, the destination pod's ingress rules.
pub const IDD_DROP_POLICY_INGRESS: u8 = 7;
/// `IDD_POL_INGRESS`: a rule of the protected pod's ingress.
pub const IDD_POL_INGRESS: u8 = 0;
/// `IDD_POL_EGRESS`.
pub const IDD_POL_EGRESS: u8 = 1;
/// `IDD_PEER_ANY`: a rule peer matching every address.
pub const IDD_PEER_ANY: u32 = 0;
/// `IDD_POL_PREFIX_ALL`: prefix length (bits of the `idd_policy` key data) of a rule for every
/// protocol and port.
pub const IDD_POL_PREFIX_ALL: u32 = 72;
/// `IDD_POL_PREFIX_PROTO`: every port of one protocol.
pub const IDD_POL_PREFIX_PROTO: u32 = 80;
/// `IDD_POL_PREFIX_PORT`: one exact port.
pub const IDD_POL_PREFIX_PORT: u32 = 96;
/// `IDD_STATE_READY`: the bit of `idd_state` saying the node's first plan is applied.
pub const IDD_STATE_READY: u32 = 1;

/// `IDD_MTLS_DISABLED`.
pub const IDD_MTLS_DISABLED: u32 = 0;
/// `IDD_MTLS_PERMISSIVE`.
pub const IDD_MTLS_PERMISSIVE: u32 = 1;
/// `IDD_MTLS_STRICT`.
pub const IDD_MTLS_STRICT: u32 = 2;

/// `IDD_EVENTS_NONE`.
pub const IDD_EVENTS_NONE: u32 = 0;
/// `IDD_EVENTS_DROPS`.
pub const IDD_EVENTS_DROPS: u32 = 1;
/// `IDD_EVENTS_ALL`.
pub const IDD_EVENTS_ALL: u32 = 2;

/// `struct idd_lpm_key` (the `idd_routes` key). aya's `lpm_trie::Key<[u8; 16]>` has the same
/// layout; this mirror exists for the layout test.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IddLpmKey {
    /// Prefix length in bits, over the 128-bit (IPv4-mapped) address.
    pub prefixlen: u32,
    /// IPv6 address, or IPv4-mapped IPv6 address, in network byte order.
    pub addr: [u8; 16],
}

/// `struct idd_addr` (the `idd_workloads` key).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct IddAddr {
    /// IPv6 address, or IPv4-mapped IPv6 address, in network byte order.
    pub addr: [u8; 16],
}

/// `struct idd_route` (the `idd_routes` value).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IddRoute {
    /// `IDD_ROUTE_*`.
    pub kind: u32,
    /// The remote node's id.
    pub node_id: u32,
}

/// `struct idd_workload` (the `idd_workloads` value).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IddWorkload {
    /// `IDD_MTLS_*`.
    pub mtls_mode: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// `struct idd_probe` (the `idd_probe_ports` key).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IddProbe {
    /// IPv4-mapped for IPv4.
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    /// Explicit padding.
    pub _pad: u16,
}

/// `struct idd_path_stats` (a slot of the `idd_path_stats` per-CPU array).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IddPathStats {
    /// Packets.
    pub packets: u64,
    /// Bytes (`skb->len`).
    pub bytes: u64,
}

/// `struct idd_flow_event` (a record of the `idd_flow_events` ring buffer).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IddFlowEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Source address (IPv4-mapped for IPv4).
    pub saddr: [u8; 16],
    /// Destination address (IPv4-mapped for IPv4).
    pub daddr: [u8; 16],
    /// Source port, host byte order; 0 when not TCP/UDP.
    pub sport: u16,
    /// Destination port, host byte order.
    pub dport: u16,
    /// IP protocol number.
    pub protocol: u8,
    /// 4 or 6.
    pub family: u8,
    /// `IDD_PATH_*`.
    pub path: u8,
    /// `IDD_DROP_*`.
    pub drop_reason: u8,
    /// The remote node's id from the route.
    pub node_id: u32,
    /// The interface the packet was seen on.
    pub ifindex: u32,
    /// `skb->len`.
    pub len: u32,
    /// `skb->mark` after classification.
    pub mark: u32,
    /// NetworkPolicy drops: the id of a policy isolating the pod.
    pub policy: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// `struct idd_pol_pod` (the `idd_pol_pods` value).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IddPolPod {
    /// Security identity.
    pub identity: u32,
    /// Id of a policy isolating the pod for ingress (0: not isolated).
    pub ingress_policy: u32,
    /// Id of a policy isolating the pod for egress (0: not isolated).
    pub egress_policy: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// `struct idd_pol_key` (the `idd_policy` trie key).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct IddPolKey {
    /// Bits of the data that must match ([`IDD_POL_PREFIX_ALL`] ..= [`IDD_POL_PREFIX_PORT`]).
    pub prefixlen: u32,
    /// Identity of the protected pod.
    pub subject: u32,
    /// Peer identity, or [`IDD_PEER_ANY`].
    pub peer: u32,
    /// `IDD_POL_*`.
    pub direction: u8,
    /// IP protocol.
    pub protocol: u8,
    /// Destination port, network byte order.
    pub port: u16,
}

/// `struct idd_ct_tuple` (the `idd_pol_ct` key).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IddCtTuple {
    /// Source (IPv4-mapped for IPv4).
    pub saddr: [u8; 16],
    /// Destination.
    pub daddr: [u8; 16],
    /// Host byte order.
    pub sport: u16,
    /// Host byte order.
    pub dport: u16,
    /// IP protocol.
    pub protocol: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
}

/// `struct idd_pol_drop_key` (the `idd_pol_drops` key).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct IddPolDropKey {
    /// Policy id.
    pub policy: u32,
    /// `IDD_POL_*`.
    pub direction: u32,
}

/// `sizeof(struct __sk_buff)` of the kernel UAPI headers this crate is built against: the
/// `ctx_in`/`ctx_out` size of `BPF_PROG_TEST_RUN` for tc programs.
pub const SK_BUFF_SIZE: usize = 192;
/// `offsetof(struct __sk_buff, mark)`.
pub const SK_BUFF_MARK_OFFSET: usize = 8;
/// `offsetof(struct __sk_buff, ingress_ifindex)`.
pub const SK_BUFF_INGRESS_IFINDEX_OFFSET: usize = 36;

// SAFETY (all impls below): each type is `repr(C)`, has only integer (array) fields and no
// implicit padding (checked by the layout test), so every bit pattern is a valid value, as
// `Pod` requires.
#[allow(unsafe_code)]
unsafe impl aya::Pod for IddLpmKey {}
#[allow(unsafe_code)]
unsafe impl aya::Pod for IddAddr {}
#[allow(unsafe_code)]
unsafe impl aya::Pod for IddRoute {}
#[allow(unsafe_code)]
unsafe impl aya::Pod for IddWorkload {}
#[allow(unsafe_code)]
unsafe impl aya::Pod for IddProbe {}
#[allow(unsafe_code)]
unsafe impl aya::Pod for IddPathStats {}
#[allow(unsafe_code)]
unsafe impl aya::Pod for IddFlowEvent {}
#[allow(unsafe_code)]
unsafe impl aya::Pod for IddPolPod {}
#[allow(unsafe_code)]
unsafe impl aya::Pod for IddPolKey {}
#[allow(unsafe_code)]
unsafe impl aya::Pod for IddCtTuple {}
#[allow(unsafe_code)]
unsafe impl aya::Pod for IddPolDropKey {}

/// A layout description used by the C/Rust layout test: (type, size, [(field, offset)]).
pub type Layout = (&'static str, usize, Vec<(&'static str, usize)>);

/// The layouts of every shared type, as Rust sees them.
#[must_use]
pub fn layouts() -> Vec<Layout> {
    use std::mem::{offset_of, size_of};
    vec![
        (
            "idd_counter",
            size_of::<IddCounter>(),
            vec![
                ("packets", offset_of!(IddCounter, packets)),
                ("bytes", offset_of!(IddCounter, bytes)),
            ],
        ),
        (
            "idd_lpm_key",
            size_of::<IddLpmKey>(),
            vec![
                ("prefixlen", offset_of!(IddLpmKey, prefixlen)),
                ("addr", offset_of!(IddLpmKey, addr)),
            ],
        ),
        (
            "idd_addr",
            size_of::<IddAddr>(),
            vec![("addr", offset_of!(IddAddr, addr))],
        ),
        (
            "idd_route",
            size_of::<IddRoute>(),
            vec![
                ("kind", offset_of!(IddRoute, kind)),
                ("node_id", offset_of!(IddRoute, node_id)),
            ],
        ),
        (
            "idd_workload",
            size_of::<IddWorkload>(),
            vec![
                ("mtls_mode", offset_of!(IddWorkload, mtls_mode)),
                ("_pad", offset_of!(IddWorkload, _pad)),
            ],
        ),
        (
            "idd_probe",
            size_of::<IddProbe>(),
            vec![
                ("addr", offset_of!(IddProbe, addr)),
                ("port", offset_of!(IddProbe, port)),
                ("_pad", offset_of!(IddProbe, _pad)),
            ],
        ),
        (
            "idd_path_stats",
            size_of::<IddPathStats>(),
            vec![
                ("packets", offset_of!(IddPathStats, packets)),
                ("bytes", offset_of!(IddPathStats, bytes)),
            ],
        ),
        (
            "idd_flow_event",
            size_of::<IddFlowEvent>(),
            vec![
                ("ts_ns", offset_of!(IddFlowEvent, ts_ns)),
                ("saddr", offset_of!(IddFlowEvent, saddr)),
                ("daddr", offset_of!(IddFlowEvent, daddr)),
                ("sport", offset_of!(IddFlowEvent, sport)),
                ("dport", offset_of!(IddFlowEvent, dport)),
                ("protocol", offset_of!(IddFlowEvent, protocol)),
                ("family", offset_of!(IddFlowEvent, family)),
                ("path", offset_of!(IddFlowEvent, path)),
                ("drop_reason", offset_of!(IddFlowEvent, drop_reason)),
                ("node_id", offset_of!(IddFlowEvent, node_id)),
                ("ifindex", offset_of!(IddFlowEvent, ifindex)),
                ("len", offset_of!(IddFlowEvent, len)),
                ("mark", offset_of!(IddFlowEvent, mark)),
                ("policy", offset_of!(IddFlowEvent, policy)),
            ],
        ),
        (
            "idd_pol_pod",
            size_of::<IddPolPod>(),
            vec![
                ("identity", offset_of!(IddPolPod, identity)),
                ("ingress_policy", offset_of!(IddPolPod, ingress_policy)),
                ("egress_policy", offset_of!(IddPolPod, egress_policy)),
            ],
        ),
        (
            "idd_pol_key",
            size_of::<IddPolKey>(),
            vec![
                ("prefixlen", offset_of!(IddPolKey, prefixlen)),
                ("subject", offset_of!(IddPolKey, subject)),
                ("peer", offset_of!(IddPolKey, peer)),
                ("direction", offset_of!(IddPolKey, direction)),
                ("protocol", offset_of!(IddPolKey, protocol)),
                ("port", offset_of!(IddPolKey, port)),
            ],
        ),
        (
            "idd_ct_tuple",
            size_of::<IddCtTuple>(),
            vec![
                ("saddr", offset_of!(IddCtTuple, saddr)),
                ("daddr", offset_of!(IddCtTuple, daddr)),
                ("sport", offset_of!(IddCtTuple, sport)),
                ("dport", offset_of!(IddCtTuple, dport)),
                ("protocol", offset_of!(IddCtTuple, protocol)),
            ],
        ),
        (
            "idd_pol_drop_key",
            size_of::<IddPolDropKey>(),
            vec![
                ("policy", offset_of!(IddPolDropKey, policy)),
                ("direction", offset_of!(IddPolDropKey, direction)),
            ],
        ),
        (
            "__sk_buff",
            SK_BUFF_SIZE,
            vec![("mark", SK_BUFF_MARK_OFFSET)],
        ),
    ]
}

/// The `#define`d constants of the C headers, as Rust sees them: (name, value). The layout
/// test compares them with the C values.
#[must_use]
pub fn constants() -> Vec<(&'static str, u64)> {
    vec![
        ("IDD_COUNTER_SEEN", IDD_COUNTER_SEEN.into()),
        ("IDD_COUNTER_MAX", IDD_COUNTER_MAX.into()),
        ("IDD_MARK_MASK", IDD_MARK_MASK.into()),
        ("IDD_MARK_WIREGUARD", IDD_MARK_WIREGUARD.into()),
        ("IDD_MARK_IPSEC", IDD_MARK_IPSEC.into()),
        ("IDD_MARK_PROXY", IDD_MARK_PROXY.into()),
        ("IDD_MARK_PLAINTEXT", IDD_MARK_PLAINTEXT.into()),
        ("IDD_MARK_FROM_PROXY", IDD_MARK_FROM_PROXY.into()),
        ("IDD_MARK_TUNNEL_SOCKET", IDD_MARK_TUNNEL_SOCKET.into()),
        ("IDD_TUNNELS_MAX", IDD_TUNNELS_MAX.into()),
        ("IDD_ROUTE_UNAVAILABLE", IDD_ROUTE_UNAVAILABLE.into()),
        ("IDD_ROUTE_LOCAL", IDD_ROUTE_LOCAL.into()),
        ("IDD_ROUTE_WIREGUARD", IDD_ROUTE_WIREGUARD.into()),
        ("IDD_ROUTE_IPSEC", IDD_ROUTE_IPSEC.into()),
        ("IDD_ROUTE_PLAINTEXT", IDD_ROUTE_PLAINTEXT.into()),
        ("IDD_ROUTE_NODE", IDD_ROUTE_NODE.into()),
        ("IDD_PATH_PASS", IDD_PATH_PASS.into()),
        ("IDD_PATH_WIREGUARD", IDD_PATH_WIREGUARD.into()),
        ("IDD_PATH_IPSEC", IDD_PATH_IPSEC.into()),
        ("IDD_PATH_PROXY", IDD_PATH_PROXY.into()),
        ("IDD_PATH_PLAINTEXT", IDD_PATH_PLAINTEXT.into()),
        ("IDD_PATH_DROP", IDD_PATH_DROP.into()),
        ("IDD_PATH_MAX", IDD_PATH_MAX.into()),
        ("IDD_DROP_NONE", IDD_DROP_NONE.into()),
        ("IDD_DROP_NO_PATH", IDD_DROP_NO_PATH.into()),
        ("IDD_DROP_PLAINTEXT_ROUTE", IDD_DROP_PLAINTEXT_ROUTE.into()),
        ("IDD_DROP_NOT_ENCRYPTED", IDD_DROP_NOT_ENCRYPTED.into()),
        ("IDD_DROP_NOT_MTLS", IDD_DROP_NOT_MTLS.into()),
        ("IDD_DROP_NOT_READY", IDD_DROP_NOT_READY.into()),
        ("IDD_DROP_POLICY_EGRESS", IDD_DROP_POLICY_EGRESS.into()),
        ("IDD_DROP_POLICY_INGRESS", IDD_DROP_POLICY_INGRESS.into()),
        ("IDD_POL_INGRESS", IDD_POL_INGRESS.into()),
        ("IDD_POL_EGRESS", IDD_POL_EGRESS.into()),
        ("IDD_PEER_ANY", IDD_PEER_ANY.into()),
        ("IDD_POL_PREFIX_ALL", IDD_POL_PREFIX_ALL.into()),
        ("IDD_POL_PREFIX_PROTO", IDD_POL_PREFIX_PROTO.into()),
        ("IDD_POL_PREFIX_PORT", IDD_POL_PREFIX_PORT.into()),
        ("IDD_STATE_READY", IDD_STATE_READY.into()),
        ("IDD_MTLS_DISABLED", IDD_MTLS_DISABLED.into()),
        ("IDD_MTLS_PERMISSIVE", IDD_MTLS_PERMISSIVE.into()),
        ("IDD_MTLS_STRICT", IDD_MTLS_STRICT.into()),
        ("IDD_EVENTS_NONE", IDD_EVENTS_NONE.into()),
        ("IDD_EVENTS_DROPS", IDD_EVENTS_DROPS.into()),
        ("IDD_EVENTS_ALL", IDD_EVENTS_ALL.into()),
    ]
}
