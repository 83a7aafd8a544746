//! The xDS server: ADS (state-of-the-world and delta) and SDS, over one cache of per-node
//! snapshots.
//!
//! Per node and resource type the cache keeps the latest version, the last version the node
//! ACKed, and the last NACK (version and error detail). A stream remembers its node from the
//! first request (gRPC clients send it only once). On a NACK the server does not resend the
//! rejected version; new streams get the last accepted version of a type whose latest version
//! was NACKed. Stale nonces are ignored, unknown types are ignored and counted, a first request
//! without a node ends the stream with `InvalidArgument`, and oversized subscriptions are
//! refused. Nothing here panics on client input.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use envoy_types::pb::google::protobuf::Any;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Type URLs of the resources this server serves.
pub mod type_url {
    /// Listeners (LDS).
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// Clusters (CDS).
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// Route configurations (RDS).
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    /// Endpoints (EDS).
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    /// Secrets (SDS).
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

    /// All served types.
    pub const ALL: [&str; 5] = [LISTENER, CLUSTER, ROUTE, ENDPOINT, SECRET];

    /// Types whose empty subscription means "everything" (wildcard).
    #[must_use]
    pub fn is_wildcard_type(t: &str) -> bool {
        t == LISTENER || t == CLUSTER
    }
}

/// The order in which changed types are pushed.
const PUSH_ORDER: [&str; 5] = [
    type_url::CLUSTER,
    type_url::ENDPOINT,
    type_url::LISTENER,
    type_url::ROUTE,
    type_url::SECRET,
];

/// Most resource names one request may subscribe to.
pub const MAX_RESOURCE_NAMES: usize = 100_000;

/// A set of resources for one node, by type URL and name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    types: BTreeMap<String, BTreeMap<String, Any>>,
}

impl Snapshot {
    /// An empty snapshot.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a resource.
    pub fn insert(&mut self, type_url: &str, name: impl Into<String>, resource: Any) {
        self.types
            .entry(type_url.to_owned())
            .or_default()
            .insert(name.into(), resource);
    }

    /// The resources of one type.
    #[must_use]
    pub fn resources(&self, type_url: &str) -> Option<&BTreeMap<String, Any>> {
        self.types.get(type_url)
    }

    /// Number of resources of all types.
    #[must_use]
    pub fn len(&self) -> usize {
        self.types.values().map(BTreeMap::len).sum()
    }

    /// True when empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

type Resources = Arc<BTreeMap<String, (Any, String)>>;

fn hash_version(a: &Any) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in a.type_url.bytes().chain(a.value.iter().copied()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A rejected version and Envoy's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    /// The version that was rejected.
    pub version: u64,
    /// The error detail Envoy sent.
    pub message: String,
    /// When.
    pub at: SystemTime,
}

#[derive(Debug, Default)]
struct TypeState {
    version: u64,
    resources: Resources,
    accepted: Option<(u64, Resources)>,
    history: Vec<(u64, Resources)>,
    nack: Option<Nack>,
}

impl TypeState {
    /// The version to serve to a stream that has not seen this type: the latest, unless it was
    /// NACKed and an accepted version exists.
    fn serving(&self) -> (u64, Resources) {
        match (&self.nack, &self.accepted) {
            (Some(n), Some((v, r))) if n.version == self.version => (*v, Arc::clone(r)),
            _ => (self.version, Arc::clone(&self.resources)),
        }
    }
}

#[derive(Debug)]
struct NodeState {
    types: HashMap<String, TypeState>,
    tx: watch::Sender<u64>,
}

impl NodeState {
    fn new() -> Self {
        Self {
            types: HashMap::new(),
            tx: watch::channel(0).0,
        }
    }
}

/// Per-type status of a node, for `identityd status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeStatus {
    /// The resource type.
    pub type_url: String,
    /// Latest version in the cache.
    pub version: u64,
    /// Last version the node ACKed.
    pub accepted: Option<u64>,
    /// Last NACK, if the latest version was not accepted since.
    pub nack: Option<Nack>,
    /// Number of resources in the latest version.
    pub resources: usize,
}

/// Counters of the server.
#[derive(Debug, Default)]
pub struct Counters {
    /// Responses sent.
    pub pushes: AtomicU64,
    /// ACKs received.
    pub acks: AtomicU64,
    /// NACKs received.
    pub nacks: AtomicU64,
    /// Requests with a stale nonce (ignored).
    pub stale: AtomicU64,
    /// Requests for unknown types (ignored).
    pub unknown_types: AtomicU64,
    /// Streams ended with an error status.
    pub rejected_streams: AtomicU64,
}

/// The cache of per-node snapshots shared by all streams.
#[derive(Debug, Default)]
pub struct XdsCache {
    nodes: Mutex<HashMap<String, NodeState>>,
    /// Counters.
    pub counters: Counters,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl XdsCache {
    /// An empty cache.
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Replaces the snapshot of `node`. Only types whose content changed get a new version;
    /// streams of the node are woken.
    pub fn set_snapshot(&self, node: &str, snapshot: Snapshot) {
        let mut nodes = lock(&self.nodes);
        let st = nodes.entry(node.to_owned()).or_insert_with(NodeState::new);
        let mut changed = false;
        let mut all_types: BTreeSet<String> = st.types.keys().cloned().collect();
        all_types.extend(snapshot.types.keys().cloned());
        for t in all_types {
            let new: BTreeMap<String, (Any, String)> = snapshot
                .types
                .get(&t)
                .map(|m| {
                    m.iter()
                        .map(|(n, a)| (n.clone(), (a.clone(), hash_version(a))))
                        .collect()
                })
                .unwrap_or_default();
            let ts = st.types.entry(t).or_default();
            let same = ts.resources.len() == new.len()
                && ts
                    .resources
                    .iter()
                    .zip(new.iter())
                    .all(|((n1, (_, h1)), (n2, (_, h2)))| n1 == n2 && h1 == h2);
            if !same || ts.version == 0 {
                ts.version += 1;
                ts.resources = Arc::new(new);
                ts.history.push((ts.version, Arc::clone(&ts.resources)));
                if ts.history.len() > 8 {
                    ts.history.remove(0);
                }
                changed = true;
            }
        }
        if changed {
            st.tx.send_modify(|g| *g += 1);
        }
    }

    /// Per-type status of `node`.
    #[must_use]
    pub fn status(&self, node: &str) -> Vec<TypeStatus> {
        let nodes = lock(&self.nodes);
        let Some(st) = nodes.get(node) else {
            return Vec::new();
        };
        let mut out: Vec<TypeStatus> = st
            .types
            .iter()
            .map(|(t, ts)| TypeStatus {
                type_url: t.clone(),
                version: ts.version,
                accepted: ts.accepted.as_ref().map(|(v, _)| *v),
                nack: ts.nack.clone(),
                resources: ts.resources.len(),
            })
            .collect();
        out.sort_by(|a, b| a.type_url.cmp(&b.type_url));
        out
    }

    /// Nodes known to the cache.
    #[must_use]
    pub fn nodes(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.nodes).keys().cloned().collect();
        v.sort();
        v
    }

    fn subscribe(&self, node: &str) -> watch::Receiver<u64> {
        lock(&self.nodes)
            .entry(node.to_owned())
            .or_insert_with(NodeState::new)
            .tx
            .subscribe()
    }

    fn serving(&self, node: &str, type_url: &str) -> (u64, Resources) {
        let nodes = lock(&self.nodes);
        nodes
            .get(node)
            .and_then(|n| n.types.get(type_url))
            .map_or_else(|| (0, Arc::default()), TypeState::serving)
    }

    fn latest(&self, node: &str, type_url: &str) -> (u64, Resources) {
        let nodes = lock(&self.nodes);
        nodes
            .get(node)
            .and_then(|n| n.types.get(type_url))
            .map_or_else(
                || (0, Arc::default()),
                |t| (t.version, Arc::clone(&t.resources)),
            )
    }

    fn record_ack(&self, node: &str, type_url: &str, version: u64) {
        self.counters.acks.fetch_add(1, Ordering::Relaxed);
        let mut nodes = lock(&self.nodes);
        if let Some(ts) = nodes.get_mut(node).and_then(|n| n.types.get_mut(type_url)) {
            let resources = ts
                .history
                .iter()
                .find(|(v, _)| *v == version)
                .map(|(_, r)| Arc::clone(r));
            if let Some(r) = resources {
                ts.accepted = Some((version, r));
            }
            if ts.nack.as_ref().is_some_and(|n| n.version <= version) {
                ts.nack = None;
            }
        }
    }

    fn record_nack(&self, node: &str, type_url: &str, version: u64, message: String) {
        self.counters.nacks.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(node, type_url, version, error = %message, "xDS NACK");
        let mut nodes = lock(&self.nodes);
        if let Some(ts) = nodes.get_mut(node).and_then(|n| n.types.get_mut(type_url)) {
            ts.nack = Some(Nack {
                version,
                message,
                at: SystemTime::now(),
            });
        }
    }
}

/// The gRPC services over one cache.
#[derive(Debug, Clone)]
pub struct XdsServer {
    cache: Arc<XdsCache>,
    nonce: Arc<AtomicU64>,
}

impl XdsServer {
    /// A server over `cache`.
    #[must_use]
    pub fn new(cache: Arc<XdsCache>) -> Self {
        Self {
            cache,
            nonce: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The ADS service, for `tonic::transport::Server::add_service`.
    #[must_use]
    pub fn ads_service(&self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self.clone()).max_decoding_message_size(64 << 20)
    }

    /// The SDS service.
    #[must_use]
    pub fn sds_service(&self) -> SecretDiscoveryServiceServer<Self> {
        SecretDiscoveryServiceServer::new(self.clone()).max_decoding_message_size(64 << 20)
    }

    fn next_nonce(&self) -> String {
        self.nonce
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1)
            .to_string()
    }
}

fn node_id(node: Option<&envoy_types::pb::envoy::config::core::v3::Node>) -> Option<String> {
    node.map(|n| n.id.clone()).filter(|id| !id.is_empty())
}

#[derive(Debug, Default)]
struct SotwType {
    /// None = wildcard.
    names: Option<BTreeSet<String>>,
    sent: Option<u64>,
    nonce: String,
}

/// Which types a stream may ask for (`None` = all served types).
type Allowed = Option<&'static [&'static str]>;

/// A discovery request of either flavour, as far as stream set-up needs it.
trait XdsRequest {
    fn node(&self) -> Option<&envoy_types::pb::envoy::config::core::v3::Node>;
}

impl XdsRequest for DiscoveryRequest {
    fn node(&self) -> Option<&envoy_types::pb::envoy::config::core::v3::Node> {
        self.node.as_ref()
    }
}

impl XdsRequest for DeltaDiscoveryRequest {
    fn node(&self) -> Option<&envoy_types::pb::envoy::config::core::v3::Node> {
        self.node.as_ref()
    }
}

/// Ends a stream with an error status, counting it.
async fn reject<M>(cache: &XdsCache, tx: &mpsc::Sender<Result<M, Status>>, status: Status) {
    cache
        .counters
        .rejected_streams
        .fetch_add(1, Ordering::Relaxed);
    let _ = tx.send(Err(status)).await;
}

/// Waits for a stream's first request; returns it with the node it names. A first request
/// without a node ends the stream with `InvalidArgument`.
async fn open_stream<Req: XdsRequest, M>(
    cache: &XdsCache,
    rx: &mut Streaming<Req>,
    tx: &mpsc::Sender<Result<M, Status>>,
) -> Option<(String, Req)> {
    let first = match rx.message().await {
        Ok(Some(r)) => r,
        Ok(None) => return None,
        Err(e) => {
            tracing::debug!(error = %e, "xDS stream ended before its first request");
            return None;
        }
    };
    let Some(node) = node_id(first.node()) else {
        reject(
            cache,
            tx,
            Status::invalid_argument("the first discovery request of a stream must carry node.id"),
        )
        .await;
        return None;
    };
    Some((node, first))
}

/// What a stream loop handles next: a request from the client, or a change of the node's
/// snapshot. `None`: the stream is over.
async fn next_event<Req>(
    pending: &mut Option<Req>,
    rx: &mut Streaming<Req>,
    watch: &mut watch::Receiver<u64>,
    node: &str,
) -> Option<Option<Req>> {
    if let Some(r) = pending.take() {
        return Some(Some(r));
    }
    tokio::select! {
        m = rx.message() => match m {
            Ok(Some(r)) => Some(Some(r)),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, node, "xDS stream error");
                None
            }
        },
        changed = watch.changed() => changed.ok().map(|()| None),
    }
}

/// Whether a stream may ask for `type_url` (`allowed`: `None` = every served type).
fn serves(allowed: Allowed, type_url: &str) -> bool {
    type_url::ALL.contains(&type_url) && allowed.is_none_or(|a| a.contains(&type_url))
}

async fn run_sotw(
    server: XdsServer,
    mut rx: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    allowed: Allowed,
) {
    let cache = Arc::clone(&server.cache);
    let Some((node, first)) = open_stream(&cache, &mut rx, &tx).await else {
        return;
    };
    let mut watch = cache.subscribe(&node);
    let mut types: HashMap<String, SotwType> = HashMap::new();
    let mut pending = Some(first);
    loop {
        let Some(req) = next_event(&mut pending, &mut rx, &mut watch, &node).await else {
            return;
        };
        if let Some(req) = req {
            let t = req.type_url.clone();
            if !serves(allowed, &t) {
                cache.counters.unknown_types.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(node, type_url = %t, "ignoring request for an unknown type");
                continue;
            }
            if req.resource_names.len() > MAX_RESOURCE_NAMES {
                reject(
                    &cache,
                    &tx,
                    Status::invalid_argument(format!(
                        "resource_names has {} entries; at most {MAX_RESOURCE_NAMES} are allowed",
                        req.resource_names.len()
                    )),
                )
                .await;
                return;
            }
            let st = types.entry(t.clone()).or_default();
            if !req.response_nonce.is_empty() {
                if req.response_nonce != st.nonce {
                    cache.counters.stale.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if let Some(sent) = st.sent {
                    match &req.error_detail {
                        Some(e) => cache.record_nack(&node, &t, sent, e.message.clone()),
                        None => cache.record_ack(&node, &t, sent),
                    }
                }
            }
            let names: Option<BTreeSet<String>> = if req.resource_names.is_empty()
                && type_url::is_wildcard_type(&t)
                || req.resource_names.iter().any(|n| n == "*")
            {
                None
            } else {
                Some(req.resource_names.iter().cloned().collect())
            };
            let names_changed = st.names != names;
            st.names = names;
            if st.sent.is_none() || names_changed {
                let (version, res) = if st.sent.is_none() {
                    cache.serving(&node, &t)
                } else {
                    cache.latest(&node, &t)
                };
                if !send_sotw(&server, &tx, &t, st, version, &res).await {
                    return;
                }
            }
        } else {
            // The node's snapshot changed: push every subscribed type whose version moved, in
            // the order Envoy needs (clusters, endpoints, listeners, routes, secrets). Endpoints
            // are re-sent after any cluster change: Envoy waits for them while warming an
            // updated EDS cluster.
            let mut clusters_pushed = false;
            for t in PUSH_ORDER {
                let Some(st) = types.get_mut(t) else { continue };
                let (version, res) = cache.latest(&node, t);
                let moved = st.sent.is_some_and(|s| s != version);
                let rewarm = t == type_url::ENDPOINT && clusters_pushed && st.sent.is_some();
                if moved || rewarm {
                    if !send_sotw(&server, &tx, t, st, version, &res).await {
                        return;
                    }
                    clusters_pushed |= t == type_url::CLUSTER;
                }
            }
        }
    }
}

async fn send_sotw(
    server: &XdsServer,
    tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
    t: &str,
    st: &mut SotwType,
    version: u64,
    res: &Resources,
) -> bool {
    let resources: Vec<Any> = match &st.names {
        None => res.values().map(|(a, _)| a.clone()).collect(),
        Some(names) => names
            .iter()
            .filter_map(|n| res.get(n).map(|(a, _)| a.clone()))
            .collect(),
    };
    st.nonce = server.next_nonce();
    st.sent = Some(version);
    server.cache.counters.pushes.fetch_add(1, Ordering::Relaxed);
    let resp = DiscoveryResponse {
        version_info: version.to_string(),
        resources,
        type_url: t.to_owned(),
        nonce: st.nonce.clone(),
        ..Default::default()
    };
    tx.send(Ok(resp)).await.is_ok()
}

#[derive(Debug, Default)]
struct DeltaType {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client has: name -> version hash.
    known: HashMap<String, String>,
    /// nonce -> version sent with it.
    in_flight: HashMap<String, u64>,
    responded: bool,
}

async fn run_delta(
    server: XdsServer,
    mut rx: Streaming<DeltaDiscoveryRequest>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    allowed: Allowed,
) {
    let cache = Arc::clone(&server.cache);
    let Some((node, first)) = open_stream(&cache, &mut rx, &tx).await else {
        return;
    };
    let mut watch = cache.subscribe(&node);
    let mut types: HashMap<String, DeltaType> = HashMap::new();
    let mut pending = Some(first);
    loop {
        let Some(req) = next_event(&mut pending, &mut rx, &mut watch, &node).await else {
            return;
        };
        if let Some(req) = req {
            let t = req.type_url.clone();
            if !serves(allowed, &t) {
                cache.counters.unknown_types.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if req.resource_names_subscribe.len() + req.initial_resource_versions.len()
                > MAX_RESOURCE_NAMES
            {
                reject(
                    &cache,
                    &tx,
                    Status::invalid_argument(format!(
                        "subscription has more than {MAX_RESOURCE_NAMES} resource names"
                    )),
                )
                .await;
                return;
            }
            let is_new = !types.contains_key(&t);
            let st = types.entry(t.clone()).or_default();
            if is_new {
                st.wildcard =
                    type_url::is_wildcard_type(&t) && req.resource_names_subscribe.is_empty();
                st.known = req.initial_resource_versions.clone();
            }
            if !req.response_nonce.is_empty() {
                match st.in_flight.remove(&req.response_nonce) {
                    Some(v) => match &req.error_detail {
                        // The rejected resources are not resent until they change again.
                        Some(e) => cache.record_nack(&node, &t, v, e.message.clone()),
                        None => cache.record_ack(&node, &t, v),
                    },
                    None => {
                        cache.counters.stale.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let mut changed_subs = false;
            for n in &req.resource_names_subscribe {
                if n == "*" {
                    st.wildcard = true;
                } else {
                    // An explicit (re-)subscription is answered with the resource even if the
                    // client had it: Envoy re-subscribes while warming an updated cluster.
                    st.names.insert(n.clone());
                    if !is_new {
                        st.known.remove(n);
                    }
                    changed_subs = true;
                }
            }
            for n in &req.resource_names_unsubscribe {
                if n == "*" {
                    st.wildcard = false;
                } else {
                    st.names.remove(n);
                    st.known.remove(n);
                }
            }
            if !st.responded || changed_subs {
                let (version, res) = if st.responded {
                    cache.latest(&node, &t)
                } else {
                    cache.serving(&node, &t)
                };
                if !send_delta(&server, &tx, &t, st, version, &res, true).await {
                    return;
                }
            }
        } else {
            let mut updated_clusters: Vec<String> = Vec::new();
            for t in PUSH_ORDER {
                let Some(st) = types.get_mut(t) else { continue };
                let (version, res) = cache.latest(&node, t);
                if t == type_url::ENDPOINT {
                    // Re-send the endpoints of updated clusters (Envoy re-warms them).
                    for n in &updated_clusters {
                        st.known.remove(n);
                    }
                }
                let before: HashMap<String, String> = if t == type_url::CLUSTER {
                    st.known.clone()
                } else {
                    HashMap::new()
                };
                if !send_delta(&server, &tx, t, st, version, &res, false).await {
                    return;
                }
                if t == type_url::CLUSTER {
                    updated_clusters = st
                        .known
                        .iter()
                        .filter(|(n, h)| before.get(*n) != Some(h))
                        .map(|(n, _)| n.clone())
                        .collect();
                }
            }
        }
    }
}

async fn send_delta(
    server: &XdsServer,
    tx: &mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    t: &str,
    st: &mut DeltaType,
    version: u64,
    res: &Resources,
    force: bool,
) -> bool {
    let wanted = |n: &str| st.wildcard || st.names.contains(n);
    let mut resources = Vec::new();
    for (name, (any, hash)) in res.iter() {
        if wanted(name) && st.known.get(name) != Some(hash) {
            resources.push(Resource {
                name: name.clone(),
                version: hash.clone(),
                resource: Some(any.clone()),
                ..Default::default()
            });
        }
    }
    let removed: Vec<String> = st
        .known
        .keys()
        .filter(|n| !res.contains_key(*n) && wanted(n))
        .cloned()
        .collect();
    if resources.is_empty() && removed.is_empty() && !force {
        return true;
    }
    for r in &resources {
        st.known.insert(r.name.clone(), r.version.clone());
    }
    for n in &removed {
        st.known.remove(n);
    }
    let nonce = server.next_nonce();
    st.in_flight.insert(nonce.clone(), version);
    if st.in_flight.len() > 64 {
        // Clients ACK in order; drop the oldest bookkeeping so a silent client costs bounded memory.
        if let Some(oldest) = st
            .in_flight
            .keys()
            .min_by_key(|k| k.parse::<u64>().unwrap_or(0))
            .cloned()
        {
            st.in_flight.remove(&oldest);
        }
    }
    st.responded = true;
    server.cache.counters.pushes.fetch_add(1, Ordering::Relaxed);
    let resp = DeltaDiscoveryResponse {
        system_version_info: version.to_string(),
        resources,
        type_url: t.to_owned(),
        removed_resources: removed,
        nonce,
        ..Default::default()
    };
    tx.send(Ok(resp)).await.is_ok()
}

type SotwStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
type DeltaStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

const SECRET_ONLY: &[&str] = &[type_url::SECRET];

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type StreamAggregatedResourcesStream = SotwStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run_sotw(self.clone(), request.into_inner(), tx, None));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run_delta(self.clone(), request.into_inner(), tx, None));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for XdsServer {
    type StreamSecretsStream = SotwStream;
    type DeltaSecretsStream = DeltaStream;

    async fn delta_secrets(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run_delta(
            self.clone(),
            request.into_inner(),
            tx,
            Some(SECRET_ONLY),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run_sotw(
            self.clone(),
            request.into_inner(),
            tx,
            Some(SECRET_ONLY),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_secrets(
        &self,
        _request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        Err(Status::unimplemented(
            "fetch_secrets: use the streaming SDS or ADS",
        ))
    }
}

/// Serves ADS and SDS (and, with `als`, the Access Log Service) over `incoming` (a unix or
/// TCP listener stream) until it ends.
///
/// # Errors
/// Transport errors.
pub async fn serve<I, IO, IE>(
    server: XdsServer,
    als: Option<crate::telemetry::AlsServer>,
    incoming: I,
) -> Result<(), tonic::transport::Error>
where
    I: tokio_stream::Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tonic::transport::Server::builder()
        .add_service(server.ads_service())
        .add_service(server.sds_service())
        .add_optional_service(als.map(|a| a.service()))
        .serve_with_incoming(incoming)
        .await
}
