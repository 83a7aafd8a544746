//! Kubernetes `NetworkPolicy` (networking.k8s.io/v1): pod and namespace label selectors,
//! `ipBlock`s and ports, with the API server's defaults (`policyTypes`, `protocol: TCP`) and
//! its validation. The compiler that turns policies into datapath maps is
//! [`crate::daemon::netpol`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::core::IntOrString;
use super::meta::ObjectMeta;
use super::validate::{Cidr, Errors};

/// The label every namespace carries automatically (`kubernetes.io/metadata.name=<name>`).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

// ---------------------------------------------------------------------------------------------
// LabelSelector

/// A Kubernetes label selector (`metav1.LabelSelector`): every `matchLabels` pair and every
/// `matchExpressions` requirement must hold. An empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    /// Label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// Values (`In`/`NotIn` need at least one; `Exists`/`DoesNotExist` take none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl LabelSelector {
    /// Whether the selector is empty (`{}`: selects everything).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether `labels` satisfy the selector. A requirement with an unknown operator (never in
    /// a validated object) matches nothing: a selector that cannot be read selects no one.
    #[must_use]
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    pub(crate) fn check(&self, errs: &mut Errors, path: &str) {
        for k in self.match_labels.keys() {
            if k.is_empty() {
                errs.push(
                    format!("{path}.matchLabels"),
                    k,
                    "label keys must not be empty",
                );
            }
        }
        for (i, r) in self.match_expressions.iter().enumerate() {
            let p = format!("{path}.matchExpressions[{i}]");
            errs.required(&format!("{p}.key"), &r.key);
            match r.operator.as_str() {
                "In" | "NotIn" => {
                    if r.values.is_empty() {
                        errs.push(
                            format!("{p}.values"),
                            "[]",
                            format!("must be non-empty with operator {}", r.operator),
                        );
                    }
                }
                "Exists" | "DoesNotExist" => {
                    if !r.values.is_empty() {
                        errs.push(
                            format!("{p}.values"),
                            r.values.join(","),
                            format!("must be empty with operator {}", r.operator),
                        );
                    }
                }
                other => errs.push(
                    format!("{p}.operator"),
                    other,
                    "must be one of In, NotIn, Exists, DoesNotExist",
                ),
            }
        }
    }
}

impl LabelSelectorRequirement {
    /// Whether `labels` satisfy this requirement.
    #[must_use]
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.key);
        match self.operator.as_str() {
            "In" => v.is_some_and(|v| self.values.contains(v)),
            "NotIn" => v.is_none_or(|v| !self.values.contains(v)),
            "Exists" => v.is_some(),
            "DoesNotExist" => v.is_none(),
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// NetworkPolicy

/// A Kubernetes NetworkPolicy (networking.k8s.io/v1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicy {
    /// `networking.k8s.io/v1`.
    pub api_version: String,
    /// `NetworkPolicy`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Selected pods and rules.
    #[serde(default)]
    pub spec: NetworkPolicySpec,
}

/// `NetworkPolicy.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// The pods of the policy's namespace it applies to (`{}`: all of them).
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// `Ingress` and/or `Egress`; absent or empty: see [`NetworkPolicy::policy_types`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_types: Vec<String>,
    /// Allowed incoming traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<NetworkPolicyIngressRule>,
    /// Allowed outgoing traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<NetworkPolicyEgressRule>,
}

/// `spec.ingress[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyIngressRule {
    /// Sources (empty: every source).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<NetworkPolicyPeer>,
    /// Destination ports of the selected pods (empty: every port).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPolicyPort>,
}

/// `spec.egress[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyEgressRule {
    /// Destinations (empty: every destination).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<NetworkPolicyPeer>,
    /// Destination ports (empty: every port).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<NetworkPolicyPort>,
}

/// A peer: pods by label (in the policy's namespace, or in the namespaces a
/// `namespaceSelector` picks), or an `ipBlock`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyPeer {
    /// Pods by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces by label (every namespace carries [`NAMESPACE_NAME_LABEL`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// `ipBlock`: a CIDR minus some prefixes inside it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpBlock {
    /// The CIDR (`10.0.0.0/8`, `fd00::/64`).
    pub cidr: String,
    /// Prefixes strictly inside `cidr` that are excluded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

/// A port (or range) and protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicyPort {
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// A port number or a container port's name (absent: every port of the protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    /// Last port of the range `port..=endPort` (numeric `port` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i64>,
}

/// The directions a NetworkPolicy isolates (its effective `policyTypes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyTypes {
    /// The policy isolates the pods it selects for incoming traffic.
    pub ingress: bool,
    /// The policy isolates the pods it selects for outgoing traffic.
    pub egress: bool,
}

impl NetworkPolicyPort {
    /// The protocol (`TCP` when absent, as the API server defaults it).
    #[must_use]
    pub fn protocol(&self) -> &str {
        self.protocol.as_deref().unwrap_or("TCP")
    }
}

impl IpBlock {
    /// `cidr` and `except`, parsed (`None` if any fails to parse; never for validated objects).
    #[must_use]
    pub fn parse(&self) -> Option<(Cidr, Vec<Cidr>)> {
        let cidr = self.cidr.parse().ok()?;
        let except = self
            .except
            .iter()
            .map(|e| e.parse().ok())
            .collect::<Option<Vec<Cidr>>>()?;
        Some((cidr, except))
    }
}

/// Whether prefix `inner` lies inside prefix `outer` (same family, not shorter).
#[must_use]
pub fn cidr_within(inner: &Cidr, outer: &Cidr) -> bool {
    inner.prefix >= outer.prefix && outer.contains(inner.addr)
}

impl NetworkPolicy {
    /// A policy with this spec.
    #[must_use]
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        spec: NetworkPolicySpec,
    ) -> Self {
        Self {
            api_version: "networking.k8s.io/v1".into(),
            kind: "NetworkPolicy".into(),
            metadata: ObjectMeta::namespaced(namespace, name),
            spec,
        }
    }

    /// Namespace (`default` when absent).
    #[must_use]
    pub fn namespace(&self) -> &str {
        self.metadata.namespace_or_default()
    }

    /// The directions the policy isolates. `policyTypes` absent or empty: Kubernetes' default,
    /// "Ingress is always set, and Egress is set if the policy has any egress rules".
    #[must_use]
    pub fn policy_types(&self) -> PolicyTypes {
        if self.spec.policy_types.is_empty() {
            return PolicyTypes {
                ingress: true,
                egress: !self.spec.egress.is_empty(),
            };
        }
        let has = |t: &str| self.spec.policy_types.iter().any(|p| p == t);
        PolicyTypes {
            ingress: has("Ingress"),
            egress: has("Egress"),
        }
    }

    pub(crate) fn check(&self, errs: &mut Errors) {
        self.spec.pod_selector.check(errs, "spec.podSelector");
        let mut seen = Vec::new();
        for (i, t) in self.spec.policy_types.iter().enumerate() {
            let path = format!("spec.policyTypes[{i}]");
            if !matches!(t.as_str(), "Ingress" | "Egress") {
                errs.push(path, t, "must be Ingress or Egress");
            } else if seen.contains(&t) {
                errs.push(path, t, "duplicate policy type");
            } else {
                seen.push(t);
            }
        }
        for (i, r) in self.spec.ingress.iter().enumerate() {
            for (j, p) in r.from.iter().enumerate() {
                check_peer(errs, &format!("spec.ingress[{i}].from[{j}]"), p);
            }
            for (j, p) in r.ports.iter().enumerate() {
                check_port(errs, &format!("spec.ingress[{i}].ports[{j}]"), p);
            }
        }
        for (i, r) in self.spec.egress.iter().enumerate() {
            for (j, p) in r.to.iter().enumerate() {
                check_peer(errs, &format!("spec.egress[{i}].to[{j}]"), p);
            }
            for (j, p) in r.ports.iter().enumerate() {
                check_port(errs, &format!("spec.egress[{i}].ports[{j}]"), p);
            }
        }
    }
}

fn check_peer(errs: &mut Errors, path: &str, p: &NetworkPolicyPeer) {
    if let Some(s) = &p.pod_selector {
        s.check(errs, &format!("{path}.podSelector"));
    }
    if let Some(s) = &p.namespace_selector {
        s.check(errs, &format!("{path}.namespaceSelector"));
    }
    let selectors = p.pod_selector.is_some() || p.namespace_selector.is_some();
    match &p.ip_block {
        None if !selectors => errs.push(
            path,
            "{}",
            "must specify a peer: podSelector, namespaceSelector or ipBlock",
        ),
        None => {}
        Some(b) => {
            if selectors {
                errs.push(
                    format!("{path}.ipBlock"),
                    &b.cidr,
                    "may not be combined with podSelector or namespaceSelector",
                );
            }
            check_ip_block(errs, &format!("{path}.ipBlock"), b);
        }
    }
}

fn check_ip_block(errs: &mut Errors, path: &str, b: &IpBlock) {
    let cidr = errs.cidr(&format!("{path}.cidr"), &b.cidr);
    for (i, e) in b.except.iter().enumerate() {
        let p = format!("{path}.except[{i}]");
        let (Some(c), Some(e_cidr)) = (cidr, errs.cidr(&p, e)) else {
            continue;
        };
        if c.addr.is_ipv4() != e_cidr.addr.is_ipv4() {
            errs.push(p, e, format!("must be of the same IP family as cidr {c}"));
        } else if !cidr_within(&e_cidr, &c) || e_cidr.prefix == c.prefix {
            errs.push(p, e, format!("must lie strictly inside cidr {c}"));
        }
    }
}

fn check_port(errs: &mut Errors, path: &str, p: &NetworkPolicyPort) {
    if let Some(proto) = &p.protocol
        && !matches!(proto.as_str(), "TCP" | "UDP" | "SCTP")
    {
        errs.push(
            format!("{path}.protocol"),
            proto,
            "must be one of TCP, UDP, SCTP",
        );
    }
    match &p.port {
        Some(IntOrString::Int(n)) => errs.port(&format!("{path}.port"), *n),
        Some(IntOrString::String(name)) => {
            if let Err(why) = check_port_name(name) {
                errs.push(format!("{path}.port"), name, why);
            }
        }
        None => {}
    }
    if let Some(end) = p.end_port {
        let ep = format!("{path}.endPort");
        match &p.port {
            None => errs.push(ep, end, "requires port to be set"),
            Some(IntOrString::String(_)) => {
                errs.push(ep, end, "requires a numeric port, not a named one");
            }
            Some(IntOrString::Int(start)) => {
                if end < *start {
                    errs.push(ep, end, format!("must be >= port ({start})"));
                } else if end > 65_535 {
                    errs.push(ep, end, "must be <= 65535");
                }
            }
        }
    }
}

/// A named port (IANA_SVC_NAME): 1..=15 lowercase alphanumerics and `-`, at least one letter,
/// no `-` at either end, no `--`.
///
/// # Errors
/// What was expected.
pub fn check_port_name(name: &str) -> Result<(), String> {
    let ok = (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(
            "must be a port number or an IANA service name (1-15 lowercase alphanumerics and '-', \
             with a letter, no '-' at either end or twice in a row)"
                .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Object, ObjectKey};
    use crate::source::decode::{DocError, decode_all};

    fn parse(yaml: &str) -> Result<NetworkPolicy, Vec<String>> {
        let docs = decode_all(yaml);
        assert_eq!(docs.len(), 1, "{yaml}");
        match docs.into_iter().next().unwrap().1 {
            Ok(Some(Object::NetworkPolicy(p))) => Ok(p),
            Ok(o) => panic!("not a NetworkPolicy: {o:?}"),
            Err(DocError::Invalid { errors, .. }) => {
                Err(errors.iter().map(ToString::to_string).collect())
            }
            Err(e) => panic!("{e}"),
        }
    }

    fn errors_of(spec: &str) -> Vec<String> {
        let yaml = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n{spec}"
        );
        parse(&yaml).expect_err("expected validation errors")
    }

    #[track_caller]
    fn assert_error(spec: &str, want: &str) {
        let errs = errors_of(spec);
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "want {want:?} in {errs:#?}"
        );
    }

    #[test]
    fn parses_a_full_policy_with_kubernetes_field_names() {
        let p = parse(
            r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api, namespace: shop}
spec:
  podSelector:
    matchLabels: {app: api}
    matchExpressions:
      - {key: tier, operator: In, values: [a, b]}
  policyTypes: [Ingress, Egress]
  ingress:
    - from:
        - podSelector: {matchLabels: {app: web}}
        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: front}}
          podSelector: {}
        - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
      ports:
        - {protocol: TCP, port: 8080}
        - {port: http}
        - {protocol: UDP, port: 1000, endPort: 1100}
  egress:
    - to: [{ipBlock: {cidr: 'fd00::/64'}}]
      ports: [{protocol: SCTP}]
",
        )
        .unwrap();
        assert_eq!(p.namespace(), "shop");
        let s = &p.spec;
        assert_eq!(s.pod_selector.match_labels["app"], "api");
        assert_eq!(s.pod_selector.match_expressions[0].values, ["a", "b"]);
        let from = &s.ingress[0].from;
        assert!(from[1].namespace_selector.is_some() && from[1].pod_selector.is_some());
        assert_eq!(from[2].ip_block.as_ref().unwrap().except, ["10.1.0.0/16"]);
        let ports = &s.ingress[0].ports;
        assert_eq!(ports[0].port, Some(IntOrString::Int(8080)));
        assert_eq!(ports[1].port, Some(IntOrString::String("http".into())));
        assert_eq!(ports[1].protocol(), "TCP");
        assert_eq!(ports[2].end_port, Some(1100));
        assert_eq!(s.egress[0].ports[0].protocol(), "SCTP");
        assert_eq!(
            p.policy_types(),
            PolicyTypes {
                ingress: true,
                egress: true
            }
        );
        let key = Object::from(p).key();
        assert_eq!(
            key,
            ObjectKey {
                kind: crate::model::Kind::NetworkPolicy,
                namespace: Some("shop".into()),
                name: "api".into()
            }
        );
    }

    #[test]
    fn policy_types_default_like_kubernetes() {
        let mut p = NetworkPolicy::new("shop", "p", NetworkPolicySpec::default());
        let types = |ingress, egress| PolicyTypes { ingress, egress };
        // No rules at all: Ingress only (a default deny of ingress).
        assert_eq!(p.policy_types(), types(true, false));
        // Egress rules: Ingress and Egress.
        p.spec.egress.push(NetworkPolicyEgressRule::default());
        assert_eq!(p.policy_types(), types(true, true));
        // Ingress rules only: Ingress only.
        p.spec.egress.clear();
        p.spec.ingress.push(NetworkPolicyIngressRule::default());
        assert_eq!(p.policy_types(), types(true, false));
        // Explicit types win, even over rules of the other direction.
        p.spec.policy_types = vec!["Egress".into()];
        assert_eq!(p.policy_types(), types(false, true));
    }

    #[test]
    fn empty_spec_parses_as_default_deny_ingress() {
        let p = parse(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: shop}\nspec: {podSelector: {}}\n",
        )
        .unwrap();
        assert!(p.spec.pod_selector.is_empty());
        assert!(p.policy_types().ingress && !p.policy_types().egress);
    }

    #[test]
    fn label_selector_matches_labels_and_expressions() {
        let labels: BTreeMap<String, String> = [("app", "api"), ("tier", "a")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let req = |key: &str, op: &str, values: &[&str]| LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        };
        let sel = |exprs: Vec<LabelSelectorRequirement>| LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: exprs,
        };
        assert!(LabelSelector::default().matches(&labels));
        assert!(LabelSelector::default().matches(&BTreeMap::new()));
        let mut ml = LabelSelector::default();
        ml.match_labels.insert("app".into(), "api".into());
        assert!(ml.matches(&labels));
        ml.match_labels.insert("app".into(), "web".into());
        assert!(!ml.matches(&labels));
        assert!(sel(vec![req("tier", "In", &["a", "b"])]).matches(&labels));
        assert!(!sel(vec![req("tier", "In", &["b"])]).matches(&labels));
        assert!(!sel(vec![req("zone", "In", &["a"])]).matches(&labels));
        assert!(sel(vec![req("tier", "NotIn", &["b"])]).matches(&labels));
        assert!(sel(vec![req("zone", "NotIn", &["b"])]).matches(&labels));
        assert!(!sel(vec![req("tier", "NotIn", &["a"])]).matches(&labels));
        assert!(sel(vec![req("app", "Exists", &[])]).matches(&labels));
        assert!(!sel(vec![req("zone", "Exists", &[])]).matches(&labels));
        assert!(sel(vec![req("zone", "DoesNotExist", &[])]).matches(&labels));
        assert!(!sel(vec![req("app", "DoesNotExist", &[])]).matches(&labels));
        assert!(!sel(vec![req("app", "Bogus", &[])]).matches(&labels));
        // All requirements must hold.
        assert!(!sel(vec![req("app", "Exists", &[]), req("zone", "Exists", &[])]).matches(&labels));
    }

    #[test]
    fn rejects_bad_protocol() {
        assert_error(
            "  ingress: [{ports: [{protocol: ICMP, port: 1}]}]\n",
            "spec.ingress[0].ports[0].protocol=ICMP: must be one of TCP, UDP, SCTP",
        );
    }

    #[test]
    fn rejects_port_out_of_range() {
        assert_error(
            "  egress: [{ports: [{port: 80}, {port: 70000}]}]\n",
            "spec.egress[0].ports[1].port=70000: must be a port number",
        );
        assert_error(
            "  ingress: [{ports: [{port: 0}]}]\n",
            "spec.ingress[0].ports[0].port=0: must be a port number",
        );
    }

    #[test]
    fn rejects_bad_end_ports() {
        assert_error(
            "  ingress: [{ports: [{port: 80}, {port: 2000, endPort: 1000}]}]\n",
            "spec.ingress[0].ports[1].endPort=1000: must be >= port (2000)",
        );
        assert_error(
            "  ingress: [{ports: [{port: 2000, endPort: 70000}]}]\n",
            "spec.ingress[0].ports[0].endPort=70000: must be <= 65535",
        );
        assert_error(
            "  ingress: [{ports: [{endPort: 1000}]}]\n",
            "spec.ingress[0].ports[0].endPort=1000: requires port",
        );
        assert_error(
            "  egress: [{ports: [{port: http, endPort: 1000}]}]\n",
            "spec.egress[0].ports[0].endPort=1000: requires a numeric port",
        );
    }

    #[test]
    fn rejects_bad_port_names() {
        for bad in [
            "HTTP",
            "a-very-long-port-name",
            "-http",
            "http-",
            "h--p",
            "8080x_",
            "123",
        ] {
            assert_error(
                &format!("  ingress: [{{ports: [{{port: '{bad}'}}]}}]\n"),
                &format!("spec.ingress[0].ports[0].port={bad}: must be a port number or an IANA"),
            );
        }
        for good in ["http", "h2c", "grpc-web", "a"] {
            assert!(check_port_name(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn rejects_bad_ip_blocks() {
        assert_error(
            "  ingress: [{from: [{ipBlock: {cidr: 10.0.0.1/8}}]}]\n",
            "spec.ingress[0].from[0].ipBlock.cidr=10.0.0.1/8: host bits are set",
        );
        assert_error(
            "  ingress: [{from: [{ipBlock: {cidr: nope}}]}]\n",
            "spec.ingress[0].from[0].ipBlock.cidr=nope: must be a CIDR",
        );
        assert_error(
            "  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, bad]}}]}]\n",
            "spec.egress[0].to[0].ipBlock.except[1]=bad: must be a CIDR",
        );
        assert_error(
            "  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: ['fd00::/64']}}]}]\n",
            "spec.egress[0].to[0].ipBlock.except[0]=fd00::/64: must be of the same IP family",
        );
        assert_error(
            "  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]\n",
            "spec.egress[0].to[0].ipBlock.except[0]=11.0.0.0/16: must lie strictly inside",
        );
        assert_error(
            "  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]}]\n",
            "spec.egress[0].to[0].ipBlock.except[0]=10.0.0.0/8: must lie strictly inside",
        );
        assert_error(
            "  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.0.0/8]}}]}]\n",
            "spec.egress[0].to[0].ipBlock.except[0]=10.0.0.0/8: must lie strictly inside",
        );
    }

    #[test]
    fn rejects_ip_block_combined_with_selectors_and_empty_peers() {
        assert_error(
            "  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]\n",
            "spec.ingress[0].from[0].ipBlock=10.0.0.0/8: may not be combined",
        );
        assert_error(
            "  ingress: [{from: [{podSelector: {}}, {}]}]\n",
            "spec.ingress[0].from[1]={}: must specify a peer",
        );
    }

    #[test]
    fn rejects_bad_selector_requirements() {
        assert_error(
            "  podSelector: {matchExpressions: [{key: app, operator: In}]}\n",
            "spec.podSelector.matchExpressions[0].values=[]: must be non-empty with operator In",
        );
        assert_error(
            "  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: app, operator: Exists, values: [x]}]}}]}]\n",
            "spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].values=x: must be empty",
        );
        assert_error(
            "  egress: [{to: [{podSelector: {matchExpressions: [{key: app, operator: Like}]}}]}]\n",
            "spec.egress[0].to[0].podSelector.matchExpressions[0].operator=Like: must be one of",
        );
        assert_error(
            "  podSelector: {matchExpressions: [{key: '', operator: Exists}]}\n",
            "spec.podSelector.matchExpressions[0].key=: required",
        );
    }

    #[test]
    fn rejects_bad_policy_types() {
        assert_error(
            "  policyTypes: [Ingress, Both]\n",
            "spec.policyTypes[1]=Both: must be Ingress or Egress",
        );
        assert_error(
            "  policyTypes: [Egress, Egress]\n",
            "spec.policyTypes[1]=Egress: duplicate policy type",
        );
    }

    #[test]
    fn reports_every_error_of_the_object() {
        let errs = errors_of(
            "  policyTypes: [Sideways]\n  ingress: [{ports: [{protocol: ICMP, port: 0}]}]\n",
        );
        assert_eq!(errs.len(), 3, "{errs:#?}");
    }
}
