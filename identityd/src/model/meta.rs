//! Metadata shared by every object: `metadata`, conditions, object keys.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::validate::Errors;

/// Kubernetes `metadata` (the fields identityd reads; others are ignored on input).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Object name (RFC 1123 subdomain).
    #[serde(default)]
    pub name: String,
    /// Namespace; absent for cluster-scoped kinds, defaults to `default` for namespaced kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations (e.g. `identityd.io/mtls` on a Namespace).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Generation of the spec, when the store tracks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Opaque store version, when the store tracks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// When the store created the object (RFC 3339), when it says; orders claims on a pod
    /// CIDR or key ([`super::conflicts`]): the first owner keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
}

impl ObjectMeta {
    /// Metadata of a cluster-scoped object.
    #[must_use]
    pub fn cluster(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Metadata of a namespaced object.
    #[must_use]
    pub fn namespaced(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: Some(namespace.into()),
            ..Self::default()
        }
    }

    /// The namespace, `default` when absent (what `kubectl apply` does without `-n`).
    #[must_use]
    pub fn namespace_or_default(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }

    pub(crate) fn validate(&self, errs: &mut Errors, namespaced: bool) {
        errs.dns_subdomain("metadata.name", &self.name);
        match (&self.namespace, namespaced) {
            (Some(ns), true) => errs.dns_subdomain("metadata.namespace", ns),
            (Some(ns), false) => {
                errs.push(
                    "metadata.namespace",
                    ns,
                    "must be absent: this kind is cluster-scoped",
                );
            }
            (None, _) => {}
        }
        for k in self.labels.keys() {
            if k.is_empty() || k.len() > 317 {
                errs.push(
                    "metadata.labels",
                    k,
                    "label keys must be 1..=317 characters",
                );
            }
        }
    }
}

/// The namespace of namespaced objects that do not name one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// `namespace/name` of a namespaced object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespacedName {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl NamespacedName {
    /// Builds a key.
    #[must_use]
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A status condition (Kubernetes `metav1.Condition` shape).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `Ready`, `Accepted`.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 316))]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[schemars(extend("enum" = ["True", "False", "Unknown"]))]
    pub status: String,
    /// Machine-readable reason (CamelCase).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Human-readable message.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// RFC 3339 time of the last status change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// Generation the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

pub(crate) fn validate_conditions(errs: &mut Errors, path: &str, conds: &[Condition]) {
    for (i, c) in conds.iter().enumerate() {
        errs.required(&format!("{path}[{i}].type"), &c.type_);
        if !matches!(c.status.as_str(), "True" | "False" | "Unknown") {
            errs.push(
                format!("{path}[{i}].status"),
                &c.status,
                "must be True, False or Unknown",
            );
        }
    }
}

/// Whether every `key: value` of `selector` is among `labels` (an empty selector matches all).
#[must_use]
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
