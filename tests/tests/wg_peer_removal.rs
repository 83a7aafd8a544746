//! WireGuard e2e: removing a peer from a node's plan stops traffic to that peer's pods, and
//! nothing goes out in clear instead (the node has a default route to the underlay, so a
//! missing tunnel route would leak; the cluster CIDR stays routed into the tunnel and the
//! device drops what has no peer).

mod wg_support;

use std::time::{Duration, Instant};

use wg_support::{Capture, Cluster, assert_only_wireguard, pattern_bytes};

const PING_PATTERN: &str = "69646477672d726d"; // "iddwg-rm"

#[test]
fn wg_removing_a_peer_stops_traffic_to_it_and_nothing_goes_out_in_clear() {
    let mut c = Cluster::new("wgremove", 3);
    let node_ips: Vec<_> = c.nodes.iter().map(|n| n.underlay_ip).collect();
    let (p2, p3) = (c.nodes[1].pod_ip, c.nodes[2].pod_ip);
    assert!(
        c.ping_until(0, p3, 10, PING_PATTERN),
        "before: pod 1 -> pod 3"
    );
    assert!(
        c.ping_until(0, p2, 10, PING_PATTERN),
        "before: pod 1 -> pod 2"
    );

    let peer2_handshake = |c: &Cluster| {
        c.handshakes(0)
            .into_iter()
            .find(|(k, _)| *k == c.nodes[1].public_key)
            .map(|(_, t)| t)
            .expect("node 1 lists peer 2")
    };
    let hs2_before = peer2_handshake(&c);
    assert!(hs2_before > 0, "node 1 has a session with node 2");

    // Node 1's plan no longer has node 3; the device notices the file change.
    c.write_config(0, &[1]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let peers = c.wg_show(0, "peers");
        let routes = c.topo.exec(
            &c.nodes[0].ns,
            &["ip", "route", "show", "dev", &c.nodes[0].iface],
        );
        let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
        if peers.trim() == c.nodes[1].public_key && !routes.contains("10.244.3.0/24") {
            assert!(
                routes.contains("10.244.0.0/16"),
                "cluster route must stay: {routes}"
            );
            assert!(
                routes.contains("10.244.2.0/24"),
                "peer 2 route must stay: {routes}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "peer 3 not removed from node 1 in 10s: peers {peers:?}, routes {routes}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let canary = format!("IDENTITYD-WG-REMOVED-{}-", c.topo.tag());
    let cap = Capture::start(&mut c, "removed");
    assert!(
        !c.ping(0, p3, 5, PING_PATTERN),
        "pod 1 -> pod 3 must fail once peer 3 is removed"
    );
    assert!(
        c.tcp_send(0, 2, 7200, canary.repeat(20).as_bytes())
            .is_none(),
        "TCP pod 1 -> pod 3 must fail once peer 3 is removed"
    );
    assert!(
        !c.ping(2, c.nodes[0].pod_ip, 3, PING_PATTERN),
        "pod 3 -> pod 1 must fail too (node 1 no longer accepts node 3)"
    );
    assert!(
        c.ping(0, p2, 3, PING_PATTERN),
        "pod 1 -> pod 2 keeps working"
    );
    let (raw, pkts) = cap.stop(&mut c);
    assert_only_wireguard(
        &raw,
        &pkts,
        &node_ips,
        &[canary.as_bytes(), &pattern_bytes(PING_PATTERN)],
    );
    assert_eq!(
        peer2_handshake(&c),
        hs2_before,
        "peer 2 was not in the diff: its session is kept, no new handshake"
    );

    // The UAPI socket takes changes too: `wg set` puts peer 3 back (the cluster route
    // still points into the tunnel, so no route change is needed) and traffic flows again.
    let wg = identityd_tests::tools::wg();
    let out = std::process::Command::new(wg)
        .args([
            "set",
            &c.nodes[0].iface,
            "peer",
            &c.nodes[2].public_key,
            "allowed-ips",
            "10.244.3.0/24",
            "endpoint",
            &format!("{}:{}", c.nodes[2].underlay_ip, wg_support::WG_PORT),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "wg set: {out:?}");
    assert!(
        c.ping_until(0, p3, 10, PING_PATTERN),
        "pod 1 -> pod 3 after `wg set` re-adds peer 3"
    );
}
