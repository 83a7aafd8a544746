//! Ingress strict (`idd_to_pod`, on the pod veths' egress), run by the kernel on crafted
//! packets (`BPF_PROG_TEST_RUN` with `skb->ingress_ifindex` and `skb->mark` set): a remote
//! pod's packet only out of the tunnel, new TCP into a strict pod only from the node's Envoy,
//! replies and other protocols untouched; IPv4 and IPv6; drops counted with their reason.

use std::net::IpAddr;

use identityd_bpf::packet::{self, L4};
use identityd_bpf::types::IDD_MARK_FROM_PROXY;
use identityd_bpf::{
    Cidr, Classifier, ClassifierConfig, DropReason, FlowEvents, MtlsMode, Path, Route, RouteKind,
};

/// The tunnel's ifindex in these runs, and an underlay interface's.
const TUNNEL: u32 = 7;
const UNDERLAY: u32 = 3;
/// Made on this node (no ingress interface).
const LOCAL: u32 = 0;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn load() -> Classifier {
    identityd_tests::require_root();
    let mut c = Classifier::load(&ClassifierConfig {
        flow_events: FlowEvents::Drops,
        ..ClassifierConfig::default()
    })
    .expect("load classifier.o");
    for (cidr, kind, node_id) in [
        ("10.244.1.0/24", RouteKind::Local, 1),
        ("10.244.2.0/24", RouteKind::WireGuard, 2),
        ("10.244.4.0/24", RouteKind::Plaintext, 4),
        ("fd00:244:1::/64", RouteKind::Local, 1),
        ("fd00:244:2::/64", RouteKind::WireGuard, 2),
        // Node encryption: peer node 2's own address.
        ("10.99.0.12/32", RouteKind::WireGuardNode, 2),
    ] {
        c.set_route(cidr.parse::<Cidr>().unwrap(), Route { kind, node_id })
            .unwrap();
    }
    for (w, m) in [
        ("10.244.1.10", MtlsMode::Strict),
        ("10.244.1.12", MtlsMode::Disabled),
        ("fd00:244:1::10", MtlsMode::Strict),
    ] {
        c.set_workload(ip(w), m).unwrap();
    }
    c.set_tunnels(&[TUNNEL]).unwrap();
    assert_eq!(c.tunnels().unwrap(), [TUNNEL]);
    c.set_ready(true).unwrap();
    c
}

/// A DNS-sized UDP datagram from `src` to `dst` into `buf`.
fn udp(buf: &mut Vec<u8>, src: &str, dst: &str) {
    packet::build(buf, ip(src), ip(dst), L4::Udp, (40000, 53), 8);
}

#[derive(Clone, Copy)]
enum Tcp {
    Syn,
    Ack,
}

struct Case {
    what: &'static str,
    src: &'static str,
    dst: &'static str,
    l4: L4,
    tcp: Tcp,
    ingress: u32,
    mark: u32,
    verdict: Option<DropReason>,
}

#[allow(clippy::too_many_arguments)] // Reason: one row of the table, named by its fields at the call.
const fn row(
    what: &'static str,
    src: &'static str,
    dst: &'static str,
    l4: L4,
    tcp: Tcp,
    ingress: u32,
    mark: u32,
    verdict: Option<DropReason>,
) -> Case {
    Case {
        what,
        src,
        dst,
        l4,
        tcp,
        ingress,
        mark,
        verdict,
    }
}

const NOT_ENC: Option<DropReason> = Some(DropReason::NotEncrypted);
const NOT_MTLS: Option<DropReason> = Some(DropReason::NotMtls);
const PASS: Option<DropReason> = None;

const CASES: &[Case] = &[
    // Node encryption: a peer node's own address is accepted only out of the tunnel.
    row(
        "peer node address, out of the tunnel",
        "10.99.0.12",
        "10.244.1.12",
        L4::Udp,
        Tcp::Ack,
        TUNNEL,
        0,
        PASS,
    ),
    row(
        "peer node address from the underlay",
        "10.99.0.12",
        "10.244.1.12",
        L4::Udp,
        Tcp::Ack,
        UNDERLAY,
        0,
        NOT_ENC,
    ),
    row(
        "an address that is no peer node's, from the underlay (control)",
        "10.99.0.99",
        "10.244.1.12",
        L4::Udp,
        Tcp::Ack,
        UNDERLAY,
        0,
        PASS,
    ),
    // The encryption rule.
    row(
        "remote pod, out of the tunnel",
        "10.244.2.10",
        "10.244.1.12",
        L4::Udp,
        Tcp::Ack,
        TUNNEL,
        0,
        PASS,
    ),
    row(
        "remote pod source from the underlay",
        "10.244.2.10",
        "10.244.1.12",
        L4::Udp,
        Tcp::Ack,
        UNDERLAY,
        0,
        NOT_ENC,
    ),
    row(
        "remote pod source from the underlay (TCP reply)",
        "10.244.2.10",
        "10.244.1.12",
        L4::Tcp,
        Tcp::Ack,
        UNDERLAY,
        0,
        NOT_ENC,
    ),
    row(
        "remote pod source made on this node (Envoy's transparent reply)",
        "10.244.2.10",
        "10.244.1.10",
        L4::Tcp,
        Tcp::Ack,
        LOCAL,
        0,
        PASS,
    ),
    row(
        "a node in clear by config (encryption disabled towards it)",
        "10.244.4.10",
        "10.244.1.12",
        L4::Udp,
        Tcp::Ack,
        UNDERLAY,
        0,
        PASS,
    ),
    row(
        "an outside host to a non-strict pod",
        "192.0.2.1",
        "10.244.1.12",
        L4::Tcp,
        Tcp::Syn,
        UNDERLAY,
        0,
        PASS,
    ),
    row(
        "IPv6 remote pod source from the underlay",
        "fd00:244:2::10",
        "fd00:244:1::10",
        L4::Udp,
        Tcp::Ack,
        UNDERLAY,
        0,
        NOT_ENC,
    ),
    row(
        "IPv6 remote pod out of the tunnel (UDP)",
        "fd00:244:2::10",
        "fd00:244:1::10",
        L4::Udp,
        Tcp::Ack,
        TUNNEL,
        0,
        PASS,
    ),
    // The mTLS rule.
    row(
        "new TCP into a strict pod from the underlay",
        "192.0.2.1",
        "10.244.1.10",
        L4::Tcp,
        Tcp::Syn,
        UNDERLAY,
        0,
        NOT_MTLS,
    ),
    row(
        "new TCP into a strict pod out of the tunnel, not via Envoy",
        "10.244.2.10",
        "10.244.1.10",
        L4::Tcp,
        Tcp::Syn,
        TUNNEL,
        0,
        NOT_MTLS,
    ),
    row(
        "new TCP into a strict pod from a node process",
        "10.244.1.1",
        "10.244.1.10",
        L4::Tcp,
        Tcp::Syn,
        LOCAL,
        0,
        NOT_MTLS,
    ),
    row(
        "new TCP into a strict pod from another local pod",
        "10.244.1.12",
        "10.244.1.10",
        L4::Tcp,
        Tcp::Syn,
        11,
        0,
        NOT_MTLS,
    ),
    row(
        "new TCP into a strict pod from the node's Envoy",
        "10.244.1.1",
        "10.244.1.10",
        L4::Tcp,
        Tcp::Syn,
        LOCAL,
        IDD_MARK_FROM_PROXY,
        PASS,
    ),
    row(
        "a reply to the strict pod's own connection",
        "192.0.2.1",
        "10.244.1.10",
        L4::Tcp,
        Tcp::Ack,
        UNDERLAY,
        0,
        PASS,
    ),
    row(
        "UDP into a strict pod out of the tunnel",
        "10.244.2.10",
        "10.244.1.10",
        L4::Udp,
        Tcp::Ack,
        TUNNEL,
        0,
        PASS,
    ),
    row(
        "new TCP into a non-strict pod",
        "10.244.1.1",
        "10.244.1.12",
        L4::Tcp,
        Tcp::Syn,
        LOCAL,
        0,
        PASS,
    ),
    row(
        "IPv6 new TCP into a strict pod from the underlay",
        "2001:db8::1",
        "fd00:244:1::10",
        L4::Tcp,
        Tcp::Syn,
        UNDERLAY,
        0,
        NOT_MTLS,
    ),
    row(
        "IPv6 new TCP into a strict pod from the node's Envoy",
        "fd00:244:1::1",
        "fd00:244:1::10",
        L4::Tcp,
        Tcp::Syn,
        LOCAL,
        IDD_MARK_FROM_PROXY,
        PASS,
    ),
];

#[test]
fn ingress_strict_admits_only_tunnelled_remote_pods_and_envoys_new_connections() {
    let mut c = load();
    let mut events = c.flow_events().expect("flow events");
    let mut buf = Vec::new();
    for k in CASES {
        packet::build(&mut buf, ip(k.src), ip(k.dst), k.l4, (40000, 8080), 32);
        if let (L4::Tcp, Tcp::Ack) = (k.l4, k.tcp) {
            // TCP flags: SYN → ACK (14-byte Ethernet header, then the IP header).
            let l3 = if ip(k.src).is_ipv4() { 20 } else { 40 };
            buf[14 + l3 + 13] = 0x10;
        }
        let before = c.counters().unwrap().get(Path::Drop).packets;
        let out = c
            .test_run_to_pod(&buf, k.mark, k.ingress)
            .unwrap_or_else(|e| panic!("{}: {e}", k.what));
        let after = c.counters().unwrap().get(Path::Drop).packets;
        match k.verdict {
            None => {
                assert!(out.passed(), "{}: passed, got {out:?}", k.what);
                assert_eq!(after, before, "{}: no drop counted", k.what);
            }
            Some(reason) => {
                assert!(out.dropped(), "{}: dropped, got {out:?}", k.what);
                assert_eq!(after, before + 1, "{}: the drop is counted", k.what);
                let ev = events
                    .try_next()
                    .unwrap_or_else(|| panic!("{}: a flow event", k.what));
                assert_eq!(ev.drop_reason, Some(reason), "{}: {ev:?}", k.what);
                assert_eq!(ev.src, ip(k.src), "{}", k.what);
                assert_eq!(ev.dst, ip(k.dst), "{}", k.what);
            }
        }
    }
}

#[test]
fn without_a_known_tunnel_remote_pods_get_in_from_nowhere() {
    // Fail closed: before the daemon has told the program its tunnel interface, a remote
    // pod's packet is refused whatever interface it came in on.
    let mut c = load();
    c.set_tunnels(&[]).unwrap();
    let mut buf = Vec::new();
    udp(&mut buf, "10.244.2.10", "10.244.1.12");
    for ingress in [TUNNEL, UNDERLAY] {
        assert!(c.test_run_to_pod(&buf, 0, ingress).unwrap().dropped());
    }
}

#[test]
fn node_processes_reach_a_strict_pod_only_on_its_probe_ports() {
    let mut c = load();
    c.set_probe_port(ip("10.244.1.10"), 8081).unwrap();
    assert_eq!(c.probe_ports().unwrap(), [(ip("10.244.1.10"), 8081)]);
    let mut buf = Vec::new();
    let syn = |buf: &mut Vec<u8>, port| {
        packet::build(
            buf,
            ip("10.244.1.1"),
            ip("10.244.1.10"),
            L4::Tcp,
            (40000, port),
            8,
        );
    };
    syn(&mut buf, 8081);
    assert!(
        c.test_run_to_pod(&buf, 0, LOCAL).unwrap().passed(),
        "the kubelet's probe on the declared port"
    );
    assert!(
        c.test_run_to_pod(&buf, 0, UNDERLAY).unwrap().dropped(),
        "the probe port from the underlay"
    );
    syn(&mut buf, 8080);
    assert!(
        c.test_run_to_pod(&buf, 0, LOCAL).unwrap().dropped(),
        "a node process on a port no probe declares"
    );
    c.remove_probe_port(ip("10.244.1.10"), 8081).unwrap();
    syn(&mut buf, 8081);
    assert!(
        c.test_run_to_pod(&buf, 0, LOCAL).unwrap().dropped(),
        "once the probe is gone"
    );
}

#[test]
fn only_an_explicit_allow_list_admits_remote_pod_sources_from_the_underlay() {
    let mut c = load();
    assert!(c.allow_from().unwrap().is_empty(), "empty by default");
    let mut buf = Vec::new();
    // Without the list: refused from the underlay (the attack the list opens on purpose).
    udp(&mut buf, "10.244.2.10", "10.244.1.12");
    assert!(c.test_run_to_pod(&buf, 0, UNDERLAY).unwrap().dropped());
    c.set_allow_from(&[
        "10.244.2.0/28".parse().unwrap(),
        "fd00:244:2::/80".parse().unwrap(),
    ])
    .unwrap();
    let mut listed = c.allow_from().unwrap();
    listed.sort();
    assert_eq!(
        listed,
        [
            "10.244.2.0/28".parse().unwrap(),
            "fd00:244:2::/80".parse().unwrap()
        ]
    );
    assert!(
        c.test_run_to_pod(&buf, 0, UNDERLAY).unwrap().passed(),
        "a listed source from the underlay"
    );
    udp(&mut buf, "10.244.2.20", "10.244.1.12");
    assert!(
        c.test_run_to_pod(&buf, 0, UNDERLAY).unwrap().dropped(),
        "the same node's pod outside the listed prefix"
    );
    udp(&mut buf, "fd00:244:2::5", "fd00:244:1::10");
    assert!(
        c.test_run_to_pod(&buf, 0, UNDERLAY).unwrap().passed(),
        "IPv6, listed"
    );
    // The list lifts only the encryption rule: new TCP into a strict pod still needs Envoy.
    packet::build(
        &mut buf,
        ip("10.244.2.10"),
        ip("10.244.1.10"),
        L4::Tcp,
        (40000, 8080),
        8,
    );
    let out = c.test_run_to_pod(&buf, 0, UNDERLAY).unwrap();
    assert!(out.dropped(), "listed source, new TCP into a strict pod");
    // Emptied again (a diff: what is installed is what is asked).
    c.set_allow_from(&[]).unwrap();
    assert!(c.allow_from().unwrap().is_empty());
    udp(&mut buf, "10.244.2.10", "10.244.1.12");
    assert!(c.test_run_to_pod(&buf, 0, UNDERLAY).unwrap().dropped());
}

#[test]
fn before_the_first_plan_no_new_tcp_gets_into_any_pod_but_the_envoys() {
    let mut c = load();
    let mut buf = Vec::new();
    let syn = |buf: &mut Vec<u8>, src: &str, dst: &str| {
        packet::build(buf, ip(src), ip(dst), L4::Tcp, (40000, 8080), 8);
    };
    // Ready (the plan is in the maps): a non-strict pod takes a same-node connection.
    syn(&mut buf, "10.244.1.11", "10.244.1.12");
    assert!(c.test_run_to_pod(&buf, 0, UNDERLAY).unwrap().passed());
    // A fresh load: nothing known yet.
    c.set_ready(false).unwrap();
    assert!(!c.ready().unwrap());
    let mut events = c.flow_events().expect("flow events");
    while events.try_next().is_some() {}
    for (src, dst, ingress, what) in [
        ("10.244.1.11", "10.244.1.12", UNDERLAY, "a same-node pod"),
        ("10.244.1.1", "10.244.1.10", LOCAL, "a node process"),
        (
            "10.244.2.10",
            "10.244.1.12",
            TUNNEL,
            "a remote pod out of the tunnel",
        ),
        (
            "fd00:244:1::1",
            "fd00:244:1::10",
            LOCAL,
            "IPv6, a node process",
        ),
    ] {
        syn(&mut buf, src, dst);
        let before = c.counters().unwrap().get(Path::Drop).packets;
        assert!(
            c.test_run_to_pod(&buf, 0, ingress).unwrap().dropped(),
            "{what}: new TCP refused before the first plan"
        );
        assert_eq!(c.counters().unwrap().get(Path::Drop).packets, before + 1);
        let ev = events
            .try_next()
            .unwrap_or_else(|| panic!("{what}: an event"));
        assert_eq!(ev.drop_reason, Some(DropReason::NotReady), "{what}: {ev:?}");
    }
    // The node's Envoy (mTLS already verified) and replies of the pods' own connections pass.
    syn(&mut buf, "10.244.1.1", "10.244.1.10");
    assert!(
        c.test_run_to_pod(&buf, IDD_MARK_FROM_PROXY, LOCAL)
            .unwrap()
            .passed()
    );
    syn(&mut buf, "10.244.2.10", "10.244.1.12");
    buf[14 + 20 + 13] = 0x12; // SYN-ACK: a reply
    assert!(c.test_run_to_pod(&buf, 0, TUNNEL).unwrap().passed());
    udp(&mut buf, "10.244.2.10", "10.244.1.12");
    assert!(c.test_run_to_pod(&buf, 0, TUNNEL).unwrap().passed(), "UDP");
    c.set_ready(true).unwrap();
    syn(&mut buf, "10.244.1.11", "10.244.1.12");
    assert!(c.test_run_to_pod(&buf, 0, UNDERLAY).unwrap().passed());
}
