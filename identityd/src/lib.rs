//! identityd: the node daemon that wires the datapath (WireGuard), the classifier (eBPF),
//! identities (SPIFFE SVIDs) and the per-node Envoy (xDS) together from cluster state.
//!
//! Today this crate holds the CLI contract; each subcommand says whether it is built.
#![forbid(unsafe_code)]

pub mod cli;
