//! Shared setup for the WireGuard e2e tests: a cluster of node namespaces joined by an
//! underlay bridge, one pod namespace per node, one `identityd-wg` device process per node,
//! plus helpers for traffic (ICMP, TCP with a canary payload) and underlay captures.
#![allow(dead_code)] // Reason: each test file uses a different subset of these helpers.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use identityd_tests::netns::Topology;
use identityd_tests::tools;
use identityd_topology::Underlay;

/// The WireGuard port the devices listen on (DESIGN.md default).
pub(crate) const WG_PORT: u16 = 51871;

/// The `identityd-wg` binary: `$IDENTITYD_WG_BIN`, or next to this test's `deps/` folder
/// (cargo builds it whenever `identityd-wg` is in the tested packages, e.g. `--workspace`).
pub(crate) fn wg_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("IDENTITYD_WG_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let bin = dir.join("identityd-wg");
    assert!(
        bin.is_file(),
        "identityd-wg binary not found at {}: build it with `cargo build -p identityd-wg` \
         (or test with `-p identityd-wg -p identityd-tests` / `--workspace`), or set IDENTITYD_WG_BIN",
        bin.display()
    );
    bin
}

/// One node: its namespace, its pod, its device.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) ns: String,
    pub(crate) pod_ns: String,
    pub(crate) iface: String,
    pub(crate) underlay_ip: Ipv4Addr,
    pub(crate) pod_ip: Ipv4Addr,
    pub(crate) pod_cidr: String,
    pub(crate) key_path: PathBuf,
    pub(crate) config_path: PathBuf,
    pub(crate) public_key: String,
    /// The key it rotates to, while it rotates (file and public key).
    pub(crate) next_key: Option<(PathBuf, String)>,
    /// The second key only answers (a retired or withdrawn one), never preferred for sending.
    pub(crate) next_answer_only: bool,
    pub(crate) child: Option<usize>,
}

/// Nodes + pods + underlay, with one device process per node.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) topo: Topology,
    pub(crate) underlay_ns: String,
    pub(crate) bridge: String,
    pub(crate) nodes: Vec<Node>,
    pub(crate) dir: tempfile::TempDir,
    /// Every node reads and writes its TUN with offloads (else node 1 only).
    pub(crate) offload_all: bool,
}

impl Cluster {
    /// Builds `n` nodes (10.99.0.1X on the underlay, pods 10.244.X.2/24) and starts a device
    /// on each with every other node as a peer. Each node also has a default route to the
    /// underlay gateway (10.99.0.1), so anything not routed into the tunnel *would* leave in
    /// clear — which is what the captures look for.
    pub(crate) fn new(test: &str, n: usize) -> Self {
        Self::new_with_offload(test, n, false)
    }

    /// As [`Cluster::new`]; with `offload_all`, every node's device runs with TUN offloads
    /// (TSO reads, coalesced writes), not only node 1's.
    pub(crate) fn new_with_offload(test: &str, n: usize, offload_all: bool) -> Self {
        identityd_tests::require_root();
        // Fail (never skip) when a tool is missing.
        let _ = (tools::ip(), tools::wg(), tools::ping(), tools::tcpdump());
        let bin = wg_bin();
        let mut topo = Topology::new(test);
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = topo.add_cluster(n);
        let Underlay::Namespace {
            ns: underlay_ns,
            bridge: br,
        } = spec.underlay.clone()
        else {
            unreachable!("add_cluster puts the underlay in a namespace")
        };
        let mut nodes = Vec::new();
        for (k, node) in spec.nodes.iter().enumerate() {
            let i = k + 1;
            let (ns, pod) = (node.ns.clone(), &node.pods[0]);
            let (pod_ns, underlay_ip, pod_ip) = (pod.ns.clone(), node.underlay_ip, pod.ip);
            let key_path = dir.path().join(format!("n{i}/state/wg.key"));
            let out = Command::new(&bin)
                .args(["pubkey", "--key"])
                .arg(&key_path)
                .output()
                .expect("run identityd-wg pubkey");
            assert!(out.status.success(), "identityd-wg pubkey: {out:?}");
            let public_key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
            nodes.push(Node {
                iface: format!("w{}{i}", topo.tag()),
                config_path: dir.path().join(format!("n{i}/wg.json")),
                ns,
                pod_ns,
                underlay_ip,
                pod_ip,
                pod_cidr: format!("10.244.{i}.0/24"),
                key_path,
                public_key,
                next_key: None,
                next_answer_only: false,
                child: None,
            });
        }
        let mut c = Self {
            topo,
            underlay_ns,
            bridge: br,
            nodes,
            dir,
            offload_all,
        };
        for i in 0..n {
            let peers: Vec<usize> = (0..n).filter(|&j| j != i).collect();
            c.write_config(i, &peers);
        }
        for i in 0..n {
            c.start(i);
        }
        c
    }

    /// Writes node `i`'s config with `peers` (indices) as its peers.
    pub(crate) fn write_config(&self, i: usize, peers: &[usize]) {
        let node = &self.nodes[i];
        let peers: Vec<serde_json::Value> = peers
            .iter()
            .map(|&j| {
                let p = &self.nodes[j];
                let mut v = serde_json::json!({
                    "public_key": p.public_key,
                    "endpoint": format!("{}:{WG_PORT}", p.underlay_ip),
                    "pod_cidrs": [p.pod_cidr],
                });
                if let Some((_, next)) = &p.next_key {
                    v["next_public_key"] = next.clone().into();
                }
                v
            })
            .collect();
        let cfg = serde_json::json!({
            "interface": node.iface,
            "key_path": node.key_path,
            "listen_port": WG_PORT,
            "underlay_mtu": 1500,
            "cluster_cidrs": ["10.244.0.0/16"],
            "local_cidrs": [node.pod_cidr],
            "persist": true,
            // Node 1 reads its TUN with segmentation offload, the others without: every
            // test crosses both datapaths.
            "offload": i == 0 || self.offload_all,
            "backend": "userspace",
            "peers": peers,
        });
        let mut cfg = cfg;
        if let Some((path, _)) = &node.next_key {
            cfg["next_key_path"] = path.display().to_string().into();
            if node.next_answer_only {
                cfg["next_key_answer_only"] = true.into();
            }
        }
        let tmp = node.config_path.with_extension("tmp");
        std::fs::create_dir_all(tmp.parent().unwrap()).unwrap();
        std::fs::write(&tmp, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
        std::fs::rename(&tmp, &node.config_path).unwrap();
    }

    /// Starts node `i`'s device and waits until `wg show` answers on its UAPI socket.
    pub(crate) fn start(&mut self, i: usize) {
        let bin = wg_bin();
        let (ns, cfg) = (self.nodes[i].ns.clone(), self.nodes[i].config_path.clone());
        let idx = self.topo.spawn(
            &ns,
            &[
                bin.to_str().unwrap(),
                "run",
                "--config",
                cfg.to_str().unwrap(),
            ],
        );
        self.nodes[i].child = Some(idx);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.topo.child(idx).try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = self.topo.child(idx).stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("identityd-wg on {ns} exited ({status}): {err}");
            }
            let out = Command::new(tools::wg())
                .args(["show", &self.nodes[i].iface, "public-key"])
                .output()
                .unwrap();
            if out.status.success() {
                // Routes are installed right after the device answers; wait for them too.
                let routes = self
                    .topo
                    .exec(&ns, &["ip", "route", "show", "dev", &self.nodes[i].iface]);
                if String::from_utf8_lossy(&routes.stdout).contains("10.244.0.0/16") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "identityd-wg on {ns} not ready in 10s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Node `i`'s links (identityd's `get=identityd-links` UAPI extension).
    pub(crate) fn links(&self, i: usize) -> Vec<identityd_wg::uapi::LinkStatus> {
        use std::io::BufRead as _;
        let path = identityd_wg::uapi::socket_path(&self.nodes[i].iface);
        let mut s = std::os::unix::net::UnixStream::connect(&path).expect("UAPI socket");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "{}\n\n", identityd_wg::uapi::GET_LINKS).unwrap();
        let mut text = String::new();
        for line in std::io::BufReader::new(s).lines().map_while(Result::ok) {
            if line.is_empty() {
                break;
            }
            text.push_str(&line);
            text.push('\n');
        }
        assert!(text.contains("errno=0"), "get links: {text}");
        identityd_wg::uapi::parse_links(&text)
    }

    /// A new key file for node `i` (0600, by `identityd-wg pubkey`); returns (file, public).
    pub(crate) fn new_key(&self, i: usize, name: &str) -> (PathBuf, String) {
        let path = self.dir.path().join(format!("n{}/state/{name}", i + 1));
        let out = Command::new(wg_bin())
            .args(["pubkey", "--key"])
            .arg(&path)
            .output()
            .expect("run identityd-wg pubkey");
        assert!(out.status.success(), "identityd-wg pubkey: {out:?}");
        (
            path,
            String::from_utf8(out.stdout).unwrap().trim().to_owned(),
        )
    }

    /// Kills node `i`'s device (SIGKILL: no chance to clean up, the worst case).
    /// The device's own counters (`get=identityd-counters` on its UAPI socket).
    pub(crate) fn device_counters(&self, i: usize) -> std::collections::BTreeMap<String, u64> {
        use std::io::{BufRead as _, BufReader};
        let path = identityd_wg::uapi::socket_path(&self.nodes[i].iface);
        let mut s = std::os::unix::net::UnixStream::connect(&path)
            .unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        s.write_all(format!("{}\n\n", identityd_wg::uapi::GET_COUNTERS).as_bytes())
            .unwrap();
        let mut out = std::collections::BTreeMap::new();
        for line in BufReader::new(s).lines().map_while(Result::ok) {
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once('=')
                && let Ok(v) = v.parse()
            {
                out.insert(k.to_owned(), v);
            }
        }
        out
    }

    pub(crate) fn kill(&mut self, i: usize) {
        let idx = self.nodes[i].child.take().expect("device running");
        let c = self.topo.child(idx);
        let _ = c.kill();
        let _ = c.wait();
    }

    /// `wg show <iface> <what>` output.
    pub(crate) fn wg_show(&self, i: usize, what: &str) -> String {
        let out = Command::new(tools::wg())
            .args(["show", &self.nodes[i].iface, what])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "wg show {} {what}: {out:?}",
            self.nodes[i].iface
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Peer public key → latest handshake (unix seconds, 0 = never), from `wg show`.
    pub(crate) fn handshakes(&self, i: usize) -> Vec<(String, u64)> {
        self.wg_show(i, "latest-handshakes")
            .lines()
            .filter_map(|l| {
                let (k, t) = l.split_once('\t')?;
                Some((k.to_owned(), t.trim().parse().ok()?))
            })
            .collect()
    }

    /// Pings `to` from pod `from`: `count` packets with the given payload pattern.
    pub(crate) fn ping(&self, from: usize, to: Ipv4Addr, count: u32, pattern_hex: &str) -> bool {
        self.topo
            .try_exec(
                &self.nodes[from].pod_ns,
                &[
                    "ping",
                    "-c",
                    &count.to_string(),
                    "-i",
                    "0.1",
                    "-W",
                    "1",
                    "-p",
                    pattern_hex,
                    &to.to_string(),
                ],
            )
            .status
            .success()
    }

    /// Pings until one succeeds (first packets may wait for a handshake), up to `secs`.
    pub(crate) fn ping_until(
        &self,
        from: usize,
        to: Ipv4Addr,
        secs: u64,
        pattern_hex: &str,
    ) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if self.ping(from, to, 1, pattern_hex) {
                return true;
            }
        }
        false
    }

    /// Listens on TCP `port` in pod `to`, connects from pod `from`, sends `payload`, and
    /// returns what the server received (None when the connection failed).
    pub(crate) fn tcp_send(
        &self,
        from: usize,
        to: usize,
        port: u16,
        payload: &[u8],
    ) -> Option<Vec<u8>> {
        let addr = SocketAddr::from((self.nodes[to].pod_ip, port));
        let listener = self.topo.run_in(&self.nodes[to].pod_ns, || {
            TcpListener::bind(addr).expect("bind in pod")
        });
        listener.set_nonblocking(true).unwrap();
        let server = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        let mut buf = Vec::new();
                        let _ = s.read_to_end(&mut buf);
                        return Some(buf);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            return None;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => return None,
                }
            }
        });
        let sent = self.topo.run_in(&self.nodes[from].pod_ns, || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
            s.write_all(payload).ok()?;
            s.shutdown(std::net::Shutdown::Write).ok()
        });
        let got = server.join().unwrap();
        sent.and(got)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The UAPI socket path is global: remove ours (SIGKILLed devices leave them).
        for n in &self.nodes {
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", n.iface));
        }
    }
}

/// A tcpdump capture on the underlay bridge (promiscuous, so it sees every frame the bridge
/// forwards between nodes; `-i any` inside a namespace does not).
#[derive(Debug)]
pub(crate) struct Capture {
    pid: u32,
    idx: usize,
    pub(crate) path: PathBuf,
}

impl Capture {
    pub(crate) fn start(c: &mut Cluster, name: &str) -> Self {
        let path = c.dir.path().join(format!("{name}.pcap"));
        let bridge = c.bridge.clone();
        let idx = c.topo.spawn(
            &c.underlay_ns,
            &[
                tools::tcpdump().to_str().unwrap(),
                "-i",
                &bridge,
                "--immediate-mode",
                "-n",
                "-U",
                "-s",
                "0",
                "-w",
                path.to_str().unwrap(),
            ],
        );
        let pid = c.topo.child(idx).id();
        // tcpdump writes the file header once it is capturing.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::metadata(&path).map_or(0, |m| m.len()) < 24 {
            assert!(Instant::now() < deadline, "tcpdump did not start capturing");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        Self { pid, idx, path }
    }

    /// Stops tcpdump (SIGINT, so it flushes) and returns the raw file and its packets.
    pub(crate) fn stop(self, c: &mut Cluster) -> (Vec<u8>, Vec<Packet>) {
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(i32::try_from(self.pid).unwrap(), libc::SIGINT);
        }
        let child = c.topo.child(self.idx);
        let _ = child.wait();
        if let Some(mut e) = child.stderr.take() {
            let mut s = String::new();
            let _ = e.read_to_string(&mut s);
            eprintln!("tcpdump: {}", s.trim().replace('\n', "; "));
        }
        let bytes = std::fs::read(&self.path).expect("read capture");
        let pkts = parse_pcap(&bytes);
        (bytes, pkts)
    }
}

/// One captured frame: its network-layer protocol and bytes from the network header on.
#[derive(Debug, Clone)]
pub(crate) struct Packet {
    pub(crate) ethertype: u16,
    pub(crate) l3: Vec<u8>,
}

impl Packet {
    /// IPv4 (src, dst, protocol, src port, dst port) when this is IPv4.
    pub(crate) fn ipv4(&self) -> Option<(Ipv4Addr, Ipv4Addr, u8, u16, u16)> {
        if self.ethertype != 0x0800 || self.l3.len() < 20 {
            return None;
        }
        let ihl = usize::from(self.l3[0] & 0x0f) * 4;
        let src = Ipv4Addr::new(self.l3[12], self.l3[13], self.l3[14], self.l3[15]);
        let dst = Ipv4Addr::new(self.l3[16], self.l3[17], self.l3[18], self.l3[19]);
        let proto = self.l3[9];
        let (sp, dp) = if self.l3.len() >= ihl + 4 {
            (
                u16::from_be_bytes([self.l3[ihl], self.l3[ihl + 1]]),
                u16::from_be_bytes([self.l3[ihl + 2], self.l3[ihl + 3]]),
            )
        } else {
            (0, 0)
        };
        Some((src, dst, proto, sp, dp))
    }
}

/// Parses a pcap file (Ethernet, Linux cooked v1 or v2 link types).
pub(crate) fn parse_pcap(b: &[u8]) -> Vec<Packet> {
    assert!(b.len() >= 24, "capture file too short ({} bytes)", b.len());
    let magic = u32::from_le_bytes(b[0..4].try_into().unwrap());
    assert!(
        magic == 0xa1b2_c3d4 || magic == 0xa1b2_3c4d,
        "not a little-endian pcap file (magic {magic:#x})"
    );
    let linktype = u32::from_le_bytes(b[20..24].try_into().unwrap());
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= b.len() {
        let caplen = u32::from_le_bytes(b[off + 8..off + 12].try_into().unwrap()) as usize;
        off += 16;
        if off + caplen > b.len() {
            break; // truncated last record
        }
        let f = &b[off..off + caplen];
        off += caplen;
        let (ethertype, l3) = match linktype {
            1 if f.len() >= 14 => (u16::from_be_bytes([f[12], f[13]]), &f[14..]),
            113 if f.len() >= 16 => (u16::from_be_bytes([f[14], f[15]]), &f[16..]),
            276 if f.len() >= 20 => (u16::from_be_bytes([f[0], f[1]]), &f[20..]),
            1 | 113 | 276 => continue,
            other => panic!("unexpected pcap link type {other}"),
        };
        out.push(Packet {
            ethertype,
            l3: l3.to_vec(),
        });
    }
    out
}

/// Whether `needle` occurs anywhere in `hay`.
pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Asserts the capture holds only ARP and WireGuard UDP between `nodes` on `WG_PORT`, no
/// packet to or from a pod address, and none of `canaries` anywhere in the captured bytes.
/// Returns the number of WireGuard packets seen.
pub(crate) fn assert_only_wireguard(
    raw: &[u8],
    pkts: &[Packet],
    nodes: &[Ipv4Addr],
    canaries: &[&[u8]],
) -> usize {
    let mut wg = 0;
    for (n, p) in pkts.iter().enumerate() {
        if p.ethertype == 0x0806 {
            continue; // ARP for the node addresses
        }
        let Some((src, dst, proto, sp, dp)) = p.ipv4() else {
            panic!(
                "packet {n}: non-IPv4, non-ARP frame on the underlay (ethertype {:#06x})",
                p.ethertype
            );
        };
        if proto == 2 && dst.octets()[..3] == [224, 0, 0] && !pod(src) {
            continue; // IGMP membership reports of the bridge itself (link-local control)
        }
        assert!(
            !pod(src) && !pod(dst),
            "packet {n}: pod address in clear on the underlay: {src} -> {dst} proto {proto}"
        );
        assert!(
            proto == 17
                && nodes.contains(&src)
                && nodes.contains(&dst)
                && (sp == WG_PORT || dp == WG_PORT),
            "packet {n}: not WireGuard between nodes: {src}:{sp} -> {dst}:{dp} proto {proto}"
        );
        wg += 1;
    }
    for c in canaries {
        assert!(
            !contains(raw, c),
            "canary {:?} found in clear in the capture",
            String::from_utf8_lossy(c)
        );
    }
    wg
}

fn pod(ip: Ipv4Addr) -> bool {
    ip.octets()[..2] == [10, 244]
}

/// Unix time now, in seconds.
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The bytes of a ping `-p` pattern (hex) as they appear in the ICMP payload.
pub(crate) fn pattern_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}
