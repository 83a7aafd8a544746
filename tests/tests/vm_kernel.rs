//! Kernel-only tests, run inside the VM test bed (Debian's stock kernel under QEMU), in one
//! boot for the whole file.
//!
//! The host-side test `kernel_tests_run_in_one_vm_boot` boots the bed once and runs this same
//! test binary inside it with `--ignored`: every `guest_*` test below is `#[ignore]` on the
//! host (nextest shows them as skipped there, with the reason) and runs for real in the guest.
//! The host test fails unless every one of them ran and passed inside, so a guest test cannot
//! silently not run. Run on a host that is not the bed, a guest test fails at once.

mod wg_support;

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use identityd_tests::netns::Topology;
use identityd_tests::tools;
use identityd_tests::vm::{IN_VM_ENV, VmBed, VmRun};

/// The guest tests of this file, as libtest lists them on the host.
fn guest_tests() -> Vec<String> {
    let exe = std::env::current_exe().expect("current_exe");
    let out = Command::new(&exe)
        .args(["--list", "--ignored"])
        .output()
        .expect("list this binary's ignored tests");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn kernel_tests_run_in_one_vm_boot() {
    identityd_tests::require_root();
    let bed = VmBed::discover();
    let expected = guest_tests();
    assert!(
        expected.len() >= 3 && expected.iter().all(|t| t.starts_with("guest_")),
        "the guest tests of this file: {expected:?}"
    );
    let exe = std::env::current_exe().expect("current_exe");
    let mut run = VmRun::new(
        vec![
            exe.to_string_lossy().into_owned(),
            "--ignored".into(),
            "--test-threads=1".into(),
            "--nocapture".into(),
        ],
        tools::workspace_root(),
    );
    // The identityd-wg binary the guest tests run, found here where cargo put it.
    run.env.push((
        "IDENTITYD_WG_BIN".into(),
        wg_support::wg_bin().to_string_lossy().into_owned(),
    ));
    run.timeout = Duration::from_secs(900);
    let o = bed.boot(&run).expect("boot the VM test bed");
    eprintln!(
        "[vm bed] kernel {}: boot {:.1} s (guest uptime when the tests started), whole run {:.1} s",
        bed.release(),
        o.boot_secs.unwrap_or(f64::NAN),
        o.wall.as_secs_f64()
    );
    eprintln!("[vm bed] guest stdout:\n{}", o.stdout);
    assert_eq!(
        o.status,
        Some(0),
        "the guest tests failed or did not finish.\nstderr:\n{}\nconsole (tail):\n{}",
        o.stderr,
        o.console_tail(40)
    );
    let summary = format!(
        "test result: ok. {} passed; 0 failed; 0 ignored",
        expected.len()
    );
    assert!(
        o.stdout.contains(&summary),
        "every guest test must run and pass inside the bed (want `{summary}`)"
    );
    for t in &expected {
        assert!(
            o.stdout.contains(&format!("test {t} ... ok")),
            "{t} did not pass inside the bed"
        );
    }
}

/// Panics unless this process runs inside the bed on the stock kernel.
fn in_guest() {
    let release = std::env::var(IN_VM_ENV).unwrap_or_else(|_| {
        panic!("guest tests run inside the VM test bed only (kernel_tests_run_in_one_vm_boot)")
    });
    let uname = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert_eq!(uname.trim(), release, "the guest runs the bed's kernel");
}

/// `/proc/net/xfrm_stat` of namespace `ns`, as (name, value).
fn xfrm_stat(ns: &str) -> Vec<(String, u64)> {
    let out = Command::new(tools::ip())
        .args(["netns", "exec", ns, "cat", "/proc/net/xfrm_stat"])
        .output()
        .expect("read xfrm_stat");
    assert!(out.status.success(), "xfrm_stat: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_owned(), it.next()?.parse().ok()?))
        })
        .collect()
}

fn stat(stats: &[(String, u64)], name: &str) -> u64 {
    stats
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("{name} not in xfrm_stat: {stats:?}"))
        .1
}

/// A tcpdump of interface `ifc` in namespace `ns`.
struct Capture {
    idx: usize,
    pid: i32,
    path: std::path::PathBuf,
}

impl Capture {
    fn start(t: &mut Topology, ns: &str, ifc: &str, path: std::path::PathBuf) -> Self {
        let idx = t.spawn(
            ns,
            &[
                tools::tcpdump().to_str().unwrap(),
                "-i",
                ifc,
                "--immediate-mode",
                "-n",
                "-U",
                "-s",
                "0",
                "-w",
                path.to_str().unwrap(),
            ],
        );
        let pid = i32::try_from(t.child(idx).id()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::metadata(&path).map_or(0, |m| m.len()) < 24 {
            assert!(Instant::now() < deadline, "tcpdump did not start capturing");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        Self { idx, pid, path }
    }

    fn stop(self, t: &mut Topology) -> (Vec<u8>, Vec<wg_support::Packet>) {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(self.pid, libc::SIGINT);
        }
        let _ = t.child(self.idx).wait();
        let raw = std::fs::read(&self.path).expect("read capture");
        let pkts = wg_support::parse_pcap(&raw);
        (raw, pkts)
    }
}

/// Sends `payload` from namespace `from` to `to:port` and reports whether namespace `at`
/// received it on that port within `wait`.
fn udp_delivered(
    t: &Topology,
    from: &str,
    at: &str,
    to: &str,
    port: u16,
    payload: &[u8],
    wait: Duration,
) -> bool {
    let sock = t.run_in(at, || {
        let s = UdpSocket::bind(("0.0.0.0", port)).expect("bind the receiver");
        s.set_read_timeout(Some(wait)).unwrap();
        s
    });
    t.run_in(from, || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.send_to(payload, (to, port)).expect("send");
    });
    let mut buf = [0u8; 2048];
    matches!(sock.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == payload)
}

const A: &str = "10.98.0.1";
const B: &str = "10.98.0.2";

/// `ip xfrm` in `ns` (test setup only: the datapath itself will use netlink).
fn xfrm(t: &Topology, ns: &str, args: &str) {
    let mut argv = vec!["ip", "xfrm"];
    argv.extend(args.split_whitespace());
    t.exec(ns, &argv);
}

/// Transport-mode ESP with AES-GCM-128 (rfc4106) between A and B, one SA per direction, and
/// policies that require it both ways (`level required` on out and in).
fn install_esp(t: &Topology, a: &str, b: &str) {
    let key_ab = "0x0102030405060708090a0b0c0d0e0f1011121314";
    let key_ba = "0x2122232425262728292a2b2c2d2e2f3031323334";
    for ns in [a, b] {
        xfrm(
            t,
            ns,
            &format!(
                "state add src {A} dst {B} proto esp spi 0x1001 reqid 1 mode transport replay-window 128 flag esn aead rfc4106(gcm(aes)) {key_ab} 128"
            ),
        );
        xfrm(
            t,
            ns,
            &format!(
                "state add src {B} dst {A} proto esp spi 0x2001 reqid 2 mode transport replay-window 128 flag esn aead rfc4106(gcm(aes)) {key_ba} 128"
            ),
        );
    }
    let pol = |src: &str, dst: &str, dir: &str, reqid: u8| {
        format!(
            "policy add src {src}/32 dst {dst}/32 dir {dir} tmpl src {src} dst {dst} proto esp reqid {reqid} mode transport level required"
        )
    };
    xfrm(t, a, &pol(A, B, "out", 1));
    xfrm(t, b, &pol(A, B, "in", 1));
    xfrm(t, b, &pol(B, A, "out", 2));
    xfrm(t, a, &pol(B, A, "in", 2));
}

#[test]
#[ignore = "kernel-only: runs inside the VM test bed (see kernel_tests_run_in_one_vm_boot)"]
fn guest_esp_between_two_nodes_carries_no_clear_text_and_refuses_clear_text() {
    in_guest();
    let mut t = Topology::new("esp");
    let a = t.add_ns("a");
    let b = t.add_ns("b");
    let (_ia, ib) = t.link(&a, Some(&format!("{A}/24")), &b, Some(&format!("{B}/24")));
    let dir = tempfile::tempdir().unwrap();
    let marker = b"IDENTITYD-ESP-MARKER-7c1f";

    // Without XFRM the capture sees the marker: the check below can fail.
    let cap = Capture::start(&mut t, &b, &ib, dir.path().join("clear.pcap"));
    assert!(
        udp_delivered(&t, &a, &b, B, 7001, marker, Duration::from_secs(5)),
        "plaintext baseline delivered"
    );
    let (raw, _) = cap.stop(&mut t);
    assert!(
        wg_support::contains(&raw, marker),
        "without ESP the marker is on the wire (the capture works)"
    );

    install_esp(&t, &a, &b);
    let before = xfrm_stat(&b);
    let cap = Capture::start(&mut t, &b, &ib, dir.path().join("esp.pcap"));
    for i in 0..20 {
        assert!(
            udp_delivered(&t, &a, &b, B, 7002, marker, Duration::from_secs(5)),
            "datagram {i} crosses the ESP SA"
        );
    }
    let (raw, pkts) = cap.stop(&mut t);
    assert!(
        !wg_support::contains(&raw, marker),
        "with ESP the marker never appears in clear"
    );
    let esp = pkts
        .iter()
        .filter_map(wg_support::Packet::ipv4)
        .filter(|p| p.2 == 50)
        .count();
    let other_udp = pkts
        .iter()
        .filter_map(wg_support::Packet::ipv4)
        .filter(|p| p.2 == 17)
        .count();
    assert!(esp >= 20, "ESP packets between the nodes: {esp}");
    assert_eq!(other_udp, 0, "no UDP outside ESP");
    let after = xfrm_stat(&b);
    for s in [
        "XfrmInNoStates",
        "XfrmInStateProtoError",
        "XfrmInStateSeqError",
        "XfrmInStateInvalid",
    ] {
        assert_eq!(
            stat(&after, s),
            stat(&before, s),
            "{s} stays 0 on the receiver"
        );
    }
    let crypto = std::fs::read_to_string("/proc/crypto").unwrap();
    assert!(
        crypto.contains("rfc4106(gcm(aes))"),
        "the kernel's GCM ESP transform is in use"
    );

    // Inbound strict: with A's outbound policy gone, A sends in clear and B's `in` policy
    // (level required) drops it and counts it.
    let before = xfrm_stat(&b);
    xfrm(
        &t,
        &a,
        &format!("policy delete src {A}/32 dst {B}/32 dir out"),
    );
    assert!(
        !udp_delivered(&t, &a, &b, B, 7003, marker, Duration::from_secs(2)),
        "plaintext from the peer is refused where ESP is required"
    );
    let after = xfrm_stat(&b);
    assert!(
        stat(&after, "XfrmInTmplMismatch") > stat(&before, "XfrmInTmplMismatch")
            || stat(&after, "XfrmInNoPols") > stat(&before, "XfrmInNoPols"),
        "the refusal is counted: before {before:?} after {after:?}"
    );
}

#[test]
#[ignore = "kernel-only: runs inside the VM test bed (see kernel_tests_run_in_one_vm_boot)"]
fn guest_kernel_wireguard_is_detected_as_available() {
    in_guest();
    let bin = wg_support::wg_bin();
    let mut t = Topology::new("wgkmod");
    let ns = t.add_ns("a");
    let out = t.try_exec(&ns, &[bin.to_str().unwrap(), "kernel-check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("available"),
        "the stock kernel has the module (loaded on demand by the kernel's modprobe): {out:?}"
    );
    assert!(
        std::path::Path::new("/sys/module/wireguard").exists(),
        "the module was autoloaded"
    );
}

#[test]
#[ignore = "kernel-only: runs inside the VM test bed (see kernel_tests_run_in_one_vm_boot)"]
fn guest_stock_kernel_offers_what_the_host_lacks() {
    in_guest();
    let modprobe = |m: &str| {
        let out = Command::new("modprobe").arg(m).output().expect("modprobe");
        assert!(out.status.success(), "modprobe {m}: {out:?}");
    };
    for m in [
        "esp4",
        "esp6",
        "xfrm_user",
        "wireguard",
        "tun",
        "veth",
        "nf_tables",
    ] {
        modprobe(m);
        assert!(
            std::path::Path::new("/sys/module").join(m).exists(),
            "{m} is loaded"
        );
    }
    let out = Command::new(tools::bpftool())
        .args(["feature", "probe", "kernel"])
        .output()
        .expect("bpftool");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("eBPF program_type sched_cls is available"),
        "tc BPF programs load on the guest kernel: {text}"
    );
}

/// One node's IPsec view in the tunnel test: its namespace, underlay address, pod CIDR, key.
struct IpsecNode {
    name: String,
    ns: String,
    underlay: std::net::IpAddr,
    pods: identityd_wg::plan::Cidr,
    pod_ip: std::net::Ipv4Addr,
    pod_ns: String,
    key: identityd_wg::key::NodeKey,
}

/// The SPI node `dst` allocated for its inbound SA from node `src` in `epoch`: unique on the
/// receiving node per peer and epoch.
fn spi_for(src: usize, dst: usize, epoch: u64) -> u32 {
    0x1000 * u32::try_from(epoch).unwrap()
        + 0x10 * u32::try_from(dst + 1).unwrap()
        + u32::try_from(src + 1).unwrap()
}

/// Installs the SA and policies carrying traffic from node `s` to node `d` (outbound on `s`,
/// inbound + forward on `d`), each side deriving the key alone from its own private key and
/// the peer's public key.
fn install_pair(
    t: &Topology,
    nodes: &[IpsecNode],
    s: usize,
    d: usize,
    epoch: u64,
    receiver_first: bool,
) {
    use identityd_wg::ipsec::keys::{Direction, Endpoint, derive_sa_key};
    use identityd_wg::ipsec::xfrm::{PolicyDir, PolicySpec, SaSpec, Xfrm};
    let (src, dst) = (&nodes[s], &nodes[d]);
    fn ep(n: &IpsecNode) -> Endpoint<'_> {
        Endpoint {
            name: &n.name,
            public: n.key.public_key(),
        }
    }
    let spi = spi_for(s, d, epoch);
    let reqid = u32::try_from(100 + s * 10 + d).unwrap();
    let policy = |dir| PolicySpec {
        src: src.pods,
        dst: dst.pods,
        dir,
        tunnel_src: src.underlay,
        tunnel_dst: dst.underlay,
        reqid,
        priority: 100,
        mark: None,
    };
    // Each end derives the key alone, installs the SA and its side's policies.
    let install = |node: &IpsecNode, peer: &IpsecNode, direction, dirs: &[PolicyDir]| {
        t.run_in(&node.ns, || {
            let key = derive_sa_key(&node.key, ep(node), ep(peer), direction, spi, epoch).unwrap();
            let mut x = Xfrm::open().unwrap();
            x.add_sa(&SaSpec {
                src: src.underlay,
                dst: dst.underlay,
                spi,
                reqid,
                key,
                replay_window: 1024,
                mark: None,
            })
            .unwrap();
            for dir in dirs {
                x.put_policy(&policy(*dir)).unwrap();
            }
        });
    };
    let sending = || install(src, dst, Direction::Outbound, &[PolicyDir::Out]);
    let receiving = || {
        install(
            dst,
            src,
            Direction::Inbound,
            &[PolicyDir::In, PolicyDir::Fwd],
        )
    };
    if receiver_first {
        receiving();
        sending();
    } else {
        sending();
        receiving();
    }
}

fn pod_ping(t: &Topology, from: &IpsecNode, to: &IpsecNode, pattern: &str) -> bool {
    t.try_exec(
        &from.pod_ns,
        &[
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            "-p",
            pattern,
            &to.pod_ip.to_string(),
        ],
    )
    .status
    .success()
}

#[test]
#[ignore = "kernel-only: runs inside the VM test bed (see kernel_tests_run_in_one_vm_boot)"]
fn guest_ipsec_tunnels_between_three_nodes_with_per_pair_keys_carry_no_clear_text() {
    use identityd_wg::ipsec::xfrm::Xfrm;
    in_guest();
    let mut t = Topology::new("ipsec");
    let spec = t.add_cluster(3);
    let identityd_topology::Underlay::Namespace { ns: u_ns, bridge } = spec.underlay.clone() else {
        panic!("a namespace underlay");
    };
    let nodes: Vec<IpsecNode> = spec
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| IpsecNode {
            name: format!("n{}", i + 1),
            ns: n.ns.clone(),
            underlay: std::net::IpAddr::V4(n.underlay_ip),
            pods: format!("10.244.{}.0/24", i + 1).parse().unwrap(),
            pod_ip: n.pods[0].ip,
            pod_ns: n.pods[0].ns.clone(),
            key: identityd_wg::key::NodeKey::generate(),
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    // "IDDESP" in hex, as ping's payload pattern.
    let pattern = "494444455350";
    let marker = b"IDDESPIDDESP";

    // Without IPsec, pod traffic to another node leaves on the underlay in clear.
    let cap = Capture::start(&mut t, &u_ns, &bridge, dir.path().join("clear.pcap"));
    let _ = pod_ping(&t, &nodes[0], &nodes[1], pattern);
    let (raw, _) = cap.stop(&mut t);
    assert!(
        wg_support::contains(&raw, marker),
        "without IPsec the marker crosses the underlay in clear"
    );

    // Every ordered pair: its own SA, keyed by the two nodes alone.
    for s in 0..3 {
        for d in 0..3 {
            if s != d {
                install_pair(&t, &nodes, s, d, 1, true);
            }
        }
    }
    let cap = Capture::start(&mut t, &u_ns, &bridge, dir.path().join("esp.pcap"));
    for s in 0..3 {
        for d in 0..3 {
            if s != d {
                assert!(
                    pod_ping(&t, &nodes[s], &nodes[d], pattern),
                    "pod of n{} reaches pod of n{} through ESP",
                    s + 1,
                    d + 1
                );
            }
        }
    }
    let (raw, pkts) = cap.stop(&mut t);
    assert!(
        !wg_support::contains(&raw, marker),
        "the marker never crosses the underlay in clear"
    );
    let mut esp_pairs = std::collections::BTreeSet::new();
    for p in pkts.iter().filter_map(wg_support::Packet::ipv4) {
        let (src, dst, proto, _, _) = p;
        assert!(
            proto == 50
                && nodes.iter().any(|n| n.underlay == src)
                && nodes.iter().any(|n| n.underlay == dst),
            "only ESP between node addresses on the underlay, got {src} -> {dst} proto {proto}"
        );
        esp_pairs.insert((src, dst));
    }
    assert_eq!(
        esp_pairs.len(),
        6,
        "ESP in both directions of every pair: {esp_pairs:?}"
    );
    for n in &nodes {
        let s = xfrm_stat(&n.ns);
        for c in [
            "XfrmInNoStates",
            "XfrmInStateProtoError",
            "XfrmInStateSeqError",
            "XfrmInNoPols",
            "XfrmInTmplMismatch",
        ] {
            assert_eq!(stat(&s, c), 0, "{c} on {}", n.name);
        }
    }

    // Strict: with n1's outbound SA to n2 deleted by hand, the policy (level required) drops
    // n1's pod traffic to n2 and counts it; nothing leaves in clear.
    let before = xfrm_stat(&nodes[0].ns);
    t.run_in(&nodes[0].ns, || {
        Xfrm::open()
            .unwrap()
            .delete_sa(nodes[1].underlay, spi_for(0, 1, 1), None)
            .unwrap();
    });
    let cap = Capture::start(&mut t, &u_ns, &bridge, dir.path().join("nosa.pcap"));
    assert!(
        !pod_ping(&t, &nodes[0], &nodes[1], pattern),
        "no SA, no passage"
    );
    let (raw, _) = cap.stop(&mut t);
    assert!(
        !wg_support::contains(&raw, marker),
        "no clear text without the SA"
    );
    let after = xfrm_stat(&nodes[0].ns);
    assert!(
        stat(&after, "XfrmOutNoStates") > stat(&before, "XfrmOutNoStates"),
        "the drop is counted: {before:?} -> {after:?}"
    );

    // Re-created under a new epoch (new SPI, new key; inbound first): the peer accepts it with
    // no sequence-number or replay errors.
    install_pair(&t, &nodes, 0, 1, 2, true);
    assert!(
        pod_ping(&t, &nodes[0], &nodes[1], pattern),
        "the new epoch's SA carries traffic"
    );
    let s = xfrm_stat(&nodes[1].ns);
    for c in [
        "XfrmInNoStates",
        "XfrmInStateSeqError",
        "XfrmInStateProtoError",
    ] {
        assert_eq!(stat(&s, c), 0, "{c} on n2 after the new epoch");
    }
}

#[test]
#[ignore = "kernel-only: runs inside the VM test bed (see kernel_tests_run_in_one_vm_boot)"]
fn guest_the_xfrm_plan_is_applied_as_a_diff_and_a_restart_re_adopts_it_without_loss() {
    use identityd_wg::ipsec::plan::{IpsecNode as PlanNode, apply, plan};
    use identityd_wg::ipsec::xfrm::Xfrm;
    in_guest();
    let mut t = Topology::new("xfrmplan");
    let spec = t.add_cluster(3);
    let identityd_topology::Underlay::Namespace { ns: u_ns, bridge } = spec.underlay.clone() else {
        panic!("a namespace underlay");
    };
    let keys: Vec<identityd_wg::key::NodeKey> = (0..3)
        .map(|_| identityd_wg::key::NodeKey::generate())
        .collect();
    // Node i allocated SPI 0x1000*(i+1) + (j+1) for its inbound SA from node j.
    let nodes: Vec<PlanNode> = spec
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| PlanNode {
            name: format!("n{}", i + 1),
            id: u16::try_from(i + 1).unwrap(),
            underlay: std::net::IpAddr::V4(n.underlay_ip),
            pod_cidrs: vec![format!("10.244.{}.0/24", i + 1).parse().unwrap()],
            public: keys[i].public_key(),
            epoch: 1,
            inbound_spis: (0..3)
                .filter(|j| *j != i)
                .map(|j| {
                    (
                        format!("n{}", j + 1),
                        0x1000 * u32::try_from(i + 1).unwrap() + u32::try_from(j + 1).unwrap(),
                    )
                })
                .collect(),
        })
        .collect();
    let apply_on = |t: &Topology, i: usize, peers: &[PlanNode]| {
        t.run_in(&spec.nodes[i].ns, || {
            let p = plan(&nodes[i], &keys[i], peers, None);
            assert!(p.problems.is_empty(), "{:?}", p.problems);
            apply(&mut Xfrm::open().unwrap(), &p).unwrap()
        })
    };
    // A hand-made SA on n1 (not identityd's reqid): never touched.
    t.exec(
        &spec.nodes[0].ns,
        &[
            "ip",
            "xfrm",
            "state",
            "add",
            "src",
            "192.0.2.1",
            "dst",
            "192.0.2.2",
            "proto",
            "esp",
            "spi",
            "0x77",
            "reqid",
            "7",
            "mode",
            "tunnel",
            "aead",
            "rfc4106(gcm(aes))",
            "0x0102030405060708090a0b0c0d0e0f1011121314",
            "128",
        ],
    );
    for i in 0..3 {
        let r = apply_on(&t, i, &nodes);
        assert_eq!((r.sas_added, r.policies_put), (4, 6), "n{}: {r:?}", i + 1);
    }
    let pod = |i: usize| {
        (
            spec.nodes[i].pods[0].ns.clone(),
            spec.nodes[i].pods[0].ip.to_string(),
        )
    };
    let ping = |t: &Topology, from: usize, to: usize, count: &str, interval: &str| {
        let out = t.try_exec(
            &pod(from).0,
            &["ping", "-c", count, "-i", interval, "-W", "2", &pod(to).1],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for (a, b) in [(0, 1), (1, 2), (2, 0)] {
        let out = ping(&t, a, b, "3", "0.2");
        assert!(
            out.contains(" 0% packet loss"),
            "n{} -> n{}: {out}",
            a + 1,
            b + 1
        );
    }

    // A restart: a fresh plan and socket over what the kernel holds changes nothing, while a
    // flow runs through the SAs.
    let dir = tempfile::tempdir().unwrap();
    let cap = Capture::start(&mut t, &u_ns, &bridge, dir.path().join("readopt.pcap"));
    let tr = &t;
    let flow = std::thread::scope(|s| {
        let h = s.spawn(|| ping(tr, 0, 1, "100", "0.02"));
        std::thread::sleep(Duration::from_millis(300));
        for i in 0..3 {
            let r = apply_on(&t, i, &nodes);
            assert!(
                r.is_noop(),
                "n{}: a re-applied plan changes nothing: {r:?}",
                i + 1
            );
        }
        h.join().unwrap()
    });
    assert!(
        flow.contains(" 0% packet loss"),
        "no loss across the re-adoption: {flow}"
    );
    let (_, pkts) = cap.stop(&mut t);
    assert!(
        pkts.iter()
            .filter_map(wg_support::Packet::ipv4)
            .all(|p| p.2 == 50),
        "only ESP on the underlay"
    );
    for n in &spec.nodes {
        let s = xfrm_stat(&n.ns);
        for c in [
            "XfrmInNoStates",
            "XfrmInStateSeqError",
            "XfrmInStateProtoError",
        ] {
            assert_eq!(stat(&s, c), 0, "{c} on {}", n.ns);
        }
    }

    // n3 leaves n1's view: its SAs and policies go, the hand-made SA stays, n1 <-> n2 works.
    let r = apply_on(&t, 0, &nodes[..2]);
    assert_eq!(
        (r.sas_deleted, r.policies_deleted, r.sas_added),
        (2, 3, 0),
        "{r:?}"
    );
    let left = t.run_in(&spec.nodes[0].ns, || Xfrm::open().unwrap().sas().unwrap());
    assert!(
        left.iter().any(|s| s.spi == 0x77 && s.reqid == 7),
        "the hand-made SA stays: {left:?}"
    );
    assert_eq!(
        left.len(),
        3,
        "n1 <-> n2 (2) and the hand-made one: {left:?}"
    );
    assert!(ping(&t, 0, 1, "3", "0.2").contains(" 0% packet loss"));
}
