//! Bench (not a test): ns per packet of the path classifier against nftables doing the same
//! classification. Needs root. Writes a JSON report.
//!
//! ```text
//! cargo run --release -p identityd-bpf --example classifier_bench -- [--out FILE] [--quick]
//! ```
//!
//! Two methods:
//!
//! 1. `BPF_PROG_TEST_RUN` (`repeat`): the kernel runs the program on a crafted packet and
//!    reports the mean time per run; with 10, 10k and 1M /28 prefixes in the LPM trie.
//!    nftables has no equivalent of `BPF_PROG_TEST_RUN`, so:
//! 2. Send path, side by side: inside a private network namespace, one thread sends UDP
//!    datagrams (unconnected, cycling over 64 destinations inside the prefixes) out of a veth
//!    whose peer drops them. Variants: nothing installed (baseline); the classifier on tc
//!    egress; an nftables output chain with an interval map (`meta mark set ip daddr map
//!    @routes`); an nftables chain of one rule per prefix. Each variant's cost is its time
//!    per packet minus the baseline's, median over alternating rounds.
#![allow(clippy::cast_precision_loss)] // Reason: ns figures as f64 for the report.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use identityd_bpf::net::nth_v4_slash28;
use identityd_bpf::packet::{self, L4};
use identityd_bpf::{Cidr, Classifier, ClassifierConfig, Direction, FlowEvents, Route, RouteKind};
use serde_json::{Value, json};

const SLASH28S_IN_SLASH8: u32 = 1 << 20;
const LOCAL: &str = "192.168.1.0/24";
const SRC: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);

/// The `n` prefixes used at size `n`: /28s spread evenly over 10.0.0.0/8.
fn prefixes(n: u32) -> impl Iterator<Item = Cidr> {
    let stride = (SLASH28S_IN_SLASH8 / n).max(1);
    (0..n).map(move |i| nth_v4_slash28(i * stride))
}

/// 64 destinations inside random prefixes of size `n` (deterministic).
fn destinations(n: u32) -> Vec<Ipv4Addr> {
    let stride = (SLASH28S_IN_SLASH8 / n).max(1);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..64)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = u32::try_from(x % u64::from(n)).unwrap_or(0);
            let IpAddr::V4(base) = nth_v4_slash28(i * stride).addr() else {
                unreachable!()
            };
            Ipv4Addr::from(u32::from(base) + 1)
        })
        .collect()
}

fn load(n: u32) -> anyhow::Result<(Classifier, Duration)> {
    let mut c = Classifier::load(&ClassifierConfig {
        max_routes: 2 * n + 16,
        flow_events: FlowEvents::None,
        ..ClassifierConfig::default()
    })?;
    c.set_route(
        LOCAL.parse()?,
        Route {
            kind: RouteKind::Local,
            node_id: 1,
        },
    )?;
    c.set_route(
        "10.0.0.0/8".parse()?,
        Route {
            kind: RouteKind::Unavailable,
            node_id: 0,
        },
    )?;
    let start = Instant::now();
    for (i, p) in prefixes(n).enumerate() {
        let node_id = u32::try_from(i % 1000).unwrap_or(0) + 2;
        c.set_route(
            p,
            Route {
                kind: RouteKind::WireGuard,
                node_id,
            },
        )?;
    }
    Ok((c, start.elapsed()))
}

/// Mean ns per run over `dsts`, each run `repeat` times by the kernel.
fn test_run_ns(c: &Classifier, src: IpAddr, dsts: &[IpAddr], repeat: u32) -> anyhow::Result<f64> {
    let mut buf = Vec::new();
    let mut total = 0.0;
    for d in dsts {
        packet::build(&mut buf, src, *d, L4::Udp, (40000, 8080), 64);
        let out = c.test_run(&buf, 0, repeat)?;
        total += out.duration.as_nanos() as f64;
    }
    Ok(total / dsts.len() as f64)
}

fn bench_test_run(sizes: &[u32], repeat: u32) -> anyhow::Result<Value> {
    let mut rows = Vec::new();
    for &n in sizes {
        eprintln!("[bench] BPF_PROG_TEST_RUN, {n} prefixes: loading");
        let (mut c, insert) = load(n)?;
        let dsts: Vec<IpAddr> = destinations(n).into_iter().map(IpAddr::V4).collect();
        // Sanity: the classifier marks these for WireGuard.
        let mut buf = Vec::new();
        packet::build(&mut buf, IpAddr::V4(SRC), dsts[0], L4::Udp, (1, 2), 64);
        let check = c.test_run(&buf, 0, 1)?;
        if check.mark != 0x0e00 {
            bail!("sanity check: expected mark 0xe00, got {check:?}");
        }
        let routed = test_run_ns(&c, IpAddr::V4(SRC), &dsts, repeat)?;
        let other = test_run_ns(
            &c,
            IpAddr::V4(SRC),
            &[IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8))],
            repeat,
        )?;
        let dropped = test_run_ns(
            &c,
            IpAddr::V4(SRC),
            &[IpAddr::V4(Ipv4Addr::new(10, 255, 255, 241))],
            repeat,
        )?;
        let arp = {
            let out = c.test_run(&packet::arp(), 0, repeat)?;
            out.duration.as_nanos() as f64
        };
        // IPv6 at the smaller sizes: /64s under fd00::/16.
        let v6 = if n <= 10_000 {
            c.set_route(
                "fd01::/64".parse()?,
                Route {
                    kind: RouteKind::Local,
                    node_id: 1,
                },
            )?;
            let mut dsts6 = Vec::new();
            for i in 0..n {
                let hi = u16::try_from(i >> 16).unwrap_or(0);
                let lo = u16::try_from(i & 0xffff).unwrap_or(0);
                let a = Ipv6Addr::new(0xfd00, hi, lo, 0, 0, 0, 0, 0);
                c.set_route(
                    Cidr::new(IpAddr::V6(a), 64)?,
                    Route {
                        kind: RouteKind::WireGuard,
                        node_id: 2,
                    },
                )?;
                if dsts6.len() < 64 && i % (n / 64).max(1) == 0 {
                    dsts6.push(IpAddr::V6(Ipv6Addr::new(0xfd00, hi, lo, 0, 0, 0, 0, 1)));
                }
            }
            let src6 = IpAddr::V6("fd01::5".parse()?);
            Some(test_run_ns(&c, src6, &dsts6, repeat)?)
        } else {
            None
        };
        rows.push(json!({
            "prefixes": n,
            "insert_seconds": insert.as_secs_f64(),
            "insert_ns_per_prefix": insert.as_nanos() as f64 / f64::from(n),
            "ns_per_packet": {
                "ipv4_routed_wireguard": routed,
                "ipv4_not_pod_traffic_pass": other,
                "ipv4_strict_drop_no_path": dropped,
                "ipv6_routed_wireguard": v6,
                "non_ip_floor": arp,
            },
        }));
        eprintln!(
            "[bench]   ipv4 routed {routed:.1} ns, pass {other:.1} ns, drop {dropped:.1} ns, floor {arp:.1} ns, ipv6 {v6:?}"
        );
    }
    Ok(json!({
        "method": "BPF_PROG_TEST_RUN with repeat; the kernel's mean duration per run, averaged over 64 destinations in random prefixes (IPv4 /28s spread over 10.0.0.0/8, IPv6 /64s)",
        "repeat": repeat,
        "rows": rows,
    }))
}

fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nft(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft -f failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn nft_map(n: u32) -> String {
    let mut s = String::from(
        "table inet bench {\n map routes { type ipv4_addr : mark; flags interval;\n elements = { ",
    );
    let elems: Vec<String> = prefixes(n).map(|p| format!("{p} : 0xe00")).collect();
    s.push_str(&elems.join(", "));
    s.push_str(" }\n }\n chain out { type filter hook output priority mangle; policy accept;\n");
    s.push_str(&format!(
        "  ip saddr {LOCAL} meta mark set ip daddr map @routes\n"
    ));
    s.push_str(" }\n}\n");
    s
}

fn nft_chain(n: u32) -> String {
    let mut s = String::from(
        "table inet bench {\n chain out { type filter hook output priority mangle; policy accept;\n",
    );
    for p in prefixes(n) {
        s.push_str(&format!(
            "  ip saddr {LOCAL} ip daddr {p} meta mark set 0xe00 accept\n"
        ));
    }
    s.push_str(" }\n}\n");
    s
}

/// Sends datagrams cycling over `dsts` for about `budget` (at least 20k); ns per packet.
/// Fails when sends fail (the figure would not be the output path's).
fn send_ns(sock: &UdpSocket, dsts: &[SocketAddr], budget: Duration) -> anyhow::Result<f64> {
    let payload = [0u8; 64];
    for d in dsts.iter().cycle().take(5_000) {
        let _ = sock.send_to(&payload, d);
    }
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut failed: u64 = 0;
    while sent < 20_000 || start.elapsed() < budget {
        for d in dsts {
            if sock.send_to(&payload, d).is_err() {
                failed += 1;
            }
        }
        sent += dsts.len() as u64;
        if start.elapsed() > budget * 20 {
            break;
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / sent as f64;
    if failed * 100 > sent {
        bail!(
            "{failed} of {sent} sends failed: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(ns)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn enter_private_netns() -> anyhow::Result<()> {
    // SAFETY: unshare(CLONE_NEWNET) has no memory-safety preconditions; it moves only the
    // calling thread (this bench's main thread, which does all the netns work) into a new,
    // private network namespace that disappears with the process.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
    }
    sh(&["ip", "link", "set", "lo", "up"])?;
    sh(&[
        "ip", "link", "add", "bencha", "type", "veth", "peer", "name", "benchb",
    ])?;
    sh(&["ip", "addr", "add", "192.168.1.1/24", "dev", "bencha"])?;
    sh(&["ip", "link", "set", "bencha", "up"])?;
    sh(&["ip", "link", "set", "benchb", "up"])?;
    let mac = sh(&["cat", "/sys/class/net/benchb/address"]).unwrap_or_default();
    let mac = if mac.trim().is_empty() {
        // /sys shows the original namespace: ask ip instead.
        let out = sh(&["ip", "-o", "link", "show", "benchb"])?;
        out.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .context("benchb's MAC")?
            .to_owned()
    } else {
        mac.trim().to_owned()
    };
    sh(&[
        "ip",
        "neigh",
        "replace",
        "192.168.1.2",
        "lladdr",
        &mac,
        "dev",
        "bencha",
        "nud",
        "permanent",
    ])?;
    sh(&["ip", "route", "add", "10.0.0.0/8", "via", "192.168.1.2"])?;
    Ok(())
}

fn bench_send_path(
    sizes: &[u32],
    nft_sizes: &[u32],
    rounds: usize,
    budget: Duration,
) -> anyhow::Result<Value> {
    enter_private_netns()?;
    let sock = UdpSocket::bind((SRC, 0))?;
    let mut rows = Vec::new();
    let all: Vec<u32> = {
        let mut v: Vec<u32> = sizes.iter().chain(nft_sizes).copied().collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    for n in all {
        let dsts: Vec<SocketAddr> = destinations(n)
            .into_iter()
            .map(|a| SocketAddr::new(IpAddr::V4(a), 9))
            .collect();
        let mut variants: Vec<(&str, Vec<f64>)> = vec![("baseline", Vec::new())];
        let bpf = if sizes.contains(&n) {
            eprintln!("[bench] send path, {n} prefixes: loading the classifier");
            let (c, _) = load(n)?;
            variants.push(("bpf_classifier_tc_egress", Vec::new()));
            Some(c)
        } else {
            None
        };
        let mut bpf = bpf;
        let nft_here = nft_sizes.contains(&n);
        if nft_here {
            variants.push(("nft_interval_map", Vec::new()));
            variants.push(("nft_rule_chain", Vec::new()));
        }
        let map_text = nft_here.then(|| nft_map(n));
        let chain_text = nft_here.then(|| nft_chain(n));
        for round in 0..rounds {
            for (name, samples) in &mut variants {
                match *name {
                    "bpf_classifier_tc_egress" => {
                        if let Some(c) = bpf.as_mut() {
                            c.attach("bencha", Direction::Egress)?;
                        }
                    }
                    "nft_interval_map" => nft(map_text.as_deref().unwrap_or_default())?,
                    "nft_rule_chain" => nft(chain_text.as_deref().unwrap_or_default())?,
                    _ => {}
                }
                let ns = send_ns(&sock, &dsts, budget)?;
                samples.push(ns);
                match *name {
                    "bpf_classifier_tc_egress" => {
                        if let Some(c) = bpf.as_mut() {
                            c.detach("bencha", Direction::Egress)?;
                        }
                    }
                    "nft_interval_map" | "nft_rule_chain" => nft("delete table inet bench\n")?,
                    _ => {}
                }
                eprintln!("[bench]   {n} prefixes, round {round}, {name}: {ns:.0} ns/packet");
            }
        }
        let base = median(variants[0].1.clone());
        let mut row = serde_json::Map::new();
        row.insert("prefixes".into(), json!(n));
        if let Some(c) = &bpf {
            // Sanity: the classifier really classified the sent packets.
            let counters = c.counters()?;
            let wg = counters.get(identityd_bpf::Path::WireGuard).packets;
            if wg == 0 {
                bail!("the classifier on bencha marked nothing: {counters:?}");
            }
            row.insert("bpf_packets_marked_wireguard".into(), json!(wg));
        }
        for (name, samples) in variants {
            let m = median(samples.clone());
            row.insert(
                name.into(),
                json!({
                    "ns_per_packet_median": m,
                    "ns_over_baseline": if name == "baseline" { 0.0 } else { m - base },
                    "samples": samples,
                }),
            );
        }
        rows.push(Value::Object(row));
    }
    Ok(json!({
        "method": "one thread sends 64-byte UDP datagrams (unconnected sendto, 64 destinations in random prefixes) out of a veth in a private netns; the peer drops them. Variants alternate per round; cost = median ns/packet minus the baseline's. nft chains are `type filter hook output priority mangle`; the classifier is on tc egress of the same veth (TCX).",
        "rounds": rounds,
        "budget_ms_per_sample": budget.as_millis(),
        "rows": rows,
    }))
}

fn main() -> anyhow::Result<()> {
    let mut out = std::path::PathBuf::from("target/bench/classifier.json");
    let mut quick = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = args.next().context("--out FILE")?.into(),
            "--quick" => quick = true,
            other => bail!("unknown argument `{other}` (expected --out FILE, --quick)"),
        }
    }
    let (sizes, repeat, rounds, budget) = if quick {
        (vec![10, 10_000], 10_000, 3, Duration::from_millis(300))
    } else {
        (
            vec![10, 10_000, 1_000_000],
            100_000,
            5,
            Duration::from_millis(1000),
        )
    };
    let nft_sizes = [10, 10_000];
    let uname = sh(&["uname", "-r"]).unwrap_or_default();
    let test_run = bench_test_run(&sizes, repeat)?;
    let send_path = bench_send_path(&sizes, &nft_sizes, rounds, budget)?;
    let report = json!({
        "bench": "classifier_bench",
        "kernel": uname.trim(),
        "cpus": std::thread::available_parallelism().map(usize::from).unwrap_or(0),
        "note": "shared, noisy 2-core machine: compare columns of one run, not across runs",
        "bpf_prog_test_run": test_run,
        "send_path": send_path,
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    eprintln!("[bench] wrote {}", out.display());
    Ok(())
}
