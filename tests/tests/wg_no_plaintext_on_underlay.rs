//! WireGuard e2e: three nodes and their pods; every pod reaches every remote pod over ICMP
//! and TCP, and a capture on the underlay sees only WireGuard UDP between node addresses —
//! no pod address and no test payload in clear. `wg show` lists both peers of each node with
//! a recent handshake.

mod wg_support;

use std::net::UdpSocket;

use wg_support::{
    Capture, Cluster, WG_PORT, assert_only_wireguard, contains, now_secs, pattern_bytes,
};

/// "iddwg-pi", repeated by ping in every echo payload.
const PING_PATTERN: &str = "69646477672d7069";

#[test]
fn wg_three_nodes_pods_reach_each_other_and_only_wireguard_crosses_the_underlay() {
    let mut c = Cluster::new("wgmesh", 3);
    let node_ips: Vec<_> = c.nodes.iter().map(|n| n.underlay_ip).collect();

    // Control: the capture and the byte search do see plaintext when there is some.
    let control = format!("IDENTITYD-CONTROL-{}", c.topo.tag());
    let cap = Capture::start(&mut c, "control");
    let (src, dst) = (node_ips[0], node_ips[1]);
    c.topo.run_in(&c.nodes[0].ns, || {
        let s = UdpSocket::bind((src, 0)).expect("bind on node 1");
        s.send_to(control.as_bytes(), (dst, 9))
            .expect("send control");
    });
    let (raw, pkts) = cap.stop(&mut c);
    assert!(
        contains(&raw, control.as_bytes()),
        "the capture method must see a plaintext control packet on the underlay; saw {:?}",
        pkts.iter()
            .map(|p| (p.ethertype, p.ipv4()))
            .collect::<Vec<_>>()
    );

    let canary = format!("IDENTITYD-WG-CANARY-{}-", c.topo.tag());
    let cap = Capture::start(&mut c, "mesh");
    let mut port = 7000;
    for from in 0..3 {
        for to in 0..3 {
            if from == to {
                continue;
            }
            let ip = c.nodes[to].pod_ip;
            assert!(
                c.ping_until(from, ip, 10, PING_PATTERN),
                "pod {} cannot ping pod {} ({ip}) through the tunnel",
                from + 1,
                to + 1
            );
            assert!(
                c.ping(from, ip, 3, PING_PATTERN),
                "pod {} -> {ip}: packet loss",
                from + 1
            );
            let payload = canary.repeat(40).into_bytes();
            port += 1;
            assert_eq!(
                c.tcp_send(from, to, port, &payload).as_deref(),
                Some(&payload[..]),
                "TCP pod {} -> pod {} ({ip}:{port})",
                from + 1,
                to + 1
            );
        }
    }
    let (raw, pkts) = cap.stop(&mut c);
    let wg = assert_only_wireguard(
        &raw,
        &pkts,
        &node_ips,
        &[canary.as_bytes(), &pattern_bytes(PING_PATTERN)],
    );
    assert!(
        wg >= 60,
        "expected WireGuard traffic on the underlay, saw {wg} packets"
    );
    eprintln!(
        "underlay capture: {} frames, {wg} WireGuard UDP on port {WG_PORT}, nothing in clear",
        pkts.len()
    );

    let now = now_secs();
    for i in 0..3 {
        let hs = c.handshakes(i);
        let mut want: Vec<&str> = (0..3)
            .filter(|&j| j != i)
            .map(|j| c.nodes[j].public_key.as_str())
            .collect();
        want.sort_unstable();
        let mut got: Vec<&str> = hs.iter().map(|(k, _)| k.as_str()).collect();
        got.sort_unstable();
        assert_eq!(got, want, "wg show {} peers", c.nodes[i].iface);
        for (k, t) in &hs {
            assert!(
                *t > 0 && now.saturating_sub(*t) < 120,
                "node {} peer {k}: latest handshake {t} is not recent (now {now})",
                i + 1
            );
        }
        let show = c.wg_show(i, "endpoints");
        for j in (0..3).filter(|&j| j != i) {
            assert!(
                show.contains(&format!("{}:{WG_PORT}", c.nodes[j].underlay_ip)),
                "node {} endpoints: {show}",
                i + 1
            );
        }
    }
}
