//! xDS control plane for the per-node Envoy.
//!
//! What this crate promises:
//! - [`server`]: a gRPC xDS server — ADS state-of-the-world and delta, and SDS — over per-node
//!   snapshots with versions and nonces, ACK/NACK tracking per stream and type; on a NACK it
//!   keeps the last accepted version and records the error; it never loops on a NACK.
//! - [`translate`]: a pure translation from a plain [`mesh::MeshConfig`] to Envoy resources:
//!   inbound mTLS per local workload (SVID over SDS, client SVID required and checked by
//!   Envoy's SPIFFE validator, XFCC, RBAC on SPIFFE IDs), outbound per caller identity with a
//!   SAN match on the destination's SPIFFE ID.
//!   With [`mesh::MeshConfig::l7`] it also builds ingress listeners (HTTP/1.1 and HTTP/2,
//!   TLS termination chosen by SNI with inline or SDS certificates), routes with host, path
//!   (exact, prefix, regex), header and method matches, weighted backends, request header
//!   changes and redirects — on ingress listeners, and on services for the mesh (the outbound
//!   routes of every local workload) — and applies traffic policies: route retries and
//!   timeouts, cluster circuit breakers and outlier detection, local rate limits per route or
//!   listener (429).
//! - [`l7`]: the plain L7 inputs and [`l7::validate`], a pure check that lists every problem
//!   (zero weights, unknown backends, negative durations, two policies on one target, …);
//!   [`translate::translate_checked`] never translates a config with problems.
//! - [`bootstrap`]: the bootstrap that points Envoy at the server.
//!
//! It knows nothing of Kubernetes or of the certs crate: SVIDs arrive as PEM.
#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod l7;
pub mod mesh;
pub mod server;
pub mod telemetry;
pub mod translate;

pub use envoy_types;

/// Envoy admin port (loopback only).
pub const ADMIN_PORT: u16 = 15000;
/// Envoy's flags besides `-c <bootstrap>` wherever the project starts one (the daemon's
/// supervisor, the test harness): one worker, no hot restart (its supervisor restarts it), and
/// immediate draining: when a filter chain changes (an AuthorizationPolicy, a mode), its
/// existing connections get GOAWAY at once, so pooled mTLS connections — the L4 tunnels —
/// carry no new stream under the old policy (the default gradual drain would keep some for up
/// to the drain time, 10 minutes).
pub const ENVOY_ARGS: [&str; 7] = [
    "--disable-hot-restart",
    "--concurrency",
    "1",
    "--log-level",
    "warn",
    "--drain-strategy",
    "immediate",
];
/// Outbound capture listener.
pub const OUTBOUND_PORT: u16 = 15001;
/// Inbound mTLS listener.
pub const INBOUND_MTLS_PORT: u16 = 15008;
/// `SO_MARK` of the node's Envoy on its connections to local pods (after mTLS termination):
/// the classifier's ingress strict accepts new TCP into strict pods only with this mark. Equal
/// to the bpf crate's `IDD_MARK_FROM_PROXY` (checked by a test in the daemon, which knows both).
pub const FROM_PROXY_MARK: u32 = 0x0a00;
