//! xDS control plane for the per-node Envoy.
//!
//! Not implemented yet beyond the port constants; see the xDS control plane issue.
#![forbid(unsafe_code)]

/// Envoy admin port (loopback only).
pub const ADMIN_PORT: u16 = 15000;
/// Outbound capture listener.
pub const OUTBOUND_PORT: u16 = 15001;
/// Inbound mTLS listener.
pub const INBOUND_MTLS_PORT: u16 = 15008;
