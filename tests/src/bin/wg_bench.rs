//! `wg_bench`: iperf3 TCP pod→pod throughput, side by side in the same topology, through
//! (a) identityd's userspace WireGuard device (`identityd-wg`) with each I/O offload alone and
//! all together, (b) boringtun-cli, and (c) plaintext over the veth underlay; 1 and 4 streams.
//! Writes a JSON report. Not a test: run it on purpose.
//!
//! ```text
//! scripts/bench-wg                      # builds release binaries, runs, writes <target>/wg-bench.json
//! wg_bench [--seconds 8] [--repeats 3] [--streams 1,4] [--out FILE] [--without-boringtun]
//!          [--only KEY,KEY]
//! ```
//!
//! Topology per run: namespaces for an underlay bridge, two nodes (10.99.0.11/.12) and one pod
//! per node (10.244.1.2, 10.244.2.2); iperf3 runs pod 1 → pod 2. Runs are interleaved (every
//! variant once per round) so machine noise hits all alike; the report keeps every sample and
//! the median. CPU seconds per GB are the whole machine's busy time (`/proc/stat`: both
//! tunnel ends, iperf3 and the kernel) over the bytes received.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use identityd_tests::netns::Topology;
use identityd_tests::tools;

const PORT: u16 = 51871;

/// identityd-wg's I/O offloads for one variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Offloads {
    tun: bool,
    udp_gso: bool,
    udp_gro: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Identityd(Offloads),
    Boringtun,
    Plaintext,
}

impl Mode {
    fn key(self) -> &'static str {
        match self {
            Self::Identityd(o) => match (o.tun, o.udp_gso, o.udp_gro) {
                (false, false, false) => "identityd_no_offload",
                (true, false, false) => "identityd_tun_tso",
                (false, true, false) => "identityd_udp_gso",
                (false, false, true) => "identityd_udp_gro",
                (true, true, false) => "identityd_tun_tso_udp_gso",
                (true, true, true) => "identityd",
                _ => "identityd_other",
            },
            Self::Boringtun => "boringtun_cli",
            Self::Plaintext => "plaintext",
        }
    }

    fn all() -> Vec<Self> {
        let o = |tun, udp_gso, udp_gro| {
            Self::Identityd(Offloads {
                tun,
                udp_gso,
                udp_gro,
            })
        };
        vec![
            o(true, true, true),
            o(false, false, false),
            o(true, false, false),
            o(false, true, false),
            o(false, false, true),
            o(true, true, false),
            Self::Boringtun,
            Self::Plaintext,
        ]
    }
}

#[derive(Debug)]
struct Args {
    seconds: u32,
    repeats: u32,
    streams: Vec<u32>,
    out: PathBuf,
    boringtun: bool,
    only: Option<Vec<String>>,
}

fn parse_args() -> anyhow::Result<Args> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| tools::workspace_root().join("target"), PathBuf::from);
    let mut a = Args {
        seconds: 8,
        repeats: 3,
        streams: vec![1, 4],
        out: target.join("wg-bench.json"),
        boringtun: true,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => a.seconds = it.next().context("--seconds N")?.parse()?,
            "--repeats" => a.repeats = it.next().context("--repeats N")?.parse()?,
            "--out" => a.out = it.next().context("--out FILE")?.into(),
            "--streams" => {
                a.streams = it
                    .next()
                    .context("--streams N,N")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--only" => {
                a.only = Some(
                    it.next()
                        .context("--only KEY,KEY")?
                        .split(',')
                        .map(str::to_owned)
                        .collect(),
                );
            }
            "--without-boringtun" => a.boringtun = false,
            "-h" | "--help" => {
                println!(
                    "wg_bench [--seconds N] [--repeats N] [--streams N,N] [--out FILE] [--without-boringtun] [--only KEY,KEY]\nkeys: {}",
                    Mode::all()
                        .iter()
                        .map(|m| m.key())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    Ok(a)
}

fn sibling_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.parent().context("exe folder")?.join(name);
    ensure!(
        p.is_file(),
        "{} not found next to wg_bench: build it with `cargo build --release -p identityd-wg` (scripts/bench-wg does)",
        p.display()
    );
    Ok(p)
}

fn boringtun_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("IDENTITYD_BORINGTUN") {
        return Ok(p.into());
    }
    let p = tools::tools_dir().join("bin/boringtun-cli");
    ensure!(
        p.is_file(),
        "boringtun-cli not found at {}: install it with `IDENTITYD_BENCH=1 scripts/bootstrap` \
         (runs `cargo install boringtun-cli --locked --root .tools`), or pass --without-boringtun",
        p.display()
    );
    Ok(p)
}

fn sh(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Bed {
    topo: Topology,
    nodes: [String; 2],
    pods: [String; 2],
    dir: PathBuf,
}

impl Bed {
    fn new(mode: Mode) -> anyhow::Result<Self> {
        let mut topo = Topology::new(&format!("wgb{}", &mode.key()[..3]));
        let dir = std::env::temp_dir().join(format!("idd-wg-bench-{}", topo.tag()));
        std::fs::create_dir_all(&dir)?;
        let spec = topo.add_cluster(2);
        let nodes: Vec<String> = spec.nodes.iter().map(|n| n.ns.clone()).collect();
        let pods: Vec<String> = spec.nodes.iter().map(|n| n.pods[0].ns.clone()).collect();
        Ok(Self {
            topo,
            nodes: [nodes[0].clone(), nodes[1].clone()],
            pods: [pods[0].clone(), pods[1].clone()],
            dir,
        })
    }

    fn iface(&self, i: usize) -> String {
        format!("b{}{}", self.topo.tag(), i + 1)
    }

    fn setup_plaintext(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            let other = 2 - i;
            self.topo.exec(
                n,
                &[
                    "ip",
                    "route",
                    "add",
                    &format!("10.244.{other}.0/24"),
                    "via",
                    &format!("10.99.0.1{other}"),
                ],
            );
        }
    }

    fn wait_socket(&self, iface: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Path::new(&format!("/var/run/wireguard/{iface}.sock")).exists() {
            ensure!(
                Instant::now() < deadline,
                "{iface}: UAPI socket did not appear"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn setup_identityd(&mut self, bin: &Path, o: Offloads) -> anyhow::Result<()> {
        let mut pubs = Vec::new();
        for i in 0..2 {
            let key = self.dir.join(format!("n{}.key", i + 1));
            pubs.push(
                sh(Command::new(bin).args(["pubkey", "--key"]).arg(&key))?
                    .trim()
                    .to_owned(),
            );
        }
        for i in 0..2 {
            let other = 1 - i;
            let cfg = format!(
                r#"{{"interface":"{}","key_path":"{}","listen_port":{PORT},"underlay_mtu":1500,
                "cluster_cidrs":["10.244.0.0/16"],"local_cidrs":["10.244.{}.0/24"],"persist":false,
                "offload":{},"udp_gso":{},"udp_gro":{},"backend":"userspace","peers":[{{"public_key":"{}","endpoint":"10.99.0.1{}:{PORT}",
                "pod_cidrs":["10.244.{}.0/24"]}}]}}"#,
                self.iface(i),
                self.dir.join(format!("n{}.key", i + 1)).display(),
                i + 1,
                o.tun,
                o.udp_gso,
                o.udp_gro,
                pubs[1 - i],
                other + 1,
                other + 1
            );
            let path = self.dir.join(format!("n{}.json", i + 1));
            std::fs::write(&path, cfg)?;
            let n = self.nodes[i].clone();
            self.topo.spawn(
                &n,
                &[
                    bin.to_str().unwrap(),
                    "run",
                    "--config",
                    path.to_str().unwrap(),
                ],
            );
        }
        for i in 0..2 {
            self.wait_socket(&self.iface(i))?;
        }
        // Routes follow the UAPI socket by a few milliseconds.
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    }

    fn setup_boringtun(&mut self, bin: &Path) -> anyhow::Result<()> {
        let wg = tools::wg();
        let mut keys = Vec::new();
        for i in 0..2 {
            let private = sh(Command::new(&wg).arg("genkey"))?;
            let path = self.dir.join(format!("bt{}.key", i + 1));
            std::fs::write(&path, &private)?;
            let public = sh(Command::new("sh").arg("-c").arg(format!(
                "{} pubkey < {}",
                wg.display(),
                path.display()
            )))?;
            keys.push((path, public.trim().to_owned()));
        }
        for i in 0..2 {
            let n = self.nodes[i].clone();
            let iface = self.iface(i);
            self.topo.spawn(
                &n,
                &[
                    bin.to_str().unwrap(),
                    "--foreground",
                    "--disable-drop-privileges",
                    &iface,
                ],
            );
        }
        for i in 0..2 {
            let o = 1 - i;
            let iface = self.iface(i);
            self.wait_socket(&iface)?;
            self.topo.exec(
                &self.nodes[i],
                &[
                    wg.to_str().unwrap(),
                    "set",
                    &iface,
                    "private-key",
                    keys[i].0.to_str().unwrap(),
                    "listen-port",
                    &PORT.to_string(),
                    "peer",
                    &keys[o].1,
                    "allowed-ips",
                    &format!("10.244.{}.0/24", o + 1),
                    "endpoint",
                    &format!("10.99.0.1{}:{PORT}", o + 1),
                ],
            );
            self.topo.exec(
                &self.nodes[i],
                &["ip", "link", "set", &iface, "up", "mtu", "1440"],
            );
            self.topo.exec(
                &self.nodes[i],
                &[
                    "ip",
                    "route",
                    "add",
                    &format!("10.244.{}.0/24", o + 1),
                    "dev",
                    &iface,
                ],
            );
        }
        Ok(())
    }

    fn udp_rcvbuf_errors(&self, i: usize) -> u64 {
        let out = self
            .topo
            .try_exec(&self.nodes[i], &["cat", "/proc/net/snmp"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
        let (Some(h), Some(v)) = (lines.next(), lines.next()) else {
            return 0;
        };
        h.split_whitespace()
            .zip(v.split_whitespace())
            .find(|(k, _)| *k == "RcvbufErrors")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    }

    fn iperf(&mut self, seconds: u32, streams: u32) -> anyhow::Result<Sample> {
        // Warm-up: the tunnels need a handshake first.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self
            .topo
            .try_exec(&self.pods[0], &["ping", "-c", "1", "-W", "1", "10.244.2.2"])
            .status
            .success()
        {
            ensure!(Instant::now() < deadline, "pod 1 cannot reach pod 2");
        }
        let iperf = tools::iperf3();
        let p2 = self.pods[1].clone();
        self.topo
            .spawn(&p2, &[iperf.to_str().unwrap(), "-s", "-1", "-p", "5201"]);
        std::thread::sleep(Duration::from_millis(300));
        let drops_before = self.udp_rcvbuf_errors(1) + self.udp_rcvbuf_errors(0);
        let busy_before = busy_cpu_seconds()?;
        let out = self.topo.try_exec(
            &self.pods[0],
            &[
                iperf.to_str().unwrap(),
                "-c",
                "10.244.2.2",
                "-p",
                "5201",
                "-t",
                &seconds.to_string(),
                "-P",
                &streams.to_string(),
                "-J",
            ],
        );
        let busy = busy_cpu_seconds()? - busy_before;
        let drops =
            (self.udp_rcvbuf_errors(1) + self.udp_rcvbuf_errors(0)).saturating_sub(drops_before);
        let json = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "iperf3 failed: {json}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(&json).context("iperf3 JSON")?;
        let sum = &v["end"]["sum_received"];
        let bps = sum["bits_per_second"]
            .as_f64()
            .context("no end.sum_received.bits_per_second in iperf3 JSON")?;
        let bytes = sum["bytes"].as_f64().unwrap_or(0.0);
        let retransmits = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
        Ok(Sample {
            gbps: bps / 1e9,
            cpu_s_per_gb: if bytes > 0.0 {
                busy / (bytes / 1e9)
            } else {
                0.0
            },
            udp_rcvbuf_errors: drops,
            retransmits,
        })
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        for i in 0..2 {
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.iface(i)));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One iperf3 run.
#[derive(Debug, Clone, Copy)]
struct Sample {
    gbps: f64,
    cpu_s_per_gb: f64,
    udp_rcvbuf_errors: u64,
    retransmits: u64,
}

/// Busy CPU time of the whole machine so far (`/proc/stat`, all but idle and iowait).
fn busy_cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("/proc/stat is empty")?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    ensure!(v.len() >= 5, "/proc/stat cpu line: {line}");
    // SAFETY: sysconf has no memory-safety preconditions.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let idle = v[3] + v[4];
    Ok((v.iter().sum::<f64>() - idle) / hz.max(1.0))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        0.0
    } else if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    }
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    identityd_tests::require_root();
    let _ = (tools::ip(), tools::iperf3(), tools::wg(), tools::ping());
    let idd = sibling_bin("identityd-wg")?;
    let bt = if args.boringtun {
        Some(boringtun_bin()?)
    } else {
        None
    };
    let modes: Vec<Mode> = Mode::all()
        .into_iter()
        .filter(|m| bt.is_some() || *m != Mode::Boringtun)
        .filter(|m| {
            args.only
                .as_ref()
                .is_none_or(|o| o.iter().any(|k| k == m.key()))
        })
        .collect();
    ensure!(
        !modes.is_empty(),
        "--only names no known variant (see --help)"
    );

    let mut samples: Vec<(Mode, u32, Sample)> = Vec::new();
    for round in 0..args.repeats {
        for &streams in &args.streams {
            for &m in &modes {
                let mut bed = Bed::new(m)?;
                match m {
                    Mode::Identityd(o) => bed.setup_identityd(&idd, o)?,
                    Mode::Boringtun => bed.setup_boringtun(bt.as_deref().unwrap())?,
                    Mode::Plaintext => bed.setup_plaintext(),
                }
                let s = bed.iperf(args.seconds, streams)?;
                eprintln!(
                    "[wg_bench] round {} streams {streams} {:<26} {:7.3} Gbit/s  {:6.2} CPU s/GB  retransmits {}  UDP rcvbuf errors {}",
                    round + 1,
                    m.key(),
                    s.gbps,
                    s.cpu_s_per_gb,
                    s.retransmits,
                    s.udp_rcvbuf_errors,
                );
                samples.push((m, streams, s));
            }
        }
    }

    let pick = |m: Mode, streams: u32, f: fn(&Sample) -> f64| -> Vec<f64> {
        samples
            .iter()
            .filter(|s| s.0 == m && s.1 == streams)
            .map(|s| f(&s.2))
            .collect()
    };
    let mut by_streams = serde_json::Map::new();
    for &streams in &args.streams {
        let mut results = serde_json::Map::new();
        for &m in &modes {
            let gbps = pick(m, streams, |s| s.gbps);
            results.insert(
                m.key().to_owned(),
                serde_json::json!({
                    "median_gbps": median(&gbps),
                    "samples_gbps": gbps,
                    "median_cpu_s_per_gb": median(&pick(m, streams, |s| s.cpu_s_per_gb)),
                    "retransmits": pick(m, streams, |s| s.retransmits as f64),
                    "udp_rcvbuf_errors": pick(m, streams, |s| s.udp_rcvbuf_errors as f64),
                }),
            );
        }
        let med = |k: &str| {
            results
                .get(k)
                .and_then(|r| r["median_gbps"].as_f64())
                .filter(|v| *v > 0.0)
        };
        let ratio = |a: &str, b: &str| match (med(a), med(b)) {
            (Some(a), Some(b)) => serde_json::json!(a / b),
            _ => serde_json::Value::Null,
        };
        let mut ratios = serde_json::Map::new();
        for m in &modes {
            if let Mode::Identityd(_) = m {
                ratios.insert(
                    format!("{}_over_boringtun_cli", m.key()),
                    ratio(m.key(), "boringtun_cli"),
                );
                ratios.insert(
                    format!("{}_over_plaintext", m.key()),
                    ratio(m.key(), "plaintext"),
                );
            }
        }
        ratios.insert(
            "boringtun_cli_over_plaintext".into(),
            ratio("boringtun_cli", "plaintext"),
        );
        by_streams.insert(
            format!("streams_{streams}"),
            serde_json::json!({ "results": results, "ratios": ratios }),
        );
    }
    let kernel = sh(Command::new("uname").arg("-r")).unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let report = serde_json::json!({
        "bench": "wg pod-to-pod iperf3 TCP",
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
        "kernel": kernel.trim(),
        "cores": cores,
        "seconds_per_run": args.seconds,
        "repeats": args.repeats,
        "tunnel_mtu": 1440,
        "cpu": "whole machine busy seconds (/proc/stat) per GB received",
        "by_streams": by_streams,
    });
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(d) = args.out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&args.out, format!("{text}\n"))?;
    println!("{text}");
    eprintln!("[wg_bench] report written to {}", args.out.display());
    Ok(())
}
