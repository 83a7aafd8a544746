//! `vm_ipsec`: iperf3 TCP pod→pod throughput on the VM test bed's stock kernel, side by side in
//! one boot, through (a) identityd's IPsec plan (ESP, rfc4106 AES-256-GCM, tunnel mode, keys
//! derived per pair), (b) kernel WireGuard (`wg`, the module), and (c) plaintext over the veth
//! underlay. Absolute numbers under TCG mean little; the ratios are the result. Writes
//! `target/bench-reports/vm_ipsec.json`. Not a test: run it on purpose (root).
//!
//! ```text
//! cargo bench -p identityd-tests --bench vm_ipsec [-- --seconds 5 --repeats 2]
//! ```
//!
//! Topology per run (fresh each time, interleaved a, b, c, a, b, c, …): an underlay bridge, two
//! nodes (10.99.0.11/.12, routes to each other's pod CIDR) and one pod per node; one iperf3
//! stream pod 1 → pod 2.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use identityd_tests::netns::Topology;
use identityd_tests::tools;
use identityd_tests::vm::{IN_VM_ENV, VmBed, VmRun};
use identityd_wg::ipsec::plan::{IpsecNode, apply, plan};
use identityd_wg::ipsec::xfrm::Xfrm;
use identityd_wg::key::NodeKey;

const MODES: [&str; 3] = ["ipsec", "wireguard_kernel", "plaintext"];

struct Args {
    seconds: u32,
    repeats: u32,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        seconds: 5,
        repeats: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--seconds" => a.seconds = it.next().context("--seconds N")?.parse()?,
            "--repeats" => a.repeats = it.next().context("--repeats N")?.parse()?,
            // What cargo bench passes.
            "--bench" | "--guest" => {}
            other => bail!("unknown argument {other:?} (--seconds N, --repeats N)"),
        }
    }
    ensure!(
        a.seconds > 0 && a.repeats > 0,
        "--seconds and --repeats must be > 0"
    );
    Ok(a)
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    if std::env::var_os(IN_VM_ENV).is_some() {
        return guest(&a);
    }
    identityd_tests::require_root();
    let bed = VmBed::discover();
    let exe = std::env::current_exe()?;
    let mut run = VmRun::new(
        vec![
            exe.to_string_lossy().into_owned(),
            "--guest".into(),
            "--seconds".into(),
            a.seconds.to_string(),
            "--repeats".into(),
            a.repeats.to_string(),
        ],
        tools::workspace_root(),
    );
    run.timeout = Duration::from_secs(1200);
    let o = bed.boot(&run)?;
    ensure!(
        o.status == Some(0),
        "the guest bench failed: {}\n{}\n{}",
        o.stdout,
        o.stderr,
        o.console_tail(30)
    );
    let line = o
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("no JSON line from the guest")?;
    let mut report: serde_json::Value = serde_json::from_str(line)?;
    report["kernel"] = bed.release().into();
    report["boot_seconds"] = o.boot_secs.into();
    report["wall_seconds"] = o.wall.as_secs_f64().into();
    let out = tools::workspace_root().join("target/bench-reports/vm_ipsec.json");
    std::fs::create_dir_all(out.parent().context("a parent folder")?)?;
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    println!("wrote {}", out.display());
    Ok(())
}

fn guest(a: &Args) -> anyhow::Result<()> {
    let mut samples: Vec<(&str, Vec<f64>)> = MODES.iter().map(|m| (*m, Vec::new())).collect();
    for _ in 0..a.repeats {
        for (mode, v) in &mut samples {
            let bps = one_run(mode, a.seconds).with_context(|| format!("mode {mode}"))?;
            eprintln!("{mode}: {:.1} Mbit/s", bps / 1e6);
            v.push(bps);
        }
    }
    let median = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    let med: Vec<(&str, f64)> = samples.iter().map(|(m, v)| (*m, median(v))).collect();
    let get = |m: &str| med.iter().find(|(k, _)| *k == m).map_or(f64::NAN, |x| x.1);
    let report = serde_json::json!({
        "seconds": a.seconds,
        "repeats": a.repeats,
        "samples_bps": samples.iter().map(|(m, v)| ((*m).to_owned(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
        "median_bps": med.iter().map(|(m, v)| ((*m).to_owned(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
        "ratio_ipsec_to_plaintext": get("ipsec") / get("plaintext"),
        "ratio_wireguard_kernel_to_plaintext": get("wireguard_kernel") / get("plaintext"),
        "ratio_ipsec_to_wireguard_kernel": get("ipsec") / get("wireguard_kernel"),
    });
    println!("{report}");
    Ok(())
}

fn one_run(mode: &str, seconds: u32) -> anyhow::Result<f64> {
    let mut t = Topology::new("vmbench");
    let spec = t.add_cluster(2);
    let n = &spec.nodes;
    let pod2 = n[1].pods[0].ip.to_string();
    match mode {
        "plaintext" | "ipsec" => {
            t.exec(
                &n[0].ns,
                &["ip", "route", "add", "10.244.2.0/24", "via", "10.99.0.12"],
            );
            t.exec(
                &n[1].ns,
                &["ip", "route", "add", "10.244.1.0/24", "via", "10.99.0.11"],
            );
            if mode == "ipsec" {
                let keys = [NodeKey::generate(), NodeKey::generate()];
                let nodes: Vec<IpsecNode> = (0..2)
                    .map(|i| IpsecNode {
                        name: format!("n{}", i + 1),
                        id: u16::try_from(i + 1).unwrap_or(1),
                        underlay: IpAddr::V4(n[i].underlay_ip),
                        pod_cidrs: vec![format!("10.244.{}.0/24", i + 1).parse().expect("cidr")],
                        public: keys[i].public_key(),
                        epoch: 1,
                        inbound_spis: vec![(
                            format!("n{}", 2 - i),
                            0x100 + u32::try_from(i).unwrap_or(0),
                        )],
                    })
                    .collect();
                for i in 0..2 {
                    t.run_in(&n[i].ns, || -> anyhow::Result<()> {
                        let p = plan(&nodes[i], &keys[i], &nodes, None);
                        ensure!(p.problems.is_empty(), "{:?}", p.problems);
                        apply(&mut Xfrm::open()?, &p)?;
                        Ok(())
                    })?;
                }
            }
        }
        "wireguard_kernel" => {
            let dir = tempfile::tempdir()?;
            let keys = [NodeKey::generate(), NodeKey::generate()];
            for (i, k) in keys.iter().enumerate() {
                k.save(&dir.path().join(format!("k{i}")))?;
            }
            for i in 0..2 {
                let j = 1 - i;
                let key = dir.path().join(format!("k{i}"));
                t.exec(&n[i].ns, &["ip", "link", "add", "wgk", "type", "wireguard"]);
                t.exec(
                    &n[i].ns,
                    &[
                        "wg",
                        "set",
                        "wgk",
                        "private-key",
                        key.to_str().context("utf-8 path")?,
                        "listen-port",
                        "51820",
                        "peer",
                        &keys[j].public_key().to_string(),
                        "endpoint",
                        &format!("{}:51820", n[j].underlay_ip),
                        "allowed-ips",
                        &format!("10.244.{}.0/24", j + 1),
                    ],
                );
                t.exec(&n[i].ns, &["ip", "link", "set", "wgk", "up"]);
                t.exec(
                    &n[i].ns,
                    &[
                        "ip",
                        "route",
                        "add",
                        &format!("10.244.{}.0/24", j + 1),
                        "dev",
                        "wgk",
                    ],
                );
            }
        }
        other => bail!("unknown mode {other}"),
    }
    let server = t.spawn(
        &n[1].pods[0].ns,
        &[tools::iperf3().to_str().context("utf-8")?, "-s", "-1"],
    );
    std::thread::sleep(Duration::from_millis(500));
    let out = t.try_exec(
        &n[0].pods[0].ns,
        &[
            tools::iperf3().to_str().context("utf-8")?,
            "-c",
            &pod2,
            "-t",
            &seconds.to_string(),
            "-J",
        ],
    );
    let _ = t.child(server).kill();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("iperf3 JSON: {}", String::from_utf8_lossy(&out.stderr)))?;
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("no end.sum_received.bits_per_second: {json}"))
}
