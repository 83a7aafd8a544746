//! L7 part of the translation: routes (matches, weighted clusters, header changes, redirects),
//! traffic policies (route retry/timeout, cluster circuit breakers and outlier detection, the
//! local rate limit filter) and ingress listeners (HTTP/1.1 + HTTP/2, TLS by SNI).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection as EnvoyOutlier, circuit_breakers,
};
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, Http2ProtocolOptions, Locality, RoutingPriority,
    RuntimeFractionalPercent, header_value_option,
};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::envoy::config::listener::v3::{
    FilterChain, FilterChainMatch, Listener, ListenerFilter, listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, RedirectAction, RetryPolicy, Route, RouteAction, RouteConfiguration,
    RouteMatch as EnvoyMatch, VirtualHost, WeightedCluster, header_matcher, redirect_action,
    retry_policy, route, route_action, route_match, weighted_cluster,
};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit as RateLimitFilter;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, TlsCertificate,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, TokenBucket, fractional_percent};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use envoy_types::util::pack_any;

use super::{
    ads, dur, eds_cluster, exact, hcm_filter, lb_endpoint_of, router_filter, socket, tls_socket,
};
use crate::l7::{
    CertSource, HttpRoute, HttpVersions, IngressListener, LocalRateLimit, PathMatch, PolicyTarget,
    RouteKind, RouteParent, RouteRule, TrafficPolicy, WeightedBackend,
};
use crate::mesh::{MeshConfig, Service};
use crate::server::{Snapshot, type_url};

/// Name of Envoy's local rate limit HTTP filter (also the `typed_per_filter_config` key).
pub const RATE_LIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";

/// Name of an ingress listener's route configuration.
#[must_use]
pub fn ingress_route(listener: &str) -> String {
    format!("ingress|{listener}")
}

/// Ingress cluster of a service port (plaintext to the endpoints; `|h2` for gRPC backends).
#[must_use]
pub fn ingress_cluster(s: &Service, kind: RouteKind) -> String {
    match kind {
        RouteKind::Http => format!("ingress|{}|{}", s.port, s.key()),
        RouteKind::Grpc => format!("ingress|{}|{}|h2", s.port, s.key()),
    }
}

/// Policies indexed by target.
pub(super) struct Policies<'a> {
    by_target: BTreeMap<&'a PolicyTarget, &'a TrafficPolicy>,
    /// Some policy has a local rate limit (the filter is then installed).
    pub any_rate_limit: bool,
}

impl<'a> Policies<'a> {
    pub(super) fn new(mesh: &'a MeshConfig) -> Self {
        let mut by_target = BTreeMap::new();
        for p in &mesh.l7.policies {
            // The first policy on a target wins; validation reports the second.
            by_target.entry(&p.target).or_insert(p);
        }
        Self {
            any_rate_limit: mesh
                .l7
                .policies
                .iter()
                .any(|p| p.local_rate_limit.is_some()),
            by_target,
        }
    }

    fn service(&self, name: &str, namespace: &str) -> Option<&'a TrafficPolicy> {
        self.by_target
            .get(&PolicyTarget::Service {
                name: name.to_owned(),
                namespace: namespace.to_owned(),
            })
            .copied()
    }

    fn route(&self, r: &HttpRoute) -> Option<&'a TrafficPolicy> {
        self.by_target
            .get(&PolicyTarget::Route {
                name: r.name.clone(),
                namespace: r.namespace.clone(),
            })
            .copied()
    }

    fn listener(&self, name: &str) -> Option<&'a TrafficPolicy> {
        self.by_target
            .get(&PolicyTarget::Listener(name.to_owned()))
            .copied()
    }

    /// The policy that governs a rule: the route's own, else the one of the Service the caller
    /// addressed (`frontend`: the mesh route's parent Service), else the one of its only backend
    /// service, else the listener's.
    fn for_rule(
        &self,
        r: &HttpRoute,
        rule: &RouteRule,
        frontend: Option<(&str, &str)>,
        listener: Option<&str>,
    ) -> Option<&'a TrafficPolicy> {
        if let Some(p) = self.route(r) {
            return Some(p);
        }
        if let Some((n, ns)) = frontend
            && let Some(p) = self.service(n, ns)
        {
            return Some(p);
        }
        let services: BTreeSet<(&str, &str)> = rule
            .backends
            .iter()
            .filter(|b| b.weight > 0)
            .map(|b| (b.service.as_str(), b.namespace.as_str()))
            .collect();
        if services.len() == 1
            && let Some((n, ns)) = services.first()
            && let Some(p) = self.service(n, ns)
        {
            return Some(p);
        }
        listener.and_then(|l| self.listener(l))
    }

    /// Circuit breaker and outlier detection of `s` onto its cluster `c`.
    pub(super) fn apply_cluster(&self, s: &Service, c: &mut Cluster) {
        let Some(p) = self.service(&s.name, &s.namespace) else {
            return;
        };
        if let Some(cb) = &p.circuit_breaker {
            let u = |v: Option<u32>| v.map(|value| UInt32Value { value });
            c.circuit_breakers = Some(CircuitBreakers {
                thresholds: vec![circuit_breakers::Thresholds {
                    priority: RoutingPriority::Default as i32,
                    max_connections: u(cb.max_connections),
                    max_pending_requests: u(cb.max_pending_requests),
                    max_requests: u(cb.max_requests),
                    max_retries: u(cb.max_retries),
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        if let Some(o) = &p.outlier_detection {
            let u = |v: Option<u32>| v.map(|value| UInt32Value { value });
            c.outlier_detection = Some(EnvoyOutlier {
                consecutive_5xx: u(o.consecutive_5xx),
                base_ejection_time: o.base_ejection_time_ms.map(ms),
                max_ejection_percent: u(o.max_ejection_percent),
                interval: o.interval_ms.map(ms),
                ..Default::default()
            });
        }
    }
}

fn ms(v: i64) -> envoy_types::pb::google::protobuf::Duration {
    dur(u64::try_from(v).unwrap_or(0))
}

fn percent_100(key: &str) -> RuntimeFractionalPercent {
    RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 100,
            denominator: fractional_percent::DenominatorType::Hundred as i32,
        }),
        runtime_key: key.to_owned(),
    }
}

fn rate_limit_config(stat_prefix: &str, rl: Option<&LocalRateLimit>) -> RateLimitFilter {
    match rl {
        None => RateLimitFilter {
            stat_prefix: stat_prefix.to_owned(),
            ..Default::default()
        },
        Some(rl) => RateLimitFilter {
            stat_prefix: stat_prefix.to_owned(),
            token_bucket: Some(TokenBucket {
                max_tokens: rl.tokens,
                tokens_per_fill: Some(UInt32Value { value: rl.tokens }),
                fill_interval: Some(ms(rl.fill_interval_ms)),
            }),
            filter_enabled: Some(percent_100("local_rate_limit_enabled")),
            filter_enforced: Some(percent_100("local_rate_limit_enforced")),
            ..Default::default()
        },
    }
}

/// The local rate limit HTTP filter: a bucket for the whole listener when `listener_limit`,
/// else inactive except on routes with their own `typed_per_filter_config`.
pub(super) fn rate_limit_filter(
    stat_prefix: &str,
    listener_limit: Option<&LocalRateLimit>,
) -> HttpFilter {
    HttpFilter {
        name: RATE_LIMIT_FILTER.to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
            rate_limit_config(stat_prefix, listener_limit),
        ))),
        ..Default::default()
    }
}

fn header_matcher(name: &str, value: &str, regex: bool) -> HeaderMatcher {
    HeaderMatcher {
        name: name.to_owned(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
            if regex {
                envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher {
                    match_pattern: Some(
                        envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern::SafeRegex(
                            RegexMatcher {
                                regex: value.to_owned(),
                                ..Default::default()
                            },
                        ),
                    ),
                    ..Default::default()
                }
            } else {
                exact(value)
            },
        )),
        ..Default::default()
    }
}

fn envoy_matches(rule: &RouteRule) -> Vec<(EnvoyMatch, (u8, i64, u8, i64))> {
    let all = [crate::l7::RouteMatch::default()];
    let matches = if rule.matches.is_empty() {
        &all[..]
    } else {
        &rule.matches[..]
    };
    matches
        .iter()
        .map(|m| {
            let (spec, class, len) = match &m.path {
                None => (route_match::PathSpecifier::Prefix("/".to_owned()), 2, 1),
                Some(PathMatch::Exact(p)) => (route_match::PathSpecifier::Path(p.clone()), 0, 0),
                Some(PathMatch::Regex(p)) => (
                    route_match::PathSpecifier::SafeRegex(RegexMatcher {
                        regex: p.clone(),
                        ..Default::default()
                    }),
                    1,
                    0,
                ),
                Some(PathMatch::Prefix(p)) => (
                    route_match::PathSpecifier::Prefix(p.clone()),
                    2,
                    i64::try_from(p.len()).unwrap_or(i64::MAX),
                ),
            };
            let mut headers: Vec<HeaderMatcher> = m
                .headers
                .iter()
                .map(|h| header_matcher(&h.name, &h.value, h.regex))
                .collect();
            if let Some(method) = &m.method {
                headers.push(header_matcher(
                    ":method",
                    &method.to_ascii_uppercase(),
                    false,
                ));
            }
            // Gateway API precedence: exact path, then longest prefix, then method, then most
            // header matches (regex paths between exact and prefix).
            let key = (
                class,
                -len,
                u8::from(m.method.is_none()),
                -i64::try_from(m.headers.len()).unwrap_or(0),
            );
            (
                EnvoyMatch {
                    path_specifier: Some(spec),
                    headers,
                    ..Default::default()
                },
                key,
            )
        })
        .collect()
}

fn retry_policy(p: &TrafficPolicy, kind: RouteKind) -> Option<RetryPolicy> {
    let r = p.retries.as_ref()?;
    let retry_on = if r.retry_on.is_empty() {
        match kind {
            RouteKind::Http => "5xx,reset,connect-failure".to_owned(),
            RouteKind::Grpc => "5xx,reset,connect-failure,unavailable".to_owned(),
        }
    } else {
        r.retry_on.join(",")
    };
    Some(RetryPolicy {
        retry_on,
        num_retries: Some(UInt32Value { value: r.attempts }),
        per_try_timeout: r.per_try_timeout_ms.map(ms),
        retry_back_off: r.backoff_base_ms.map(|b| retry_policy::RetryBackOff {
            base_interval: Some(ms(b)),
            max_interval: r.backoff_max_ms.map(ms),
        }),
        ..Default::default()
    })
}

fn per_filter(p: Option<&TrafficPolicy>, stat_prefix: &str) -> HashMap<String, Any> {
    let mut m = HashMap::new();
    if let Some(rl) = p.and_then(|p| p.local_rate_limit.as_ref()) {
        m.insert(
            RATE_LIMIT_FILTER.to_owned(),
            pack_any(rate_limit_config(stat_prefix, Some(rl))),
        );
    }
    m
}

/// A forwarding action to `clusters` (name, weight); weight-0 backends are left out.
fn forward(clusters: &[(String, u32)]) -> Option<route_action::ClusterSpecifier> {
    let live: Vec<&(String, u32)> = clusters.iter().filter(|(_, w)| *w > 0).collect();
    match live.as_slice() {
        [] => None,
        [(one, _)] => Some(route_action::ClusterSpecifier::Cluster(one.clone())),
        many => Some(route_action::ClusterSpecifier::WeightedClusters(
            WeightedCluster {
                clusters: many
                    .iter()
                    .map(|(name, w)| weighted_cluster::ClusterWeight {
                        name: name.clone(),
                        weight: Some(UInt32Value { value: *w }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
        )),
    }
}

/// The Envoy routes of one rule, each with its precedence key.
fn rule_routes(
    r: &HttpRoute,
    index: usize,
    rule: &RouteRule,
    policy: Option<&TrafficPolicy>,
    cluster_of: &dyn Fn(&WeightedBackend) -> Option<String>,
) -> Vec<(Route, (u8, i64, u8, i64))> {
    let action = if let Some(red) = &rule.redirect {
        let code = match red.status_code.unwrap_or(302) {
            301 => redirect_action::RedirectResponseCode::MovedPermanently,
            303 => redirect_action::RedirectResponseCode::SeeOther,
            307 => redirect_action::RedirectResponseCode::TemporaryRedirect,
            308 => redirect_action::RedirectResponseCode::PermanentRedirect,
            _ => redirect_action::RedirectResponseCode::Found,
        };
        route::Action::Redirect(RedirectAction {
            host_redirect: red.host.clone().unwrap_or_default(),
            port_redirect: u32::from(red.port.unwrap_or(0)),
            response_code: code as i32,
            scheme_rewrite_specifier: red
                .scheme
                .clone()
                .map(redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
            path_rewrite_specifier: match (&red.path, &red.prefix) {
                (Some(p), _) => Some(redirect_action::PathRewriteSpecifier::PathRedirect(
                    p.clone(),
                )),
                (None, Some(p)) => Some(redirect_action::PathRewriteSpecifier::PrefixRewrite(
                    p.clone(),
                )),
                (None, None) => None,
            },
            ..Default::default()
        })
    } else {
        let clusters: Vec<(String, u32)> = rule
            .backends
            .iter()
            .map(|b| {
                (
                    // A backend this caller may not reach: a name no cluster has (503).
                    cluster_of(b)
                        .unwrap_or_else(|| format!("unreachable|{}/{}", b.namespace, b.service)),
                    b.weight,
                )
            })
            .collect();
        let timeout = rule
            .timeout_ms
            .or_else(|| policy.and_then(|p| p.timeout_ms))
            .map(ms);
        route::Action::Route(RouteAction {
            cluster_specifier: forward(&clusters),
            timeout,
            retry_policy: policy.and_then(|p| retry_policy(p, r.kind)),
            ..Default::default()
        })
    };
    let mods = &rule.request_headers;
    let header =
        |k: &str, v: &str, action: header_value_option::HeaderAppendAction| HeaderValueOption {
            header: Some(HeaderValue {
                key: k.to_owned(),
                value: v.to_owned(),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        };
    let mut add: Vec<HeaderValueOption> = mods
        .set
        .iter()
        .map(|(k, v)| {
            header(
                k,
                v,
                header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd,
            )
        })
        .collect();
    add.extend(mods.add.iter().map(|(k, v)| {
        header(
            k,
            v,
            header_value_option::HeaderAppendAction::AppendIfExistsOrAdd,
        )
    }));
    let name = format!("{}|{index}", r.key());
    envoy_matches(rule)
        .into_iter()
        .map(|(m, key)| {
            (
                Route {
                    name: name.clone(),
                    r#match: Some(m),
                    action: Some(action.clone()),
                    request_headers_to_add: add.clone(),
                    request_headers_to_remove: mods.remove.clone(),
                    typed_per_filter_config: per_filter(policy, &name),
                    ..Default::default()
                },
                key,
            )
        })
        .collect()
}

fn sorted(mut v: Vec<(Route, (u8, i64, u8, i64))>) -> Vec<Route> {
    v.sort_by_key(|(_, k)| *k);
    v.into_iter().map(|(r, _)| r).collect()
}

/// The outbound virtual host of `s` for one caller: the mesh routes attached to it, or one
/// route to the whole service. `cluster_of` names the caller's cluster of a service port
/// (`None` when the caller may not reach it).
pub(super) fn outbound_vhost(
    mesh: &MeshConfig,
    policies: &Policies<'_>,
    s: &Service,
    domains: Vec<String>,
    cluster_of: &dyn Fn(&Service) -> Option<String>,
) -> Option<VirtualHost> {
    let attached: Vec<&HttpRoute> = mesh
        .l7
        .routes
        .iter()
        .filter(|r| {
            r.parents.iter().any(|p| {
                matches!(p, RouteParent::Service { name, namespace }
                    if *name == s.name && *namespace == s.namespace)
            })
        })
        .collect();
    let backend_cluster = |b: &WeightedBackend| {
        mesh.services
            .iter()
            .find(|x| x.name == b.service && x.namespace == b.namespace && x.port == b.port)
            .and_then(cluster_of)
    };
    let routes = if attached.is_empty() {
        let own = cluster_of(s)?;
        let rule = RouteRule {
            backends: vec![WeightedBackend {
                service: s.name.clone(),
                namespace: s.namespace.clone(),
                port: s.port,
                weight: 1,
            }],
            ..Default::default()
        };
        let r = HttpRoute {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            ..Default::default()
        };
        let policy = policies.service(&s.name, &s.namespace);
        let mut v = sorted(rule_routes(&r, 0, &rule, policy, &|_| Some(own.clone())));
        for route in &mut v {
            route.name.clear();
        }
        v
    } else {
        let mut v = Vec::new();
        for r in attached {
            for (i, rule) in r.rules.iter().enumerate() {
                v.extend(rule_routes(
                    r,
                    i,
                    rule,
                    policies.for_rule(r, rule, Some((&s.name, &s.namespace)), None),
                    &backend_cluster,
                ));
            }
        }
        sorted(v)
    };
    Some(VirtualHost {
        name: s.key(),
        domains,
        routes,
        ..Default::default()
    })
}

pub(super) fn h2_options() -> Any {
    pack_any(HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Http2ProtocolOptions::default(),
                        ),
                    ),
                },
            ),
        ),
        ..Default::default()
    })
}

/// Upstream HTTP version = the client's (HTTP/1.1 stays HTTP/1.1, HTTP/2 and gRPC stay
/// HTTP/2), for the mesh's outbound and inbound clusters.
pub(super) fn same_protocol_as_client(c: &mut Cluster) {
    c.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
        pack_any(HttpProtocolOptions {
            upstream_protocol_options: Some(
                http_protocol_options::UpstreamProtocolOptions::UseDownstreamProtocolConfig(
                    http_protocol_options::UseDownstreamHttpConfig {
                        http_protocol_options: Some(Default::default()),
                        http2_protocol_options: Some(Http2ProtocolOptions::default()),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
    );
}

fn listener_vhosts(
    l: &IngressListener,
    routes: &[&HttpRoute],
    policies: &Policies<'_>,
    cluster_of: &dyn Fn(&WeightedBackend, RouteKind) -> Option<String>,
) -> Vec<VirtualHost> {
    let build = |r: &HttpRoute| -> Vec<(Route, (u8, i64, u8, i64))> {
        let mut v = Vec::new();
        for (i, rule) in r.rules.iter().enumerate() {
            v.extend(rule_routes(
                r,
                i,
                rule,
                policies.for_rule(r, rule, None, Some(&l.name)),
                &|b| cluster_of(b, r.kind),
            ));
        }
        v
    };
    let any_host: Vec<(Route, (u8, i64, u8, i64))> = routes
        .iter()
        .filter(|r| r.hostnames.is_empty())
        .flat_map(|r| build(r))
        .collect();
    let hosts: BTreeSet<&str> = routes
        .iter()
        .flat_map(|r| r.hostnames.iter().map(String::as_str))
        .collect();
    let mut out = Vec::new();
    for h in hosts {
        let mut v: Vec<_> = routes
            .iter()
            .filter(|r| r.hostnames.iter().any(|x| x == h))
            .flat_map(|r| build(r))
            .collect();
        // Routes for a specific host first; routes for any host after them.
        let mine = sorted(std::mem::take(&mut v));
        let mut all = mine;
        all.extend(sorted(any_host.clone()));
        out.push(VirtualHost {
            name: h.to_owned(),
            domains: vec![h.to_owned()],
            routes: all,
            ..Default::default()
        });
    }
    if !any_host.is_empty() {
        out.push(VirtualHost {
            name: "*".to_owned(),
            domains: vec!["*".to_owned()],
            routes: sorted(any_host),
            ..Default::default()
        });
    }
    out
}

/// Ingress listeners, their routes and clusters into `snap`.
pub(super) fn ingress(mesh: &MeshConfig, policies: &Policies<'_>, snap: &mut Snapshot) {
    for s in &mesh.l7.tls_secrets {
        snap.insert(
            type_url::SECRET,
            s.id.clone(),
            pack_any(super::cert_secret(&s.id, &s.chain_pem, &s.key_pem)),
        );
    }
    let mut clusters_done = BTreeSet::new();
    for l in &mesh.l7.listeners {
        let routes: Vec<&HttpRoute> = mesh
            .l7
            .routes
            .iter()
            .filter(|r| {
                r.parents
                    .iter()
                    .any(|p| matches!(p, RouteParent::Listener(n) if *n == l.name))
            })
            .collect();
        let cluster_of = |b: &WeightedBackend, kind: RouteKind| -> Option<String> {
            let s = mesh
                .services
                .iter()
                .find(|x| x.name == b.service && x.namespace == b.namespace && x.port == b.port)?;
            let name = ingress_cluster(s, kind);
            Some(name)
        };
        // Clusters of every backend of the listener's routes.
        for r in &routes {
            for b in r.rules.iter().flat_map(|x| &x.backends) {
                let Some(s) = mesh.services.iter().find(|x| {
                    x.name == b.service && x.namespace == b.namespace && x.port == b.port
                }) else {
                    continue;
                };
                let name = ingress_cluster(s, r.kind);
                if !clusters_done.insert(name.clone()) {
                    continue;
                }
                let mut c = eds_cluster(&name);
                // Backends in mTLS namespaces: mTLS with the gateway's SVID to their node's
                // inbound listener.
                let mtls = s.mtls.offers_mtls()
                    && mesh
                        .l7
                        .gateway_id
                        .as_deref()
                        .is_some_and(|id| mesh.svids.iter().any(|x| x.id == id));
                if mtls && let Some(id) = &mesh.l7.gateway_id {
                    c.transport_socket = Some(super::mtls_upstream(
                        s,
                        id,
                        &super::bundle_secret_name(&mesh.trust_domain),
                        super::inbound_sni(s.target_port),
                    ));
                }
                if r.kind == RouteKind::Grpc {
                    c.typed_extension_protocol_options.insert(
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
                        h2_options(),
                    );
                }
                policies.apply_cluster(s, &mut c);
                snap.insert(type_url::CLUSTER, name.clone(), pack_any(c));
                snap.insert(
                    type_url::ENDPOINT,
                    name.clone(),
                    pack_any(ClusterLoadAssignment {
                        cluster_name: name.clone(),
                        endpoints: vec![LocalityLbEndpoints {
                            locality: Some(Locality::default()),
                            lb_endpoints: s
                                .endpoints
                                .iter()
                                .map(|e| {
                                    let addr = if mtls {
                                        e.mtls_address
                                    } else {
                                        SocketAddr::new(e.ip, s.target_port)
                                    };
                                    lb_endpoint_of(addr, e.weight)
                                })
                                .collect(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                );
            }
        }
        let route_name = ingress_route(&l.name);
        snap.insert(
            type_url::ROUTE,
            route_name.clone(),
            pack_any(RouteConfiguration {
                name: route_name.clone(),
                virtual_hosts: listener_vhosts(l, &routes, policies, &cluster_of),
                ..Default::default()
            }),
        );
        let stat = format!("ingress_{}", l.name.replace(['/', '.', ':'], "_"));
        let listener_policy = policies.listener(&l.name);
        let mut filters = Vec::new();
        if policies.any_rate_limit {
            filters.push(rate_limit_filter(
                &stat,
                listener_policy.and_then(|p| p.local_rate_limit.as_ref()),
            ));
        }
        filters.push(router_filter());
        let hcm = HttpConnectionManager {
            stat_prefix: stat.clone(),
            codec_type: match l.http {
                HttpVersions::Auto => http_connection_manager::CodecType::Auto,
                HttpVersions::Http1 => http_connection_manager::CodecType::Http1,
                HttpVersions::Http2 => http_connection_manager::CodecType::Http2,
            } as i32,
            route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
                config_source: Some(ads()),
                route_config_name: route_name,
            })),
            http_filters: filters,
            strip_port_mode: Some(http_connection_manager::StripPortMode::StripAnyHostPort(
                true,
            )),
            access_log: super::http_logs(mesh, crate::telemetry::Direction::Ingress),
            ..Default::default()
        };
        let alpn: Vec<String> = match l.http {
            HttpVersions::Auto => vec!["h2".into(), "http/1.1".into()],
            HttpVersions::Http1 => vec!["http/1.1".into()],
            HttpVersions::Http2 => vec!["h2".into()],
        };
        let mut chains = Vec::new();
        let mut default_chain = None;
        match &l.tls {
            None => chains.push(FilterChain {
                name: l.name.clone(),
                filters: vec![hcm_filter(hcm)],
                ..Default::default()
            }),
            Some(tls) => {
                for (i, cert) in tls.certificates.iter().enumerate() {
                    let mut common = CommonTlsContext {
                        alpn_protocols: alpn.clone(),
                        ..Default::default()
                    };
                    match &cert.source {
                        CertSource::Inline(p) => {
                            let inline = |s: &str| {
                                envoy_types::pb::envoy::config::core::v3::DataSource {
                                specifier: Some(
                                    envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineString(
                                        s.to_owned(),
                                    ),
                                ),
                                ..Default::default()
                            }
                            };
                            common.tls_certificates = vec![TlsCertificate {
                                certificate_chain: Some(inline(&p.chain_pem)),
                                private_key: Some(inline(&p.key_pem)),
                                ..Default::default()
                            }];
                        }
                        CertSource::Sds(name) => {
                            common.tls_certificate_sds_secret_configs = vec![super::sds(name)];
                        }
                    }
                    let ctx = DownstreamTlsContext {
                        common_tls_context: Some(common),
                        ..Default::default()
                    };
                    let chain = FilterChain {
                        name: format!("{}|{i}", l.name),
                        filter_chain_match: Some(FilterChainMatch {
                            server_names: cert.hostnames.clone(),
                            ..Default::default()
                        }),
                        filters: vec![hcm_filter(hcm.clone())],
                        transport_socket: Some(tls_socket(ctx)),
                        ..Default::default()
                    };
                    if i == 0 {
                        let mut d = chain.clone();
                        d.name = format!("{}|default", l.name);
                        d.filter_chain_match = None;
                        default_chain = Some(d);
                    }
                    if cert.hostnames.is_empty() {
                        // Serves any SNI: that is the default chain.
                        if i == 0 {
                            continue;
                        }
                        let mut d = chain;
                        d.filter_chain_match = None;
                        default_chain.get_or_insert(d);
                        continue;
                    }
                    chains.push(chain);
                }
            }
        }
        snap.insert(
            type_url::LISTENER,
            l.name.clone(),
            pack_any(Listener {
                name: l.name.clone(),
                address: Some(socket(l.address)),
                listener_filters: if l.tls.is_some() {
                    vec![ListenerFilter {
                        name: "envoy.filters.listener.tls_inspector".to_owned(),
                        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
                            TlsInspector::default(),
                        ))),
                        ..Default::default()
                    }]
                } else {
                    Vec::new()
                },
                filter_chains: chains,
                default_filter_chain: default_chain,
                ..Default::default()
            }),
        );
    }
}
