//! `identityd run`: the node role (datapath, classifier, local API) from cluster state.

pub mod api;
pub mod ca;
pub mod conditions;
pub mod config;
pub mod envoy_proc;
pub mod expo;
pub mod identity;
pub mod ingress;
pub mod mesh;
pub mod metrics;
pub mod netpol;
pub mod node;
pub mod node_auth;
pub mod node_proof;
pub mod plan;
pub mod report;
pub mod rotation;
pub mod telemetry;
