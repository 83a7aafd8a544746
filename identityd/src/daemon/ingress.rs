//! Ingress and L7 routes, pure: Gateway API `Gateway`s of class `identityd`, `Ingress`es of
//! class `identityd`, and `HTTPRoute`/`GRPCRoute`s attached to them or to Services (GAMMA)
//! become the Envoy crate's listeners and routes. Every node's Envoy serves every ingress
//! listener (node-local ingress, as in Cilium), so the plan is the same on every node.
//!
//! TLS without a Secret (a Gateway listener with no `certificateRefs`, an Ingress `tls` entry
//! with no `secretName`) gets a serving certificate from identityd's CA for the listed
//! hostnames: [`IngressPlan::certs`] says what each node asks for, and the CA role authorizes
//! exactly those requests ([`cert_wants`]). A listener that names a `kubernetes.io/tls` Secret
//! (same namespace; no ReferenceGrant support) serves its `tls.crt`/`tls.key` over SDS.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use identityd_envoy::l7 as l7m;

use crate::model::gateway::{BackendRef, GrpcRoute, HttpRoute, ParentKind, ParentRef, RouteFilter};
use crate::model::{ClusterState, Kind, NamespacedName, ObjectProblem};
use identityd_certs::duration::millis as ms;

/// The `gatewayClassName` / `ingressClassName` identityd serves.
pub const GATEWAY_CLASS: &str = "identityd";
/// Name of the listener that serves plaintext `Ingress` rules.
pub const INGRESS_HTTP_LISTENER: &str = "ingress/http";
/// Name of the listener that serves `Ingress` rules over TLS.
pub const INGRESS_HTTPS_LISTENER: &str = "ingress/https";

/// Ports of the listeners `Ingress` objects share (Gateways name their own ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngressPorts {
    /// Plaintext HTTP (default 80; the lab uses 8080).
    pub http: u16,
    /// HTTPS (default 443; the lab uses 8443).
    pub https: u16,
}

impl Default for IngressPorts {
    fn default() -> Self {
        Self {
            http: 80,
            https: 443,
        }
    }
}

/// A CA-issued serving certificate an ingress listener needs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CertWant {
    /// SDS secret name the listener refers to (`ingress-cert/<kind>/<ns>/<name>/<part>`).
    pub secret: String,
    /// `Gateway` or `Ingress`.
    pub kind: String,
    /// The object's namespace.
    pub namespace: String,
    /// The object's name.
    pub name: String,
    /// DNS names (sorted, distinct).
    pub dns_names: Vec<String>,
}

/// A certificate an ingress listener takes from a `kubernetes.io/tls` Secret (resolved from
/// cluster state when the node builds its Envoy config; the plan holds no key material).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecretCert {
    /// SDS secret name the listener refers to (`secret/<ns>/<name>`).
    pub sds: String,
    /// The Secret's namespace.
    pub namespace: String,
    /// The Secret's name.
    pub name: String,
}

fn secret_sds_name(ns: &str, name: &str) -> String {
    format!("secret/{ns}/{name}")
}

/// Why the Secret `ns/name` cannot serve as a listener certificate, if it cannot.
fn secret_problem(state: &ClusterState, ns: &str, name: &str) -> Option<String> {
    match state.secrets.get(&NamespacedName::new(ns, name)) {
        None => Some(format!("Secret {ns}/{name} does not exist")),
        Some(s) if s.tls_pem().is_none() => {
            Some(format!("Secret {ns}/{name} has no PEM tls.crt and tls.key"))
        }
        Some(_) => None,
    }
}

/// Listeners, routes and certificates of the cluster's ingress and L7 mesh routing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IngressPlan {
    /// Ingress listeners.
    pub listeners: Vec<l7m::IngressListener>,
    /// Routes attached to listeners and/or Services.
    pub routes: Vec<l7m::HttpRoute>,
    /// CA-issued certificates the listeners refer to (by [`CertWant::secret`]).
    pub certs: Vec<CertWant>,
    /// Certificates from Secrets the listeners refer to (by [`SecretCert::sds`]).
    pub secret_certs: Vec<SecretCert>,
    /// What could not be served, per object and field.
    pub problems: Vec<ObjectProblem>,
    /// What the node's own config keeps from being served (`ingress.httpPort` conflicts).
    pub config_problems: Vec<String>,
    /// The Gateway each listener comes from (listeners of `Ingress` objects have none).
    pub listener_owners: BTreeMap<String, NamespacedName>,
}

/// The CA-issued certificates the cluster's ingress objects need (what the CA authorizes).
#[must_use]
pub fn cert_wants(state: &ClusterState, ports: IngressPorts) -> Vec<CertWant> {
    plan_ingress(state, ports).certs
}

fn any() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}

fn sorted_names(names: impl IntoIterator<Item = String>) -> Vec<String> {
    names
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The whole plan. Pure; the same on every node.
#[must_use]
pub fn plan_ingress(state: &ClusterState, ports: IngressPorts) -> IngressPlan {
    let mut plan = IngressPlan::default();
    // (gateway ns/name) → [(listener name, section name, port)]
    let mut gw_listeners: BTreeMap<NamespacedName, Vec<(String, String, u16)>> = BTreeMap::new();
    let mut used_ports: BTreeMap<u16, String> = BTreeMap::new();

    for (key, gw) in &state.gateways {
        if gw.spec.gateway_class_name != GATEWAY_CLASS {
            continue;
        }
        let problem =
            |field: String, message: String| ObjectProblem::new(Kind::Gateway, key, field, message);
        for (i, l) in gw.spec.listeners.iter().enumerate() {
            let field = format!("spec.listeners[{i}]");
            let Ok(port) = u16::try_from(l.port) else {
                plan.problems.push(problem(
                    format!("{field}.port={}", l.port),
                    "not a port".to_owned(),
                ));
                continue;
            };
            let lname = format!("{}/{}/{}", key.namespace, key.name, l.name);
            if let Some(other) = used_ports.get(&port) {
                plan.problems.push(problem(
                    format!("{field}.port={port}"),
                    format!("already served by listener {other}; listeners of different Gateways cannot share a port"),
                ));
                continue;
            }
            let tls = match l.protocol.as_str() {
                "HTTP" => None,
                "HTTPS" | "TLS" => {
                    let t = l.tls.clone().unwrap_or_default();
                    if t.mode.as_deref() == Some("Passthrough") {
                        plan.problems.push(problem(
                            format!("{field}.tls.mode=Passthrough"),
                            "not supported (identityd terminates TLS)".to_owned(),
                        ));
                        continue;
                    }
                    if !t.certificate_refs.is_empty() {
                        let mut certificates = Vec::new();
                        let mut bad = false;
                        for (j, r) in t.certificate_refs.iter().enumerate() {
                            let f = format!("{field}.tls.certificateRefs[{j}]");
                            let kind_ok = r.kind.as_deref().unwrap_or("Secret") == "Secret"
                                && r.group.as_deref().unwrap_or("").is_empty();
                            let ns = r.namespace.as_deref().unwrap_or(&key.namespace);
                            let why = if !kind_ok {
                                Some("only core Secrets are supported".to_owned())
                            } else if ns != key.namespace {
                                Some(format!(
                                    "namespace {ns}: a Secret in another namespace needs a ReferenceGrant, which identityd does not support"
                                ))
                            } else {
                                secret_problem(state, ns, &r.name)
                            };
                            if let Some(why) = why {
                                plan.problems
                                    .push(problem(format!("{f}.name={}", r.name), why));
                                bad = true;
                                continue;
                            }
                            let sds = secret_sds_name(ns, &r.name);
                            plan.secret_certs.push(SecretCert {
                                sds: sds.clone(),
                                namespace: ns.to_owned(),
                                name: r.name.clone(),
                            });
                            certificates.push(l7m::IngressCertificate {
                                hostnames: l.hostname.iter().cloned().collect(),
                                source: l7m::CertSource::Sds(sds),
                            });
                        }
                        if bad {
                            continue;
                        }
                        used_ports.insert(port, lname.clone());
                        gw_listeners.entry(key.clone()).or_default().push((
                            lname.clone(),
                            l.name.clone(),
                            port,
                        ));
                        plan.listener_owners.insert(lname.clone(), key.clone());
                        plan.listeners.push(l7m::IngressListener {
                            name: lname,
                            address: SocketAddr::new(any(), port),
                            http: l7m::HttpVersions::Auto,
                            tls: Some(l7m::ListenerTls { certificates }),
                        });
                        continue;
                    }
                    let Some(host) = l.hostname.clone() else {
                        plan.problems.push(problem(
                            format!("{field}.hostname"),
                            "required for a certificate from identityd's CA (it is the certificate's DNS name)".to_owned(),
                        ));
                        continue;
                    };
                    let secret = format!(
                        "ingress-cert/Gateway/{}/{}/{}",
                        key.namespace, key.name, l.name
                    );
                    plan.certs.push(CertWant {
                        secret: secret.clone(),
                        kind: "Gateway".to_owned(),
                        namespace: key.namespace.clone(),
                        name: key.name.clone(),
                        dns_names: vec![host.clone()],
                    });
                    Some(l7m::ListenerTls {
                        certificates: vec![l7m::IngressCertificate {
                            hostnames: vec![host],
                            source: l7m::CertSource::Sds(secret),
                        }],
                    })
                }
                other => {
                    plan.problems.push(problem(
                        format!("{field}.protocol={other}"),
                        "not supported".to_owned(),
                    ));
                    continue;
                }
            };
            used_ports.insert(port, lname.clone());
            gw_listeners.entry(key.clone()).or_default().push((
                lname.clone(),
                l.name.clone(),
                port,
            ));
            plan.listener_owners.insert(lname.clone(), key.clone());
            plan.listeners.push(l7m::IngressListener {
                name: lname,
                address: SocketAddr::new(any(), port),
                http: l7m::HttpVersions::Auto,
                tls,
            });
        }
    }

    ingress_objects(state, ports, &mut used_ports, &mut plan);

    attach_routes(&state.http_routes, &gw_listeners, &mut plan.routes);
    attach_routes(&state.grpc_routes, &gw_listeners, &mut plan.routes);
    plan.certs.sort();
    plan.secret_certs.sort();
    plan.secret_certs.dedup();
    plan
}

/// `Ingress` objects of class identityd: one shared plaintext listener, and one TLS listener
/// when any of them lists `tls`.
fn ingress_objects(
    state: &ClusterState,
    ports: IngressPorts,
    used_ports: &mut BTreeMap<u16, String>,
    plan: &mut IngressPlan,
) {
    let ours: Vec<_> = state
        .ingresses
        .iter()
        .filter(|(_, i)| i.spec.ingress_class_name.as_deref() == Some(GATEWAY_CLASS))
        .collect();
    if ours.is_empty() {
        return;
    }
    let mut certificates = Vec::new();
    for (key, ing) in &ours {
        for (i, t) in ing.spec.tls.iter().enumerate() {
            if let Some(secret) = &t.secret_name {
                if let Some(why) = secret_problem(state, &key.namespace, secret) {
                    plan.problems.push(ObjectProblem::new(
                        Kind::Ingress,
                        key,
                        format!("spec.tls[{i}].secretName={secret}"),
                        why,
                    ));
                    continue;
                }
                let sds = secret_sds_name(&key.namespace, secret);
                plan.secret_certs.push(SecretCert {
                    sds: sds.clone(),
                    namespace: key.namespace.clone(),
                    name: secret.clone(),
                });
                certificates.push(l7m::IngressCertificate {
                    hostnames: sorted_names(t.hosts.iter().cloned()),
                    source: l7m::CertSource::Sds(sds),
                });
                continue;
            }
            if t.hosts.is_empty() {
                plan.problems.push(ObjectProblem::new(
                    Kind::Ingress,
                    key,
                    format!("spec.tls[{i}].hosts"),
                    "required for a certificate from identityd's CA",
                ));
                continue;
            }
            let secret = format!("ingress-cert/Ingress/{}/{}/{i}", key.namespace, key.name);
            let names = sorted_names(t.hosts.iter().cloned());
            plan.certs.push(CertWant {
                secret: secret.clone(),
                kind: "Ingress".to_owned(),
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                dns_names: names.clone(),
            });
            certificates.push(l7m::IngressCertificate {
                hostnames: names,
                source: l7m::CertSource::Sds(secret),
            });
        }
    }
    let mut listeners = vec![(INGRESS_HTTP_LISTENER, ports.http, None)];
    if !certificates.is_empty() {
        listeners.push((
            INGRESS_HTTPS_LISTENER,
            ports.https,
            Some(l7m::ListenerTls { certificates }),
        ));
    }
    let mut served = Vec::new();
    for (name, port, tls) in listeners {
        if let Some(other) = used_ports.get(&port) {
            plan.config_problems.push(format!(
                "Ingress listener {name}: port {port} is already served by listener {other}; change ingress.{} in the daemon config",
                if tls.is_some() { "httpsPort" } else { "httpPort" }
            ));
            continue;
        }
        used_ports.insert(port, name.to_owned());
        served.push(name);
        plan.listeners.push(l7m::IngressListener {
            name: name.to_owned(),
            address: SocketAddr::new(any(), port),
            http: l7m::HttpVersions::Auto,
            tls,
        });
    }
    if served.is_empty() {
        return;
    }
    for (key, ing) in ours {
        let parents: Vec<l7m::RouteParent> = served
            .iter()
            .map(|n| l7m::RouteParent::Listener((*n).to_owned()))
            .collect();
        let svc_port = |b: &crate::model::core::IngressBackend| -> Option<(String, u16)> {
            let s = b.service.as_ref()?;
            let port = match (&s.port.number, &s.port.name) {
                (Some(n), _) => u16::try_from(*n).ok()?,
                (None, Some(pn)) => state
                    .services
                    .get(&NamespacedName::new(&key.namespace, &s.name))?
                    .spec
                    .ports
                    .iter()
                    .find(|p| p.name.as_deref() == Some(pn.as_str()))
                    .and_then(|p| u16::try_from(p.port).ok())?,
                (None, None) => return None,
            };
            Some((s.name.clone(), port))
        };
        let backend = |b: &crate::model::core::IngressBackend| {
            svc_port(b).map(|(service, port)| l7m::WeightedBackend {
                service,
                namespace: key.namespace.clone(),
                port,
                weight: 1,
            })
        };
        for (i, rule) in ing.spec.rules.iter().enumerate() {
            let Some(http) = &rule.http else { continue };
            let rules = http
                .paths
                .iter()
                .map(|p| {
                    let v = p.path.clone().unwrap_or_else(|| "/".to_owned());
                    l7m::RouteRule {
                        matches: vec![l7m::RouteMatch {
                            path: Some(if p.path_type == "Exact" {
                                l7m::PathMatch::Exact(v)
                            } else {
                                l7m::PathMatch::Prefix(v)
                            }),
                            ..Default::default()
                        }],
                        backends: backend(&p.backend).into_iter().collect(),
                        ..Default::default()
                    }
                })
                .collect();
            plan.routes.push(l7m::HttpRoute {
                name: format!("ingress-{}-rule{i}", key.name),
                namespace: key.namespace.clone(),
                kind: l7m::RouteKind::Http,
                parents: parents.clone(),
                hostnames: rule.host.iter().cloned().collect(),
                rules,
            });
        }
        if let Some(b) = &ing.spec.default_backend {
            plan.routes.push(l7m::HttpRoute {
                name: format!("ingress-{}-default", key.name),
                namespace: key.namespace.clone(),
                kind: l7m::RouteKind::Http,
                parents,
                hostnames: vec![],
                rules: vec![l7m::RouteRule {
                    backends: backend(b).into_iter().collect(),
                    ..Default::default()
                }],
            });
        }
    }
}

/// A route's parents: Services (mesh) and the listeners of identityd Gateways (by
/// `sectionName` and `port` when given).
fn parents_of(
    route_ns: &str,
    refs: &[ParentRef],
    gw_listeners: &BTreeMap<NamespacedName, Vec<(String, String, u16)>>,
) -> Vec<l7m::RouteParent> {
    let mut out = Vec::new();
    for p in refs {
        match p.parent_kind() {
            Some(ParentKind::Service) => out.push(l7m::RouteParent::Service {
                name: p.name.clone(),
                namespace: p.namespace_or(route_ns).to_owned(),
            }),
            Some(ParentKind::Gateway) => {
                let key = NamespacedName::new(p.namespace_or(route_ns), &p.name);
                for (lname, section, port) in gw_listeners.get(&key).into_iter().flatten() {
                    let section_ok = p.section_name.as_deref().is_none_or(|s| s == section);
                    let port_ok = p.port.is_none_or(|pp| pp == i64::from(*port));
                    if section_ok && port_ok {
                        out.push(l7m::RouteParent::Listener(lname.clone()));
                    }
                }
            }
            None => {}
        }
    }
    out
}

fn backends(route_ns: &str, refs: &[BackendRef]) -> Vec<l7m::WeightedBackend> {
    refs.iter()
        .map(|b| l7m::WeightedBackend {
            service: b.name.clone(),
            namespace: b.namespace.clone().unwrap_or_else(|| route_ns.to_owned()),
            port: b.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(0),
            weight: b.weight(),
        })
        .collect()
}

fn header_matches(hs: &[crate::model::gateway::HeaderMatch]) -> Vec<l7m::HeaderMatch> {
    hs.iter()
        .map(|h| l7m::HeaderMatch {
            name: h.name.clone(),
            value: h.value.clone(),
            regex: h.type_.as_deref() == Some("RegularExpression"),
        })
        .collect()
}

/// `RequestHeaderModifier` and `RequestRedirect` filters of a rule.
fn filters(fs: &[RouteFilter]) -> (l7m::HeaderModifier, Option<l7m::Redirect>) {
    let mut hm = l7m::HeaderModifier::default();
    let mut redirect = None;
    for f in fs {
        if let Some(m) = &f.request_header_modifier {
            hm.set
                .extend(m.set.iter().map(|h| (h.name.clone(), h.value.clone())));
            hm.add
                .extend(m.add.iter().map(|h| (h.name.clone(), h.value.clone())));
            hm.remove.extend(m.remove.iter().cloned());
        }
        if let Some(r) = &f.request_redirect {
            let (path, prefix) = match &r.path {
                Some(p) if p.type_ == "ReplaceFullPath" => (p.replace_full_path.clone(), None),
                Some(p) if p.type_ == "ReplacePrefixMatch" => {
                    (None, p.replace_prefix_match.clone())
                }
                _ => (None, None),
            };
            redirect = Some(l7m::Redirect {
                scheme: r.scheme.clone(),
                host: r.hostname.clone(),
                path,
                prefix,
                port: r.port.and_then(|p| u16::try_from(p).ok()),
                status_code: r.status_code.and_then(|c| u16::try_from(c).ok()),
            });
        }
    }
    (hm, redirect)
}

/// What the HTTPRoute and GRPCRoute translations differ in: the route kind, and how a rule's
/// matches, redirect and timeout read. Everything else (parents, hostnames, backends, header
/// filters) is one code path in [`route`].
trait RouteRules {
    type Rule;
    const KIND: l7m::RouteKind;
    fn parent_refs(&self) -> &[ParentRef];
    fn hostnames(&self) -> &[String];
    fn rules(&self) -> &[Self::Rule];
    fn matches(rule: &Self::Rule) -> Vec<l7m::RouteMatch>;
    fn filters(rule: &Self::Rule) -> &[RouteFilter];
    fn backend_refs(rule: &Self::Rule) -> &[BackendRef];
    /// Whether a `RequestRedirect` filter applies (GRPCRoute has none).
    const REDIRECTS: bool;
    fn timeout(rule: &Self::Rule) -> Option<&str>;
}

impl RouteRules for HttpRoute {
    type Rule = crate::model::gateway::HttpRouteRule;
    const KIND: l7m::RouteKind = l7m::RouteKind::Http;
    const REDIRECTS: bool = true;

    fn parent_refs(&self) -> &[ParentRef] {
        &self.spec.parent_refs
    }
    fn hostnames(&self) -> &[String] {
        &self.spec.hostnames
    }
    fn rules(&self) -> &[Self::Rule] {
        &self.spec.rules
    }
    fn matches(rule: &Self::Rule) -> Vec<l7m::RouteMatch> {
        rule.matches
            .iter()
            .map(|m| l7m::RouteMatch {
                path: m.path.as_ref().map(|p| {
                    let v = p.value.clone().unwrap_or_else(|| "/".to_owned());
                    match p.type_.as_deref().unwrap_or("PathPrefix") {
                        "Exact" => l7m::PathMatch::Exact(v),
                        "RegularExpression" => l7m::PathMatch::Regex(v),
                        _ => l7m::PathMatch::Prefix(v),
                    }
                }),
                headers: header_matches(&m.headers),
                method: m.method.clone(),
            })
            .collect()
    }
    fn filters(rule: &Self::Rule) -> &[RouteFilter] {
        &rule.filters
    }
    fn backend_refs(rule: &Self::Rule) -> &[BackendRef] {
        &rule.backend_refs
    }
    fn timeout(rule: &Self::Rule) -> Option<&str> {
        rule.timeouts.as_ref().and_then(|t| t.request.as_deref())
    }
}

impl RouteRules for GrpcRoute {
    type Rule = crate::model::gateway::GrpcRouteRule;
    const KIND: l7m::RouteKind = l7m::RouteKind::Grpc;
    const REDIRECTS: bool = false;

    fn parent_refs(&self) -> &[ParentRef] {
        &self.spec.parent_refs
    }
    fn hostnames(&self) -> &[String] {
        &self.spec.hostnames
    }
    fn rules(&self) -> &[Self::Rule] {
        &self.spec.rules
    }
    fn matches(rule: &Self::Rule) -> Vec<l7m::RouteMatch> {
        rule.matches
            .iter()
            .map(|m| {
                let mut rm = match &m.method {
                    Some(mm) if mm.type_.as_deref() == Some("RegularExpression") => {
                        l7m::RouteMatch {
                            path: Some(l7m::PathMatch::Regex(format!(
                                "/{}/{}",
                                mm.service.as_deref().unwrap_or("[^/]+"),
                                mm.method.as_deref().unwrap_or("[^/]+")
                            ))),
                            ..Default::default()
                        }
                    }
                    Some(mm) => match (&mm.service, &mm.method) {
                        (Some(s), m) => l7m::RouteMatch::grpc(s, m.as_deref()),
                        (None, Some(m)) => l7m::RouteMatch {
                            path: Some(l7m::PathMatch::Regex(format!("/[^/]+/{m}"))),
                            ..Default::default()
                        },
                        (None, None) => l7m::RouteMatch::default(),
                    },
                    None => l7m::RouteMatch::default(),
                };
                rm.headers = header_matches(&m.headers);
                rm
            })
            .collect()
    }
    fn filters(rule: &Self::Rule) -> &[RouteFilter] {
        &rule.filters
    }
    fn backend_refs(rule: &Self::Rule) -> &[BackendRef] {
        &rule.backend_refs
    }
    fn timeout(_: &Self::Rule) -> Option<&str> {
        None
    }
}

/// Routes of one kind that attach to a listener or Service, translated, onto `out`.
fn attach_routes<R: RouteRules>(
    routes: &BTreeMap<NamespacedName, R>,
    gw_listeners: &BTreeMap<NamespacedName, Vec<(String, String, u16)>>,
    out: &mut Vec<l7m::HttpRoute>,
) {
    for (key, r) in routes {
        let parents = parents_of(&key.namespace, r.parent_refs(), gw_listeners);
        if !parents.is_empty() {
            out.push(route(key, r, parents));
        }
    }
}

/// An HTTPRoute or GRPCRoute as the Envoy crate's route.
fn route<R: RouteRules>(
    key: &NamespacedName,
    r: &R,
    parents: Vec<l7m::RouteParent>,
) -> l7m::HttpRoute {
    let ns = &key.namespace;
    let rules = r
        .rules()
        .iter()
        .map(|rule| {
            let (request_headers, redirect) = filters(R::filters(rule));
            l7m::RouteRule {
                matches: R::matches(rule),
                backends: backends(ns, R::backend_refs(rule)),
                request_headers,
                redirect: redirect.filter(|_| R::REDIRECTS),
                timeout_ms: R::timeout(rule).and_then(ms),
            }
        })
        .collect();
    l7m::HttpRoute {
        name: key.name.clone(),
        namespace: ns.clone(),
        kind: R::KIND,
        parents,
        hostnames: r.hostnames().to_vec(),
        rules,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INGRESS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: public, namespace: shop}
spec:
  gatewayClassName: identityd
  listeners:
    - {name: http, port: 8080, protocol: HTTP}
    - name: https
      port: 8443
      protocol: HTTPS
      hostname: web.shop.example
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other-class, namespace: shop}
spec:
  gatewayClassName: someone-else
  listeners: [{name: http, port: 9090, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-public, namespace: shop}
spec:
  parentRefs: [{name: public}]
  hostnames: [web.shop.example]
  rules:
    - matches: [{path: {type: PathPrefix, value: /api}, method: GET}]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier: {set: [{name: x-via, value: identityd}]}
      backendRefs:
        - {name: web-v1, port: 80, weight: 90}
        - {name: web-v2, port: 80, weight: 10}
      timeouts: {request: 2s}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: greeter, namespace: shop}
spec:
  parentRefs: [{name: public, sectionName: https}]
  rules:
    - matches: [{method: {service: helloworld.Greeter, method: SayHello}}]
      backendRefs: [{name: web, port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: legacy, namespace: shop}
spec:
  ingressClassName: identityd
  tls: [{hosts: [legacy.shop.example, www.legacy.shop.example]}]
  rules:
    - host: legacy.shop.example
      http:
        paths:
          - {path: /v2, pathType: Exact, backend: {service: {name: web-v2, port: {name: http}}}}
          - {path: /, pathType: Prefix, backend: {service: {name: web-v1, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: nginx-owned, namespace: shop}
spec:
  ingressClassName: nginx
  rules: [{host: x.example, http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}}]
"#;

    const NODE: &str = "apiVersion: identityd.io/v1alpha1\nkind: IdentitydNode\nmetadata: {name: n1}\nspec: {podCIDRs: [10.244.1.0/24], underlayAddresses: [10.99.0.11]}";

    fn state(extra: &str) -> ClusterState {
        let text = format!(
            "{}\n---\n{NODE}\n---\n{extra}",
            include_str!("../model/testdata/lab-cluster.yaml")
        );
        let decoded = crate::source::decode::decode_all(&text);
        for (i, d) in decoded.iter().enumerate() {
            assert!(d.1.is_ok(), "document {i}: {:?}", d.1);
        }
        ClusterState::from_objects(1, decoded.into_iter().filter_map(|(_, r)| r.ok().flatten()))
    }

    fn ports() -> IngressPorts {
        IngressPorts {
            http: 18080,
            https: 18443,
        }
    }

    #[test]
    fn gateways_and_ingresses_of_our_class_become_listeners_routes_and_certificates() {
        let st = state(INGRESS);
        let p = plan_ingress(&st, ports());
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        let names: Vec<(&str, u16, bool)> = p
            .listeners
            .iter()
            .map(|l| (l.name.as_str(), l.address.port(), l.tls.is_some()))
            .collect();
        assert_eq!(
            names,
            [
                ("shop/public/http", 8080, false),
                ("shop/public/https", 8443, true),
                (INGRESS_HTTP_LISTENER, 18080, false),
                (INGRESS_HTTPS_LISTENER, 18443, true),
            ],
            "the other class's Gateway and the nginx Ingress are not ours"
        );
        assert_eq!(
            p.certs
                .iter()
                .map(|c| (c.kind.as_str(), c.name.as_str(), c.dns_names.clone()))
                .collect::<Vec<_>>(),
            [
                ("Gateway", "public", vec!["web.shop.example".to_owned()]),
                (
                    "Ingress",
                    "legacy",
                    vec![
                        "legacy.shop.example".to_owned(),
                        "www.legacy.shop.example".to_owned()
                    ]
                ),
            ]
        );
        // The HTTPRoute attaches to both listeners of the Gateway (no sectionName), keeps its
        // match, filter, weights and timeout.
        let r = p.routes.iter().find(|r| r.name == "web-public").unwrap();
        assert_eq!(
            r.parents,
            [
                l7m::RouteParent::Listener("shop/public/http".into()),
                l7m::RouteParent::Listener("shop/public/https".into())
            ]
        );
        let rule = &r.rules[0];
        assert_eq!(rule.matches[0].method.as_deref(), Some("GET"));
        assert_eq!(
            rule.matches[0].path,
            Some(l7m::PathMatch::Prefix("/api".into()))
        );
        assert_eq!(
            rule.request_headers.set,
            [("x-via".to_owned(), "identityd".to_owned())]
        );
        assert_eq!(
            rule.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
            [90, 10]
        );
        assert_eq!(rule.timeout_ms, Some(2000));
        // The GRPCRoute attaches to the https listener only, with a method match.
        let g = p.routes.iter().find(|r| r.name == "greeter").unwrap();
        assert_eq!(g.kind, l7m::RouteKind::Grpc);
        assert_eq!(
            g.parents,
            [l7m::RouteParent::Listener("shop/public/https".into())]
        );
        assert_eq!(
            g.rules[0].matches[0].path,
            Some(l7m::PathMatch::Exact("/helloworld.Greeter/SayHello".into()))
        );
        // The Ingress: host + path rules on both Ingress listeners, named ports resolved.
        let i = p
            .routes
            .iter()
            .find(|r| r.name == "ingress-legacy-rule0")
            .unwrap();
        assert_eq!(i.hostnames, ["legacy.shop.example"]);
        assert_eq!(i.parents.len(), 2);
        assert_eq!(
            i.rules[0].matches[0].path,
            Some(l7m::PathMatch::Exact("/v2".into()))
        );
        assert_eq!(i.rules[0].backends[0].service, "web-v2");
        assert_eq!(i.rules[0].backends[0].port, 80, "port name http resolved");
        // The mesh route (parent Service) is still there.
        let m = p.routes.iter().find(|r| r.name == "web-split").unwrap();
        assert!(matches!(m.parents[0], l7m::RouteParent::Service { .. }));
    }

    #[test]
    fn with_ca_issued_certificates_the_node_config_translates_and_without_them_tls_waits() {
        use crate::daemon::mesh::{IngressInputs, plan_mesh_with};
        use identityd_certs::{Ca, CaOptions, TrustDomain};
        use std::sync::Arc;
        use std::time::{Duration, SystemTime};
        let st = state(INGRESS);
        let td = TrustDomain::new("cluster.local").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let ca = Ca::init(dir.path(), td.clone(), CaOptions::default(), now).unwrap();
        let hour = Duration::from_secs(3600);
        let mut svids = BTreeMap::new();
        for id in crate::daemon::mesh::wanted_identities(&st, "n1", &td).into_keys() {
            svids.insert(id.clone(), Arc::new(ca.issue(&id, hour, now).unwrap()));
        }
        let gw = identityd_certs::service::gateway_id(&td);
        assert!(
            svids.contains_key(&gw),
            "ingress exists: the gateway identity is wanted"
        );
        let bundle = ca.bundle(now).to_pem();

        // No certificates yet: the TLS listeners wait, the plaintext ones serve.
        let (m, problems) = plan_mesh_with(
            &st,
            "n1",
            &td,
            &svids,
            &bundle,
            &IngressInputs {
                ports: ports(),
                certs: BTreeMap::new(),
                ..Default::default()
            },
        );
        assert_eq!(m.l7.listeners.len(), 2, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("shop/public/https") && p.contains("not served until")),
            "{problems:?}"
        );
        let g = m.l7.routes.iter().any(|r| r.name == "greeter");
        assert!(!g, "a route whose only listener waits is left out");
        identityd_envoy::translate::translate_checked(&m).expect("valid without TLS");

        // With the CA's certificates every listener is served and the config translates.
        let certs = cert_wants(&st, ports())
            .into_iter()
            .map(|w| {
                let c = ca.issue_serving(&w.dns_names, hour, now).unwrap();
                (w.secret, Arc::new(c))
            })
            .collect();
        let (m, problems) = plan_mesh_with(
            &st,
            "n1",
            &td,
            &svids,
            &bundle,
            &IngressInputs {
                ports: ports(),
                certs,
                ..Default::default()
            },
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(m.l7.listeners.len(), 4);
        assert_eq!(m.l7.tls_secrets.len(), 2);
        assert_eq!(
            m.l7.gateway_id.as_deref(),
            Some("spiffe://cluster.local/identityd/gateway")
        );
        let res = identityd_envoy::translate::translate_checked(&m).expect("valid");
        assert!(!res.is_empty());
    }

    #[test]
    fn a_traffic_policy_on_a_gateway_applies_to_its_listeners() {
        let st = state(&format!(
            "{INGRESS}\n---\napiVersion: identityd.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: gw-limit, namespace: shop}}\n\
             spec:\n  targetRef: {{group: gateway.networking.k8s.io, kind: Gateway, name: public, sectionName: http}}\n\
             \x20 localRateLimit: {{tokens: 3, fillInterval: 1s}}\n"
        ));
        let ps: Vec<_> = crate::daemon::mesh::mesh_policies(&st)
            .into_iter()
            .filter(|p| p.name == "gw-limit")
            .collect();
        assert_eq!(ps.len(), 1);
        assert_eq!(
            ps[0].target,
            l7m::PolicyTarget::Listener("shop/public/http".into())
        );
        assert_eq!(ps[0].local_rate_limit.as_ref().map(|l| l.tokens), Some(3));
        // sectionName is only for Gateways.
        let bad = crate::source::decode::decode_all(
            "apiVersion: identityd.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: x, namespace: shop}\n\
             spec:\n  targetRef: {kind: Service, name: web, sectionName: http}\n  timeout: 1s\n",
        );
        let e = format!("{:?}", bad.into_iter().next().unwrap().1.unwrap_err());
        assert!(e.contains("spec.targetRef.sectionName"), "{e}");
    }

    #[test]
    fn what_cannot_be_served_is_a_problem_naming_the_object_and_field() {
        let st = state(
            r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: a, namespace: shop}
spec:
  gatewayClassName: identityd
  listeners:
    - {name: http, port: 8080, protocol: HTTP}
    - {name: nohost, port: 8443, protocol: HTTPS}
    - {name: secret, port: 8444, protocol: HTTPS, hostname: s.example, tls: {certificateRefs: [{name: s-cert}]}}
    - {name: pass, port: 8445, protocol: TLS, hostname: p.example, tls: {mode: Passthrough}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: b, namespace: shop}
spec:
  gatewayClassName: identityd
  listeners: [{name: http, port: 8080, protocol: HTTP}]
"#,
        );
        let p = plan_ingress(&st, ports());
        let all = p
            .problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        for want in [
            "Gateway shop/a: spec.listeners[1].hostname: required",
            "Gateway shop/a: spec.listeners[2].tls.certificateRefs",
            "Gateway shop/a: spec.listeners[3].tls.mode=Passthrough",
            "Gateway shop/b: spec.listeners[0].port=8080: already served by listener shop/a/http",
        ] {
            assert!(all.contains(want), "missing {want:?} in\n{all}");
        }
        assert_eq!(p.listeners.len(), 1);
        assert!(p.certs.is_empty());
    }

    #[test]
    fn listeners_serve_certificates_from_tls_secrets_and_name_bad_ones() {
        use crate::daemon::mesh::{IngressInputs, plan_mesh_with};
        use identityd_certs::{Ca, CaOptions, TrustDomain};
        use std::time::{Duration, SystemTime};
        let td = TrustDomain::new("cluster.local").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let ca = Ca::init(dir.path(), td.clone(), CaOptions::default(), now).unwrap();
        let c = ca
            .issue_serving(
                &["own.shop.example".to_owned()],
                Duration::from_secs(600),
                now,
            )
            .unwrap();
        let indent = |t: &str| {
            t.lines()
                .map(|l| format!("      {l}\n"))
                .collect::<String>()
        };
        let secret = format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: own-cert, namespace: shop}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
            indent(&c.chain_pem()).replace("      ", "    "),
            indent(&c.key().to_pem()).replace("      ", "    ")
        );
        let st = state(&format!(
            "{secret}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: own, namespace: shop}}\n\
             spec:\n  gatewayClassName: identityd\n  listeners:\n\
             \x20 - {{name: https, port: 9443, protocol: HTTPS, hostname: own.shop.example, tls: {{certificateRefs: [{{name: own-cert}}]}}}}\n\
             \x20 - {{name: missing, port: 9444, protocol: HTTPS, tls: {{certificateRefs: [{{name: nope}}]}}}}\n\
             \x20 - {{name: other-ns, port: 9445, protocol: HTTPS, tls: {{certificateRefs: [{{name: own-cert, namespace: front}}]}}}}\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: own, namespace: shop}}\n\
             spec:\n  ingressClassName: identityd\n  tls: [{{hosts: [own.shop.example], secretName: own-cert}}]\n\
             \x20 rules: [{{host: own.shop.example, http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]}}}}]\n"
        ));
        assert!(
            !format!("{:?}", st.secrets).contains("PRIVATE KEY"),
            "Debug redacts Secret values"
        );
        let p = plan_ingress(&st, ports());
        let all = p
            .problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(all.contains("spec.listeners[1].tls.certificateRefs[0].name=nope: Secret shop/nope does not exist"), "{all}");
        assert!(
            all.contains("spec.listeners[2].tls.certificateRefs[0].name=own-cert: namespace front"),
            "{all}"
        );
        assert_eq!(
            p.secret_certs.len(),
            1,
            "the Gateway and the Ingress share one SDS secret"
        );
        let gw = identityd_certs::service::gateway_id(&td);
        let gw_svids: BTreeMap<_, _> = [(
            gw.clone(),
            std::sync::Arc::new(ca.issue(&gw, Duration::from_secs(600), now).unwrap()),
        )]
        .into();
        assert!(p.certs.is_empty(), "nothing asked of the CA");
        let (m, problems) = plan_mesh_with(
            &st,
            "n1",
            &td,
            &gw_svids,
            "",
            &IngressInputs {
                ports: ports(),
                certs: BTreeMap::new(),
                ..Default::default()
            },
        );
        let names: Vec<&str> = m.l7.listeners.iter().map(|l| l.name.as_str()).collect();
        assert!(
            names.contains(&"shop/own/https") && names.contains(&INGRESS_HTTPS_LISTENER),
            "{names:?} {problems:?}"
        );
        assert_eq!(m.l7.tls_secrets.len(), 1);
        assert!(m.l7.tls_secrets[0].key_pem.contains("PRIVATE KEY"));
        identityd_envoy::translate::translate_checked(&m).expect("valid");

        // A TLS Secret without PEM is refused by validation without echoing its value.
        let bad = crate::source::decode::decode_all(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: bad, namespace: shop}\ntype: kubernetes.io/tls\nstringData: {tls.crt: hunter2, tls.key: hunter3}\n",
        );
        let e = format!("{:?}", bad.into_iter().next().unwrap().1.unwrap_err());
        assert!(
            e.contains("tls.crt must hold PEM") && !e.contains("hunter"),
            "{e}"
        );
    }

    #[test]
    fn the_ca_authorizes_exactly_the_listed_names_for_published_nodes() {
        use crate::daemon::ca::{authorize_gateway, authorize_serving};
        use identityd_certs::service::ServingRequest;
        let st = state(INGRESS);
        let req = |kind: &str, name: &str, names: &[&str]| ServingRequest {
            dns_names: names.iter().map(|s| (*s).to_owned()).collect(),
            kind: kind.into(),
            namespace: "shop".into(),
            name: name.into(),
        };
        let node = st.nodes.keys().next().expect("a node").clone();
        authorize_serving(&st, &node, &req("Gateway", "public", &["web.shop.example"])).unwrap();
        authorize_serving(
            &st,
            &node,
            &req(
                "Ingress",
                "legacy",
                &["www.legacy.shop.example", "legacy.shop.example"],
            ),
        )
        .unwrap();
        let e = authorize_serving(&st, &node, &req("Gateway", "public", &["evil.example"]))
            .unwrap_err();
        assert!(e.0.contains("lists"), "{e}");
        let e = authorize_serving(&st, &node, &req("Gateway", "other-class", &["x.example"]))
            .unwrap_err();
        assert!(e.0.contains("class"), "{e}");
        let e = authorize_serving(
            &st,
            "intruder",
            &req("Gateway", "public", &["web.shop.example"]),
        )
        .unwrap_err();
        assert!(e.0.contains("no IdentitydNode"), "{e}");
        authorize_gateway(&st, &node).unwrap();
        let bare = state("");
        assert!(authorize_gateway(&bare, &node).is_err());
    }
}
