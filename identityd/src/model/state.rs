//! [`ClusterState`]: one consistent, versioned snapshot of every valid object, the problems of
//! the invalid ones, and the queries reconcilers need.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use super::core::{MtlsMode, Namespace, Node, Pod, Secret, Service};
use super::gateway::{Gateway, GrpcRoute, HttpRoute, ParentKind};
use super::identityd::{AuthorizationPolicy, IdentitydNode, KeyRotation, TrafficPolicy};
use super::meta::{NamespacedName, selector_matches};
use super::validate::Cidr;
use super::{Kind, Object, ObjectKey};
use crate::model::core::Ingress;
use crate::model::netpol::NetworkPolicy;

/// Where an object (or a problem) came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Origin {
    /// File (FileSource) — `None` for other sources.
    pub file: Option<PathBuf>,
    /// 0-based document index in the file.
    pub document: Option<usize>,
    /// 1-based line where the document starts (or the error is).
    pub line: Option<usize>,
}

/// A document or object that was not accepted into the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where it is.
    pub origin: Origin,
    /// Kind, when known (`kind:` of the document).
    pub kind: Option<String>,
    /// `namespace/name` or `name`, when known.
    pub name: Option<String>,
    /// Field path, when the problem is one field (`spec.retries.attempts`).
    pub field: Option<String>,
    /// The field's value, when the problem is one field.
    pub value: Option<String>,
    /// What is wrong / what was expected.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.origin.file {
            write!(f, "{}", file.display())?;
            if let Some(d) = self.origin.document {
                write!(f, " document {d}")?;
            }
            if let Some(l) = self.origin.line {
                write!(f, " (line {l})")?;
            }
            f.write_str(": ")?;
        }
        match (&self.kind, &self.name) {
            (Some(k), Some(n)) => write!(f, "{k} {n}: ")?,
            (Some(k), None) => write!(f, "{k}: ")?,
            _ => {}
        }
        match (&self.field, &self.value) {
            (Some(p), Some(v)) => write!(f, "{p}={v}: {}", self.reason),
            (Some(p), None) => write!(f, "{p}: {}", self.reason),
            _ => f.write_str(&self.reason),
        }
    }
}

/// A pod backing a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// Its primary IP.
    pub ip: IpAddr,
}

/// A Service and the pods its selector matches (same namespace, with an IP, not terminated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEndpoints<'a> {
    /// The Service.
    pub service: &'a Service,
    /// Its endpoints, ordered by pod name.
    pub endpoints: Vec<Endpoint<'a>>,
}

/// Routes attached to one parent (a Gateway or a Service).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachedRoutes<'a> {
    /// HTTPRoutes, ordered by namespace/name.
    pub http: Vec<&'a HttpRoute>,
    /// GRPCRoutes, ordered by namespace/name.
    pub grpc: Vec<&'a GrpcRoute>,
}

/// A versioned snapshot of the cluster: valid objects by kind and key, plus the problems of
/// documents that were rejected. Snapshots are immutable once published (shared as `Arc`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterState {
    version: u64,
    /// `IdentitydNode`s by name.
    pub nodes: BTreeMap<String, IdentitydNode>,
    /// `KeyRotation`s by name.
    pub key_rotations: BTreeMap<String, KeyRotation>,
    /// `Namespace`s by name.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Kubernetes `Node`s by name (their pod CIDRs; not the `IdentitydNode`s in `nodes`).
    pub node_objects: BTreeMap<String, Node>,
    /// `Pod`s.
    pub pods: BTreeMap<NamespacedName, Pod>,
    /// `Service`s.
    pub services: BTreeMap<NamespacedName, Service>,
    /// `TrafficPolicy`s.
    pub traffic_policies: BTreeMap<NamespacedName, TrafficPolicy>,
    /// `AuthorizationPolicy`s.
    pub authorization_policies: BTreeMap<NamespacedName, AuthorizationPolicy>,
    /// `Gateway`s.
    pub gateways: BTreeMap<NamespacedName, Gateway>,
    /// `HTTPRoute`s.
    pub http_routes: BTreeMap<NamespacedName, HttpRoute>,
    /// `GRPCRoute`s.
    pub grpc_routes: BTreeMap<NamespacedName, GrpcRoute>,
    /// `Ingress`es.
    pub ingresses: BTreeMap<NamespacedName, Ingress>,
    /// `NetworkPolicy`s.
    pub network_policies: BTreeMap<NamespacedName, NetworkPolicy>,
    /// `Secret`s (TLS certificates named by ingress objects).
    pub secrets: BTreeMap<NamespacedName, Secret>,
    /// Where each object came from (as of this snapshot's publication: a later edit that only
    /// moves an object within its file does not publish a new snapshot).
    pub origins: BTreeMap<ObjectKey, Origin>,
    /// Rejected documents and objects, in source order.
    pub problems: Vec<Problem>,
}

fn nn(o: &Object) -> NamespacedName {
    NamespacedName::new(o.meta().namespace_or_default(), &o.meta().name)
}

impl ClusterState {
    /// An empty snapshot with the given version.
    #[must_use]
    pub fn new(version: u64) -> Self {
        Self {
            version,
            ..Self::default()
        }
    }

    /// Builds a snapshot from objects (tests and plans); invalid or duplicate objects become
    /// problems, as they would from a source.
    #[must_use]
    pub fn from_objects(version: u64, objects: impl IntoIterator<Item = Object>) -> Self {
        let mut s = Self::new(version);
        for mut o in objects {
            o.normalize();
            match o.validate() {
                Ok(()) => {
                    let _ = s.insert(o, Origin::default());
                }
                Err(errs) => s.reject(&o, Origin::default(), errs),
            }
        }
        s.finish();
        s
    }

    /// The snapshot version: strictly increasing for every published change of one source.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Sets the version (sources do this when publishing).
    pub fn set_version(&mut self, version: u64) {
        self.version = version;
    }

    /// Whether two snapshots hold the same objects and problems, ignoring versions and object
    /// origins (moving a valid object within its file, or editing a comment, is not a change).
    #[must_use]
    pub fn same_content(&self, other: &Self) -> bool {
        let mut a = self.clone();
        a.version = other.version;
        a.origins.clone_from(&other.origins);
        a == *other && self.origins.keys().eq(other.origins.keys())
    }

    /// Number of objects.
    #[must_use]
    pub fn len(&self) -> usize {
        self.origins.len()
    }

    /// Whether the snapshot holds no object.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.origins.is_empty()
    }

    /// Adds a valid object. A second object with the same kind/namespace/name is refused (the
    /// first one stays) and its key returned, for the caller to report.
    ///
    /// # Errors
    /// The origin of the object already present under that key.
    pub fn insert(&mut self, object: Object, origin: Origin) -> Result<(), Origin> {
        let key = object.key();
        if let Some(first) = self.origins.get(&key) {
            return Err(first.clone());
        }
        let k = nn(&object);
        match object {
            Object::IdentitydNode(o) => drop(self.nodes.insert(k.name, o)),
            Object::KeyRotation(o) => drop(self.key_rotations.insert(k.name, o)),
            Object::Namespace(o) => drop(self.namespaces.insert(k.name, o)),
            // Only a Node's pod CIDRs are used: its metadata (resourceVersion, labels,
            // annotations), which changes with every status heartbeat of the kubelet, is not
            // kept, so a Node update that leaves the pod CIDRs alone is no new snapshot on
            // every node of the cluster.
            Object::Node(mut o) => {
                o.metadata = super::meta::ObjectMeta {
                    creation_timestamp: o.metadata.creation_timestamp.take(),
                    ..super::meta::ObjectMeta::cluster(std::mem::take(&mut o.metadata.name))
                };
                drop(self.node_objects.insert(k.name, o));
            }
            Object::TrafficPolicy(o) => drop(self.traffic_policies.insert(k, o)),
            Object::AuthorizationPolicy(o) => drop(self.authorization_policies.insert(k, o)),
            Object::Pod(o) => drop(self.pods.insert(k, o)),
            Object::Service(o) => drop(self.services.insert(k, o)),
            Object::Gateway(o) => drop(self.gateways.insert(k, o)),
            Object::HttpRoute(o) => drop(self.http_routes.insert(k, o)),
            Object::GrpcRoute(o) => drop(self.grpc_routes.insert(k, o)),
            Object::Ingress(o) => drop(self.ingresses.insert(k, o)),
            Object::NetworkPolicy(o) => drop(self.network_policies.insert(k, o)),
            Object::Secret(o) => drop(self.secrets.insert(k, o)),
        }
        self.origins.insert(key, origin);
        Ok(())
    }

    /// The object stored under `key`, as an [`Object`] (a copy).
    #[must_use]
    pub fn object(&self, key: &ObjectKey) -> Option<Object> {
        let ns = || NamespacedName::new(key.namespace.clone().unwrap_or_default(), &key.name);
        Some(match key.kind {
            Kind::IdentitydNode => Object::IdentitydNode(self.nodes.get(&key.name)?.clone()),
            Kind::KeyRotation => Object::KeyRotation(self.key_rotations.get(&key.name)?.clone()),
            Kind::Namespace => Object::Namespace(self.namespaces.get(&key.name)?.clone()),
            Kind::Node => Object::Node(self.node_objects.get(&key.name)?.clone()),
            Kind::TrafficPolicy => Object::TrafficPolicy(self.traffic_policies.get(&ns())?.clone()),
            Kind::AuthorizationPolicy => {
                Object::AuthorizationPolicy(self.authorization_policies.get(&ns())?.clone())
            }
            Kind::Pod => Object::Pod(self.pods.get(&ns())?.clone()),
            Kind::Service => Object::Service(self.services.get(&ns())?.clone()),
            Kind::Gateway => Object::Gateway(self.gateways.get(&ns())?.clone()),
            Kind::HttpRoute => Object::HttpRoute(self.http_routes.get(&ns())?.clone()),
            Kind::GrpcRoute => Object::GrpcRoute(self.grpc_routes.get(&ns())?.clone()),
            Kind::Ingress => Object::Ingress(self.ingresses.get(&ns())?.clone()),
            Kind::NetworkPolicy => Object::NetworkPolicy(self.network_policies.get(&ns())?.clone()),
            Kind::Secret => Object::Secret(self.secrets.get(&ns())?.clone()),
        })
    }

    /// Records an object that failed validation: one problem per failing field.
    pub fn reject(&mut self, object: &Object, origin: Origin, errors: Vec<super::FieldError>) {
        let key = object.key();
        let name = key_name(&key);
        for e in errors {
            self.problems.push(Problem {
                origin: origin.clone(),
                kind: Some(key.kind.to_string()),
                name: Some(name.clone()),
                field: Some(e.path),
                value: Some(e.value),
                reason: e.reason,
            });
        }
    }

    /// Records any other problem.
    pub fn push_problem(&mut self, problem: Problem) {
        self.problems.push(problem);
    }

    /// Cross-object checks, run once all objects are in: two TrafficPolicies claiming the same
    /// target — the first by namespace/name wins, the others are removed and reported.
    pub fn finish(&mut self) {
        let mut seen: BTreeMap<(String, String, String), NamespacedName> = BTreeMap::new();
        let mut losers = Vec::new();
        for (k, p) in &self.traffic_policies {
            let t = &p.spec.target_ref;
            let tk = (k.namespace.clone(), t.kind.clone(), t.name.clone());
            match seen.get(&tk) {
                Some(winner) => losers.push((k.clone(), winner.clone())),
                None => drop(seen.insert(tk, k.clone())),
            }
        }
        for (loser, winner) in losers {
            let Some(p) = self.traffic_policies.remove(&loser) else {
                continue;
            };
            let key = ObjectKey {
                kind: Kind::TrafficPolicy,
                namespace: Some(loser.namespace.clone()),
                name: loser.name.clone(),
            };
            let origin = self.origins.remove(&key).unwrap_or_default();
            self.problems.push(Problem {
                origin,
                kind: Some(Kind::TrafficPolicy.to_string()),
                name: Some(loser.to_string()),
                field: Some("spec.targetRef".into()),
                value: Some(format!(
                    "{}/{}",
                    p.spec.target_ref.kind, p.spec.target_ref.name
                )),
                reason: format!(
                    "already targeted by TrafficPolicy {winner}; only one policy per target applies"
                ),
            });
        }
    }

    // -- queries -----------------------------------------------------------------------------

    /// An `IdentitydNode` by name.
    #[must_use]
    pub fn node(&self, name: &str) -> Option<&IdentitydNode> {
        self.nodes.get(name)
    }

    /// The pod CIDRs the Kubernetes `Node` objects carry (allocated by the control plane), in
    /// node-name order, without duplicates.
    #[must_use]
    pub fn node_object_pod_cidrs(&self) -> Vec<Cidr> {
        let mut out: Vec<Cidr> = Vec::new();
        for c in self.node_objects.values().flat_map(Node::pod_cidrs) {
            if !out.contains(&c) {
                out.push(c);
            }
        }
        out
    }

    /// Every node except `self_name` (the peers of a node daemon), by name.
    pub fn other_nodes<'a>(
        &'a self,
        self_name: &'a str,
    ) -> impl Iterator<Item = &'a IdentitydNode> + 'a {
        self.nodes
            .iter()
            .filter(move |(n, _)| n.as_str() != self_name)
            .map(|(_, n)| n)
    }

    /// Nodes whose labels match `selector` (all nodes for an empty selector), e.g. the nodes a
    /// `KeyRotation`'s `spec.nodeSelector` picks.
    pub fn nodes_matching<'a>(
        &'a self,
        selector: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a IdentitydNode> + 'a {
        self.nodes
            .values()
            .filter(move |n| selector_matches(selector, &n.metadata.labels))
    }

    /// The node whose pod CIDRs contain `ip`.
    #[must_use]
    pub fn node_for_pod_ip(&self, ip: IpAddr) -> Option<&IdentitydNode> {
        self.nodes.values().find(|n| {
            n.spec
                .pod_cidrs
                .iter()
                .filter_map(|c| c.parse::<Cidr>().ok())
                .any(|c| c.contains(ip))
        })
    }

    /// Pods scheduled on `node` that have not terminated, by namespace/name.
    pub fn pods_on_node<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods
            .values()
            .filter(move |p| p.spec.node_name.as_deref() == Some(node) && !p.is_terminated())
    }

    /// The (non-terminated) pod holding `ip`.
    #[must_use]
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&Pod> {
        self.pods
            .values()
            .find(|p| !p.is_terminated() && p.ips().contains(&ip))
    }

    /// The mTLS mode of a namespace: its `identityd.io/mtls` annotation, else `default`.
    /// Fail-closed: a Namespace that exists but was rejected (e.g. `identityd.io/mtls: strcit`)
    /// counts as `strict`, so a typo never downgrades a namespace to plaintext.
    #[must_use]
    pub fn namespace_mtls(&self, namespace: &str, default: MtlsMode) -> MtlsMode {
        if let Some(ns) = self.namespaces.get(namespace) {
            return ns.mtls_mode().unwrap_or(default);
        }
        let rejected = self.problems.iter().any(|p| {
            p.kind.as_deref() == Some(Kind::Namespace.as_str())
                && p.name.as_deref() == Some(namespace)
        });
        if rejected { MtlsMode::Strict } else { default }
    }

    /// The mTLS mode of a pod (its namespace's).
    #[must_use]
    pub fn pod_mtls(&self, pod: &Pod, default: MtlsMode) -> MtlsMode {
        self.namespace_mtls(pod.namespace(), default)
    }

    fn endpoints_of<'a>(&'a self, svc: &'a Service) -> ServiceEndpoints<'a> {
        let ns = svc.namespace();
        let endpoints = if svc.spec.selector.is_empty() {
            Vec::new()
        } else {
            let lo = NamespacedName::new(ns, "");
            self.pods
                .range(lo..)
                .take_while(|(k, _)| k.namespace == ns)
                .map(|(_, p)| p)
                .filter(|p| {
                    !p.is_terminated() && selector_matches(&svc.spec.selector, &p.metadata.labels)
                })
                .filter_map(|pod| pod.ip().map(|ip| Endpoint { pod, ip }))
                .collect()
        };
        ServiceEndpoints {
            service: svc,
            endpoints,
        }
    }

    /// A Service with its endpoints.
    #[must_use]
    pub fn service_endpoints(&self, namespace: &str, name: &str) -> Option<ServiceEndpoints<'_>> {
        self.services
            .get(&NamespacedName::new(namespace, name))
            .map(|s| self.endpoints_of(s))
    }

    /// Every Service with its endpoints, by namespace/name.
    #[must_use]
    pub fn services_with_endpoints(&self) -> Vec<ServiceEndpoints<'_>> {
        self.services
            .values()
            .map(|s| self.endpoints_of(s))
            .collect()
    }

    fn routes_for(&self, kind: ParentKind, namespace: &str, name: &str) -> AttachedRoutes<'_> {
        AttachedRoutes {
            http: self
                .http_routes
                .values()
                .filter(|r| r.attaches_to(kind, namespace, name))
                .collect(),
            grpc: self
                .grpc_routes
                .values()
                .filter(|r| r.attaches_to(kind, namespace, name))
                .collect(),
        }
    }

    /// HTTPRoutes and GRPCRoutes whose parentRefs name this Service (mesh routing).
    #[must_use]
    pub fn routes_for_service(&self, namespace: &str, name: &str) -> AttachedRoutes<'_> {
        self.routes_for(ParentKind::Service, namespace, name)
    }

    /// HTTPRoutes and GRPCRoutes whose parentRefs name this Gateway (ingress).
    #[must_use]
    pub fn routes_for_gateway(&self, namespace: &str, name: &str) -> AttachedRoutes<'_> {
        self.routes_for(ParentKind::Gateway, namespace, name)
    }

    /// The TrafficPolicy targeting `kind` (`Service`, `HTTPRoute`, `GRPCRoute`) `namespace/name`.
    #[must_use]
    pub fn traffic_policy_for(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<&TrafficPolicy> {
        self.traffic_policies.values().find(|p| {
            p.metadata.namespace_or_default() == namespace
                && p.spec.target_ref.kind == kind
                && p.spec.target_ref.name == name
        })
    }

    /// AuthorizationPolicies targeting Service `namespace/name`, by name.
    #[must_use]
    pub fn authorization_policies_for_service(
        &self,
        namespace: &str,
        name: &str,
    ) -> Vec<&AuthorizationPolicy> {
        self.authorization_policies
            .values()
            .filter(|p| {
                p.metadata.namespace_or_default() == namespace && p.spec.target_ref.name == name
            })
            .collect()
    }
}

fn key_name(key: &ObjectKey) -> String {
    match &key.namespace {
        Some(ns) => format!("{ns}/{}", key.name),
        None => key.name.clone(),
    }
}
