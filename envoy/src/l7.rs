//! Plain L7 traffic-management inputs (no Kubernetes types): ingress listeners, HTTP/gRPC
//! routes attached to a listener (ingress) or to a service (mesh, GAMMA style), and traffic
//! policies (retries, timeouts, circuit breaking, outlier detection, local rate limits).
//!
//! The daemon maps Gateway API `Gateway`/`HTTPRoute`/`GRPCRoute`, `Ingress` and
//! `TrafficPolicy` objects to these structs; [`validate`] lists what is wrong with them, and
//! [`crate::translate::translate_checked`] refuses to translate a config with problems.
//!
//! Durations are signed milliseconds (`*_ms`) so that a negative value coming from a user's
//! object is reported by [`validate`] instead of being silently clamped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;

use crate::mesh::{MeshConfig, SvidPem};

/// All L7 inputs of one node's Envoy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct L7Config {
    /// Ingress listeners (Gateway listeners, the Ingress controller's ports).
    pub listeners: Vec<IngressListener>,
    /// Routes, attached to listeners and/or services.
    pub routes: Vec<HttpRoute>,
    /// Traffic policies.
    pub policies: Vec<TrafficPolicy>,
    /// Certificates served over SDS by name ([`CertSource::Sds`]): a CA-issued certificate for
    /// a listener's hostnames, or a Secret's `tls.crt`/`tls.key`. The `id` is the secret name.
    pub tls_secrets: Vec<SvidPem>,
    /// The SPIFFE ID the ingress presents to backends in mTLS namespaces (its SVID must be in
    /// [`MeshConfig::svids`]). Without it, backends in strict namespaces are refused by
    /// [`validate`] and permissive ones are reached in plaintext.
    pub gateway_id: Option<String>,
}

/// Which HTTP versions an ingress listener speaks to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpVersions {
    /// HTTP/1.1 and HTTP/2 (h2c with prior knowledge in plaintext, ALPN over TLS).
    #[default]
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only (gRPC).
    Http2,
}

/// An ingress listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressListener {
    /// Unique name (`namespace/gateway/listener`); routes attach by this name.
    pub name: String,
    /// Where Envoy binds (lab: `:8080`/`:8443`).
    pub address: SocketAddr,
    /// HTTP versions accepted from clients.
    pub http: HttpVersions,
    /// TLS termination; `None` = plaintext.
    pub tls: Option<ListenerTls>,
}

impl Default for IngressListener {
    fn default() -> Self {
        Self {
            name: String::new(),
            address: SocketAddr::from(([0, 0, 0, 0], 8080)),
            http: HttpVersions::Auto,
            tls: None,
        }
    }
}

/// TLS termination on an ingress listener: one certificate per set of hostnames, chosen by
/// SNI; the first certificate also serves clients that send no (or an unknown) SNI.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListenerTls {
    /// Certificates.
    pub certificates: Vec<IngressCertificate>,
}

/// A certificate for some hostnames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressCertificate {
    /// SNI names it serves (exact, or `*.example.com`); empty = any.
    pub hostnames: Vec<String>,
    /// Where the chain and key come from.
    pub source: CertSource,
}

/// Certificate material for a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// Inline in the listener (chain + key PEM; `id` is only a label).
    Inline(SvidPem),
    /// An SDS secret by name, from [`L7Config::tls_secrets`] (rotated without touching the
    /// listener).
    Sds(String),
}

/// HTTP or gRPC route (gRPC backends are reached over HTTP/2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum RouteKind {
    /// `HTTPRoute` / `Ingress`.
    #[default]
    Http,
    /// `GRPCRoute`: upstream HTTP/2.
    Grpc,
}

/// What a route attaches to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteParent {
    /// An ingress listener by [`IngressListener::name`].
    Listener(String),
    /// A service (mesh routing): the route replaces the service's default outbound route on
    /// every local workload's Envoy.
    Service {
        /// Service name.
        name: String,
        /// Service namespace.
        namespace: String,
    },
}

/// An `HTTPRoute`, `GRPCRoute` or `Ingress` rule set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpRoute {
    /// Name.
    pub name: String,
    /// Namespace (also the default namespace of backends).
    pub namespace: String,
    /// HTTP or gRPC.
    pub kind: RouteKind,
    /// Listeners and/or services it attaches to.
    pub parents: Vec<RouteParent>,
    /// Host names it serves (exact or `*.suffix`); empty = all.
    pub hostnames: Vec<String>,
    /// Rules, in order.
    pub rules: Vec<RouteRule>,
}

impl HttpRoute {
    /// `namespace/name`.
    #[must_use]
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One rule: any of `matches` selects it; it forwards to `backends` (weighted) or redirects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteRule {
    /// Matches (any); empty = everything (prefix `/`).
    pub matches: Vec<RouteMatch>,
    /// Weighted backends.
    pub backends: Vec<WeightedBackend>,
    /// Request header changes.
    pub request_headers: HeaderModifier,
    /// Redirect instead of forwarding.
    pub redirect: Option<Redirect>,
    /// Request timeout of this rule (overrides a policy's timeout; 0 = none).
    pub timeout_ms: Option<i64>,
}

/// A request match: all set conditions must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteMatch {
    /// Path condition; `None` = prefix `/`.
    pub path: Option<PathMatch>,
    /// Header conditions.
    pub headers: Vec<HeaderMatch>,
    /// HTTP method (`GET`, …).
    pub method: Option<String>,
}

impl RouteMatch {
    /// A gRPC method match: `/service/method`, or every method of `service` when `method`
    /// is `None`.
    #[must_use]
    pub fn grpc(service: &str, method: Option<&str>) -> Self {
        Self {
            path: Some(match method {
                Some(m) => PathMatch::Exact(format!("/{service}/{m}")),
                None => PathMatch::Prefix(format!("/{service}/")),
            }),
            ..Self::default()
        }
    }
}

/// A path condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// Exact path.
    Exact(String),
    /// Path prefix (on segment boundaries is the caller's choice; Envoy matches characters).
    Prefix(String),
    /// RE2 regular expression over the whole path.
    Regex(String),
}

/// A header condition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderMatch {
    /// Header name.
    pub name: String,
    /// Value (exact, or an RE2 regex when `regex`).
    pub value: String,
    /// Treat `value` as a regular expression.
    pub regex: bool,
}

/// A weighted backend: a service port.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WeightedBackend {
    /// Service name.
    pub service: String,
    /// Service namespace.
    pub namespace: String,
    /// Service port ([`crate::mesh::Service::port`]).
    pub port: u16,
    /// Relative weight (Gateway API default 1).
    pub weight: u32,
}

/// Request header changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderModifier {
    /// Set (overwrite) `(name, value)`.
    pub set: Vec<(String, String)>,
    /// Add (append) `(name, value)`.
    pub add: Vec<(String, String)>,
    /// Remove by name.
    pub remove: Vec<String>,
}

impl HeaderModifier {
    /// True when it changes nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// A redirect response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Redirect {
    /// `http` or `https`.
    pub scheme: Option<String>,
    /// New host.
    pub host: Option<String>,
    /// Replace the full path.
    pub path: Option<String>,
    /// Replace the matched prefix.
    pub prefix: Option<String>,
    /// New port.
    pub port: Option<u16>,
    /// 301, 302 (default), 303, 307 or 308.
    pub status_code: Option<u16>,
}

/// What a traffic policy applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PolicyTarget {
    /// A service: its clusters (circuit breaker, outlier detection) and the routes whose
    /// backends are only this service (retries, timeout, rate limit).
    Service {
        /// Service name.
        name: String,
        /// Service namespace.
        namespace: String,
    },
    /// A route (`HTTPRoute`/`GRPCRoute`): every rule of it (retries, timeout, rate limit).
    Route {
        /// Route name.
        name: String,
        /// Route namespace.
        namespace: String,
    },
    /// An ingress listener: a rate limit over the whole listener, and retries/timeout as the
    /// fallback for its routes.
    Listener(String),
}

impl fmt::Display for PolicyTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Service { name, namespace } => write!(f, "Service {namespace}/{name}"),
            Self::Route { name, namespace } => write!(f, "route {namespace}/{name}"),
            Self::Listener(n) => write!(f, "listener {n}"),
        }
    }
}

/// A `TrafficPolicy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrafficPolicy {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Target.
    pub target: PolicyTarget,
    /// Retries.
    pub retries: Option<Retries>,
    /// Request timeout (0 = none; Envoy's default is 15 s).
    pub timeout_ms: Option<i64>,
    /// Circuit breaker (service targets).
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Outlier detection (service targets).
    pub outlier_detection: Option<OutlierDetection>,
    /// Local rate limit (429 over budget).
    pub local_rate_limit: Option<LocalRateLimit>,
}

impl Default for TrafficPolicy {
    fn default() -> Self {
        Self {
            name: String::new(),
            namespace: String::new(),
            target: PolicyTarget::Listener(String::new()),
            retries: None,
            timeout_ms: None,
            circuit_breaker: None,
            outlier_detection: None,
            local_rate_limit: None,
        }
    }
}

impl TrafficPolicy {
    /// `namespace/name`.
    #[must_use]
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Envoy `retry_on` conditions accepted in [`Retries::retry_on`].
pub const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Retries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Retries {
    /// Number of retries after the first attempt.
    pub attempts: u32,
    /// Timeout of each attempt.
    pub per_try_timeout_ms: Option<i64>,
    /// Conditions ([`RETRY_ON`]); empty = `5xx,reset,connect-failure`.
    pub retry_on: Vec<String>,
    /// Backoff base interval.
    pub backoff_base_ms: Option<i64>,
    /// Backoff maximum interval (default 10 × base).
    pub backoff_max_ms: Option<i64>,
}

/// Circuit breaker thresholds (Envoy's defaults are 1024 each when unset).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CircuitBreaker {
    /// Max upstream connections.
    pub max_connections: Option<u32>,
    /// Max requests waiting for a connection.
    pub max_pending_requests: Option<u32>,
    /// Max requests in flight.
    pub max_requests: Option<u32>,
    /// Max retries in flight.
    pub max_retries: Option<u32>,
}

/// Outlier detection (passive health checking).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutlierDetection {
    /// Consecutive 5xx before ejection (Envoy default 5).
    pub consecutive_5xx: Option<u32>,
    /// Base ejection time (Envoy default 30 s).
    pub base_ejection_time_ms: Option<i64>,
    /// Max % of hosts ejected (Envoy default 10; 100 lets a single bad host of two go).
    pub max_ejection_percent: Option<u32>,
    /// Analysis interval (Envoy default 10 s).
    pub interval_ms: Option<i64>,
}

/// A token bucket: `tokens` requests, refilled every `fill_interval_ms`; over budget → 429.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocalRateLimit {
    /// Bucket size and refill amount.
    pub tokens: u32,
    /// Refill interval.
    pub fill_interval_ms: i64,
}

/// The L7 object a [`Problem`] is about, typed so a caller can map it back to its own
/// objects without parsing [`Problem::object`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Subject {
    /// An ingress listener, by [`IngressListener::name`].
    Listener(String),
    /// A route.
    Route {
        /// HTTP or gRPC.
        kind: RouteKind,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// A traffic policy.
    Policy {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
}

/// One thing wrong with an L7 object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The object, typed.
    pub subject: Subject,
    /// `HTTPRoute ns/name`, `TrafficPolicy ns/name`, `listener name` (for messages).
    pub object: String,
    /// The field path (`rules[0].backends`).
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.message)
    }
}

struct Report<'a> {
    subject: Subject,
    object: String,
    out: &'a mut Vec<Problem>,
}

impl Report<'_> {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.out.push(Problem {
            subject: self.subject.clone(),
            object: self.object.clone(),
            field: field.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, field: &str, v: Option<i64>) {
        if let Some(ms) = v
            && ms < 0
        {
            self.add(field, format!("{ms}ms: a duration must not be negative"));
        }
    }
}

/// Every problem of the L7 part of `mesh`; empty when it can be translated. Pure.
#[must_use]
pub fn validate(mesh: &MeshConfig) -> Vec<Problem> {
    let l7 = &mesh.l7;
    let mut out = Vec::new();
    let services: BTreeSet<(&str, &str, u16)> = mesh
        .services
        .iter()
        .map(|s| (s.name.as_str(), s.namespace.as_str(), s.port))
        .collect();
    let has_service = |name: &str, ns: &str| {
        mesh.services
            .iter()
            .any(|s| s.name == name && s.namespace == ns)
    };
    let secrets: BTreeSet<&str> = l7
        .tls_secrets
        .iter()
        .chain(&mesh.svids)
        .map(|s| s.id.as_str())
        .collect();

    // Listeners.
    let mut names = BTreeSet::new();
    let mut addrs = BTreeMap::new();
    for l in &l7.listeners {
        let mut r = Report {
            subject: Subject::Listener(l.name.clone()),
            object: format!("listener {}", l.name),
            out: &mut out,
        };
        if l.name.is_empty() {
            r.add("name", "must not be empty");
        }
        if [crate::translate::INBOUND, crate::translate::OUTBOUND].contains(&l.name.as_str()) {
            r.add(
                "name",
                format!(
                    "{:?} is the name of a mesh listener; choose another",
                    l.name
                ),
            );
        }
        if !names.insert(l.name.as_str()) {
            r.add("name", "two listeners have this name");
        }
        if let Some(other) = addrs.insert(l.address, l.name.as_str()) {
            r.add(
                "address",
                format!("{} is also the address of listener {other}", l.address),
            );
        }
        if let Some(tls) = &l.tls {
            if tls.certificates.is_empty() {
                r.add("tls.certificates", "TLS needs at least one certificate");
            }
            for (i, c) in tls.certificates.iter().enumerate() {
                match &c.source {
                    CertSource::Inline(p) => {
                        if !p.chain_pem.contains("BEGIN CERTIFICATE") {
                            r.add(
                                format!("tls.certificates[{i}].chain"),
                                "expected a PEM certificate chain",
                            );
                        }
                        if !p.key_pem.contains("PRIVATE KEY") {
                            r.add(
                                format!("tls.certificates[{i}].key"),
                                "expected a PEM private key",
                            );
                        }
                    }
                    CertSource::Sds(name) => {
                        if !secrets.contains(name.as_str()) {
                            r.add(
                                format!("tls.certificates[{i}].secret"),
                                format!("secret {name:?} is not among the TLS secrets"),
                            );
                        }
                    }
                }
            }
        }
    }

    // Routes.
    for route in &l7.routes {
        let mut r = Report {
            subject: Subject::Route {
                kind: route.kind,
                namespace: route.namespace.clone(),
                name: route.name.clone(),
            },
            object: format!(
                "{} {}",
                match route.kind {
                    RouteKind::Http => "HTTPRoute",
                    RouteKind::Grpc => "GRPCRoute",
                },
                route.key()
            ),
            out: &mut out,
        };
        if route.parents.is_empty() {
            r.add("parents", "the route attaches to no listener or service");
        }
        for (i, p) in route.parents.iter().enumerate() {
            match p {
                RouteParent::Listener(n) => {
                    if !names.contains(n.as_str()) {
                        r.add(format!("parents[{i}]"), format!("unknown listener {n:?}"));
                    }
                    if route.kind == RouteKind::Grpc
                        && l7
                            .listeners
                            .iter()
                            .any(|l| &l.name == n && l.http == HttpVersions::Http1)
                    {
                        r.add(
                            format!("parents[{i}]"),
                            format!("listener {n:?} speaks only HTTP/1.1; gRPC needs HTTP/2"),
                        );
                    }
                }
                RouteParent::Service { name, namespace } => {
                    if !has_service(name, namespace) {
                        r.add(
                            format!("parents[{i}]"),
                            format!("unknown service {namespace}/{name}"),
                        );
                    }
                }
            }
        }
        if route.rules.is_empty() {
            r.add("rules", "the route has no rules");
        }
        for (i, rule) in route.rules.iter().enumerate() {
            let f = format!("rules[{i}]");
            for (j, m) in rule.matches.iter().enumerate() {
                match &m.path {
                    Some(PathMatch::Exact(p) | PathMatch::Prefix(p)) if !p.starts_with('/') => {
                        r.add(
                            format!("{f}.matches[{j}].path"),
                            format!("{p:?}: a path must start with '/'"),
                        );
                    }
                    Some(PathMatch::Regex(p)) if p.is_empty() => {
                        r.add(format!("{f}.matches[{j}].path"), "empty regular expression");
                    }
                    _ => {}
                }
                for (k, h) in m.headers.iter().enumerate() {
                    if h.name.is_empty() {
                        r.add(format!("{f}.matches[{j}].headers[{k}].name"), "empty name");
                    }
                }
                if let Some(method) = &m.method
                    && (method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()))
                {
                    r.add(
                        format!("{f}.matches[{j}].method"),
                        format!("{method:?}: expected an HTTP method like GET"),
                    );
                }
            }
            r.duration(&format!("{f}.timeout"), rule.timeout_ms);
            match (&rule.redirect, rule.backends.is_empty()) {
                (Some(_), false) => r.add(
                    f.clone(),
                    "a rule either redirects or forwards to backends, not both",
                ),
                (None, true) => r.add(format!("{f}.backends"), "no backends and no redirect"),
                _ => {}
            }
            if let Some(red) = &rule.redirect {
                if let Some(code) = red.status_code
                    && ![301, 302, 303, 307, 308].contains(&code)
                {
                    r.add(
                        format!("{f}.redirect.statusCode"),
                        format!("{code}: expected 301, 302, 303, 307 or 308"),
                    );
                }
                if let Some(s) = &red.scheme
                    && s != "http"
                    && s != "https"
                {
                    r.add(
                        format!("{f}.redirect.scheme"),
                        format!("{s:?}: expected http or https"),
                    );
                }
                if red.path.is_some() && red.prefix.is_some() {
                    r.add(
                        format!("{f}.redirect.path"),
                        "replace the full path or the prefix, not both",
                    );
                }
            }
            let gateway_svid = l7
                .gateway_id
                .as_deref()
                .is_some_and(|id| mesh.svids.iter().any(|s| s.id == id));
            let on_listener = route
                .parents
                .iter()
                .any(|p| matches!(p, RouteParent::Listener(_)));
            if on_listener && !gateway_svid {
                for (j, b) in rule.backends.iter().enumerate() {
                    if mesh.services.iter().any(|s| {
                        s.name == b.service
                            && s.namespace == b.namespace
                            && s.mtls == crate::mesh::MtlsMode::Strict
                    }) {
                        r.add(
                            format!("{f}.backends[{j}]"),
                            format!(
                                "{}/{} is in a strict mTLS namespace: the ingress needs \
                                 gateway_id with an SVID to reach it",
                                b.namespace, b.service
                            ),
                        );
                    }
                }
            }
            if !rule.backends.is_empty() {
                let total: u64 = rule.backends.iter().map(|b| u64::from(b.weight)).sum();
                if total == 0 {
                    r.add(
                        format!("{f}.backends"),
                        "weights sum to 0: at least one backend needs a weight above 0",
                    );
                }
                for (j, b) in rule.backends.iter().enumerate() {
                    if !services.contains(&(b.service.as_str(), b.namespace.as_str(), b.port)) {
                        r.add(
                            format!("{f}.backends[{j}]"),
                            format!(
                                "unknown backend {}/{} port {}",
                                b.namespace, b.service, b.port
                            ),
                        );
                    }
                }
            }
        }
    }

    // Policies.
    let mut targets: BTreeMap<&PolicyTarget, String> = BTreeMap::new();
    for p in &l7.policies {
        let mut r = Report {
            subject: Subject::Policy {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
            },
            object: format!("TrafficPolicy {}", p.key()),
            out: &mut out,
        };
        if let Some(other) = targets.insert(&p.target, p.key()) {
            r.add(
                "targetRef",
                format!(
                    "{} is already the target of TrafficPolicy {other}: one policy per target",
                    p.target
                ),
            );
        }
        match &p.target {
            PolicyTarget::Service { name, namespace } => {
                if !has_service(name, namespace) {
                    r.add("targetRef", format!("unknown service {namespace}/{name}"));
                }
            }
            PolicyTarget::Route { name, namespace } => {
                if !l7
                    .routes
                    .iter()
                    .any(|x| &x.name == name && &x.namespace == namespace)
                {
                    r.add("targetRef", format!("unknown route {namespace}/{name}"));
                }
            }
            PolicyTarget::Listener(n) => {
                if !names.contains(n.as_str()) {
                    r.add("targetRef", format!("unknown listener {n:?}"));
                }
            }
        }
        if !matches!(p.target, PolicyTarget::Service { .. }) {
            if p.circuit_breaker.is_some() {
                r.add(
                    "circuitBreaker",
                    format!(
                        "applies to a Service's backends; {} is not a Service",
                        p.target
                    ),
                );
            }
            if p.outlier_detection.is_some() {
                r.add(
                    "outlierDetection",
                    format!(
                        "applies to a Service's backends; {} is not a Service",
                        p.target
                    ),
                );
            }
        }
        r.duration("timeout", p.timeout_ms);
        if let Some(rt) = &p.retries {
            r.duration("retries.perTryTimeout", rt.per_try_timeout_ms);
            r.duration("retries.backoff.baseInterval", rt.backoff_base_ms);
            r.duration("retries.backoff.maxInterval", rt.backoff_max_ms);
            if rt.backoff_base_ms == Some(0) {
                r.add("retries.backoff.baseInterval", "0ms: must be above 0");
            }
            if let (Some(b), Some(m)) = (rt.backoff_base_ms, rt.backoff_max_ms)
                && m < b
            {
                r.add(
                    "retries.backoff.maxInterval",
                    format!("{m}ms is below the base interval {b}ms"),
                );
            }
            if rt.backoff_max_ms.is_some() && rt.backoff_base_ms.is_none() {
                r.add("retries.backoff.baseInterval", "required with maxInterval");
            }
            for (i, c) in rt.retry_on.iter().enumerate() {
                if !RETRY_ON.contains(&c.as_str()) {
                    r.add(
                        format!("retries.retryOn[{i}]"),
                        format!("{c:?}: expected one of {}", RETRY_ON.join(", ")),
                    );
                }
            }
        }
        if let Some(o) = &p.outlier_detection {
            r.duration("outlierDetection.baseEjectionTime", o.base_ejection_time_ms);
            r.duration("outlierDetection.interval", o.interval_ms);
            if o.interval_ms == Some(0) {
                r.add("outlierDetection.interval", "0ms: must be above 0");
            }
            if let Some(pct) = o.max_ejection_percent
                && pct > 100
            {
                r.add(
                    "outlierDetection.maxEjectionPercent",
                    format!("{pct}: expected 0..=100"),
                );
            }
        }
        if let Some(rl) = &p.local_rate_limit {
            if rl.tokens == 0 {
                r.add("localRateLimit.tokens", "0: expected at least 1");
            }
            if rl.fill_interval_ms <= 0 {
                r.add(
                    "localRateLimit.fillInterval",
                    format!("{}ms: expected a positive duration", rl.fill_interval_ms),
                );
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests;
