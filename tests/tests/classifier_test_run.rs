//! The path classifier, run by the kernel on crafted packets (`BPF_PROG_TEST_RUN`): every
//! path's verdict and mark for IPv4 and IPv6, counters, flow events, strict-mode drops for a
//! remote pod CIDR without a path, and pass for traffic that is not pod-to-remote-pod.

use std::net::IpAddr;
use std::time::Duration;

use identityd_bpf::packet::{self, L4};
use identityd_bpf::{
    Cidr, Classifier, ClassifierConfig, DropReason, FlowEvents, MtlsMode, Path, Route, RouteKind,
};

const WG: u32 = 0x0e00;
const IPSEC: u32 = 0x0d00;
const PROXY: u32 = 0x0c00;
const PLAIN: u32 = 0x0b00;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

/// This node is node 1 (10.244.1.0/24, fd00:244:1::/64). Node 2 is reached by WireGuard,
/// node 3 by IPsec, node 4 in clear; the rest of the cluster range has no path yet.
fn load(config: &ClassifierConfig) -> Classifier {
    identityd_tests::require_root();
    let mut c = Classifier::load(config).expect("load classifier.o");
    for (fam, all, base) in [
        ("v4", "10.244.0.0/16", "10.244.{}.0/24"),
        ("v6", "fd00:244::/32", "fd00:244:{}::/64"),
    ] {
        c.set_route(
            cidr(all),
            Route {
                kind: RouteKind::Unavailable,
                node_id: 0,
            },
        )
        .unwrap_or_else(|e| panic!("{fam} catch-all: {e}"));
        for (n, kind) in [
            (1, RouteKind::Local),
            (2, RouteKind::WireGuard),
            (3, RouteKind::Ipsec),
            (4, RouteKind::Plaintext),
        ] {
            c.set_route(
                cidr(&base.replace("{}", &n.to_string())),
                Route { kind, node_id: n },
            )
            .unwrap_or_else(|e| panic!("{fam} node {n}: {e}"));
        }
    }
    c.set_workload(ip("10.244.1.10"), MtlsMode::Strict).unwrap();
    c.set_workload(ip("fd00:244:1::10"), MtlsMode::Strict)
        .unwrap();
    c.set_workload(ip("10.244.1.11"), MtlsMode::Permissive)
        .unwrap();
    c.set_workload(ip("10.244.1.12"), MtlsMode::Disabled)
        .unwrap();
    c
}

struct Case {
    src: &'static str,
    dst: &'static str,
    l4: L4,
    path: Path,
    reason: Option<DropReason>,
}

const fn case(src: &'static str, dst: &'static str, l4: L4, path: Path) -> Case {
    Case {
        src,
        dst,
        l4,
        path,
        reason: None,
    }
}

const fn drop(src: &'static str, dst: &'static str, reason: DropReason) -> Case {
    Case {
        src,
        dst,
        l4: L4::Tcp,
        path: Path::Drop,
        reason: Some(reason),
    }
}

/// Runs each case once: checks verdict, mark (other mark bits kept), the counter of its
/// path (+1 packet, +len bytes, nothing else moved) and, when `events` is given, its event.
fn check(c: &mut Classifier, cases: &[Case], events: Option<FlowEvents>) {
    let mut reader = events.map(|_| c.flow_events().expect("flow events"));
    let mut buf = Vec::new();
    for k in cases {
        let what = format!("{} -> {} {:?}", k.src, k.dst, k.l4);
        packet::build(&mut buf, ip(k.src), ip(k.dst), k.l4, (40000, 8080), 32);
        let before = c.counters().unwrap();
        // Bits outside the classifier's mask must survive; bits inside it are replaced.
        let mark_in = 0x0001_0001 | PLAIN;
        let out = c.test_run(&buf, mark_in, 1).expect("test run");
        let after = c.counters().unwrap();
        match k.path {
            Path::Drop => assert!(out.dropped(), "{what}: dropped, got {out:?}"),
            _ => assert!(out.passed(), "{what}: passed, got {out:?}"),
        }
        // The marks of DESIGN.md, spelled out here rather than taken from the loader.
        let want_mark = match k.path {
            Path::WireGuard => 0x0001_0001 | WG,
            Path::Ipsec => 0x0001_0001 | IPSEC,
            Path::Proxy => 0x0001_0001 | PROXY,
            Path::Plaintext => 0x0001_0001 | PLAIN,
            Path::Pass | Path::Drop => mark_in,
        };
        assert_eq!(
            k.path.mark().map(|m| m | 0x0001_0001),
            (k.path != Path::Pass && k.path != Path::Drop).then_some(want_mark)
        );
        if k.path != Path::Drop {
            assert_eq!(
                out.mark, want_mark,
                "{what}: mark {:#x}, want {want_mark:#x} ({:?})",
                out.mark, k.path
            );
        }
        for p in Path::ALL {
            let (b, a) = (before.get(p), after.get(p));
            if p == k.path {
                assert_eq!(a.packets, b.packets + 1, "{what}: {p:?} packets counted");
                assert_eq!(
                    a.bytes,
                    b.bytes + buf.len() as u64,
                    "{what}: {p:?} bytes counted"
                );
            } else {
                assert_eq!(
                    a, b,
                    "{what}: {p:?} counter must not move (verdict {:?})",
                    k.path
                );
            }
        }
        let Some(r) = reader.as_mut() else { continue };
        let want_event = match events {
            Some(FlowEvents::All) => k.path != Path::Pass,
            Some(FlowEvents::Drops) => k.path == Path::Drop,
            _ => false,
        };
        let ev = r.next_timeout(Duration::from_millis(if want_event { 1000 } else { 20 }));
        let ev = ev.expect("reading flow events");
        if !want_event {
            assert!(ev.is_none(), "{what}: no flow event expected, got {ev:?}");
            continue;
        }
        let ev = ev.unwrap_or_else(|| panic!("{what}: a flow event"));
        assert_eq!((ev.src, ev.dst), (ip(k.src), ip(k.dst)), "{what}: {ev:?}");
        assert_eq!((ev.src_port, ev.dst_port), (40000, 8080), "{what}: {ev:?}");
        let proto = if k.l4 == L4::Tcp { 6 } else { 17 };
        assert_eq!(ev.protocol, proto, "{what}: {ev:?}");
        assert_eq!(ev.path, k.path, "{what}: {ev:?}");
        assert_eq!(ev.drop_reason, k.reason, "{what}: {ev:?}");
        assert_eq!(ev.len as usize, buf.len(), "{what}: {ev:?}");
    }
}

#[test]
fn classifier_marks_every_path_for_ipv4_and_ipv6_in_strict_mode() {
    let mut c = load(&ClassifierConfig {
        flow_events: FlowEvents::All,
        ..ClassifierConfig::default()
    });
    use DropReason::{NoPath, PlaintextRoute};
    use L4::{Tcp, Udp};
    let cases = [
        // Network paths by route.
        case("10.244.1.5", "10.244.2.7", Tcp, Path::WireGuard),
        case("10.244.1.5", "10.244.2.7", Udp, Path::WireGuard),
        case("10.244.1.5", "10.244.3.7", Udp, Path::Ipsec),
        case("fd00:244:1::5", "fd00:244:2::7", Tcp, Path::WireGuard),
        case("fd00:244:1::5", "fd00:244:3::7", Udp, Path::Ipsec),
        // Strict mode: no encrypted path -> dropped, whatever the workload.
        drop("10.244.1.5", "10.244.9.7", NoPath),
        drop("10.244.1.5", "10.244.4.7", PlaintextRoute),
        drop("10.244.1.10", "10.244.9.7", NoPath),
        drop("fd00:244:1::5", "fd00:244:9::7", NoPath),
        drop("fd00:244:1::5", "fd00:244:4::7", PlaintextRoute),
        // mTLS workloads: TCP through the node's Envoy, other protocols by route.
        case("10.244.1.10", "10.244.2.7", Tcp, Path::Proxy),
        case("10.244.1.11", "10.244.3.7", Tcp, Path::Proxy),
        case("10.244.1.10", "10.244.2.7", Udp, Path::WireGuard),
        case("10.244.1.12", "10.244.2.7", Tcp, Path::WireGuard),
        case("fd00:244:1::10", "fd00:244:2::7", Tcp, Path::Proxy),
        // Not pod-to-remote-pod: passed, mark untouched.
        case("10.244.1.5", "10.244.1.6", Tcp, Path::Pass),
        // Same node: TCP between mTLS workloads goes through the node's Envoy; plaintext from
        // a workload into a strict workload is dropped; the rest stays local.
        case("10.244.1.11", "10.244.1.10", Tcp, Path::Proxy),
        case("10.244.1.10", "10.244.1.11", Udp, Path::Pass),
        case("10.244.1.10", "10.244.1.1", Tcp, Path::Pass),
        drop("10.244.1.12", "10.244.1.10", PlaintextRoute),
        case("10.244.1.12", "10.244.1.11", Tcp, Path::Pass),
        case("10.244.1.5", "8.8.8.8", Udp, Path::Pass),
        case("192.168.7.5", "10.244.2.7", Tcp, Path::Pass),
        case("10.244.2.7", "10.244.3.7", Tcp, Path::Pass),
        case("fd00:244:1::5", "2001:db8::1", Tcp, Path::Pass),
        case("fd00:244:1::5", "fd00:244:1::6", Udp, Path::Pass),
    ];
    check(&mut c, &cases, Some(FlowEvents::All));

    // Not IP at all.
    let before = c.counters().unwrap().get(Path::Pass).packets;
    let out = c.test_run(&packet::arp(), 0x42, 1).unwrap();
    assert!(
        out.passed() && out.mark == 0x42,
        "ARP passes untouched: {out:?}"
    );
    assert_eq!(c.counters().unwrap().get(Path::Pass).packets, before + 1);
}

/// Node encryption: a peer node's own address is a route of its own kind. Pod traffic to it
/// takes WireGuard, TCP from mTLS workloads included (it is no workload: the mesh proxy would
/// answer HTTP to it with a 404), and a peer without a key is no path in strict mode.
#[test]
fn classifier_sends_pods_to_peer_node_addresses_through_wireguard_never_the_proxy() {
    let mut c = load(&ClassifierConfig {
        flow_events: FlowEvents::All,
        ..ClassifierConfig::default()
    });
    for (addr, kind, node_id) in [
        ("10.99.0.12/32", RouteKind::WireGuardNode, 2),
        ("fd00:99::12/128", RouteKind::WireGuardNode, 2),
        ("10.99.0.13/32", RouteKind::Unavailable, 3),
    ] {
        c.set_route(cidr(addr), Route { kind, node_id }).unwrap();
    }
    use L4::{Tcp, Udp};
    let cases = [
        case("10.244.1.10", "10.99.0.12", Tcp, Path::WireGuard),
        case("10.244.1.11", "10.99.0.12", Tcp, Path::WireGuard),
        case("10.244.1.12", "10.99.0.12", Tcp, Path::WireGuard),
        case("10.244.1.5", "10.99.0.12", Udp, Path::WireGuard),
        case("fd00:244:1::10", "fd00:99::12", Tcp, Path::WireGuard),
        drop("10.244.1.10", "10.99.0.13", DropReason::NoPath),
        // Control: the same pod to a pod of that node is proxied, and an address that is no
        // peer node's passes untouched.
        case("10.244.1.10", "10.244.2.7", Tcp, Path::Proxy),
        case("10.244.1.10", "10.99.0.14", Tcp, Path::Pass),
    ];
    check(&mut c, &cases, Some(FlowEvents::All));
}

#[test]
fn classifier_drop_events_only_by_default_and_route_changes_apply_at_once() {
    let mut c = load(&ClassifierConfig::default());
    use L4::Tcp;
    check(
        &mut c,
        &[
            case("10.244.1.5", "10.244.2.7", Tcp, Path::WireGuard),
            drop("10.244.1.5", "10.244.9.7", DropReason::NoPath),
            case("10.244.1.5", "10.244.1.9", Tcp, Path::Pass),
        ],
        Some(FlowEvents::Drops),
    );
    // The peer's key goes away: its CIDR falls back to the catch-all and is dropped.
    c.remove_route(cidr("10.244.2.0/24")).unwrap();
    c.remove_route(cidr("10.244.2.0/24"))
        .expect("removing twice is fine");
    assert_eq!(
        c.lookup_route(ip("10.244.2.7")).unwrap().map(|r| r.kind),
        Some(RouteKind::Unavailable)
    );
    check(
        &mut c,
        &[drop("10.244.1.5", "10.244.2.7", DropReason::NoPath)],
        None,
    );
    // It comes back; a workload changes mode and is removed.
    c.set_route(
        cidr("10.244.2.0/24"),
        Route {
            kind: RouteKind::WireGuard,
            node_id: 2,
        },
    )
    .unwrap();
    c.set_workload(ip("10.244.1.5"), MtlsMode::Strict).unwrap();
    check(
        &mut c,
        &[case("10.244.1.5", "10.244.2.7", Tcp, Path::Proxy)],
        None,
    );
    c.remove_workload(ip("10.244.1.5")).unwrap();
    c.remove_workload(ip("10.244.1.5"))
        .expect("removing twice is fine");
    check(
        &mut c,
        &[case("10.244.1.5", "10.244.2.7", Tcp, Path::WireGuard)],
        None,
    );
}

#[test]
fn classifier_without_strict_mode_marks_plaintext_instead_of_dropping() {
    let mut c = load(&ClassifierConfig {
        strict: false,
        ..ClassifierConfig::default()
    });
    use L4::{Tcp, Udp};
    check(
        &mut c,
        &[
            case("10.244.1.5", "10.244.4.7", Tcp, Path::Plaintext),
            case("10.244.1.5", "10.244.9.7", Udp, Path::Plaintext),
            case("fd00:244:1::5", "fd00:244:9::7", Tcp, Path::Plaintext),
            case("10.244.1.5", "10.244.2.7", Tcp, Path::WireGuard),
        ],
        Some(FlowEvents::Drops),
    );
}

#[test]
fn classifier_any_source_classifies_the_nodes_own_traffic() {
    let mut c = load(&ClassifierConfig {
        any_source: true,
        ..ClassifierConfig::default()
    });
    use L4::Tcp;
    check(
        &mut c,
        &[
            case("10.99.0.11", "10.244.2.7", Tcp, Path::WireGuard),
            drop("10.99.0.11", "10.244.9.7", DropReason::NoPath),
            case("10.99.0.11", "10.244.1.7", Tcp, Path::Pass),
            case("10.99.0.11", "10.99.0.12", Tcp, Path::Pass),
        ],
        None,
    );
}

#[test]
fn classifier_refuses_routes_beyond_its_capacity() {
    identityd_tests::require_root();
    let mut c = Classifier::load(&ClassifierConfig {
        max_routes: 4,
        ..ClassifierConfig::default()
    })
    .expect("load");
    let r = Route {
        kind: RouteKind::WireGuard,
        node_id: 1,
    };
    for i in 0..4 {
        c.set_route(identityd_bpf::net::nth_v4_slash28(i), r)
            .unwrap();
    }
    let e = c
        .set_route(identityd_bpf::net::nth_v4_slash28(4), r)
        .expect_err("a fifth route does not fit");
    assert!(e.to_string().contains("idd_routes"), "{e}");
}

#[test]
fn classifier_cluster_cidrs_are_no_path_from_load_on() {
    identityd_tests::require_root();
    let mut c = Classifier::load(&ClassifierConfig {
        cluster_cidrs: vec![cidr("10.244.0.0/16"), cidr("fd00:244::/32")],
        ..ClassifierConfig::default()
    })
    .expect("load");
    for a in ["10.244.7.7", "fd00:244:7::7"] {
        assert_eq!(
            c.lookup_route(ip(a)).unwrap(),
            Some(Route {
                kind: RouteKind::Unavailable,
                node_id: 0
            }),
            "{a}"
        );
    }
    assert_eq!(c.lookup_route(ip("10.245.0.1")).unwrap(), None);
    c.set_route(
        cidr("10.244.1.0/24"),
        Route {
            kind: RouteKind::Local,
            node_id: 1,
        },
    )
    .unwrap();
    check(
        &mut c,
        &[
            drop("10.244.1.5", "10.244.7.7", DropReason::NoPath),
            case("10.244.1.5", "10.245.0.1", L4::Tcp, Path::Pass),
        ],
        None,
    );
}

/// On one node, a pod outside the mesh may not open plaintext TCP to a strict pod, but answers
/// the connections the strict pod opened to it (before, its SYN-ACK was dropped too, so a
/// strict pod could not reach a same-node pod outside the mesh at all).
#[test]
fn classifier_lets_a_pod_outside_the_mesh_answer_a_strict_pods_connection_on_the_same_node() {
    let c = load(&ClassifierConfig::default());
    let mut buf = Vec::new();
    packet::build(
        &mut buf,
        ip("10.244.1.12"),
        ip("10.244.1.10"),
        L4::Tcp,
        (6379, 40000),
        8,
    );
    assert!(
        c.test_run(&buf, 0, 1).unwrap().dropped(),
        "a new connection (SYN) from the pod outside the mesh into the strict pod"
    );
    buf[14 + 20 + 13] = 0x12; // SYN-ACK: the answer to the strict pod's SYN
    assert!(c.test_run(&buf, 0, 1).unwrap().passed(), "its SYN-ACK");
    buf[14 + 20 + 13] = 0x10; // ACK
    assert!(
        c.test_run(&buf, 0, 1).unwrap().passed(),
        "its later packets"
    );
}
