//! [`KubeSource`]: cluster state from the Kubernetes API server, through kube-runtime watchers.
//!
//! Behaviour (the same contract as the FileSource where it applies):
//! - **What is watched**: by default every model kind but Secrets, cluster-wide: Namespaces,
//!   Pods, Services, Ingresses, NetworkPolicies, Gateway API `Gateway`/`HTTPRoute`/`GRPCRoute`
//!   (`gateway.networking.k8s.io/v1`), Nodes and the four `identityd.io/v1alpha1` CRDs. Secrets only in
//!   the namespaces listed ([`KubeSourceOptions::secret_namespaces`], config
//!   `secretNamespaces`), and only of type `kubernetes.io/tls` (field selector
//!   [`SECRET_TYPE_SELECTOR`]; ingress certificates). Objects
//!   are read as untyped JSON ([`DynamicObject`]) and converted by [`decode_value`], the
//!   FileSource's kind dispatch and validation. Service endpoints are derived from Pods and
//!   selectors as the model does for the FileSource (EndpointSlices are not read). Nodes are
//!   watched for their pod CIDRs only (`spec.podCIDRs`: the pod-CIDR authority and the
//!   cluster's pod ranges); [`KubeSource::node_pod_cidr`] reads this node's own Node once at
//!   start when the config leaves `podCIDR` out.
//! - **Bad objects** (wrong field types, failed validation) become [`Problem`]s naming the kind,
//!   `namespace/name`, field and reason; they never stop the watch. A kind that cannot be
//!   watched (CRD not installed, RBAC) is a problem too, retried with back-off.
//! - **Consistency**: each kind's list (and every re-list, e.g. after `410 Gone`) replaces that
//!   kind's objects atomically at `InitDone`, so objects deleted while the watch was down go
//!   away. Watch bookmarks only advance the resume point. The first snapshot (version 1) is
//!   published once every kind has been listed, or after `initial_sync_timeout`.
//! - **Debounce**: events arriving within `debounce` of each other are folded into one snapshot;
//!   a snapshot is published (version + 1) only when objects or problems changed.
//! - **Writes**: server-side apply with field manager [`FIELD_MANAGER`] (`force`), the spec to
//!   the object and the status to its `status` subresource.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt as _;
use futures::future::BoxFuture;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event, watcher};
use tokio::sync::watch;

use super::decode::{DocError, decode_value};
use super::file::SourceError;
use crate::model::state::Origin;
use crate::model::{ClusterState, Kind, Object, Problem};

/// The field manager of every write identityd makes to the API server.
pub const FIELD_MANAGER: &str = "identityd";

/// Settings of a [`KubeSource`].
#[derive(Debug, Clone)]
pub struct KubeSourceOptions {
    /// Events closer together than this are folded into one snapshot.
    pub debounce: Duration,
    /// How long the first snapshot waits for kinds that cannot be listed.
    pub initial_sync_timeout: Duration,
    /// The kinds watched cluster-wide (default: every kind but `Secret`).
    pub kinds: Vec<Kind>,
    /// Namespaces whose `kubernetes.io/tls` Secrets are watched (one watcher each; default
    /// none: the daemon reads no Secret unless told where).
    pub secret_namespaces: Vec<String>,
}

impl Default for KubeSourceOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(100),
            initial_sync_timeout: Duration::from_secs(10),
            kinds: Kind::ALL
                .into_iter()
                .filter(|k| *k != Kind::Secret)
                .collect(),
            secret_namespaces: Vec::new(),
        }
    }
}

/// One watcher: a kind, cluster-wide (`None`) or in one namespace.
type WatchKey = (Kind, Option<String>);

fn describe(key: &WatchKey) -> String {
    let plural = api_resource(key.0).plural;
    match &key.1 {
        Some(ns) => format!("{} ({plural} in namespace {ns})", key.0),
        None => format!("{} ({plural})", key.0),
    }
}

/// The API resource of a model kind (group, version, plural).
#[must_use]
pub fn api_resource(kind: Kind) -> ApiResource {
    let (group, version, plural) = match kind {
        Kind::IdentitydNode => ("identityd.io", "v1alpha1", "identitydnodes"),
        Kind::KeyRotation => ("identityd.io", "v1alpha1", "keyrotations"),
        Kind::TrafficPolicy => ("identityd.io", "v1alpha1", "trafficpolicies"),
        Kind::AuthorizationPolicy => ("identityd.io", "v1alpha1", "authorizationpolicies"),
        Kind::Namespace => ("", "v1", "namespaces"),
        Kind::Node => ("", "v1", "nodes"),
        Kind::Pod => ("", "v1", "pods"),
        Kind::Service => ("", "v1", "services"),
        Kind::Gateway => ("gateway.networking.k8s.io", "v1", "gateways"),
        Kind::HttpRoute => ("gateway.networking.k8s.io", "v1", "httproutes"),
        Kind::GrpcRoute => ("gateway.networking.k8s.io", "v1", "grpcroutes"),
        Kind::Ingress => ("networking.k8s.io", "v1", "ingresses"),
        Kind::NetworkPolicy => ("networking.k8s.io", "v1", "networkpolicies"),
        Kind::Secret => ("", "v1", "secrets"),
    };
    ApiResource {
        group: group.to_owned(),
        version: version.to_owned(),
        api_version: if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.as_str().to_owned(),
        plural: plural.to_owned(),
    }
}

/// Secrets of this type are the only ones read (ingress certificates); other Secrets never
/// reach the daemon.
pub const SECRET_TYPE_SELECTOR: &str = "type=kubernetes.io/tls";

/// The watchers of `opts`: each kind cluster-wide, Secrets per listed namespace.
fn watch_keys(opts: &KubeSourceOptions) -> BTreeSet<WatchKey> {
    let mut keys: BTreeSet<WatchKey> = opts.kinds.iter().map(|k| (*k, None)).collect();
    keys.extend(
        opts.secret_namespaces
            .iter()
            .map(|ns| (Kind::Secret, Some(ns.clone()))),
    );
    keys
}

/// The watch settings of a kind: Secrets are filtered by type at the API server.
fn watch_config(kind: Kind) -> watcher::Config {
    match kind {
        Kind::Secret => watcher::Config::default().fields(SECRET_TYPE_SELECTOR),
        _ => watcher::Config::default(),
    }
}

/// One converted object: the model object, or why it was refused.
type Entry = Result<Object, Vec<Problem>>;

#[derive(Debug, Default)]
struct KindStore {
    /// Objects by `namespace/name` (or `name`).
    objects: BTreeMap<String, Entry>,
    /// Objects of a list in progress (between `Init` and `InitDone`).
    relist: Option<BTreeMap<String, Entry>>,
    /// Whether a list completed at least once.
    synced: bool,
    /// The last watch error, until the next successful event.
    error: Option<String>,
}

#[derive(Debug)]
struct Inner {
    watches: BTreeMap<WatchKey, KindStore>,
    current: Arc<ClusterState>,
    /// Whether version 1 was published.
    started: bool,
}

/// Cluster state from the API server. Cheap to share as `Arc<KubeSource>`.
pub struct KubeSource {
    client: kube::Client,
    opts: KubeSourceOptions,
    inner: Mutex<Inner>,
    tx: watch::Sender<Arc<ClusterState>>,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("default_namespace", &self.client.default_namespace())
            .field("version", &lock(&self.inner).current.version())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn kube_err(action: impl Into<String>, e: kube::Error) -> SourceError {
    SourceError::Kube {
        action: action.into(),
        source: Arc::new(e),
    }
}

/// `namespace/name` or `name` of an API object.
fn key_of(o: &DynamicObject) -> String {
    let name = o.metadata.name.clone().unwrap_or_default();
    match &o.metadata.namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name,
    }
}

/// Converts an API object into a model object, or the problems that refuse it.
fn convert(kind: Kind, o: &DynamicObject) -> Entry {
    let name = key_of(o);
    let value = match serde_json::to_value(o) {
        Ok(v) => v,
        Err(e) => {
            return Err(vec![problem(kind, &name, None, format!("not JSON: {e}"))]);
        }
    };
    decode_value(kind, value).map_err(|e| match e {
        DocError::Invalid { object, errors } => {
            let mut s = ClusterState::default();
            s.reject(&object, Origin::default(), errors);
            s.problems
        }
        DocError::Schema { field, reason, .. } => vec![problem(kind, &name, field, reason)],
        other => vec![problem(kind, &name, None, other.to_string())],
    })
}

fn problem(kind: Kind, name: &str, field: Option<String>, reason: String) -> Problem {
    Problem {
        origin: Origin::default(),
        kind: Some(kind.to_string()),
        name: (!name.is_empty()).then(|| name.to_owned()),
        field,
        value: None,
        reason,
    }
}

impl KubeSource {
    /// A source on `client` (nothing is requested until [`KubeSource::run`]). The current
    /// snapshot is empty, version 0, until the first lists complete.
    #[must_use]
    pub fn new(client: kube::Client, opts: KubeSourceOptions) -> Self {
        let current = Arc::new(ClusterState::new(0));
        let (tx, _rx) = watch::channel(current.clone());
        let watches = watch_keys(&opts)
            .into_iter()
            .map(|k| (k, KindStore::default()))
            .collect();
        Self {
            client,
            opts,
            inner: Mutex::new(Inner {
                watches,
                current,
                started: false,
            }),
            tx,
        }
    }

    /// A source on the default client configuration (in-cluster service account, or
    /// `KUBECONFIG` / `~/.kube/config`).
    ///
    /// # Errors
    /// [`SourceError::Kube`] when no configuration is found.
    pub async fn connect(opts: KubeSourceOptions) -> Result<Self, SourceError> {
        let client = kube::Client::try_default().await.map_err(|e| {
            kube_err(
                "Kubernetes client configuration (in-cluster or kubeconfig)",
                e,
            )
        })?;
        Ok(Self::new(client, opts))
    }

    /// The API client (for the CA's TokenReviews and bundle ConfigMap).
    #[must_use]
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// A receiver of snapshots; it starts at the current one.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.tx.subscribe()
    }

    /// The current snapshot.
    #[must_use]
    pub fn snapshot(&self) -> Arc<ClusterState> {
        lock(&self.inner).current.clone()
    }

    /// Runs one watcher per kind (and Secret namespace) until dropped, publishing debounced
    /// snapshots.
    pub async fn run(self: Arc<Self>) {
        let mut events =
            futures::stream::select_all(watch_keys(&self.opts).into_iter().map(|key| {
                let ar = api_resource(key.0);
                let api: Api<DynamicObject> = match &key.1 {
                    Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
                    None => Api::all_with(self.client.clone(), &ar),
                };
                watcher(api, watch_config(key.0))
                    .default_backoff()
                    .map(move |ev| (key.clone(), ev))
                    .boxed()
            }));
        let sync_deadline = tokio::time::Instant::now() + self.opts.initial_sync_timeout;
        loop {
            let first = if lock(&self.inner).started {
                events.next().await
            } else {
                match tokio::time::timeout_at(sync_deadline, events.next()).await {
                    Ok(ev) => ev,
                    Err(_) => {
                        self.publish(true);
                        continue;
                    }
                }
            };
            let Some((kind, ev)) = first else { break };
            self.handle(kind, ev);
            let debounce = tokio::time::Instant::now() + self.opts.debounce;
            while let Ok(Some((kind, ev))) = tokio::time::timeout_at(debounce, events.next()).await
            {
                self.handle(kind, ev);
            }
            let timed_out = tokio::time::Instant::now() >= sync_deadline;
            self.publish(timed_out);
        }
    }

    /// Folds one watcher event into the store.
    fn handle(&self, key: WatchKey, ev: Result<Event<DynamicObject>, watcher::Error>) {
        let mut inner = lock(&self.inner);
        let kind = key.0;
        let Some(store) = inner.watches.get_mut(&key) else {
            return;
        };
        match ev {
            Ok(ev) => {
                if store.error.take().is_some() {
                    tracing::info!(watch = %describe(&key), "watch recovered");
                }
                match ev {
                    Event::Init => store.relist = Some(BTreeMap::new()),
                    Event::InitApply(o) => {
                        store
                            .relist
                            .get_or_insert_with(BTreeMap::new)
                            .insert(key_of(&o), convert(kind, &o));
                    }
                    Event::InitDone => {
                        store.objects = store.relist.take().unwrap_or_default();
                        store.synced = true;
                    }
                    Event::Apply(o) => {
                        store.objects.insert(key_of(&o), convert(kind, &o));
                    }
                    Event::Delete(o) => {
                        store.objects.remove(&key_of(&o));
                    }
                }
            }
            Err(e) => {
                let msg = e.to_string();
                if store.error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(watch = %describe(&key), error = %msg, "watch failed; retrying with back-off");
                }
                store.error = Some(msg);
            }
        }
    }

    /// Builds a snapshot from the store and publishes it when it changed. Before the first
    /// snapshot, waits for every kind's first list unless `force`.
    fn publish(&self, force: bool) {
        let mut inner = lock(&self.inner);
        let all_synced = inner.watches.values().all(|k| k.synced);
        if !inner.started && !all_synced && !force {
            return;
        }
        let state = build(&inner.watches);
        if inner.started && state.same_content(&inner.current) {
            return;
        }
        let mut state = state;
        state.set_version(inner.current.version() + 1);
        let state = Arc::new(state);
        if !inner.started {
            let unsynced: Vec<String> = inner
                .watches
                .iter()
                .filter(|(_, k)| !k.synced)
                .map(|(key, _)| describe(key))
                .collect();
            if !unsynced.is_empty() {
                tracing::warn!(
                    ?unsynced,
                    "first snapshot without these kinds (not listed yet)"
                );
            }
        }
        inner.started = true;
        inner.current = state.clone();
        for p in &state.problems {
            tracing::warn!(problem = %p, "rejected cluster object");
        }
        tracing::info!(
            version = state.version(),
            objects = state.len(),
            problems = state.problems.len(),
            "cluster state changed"
        );
        self.tx.send_replace(state);
    }

    fn api_for(&self, object: &Object) -> (Api<DynamicObject>, String) {
        let kind = object.kind();
        let ar = api_resource(kind);
        let m = object.meta();
        let api = if kind.namespaced() {
            Api::namespaced_with(self.client.clone(), m.namespace_or_default(), &ar)
        } else {
            Api::all_with(self.client.clone(), &ar)
        };
        (api, m.name.clone())
    }

    /// Server-side applies `object`'s spec and metadata (name, namespace, labels,
    /// annotations), then its status (when present) to the status subresource.
    ///
    /// # Errors
    /// [`SourceError::Model`] for an invalid object, [`SourceError::Kube`] when a request fails.
    pub async fn apply(&self, object: &Object) -> Result<(), SourceError> {
        let mut object = object.clone();
        object.normalize();
        object
            .validate()
            .map_err(crate::model::ModelError::Invalid)?;
        let key = object.key();
        let (api, name) = self.api_for(&object);
        let body = apply_body(&object, false);
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|e| kube_err(format!("server-side apply of {key}"), e))?;
        if object.status_json().is_some() {
            self.write_status(&object).await?;
        }
        Ok(())
    }

    /// Server-side applies `object`'s status to its `status` subresource.
    ///
    /// # Errors
    /// [`SourceError::NotFound`] when the object does not exist, [`SourceError::Kube`] for
    /// other failures.
    pub async fn write_status(&self, object: &Object) -> Result<(), SourceError> {
        let mut object = object.clone();
        object.normalize();
        let key = object.key();
        let (api, name) = self.api_for(&object);
        let body = apply_body(&object, true);
        match api
            .patch_status(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Err(SourceError::NotFound {
                key: key.to_string(),
            }),
            Err(e) => Err(kube_err(
                format!("server-side apply of the status of {key}"),
                e,
            )),
        }
    }

    /// The `spec.podCIDR` of Node `name` (`None` when the node has none yet).
    ///
    /// # Errors
    /// [`SourceError::Kube`] when the Node cannot be read.
    pub async fn node_pod_cidr(&self, name: &str) -> Result<Option<String>, SourceError> {
        let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client.clone());
        let node = api
            .get(name)
            .await
            .map_err(|e| kube_err(format!("reading Node {name}"), e))?;
        Ok(node.spec.and_then(|s| s.pod_cidr))
    }

    /// Removes the taint `key` from Node `name`: a JSON merge patch of `spec.taints` without
    /// it, carrying the Node's `metadata.resourceVersion` (the API server refuses the patch
    /// with a conflict if the Node changed since it was read, so no other taint is lost).
    /// Returns whether the taint was there.
    ///
    /// # Errors
    /// The Node cannot be read or the patch is refused.
    pub async fn remove_node_taint(&self, name: &str, key: &str) -> Result<bool, SourceError> {
        let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client.clone());
        let node = api
            .get(name)
            .await
            .map_err(|e| kube_err(format!("reading Node {name}"), e))?;
        let taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        if !taints.iter().any(|t| t.key == key) {
            return Ok(false);
        }
        let kept: Vec<_> = taints.into_iter().filter(|t| t.key != key).collect();
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": node.metadata.resource_version},
            "spec": {"taints": kept},
        });
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| kube_err(format!("removing taint {key} from Node {name}"), e))?;
        Ok(true)
    }
}

/// The server-side apply body of `object`: identity (apiVersion, kind, name, namespace), plus
/// either the spec side (labels, annotations, spec) or only the status. Store-managed metadata
/// (resourceVersion, generation) is left out: apply is not a compare-and-swap.
fn apply_body(object: &Object, status_only: bool) -> serde_json::Value {
    let kind = object.kind();
    let m = object.meta();
    let mut meta = serde_json::Map::new();
    meta.insert("name".into(), m.name.clone().into());
    if kind.namespaced() {
        meta.insert("namespace".into(), m.namespace_or_default().into());
    }
    let mut body = serde_json::Map::new();
    body.insert("apiVersion".into(), kind.api_versions()[0].into());
    body.insert("kind".into(), kind.as_str().into());
    if status_only {
        body.insert("metadata".into(), meta.into());
        body.insert(
            "status".into(),
            object
                .status_json()
                .unwrap_or_else(|| serde_json::json!({})),
        );
        return body.into();
    }
    if !m.labels.is_empty() {
        meta.insert("labels".into(), serde_json::json!(m.labels));
    }
    if !m.annotations.is_empty() {
        meta.insert("annotations".into(), serde_json::json!(m.annotations));
    }
    body.insert("metadata".into(), meta.into());
    if let Ok(serde_json::Value::Object(full)) = serde_json::to_value(object) {
        for (k, v) in full {
            if !matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status") {
                body.insert(k, v);
            }
        }
    }
    body.into()
}

/// Assembles a snapshot (version 0) from the per-kind stores.
fn build(watches: &BTreeMap<WatchKey, KindStore>) -> ClusterState {
    let mut state = ClusterState::new(0);
    let mut problems = Vec::new();
    for (key, store) in watches {
        if let Some(e) = &store.error {
            problems.push(problem(
                key.0,
                "",
                None,
                format!(
                    "cannot watch {}: {e}; keeping the last listed objects",
                    describe(key)
                ),
            ));
        }
        for entry in store.objects.values() {
            match entry {
                Ok(o) => {
                    // Keys are unique per kind in the store, so insert cannot collide.
                    let _ = state.insert(o.clone(), Origin::default());
                }
                Err(ps) => problems.extend(ps.iter().cloned()),
            }
        }
    }
    for p in problems {
        state.push_problem(p);
    }
    state.finish();
    state
}

impl super::ClusterSource for KubeSource {
    fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        KubeSource::subscribe(self)
    }

    fn snapshot(&self) -> Arc<ClusterState> {
        KubeSource::snapshot(self)
    }

    fn run(self: Arc<Self>) -> BoxFuture<'static, ()> {
        Box::pin(KubeSource::run(self))
    }

    fn apply<'a>(&'a self, object: &'a Object) -> BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(KubeSource::apply(self, object))
    }

    fn write_status<'a>(&'a self, object: &'a Object) -> BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(KubeSource::write_status(self, object))
    }

    fn node_pod_cidr<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, SourceError>> {
        Box::pin(KubeSource::node_pod_cidr(self, name))
    }

    fn remove_node_taint<'a>(
        &'a self,
        name: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<bool, SourceError>> {
        Box::pin(KubeSource::remove_node_taint(self, name, key))
    }

    fn write_report<'a>(
        &'a self,
        node: &'a str,
        report: &'a crate::model::report::NodeReport,
    ) -> BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(write_report(self.client.clone(), node, report))
    }

    fn record_events<'a>(
        &'a self,
        object: &'a crate::model::ObjectKey,
        events: &'a [super::ObjectEvent],
    ) -> BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(record_events(self.client.clone(), object, events))
    }
}

/// Server-side applies one `events.k8s.io/v1` Event per entry of `events` about `object`, in
/// its namespace, named after the object and the event (the same event is updated, not
/// repeated). Events of objects that no longer have a problem expire on the API server's own
/// schedule.
///
/// # Errors
/// [`SourceError::Kube`] when the API server refuses one.
pub async fn record_events(
    client: kube::Client,
    object: &crate::model::ObjectKey,
    events: &[super::ObjectEvent],
) -> Result<(), SourceError> {
    let ns = object.namespace.as_deref().unwrap_or("default");
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client, ns);
    let group_version = object.kind.api_versions().first().copied().unwrap_or("v1");
    // MicroTime: RFC 3339 with exactly six fractional digits.
    let now = {
        let t = crate::daemon::rotation::now_rfc3339();
        let base = t.trim_end_matches('Z');
        let (secs, frac) = base.split_once('.').unwrap_or((base, ""));
        let micros: String = frac.chars().chain(std::iter::repeat('0')).take(6).collect();
        format!("{secs}.{micros}Z")
    };
    for e in events {
        let name = e.name_for(object);
        let body = serde_json::json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "eventTime": now,
            "regarding": {
                "apiVersion": group_version,
                "kind": object.kind.as_str(),
                "namespace": ns,
                "name": object.name,
            },
            "type": "Warning",
            "reason": e.reason,
            "action": "Compile",
            "note": e.message,
            "reportingController": "identityd.io/controller",
            "reportingInstance": "identityd-ca",
        });
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|err| kube_err(format!("server-side apply of Event {ns}/{name}"), err))?;
    }
    Ok(())
}

/// Server-side applies `node`'s `IdentitydNodeReport` (cluster-scoped, named after the node;
/// field manager [`FIELD_MANAGER`]).
///
/// # Errors
/// [`SourceError::Kube`] when the API server refuses it.
pub async fn write_report(
    client: kube::Client,
    node: &str,
    report: &crate::model::report::NodeReport,
) -> Result<(), SourceError> {
    let api: Api<crate::model::report::IdentitydNodeReportCrd> = Api::all(client);
    let body = serde_json::json!({
        "apiVersion": "identityd.io/v1alpha1",
        "kind": "IdentitydNodeReport",
        "metadata": {"name": node},
        "spec": report,
    });
    api.patch(
        node,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(drop)
    .map_err(|e| {
        kube_err(
            format!("server-side apply of IdentitydNodeReport {node}"),
            e,
        )
    })
}

/// Lists every `IdentitydNodeReport` as `(node, report)`.
///
/// # Errors
/// [`SourceError::Kube`] when they cannot be listed (the CRD missing included).
pub async fn list_reports(
    client: kube::Client,
) -> Result<Vec<(String, crate::model::report::NodeReport)>, SourceError> {
    let api: Api<crate::model::report::IdentitydNodeReportCrd> = Api::all(client);
    let list = api
        .list(&kube::api::ListParams::default())
        .await
        .map_err(|e| kube_err("listing IdentitydNodeReports".to_owned(), e))?;
    Ok(list
        .items
        .into_iter()
        .map(|r| (r.metadata.name.unwrap_or_default(), r.spec))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_watched_only_in_listed_namespaces() {
        let keys = watch_keys(&KubeSourceOptions::default());
        assert_eq!(keys.len(), Kind::ALL.len() - 1);
        assert!(
            keys.iter()
                .all(|(k, ns)| *k != Kind::Secret && ns.is_none())
        );
        let keys = watch_keys(&KubeSourceOptions {
            secret_namespaces: vec!["shop".into(), "edge".into()],
            ..KubeSourceOptions::default()
        });
        let secret: Vec<_> = keys.iter().filter(|(k, _)| *k == Kind::Secret).collect();
        assert_eq!(
            secret,
            [
                &(Kind::Secret, Some("edge".to_owned())),
                &(Kind::Secret, Some("shop".to_owned()))
            ]
        );
        assert_eq!(
            describe(&(Kind::Secret, Some("edge".into()))),
            "Secret (secrets in namespace edge)"
        );
    }

    #[test]
    fn apply_bodies_leave_out_store_metadata_and_split_status() {
        let mut kr = crate::model::KeyRotation::new("r", crate::model::RotationTarget::Ca);
        kr.metadata.resource_version = Some("9".into());
        kr.metadata.generation = Some(2);
        kr.metadata.labels.insert("team".into(), "infra".into());
        kr.status = Some(crate::model::KeyRotationStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        });
        let o = Object::KeyRotation(kr);
        let spec = apply_body(&o, false);
        assert_eq!(
            spec,
            serde_json::json!({"apiVersion": "identityd.io/v1alpha1", "kind": "KeyRotation",
                "metadata": {"name": "r", "labels": {"team": "infra"}}, "spec": {"target": "ca"}})
        );
        let status = apply_body(&o, true);
        assert_eq!(
            status,
            serde_json::json!({"apiVersion": "identityd.io/v1alpha1", "kind": "KeyRotation",
                "metadata": {"name": "r"}, "status": {"phase": "Pending"}})
        );
    }
}
