//! WireGuard e2e: killing and restarting the device process keeps the node's public key;
//! while it is down the persistent TUN keeps its routes so nothing leaves in clear; after
//! the restart traffic resumes.

mod wg_support;

use std::os::unix::fs::PermissionsExt as _;

use wg_support::{Capture, Cluster, assert_only_wireguard, now_secs, pattern_bytes};

const PING_PATTERN: &str = "69646477672d7273"; // "iddwg-rs"

#[test]
fn wg_restarting_the_device_keeps_its_public_key_and_traffic_resumes() {
    let mut c = Cluster::new("wgrestart", 2);
    let node_ips: Vec<_> = c.nodes.iter().map(|n| n.underlay_ip).collect();
    let p2 = c.nodes[1].pod_ip;
    let before = c.wg_show(0, "public-key").trim().to_owned();
    assert_eq!(
        before, c.nodes[0].public_key,
        "wg show and the key file agree"
    );
    assert!(
        c.ping_until(0, p2, 10, PING_PATTERN),
        "before restart: pod 1 -> pod 2"
    );

    c.kill(0);
    let iface = c.nodes[0].iface.clone();
    let routes = c
        .topo
        .exec(&c.nodes[0].ns, &["ip", "route", "show", "dev", &iface]);
    let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
    assert!(
        routes.contains("10.244.2.0/24") && routes.contains("10.244.0.0/16"),
        "the persistent TUN keeps its routes while the device is down: {routes}"
    );
    let canary = format!("IDENTITYD-WG-DOWN-{}-", c.topo.tag());
    let cap = Capture::start(&mut c, "down");
    assert!(
        !c.ping(0, p2, 3, PING_PATTERN),
        "no traffic while the device is down"
    );
    assert!(
        c.tcp_send(0, 1, 7300, canary.repeat(20).as_bytes())
            .is_none()
    );
    let (raw, pkts) = cap.stop(&mut c);
    assert_only_wireguard(
        &raw,
        &pkts,
        &node_ips,
        &[canary.as_bytes(), &pattern_bytes(PING_PATTERN)],
    );

    c.start(0);
    let after = c.wg_show(0, "public-key").trim().to_owned();
    assert_eq!(after, before, "the public key survives a restart");
    let mode = std::fs::metadata(&c.nodes[0].key_path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "node key file mode");
    assert!(
        c.ping_until(0, p2, 10, PING_PATTERN),
        "after restart: pod 1 -> pod 2"
    );
    assert!(
        c.ping_until(1, c.nodes[0].pod_ip, 10, PING_PATTERN),
        "after restart: pod 2 -> pod 1"
    );
    let payload = format!("IDENTITYD-WG-AFTER-{}", c.topo.tag())
        .repeat(30)
        .into_bytes();
    assert_eq!(
        c.tcp_send(0, 1, 7301, &payload).as_deref(),
        Some(&payload[..])
    );
    let hs = c.handshakes(0);
    assert_eq!(hs.len(), 1);
    assert!(
        now_secs().saturating_sub(hs[0].1) < 60,
        "fresh handshake after restart: {hs:?}"
    );
}
