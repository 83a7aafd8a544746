//! The CA issuance service: gRPC (tonic) over TLS, wire format in
//! `certs/proto/identityd.ca.v1.proto`.
//!
//! - `Join(node_name, token, csr)`: server-auth TLS only. A single-use join token (see
//!   [`tokens`]) is exchanged for a node SVID `spiffe://<td>/identityd/node/<node_name>`.
//! - `SignWorkload(csr, spiffe_id, pod_namespace, pod_name, ttl)`: mTLS with a node SVID. The
//!   caller's node name comes from its verified certificate, never from the request; an
//!   [`Authorizer`] supplied by the daemon decides whether that node may have that pod's ID.
//! - `RenewNode(csr)`: mTLS with the current node SVID; a fresh SVID for the same node ID.
//! - `SignServing(csr, dns_names, kind, namespace, name, ttl)`: mTLS with a node SVID; a
//!   serving certificate (DNS SANs, serverAuth) for an ingress object's hostnames, when
//!   [`Authorizer::authorize_serving`] allows it.
//! - `Bundle()`: the trust bundle as PEM and JWKS.
//!
//! The CA serves with the SVID `spiffe://<td>/identityd/ca` it issues to itself; clients check
//! that exact ID against the bundle they were given. Keys are generated where they are used:
//! clients send only CSRs.
//!
//! CA side: [`CaServer::new`] then [`CaServer::serve`]. Node side: [`CaClient::join`], then
//! [`CaClient::connect_mtls`] and [`CaClient::sign_workload`].
//!
//! ```no_run
//! use std::sync::{Arc, Mutex};
//! use std::time::{Duration, SystemTime};
//! use identityd_certs::service::{self, CaClient, CaServer, CaServerOptions, Denied, JoinToken};
//! use identityd_certs::{Bundle, Ca, CaOptions, TrustDomain};
//!
//! # async fn ca_side() -> Result<(), Box<dyn std::error::Error>> {
//! // CA role. `lab up` mints one token per node before starting the node daemons.
//! let dir = std::path::Path::new("/var/lib/identityd/ca");
//! let td = TrustDomain::new("lab.local")?;
//! let ca = Ca::load_or_init(dir, td, CaOptions::default(), SystemTime::now())?;
//! service::tokens::mint_to_file(dir, "node-1", "/run/identityd/node-1/join-token".as_ref(),
//!     service::tokens::DEFAULT_TOKEN_TTL, SystemTime::now())?;
//! // The daemon's authorizer looks the pod up in its cluster snapshot.
//! let authorizer = |node: &str, req: &service::WorkloadRequest| -> Result<(), Denied> {
//!     let _ = (node, req); // pod on `node`? spiffe_id == the pod's ns/sa?
//!     Err(Denied("no such pod".into()))
//! };
//! let server = CaServer::new(Arc::new(Mutex::new(ca)), dir, Arc::new(authorizer),
//!     CaServerOptions::default())?;
//! let listener = tokio::net::TcpListener::bind("10.99.0.1:8443").await?;
//! server.serve(listener).await?; // server.counters() for metrics
//! # Ok(()) }
//!
//! # async fn node_side() -> Result<(), Box<dyn std::error::Error>> {
//! // Node role: the bundle (CA root) and the token file come from `lab up`.
//! let td = TrustDomain::new("lab.local")?;
//! let bundle = Bundle::from_pem(td.clone(), &std::fs::read_to_string("/run/identityd/bundle.pem")?)?;
//! let token = JoinToken::read("/run/identityd/node-1/join-token".as_ref())?;
//! let node = CaClient::join("10.99.0.1:8443", "node-1", &token, &bundle).await?;
//! let ca = CaClient::connect_mtls("10.99.0.1:8443", &node.svid, &node.bundle).await?;
//! let id = td.workload_id("shop", "web")?;
//! let svid = ca.sign_workload(&id, "shop", "web-7f9c", Duration::from_secs(3600)).await?;
//! // Before node.svid expires: ca.renew_node(&node.svid) (also presents the new one).
//! # let _ = svid; Ok(()) }
//! ```

mod client;
mod grpc;
pub mod limits;
pub mod pb;
mod server;
pub mod tokens;

use std::sync::atomic::{AtomicU64, Ordering};

pub use client::{BUNDLE_FILE, CaClient, NodeIdentity};
pub use server::{CaServer, CaServerOptions};
pub use tokens::{JoinToken, TokenError};

use crate::id::{IdError, SpiffeId, TrustDomain};

/// Path prefix reserved for identityd's own identities; never issued through `SignWorkload`.
pub const RESERVED_PREFIX: &str = "identityd";

/// `spiffe://<td>/identityd/node/<name>`: a node's identity.
///
/// # Errors
/// When `name` is not a valid SPIFFE path segment.
pub fn node_id(td: &TrustDomain, name: &str) -> Result<SpiffeId, IdError> {
    SpiffeId::from_parts(td.clone(), &[RESERVED_PREFIX, "node", name])
}

/// `spiffe://<td>/identityd/ca`: the identity the CA serves with.
#[must_use]
pub fn ca_server_id(td: &TrustDomain) -> SpiffeId {
    SpiffeId::from_parts(td.clone(), &[RESERVED_PREFIX, "ca"])
        .unwrap_or_else(|e| unreachable!("constant segments are valid: {e}"))
}

/// `spiffe://<td>/identityd/gateway`: the identity a node's ingress listeners present to
/// backends in mTLS namespaces. Issued through `SignWorkload` only when the
/// [`Authorizer::authorize_gateway`] allows it.
#[must_use]
pub fn gateway_id(td: &TrustDomain) -> SpiffeId {
    SpiffeId::from_parts(td.clone(), &[RESERVED_PREFIX, "gateway"])
        .unwrap_or_else(|e| unreachable!("constant segments are valid: {e}"))
}

/// The node name of a node ID (`spiffe://<td>/identityd/node/<name>`), or `None`.
#[must_use]
pub fn node_name_of(id: &SpiffeId) -> Option<&str> {
    let mut s = id.segments();
    match (s.next(), s.next(), s.next(), s.next()) {
        (Some(RESERVED_PREFIX), Some("node"), Some(name), None) => Some(name),
        _ => None,
    }
}

/// What a node asks for in `SignWorkload`, after the request was parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadRequest {
    /// The SPIFFE ID asked for.
    pub spiffe_id: SpiffeId,
    /// The pod's namespace.
    pub pod_namespace: String,
    /// The pod's name.
    pub pod_name: String,
}

/// What a node asks for in `SignServing`: a serving certificate for hostnames of an ingress
/// object (a Gateway, or an Ingress).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingRequest {
    /// DNS names.
    pub dns_names: Vec<String>,
    /// The object's kind (`Gateway` or `Ingress`).
    pub kind: String,
    /// The object's namespace.
    pub namespace: String,
    /// The object's name.
    pub name: String,
}

/// A refusal by an [`Authorizer`]; the reason is sent to the caller and logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// Decides whether a node may have an SVID for a workload. The daemon implements it from
/// cluster state: the pod must be scheduled on `node` and `spiffe_id` must be the pod's
/// namespace/service account. Called on the request path: keep it a lookup in memory.
///
/// Closures `Fn(&str, &WorkloadRequest) -> Result<(), Denied>` implement it.
pub trait Authorizer: Send + Sync + 'static {
    /// `Ok` to issue, or why not.
    ///
    /// # Errors
    /// The reason for the refusal.
    fn authorize(&self, node: &str, req: &WorkloadRequest) -> Result<(), Denied>;

    /// `Ok` when `node` (an authenticated caller) may ask for anything at all: renew its node
    /// SVID, workload SVIDs, serving certificates. A CA that knows the cluster refuses nodes
    /// that are no longer part of it. Default: every node may ask.
    ///
    /// # Errors
    /// The reason for the refusal.
    fn authorize_node(&self, _node: &str) -> Result<(), Denied> {
        Ok(())
    }

    /// `Ok` to issue the gateway identity ([`gateway_id`]) to `node`. Default: refused.
    ///
    /// # Errors
    /// The reason for the refusal.
    fn authorize_gateway(&self, node: &str) -> Result<(), Denied> {
        Err(Denied(format!(
            "node {node}: this CA does not issue the gateway identity"
        )))
    }

    /// `Ok` to issue a serving certificate for `req.dns_names` to `node`. Default: refused.
    ///
    /// # Errors
    /// The reason for the refusal.
    fn authorize_serving(&self, node: &str, req: &ServingRequest) -> Result<(), Denied> {
        Err(Denied(format!(
            "node {node}: this CA does not issue serving certificates (asked for {:?} of {} {}/{})",
            req.dns_names, req.kind, req.namespace, req.name
        )))
    }
}

impl<F> Authorizer for F
where
    F: Fn(&str, &WorkloadRequest) -> Result<(), Denied> + Send + Sync + 'static,
{
    fn authorize(&self, node: &str, req: &WorkloadRequest) -> Result<(), Denied> {
        self(node, req)
    }
}

/// Admits a node to `Join` with a credential that is not an identityd join token, e.g. a
/// platform-issued token the daemon checks with its platform (identityd's Kubernetes mode: a
/// projected ServiceAccount token checked by a TokenReview). Installed with
/// [`CaServer::set_join_authenticator`]. Credentials that parse as a [`JoinToken`] still go to
/// the token store.
pub trait JoinAuthenticator: Send + Sync + 'static {
    /// `Ok` when `credential` proves the caller is node `node`; otherwise why not (sent to the
    /// caller: it must not contain the credential).
    ///
    /// # Errors
    /// The reason for the refusal.
    fn authenticate<'a>(
        &'a self,
        node: &'a str,
        credential: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Denied>> + Send + 'a>>;
}

/// Upper bounds (seconds) of the issuance latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The requests the CA answers, as counted: `workload` (workload SVIDs and serving
/// certificates), `join` (node SVIDs for join tokens), `node_renewal`.
pub const REQUESTS: [&str; 3] = ["workload", "join", "node_renewal"];

/// Why a request was refused, from the gRPC status it was refused with: `authentication`
/// (no, or an unverifiable, client certificate or join credential), `authorization` (the
/// caller may not have what it asked for), `invalid_request` (CSR, ID or lifetime rules),
/// `internal` (the CA could not do it), `rate_limited` (the node asked faster than its limit,
/// see [`limits::Limits`]).
pub const REFUSAL_REASONS: [&str; 5] = [
    "authentication",
    "authorization",
    "invalid_request",
    "internal",
    "rate_limited",
];

/// The [`REFUSAL_REASONS`] entry for a status code.
#[must_use]
pub fn refusal_reason(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Unauthenticated => "authentication",
        tonic::Code::PermissionDenied => "authorization",
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => "invalid_request",
        tonic::Code::ResourceExhausted => "rate_limited",
        _ => "internal",
    }
}

/// Issuance counters of a [`CaServer`].
#[derive(Debug, Default)]
pub struct Counters {
    issued: AtomicU64,
    refused: AtomicU64,
    joins: AtomicU64,
    failed_joins: AtomicU64,
    node_renewals: AtomicU64,
    tls_failures: AtomicU64,
    /// Refusals per (request, reason): `REQUESTS.len() × REFUSAL_REASONS.len()`.
    refusals: [[AtomicU64; REFUSAL_REASONS.len()]; REQUESTS.len()],
    /// Latency of answered requests per request kind: bucket counts (cumulative at
    /// snapshot), count, and the sum in microseconds.
    latency: [Latency; 3],
}

#[derive(Debug, Default)]
struct Latency {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// A copy of the [`Counters`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct CounterSnapshot {
    /// Workload SVIDs issued.
    pub issued: u64,
    /// `SignWorkload`/`RenewNode` requests refused (authentication, authorization, CSR rules).
    pub refused: u64,
    /// Successful joins (node SVIDs issued for tokens).
    pub joins: u64,
    /// Refused joins (bad, used or expired token; bad CSR).
    pub failed_joins: u64,
    /// Node SVIDs renewed over mTLS.
    pub node_renewals: u64,
    /// TLS handshakes that failed or timed out (e.g. a client certificate from another CA).
    pub tls_failures: u64,
    /// Refusals as (request, reason, count), every pair of [`REQUESTS`] × [`REFUSAL_REASONS`].
    pub refusals: Vec<(&'static str, &'static str, u64)>,
    /// Latency of every answered request (issued or refused) per request kind.
    pub latency: Vec<LatencySnapshot>,
    /// Nodes with an open TLS connection to the CA (by node SVID), with the number of
    /// connections each.
    pub connected_nodes: std::collections::BTreeMap<String, u64>,
    /// Open connections without a node SVID (TLS handshakes in progress included).
    pub unauthenticated_connections: u64,
    /// Connections closed at admission, as (reason, count) for every
    /// [`limits::CONNECTION_REFUSALS`] entry.
    pub connections_refused: Vec<(&'static str, u64)>,
}

/// One request kind's latency histogram.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LatencySnapshot {
    /// The request kind (one of [`REQUESTS`]).
    pub request: &'static str,
    /// Observations per [`LATENCY_BUCKETS`] bucket (not cumulative), then one more for those
    /// above the largest bound.
    pub buckets: Vec<u64>,
    /// Observations.
    pub count: u64,
    /// Sum of the observations in seconds.
    pub sum_seconds: f64,
}

fn request_index(request: &str) -> usize {
    REQUESTS.iter().position(|r| *r == request).unwrap_or(0)
}

impl Counters {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one refusal of `request` (one of [`REQUESTS`]) for `reason`.
    fn refusal(&self, request: &str, reason: &str) {
        let r = REFUSAL_REASONS
            .iter()
            .position(|x| *x == reason)
            .unwrap_or(3); // internal
        Self::bump(&self.refusals[request_index(request)][r]);
    }

    /// Records how long one answered `request` took.
    fn observe(&self, request: &str, took: std::time::Duration) {
        let l = &self.latency[request_index(request)];
        let secs = took.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            Self::bump(&l.buckets[i]);
        }
        Self::bump(&l.count);
        l.sum_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The current values.
    #[must_use]
    pub fn snapshot(&self) -> CounterSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut refusals = Vec::new();
        for (i, req) in REQUESTS.iter().enumerate() {
            for (j, reason) in REFUSAL_REASONS.iter().enumerate() {
                refusals.push((*req, *reason, g(&self.refusals[i][j])));
            }
        }
        let latency = REQUESTS
            .iter()
            .zip(&self.latency)
            .map(|(req, l)| {
                let mut buckets: Vec<u64> = l.buckets.iter().map(g).collect();
                let count = g(&l.count);
                buckets.push(count.saturating_sub(buckets.iter().sum()));
                #[allow(clippy::cast_precision_loss)]
                let sum_seconds = g(&l.sum_micros) as f64 / 1e6;
                LatencySnapshot {
                    request: req,
                    buckets,
                    count,
                    sum_seconds,
                }
            })
            .collect();
        CounterSnapshot {
            issued: g(&self.issued),
            refused: g(&self.refused),
            joins: g(&self.joins),
            failed_joins: g(&self.failed_joins),
            node_renewals: g(&self.node_renewals),
            tls_failures: g(&self.tls_failures),
            refusals,
            latency,
            connected_nodes: std::collections::BTreeMap::new(),
            unauthenticated_connections: 0,
            connections_refused: Vec::new(),
        }
    }
}

/// Errors of the issuance service's client and server.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// Certificates, keys, IDs or files.
    #[error(transparent)]
    Certs(#[from] crate::Error),
    /// The endpoint is not usable.
    #[error("endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// The endpoint.
        endpoint: String,
        /// What is wrong.
        reason: String,
    },
    /// Connecting (TCP or TLS) failed.
    #[error("connecting to CA at {endpoint}: {reason}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The cause.
        reason: String,
    },
    /// The CA answered with an error status.
    #[error("CA refused {rpc}: {code:?}: {message}")]
    Status {
        /// The RPC.
        rpc: &'static str,
        /// The gRPC status code.
        code: tonic::Code,
        /// The CA's message.
        message: String,
    },
    /// The CA's answer is unusable.
    #[error("CA answer to {rpc}: {reason}")]
    Response {
        /// The RPC.
        rpc: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Serving failed.
    #[error("serving: {0}")]
    Serve(String),
}

impl ServiceError {
    /// The gRPC code when the CA answered with an error status.
    #[must_use]
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Self::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_round_trip_and_others_are_not_nodes() {
        let td = TrustDomain::new("lab.local").unwrap();
        let id = node_id(&td, "node-1").unwrap();
        assert_eq!(id.to_string(), "spiffe://lab.local/identityd/node/node-1");
        assert_eq!(node_name_of(&id), Some("node-1"));
        for other in [
            "spiffe://lab.local/identityd/ca",
            "spiffe://lab.local/identityd/node/a/b",
            "spiffe://lab.local/ns/identityd/node/a",
            "spiffe://lab.local/identityd/node",
        ] {
            assert_eq!(
                node_name_of(&SpiffeId::parse(other).unwrap()),
                None,
                "{other}"
            );
        }
        assert!(node_id(&td, "a/b").is_err());
        assert!(node_id(&td, "").is_err());
        assert_eq!(
            ca_server_id(&td).to_string(),
            "spiffe://lab.local/identityd/ca"
        );
    }
}
