//! Validation and translation of the L7 structs, without Envoy.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{
    RouteAction, RouteConfiguration, route, route_action,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use prost::Message;

use super::*;
use crate::mesh::{Endpoint, MtlsMode, Service, Workload};
use crate::server::type_url;
use crate::translate::{
    RATE_LIMIT_FILTER, ingress_cluster, ingress_route, translate, translate_checked,
};

fn svc(name: &str, port: u16) -> Service {
    let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    Service {
        name: name.into(),
        namespace: "shop".into(),
        port,
        target_port: 8080,
        mtls: MtlsMode::Disabled,
        hosts: vec![],
        endpoints: vec![Endpoint {
            ip,
            id: format!("spiffe://td/ns/shop/sa/{name}"),
            mtls_address: SocketAddr::new(ip, 15008),
            weight: 1,
        }],
    }
}

fn backend(service: &str, weight: u32) -> WeightedBackend {
    WeightedBackend {
        service: service.into(),
        namespace: "shop".into(),
        port: 80,
        weight,
    }
}

fn route(name: &str, parent: RouteParent, backends: Vec<WeightedBackend>) -> HttpRoute {
    HttpRoute {
        name: name.into(),
        namespace: "shop".into(),
        parents: vec![parent],
        rules: vec![RouteRule {
            backends,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn base() -> MeshConfig {
    MeshConfig {
        trust_domain: "td".into(),
        services: vec![svc("web", 80), svc("v1", 80), svc("v2", 80)],
        l7: L7Config {
            listeners: vec![IngressListener {
                name: "gw".into(),
                address: SocketAddr::from(([0, 0, 0, 0], 8080)),
                ..Default::default()
            }],
            routes: vec![route(
                "canary",
                RouteParent::Listener("gw".into()),
                vec![backend("v1", 90), backend("v2", 10)],
            )],
            ..Default::default()
        },
        ..Default::default()
    }
}

fn policy(target: PolicyTarget) -> TrafficPolicy {
    TrafficPolicy {
        name: "p".into(),
        namespace: "shop".into(),
        target,
        ..Default::default()
    }
}

fn web() -> PolicyTarget {
    PolicyTarget::Service {
        name: "v1".into(),
        namespace: "shop".into(),
    }
}

fn fields(p: &[Problem]) -> Vec<String> {
    p.iter()
        .map(|p| format!("{}: {}", p.field, p.message))
        .collect()
}

#[test]
fn a_valid_config_has_no_problems() {
    assert_eq!(validate(&base()), vec![]);
    assert!(translate_checked(&base()).is_ok());
}

#[test]
fn weights_summing_to_zero_are_reported() {
    let mut m = base();
    m.l7.routes[0].rules[0].backends = vec![backend("v1", 0), backend("v2", 0)];
    let p = validate(&m);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].object, "HTTPRoute shop/canary");
    assert_eq!(p[0].field, "rules[0].backends");
    assert!(p[0].message.contains("weights sum to 0"), "{}", p[0]);
    assert!(translate_checked(&m).is_err(), "never translated");
}

#[test]
fn unknown_backends_parents_and_targets_are_reported() {
    let mut m = base();
    m.l7.routes[0].rules[0].backends.push(backend("nope", 1));
    m.l7.routes[0].rules[0].backends.push(WeightedBackend {
        port: 81,
        ..backend("v1", 1)
    });
    m.l7.routes[0]
        .parents
        .push(RouteParent::Listener("other".into()));
    m.l7.policies.push(policy(PolicyTarget::Service {
        name: "ghost".into(),
        namespace: "shop".into(),
    }));
    let f = fields(&validate(&m));
    assert!(
        f.contains(&"rules[0].backends[2]: unknown backend shop/nope port 80".to_owned()),
        "{f:?}"
    );
    assert!(
        f.contains(&"rules[0].backends[3]: unknown backend shop/v1 port 81".to_owned()),
        "{f:?}"
    );
    assert!(
        f.contains(&"parents[1]: unknown listener \"other\"".to_owned()),
        "{f:?}"
    );
    assert!(
        f.contains(&"targetRef: unknown service shop/ghost".to_owned()),
        "{f:?}"
    );
}

#[test]
fn negative_durations_are_reported() {
    let mut m = base();
    m.l7.routes[0].rules[0].timeout_ms = Some(-1);
    let mut p = policy(web());
    p.timeout_ms = Some(-5);
    p.retries = Some(Retries {
        attempts: 2,
        per_try_timeout_ms: Some(-2),
        backoff_base_ms: Some(-3),
        ..Default::default()
    });
    p.outlier_detection = Some(OutlierDetection {
        base_ejection_time_ms: Some(-4),
        ..Default::default()
    });
    p.local_rate_limit = Some(LocalRateLimit {
        tokens: 1,
        fill_interval_ms: -6,
    });
    m.l7.policies.push(p);
    let f = validate(&m);
    let text: Vec<String> = f.iter().map(ToString::to_string).collect();
    for field in [
        "rules[0].timeout",
        "timeout",
        "retries.perTryTimeout",
        "retries.backoff.baseInterval",
        "outlierDetection.baseEjectionTime",
        "localRateLimit.fillInterval",
    ] {
        assert!(
            f.iter().any(|p| p.field == field),
            "{field} missing in {text:#?}"
        );
    }
    assert!(
        text.contains(
            &"TrafficPolicy shop/p: timeout: -5ms: a duration must not be negative".to_owned()
        ),
        "{text:#?}"
    );
}

#[test]
fn two_policies_on_the_same_target_are_reported() {
    let mut m = base();
    m.l7.policies.push(policy(web()));
    let mut second = policy(web());
    second.name = "q".into();
    m.l7.policies.push(second);
    let p = validate(&m);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].object, "TrafficPolicy shop/q");
    assert!(
        p[0].message
            .contains("already the target of TrafficPolicy shop/p"),
        "{}",
        p[0]
    );
}

#[test]
fn other_bad_values_are_reported() {
    let mut m = base();
    m.l7.routes[0].rules.push(RouteRule {
        matches: vec![RouteMatch {
            path: Some(PathMatch::Prefix("api".into())),
            method: Some("GE T".into()),
            ..Default::default()
        }],
        redirect: Some(Redirect {
            status_code: Some(399),
            ..Default::default()
        }),
        ..Default::default()
    });
    let mut p = policy(PolicyTarget::Route {
        name: "canary".into(),
        namespace: "shop".into(),
    });
    p.circuit_breaker = Some(CircuitBreaker::default());
    p.retries = Some(Retries {
        retry_on: vec!["sometimes".into()],
        ..Default::default()
    });
    m.l7.policies.push(p);
    m.l7.routes.push(HttpRoute {
        kind: RouteKind::Grpc,
        ..route(
            "grpc",
            RouteParent::Listener("h1".into()),
            vec![backend("v1", 1)],
        )
    });
    m.l7.listeners.push(IngressListener {
        name: "outbound".into(),
        address: SocketAddr::from(([0, 0, 0, 0], 8082)),
        ..Default::default()
    });
    m.l7.listeners.push(IngressListener {
        name: "h1".into(),
        address: SocketAddr::from(([0, 0, 0, 0], 8081)),
        http: HttpVersions::Http1,
        tls: None,
    });
    m.l7.listeners.push(IngressListener {
        name: "gw".into(),
        tls: Some(ListenerTls {
            certificates: vec![IngressCertificate {
                hostnames: vec![],
                source: CertSource::Sds("missing".into()),
            }],
        }),
        ..Default::default()
    });
    let f = fields(&validate(&m));
    for want in [
        "rules[1].matches[0].path: \"api\": a path must start with '/'",
        "rules[1].matches[0].method: \"GE T\": expected an HTTP method like GET",
        "rules[1].redirect.statusCode: 399: expected 301, 302, 303, 307 or 308",
        "circuitBreaker: applies to a Service's backends; route shop/canary is not a Service",
        "name: two listeners have this name",
        "address: 0.0.0.0:8080 is also the address of listener gw",
        "tls.certificates[0].secret: secret \"missing\" is not among the TLS secrets",
        "parents[0]: listener \"h1\" speaks only HTTP/1.1; gRPC needs HTTP/2",
        "name: \"outbound\" is the name of a mesh listener; choose another",
    ] {
        assert!(f.contains(&want.to_owned()), "{want} missing in {f:#?}");
    }
    assert!(
        f.iter()
            .any(|x| x.starts_with("retries.retryOn[0]: \"sometimes\"")),
        "{f:#?}"
    );
}

/// Resource `name` of type `t` in `snap`, decoded (panics when absent); shared by the
/// translation tests.
pub(crate) fn decode<T: Message + Default>(
    snap: &crate::server::Snapshot,
    t: &str,
    name: &str,
) -> T {
    let any = snap
        .resources(t)
        .and_then(|r| r.get(name))
        .unwrap_or_else(|| panic!("no {t} {name}"));
    T::decode(any.value.as_slice()).unwrap()
}

#[test]
fn ingress_split_policies_and_rate_limit_translate() {
    let mut m = base();
    let mut p = policy(PolicyTarget::Route {
        name: "canary".into(),
        namespace: "shop".into(),
    });
    p.retries = Some(Retries {
        attempts: 3,
        per_try_timeout_ms: Some(250),
        backoff_base_ms: Some(10),
        backoff_max_ms: Some(100),
        ..Default::default()
    });
    p.timeout_ms = Some(1500);
    p.local_rate_limit = Some(LocalRateLimit {
        tokens: 10,
        fill_interval_ms: 1000,
    });
    let mut cb = policy(web());
    cb.name = "cb".into();
    cb.circuit_breaker = Some(CircuitBreaker {
        max_pending_requests: Some(7),
        ..Default::default()
    });
    cb.outlier_detection = Some(OutlierDetection {
        consecutive_5xx: Some(3),
        ..Default::default()
    });
    m.l7.policies = vec![p, cb];
    let snap = translate_checked(&m).unwrap();
    let rc: RouteConfiguration = decode(&snap, type_url::ROUTE, &ingress_route("gw"));
    assert_eq!(rc.virtual_hosts.len(), 1);
    assert_eq!(rc.virtual_hosts[0].domains, vec!["*"]);
    let r = &rc.virtual_hosts[0].routes[0];
    assert!(r.typed_per_filter_config.contains_key(RATE_LIMIT_FILTER));
    let Some(route::Action::Route(a)) = &r.action else {
        panic!("{r:?}")
    };
    let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = &a.cluster_specifier else {
        panic!("{a:?}")
    };
    let got: Vec<(String, u32)> = w
        .clusters
        .iter()
        .map(|c| (c.name.clone(), c.weight.as_ref().unwrap().value))
        .collect();
    assert_eq!(
        got,
        vec![
            ("ingress|80|v1.shop".to_owned(), 90),
            ("ingress|80|v2.shop".to_owned(), 10)
        ]
    );
    assert_eq!(a.timeout.as_ref().unwrap().nanos, 500_000_000);
    let rp = a.retry_policy.as_ref().unwrap();
    assert_eq!(rp.num_retries.as_ref().unwrap().value, 3);
    assert_eq!(rp.retry_on, "5xx,reset,connect-failure");
    let v1: Cluster = decode(
        &snap,
        type_url::CLUSTER,
        &ingress_cluster(&m.services[1], RouteKind::Http),
    );
    let th = &v1.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(th.max_pending_requests.as_ref().unwrap().value, 7);
    assert_eq!(
        v1.outlier_detection
            .as_ref()
            .unwrap()
            .consecutive_5xx
            .as_ref()
            .unwrap()
            .value,
        3
    );
    let v2: Cluster = decode(&snap, type_url::CLUSTER, "ingress|80|v2.shop");
    assert!(v2.circuit_breakers.is_none(), "the policy targets v1 only");
    let l: Listener = decode(&snap, type_url::LISTENER, "gw");
    let hcm_any = match &l.filter_chains[0].filters[0].config_type {
        Some(envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(a)) => a,
        other => panic!("{other:?}"),
    };
    let hcm = HttpConnectionManager::decode(hcm_any.value.as_slice()).unwrap();
    let names: Vec<&str> = hcm.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, vec![RATE_LIMIT_FILTER, "envoy.filters.http.router"]);
}

#[test]
fn a_route_on_a_service_splits_the_mesh_per_caller() {
    let mut m = base();
    m.workloads = vec![Workload {
        name: "c-0".into(),
        namespace: "front".into(),
        id: "spiffe://td/ns/front/sa/c".into(),
        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)),
        mtls: MtlsMode::Disabled,
    }];
    m.l7.routes.push(route(
        "web-split",
        RouteParent::Service {
            name: "web".into(),
            namespace: "shop".into(),
        },
        vec![backend("v1", 1), backend("v2", 3)],
    ));
    // A TrafficPolicy on the Service the callers address governs the split's route (the
    // backends have none of their own).
    let mut p = policy(PolicyTarget::Service {
        name: "web".into(),
        namespace: "shop".into(),
    });
    p.timeout_ms = Some(3000);
    m.l7.policies.push(p);
    let snap = translate(&m);
    let rc: RouteConfiguration = decode(&snap, type_url::ROUTE, "outbound|front/c-0");
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|v| v.name == "web.shop")
        .unwrap();
    let Some(route::Action::Route(a)) = &vh.routes[0].action else {
        panic!()
    };
    let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = &a.cluster_specifier else {
        panic!("{a:?}")
    };
    let names: Vec<&str> = w.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["outbound|80|v1.shop", "outbound|80|v2.shop"]);
    assert_eq!(
        a.timeout.as_ref().map(|d| (d.seconds, d.nanos)),
        Some((3, 0)),
        "web's TrafficPolicy timeout on the split route: {a:?}"
    );
    // Other services keep their single route.
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|v| v.name == "v1.shop")
        .unwrap();
    assert!(matches!(
        &vh.routes[0].action,
        Some(route::Action::Route(RouteAction { cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(c)), .. })) if c == "outbound|80|v1.shop"
    ));
}

#[test]
fn without_l7_the_translation_is_unchanged() {
    let mut m = base();
    m.l7 = L7Config::default();
    m.workloads = vec![Workload {
        name: "c-0".into(),
        namespace: "front".into(),
        id: "spiffe://td/ns/front/sa/c".into(),
        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)),
        mtls: MtlsMode::Disabled,
    }];
    let snap = translate(&m);
    let l: Listener = decode(&snap, type_url::LISTENER, crate::translate::OUTBOUND);
    let hcm_any = match &l.filter_chains[0].filters[0].config_type {
        Some(envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(a)) => a,
        other => panic!("{other:?}"),
    };
    let hcm = HttpConnectionManager::decode(hcm_any.value.as_slice()).unwrap();
    assert_eq!(hcm.http_filters.len(), 1, "only the router");
    let rc: RouteConfiguration = decode(&snap, type_url::ROUTE, "outbound|front/c-0");
    for vh in &rc.virtual_hosts {
        assert_eq!(vh.routes.len(), 1);
        assert!(vh.routes[0].name.is_empty());
        assert!(vh.routes[0].typed_per_filter_config.is_empty());
    }
    assert!(snap.resources(type_url::LISTENER).unwrap().len() == 1);
}
