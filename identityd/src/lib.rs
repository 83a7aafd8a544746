//! identityd: the node daemon that wires the datapath (WireGuard), the classifier (eBPF),
//! identities (SPIFFE SVIDs) and the per-node Envoy (xDS) together from cluster state.
//!
//! Today this crate holds the CLI contract (each subcommand says whether it is built) and the
//! certificate subcommands (`ca init`, `svid issue|inspect|verify`).
#![forbid(unsafe_code)]

pub mod certs_cli;
pub mod cli;
pub mod model;
pub mod source;
