//! Pure translation: [`MeshConfig`] → Envoy resources (listeners, routes, clusters,
//! endpoints, secrets). No I/O; unit-tested without Envoy and proven against a real one in the
//! component tests.
//!
//! Inbound (`inbound` listener, 15008): one filter chain per local workload port in an mTLS
//! namespace, selected by destination IP and by the SNI `inbound-<port>.identityd` the calling
//! Envoy sets. It terminates TLS with the workload's SVID (SDS secret named by its SPIFFE ID),
//! requires a client certificate validated by Envoy's SPIFFE validator against the bundle (SDS
//! secret `spiffe://<td>`), sets `x-forwarded-client-cert` (URI = caller's SPIFFE ID), applies
//! RBAC from the authorization policies, and forwards to the workload's port.
//!
//! Outbound (`outbound` listener, 15001): one filter chain per local workload, selected by
//! source IP (unknown sources match no chain: fail closed), routing by Host to the service's
//! cluster. For services in mTLS namespaces the cluster is per calling identity: it presents
//! the caller's SVID and accepts only the endpoints' SPIFFE IDs; others are plain. Mesh
//! clusters (outbound and inbound) speak the client's HTTP version upstream, so gRPC (HTTP/2)
//! works pod to pod. Routes attached to a service (GAMMA) replace its single outbound route.
//!
//! Ingress (one listener per [`crate::l7::IngressListener`]): see [`crate::l7`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, BindConfig, CidrRange, ConfigSource, DataSource,
    Locality, SocketAddress, SocketOption, TransportSocket, TypedExtensionConfig, address,
    config_source, data_source, socket_address, socket_option, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::config::rbac::v3 as rbac;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as RbacFilter;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    SpiffeCertValidatorConfig, SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext,
    common_tls_context, secret, spiffe_cert_validator_config, subject_alt_name_matcher,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    PathMatcher, StringMatcher, path_matcher, string_matcher,
};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration, UInt32Value};
use envoy_types::util::pack_any;

mod l4;
mod l7;

pub use l4::{DETECTION_TIMEOUT_MS, PASSTHROUGH, inbound_tcp_sni, outbound_tcp_cluster};
pub use l7::{RATE_LIMIT_FILTER, ingress_cluster, ingress_route};

use crate::mesh::{AuthzAction, AuthzPolicy, AuthzRule, MeshConfig, MtlsMode, Service, Workload};
use crate::server::{Snapshot, type_url};
use crate::telemetry::{self, Direction};

/// Name of the inbound listener.
pub const INBOUND: &str = "inbound";
/// Name of the outbound listener.
pub const OUTBOUND: &str = "outbound";

/// The SNI a calling Envoy sets so the inbound listener knows the target port.
#[must_use]
pub fn inbound_sni(port: u16) -> String {
    format!("inbound-{port}.identityd")
}

/// The SDS secret name of the trust bundle.
#[must_use]
pub fn bundle_secret_name(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}")
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(ads()),
    }
}

fn socket(addr: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                addr.port(),
            ))),
            ..Default::default()
        })),
    }
}

fn cidr(ip: IpAddr) -> CidrRange {
    CidrRange {
        address_prefix: ip.to_string(),
        prefix_len: Some(UInt32Value {
            value: if ip.is_ipv4() { 32 } else { 128 },
        }),
    }
}

fn exact(s: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(s.to_owned())),
        ..Default::default()
    }
}

fn prefix(s: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Prefix(s.to_owned())),
        ..Default::default()
    }
}

fn typed<T: prost::Name + prost::Message>(name: &str, msg: T) -> TypedExtensionConfig {
    TypedExtensionConfig {
        name: name.to_owned(),
        typed_config: Some(pack_any(msg)),
    }
}

fn router_filter() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".to_owned(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
            Router::default(),
        ))),
        ..Default::default()
    }
}

fn hcm_filter(hcm: HttpConnectionManager) -> Filter {
    Filter {
        name: "envoy.filters.network.http_connection_manager".to_owned(),
        config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
    }
}

fn tls_socket<T: prost::Name + prost::Message>(ctx: T) -> TransportSocket {
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_owned(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
    }
}

/// The HTTP access logs of a connection manager: the daemon's stream when enabled.
fn http_logs(mesh: &MeshConfig, direction: Direction) -> Vec<AccessLog> {
    if mesh.access_logs {
        vec![telemetry::http_access_log(direction)]
    } else {
        Vec::new()
    }
}

/// The TCP access logs of a TCP proxy: the daemon's stream when enabled.
fn tcp_logs(mesh: &MeshConfig, direction: Direction) -> Vec<AccessLog> {
    if mesh.access_logs {
        vec![telemetry::tcp_access_log(direction)]
    } else {
        Vec::new()
    }
}

fn dur(ms: u64) -> Duration {
    Duration {
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    }
}

/// The TLS transport socket toward a service's endpoints in an mTLS namespace: presents
/// `caller`'s SVID, sets `sni` (which inbound chain: [`inbound_sni`] for HTTP,
/// [`l4::inbound_tcp_sni`] for TCP), and accepts only the endpoints' SPIFFE IDs (validated
/// against the bundle).
fn mtls_upstream(s: &Service, caller: &str, bundle_name: &str, sni: String) -> TransportSocket {
    let sans: BTreeSet<&str> = s.endpoints.iter().map(|e| e.id.as_str()).collect();
    let tls = UpstreamTlsContext {
        sni,
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds(caller)],
            validation_context_type: Some(
                common_tls_context::ValidationContextType::CombinedValidationContext(
                    common_tls_context::CombinedCertificateValidationContext {
                        default_validation_context: Some(CertificateValidationContext {
                            match_typed_subject_alt_names: sans
                                .into_iter()
                                .map(|id| SubjectAltNameMatcher {
                                    san_type: subject_alt_name_matcher::SanType::Uri as i32,
                                    matcher: Some(exact(id)),
                                    ..Default::default()
                                })
                                .collect(),
                            ..Default::default()
                        }),
                        validation_context_sds_secret_config: Some(sds(bundle_name)),
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    tls_socket(tls)
}

/// Inbound cluster name for a local workload port.
#[must_use]
pub fn inbound_cluster(w: &Workload, port: u16) -> String {
    format!("inbound|{port}|{}/{}", w.namespace, w.name)
}

/// Outbound cluster name for a service port, per caller identity for mTLS services.
#[must_use]
pub fn outbound_cluster(s: &Service, caller: Option<&str>) -> String {
    match caller {
        Some(id) => format!("outbound|{}|{}|{id}", s.port, s.key()),
        None => format!("outbound|{}|{}", s.port, s.key()),
    }
}

/// Route configuration name of a local workload's outbound traffic.
#[must_use]
pub fn outbound_route(w: &Workload) -> String {
    format!("outbound|{}/{}", w.namespace, w.name)
}

fn static_cluster(name: &str, addr: SocketAddr) -> Cluster {
    Cluster {
        name: name.to_owned(),
        connect_timeout: Some(dur(2000)),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_owned(),
            endpoints: vec![LocalityLbEndpoints {
                locality: Some(Locality::default()),
                lb_endpoints: vec![lb_endpoint_of(addr, 1)],
                load_balancing_weight: Some(UInt32Value { value: 1 }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Connections to a local pod carry [`crate::FROM_PROXY_MARK`] (`SO_MARK`, set before bind),
/// so the pod's ingress strict knows they come from this Envoy after mTLS termination.
fn from_proxy_bind(pod: IpAddr) -> BindConfig {
    let any = if pod.is_ipv4() {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    };
    let Some(address::Address::SocketAddress(source)) = socket(SocketAddr::new(any, 0)).address
    else {
        unreachable!("socket() builds a socket address")
    };
    BindConfig {
        source_address: Some(source),
        socket_options: vec![SocketOption {
            description: "SO_MARK: from the node's Envoy (ingress strict)".to_owned(),
            level: 1, // SOL_SOCKET
            name: 36, // SO_MARK
            state: socket_option::SocketState::StatePrebind as i32,
            value: Some(socket_option::Value::IntValue(i64::from(
                crate::FROM_PROXY_MARK,
            ))),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn original_dst_filter() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.original_dst".to_owned(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
            envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst::default(),
        ))),
        ..Default::default()
    }
}

fn lb_endpoint_of(addr: SocketAddr, weight: u32) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(socket(addr)),
            ..Default::default()
        })),
        load_balancing_weight: Some(UInt32Value {
            value: weight.max(1),
        }),
        ..Default::default()
    }
}

fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.to_owned(),
        connect_timeout: Some(dur(2000)),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        ..Default::default()
    }
}

/// The validation context secret for the bundle: Envoy's SPIFFE certificate validator with the
/// trust domain's roots.
fn bundle_secret(trust_domain: &str, bundle_pem: &str) -> Secret {
    let spiffe = SpiffeCertValidatorConfig {
        trust_domains: vec![spiffe_cert_validator_config::TrustDomain {
            name: trust_domain.to_owned(),
            trust_bundle: Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(bundle_pem.to_owned())),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    Secret {
        name: bundle_secret_name(trust_domain),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                custom_validator_config: Some(typed("envoy.tls.cert_validator.spiffe", spiffe)),
                ..Default::default()
            },
        )),
    }
}

fn cert_secret(id: &str, chain_pem: &str, key_pem: &str) -> Secret {
    let inline = |s: &str| DataSource {
        specifier: Some(data_source::Specifier::InlineString(s.to_owned())),
        ..Default::default()
    };
    Secret {
        name: id.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(chain_pem)),
            private_key: Some(inline(key_pem)),
            ..Default::default()
        })),
    }
}

fn principal_any() -> rbac::Principal {
    rbac::Principal {
        identifier: Some(rbac::principal::Identifier::Any(true)),
    }
}

fn principal_name(m: StringMatcher) -> rbac::Principal {
    rbac::Principal {
        identifier: Some(rbac::principal::Identifier::Authenticated(
            rbac::principal::Authenticated {
                principal_name: Some(m),
            },
        )),
    }
}

fn permission_any() -> rbac::Permission {
    rbac::Permission {
        rule: Some(rbac::permission::Rule::Any(true)),
    }
}

fn or_permissions(v: Vec<rbac::Permission>) -> rbac::Permission {
    rbac::Permission {
        rule: Some(rbac::permission::Rule::OrRules(rbac::permission::Set {
            rules: v,
        })),
    }
}

fn rule_policy(td: &str, ns: &str, r: &AuthzRule) -> rbac::Policy {
    let mut principals = Vec::new();
    for id in &r.ids {
        principals.push(principal_name(exact(id)));
    }
    for n in &r.namespaces {
        principals.push(principal_name(prefix(&format!("spiffe://{td}/ns/{n}/sa/"))));
    }
    for sa in &r.service_accounts {
        let (sns, name) = sa.split_once('/').unwrap_or((ns, sa.as_str()));
        principals.push(principal_name(exact(&format!(
            "spiffe://{td}/ns/{sns}/sa/{name}"
        ))));
    }
    if principals.is_empty() {
        principals.push(principal_any());
    }
    let mut and = Vec::new();
    if !r.paths.is_empty() {
        and.push(or_permissions(
            r.paths
                .iter()
                .map(|p| {
                    let m = match p.strip_suffix('*') {
                        Some(pre) => prefix(pre),
                        None => exact(p),
                    };
                    rbac::Permission {
                        rule: Some(rbac::permission::Rule::UrlPath(PathMatcher {
                            rule: Some(path_matcher::Rule::Path(m)),
                        })),
                    }
                })
                .collect(),
        ));
    }
    if !r.methods.is_empty() {
        and.push(or_permissions(
            r.methods
                .iter()
                .map(|m| rbac::Permission {
                    rule: Some(rbac::permission::Rule::Header(envoy_types::pb::envoy::config::route::v3::HeaderMatcher {
                        name: ":method".to_owned(),
                        header_match_specifier: Some(
                            envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier::StringMatch(
                                exact(&m.to_ascii_uppercase()),
                            ),
                        ),
                        ..Default::default()
                    })),
                })
                .collect(),
        ));
    }
    let permissions = if and.is_empty() {
        vec![permission_any()]
    } else {
        vec![rbac::Permission {
            rule: Some(rbac::permission::Rule::AndRules(rbac::permission::Set {
                rules: and,
            })),
        }]
    };
    rbac::Policy {
        permissions,
        principals,
        ..Default::default()
    }
}

fn rbac_filter(td: &str, policies: &[&AuthzPolicy], action: AuthzAction) -> Option<HttpFilter> {
    let mut map = std::collections::HashMap::new();
    for p in policies.iter().filter(|p| p.action == action) {
        for (i, r) in p.rules.iter().enumerate() {
            map.insert(format!("{}[{i}]", p.name), rule_policy(td, &p.namespace, r));
        }
    }
    let any_policy = policies.iter().any(|p| p.action == action);
    if !any_policy {
        return None;
    }
    let rules = rbac::Rbac {
        action: match action {
            AuthzAction::Allow => rbac::rbac::Action::Allow as i32,
            AuthzAction::Deny => rbac::rbac::Action::Deny as i32,
        },
        policies: map,
        ..Default::default()
    };
    Some(HttpFilter {
        name: format!(
            "envoy.filters.http.rbac.{}",
            if action == AuthzAction::Allow {
                "allow"
            } else {
                "deny"
            }
        ),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(RbacFilter {
            rules: Some(rules),
            ..Default::default()
        }))),
        ..Default::default()
    })
}

fn route_to(cluster: &str, domains: Vec<String>, vh_name: &str) -> VirtualHost {
    VirtualHost {
        name: vh_name.to_owned(),
        domains,
        routes: vec![Route {
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_owned())),
                ..Default::default()
            }),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                    cluster.to_owned(),
                )),
                ..Default::default()
            })),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Host names a client may use for a service (with and without the port).
#[must_use]
pub fn service_domains(s: &Service) -> Vec<String> {
    let mut base = vec![
        s.name.clone(),
        format!("{}.{}", s.name, s.namespace),
        format!("{}.{}.svc", s.name, s.namespace),
        format!("{}.{}.svc.cluster.local", s.name, s.namespace),
    ];
    base.extend(s.hosts.iter().cloned());
    let mut out = BTreeSet::new();
    for b in base {
        out.insert(format!("{b}:{}", s.port));
        out.insert(b);
    }
    out.into_iter().collect()
}

/// The Envoy resources for `mesh`, as an xDS snapshot.
#[must_use]
pub fn translate(mesh: &MeshConfig) -> Snapshot {
    let mut snap = Snapshot::new();
    let td = mesh.trust_domain.as_str();
    let bundle_name = bundle_secret_name(td);

    // Secrets: the bundle and each local SVID.
    snap.insert(
        type_url::SECRET,
        bundle_name.clone(),
        pack_any(bundle_secret(td, &mesh.bundle_pem)),
    );
    let have_svid: BTreeSet<&str> = mesh.svids.iter().map(|s| s.id.as_str()).collect();
    for s in &mesh.svids {
        snap.insert(
            type_url::SECRET,
            s.id.clone(),
            pack_any(cert_secret(&s.id, &s.chain_pem, &s.key_pem)),
        );
    }

    // ---- inbound ----
    let mut inbound_chains = Vec::new();
    for w in mesh
        .workloads
        .iter()
        .filter(|w| w.mtls.offers_mtls() && have_svid.contains(w.id.as_str()))
    {
        // Ports of this workload: target ports of services that have it as an endpoint.
        let mut ports: BTreeMap<u16, Vec<&Service>> = BTreeMap::new();
        for s in &mesh.services {
            if s.endpoints.iter().any(|e| e.ip == w.ip) {
                ports.entry(s.target_port).or_default().push(s);
            }
        }
        for (port, services) in ports {
            let cluster = inbound_cluster(w, port);
            let mut c = static_cluster(&cluster, SocketAddr::new(w.ip, port));
            c.upstream_bind_config = Some(from_proxy_bind(w.ip));
            l7::same_protocol_as_client(&mut c);
            snap.insert(type_url::CLUSTER, cluster.clone(), pack_any(c));
            let policies: Vec<&AuthzPolicy> = mesh
                .policies
                .iter()
                .filter(|p| {
                    services
                        .iter()
                        .any(|s| s.name == p.service && s.namespace == p.namespace)
                })
                .collect();
            let mut filters = Vec::new();
            filters.extend(rbac_filter(td, &policies, AuthzAction::Deny));
            filters.extend(rbac_filter(td, &policies, AuthzAction::Allow));
            filters.push(router_filter());
            let hcm = HttpConnectionManager {
                stat_prefix: format!("inbound_{port}_{}_{}", w.namespace, w.name),
                route_specifier: Some(http_connection_manager::RouteSpecifier::RouteConfig(
                    RouteConfiguration {
                        name: cluster.clone(),
                        virtual_hosts: vec![route_to(&cluster, vec!["*".to_owned()], "inbound")],
                        // The cluster comes in the same snapshot; Envoy may apply the listener
                        // first, and an inline route is otherwise checked against the clusters
                        // it has (a NACK of the whole listener, kept until the next change).
                        validate_clusters: Some(BoolValue { value: false }),
                        ..Default::default()
                    },
                )),
                http_filters: filters,
                forward_client_cert_details:
                    http_connection_manager::ForwardClientCertDetails::SanitizeSet as i32,
                set_current_client_cert_details: Some(
                    http_connection_manager::SetCurrentClientCertDetails {
                        uri: true,
                        ..Default::default()
                    },
                ),
                access_log: http_logs(mesh, Direction::Inbound),
                ..Default::default()
            };
            let tls = DownstreamTlsContext {
                common_tls_context: Some(CommonTlsContext {
                    tls_certificate_sds_secret_configs: vec![sds(&w.id)],
                    validation_context_type: Some(
                        common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(
                            sds(&bundle_name),
                        ),
                    ),
                    ..Default::default()
                }),
                require_client_certificate: Some(BoolValue { value: true }),
                ..Default::default()
            };
            inbound_chains.push(FilterChain {
                name: cluster.clone(),
                filter_chain_match: Some(FilterChainMatch {
                    prefix_ranges: vec![cidr(w.ip)],
                    server_names: vec![inbound_sni(port)],
                    transport_protocol: "tls".to_owned(),
                    ..Default::default()
                }),
                filters: vec![hcm_filter(hcm)],
                transport_socket: Some(tls_socket(tls.clone())),
                ..Default::default()
            });
            // The same port as opaque TCP (the caller's Envoy found no HTTP).
            inbound_chains.push(l4::inbound_chain(
                td,
                w.ip,
                port,
                &cluster,
                &policies,
                tls,
                http_logs(mesh, Direction::Inbound),
            ));
        }
    }
    // Envoy refuses a listener without filter chains: no local mTLS workload, no inbound listener.
    if !inbound_chains.is_empty() {
        snap.insert(
            type_url::LISTENER,
            INBOUND,
            pack_any(Listener {
                name: INBOUND.to_owned(),
                address: Some(socket(mesh.ports.inbound)),
                transparent: Some(BoolValue {
                    value: mesh.ports.transparent,
                }),
                listener_filters: vec![
                    // Connections a node's own Envoy makes to a local pod's :15008 are
                    // redirected (nat OUTPUT) to this listener; the original destination (the
                    // pod IP) is restored so the filter chain of that pod matches.
                    original_dst_filter(),
                    ListenerFilter {
                        name: "envoy.filters.listener.tls_inspector".to_owned(),
                        config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
                            TlsInspector::default(),
                        ))),
                        ..Default::default()
                    },
                ],
                filter_chains: inbound_chains,
                ..Default::default()
            }),
        );
    }

    // ---- outbound ----
    let policies = l7::Policies::new(mesh);
    let mut outbound_chains = Vec::new();
    let mut endpoints_done = BTreeSet::new();
    for w in &mesh.workloads {
        let mut vhosts = Vec::new();
        // The caller's cluster of a service (None: a strict service and a caller without SVID).
        let cluster_of = |s: &Service| {
            if s.mtls == MtlsMode::Strict && !have_svid.contains(w.id.as_str()) {
                return None;
            }
            let mtls = s.mtls.offers_mtls() && have_svid.contains(w.id.as_str());
            Some(outbound_cluster(s, mtls.then_some(w.id.as_str())))
        };
        for s in &mesh.services {
            let mtls = s.mtls.offers_mtls() && have_svid.contains(w.id.as_str());
            if s.mtls == MtlsMode::Strict && !have_svid.contains(w.id.as_str()) {
                // A caller without an SVID cannot reach a strict service: no route (fail closed).
                continue;
            }
            let cluster_name = outbound_cluster(s, mtls.then_some(w.id.as_str()));
            if endpoints_done.insert(cluster_name.clone()) {
                let mut c = eds_cluster(&cluster_name);
                if mtls {
                    c.transport_socket = Some(mtls_upstream(
                        s,
                        &w.id,
                        &bundle_name,
                        inbound_sni(s.target_port),
                    ));
                }
                l7::same_protocol_as_client(&mut c);
                policies.apply_cluster(s, &mut c);
                snap.insert(type_url::CLUSTER, cluster_name.clone(), pack_any(c));
                let eps: Vec<LbEndpoint> = s
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
                    .collect();
                snap.insert(
                    type_url::ENDPOINT,
                    cluster_name.clone(),
                    pack_any(ClusterLoadAssignment {
                        cluster_name: cluster_name.clone(),
                        endpoints: vec![LocalityLbEndpoints {
                            locality: Some(Locality::default()),
                            lb_endpoints: eps,
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                );
            }
            vhosts.extend(l7::outbound_vhost(
                mesh,
                &policies,
                s,
                service_domains(s),
                &cluster_of,
            ));
        }
        let route_name = outbound_route(w);
        snap.insert(
            type_url::ROUTE,
            route_name.clone(),
            pack_any(RouteConfiguration {
                name: route_name.clone(),
                virtual_hosts: vhosts,
                ..Default::default()
            }),
        );
        let hcm = HttpConnectionManager {
            stat_prefix: format!("outbound_{}_{}", w.namespace, w.name),
            route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
                config_source: Some(ads()),
                route_config_name: route_name,
            })),
            http_filters: if policies.any_rate_limit {
                vec![
                    l7::rate_limit_filter(&format!("outbound_{}_{}", w.namespace, w.name), None),
                    router_filter(),
                ]
            } else {
                vec![router_filter()]
            },
            access_log: http_logs(mesh, Direction::Outbound),
            ..Default::default()
        };
        let http_protocols: Vec<String> =
            l4::HTTP_PROTOCOLS.iter().map(|p| (*p).to_owned()).collect();
        // Opaque TCP to pods of mTLS services: by destination pod and target port, one chain
        // per service port of this caller (Envoy matches the destination before the
        // protocol, so each also carries an HTTP twin to keep HTTP on the L7 path).
        // A caller without an SVID (yet) gets the same matches with its TCP passed through in
        // plaintext: a permissive server accepts it, a strict one's ingress strict refuses it.
        // (Without its own chains, the destination match of other callers' chains would
        // leave it no chain at all.)
        {
            let with_svid = have_svid.contains(w.id.as_str());
            let mut claimed: BTreeSet<(IpAddr, u16)> = BTreeSet::new();
            for s in mesh.services.iter().filter(|s| s.mtls.offers_mtls()) {
                let Some(c) = l4::mtls_cluster(s, &w.id, &bundle_name) else {
                    continue;
                };
                let dests: Vec<IpAddr> = s
                    .endpoints
                    .iter()
                    .map(|e| e.ip)
                    .filter(|ip| claimed.insert((*ip, s.target_port)))
                    .collect();
                if dests.is_empty() {
                    continue;
                }
                let cluster_name = if with_svid {
                    let name = c.name.clone();
                    if endpoints_done.insert(name.clone()) {
                        snap.insert(type_url::CLUSTER, name.clone(), pack_any(c));
                    }
                    name
                } else {
                    format!(
                        "passthrough|{}|{}|{}/{}",
                        s.target_port,
                        s.key(),
                        w.namespace,
                        w.name
                    )
                };
                let dest_match = |protocols: Vec<String>| FilterChainMatch {
                    destination_port: Some(UInt32Value {
                        value: u32::from(s.target_port),
                    }),
                    prefix_ranges: dests.iter().map(|ip| cidr(*ip)).collect(),
                    application_protocols: protocols,
                    source_prefix_ranges: vec![cidr(w.ip)],
                    ..Default::default()
                };
                outbound_chains.push(FilterChain {
                    name: format!("{cluster_name}|http"),
                    filter_chain_match: Some(dest_match(http_protocols.clone())),
                    filters: vec![hcm_filter(hcm.clone())],
                    ..Default::default()
                });
                let stat = format!("outbound_tcp_{}_{}", w.namespace, w.name);
                outbound_chains.push(FilterChain {
                    name: cluster_name.clone(),
                    filter_chain_match: Some(dest_match(Vec::new())),
                    filters: vec![if with_svid {
                        l4::tcp_tunnel(&stat, &cluster_name, tcp_logs(mesh, Direction::Outbound))
                    } else {
                        l4::tcp_proxy(&stat, l4::PASSTHROUGH)
                    }],
                    ..Default::default()
                });
            }
            // Envoy matches the destination port before anything else and never falls back to
            // chains without one: every port claimed above also needs its catch-all (HTTP to
            // the L7 path, any other TCP passed through), or a destination outside those
            // services on the same port (a pod outside the mesh) has no chain and is reset.
            let ports: BTreeSet<u16> = claimed.iter().map(|(_, port)| *port).collect();
            for port in ports {
                let any_dest = |protocols: Vec<String>| FilterChainMatch {
                    destination_port: Some(UInt32Value {
                        value: u32::from(port),
                    }),
                    application_protocols: protocols,
                    source_prefix_ranges: vec![cidr(w.ip)],
                    ..Default::default()
                };
                outbound_chains.push(FilterChain {
                    name: format!("outbound|{port}|{}/{}|http", w.namespace, w.name),
                    filter_chain_match: Some(any_dest(http_protocols.clone())),
                    filters: vec![hcm_filter(hcm.clone())],
                    ..Default::default()
                });
                outbound_chains.push(FilterChain {
                    name: format!("passthrough|{port}|{}/{}", w.namespace, w.name),
                    filter_chain_match: Some(any_dest(Vec::new())),
                    filters: vec![l4::tcp_proxy(
                        &format!("passthrough_{}_{}", w.namespace, w.name),
                        l4::PASSTHROUGH,
                    )],
                    ..Default::default()
                });
            }
        }
        outbound_chains.push(FilterChain {
            name: format!("outbound|{}/{}", w.namespace, w.name),
            filter_chain_match: Some(FilterChainMatch {
                application_protocols: http_protocols,
                source_prefix_ranges: vec![cidr(w.ip)],
                ..Default::default()
            }),
            filters: vec![hcm_filter(hcm)],
            ..Default::default()
        });
        // Any other TCP: to its original destination (WireGuard between nodes; a strict pod
        // refuses it there).
        outbound_chains.push(FilterChain {
            name: format!("passthrough|{}/{}", w.namespace, w.name),
            filter_chain_match: Some(FilterChainMatch {
                source_prefix_ranges: vec![cidr(w.ip)],
                ..Default::default()
            }),
            filters: vec![l4::tcp_proxy(
                &format!("passthrough_{}_{}", w.namespace, w.name),
                l4::PASSTHROUGH,
            )],
            ..Default::default()
        });
    }
    if !outbound_chains.is_empty() {
        snap.insert(
            type_url::CLUSTER,
            l4::PASSTHROUGH,
            pack_any(l4::passthrough_cluster()),
        );
        snap.insert(
            type_url::LISTENER,
            OUTBOUND,
            pack_any(Listener {
                name: OUTBOUND.to_owned(),
                address: Some(socket(mesh.ports.outbound)),
                transparent: Some(BoolValue {
                    value: mesh.ports.transparent,
                }),
                // HTTP or not, from the first bytes; a client that sends nothing in time
                // (server-first protocols) is TCP.
                // original_dst marks the TPROXY'd destination as restored, so the L4
                // clusters (ORIGINAL_DST) may use it.
                listener_filters: vec![original_dst_filter(), l4::http_inspector()],
                listener_filters_timeout: Some(dur(l4::DETECTION_TIMEOUT_MS)),
                continue_on_listener_filters_timeout: true,
                filter_chains: outbound_chains,
                ..Default::default()
            }),
        );
    }
    // ---- ingress ----
    l7::ingress(mesh, &policies, &mut snap);
    snap
}

/// [`translate`] after [`crate::l7::validate`]: a config with problems is not translated (the
/// caller keeps serving its last good snapshot and reports the problems).
///
/// # Errors
/// Every problem [`crate::l7::validate`] finds.
pub fn translate_checked(mesh: &MeshConfig) -> Result<Snapshot, Vec<crate::l7::Problem>> {
    let problems = crate::l7::validate(mesh);
    if problems.is_empty() {
        Ok(translate(mesh))
    } else {
        Err(problems)
    }
}

/// Resources for gRPC's own xDS client: an API listener per service (named `name.namespace`,
/// the `xds:///name.namespace` target) → route → EDS cluster.
#[must_use]
pub fn grpc_client_resources(services: &[Service]) -> Snapshot {
    let mut snap = Snapshot::new();
    for s in services {
        let target = s.key();
        let cluster_name = outbound_cluster(s, None);
        let hcm = HttpConnectionManager {
            route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
                config_source: Some(ads()),
                route_config_name: target.clone(),
            })),
            http_filters: vec![router_filter()],
            ..Default::default()
        };
        snap.insert(
            type_url::LISTENER,
            target.clone(),
            pack_any(Listener {
                name: target.clone(),
                api_listener: Some(envoy_types::pb::envoy::config::listener::v3::ApiListener {
                    api_listener: Some(pack_any(hcm)),
                }),
                ..Default::default()
            }),
        );
        snap.insert(
            type_url::ROUTE,
            target.clone(),
            pack_any(RouteConfiguration {
                name: target.clone(),
                virtual_hosts: vec![route_to(&cluster_name, vec![target.clone()], &target)],
                ..Default::default()
            }),
        );
        snap.insert(
            type_url::CLUSTER,
            cluster_name.clone(),
            pack_any(eds_cluster(&cluster_name)),
        );
        snap.insert(
            type_url::ENDPOINT,
            cluster_name.clone(),
            pack_any(ClusterLoadAssignment {
                cluster_name: cluster_name.clone(),
                endpoints: vec![LocalityLbEndpoints {
                    locality: Some(Locality::default()),
                    lb_endpoints: s
                        .endpoints
                        .iter()
                        .map(|e| lb_endpoint_of(SocketAddr::new(e.ip, s.target_port), e.weight))
                        .collect(),
                    // gRPC ignores localities without a weight.
                    load_balancing_weight: Some(UInt32Value { value: 1 }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        );
    }
    snap
}

/// Unused-import guard for `Any` in docs.
#[doc(hidden)]
pub type AnyResource = Any;

#[cfg(test)]
mod tests;
