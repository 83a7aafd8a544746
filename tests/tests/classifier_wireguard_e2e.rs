//! e2e with the WireGuard datapath (`identityd-wg` devices in node namespaces): a node whose
//! peer is not configured yet drops and counts pod traffic to that peer's CIDR at the
//! classifier, even though its main table has a plaintext route there — the underlay capture
//! shows zero pod packets; once the peer is configured (device + classifier route), the same
//! traffic is marked, policy-routed into WireGuard, and flows encrypted.

mod wg_support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use identityd_bpf::routing::{self, RoutingConfig};
use identityd_bpf::{Classifier, ClassifierConfig, Direction, DropReason, Path, Route, RouteKind};
use wg_support::{Capture, Cluster, assert_only_wireguard, contains, pattern_bytes};

const PING_PATTERN: &str = "6964642d636c732d"; // "idd-cls-"

fn wait_for_peers(c: &Cluster, i: usize, want: &[usize]) {
    let mut want: Vec<String> = want
        .iter()
        .map(|&j| c.nodes[j].public_key.clone())
        .collect();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut peers: Vec<String> = c
            .wg_show(i, "peers")
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        peers.sort();
        if peers == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {i}: peers {peers:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The node-side interface of node `i`'s pod veth (the one holding 10.244.<i+1>.1).
fn pod_veth(c: &Cluster, i: usize) -> String {
    let out = c
        .topo
        .exec(&c.nodes[i].ns, &["ip", "-o", "-4", "addr", "show"]);
    let gw = format!("10.244.{}.1/", i + 1);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains(&gw))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no interface with {gw} on node {i}"))
        .to_owned()
}

#[test]
fn classifier_with_wireguard_drops_until_the_peer_is_configured_then_encrypts() {
    let mut c = Cluster::new("clswg", 3);
    let node_ips: Vec<_> = c.nodes.iter().map(|n| n.underlay_ip).collect();
    let (p2, p3) = (c.nodes[1].pod_ip, c.nodes[2].pod_ip);
    let n1 = c.nodes[0].ns.clone();

    // Node 1 does not know node 3 yet (start-up, or its key is not published yet).
    c.write_config(0, &[1]);
    wait_for_peers(&c, 0, &[1]);
    // And its main table has a plaintext route to node 3's pods (as plain pod networking
    // would): without the classifier this leaks — shown first, as the control.
    c.topo.exec(
        &n1,
        &[
            "ip",
            "route",
            "replace",
            "10.244.3.0/24",
            "via",
            "10.99.0.13",
        ],
    );
    let cap = Capture::start(&mut c, "control");
    let _ = c.ping(0, p3, 2, PING_PATTERN);
    let (raw, _) = cap.stop(&mut c);
    assert!(
        contains(&raw, &pattern_bytes(PING_PATTERN)),
        "control: without the classifier pod 1 -> pod 3 leaves in clear"
    );

    // The classifier on node 1's pod veth, and its marks routed into WireGuard.
    let veth = pod_veth(&c, 0);
    let mut cls = c.topo.run_in(&n1, || {
        let mut cls = Classifier::load(&ClassifierConfig {
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            ..ClassifierConfig::default()
        })
        .expect("load classifier");
        cls.attach(&veth, Direction::Ingress).expect("attach");
        cls
    });
    // The cluster range is a catch-all "no path" from load on; the node's own and its
    // configured peer's CIDRs are more specific.
    for (cidr, kind, node_id) in [
        ("10.244.1.0/24", RouteKind::Local, 1),
        ("10.244.2.0/24", RouteKind::WireGuard, 2),
    ] {
        cls.set_route(cidr.parse().unwrap(), Route { kind, node_id })
            .unwrap();
    }
    let mut events = cls.flow_events().unwrap();
    let plan = routing::plan(&RoutingConfig {
        wireguard_interface: Some(c.nodes[0].iface.clone()),
        ipv6: false, // the cluster's namespaces have IPv6 disabled
        ..RoutingConfig::default()
    });
    c.topo
        .run_in(&n1, || routing::apply(&plan).expect("apply routing plan"));

    // Peer 3 unconfigured: dropped at the classifier, counted, reported; nothing in clear.
    let canary = format!("IDENTITYD-CLS-NOPEER-{}-", c.topo.tag());
    let before = cls.counters().unwrap();
    let cap = Capture::start(&mut c, "nopeer");
    assert!(!c.ping(0, p3, 3, PING_PATTERN), "pod 1 -> pod 3 must fail");
    assert!(
        c.tcp_send(0, 2, 7300, canary.repeat(20).as_bytes())
            .is_none(),
        "TCP pod 1 -> pod 3 must fail"
    );
    assert!(
        c.ping_until(0, p2, 10, PING_PATTERN),
        "pod 1 -> pod 2 (configured peer) works through the marks"
    );
    let (raw, pkts) = cap.stop(&mut c);
    assert_only_wireguard(
        &raw,
        &pkts,
        &node_ips,
        &[canary.as_bytes(), &pattern_bytes(PING_PATTERN)],
    );
    let after = cls.counters().unwrap();
    assert!(
        after.get(Path::Drop).packets >= before.get(Path::Drop).packets + 4,
        "3 pings and at least one SYN dropped and counted: {before:?} -> {after:?}"
    );
    assert!(
        after.get(Path::WireGuard).packets > before.get(Path::WireGuard).packets,
        "pod 2 traffic marked for WireGuard"
    );
    let p3_ip = IpAddr::V4(p3);
    let mut drop_events = 0;
    while let Some(ev) = events.next_timeout(Duration::from_millis(200)).unwrap() {
        if ev.dst == p3_ip {
            assert_eq!(ev.path, Path::Drop, "{ev:?}");
            assert_eq!(ev.drop_reason, Some(DropReason::NoPath), "{ev:?}");
            drop_events += 1;
        }
    }
    assert!(drop_events >= 4, "flow events for the drops: {drop_events}");

    // Peer 3 configured on the device and in the classifier: traffic flows, encrypted, even
    // though the main table still routes 10.244.3.0/24 to the underlay in clear.
    c.write_config(0, &[1, 2]);
    wait_for_peers(&c, 0, &[1, 2]);
    cls.set_route(
        "10.244.3.0/24".parse().unwrap(),
        Route {
            kind: RouteKind::WireGuard,
            node_id: 3,
        },
    )
    .unwrap();
    let canary = format!("IDENTITYD-CLS-PEER-{}-", c.topo.tag());
    let before = cls.counters().unwrap();
    let cap = Capture::start(&mut c, "peer");
    assert!(
        c.ping_until(0, p3, 10, PING_PATTERN),
        "pod 1 -> pod 3 now works"
    );
    let got = c.tcp_send(0, 2, 7301, canary.repeat(20).as_bytes());
    assert_eq!(
        got.as_deref(),
        Some(canary.repeat(20).as_bytes()),
        "TCP pod 1 -> pod 3 delivers"
    );
    let (raw, pkts) = cap.stop(&mut c);
    let wg = assert_only_wireguard(
        &raw,
        &pkts,
        &node_ips,
        &[canary.as_bytes(), &pattern_bytes(PING_PATTERN)],
    );
    assert!(wg > 0, "the traffic crossed the underlay as WireGuard");
    let after = cls.counters().unwrap();
    assert!(
        after.get(Path::WireGuard).packets >= before.get(Path::WireGuard).packets + 4,
        "{before:?} -> {after:?}"
    );
    assert_eq!(
        after.get(Path::Drop),
        before.get(Path::Drop),
        "nothing dropped once the peer is configured"
    );

    c.topo
        .run_in(&n1, || routing::remove(&plan).expect("remove routing plan"));
    drop(cls);
}
