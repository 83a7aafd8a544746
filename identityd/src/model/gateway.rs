//! Gateway API v1 kinds: `Gateway`, `HTTPRoute`, `GRPCRoute` (the fields identityd translates).

use serde::{Deserialize, Serialize};

use super::core::check_hostname;
use super::identityd::HTTP_METHODS;
use super::meta::{Condition, ObjectMeta};
use super::validate::Errors;

/// Gateway API group.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

// ---------------------------------------------------------------------------------------------
// Gateway

/// An ingress point: listeners on ports, with protocols and TLS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Gateway {
    /// `gateway.networking.k8s.io/v1`.
    pub api_version: String,
    /// `Gateway`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Listeners.
    pub spec: GatewaySpec,
    /// Status (written by identityd's controller: whether it accepted the object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<GatewayStatus>,
}

/// `Gateway.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Gateway class.
    #[serde(default)]
    pub gateway_class_name: String,
    /// Listeners.
    #[serde(default)]
    pub listeners: Vec<Listener>,
}

/// `spec.listeners[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// Listener name (unique in the Gateway; routes attach by `sectionName`).
    pub name: String,
    /// Host filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Port.
    pub port: i64,
    /// `HTTP`, `HTTPS` or `TLS`.
    pub protocol: String,
    /// TLS settings (HTTPS/TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<GatewayTls>,
}

/// `spec.listeners[].tls`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayTls {
    /// `Terminate` (default) or `Passthrough`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Secrets with `tls.crt`/`tls.key`; when empty identityd's CA issues the certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificate_refs: Vec<SecretObjectReference>,
}

/// A reference to a Secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretObjectReference {
    /// Group (`""`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind (`Secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace (the Gateway's when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl Gateway {
    pub(crate) fn check(&self, errs: &mut Errors) {
        if self.spec.listeners.is_empty() {
            errs.push("spec.listeners", "[]", "at least one listener is required");
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, l) in self.spec.listeners.iter().enumerate() {
            let p = format!("spec.listeners[{i}]");
            errs.required(&format!("{p}.name"), &l.name);
            if !names.insert(l.name.clone()) {
                errs.push(format!("{p}.name"), &l.name, "duplicate listener name");
            }
            errs.port(&format!("{p}.port"), l.port);
            if !matches!(l.protocol.as_str(), "HTTP" | "HTTPS" | "TLS") {
                errs.push(
                    format!("{p}.protocol"),
                    &l.protocol,
                    "must be one of HTTP, HTTPS, TLS",
                );
            }
            if let Some(h) = &l.hostname {
                check_hostname(errs, &format!("{p}.hostname"), h);
            }
            if let Some(tls) = &l.tls {
                if let Some(m) = &tls.mode
                    && !matches!(m.as_str(), "Terminate" | "Passthrough")
                {
                    errs.push(
                        format!("{p}.tls.mode"),
                        m,
                        "must be Terminate or Passthrough",
                    );
                }
                for (j, c) in tls.certificate_refs.iter().enumerate() {
                    errs.dns_subdomain(&format!("{p}.tls.certificateRefs[{j}].name"), &c.name);
                }
            } else if l.protocol == "TLS" {
                errs.push(format!("{p}.tls"), "", "required for protocol TLS");
            }
        }
    }
}

/// `Gateway.status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// Conditions (`Accepted`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// `HTTPRoute.status` / `GRPCRoute.status` (Gateway API `RouteStatus`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// One entry per parent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<RouteParentStatus>,
}

/// `status.parents[]` of a route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    /// The parent this entry is about.
    pub parent_ref: ParentRef,
    /// `identityd.io/gateway-controller`.
    pub controller_name: String,
    /// Conditions (`Accepted`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

// ---------------------------------------------------------------------------------------------
// Shared route parts

/// `parentRefs[]`: a Gateway (ingress) or a Service (mesh, GAMMA).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// `gateway.networking.k8s.io` (default) for Gateway, `""` for Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `Gateway` (default) or `Service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Namespace (the route's when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// Listener name (Gateway) to attach to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// Port to attach to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
}

/// What a parent reference points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParentKind {
    /// A Gateway (ingress).
    Gateway,
    /// A Service (east-west).
    Service,
}

impl ParentRef {
    /// Gateway or Service (`None` for any other kind; validated routes have none).
    #[must_use]
    pub fn parent_kind(&self) -> Option<ParentKind> {
        let group = self.group.as_deref().unwrap_or(GATEWAY_GROUP);
        match (group, self.kind.as_deref().unwrap_or("Gateway")) {
            (GATEWAY_GROUP, "Gateway") => Some(ParentKind::Gateway),
            ("" | "core", "Service") => Some(ParentKind::Service),
            _ => None,
        }
    }

    /// The parent's namespace.
    #[must_use]
    pub fn namespace_or<'a>(&'a self, route_ns: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(route_ns)
    }

    fn check(&self, errs: &mut Errors, p: &str) {
        if self.parent_kind().is_none() {
            errs.push(
                format!("{p}.kind"),
                format!(
                    "{}/{}",
                    self.group.as_deref().unwrap_or(GATEWAY_GROUP),
                    self.kind.as_deref().unwrap_or("Gateway")
                ),
                "must be a Gateway (group gateway.networking.k8s.io) or a Service (group \"\")",
            );
        }
        errs.dns_subdomain(&format!("{p}.name"), &self.name);
        if let Some(port) = self.port {
            errs.port(&format!("{p}.port"), port);
        }
    }
}

/// `backendRefs[]`: a Service and a weight.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    /// `""` (Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `Service` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Service name.
    pub name: String,
    /// Namespace (the route's when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Service port (required for Services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// Relative weight (default 1; 0 sends nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
}

impl BackendRef {
    /// The effective weight (default 1).
    #[must_use]
    pub fn weight(&self) -> u32 {
        self.weight.map_or(1, |w| u32::try_from(w).unwrap_or(0))
    }
}

/// A header match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Header name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// A route filter (identityd supports `RequestHeaderModifier` and, for HTTP, `RequestRedirect`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteFilter {
    /// Filter type.
    #[serde(rename = "type")]
    pub type_: String,
    /// For `RequestHeaderModifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    /// For `RequestRedirect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirect>,
}

/// Headers to set, add, remove.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderModifier {
    /// Replace or add.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HttpHeader>,
    /// Append.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HttpHeader>,
    /// Remove by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpHeader {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// `RequestRedirect` filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRedirect {
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// New host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Path rewrite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    /// New port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// 301 or 302 (default 302).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<i64>,
}

/// Path rewrite of a redirect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub type_: String,
    /// For `ReplaceFullPath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    /// For `ReplacePrefixMatch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

fn check_parents_hosts(errs: &mut Errors, parents: &[ParentRef], hostnames: &[String]) {
    if parents.is_empty() {
        errs.push(
            "spec.parentRefs",
            "[]",
            "at least one parentRef (a Gateway or a Service) is required",
        );
    }
    for (i, p) in parents.iter().enumerate() {
        p.check(errs, &format!("spec.parentRefs[{i}]"));
    }
    for (i, h) in hostnames.iter().enumerate() {
        check_hostname(errs, &format!("spec.hostnames[{i}]"), h);
    }
}

fn check_headers(errs: &mut Errors, p: &str, headers: &[HeaderMatch]) {
    for (k, h) in headers.iter().enumerate() {
        errs.required(&format!("{p}.headers[{k}].name"), &h.name);
        if let Some(t) = &h.type_
            && !matches!(t.as_str(), "Exact" | "RegularExpression")
        {
            errs.push(
                format!("{p}.headers[{k}].type"),
                t,
                "must be Exact or RegularExpression",
            );
        }
    }
}

fn check_backends(errs: &mut Errors, p: &str, backends: &[BackendRef], has_redirect: bool) {
    if backends.is_empty() && !has_redirect {
        errs.push(
            format!("{p}.backendRefs"),
            "[]",
            "at least one backendRef (or a RequestRedirect filter) is required",
        );
    }
    let mut sum: i64 = 0;
    for (j, b) in backends.iter().enumerate() {
        let bp = format!("{p}.backendRefs[{j}]");
        errs.dns_subdomain(&format!("{bp}.name"), &b.name);
        let kind_ok = matches!(b.group.as_deref(), None | Some("" | "core"))
            && matches!(b.kind.as_deref(), None | Some("Service"));
        if !kind_ok {
            errs.push(
                format!("{bp}.kind"),
                b.kind.as_deref().unwrap_or(""),
                "only Service backends are supported",
            );
        }
        match b.port {
            Some(port) => errs.port(&format!("{bp}.port"), port),
            None => errs.push(format!("{bp}.port"), "", "required for a Service backend"),
        }
        if let Some(w) = b.weight {
            errs.range(&format!("{bp}.weight"), w, 0, 1_000_000);
            sum = sum.saturating_add(w.max(0));
        } else {
            sum = sum.saturating_add(1);
        }
    }
    if !backends.is_empty() && sum == 0 {
        errs.push(
            format!("{p}.backendRefs"),
            "weights 0",
            "weights sum to 0: at least one backend needs a weight > 0",
        );
    }
}

fn check_filters(
    errs: &mut Errors,
    p: &str,
    filters: &[RouteFilter],
    allow_redirect: bool,
) -> bool {
    let mut has_redirect = false;
    for (j, f) in filters.iter().enumerate() {
        let fp = format!("{p}.filters[{j}]");
        match f.type_.as_str() {
            "RequestHeaderModifier" => match &f.request_header_modifier {
                None => errs.push(
                    format!("{fp}.requestHeaderModifier"),
                    "",
                    "required for type RequestHeaderModifier",
                ),
                Some(m) => {
                    for (k, h) in m.set.iter().chain(&m.add).enumerate() {
                        errs.required(
                            &format!("{fp}.requestHeaderModifier.set/add[{k}].name"),
                            &h.name,
                        );
                    }
                }
            },
            "RequestRedirect" if allow_redirect => {
                has_redirect = true;
                match &f.request_redirect {
                    None => errs.push(
                        format!("{fp}.requestRedirect"),
                        "",
                        "required for type RequestRedirect",
                    ),
                    Some(r) => {
                        let rp = format!("{fp}.requestRedirect");
                        if let Some(s) = &r.scheme
                            && !matches!(s.as_str(), "http" | "https")
                        {
                            errs.push(format!("{rp}.scheme"), s, "must be http or https");
                        }
                        if let Some(h) = &r.hostname {
                            check_hostname(errs, &format!("{rp}.hostname"), h);
                        }
                        if let Some(port) = r.port {
                            errs.port(&format!("{rp}.port"), port);
                        }
                        if let Some(c) = r.status_code
                            && !matches!(c, 301 | 302)
                        {
                            errs.push(format!("{rp}.statusCode"), c, "must be 301 or 302");
                        }
                        if let Some(pm) = &r.path {
                            let (ok, val) = match pm.type_.as_str() {
                                "ReplaceFullPath" => (true, &pm.replace_full_path),
                                "ReplacePrefixMatch" => (true, &pm.replace_prefix_match),
                                _ => (false, &None),
                            };
                            if !ok {
                                errs.push(
                                    format!("{rp}.path.type"),
                                    &pm.type_,
                                    "must be ReplaceFullPath or ReplacePrefixMatch",
                                );
                            } else if !val.as_deref().is_some_and(|v| v.starts_with('/')) {
                                errs.push(
                                    format!("{rp}.path"),
                                    val.as_deref().unwrap_or(""),
                                    "the replacement path must start with '/'",
                                );
                            }
                        }
                    }
                }
            }
            other => {
                let supported = if allow_redirect {
                    "RequestHeaderModifier, RequestRedirect"
                } else {
                    "RequestHeaderModifier"
                };
                errs.push(
                    format!("{fp}.type"),
                    other,
                    format!("unsupported filter; supported: {supported}"),
                );
            }
        }
    }
    has_redirect
}

// ---------------------------------------------------------------------------------------------
// HTTPRoute

/// HTTP routing: matches → weighted backends, attached to Gateways or Services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    /// `gateway.networking.k8s.io/v1`.
    pub api_version: String,
    /// `HTTPRoute`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Routing.
    pub spec: HttpRouteSpec,
    /// Status (written by identityd's controller: whether it accepted the object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RouteStatus>,
}

/// `HTTPRoute.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// Where the route attaches.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Host filter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// Rules (a route with none sends everything to … nothing: at least one is required).
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

/// `spec.rules[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    /// Matches (any; none = match all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpRouteMatch>,
    /// Filters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<RouteFilter>,
    /// Weighted backends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<BackendRef>,
    /// Timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<HttpRouteTimeouts>,
}

/// `spec.rules[].matches[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    /// Path match (default `PathPrefix /`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathMatch>,
    /// Header matches (all must match).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// HTTP method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// A path match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpPathMatch {
    /// `Exact`, `PathPrefix` (default) or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// The path (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `spec.rules[].timeouts`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteTimeouts {
    /// Whole-request timeout (duration string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// Per backend request timeout (duration string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<String>,
}

impl HttpRoute {
    pub(crate) fn check(&self, errs: &mut Errors) {
        check_parents_hosts(errs, &self.spec.parent_refs, &self.spec.hostnames);
        if self.spec.rules.is_empty() {
            errs.push("spec.rules", "[]", "at least one rule is required");
        }
        for (i, r) in self.spec.rules.iter().enumerate() {
            let p = format!("spec.rules[{i}]");
            for (j, m) in r.matches.iter().enumerate() {
                let mp = format!("{p}.matches[{j}]");
                if let Some(pm) = &m.path {
                    let t = pm.type_.as_deref().unwrap_or("PathPrefix");
                    if !matches!(t, "Exact" | "PathPrefix" | "RegularExpression") {
                        errs.push(
                            format!("{mp}.path.type"),
                            t,
                            "must be one of Exact, PathPrefix, RegularExpression",
                        );
                    }
                    if let Some(v) = &pm.value
                        && t != "RegularExpression"
                        && !v.starts_with('/')
                    {
                        errs.push(format!("{mp}.path.value"), v, "must start with '/'");
                    }
                }
                check_headers(errs, &mp, &m.headers);
                if let Some(method) = &m.method
                    && !HTTP_METHODS.contains(&method.as_str())
                {
                    errs.push(
                        format!("{mp}.method"),
                        method,
                        format!("must be one of {}", HTTP_METHODS.join(", ")),
                    );
                }
            }
            let has_redirect = check_filters(errs, &p, &r.filters, true);
            check_backends(errs, &p, &r.backend_refs, has_redirect);
            if let Some(t) = &r.timeouts {
                if let Some(v) = &t.request {
                    errs.duration(&format!("{p}.timeouts.request"), v);
                }
                if let Some(v) = &t.backend_request {
                    errs.duration(&format!("{p}.timeouts.backendRequest"), v);
                }
            }
        }
    }

    /// Whether any parentRef points at `kind` `namespace/name`.
    #[must_use]
    pub fn attaches_to(&self, kind: ParentKind, namespace: &str, name: &str) -> bool {
        let own = self.metadata.namespace_or_default();
        self.spec.parent_refs.iter().any(|p| {
            p.parent_kind() == Some(kind) && p.name == name && p.namespace_or(own) == namespace
        })
    }
}

// ---------------------------------------------------------------------------------------------
// GRPCRoute

/// gRPC routing: service/method matches → weighted backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRoute {
    /// `gateway.networking.k8s.io/v1`.
    pub api_version: String,
    /// `GRPCRoute`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// Routing.
    pub spec: GrpcRouteSpec,
    /// Status (written by identityd's controller: whether it accepted the object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RouteStatus>,
}

/// `GRPCRoute.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    /// Where the route attaches.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Host filter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// Rules.
    #[serde(default)]
    pub rules: Vec<GrpcRouteRule>,
}

/// `spec.rules[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteRule {
    /// Matches (any; none = match all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<GrpcRouteMatch>,
    /// Filters (`RequestHeaderModifier`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<RouteFilter>,
    /// Weighted backends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<BackendRef>,
}

/// `spec.rules[].matches[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteMatch {
    /// Service/method match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<GrpcMethodMatch>,
    /// Header (metadata) matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

/// A gRPC service/method match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcMethodMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// Fully qualified service (`helloworld.Greeter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Method (`SayHello`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

impl GrpcRoute {
    pub(crate) fn check(&self, errs: &mut Errors) {
        check_parents_hosts(errs, &self.spec.parent_refs, &self.spec.hostnames);
        if self.spec.rules.is_empty() {
            errs.push("spec.rules", "[]", "at least one rule is required");
        }
        for (i, r) in self.spec.rules.iter().enumerate() {
            let p = format!("spec.rules[{i}]");
            for (j, m) in r.matches.iter().enumerate() {
                let mp = format!("{p}.matches[{j}]");
                if let Some(mm) = &m.method {
                    let t = mm.type_.as_deref().unwrap_or("Exact");
                    if !matches!(t, "Exact" | "RegularExpression") {
                        errs.push(
                            format!("{mp}.method.type"),
                            t,
                            "must be Exact or RegularExpression",
                        );
                    }
                    if mm.service.is_none() && mm.method.is_none() {
                        errs.push(
                            format!("{mp}.method"),
                            "{}",
                            "service or method (or both) is required",
                        );
                    }
                    if t == "Exact" {
                        for (f, v) in [("service", &mm.service), ("method", &mm.method)] {
                            if let Some(v) = v
                                && (v.is_empty() || v.contains('/'))
                            {
                                errs.push(
                                    format!("{mp}.method.{f}"),
                                    v,
                                    "must be non-empty and contain no '/'",
                                );
                            }
                        }
                    }
                }
                check_headers(errs, &mp, &m.headers);
            }
            check_filters(errs, &p, &r.filters, false);
            check_backends(errs, &p, &r.backend_refs, false);
        }
    }

    /// Whether any parentRef points at `kind` `namespace/name`.
    #[must_use]
    pub fn attaches_to(&self, kind: ParentKind, namespace: &str, name: &str) -> bool {
        let own = self.metadata.namespace_or_default();
        self.spec.parent_refs.iter().any(|p| {
            p.parent_kind() == Some(kind) && p.name == name && p.namespace_or(own) == namespace
        })
    }
}
