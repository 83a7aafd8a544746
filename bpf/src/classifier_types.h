/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Map layouts of the path classifier, shared between classifier.c and the
 * Rust loader. Fixed-width fields only, explicit padding, no bool. Mirrored
 * by `identityd_bpf::types` and checked by the layout test. */
#ifndef IDENTITYD_CLASSIFIER_TYPES_H
#define IDENTITYD_CLASSIFIER_TYPES_H

#include <linux/types.h>

/* Packet marks (skb->mark, within IDD_MARK_MASK). */
#define IDD_MARK_MASK 0x0f00
#define IDD_MARK_WIREGUARD 0x0e00
#define IDD_MARK_IPSEC 0x0d00
#define IDD_MARK_PROXY 0x0c00
#define IDD_MARK_PLAINTEXT 0x0b00
/* Set (SO_MARK) by the node's Envoy on its connections to local pods after mTLS
 * termination: the only source of new TCP connections a strict pod accepts. */
#define IDD_MARK_FROM_PROXY 0x0a00
/* Set (SO_MARK) on the tunnel device's own UDP socket: with node encryption its datagrams
 * to peer node addresses take the main table, not the tunnel. Never set here. */
#define IDD_MARK_TUNNEL_SOCKET 0x0900

/* Entries of the `idd_tunnels` array: ifindexes packets out of a tunnel arrive on. */
#define IDD_TUNNELS_MAX 4

/* What a pod CIDR in the `idd_routes` trie leads to (`struct idd_route.kind`). */
#define IDD_ROUTE_UNAVAILABLE 0 /* a pod CIDR with no usable path (yet) */
#define IDD_ROUTE_LOCAL 1	/* this node's own pod CIDR */
#define IDD_ROUTE_WIREGUARD 2
#define IDD_ROUTE_IPSEC 3
#define IDD_ROUTE_PLAINTEXT 4	/* encryption disabled towards this CIDR */
#define IDD_ROUTE_NODE 5	/* a peer node's own address, through WireGuard (node encryption);
				 * never through the mesh proxy: it is no workload */

/* The verdict of one packet; also the index into the `idd_path_stats` array. */
#define IDD_PATH_PASS 0	/* not pod-to-remote-pod: passed, mark untouched */
#define IDD_PATH_WIREGUARD 1
#define IDD_PATH_IPSEC 2
#define IDD_PATH_PROXY 3
#define IDD_PATH_PLAINTEXT 4
#define IDD_PATH_DROP 5
#define IDD_PATH_MAX 6

/* Why a packet was dropped (`struct idd_flow_event.drop_reason`). */
#define IDD_DROP_NONE 0
#define IDD_DROP_NO_PATH 1	   /* strict: remote pod CIDR without an encrypted path */
#define IDD_DROP_PLAINTEXT_ROUTE 2 /* strict: the route says plaintext */
#define IDD_DROP_NOT_ENCRYPTED 3   /* ingress strict: from a remote pod CIDR, not out of a tunnel */
#define IDD_DROP_NOT_MTLS 4	   /* ingress strict: new TCP into a strict pod not from the node's Envoy */
#define IDD_DROP_NOT_READY 5	   /* ingress strict: new TCP into a pod before the node's first plan */
#define IDD_DROP_POLICY_EGRESS 6   /* NetworkPolicy: the source pod's egress rules allow it not */
#define IDD_DROP_POLICY_INGRESS 7  /* NetworkPolicy: the destination pod's ingress rules allow it not */

/* Bits of the single `idd_state` entry, set by the daemon. */
#define IDD_STATE_READY 1 /* the node's first plan (workloads, routes, tunnels) is applied */

/* Workload mTLS modes (`struct idd_workload.mtls_mode`). */
#define IDD_MTLS_DISABLED 0
#define IDD_MTLS_PERMISSIVE 1
#define IDD_MTLS_STRICT 2

/* Which flow events the program emits (load-time `IDD_FLOW_EVENTS`). */
#define IDD_EVENTS_NONE 0
#define IDD_EVENTS_DROPS 1
#define IDD_EVENTS_ALL 2

/* Key of the `idd_routes` LPM trie and of `idd_workloads`: IPv6, or IPv4 as
 * an IPv4-mapped IPv6 address (::ffff:a.b.c.d, prefix length + 96). */
struct idd_lpm_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct idd_addr {
	__u8 addr[16];
};

struct idd_route {
	__u32 kind;    /* IDD_ROUTE_* */
	__u32 node_id; /* the remote node, for counters and events */
};

struct idd_workload {
	__u32 mtls_mode; /* IDD_MTLS_* */
	__u32 _pad;
};

/* Key of `idd_probe_ports`: a local pod's address and a port its probes use, which the
 * node's own processes (the kubelet) may open new TCP connections to (allowNodeProbes). */
struct idd_probe {
	__u8 addr[16]; /* IPv4-mapped for IPv4 */
	__u16 port;    /* host byte order */
	__u16 _pad;
};

/* NetworkPolicy (networking.k8s.io/v1). Every pod address of the cluster has an entry in
 * `idd_pol_pods`: its security identity (one per namespace-labels x pod-labels set, so rule
 * entries do not grow with the number of pods) and, for each direction, the id of a policy
 * isolating it (0: not isolated). ipBlock prefixes have identities of their own in the
 * `idd_pol_cidrs` trie (an address takes its longest prefix's). Rules live in the `idd_policy`
 * trie: (subject identity, peer identity, direction) then protocol then destination port, so a
 * prefix length of IDD_POL_PREFIX_ALL allows every protocol and port, IDD_POL_PREFIX_PROTO
 * every port of one protocol, and IDD_POL_PREFIX_PROTO + n the ports sharing their first n
 * bits (endPort ranges split into aligned blocks). */
#define IDD_POL_INGRESS 0
#define IDD_POL_EGRESS 1
#define IDD_PEER_ANY 0		 /* rule peer: every address */
#define IDD_POL_PREFIX_ALL 72	 /* bits of subject, peer, direction */
#define IDD_POL_PREFIX_PROTO 80	 /* ... and protocol */
#define IDD_POL_PREFIX_PORT 96	 /* ... and the whole destination port */

struct idd_pol_pod {
	__u32 identity;
	__u32 ingress_policy; /* 0: not isolated for ingress */
	__u32 egress_policy;  /* 0: not isolated for egress */
	__u32 _pad;
};

struct idd_pol_key {
	__u32 prefixlen;
	__u32 subject;	/* identity of the local pod the rule protects */
	__u32 peer;	/* pod or CIDR identity, or IDD_PEER_ANY */
	__u8 direction; /* IDD_POL_* */
	__u8 protocol;	/* IPPROTO_* */
	__u16 port;	/* destination port, network byte order (prefix-matched) */
};

/* Connection tracking of NetworkPolicy: the forward 5-tuple of every allowed packet from or
 * into a local pod, with when it was last seen; a packet whose reversed tuple is here is a
 * reply and passes whatever the rules say. */
struct idd_ct_tuple {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 protocol;
	__u8 _pad[3];
};

/* Key of the per-CPU `idd_pol_drops` counters. */
struct idd_pol_drop_key {
	__u32 policy;
	__u32 direction; /* IDD_POL_* */
};

struct idd_path_stats {
	__u64 packets;
	__u64 bytes;
};

/* One record of the `idd_flow_events` ring buffer. */
struct idd_flow_event {
	__u64 ts_ns;	   /* bpf_ktime_get_ns() */
	__u8 saddr[16];	   /* IPv4-mapped for IPv4 */
	__u8 daddr[16];
	__u16 sport;	   /* host byte order; 0 when not TCP/UDP */
	__u16 dport;
	__u8 protocol;	   /* IPPROTO_* */
	__u8 family;	   /* 4 or 6 */
	__u8 path;	   /* IDD_PATH_* */
	__u8 drop_reason;  /* IDD_DROP_* */
	__u32 node_id;	   /* from the route, 0 when none */
	__u32 ifindex;
	__u32 len;	   /* skb->len */
	__u32 mark;	   /* skb->mark after classification */
	__u32 policy;	   /* NetworkPolicy drops: the id of a policy isolating the pod */
	__u32 _pad;
};

#endif
