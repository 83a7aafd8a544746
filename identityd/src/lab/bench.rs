//! `identityd lab bench-mesh`: the mesh's latency cost, measured on a running lab with a
//! fixed-rate (open-loop) load generator, pod → pod across nodes (client-1 on n1 → web-2 on
//! n2), in one run:
//!
//! - (a) WireGuard only: both namespaces `disabled`;
//! - (b) L4 mTLS: both `strict`, the kv TCP protocol (Envoy TCP proxy on both nodes);
//! - (c) L7 mTLS: both `strict`, HTTP (Envoy HTTP connection manager on both nodes).
//!
//! Every request opens its own connection (the lab's HTTP server closes after each answer),
//! so the figures include the connection set-up each path adds. CPU of both node Envoys and
//! both node daemons is read from `/proc` around each run. The namespaces are put back as they
//! were, also when a step fails. One host has no network latency, so the report gives the
//! absolute microseconds each path adds as well as the percentages (which overstate the cost).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::LabError;
use super::workload::{KV_PORT, LoadReport};

/// Options of one bench run.
#[derive(Debug, Clone)]
pub struct MeshBenchOptions {
    /// Target rates, requests per second.
    pub rates: Vec<u32>,
    /// Seconds per (path, protocol, rate).
    pub seconds: u64,
    /// Where the JSON report goes.
    pub out: PathBuf,
}

#[derive(Debug, Serialize)]
struct Cpu {
    envoy_n1_ms: u64,
    envoy_n2_ms: u64,
    daemon_n1_ms: u64,
    daemon_n2_ms: u64,
    /// All four, per 1,000 successful requests.
    total_ms_per_1k_requests: f64,
}

#[derive(Debug, Serialize)]
struct Run {
    path: &'static str,
    protocol: &'static str,
    load: LoadReport,
    cpu: Cpu,
}

#[derive(Debug, Serialize)]
struct Added {
    protocol: &'static str,
    path: &'static str,
    rate: u32,
    baseline_p50_us: u64,
    p50_us: u64,
    added_p50_us: i64,
    added_p50_percent: f64,
    baseline_p99_us: u64,
    p99_us: u64,
    added_p99_us: i64,
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    seconds_per_run: u64,
    note: &'static str,
    runs: Vec<Run>,
    added_over_wireguard_only: Vec<Added>,
}

/// Puts the namespace files back when dropped.
struct Restore(Vec<(PathBuf, String)>);

impl Drop for Restore {
    fn drop(&mut self) {
        for (f, t) in &self.0 {
            let _ = std::fs::write(f, t);
        }
    }
}

fn ticks(pid: &str) -> u64 {
    // Fields 14 and 15 of /proc/PID/stat (after the parenthesised name): utime, stime.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

fn pids(dir: &Path) -> [String; 4] {
    let envoy = |n: &str| {
        std::fs::read_to_string(dir.join(n).join("run/envoy.pid"))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let daemon = |n: &str| {
        Command::new("pgrep")
            .args(["-f", &format!("{}/{n}/node.yaml", dir.display())])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .unwrap_or_default()
    };
    [envoy("n1"), envoy("n2"), daemon("n1"), daemon("n2")]
}

fn exe() -> Result<String, LabError> {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .map_err(|e| LabError::Io(format!("current_exe: {e}")))
}

/// Runs `identityd lab <args>` in client-1's namespace.
fn in_client(args: &[&str]) -> Result<std::process::Output, LabError> {
    let exe = exe()?;
    Command::new("ip")
        .args(["netns", "exec", "idd-n1-client-1", &exe, "lab"])
        .args(args)
        .output()
        .map_err(|e| LabError::Io(format!("ip netns exec: {e}")))
}

/// The kv server's view of the caller: `Some(true)` through a node Envoy, `Some(false)`
/// direct, `None` when it does not answer.
fn via_envoy() -> Option<bool> {
    let out = in_client(&["tcp", "10.244.2.10:6379", "--send", "PING"]).ok()?;
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    out.status
        .success()
        .then(|| !line.contains("peer=10.244.1.11:"))
}

fn set_modes(dir: &Path, mode: &str, originals: &[(PathBuf, String)]) -> Result<(), LabError> {
    for (f, t) in originals {
        let text = t.replace("mtls: strict", &format!("mtls: {mode}"));
        std::fs::write(f, text).map_err(|e| super::io_err(f, e))?;
    }
    let want_envoy = mode != "disabled";
    let deadline = Instant::now() + Duration::from_secs(60);
    while via_envoy() != Some(want_envoy) {
        if Instant::now() > deadline {
            return Err(LabError::NotReady {
                secs: 60,
                what: format!("kv path through Envoy = {want_envoy} after mtls: {mode}"),
            });
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // Let the other node's apply settle too.
    std::thread::sleep(Duration::from_secs(2));
    let _ = dir;
    Ok(())
}

fn one_run(
    dir: &Path,
    path: &'static str,
    protocol: &'static str,
    rate: u32,
    seconds: u64,
) -> Result<Run, LabError> {
    let (addr, kind) = if protocol == "tcp" {
        (format!("10.244.2.10:{KV_PORT}"), "tcp")
    } else {
        (format!("10.244.2.10:{}", super::WORKLOAD_PORT), "http")
    };
    // Let the previous run drain (sockets, queues) so it does not load this one.
    std::thread::sleep(Duration::from_secs(5));
    let p = pids(dir);
    let before: Vec<u64> = p.iter().map(|x| ticks(x)).collect();
    let out = in_client(&[
        "load",
        &addr,
        "--kind",
        kind,
        "--host",
        "web.shop",
        "--rate",
        &rate.to_string(),
        "--seconds",
        &seconds.to_string(),
    ])?;
    let after: Vec<u64> = p.iter().map(|x| ticks(x)).collect();
    let load: LoadReport = serde_json::from_slice(&out.stdout).map_err(|e| {
        LabError::Io(format!(
            "lab load: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    })?;
    // Linux reports /proc ticks at USER_HZ = 100.
    let ms = |i: usize| after[i].saturating_sub(before[i]) * 10;
    let total = ms(0) + ms(1) + ms(2) + ms(3);
    #[expect(
        clippy::cast_precision_loss,
        reason = "milliseconds and request counts far below 2^52"
    )]
    let per_1k = total as f64 * 1000.0 / (load.ok.max(1) as f64);
    Ok(Run {
        path,
        protocol,
        load,
        cpu: Cpu {
            envoy_n1_ms: ms(0),
            envoy_n2_ms: ms(1),
            daemon_n1_ms: ms(2),
            daemon_n2_ms: ms(3),
            total_ms_per_1k_requests: per_1k,
        },
    })
}

/// Runs the bench on the lab in `dir` and writes the report; returns a summary.
///
/// # Errors
/// No lab, a namespace file missing, a mode that does not converge, a load run that fails.
pub fn mesh(dir: &Path, opts: &MeshBenchOptions) -> Result<String, LabError> {
    if !dir.join("lab.json").exists() {
        return Err(LabError::NotUp(dir.display().to_string()));
    }
    let mut originals = Vec::new();
    for ns in ["shop", "front"] {
        let f = dir.join(format!("cluster/namespace-{ns}.yaml"));
        let t = std::fs::read_to_string(&f).map_err(|e| super::io_err(&f, e))?;
        if !t.contains("identityd.io/mtls: strict") {
            return Err(LabError::Io(format!(
                "{}: the bench expects the lab's strict namespaces",
                f.display()
            )));
        }
        originals.push((f, t));
    }
    let restore = Restore(originals.clone());
    let mut runs = Vec::new();
    for (mode, path_tcp, path_http) in [
        ("disabled", "a-wireguard-only", "a-wireguard-only"),
        ("strict", "b-l4-mtls", "c-l7-mtls"),
    ] {
        set_modes(dir, mode, &originals)?;
        for &rate in &opts.rates {
            runs.push(one_run(dir, path_tcp, "tcp", rate, opts.seconds)?);
            runs.push(one_run(dir, path_http, "http", rate, opts.seconds)?);
        }
    }
    drop(restore);
    let mut added = Vec::new();
    for r in runs.iter().filter(|r| r.path != "a-wireguard-only") {
        if let Some(base) = runs.iter().find(|b| {
            b.path == "a-wireguard-only" && b.protocol == r.protocol && b.load.rate == r.load.rate
        }) {
            let signed = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
            #[expect(clippy::cast_precision_loss, reason = "microseconds far below 2^52")]
            let pct = if base.load.p50_us == 0 {
                0.0
            } else {
                (r.load.p50_us as f64 - base.load.p50_us as f64) * 100.0 / base.load.p50_us as f64
            };
            added.push(Added {
                protocol: r.protocol,
                path: r.path,
                rate: r.load.rate,
                baseline_p50_us: base.load.p50_us,
                p50_us: r.load.p50_us,
                added_p50_us: signed(r.load.p50_us) - signed(base.load.p50_us),
                added_p50_percent: (pct * 10.0).round() / 10.0,
                baseline_p99_us: base.load.p99_us,
                p99_us: r.load.p99_us,
                added_p99_us: signed(r.load.p99_us) - signed(base.load.p99_us),
            });
        }
    }
    let report = Report {
        bench: "mesh_latency",
        seconds_per_run: opts.seconds,
        note: "one host: no network latency, so percentages overstate the cost; compare added_p50_us",
        runs,
        added_over_wireguard_only: added,
    };
    if let Some(parent) = opts.out.parent() {
        std::fs::create_dir_all(parent).map_err(|e| super::io_err(parent, e))?;
    }
    let json = serde_json::to_string_pretty(&report).map_err(|e| LabError::Io(e.to_string()))?;
    std::fs::write(&opts.out, &json).map_err(|e| super::io_err(&opts.out, e))?;
    let mut summary = format!("wrote {}\n", opts.out.display());
    for r in &report.runs {
        summary.push_str(&format!(
            "  {:<18} {:<4} {:>5}/s  ok {:>6} err {:>4}  p50 {:>6} µs  p90 {:>6} µs  p99 {:>7} µs  cpu {:>6.0} ms/1k req\n",
            r.path,
            r.protocol,
            r.load.rate,
            r.load.ok,
            r.load.errors,
            r.load.p50_us,
            r.load.p90_us,
            r.load.p99_us,
            r.cpu.total_ms_per_1k_requests
        ));
    }
    for a in &report.added_over_wireguard_only {
        summary.push_str(&format!(
            "  {} {} at {}/s adds {} µs p50 ({:+.1}%), {} µs p99\n",
            a.path, a.protocol, a.rate, a.added_p50_us, a.added_p50_percent, a.added_p99_us
        ));
    }
    Ok(summary)
}
