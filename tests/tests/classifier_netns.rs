//! The classifier on a real veth in test-owned namespaces: a pod's traffic to a remote pod
//! CIDR without a path is dropped and counted (flow event, zero packets on the underlay);
//! local traffic passes; routed traffic is marked and policy-routed off the underlay; and a
//! restart re-adopts pinned maps and links without a moment unclassified.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use identityd_bpf::{
    Cidr, Classifier, ClassifierConfig, Direction, DropReason, FlowEvents, Path, Route, RouteKind,
};
use identityd_tests::netns::Topology;

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

/// pod (10.244.1.5) ─veth─ node (10.244.1.1 | 10.99.0.11) ─underlay veth─ peer (10.99.0.12,
/// holding the "remote pods" 10.244.2.7 and 10.244.9.7 on lo).
struct Bed {
    t: Topology,
    pod: String,
    node: String,
    peer: String,
    /// The node's end of the pod veth (the classifier's attach point).
    pod_veth: String,
    /// The peer's end of the underlay.
    underlay: String,
}

impl Bed {
    fn new(name: &str) -> Self {
        let mut t = Topology::new(name);
        let pod = t.add_ns("pod");
        let node = t.add_ns("node");
        let peer = t.add_ns("peer");
        let (_, pod_veth) = t.link(&pod, Some("10.244.1.5/24"), &node, Some("10.244.1.1/24"));
        let (_, underlay) = t.link(&node, Some("10.99.0.11/24"), &peer, Some("10.99.0.12/24"));
        t.exec(
            &pod,
            &["ip", "route", "add", "default", "via", "10.244.1.1"],
        );
        t.exec(&node, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        for r in ["10.244.2.0/24", "10.244.9.0/24"] {
            t.exec(&node, &["ip", "route", "add", r, "via", "10.99.0.12"]);
        }
        for a in ["10.244.2.7/32", "10.244.9.7/32"] {
            t.exec(&peer, &["ip", "addr", "add", a, "dev", "lo"]);
        }
        t.exec(
            &peer,
            &["ip", "route", "add", "10.244.1.0/24", "via", "10.99.0.11"],
        );
        Self {
            t,
            pod,
            node,
            peer,
            pod_veth,
            underlay,
        }
    }

    fn classifier(&self, config: &ClassifierConfig) -> Classifier {
        let iface = self.pod_veth.clone();
        self.t.run_in(&self.node, || {
            let mut c = Classifier::load(config).expect("load classifier.o");
            c.attach(&iface, Direction::Ingress)
                .expect("attach to the pod veth");
            c
        })
    }

    fn ping(&self, dst: &str, count: u32) -> bool {
        let n = count.to_string();
        self.t
            .try_exec(&self.pod, &["ping", "-c", &n, "-i", "0.1", "-W", "1", dst])
            .status
            .success()
    }

    /// Starts a capture of pod-range packets on the peer's underlay interface.
    fn capture(&mut self, file: &std::path::Path) -> usize {
        let f = file.to_string_lossy().into_owned();
        let (peer, underlay) = (self.peer.clone(), self.underlay.clone());
        let idx = self.t.spawn(
            &peer,
            &[
                "tcpdump",
                "-i",
                &underlay,
                "-nn",
                "-U",
                "-w",
                &f,
                "net",
                "10.244.0.0/16",
            ],
        );
        for _ in 0..50 {
            if file.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(file.exists(), "tcpdump did not start on {underlay}");
        std::thread::sleep(Duration::from_millis(300));
        idx
    }

    /// Stops capture `idx` and returns the captured packets, one line each.
    fn captured(&mut self, idx: usize, file: &std::path::Path) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(200));
        let _ = self.t.child(idx).kill();
        let _ = self.t.child(idx).wait();
        let out = std::process::Command::new("tcpdump")
            .args(["-nn", "-r"])
            .arg(file)
            .output()
            .expect("tcpdump -r");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn routes(c: &mut Classifier) {
    for (cidr_s, kind, node_id) in [
        ("10.244.0.0/16", RouteKind::Unavailable, 0),
        ("10.244.1.0/24", RouteKind::Local, 1),
        ("10.244.2.0/24", RouteKind::WireGuard, 2),
    ] {
        c.set_route(cidr(cidr_s), Route { kind, node_id }).unwrap();
    }
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("idd-{name}-{}.pcap", std::process::id()))
}

#[test]
fn classifier_in_netns_drops_unrouted_pod_traffic_and_policy_routes_marked_traffic() {
    let mut bed = Bed::new("clsnetns");
    let mut c = bed.classifier(&ClassifierConfig {
        flow_events: FlowEvents::All,
        ..ClassifierConfig::default()
    });
    routes(&mut c);
    let mut events = c.flow_events().unwrap();

    // 1. Local traffic passes (and is counted as such).
    let before = c.counters().unwrap();
    assert!(bed.ping("10.244.1.1", 2), "pod reaches its own node");
    let after = c.counters().unwrap();
    assert!(after.get(Path::Pass).packets >= before.get(Path::Pass).packets + 2);
    assert_eq!(after.get(Path::Drop), before.get(Path::Drop));

    // 2. Strict mode: 10.244.9.0/24 is a pod CIDR with no path -> dropped, counted, reported,
    //    and nothing reaches the underlay.
    let pcap = tmp("strict");
    let cap = bed.capture(&pcap);
    let before = c.counters().unwrap();
    assert!(!bed.ping("10.244.9.7", 3), "no path: the ping must fail");
    let after = c.counters().unwrap();
    let lines = bed.captured(cap, &pcap);
    let _ = std::fs::remove_file(&pcap);
    assert!(
        lines.is_empty(),
        "zero pod packets on the underlay, got:\n{}",
        lines.join("\n")
    );
    assert!(
        after.get(Path::Drop).packets >= before.get(Path::Drop).packets + 3,
        "3 drops counted: {before:?} -> {after:?}"
    );
    let mut drops = 0;
    while let Some(ev) = events.next_timeout(Duration::from_millis(200)).unwrap() {
        if ev.path == Path::Drop {
            assert_eq!(ev.src, "10.244.1.5".parse::<IpAddr>().unwrap(), "{ev:?}");
            assert_eq!(ev.dst, "10.244.9.7".parse::<IpAddr>().unwrap(), "{ev:?}");
            assert_eq!(ev.protocol, 1, "ICMP: {ev:?}");
            assert_eq!(ev.drop_reason, Some(DropReason::NoPath), "{ev:?}");
            drops += 1;
        }
    }
    assert!(drops >= 3, "a flow event per dropped packet, got {drops}");

    // 3. 10.244.2.0/24 has a WireGuard path: packets carry 0x0e00 and the fwmark rule sends
    //    them to table 202, whose only route is a stand-in device for the WireGuard interface.
    //    Nothing leaves on the underlay in clear.
    let node = bed.node.clone();
    let sink = bed.t.add_ns("wgsink");
    let (stub, _) = bed.t.link(
        &node,
        Some("169.254.202.1/30"),
        &sink,
        Some("169.254.202.2/30"),
    );
    bed.t.exec(
        &node,
        &[
            "ip",
            "rule",
            "add",
            "fwmark",
            "0xe00/0xf00",
            "lookup",
            "202",
            "priority",
            "100",
        ],
    );
    bed.t.exec(
        &node,
        &[
            "ip",
            "route",
            "add",
            "default",
            "via",
            "169.254.202.2",
            "table",
            "202",
        ],
    );
    let tx = |bed: &Bed| -> u64 {
        let out = bed.t.exec(
            &bed.node,
            &[
                "cat",
                &format!("/sys/class/net/{stub}/statistics/tx_packets"),
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let pcap = tmp("wg");
    let cap = bed.capture(&pcap);
    let (before, tx_before) = (c.counters().unwrap(), tx(&bed));
    let _ = bed.ping("10.244.2.7", 3);
    let (after, tx_after) = (c.counters().unwrap(), tx(&bed));
    let lines = bed.captured(cap, &pcap);
    let _ = std::fs::remove_file(&pcap);
    assert!(
        after.get(Path::WireGuard).packets >= before.get(Path::WireGuard).packets + 3,
        "{before:?} -> {after:?}"
    );
    assert!(
        tx_after >= tx_before + 3,
        "marked packets went to table 202's device: {tx_before} -> {tx_after}"
    );
    assert!(
        lines.is_empty(),
        "zero pod packets on the underlay, got:\n{}",
        lines.join("\n")
    );
    let mut marked = 0;
    while let Some(ev) = events.next_timeout(Duration::from_millis(200)).unwrap() {
        if ev.path == Path::WireGuard {
            assert_eq!(ev.mark & 0x0f00, 0x0e00, "{ev:?}");
            assert_eq!(ev.node_id, 2, "{ev:?}");
            marked += 1;
        }
    }
    assert!(marked >= 3, "a flow event per marked packet, got {marked}");

    // Detach is idempotent, and afterwards the pod's traffic is no longer classified.
    let iface = bed.pod_veth.clone();
    bed.t.run_in(&node, || {
        c.detach(&iface, Direction::Ingress).unwrap();
        c.detach(&iface, Direction::Ingress).unwrap();
        c
    });
}

/// Removes a test's pin directory, even when the test panics.
struct PinGuard(PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = identityd_bpf::classifier::remove_pins(&self.0);
    }
}

fn attached_ids(bed: &Bed) -> Vec<u32> {
    let iface = bed.pod_veth.clone();
    bed.t.run_in(&bed.node, || {
        let (_, progs) =
            aya::programs::SchedClassifier::query_tcx(&iface, aya::programs::TcAttachType::Ingress)
                .expect("query tcx");
        progs.iter().map(aya::programs::ProgramInfo::id).collect()
    })
}

#[test]
fn classifier_restart_readopts_pinned_maps_and_links_without_a_gap() {
    let mut bed = Bed::new("clsrestart");
    let pin = PathBuf::from(identityd_bpf::classifier::DEFAULT_PIN_ROOT)
        .join(format!("test-clsrestart-{}", bed.t.tag()));
    let _guard = PinGuard(pin.clone());
    let config = ClassifierConfig {
        pin_dir: Some(pin.clone()),
        ..ClassifierConfig::default()
    };

    let mut first = bed.classifier(&config);
    routes(&mut first);
    let first_id = first.program_id().unwrap();
    assert_eq!(attached_ids(&bed), vec![first_id]);
    // Attaching again is a no-op.
    let iface = bed.pod_veth.clone();
    let first = bed.t.run_in(&bed.node, || {
        first.attach(&iface, Direction::Ingress).unwrap();
        first
    });
    assert_eq!(attached_ids(&bed), vec![first_id]);

    // Unrouted pod traffic flows (and is dropped) all through the restart.
    let pcap = tmp("restart");
    let cap = bed.capture(&pcap);
    let pod = bed.pod.clone();
    let pinger = bed
        .t
        .spawn(&pod, &["ping", "-i", "0.02", "-W", "1", "10.244.9.7"]);
    std::thread::sleep(Duration::from_millis(300));
    let before = first.counters().unwrap().get(Path::Drop).packets;
    assert!(before > 0, "drops counted before the restart");

    // The daemon exits: the pinned link keeps the old program attached.
    drop(first);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        attached_ids(&bed),
        vec![first_id],
        "still attached after exit"
    );

    // A pin left by an earlier interface of the same name (another ifindex) is cleaned up.
    let links = pin
        .join(format!(
            "v{}",
            identityd_bpf::classifier::PIN_LAYOUT_VERSION
        ))
        .join("links");
    let live = std::fs::read_dir(&links)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .next()
        .expect("a pinned link");
    let stale = links.join(format!("{}-999999-ingress", bed.pod_veth));
    let link = aya::programs::links::PinnedLink::from_pin(&live).unwrap();
    drop(
        aya::programs::links::FdLink::from(link)
            .pin(&stale)
            .unwrap(),
    );
    assert!(stale.exists());

    // The new daemon adopts maps (routes and counters survive) and replaces the program.
    let second = bed.classifier(&config);
    assert!(!stale.exists(), "the stale pin was removed");
    let second_id = second.program_id().unwrap();
    assert_ne!(first_id, second_id);
    assert_eq!(
        attached_ids(&bed),
        vec![second_id],
        "the pinned link now runs the new program, and only it"
    );
    assert_eq!(
        second
            .lookup_route("10.244.2.7".parse().unwrap())
            .unwrap()
            .map(|r| r.kind),
        Some(RouteKind::WireGuard),
        "routes survived the restart"
    );
    std::thread::sleep(Duration::from_millis(300));
    let after = second.counters().unwrap().get(Path::Drop).packets;
    assert!(
        after > before,
        "counters survived and kept counting: {before} -> {after}"
    );
    let _ = bed.t.child(pinger).kill();
    let lines = bed.captured(cap, &pcap);
    let _ = std::fs::remove_file(&pcap);
    assert!(
        lines.is_empty(),
        "zero pod packets on the underlay during the restart, got:\n{}",
        lines.join("\n")
    );

    // A full detach removes the pinned link; a second detach is a no-op.
    let iface = bed.pod_veth.clone();
    bed.t.run_in(&bed.node, || {
        let mut second = second;
        second.detach(&iface, Direction::Ingress).unwrap();
        second.detach(&iface, Direction::Ingress).unwrap();
        drop(second);
    });
    assert!(attached_ids(&bed).is_empty(), "detached");
    identityd_bpf::classifier::remove_pins(&pin).unwrap();
    assert!(!pin.exists());
}

const TRANSPARENT_LISTENER: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT, as Envoy's outbound listener sets it
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 15001))
s.listen(8)
print("ready", flush=True)
c, a = s.accept()
print("orig", *c.getsockname(), "peer", a[0], flush=True)
c.sendall(b"proxied\n")
c.close()
"#;

const CLIENT: &str = r#"
import socket
s = socket.create_connection(("10.244.2.7", 8080), timeout=3)
print(s.recv(100).decode().strip())
"#;

fn python3() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

#[test]
fn classifier_proxy_mark_is_tproxied_to_a_transparent_listener_and_routing_apply_is_idempotent() {
    use identityd_bpf::routing::{self, RoutingConfig};
    use std::io::{BufRead as _, BufReader, Read as _};

    let mut bed = Bed::new("clsproxy");
    let mut c = bed.classifier(&ClassifierConfig::default());
    routes(&mut c);
    c.set_workload(
        "10.244.1.5".parse().unwrap(),
        identityd_bpf::MtlsMode::Strict,
    )
    .unwrap();
    let node = bed.node.clone();
    let sink = bed.t.add_ns("wgsink");
    let (stub, _) = bed.t.link(
        &node,
        Some("169.254.202.1/30"),
        &sink,
        Some("169.254.202.2/30"),
    );

    let plan = routing::plan(&RoutingConfig {
        wireguard_interface: Some(stub.clone()),
        proxy_port: Some(routing::PROXY_PORT),
        ..RoutingConfig::default()
    });
    let first = bed.t.run_in(&node, || {
        routing::apply(&plan).expect("apply the routing plan")
    });
    assert_eq!(first.rules_added, 4, "{first:?}");
    assert!(first.nftables_written);
    let again = bed
        .t
        .run_in(&node, || routing::apply(&plan).expect("apply again"));
    assert_eq!(
        (again.rules_added, again.rules_removed),
        (0, 0),
        "a second apply changes no rule: {again:?}"
    );
    let rules =
        String::from_utf8_lossy(&bed.t.exec(&node, &["ip", "rule", "show"]).stdout).into_owned();
    assert!(
        rules.contains("100:\tfrom all fwmark 0xe00/0xf00 lookup 202"),
        "{rules}"
    );
    assert!(
        rules.contains("101:\tfrom all fwmark 0xc00/0xf00 lookup 203"),
        "{rules}"
    );
    let nft = String::from_utf8_lossy(
        &bed.t
            .exec(&node, &["nft", "list", "table", "inet", "identityd"])
            .stdout,
    )
    .into_owned();
    assert!(nft.contains("tproxy ip to :15001"), "{nft}");

    // The pod's TCP connection to a remote pod lands on the node's transparent listener,
    // which sees the original destination; nothing reaches the underlay.
    let pcap = tmp("proxy");
    let cap = bed.capture(&pcap);
    let listener = bed.t.spawn(&node, &[python3(), "-c", TRANSPARENT_LISTENER]);
    let mut out = BufReader::new(bed.t.child(listener).stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let before = c.counters().unwrap().get(Path::Proxy).packets;
    let pod = bed.pod.clone();
    let client = bed.t.try_exec(&pod, &[python3(), "-c", CLIENT]);
    assert!(
        client.status.success(),
        "client: {}",
        String::from_utf8_lossy(&client.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&client.stdout).trim(), "proxied");
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(
        rest.contains("orig 10.244.2.7 8080 peer 10.244.1.5"),
        "the listener saw the original destination: {rest}"
    );
    let after = c.counters().unwrap().get(Path::Proxy).packets;
    assert!(
        after >= before + 3,
        "handshake and data counted: {before} -> {after}"
    );
    let lines = bed.captured(cap, &pcap);
    let _ = std::fs::remove_file(&pcap);
    assert!(
        lines.is_empty(),
        "zero pod packets on the underlay, got:\n{}",
        lines.join("\n")
    );

    bed.t
        .run_in(&node, || routing::remove(&plan).expect("remove the plan"));
    let rules =
        String::from_utf8_lossy(&bed.t.exec(&node, &["ip", "rule", "show"]).stdout).into_owned();
    assert!(!rules.contains("fwmark"), "{rules}");
    let gone = bed
        .t
        .try_exec(&node, &["nft", "list", "table", "inet", "identityd"]);
    assert!(!gone.status.success(), "nft table removed");
}
