//! Sources of cluster state. Each produces versioned [`crate::model::ClusterState`] snapshots on
//! a `tokio::sync::watch` channel; reconcilers only see snapshots, never the source.
//!
//! - [`file::FileSource`]: a directory of multi-document Kubernetes-shaped YAML, polled for
//!   changes (the lab and the e2e bed).
//! - A KubeSource (kube-runtime watchers) comes with the Kubernetes issue and reuses
//!   [`decode`]'s kind dispatch through [`crate::model::Object::deserialize_kind`].

pub mod decode;
pub mod file;

pub use decode::{DocError, Document, decode_document, split_documents};
pub use file::{FileSource, FileSourceOptions, SourceError};
