//! The plain mesh configuration the translation takes (no Kubernetes types): this node's
//! workloads with their identities, the services they may call with their endpoints and
//! identities, authorization policies, and the SVIDs to hand to Envoy.

use std::net::{IpAddr, SocketAddr};

pub use crate::l7::L7Config;

/// mTLS mode of a namespace (`identityd.io/mtls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MtlsMode {
    /// mTLS required: inbound only through the node's Envoy with a client SVID.
    Strict,
    /// mTLS offered on the inbound port; plaintext to the workload is not blocked.
    Permissive,
    /// No mTLS.
    #[default]
    Disabled,
}

impl MtlsMode {
    /// True for strict and permissive.
    #[must_use]
    pub fn offers_mtls(self) -> bool {
        !matches!(self, Self::Disabled)
    }
}

/// A workload (pod) on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// SPIFFE ID (`spiffe://td/ns/<ns>/sa/<sa>`).
    pub id: String,
    /// Pod IP.
    pub ip: IpAddr,
    /// Its namespace's mTLS mode.
    pub mtls: MtlsMode,
}

/// One endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Pod IP.
    pub ip: IpAddr,
    /// The workload's SPIFFE ID.
    pub id: String,
    /// Where the endpoint's node Envoy accepts mTLS for it (`<pod-ip>:15008` in a cluster).
    pub mtls_address: SocketAddr,
    /// Relative weight (1 when unsure).
    pub weight: u32,
}

/// A service port reachable from this node's workloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Service port (what clients dial).
    pub port: u16,
    /// Port the endpoints listen on.
    pub target_port: u16,
    /// mTLS mode of the service's namespace.
    pub mtls: MtlsMode,
    /// Extra host names clients may use (besides `name`, `name.ns`, `name.ns.svc`, …).
    pub hosts: Vec<String>,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
}

impl Service {
    /// `name.namespace`.
    #[must_use]
    pub fn key(&self) -> String {
        format!("{}.{}", self.name, self.namespace)
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthzAction {
    /// Only requests matching a rule of some ALLOW policy pass (when any ALLOW policy exists).
    Allow,
    /// Requests matching a rule are refused (checked before ALLOW).
    Deny,
}

/// One rule: all listed conditions must hold; within a list, any entry matches.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthzRule {
    /// Exact SPIFFE IDs of callers.
    pub ids: Vec<String>,
    /// Caller namespaces.
    pub namespaces: Vec<String>,
    /// Caller service accounts as `namespace/name`.
    pub service_accounts: Vec<String>,
    /// Request paths (exact, or prefix when ending in `*`).
    pub paths: Vec<String>,
    /// HTTP methods.
    pub methods: Vec<String>,
}

/// An authorization policy on a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzPolicy {
    /// `namespace/name` of the policy (for logs and stats).
    pub name: String,
    /// Target service name.
    pub service: String,
    /// Target service namespace.
    pub namespace: String,
    /// Allow or deny.
    pub action: AuthzAction,
    /// Rules (any matching rule applies the action).
    pub rules: Vec<AuthzRule>,
}

/// A TLS certificate for SDS: chain and key in PEM. `Debug` does not print the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SvidPem {
    /// SPIFFE ID (the secret's name).
    pub id: String,
    /// Certificate chain, leaf first.
    pub chain_pem: String,
    /// Private key (PKCS#8 PEM), zeroized on drop: it is copied only into the SDS message.
    pub key_pem: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for SvidPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SvidPem")
            .field("id", &self.id)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Where the Envoy listeners bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports {
    /// Inbound mTLS listener (15008).
    pub inbound: SocketAddr,
    /// Outbound listener (15001).
    pub outbound: SocketAddr,
    /// Mark the listeners transparent (for TPROXY in a cluster node).
    pub transparent: bool,
}

impl Default for Ports {
    /// `0.0.0.0:15008` inbound, `0.0.0.0:15001` outbound, not transparent.
    fn default() -> Self {
        Self {
            inbound: SocketAddr::from(([0, 0, 0, 0], crate::INBOUND_MTLS_PORT)),
            outbound: SocketAddr::from(([0, 0, 0, 0], crate::OUTBOUND_PORT)),
            transparent: false,
        }
    }
}

/// Everything the translation needs for one node's Envoy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MeshConfig {
    /// Trust domain (`cluster.local`).
    pub trust_domain: String,
    /// Listener addresses.
    pub ports: Ports,
    /// Workloads on this node.
    pub workloads: Vec<Workload>,
    /// Services this node's workloads may call, and the services of local workloads.
    pub services: Vec<Service>,
    /// Authorization policies.
    pub policies: Vec<AuthzPolicy>,
    /// SVIDs of local workloads in mTLS namespaces (by SPIFFE ID).
    pub svids: Vec<SvidPem>,
    /// The trust bundle (PEM).
    pub bundle_pem: String,
    /// L7 traffic management: ingress listeners, routes (ingress and mesh), traffic policies
    /// and ingress certificates. Default: none (the mesh routes each service as a whole).
    pub l7: L7Config,
    /// Stream an access-log entry per request and per mTLS TCP connection to the daemon
    /// ([`crate::telemetry`]); off: no access logs (the overhead baseline).
    pub access_logs: bool,
}
