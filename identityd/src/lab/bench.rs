//! `identityd lab bench-mesh`: the mesh's latency cost, measured on a running lab with a
//! fixed-rate (open-loop) load generator, pod → pod across nodes (client-1 on n1 → web-2 on
//! n2), in one run:
//!
//! - (a) WireGuard only: both namespaces `disabled`;
//! - (b) L4 mTLS: both `strict`, the kv TCP protocol (Envoy TCP proxy on both nodes);
//! - (c) L7 mTLS: both `strict`, HTTP (Envoy HTTP connection manager on both nodes).
//!
//! With `telemetry_ab` (the default) the two mTLS paths run a second time with the node
//! daemons of n1 and n2 restarted on `telemetry: {accessLogs: false}` (SIGTERM: the WireGuard
//! device, the classifier and Envoy stay; the daemon's next start adopts them and serves Envoy
//! a configuration without access loggers), then the daemons are restarted on their own
//! configuration again. The report's `telemetry_overhead` compares the two, same rates, same
//! lab, same run.
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
    /// Run the mTLS paths again with access-log streaming off (`telemetry_overhead`).
    pub telemetry_ab: bool,
    /// Rounds of (off, on) pairs the A/B runs, interleaved so a drift of the machine's load
    /// hits both sides; the overhead compares medians over the rounds.
    pub ab_rounds: u32,
}

#[derive(Debug, Serialize)]
struct Cpu {
    envoy_n1_ms: u64,
    envoy_n2_ms: u64,
    daemon_n1_ms: u64,
    daemon_n2_ms: u64,
    /// All four, per 1,000 successful requests.
    total_ms_per_1k_requests: f64,
    /// Resident memory of both node daemons after the run, KiB.
    daemon_n1_rss_kib: u64,
    daemon_n2_rss_kib: u64,
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

/// One mTLS path with request telemetry on against the same path with it off: medians over
/// the interleaved rounds (and the first, non-interleaved on run).
#[derive(Debug, Serialize)]
struct Overhead {
    protocol: &'static str,
    path: &'static str,
    rate: u32,
    runs_off: usize,
    runs_on: usize,
    achieved_rate_off: f64,
    achieved_rate_on: f64,
    errors_off: usize,
    errors_on: usize,
    p50_us_off: u64,
    p50_us_on: u64,
    p99_us_off: u64,
    p99_us_on: u64,
    /// Both node daemons, per 1,000 successful requests.
    daemon_ms_per_1k_off: f64,
    daemon_ms_per_1k_on: f64,
    /// Both Envoys (they encode and send the records), per 1,000 successful requests.
    envoy_ms_per_1k_off: f64,
    envoy_ms_per_1k_on: f64,
    /// Largest resident memory of the two daemons after a run, KiB.
    daemon_rss_kib_off: u64,
    daemon_rss_kib_on: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    seconds_per_run: u64,
    note: &'static str,
    runs: Vec<Run>,
    added_over_wireguard_only: Vec<Added>,
    telemetry_overhead: Vec<Overhead>,
}

/// The telemetry-on path a `-no-telemetry` run is compared with.
const NO_TELEMETRY: &str = "-no-telemetry";

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

/// `VmRSS` of process `pid`, KiB (0 when it is gone).
fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn pids(dir: &Path) -> [String; 4] {
    let envoy = |n: &str| {
        std::fs::read_to_string(dir.join(n).join("run/envoy.pid"))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let daemon = |n: usize| daemon_pid(dir, n).unwrap_or_default();
    [envoy("n1"), envoy("n2"), daemon(1), daemon(2)]
}

pub(super) fn exe() -> Result<String, LabError> {
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

/// Node daemons whose configuration the bench changed: when dropped (a step failed), they
/// are put back on their own configuration, best effort.
struct DaemonsBack<'a> {
    dir: &'a Path,
    originals: Vec<(usize, PathBuf, String)>,
    armed: bool,
}

impl Drop for DaemonsBack<'_> {
    fn drop(&mut self) {
        if self.armed {
            for (node, f, t) in &self.originals {
                let _ = std::fs::write(f, t);
                let _ = restart_daemon(self.dir, *node);
            }
        }
    }
}

/// Stops node `n<node>`'s daemon with SIGTERM (the WireGuard device, the classifier and Envoy
/// stay), starts it again on its `node.yaml` in the node's network namespace, records the new
/// process in `lab.json` for `lab down`, and waits until its Envoy is configured again.
fn restart_daemon(dir: &Path, node: usize) -> Result<(), LabError> {
    let old = daemon_pid(dir, node)?;
    let status = Command::new("kill")
        .args(["-TERM", &old])
        .status()
        .map_err(|e| LabError::Io(format!("kill: {e}")))?;
    if !status.success() {
        return Err(LabError::Io(format!(
            "kill -TERM {old} (n{node}'s daemon) failed"
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while running(&old) {
        if Instant::now() > deadline {
            return Err(LabError::NotReady {
                secs: 20,
                what: format!("n{node}'s daemon (pid {old}) to stop on SIGTERM"),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    start_daemon(dir, node, &old)?;
    wait_daemon_configured(dir, node)?;
    std::thread::sleep(Duration::from_secs(2));
    Ok(())
}

/// The pid of node `n<node>`'s daemon.
pub(super) fn daemon_pid(dir: &Path, node: usize) -> Result<String, LabError> {
    let pid = Command::new("pgrep")
        .args(["-f", &format!("{}/n{node}/node.yaml", dir.display())])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    if pid.is_empty() {
        return Err(LabError::Io(format!("no daemon process found for n{node}")));
    }
    Ok(pid)
}

/// Starts node `n<node>`'s daemon on its `node.yaml` in the node's network namespace (host
/// mount namespace, as `lab up` does) and puts it in `lab.json` in place of `old`.
pub(super) fn start_daemon(dir: &Path, node: usize, old: &str) -> Result<(), LabError> {
    let node_dir = dir.join(format!("n{node}"));
    let cfg = node_dir.join("node.yaml").display().to_string();
    let new = super::spawn_in_netns_only(
        &format!("idd-n{node}"),
        &node_dir.join("daemon-bench.log"),
        &[&exe()?, "run", "--config", &cfg],
    )?;
    let state = dir.join("lab.json");
    let mut st: super::LabState =
        serde_json::from_slice(&std::fs::read(&state).map_err(|e| super::io_err(&state, e))?)
            .map_err(|e| LabError::Io(format!("{}: {e}", state.display())))?;
    st.pids.retain(|p| p.to_string() != old);
    st.pids.push(new);
    super::save(dir, &st)
}

/// Waits (up to 60 s) until node `n<node>`'s daemon holds its SVIDs, Envoy ACKed its
/// configuration, and the kv server sees client-1 through the node Envoys again.
pub(super) fn wait_daemon_configured(dir: &Path, node: usize) -> Result<(), LabError> {
    let run = dir.join(format!("n{node}/run/api.sock"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = crate::daemon::api::fetch(&run).is_ok_and(|s| {
            s.svids.len() >= 2
                && !s.xds.is_empty()
                && !s
                    .xds
                    .iter()
                    .any(|x| x.contains("NACK") || x.contains("acked -"))
        });
        if ready && via_envoy() == Some(true) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LabError::NotReady {
                secs: 60,
                what: format!("n{node}'s restarted daemon to configure its Envoy"),
            });
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Whether process `pid` exists and has not exited: a daemon this bench started and stopped
/// stays a zombie (this process is its parent and does not wait for it) until the bench ends.
pub(super) fn running(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit_once(')').map_or("", |(_, r)| r).trim_start();
        !(state.starts_with('Z') || state.starts_with('X'))
    })
}

/// `identityd_telemetry_records_total` of node `n<node>` (its metrics on the lab's underlay).
fn telemetry_records(node: usize) -> Result<f64, LabError> {
    use std::io::{Read, Write};
    let addr = format!("10.99.0.1{node}:9962");
    let err = |e: std::io::Error| LabError::Io(format!("GET {addr}/metrics: {e}"));
    let mut c = std::net::TcpStream::connect(&addr).map_err(err)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(err)?;
    c.write_all(b"GET /metrics HTTP/1.0\r\nHost: node\r\n\r\n")
        .map_err(err)?;
    let mut body = String::new();
    c.read_to_string(&mut body).map_err(err)?;
    body.lines()
        .find(|l| l.starts_with("identityd_telemetry_records_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            LabError::Io(format!(
                "{addr}/metrics has no identityd_telemetry_records_total"
            ))
        })
}

/// Sets `telemetry.accessLogs` in n1's and n2's node configuration and restarts both daemons.
fn set_access_logs(
    dir: &Path,
    on: bool,
    originals: &[(usize, PathBuf, String)],
) -> Result<(), LabError> {
    for (node, f, t) in originals {
        let text = if on {
            t.clone()
        } else {
            format!("{t}\ntelemetry:\n  accessLogs: false\n")
        };
        std::fs::write(f, text).map_err(|e| super::io_err(f, e))?;
        restart_daemon(dir, *node)?;
    }
    Ok(())
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
    let per_1k = ms_per_1k(ms(0) + ms(1) + ms(2) + ms(3), load.ok);
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
            daemon_n1_rss_kib: rss_kib(&p[2]),
            daemon_n2_rss_kib: rss_kib(&p[3]),
        },
    })
}

/// CPU milliseconds per 1,000 successful requests.
fn ms_per_1k(ms: u64, ok: usize) -> f64 {
    #[expect(
        clippy::cast_precision_loss,
        reason = "milliseconds and request counts far below 2^52"
    )]
    let (ms, ok) = (ms as f64, ok.max(1) as f64);
    ms * 1000.0 / ok
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len().is_multiple_of(2) {
        f64::midpoint(v[m - 1], v[m])
    } else {
        v[m]
    }
}

/// Medians of the telemetry-off runs against those of the telemetry-on runs of the same
/// path, protocol and rate.
fn telemetry_overhead(runs: &[Run]) -> Vec<Overhead> {
    #[expect(
        clippy::cast_precision_loss,
        reason = "milliseconds, counts and microseconds far below 2^52"
    )]
    let f = |x: u64| x as f64;
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "medians of non-negative integers below 2^52"
    )]
    let u = |x: f64| x.round() as u64;
    let round = |x: f64| (x * 10.0).round() / 10.0;
    let mut out: Vec<Overhead> = Vec::new();
    for off0 in runs.iter().filter(|r| r.path.ends_with(NO_TELEMETRY)) {
        let on_path = off0.path.trim_end_matches(NO_TELEMETRY);
        let same = |path: &str| -> Vec<&Run> {
            runs.iter()
                .filter(|r| {
                    r.path == path && r.protocol == off0.protocol && r.load.rate == off0.load.rate
                })
                .collect()
        };
        if out
            .iter()
            .any(|o| o.path == on_path && o.protocol == off0.protocol && o.rate == off0.load.rate)
        {
            continue;
        }
        let (off, on) = (same(off0.path), same(on_path));
        if on.is_empty() {
            continue;
        }
        let med = |rs: &[&Run], g: &dyn Fn(&Run) -> f64| median(rs.iter().map(|r| g(r)).collect());
        let daemon = |r: &Run| ms_per_1k(r.cpu.daemon_n1_ms + r.cpu.daemon_n2_ms, r.load.ok);
        let envoy = |r: &Run| ms_per_1k(r.cpu.envoy_n1_ms + r.cpu.envoy_n2_ms, r.load.ok);
        let rss = |rs: &[&Run]| {
            rs.iter()
                .map(|r| r.cpu.daemon_n1_rss_kib.max(r.cpu.daemon_n2_rss_kib))
                .max()
                .unwrap_or(0)
        };
        let Some(path) = on.first().map(|r| r.path) else {
            continue;
        };
        out.push(Overhead {
            protocol: off0.protocol,
            path,
            rate: off0.load.rate,
            runs_off: off.len(),
            runs_on: on.len(),
            achieved_rate_off: round(med(&off, &|r| r.load.achieved_rate)),
            achieved_rate_on: round(med(&on, &|r| r.load.achieved_rate)),
            errors_off: off.iter().map(|r| r.load.errors).sum(),
            errors_on: on.iter().map(|r| r.load.errors).sum(),
            p50_us_off: u(med(&off, &|r| f(r.load.p50_us))),
            p50_us_on: u(med(&on, &|r| f(r.load.p50_us))),
            p99_us_off: u(med(&off, &|r| f(r.load.p99_us))),
            p99_us_on: u(med(&on, &|r| f(r.load.p99_us))),
            daemon_ms_per_1k_off: round(med(&off, &daemon)),
            daemon_ms_per_1k_on: round(med(&on, &daemon)),
            envoy_ms_per_1k_off: round(med(&off, &envoy)),
            envoy_ms_per_1k_on: round(med(&on, &envoy)),
            daemon_rss_kib_off: rss(&off),
            daemon_rss_kib_on: rss(&on),
        });
    }
    out
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
    if opts.telemetry_ab {
        let mut configs = Vec::new();
        for node in [1, 2] {
            let f = dir.join(format!("n{node}/node.yaml"));
            let t = std::fs::read_to_string(&f).map_err(|e| super::io_err(&f, e))?;
            if t.contains("telemetry:") {
                return Err(LabError::Io(format!(
                    "{}: the bench expects no telemetry: section (access logs on by default)",
                    f.display()
                )));
            }
            configs.push((node, f, t));
        }
        let mut back = DaemonsBack {
            dir,
            originals: configs.clone(),
            armed: true,
        };
        for _ in 0..opts.ab_rounds.max(1) {
            set_access_logs(dir, false, &configs)?;
            for &rate in &opts.rates {
                runs.push(one_run(
                    dir,
                    "b-l4-mtls-no-telemetry",
                    "tcp",
                    rate,
                    opts.seconds,
                )?);
                runs.push(one_run(
                    dir,
                    "c-l7-mtls-no-telemetry",
                    "http",
                    rate,
                    opts.seconds,
                )?);
            }
            // The runs above really had no access logs: the restarted daemons aggregated
            // nothing.
            for node in [1, 2] {
                let n = telemetry_records(node)?;
                if n > 0.0 {
                    return Err(LabError::Io(format!(
                        "n{node} aggregated {n} access-log records with telemetry.accessLogs: false"
                    )));
                }
            }
            set_access_logs(dir, true, &configs)?;
            for &rate in &opts.rates {
                runs.push(one_run(dir, "b-l4-mtls", "tcp", rate, opts.seconds)?);
                runs.push(one_run(dir, "c-l7-mtls", "http", rate, opts.seconds)?);
            }
        }
        back.armed = false;
    }
    drop(restore);
    let overhead = telemetry_overhead(&runs);
    let mut added = Vec::new();
    // The first run of each mTLS path (the A/B rounds repeat them).
    let mut seen = std::collections::BTreeSet::new();
    for r in runs.iter().filter(|r| {
        r.path != "a-wireguard-only"
            && !r.path.ends_with(NO_TELEMETRY)
            && seen.insert((r.path, r.protocol, r.load.rate))
    }) {
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
        telemetry_overhead: overhead,
    };
    if let Some(parent) = opts.out.parent() {
        std::fs::create_dir_all(parent).map_err(|e| super::io_err(parent, e))?;
    }
    let json = serde_json::to_string_pretty(&report).map_err(|e| LabError::Io(e.to_string()))?;
    std::fs::write(&opts.out, &json).map_err(|e| super::io_err(&opts.out, e))?;
    let mut summary = format!("wrote {}\n", opts.out.display());
    for r in &report.runs {
        summary.push_str(&format!(
            "  {:<22} {:<4} {:>5}/s  ok {:>6} err {:>4}  p50 {:>6} µs  p90 {:>6} µs  p99 {:>7} µs  cpu {:>6.0} ms/1k req\n",
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
    for o in &report.telemetry_overhead {
        summary.push_str(&format!(
            "  telemetry on vs off ({} vs {} runs), {} {} at {}/s: {:.0} vs {:.0} ok/s, errors {} vs {}, p50 {} vs {} µs, p99 {} vs {} µs, daemons {:.1} vs {:.1} ms/1k req, Envoys {:.1} vs {:.1} ms/1k req, daemon RSS {} vs {} KiB\n",
            o.runs_on,
            o.runs_off,
            o.path,
            o.protocol,
            o.rate,
            o.achieved_rate_on,
            o.achieved_rate_off,
            o.errors_on,
            o.errors_off,
            o.p50_us_on,
            o.p50_us_off,
            o.p99_us_on,
            o.p99_us_off,
            o.daemon_ms_per_1k_on,
            o.daemon_ms_per_1k_off,
            o.envoy_ms_per_1k_on,
            o.envoy_ms_per_1k_off,
            o.daemon_rss_kib_on,
            o.daemon_rss_kib_off
        ));
    }
    Ok(summary)
}
