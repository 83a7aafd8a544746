//! `identityd observe`: flow events from the classifiers' ring buffers (pinned by each node
//! daemon), with source/destination pod, identity where known, and the path verdict.

use std::path::Path;
use std::time::Duration;

use identityd_bpf::classifier::{DropReason, FlowEvent, FlowEventReader, Path as BpfPath};
use serde::Serialize;

use crate::model::{ClusterState, MtlsMode};

/// One flow event, resolved against the cluster state.
#[derive(Debug, Clone, Serialize)]
pub struct Flow {
    /// The node whose classifier saw it.
    pub node: String,
    /// `ip:port`.
    pub src: String,
    /// `ip:port`.
    pub dst: String,
    /// Source pod (`ns/name`), when known.
    pub src_pod: Option<String>,
    /// Destination pod, when known.
    pub dst_pod: Option<String>,
    /// The source's SPIFFE ID, when its namespace uses mTLS.
    pub src_identity: Option<String>,
    /// `tcp`, `udp`, `icmp` or the protocol number.
    pub protocol: String,
    /// `wireguard`, `ipsec`, `mtls`, `plaintext-allowed`, `dropped` or `pass`.
    pub verdict: String,
    /// Why it was dropped.
    pub drop_reason: Option<String>,
    /// Bytes.
    pub len: u32,
}

/// Resolves a raw event.
#[must_use]
pub fn resolve(node: &str, e: &FlowEvent, state: &ClusterState, trust_domain: &str) -> Flow {
    let pod_of = |ip| {
        state
            .pod_by_ip(ip)
            .map(|p| format!("{}/{}", p.namespace(), p.metadata.name))
    };
    let src_identity = state.pod_by_ip(e.src).and_then(|p| {
        (state.pod_mtls(p, MtlsMode::Disabled) != MtlsMode::Disabled).then(|| {
            format!(
                "spiffe://{trust_domain}/ns/{}/sa/{}",
                p.namespace(),
                p.service_account()
            )
        })
    });
    Flow {
        node: node.to_owned(),
        src: format!("{}:{}", e.src, e.src_port),
        dst: format!("{}:{}", e.dst, e.dst_port),
        src_pod: pod_of(e.src),
        dst_pod: pod_of(e.dst),
        src_identity,
        protocol: match e.protocol {
            6 => "tcp".into(),
            17 => "udp".into(),
            1 | 58 => "icmp".into(),
            n => n.to_string(),
        },
        verdict: match e.path {
            BpfPath::WireGuard => "wireguard",
            BpfPath::Ipsec => "ipsec",
            BpfPath::Proxy => "mtls",
            BpfPath::Plaintext => "plaintext-allowed",
            BpfPath::Drop => "dropped",
            BpfPath::Pass => "pass",
        }
        .to_owned(),
        drop_reason: e.drop_reason.map(|r| match r {
            DropReason::NoPath => "no encrypted path (strict mode)".to_owned(),
            DropReason::PlaintextRoute => "plaintext route (strict mode)".to_owned(),
            DropReason::NotEncrypted => "ingress-not-encrypted".to_owned(),
            DropReason::NotMtls => "ingress-not-mtls".to_owned(),
            DropReason::NotReady => "ingress-not-ready".to_owned(),
            DropReason::PolicyEgress => {
                format!(
                    "policy-denied egress, isolated by {}",
                    policy_name(state, e.policy)
                )
            }
            DropReason::PolicyIngress => {
                format!(
                    "policy-denied ingress, isolated by {}",
                    policy_name(state, e.policy)
                )
            }
            DropReason::Other(n) => format!("reason {n}"),
        }),
        len: e.len,
    }
}

/// The NetworkPolicy (`namespace/name`) with id `id` in `state` (ids are compiled per state
/// version; the last one is kept).
fn policy_name(state: &ClusterState, id: u32) -> String {
    type Names = std::collections::BTreeMap<u32, crate::model::NamespacedName>;
    static CACHE: std::sync::Mutex<Option<(u64, Names)>> = std::sync::Mutex::new(None);
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if cache.as_ref().is_none_or(|(v, _)| *v != state.version()) {
        *cache = Some((
            state.version(),
            crate::daemon::netpol::compile(state).policies,
        ));
    }
    cache
        .as_ref()
        .and_then(|(_, names)| names.get(&id))
        .map_or_else(|| format!("policy #{id}"), |n| format!("NetworkPolicy {n}"))
}

/// Renders one flow as a line.
#[must_use]
pub fn line(f: &Flow) -> String {
    format!(
        "{:<4} {:<5} {:<22} {:<18} → {:<22} {:<18} {:<18} {}{}",
        f.node,
        f.protocol,
        f.src,
        f.src_pod.as_deref().unwrap_or("-"),
        f.dst,
        f.dst_pod.as_deref().unwrap_or("-"),
        f.verdict,
        f.src_identity.as_deref().unwrap_or(""),
        f.drop_reason
            .as_ref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    )
}

/// Reads flows from every node of a lab. Without `follow`, drains what is buffered and returns.
///
/// # Errors
/// When the lab or a node's pinned ring buffer cannot be opened.
pub fn run(
    dir: &Path,
    follow: bool,
    json: bool,
    mut out: impl FnMut(&str),
) -> Result<usize, String> {
    let lab: crate::lab::LabState = serde_json::from_slice(
        &std::fs::read(dir.join("lab.json"))
            .map_err(|e| format!("--dir={}: no lab ({e})", dir.display()))?,
    )
    .map_err(|e| e.to_string())?;
    let source = crate::source::FileSource::open(
        dir.join("cluster"),
        crate::source::FileSourceOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    let mut readers = Vec::new();
    for ((name, _), pin) in lab.nodes.iter().zip(&lab.bpf_pins) {
        let r =
            FlowEventReader::from_pin(Path::new(pin)).map_err(|e| format!("node {name}: {e}"))?;
        readers.push((name.clone(), r));
    }
    let mut n = 0;
    loop {
        let state = source.snapshot();
        let mut got = 0;
        for (name, r) in &mut readers {
            while let Some(e) = r.try_next() {
                let f = resolve(name, &e, &state, "cluster.local");
                out(&if json {
                    serde_json::to_string(&f).unwrap_or_default()
                } else {
                    line(&f)
                });
                got += 1;
            }
        }
        n += got;
        if !follow {
            return Ok(n);
        }
        if got == 0 {
            std::thread::sleep(Duration::from_millis(100));
            let _ = source.poll();
        }
    }
}

/// The telemetry sockets to read: `socket` (a node daemon's `<run>/telemetry.sock`, the local
/// API on a real node) or, without it, every node of the lab in `dir`.
///
/// # Errors
/// When there is no lab in `dir`, or `socket` does not exist.
pub fn telemetry_sockets(
    dir: &Path,
    socket: Option<&Path>,
) -> Result<Vec<(String, std::path::PathBuf)>, String> {
    match socket {
        Some(s) if s.exists() => Ok(vec![("local".to_owned(), s.to_path_buf())]),
        Some(s) => Err(format!(
            "--socket={}: no such socket (a node daemon serves <runDir>/telemetry.sock)",
            s.display()
        )),
        None => lab_node_sockets(dir),
    }
}

fn lab_node_sockets(dir: &Path) -> Result<Vec<(String, std::path::PathBuf)>, String> {
    let lab: crate::lab::LabState = serde_json::from_slice(
        &std::fs::read(dir.join("lab.json"))
            .map_err(|e| format!("--dir={}: no lab ({e})", dir.display()))?,
    )
    .map_err(|e| e.to_string())?;
    Ok(lab
        .nodes
        .iter()
        .map(|(name, _)| (name.clone(), dir.join(name).join("run/telemetry.sock")))
        .collect())
}

/// Renders one L7 flow record as a line.
#[must_use]
pub fn l7_line(r: &crate::daemon::telemetry::FlowRecord) -> String {
    format!(
        "{} {:<3} {:<8} {:<4} {:<18} {} → {:<18} {} {} {} {:>3} {:>8.2}ms {}{}",
        r.time,
        r.node,
        r.key.direction,
        r.key.kind,
        r.source_pod.as_deref().unwrap_or("-"),
        if r.key.source_identity.is_empty() {
            "-"
        } else {
            &r.key.source_identity
        },
        if r.key.destination_service.is_empty() {
            "-"
        } else {
            &r.key.destination_service
        },
        r.destination_pod.as_deref().unwrap_or("-"),
        r.method.as_deref().unwrap_or("tcp"),
        r.authority.as_deref().unwrap_or(""),
        r.status,
        r.latency_ms,
        r.path,
        if r.flags.is_empty() {
            String::new()
        } else {
            format!(" [{}]", r.flags.join(","))
        }
    )
}

/// `observe --l7`: the L7 flow records of every node of a lab (HTTP requests and L4 mTLS
/// connections through the node Envoys). Without `follow`, what is buffered.
///
/// # Errors
/// When the lab or a node's telemetry socket cannot be read.
pub fn run_l7(
    nodes: &[(String, std::path::PathBuf)],
    follow: bool,
    json: bool,
    mut out: impl FnMut(&str),
) -> Result<usize, String> {
    let mut seen = vec![0u64; nodes.len()];
    let mut n = 0;
    loop {
        let mut got = 0;
        for (i, (_, sock)) in nodes.iter().enumerate() {
            let recs: Vec<crate::daemon::telemetry::FlowRecord> =
                crate::daemon::telemetry::ask(sock, &format!("records {}", seen[i]))?;
            for r in &recs {
                seen[i] = seen[i].max(r.seq);
                out(&if json {
                    serde_json::to_string(r).unwrap_or_default()
                } else {
                    l7_line(r)
                });
            }
            got += recs.len();
        }
        n += got;
        if !follow {
            return Ok(n);
        }
        if got == 0 {
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// One row of `identityd stat`.
#[derive(Debug, Clone, Serialize)]
pub struct StatRow {
    /// `http` or `tcp` (L4 mTLS: connections, no status).
    pub kind: String,
    /// The service.
    pub service: String,
    /// The caller's SPIFFE ID (empty: grouped over callers, or none).
    pub source_identity: String,
    /// The route (grouped by route only: `top`; empty otherwise or for the default route).
    pub route: String,
    /// Requests or connections in the window.
    pub count: u64,
    /// Share of requests that were not 5xx nor unanswered (HTTP).
    pub success_rate: Option<f64>,
    /// 4xx answers.
    pub client_errors: u64,
    /// 5xx answers.
    pub server_errors: u64,
    /// Per second over the window.
    pub rps: f64,
    /// Latency percentiles, milliseconds (estimated from fine buckets).
    pub p50_ms: Option<f64>,
    /// 95th.
    pub p95_ms: Option<f64>,
    /// 99th.
    pub p99_ms: Option<f64>,
}

/// A stat group: aggregate, 4xx, 5xx, unanswered, seconds covered.
type Group = (crate::daemon::telemetry::Agg, u64, u64, u64, f64);

/// How `stat` groups rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatGroup {
    /// One row per service.
    Service,
    /// One row per service and caller identity.
    Caller,
    /// One row per service and route (`top`).
    Route,
}

/// `identityd stat`: per service (and caller identity or route) over the last `window`
/// seconds, from the `direction` records of each node in `nodes` (default: the callers' side).
///
/// # Errors
/// When a node's telemetry socket cannot be read.
pub fn stat(
    nodes: &[(String, std::path::PathBuf)],
    window: u64,
    direction: &str,
    group: StatGroup,
) -> Result<Vec<StatRow>, String> {
    use crate::daemon::telemetry::{Agg, WindowRow};
    let mut groups: std::collections::BTreeMap<(String, String, String, String), Group> =
        std::collections::BTreeMap::new();
    for (_, sock) in nodes {
        let rows: Vec<WindowRow> =
            crate::daemon::telemetry::ask(sock, &format!("window {window}"))?;
        for r in rows.into_iter().filter(|r| r.key.direction == direction) {
            let (caller, route) = match group {
                StatGroup::Service => (String::new(), String::new()),
                StatGroup::Caller => (r.key.source_identity.clone(), String::new()),
                StatGroup::Route => (String::new(), r.key.route.clone()),
            };
            let g = groups
                .entry((
                    r.key.kind.clone(),
                    r.key.destination_service.clone(),
                    caller,
                    route,
                ))
                .or_insert_with(|| (Agg::default(), 0, 0, 0, 0.0));
            g.0.merge(&r.agg);
            match r.key.response_code_class.as_str() {
                "4xx" => g.1 += r.agg.count,
                "5xx" => g.2 += r.agg.count,
                "none" => g.3 += r.agg.count,
                _ => {}
            }
            g.4 = g.4.max(r.secs);
        }
    }
    #[allow(clippy::cast_precision_loss)]
    Ok(groups
        .into_iter()
        .map(
            |((kind, service, source_identity, route), (a, c4, c5, none, secs))| StatRow {
                success_rate: (kind == "http" && a.count > 0)
                    .then(|| (a.count - c5 - none) as f64 / a.count as f64),
                client_errors: c4,
                server_errors: c5,
                rps: a.count as f64 / secs.max(1.0),
                p50_ms: a.quantile(0.5).map(|s| s * 1000.0),
                p95_ms: a.quantile(0.95).map(|s| s * 1000.0),
                p99_ms: a.quantile(0.99).map(|s| s * 1000.0),
                count: a.count,
                kind,
                service,
                source_identity,
                route,
            },
        )
        .collect())
}

/// `identityd top`: the `limit` busiest routes (by requests or connections in the window),
/// busiest first.
///
/// # Errors
/// When a node's telemetry socket cannot be read.
pub fn top(
    nodes: &[(String, std::path::PathBuf)],
    window: u64,
    direction: &str,
    limit: usize,
) -> Result<Vec<StatRow>, String> {
    let mut rows = stat(nodes, window, direction, StatGroup::Route)?;
    rows.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| (&a.service, &a.route).cmp(&(&b.service, &b.route)))
    });
    rows.truncate(limit);
    Ok(rows)
}

/// `top` as a table (one screen of it).
#[must_use]
pub fn top_table(rows: &[StatRow], window: u64, direction: &str) -> String {
    let mut out = format!(
        "identityd top: busiest routes ({direction}, last {window}s)\n{:<4} {:<16} {:<36} {:>7} {:>8} {:>8} {:>5} {:>9} {:>9}\n",
        "kind", "service", "route", "count", "rps", "success", "5xx", "p50", "p99"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<4} {:<16} {:<36} {:>7} {:>8.2} {:>8} {:>5} {:>9} {:>9}\n",
            r.kind,
            if r.service.is_empty() {
                "-"
            } else {
                &r.service
            },
            if r.route.is_empty() {
                "(default)"
            } else {
                &r.route
            },
            r.count,
            r.rps,
            percent(r.success_rate),
            r.server_errors,
            ms(r.p50_ms),
            ms(r.p99_ms)
        ));
    }
    if rows.is_empty() {
        out.push_str("(no requests in the window)\n");
    }
    out
}

/// Milliseconds for a table cell (`-`: none).
fn ms(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.2}ms"))
}

/// A share as a percentage for a table cell (`-`: none).
fn percent(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |s| format!("{:.1}%", s * 100.0))
}

/// `stat` as a table.
#[must_use]
pub fn stat_table(rows: &[StatRow]) -> String {
    let mut out = format!(
        "{:<4} {:<16} {:<44} {:>6} {:>8} {:>5} {:>5} {:>8} {:>9} {:>9} {:>9}\n",
        "kind", "service", "caller", "count", "success", "4xx", "5xx", "rps", "p50", "p95", "p99"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<4} {:<16} {:<44} {:>6} {:>8} {:>5} {:>5} {:>8.2} {:>9} {:>9} {:>9}\n",
            r.kind,
            if r.service.is_empty() {
                "-"
            } else {
                &r.service
            },
            if r.source_identity.is_empty() {
                "*"
            } else {
                &r.source_identity
            },
            r.count,
            percent(r.success_rate),
            r.client_errors,
            r.server_errors,
            r.rps,
            ms(r.p50_ms),
            ms(r.p95_ms),
            ms(r.p99_ms)
        ));
    }
    out
}
