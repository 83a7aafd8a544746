//! Standard Kubernetes kinds identityd reads: `Namespace`, `Node`, `Pod`, `Service` (core/v1)
//! and `Ingress` (networking.k8s.io/v1). Only the fields identityd uses are modelled; other fields
//! are ignored on input, as a client of the API server would.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::meta::ObjectMeta;
use super::validate::Errors;

/// The namespace annotation that selects the mTLS mode.
pub const MTLS_ANNOTATION: &str = "identityd.io/mtls";

/// mTLS mode of a namespace (`identityd.io/mtls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// mTLS required: plaintext from outside the mesh is refused.
    Strict,
    /// mTLS offered, plaintext accepted.
    Permissive,
    /// No SVIDs, no proxying.
    Disabled,
}

impl FromStr for MtlsMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "strict" => Ok(Self::Strict),
            "permissive" => Ok(Self::Permissive),
            "disabled" => Ok(Self::Disabled),
            _ => Err("must be one of strict, permissive, disabled".into()),
        }
    }
}

impl fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Strict => "strict",
            Self::Permissive => "permissive",
            Self::Disabled => "disabled",
        })
    }
}

/// An integer or a string (`targetPort: 8080` or `targetPort: http`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// A number.
    Int(i64),
    /// A name.
    String(String),
}

// ---------------------------------------------------------------------------------------------
// Namespace

/// A namespace; its `identityd.io/mtls` annotation selects the mTLS mode of its pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Namespace {
    /// `v1`.
    pub api_version: String,
    /// `Namespace`.
    pub kind: String,
    /// Metadata (annotations).
    pub metadata: ObjectMeta,
}

impl Namespace {
    /// A namespace, optionally annotated with an mTLS mode.
    #[must_use]
    pub fn new(name: impl Into<String>, mtls: Option<MtlsMode>) -> Self {
        let mut metadata = ObjectMeta::cluster(name);
        if let Some(m) = mtls {
            metadata
                .annotations
                .insert(MTLS_ANNOTATION.into(), m.to_string());
        }
        Self {
            api_version: "v1".into(),
            kind: "Namespace".into(),
            metadata,
        }
    }

    /// The annotated mode (`None` when not annotated; validated objects never hold a bad value).
    #[must_use]
    pub fn mtls_mode(&self) -> Option<MtlsMode> {
        self.metadata
            .annotations
            .get(MTLS_ANNOTATION)
            .and_then(|v| v.parse().ok())
    }

    pub(crate) fn check(&self, errs: &mut Errors) {
        if let Some(v) = self.metadata.annotations.get(MTLS_ANNOTATION)
            && let Err(why) = v.parse::<MtlsMode>()
        {
            errs.push(format!("metadata.annotations[{MTLS_ANNOTATION}]"), v, why);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Node

/// A Kubernetes Node (the kubelet's object, not an `IdentitydNode`): only its pod CIDRs are
/// read. They are allocated by the control plane (the node IPAM controller), not claimed by the
/// node's daemon, so they are the authority for which pod CIDR belongs to which node and for
/// the cluster's pod ranges strict mode treats as "no path" unless a node publishes a tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// `v1`.
    pub api_version: String,
    /// `Node`.
    pub kind: String,
    /// Metadata (the node's name).
    pub metadata: ObjectMeta,
    /// Pod CIDRs.
    #[serde(default)]
    pub spec: NodeSpec,
}

/// `Node.spec` (pod CIDRs only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// The first pod CIDR (older field, kept by the API server beside `podCIDRs`).
    #[serde(default, rename = "podCIDR", skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<String>,
    /// Pod CIDRs, one per address family.
    #[serde(default, rename = "podCIDRs", skip_serializing_if = "Vec::is_empty")]
    pub pod_cidrs: Vec<String>,
}

impl Node {
    /// A Node with the given pod CIDRs.
    #[must_use]
    pub fn new(name: impl Into<String>, pod_cidrs: &[&str]) -> Self {
        Self {
            api_version: "v1".into(),
            kind: "Node".into(),
            metadata: ObjectMeta::cluster(name),
            spec: NodeSpec {
                pod_cidr: pod_cidrs.first().map(|c| (*c).to_owned()),
                pod_cidrs: pod_cidrs.iter().map(|c| (*c).to_owned()).collect(),
            },
        }
    }

    /// Every pod CIDR of the node (`podCIDRs`, and `podCIDR` when it is not among them),
    /// parsed; validated objects hold no unparsable value.
    #[must_use]
    pub fn pod_cidrs(&self) -> Vec<super::validate::Cidr> {
        let mut out: Vec<super::validate::Cidr> = Vec::new();
        for c in self.spec.pod_cidrs.iter().chain(self.spec.pod_cidr.iter()) {
            if let Ok(c) = c.parse()
                && !out.contains(&c)
            {
                out.push(c);
            }
        }
        out
    }

    pub(crate) fn check(&self, errs: &mut Errors) {
        if let Some(c) = &self.spec.pod_cidr {
            errs.cidr("spec.podCIDR", c);
        }
        for (i, c) in self.spec.pod_cidrs.iter().enumerate() {
            errs.cidr(&format!("spec.podCIDRs[{i}]"), c);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pod

/// A workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    /// `v1`.
    pub api_version: String,
    /// `Pod`.
    pub kind: String,
    /// Metadata (namespace, labels).
    pub metadata: ObjectMeta,
    /// Node, service account, containers.
    #[serde(default)]
    pub spec: PodSpec,
    /// IP and phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PodStatus>,
}

/// `Pod.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// Node the pod runs on (unscheduled when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Service account (Kubernetes default: `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Host-network pods share the node's address and get no pod identity.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    /// Containers (ports).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<Container>,
}

/// A container (ports only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Image (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Declared ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    /// `livenessProbe` (only its port matters here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    /// `readinessProbe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    /// `startupProbe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
}

/// A container probe: the kubelet connects from the node to one port of the pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    /// `httpGet`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<ProbePort>,
    /// `tcpSocket`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<ProbePort>,
    /// `grpc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<ProbePort>,
}

/// The port of a probe handler (a number, or a container port's name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbePort {
    /// Port.
    pub port: IntOrString,
}

/// A declared container port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    /// Port name (referenced by a Service `targetPort`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Port number.
    pub container_port: i64,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// `Pod.status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// Primary pod IP.
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,
    /// All pod IPs (dual stack).
    #[serde(default, rename = "podIPs", skip_serializing_if = "Vec::is_empty")]
    pub pod_ips: Vec<PodIp>,
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

/// One entry of `status.podIPs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodIp {
    /// The address.
    pub ip: String,
}

impl Pod {
    /// A running pod with an IP on a node.
    #[must_use]
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        node: impl Into<String>,
        service_account: impl Into<String>,
        ip: IpAddr,
    ) -> Self {
        Self {
            api_version: "v1".into(),
            kind: "Pod".into(),
            metadata: ObjectMeta::namespaced(namespace, name),
            spec: PodSpec {
                node_name: Some(node.into()),
                service_account_name: Some(service_account.into()),
                ..PodSpec::default()
            },
            status: Some(PodStatus {
                pod_ip: Some(ip.to_string()),
                phase: Some("Running".into()),
                ..PodStatus::default()
            }),
        }
    }

    /// Namespace (`default` when absent).
    #[must_use]
    pub fn namespace(&self) -> &str {
        self.metadata.namespace_or_default()
    }

    /// Service account (`default` when absent, as in Kubernetes).
    #[must_use]
    pub fn service_account(&self) -> &str {
        self.spec
            .service_account_name
            .as_deref()
            .unwrap_or("default")
    }

    /// The primary pod IP (`status.podIP`, else the first of `status.podIPs`).
    #[must_use]
    pub fn ip(&self) -> Option<IpAddr> {
        let st = self.status.as_ref()?;
        st.pod_ip
            .as_deref()
            .or_else(|| st.pod_ips.first().map(|p| p.ip.as_str()))
            .and_then(|s| s.parse().ok())
    }

    /// Every pod IP.
    #[must_use]
    pub fn ips(&self) -> Vec<IpAddr> {
        let Some(st) = &self.status else {
            return Vec::new();
        };
        let mut v: Vec<IpAddr> = st.pod_ip.iter().filter_map(|s| s.parse().ok()).collect();
        for p in &st.pod_ips {
            if let Ok(ip) = p.ip.parse()
                && !v.contains(&ip)
            {
                v.push(ip);
            }
        }
        v
    }

    /// Whether the pod has terminated (`Succeeded`/`Failed`): no endpoints, no identity.
    #[must_use]
    pub fn is_terminated(&self) -> bool {
        matches!(
            self.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
    }

    /// The ports the kubelet's probes of this pod connect to (named ports resolved).
    #[must_use]
    pub fn probe_ports(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self
            .spec
            .containers
            .iter()
            .flat_map(|c| [&c.liveness_probe, &c.readiness_probe, &c.startup_probe])
            .flatten()
            .flat_map(|p| [&p.http_get, &p.tcp_socket, &p.grpc])
            .flatten()
            .filter_map(|h| self.resolve_port(&h.port))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Resolves a Service `targetPort` against the pod's declared ports.
    #[must_use]
    pub fn resolve_port(&self, target: &IntOrString) -> Option<u16> {
        match target {
            IntOrString::Int(n) => u16::try_from(*n).ok(),
            IntOrString::String(name) => self
                .spec
                .containers
                .iter()
                .flat_map(|c| &c.ports)
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok()),
        }
    }

    pub(crate) fn check(&self, errs: &mut Errors) {
        if let Some(n) = &self.spec.node_name {
            errs.dns_subdomain("spec.nodeName", n);
        }
        if let Some(sa) = &self.spec.service_account_name {
            errs.dns_subdomain("spec.serviceAccountName", sa);
        }
        for (i, c) in self.spec.containers.iter().enumerate() {
            for (j, p) in c.ports.iter().enumerate() {
                errs.port(
                    &format!("spec.containers[{i}].ports[{j}].containerPort"),
                    p.container_port,
                );
                check_protocol(
                    errs,
                    &format!("spec.containers[{i}].ports[{j}].protocol"),
                    p.protocol.as_deref(),
                );
            }
        }
        if let Some(st) = &self.status {
            if let Some(ip) = &st.pod_ip {
                errs.ip("status.podIP", ip);
            }
            for (i, p) in st.pod_ips.iter().enumerate() {
                errs.ip(&format!("status.podIPs[{i}].ip"), &p.ip);
            }
            if let Some(ph) = &st.phase
                && !matches!(
                    ph.as_str(),
                    "Pending" | "Running" | "Succeeded" | "Failed" | "Unknown"
                )
            {
                errs.push(
                    "status.phase",
                    ph,
                    "must be one of Pending, Running, Succeeded, Failed, Unknown",
                );
            }
        }
    }
}

fn check_protocol(errs: &mut Errors, path: &str, p: Option<&str>) {
    if let Some(p) = p
        && !matches!(p, "TCP" | "UDP" | "SCTP")
    {
        errs.push(path, p, "must be one of TCP, UDP, SCTP");
    }
}

// ---------------------------------------------------------------------------------------------
// Service

/// A Service: a selector over pods and ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// `v1`.
    pub api_version: String,
    /// `Service`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Selector and ports.
    #[serde(default)]
    pub spec: ServiceSpec,
}

/// `Service.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Pod label selector (no endpoints when empty, as for selector-less Services).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// Ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ServicePort>,
    /// Virtual IP (`None` for headless; absent in the lab).
    #[serde(default, rename = "clusterIP", skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
    /// `ClusterIP` (default), `NodePort`, `LoadBalancer`, `ExternalName`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
}

/// A Service port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Name (required when there are several ports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Service port.
    pub port: i64,
    /// Pod port number or name (defaults to `port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    /// `TCP` (default), `UDP`, `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// `http`, `kubernetes.io/h2c`, `grpc`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

impl ServicePort {
    /// The target port, defaulting to `port`.
    #[must_use]
    pub fn target(&self) -> IntOrString {
        self.target_port
            .clone()
            .unwrap_or(IntOrString::Int(self.port))
    }
}

impl Service {
    /// Namespace (`default` when absent).
    #[must_use]
    pub fn namespace(&self) -> &str {
        self.metadata.namespace_or_default()
    }

    /// The cluster IP, when set to an address (not `None`/headless).
    #[must_use]
    pub fn cluster_ip(&self) -> Option<IpAddr> {
        self.spec.cluster_ip.as_deref().and_then(|s| s.parse().ok())
    }

    pub(crate) fn check(&self, errs: &mut Errors) {
        if let Some(ip) = &self.spec.cluster_ip
            && ip != "None"
            && !ip.is_empty()
        {
            errs.ip("spec.clusterIP", ip);
        }
        let many = self.spec.ports.len() > 1;
        let mut names = std::collections::BTreeSet::new();
        for (i, p) in self.spec.ports.iter().enumerate() {
            errs.port(&format!("spec.ports[{i}].port"), p.port);
            match &p.target_port {
                Some(IntOrString::Int(n)) => errs.port(&format!("spec.ports[{i}].targetPort"), *n),
                Some(IntOrString::String(s)) if s.is_empty() => {
                    errs.push(
                        format!("spec.ports[{i}].targetPort"),
                        s,
                        "must be a port number or name",
                    );
                }
                _ => {}
            }
            check_protocol(
                errs,
                &format!("spec.ports[{i}].protocol"),
                p.protocol.as_deref(),
            );
            match &p.name {
                Some(n) if !names.insert(n.clone()) => {
                    errs.push(format!("spec.ports[{i}].name"), n, "duplicate port name");
                }
                None if many => errs.push(
                    format!("spec.ports[{i}].name"),
                    "",
                    "required when a Service has several ports",
                ),
                _ => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Ingress

/// A Kubernetes Ingress (networking.k8s.io/v1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ingress {
    /// `networking.k8s.io/v1`.
    pub api_version: String,
    /// `Ingress`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Rules.
    #[serde(default)]
    pub spec: IngressSpec,
}

/// `Ingress.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Ingress class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_class_name: Option<String>,
    /// Backend for requests no rule matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_backend: Option<IngressBackend>,
    /// TLS hosts and their certificate Secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<IngressTls>,
    /// Host/path rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<IngressRule>,
}

/// `spec.tls[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressTls {
    /// Hosts covered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Secret with `tls.crt`/`tls.key` (absent: identityd's CA issues one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}

/// `spec.rules[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressRule {
    /// Host (any when absent; `*.example.com` wildcards allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// HTTP paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpIngressRuleValue>,
}

/// `spec.rules[].http`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpIngressRuleValue {
    /// Paths.
    #[serde(default)]
    pub paths: Vec<HttpIngressPath>,
}

/// `spec.rules[].http.paths[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpIngressPath {
    /// Path (must start with `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `Exact`, `Prefix` or `ImplementationSpecific` (treated as `Prefix`).
    #[serde(default)]
    pub path_type: String,
    /// Where matching requests go.
    pub backend: IngressBackend,
}

/// An Ingress backend (Services only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressBackend {
    /// The Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<IngressServiceBackend>,
}

/// `backend.service`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressServiceBackend {
    /// Service name (same namespace).
    pub name: String,
    /// Service port by number or name.
    #[serde(default)]
    pub port: ServiceBackendPort,
}

/// `backend.service.port`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceBackendPort {
    /// Port number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<i64>,
    /// Port name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Ingress {
    fn check_backend(errs: &mut Errors, path: &str, b: &IngressBackend) {
        match &b.service {
            None => errs.push(
                format!("{path}.service"),
                "",
                "required (only Service backends are supported)",
            ),
            Some(s) => {
                errs.dns_subdomain(&format!("{path}.service.name"), &s.name);
                match (&s.port.number, &s.port.name) {
                    (Some(n), None) => errs.port(&format!("{path}.service.port.number"), *n),
                    (None, Some(_)) => {}
                    _ => errs.push(
                        format!("{path}.service.port"),
                        "",
                        "exactly one of number or name is required",
                    ),
                }
            }
        }
    }

    pub(crate) fn check(&self, errs: &mut Errors) {
        if let Some(b) = &self.spec.default_backend {
            Self::check_backend(errs, "spec.defaultBackend", b);
        }
        if self.spec.default_backend.is_none() && self.spec.rules.is_empty() {
            errs.push(
                "spec.rules",
                "[]",
                "at least one rule or a defaultBackend is required",
            );
        }
        for (i, r) in self.spec.rules.iter().enumerate() {
            if let Some(h) = &r.host {
                check_hostname(errs, &format!("spec.rules[{i}].host"), h);
            }
            let Some(http) = &r.http else { continue };
            for (j, p) in http.paths.iter().enumerate() {
                let base = format!("spec.rules[{i}].http.paths[{j}]");
                if let Some(path) = &p.path
                    && !path.starts_with('/')
                {
                    errs.push(format!("{base}.path"), path, "must start with '/'");
                }
                if !matches!(
                    p.path_type.as_str(),
                    "Exact" | "Prefix" | "ImplementationSpecific"
                ) {
                    errs.push(
                        format!("{base}.pathType"),
                        &p.path_type,
                        "must be one of Exact, Prefix, ImplementationSpecific",
                    );
                }
                Self::check_backend(errs, &format!("{base}.backend"), &p.backend);
            }
        }
        for (i, t) in self.spec.tls.iter().enumerate() {
            for (j, h) in t.hosts.iter().enumerate() {
                check_hostname(errs, &format!("spec.tls[{i}].hosts[{j}]"), h);
            }
        }
    }
}

/// A hostname, optionally with a leading `*.` wildcard label.
pub(crate) fn check_hostname(errs: &mut Errors, path: &str, h: &str) {
    let rest = h.strip_prefix("*.").unwrap_or(h);
    if let Err(why) = super::validate::check_dns_subdomain(rest) {
        errs.push(
            path,
            h,
            format!("must be a hostname (optionally starting with '*.'): {why}"),
        );
    }
}

/// A `v1 Secret`. identityd reads only `kubernetes.io/tls` Secrets that Gateway listeners
/// (`certificateRefs`) and Ingresses (`tls[].secretName`) name. `Debug` never prints values.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    /// `v1`.
    pub api_version: String,
    /// `Secret`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// `kubernetes.io/tls`, `Opaque`, …
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Base64 values by key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// Plain values by key (merged over `data`, as the API server does on write).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub string_data: BTreeMap<String, String>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&String> = self.data.keys().chain(self.string_data.keys()).collect();
        f.debug_struct("Secret")
            .field("metadata", &self.metadata)
            .field("type", &self.type_)
            .field("keys", &keys)
            .field("values", &"<redacted>")
            .finish()
    }
}

/// Secret type of TLS certificates.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

impl Secret {
    /// Namespace (`default` when absent).
    #[must_use]
    pub fn namespace(&self) -> &str {
        self.metadata.namespace_or_default()
    }

    /// The value of `key` (`stringData` first, then decoded `data`), if present and valid.
    #[must_use]
    pub fn value(&self, key: &str) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        if let Some(v) = self.string_data.get(key) {
            return Some(zeroize::Zeroizing::new(v.as_bytes().to_vec()));
        }
        use base64::Engine as _;
        let v = self.data.get(key)?;
        base64::engine::general_purpose::STANDARD
            .decode(v.trim())
            .ok()
            .map(zeroize::Zeroizing::new)
    }

    /// `tls.crt` and `tls.key` as PEM text, when this is a usable TLS Secret.
    #[must_use]
    pub fn tls_pem(&self) -> Option<(String, zeroize::Zeroizing<String>)> {
        let crt = String::from_utf8(self.value("tls.crt")?.to_vec()).ok()?;
        let key = zeroize::Zeroizing::new(String::from_utf8(self.value("tls.key")?.to_vec()).ok()?);
        (crt.contains("-----BEGIN CERTIFICATE-----") && key.contains("PRIVATE KEY-----"))
            .then_some((crt, key))
    }

    pub(crate) fn check(&self, errs: &mut Errors) {
        // Values are never echoed in errors.
        for (k, v) in &self.data {
            use base64::Engine as _;
            if base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .is_err()
            {
                errs.push(format!("data.{k}"), "<redacted>", "must be base64");
            }
        }
        if self.type_.as_deref() == Some(TLS_SECRET_TYPE) {
            let mut complete = true;
            for k in ["tls.crt", "tls.key"] {
                if !self.data.contains_key(k) && !self.string_data.contains_key(k) {
                    complete = false;
                    errs.push(
                        format!("data.{k}"),
                        "",
                        "required in a kubernetes.io/tls Secret",
                    );
                }
            }
            if complete && self.tls_pem().is_none() {
                errs.push(
                    "data",
                    "<redacted>",
                    "tls.crt must hold PEM certificates and tls.key a PEM private key",
                );
            }
        }
    }
}
