//! `wg_bench`: iperf3 TCP pod→pod throughput, side by side in the same topology, through
//! (a) identityd's userspace WireGuard device (`identityd-wg`), (b) boringtun-cli, and
//! (c) plaintext over the veth underlay. Writes a JSON report. Not a test: run it on purpose.
//!
//! ```text
//! scripts/bench-wg                      # builds release binaries, runs, writes target/wg-bench.json
//! wg_bench [--seconds 8] [--repeats 2] [--out FILE] [--without-boringtun]
//! ```
//!
//! Topology per run: namespaces for an underlay bridge, two nodes (10.99.0.11/.12) and one pod
//! per node (10.244.1.2, 10.244.2.2); iperf3 runs pod 1 → pod 2, one TCP stream. Runs are
//! interleaved (a, b, c, a, b, c, …) so machine noise hits all three alike; the report keeps
//! every sample and the median.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use identityd_tests::netns::Topology;
use identityd_tests::tools;

const PORT: u16 = 51871;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Identityd,
    Boringtun,
    Plaintext,
}

impl Mode {
    fn key(self) -> &'static str {
        match self {
            Self::Identityd => "identityd",
            Self::Boringtun => "boringtun_cli",
            Self::Plaintext => "plaintext",
        }
    }
}

#[derive(Debug)]
struct Args {
    seconds: u32,
    repeats: u32,
    out: PathBuf,
    boringtun: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        seconds: 8,
        repeats: 2,
        out: tools::workspace_root().join("target/wg-bench.json"),
        boringtun: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => a.seconds = it.next().context("--seconds N")?.parse()?,
            "--repeats" => a.repeats = it.next().context("--repeats N")?.parse()?,
            "--out" => a.out = it.next().context("--out FILE")?.into(),
            "--without-boringtun" => a.boringtun = false,
            "-h" | "--help" => {
                println!("wg_bench [--seconds N] [--repeats N] [--out FILE] [--without-boringtun]");
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

    fn setup_identityd(&mut self, bin: &Path) -> anyhow::Result<()> {
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
            let o = 1 - i;
            let cfg = format!(
                r#"{{"interface":"{}","key_path":"{}","listen_port":{PORT},"underlay_mtu":1500,
                "cluster_cidrs":["10.244.0.0/16"],"local_cidrs":["10.244.{}.0/24"],"persist":false,
                "backend":"userspace","peers":[{{"public_key":"{}","endpoint":"10.99.0.1{}:{PORT}",
                "pod_cidrs":["10.244.{}.0/24"]}}]}}"#,
                self.iface(i),
                self.dir.join(format!("n{}.key", i + 1)).display(),
                i + 1,
                pubs[o],
                o + 1,
                o + 1
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

    fn iperf(&mut self, seconds: u32) -> anyhow::Result<(f64, u64)> {
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
                "-J",
            ],
        );
        let drops =
            (self.udp_rcvbuf_errors(1) + self.udp_rcvbuf_errors(0)).saturating_sub(drops_before);
        let json = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "iperf3 failed: {json}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bps =
            received_bps(&json).context("no end.sum_received.bits_per_second in iperf3 JSON")?;
        Ok((bps / 1e9, drops))
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

/// `end.sum_received.bits_per_second` from iperf3's JSON, without a JSON dependency.
fn received_bps(json: &str) -> Option<f64> {
    let at = json.find("\"sum_received\"")?;
    let rest = &json[at..];
    let k = rest.find("\"bits_per_second\"")?;
    let v = rest[k + "\"bits_per_second\"".len()..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let end = v.find(|c: char| {
        !(c.is_ascii_digit() || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-')
    })?;
    v[..end].parse().ok()
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
    let mut modes = vec![Mode::Identityd];
    if bt.is_some() {
        modes.push(Mode::Boringtun);
    }
    modes.push(Mode::Plaintext);

    let mut samples: Vec<(Mode, f64, u64)> = Vec::new();
    for round in 0..args.repeats {
        for &m in &modes {
            let mut bed = Bed::new(m)?;
            match m {
                Mode::Identityd => bed.setup_identityd(&idd)?,
                Mode::Boringtun => bed.setup_boringtun(bt.as_deref().unwrap())?,
                Mode::Plaintext => bed.setup_plaintext(),
            }
            let (gbps, drops) = bed.iperf(args.seconds)?;
            eprintln!(
                "[wg_bench] round {} {:<14} {gbps:7.3} Gbit/s  (UDP rcvbuf errors {drops})",
                round + 1,
                m.key()
            );
            samples.push((m, gbps, drops));
        }
    }

    let med = |m: Mode| {
        median(
            &samples
                .iter()
                .filter(|s| s.0 == m)
                .map(|s| s.1)
                .collect::<Vec<_>>(),
        )
    };
    let mut results = String::new();
    for (i, &m) in modes.iter().enumerate() {
        let list: Vec<String> = samples
            .iter()
            .filter(|s| s.0 == m)
            .map(|s| format!("{:.4}", s.1))
            .collect();
        let drops: Vec<String> = samples
            .iter()
            .filter(|s| s.0 == m)
            .map(|s| s.2.to_string())
            .collect();
        let _ = write!(
            results,
            "{}    \"{}\": {{ \"median_gbps\": {:.4}, \"samples_gbps\": [{}], \"udp_rcvbuf_errors\": [{}] }}",
            if i > 0 { ",\n" } else { "" },
            m.key(),
            med(m),
            list.join(", "),
            drops.join(", ")
        );
    }
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.3}", a / b)
        } else {
            "null".into()
        }
    };
    let (i, p) = (med(Mode::Identityd), med(Mode::Plaintext));
    let b = if bt.is_some() {
        Some(med(Mode::Boringtun))
    } else {
        None
    };
    let kernel = sh(Command::new("uname").arg("-r")).unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let report = format!(
        "{{\n  \"bench\": \"wg pod-to-pod iperf3 TCP, 1 stream\",\n  \"unix_time\": {},\n  \"kernel\": \"{}\",\n  \"cores\": {cores},\n  \"seconds_per_run\": {},\n  \"repeats\": {},\n  \"tunnel_mtu\": 1440,\n  \"results\": {{\n{results}\n  }},\n  \"ratios\": {{ \"identityd_over_boringtun_cli\": {}, \"identityd_over_plaintext\": {}, \"boringtun_cli_over_plaintext\": {} }}\n}}\n",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
        kernel.trim(),
        args.seconds,
        args.repeats,
        b.map_or("null".into(), |b| ratio(i, b)),
        ratio(i, p),
        b.map_or("null".into(), |b| ratio(b, p)),
    );
    if let Some(d) = args.out.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&args.out, &report)?;
    print!("{report}");
    eprintln!("[wg_bench] report written to {}", args.out.display());
    Ok(())
}
