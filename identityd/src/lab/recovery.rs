//! `identityd lab bench-recovery`: packet loss while a node's WireGuard side is disturbed,
//! measured on a running lab under fixed-rate ICMP flows between every pair of nodes (client-1
//! on n1 to web-2 on n2 and web-3 on n3, client-2 on n2 to web-3), with the underlay captured
//! throughout.
//!
//! Scenarios, one after the other, each on a healthy lab:
//! - `device-kill`: `kill -9` of n2's WireGuard device process; the daemon supervises it.
//! - `daemon-device-kill`: `kill -9` of n2's daemon and device, the daemon started again
//!   `restart_delay` later (the device is down until then: recovery is measured from the
//!   moment the daemon is back, `first_reply_after_back_ms`).
//! - `rotation`: a `KeyRotation {target: wireguard}` of every node applied through the file
//!   source (the new keys are announced beside the old ones, peers switch, the old ones are
//!   retired: no device restart).
//! - `rotation-frozen`: the same with n3's daemon stopped (SIGSTOP) throughout and a 15 s
//!   `spec.deadline`: the rotation must end Failed naming n3, and the other nodes withdraw
//!   their next keys (n3 is continued afterwards).
//!
//! During the rotations, short TCP connections (one exchange each, 50/s) go from client-1 to
//! the kv server on web-2 through both node Envoys (mTLS) and are counted.
//!
//! Each flow reports packets sent and lost, the longest time between two replies, and how
//! long after the disturbed part was back the first reply came; the capture reports pod packets seen in clear on the underlay (anything that is
//! not WireGuard, the CA's TLS or link housekeeping) and whether the flows' payload marker
//! appeared in clear.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::LabError;
use super::bench::{daemon_pid, exe, running, start_daemon, wait_daemon_configured};
use super::workload::{KV_PORT, LoadReport};

/// The flows' ICMP payload pattern (`ping -p`, hex of `idd-rec!`).
const MARKER_HEX: &str = "6964642d72656321";
const MARKER: &[u8] = b"idd-rec!idd-rec!";

/// The scenarios `bench-recovery` knows, in the order they run.
pub const SCENARIOS: [&str; 5] = [
    "device-kill",
    "daemon-device-kill",
    "rotation",
    "rotation-frozen",
    "ca-rollover",
];

/// Options of one run.
#[derive(Debug, Clone)]
pub struct RecoveryBenchOptions {
    /// Which of [`SCENARIOS`] to run.
    pub scenarios: Vec<String>,
    /// Packets per second of each flow.
    pub rate: u32,
    /// Seconds each flow runs (the disturbance starts after 3 s).
    pub seconds: u64,
    /// How long the daemon stays dead in `daemon-device-kill`.
    pub restart_delay: Duration,
    /// Where the JSON report goes.
    pub out: PathBuf,
}

#[derive(Debug, Serialize)]
struct FlowResult {
    pair: &'static str,
    /// Echo requests ping sent (it sends a little slower while no replies come back).
    sent: u64,
    received: u64,
    lost: u64,
    /// The longest time between two consecutive replies (ping's own stamps, mapped to the
    /// monotonic clock; a stall of this machine shows here even when nothing is lost).
    longest_gap_ms: u64,
    /// The most consecutive echo requests without a reply (a clock-free outage measure: at
    /// `rate` per second, this many / rate seconds).
    longest_loss_run: u64,
    /// From the moment the disturbed part was back (the device restarted by the daemon, the
    /// daemon started again, the rotation applied) to the first reply after it.
    first_reply_after_back_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
struct ScenarioResult {
    scenario: String,
    /// When the disturbance started and when the disturbed part was back, ms after the flows
    /// started.
    disturbed_at_ms: u64,
    back_at_ms: u64,
    flows: Vec<FlowResult>,
    underlay_packets: usize,
    /// Underlay packets that are not WireGuard (nor the CA's TLS, nor link housekeeping).
    packets_in_clear: usize,
    marker_in_clear: bool,
    /// The first packets in clear as tcpdump prints them (the capture is kept beside the lab
    /// when there are any).
    clear_samples: Vec<String>,
    /// n2's `wireguard_device_restarts` before and after.
    device_restarts_before: u64,
    device_restarts_after: u64,
    /// n2's WireGuard public key changed.
    key_changed: bool,
    /// Rotations: TCP connections at 50/s from client-1 to the kv server on web-2 (a strict
    /// pod: through both node Envoys, mTLS) throughout the flows, one exchange each.
    tcp_load: Option<LoadResult>,
    /// `ca-rollover`: HTTP requests at 50/s from client-1 to web.shop on web-2 (mTLS through
    /// both node Envoys), one connection each, throughout the flows.
    http_load: Option<LoadResult>,
    /// `ca-rollover`: every node renewed every workload SVID after the switch (their expiry
    /// moved), at this many ms since the start; absent when some did not within 30 s.
    svids_renewed_at_ms: Option<u64>,
    /// `ca-rollover`: workload SVIDs that were not renewed (`node: SPIFFE ID`).
    svids_not_renewed: Vec<String>,
    /// Rotations: one long-lived kv connection per node pair (a PING every 20 ms, each answer
    /// awaited), through the mTLS path, open for the whole run.
    streams: Vec<StreamResult>,
    /// Rotations: the final phase and its condition's message.
    rotation_phase: Option<String>,
    rotation_message: Option<String>,
    /// Rotations: the peer keys `wg show` lists on each node afterwards are exactly the keys
    /// the other nodes publish (no old key left, none missing).
    wg_show_matches_published: Option<bool>,
}

#[derive(Debug, Serialize)]
struct StreamResult {
    pair: &'static str,
    #[serde(flatten)]
    report: super::workload::StreamReport,
}

#[derive(Debug, Serialize)]
struct LoadResult {
    scheduled: usize,
    ok: usize,
    errors: usize,
    first_errors: Vec<String>,
    p99_us: u64,
    max_us: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    rate_pps: u32,
    seconds: u64,
    restart_delay_ms: u64,
    scenarios: Vec<ScenarioResult>,
}

/// A running ping flow.
struct Flow {
    pair: &'static str,
    child: std::process::Child,
}

fn start_flow(
    pair: &'static str,
    from: &str,
    to: &str,
    rate: u32,
    count: u64,
) -> Result<Flow, LabError> {
    let interval = format!("{:.3}", 1.0 / f64::from(rate.max(1)));
    let child = Command::new("ip")
        .args([
            "netns", "exec", from, "ping", "-n", "-D", "-i", &interval, "-W", "1", "-p", MARKER_HEX,
        ])
        .args(["-c", &count.to_string(), to])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| LabError::Command {
            cmd: "ping".into(),
            reason: e.to_string(),
        })?;
    Ok(Flow { pair, child })
}

/// Replies out of `ping -D` output: (unix time in µs, `icmp_seq`), in sequence order,
/// duplicates dropped; and the transmitted count of the summary line.
fn replies(out: &str) -> (Vec<(u64, u64)>, u64) {
    let mut v: Vec<(u64, u64)> = out
        .lines()
        .filter(|l| l.contains(" bytes from "))
        .filter_map(|l| {
            let ts = l.strip_prefix('[')?.split(']').next()?;
            let (secs, frac) = ts.split_once('.')?;
            let frac = format!("{frac:0<6}");
            let us = secs.parse::<u64>().ok()? * 1_000_000 + frac.get(..6)?.parse::<u64>().ok()?;
            let seq = l
                .split("icmp_seq=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((us, seq))
        })
        .collect();
    v.sort_unstable_by_key(|r| r.1);
    v.dedup_by_key(|r| r.1);
    let sent = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (v, sent)
}

/// Wall-clock time against the monotonic clock, sampled through a run: ping's `-D` stamps are
/// wall-clock and this machine's clock can be stepped mid-run (tens of seconds at once), so
/// reply times are mapped onto the monotonic clock through the nearest sample's offset.
#[derive(Debug, Default)]
struct ClockMap {
    /// (wall-clock µs since the epoch, monotonic µs since the run started).
    samples: Vec<(u64, u64)>,
}

impl ClockMap {
    fn wall_us() -> u64 {
        u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros()),
        )
        .unwrap_or(u64::MAX)
    }

    /// Samples both clocks every 10 ms until `stop`.
    fn sample(
        t0: Instant,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> std::thread::JoinHandle<Self> {
        std::thread::spawn(move || {
            let mut m = Self::default();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mono = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                m.samples.push((Self::wall_us(), mono));
                std::thread::sleep(Duration::from_millis(10));
            }
            m
        })
    }

    /// The monotonic times (µs since the run started) of wall-clock times `walls`, given in
    /// the order they happened (ping prints its lines as replies arrive). The search only moves
    /// forward, so a wall time that exists twice (the clock stepped back) maps to the later
    /// occurrence: the segment between two samples that holds `wall`, at or after the previous
    /// match, else the nearest sample from there.
    fn monos(&self, walls: &[u64]) -> Vec<u64> {
        let mut cursor = 0;
        let mut out = Vec::with_capacity(walls.len());
        for &wall in walls {
            let rest = self.samples.get(cursor..).unwrap_or_default();
            let seg = rest
                .windows(2)
                .position(|w| w[0].0 <= wall && wall <= w[1].0 && w[1].0 - w[0].0 <= 1_000_000);
            let j = seg.unwrap_or_else(|| {
                rest.iter()
                    .enumerate()
                    .min_by_key(|(_, (w, _))| w.abs_diff(wall))
                    .map_or(0, |(i, _)| i)
            });
            cursor += j;
            out.push(self.samples.get(cursor).map_or(0, |(w, m)| {
                if wall >= *w {
                    m + (wall - w)
                } else {
                    m.saturating_sub(w - wall)
                }
            }));
        }
        out
    }
}

/// The most consecutive sequence numbers in `1..=sent` without a reply. Pure.
fn loss_run(replies: &[(u64, u64)], sent: u64) -> u64 {
    let mut seqs: Vec<u64> = replies.iter().map(|r| r.1).filter(|q| *q <= sent).collect();
    seqs.sort_unstable();
    seqs.dedup();
    let mut prev = 0;
    let mut run = 0;
    for q in seqs.iter().copied().chain(std::iter::once(sent + 1)) {
        run = run.max(q.saturating_sub(prev + 1));
        prev = q;
    }
    run
}

/// (longest gap between consecutive replies, first reply at or after `back_us`), µs.
fn gaps(replies: &[(u64, u64)], back_us: u64) -> (u64, Option<u64>) {
    let mut times: Vec<u64> = replies.iter().map(|r| r.0).collect();
    times.sort_unstable();
    let longest = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    let first_after = times.iter().find(|t| **t >= back_us).map(|t| t - back_us);
    (longest, first_after)
}

fn n2_status(dir: &Path) -> Result<crate::daemon::api::NodeStatus, LabError> {
    crate::daemon::api::fetch(&dir.join("n2/run/api.sock"))
        .map_err(|e| LabError::Io(format!("n2's local API: {e}")))
}

fn kill9(pid: &str, what: &str) -> Result<(), LabError> {
    let ok = Command::new("kill")
        .args(["-KILL", pid])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err(LabError::Io(format!("kill -9 {pid} ({what}) failed")))
    }
}

fn wg_pid(dir: &Path) -> Result<String, LabError> {
    let f = dir.join("n2/run/wg.pid");
    let pid = std::fs::read_to_string(&f).map_err(|e| super::io_err(&f, e))?;
    let pid = pid.trim().to_owned();
    if running(&pid) {
        Ok(pid)
    } else {
        Err(LabError::Io(format!(
            "n2's WireGuard device ({pid}) is not running"
        )))
    }
}

fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) -> Result<(), LabError> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        if Instant::now() > deadline {
            return Err(LabError::NotReady {
                secs,
                what: what.to_owned(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn signal(pid: &str, sig: &str, what: &str) -> Result<(), LabError> {
    let ok = Command::new("kill")
        .args([sig, pid])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err(LabError::Io(format!("kill {sig} {pid} ({what}) failed")))
    }
}

/// The KeyRotation's final phase and its condition's message, out of its file.
fn rotation_outcome(text: &str) -> (Option<String>, Option<String>) {
    let status = crate::source::decode::decode_all(text)
        .into_iter()
        .find_map(|(_, r)| match r {
            Ok(Some(crate::model::Object::KeyRotation(kr))) => kr.status,
            _ => None,
        })
        .unwrap_or_default();
    (
        status.phase,
        status.conditions.first().map(|c| c.message.clone()),
    )
}

/// Whether each node's `wg show <iface> peers` lists exactly the keys the other nodes
/// publish (their current keys, after a rotation ended).
fn wg_show_matches_published(dir: &Path) -> Result<bool, LabError> {
    let mut published = std::collections::BTreeMap::new();
    for i in 1..=3 {
        let st = crate::daemon::api::fetch(&dir.join(format!("n{i}/run/api.sock")))
            .map_err(|e| LabError::Io(format!("n{i}'s local API: {e}")))?;
        published.insert(i, st.public_key);
    }
    for i in 1..=3 {
        let out = Command::new("ip")
            .args(["netns", "exec", &format!("idd-n{i}"), "wg", "show"])
            .arg(format!("idd{i}"))
            .arg("peers")
            .output()
            .map_err(|e| LabError::Command {
                cmd: "wg show".into(),
                reason: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(LabError::Command {
                cmd: format!("wg show idd{i} peers"),
                reason: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let mut shown: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        shown.sort();
        let mut want: Vec<String> = published
            .iter()
            .filter(|(j, _)| **j != i)
            .map(|(_, k)| k.clone())
            .collect();
        want.sort();
        if shown != want {
            tracing::warn!(
                node = i,
                ?shown,
                ?want,
                "wg show differs from the published keys"
            );
            return Ok(false);
        }
    }
    Ok(true)
}

/// Disturbs n2 as `scenario` says; returns when the disturbed part is back. Rotations leave
/// the KeyRotation file's final text in `rotation`.
fn disturb(
    dir: &Path,
    scenario: &str,
    opts: &RecoveryBenchOptions,
    rotation: &mut Option<String>,
) -> Result<(), LabError> {
    match scenario {
        "device-kill" => {
            let old = wg_pid(dir)?;
            kill9(&old, "n2's WireGuard device")?;
            wait_until(
                10,
                "n2's daemon to start its WireGuard device again",
                || wg_pid(dir).is_ok_and(|p| p != old),
            )
        }
        "daemon-device-kill" => {
            let daemon = daemon_pid(dir, 2)?;
            let device = wg_pid(dir)?;
            kill9(&daemon, "n2's daemon")?;
            kill9(&device, "n2's WireGuard device")?;
            std::thread::sleep(opts.restart_delay);
            start_daemon(dir, 2, &daemon)
        }
        "rotation" | "rotation-frozen" => {
            let frozen = scenario == "rotation-frozen";
            let name = format!(
                "bench-{scenario}-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            );
            let n3 = if frozen {
                let pid = daemon_pid(dir, 3)?;
                signal(&pid, "-STOP", "n3's daemon")?;
                Some(pid)
            } else {
                None
            };
            let f = dir.join(format!("cluster/keyrotation-{name}.yaml"));
            let deadline = if frozen { "  deadline: 15s\n" } else { "" };
            let res = std::fs::write(
                &f,
                format!(
                    "apiVersion: identityd.io/v1alpha1\nkind: KeyRotation\nmetadata:\n  name: {name}\nspec:\n  target: wireguard\n{deadline}"
                ),
            )
            .map_err(|e| super::io_err(&f, e))
            .and_then(|()| {
                let mut text = String::new();
                wait_until(90, &format!("KeyRotation {name} to finish"), || {
                    text = std::fs::read_to_string(&f).unwrap_or_default();
                    text.contains("phase: Completed") || text.contains("phase: Failed")
                })?;
                Ok(text)
            });
            if let Some(pid) = &n3 {
                signal(pid, "-CONT", "n3's daemon")?;
            }
            *rotation = Some(res?);
            Ok(())
        }
        "ca-rollover" => {
            let name = format!(
                "bench-ca-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            );
            let f = dir.join(format!("cluster/keyrotation-{name}.yaml"));
            std::fs::write(
                &f,
                format!(
                    "apiVersion: identityd.io/v1alpha1\nkind: KeyRotation\nmetadata:\n  name: {name}\nspec:\n  target: ca\n  deadline: 60s\n"
                ),
            )
            .map_err(|e| super::io_err(&f, e))?;
            let mut text = String::new();
            wait_until(90, &format!("KeyRotation {name} to finish"), || {
                text = std::fs::read_to_string(&f).unwrap_or_default();
                text.contains("phase: Completed") || text.contains("phase: Failed")
            })?;
            *rotation = Some(text);
            Ok(())
        }
        other => Err(LabError::Io(format!(
            "bench-recovery: unknown scenario {other:?} (known: {})",
            SCENARIOS.join(", ")
        ))),
    }
}

/// Every workload SVID of every node (`node: SPIFFE ID`) with its expiry (Unix seconds).
fn workload_expiries(dir: &Path) -> Result<Vec<(String, u64)>, LabError> {
    let mut out = Vec::new();
    for n in 1..=3 {
        let st = crate::daemon::api::fetch(&dir.join(format!("n{n}/run/api.sock")))
            .map_err(|e| LabError::Io(format!("n{n}'s local API: {e}")))?;
        for i in &st.identities {
            if let (true, Some(exp)) = (i.name.starts_with("spiffe://"), i.expires_at_unix) {
                out.push((format!("n{n}: {}", i.name), exp));
            }
        }
    }
    Ok(out)
}

/// The SVIDs of `before` whose expiry has not moved in `now` (gone ones left out). Pure.
fn not_renewed(before: &[(String, u64)], now: &[(String, u64)]) -> Vec<String> {
    before
        .iter()
        .filter(|(id, exp)| now.iter().any(|(i, e)| i == id && e == exp))
        .map(|(id, _)| id.clone())
        .collect()
}

fn ms_since(t0: Instant, t: Instant) -> u64 {
    u64::try_from(t.duration_since(t0).as_millis()).unwrap_or(u64::MAX)
}

fn run_scenario(
    dir: &Path,
    scenario: &str,
    opts: &RecoveryBenchOptions,
) -> Result<ScenarioResult, LabError> {
    let before = n2_status(dir)?;
    let pcap = dir.join(format!("bench-recovery-{scenario}.pcap"));
    let mut cap = super::start_capture(&pcap)?;
    let count = u64::from(opts.rate) * opts.seconds;
    let t0 = Instant::now();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = ClockMap::sample(t0, std::sync::Arc::clone(&stop));
    let flows = vec![
        start_flow("n1->n2", "idd-n1-client-1", "10.244.2.10", opts.rate, count)?,
        start_flow("n1->n3", "idd-n1-client-1", "10.244.3.10", opts.rate, count)?,
        start_flow("n2->n3", "idd-n2-client-2", "10.244.3.10", opts.rate, count)?,
    ];
    let load = |kind: &str, addr: String| -> Result<std::process::Child, LabError> {
        Command::new("ip")
            .args(["netns", "exec", "idd-n1-client-1", &exe()?, "lab", "load"])
            .arg(addr)
            .args(["--kind", kind, "--rate", "50", "--seconds"])
            .arg(opts.seconds.saturating_sub(1).max(1).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LabError::Command {
                cmd: "lab load".into(),
                reason: e.to_string(),
            })
    };
    let ca = scenario == "ca-rollover";
    let tcp = if scenario.starts_with("rotation") || ca {
        Some(load("tcp", format!("10.244.2.10:{KV_PORT}"))?)
    } else {
        None
    };
    let http = if ca {
        Some(load("http", "10.244.2.10:8080".to_owned())?)
    } else {
        None
    };
    let svids_before = if ca {
        workload_expiries(dir)?
    } else {
        Vec::new()
    };
    let mut streams = Vec::new();
    if scenario.starts_with("rotation") || ca {
        for (pair, ns, ip) in [
            ("n1->n2", "idd-n1-client-1", "10.244.2.10"),
            ("n1->n3", "idd-n1-client-1", "10.244.3.10"),
            ("n2->n3", "idd-n2-client-2", "10.244.3.10"),
        ] {
            let child = Command::new("ip")
                .args(["netns", "exec", ns, &exe()?, "lab", "stream"])
                .arg(format!("{ip}:{KV_PORT}"))
                .args(["--interval-ms", "20", "--seconds"])
                .arg(opts.seconds.saturating_sub(1).max(1).to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| LabError::Command {
                    cmd: "lab stream".into(),
                    reason: e.to_string(),
                })?;
            streams.push((pair, child));
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    let disturbed = Instant::now();
    let mut rotation = None;
    let res = disturb(dir, scenario, opts, &mut rotation);
    let back = Instant::now();
    let back_us = u64::try_from(back.duration_since(t0).as_micros()).unwrap_or(u64::MAX);
    // A CA rollover ends when every node serves SVIDs signed after the switch (their expiry
    // moved), while the loads still run.
    let (svids_renewed_at_ms, svids_not_renewed) = if ca && res.is_ok() {
        let mut left = Vec::new();
        let renewed = wait_until(30, "every node to renew its workload SVIDs", || {
            left = match workload_expiries(dir) {
                Ok(now) => not_renewed(&svids_before, &now),
                Err(e) => vec![e.to_string()],
            };
            left.is_empty()
        });
        (renewed.is_ok().then(|| ms_since(t0, Instant::now())), left)
    } else {
        (None, Vec::new())
    };
    let mut outputs = Vec::new();
    for f in flows {
        let out = f
            .child
            .wait_with_output()
            .map_err(|e| LabError::Io(format!("ping: {e}")))?;
        outputs.push((f.pair, out));
    }
    let finish = |child: Option<std::process::Child>| -> Result<Option<LoadResult>, LabError> {
        let Some(child) = child else { return Ok(None) };
        let out = child
            .wait_with_output()
            .map_err(|e| LabError::Io(format!("lab load: {e}")))?;
        let r: LoadReport = serde_json::from_slice(&out.stdout).map_err(|e| {
            LabError::Io(format!(
                "lab load: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        })?;
        Ok(Some(LoadResult {
            scheduled: r.scheduled,
            ok: r.ok,
            errors: r.errors,
            first_errors: r.first_errors,
            p99_us: r.p99_us,
            max_us: r.max_us,
        }))
    };
    let tcp_load = finish(tcp)?;
    let http_load = finish(http)?;
    let mut stream_results = Vec::new();
    for (pair, child) in streams {
        let out = child
            .wait_with_output()
            .map_err(|e| LabError::Io(format!("lab stream: {e}")))?;
        let report = serde_json::from_slice(&out.stdout).map_err(|e| {
            LabError::Io(format!(
                "lab stream {pair}: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        })?;
        stream_results.push(StreamResult { pair, report });
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let clock = sampler
        .join()
        .map_err(|_| LabError::Io("the clock sampler panicked".into()))?;
    let mut results = Vec::new();
    for (pair, out) in outputs {
        let text = String::from_utf8_lossy(&out.stdout);
        // ping's own output, kept beside the lab as the evidence of the figures.
        let _ = std::fs::write(
            dir.join(format!(
                "bench-recovery-{scenario}-{}.txt",
                pair.replace("->", "-")
            )),
            text.as_bytes(),
        );
        let (got, sent) = replies(&text);
        let walls: Vec<u64> = got.iter().map(|(w, _)| *w).collect();
        let mono: Vec<(u64, u64)> = clock
            .monos(&walls)
            .into_iter()
            .zip(got.iter().map(|(_, q)| *q))
            .collect();
        let (longest, first_after) = gaps(&mono, back_us);
        let received = got.len() as u64;
        // ping's own count of replies must match what was read out of its lines.
        let summary_received = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .and_then(|l| {
                l.split(", ")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            });
        if summary_received != Some(received) {
            return Err(LabError::Io(format!(
                "ping {}: {received} replies read, its summary says {summary_received:?}:\n{}",
                pair,
                text.lines().take(5).collect::<Vec<_>>().join("\n")
            )));
        }
        results.push(FlowResult {
            pair,
            sent,
            received,
            lost: sent.saturating_sub(received),
            longest_gap_ms: longest / 1000,
            longest_loss_run: loss_run(&got, sent),
            first_reply_after_back_ms: first_after.map(|us| us / 1000),
        });
    }
    let _ = Command::new("kill")
        .args(["-INT", &cap.id().to_string()])
        .status();
    let _ = cap.wait();
    res?;
    if scenario == "daemon-device-kill" {
        wait_daemon_configured(dir, 2)?;
    }
    let (total, clear, marker) = super::inspect_capture_with(&pcap, MARKER);
    let clear_samples = if clear > 0 {
        super::capture_lines(&pcap, super::NOT_WIREGUARD_FILTER, 8)
    } else {
        let _ = std::fs::remove_file(&pcap);
        Vec::new()
    };
    let after = n2_status(dir)?;
    let (rotation_phase, rotation_message) =
        rotation.as_deref().map_or((None, None), rotation_outcome);
    let wg_show = match &rotation {
        Some(_) if !ca => {
            // The nodes' devices follow the objects within a round or two.
            std::thread::sleep(Duration::from_secs(3));
            Some(wg_show_matches_published(dir)?)
        }
        _ => None,
    };
    Ok(ScenarioResult {
        streams: stream_results,
        tcp_load,
        http_load,
        svids_renewed_at_ms,
        svids_not_renewed,
        rotation_phase,
        rotation_message,
        wg_show_matches_published: wg_show,
        scenario: scenario.to_owned(),
        disturbed_at_ms: ms_since(t0, disturbed),
        back_at_ms: ms_since(t0, back),
        flows: results,
        underlay_packets: total,
        packets_in_clear: clear,
        marker_in_clear: marker,
        clear_samples,
        device_restarts_before: before.wireguard_device_restarts,
        device_restarts_after: after.wireguard_device_restarts,
        key_changed: before.public_key != after.public_key,
    })
}

/// Runs the scenarios on the lab in `dir` and writes the report; returns a summary.
///
/// # Errors
/// No lab, an unknown scenario, a disturbance that does not recover, a tool that fails.
pub fn recovery(dir: &Path, opts: &RecoveryBenchOptions) -> Result<String, LabError> {
    if !dir.join("lab.json").exists() {
        return Err(LabError::NotUp(dir.display().to_string()));
    }
    if let Some(bad) = opts
        .scenarios
        .iter()
        .find(|s| !SCENARIOS.contains(&s.as_str()))
    {
        return Err(LabError::Io(format!(
            "--scenarios: unknown scenario {bad:?} (known: {})",
            SCENARIOS.join(", ")
        )));
    }
    let mut scenarios = Vec::new();
    for s in SCENARIOS
        .iter()
        .filter(|s| opts.scenarios.iter().any(|o| o == *s))
    {
        scenarios.push(run_scenario(dir, s, opts)?);
        // Let the tunnels settle before the next one.
        std::thread::sleep(Duration::from_secs(2));
    }
    let report = Report {
        bench: "recovery",
        rate_pps: opts.rate,
        seconds: opts.seconds,
        restart_delay_ms: u64::try_from(opts.restart_delay.as_millis()).unwrap_or(u64::MAX),
        scenarios,
    };
    if let Some(parent) = opts.out.parent() {
        std::fs::create_dir_all(parent).map_err(|e| super::io_err(parent, e))?;
    }
    let json = serde_json::to_string_pretty(&report).map_err(|e| LabError::Io(e.to_string()))?;
    std::fs::write(&opts.out, &json).map_err(|e| super::io_err(&opts.out, e))?;
    let mut summary = format!("wrote {}\n", opts.out.display());
    for s in &report.scenarios {
        for f in &s.flows {
            summary.push_str(&format!(
                "  {:<19} {}  lost {:>5}/{:<6} most in a row {:>5}  longest gap {:>6} ms  first reply {} ms after back\n",
                s.scenario,
                f.pair,
                f.lost,
                f.sent,
                f.longest_loss_run,
                f.longest_gap_ms,
                f.first_reply_after_back_ms
                    .map_or_else(|| "never".to_owned(), |m| m.to_string())
            ));
        }
        for (what, l) in [("tcp ", &s.tcp_load), ("http", &s.http_load)] {
            if let Some(t) = l {
                summary.push_str(&format!(
                    "  {:<19} {what} (mTLS) {}/{} ok, {} errors, p99 {} µs, max {} µs\n",
                    s.scenario, t.ok, t.scheduled, t.errors, t.p99_us, t.max_us
                ));
            }
        }
        for st in &s.streams {
            let r = &st.report;
            summary.push_str(&format!(
                "  {:<19} {}  stream {}/{} answered, longest wait {} ms, {} stall(s) ≥ 200 ms{}\n",
                s.scenario,
                st.pair,
                r.replies,
                r.sent,
                r.max_reply_gap_ms,
                r.stalls_over_200ms,
                r.error
                    .as_deref()
                    .map_or_else(String::new, |e| format!(", broke: {e}"))
            ));
        }
        if s.scenario == "ca-rollover" {
            summary.push_str(&format!(
                "  {:<19} {}; SVIDs renewed under the new root: {}\n",
                s.scenario,
                s.rotation_message.as_deref().unwrap_or("-"),
                s.svids_renewed_at_ms.map_or_else(
                    || format!("not all ({})", s.svids_not_renewed.join(", ")),
                    |m| format!("at {m} ms")
                )
            ));
        }
        summary.push_str(&format!(
            "  {:<19} underlay {} packets, {} in clear, marker in clear: {}; device restarts {} → {}\n",
            s.scenario,
            s.underlay_packets,
            s.packets_in_clear,
            s.marker_in_clear,
            s.device_restarts_before,
            s.device_restarts_after
        ));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_output_gives_replies_with_their_times() {
        let out = "PING 10.244.2.10 (10.244.2.10) 56(84) bytes of data.\n\
            [1764745200.100000] 64 bytes from 10.244.2.10: icmp_seq=1 ttl=62 time=0.3 ms\n\
            [1764745200.12] 64 bytes from 10.244.2.10: icmp_seq=3 ttl=62 time=0.3 ms\n\
            [1764745200.13] 64 bytes from 10.244.2.10: icmp_seq=3 ttl=62 time=0.3 ms (DUP!)\n\
            [1764745201.620000] 64 bytes from 10.244.2.10: icmp_seq=9 ttl=62 time=0.3 ms\n\
            \n--- 10.244.2.10 ping statistics ---\n\
            9 packets transmitted, 3 received, +1 duplicates, 66% packet loss, time 1520ms\n";
        let (r, sent) = replies(out);
        assert_eq!(sent, 9);
        assert_eq!(
            r,
            vec![
                (1_764_745_200_100_000, 1),
                (1_764_745_200_120_000, 3),
                (1_764_745_201_620_000, 9)
            ]
        );
        // The outage: 1.5 s between replies; back at .5 s past: first reply 1.12 s later.
        assert_eq!(
            gaps(&r, 1_764_745_200_500_000),
            (1_500_000, Some(1_120_000))
        );
        assert_eq!(gaps(&r, 1_764_745_202_000_000), (1_500_000, None));
        assert_eq!(gaps(&[], 0), (0, None));
    }

    #[test]
    fn a_clock_step_mid_run_does_not_make_a_gap() {
        // Samples each 10 ms; the wall clock jumps 30 s forward between 100 and 110 ms.
        let mut m = ClockMap::default();
        for i in 0..20_u64 {
            let mono = i * 10_000;
            let wall = 1_000_000_000 + mono + if i >= 11 { 30_000_000 } else { 0 };
            m.samples.push((wall, mono));
        }
        // Replies at 95 ms and 115 ms (wall: before and after the step): 20 ms apart.
        let t = m.monos(&[1_000_000_000 + 95_000, 1_000_000_000 + 30_000_000 + 115_000]);
        let r = [(t[0], 1), (t[1], 2)];
        assert_eq!(r[0].0, 95_000);
        assert_eq!(r[1].0, 115_000);
        assert_eq!(gaps(&r, 100_000), (20_000, Some(15_000)));
    }

    #[test]
    fn the_longest_loss_run_counts_missing_sequence_numbers_at_the_ends_too() {
        let r = |qs: &[u64]| qs.iter().map(|q| (0, *q)).collect::<Vec<_>>();
        assert_eq!(loss_run(&r(&[1, 2, 3]), 3), 0);
        assert_eq!(loss_run(&r(&[1, 2, 6, 7]), 7), 3);
        assert_eq!(loss_run(&r(&[5, 6]), 10), 4);
        assert_eq!(loss_run(&r(&[1, 1, 2]), 2), 0, "duplicates");
        assert_eq!(loss_run(&[], 4), 4);
    }

    #[test]
    fn a_clock_step_back_mid_run_does_not_make_a_gap() {
        // The wall clock steps 58 s back between 100 and 110 ms: wall times after the step
        // existed before it too.
        let mut m = ClockMap::default();
        let base = 1_000_000_000_u64 + 60_000_000;
        for i in 0..40_u64 {
            let mono = i * 10_000;
            let wall = base + mono - if i >= 11 { 58_000_000 } else { 0 };
            m.samples.push((wall, mono));
        }
        let walls = [
            base + 95_000,
            base - 58_000_000 + 115_000,
            base - 58_000_000 + 125_000,
        ];
        assert_eq!(m.monos(&walls), vec![95_000, 115_000, 125_000]);
    }
}
