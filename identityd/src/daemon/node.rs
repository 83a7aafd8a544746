//! The node role: publishes its `IdentitydNode`, keeps the WireGuard device (a separate
//! `identityd-wg` process that outlives the daemon, on a persistent TUN) and the classifier
//! (pinned, re-adopted on restart) in line with the cluster state, and answers the local API.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use identityd_bpf::classifier::{
    Classifier, ClassifierConfig, MtlsMode as BpfMtls, Route, RouteKind,
};
use identityd_bpf::net::Cidr;
use identityd_bpf::{Direction, PolicyDirection, PolicyPod, PolicyRule, routing};
use identityd_certs::fsutil::write_atomic;
use identityd_wg::key::NodeKey;

use tokio::sync::watch;

use crate::daemon::api::{self, ComponentStatus, NodeStatus, PeerStatus};
use crate::daemon::config::DaemonConfig;
use crate::daemon::identity::Identities;
use crate::daemon::mesh::MeshReport;
use crate::daemon::netpol::{self, PolicyPlan};
use crate::daemon::node_proof;
use crate::daemon::plan::{KeyFiles, NodePlan, RoutePath, plan, plan_with_keys};
use crate::daemon::rotation;
use crate::model::identityd::{IdentitydNodeSpec, WireguardSpec};
use crate::model::{ClusterState, IdentitydNode, MtlsMode, Object};
use crate::source::ClusterSource;

/// Errors that stop the node daemon at start-up (and of the WireGuard device process).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A file or directory.
    #[error("{what}: {source}")]
    Io {
        /// The file, directory or handler.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file written atomically (pid files).
    #[error("{what}: {source}")]
    Write {
        /// The file.
        what: String,
        /// The write error.
        #[source]
        source: identityd_certs::Error,
    },
    /// The cluster source.
    #[error("cluster source: {0}")]
    Source(#[from] crate::source::SourceError),
    /// `podCIDR` is not configured and the store assigns none.
    #[error("podCIDR is not configured and Node {node} has no spec.podCIDR")]
    NoPodCidr {
        /// The node.
        node: String,
    },
    /// Publishing this node's `IdentitydNode`.
    #[error("publishing IdentitydNode {node}: {source}")]
    Publish {
        /// The node.
        node: String,
        /// The store's refusal.
        #[source]
        source: crate::source::SourceError,
    },
    /// The WireGuard node key.
    #[error("wireguard key: {0}")]
    Key(#[from] identityd_wg::key::KeyError),
    /// The WireGuard device process did not start.
    #[error("starting the WireGuard device {binary}: {source}")]
    Device {
        /// The `identityd-wg` binary.
        binary: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The classifier.
    #[error("classifier: {0}")]
    Classifier(#[from] identityd_bpf::Error),
}

fn io(what: &str, source: std::io::Error) -> NodeError {
    NodeError::Io {
        what: what.to_owned(),
        source,
    }
}

/// The running node's shared status (read by the local API).
pub type SharedStatus = Arc<Mutex<NodeStatus>>;

struct Datapath {
    classifier: Option<Classifier>,
    attached: Vec<String>,
    /// The pod interfaces the latest apply found.
    pod_ifaces: Vec<String>,
    wg_json: Option<String>,
    /// The WireGuard device process last seen running (started or adopted).
    wg_pid: Option<u32>,
    /// Times the device process was found dead and started again by this daemon.
    wg_restarts: u64,
    /// NetworkPolicy: the compiled plan of the cluster state version it came from.
    policy_desired: Option<(u64, Arc<PolicyPlan>)>,
    /// What the policy maps hold (read from the pinned maps once, then kept in step with
    /// every write; `None` after a failed read, so the next round reads them again).
    policy_installed: Option<InstalledPolicy>,
    /// Digest of the plan the maps hold, when the last apply wrote all of it.
    policy_digest: Option<String>,
    /// The state version of the plan last applied.
    policy_applied: Option<u64>,
}

/// The content of the classifier's NetworkPolicy maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct InstalledPolicy {
    pods: BTreeMap<IpAddr, PolicyPod>,
    cidrs: BTreeMap<Cidr, u32>,
    rules: BTreeMap<PolicyRule, u32>,
}

impl InstalledPolicy {
    fn read(c: &Classifier) -> Result<Self, String> {
        Ok(Self {
            pods: c
                .policy_pods()
                .map_err(|e| format!("reading the policy pod map: {e}"))?
                .into_iter()
                .collect(),
            cidrs: c
                .policy_cidrs()
                .map_err(|e| format!("reading the policy CIDR map: {e}"))?
                .into_iter()
                .collect(),
            rules: c
                .policy_rules()
                .map_err(|e| format!("reading the policy rule map: {e}"))?
                .into_iter()
                .collect(),
        })
    }

    /// The map content a compiled plan asks for.
    fn of(plan: &PolicyPlan) -> (Self, Vec<String>) {
        let mut errors = Vec::new();
        let mut want = Self::default();
        for (ip, p) in &plan.pods {
            want.pods.insert(
                *ip,
                PolicyPod {
                    identity: p.identity,
                    ingress_policy: p.ingress.unwrap_or(0),
                    egress_policy: p.egress.unwrap_or(0),
                },
            );
        }
        for (cidr, id) in &plan.cidrs {
            match cidr.to_string().parse::<Cidr>() {
                Ok(c) => {
                    want.cidrs.insert(c, *id);
                }
                Err(e) => errors.push(format!("NetworkPolicy ipBlock {cidr}: {e}")),
            }
        }
        for (k, policy) in &plan.rules {
            want.rules.insert(
                PolicyRule {
                    subject: k.subject,
                    direction: match k.direction {
                        netpol::Direction::Ingress => PolicyDirection::Ingress,
                        netpol::Direction::Egress => PolicyDirection::Egress,
                    },
                    peer: k.peer,
                    protocol: k.protocol,
                    port: k.port,
                    port_prefix: k.prefix,
                },
                *policy,
            );
        }
        (want, errors)
    }
}

/// A short digest of what a policy plan puts in the maps: equal on every node that enforces
/// the same cluster policy (`policy.enforced` in the audit compares them).
#[must_use]
pub fn policy_digest(plan: &PolicyPlan) -> String {
    let text = format!("{:?}{:?}{:?}", plan.pods, plan.cidrs, plan.rules);
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Removes from `have` and the map every key of `have` that `want` lacks.
fn remove_stale<K: Ord + Copy + std::fmt::Debug, V>(
    have: &mut BTreeMap<K, V>,
    want: &BTreeMap<K, V>,
    what: &str,
    mut remove: impl FnMut(K) -> Result<(), identityd_bpf::Error>,
    errors: &mut Vec<String>,
) {
    let stale: Vec<K> = have
        .keys()
        .filter(|k| !want.contains_key(k))
        .copied()
        .collect();
    for k in stale {
        match remove(k) {
            Ok(()) => {
                have.remove(&k);
            }
            Err(e) => errors.push(format!("removing {what} {k:?}: {e}")),
        }
    }
}

/// Sets in `have` and the map every entry of `want` that `have` lacks or holds otherwise.
fn set_changed<K: Ord + Copy + std::fmt::Debug, V: PartialEq + Copy>(
    have: &mut BTreeMap<K, V>,
    want: &BTreeMap<K, V>,
    what: &str,
    mut set: impl FnMut(K, V) -> Result<(), identityd_bpf::Error>,
    errors: &mut Vec<String>,
) {
    for (k, v) in want {
        if have.get(k) != Some(v) {
            match set(*k, *v) {
                Ok(()) => {
                    have.insert(*k, *v);
                }
                Err(e) => errors.push(format!("{what} {k:?}: {e}")),
            }
        }
    }
}

/// Makes the policy maps hold `want`, in an order that never denies what both the old and the
/// new state allow: CIDR identities and rules first, then pod entries (identities and
/// isolation), then the removal of stale pods, rules and prefixes.
fn apply_policy(
    c: &mut Classifier,
    have: &mut InstalledPolicy,
    want: &InstalledPolicy,
) -> Vec<String> {
    let mut errors = Vec::new();
    set_changed(
        &mut have.cidrs,
        &want.cidrs,
        "policy CIDR",
        |k, v| c.set_policy_cidr(k, v),
        &mut errors,
    );
    set_changed(
        &mut have.rules,
        &want.rules,
        "policy rule",
        |k, v| c.set_policy_rule(k, v),
        &mut errors,
    );
    set_changed(
        &mut have.pods,
        &want.pods,
        "policy pod",
        |k, v| c.set_policy_pod(k, v),
        &mut errors,
    );
    remove_stale(
        &mut have.pods,
        &want.pods,
        "policy pod",
        |k| c.remove_policy_pod(k),
        &mut errors,
    );
    remove_stale(
        &mut have.rules,
        &want.rules,
        "policy rule",
        |k| c.remove_policy_rule(k),
        &mut errors,
    );
    remove_stale(
        &mut have.cidrs,
        &want.cidrs,
        "policy CIDR",
        |k| c.remove_policy_cidr(k),
        &mut errors,
    );
    errors
}

fn wg_binary(cfg: &DaemonConfig) -> PathBuf {
    if let Some(b) = &cfg.wireguard_binary {
        return b.clone();
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("identityd-wg")))
        .unwrap_or_else(|| PathBuf::from("identityd-wg"))
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// The WireGuard device process recorded in `<runDir>/wg.pid`, when it is alive.
fn running_wg_pid(cfg: &DaemonConfig) -> Option<u32> {
    std::fs::read_to_string(cfg.run_dir.join("wg.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|pid| pid_alive(*pid))
}

/// Starts the WireGuard device process unless one recorded in `wg.pid` is alive. It runs in
/// its own process group so it outlives this daemon (a restart must not take the tunnel down).
fn ensure_wg_process(cfg: &DaemonConfig, config_path: &Path) -> Result<u32, NodeError> {
    let pid_file = cfg.run_dir.join("wg.pid");
    if let Some(pid) = running_wg_pid(cfg) {
        return Ok(pid);
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cfg.run_dir.join("wg.log"))
        .map_err(|e| io("wg.log", e))?;
    let log2 = log.try_clone().map_err(|e| io("wg.log", e))?;
    let bin = wg_binary(cfg);
    let child = {
        use std::os::unix::process::CommandExt;
        Command::new(&bin)
            .arg("run")
            .arg("--config")
            .arg(config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(|source| NodeError::Device {
                binary: bin.clone(),
                source,
            })?
    };
    let pid = child.id();
    write_atomic(&pid_file, pid.to_string().as_bytes(), 0o644).map_err(|source| {
        NodeError::Write {
            what: "wg.pid".to_owned(),
            source,
        }
    })?;
    tracing::info!(pid, binary = %bin.display(), "started the WireGuard device process");
    Ok(pid)
}

/// This node's `IdentitydNode` spec with `public_key` as its current WireGuard key.
fn own_spec(cfg: &DaemonConfig, public_key: &str) -> IdentitydNodeSpec {
    IdentitydNodeSpec {
        pod_cidrs: cfg.pod_cidr.iter().cloned().collect(),
        underlay_addresses: cfg
            .underlay_address
            .iter()
            .map(ToString::to_string)
            .collect(),
        wireguard: cfg.wireguard.as_ref().map(|w| WireguardSpec {
            public_key: public_key.to_owned(),
            port: i64::from(w.port),
            next_public_key: None,
        }),
        ipsec: None,
        proof: None,
    }
}

/// Where a node keeps its WireGuard rotation: the next private key (0600) and the record.
struct RotationFiles {
    next_key: PathBuf,
    /// The key a rotation retired, kept answering for [`RETIRE_GRACE`] (0600, removed after).
    previous_key: PathBuf,
    record: PathBuf,
}

impl RotationFiles {
    fn new(state_dir: &Path) -> Self {
        Self {
            next_key: state_dir.join("wireguard.next.key"),
            previous_key: state_dir.join("wireguard.previous.key"),
            record: state_dir.join("wireguard-rotation.json"),
        }
    }

    /// How much of the retired key's grace is left (a daemon restarted within it keeps it
    /// answering for the rest); a retired key older than the grace is removed.
    fn previous_key_grace(&self) -> Option<Duration> {
        let age = std::fs::metadata(&self.previous_key)
            .and_then(|m| m.modified())
            .ok()
            .map(|t| t.elapsed().unwrap_or_default())?;
        match RETIRE_GRACE.checked_sub(age) {
            Some(left) if !left.is_zero() => Some(left),
            _ => {
                let _ = std::fs::remove_file(&self.previous_key);
                None
            }
        }
    }

    /// The saved record. A record whose next key already is the current one (the daemon
    /// stopped between making it current and recording that) is Retired.
    fn load(&self, current_public: &str) -> Option<rotation::NodeRecord> {
        let text = std::fs::read_to_string(&self.record).ok()?;
        let mut r: rotation::NodeRecord = match serde_json::from_str(&text) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(file = %self.record.display(), error = %e, "unreadable rotation record; ignored");
                return None;
            }
        };
        if r.active() && r.next_public_key == current_public {
            r.step = rotation::NodeStep::Retired;
        }
        Some(r)
    }

    fn save(&self, r: &rotation::NodeRecord) -> Result<(), String> {
        let json = serde_json::to_vec_pretty(r).map_err(|e| e.to_string())?;
        write_atomic(&self.record, &json, 0o600)
            .map_err(|e| format!("{}: {e}", self.record.display()))
    }
}

/// The device's links (`get=identityd-links`); `None` when it does not answer.
fn uapi_links(iface: &str) -> Option<Vec<rotation::LinkView>> {
    use std::io::{BufRead, BufReader, Write};
    let path = identityd_wg::uapi::socket_path(iface);
    let mut s = std::os::unix::net::UnixStream::connect(&path).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    s.write_all(format!("{}\n\n", identityd_wg::uapi::GET_LINKS).as_bytes())
        .ok()?;
    let mut text = String::new();
    for line in BufReader::new(s).lines().map_while(Result::ok) {
        if line.is_empty() {
            break;
        }
        text.push_str(&line);
        text.push('\n');
    }
    if !text.lines().any(|l| l == "errno=0") {
        return None;
    }
    Some(
        identityd_wg::uapi::parse_links(&text)
            .into_iter()
            .map(|l| rotation::LinkView {
                peer: l.peer.to_string(),
                local: l.local.to_string(),
                session: l.session_age.is_some(),
            })
            .collect(),
    )
}

/// Interfaces of the current network namespace (from netlink via `ip`, not `/sys/class/net`:
/// the daemon may share the host's mount namespace, whose sysfs shows another netns).
fn link_names() -> Vec<String> {
    let out = Command::new("ip").args(["-o", "link", "show"]).output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).trim().to_owned())
        .collect()
}

fn pod_interfaces(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = link_names()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

fn bpf_kind(p: RoutePath) -> RouteKind {
    match p {
        RoutePath::Local => RouteKind::Local,
        RoutePath::Wireguard => RouteKind::WireGuard,
        RoutePath::WireguardNode => RouteKind::WireGuardNode,
        RoutePath::Unavailable => RouteKind::Unavailable,
        RoutePath::Plaintext => RouteKind::Plaintext,
    }
}

fn bpf_mtls(m: MtlsMode) -> BpfMtls {
    match m {
        MtlsMode::Strict => BpfMtls::Strict,
        MtlsMode::Permissive => BpfMtls::Permissive,
        MtlsMode::Disabled => BpfMtls::Disabled,
    }
}

impl Datapath {
    fn apply(&mut self, cfg: &DaemonConfig, p: &NodePlan) -> Vec<String> {
        let mut errors = Vec::new();
        // WireGuard: write the device config (the device process reloads it on change).
        if let Some(wg) = &p.wireguard {
            match serde_json::to_string_pretty(wg) {
                Ok(json) if self.wg_json.as_deref() != Some(json.as_str()) => {
                    let path = cfg.run_dir.join("wg.json");
                    match write_atomic(&path, json.as_bytes(), 0o600) {
                        Ok(()) => {
                            tracing::info!(
                                peers = wg.peers.len(),
                                "wrote the WireGuard device config"
                            );
                            self.wg_json = Some(json);
                        }
                        Err(e) => errors.push(format!("wg.json: {e}")),
                    }
                }
                Ok(_) => {}
                Err(e) => errors.push(format!("wg.json: {e}")),
            }
            match ensure_wg_process(cfg, &cfg.run_dir.join("wg.json")) {
                Ok(pid) => {
                    if self.wg_pid.is_some_and(|old| old != pid) {
                        self.wg_restarts += 1;
                        tracing::warn!(
                            pid,
                            restarts = self.wg_restarts,
                            "the WireGuard device process had died; started again"
                        );
                    }
                    self.wg_pid = Some(pid);
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        // Classifier: attach to new pod veths, then diff routes and workloads.
        errors.extend(self.attach_pods(cfg));
        let errors_before_maps = errors.len();
        if let Some(c) = self.classifier.as_mut() {
            // The tunnel packets from remote pods must arrive on (ingress strict).
            let tunnels: Vec<u32> = cfg
                .wireguard
                .iter()
                .filter_map(|w| identityd_bpf::pin::ifindex(&w.interface).ok())
                .collect();
            match c.tunnels() {
                Ok(t) if t == tunnels => {}
                _ => {
                    if let Err(e) = c.set_tunnels(&tunnels) {
                        errors.push(format!("tunnel interfaces {tunnels:?}: {e}"));
                    }
                }
            }
            // The explicit exceptions to ingress strict's encryption rule (validated with
            // the config), diffed against the map.
            let allow: Vec<Cidr> = cfg
                .encryption
                .allow_from
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect();
            if let Err(e) = c.set_allow_from(&allow) {
                errors.push(format!("encryption.allowFrom: {e}"));
            }
            // Diff against what the maps hold (pinned maps outlive the daemon, so after a
            // restart they hold the previous daemon's entries), not against memory.
            let installed_routes: BTreeMap<Cidr, (RouteKind, u32)> = match c.routes() {
                Ok(v) => v
                    .into_iter()
                    .map(|(cidr, r)| (cidr, (r.kind, r.node_id)))
                    .collect(),
                Err(e) => {
                    errors.push(format!("reading the route map: {e}"));
                    BTreeMap::new()
                }
            };
            let mut wanted_routes = BTreeMap::new();
            for (cidr, (path, id)) in &p.routes {
                match cidr.parse::<Cidr>() {
                    Ok(c2) => {
                        wanted_routes.insert(c2, (bpf_kind(*path), *id));
                    }
                    Err(e) => errors.push(format!("route {cidr}: {e}")),
                }
            }
            for (cidr, (kind, node_id)) in &wanted_routes {
                if installed_routes.get(cidr) == Some(&(*kind, *node_id)) {
                    continue;
                }
                let route = Route {
                    kind: *kind,
                    node_id: *node_id,
                };
                if let Err(e) = c.set_route(*cidr, route) {
                    errors.push(format!("route {cidr}: {e}"));
                }
            }
            for cidr in installed_routes.keys() {
                if !wanted_routes.contains_key(cidr)
                    && let Err(e) = c.remove_route(*cidr)
                {
                    // Reported; the next round finds it in the map and tries again.
                    errors.push(format!("removing route {cidr}: {e}"));
                }
            }
            let installed_workloads: BTreeMap<IpAddr, BpfMtls> = match c.workloads() {
                Ok(v) => v.into_iter().collect(),
                Err(e) => {
                    errors.push(format!("reading the workload map: {e}"));
                    BTreeMap::new()
                }
            };
            for (ip, mode) in &p.workloads {
                if installed_workloads.get(ip) != Some(&bpf_mtls(*mode))
                    && let Err(e) = c.set_workload(*ip, bpf_mtls(*mode))
                {
                    errors.push(format!("workload {ip}: {e}"));
                }
            }
            for ip in installed_workloads.keys() {
                if !p.workloads.contains_key(ip)
                    && let Err(e) = c.remove_workload(*ip)
                {
                    errors.push(format!("removing workload {ip}: {e}"));
                }
            }
            let installed_probes: std::collections::BTreeSet<(IpAddr, u16)> = match c.probe_ports()
            {
                Ok(v) => v.into_iter().collect(),
                Err(e) => {
                    errors.push(format!("reading the probe-port map: {e}"));
                    std::collections::BTreeSet::new()
                }
            };
            for (ip, port) in p.probe_ports.difference(&installed_probes) {
                if let Err(e) = c.set_probe_port(*ip, *port) {
                    errors.push(format!("probe port {ip}:{port}: {e}"));
                }
            }
            for (ip, port) in installed_probes.difference(&p.probe_ports) {
                if let Err(e) = c.remove_probe_port(*ip, *port) {
                    errors.push(format!("removing probe port {ip}:{port}: {e}"));
                }
            }
            // NetworkPolicy, before the node says it is ready (nothing to do when the maps
            // already hold this plan).
            if let Some((version, plan)) = &self.policy_desired
                && (self.policy_applied != Some(*version) || self.policy_digest.is_none())
            {
                let (want, bad) = InstalledPolicy::of(plan);
                errors.extend(bad);
                let have = match self.policy_installed.take() {
                    Some(h) => Ok(h),
                    None => InstalledPolicy::read(c),
                };
                match have {
                    Ok(mut have) => {
                        let failed = apply_policy(c, &mut have, &want);
                        self.policy_digest = failed.is_empty().then(|| policy_digest(plan));
                        self.policy_applied = Some(*version);
                        errors.extend(failed);
                        self.policy_installed = Some(have);
                    }
                    Err(e) => {
                        self.policy_digest = None;
                        errors.push(e);
                    }
                }
            }
            // The maps hold this node's plan: new TCP into its pods is judged by it from now
            // on (until then ingress strict refused all of it).

            if errors.len() == errors_before_maps
                && !c.ready().unwrap_or(false)
                && let Err(e) = c.set_ready(true)
            {
                errors.push(format!("marking the classifier ready: {e}"));
            }
        }
        errors
    }

    /// Attaches the path classifier and ingress strict to every pod veth not attached yet.
    /// Called once right after the classifier is loaded (before any cluster state: ingress
    /// strict then refuses new TCP into every pod until the first plan is in the maps) and
    /// in every round.
    fn attach_pods(&mut self, cfg: &DaemonConfig) -> Vec<String> {
        let mut errors = Vec::new();
        let Some(c) = self.classifier.as_mut() else {
            return errors;
        };
        self.pod_ifaces = pod_interfaces(&cfg.pod_interface_prefix);
        for iface in self.pod_ifaces.clone() {
            if !self.attached.contains(&iface) {
                // Both directions: the path classifier on packets leaving the pod, ingress
                // strict on packets going into it.
                match c
                    .attach(&iface, Direction::Ingress)
                    .and_then(|()| c.attach_to_pod(&iface))
                {
                    Ok(()) => {
                        tracing::info!(iface, "classifier and ingress strict attached");
                        self.attached.push(iface);
                    }
                    Err(e) => errors.push(format!("attach {iface}: {e}")),
                }
            }
        }
        errors
    }
}

/// Puts `addr` on the WireGuard interface once it exists. Returns whether it is there.
fn ensure_tunnel_address(iface: &str, addr: IpAddr) -> bool {
    if !link_names().iter().any(|n| n == iface) {
        return false;
    }
    let prefix = if addr.is_ipv4() { 32 } else { 128 };
    let out = Command::new("ip")
        .args(["addr", "replace", &format!("{addr}/{prefix}"), "dev", iface])
        .output();
    match out {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            tracing::warn!(iface, %addr, error = %String::from_utf8_lossy(&o.stderr).trim(), "tunnel address");
            false
        }
        Err(e) => {
            tracing::warn!(iface, %addr, error = %e, "tunnel address");
            false
        }
    }
}

/// Reads peers and handshakes from the device's UAPI socket (`get=1`).
fn uapi_peers(iface: &str) -> Vec<(String, Option<u64>, u64, u64)> {
    use std::io::{BufRead, BufReader, Write};
    let path = identityd_wg::uapi::socket_path(iface);
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(&path) else {
        return Vec::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"get=1\n\n").is_err() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut cur: Option<(String, Option<u64>, u64, u64)> = None;
    for line in BufReader::new(s).lines().map_while(Result::ok) {
        if line.is_empty() {
            break;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k {
            "public_key" => {
                if let Some(c) = cur.take() {
                    out.push(c);
                }
                cur = Some((v.to_owned(), None, 0, 0));
            }
            "last_handshake_time_sec" => {
                if let Some(c) = cur.as_mut() {
                    c.1 = v.parse().ok().filter(|t: &u64| *t > 0);
                }
            }
            "rx_bytes" => {
                if let Some(c) = cur.as_mut() {
                    c.2 = v.parse().unwrap_or(0);
                }
            }
            "tx_bytes" => {
                if let Some(c) = cur.as_mut() {
                    c.3 = v.parse().unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    if let Some(c) = cur.take() {
        out.push(c);
    }
    out
}

/// The userspace device's drop and handshake-defence counters (`get=identityd-counters`);
/// empty for a device that does not answer it (the kernel's).
fn uapi_counters(iface: &str) -> Vec<(String, u64)> {
    use std::io::{BufRead, BufReader, Write};
    let path = identityd_wg::uapi::socket_path(iface);
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(&path) else {
        return Vec::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("{}\n\n", identityd_wg::uapi::GET_COUNTERS).as_bytes())
        .is_err()
    {
        return Vec::new();
    }
    let mut out = Vec::new();
    for line in BufReader::new(s).lines().map_while(Result::ok) {
        if line.is_empty() {
            break;
        }
        match line.split_once('=') {
            Some(("errno", "0")) => {}
            Some(("errno", _)) => return Vec::new(),
            Some((k, v)) => {
                if let Ok(v) = v.parse() {
                    out.push((k.to_owned(), v));
                }
            }
            None => {}
        }
    }
    out
}

fn hex_of_base64(b64: &str) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// What the datapath task reports: its plan, what it applied, and what failed.
#[derive(Debug, Clone, Default)]
pub struct DatapathReport {
    /// The plan last applied.
    pub plan: Option<Arc<NodePlan>>,
    /// The node's WireGuard public key (base64), after any rotation.
    pub public_key: String,
    /// Interfaces the classifier is attached to.
    pub attached: Vec<String>,
    /// Classifier counters per path: name → (packets, bytes).
    pub counters: Vec<(String, (u64, u64))>,
    /// Apply errors of the latest round (failed removals included).
    pub errors: Vec<String>,
    /// Version of the cluster state the plan came from.
    pub cluster_version: u64,
    /// Why ingress strict is not in place on every pod veth (`None`: it is).
    pub ingress_strict_problem: Option<String>,
    /// Restarts of the WireGuard device process after it died.
    pub wireguard_device_restarts: u64,
    /// Other nodes' objects whose proof did not verify (`None`: proofs are not checked,
    /// the node has no CA).
    pub unverified_nodes: Option<Vec<String>>,
    /// NetworkPolicy enforcement (`None`: no classifier).
    pub network_policy: Option<api::NetworkPolicyStatus>,
}

fn policy_status(dp: &Datapath) -> Option<api::NetworkPolicyStatus> {
    let c = dp.classifier.as_ref()?;
    let plan = dp.policy_desired.as_ref().map(|(_, p)| p);
    let name = |id: u32| {
        plan.and_then(|p| p.policies.get(&id))
            .map_or_else(|| format!("policy #{id}"), ToString::to_string)
    };
    Some(api::NetworkPolicyStatus {
        digest: dp.policy_digest.clone(),
        policies: plan.map_or(0, |p| p.policies.len() as u64),
        rules: dp
            .policy_installed
            .as_ref()
            .map_or(0, |i| i.rules.len() as u64),
        pods: dp
            .policy_installed
            .as_ref()
            .map_or(0, |i| i.pods.len() as u64),
        drops: c
            .policy_drops()
            .unwrap_or_default()
            .into_iter()
            .map(|(id, dir, n)| {
                let dir = match dir {
                    PolicyDirection::Ingress => "ingress",
                    PolicyDirection::Egress => "egress",
                };
                (name(id), dir.to_owned(), n)
            })
            .collect(),
        problems: plan.map_or_else(Vec::new, |p| {
            p.problems.iter().map(ToString::to_string).collect()
        }),
    })
}

fn classifier_counters(dp: &Datapath) -> Vec<(String, (u64, u64))> {
    use identityd_bpf::classifier::Path as P;
    dp.classifier
        .as_ref()
        .and_then(|c| c.counters().ok())
        .map(|pc| {
            [
                P::WireGuard,
                P::Ipsec,
                P::Proxy,
                P::Plaintext,
                P::Drop,
                P::Pass,
            ]
            .into_iter()
            .map(|path| {
                let s = pc.get(path);
                (path.name().to_owned(), (s.packets, s.bytes))
            })
            .collect()
        })
        .unwrap_or_default()
}

/// The datapath task: key rotation, the WireGuard device config, the classifier's routes and
/// workloads. It replans on every cluster state change and re-applies each second; nothing
/// here waits for the CA or Envoy.
struct DatapathTask {
    cfg: Arc<DaemonConfig>,
    dp: Datapath,
    key_path: PathBuf,
    public_key: String,
    source: Arc<dyn ClusterSource>,
    tunnel_addr_done: bool,
    files: RotationFiles,
    /// This node's part of the latest WireGuard rotation (kept in `files.record`).
    record: Option<rotation::NodeRecord>,
    /// A withdrawn next key stays in the device until then.
    withdrawn_until: Option<tokio::time::Instant>,
    /// A retired key stays in the device, answering, until then.
    retired_until: Option<tokio::time::Instant>,
    /// The mesh task's reports (the trust bundle roots Envoy acknowledged, published in the
    /// object for a CA rollover); absent without a CA.
    mesh: Option<watch::Receiver<Arc<MeshReport>>>,
    /// The startup taint is off this node's `Node` (or there is none to remove).
    startup_taint_done: bool,
    /// No new attempt to remove it before then (after a failure).
    startup_taint_retry: Option<tokio::time::Instant>,
    /// Node proofs: signing this node's object, verifying the others' (with a CA only).
    proofs: Option<NodeProofs>,
}

/// This node's side of authentic node objects ([`crate::daemon::node_proof`]).
struct NodeProofs {
    signer: node_proof::ProofSigner,
    verified: node_proof::VerifiedNodes,
    td: identityd_certs::TrustDomain,
    /// The identity worker's publication (its trust bundle is the live one).
    identities: Option<watch::Receiver<Arc<Identities>>>,
    /// The bootstrap bundle, until the identity worker has one.
    bootstrap: Option<identityd_certs::Bundle>,
    /// The live bundle, parsed once per PEM.
    bundle: Option<(String, identityd_certs::Bundle)>,
}

impl NodeProofs {
    fn new(
        cfg: &DaemonConfig,
        identities: Option<watch::Receiver<Arc<Identities>>>,
        signer: Option<node_proof::ProofSigner>,
    ) -> Option<Self> {
        let signer = signer?;
        let td = identityd_certs::TrustDomain::new(&cfg.trust_domain).ok()?;
        let bootstrap = match crate::daemon::identity::bootstrap_bundle(cfg, &td) {
            Ok((_, b)) => Some(b),
            Err(e) => {
                tracing::warn!(error = %e, "no bootstrap bundle to verify node proofs with yet");
                None
            }
        };
        Some(Self {
            signer,
            verified: node_proof::VerifiedNodes::load(cfg.state_dir.join("verified-nodes.json")),
            td,
            identities,
            bootstrap,
            bundle: None,
        })
    }

    /// The live trust bundle (the identity worker's latest), else the bootstrap one.
    fn bundle(&mut self) -> Option<&identityd_certs::Bundle> {
        let pem = self
            .identities
            .as_ref()
            .map(|r| r.borrow().bundle_pem.clone())
            .filter(|p| !p.trim().is_empty());
        if let Some(pem) = pem
            && self.bundle.as_ref().is_none_or(|(p, _)| *p != pem)
        {
            match identityd_certs::Bundle::from_pem(self.td.clone(), &pem) {
                Ok(b) => self.bundle = Some((pem, b)),
                Err(e) => tracing::warn!(error = %e, "the trust bundle does not parse"),
            }
        }
        self.bundle
            .as_ref()
            .map(|(_, b)| b)
            .or(self.bootstrap.as_ref())
    }

    /// `state` as this node acts on it: other nodes' objects only in their verified versions.
    fn view(&mut self, state: &Arc<ClusterState>, own: &str) -> Arc<ClusterState> {
        let now = SystemTime::now();
        let td = self.td.clone();
        let bundle = self.bundle().cloned();
        if self.verified.refresh(state, own, &td, bundle.as_ref(), now) {
            tracing::info!("verified node objects changed");
        }
        self.verified.view(state, own)
    }
}

/// How long after a failed removal of the startup taint the next attempt waits.
const STARTUP_TAINT_RETRY: Duration = Duration::from_secs(10);

/// How long a withdrawn next key keeps answering after it was unpublished: peers learn it
/// from the object (the source, their daemon's round, their device's reload) and send on their
/// sessions to it until then.
const WITHDRAW_GRACE: Duration = Duration::from_secs(5);

/// How long a retired key keeps answering after the node switched to its new key: a peer
/// learns the switch from the object (the source, its daemon's round, its device's reload)
/// and until then may send on a session to the old key — when both ends of a pair retire
/// within one handshake of each other, each one's only session to the other is the one to
/// the other's old key. Its links never send while the new key has a session.
const RETIRE_GRACE: Duration = Duration::from_secs(10);

impl DatapathTask {
    async fn round(&mut self, raw: &Arc<ClusterState>) -> DatapathReport {
        let cfg = Arc::clone(&self.cfg);
        let mut errors = Vec::new();
        // With node proofs, every other node is acted on only in its last verified version.
        let view = match self.proofs.as_mut() {
            Some(p) => p.view(raw, &cfg.name),
            None => Arc::clone(raw),
        };
        let state: &ClusterState = &view;
        // A rotation's step first (it decides the key files), then the device config.
        let peers = plan(&cfg, state, &self.key_path, cfg.mtls.default_mode)
            .wireguard
            .as_ref()
            .map(rotation::device_peers)
            .unwrap_or_default();
        let links = match (&self.record, &cfg.wireguard) {
            (Some(r), Some(w)) if r.active() => {
                let iface = w.interface.clone();
                tokio::task::spawn_blocking(move || uapi_links(&iface))
                    .await
                    .ok()
                    .flatten()
            }
            _ => None,
        };
        let action = rotation::node_action(
            state,
            &cfg.name,
            self.record.as_ref(),
            &peers,
            links.as_deref(),
        );
        let mut drop_next_key = false;
        if action != rotation::NodeAction::None {
            match self.rotation_step(&action) {
                Ok(()) => {
                    tracing::info!(?action, record = ?self.record, "WireGuard key rotation step");
                    match action {
                        rotation::NodeAction::Retire => {
                            drop_next_key = true;
                            self.retired_until = Some(tokio::time::Instant::now() + RETIRE_GRACE);
                        }
                        // Peers built sessions to the next key and send on them: it is
                        // unpublished now and stays in the device until they have followed.
                        rotation::NodeAction::Withdraw => {
                            self.withdrawn_until =
                                Some(tokio::time::Instant::now() + WITHDRAW_GRACE);
                        }
                        _ => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(?action, error = %e, "WireGuard key rotation step");
                    errors.push(format!("KeyRotation: {e}"));
                }
            }
        }
        let grace = self
            .withdrawn_until
            .is_some_and(|t| tokio::time::Instant::now() < t);
        if self.withdrawn_until.is_some() && !grace {
            self.withdrawn_until = None;
            drop_next_key = true;
        }
        let retired = self
            .retired_until
            .is_some_and(|t| tokio::time::Instant::now() < t);
        let mut drop_previous_key = false;
        if self.retired_until.is_some() && !retired {
            self.retired_until = None;
            drop_previous_key = true;
        }
        let rotating = self
            .record
            .as_ref()
            .is_some_and(rotation::NodeRecord::active);
        let keys = KeyFiles {
            current: self.key_path.clone(),
            // The device holds two keys at most: a rotation's next key (or a withdrawn one),
            // else a retired one during its grace.
            next: if rotating || grace {
                Some(self.files.next_key.clone())
            } else if retired {
                Some(self.files.previous_key.clone())
            } else {
                None
            },
            next_answer_only: grace || (retired && !rotating),
        };
        let mut p = plan_with_keys(&cfg, state, &keys, cfg.mtls.default_mode);
        let unverified_nodes = self.proofs.as_ref().map(|pr| pr.verified.problems());
        p.problems
            .extend(unverified_nodes.iter().flatten().cloned());
        // NetworkPolicy: compiled once per cluster state version.
        if self
            .dp
            .policy_desired
            .as_ref()
            .is_none_or(|(v, _)| *v != state.version())
        {
            self.dp.policy_desired = Some((state.version(), Arc::new(netpol::compile(state))));
        }
        for e in self.dp.apply(&cfg, &p) {
            tracing::warn!(error = %e, "apply");
            errors.push(e);
        }
        if drop_next_key && errors.is_empty() {
            let _ = std::fs::remove_file(&self.files.next_key);
        }
        if drop_previous_key && errors.is_empty() {
            let _ = std::fs::remove_file(&self.files.previous_key);
        }
        // The published object follows the record: the next key once the device holds it.
        let next_in_device = self.record.as_ref().is_some_and(|r| {
            peers.is_empty()
                || links
                    .as_ref()
                    .is_some_and(|l| l.iter().any(|x| x.local == r.next_public_key))
        });
        let mut want = rotation::with_trusted_roots(
            rotation::published_node(
                state.node(&cfg.name),
                IdentitydNode::new(cfg.name.clone(), own_spec(&cfg, &self.public_key)),
                self.record.as_ref(),
                next_in_device,
                &rotation::now_rfc3339(),
            ),
            self.mesh
                .as_ref()
                .and_then(|m| m.borrow().trusted_roots.clone()),
        );
        if let Some(pr) = self.proofs.as_mut() {
            want.spec.proof = None;
            want.spec.proof = pr.signer.proof_for(&want.spec, SystemTime::now());
        }
        if state.node(&cfg.name).is_some()
            && rotation::node_differs(state.node(&cfg.name), &want)
            && let Err(e) = self.source.apply(&Object::IdentitydNode(want)).await
        {
            errors.push(format!("republishing IdentitydNode {}: {e}", cfg.name));
        }
        if !self.tunnel_addr_done
            && let (Some(addr), Some(w)) = (cfg.tunnel_address, &cfg.wireguard)
        {
            self.tunnel_addr_done = ensure_tunnel_address(&w.interface, addr);
        }
        // The node's pods are guarded by this node's plan: pods may now be scheduled here
        // (the agent-not-ready pattern; a no-op for stores without taints).
        if !self.startup_taint_done
            && errors.is_empty()
            && self
                .startup_taint_retry
                .is_none_or(|t| tokio::time::Instant::now() >= t)
            && self
                .dp
                .classifier
                .as_ref()
                .is_some_and(|c| c.ready().unwrap_or(false))
        {
            match self
                .source
                .remove_node_taint(&cfg.name, &cfg.startup_taint)
                .await
            {
                Ok(removed) => {
                    if removed {
                        tracing::info!(taint = %cfg.startup_taint, "startup taint removed");
                    }
                    self.startup_taint_done = true;
                }
                Err(e) => {
                    self.startup_taint_retry =
                        Some(tokio::time::Instant::now() + STARTUP_TAINT_RETRY);
                    errors.push(format!("startup taint {}: {e}", cfg.startup_taint));
                }
            }
        }
        let ingress_strict_problem = ingress_strict_problem(&cfg, &self.dp, &p.cluster_cidrs);
        DatapathReport {
            ingress_strict_problem,
            plan: Some(Arc::new(p)),
            public_key: self.public_key.clone(),
            attached: self.dp.attached.clone(),
            counters: classifier_counters(&self.dp),
            errors,
            cluster_version: state.version(),
            wireguard_device_restarts: self.dp.wg_restarts,
            unverified_nodes,
            network_policy: policy_status(&self.dp),
        }
    }

    /// Takes one step of this node's part of a WireGuard rotation: key files and the record
    /// (the device config and the object follow in the same round).
    fn rotation_step(&mut self, action: &rotation::NodeAction) -> Result<(), String> {
        use rotation::{NodeAction as A, NodeRecord, NodeStep};
        match action {
            A::None => {}
            A::Announce(name) => {
                let (next, _) = NodeKey::load_or_generate(&self.files.next_key)
                    .map_err(|e| format!("the next key: {e}"))?;
                let record = NodeRecord {
                    rotation: name.clone(),
                    step: NodeStep::Announced,
                    next_public_key: next.public_key().to_string(),
                };
                drop(next);
                self.files.save(&record)?;
                self.record = Some(record);
            }
            A::Switch => {
                let mut r = self.record.clone().ok_or("no rotation record")?;
                r.step = NodeStep::Switched;
                self.files.save(&r)?;
                self.record = Some(r);
            }
            A::Retire => {
                let mut r = self.record.clone().ok_or("no rotation record")?;
                // The next key becomes the current one (atomically, 0600); the device keeps
                // the sessions peers built to it and drops the old key's.
                let next = NodeKey::load(&self.files.next_key)
                    .map_err(|e| format!("the next key: {e}"))?;
                if next.public_key().to_string() != r.next_public_key {
                    return Err(format!(
                        "{} holds another key than the announced {}",
                        self.files.next_key.display(),
                        r.next_public_key
                    ));
                }
                // The old key keeps answering for RETIRE_GRACE: peers that have not followed
                // yet may still send on sessions to it.
                NodeKey::load(&self.key_path)
                    .and_then(|old| old.save(&self.files.previous_key))
                    .map_err(|e| format!("keeping the retired key: {e}"))?;
                next.save(&self.key_path)
                    .map_err(|e| format!("saving the new key: {e}"))?;
                drop(next);
                r.step = NodeStep::Retired;
                self.files.save(&r)?;
                self.public_key.clone_from(&r.next_public_key);
                self.record = Some(r);
            }
            A::Withdraw => {
                let mut r = self.record.clone().ok_or("no rotation record")?;
                r.step = NodeStep::Withdrawn;
                self.files.save(&r)?;
                self.record = Some(r);
            }
        }
        Ok(())
    }

    async fn run(
        mut self,
        mut state: watch::Receiver<Arc<ClusterState>>,
        out: watch::Sender<Arc<DatapathReport>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_exit: Option<tokio::time::Instant> = None;
        loop {
            let st = state.borrow_and_update().clone();
            let report = self.round(&st).await;
            let _ = out.send(Arc::new(report));
            let device = self.dp.wg_pid;
            tokio::select! {
                r = state.changed() => if r.is_err() { break },
                _ = tick.tick() => {}
                () = device_exit(device) => {
                    tracing::warn!(pid = ?device, "the WireGuard device process exited");
                    // A device that keeps dying right after its start is restarted at most
                    // once a second, not in a tight loop.
                    let now = tokio::time::Instant::now();
                    if let Some(prev) = last_exit.filter(|p| now.duration_since(*p) < DEVICE_RESTART_MIN_INTERVAL) {
                        tokio::time::sleep_until(prev + DEVICE_RESTART_MIN_INTERVAL).await;
                    }
                    last_exit = Some(tokio::time::Instant::now());
                }
                _ = stop.changed() => break,
            }
        }
        // Pinned classifier links and the device process stay: no gap until the next start.
    }
}

/// Least time between two restarts of a device that keeps exiting.
const DEVICE_RESTART_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Resolves when the device process `pid` exits (at once, through a pidfd), so the next
/// round starts it again without waiting for the tick; never without a process, and never
/// where pidfds are unavailable (the one-second tick then notices the death).
async fn device_exit(pid: Option<u32>) {
    match pid {
        Some(pid) => {
            if let Err(e) = identityd_wg::process::exited(pid).await {
                tracing::debug!(pid, error = %e, "no pidfd for the device; polling each second");
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Whether ingress strict guards every pod veth of this node, read back from the machine:
/// strict mode on, the program attached to every pod interface, and the tunnel interfaces
/// known to it, and at least one cluster CIDR known (configured or from the Node objects:
/// without one, a pod CIDR nobody publishes is not recognised as pod traffic). `None` when it
/// is in place, else why not.
fn ingress_strict_problem(
    cfg: &DaemonConfig,
    dp: &Datapath,
    cluster_cidrs: &[String],
) -> Option<String> {
    if !cfg.encryption.strict_mode {
        return Some("strict mode is off".to_owned());
    }
    if cluster_cidrs.is_empty() {
        return Some(
            "no cluster CIDR is known (clusterCIDRs is empty and no Node object carries \
             spec.podCIDRs)"
                .to_owned(),
        );
    }
    let Some(c) = dp.classifier.as_ref() else {
        return Some("no classifier".to_owned());
    };
    match c.ready() {
        Ok(true) => {}
        Ok(false) => {
            return Some(
                "this node's first plan is not in the classifier yet (new TCP into every pod \
                 is refused until it is)"
                    .to_owned(),
            );
        }
        Err(e) => return Some(format!("reading the classifier state: {e}")),
    }
    let missing: Vec<String> = dp
        .pod_ifaces
        .iter()
        .filter(|i| !dp.attached.contains(i))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Some(format!("not attached to {}", missing.join(", ")));
    }
    if cfg.wireguard.is_some() {
        match c.tunnels() {
            Ok(t) if !t.is_empty() => {}
            Ok(_) => return Some("the WireGuard interface is not known to it yet".to_owned()),
            Err(e) => return Some(format!("reading the tunnel map: {e}")),
        }
    }
    None
}

/// Seconds until each root of `bundle_pem` expires.
fn bundle_roots(bundle_pem: &str, now: SystemTime) -> Vec<u64> {
    identityd_certs::bundle::certs_from_pem(bundle_pem)
        .unwrap_or_default()
        .iter()
        .filter_map(|c| identityd_certs::inspect::describe(c).ok())
        .map(|i| {
            let t = std::time::UNIX_EPOCH
                + Duration::from_secs(u64::try_from(i.not_after_unix).unwrap_or(0));
            t.duration_since(now).map_or(0, |d| d.as_secs())
        })
        .collect()
}

fn peer_path(p: &NodePlan, peer: &crate::daemon::plan::PeerView) -> &'static str {
    peer.pod_cidrs
        .first()
        .and_then(|c| p.routes.get(&crate::daemon::plan::canonical(c)))
        .map_or("unavailable", |(r, _)| match r {
            RoutePath::Wireguard => "wireguard",
            RoutePath::WireguardNode => "wireguard (node address)",
            RoutePath::Unavailable => "dropped (no key yet)",
            RoutePath::Plaintext => "plaintext",
            RoutePath::Local => "local",
        })
}

/// The inputs of one status document: each task's latest report.
struct StatusInputs<'a> {
    state: &'a ClusterState,
    dp: &'a DatapathReport,
    ids: Option<&'a Identities>,
    mesh: Option<&'a MeshReport>,
    uapi: &'a [(String, Option<u64>, u64, u64)],
}

/// The node's status from each task's latest report. Pure: the clock is passed in.
fn build_status(
    cfg: &DaemonConfig,
    key_path: &Path,
    i: &StatusInputs<'_>,
    now: SystemTime,
) -> NodeStatus {
    let now_unix = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut st = NodeStatus {
        node: cfg.name.clone(),
        public_key: i.dp.public_key.clone(),
        public_key_hex: hex_of_base64(&i.dp.public_key).unwrap_or_default(),
        encryption_mode: match cfg.encryption.mode {
            crate::daemon::config::EncryptionMode::Wireguard => "wireguard",
            crate::daemon::config::EncryptionMode::Ipsec => "ipsec",
            crate::daemon::config::EncryptionMode::Disabled => "disabled",
        }
        .to_owned(),
        strict_mode: cfg.encryption.strict_mode,
        cluster_version: i.dp.cluster_version,
        counters: i.dp.counters.clone(),
        classifier_interfaces: i.dp.attached.clone(),
        ingress_strict_in_place: i.dp.plan.is_some() && i.dp.ingress_strict_problem.is_none(),
        ingress_strict_problem: i.dp.ingress_strict_problem.clone(),
        wireguard_device_restarts: i.dp.wireguard_device_restarts,
        unverified_nodes: i.dp.unverified_nodes.clone(),
        network_policy: i.dp.network_policy.clone(),
        allow_from: cfg.encryption.allow_from.clone(),
        ..NodeStatus::default()
    };
    if let Some(p) = &i.dp.plan {
        st.peers = p
            .peers
            .iter()
            .map(|peer| {
                let hex = peer.public_key.map(|k| k.to_hex());
                let u = i.uapi.iter().find(|(k, ..)| Some(k) == hex.as_ref());
                PeerStatus {
                    name: peer.name.clone(),
                    endpoint: peer.endpoint.map(|e| e.to_string()),
                    path: peer_path(p, peer).to_owned(),
                    handshake_age_secs: u
                        .and_then(|(_, h, ..)| h.map(|h| now_unix.saturating_sub(h))),
                    rx_bytes: u.map_or(0, |x| x.2),
                    tx_bytes: u.map_or(0, |x| x.3),
                }
            })
            .collect();
        st.problems.clone_from(&p.problems);
    }
    st.problems
        .extend(i.state.problems.iter().map(ToString::to_string));
    st.components.push(ComponentStatus {
        name: "datapath".into(),
        ok: i.dp.errors.is_empty() && i.dp.plan.is_some(),
        errors: i.dp.errors.clone(),
    });
    if let Some(ids) = i.ids {
        let secs_left = |t: SystemTime| t.duration_since(now).map_or(0, |d| d.as_secs());
        st.svids = ids
            .svids
            .iter()
            .map(|(id, s)| (id.to_string(), secs_left(s.not_after())))
            .collect();
        st.bundle_roots = bundle_roots(&ids.bundle_pem, now);
        st.ingress_certificates = ids
            .serving
            .values()
            .map(|(w, c)| (w.dns_names.join(","), secs_left(c.not_after())))
            .collect();
        st.identities.clone_from(&ids.status);
        let mut errors: Vec<String> = ids
            .status
            .iter()
            .filter_map(|s| {
                let e = s.error.as_ref()?;
                Some(format!("{} ({}): {e}", s.name, s.state))
            })
            .collect();
        if let Some(e) = &ids.ca_error {
            errors.insert(0, format!("CA: {e}"));
        }
        if !ids.connected {
            st.problems.push(format!(
                "mTLS: {}",
                ids.ca_error
                    .as_deref()
                    .unwrap_or("not connected to the CA yet")
            ));
        }
        st.problems.extend(
            ids.status
                .iter()
                .filter(|s| s.state == "unavailable")
                .map(|s| {
                    format!(
                        "identity {} unavailable (fails closed): {}",
                        s.name,
                        s.error.as_deref().unwrap_or("expired")
                    )
                }),
        );
        st.components.push(ComponentStatus {
            name: "identity".into(),
            ok: ids.connected && errors.is_empty(),
            errors,
        });
    }
    if let Some(m) = i.mesh {
        st.xds.clone_from(&m.xds);
        st.envoy_restarts = m.envoy_restarts;
        st.envoy_ready = m.envoy_ready;
        st.inbound_workloads.clone_from(&m.inbound);
        st.problems.extend(
            m.config_problems
                .iter()
                .map(|p| format!("not pushed to Envoy: {p}")),
        );
        st.components.push(ComponentStatus {
            name: "mesh".into(),
            ok: m.errors.is_empty() && m.config_problems.is_empty(),
            errors: m.errors.iter().chain(&m.config_problems).cloned().collect(),
        });
    }
    st.key_age_secs = std::fs::metadata(key_path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .map(|d| d.as_secs());
    st
}

/// The status task: each second (and on every report), one status document from the tasks'
/// latest reports and the device's UAPI counters.
async fn status_task(
    cfg: Arc<DaemonConfig>,
    key_path: PathBuf,
    state: watch::Receiver<Arc<ClusterState>>,
    mut dp: watch::Receiver<Arc<DatapathReport>>,
    ids: Option<watch::Receiver<Arc<Identities>>>,
    mesh: Option<watch::Receiver<Arc<MeshReport>>>,
    status: SharedStatus,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let iface = cfg.wireguard.as_ref().map(|w| w.interface.clone());
        let (uapi, device_counters) = match iface {
            Some(i) => tokio::task::spawn_blocking(move || (uapi_peers(&i), uapi_counters(&i)))
                .await
                .unwrap_or_default(),
            None => (Vec::new(), Vec::new()),
        };
        let st_now = state.borrow().clone();
        let dp_now = dp.borrow_and_update().clone();
        let ids_now = ids.as_ref().map(|r| r.borrow().clone());
        let mesh_now = mesh.as_ref().map(|r| r.borrow().clone());
        let mut doc = build_status(
            &cfg,
            &key_path,
            &StatusInputs {
                state: &st_now,
                dp: &dp_now,
                ids: ids_now.as_deref(),
                mesh: mesh_now.as_deref(),
                uapi: &uapi,
            },
            SystemTime::now(),
        );
        doc.wireguard_counters = device_counters;
        *status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = doc;
        tokio::select! {
            _ = tick.tick() => {}
            r = dp.changed() => if r.is_err() { break },
        }
    }
}

/// The report task: every few seconds, the node's summary ([`crate::daemon::report`]) from
/// its latest status; written as its `IdentitydNodeReport` when the throttle says so. A write
/// that fails is retried on the next tick (logged once per distinct error).
async fn report_task(
    cfg: Arc<DaemonConfig>,
    source: Arc<dyn crate::source::ClusterSource>,
    state: watch::Receiver<Arc<ClusterState>>,
    status: SharedStatus,
) {
    use crate::daemon::report::{ReportThrottle, SummaryLimits, summarise};
    let Ok((min, heartbeat, handshake)) = cfg.report.seconds() else {
        return; // refused by DaemonConfig::check before the node starts
    };
    let limits = SummaryLimits {
        handshake_max_age_secs: handshake,
        ..SummaryLimits::default()
    };
    let mut throttle = ReportThrottle::new(min, heartbeat);
    let start = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(min.clamp(1, 10)));
    let mut last_error = String::new();
    loop {
        tick.tick().await;
        let st = status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        // Nothing to say before the first status document.
        if st.node.is_empty() || st.cluster_version == 0 {
            continue;
        }
        let snapshot = state.borrow().clone();
        let report = summarise(
            &st,
            &snapshot,
            &cfg.trust_domain,
            &limits,
            SystemTime::now(),
        );
        let now = start.elapsed().as_secs();
        if !throttle.due(now, &report) {
            continue;
        }
        match source.write_report(&cfg.name, &report).await {
            Ok(()) => {
                throttle.written(now, &report);
                last_error.clear();
            }
            Err(e) => {
                let e = e.to_string();
                if e != last_error {
                    tracing::warn!(error = %e, "writing the node report (retrying)");
                    last_error = e;
                }
            }
        }
    }
}

/// Runs the node role until SIGTERM/SIGINT.
///
/// The node is a set of independent tasks, each fed by the cluster state's `watch`:
/// - **datapath**: key rotation, the WireGuard device config, classifier routes/workloads;
/// - **identity** ([`crate::daemon::identity`]): the only task that talks to the CA;
/// - **mesh** ([`crate::daemon::mesh`]): xDS for the node's Envoy from the state and the
///   identities, Envoy supervision, TPROXY;
/// - **status**: the local API's document from the others' reports.
///
/// A stalled CA delays only the identity task.
///
/// # Errors
/// Start-up failures (directories, key, source, classifier load).
pub async fn run(mut cfg: DaemonConfig) -> Result<(), NodeError> {
    for d in [&cfg.state_dir, &cfg.run_dir] {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .map_err(|e| io(&d.display().to_string(), e))?;
    }
    let key_path = cfg.state_dir.join("wireguard.key");
    let (key, origin) = NodeKey::load_or_generate(&key_path)?;
    let public_key = key.public_key().to_string();
    drop(key);
    tracing::info!(node = %cfg.name, public_key, ?origin, "node key ready");

    // The classifier first, before the cluster source is even opened (an API server that
    // does not answer must not leave the pods unguarded).
    let classifier = {
        let ccfg = ClassifierConfig {
            strict: cfg.encryption.strict_mode,
            pin_dir: cfg
                .pin_bpf
                .then(|| PathBuf::from(format!("/sys/fs/bpf/identityd/{}", cfg.name))),
            cluster_cidrs: cfg
                .cluster_cidrs
                .iter()
                .filter_map(|c| c.parse().ok())
                .collect(),
            flow_events: match cfg.flow_events {
                crate::daemon::config::FlowEventsMode::None => {
                    identityd_bpf::classifier::FlowEvents::None
                }
                crate::daemon::config::FlowEventsMode::Drops => {
                    identityd_bpf::classifier::FlowEvents::Drops
                }
                crate::daemon::config::FlowEventsMode::All => {
                    identityd_bpf::classifier::FlowEvents::All
                }
            },
            ..ClassifierConfig::default()
        };
        Some(Classifier::load(&ccfg)?)
    };
    if let Some(rcfg) = crate::daemon::plan::base_routing(&cfg) {
        let rplan = routing::plan(&rcfg);
        if let Err(e) = routing::apply(&rplan) {
            tracing::warn!(error = %e, "policy routing for the WireGuard mark");
        }
    }
    let mut dp = Datapath {
        classifier,
        attached: Vec::new(),
        pod_ifaces: Vec::new(),
        wg_json: None,
        wg_pid: None,
        wg_restarts: 0,
        policy_desired: None,
        policy_installed: None,
        policy_digest: None,
        policy_applied: None,
    };
    // Guard the pods before any cluster state is applied: on a fresh load (first start,
    // reboot) ingress strict refuses new TCP into all of them until the first plan is in the
    // maps; a re-adopted pinned classifier keeps enforcing what the last daemon knew.
    for e in dp.attach_pods(&cfg) {
        tracing::warn!(error = %e, "attaching before the first plan");
    }
    if let Some(c) = &dp.classifier {
        tracing::info!(
            ready = c.ready().unwrap_or(false),
            "classifier loaded and attached"
        );
    }

    let source = crate::source::open(&cfg.source_spec()).await?;
    if cfg.pod_cidr.is_none() {
        // clusterSource: kube without podCIDR: the Node object's spec.podCIDR.
        cfg.pod_cidr = source.node_pod_cidr(&cfg.name).await?;
        if cfg.pod_cidr.is_none() {
            return Err(NodeError::NoPodCidr {
                node: cfg.name.clone(),
            });
        }
    }
    // Publish this node (with the next key of a rotation it is in the middle of: the device
    // still answers on it).
    let files = RotationFiles::new(&cfg.state_dir);
    let record = files.load(&public_key);
    let mut node = IdentitydNode::new(cfg.name.clone(), own_spec(&cfg, &public_key));
    if let (Some(w), Some(r)) = (node.spec.wireguard.as_mut(), &record)
        && r.active()
        && files.next_key.exists()
    {
        w.next_public_key = Some(r.next_public_key.clone());
    }
    // With a CA, the node signs what it publishes: from the first publication when it already
    // holds a node SVID (a restart), else once it has joined.
    let mut signer = cfg
        .ca
        .is_some()
        .then(|| node_proof::ProofSigner::new(&cfg.name, &cfg.state_dir));
    if let Some(sg) = signer.as_mut() {
        node.spec.proof = sg.proof_for(&node.spec, SystemTime::now());
    }
    if let Some(r) = &record {
        node.status = Some(crate::model::IdentitydNodeStatus {
            observed_generation: None,
            conditions: vec![rotation::record_condition(r, &rotation::now_rfc3339())],
            ..Default::default()
        });
    }
    source
        .apply(&Object::IdentitydNode(node))
        .await
        .map_err(|source| NodeError::Publish {
            node: cfg.name.clone(),
            source,
        })?;

    let cfg = Arc::new(cfg);
    let status: SharedStatus = Arc::new(Mutex::new(NodeStatus::default()));
    let api_task = tokio::spawn(api::serve(
        cfg.run_dir.join("api.sock"),
        Arc::clone(&status),
    ));
    let telemetry = crate::daemon::telemetry::Telemetry::new(&cfg.name);
    let telemetry_task = tokio::spawn(crate::daemon::telemetry::serve(
        cfg.run_dir.join("telemetry.sock"),
        telemetry.clone(),
    ));
    let metrics_task = cfg.metrics_address.map(|a| {
        tokio::spawn(crate::daemon::metrics::serve(
            a,
            Arc::clone(&status),
            telemetry.clone(),
        ))
    });
    let source_task = source.spawn();
    let mut state_rx = source.subscribe();
    let (stop_tx, stop_rx) = watch::channel(false);

    let (mut id_task, mut mesh_task, mut id_rx, mut mesh_rx) = (None, None, None, None);
    if let (Some(_), Some(envoy)) = (&cfg.ca, &cfg.envoy) {
        let (id_tx, rx) = watch::channel(Arc::new(Identities::default()));
        id_task = Some(tokio::spawn(crate::daemon::identity::run(
            Arc::clone(&cfg),
            state_rx.clone(),
            id_tx,
        )));
        let (mesh_tx, mrx) = watch::channel(Arc::new(MeshReport::default()));
        mesh_task = Some(tokio::spawn(crate::daemon::mesh::run(
            Arc::clone(&cfg),
            envoy.clone(),
            telemetry.clone(),
            state_rx.clone(),
            rx.clone(),
            mesh_tx,
            stop_rx.clone(),
        )));
        id_rx = Some(rx);
        mesh_rx = Some(mrx);
    }

    let (dp_tx, dp_rx) = watch::channel(Arc::new(DatapathReport {
        public_key: public_key.clone(),
        ..DatapathReport::default()
    }));
    let retired_until = files
        .previous_key_grace()
        .map(|left| tokio::time::Instant::now() + left);
    let datapath = DatapathTask {
        cfg: Arc::clone(&cfg),
        dp,
        key_path: key_path.clone(),
        public_key,
        source: Arc::clone(&source),
        tunnel_addr_done: false,
        files,
        record,
        withdrawn_until: None,
        retired_until,
        mesh: mesh_rx.clone(),
        startup_taint_done: cfg.startup_taint.is_empty(),
        startup_taint_retry: None,
        proofs: NodeProofs::new(&cfg, id_rx.clone(), signer.take()),
    };
    let dp_task = tokio::spawn(datapath.run(state_rx.clone(), dp_tx, stop_rx.clone()));

    let status_task = tokio::spawn(status_task(
        Arc::clone(&cfg),
        key_path,
        state_rx.clone(),
        dp_rx,
        id_rx,
        mesh_rx,
        Arc::clone(&status),
    ));
    let report_task = cfg.report.enabled.then(|| {
        tokio::spawn(report_task(
            Arc::clone(&cfg),
            Arc::clone(&source),
            state_rx.clone(),
            Arc::clone(&status),
        ))
    });

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| io("SIGTERM handler", e))?;
    loop {
        tokio::select! {
            r = state_rx.changed() => if r.is_err() { break },
            _ = term.recv() => { tracing::info!("SIGTERM: stopping (the WireGuard device, the classifier and Envoy stay)"); break }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let _ = stop_tx.send(true);
    // The datapath and mesh tasks finish their round and leave the device, the pinned
    // classifier and Envoy in place; the others hold no state worth a goodbye.
    let _ = dp_task.await;
    if let Some(t) = mesh_task.take() {
        let _ = t.await;
    }
    if let Some(t) = id_task.take() {
        t.abort();
    }
    status_task.abort();
    if let Some(t) = report_task {
        t.abort();
    }
    source_task.abort();
    api_task.abort();
    telemetry_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_record_survives_a_restart_and_one_interrupted_after_the_key_swap_counts_as_retired()
     {
        let dir = tempfile::tempdir().unwrap();
        let files = RotationFiles::new(dir.path());
        assert_eq!(files.load("K"), None, "no record yet");
        let r = rotation::NodeRecord {
            rotation: "r1".into(),
            step: rotation::NodeStep::Switched,
            next_public_key: "NEXT".into(),
        };
        files.save(&r).unwrap();
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&files.record)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(files.load("OLD").as_ref(), Some(&r), "resumed as it was");
        // The daemon stopped after making the next key current but before recording it.
        let loaded = files.load("NEXT").unwrap();
        assert_eq!(loaded.step, rotation::NodeStep::Retired);
        // A record that does not parse is ignored (with a warning), not fatal.
        std::fs::write(&files.record, "{not json").unwrap();
        assert_eq!(files.load("K"), None);
    }
}
