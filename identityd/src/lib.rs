//! identityd: the node daemon that wires the datapath (WireGuard), the classifier (eBPF),
//! identities (SPIFFE SVIDs) and the per-node Envoy (xDS) together from cluster state.
//!
//! Built today: the CLI contract (each subcommand says whether it is built), the certificate
//! subcommands (`ca init`, `svid issue|inspect|verify`), the cluster model and FileSource,
//! the node role of `identityd run` (independent datapath, identity, mesh and status tasks fed
//! by the cluster state's `watch`; see [`daemon::node::run`]) and the lab.
#![forbid(unsafe_code)]

pub mod audit;
pub mod certs_cli;
pub mod cli;
pub mod daemon;
pub mod lab;
pub mod model;
pub mod observe;
pub mod source;
