//! The daemon's configuration file (`identityd run --config FILE`), YAML.
//!
//! ```yaml
//! role: node                      # or ca
//! name: n1
//! trustDomain: cluster.local
//! clusterSource: file            # or kube (the API server; then clusterDir is not needed)
//! clusterDir: /path/cluster       # the FileSource directory
//! secretNamespaces: [shop]        # kube: where TLS Secrets may be read (default: none)
//! stateDir: /var/lib/identityd    # keys and join credentials (0600)
//! runDir: /run/identityd          # api.sock, xds.sock, wg.json
//! underlayAddress: 10.99.0.11
//! podCIDR: 10.244.1.0/24
//! clusterCIDRs: [10.244.0.0/16]
//! encryption: { mode: wireguard, strictMode: true }
//! wireguard: { interface: idd1, port: 51871 }
//! podInterfacePrefix: "p-"
//! ```
//! Parse errors name the field and value (`podCIDR=10.244.1.1/24: …`).
//!
//! Environment overrides (a DaemonSet sets them from the downward API):
//! [`ENV_NODE_NAME`] (`IDENTITYD_NODE_NAME`) replaces `name`, [`ENV_UNDERLAY_ADDRESS`]
//! (`IDENTITYD_UNDERLAY_ADDRESS`) replaces `underlayAddress`. With `clusterSource: kube`,
//! `podCIDR` may be left out: the node role takes its Node object's `spec.podCIDR`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variable overriding `name` (a DaemonSet sets it to `spec.nodeName`).
pub const ENV_NODE_NAME: &str = "IDENTITYD_NODE_NAME";
/// Environment variable overriding `underlayAddress` (a DaemonSet sets it to `status.hostIP`).
pub const ENV_UNDERLAY_ADDRESS: &str = "IDENTITYD_UNDERLAY_ADDRESS";

pub use crate::source::ClusterSourceKind;

/// The node daemons' ServiceAccount unless `ca.nodeServiceAccount` says otherwise.
pub const DEFAULT_NODE_SERVICE_ACCOUNT: &str = "identityd-system/identityd-node";

/// A ServiceAccount reference `NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ServiceAccountRef {
    /// Parses `NAMESPACE/NAME`.
    ///
    /// # Errors
    /// What is wrong, for `ca.nodeServiceAccount=VALUE: REASON`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (ns, name) = s
            .split_once('/')
            .ok_or_else(|| "must be NAMESPACE/NAME of a ServiceAccount".to_owned())?;
        for (what, v) in [("namespace", ns), ("name", name)] {
            crate::model::validate::check_dns_subdomain(v)
                .map_err(|e| format!("the {what} {v:?} is not a DNS name: {e}"))?;
        }
        Ok(Self {
            namespace: ns.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The TokenReview username of the account.
    #[must_use]
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

impl std::fmt::Display for ServiceAccountRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Which process this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A node daemon.
    #[default]
    Node,
    /// The CA (issuer).
    Ca,
}

/// Encryption mode between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EncryptionMode {
    /// WireGuard.
    #[default]
    Wireguard,
    /// IPsec (not available on this kernel; refused at start).
    Ipsec,
    /// None.
    Disabled,
}

/// `flowEvents:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FlowEventsMode {
    /// None.
    None,
    /// Drops only.
    #[default]
    Drops,
    /// Every classified packet.
    All,
}

/// `encryption:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Encryption {
    /// Mode.
    #[serde(default)]
    pub mode: EncryptionMode,
    /// Drop pod traffic to other nodes that has no encrypted path (default true).
    #[serde(default = "yes")]
    pub strict_mode: bool,
    /// Also encrypt host-network (node-to-node) traffic. Not built: `true` is refused at start.
    #[serde(default)]
    pub node_encryption: bool,
    /// Sources in remote pod CIDRs that ingress strict admits into local pods from outside the
    /// tunnel (an explicit exception to the encryption rule; empty by default). New TCP into a
    /// strict pod still needs the node's Envoy.
    #[serde(default, rename = "allowFrom", skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<String>,
}

impl Default for Encryption {
    fn default() -> Self {
        Self {
            mode: EncryptionMode::Wireguard,
            strict_mode: true,
            node_encryption: false,
            allow_from: Vec::new(),
        }
    }
}

/// `report:`: the node's `IdentitydNodeReport` (live-state summary for `identityd audit
/// --kube`). Durations like `30s`, `5m`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReportSettings {
    /// Write reports at all (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// At most one write per this (default `30s`; at least `1s`).
    #[serde(default = "report_min_interval")]
    pub min_interval: String,
    /// At least one write per this, changed or not (default `5m`; at least `minInterval`).
    #[serde(default = "report_heartbeat")]
    pub heartbeat: String,
    /// Peers with a handshake at most this old count as recent (default `3m`).
    #[serde(default = "report_handshake_max_age")]
    pub handshake_max_age: String,
}

fn report_min_interval() -> String {
    "30s".to_owned()
}
fn report_heartbeat() -> String {
    "5m".to_owned()
}
fn report_handshake_max_age() -> String {
    "3m".to_owned()
}

impl Default for ReportSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            min_interval: report_min_interval(),
            heartbeat: report_heartbeat(),
            handshake_max_age: report_handshake_max_age(),
        }
    }
}

impl ReportSettings {
    /// `(minInterval, heartbeat, handshakeMaxAge)` in seconds, checked.
    ///
    /// # Errors
    /// `(field, value, reason)` for a bad duration.
    pub fn seconds(&self) -> Result<(u64, u64, u64), (String, String, String)> {
        let d = |field: &str, v: &str| {
            identityd_certs::duration::parse(v)
                .map(|d| d.as_secs())
                .map_err(|e| (format!("report.{field}"), v.to_owned(), e.to_string()))
        };
        let min = d("minInterval", &self.min_interval)?;
        let hb = d("heartbeat", &self.heartbeat)?;
        let hs = d("handshakeMaxAge", &self.handshake_max_age)?;
        if min == 0 {
            return Err((
                "report.minInterval".into(),
                self.min_interval.clone(),
                "must be at least 1s".into(),
            ));
        }
        if hb < min {
            return Err((
                "report.heartbeat".into(),
                self.heartbeat.clone(),
                format!(
                    "must not be shorter than report.minInterval ({})",
                    self.min_interval
                ),
            ));
        }
        Ok((min, hb, hs))
    }
}

/// `mtls:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MtlsSettings {
    /// mTLS mode of namespaces without the `identityd.io/mtls` annotation (default disabled).
    #[serde(default = "mtls_default")]
    pub default_mode: crate::model::MtlsMode,
    /// Let the node's own processes (the kubelet) open TCP to the ports strict pods' probes
    /// declare (`livenessProbe`, `readinessProbe`, `startupProbe`); every other plaintext
    /// connection into a strict pod is refused (default true).
    #[serde(default = "allow_node_probes_default")]
    pub allow_node_probes: bool,
}

fn allow_node_probes_default() -> bool {
    true
}

impl Default for MtlsSettings {
    fn default() -> Self {
        Self {
            default_mode: mtls_default(),
            allow_node_probes: allow_node_probes_default(),
        }
    }
}

fn mtls_default() -> crate::model::MtlsMode {
    crate::model::MtlsMode::Disabled
}

/// Default lifetime of workload SVIDs and ingress certificates.
pub const DEFAULT_SVID_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

fn yes() -> bool {
    true
}

/// `wireguard:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Wireguard {
    /// Interface name (distinct per node on one machine: the UAPI socket path is global).
    pub interface: String,
    /// UDP port.
    #[serde(default = "wg_port")]
    pub port: u16,
}

fn wg_port() -> u16 {
    identityd_wg::DEFAULT_PORT
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DaemonConfig {
    /// Role.
    #[serde(default)]
    pub role: Role,
    /// Node name (the `nodeName` of its pods); [`ENV_NODE_NAME`] overrides it.
    #[serde(default)]
    pub name: String,
    /// Trust domain.
    #[serde(default = "default_td")]
    pub trust_domain: String,
    /// Where cluster state comes from: `file` (default) or `kube`.
    #[serde(default)]
    pub cluster_source: ClusterSourceKind,
    /// The FileSource directory (required for `clusterSource: file`).
    #[serde(default)]
    pub cluster_dir: PathBuf,
    /// `clusterSource: kube`: the namespaces whose `kubernetes.io/tls` Secrets are read
    /// (Gateway `certificateRefs`, Ingress `secretName`); empty (default): no Secret is read.
    #[serde(default)]
    pub secret_namespaces: Vec<String>,
    /// State directory (keys).
    pub state_dir: PathBuf,
    /// Runtime directory (sockets).
    pub run_dir: PathBuf,
    /// This node's underlay address.
    #[serde(default)]
    pub underlay_address: Option<IpAddr>,
    /// This node's pod CIDR.
    #[serde(default, rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    /// All pod CIDRs of the cluster (routed into the tunnel; strict mode covers them from the
    /// start).
    #[serde(default, rename = "clusterCIDRs")]
    pub cluster_cidrs: Vec<String>,
    /// Encryption.
    #[serde(default)]
    pub encryption: Encryption,
    /// WireGuard.
    #[serde(default)]
    pub wireguard: Option<Wireguard>,
    /// Prefix of the node-side veth names that face pods (the classifier attaches there).
    #[serde(default = "pod_prefix")]
    pub pod_interface_prefix: String,
    /// The `identityd-wg` binary (default: next to this executable).
    #[serde(default)]
    pub wireguard_binary: Option<PathBuf>,
    /// Pin BPF maps and links under `/sys/fs/bpf/identityd/<name>` so a restart re-adopts them.
    #[serde(default = "yes")]
    pub pin_bpf: bool,
    /// An address of this node's pod CIDR put on the WireGuard interface, so the node's own
    /// connections into the tunnel (its Envoy's) carry a source the peers accept.
    #[serde(default)]
    pub tunnel_address: Option<IpAddr>,
    /// Which packets the classifier reports as flow events (`identityd observe`): `none`,
    /// `drops` (default) or `all`.
    #[serde(default)]
    pub flow_events: FlowEventsMode,
    /// Prometheus metrics endpoint (`GET /metrics`), e.g. `127.0.0.1:9962`.
    #[serde(default)]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Role ca: the CA directory (the CA key lives only here).
    #[serde(default)]
    pub ca_dir: Option<PathBuf>,
    /// Role ca: where the issuance service listens.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
    /// Role node: how to reach the CA (for SVIDs of pods in mTLS namespaces).
    #[serde(default)]
    pub ca: Option<CaAccess>,
    /// Role node: the per-node Envoy.
    #[serde(default)]
    pub envoy: Option<EnvoySettings>,
    /// Role node: ports of the listeners `Ingress` objects share (Gateways name their own).
    #[serde(default)]
    pub ingress: IngressSettings,
    /// mTLS defaults.
    #[serde(default)]
    pub mtls: MtlsSettings,
    /// Lifetime of workload SVIDs and ingress certificates (duration, e.g. `1h`; 5m–24h).
    /// Role node: what it asks for; role ca: the default for requests that name none.
    #[serde(default, rename = "svidTTL", skip_serializing_if = "Option::is_none")]
    pub svid_ttl: Option<String>,
    /// Role node: the live-state report for `identityd audit --kube`.
    #[serde(default)]
    pub report: ReportSettings,
    /// Role node: request telemetry from the node's Envoy.
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    /// Role node, `clusterSource: kube`: the taint this node's `Node` is registered with (the
    /// agent-not-ready pattern: kubelet `--register-with-taints=KEY=:NoSchedule`), removed once
    /// the node's first plan is in the classifier, so pods are not scheduled onto a node whose
    /// pods nothing guards yet. Empty: none.
    #[serde(default = "default_startup_taint")]
    pub startup_taint: String,
}

/// The default [`DaemonConfig::startup_taint`].
pub const DEFAULT_STARTUP_TAINT: &str = "identityd.io/agent-not-ready";

fn default_startup_taint() -> String {
    DEFAULT_STARTUP_TAINT.to_owned()
}

/// `telemetry:` of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Envoy streams an access-log entry per request and per mTLS TCP connection to the
    /// daemon (Access Log Service on the node-local xDS socket), which exports them as
    /// identity-labelled metrics, `identityd stat`/`top` and `observe --l7` (default true).
    #[serde(default = "yes")]
    pub access_logs: bool,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self { access_logs: true }
    }
}

impl DaemonConfig {
    /// What the cluster source needs of this config.
    #[must_use]
    pub fn source_spec(&self) -> crate::source::SourceSpec {
        crate::source::SourceSpec {
            kind: self.cluster_source,
            dir: self.cluster_dir.clone(),
            secret_namespaces: self.secret_namespaces.clone(),
        }
    }

    /// [`DaemonConfig::svid_ttl`] parsed (checked by [`DaemonConfig::check`]), or the default.
    #[must_use]
    pub fn svid_ttl(&self) -> std::time::Duration {
        self.svid_ttl
            .as_deref()
            .and_then(|s| identityd_certs::duration::parse(s).ok())
            .unwrap_or(DEFAULT_SVID_TTL)
    }
}

/// `ingress:` of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressSettings {
    /// Plaintext port of `Ingress` rules (default 80).
    #[serde(default = "http_port")]
    pub http_port: u16,
    /// TLS port of `Ingress` rules (default 443).
    #[serde(default = "https_port")]
    pub https_port: u16,
}

impl Default for IngressSettings {
    fn default() -> Self {
        Self {
            http_port: http_port(),
            https_port: https_port(),
        }
    }
}

fn http_port() -> u16 {
    80
}

fn https_port() -> u16 {
    443
}

/// How a node proves who it is when joining the CA (`ca.auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum NodeAuth {
    /// A single-use identityd join token (`ca.joinTokenFile`), minted by the CA.
    #[default]
    JoinToken,
    /// A projected Kubernetes ServiceAccount token (`ca.tokenFile`, audience `identityd-ca`),
    /// checked by the CA with a TokenReview and bound to the pod's node.
    ServiceAccountToken,
}

/// `ca:`. Role node: how to reach the CA and join it. Role ca: `nodeServiceAccount`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaAccess {
    /// `HOST:PORT` of the CA's issuance service (role node).
    #[serde(default)]
    pub endpoint: String,
    /// The CA's bundle (PEM) to trust on first contact (role node).
    #[serde(default)]
    pub bundle_file: PathBuf,
    /// How the node joins: `joinToken` (default) or `serviceAccountToken`.
    #[serde(default)]
    pub auth: NodeAuth,
    /// The single-use join token (0600), consumed at the first start (`auth: joinToken`).
    #[serde(default)]
    pub join_token_file: PathBuf,
    /// The projected ServiceAccount token (`auth: serviceAccountToken`), re-read at each join.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Role ca (Kubernetes): the ServiceAccount (`NAMESPACE/NAME`) node daemons run as; join
    /// tokens of any other account are refused. Default
    /// [`DEFAULT_NODE_SERVICE_ACCOUNT`].
    #[serde(default)]
    pub node_service_account: Option<String>,
}

/// `envoy:` of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvoySettings {
    /// The Envoy binary.
    pub binary: PathBuf,
}

/// Envoy's admin API socket in a node's run dir (mode 0600, in the 0700 run dir): not on TCP,
/// so no other process of the node, and nothing in its network namespace, reaches it.
#[must_use]
pub fn envoy_admin_socket(run_dir: &std::path::Path) -> PathBuf {
    run_dir.join("envoy-admin.sock")
}

fn default_td() -> String {
    "cluster.local".to_owned()
}

fn pod_prefix() -> String {
    "p-".to_owned()
}

/// A configuration error naming the field and the value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{path}: {field}={value}: {reason}")]
pub struct ConfigError {
    /// The file.
    pub path: String,
    /// The field path.
    pub field: String,
    /// The value.
    pub value: String,
    /// Why it is refused.
    pub reason: String,
}

impl CaAccess {
    /// Checks a node's `ca:` section.
    fn check_node(&self) -> Result<(), (String, String, String)> {
        let need = |field: &str, why: &str| Err((field.to_owned(), String::new(), why.to_owned()));
        if self.endpoint.is_empty() {
            return need("ca.endpoint", "required for role node");
        }
        if self.bundle_file.as_os_str().is_empty() {
            return need("ca.bundleFile", "required for role node");
        }
        match self.auth {
            NodeAuth::JoinToken if self.join_token_file.as_os_str().is_empty() => {
                need("ca.joinTokenFile", "required when ca.auth=joinToken")
            }
            NodeAuth::ServiceAccountToken if self.token_file.is_none() => need(
                "ca.tokenFile",
                "required when ca.auth=serviceAccountToken (the projected token's path)",
            ),
            _ => Ok(()),
        }
    }
}

impl DaemonConfig {
    /// Reads and checks a config file.
    ///
    /// # Errors
    /// The field, value and reason of the first problem.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, |k| std::env::var(k).ok())
    }

    /// [`DaemonConfig::load`] with the environment supplied by `env` (tests pass a map).
    ///
    /// # Errors
    /// The field (or environment variable), value and reason of the first problem.
    pub fn load_with_env(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let err = |field: &str, value: &str, reason: String| ConfigError {
            path: path.display().to_string(),
            field: field.to_owned(),
            value: value.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err("(file)", "", e.to_string()))?;
        Self::from_text_with_env(&text, &path.display().to_string(), env)
    }

    /// [`DaemonConfig::load_with_env`] of a config's text (`origin` names where it came from
    /// in errors: a file, or `ConfigMap ns/name: config.yaml` for the audit).
    ///
    /// # Errors
    /// [`ConfigError`] naming the field and value.
    pub fn from_text_with_env(
        text: &str,
        origin: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let err = |field: &str, value: &str, reason: String| ConfigError {
            path: origin.to_owned(),
            field: field.to_owned(),
            value: value.to_owned(),
            reason,
        };
        let mut cfg: Self =
            serde_saphyr::from_str(text).map_err(|e| err("(yaml)", "", e.to_string()))?;
        if let Some(name) = env(ENV_NODE_NAME).filter(|v| !v.is_empty()) {
            cfg.name = name;
        }
        if let Some(addr) = env(ENV_UNDERLAY_ADDRESS).filter(|v| !v.is_empty()) {
            cfg.underlay_address =
                Some(addr.trim().parse().map_err(|e: std::net::AddrParseError| {
                    err(
                        ENV_UNDERLAY_ADDRESS,
                        &addr,
                        format!("not an IP address: {e}"),
                    )
                })?);
        }
        cfg.check().map_err(|(f, v, r)| err(&f, &v, r))?;
        Ok(cfg)
    }

    /// Checks values serde cannot.
    ///
    /// # Errors
    /// `(field, value, reason)`.
    pub fn check(&self) -> Result<(), (String, String, String)> {
        identityd_certs::TrustDomain::new(&self.trust_domain).map_err(|e| {
            (
                "trustDomain".to_owned(),
                self.trust_domain.clone(),
                e.to_string(),
            )
        })?;
        if self.encryption.node_encryption
            && self.role == Role::Node
            && (self.encryption.mode != EncryptionMode::Wireguard || self.wireguard.is_none())
        {
            return Err((
                "encryption.nodeEncryption".into(),
                "true".into(),
                "node encryption needs encryption.mode wireguard and a wireguard section".into(),
            ));
        }
        self.report.seconds()?;
        if let Some(t) = &self.svid_ttl {
            match identityd_certs::duration::parse(t) {
                Ok(d) if (300..=86_400).contains(&d.as_secs()) => {}
                Ok(_) => {
                    return Err((
                        "svidTTL".into(),
                        t.clone(),
                        "must be between 5m and 24h".into(),
                    ));
                }
                Err(e) => return Err(("svidTTL".into(), t.clone(), e.to_string())),
            }
        }
        if self.name.is_empty() {
            return Err((
                "name".into(),
                String::new(),
                format!("must not be empty (set it, or {ENV_NODE_NAME})"),
            ));
        }
        for (i, ns) in self.secret_namespaces.iter().enumerate() {
            crate::model::validate::check_dns_subdomain(ns)
                .map_err(|e| (format!("secretNamespaces[{i}]"), ns.clone(), e.to_string()))?;
        }
        if self.cluster_source == ClusterSourceKind::File && self.cluster_dir.as_os_str().is_empty()
        {
            return Err((
                "clusterDir".into(),
                String::new(),
                "required for clusterSource=file".into(),
            ));
        }
        if self.role == Role::Ca {
            if let Some(sa) = self
                .ca
                .as_ref()
                .and_then(|c| c.node_service_account.as_deref())
            {
                ServiceAccountRef::parse(sa).map_err(|reason| {
                    ("ca.nodeServiceAccount".to_owned(), sa.to_owned(), reason)
                })?;
            }
            if self.ca_dir.is_none() {
                return Err(("caDir".into(), String::new(), "required for role ca".into()));
            }
            if self.listen.is_none() {
                return Err((
                    "listen".into(),
                    String::new(),
                    "required for role ca".into(),
                ));
            }
        }
        if self.role == Role::Node {
            // With the KubeSource an absent podCIDR comes from the Node object.
            if self.pod_cidr.is_some() || self.cluster_source == ClusterSourceKind::File {
                let pc = self.pod_cidr.as_deref().unwrap_or("");
                pc.parse::<crate::model::Cidr>()
                    .map_err(|e| ("podCIDR".to_owned(), pc.to_owned(), e.to_string()))?;
            }
            for (i, c) in self.cluster_cidrs.iter().enumerate() {
                c.parse::<crate::model::Cidr>()
                    .map_err(|e| (format!("clusterCIDRs[{i}]"), c.clone(), e.to_string()))?;
            }
            for (i, c) in self.encryption.allow_from.iter().enumerate() {
                c.parse::<crate::model::Cidr>().map_err(|e| {
                    (
                        format!("encryption.allowFrom[{i}]"),
                        c.clone(),
                        e.to_string(),
                    )
                })?;
            }
            if self.underlay_address.is_none() {
                return Err((
                    "underlayAddress".into(),
                    String::new(),
                    format!("required for role node (set it, or {ENV_UNDERLAY_ADDRESS})"),
                ));
            }
            match self.encryption.mode {
                EncryptionMode::Wireguard if self.wireguard.is_none() => {
                    return Err((
                        "wireguard".into(),
                        String::new(),
                        "required when encryption.mode=wireguard".into(),
                    ));
                }
                EncryptionMode::Ipsec => {
                    return Err((
                        "encryption.mode".into(),
                        "ipsec".into(),
                        "IPsec needs a kernel with ESP (CONFIG_INET_ESP), which this machine lacks; not built yet".into(),
                    ));
                }
                _ => {}
            }
            if let Some(ca) = &self.ca {
                ca.check_node()?;
            }
            if let Some(w) = &self.wireguard
                && (w.interface.is_empty() || w.interface.len() > 15)
            {
                return Err((
                    "wireguard.interface".into(),
                    w.interface.clone(),
                    "1..15 characters".into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_source_and_env_overrides() {
        // A DaemonSet config: no name, no underlay address, no podCIDR, no clusterDir.
        let (_d, p) = write(
            "role: node\nclusterSource: kube\nstateDir: /s\nrunDir: /r\nclusterCIDRs: [10.244.0.0/16]\nwireguard: { interface: idd0 }\n",
        );
        let env = |k: &str| match k {
            ENV_NODE_NAME => Some("worker-3".to_owned()),
            ENV_UNDERLAY_ADDRESS => Some("192.168.1.13".to_owned()),
            _ => None,
        };
        let c = DaemonConfig::load_with_env(&p, env).unwrap();
        assert_eq!(c.cluster_source, ClusterSourceKind::Kube);
        assert_eq!(c.name, "worker-3");
        assert_eq!(c.underlay_address, Some("192.168.1.13".parse().unwrap()));
        assert_eq!(c.pod_cidr, None);
        // Without the environment the missing fields are named.
        let e = DaemonConfig::load_with_env(&p, |_| None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("name=") && e.contains(ENV_NODE_NAME), "{e}");
        let e = DaemonConfig::load_with_env(&p, |k| (k == ENV_NODE_NAME).then(|| "n".to_owned()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("underlayAddress") && e.contains(ENV_UNDERLAY_ADDRESS),
            "{e}"
        );
        let e = DaemonConfig::load_with_env(&p, |k| match k {
            ENV_NODE_NAME => Some("n".to_owned()),
            _ => Some("not-an-ip".to_owned()),
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("IDENTITYD_UNDERLAY_ADDRESS=not-an-ip"), "{e}");
        // The env beats the file; file mode still needs clusterDir and podCIDR.
        let (_d, p) = write(&GOOD.replace("clusterDir: /c\n", ""));
        let e = DaemonConfig::load_with_env(&p, |_| None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("clusterDir") && e.contains("clusterSource=file"),
            "{e}"
        );
        let (_d, p) = write(GOOD);
        let c = DaemonConfig::load_with_env(&p, env).unwrap();
        assert_eq!(
            (c.name.as_str(), c.cluster_source),
            ("worker-3", ClusterSourceKind::File)
        );
        let (_d, p) = write(&GOOD.replace("podCIDR: 10.244.1.0/24\n", ""));
        assert!(
            DaemonConfig::load_with_env(&p, |_| None)
                .unwrap_err()
                .to_string()
                .contains("podCIDR")
        );
    }

    fn write(s: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("c.yaml");
        std::fs::write(&p, s).unwrap();
        (d, p)
    }

    const GOOD: &str = "role: node\nname: n1\nclusterDir: /c\nstateDir: /s\nrunDir: /r\nunderlayAddress: 10.99.0.11\npodCIDR: 10.244.1.0/24\nclusterCIDRs: [10.244.0.0/16]\nwireguard: { interface: idd1 }\n";

    #[test]
    fn parses_and_names_bad_fields() {
        let (_d, p) = write(GOOD);
        let c = DaemonConfig::load(&p).unwrap();
        assert_eq!(c.wireguard.unwrap().port, 51871);
        assert!(c.encryption.strict_mode);
        let (_d, p) = write(&GOOD.replace("10.244.1.0/24", "10.244.1.1/24"));
        let e = DaemonConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("podCIDR=10.244.1.1/24"), "{e}");
        let (_d, p) = write(&GOOD.replace("wireguard: { interface: idd1 }\n", ""));
        assert!(
            DaemonConfig::load(&p)
                .unwrap_err()
                .to_string()
                .contains("wireguard")
        );
        let (_d, p) = write(&format!("{GOOD}encryption: {{ mode: ipsec }}\n"));
        assert!(
            DaemonConfig::load(&p)
                .unwrap_err()
                .to_string()
                .contains("encryption.mode=ipsec")
        );
        let ca = "ca: { endpoint: '10.0.0.1:8443', bundleFile: /b.pem, auth: serviceAccountToken, tokenFile: /var/run/secrets/identityd/token }\n";
        let (_d, p) = write(&format!("{GOOD}{ca}"));
        let c = DaemonConfig::load(&p).unwrap().ca.unwrap();
        assert_eq!(c.auth, NodeAuth::ServiceAccountToken);
        assert_eq!(
            c.token_file.as_deref(),
            Some(Path::new("/var/run/secrets/identityd/token"))
        );
        let (_d, p) = write(&format!(
            "{GOOD}{}",
            ca.replace(", tokenFile: /var/run/secrets/identityd/token", "")
        ));
        let e = DaemonConfig::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("ca.tokenFile") && e.contains("serviceAccountToken"),
            "{e}"
        );
        let (_d, p) = write(&format!(
            "{GOOD}ca: {{ endpoint: 'x:1', bundleFile: /b }}\n"
        ));
        let e = DaemonConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("ca.joinTokenFile"), "{e}");
        let (_d, p) = write(&format!(
            "{GOOD}ca: {{ endpoint: 'x:1', bundleFile: /b, auth: password }}\n"
        ));
        assert!(
            DaemonConfig::load(&p)
                .unwrap_err()
                .to_string()
                .contains("password")
        );
        let ca_role = "role: ca\nname: ca\nclusterSource: kube\nstateDir: /s\nrunDir: /r\ncaDir: /ca\nlisten: '0.0.0.0:8443'\n";
        let (_d, p) = write(&format!(
            "{ca_role}ca: {{ nodeServiceAccount: identityd-system/identityd-node }}\n"
        ));
        DaemonConfig::load(&p).unwrap();
        let (_d, p) = write(&format!(
            "{ca_role}ca: {{ nodeServiceAccount: identityd-node }}\n"
        ));
        let e = DaemonConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("ca.nodeServiceAccount=identityd-node"), "{e}");
        let (_d, p) = write(&format!("{GOOD}secretNamespaces: [shop, Bad_NS]\n"));
        let e = DaemonConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("secretNamespaces[1]=Bad_NS"), "{e}");
        let (_d, p) = write(&format!("{GOOD}clusterSource: etcd\n"));
        assert!(
            DaemonConfig::load(&p)
                .unwrap_err()
                .to_string()
                .contains("etcd")
        );
        let (_d, p) = write(&format!(
            "{GOOD}encryption: {{ allowFrom: [10.244.2.0/28, 'fd00:244:2::/80'] }}\n"
        ));
        assert_eq!(
            DaemonConfig::load(&p).unwrap().encryption.allow_from,
            ["10.244.2.0/28", "fd00:244:2::/80"]
        );
        let (_d, p) = write(&format!(
            "{GOOD}encryption: {{ allowFrom: [10.244.2.0/28, 10.244.2.1/24] }}\n"
        ));
        let e = DaemonConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("encryption.allowFrom[1]=10.244.2.1/24"), "{e}");
        let (_d, p) = write(&format!("{GOOD}bogus: 1\n"));
        assert!(
            DaemonConfig::load(&p)
                .unwrap_err()
                .to_string()
                .contains("bogus")
        );
    }
}
