//! The L4 (any TCP) part of the translation, without Envoy.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use prost::Message;

use super::*;
use crate::l7::tests::decode;
use crate::mesh::{Endpoint, SvidPem};

const CLIENT: &str = "spiffe://td/ns/front/sa/client";
const WEB: &str = "spiffe://td/ns/shop/sa/web";

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 244, 1, last))
}

fn svid(id: &str) -> SvidPem {
    SvidPem {
        id: id.into(),
        chain_pem: "chain".into(),
        key_pem: zeroize::Zeroizing::new("key".into()),
    }
}

/// A strict client and a strict kv server on this node, an allow policy that needs HTTP.
fn mesh(policy_rule: AuthzRule) -> MeshConfig {
    let wl = |name: &str, ns: &str, id: &str, last| Workload {
        name: name.into(),
        namespace: ns.into(),
        id: id.into(),
        ip: ip(last),
        mtls: MtlsMode::Strict,
    };
    MeshConfig {
        trust_domain: "td".into(),
        workloads: vec![
            wl("client-1", "front", CLIENT, 11),
            wl("web-1", "shop", WEB, 10),
        ],
        services: vec![Service {
            name: "kv".into(),
            namespace: "shop".into(),
            port: 6379,
            target_port: 6379,
            mtls: MtlsMode::Strict,
            hosts: vec![],
            endpoints: vec![Endpoint {
                ip: ip(10),
                id: WEB.into(),
                mtls_address: SocketAddr::new(ip(10), 15008),
                weight: 1,
            }],
        }],
        policies: vec![AuthzPolicy {
            name: "shop/kv".into(),
            service: "kv".into(),
            namespace: "shop".into(),
            action: AuthzAction::Allow,
            rules: vec![policy_rule],
        }],
        svids: vec![svid(CLIENT), svid(WEB)],
        ..Default::default()
    }
}

fn chain<'a>(l: &'a Listener, name: &str) -> &'a FilterChain {
    l.filter_chains
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| {
            panic!(
                "no chain {name}: {:?}",
                l.filter_chains.iter().map(|c| &c.name).collect::<Vec<_>>()
            )
        })
}

fn rbac_of(c: &FilterChain, name: &str) -> Option<NetworkRbac> {
    c.filters.iter().find(|f| f.name == name).map(|f| {
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            panic!("untyped filter")
        };
        NetworkRbac::decode(any.value.as_slice()).unwrap()
    })
}

#[test]
fn non_http_tcp_to_an_mtls_pod_gets_an_l4_mtls_chain_and_the_rest_passes_through() {
    let snap = translate(&mesh(AuthzRule {
        ids: vec![CLIENT.into()],
        ..Default::default()
    }));
    let out: Listener = decode(&snap, type_url::LISTENER, OUTBOUND);
    // Protocol detection with a bounded wait, then TCP.
    assert_eq!(
        out.listener_filters
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>(),
        [
            "envoy.filters.listener.original_dst",
            "envoy.filters.listener.http_inspector"
        ]
    );
    assert!(out.continue_on_listener_filters_timeout);
    let cluster_name = "outbound-tcp|6379|kv.shop|spiffe://td/ns/front/sa/client";
    let tcp = chain(&out, cluster_name);
    let m = tcp.filter_chain_match.as_ref().unwrap();
    assert_eq!(m.destination_port.as_ref().unwrap().value, 6379);
    assert_eq!(m.prefix_ranges[0].address_prefix, "10.244.1.10");
    assert_eq!(m.source_prefix_ranges[0].address_prefix, "10.244.1.11");
    assert!(m.application_protocols.is_empty());
    assert_eq!(tcp.filters[0].name, "envoy.filters.network.tcp_proxy");
    let Some(filter::ConfigType::TypedConfig(any)) = &tcp.filters[0].config_type else {
        panic!("untyped tcp_proxy")
    };
    let proxy =
        envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy::decode(
            any.value.as_slice(),
        )
        .unwrap();
    assert_eq!(
        proxy.tunneling_config.expect("a CONNECT tunnel").hostname,
        "%DOWNSTREAM_LOCAL_ADDRESS%",
        "the stream names the dialled pod and port"
    );
    // Its HTTP twin keeps HTTP on the L7 path for the same destination.
    let twin = chain(&out, &format!("{cluster_name}|http"));
    assert_eq!(
        twin.filter_chain_match
            .as_ref()
            .unwrap()
            .application_protocols,
        ["http/1.0", "http/1.1", "h2c"]
    );
    assert_eq!(
        twin.filters[0].name,
        "envoy.filters.network.http_connection_manager"
    );
    // The L4 cluster: the dialled pod on its Envoy's mTLS port, with the caller's SVID.
    let c: Cluster = decode(&snap, type_url::CLUSTER, cluster_name);
    assert_eq!(
        c.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::OriginalDst as i32
        ))
    );
    let Some(cluster::LbConfig::OriginalDstLbConfig(o)) = &c.lb_config else {
        panic!("no original-dst config")
    };
    assert_eq!(o.upstream_port_override.as_ref().unwrap().value, 15008);
    assert!(
        c.typed_extension_protocol_options
            .contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
        "HTTP/2 to the peer Envoy: one pooled connection per pod for this caller"
    );
    let ts = c.transport_socket.as_ref().unwrap();
    let Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
        any,
    )) = &ts.config_type
    else {
        panic!("untyped TLS")
    };
    let tls =
        envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext::decode(
            any.value.as_slice(),
        )
        .unwrap();
    assert_eq!(tls.sni, "inbound-tcp-6379.identityd");
    // Everything else from the caller: passthrough to the original destination.
    let pass = chain(&out, "passthrough|front/client-1");
    assert_eq!(pass.filters[0].name, "envoy.filters.network.tcp_proxy");
    let _: Cluster = decode(&snap, type_url::CLUSTER, PASSTHROUGH);
    // Inbound: an L4 chain per workload port, selected by SNI, with network RBAC allowing
    // the client identity.
    let inb: Listener = decode(&snap, type_url::LISTENER, INBOUND);
    let l4 = chain(&inb, "inbound|6379|shop/web-1|tcp");
    let m = l4.filter_chain_match.as_ref().unwrap();
    assert_eq!(m.server_names, ["inbound-tcp-6379.identityd"]);
    let allow = rbac_of(l4, "envoy.filters.network.rbac.allow").expect("allow rbac");
    assert_eq!(allow.rules.unwrap().policies.len(), 1);
    assert_eq!(
        l4.filters.last().unwrap().name,
        "envoy.filters.network.http_connection_manager",
        "the inbound end terminates the CONNECT tunnel"
    );
    // Inline routes do not validate their clusters: the listener may be applied before the
    // clusters of the same snapshot (a NACK would otherwise stick until the next change).
    for name in ["inbound|6379|shop/web-1|tcp", "inbound|6379|shop/web-1"] {
        let c = chain(&inb, name);
        let Some(filter::ConfigType::TypedConfig(any)) = &c.filters.last().unwrap().config_type
        else {
            panic!("untyped HCM")
        };
        let hcm = envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager::decode(any.value.as_slice()).unwrap();
        let Some(envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier::RouteConfig(rc)) = hcm.route_specifier else {
            panic!("{name}: inline route expected")
        };
        assert_eq!(rc.validate_clusters.map(|v| v.value), Some(false), "{name}");
    }
}

#[test]
fn an_allow_rule_that_needs_http_allows_no_tcp_and_a_deny_rule_denies_on_identity() {
    let snap = translate(&mesh(AuthzRule {
        ids: vec![CLIENT.into()],
        methods: vec!["GET".into()],
        ..Default::default()
    }));
    let inb: Listener = decode(&snap, type_url::LISTENER, INBOUND);
    let l4 = chain(&inb, "inbound|6379|shop/web-1|tcp");
    let allow = rbac_of(l4, "envoy.filters.network.rbac.allow").expect("allow rbac");
    assert!(
        allow.rules.unwrap().policies.is_empty(),
        "an ALLOW filter with no policy allows nothing"
    );
    let mut m = mesh(AuthzRule {
        service_accounts: vec!["front/client".into()],
        paths: vec!["/admin*".into()],
        ..Default::default()
    });
    m.policies[0].action = AuthzAction::Deny;
    let snap = translate(&m);
    let inb: Listener = decode(&snap, type_url::LISTENER, INBOUND);
    let l4 = chain(&inb, "inbound|6379|shop/web-1|tcp");
    assert!(rbac_of(l4, "envoy.filters.network.rbac.allow").is_none());
    let deny = rbac_of(l4, "envoy.filters.network.rbac.deny").expect("deny rbac");
    let policies = deny.rules.unwrap().policies;
    let p = policies.values().next().unwrap();
    assert_eq!(
        p.permissions.len(),
        1,
        "the path condition is dropped: deny on identity alone"
    );
    assert!(matches!(
        p.permissions[0].rule,
        Some(envoy_types::pb::envoy::config::rbac::v3::permission::Rule::Any(true))
    ));
}

#[test]
fn a_caller_without_an_svid_gets_no_l4_mtls_chain_but_its_own_plaintext_chains() {
    let mut m = mesh(AuthzRule::default());
    m.svids.retain(|s| s.id != CLIENT);
    let snap = translate(&m);
    let out: Listener = decode(&snap, type_url::LISTENER, OUTBOUND);
    assert!(
        !out.filter_chains
            .iter()
            .any(|c| c.name.starts_with("outbound-tcp|") && c.name.contains(CLIENT)),
        "no mTLS chain without the caller's SVID"
    );
    // It still has chains for the destinations other callers match on (Envoy matches the
    // destination first): its TCP passes through in plaintext, which a strict server's ingress
    // strict refuses and a permissive one accepts.
    let own = chain(&out, "passthrough|6379|kv.shop|front/client-1");
    assert_eq!(
        own.filter_chain_match
            .as_ref()
            .unwrap()
            .source_prefix_ranges[0]
            .address_prefix,
        "10.244.1.11"
    );
    assert!(!snap.resources(type_url::CLUSTER).is_some_and(|r| {
        r.keys()
            .any(|k| k.contains(CLIENT) && k.starts_with("outbound-tcp"))
    }));
}
