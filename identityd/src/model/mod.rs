//! The cluster model: typed objects of DESIGN.md ("Objects") in Kubernetes shape
//! (`apiVersion`/`kind`/`metadata`/`spec`/`status`), their validation, and the versioned
//! [`ClusterState`] snapshot every reconciler reads.
//!
//! Both sources (the directory FileSource and the KubeSource) produce the same [`Object`]s and
//! the same snapshot. Types here are plain Rust with serde (camelCase like Kubernetes) with their
//! own [`ObjectMeta`]; the `identityd.io` specs also derive `schemars::JsonSchema` and kube's
//! `CustomResource`, only to generate the CRDs ([`crd`]).
//!
//! Validation ([`Object::validate`]) reports every bad field as `PATH=VALUE: REASON`
//! ([`FieldError`]); durations (`2s`, `100ms`) are checked with
//! [`identityd_certs::duration::parse`].

pub mod conflicts;
pub mod core;
pub mod crd;
pub mod gateway;
pub mod identityd;
pub mod meta;
pub mod netpol;
pub mod report;
pub mod state;
pub mod validate;

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

pub use self::core::{
    Container, ContainerPort, Ingress, IngressSpec, IntOrString, MTLS_ANNOTATION, MtlsMode,
    Namespace, Node, NodeSpec, Pod, PodSpec, PodStatus, Secret, Service, ServicePort, ServiceSpec,
};
pub use self::gateway::{
    BackendRef, Gateway, GatewaySpec, GrpcRoute, GrpcRouteSpec, HttpRoute, HttpRouteSpec,
    ParentKind, ParentRef, RouteFilter,
};
pub use self::identityd::{
    AuthorizationPolicy, AuthorizationPolicySpec, AuthorizationRule, IDENTITYD_API_VERSION,
    IdentitydNode, IdentitydNodeSpec, IdentitydNodeStatus, IpsecSpec, KeyRotation, KeyRotationSpec,
    KeyRotationStatus, NodeProof, NodeRotationStatus, PolicyTargetRef, RotationPhase,
    RotationTarget, TrafficPolicy, TrafficPolicySpec, WireguardSpec,
};
pub use self::meta::{Condition, DEFAULT_NAMESPACE, NamespacedName, ObjectMeta, selector_matches};
pub use self::netpol::{LabelSelector, NetworkPolicy, NetworkPolicySpec};
pub use self::state::{ClusterState, Problem, ServiceEndpoints};
pub use self::validate::{Cidr, FieldError};

/// Errors of the model module.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// `apiVersion`/`kind` is not one identityd knows.
    #[error("unknown kind {kind:?} (apiVersion {api_version:?}); known kinds: {known}")]
    UnknownKind {
        /// The document's apiVersion.
        api_version: String,
        /// The document's kind.
        kind: String,
        /// The supported kinds.
        known: String,
    },
    /// The object failed validation.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    /// The object could not be serialized to YAML.
    #[error("cannot serialize {kind} {name} to YAML: {reason}")]
    Serialize {
        /// Kind.
        kind: Kind,
        /// Name.
        name: String,
        /// Serializer message.
        reason: String,
    },
}

/// The kinds identityd reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `identityd.io/v1alpha1 IdentitydNode` (cluster).
    IdentitydNode,
    /// `identityd.io/v1alpha1 KeyRotation` (cluster).
    KeyRotation,
    /// `identityd.io/v1alpha1 TrafficPolicy`.
    TrafficPolicy,
    /// `identityd.io/v1alpha1 AuthorizationPolicy`.
    AuthorizationPolicy,
    /// `v1 Namespace` (cluster).
    Namespace,
    /// `v1 Node` (cluster; pod CIDRs only).
    Node,
    /// `v1 Pod`.
    Pod,
    /// `v1 Service`.
    Service,
    /// `gateway.networking.k8s.io/v1 Gateway`.
    Gateway,
    /// `gateway.networking.k8s.io/v1 HTTPRoute`.
    HttpRoute,
    /// `gateway.networking.k8s.io/v1 GRPCRoute`.
    GrpcRoute,
    /// `networking.k8s.io/v1 Ingress`.
    Ingress,
    /// `v1 Secret` (TLS certificates of ingress listeners).
    Secret,
    /// `networking.k8s.io/v1 NetworkPolicy`.
    NetworkPolicy,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 14] = [
        Kind::IdentitydNode,
        Kind::KeyRotation,
        Kind::TrafficPolicy,
        Kind::AuthorizationPolicy,
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::Service,
        Kind::Gateway,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::Ingress,
        Kind::Secret,
        Kind::NetworkPolicy,
    ];

    /// The `kind` string.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::IdentitydNode => "IdentitydNode",
            Kind::KeyRotation => "KeyRotation",
            Kind::TrafficPolicy => "TrafficPolicy",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::Ingress => "Ingress",
            Kind::Secret => "Secret",
            Kind::NetworkPolicy => "NetworkPolicy",
        }
    }

    /// apiVersions accepted on input; the first is the one identityd writes.
    #[must_use]
    pub fn api_versions(self) -> &'static [&'static str] {
        match self {
            Kind::IdentitydNode
            | Kind::KeyRotation
            | Kind::TrafficPolicy
            | Kind::AuthorizationPolicy => &[IDENTITYD_API_VERSION],
            Kind::Namespace | Kind::Node | Kind::Pod | Kind::Service | Kind::Secret => &["v1"],
            Kind::Gateway | Kind::HttpRoute => &[
                "gateway.networking.k8s.io/v1",
                "gateway.networking.k8s.io/v1beta1",
            ],
            Kind::GrpcRoute => &["gateway.networking.k8s.io/v1"],
            Kind::Ingress | Kind::NetworkPolicy => &["networking.k8s.io/v1"],
        }
    }

    /// Whether objects of this kind live in a namespace.
    #[must_use]
    pub fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::IdentitydNode | Kind::KeyRotation | Kind::Namespace | Kind::Node
        )
    }

    /// Looks a kind up by its `kind` string (apiVersion is checked by validation).
    #[must_use]
    pub fn from_kind(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    /// Looks a kind up by `apiVersion` and `kind`.
    ///
    /// # Errors
    /// [`ModelError::UnknownKind`] naming the supported kinds.
    pub fn from_api(api_version: &str, kind: &str) -> Result<Kind, ModelError> {
        Kind::from_kind(kind)
            .filter(|k| k.api_versions().contains(&api_version))
            .ok_or_else(|| ModelError::UnknownKind {
                api_version: api_version.to_owned(),
                kind: kind.to_owned(),
                known: Kind::ALL
                    .iter()
                    .map(|k| format!("{} {}", k.api_versions()[0], k.as_str()))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of an object in a snapshot: kind, namespace (namespaced kinds only), name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Kind.
    pub kind: Kind,
    /// Namespace (`None` for cluster-scoped kinds).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// One thing wrong with one object: it travels typed from validation to that object's
/// condition and to status (no one parses a message to learn which object it is about).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectProblem {
    /// The object.
    pub object: ObjectKey,
    /// The field path, with its value where one is at fault (`spec.listeners[0].port=70000`).
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl ObjectProblem {
    /// A problem of `kind namespace/name`.
    #[must_use]
    pub fn new(
        kind: Kind,
        key: &NamespacedName,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            object: ObjectKey {
                kind,
                namespace: Some(key.namespace.clone()),
                name: key.name.clone(),
            },
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ObjectProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.message)
    }
}

/// Any object of the model.
// Reason: objects are decoded once per document and then moved into the snapshot maps; boxing
// the larger kinds would only add indirection to every match.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Object {
    /// `IdentitydNode`.
    IdentitydNode(IdentitydNode),
    /// `KeyRotation`.
    KeyRotation(KeyRotation),
    /// `TrafficPolicy`.
    TrafficPolicy(TrafficPolicy),
    /// `AuthorizationPolicy`.
    AuthorizationPolicy(AuthorizationPolicy),
    /// `Namespace`.
    Namespace(Namespace),
    /// `Node`.
    Node(Node),
    /// `Pod`.
    Pod(Pod),
    /// `Service`.
    Service(Service),
    /// `Gateway`.
    Gateway(Gateway),
    /// `HTTPRoute`.
    HttpRoute(HttpRoute),
    /// `GRPCRoute`.
    GrpcRoute(GrpcRoute),
    /// `Ingress`.
    Ingress(Ingress),
    /// `Secret`.
    Secret(Secret),
    /// `NetworkPolicy`.
    NetworkPolicy(NetworkPolicy),
}

macro_rules! each {
    ($self:expr, $o:ident => $e:expr) => {
        match $self {
            Object::IdentitydNode($o) => $e,
            Object::KeyRotation($o) => $e,
            Object::TrafficPolicy($o) => $e,
            Object::AuthorizationPolicy($o) => $e,
            Object::Namespace($o) => $e,
            Object::Node($o) => $e,
            Object::Pod($o) => $e,
            Object::Service($o) => $e,
            Object::Gateway($o) => $e,
            Object::HttpRoute($o) => $e,
            Object::GrpcRoute($o) => $e,
            Object::Ingress($o) => $e,
            Object::Secret($o) => $e,
            Object::NetworkPolicy($o) => $e,
        }
    };
}

impl Object {
    /// Deserializes an object of a known `kind` (from YAML, JSON, …).
    ///
    /// # Errors
    /// The deserializer's error (type mismatch, missing field, unknown field in an identityd spec).
    pub fn deserialize_kind<'de, D: Deserializer<'de>>(
        kind: Kind,
        d: D,
    ) -> Result<Object, D::Error> {
        Ok(match kind {
            Kind::IdentitydNode => Object::IdentitydNode(Deserialize::deserialize(d)?),
            Kind::KeyRotation => Object::KeyRotation(Deserialize::deserialize(d)?),
            Kind::TrafficPolicy => Object::TrafficPolicy(Deserialize::deserialize(d)?),
            Kind::AuthorizationPolicy => Object::AuthorizationPolicy(Deserialize::deserialize(d)?),
            Kind::Namespace => Object::Namespace(Deserialize::deserialize(d)?),
            Kind::Node => Object::Node(Deserialize::deserialize(d)?),
            Kind::Pod => Object::Pod(Deserialize::deserialize(d)?),
            Kind::Service => Object::Service(Deserialize::deserialize(d)?),
            Kind::Gateway => Object::Gateway(Deserialize::deserialize(d)?),
            Kind::HttpRoute => Object::HttpRoute(Deserialize::deserialize(d)?),
            Kind::GrpcRoute => Object::GrpcRoute(Deserialize::deserialize(d)?),
            Kind::Ingress => Object::Ingress(Deserialize::deserialize(d)?),
            Kind::Secret => Object::Secret(Deserialize::deserialize(d)?),
            Kind::NetworkPolicy => Object::NetworkPolicy(Deserialize::deserialize(d)?),
        })
    }

    /// The object's kind.
    #[must_use]
    pub fn kind(&self) -> Kind {
        match self {
            Object::IdentitydNode(_) => Kind::IdentitydNode,
            Object::KeyRotation(_) => Kind::KeyRotation,
            Object::TrafficPolicy(_) => Kind::TrafficPolicy,
            Object::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Object::Namespace(_) => Kind::Namespace,
            Object::Node(_) => Kind::Node,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::Gateway(_) => Kind::Gateway,
            Object::HttpRoute(_) => Kind::HttpRoute,
            Object::GrpcRoute(_) => Kind::GrpcRoute,
            Object::Ingress(_) => Kind::Ingress,
            Object::Secret(_) => Kind::Secret,
            Object::NetworkPolicy(_) => Kind::NetworkPolicy,
        }
    }

    /// The object's metadata.
    #[must_use]
    pub fn meta(&self) -> &ObjectMeta {
        each!(self, o => &o.metadata)
    }

    /// The object's metadata, mutable.
    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        each!(self, o => &mut o.metadata)
    }

    fn type_meta(&self) -> (&str, &str) {
        each!(self, o => (o.api_version.as_str(), o.kind.as_str()))
    }

    /// The snapshot key (namespaced kinds without a namespace get `default`).
    #[must_use]
    pub fn key(&self) -> ObjectKey {
        let kind = self.kind();
        let m = self.meta();
        ObjectKey {
            kind,
            namespace: kind
                .namespaced()
                .then(|| m.namespace_or_default().to_owned()),
            name: m.name.clone(),
        }
    }

    /// Fills defaults a store would: the namespace of namespaced kinds (`default`).
    pub fn normalize(&mut self) {
        let namespaced = self.kind().namespaced();
        let m = self.meta_mut();
        if namespaced && m.namespace.is_none() {
            m.namespace = Some(DEFAULT_NAMESPACE.to_owned());
        }
    }

    /// Validates the object: apiVersion/kind, metadata, and every field of the spec.
    ///
    /// # Errors
    /// Every failing field, as `PATH=VALUE: REASON`.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errs = validate::Errors::default();
        let kind = self.kind();
        let (api_version, kind_str) = self.type_meta();
        if !kind.api_versions().contains(&api_version) {
            errs.push(
                "apiVersion",
                api_version,
                format!("must be {}", kind.api_versions().join(" or ")),
            );
        }
        if kind_str != kind.as_str() {
            errs.push("kind", kind_str, format!("must be {kind}"));
        }
        self.meta().validate(&mut errs, kind.namespaced());
        match self {
            Object::IdentitydNode(o) => o.check(&mut errs),
            Object::KeyRotation(o) => o.check(&mut errs),
            Object::TrafficPolicy(o) => o.check(&mut errs),
            Object::AuthorizationPolicy(o) => o.check(&mut errs),
            Object::Namespace(o) => o.check(&mut errs),
            Object::Node(o) => o.check(&mut errs),
            Object::Pod(o) => o.check(&mut errs),
            Object::Service(o) => o.check(&mut errs),
            Object::Gateway(o) => o.check(&mut errs),
            Object::HttpRoute(o) => o.check(&mut errs),
            Object::GrpcRoute(o) => o.check(&mut errs),
            Object::Ingress(o) => o.check(&mut errs),
            Object::Secret(o) => o.check(&mut errs),
            Object::NetworkPolicy(o) => o.check(&mut errs),
        }
        errs.finish()
    }

    /// Replaces this object's `status` with `other`'s (same kind; kinds without a status are
    /// left alone).
    pub fn set_status_from(&mut self, other: &Object) {
        match (self, other) {
            (Object::IdentitydNode(a), Object::IdentitydNode(b)) => a.status.clone_from(&b.status),
            (Object::KeyRotation(a), Object::KeyRotation(b)) => a.status.clone_from(&b.status),
            (Object::TrafficPolicy(a), Object::TrafficPolicy(b)) => a.status.clone_from(&b.status),
            (Object::AuthorizationPolicy(a), Object::AuthorizationPolicy(b)) => {
                a.status.clone_from(&b.status);
            }
            (Object::Pod(a), Object::Pod(b)) => a.status.clone_from(&b.status),
            (Object::Gateway(a), Object::Gateway(b)) => a.status.clone_from(&b.status),
            (Object::HttpRoute(a), Object::HttpRoute(b)) => a.status.clone_from(&b.status),
            (Object::GrpcRoute(a), Object::GrpcRoute(b)) => a.status.clone_from(&b.status),
            _ => {}
        }
    }

    /// The object's `status` as JSON (`None` for kinds without one or an absent status).
    #[must_use]
    pub fn status_json(&self) -> Option<serde_json::Value> {
        let v = match self {
            Object::IdentitydNode(o) => serde_json::to_value(o.status.as_ref()?),
            Object::KeyRotation(o) => serde_json::to_value(o.status.as_ref()?),
            Object::TrafficPolicy(o) => serde_json::to_value(o.status.as_ref()?),
            Object::AuthorizationPolicy(o) => serde_json::to_value(o.status.as_ref()?),
            Object::Pod(o) => serde_json::to_value(o.status.as_ref()?),
            Object::Gateway(o) => serde_json::to_value(o.status.as_ref()?),
            Object::HttpRoute(o) => serde_json::to_value(o.status.as_ref()?),
            Object::GrpcRoute(o) => serde_json::to_value(o.status.as_ref()?),
            _ => return None,
        };
        v.ok()
    }

    /// The object as one YAML document.
    ///
    /// # Errors
    /// [`ModelError::Serialize`] (not expected for objects of this model).
    pub fn to_yaml(&self) -> Result<String, ModelError> {
        serde_saphyr::to_string(self).map_err(|e| ModelError::Serialize {
            kind: self.kind(),
            name: self.meta().name.clone(),
            reason: e.to_string(),
        })
    }
}

macro_rules! from_impl {
    ($($t:ident),*) => {$(
        impl From<$t> for Object {
            fn from(o: $t) -> Object {
                Object::$t(o)
            }
        }
    )*};
}
from_impl!(
    IdentitydNode,
    KeyRotation,
    TrafficPolicy,
    AuthorizationPolicy,
    Namespace,
    Pod,
    Service,
    Gateway,
    Ingress,
    NetworkPolicy
);

impl From<HttpRoute> for Object {
    fn from(o: HttpRoute) -> Object {
        Object::HttpRoute(o)
    }
}

impl From<GrpcRoute> for Object {
    fn from(o: GrpcRoute) -> Object {
        Object::GrpcRoute(o)
    }
}

#[cfg(test)]
mod tests;
