//! L4 part of the translation: mTLS for any TCP, not only HTTP.
//!
//! The outbound listener detects the protocol of each connection from its first bytes (Envoy's
//! `http_inspector`). HTTP/1.x and h2c go to the HTTP connection manager as before (routes,
//! retries, RBAC on paths). Anything else — a database, a broker, a binary protocol, or a
//! server-first protocol whose client sends nothing before [`DETECTION_TIMEOUT_MS`] — is proxied
//! as opaque TCP:
//! - to a pod of a service in an mTLS namespace (destination pod IP and target port): an HTTP/2
//!   `CONNECT` stream inside an mTLS connection with the caller's SVID to the pod's node Envoy
//!   (`<pod-ip>:15008`, SNI [`inbound_tcp_sni`]), accepting only the service's SPIFFE IDs. The
//!   mTLS connection is pooled per (caller identity, destination pod, port) — never shared
//!   between callers, since its client certificate *is* the caller — so a new TCP connection
//!   costs a stream, not a TLS handshake (the HBONE idea of Istio ambient);
//! - anywhere else: passed through to the original destination (over WireGuard when it is on
//!   another node; a strict pod refuses it there, fail closed).
//!
//! The inbound listener has, per local workload port, an L4 chain beside the HTTP one
//! (selected by SNI): TLS with a client SVID required, the network RBAC filter from the
//! authorization policies (on identities; rules that need HTTP attributes — paths, methods —
//! never allow at L4, and deny rules apply on their identities alone: stricter, never looser),
//! then an HTTP/2 connection manager that terminates each `CONNECT` stream into a TCP
//! connection to that one pod port (the chain fixes the target; the stream's authority cannot
//! redirect it), marked as coming from the node's Envoy (ingress strict).

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions;
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::config::rbac::v3 as rbac;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
use envoy_types::pb::google::protobuf::UInt32Value;
use envoy_types::util::pack_any;

use super::{dur, hcm_filter, mtls_upstream, router_filter, rule_policy, tls_socket};
use crate::mesh::{AuthzAction, AuthzPolicy, AuthzRule, Service};

/// How long the outbound listener waits for a client's first bytes to tell HTTP from other
/// TCP. A client that says nothing by then (a server-first protocol: SMTP, MySQL, SSH) is
/// proxied as TCP; so is a slow HTTP client (it still works, without L7 features).
pub const DETECTION_TIMEOUT_MS: u64 = 300;

/// The ALPN values `http_inspector` reports for HTTP.
pub(super) const HTTP_PROTOCOLS: [&str; 3] = ["http/1.0", "http/1.1", "h2c"];

/// Name of the cluster that passes non-mesh TCP through to its original destination.
pub const PASSTHROUGH: &str = "passthrough";

/// The SNI a calling Envoy sets for an L4 (opaque TCP) connection to `port`.
#[must_use]
pub fn inbound_tcp_sni(port: u16) -> String {
    format!("inbound-tcp-{port}.identityd")
}

/// The L4 outbound cluster of a service's target port for one caller identity.
#[must_use]
pub fn outbound_tcp_cluster(s: &Service, caller: &str) -> String {
    format!("outbound-tcp|{}|{}|{caller}", s.target_port, s.key())
}

/// The listener filter that tells HTTP from other TCP.
pub(super) fn http_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.http_inspector".to_owned(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
            HttpInspector::default(),
        ))),
        ..Default::default()
    }
}

/// `envoy.filters.network.tcp_proxy` to `cluster`.
pub(super) fn tcp_proxy(stat_prefix: &str, cluster: &str) -> Filter {
    tcp_proxy_with(stat_prefix, cluster, None, Vec::new())
}

/// `envoy.filters.network.tcp_proxy` to `cluster`, as an HTTP/2 `CONNECT` stream to the
/// connection's original destination (the authority names the dialled pod and port).
pub(super) fn tcp_tunnel(stat_prefix: &str, cluster: &str, access_log: Vec<AccessLog>) -> Filter {
    tcp_proxy_with(
        stat_prefix,
        cluster,
        Some(tcp_proxy::TunnelingConfig {
            hostname: "%DOWNSTREAM_LOCAL_ADDRESS%".to_owned(),
            ..Default::default()
        }),
        access_log,
    )
}

fn tcp_proxy_with(
    stat_prefix: &str,
    cluster: &str,
    tunneling_config: Option<tcp_proxy::TunnelingConfig>,
    access_log: Vec<AccessLog>,
) -> Filter {
    Filter {
        name: "envoy.filters.network.tcp_proxy".to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(TcpProxy {
            stat_prefix: stat_prefix.to_owned(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_owned())),
            tunneling_config,
            access_log,
            ..Default::default()
        }))),
    }
}

/// The inbound end of the tunnel: an HTTP/2 connection manager that accepts only `CONNECT`
/// and turns each stream into a TCP connection to `cluster` (one pod port). No route or
/// stream timeouts: a TCP connection lives as long as its peers keep it.
fn connect_terminator(stat_prefix: &str, cluster: &str, access_log: Vec<AccessLog>) -> Filter {
    let connect = || http_connection_manager::UpgradeConfig {
        upgrade_type: "CONNECT".to_owned(),
        ..Default::default()
    };
    hcm_filter(HttpConnectionManager {
        stat_prefix: stat_prefix.to_owned(),
        codec_type: http_connection_manager::CodecType::Http2 as i32,
        http2_protocol_options: Some(Http2ProtocolOptions {
            allow_connect: true,
            ..Default::default()
        }),
        upgrade_configs: vec![connect()],
        stream_idle_timeout: Some(dur(0)),
        route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
            RouteConfiguration {
                name: format!("{cluster}|connect"),
                // See the HTTP inbound route: the cluster may arrive after the listener.
                validate_clusters: Some(envoy_types::pb::google::protobuf::BoolValue {
                    value: false,
                }),
                virtual_hosts: vec![VirtualHost {
                    name: "connect".to_owned(),
                    domains: vec!["*".to_owned()],
                    routes: vec![Route {
                        r#match: Some(RouteMatch {
                            path_specifier: Some(route_match::PathSpecifier::ConnectMatcher(
                                route_match::ConnectMatcher {},
                            )),
                            ..Default::default()
                        }),
                        action: Some(route::Action::Route(RouteAction {
                            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                                cluster.to_owned(),
                            )),
                            timeout: Some(dur(0)),
                            upgrade_configs: vec![route_action::UpgradeConfig {
                                upgrade_type: "CONNECT".to_owned(),
                                connect_config: Some(
                                    route_action::upgrade_config::ConnectConfig::default(),
                                ),
                                ..Default::default()
                            }],
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            },
        )),
        http_filters: vec![router_filter()],
        access_log,
        ..Default::default()
    })
}

/// The rule as it can be evaluated on a connection (identities only), or `None` when it can
/// never match there: an ALLOW rule that needs HTTP attributes allows nothing at L4; a DENY
/// rule keeps its identities and drops the HTTP attributes (denies more, never less).
fn l4_rule(r: &AuthzRule, action: AuthzAction) -> Option<AuthzRule> {
    let needs_http = !r.paths.is_empty() || !r.methods.is_empty();
    if needs_http && action == AuthzAction::Allow {
        return None;
    }
    Some(AuthzRule {
        paths: Vec::new(),
        methods: Vec::new(),
        ..r.clone()
    })
}

/// The network RBAC filter of `action` for the policies on a workload port, if any policy of
/// that action exists (an ALLOW policy whose rules all need HTTP allows no TCP at all).
pub(super) fn network_rbac(
    td: &str,
    stat_prefix: &str,
    policies: &[&AuthzPolicy],
    action: AuthzAction,
) -> Option<Filter> {
    if !policies.iter().any(|p| p.action == action) {
        return None;
    }
    let mut map = std::collections::HashMap::new();
    for p in policies.iter().filter(|p| p.action == action) {
        for (i, r) in p.rules.iter().enumerate() {
            if let Some(r) = l4_rule(r, action) {
                map.insert(
                    format!("{}[{i}]", p.name),
                    rule_policy(td, &p.namespace, &r),
                );
            }
        }
    }
    let (name, act) = match action {
        AuthzAction::Allow => ("allow", rbac::rbac::Action::Allow),
        AuthzAction::Deny => ("deny", rbac::rbac::Action::Deny),
    };
    Some(Filter {
        name: format!("envoy.filters.network.rbac.{name}"),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(NetworkRbac {
            rules: Some(rbac::Rbac {
                action: act as i32,
                policies: map,
                ..Default::default()
            }),
            stat_prefix: format!("{stat_prefix}_{name}_"),
            ..Default::default()
        }))),
    })
}

/// The inbound L4 chain of a local workload port: mTLS with the workload's SVID (`tls`),
/// network RBAC, TCP proxy to the port's inbound cluster.
pub(super) fn inbound_chain(
    td: &str,
    pod: std::net::IpAddr,
    port: u16,
    cluster: &str,
    policies: &[&AuthzPolicy],
    tls: DownstreamTlsContext,
    access_log: Vec<AccessLog>,
) -> FilterChain {
    let stat = format!("inbound_tcp_{port}_{pod}");
    let mut filters = Vec::new();
    filters.extend(network_rbac(td, &stat, policies, AuthzAction::Deny));
    filters.extend(network_rbac(td, &stat, policies, AuthzAction::Allow));
    filters.push(connect_terminator(&stat, cluster, access_log));
    FilterChain {
        name: format!("{cluster}|tcp"),
        filter_chain_match: Some(FilterChainMatch {
            prefix_ranges: vec![super::cidr(pod)],
            server_names: vec![inbound_tcp_sni(port)],
            transport_protocol: "tls".to_owned(),
            ..Default::default()
        }),
        filters,
        transport_socket: Some(tls_socket(tls)),
        ..Default::default()
    }
}

/// The L4 mTLS cluster of a service's target port for `caller`: the dialled pod (the
/// connection's original destination) on its node Envoy's mTLS port, with the caller's SVID,
/// SNI [`inbound_tcp_sni`], and only the service's SPIFFE IDs accepted. `None` when the
/// service's endpoints are not reached at their own address (their mTLS port must be on the
/// pod IP, as in a cluster).
pub(super) fn mtls_cluster(s: &Service, caller: &str, bundle_name: &str) -> Option<Cluster> {
    let port = s.endpoints.first()?.mtls_address.port();
    if s.endpoints
        .iter()
        .any(|e| e.mtls_address != SocketAddr::new(e.ip, port))
    {
        return None;
    }
    let ts = mtls_upstream(s, caller, bundle_name, inbound_tcp_sni(s.target_port));
    Some(Cluster {
        name: outbound_tcp_cluster(s, caller),
        connect_timeout: Some(dur(2000)),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: cluster::LbPolicy::ClusterProvided as i32,
        lb_config: Some(cluster::LbConfig::OriginalDstLbConfig(
            cluster::OriginalDstLbConfig {
                upstream_port_override: Some(UInt32Value {
                    value: u32::from(port),
                }),
                ..Default::default()
            },
        )),
        transport_socket: Some(ts),
        // The tunnel: HTTP/2 to the pod's node Envoy, one pooled connection per pod for
        // this caller, each TCP connection a CONNECT stream.
        typed_extension_protocol_options: std::iter::once((
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
            super::l7::h2_options(),
        ))
        .collect(),
        ..Default::default()
    })
}

/// The cluster that passes TCP through to its original destination, unencrypted by Envoy
/// (the network layer still encrypts it between nodes).
pub(super) fn passthrough_cluster() -> Cluster {
    Cluster {
        name: PASSTHROUGH.to_owned(),
        connect_timeout: Some(dur(2000)),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: cluster::LbPolicy::ClusterProvided as i32,
        ..Default::default()
    }
}
