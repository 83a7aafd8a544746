/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Path classification: maps, packet parsing, the decision and its accounting. */
#ifndef IDENTITYD_LIB_CLASSIFY_H
#define IDENTITYD_LIB_CLASSIFY_H

#include "common.h"
#include "../src/classifier_types.h"

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>

/* Load-time settings (read-only globals, set with EbpfLoader::override_global). */
/* Strict mode: drop pod-to-remote-pod traffic that has no encrypted path. */
volatile const __u32 IDD_STRICT = 1;
/* IDD_EVENTS_*: which packets produce a flow event. */
volatile const __u32 IDD_FLOW_EVENTS = IDD_EVENTS_DROPS;
/* 0: only packets from this node's pod CIDRs are classified (pod-facing veths);
 * 1: any source (the node's own egress, e.g. its Envoy towards remote pods). */
volatile const __u32 IDD_ANY_SOURCE = 0;

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct idd_lpm_key);
	__type(value, struct idd_route);
} idd_routes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct idd_addr);
	__type(value, struct idd_workload);
} idd_workloads SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, IDD_PATH_MAX);
	__type(key, __u32);
	__type(value, struct idd_path_stats);
} idd_path_stats SEC(".maps");

/* Ports of local strict pods that the node's own processes may open TCP to (probes). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct idd_probe);
	__type(value, __u32);
} idd_probe_ports SEC(".maps");

/* Sources ingress strict's encryption rule admits from outside the tunnel (the explicit
 * allow-list `encryption.allowFrom`, empty by default). The value is unused. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct idd_lpm_key);
	__type(value, __u32);
} idd_allow_from SEC(".maps");

/* The node's enforcement state (IDD_STATE_* bits), one entry. Zero on a fresh load (first
 * start, reboot): ingress strict then refuses every new TCP connection into a local pod that
 * the node's Envoy did not make, because which pods are strict is not known yet. Pinned, so a
 * restarted daemon keeps enforcing what the last one knew. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} idd_state SEC(".maps");

/* Ifindexes of this node's tunnel interfaces (0: unused slot), set by the daemon. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, IDD_TUNNELS_MAX);
	__type(key, __u32);
	__type(value, __u32);
} idd_tunnels SEC(".maps");

/* TCP connections a remote peer opened directly (not through this node's Envoy) into a local
 * mesh pod, recorded by idd_to_pod when their SYN goes in: the pod's packets of such a
 * connection are replies and take the normal path back, not the node's Envoy (which would
 * answer a SYN-ACK with a reset). LRU: closed connections age out. */
struct idd_ct_key {
	__u8 peer[16];
	__u8 pod[16];
	__u16 peer_port;
	__u16 pod_port;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct idd_ct_key);
	__type(value, __u32);
} idd_inbound_direct SEC(".maps");

/* NetworkPolicy (see classifier_types.h). Every pod address of the cluster. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct idd_addr);
	__type(value, struct idd_pol_pod);
} idd_pol_pods SEC(".maps");

/* ipBlock prefixes and their CIDR identities. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct idd_lpm_key);
	__type(value, __u32);
} idd_pol_cidrs SEC(".maps");

/* Allow rules; the value is the id of a policy granting the rule. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct idd_pol_key);
	__type(value, __u32);
} idd_policy SEC(".maps");

/* Forward tuples of allowed traffic from and into local pods (TCP from its SYN, anything
 * else from every packet) → last seen (ns). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct idd_ct_tuple);
	__type(value, __u64);
} idd_pol_ct SEC(".maps");

/* Packets dropped per (isolating policy, direction). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct idd_pol_drop_key);
	__type(value, __u64);
} idd_pol_drops SEC(".maps");

/* A non-TCP reply passes for this long after its flow's forward direction was last allowed
 * (Cilium's default for non-TCP). TCP is tracked from its SYN, for as long as the LRU map
 * keeps the entry. */
#define IDD_CT_OTHER_NS (60ULL * 1000000000ULL)

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} idd_flow_events SEC(".maps");

/* The parsed fields classification needs. */
struct idd_pkt {
	struct idd_addr saddr;
	struct idd_addr daddr;
	__u16 sport;
	__u16 dport;
	__u8 protocol;
	__u8 family;
	/* TCP: SYN without ACK (a new connection), or a packet whose TCP header is not
	 * visible (a later fragment, IPv6 extension headers), which is judged like one. */
	__u8 tcp_open;
	/* ICMPv6: the message type (neighbour discovery always passes NetworkPolicy). */
	__u8 icmp6_type;
};

static __always_inline void idd_map_v4(struct idd_addr *a, __be32 v4)
{
	__builtin_memset(a->addr, 0, 10);
	a->addr[10] = 0xff;
	a->addr[11] = 0xff;
	__builtin_memcpy(&a->addr[12], &v4, 4);
}

static __always_inline void idd_ports(void *l4, void *end, __u8 proto, struct idd_pkt *p)
{
	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) <= end) {
			p->sport = bpf_ntohs(th->source);
			p->dport = bpf_ntohs(th->dest);
			p->tcp_open = th->syn && !th->ack;
		} else {
			p->tcp_open = 1;
		}
	} else if (proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) <= end) {
			p->sport = bpf_ntohs(uh->source);
			p->dport = bpf_ntohs(uh->dest);
		}
	} else if (proto == IPPROTO_ICMPV6) {
		__u8 *t = l4;

		if ((void *)(t + 1) <= end)
			p->icmp6_type = *t;
	}
}

/* Returns 0 when `p` holds an IPv4 or IPv6 packet's addresses, -1 otherwise. */
static __always_inline int idd_parse(struct __sk_buff *skb, struct idd_pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return -1;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end || ip->ihl < 5)
			return -1;
		idd_map_v4(&p->saddr, ip->saddr);
		idd_map_v4(&p->daddr, ip->daddr);
		p->protocol = ip->protocol;
		p->family = 4;
		/* Only the first fragment carries ports. */
		if (!(ip->frag_off & bpf_htons(0x1fff)))
			idd_ports((void *)ip + ip->ihl * 4, end, ip->protocol, p);
		else if (ip->protocol == IPPROTO_TCP)
			p->tcp_open = 1;
		return 0;
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > end)
			return -1;
		__builtin_memcpy(p->saddr.addr, &ip6->saddr, 16);
		__builtin_memcpy(p->daddr.addr, &ip6->daddr, 16);
		/* Extension headers are not walked: such packets keep port 0 and
		 * never take the proxy path (they still get an encrypted path or a drop). */
		p->protocol = ip6->nexthdr;
		p->family = 6;
		idd_ports(ip6 + 1, end, ip6->nexthdr, p);
		/* A TCP header behind extension headers is not looked for: judged as new. */
		if (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP &&
		    ip6->nexthdr != IPPROTO_ICMPV6)
			p->tcp_open = 1;
		return 0;
	}
	return -1;
}

static __always_inline struct idd_route *idd_route_of(const struct idd_addr *a)
{
	struct idd_lpm_key k = { .prefixlen = 128 };

	__builtin_memcpy(k.addr, a->addr, 16);
	return bpf_map_lookup_elem(&idd_routes, &k);
}

/* Whether the node's first plan is in the maps (IDD_STATE_READY). */
static __always_inline int idd_ready(void)
{
	__u32 k = 0;
	__u32 *v = bpf_map_lookup_elem(&idd_state, &k);

	return v && (*v & IDD_STATE_READY);
}

/* Whether `a` lies in a CIDR of the allow-list (idd_allow_from). */
static __always_inline int idd_allowed_from(const struct idd_addr *a)
{
	struct idd_lpm_key k = { .prefixlen = 128 };

	__builtin_memcpy(k.addr, a->addr, 16);
	return bpf_map_lookup_elem(&idd_allow_from, &k) != 0;
}

static __always_inline void idd_account(__u32 path, __u64 len)
{
	struct idd_path_stats *s = bpf_map_lookup_elem(&idd_path_stats, &path);

	if (s) {
		s->packets += 1;
		s->bytes += len;
	}
}

static __always_inline void idd_emit(struct __sk_buff *skb, const struct idd_pkt *p, __u32 path,
				     __u32 reason, __u32 node_id, __u32 policy)
{
	struct idd_flow_event *e;

	if (IDD_FLOW_EVENTS == IDD_EVENTS_NONE)
		return;
	if (IDD_FLOW_EVENTS == IDD_EVENTS_DROPS && path != IDD_PATH_DROP)
		return;
	e = bpf_ringbuf_reserve(&idd_flow_events, sizeof(*e), 0);
	if (!e)
		return;
	e->ts_ns = bpf_ktime_get_ns();
	__builtin_memcpy(e->saddr, p->saddr.addr, 16);
	__builtin_memcpy(e->daddr, p->daddr.addr, 16);
	e->sport = p->sport;
	e->dport = p->dport;
	e->protocol = p->protocol;
	e->family = p->family;
	e->path = path;
	e->drop_reason = reason;
	e->node_id = node_id;
	e->ifindex = skb->ifindex;
	e->len = skb->len;
	e->mark = skb->mark;
	e->policy = policy;
	e->_pad = 0;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void idd_set_mark(struct __sk_buff *skb, __u32 mark)
{
	skb->mark = (skb->mark & ~IDD_MARK_MASK) | mark;
}

/* Whether `p` (from a local pod) belongs to a connection a remote peer opened directly. */
static __always_inline int idd_inbound_reply(const struct idd_pkt *p)
{
	struct idd_ct_key k = { .peer_port = p->dport, .pod_port = p->sport };

	__builtin_memcpy(k.peer, p->daddr.addr, 16);
	__builtin_memcpy(k.pod, p->saddr.addr, 16);
	return bpf_map_lookup_elem(&idd_inbound_direct, &k) != 0;
}

/* ---- NetworkPolicy ---- */

/* Whether a rule of `subject` for `direction` allows `peer` (an identity) and p's protocol and
 * destination port. */
static __always_inline int idd_pol_rule(__u32 subject, __u32 peer, __u8 direction,
					const struct idd_pkt *p)
{
	struct idd_pol_key k = {
		.prefixlen = IDD_POL_PREFIX_PORT,
		.subject = subject,
		.peer = peer,
		.direction = direction,
		.protocol = p->protocol,
		.port = bpf_htons(p->dport),
	};

	return bpf_map_lookup_elem(&idd_policy, &k) != 0;
}

/* Whether `subject`'s rules for `direction` allow the peer at `peer` (its pod identity, its
 * longest ipBlock prefix's identity, or any peer). */
static __always_inline int idd_pol_allows(__u32 subject, __u8 direction,
					  const struct idd_addr *peer, const struct idd_pkt *p)
{
	struct idd_pol_pod *pp = bpf_map_lookup_elem(&idd_pol_pods, peer);
	struct idd_lpm_key ck = { .prefixlen = 128 };
	__u32 *cid;

	if (pp && idd_pol_rule(subject, pp->identity, direction, p))
		return 1;
	__builtin_memcpy(ck.addr, peer->addr, 16);
	cid = bpf_map_lookup_elem(&idd_pol_cidrs, &ck);
	if (cid && idd_pol_rule(subject, *cid, direction, p))
		return 1;
	return idd_pol_rule(subject, IDD_PEER_ANY, direction, p);
}

/* Whether `p` is a reply of a connection whose forward direction was allowed recently. */
static __always_inline int idd_ct_reply(const struct idd_pkt *p)
{
	struct idd_ct_tuple k = {
		.sport = p->dport,
		.dport = p->sport,
		.protocol = p->protocol,
	};
	__u64 *seen;

	__builtin_memcpy(k.saddr, p->daddr.addr, 16);
	__builtin_memcpy(k.daddr, p->saddr.addr, 16);
	seen = bpf_map_lookup_elem(&idd_pol_ct, &k);
	if (!seen)
		return 0;
	/* TCP is tracked from its SYN only: its entry lives as long as the LRU keeps it. */
	if (p->protocol == IPPROTO_TCP)
		return 1;
	return bpf_ktime_get_ns() - *seen <= IDD_CT_OTHER_NS;
}

/* Records (or refreshes) the forward tuple of an allowed packet. */
static __always_inline void idd_ct_record(const struct idd_pkt *p)
{
	struct idd_ct_tuple k = {
		.sport = p->sport,
		.dport = p->dport,
		.protocol = p->protocol,
	};
	__u64 now = bpf_ktime_get_ns();
	__u64 *seen;

	__builtin_memcpy(k.saddr, p->saddr.addr, 16);
	__builtin_memcpy(k.daddr, p->daddr.addr, 16);
	seen = bpf_map_lookup_elem(&idd_pol_ct, &k);
	if (seen)
		*seen = now;
	else
		bpf_map_update_elem(&idd_pol_ct, &k, &now, BPF_ANY);
}

static __always_inline void idd_pol_count(__u32 policy, __u32 direction)
{
	struct idd_pol_drop_key k = { .policy = policy, .direction = direction };
	__u64 one = 1, *n = bpf_map_lookup_elem(&idd_pol_drops, &k);

	if (n)
		*n += 1;
	else
		bpf_map_update_elem(&idd_pol_drops, &k, &one, BPF_NOEXIST);
}

/* A packet that may open a connection: anything but TCP without SYN (later TCP packets are
 * never tracked, so established TCP costs no conntrack write). */
static __always_inline int idd_ct_opener(const struct idd_pkt *p)
{
	return p->protocol != IPPROTO_TCP || p->tcp_open;
}

/* NetworkPolicy for a packet leaving a local pod (at its veth): the source's egress rules and
 * the destination pod's ingress rules (so traffic the destination node's Envoy delivers, which
 * arrives there from the node itself, was judged on its original source here). Returns
 * IDD_DROP_NONE or the drop reason, with the isolating policy in `*policy`. Replies of allowed
 * connections pass; allowed packets that may open a connection are tracked (a reply never is:
 * that would make the connection's real forward direction look like a reply once a policy
 * isolates it). */
static __always_inline __u32 idd_policy_from_pod(const struct idd_pkt *p, __u32 *policy)
{
	struct idd_pol_pod *s, *d;
	int opener = idd_ct_opener(p), isolated;

	if (p->family == 6 && p->icmp6_type >= 133 && p->icmp6_type <= 137)
		return IDD_DROP_NONE;
	s = bpf_map_lookup_elem(&idd_pol_pods, &p->saddr);
	d = bpf_map_lookup_elem(&idd_pol_pods, &p->daddr);
	isolated = (s && s->egress_policy) || (d && d->ingress_policy);
	if ((!isolated && !opener) || idd_ct_reply(p))
		return IDD_DROP_NONE;
	if (s && s->egress_policy && !idd_pol_allows(s->identity, IDD_POL_EGRESS, &p->daddr, p)) {
		*policy = s->egress_policy;
		idd_pol_count(*policy, IDD_POL_EGRESS);
		return IDD_DROP_POLICY_EGRESS;
	}
	if (d && d->ingress_policy && !idd_pol_allows(d->identity, IDD_POL_INGRESS, &p->saddr, p)) {
		*policy = d->ingress_policy;
		idd_pol_count(*policy, IDD_POL_INGRESS);
		return IDD_DROP_POLICY_INGRESS;
	}
	if (opener)
		idd_ct_record(p);
	return IDD_DROP_NONE;
}

/* Classifies one packet: sets its mark, accounts it, and returns the tc verdict. */
static __always_inline int idd_classify(struct __sk_buff *skb)
{
	struct idd_pkt p = {};
	struct idd_route *dst, *src;
	struct idd_workload *wl;
	__u32 path, reason = IDD_DROP_NONE, node_id = 0, policy = 0;

	if (idd_parse(skb, &p) < 0)
		goto pass;
	if (!IDD_ANY_SOURCE) {
		reason = idd_policy_from_pod(&p, &policy);
		if (reason != IDD_DROP_NONE) {
			path = IDD_PATH_DROP;
			goto out;
		}
	}
	dst = idd_route_of(&p.daddr);
	/* Not towards a pod CIDR. */
	if (!dst)
		goto pass;
	if (dst->kind == IDD_ROUTE_LOCAL) {
		/* Between two pods of this node: TCP between mTLS workloads still goes through
		 * the node's Envoy; plaintext TCP from a workload into a strict workload is
		 * dropped in strict mode. Everything else stays local (it never leaves the node). */
		struct idd_workload *sw, *dw;

		if (p.protocol != IPPROTO_TCP)
			goto pass;
		sw = bpf_map_lookup_elem(&idd_workloads, &p.saddr);
		dw = bpf_map_lookup_elem(&idd_workloads, &p.daddr);
		if (!sw || !dw)
			goto pass;
		node_id = dst->node_id;
		if (sw->mtls_mode != IDD_MTLS_DISABLED && dw->mtls_mode != IDD_MTLS_DISABLED) {
			path = IDD_PATH_PROXY;
			idd_set_mark(skb, IDD_MARK_PROXY);
			goto out;
		}
		/* Only new connections: a strict pod's own connection to a pod outside the mesh
		 * gets its replies (the mesh pod opened it, as the ingress guard judges too). */
		if (IDD_STRICT && dw->mtls_mode == IDD_MTLS_STRICT && p.tcp_open) {
			path = IDD_PATH_DROP;
			reason = IDD_DROP_PLAINTEXT_ROUTE;
			goto out;
		}
		goto pass;
	}
	if (!IDD_ANY_SOURCE) {
		src = idd_route_of(&p.saddr);
		if (!src || src->kind != IDD_ROUTE_LOCAL)
			goto pass;
	}
	node_id = dst->node_id;

	wl = bpf_map_lookup_elem(&idd_workloads, &p.saddr);
	if (wl && wl->mtls_mode != IDD_MTLS_DISABLED && p.protocol == IPPROTO_TCP &&
	    dst->kind != IDD_ROUTE_UNAVAILABLE && dst->kind != IDD_ROUTE_NODE &&
	    !idd_inbound_reply(&p)) {
		/* The node's Envoy originates mTLS; its own traffic to the remote
		 * pod is classified again on the node's egress. */
		path = IDD_PATH_PROXY;
		idd_set_mark(skb, IDD_MARK_PROXY);
		goto out;
	}

	switch (dst->kind) {
	case IDD_ROUTE_WIREGUARD:
	case IDD_ROUTE_NODE:
		path = IDD_PATH_WIREGUARD;
		idd_set_mark(skb, IDD_MARK_WIREGUARD);
		break;
	case IDD_ROUTE_IPSEC:
		path = IDD_PATH_IPSEC;
		idd_set_mark(skb, IDD_MARK_IPSEC);
		break;
	case IDD_ROUTE_PLAINTEXT:
		if (IDD_STRICT) {
			path = IDD_PATH_DROP;
			reason = IDD_DROP_PLAINTEXT_ROUTE;
		} else {
			path = IDD_PATH_PLAINTEXT;
			idd_set_mark(skb, IDD_MARK_PLAINTEXT);
		}
		break;
	default: /* IDD_ROUTE_UNAVAILABLE and anything unknown */
		if (IDD_STRICT) {
			path = IDD_PATH_DROP;
			reason = IDD_DROP_NO_PATH;
		} else {
			path = IDD_PATH_PLAINTEXT;
			idd_set_mark(skb, IDD_MARK_PLAINTEXT);
		}
		break;
	}
out:
	/* NetworkPolicy drops are counted per policy (idd_pol_drops), not as strict-mode drops. */
	if (!policy)
		idd_account(path, skb->len);
	idd_emit(skb, &p, path, reason, node_id, policy);
	return path == IDD_PATH_DROP ? TC_ACT_SHOT : TC_ACT_OK;
pass:
	idd_account(IDD_PATH_PASS, skb->len);
	return TC_ACT_OK;
}

/* Whether `ifindex` is one of this node's tunnel interfaces. */
static __always_inline int idd_from_tunnel(__u32 ifindex)
{
	__u32 i;

	if (!ifindex)
		return 0;
#pragma unroll
	for (i = 0; i < IDD_TUNNELS_MAX; i++) {
		__u32 k = i;
		__u32 *t = bpf_map_lookup_elem(&idd_tunnels, &k);

		if (t && *t == ifindex)
			return 1;
	}
	return 0;
}

/* Whether `p` came out of the tunnel from a peer node's own address inside its pod CIDR (no
 * pod has it): the peer's Envoy, whose classifier judged the flow at its source. */
static __always_inline int idd_peer_node_judged(struct __sk_buff *skb, const struct idd_pkt *p)
{
	struct idd_route *src;

	if (!idd_from_tunnel(skb->ingress_ifindex))
		return 0;
	src = idd_route_of(&p->saddr);
	if (!src || (src->kind != IDD_ROUTE_WIREGUARD && src->kind != IDD_ROUTE_IPSEC))
		return 0;
	return bpf_map_lookup_elem(&idd_pol_pods, &p->saddr) == 0;
}

/* NetworkPolicy for a packet going into a local pod (at its veth): its ingress rules, on the
 * packet's own source address. What this node itself sends (no ingress interface: the
 * kubelet, the node's Envoy delivering mesh traffic already judged at its source) is allowed,
 * the usual CNI exception. So is what a peer node sends out of the tunnel from an address of
 * its pod CIDR that is no pod (its own tunnel address: its Envoy's passthrough connections of
 * mesh pods to pods outside the mesh), which its classifier judged against this pod's ingress
 * rules on the original source pod. */
static __always_inline __u32 idd_policy_to_pod(struct __sk_buff *skb, const struct idd_pkt *p,
					       __u32 *policy)
{
	struct idd_pol_pod *d;
	int opener = idd_ct_opener(p), isolated;

	if (p->family == 6 && p->icmp6_type >= 133 && p->icmp6_type <= 137)
		return IDD_DROP_NONE;
	d = bpf_map_lookup_elem(&idd_pol_pods, &p->daddr);
	isolated = d && d->ingress_policy && skb->ingress_ifindex;
	if ((!isolated && !opener) || idd_ct_reply(p))
		return IDD_DROP_NONE;
	if (isolated && !idd_peer_node_judged(skb, p) &&
	    !idd_pol_allows(d->identity, IDD_POL_INGRESS, &p->saddr, p)) {
		*policy = d->ingress_policy;
		idd_pol_count(*policy, IDD_POL_INGRESS);
		return IDD_DROP_POLICY_INGRESS;
	}
	if (opener)
		idd_ct_record(p);
	return IDD_DROP_NONE;
}

/* Ingress strict, on the pod-facing veth's egress (packets going into a local pod):
 * - encryption: a packet whose source lies in a remote node's pod CIDR is accepted only
 *   if it came out of a tunnel (or was made on this node, e.g. by its Envoy's transparent
 *   outbound listener, or its source is on the explicit allow-list `idd_allow_from`); from
 *   the underlay it is dropped (`IDD_DROP_NOT_ENCRYPTED`);
 * - mTLS: a new TCP connection into a pod of a strict namespace is accepted only when the
 *   node's Envoy made it (`IDD_MARK_FROM_PROXY`, set with SO_MARK, which takes
 *   CAP_NET_ADMIN), or by a process of this node to a port the pod's probes use
 *   (`idd_probe_ports`, allowNodeProbes); anything else is dropped (`IDD_DROP_NOT_MTLS`).
 * Replies to connections the pod opened, UDP, ICMP and other protocols pass the mTLS rule.
 * Until the daemon has applied its first plan (`idd_state`), every new TCP connection into a
 * local pod not made by the node's Envoy is dropped (`IDD_DROP_NOT_READY`). */
static __always_inline int idd_guard_pod(struct __sk_buff *skb)
{
	struct idd_pkt p = {};
	struct idd_route *src;
	struct idd_workload *dw;
	__u32 reason = IDD_DROP_NONE, node_id = 0, policy = 0;

	if (idd_parse(skb, &p) < 0)
		goto pass_other;
	src = idd_route_of(&p.saddr);
	/* A remote peer opening TCP straight to a pod (not via this node's Envoy): remember it, so
	 * the pod's replies are not sent to the Envoy (see idd_inbound_direct). */
	if (p.protocol == IPPROTO_TCP && p.tcp_open && src && src->kind != IDD_ROUTE_LOCAL &&
	    (skb->mark & IDD_MARK_MASK) != IDD_MARK_FROM_PROXY) {
		struct idd_ct_key k = { .peer_port = p.sport, .pod_port = p.dport };
		__u32 one = 1;

		__builtin_memcpy(k.peer, p.saddr.addr, 16);
		__builtin_memcpy(k.pod, p.daddr.addr, 16);
		bpf_map_update_elem(&idd_inbound_direct, &k, &one, BPF_ANY);
	}
	if (!IDD_STRICT)
		goto pass;
	if (src && src->kind != IDD_ROUTE_LOCAL && src->kind != IDD_ROUTE_PLAINTEXT &&
	    skb->ingress_ifindex && !idd_from_tunnel(skb->ingress_ifindex) &&
	    !idd_allowed_from(&p.saddr)) {
		node_id = src->node_id;
		reason = IDD_DROP_NOT_ENCRYPTED;
		goto drop;
	}
	if (p.protocol != IPPROTO_TCP || !p.tcp_open)
		goto pass;
	if ((skb->mark & IDD_MARK_MASK) != IDD_MARK_FROM_PROXY && !idd_ready()) {
		/* Fail closed until the node knows which of its pods are strict. */
		reason = IDD_DROP_NOT_READY;
		goto drop;
	}
	dw = bpf_map_lookup_elem(&idd_workloads, &p.daddr);
	if (!dw || dw->mtls_mode != IDD_MTLS_STRICT)
		goto pass;
	if ((skb->mark & IDD_MARK_MASK) == IDD_MARK_FROM_PROXY)
		goto pass;
	if (!skb->ingress_ifindex) {
		/* Made on this node: only to a port the pod's probes use (the kubelet). */
		struct idd_probe k = { .port = p.dport };

		__builtin_memcpy(k.addr, p.daddr.addr, 16);
		if (bpf_map_lookup_elem(&idd_probe_ports, &k))
			goto pass;
	}
	reason = IDD_DROP_NOT_MTLS;
drop:
	if (!policy)
		idd_account(IDD_PATH_DROP, skb->len);
	idd_emit(skb, &p, IDD_PATH_DROP, reason, node_id, policy);
	return TC_ACT_SHOT;
pass:
	/* Encryption and mTLS allow it: NetworkPolicy has the last word. */
	reason = idd_policy_to_pod(skb, &p, &policy);
	if (reason != IDD_DROP_NONE)
		goto drop;
pass_other:
	idd_account(IDD_PATH_PASS, skb->len);
	return TC_ACT_OK;
}

#endif
