//! WireGuard e2e with every I/O offload on at both ends (TUN TSO/USO reads, UDP GSO sends, UDP
//! GRO receives, TCP segments and UDP datagrams coalesced into one TUN write): a UDP burst
//! sent with one `sendmsg` arrives datagram for datagram, and many parallel TCP flows in both
//! directions arrive byte for byte, the kernel retransmits almost nothing (a reordering or
//! a bad merge would show as retransmissions or corrupted streams), the offload paths really
//! ran (the devices' counters), and the underlay carries only WireGuard.
//!
//! A coalesced packet is written with a partial checksum, so the receiving kernel does not
//! verify its payload: only the byte comparison here can catch a bad merge.

mod wg_support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use wg_support::{Capture, Cluster, assert_only_wireguard};

const FLOWS: usize = 8;
const BYTES: usize = 3 << 20;

/// The bytes flow `k` carries: a canary, then a pseudo-random stream (xorshift).
fn stream(k: usize, canary: &[u8]) -> Vec<u8> {
    let mut v = canary.to_vec();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (k as u64 + 1);
    while v.len() < BYTES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(BYTES);
    v
}

/// `TcpRetransSegs` and `TcpOutSegs` of a namespace.
fn tcp_counters(c: &Cluster, ns: &str) -> (u64, u64) {
    let out = c.topo.try_exec(ns, &["cat", "/proc/net/snmp"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (h, v) = (lines.next().unwrap(), lines.next().unwrap());
    let get = |name: &str| {
        h.split_whitespace()
            .zip(v.split_whitespace())
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/net/snmp of {ns}"))
    };
    (get("RetransSegs"), get("OutSegs"))
}

/// Sends `FLOWS` streams at once from pod `from` to pod `to`; returns what arrived, per flow.
fn transfer(c: &Cluster, from: usize, to: usize, base_port: u16, canary: &[u8]) -> Vec<Vec<u8>> {
    let listeners: Vec<TcpListener> = (0..FLOWS)
        .map(|k| {
            let addr = SocketAddr::from((c.nodes[to].pod_ip, base_port + k as u16));
            c.topo
                .run_in(&c.nodes[to].pod_ns, || TcpListener::bind(addr).unwrap())
        })
        .collect();
    let servers: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            std::thread::spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut buf = Vec::with_capacity(BYTES);
                s.read_to_end(&mut buf).unwrap();
                buf
            })
        })
        .collect();
    let to_ip = c.nodes[to].pod_ip;
    let pod_ns = c.nodes[from].pod_ns.clone();
    std::thread::scope(|sc| {
        for k in 0..FLOWS {
            let data = stream(k, canary);
            let pod_ns = pod_ns.clone();
            sc.spawn(move || {
                c.topo.run_in(&pod_ns, || {
                    let addr = SocketAddr::from((to_ip, base_port + k as u16));
                    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
                    s.write_all(&data).unwrap();
                    s.shutdown(std::net::Shutdown::Write).unwrap();
                });
            });
        }
    });
    servers.into_iter().map(|s| s.join().unwrap()).collect()
}

#[test]
fn wg_offloads_carry_parallel_tcp_flows_intact_in_order_and_only_encrypted() {
    let mut c = Cluster::new_with_offload("wgoff", 2, true);
    let node_ips: Vec<_> = c.nodes.iter().map(|n| n.underlay_ip).collect();
    for i in 0..2 {
        let o = c.device_counters(i);
        assert_eq!(
            (
                o.get("offload_tun"),
                o.get("offload_udp_gso"),
                o.get("offload_udp_gro")
            ),
            (Some(&1), Some(&1), Some(&1)),
            "node {}: every offload probed on: {o:?}",
            i + 1
        );
    }
    assert!(
        c.ping_until(0, c.nodes[1].pod_ip, 10, "6f66666c6f6164"),
        "pods reach each other through the tunnel"
    );
    let canary = format!("IDENTITYD-OFFLOAD-CANARY-{}-", c.topo.tag()).into_bytes();
    let before: Vec<_> = (0..2)
        .map(|i| tcp_counters(&c, &c.nodes[i].pod_ns))
        .collect();
    let cap = Capture::start(&mut c, "offload");
    for (from, to, port) in [(0, 1, 9100), (1, 0, 9200)] {
        let got = transfer(&c, from, to, port, &canary);
        for (k, g) in got.iter().enumerate() {
            let want = stream(k, &canary);
            assert_eq!(
                g.len(),
                want.len(),
                "pod {} -> pod {}: flow {k} length",
                from + 1,
                to + 1
            );
            if let Some(at) = g.iter().zip(&want).position(|(a, b)| a != b) {
                panic!(
                    "pod {} -> pod {}: flow {k} differs at byte {at}",
                    from + 1,
                    to + 1
                );
            }
        }
    }
    for (i, (retrans0, out0)) in before.iter().enumerate() {
        let (retrans, out) = tcp_counters(&c, &c.nodes[i].pod_ns);
        let (retrans, out) = (retrans - retrans0, out - out0);
        eprintln!(
            "pod {}: {out} segments sent, {retrans} retransmitted",
            i + 1
        );
        assert!(
            retrans * 100 <= out.max(1000),
            "pod {}: {retrans} of {out} segments retransmitted (more than 1%)",
            i + 1
        );
    }
    // UDP segmentation offload from a pod (one sendmsg, 16 datagrams, as QUIC stacks send):
    // the TUN hands it over whole (USO, Linux >= 6.2) and the device splits it; every
    // datagram arrives with its own content.
    let udp_from = c.topo.run_in(&c.nodes[0].pod_ns, || {
        std::net::UdpSocket::bind((c.nodes[0].pod_ip, 9300)).unwrap()
    });
    let udp_to = c.topo.run_in(&c.nodes[1].pod_ns, || {
        std::net::UdpSocket::bind((c.nodes[1].pod_ip, 9301)).unwrap()
    });
    udp_to
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut burst = Vec::new();
    for k in 0..16u8 {
        let mut d = canary.clone();
        d.resize(1200, k);
        burst.extend_from_slice(&d);
    }
    {
        use std::os::fd::AsRawFd as _;
        let to = udp_to.local_addr().unwrap();
        identityd_wg::udp::send_gso(udp_from.as_raw_fd(), &burst, 1200, to)
            .expect("UDP GSO send from the pod");
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 2000];
    while got.len() < 16 {
        let n = udp_to.recv(&mut buf).expect("every UDP datagram arrives");
        got.push(buf[..n].to_vec());
    }
    got.sort_by_key(|d| d[1199]);
    for (k, d) in got.iter().enumerate() {
        assert_eq!(d[..], burst[k * 1200..(k + 1) * 1200], "UDP datagram {k}");
    }
    let (raw, pkts) = cap.stop(&mut c);
    assert_only_wireguard(&raw, &pkts, &node_ips, &[&canary]);
    let uso = c.device_counters(0);
    match uso.get("offload_tun_uso") {
        Some(1) => {
            assert!(
                uso.get("tun_uso_reads").copied().unwrap_or(0) > 0,
                "TUN USO is on but no UDP GSO packet was read whole: {uso:?}"
            );
            let rx = c.device_counters(1);
            assert!(
                rx.get("tun_uso_writes").copied().unwrap_or(0) > 0,
                "node 2 has TUN USO but wrote no merged UDP packet: {rx:?}"
            );
        }
        Some(_) => {
            eprintln!("kernel without TUN USO: the kernel split the UDP burst before the TUN")
        }
        None => panic!("the device does not report offload_tun_uso (an old binary?): {uso:?}"),
    }
    for i in 0..2 {
        let o = c.device_counters(i);
        eprintln!("node {} counters: {o:?}", i + 1);
        for k in ["udp_gso_sends", "udp_gro_receives", "tun_coalesced_writes"] {
            assert!(
                o.get(k).copied().unwrap_or(0) > 0,
                "node {}: {k} = 0, the offload path did not run: {o:?}",
                i + 1
            );
        }
        assert_eq!(o.get("udp_gso_failures"), Some(&0), "node {}: {o:?}", i + 1);
        assert_eq!(
            o.get("dropped_malformed"),
            Some(&0),
            "node {}: {o:?}",
            i + 1
        );
    }
}
