//! `identityd lab up | status | down`: a small cluster on one machine.
//!
//! The lab builds a bridge `idd-fabric` (underlay 10.99.0.0/24) in the root namespace, a
//! network namespace per node (`idd-n<i>`, 10.99.0.1<i>) and per pod (`idd-n<i>-<pod>`, pod
//! CIDR 10.244.<i>.0/24), writes Kubernetes-shaped YAML into `<dir>/cluster/` (the
//! FileSource), runs one `identityd run` node daemon per node inside its namespace, starts a
//! small HTTP workload in every pod, waits until every node pair has a WireGuard handshake, sends
//! sample traffic while capturing the underlay, and prints what it saw. Everything it creates
//! is recorded in `<dir>/lab.json`, which `lab down` uses to remove it all.

pub mod bench;
pub mod image;
pub mod recovery;
pub mod workload;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::daemon::api;

/// The underlay bridge in the root namespace.
pub const BRIDGE: &str = "idd-fabric";
/// Where the lab's CA role listens (the bridge address in the root namespace).
pub const CA_LISTEN: &str = "10.99.0.1:8443";
/// Where the lab's CA role serves its metrics.
pub const CA_METRICS: &str = "10.99.0.1:9963";
/// Port of the pods' HTTP workload.
pub const WORKLOAD_PORT: u16 = 8080;
/// A tcpdump filter for underlay packets that are neither WireGuard, nor ICMP errors about a
/// WireGuard datagram (port unreachable while a node's device is down: they quote the
/// datagram's headers and ciphertext), nor the nodes' TLS connections to the CA role
/// (10.99.0.1:8443), nor link housekeeping (ARP, IGMP, IPv6 link-local neighbour/multicast-
/// listener traffic).
pub const NOT_WIREGUARD_FILTER: &str = "not (udp port 51871) and not (icmp and icmp[0] = 3 and icmp[17] = 17 and (icmp[28:2] = 51871 or icmp[30:2] = 51871)) and not (tcp port 8443 and host 10.99.0.1) and not arp and not igmp and not (ip6 and src net fe80::/10) and not (ip6 and dst net ff02::/16)";
/// Ports of the lab Gateway's listeners (DESIGN: ingress 80/443, lab 8080/8443).
pub const INGRESS_HTTP: u16 = 8080;
/// HTTPS listener of the lab Gateway.
pub const INGRESS_HTTPS: u16 = 8443;
/// Ports of the listeners the lab's `Ingress` objects share (the daemon's `ingress:` config).
pub const INGRESS_LEGACY_HTTP: u16 = 8081;
/// HTTPS port of the lab's `Ingress` objects.
pub const INGRESS_LEGACY_HTTPS: u16 = 8444;
/// The hostname of the lab Gateway's HTTPS listener (certificate from identityd's CA).
pub const INGRESS_HOST: &str = "web.shop.example";
/// The hostname of the lab's Ingress (TLS, certificate from identityd's CA).
pub const LEGACY_HOST: &str = "legacy.shop.example";
/// The marker the sample traffic carries (searched for in the underlay capture).
pub const PAYLOAD_MARKER: &str = "IDENTITYD-LAB-PLAINTEXT-MARKER";

/// Errors of the lab commands.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// Not root.
    #[error("the lab needs root (network namespaces, BPF, TUN): run it as root")]
    NotRoot,
    /// A lab is already up in this directory.
    #[error(
        "a lab is already up in {0} (lab.json exists); run `identityd lab down --dir {0}` first"
    )]
    AlreadyUp(String),
    /// No lab in this directory.
    #[error("no lab in {0} (no lab.json)")]
    NotUp(String),
    /// A command failed.
    #[error("{cmd}: {reason}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its error output.
        reason: String,
    },
    /// A file.
    #[error("{0}")]
    Io(String),
    /// The topology cannot be built as specified.
    #[error("lab topology: {0}")]
    Topology(#[from] identityd_topology::PlanError),
    /// The lab did not become ready.
    #[error("not ready after {secs}s: {what}")]
    NotReady {
        /// How long we waited.
        secs: u64,
        /// What was missing.
        what: String,
    },
}

/// What `lab up` created (for `lab down`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LabState {
    /// Network namespaces.
    pub namespaces: Vec<String>,
    /// Links in the root namespace.
    pub root_links: Vec<String>,
    /// Process ids (process groups) started.
    pub pids: Vec<u32>,
    /// WireGuard interfaces (their UAPI sockets are global).
    pub wg_interfaces: Vec<String>,
    /// BPF pin directories.
    pub bpf_pins: Vec<String>,
    /// Nodes: name → run dir.
    pub nodes: Vec<(String, PathBuf)>,
    /// podman containers (`lab up --image`).
    #[serde(default)]
    pub containers: Vec<String>,
}

/// A pod of the lab.
#[derive(Debug, Clone)]
struct LabPod {
    node: usize,
    name: String,
    namespace: &'static str,
    service_account: &'static str,
    app: &'static str,
    ip: String,
}

impl LabPod {
    fn netns(&self) -> String {
        format!("idd-n{}-{}", self.node, self.name)
    }
    fn veth(&self) -> String {
        let mut s = format!("p-{}", self.name);
        s.truncate(15);
        s
    }
}

fn sh(cmd: &mut Command) -> Result<String, LabError> {
    let out = cmd.output().map_err(|e| LabError::Command {
        cmd: format!("{cmd:?}"),
        reason: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: format!("{cmd:?}"),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String, LabError> {
    sh(Command::new("ip").args(args))
}

fn io_err(what: &Path, e: impl std::fmt::Display) -> LabError {
    LabError::Io(format!("{}: {e}", what.display()))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// The default lab directory.
#[must_use]
pub fn default_dir() -> PathBuf {
    std::env::current_dir()
        .unwrap_or_else(|_| PathBuf::from("."))
        .join("lab-run/lab")
}

fn save(dir: &Path, st: &LabState) -> Result<(), LabError> {
    let json = serde_json::to_vec_pretty(st).map_err(|e| LabError::Io(e.to_string()))?;
    identityd_certs::fsutil::write_atomic(&dir.join("lab.json"), &json, 0o644)
        .map_err(|e| LabError::Io(e.to_string()))
}

fn spawn_in(ns: &str, log: &Path, args: &[&str]) -> Result<u32, LabError> {
    spawn_with(Command::new("ip").args(["netns", "exec", ns]), log, args)
}

/// Starts `args` in network namespace `ns` but in this (the host's) mount namespace, so it
/// shares `/sys/fs/bpf` with the host: a node daemon's pinned classifier maps and links are
/// then found again by its next start and by `identityd observe`.
fn spawn_in_netns_only(ns: &str, log: &Path, args: &[&str]) -> Result<u32, LabError> {
    spawn_with(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg("--"),
        log,
        args,
    )
}

fn spawn_with(cmd: &mut Command, log: &Path, args: &[&str]) -> Result<u32, LabError> {
    use std::os::unix::process::CommandExt;
    let f = std::fs::File::create(log).map_err(|e| io_err(log, e))?;
    let f2 = f.try_clone().map_err(|e| io_err(log, e))?;
    let child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(f2)
        .process_group(0)
        .spawn()
        .map_err(|e| LabError::Command {
            cmd: format!("{cmd:?}"),
            reason: e.to_string(),
        })?;
    Ok(child.id())
}

fn progress(msg: &str) {
    println!("  • {msg}");
}

fn cluster_yaml(nodes: usize, pods: &[LabPod], mtls: bool) -> String {
    let ann = if mtls {
        "\n  annotations:\n    identityd.io/mtls: strict"
    } else {
        ""
    };
    let mut y = format!(
        "# The lab's cluster: the same objects a user would `kubectl apply`.\n\
         apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    tier: backend{ann}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata:\n  name: front\n  labels:\n    tier: frontend{ann}\n---\n\
         # Not in the mesh: plaintext (over WireGuard between nodes), for NetworkPolicy.\n\
         apiVersion: v1\nkind: Namespace\nmetadata:\n  name: data\n  labels:\n    tier: backend\n  annotations:\n    identityd.io/mtls: disabled\n",
    );
    // The Nodes, as the control plane's node IPAM would allocate their pod CIDRs: the
    // authority peers check each IdentitydNode's claim against.
    for i in 1..=nodes {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: n{i}\nspec:\n  podCIDR: 10.244.{i}.0/24\n  podCIDRs:\n  - 10.244.{i}.0/24\n"
        );
    }
    for p in pods {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}\n  labels:\n    app: {}\n    version: {}\n\
             spec:\n  nodeName: n{}\n  serviceAccountName: {}\n  containers:\n  - name: {}\n    ports:\n    - {{name: http, containerPort: {WORKLOAD_PORT}}}\n\
             \x20   - {{name: kv, containerPort: {}}}\n    - {{name: mail, containerPort: {}}}\n\
             \x20   - {{name: udp-a, containerPort: {}, protocol: UDP}}\n    - {{name: udp-b, containerPort: {}, protocol: UDP}}\n\
             status:\n  phase: Running\n  podIP: {}\n",
            p.name,
            p.namespace,
            p.app,
            if p.app == "web" && nodes >= 2 && p.node == nodes {
                "v2"
            } else {
                "v1"
            },
            p.node,
            p.service_account,
            p.app,
            workload::KV_PORT,
            workload::GREETER_PORT,
            workload::UDP_PORTS[0],
            workload::UDP_PORTS[1],
            p.ip
        );
    }
    let _ = write!(
        y,
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  selector:\n    app: web\n  ports:\n  - name: http\n    port: 80\n    targetPort: {WORKLOAD_PORT}\n"
    );
    // Non-HTTP TCP on the same pods: a client-first and a server-first protocol.
    for (svc, port) in [("kv", workload::KV_PORT), ("mail", workload::GREETER_PORT)] {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {svc}\n  namespace: shop\nspec:\n  selector:\n    app: web\n  ports:\n  - name: tcp\n    port: {port}\n    targetPort: {port}\n"
        );
    }
    if mtls {
        y.push_str(
            "---\napiVersion: identityd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: web-callers\n  namespace: shop\n\
             spec:\n  targetRef: {kind: Service, name: web}\n  allow:\n  - from: {serviceAccounts: [front/client]}\n    to: {methods: [GET]}\n\
             \x20 - from: {spiffeIds: [\"spiffe://cluster.local/identityd/gateway\"]}\n    to: {methods: [GET]}\n",
        );
        y.push_str(
            "---\napiVersion: identityd.io/v1alpha1\nkind: TrafficPolicy\nmetadata:\n  name: web-resilience\n  namespace: shop\n\
             spec:\n  targetRef: {kind: Service, name: web}\n  retries: {attempts: 2, perTryTimeout: 1s, retryOn: [connect-failure, 5xx]}\n\
             \x20 timeout: 3s\n  circuitBreaker: {maxConnections: 100, maxPendingRequests: 50, maxRequests: 100}\n",
        );
    }
    if mtls && nodes >= 2 {
        // Two versions of web and a GAMMA-style HTTPRoute on the Service splitting 90/10.
        for v in ["v1", "v2"] {
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web-{v}\n  namespace: shop\nspec:\n  selector:\n    app: web\n    version: {v}\n  ports:\n  - name: http\n    port: 80\n    targetPort: {WORKLOAD_PORT}\n"
            );
        }
        y.push_str(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: web-split\n  namespace: shop\n\
             spec:\n  parentRefs:\n  - {group: \"\", kind: Service, name: web, port: 80}\n  rules:\n  - backendRefs:\n    - {name: web-v1, port: 80, weight: 90}\n    - {name: web-v2, port: 80, weight: 10}\n",
        );
    }
    if mtls {
        // Ingress on every node: a Gateway with a plaintext listener and an HTTPS listener whose
        // certificate identityd's CA issues for the hostname, and a Kubernetes Ingress with TLS.
        let _ = write!(
            y,
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: public\n  namespace: shop\n\
             spec:\n  gatewayClassName: identityd\n  listeners:\n  - {{name: http, port: {INGRESS_HTTP}, protocol: HTTP}}\n\
             \x20 - {{name: https, port: {INGRESS_HTTPS}, protocol: HTTPS, hostname: {INGRESS_HOST}}}\n\
             ---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: web-public\n  namespace: shop\n\
             spec:\n  parentRefs:\n  - {{name: public}}\n  hostnames: [{INGRESS_HOST}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /}}}}]\n\
             \x20   filters:\n    - type: RequestHeaderModifier\n      requestHeaderModifier: {{set: [{{name: x-ingress, value: identityd}}]}}\n\
             \x20   backendRefs: [{{name: web, port: 80}}]\n\
             ---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: web-legacy\n  namespace: shop\n\
             spec:\n  ingressClassName: identityd\n  tls: [{{hosts: [{LEGACY_HOST}]}}]\n  rules:\n  - host: {LEGACY_HOST}\n\
             \x20   http:\n      paths:\n      - {{path: /v2, pathType: Prefix, backend: {{service: {{name: {v2}, port: {{number: 80}}}}}}}}\n\
             \x20     - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}\n",
            v2 = if nodes >= 2 { "web-v2" } else { "web" }
        );
    }
    y
}

fn node_config(
    dir: &Path,
    i: usize,
    nodes: usize,
    strict: bool,
    encryption: &str,
    wg_bin: &Path,
    envoy: Option<&Path>,
) -> String {
    let node_dir = dir.join(format!("n{i}"));
    let clusters: Vec<String> = (1..=nodes)
        .map(|_| "10.244.0.0/16".to_owned())
        .take(1)
        .collect();
    format!(
        "role: node\nname: n{i}\ntrustDomain: cluster.local\nclusterDir: {}\nstateDir: {}\nrunDir: {}\n\
         underlayAddress: 10.99.0.{}\npodCIDR: 10.244.{i}.0/24\nclusterCIDRs: [{}]\n\
         encryption: {{ mode: {encryption}, strictMode: {strict}, nodeEncryption: {} }}\nwireguard: {{ interface: idd{i}, port: 51871 }}\n\
         podInterfacePrefix: \"p-\"\nwireguardBinary: {}\ntunnelAddress: 10.244.{i}.1\nmetricsAddress: 0.0.0.0:9962\nflowEvents: all\nreport: {{ minInterval: 2s, heartbeat: 30s }}\n{}",
        dir.join("cluster").display(),
        node_dir.join("state").display(),
        node_dir.join("run").display(),
        10 + i,
        clusters.join(", "),
        encryption == "wireguard",
        wg_bin.display(),
        envoy.map_or(String::new(), |e| format!(
            "ca: {{ endpoint: \"{CA_LISTEN}\", bundleFile: {}, joinTokenFile: {} }}\nenvoy: {{ binary: {} }}\ningress: {{ httpPort: {INGRESS_LEGACY_HTTP}, httpsPort: {INGRESS_LEGACY_HTTPS} }}\n",
            dir.join("ca/bundle.pem").display(),
            node_dir.join("state/join-token").display(),
            e.display()
        ))
    )
}

/// Options of `lab up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Number of nodes (1..=9).
    pub nodes: usize,
    /// `wireguard` or `disabled`.
    pub encryption: String,
    /// Lab directory.
    pub dir: PathBuf,
    /// Extra manifests copied into the cluster directory.
    pub manifests: Option<PathBuf>,
    /// Run the CA role and the node daemons as containers of this identityd image
    /// ([`image`]) instead of this binary.
    pub image: Option<String>,
}

/// `identityd lab up`, as named steps: prepare, topology, cluster state, CA, node daemons,
/// workloads, ready, sample traffic, report. Each step records what it created in `lab.json`
/// before the next starts, so `lab down` removes a half-built lab too.
///
/// # Errors
/// Not root, a lab already up, a failed step (everything created so far is recorded for
/// `lab down`).
pub fn up(opts: &UpOptions) -> Result<(), LabError> {
    let mut up = Up::prepare(opts)?;
    let r = up.topology();
    save(up.dir, &up.st)?;
    r?;
    up.write_cluster_state()?;
    if up.mtls {
        up.start_ca()?;
    }
    up.start_node_daemons()?;
    up.start_workloads()?;
    up.wait_ready()?;
    let samples = up.sample_traffic()?;
    up.report(&samples)
}

/// A lab being brought up: the options, the binaries, and what has been created so far.
struct Up<'a> {
    opts: &'a UpOptions,
    dir: &'a Path,
    exe: PathBuf,
    exe_s: String,
    wg_bin: PathBuf,
    envoy: Option<PathBuf>,
    mtls: bool,
    st: LabState,
    pods: Vec<LabPod>,
    started: Instant,
}

/// What the sample traffic showed.
struct Samples {
    /// (client, its node, server, its node, answered, what the server saw).
    results: Vec<(String, usize, String, usize, bool, String)>,
    /// The status code of the request the AuthorizationPolicy refuses.
    rbac: Option<String>,
    /// (answered, went to v2) of the split requests.
    split: Option<(u32, u32)>,
    capture: PathBuf,
    total: usize,
    not_wg: usize,
    marker: bool,
    ingress: Vec<(String, bool, String)>,
    /// Raw TCP exchanges (what, answered, the first line the client read).
    tcp: Vec<(String, bool, String)>,
}

impl<'a> Up<'a> {
    /// Checks (root, no lab up, node count, binaries) and a fresh lab directory.
    fn prepare(opts: &'a UpOptions) -> Result<Self, LabError> {
        if !is_root() {
            return Err(LabError::NotRoot);
        }
        let dir = opts.dir.as_path();
        if dir.join("lab.json").exists() {
            return Err(LabError::AlreadyUp(dir.display().to_string()));
        }
        if Path::new(&format!("/sys/class/net/{BRIDGE}")).exists() {
            return Err(LabError::AlreadyUp(format!(
                "another directory (bridge {BRIDGE} exists; find its lab.json and run `identityd lab down --dir` there)"
            )));
        }
        if !(1..=9).contains(&opts.nodes) {
            return Err(LabError::Io(format!(
                "--nodes={}: between 1 and 9",
                opts.nodes
            )));
        }
        let started = Instant::now();
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir.join("cluster")).map_err(|e| io_err(dir, e))?;
        let exe = std::env::current_exe().map_err(|e| LabError::Io(e.to_string()))?;
        let wg_bin = exe
            .parent()
            .map(|d| d.join("identityd-wg"))
            .unwrap_or_default();
        if !wg_bin.exists() {
            return Err(LabError::Io(format!(
                "{} not found: build it with `cargo build --bins` (the README's commands do)",
                wg_bin.display()
            )));
        }

        if let Some(img) = &opts.image {
            image::check(img)?;
        }
        let envoy = crate::daemon::mesh::lab_envoy_binary(&exe);
        if envoy.is_none() {
            progress(
                "Envoy not found (.tools/bin/envoy or $IDENTITYD_ENVOY): mTLS is off in this lab; run scripts/bootstrap",
            );
        }
        println!(
            "identityd lab up: {} nodes, encryption {} (strict mode on), dir {}{}",
            opts.nodes,
            opts.encryption,
            dir.display(),
            opts.image
                .as_deref()
                .map_or(String::new(), |i| format!(", daemons from image {i}"))
        );

        Ok(Self {
            opts,
            dir,
            exe_s: exe.display().to_string(),
            exe,
            wg_bin,
            mtls: envoy.is_some(),
            envoy,
            st: LabState::default(),
            pods: Vec::new(),
            started,
        })
    }

    /// The bridge, node and pod namespaces.
    fn topology(&mut self) -> Result<(), LabError> {
        self.pods = build_topology(self.opts, &mut self.st)?;
        Ok(())
    }

    /// The cluster's YAML, one object per file, plus the user's manifests.
    fn write_cluster_state(&mut self) -> Result<(), LabError> {
        let (dir, opts, mtls) = (self.dir, self.opts, self.mtls);
        // ---- cluster state ----
        // One object per file, as `kubectl apply` users keep them: the controller can then write
        // each object's status back into its own file.
        for doc in cluster_yaml(opts.nodes, &self.pods, mtls).split("\n---\n") {
            let key = crate::source::decode::decode_all(doc)
                .into_iter()
                .find_map(|(_, r)| r.ok().flatten())
                .map(|o| o.key())
                .ok_or_else(|| {
                    LabError::Io(format!("the lab's own manifest is invalid:\n{doc}"))
                })?;
            std::fs::write(
                dir.join("cluster")
                    .join(crate::source::file::file_name(&key)),
                format!("{}\n", doc.trim_end()),
            )
            .map_err(|e| io_err(dir, e))?;
        }
        if let Some(m) = &opts.manifests {
            let entries = std::fs::read_dir(m).map_err(|e| io_err(m, e))?;
            for e in entries.filter_map(Result::ok) {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                    let to = dir
                        .join("cluster")
                        .join(format!("user-{}", e.file_name().to_string_lossy()));
                    std::fs::copy(&p, &to).map_err(|e| io_err(&p, e))?;
                }
            }
        }
        progress(&format!(
            "wrote the cluster ({} self.pods, 2 namespaces, a Service) to {}/cluster",
            self.pods.len(),
            dir.display()
        ));

        Ok(())
    }

    /// The CA role (root namespace, on the bridge address) and one join token per node.
    fn start_ca(&mut self) -> Result<(), LabError> {
        let (dir, opts, exe) = (self.dir, self.opts, &self.exe);
        // ---- the CA role (root namespace, on the bridge address) and one join token per node ----
        {
            let now = std::time::SystemTime::now();
            let td = identityd_certs::TrustDomain::new("cluster.local")
                .map_err(|e| LabError::Io(e.to_string()))?;
            identityd_certs::Ca::load_or_init(
                &dir.join("ca"),
                td,
                identityd_certs::CaOptions::default(),
                now,
            )
            .map_err(|e| LabError::Io(e.to_string()))?;
            for i in 1..=opts.nodes {
                let state = dir.join(format!("n{i}/state"));
                {
                    use std::os::unix::fs::DirBuilderExt;
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(&state)
                        .map_err(|e| io_err(&state, e))?;
                }
                identityd_certs::service::tokens::mint_to_file(
                    &dir.join("ca"),
                    &format!("n{i}"),
                    &state.join("join-token"),
                    identityd_certs::service::tokens::DEFAULT_TOKEN_TTL,
                    now,
                )
                .map_err(|e| LabError::Io(e.to_string()))?;
            }
            let ca_cfg = dir.join("ca.yaml");
            std::fs::write(
            &ca_cfg,
            format!(
                "role: ca\nname: ca\ntrustDomain: cluster.local\nclusterDir: {}\nstateDir: {}\nrunDir: {}\ncaDir: {}\nlisten: {CA_LISTEN}\nmetricsAddress: {CA_METRICS}\n",
                dir.join("cluster").display(),
                dir.join("ca-state").display(),
                dir.join("ca-run").display(),
                dir.join("ca").display()
            ),
        )
        .map_err(|e| io_err(&ca_cfg, e))?;
            if let Some(img) = &opts.image {
                image::prepare_ca_dirs(dir)?;
                self.st.containers.push(image::container_name(0));
                save(dir, &self.st)?;
                let pid = image::start(&image::ca_args(img, dir, &ca_cfg))?;
                self.st.pids.push(pid);
            } else {
                let pid = spawn_with(
                    &mut Command::new(exe),
                    &dir.join("ca.log"),
                    &["run", "--config", &ca_cfg.display().to_string()],
                )?;
                self.st.pids.push(pid);
            }
            save(dir, &self.st)?;
            progress(&format!(
                "started the CA role on {CA_LISTEN} (the only holder of the CA key; log: {}/ca.log); minted one join token per node",
                dir.display()
            ));
        }

        Ok(())
    }

    /// One node daemon per node namespace.
    fn start_node_daemons(&mut self) -> Result<(), LabError> {
        let (dir, opts, exe_s, wg_bin, envoy) =
            (self.dir, self.opts, &self.exe_s, &self.wg_bin, &self.envoy);
        // ---- daemons and workloads ----
        for i in 1..=opts.nodes {
            let node_dir = dir.join(format!("n{i}"));
            std::fs::create_dir_all(&node_dir).map_err(|e| io_err(&node_dir, e))?;
            let cfg = node_dir.join("node.yaml");
            std::fs::write(
                &cfg,
                node_config(
                    dir,
                    i,
                    opts.nodes,
                    true,
                    &opts.encryption,
                    // In the image, the binaries the daemon starts are the image's own.
                    if opts.image.is_some() {
                        Path::new(image::IMAGE_WG_BINARY)
                    } else {
                        wg_bin
                    },
                    envoy.as_deref().map(|e| {
                        if opts.image.is_some() {
                            Path::new(image::IMAGE_ENVOY_BINARY)
                        } else {
                            e
                        }
                    }),
                ),
            )
            .map_err(|e| io_err(&cfg, e))?;
            let pid = if let Some(img) = &opts.image {
                if i == 1 {
                    image::write_node_seccomp_profile(&dir.join("seccomp-node.json"))?;
                }
                self.st.containers.push(image::container_name(i));
                save(dir, &self.st)?;
                image::start(&image::node_args(img, i, dir, &cfg))?
            } else {
                spawn_in_netns_only(
                    &format!("idd-n{i}"),
                    &node_dir.join("daemon.log"),
                    &[exe_s, "run", "--config", &cfg.display().to_string()],
                )?
            };
            self.st.pids.push(pid);
            self.st.wg_interfaces.push(format!("idd{i}"));
            self.st.bpf_pins.push(format!("/sys/fs/bpf/identityd/n{i}"));
            self.st.nodes.push((format!("n{i}"), node_dir.join("run")));
            save(dir, &self.st)?;
        }
        progress(&format!(
            "started {} node daemons (logs: {}/n*/daemon.log)",
            opts.nodes,
            dir.display()
        ));

        Ok(())
    }

    /// A workload server in every pod.
    fn start_workloads(&mut self) -> Result<(), LabError> {
        let (dir, exe_s) = (self.dir, &self.exe_s);
        for p in &self.pods {
            let log = dir
                .join(format!("n{}", p.node))
                .join(format!("{}.log", p.name));
            let listen = format!("0.0.0.0:{WORKLOAD_PORT}");
            let pid = spawn_in(
                &p.netns(),
                &log,
                &[
                    exe_s, "lab", "workload", "--name", &p.name, "--listen", &listen,
                ],
            )?;
            self.st.pids.push(pid);
        }
        save(dir, &self.st)?;
        progress(&format!("started {} workloads", self.pods.len()));

        Ok(())
    }

    /// Every node sees every other with a handshake, holds its SVIDs and has Envoy configured.
    fn wait_ready(&mut self) -> Result<(), LabError> {
        let (opts, mtls, started) = (self.opts, self.mtls, self.started);
        // ---- ready: every node sees every other with a handshake ----
        let deadline = Instant::now() + Duration::from_secs(60);
        // Traffic makes WireGuard handshake: ping each remote pod from each node's first pod.
        loop {
            let mut missing = Vec::new();
            for (name, run) in &self.st.nodes {
                match api::fetch(&run.join("api.sock")) {
                    Ok(s) => {
                        if s.peers.len() + 1 < opts.nodes {
                            missing.push(format!("{name} knows {} peers", s.peers.len()));
                        }
                        if mtls && s.svids.len() < 2 {
                            missing.push(format!("{name} holds {} SVIDs", s.svids.len()));
                        }
                        if mtls
                            && (s.xds.is_empty()
                                || s.xds
                                    .iter()
                                    .any(|x| x.contains("NACK") || x.contains("acked -")))
                        {
                            missing.push(format!("{name} Envoy not configured yet: {:?}", s.xds));
                        }
                        for p in &s.peers {
                            if p.handshake_age_secs.is_none() {
                                missing.push(format!("{name}→{} no handshake", p.name));
                            }
                        }
                    }
                    Err(e) => missing.push(format!("{name}: {e}")),
                }
            }
            if missing.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(LabError::NotReady {
                    secs: 60,
                    what: missing.join("; "),
                });
            }
            // Ping only once every node has every peer in its device: before that, strict mode
            // rightly drops the packet (and the drop would show in `identityd audit`).
            let all_peers = !missing
                .iter()
                .any(|m| m.contains(" peers") || m.contains(": "));
            for a in self.pods.iter().filter(|p| all_peers && p.app == "client") {
                for b in self
                    .pods
                    .iter()
                    .filter(|p| p.node != a.node && p.app == "web")
                {
                    let _ = Command::new("ip")
                        .args([
                            "netns",
                            "exec",
                            &a.netns(),
                            "ping",
                            "-c",
                            "1",
                            "-W",
                            "1",
                            &b.ip,
                        ])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        progress(&format!(
            "ready in {:.1}s: every node pair has a WireGuard handshake",
            started.elapsed().as_secs_f64()
        ));

        Ok(())
    }

    /// Requests between pods with an underlay capture, the authorization and split checks,
    /// then ingress from the host.
    fn sample_traffic(&mut self) -> Result<Samples, LabError> {
        let (dir, opts, mtls, exe_s) = (self.dir, self.opts, self.mtls, &self.exe_s);
        // ---- sample traffic with an underlay capture ----
        let capture = dir.join("underlay.pcap");
        let mut tcpdump = start_capture(&capture)?;
        let mut results = Vec::new();
        for a in self.pods.iter().filter(|p| p.app == "client") {
            for b in self.pods.iter().filter(|p| p.app == "web") {
                let url = format!("http://{}:{WORKLOAD_PORT}/hello", b.ip);
                let out = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &a.netns(),
                        exe_s,
                        "lab",
                        "get",
                        &url,
                        "--payload",
                        PAYLOAD_MARKER,
                    ])
                    .args(if mtls {
                        &["--host", "web.shop"][..]
                    } else {
                        &[][..]
                    })
                    .output();
                let (ok, line) = match out {
                    Ok(o) if o.status.success() => {
                        let text = String::from_utf8_lossy(&o.stdout).into_owned();
                        let first = text.lines().next().unwrap_or("").to_owned();
                        let answered = first
                            .split_whitespace()
                            .find(|w| w.starts_with("pod="))
                            .unwrap_or("")
                            .to_owned();
                        let caller = text
                            .lines()
                            .find(|l| {
                                l.trim_start()
                                    .to_ascii_lowercase()
                                    .starts_with("x-forwarded-client-cert")
                            })
                            .and_then(|l| l.split(';').find_map(|kv| kv.strip_prefix("URI=")))
                            .map_or("plain HTTP (no client identity)".to_owned(), |u| {
                                format!("server saw caller {u}")
                            });
                        (true, format!("{answered}  {caller}"))
                    }
                    Ok(o) => (false, String::from_utf8_lossy(&o.stderr).trim().to_owned()),
                    Err(e) => (false, e.to_string()),
                };
                results.push((a.name.clone(), a.node, b.name.clone(), b.node, ok, line));
            }
        }
        // Raw TCP (not HTTP): a client-first and a server-first protocol, same node and across
        // nodes, carrying the marker (the capture must not find it).
        let mut tcp = Vec::new();
        if let Some(client) = self.pods.iter().find(|p| p.app == "client" && p.node == 1) {
            for web in self
                .pods
                .iter()
                .filter(|p| p.app == "web" && (p.node == 1 || p.node == opts.nodes))
            {
                for (port, greeting, sends) in [
                    (
                        workload::KV_PORT,
                        false,
                        vec![format!("PING {PAYLOAD_MARKER}")],
                    ),
                    (
                        workload::GREETER_PORT,
                        true,
                        vec![format!("HELO {PAYLOAD_MARKER}"), "QUIT".to_owned()],
                    ),
                ] {
                    let mut cmd = Command::new("ip");
                    cmd.args(["netns", "exec", &client.netns(), exe_s, "lab", "tcp"])
                        .arg(format!("{}:{port}", web.ip));
                    if greeting {
                        cmd.arg("--greeting");
                    }
                    for l in &sends {
                        cmd.args(["--send", l]);
                    }
                    let what = format!(
                        "{} → {}:{port} ({})",
                        client.name,
                        web.name,
                        if greeting {
                            "server speaks first"
                        } else {
                            "client speaks first"
                        }
                    );
                    let (ok, line) = match cmd.output() {
                        Ok(o) if o.status.success() => (
                            true,
                            String::from_utf8_lossy(&o.stdout)
                                .lines()
                                .next()
                                .unwrap_or("")
                                .replace(PAYLOAD_MARKER, "<marker>"),
                        ),
                        Ok(o) => (false, String::from_utf8_lossy(&o.stderr).trim().to_owned()),
                        Err(e) => (false, e.to_string()),
                    };
                    tcp.push((what, ok, line));
                }
            }
        }
        // Authorization: a web pod (service account shop/web) is not allowed to call web.
        let rbac = if mtls {
            let from = self
                .pods
                .iter()
                .find(|p| p.app == "web" && p.node == 1)
                .map(LabPod::netns)
                .unwrap_or_default();
            let to = self
                .pods
                .iter()
                .find(|p| p.app == "web" && p.node != 1)
                .map(|p| p.ip.clone())
                .unwrap_or_default();
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &from,
                    exe_s,
                    "lab",
                    "get",
                    &format!("http://{to}:{WORKLOAD_PORT}/"),
                    "--host",
                    "web.shop",
                ])
                .output();
            let status = out.map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_owned()
            });
            Some(status.unwrap_or_default())
        } else {
            None
        };
        // Traffic splitting: the HTTPRoute on Service web sends 90/10 to web-v1/web-v2.
        let split = if mtls && opts.nodes >= 2 {
            let from = self
                .pods
                .iter()
                .find(|p| p.app == "client" && p.node == 1)
                .map(LabPod::netns)
                .unwrap_or_default();
            let to = self
                .pods
                .iter()
                .find(|p| p.app == "web" && p.node != 1)
                .map(|p| p.ip.clone())
                .unwrap_or_default();
            let v2 = format!("pod=web-{}", opts.nodes);
            let (mut ok, mut to_v2) = (0u32, 0u32);
            for _ in 0..100 {
                if let Ok(o) = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &from,
                        exe_s,
                        "lab",
                        "get",
                        &format!("http://{to}:{WORKLOAD_PORT}/"),
                        "--host",
                        "web.shop",
                    ])
                    .output()
                    && o.status.success()
                {
                    ok += 1;
                    if String::from_utf8_lossy(&o.stdout).contains(&v2) {
                        to_v2 += 1;
                    }
                }
            }
            Some((ok, to_v2))
        } else {
            None
        };
        std::thread::sleep(Duration::from_millis(500));
        let _ = Command::new("kill")
            .args(["-INT", &tcpdump.id().to_string()])
            .status();
        let _ = tcpdump.wait();
        let (total, not_wg, marker) = inspect_capture(&capture);
        // Ingress from outside the cluster (the root namespace dials node addresses), after the
        // capture: this traffic arrives over the underlay by design (TLS or plaintext ingress).
        let ingress = if mtls {
            ingress_samples(exe_s, dir, opts.nodes)
        } else {
            Vec::new()
        };

        Ok(Samples {
            results,
            rbac,
            split,
            capture,
            total,
            not_wg,
            marker,
            ingress,
            tcp,
        })
    }

    /// The report, and an error when anything failed.
    fn report(&self, s: &Samples) -> Result<(), LabError> {
        let (dir, opts, mtls, exe_s, started) =
            (self.dir, self.opts, self.mtls, &self.exe_s, self.started);
        let Samples {
            results,
            rbac,
            split,
            capture,
            total,
            not_wg,
            marker,
            ingress,
            tcp,
        } = s;
        let (split, not_wg, marker, total) = (*split, *not_wg, *marker, *total);
        // ---- report ----
        if mtls {
            println!(
                "\nsample requests (client pod dials a web pod with Host web.shop; the node's Envoy sends it over mTLS):"
            );
        } else {
            println!("\nsample requests (client pod → web pod, HTTP with a marker payload):");
        }
        for (a, an, b, bn, ok, line) in results {
            let path = if an == bn {
                "same node"
            } else {
                "across nodes"
            };
            println!(
                "  {a:<10} (n{an}) → {b:<8} (n{bn})  {path:<12}  {}  {line}",
                if *ok { "OK  " } else { "FAIL" }
            );
        }
        println!(
            "\nraw TCP between pods ({}; the server's peer is the node Envoy on the mTLS path):",
            if mtls {
                "any TCP in an mTLS namespace goes over mTLS, not only HTTP"
            } else {
                "plain TCP over WireGuard"
            }
        );
        for (what, ok, line) in tcp {
            println!("  {what:<44} {}  {line}", if *ok { "OK  " } else { "FAIL" });
        }
        println!(
            "\nunderlay capture ({}): {total} packets, {not_wg} neither WireGuard (UDP/51871) nor TLS to the CA, marker found in clear: {}",
            capture.display(),
            if marker { "YES" } else { "no" }
        );
        println!();
        for (_, run) in &self.st.nodes {
            if let Ok(s) = api::fetch(&run.join("api.sock")) {
                print!("{}", api::render(&s));
            }
        }
        println!(
            "\nexplore:  identityd lab status --dir {d}\n          ip netns exec idd-n1 wg show idd1\n          ip netns exec idd-n1-client-1 {exe_s} lab get http://10.244.2.10:{WORKLOAD_PORT}/ --host web.shop\n          ip netns exec idd-n1 {exe_s} lab get http://127.0.0.1:9962/metrics\n\
         tear down: identityd lab down --dir {d}",
            d = dir.display()
        );
        if let Some((ok, to_v2)) = split {
            println!(
                "traffic split: HTTPRoute shop/web-split (web-v1 90 / web-v2 10) → of {ok} requests from client-1, {} went to v1 and {to_v2} to v2 (web-{})",
                ok - to_v2,
                opts.nodes
            );
        }
        if !ingress.is_empty() {
            println!(
                "\ningress (from the host to node addresses; TLS verified against the lab's bundle):"
            );
            for (what, ok, line) in ingress {
                println!("  {what:<58} {}  {line}", if *ok { "OK  " } else { "FAIL" });
            }
        }
        if let Some(code) = &rbac {
            println!(
                "authorization: web-1 (spiffe://cluster.local/ns/shop/sa/web) → web.shop: HTTP {code} \
             (AuthorizationPolicy shop/web-callers allows only front/client)"
            );
        }
        if mtls {
            // The same requests as the node Envoys reported them (flushed every 250 ms).
            std::thread::sleep(std::time::Duration::from_millis(700));
            let socks: Vec<(String, PathBuf)> = self
                .st
                .nodes
                .iter()
                .map(|(n, run)| (n.clone(), run.join("telemetry.sock")))
                .collect();
            match crate::observe::stat(&socks, 60, "outbound", crate::observe::StatGroup::Service) {
                Ok(rows) => print!(
                    "\nlatency and success per service (callers' side, from the node Envoys; `identityd stat --dir {}`):\n{}",
                    dir.display(),
                    crate::observe::stat_table(&rows)
                ),
                Err(e) => println!("\nrequest telemetry unavailable: {e}"),
            }
        }
        let failed = results.iter().filter(|r| !r.4).count()
            + ingress.iter().filter(|r| !r.1).count()
            + tcp.iter().filter(|r| !r.1).count()
            + split.map_or(0, |(ok, _)| 100 - ok as usize)
            + usize::from(rbac.as_deref().is_some_and(|c| c != "403"));
        if failed > 0 || not_wg > 0 || marker {
            return Err(LabError::NotReady {
                secs: started.elapsed().as_secs(),
                what: format!(
                    "{failed} failed requests, {not_wg} non-WireGuard packets on the underlay, marker in clear: {marker}"
                ),
            });
        }
        Ok(())
    }
}

/// Requests through the ingress listeners of every node: the Gateway's HTTPS listener (CA-issued
/// certificate for [`INGRESS_HOST`]), its plaintext listener, and the Ingress's TLS listener.
/// Each is retried for up to 15 s (certificates are issued on the daemons' first reconcile).
fn ingress_samples(exe: &str, dir: &Path, nodes: usize) -> Vec<(String, bool, String)> {
    let bundle = dir.join("ca/bundle.pem");
    let mut out = Vec::new();
    for n in 1..=nodes {
        let ip = format!("10.99.0.{}", 10 + n);
        let checks = [
            (
                format!("https://{ip}:{INGRESS_HTTPS}/"),
                INGRESS_HOST,
                "Gateway shop/public https",
            ),
            (
                format!("http://{ip}:{INGRESS_HTTP}/"),
                INGRESS_HOST,
                "Gateway shop/public http",
            ),
            (
                format!("https://{ip}:{INGRESS_LEGACY_HTTPS}/"),
                LEGACY_HOST,
                "Ingress shop/web-legacy https",
            ),
        ];
        for (url, host, what) in checks {
            let deadline = Instant::now() + Duration::from_secs(15);
            let (ok, line) = loop {
                let o = Command::new(exe)
                    .args(["lab", "get", &url, "--host", host, "--ca"])
                    .arg(&bundle)
                    .output();
                let (ok, text) = match o {
                    Ok(o) => (
                        o.status.success(),
                        format!(
                            "{}{}",
                            String::from_utf8_lossy(&o.stdout),
                            String::from_utf8_lossy(&o.stderr)
                        ),
                    ),
                    Err(e) => (false, e.to_string()),
                };
                // The Gateway's HTTPRoute sets x-ingress (the echo server shows it); the
                // Ingress has no filter.
                let good = ok && text.contains("x-ingress") == what.starts_with("Gateway");
                if good || Instant::now() > deadline {
                    let first = text.lines().next().unwrap_or("").to_owned();
                    break (good, first);
                }
                std::thread::sleep(Duration::from_millis(300));
            };
            out.push((format!("n{n} {what} ({host})"), ok, line));
        }
    }
    out
}

/// (packets, packets that are not WireGuard UDP on 51871 between node addresses, marker seen)
fn inspect_capture(path: &Path) -> (usize, usize, bool) {
    inspect_capture_with(path, PAYLOAD_MARKER.as_bytes())
}

/// Starts tcpdump on the lab's bridge writing to `path`, and gives it time to start capturing.
fn start_capture(path: &Path) -> Result<std::process::Child, LabError> {
    let child = Command::new("tcpdump")
        .args(["-i", BRIDGE, "-U", "-s", "0", "-w"])
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| LabError::Command {
            cmd: "tcpdump".into(),
            reason: e.to_string(),
        })?;
    std::thread::sleep(Duration::from_millis(700));
    Ok(child)
}

/// The first `max` packets of capture `path` that match `filter`, as `tcpdump -nn` prints them.
fn capture_lines(path: &Path, filter: &str, max: usize) -> Vec<String> {
    Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(path)
        .arg(filter)
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .take(max)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// [`inspect_capture`] with another payload marker.
fn inspect_capture_with(path: &Path, marker: &[u8]) -> (usize, usize, bool) {
    let count = |filter: &str| capture_lines(path, filter, usize::MAX).len();
    let total = count("");
    // ARP and IPv6 neighbour discovery are link housekeeping, not pod traffic.
    let not_wg = count(NOT_WIREGUARD_FILTER);
    let bytes = std::fs::read(path).unwrap_or_default();
    let seen = bytes.windows(marker.len()).any(|w| w == marker);
    (total, not_wg, seen)
}

/// The lab's names: readable and fixed (one lab per machine).
struct LabNames;

impl identityd_topology::Names for LabNames {
    fn node_ns(&self, node: usize) -> String {
        format!("idd-n{node}")
    }
    fn uplink(&self, node: usize) -> (String, String) {
        (format!("idd-n{node}-u"), "eth0".into())
    }
    fn pod_ns(&self, node: usize, _pod: usize, app: &str) -> String {
        lab_pod(node, app, String::new()).netns()
    }
    fn pod_link(&self, node: usize, _pod: usize, app: &str) -> (String, String) {
        (lab_pod(node, app, String::new()).veth(), "eth0".into())
    }
}

/// The lab's pods on each node: (app, namespace, service account).
const LAB_APPS: [(&str, &str, &str); 3] = [
    ("web", "shop", "web"),
    ("client", "front", "client"),
    ("db", "data", "db"),
];

fn lab_pod(node: usize, app: &str, ip: String) -> LabPod {
    let (app, namespace, service_account) = LAB_APPS
        .iter()
        .copied()
        .find(|(a, ..)| *a == app)
        .unwrap_or(LAB_APPS[0]);
    LabPod {
        node,
        name: format!("{app}-{node}"),
        namespace,
        service_account,
        app,
        ip,
    }
}

fn build_topology(opts: &UpOptions, st: &mut LabState) -> Result<Vec<LabPod>, LabError> {
    let apps = LAB_APPS.map(|(a, ..)| a);
    let spec = identityd_topology::ClusterSpec::standard(
        identityd_topology::Underlay::Root {
            bridge: BRIDGE.into(),
        },
        opts.nodes,
        &apps,
        10,
        identityd_topology::PodAddressing::Routed,
        &LabNames,
    );
    let steps = identityd_topology::plan(&spec)?;
    identityd_topology::apply(Path::new("ip"), &steps, |c| match c {
        identityd_topology::Created::Namespace(n) => st.namespaces.push(n),
        identityd_topology::Created::RootLink(l) => st.root_links.push(l),
    })
    .map_err(|e| LabError::Command {
        cmd: e.command,
        reason: e.detail,
    })?;
    let pods: Vec<LabPod> = spec
        .nodes
        .iter()
        .enumerate()
        .flat_map(|(i, node)| {
            node.pods
                .iter()
                .zip(apps)
                .map(move |(pod, app)| lab_pod(i + 1, app, pod.ip.to_string()))
        })
        .collect();
    progress(&format!(
        "built {} node namespaces and {} pod namespaces on bridge {BRIDGE} (10.99.0.0/24)",
        opts.nodes,
        pods.len()
    ));
    Ok(pods)
}

/// `identityd lab status`.
///
/// # Errors
/// No lab in `dir`.
pub fn status(dir: &Path, json: bool) -> Result<String, LabError> {
    let st: LabState = serde_json::from_slice(
        &std::fs::read(dir.join("lab.json"))
            .map_err(|_| LabError::NotUp(dir.display().to_string()))?,
    )
    .map_err(|e| LabError::Io(e.to_string()))?;
    let mut out = String::new();
    let mut all = Vec::new();
    for (name, run) in &st.nodes {
        match api::fetch(&run.join("api.sock")) {
            Ok(s) => {
                out.push_str(&api::render(&s));
                all.push(serde_json::to_value(&s).unwrap_or_default());
            }
            Err(e) => {
                let _ = writeln!(out, "node {name}: daemon not answering: {e}");
                all.push(serde_json::json!({ "node": name, "error": e.to_string() }));
            }
        }
    }
    if json {
        return Ok(serde_json::to_string_pretty(&all).unwrap_or_default());
    }
    Ok(out)
}

/// `identityd lab down`: removes every namespace, link, process, socket and pin the lab made.
///
/// # Errors
/// No lab in `dir`.
pub fn down(dir: &Path) -> Result<String, LabError> {
    let st: LabState = serde_json::from_slice(
        &std::fs::read(dir.join("lab.json"))
            .map_err(|_| LabError::NotUp(dir.display().to_string()))?,
    )
    .map_err(|e| LabError::Io(e.to_string()))?;
    // Containers first (`--image`: with everything they started), then processes (daemons,
    // workloads, and the WireGuard devices the daemons started).
    image::remove(&st.containers);
    let mut pids = st.pids.clone();
    for (_, run) in &st.nodes {
        if let Some(p) = std::fs::read_to_string(run.join("wg.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            pids.push(p);
        }
    }
    for pid in &pids {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
    for ns in st.namespaces.iter().rev() {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    for ns in st.namespaces.iter().rev() {
        let _ = ip(&["netns", "del", ns]);
    }
    for l in st.root_links.iter().rev() {
        let _ = ip(&["link", "del", l]);
    }
    for w in &st.wg_interfaces {
        let _ = std::fs::remove_file(identityd_wg::uapi::socket_path(w));
    }
    for p in &st.bpf_pins {
        let _ = identityd_bpf::classifier::remove_pins(Path::new(p));
        let _ = std::fs::remove_dir_all(p);
    }
    let _ = std::fs::remove_file(dir.join("lab.json"));
    Ok(format!(
        "lab down: removed {} namespaces, {} links, {} process groups, {} WireGuard sockets, {} BPF pin dirs (logs kept in {})",
        st.namespaces.len(),
        st.root_links.len(),
        pids.len(),
        st.wg_interfaces.len(),
        st.bpf_pins.len(),
        dir.display()
    ))
}
