//! Sources of cluster state. Each produces versioned [`crate::model::ClusterState`] snapshots on
//! a `tokio::sync::watch` channel; reconcilers only see snapshots, never the source.
//!
//! - [`file::FileSource`]: a directory of multi-document Kubernetes-shaped YAML, polled for
//!   changes (the lab and the e2e bed).
//! - [`kube::KubeSource`]: kube-runtime watchers on the API server; objects go through the same
//!   kind dispatch ([`decode::decode_value`] → [`crate::model::Object::deserialize_kind`]) and
//!   the same validation, so both sources build the same snapshots.
//!
//! The daemon roles use either through [`ClusterSource`] (chosen by `clusterSource: file | kube`
//! in the config, see [`open`]).

pub mod decode;
pub mod file;
pub mod kube;

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::watch;

pub use decode::{DocError, Document, decode_document, decode_value, split_documents};
pub use file::{FileSource, FileSourceOptions, SourceError};
pub use kube::{FIELD_MANAGER, KubeSource, KubeSourceOptions};

use crate::model::{ClusterState, Object};

/// Where cluster state comes from (`clusterSource:` in the daemon config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClusterSourceKind {
    /// A directory of YAML (`clusterDir`), the lab's store.
    #[default]
    File,
    /// The Kubernetes API server (in-cluster config or kubeconfig).
    Kube,
}

/// What [`open`] needs to know: which source, and its settings. The daemon config builds one
/// (`DaemonConfig::source_spec`); sources know nothing of the daemon's config.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourceSpec {
    /// Which source.
    pub kind: ClusterSourceKind,
    /// The FileSource's directory.
    pub dir: std::path::PathBuf,
    /// Namespaces whose `kubernetes.io/tls` Secrets the KubeSource watches.
    pub secret_namespaces: Vec<String>,
}

/// What the daemon roles need from a source of cluster state: snapshots, a watch loop, and
/// writes (publishing an object, writing an object's status).
pub trait ClusterSource: fmt::Debug + Send + Sync + 'static {
    /// A receiver of snapshots; it starts at the current one.
    fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>>;

    /// The current snapshot.
    fn snapshot(&self) -> Arc<ClusterState>;

    /// Watches the store until the future is dropped, publishing every changed snapshot.
    fn run(self: Arc<Self>) -> BoxFuture<'static, ()>;

    /// Creates or updates `object` (spec, labels, annotations; and its status when it has one).
    /// The FileSource writes the object's file; the KubeSource uses server-side apply with the
    /// field manager [`FIELD_MANAGER`].
    ///
    /// # Errors
    /// An invalid object, or the store refusing the write.
    fn apply<'a>(&'a self, object: &'a Object) -> BoxFuture<'a, Result<(), SourceError>>;

    /// Writes only the `status` of `object` (which must exist). The KubeSource applies it to the
    /// status subresource.
    ///
    /// # Errors
    /// [`SourceError::NotFound`] when the object does not exist, or the store refusing the write.
    fn write_status<'a>(&'a self, object: &'a Object) -> BoxFuture<'a, Result<(), SourceError>>;

    /// Writes node `node`'s live-state summary as its `IdentitydNodeReport` (whole, replacing
    /// the previous one). The FileSource writes `.reports/NODE.yaml` in its directory (hidden,
    /// so the source itself never reads it); the KubeSource uses server-side apply.
    ///
    /// # Errors
    /// The store refusing the write.
    fn write_report<'a>(
        &'a self,
        node: &'a str,
        report: &'a crate::model::report::NodeReport,
    ) -> BoxFuture<'a, Result<(), SourceError>>;

    /// Records a Kubernetes Event about an object (a problem the object's kind has no status
    /// for: NetworkPolicy). The same (object, reason, message) is one Event, updated in place.
    /// The KubeSource applies an `events.k8s.io/v1` Event in the object's namespace; the
    /// FileSource writes `.events/<kind>-<namespace>-<name>.yaml` (every current event of the
    /// object); stores without events ignore it.
    ///
    /// # Errors
    /// The store refusing the write.
    fn record_events<'a>(
        &'a self,
        object: &'a crate::model::ObjectKey,
        events: &'a [ObjectEvent],
    ) -> BoxFuture<'a, Result<(), SourceError>> {
        let _ = (object, events);
        Box::pin(async { Ok(()) })
    }

    /// The pod CIDR the store assigns to node `name` (Kubernetes: the Node's `spec.podCIDR`);
    /// `None` when the store has no such notion (the FileSource) or none is assigned yet.
    ///
    /// # Errors
    /// The store cannot be read.
    fn node_pod_cidr<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, SourceError>> {
        let _ = name;
        Box::pin(async { Ok(None) })
    }

    /// Removes the taint `key` from node `name` (Kubernetes: the Node's `spec.taints`, with its
    /// resourceVersion as a precondition, every other taint and field untouched). Returns
    /// whether there was one. Stores without taints (the FileSource) have nothing to remove.
    ///
    /// # Errors
    /// The store cannot be read or refuses the write.
    fn remove_node_taint<'a>(
        &'a self,
        name: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<bool, SourceError>> {
        let _ = (name, key);
        Box::pin(async { Ok(false) })
    }
}

/// One Event about an object: a Warning with a CamelCase reason and a message.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct ObjectEvent {
    /// CamelCase reason (`SelectsNothing`, `PartlyCompiled`).
    pub reason: String,
    /// What is wrong, naming the field and value.
    pub message: String,
}

impl ObjectEvent {
    /// A stable name suffix for this event of `object` (the same event keeps its name).
    #[must_use]
    pub fn name_for(&self, object: &crate::model::ObjectKey) -> String {
        let d = ring::digest::digest(
            &ring::digest::SHA256,
            format!("{object}|{}|{}", self.reason, self.message).as_bytes(),
        );
        let h: String = d.as_ref()[..5].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}.idd-{h}", object.name)
    }
}

impl dyn ClusterSource {
    /// Starts [`ClusterSource::run`] on the current tokio runtime.
    #[must_use]
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(Arc::clone(self).run())
    }
}

/// Opens the source the config names: `clusterSource: file` (the `clusterDir` directory) or
/// `kube` (the in-cluster or kubeconfig API server).
///
/// # Errors
/// The directory cannot be listed, or no Kubernetes client configuration is found.
pub async fn open(spec: &SourceSpec) -> Result<Arc<dyn ClusterSource>, SourceError> {
    Ok(match spec.kind {
        ClusterSourceKind::File => {
            let dir = spec.dir.clone();
            let source = tokio::task::spawn_blocking(move || {
                FileSource::open(dir, FileSourceOptions::default())
            })
            .await
            .map_err(|e| {
                SourceError::Unavailable(format!("opening the cluster directory: {e}"))
            })??;
            Arc::new(source)
        }
        ClusterSourceKind::Kube => Arc::new(
            KubeSource::connect(KubeSourceOptions {
                secret_namespaces: spec.secret_namespaces.clone(),
                ..KubeSourceOptions::default()
            })
            .await?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::identityd::{IdentitydNodeSpec, IdentitydNodeStatus};
    use crate::model::{Condition, IdentitydNode, KeyRotation, RotationTarget};

    #[tokio::test]
    async fn file_source_through_the_trait_publishes_objects_and_statuses() {
        let dir = tempfile::tempdir().unwrap();
        let source: Arc<dyn ClusterSource> =
            Arc::new(FileSource::open(dir.path(), FileSourceOptions::default()).unwrap());
        let mut rx = source.subscribe();
        let node = IdentitydNode::new(
            "n1",
            IdentitydNodeSpec {
                pod_cidrs: vec!["10.244.1.0/24".into()],
                underlay_addresses: vec!["10.99.0.11".into()],
                ..IdentitydNodeSpec::default()
            },
        );
        source
            .apply(&Object::IdentitydNode(node.clone()))
            .await
            .unwrap();
        assert!(rx.has_changed().unwrap());
        assert_eq!(
            rx.borrow_and_update().nodes["n1"].spec.pod_cidrs,
            ["10.244.1.0/24"]
        );

        // A status write keeps the stored spec and replaces only the status.
        let mut with_status = node.clone();
        with_status.spec.underlay_addresses = vec!["10.99.0.99".into()];
        with_status.status = Some(IdentitydNodeStatus {
            observed_generation: Some(1),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "DatapathUp".into(),
                ..Condition::default()
            }],
            trusted_roots: vec!["ab".repeat(32)],
        });
        source
            .write_status(&Object::IdentitydNode(with_status))
            .await
            .unwrap();
        let state = source.snapshot();
        let n1 = &state.nodes["n1"];
        assert_eq!(n1.spec.underlay_addresses, ["10.99.0.11"]);
        assert_eq!(
            n1.status.as_ref().unwrap().conditions[0].reason,
            "DatapathUp"
        );
        let file = std::fs::read_to_string(dir.path().join("identitydnode-n1.yaml")).unwrap();
        assert!(file.contains("DatapathUp"), "{file}");

        // The status of an object that does not exist is refused, naming it.
        let e = source
            .write_status(&Object::KeyRotation(KeyRotation::new(
                "nope",
                RotationTarget::Ca,
            )))
            .await
            .unwrap_err();
        assert!(matches!(e, SourceError::NotFound { .. }), "{e}");
        assert!(e.to_string().contains("KeyRotation nope"), "{e}");
        assert_eq!(source.node_pod_cidr("n1").await.unwrap(), None);
    }
}
