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
use identityd_bpf::{Direction, routing};
use identityd_certs::fsutil::write_atomic;
use identityd_wg::key::NodeKey;

use crate::daemon::api::{self, NodeStatus, PeerStatus};
use crate::daemon::config::DaemonConfig;
use crate::daemon::mesh::Mesh;
use crate::daemon::plan::{NodePlan, RoutePath, plan};
use crate::daemon::rotation;
use crate::model::identityd::{IdentitydNodeSpec, WireguardSpec};
use crate::model::{ClusterState, IdentitydNode, MtlsMode, Object};
use crate::source::ClusterSource;

/// Errors that stop the node daemon at start-up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A file or directory.
    #[error("{0}")]
    Io(String),
    /// The cluster source.
    #[error("cluster source: {0}")]
    Source(String),
    /// The WireGuard key or device.
    #[error("wireguard: {0}")]
    Wireguard(String),
    /// The classifier.
    #[error("classifier: {0}")]
    Classifier(String),
}

fn io(what: &str, e: impl std::fmt::Display) -> NodeError {
    NodeError::Io(format!("{what}: {e}"))
}

/// The running node's shared status (read by the local API).
pub type SharedStatus = Arc<Mutex<NodeStatus>>;

struct Datapath {
    classifier: Option<Classifier>,
    applied_routes: BTreeMap<String, (RoutePath, u32)>,
    applied_workloads: BTreeMap<IpAddr, MtlsMode>,
    attached: Vec<String>,
    wg_json: Option<String>,
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
            .map_err(|e| NodeError::Wireguard(format!("starting {}: {e}", bin.display())))?
    };
    let pid = child.id();
    write_atomic(&pid_file, pid.to_string().as_bytes(), 0o644).map_err(|e| io("wg.pid", e))?;
    tracing::info!(pid, binary = %bin.display(), "started the WireGuard device process");
    Ok(pid)
}

/// This node's part of a `wireguard` KeyRotation: a new key (0600, atomic), the device process
/// restarted with it (the persistent TUN and its routes stay), and the `IdentitydNode`
/// republished with the new public key and the rotated condition (labels and other conditions
/// kept). Returns the new public key.
async fn rotate_wireguard_key(
    cfg: &DaemonConfig,
    key_path: &Path,
    state: &ClusterState,
    source: &dyn ClusterSource,
    rotation_name: &str,
) -> Result<String, String> {
    let me = state
        .node(&cfg.name)
        .ok_or("this node's IdentitydNode is not published yet")?;
    let key = NodeKey::generate();
    key.save(key_path)
        .map_err(|e| format!("saving the new key: {e}"))?;
    let public_key = key.public_key().to_string();
    drop(key);
    // The device keeps the key it started with: restart it (it re-reads the key file).
    if let Some(pid) = running_wg_pid(cfg) {
        let _ = Command::new("kill").arg(pid.to_string()).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while pid_alive(pid) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if pid_alive(pid) {
            return Err(format!("the WireGuard device process {pid} did not stop"));
        }
    }
    ensure_wg_process(cfg, &cfg.run_dir.join("wg.json")).map_err(|e| e.to_string())?;
    let mut node = me.clone();
    if let Some(w) = node.spec.wireguard.as_mut() {
        w.public_key.clone_from(&public_key);
    }
    let mut st = node.status.take().unwrap_or_default();
    st.conditions
        .retain(|c| c.type_ != rotation::ROTATED_CONDITION);
    st.conditions.push(rotation::rotated_condition(
        rotation_name,
        &public_key,
        &rotation::now_rfc3339(),
    ));
    node.status = Some(st);
    source
        .apply(&Object::IdentitydNode(node))
        .await
        .map_err(|e| format!("republishing IdentitydNode {}: {e}", cfg.name))?;
    Ok(public_key)
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
            if let Err(e) = ensure_wg_process(cfg, &cfg.run_dir.join("wg.json")) {
                errors.push(e.to_string());
            }
        }
        // Classifier: attach to new pod veths, then diff routes and workloads.
        if let Some(c) = self.classifier.as_mut() {
            for iface in pod_interfaces(&cfg.pod_interface_prefix) {
                if !self.attached.contains(&iface) {
                    match c.attach(&iface, Direction::Ingress) {
                        Ok(()) => {
                            tracing::info!(iface, "classifier attached");
                            self.attached.push(iface);
                        }
                        Err(e) => errors.push(format!("attach {iface}: {e}")),
                    }
                }
            }
            for (cidr, (path, id)) in &p.routes {
                if self.applied_routes.get(cidr) == Some(&(*path, *id)) {
                    continue;
                }
                match cidr.parse() {
                    Ok(c2) => match c.set_route(
                        c2,
                        Route {
                            kind: bpf_kind(*path),
                            node_id: *id,
                        },
                    ) {
                        Ok(()) => {
                            self.applied_routes.insert(cidr.clone(), (*path, *id));
                        }
                        Err(e) => errors.push(format!("route {cidr}: {e}")),
                    },
                    Err(e) => errors.push(format!("route {cidr}: {e}")),
                }
            }
            let stale: Vec<String> = self
                .applied_routes
                .keys()
                .filter(|k| !p.routes.contains_key(*k))
                .cloned()
                .collect();
            for cidr in stale {
                if let Ok(c2) = cidr.parse() {
                    let _ = c.remove_route(c2);
                }
                self.applied_routes.remove(&cidr);
            }
            for (ip, mode) in &p.workloads {
                if self.applied_workloads.get(ip) != Some(mode) {
                    match c.set_workload(*ip, bpf_mtls(*mode)) {
                        Ok(()) => {
                            self.applied_workloads.insert(*ip, *mode);
                        }
                        Err(e) => errors.push(format!("workload {ip}: {e}")),
                    }
                }
            }
            let gone: Vec<IpAddr> = self
                .applied_workloads
                .keys()
                .filter(|k| !p.workloads.contains_key(*k))
                .copied()
                .collect();
            for ip in gone {
                let _ = c.remove_workload(ip);
                self.applied_workloads.remove(&ip);
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

fn hex_of_base64(b64: &str) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn refresh_status(
    cfg: &DaemonConfig,
    p: &NodePlan,
    dp: &Datapath,
    state: &ClusterState,
    public_key: &str,
    status: &SharedStatus,
) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let uapi = cfg
        .wireguard
        .as_ref()
        .map(|w| uapi_peers(&w.interface))
        .unwrap_or_default();
    let peers = p
        .peers
        .iter()
        .map(|peer| {
            let hex = peer.public_key.map(|k| k.to_hex());
            let u = uapi.iter().find(|(k, ..)| Some(k) == hex.as_ref());
            let path = peer.pod_cidrs.first().and_then(|c| p.routes.get(c)).map_or(
                "unavailable",
                |(r, _)| match r {
                    RoutePath::Wireguard => "wireguard",
                    RoutePath::Unavailable => "dropped (no key yet)",
                    RoutePath::Plaintext => "plaintext",
                    RoutePath::Local => "local",
                },
            );
            PeerStatus {
                name: peer.name.clone(),
                endpoint: peer.endpoint.map(|e| e.to_string()),
                path: path.to_owned(),
                handshake_age_secs: u.and_then(|(_, h, ..)| h.map(|h| now.saturating_sub(h))),
                rx_bytes: u.map_or(0, |x| x.2),
                tx_bytes: u.map_or(0, |x| x.3),
            }
        })
        .collect();
    let counters = dp
        .classifier
        .as_ref()
        .and_then(|c| c.counters().ok())
        .map(|pc| {
            use identityd_bpf::classifier::Path as P;
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
        });
    let mut st = status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    st.node = cfg.name.clone();
    st.public_key = public_key.to_owned();
    st.public_key_hex = hex_of_base64(public_key).unwrap_or_default();
    st.strict_mode = cfg.encryption.strict_mode;
    st.cluster_version = state.version();
    st.peers = peers;
    st.counters = counters.unwrap_or_default();
    st.classifier_interfaces = dp.attached.clone();
    st.problems = p.problems.clone();
    st.problems
        .extend(state.problems.iter().map(ToString::to_string));
}

/// Runs the node role until SIGTERM/SIGINT.
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
    let (key, origin) =
        NodeKey::load_or_generate(&key_path).map_err(|e| NodeError::Wireguard(e.to_string()))?;
    let mut public_key = key.public_key().to_string();
    drop(key);
    tracing::info!(node = %cfg.name, public_key, ?origin, "node key ready");

    let source = crate::source::open(&cfg)
        .await
        .map_err(|e| NodeError::Source(e.to_string()))?;
    if cfg.pod_cidr.is_none() {
        // clusterSource: kube without podCIDR: the Node object's spec.podCIDR.
        cfg.pod_cidr = source
            .node_pod_cidr(&cfg.name)
            .await
            .map_err(|e| NodeError::Source(e.to_string()))?;
        if cfg.pod_cidr.is_none() {
            return Err(NodeError::Source(format!(
                "podCIDR is not configured and Node {} has no spec.podCIDR",
                cfg.name
            )));
        }
    }
    // Publish this node.
    let spec = IdentitydNodeSpec {
        pod_cidrs: cfg.pod_cidr.iter().cloned().collect(),
        underlay_addresses: cfg
            .underlay_address
            .iter()
            .map(ToString::to_string)
            .collect(),
        wireguard: cfg.wireguard.as_ref().map(|w| WireguardSpec {
            public_key: public_key.clone(),
            port: i64::from(w.port),
        }),
        ipsec: None,
    };
    source
        .apply(&Object::IdentitydNode(IdentitydNode::new(
            cfg.name.clone(),
            spec,
        )))
        .await
        .map_err(|e| NodeError::Source(format!("publishing IdentitydNode {}: {e}", cfg.name)))?;

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
        Some(Classifier::load(&ccfg).map_err(|e| NodeError::Classifier(e.to_string()))?)
    };
    if let Some(w) = &cfg.wireguard {
        let rplan = routing::plan(&routing::RoutingConfig {
            wireguard_interface: Some(w.interface.clone()),
            ipv6: false,
            ..routing::RoutingConfig::default()
        });
        if let Err(e) = routing::apply(&rplan) {
            tracing::warn!(error = %e, "policy routing for the WireGuard mark");
        }
    }
    let mut dp = Datapath {
        classifier,
        applied_routes: BTreeMap::new(),
        applied_workloads: BTreeMap::new(),
        attached: Vec::new(),
        wg_json: None,
    };

    let status: SharedStatus = Arc::new(Mutex::new(NodeStatus::default()));
    let api_task = tokio::spawn(api::serve(
        cfg.run_dir.join("api.sock"),
        Arc::clone(&status),
    ));
    let metrics_task = cfg
        .metrics_address
        .map(|a| tokio::spawn(crate::daemon::metrics::serve(a, Arc::clone(&status))));
    let source_task = source.spawn();
    let mut rx = source.subscribe();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| io("SIGTERM handler", e))?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut mesh: Option<Mesh> = None;
    let mut mesh_error: Option<String> = None;
    let mut tunnel_addr_done = false;
    loop {
        let state = rx.borrow_and_update().clone();
        if let Some(name) = rotation::node_pending_rotation(&state, &cfg.name) {
            match rotate_wireguard_key(&cfg, &key_path, &state, source.as_ref(), &name).await {
                Ok(pk) => {
                    tracing::info!(rotation = %name, public_key = %pk, "WireGuard key rotated");
                    public_key = pk;
                }
                Err(e) => tracing::warn!(rotation = %name, error = %e, "WireGuard key rotation"),
            }
        }
        let p = plan(&cfg, &state, &key_path, cfg.mtls.default_mode);
        for e in dp.apply(&cfg, &p) {
            tracing::warn!(error = %e, "apply");
        }
        if !tunnel_addr_done && let (Some(addr), Some(w)) = (cfg.tunnel_address, &cfg.wireguard) {
            tunnel_addr_done = ensure_tunnel_address(&w.interface, addr);
        }
        if cfg.ca.is_some() && cfg.envoy.is_some() && mesh.is_none() {
            match Mesh::start(&cfg).await {
                Ok(m) => {
                    mesh = Some(m);
                    mesh_error = None;
                }
                Err(e) => {
                    if mesh_error.as_deref() != Some(e.as_str()) {
                        tracing::warn!(error = %e, "mTLS side not started yet; retrying");
                    }
                    mesh_error = Some(e);
                }
            }
        }
        if let Some(m) = mesh.as_mut() {
            for e in m.reconcile(&cfg, &state).await {
                tracing::warn!(error = %e, "mesh");
            }
        }
        let envoy_ready = match &mesh {
            Some(m) if m.envoy_pid().is_some() => Some(m.envoy_ready().await),
            _ => None,
        };
        refresh_status(&cfg, &p, &dp, &state, &public_key, &status);
        {
            let mut st = status
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(m) = &mesh {
                let (svids, xds) = m.status(&cfg.name);
                st.svids = svids;
                st.xds = xds;
                st.envoy_restarts = m.envoy_restarts;
                st.bundle_roots = m.bundle_roots();
                st.inbound_workloads = m.inbound_workloads().to_vec();
                st.envoy_ready = envoy_ready;
                let now = std::time::SystemTime::now();
                st.ingress_certificates = m
                    .serving_certs()
                    .into_iter()
                    .map(|(names, not_after)| {
                        let left = not_after.duration_since(now).unwrap_or_default().as_secs();
                        (names.join(","), left)
                    })
                    .collect();
                if let Some(e) = &m.last_error {
                    st.problems.push(e.clone());
                }
                st.problems.extend(
                    m.config_problems
                        .iter()
                        .map(|p| format!("not pushed to Envoy: {p}")),
                );
            }
            st.key_age_secs = std::fs::metadata(&key_path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .map(|d| d.as_secs());
            if let Some(e) = &mesh_error {
                st.problems.push(format!("mTLS: {e}"));
            }
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { break },
            _ = tick.tick() => {}
            _ = term.recv() => { tracing::info!("SIGTERM: stopping (the WireGuard device and the classifier stay)"); break }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    source_task.abort();
    api_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    if let Some(m) = mesh.as_mut() {
        m.stop();
    }
    // Pinned classifier links and the device process stay: no gap until the next start.
    drop(dp);
    Ok(())
}
