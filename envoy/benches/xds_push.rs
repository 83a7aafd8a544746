//! xDS push bench against one real Envoy: for 100, 1k and 10k services (a route each, a
//! cluster each, an endpoint set each) measure
//! - start → all types ACKed over ADS (state of the world),
//! - start → LIVE for Envoy reading the same config from a static bootstrap file,
//! - start → all ACKed over delta xDS, then one route change and one cluster change → ACKed.
//!
//! `cargo bench -p identityd-envoy --bench xds_push` (sizes via `IDENTITYD_BENCH_SIZES=100,1000`);
//! writes `target/bench-reports/xds_push.json`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use identityd_envoy::bootstrap::{XdsAddress, XdsFlavour, bootstrap_yaml};
use identityd_envoy::envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use identityd_envoy::envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress, address, config_source, socket_address,
};
use identityd_envoy::envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use identityd_envoy::envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use identityd_envoy::envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action, route_match,
};
use identityd_envoy::envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use identityd_envoy::envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use identityd_envoy::envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use identityd_envoy::envoy_types::util::pack_any;
use identityd_envoy::server::{Snapshot, XdsCache, XdsServer, serve, type_url};
use identityd_tests::envoy::Envoy;

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

fn addr(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn vhost(i: usize, cluster: &str) -> VirtualHost {
    VirtualHost {
        name: format!("svc-{i}"),
        domains: vec![format!("svc-{i}")],
        routes: vec![Route {
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.into())),
                ..Default::default()
            })),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// `variant` 1 changes service 0's route target; 2 changes service 0's cluster.
fn snapshot(n: usize, listen_port: u16, variant: u32) -> Snapshot {
    let mut s = Snapshot::new();
    let hcm = HttpConnectionManager {
        stat_prefix: "bench".into(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: "bench-routes".into(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    };
    s.insert(
        type_url::LISTENER,
        "bench",
        pack_any(Listener {
            name: "bench".into(),
            address: Some(addr("127.0.0.1", u32::from(listen_port))),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
    );
    let mut vhosts = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("svc-{i}");
        let target = if i == 0 && variant == 1 {
            "svc-1".to_owned()
        } else {
            name.clone()
        };
        vhosts.push(vhost(i, &target));
        s.insert(
            type_url::CLUSTER,
            name.clone(),
            pack_any(Cluster {
                name: name.clone(),
                connect_timeout: Some(PbDuration {
                    seconds: 1,
                    nanos: 0,
                }),
                cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                    cluster::DiscoveryType::Eds as i32,
                )),
                eds_cluster_config: Some(cluster::EdsClusterConfig {
                    eds_config: Some(ads()),
                    service_name: String::new(),
                }),
                per_connection_buffer_limit_bytes: (i == 0 && variant == 2)
                    .then_some(UInt32Value { value: 65536 }),
                ..Default::default()
            }),
        );
        s.insert(
            type_url::ENDPOINT,
            name.clone(),
            pack_any(ClusterLoadAssignment {
                cluster_name: name,
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: vec![LbEndpoint {
                        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                            address: Some(addr(
                                "127.0.0.1",
                                20_000 + u32::try_from(i % 40_000).unwrap_or(0),
                            )),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
        );
    }
    s.insert(
        type_url::ROUTE,
        "bench-routes",
        pack_any(RouteConfiguration {
            name: "bench-routes".into(),
            virtual_hosts: vhosts,
            ..Default::default()
        }),
    );
    s
}

/// The same listener, routes and clusters as a static bootstrap (endpoints inline).
fn static_yaml(n: usize, listen_port: u16) -> String {
    let mut y = String::from(
        "admin:\n  address: { socket_address: { address: 127.0.0.1, port_value: 0 } }\nstatic_resources:\n  listeners:\n",
    );
    let _ = write!(
        y,
        "  - name: bench\n    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen_port} }} }}\n    filter_chains:\n    - filters:\n      - name: envoy.filters.network.http_connection_manager\n        typed_config:\n          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n          stat_prefix: bench\n          http_filters:\n          - name: envoy.filters.http.router\n            typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}\n          route_config:\n            name: bench-routes\n            virtual_hosts:\n"
    );
    for i in 0..n {
        let _ = writeln!(
            y,
            "            - {{ name: svc-{i}, domains: [svc-{i}], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: svc-{i} }} }}] }}"
        );
    }
    y.push_str("  clusters:\n");
    for i in 0..n {
        let _ = writeln!(
            y,
            "  - {{ name: svc-{i}, type: STATIC, connect_timeout: 1s, load_assignment: {{ cluster_name: svc-{i}, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }} }}] }}] }} }}",
            20_000 + i % 40_000
        );
    }
    y
}

fn all_acked(cache: &XdsCache, node: &str) -> bool {
    let st = cache.status(node);
    !st.is_empty() && st.iter().all(|t| t.accepted == Some(t.version))
}

async fn wait_acked(cache: &XdsCache, node: &str, limit: Duration) -> Duration {
    let t0 = Instant::now();
    while !all_acked(cache, node) {
        assert!(
            t0.elapsed() < limit,
            "{node} not ACKed within {limit:?}: {:?}",
            cache.status(node)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    t0.elapsed()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes: Vec<usize> = std::env::var("IDENTITYD_BENCH_SIZES")
        .unwrap_or_else(|_| "100,1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let cache = XdsCache::new();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let xds = l.local_addr().expect("addr");
    tokio::spawn(serve(
        XdsServer::new(Arc::clone(&cache)),
        None,
        tokio_stream::wrappers::TcpListenerStream::new(l),
    ));
    let tmp = std::env::temp_dir().join(format!("idd-xds-bench-{}", std::process::id()));
    let mut rows = Vec::new();
    for n in sizes {
        // ADS, state of the world: start -> everything ACKed.
        let node = format!("sotw-{n}");
        cache.set_snapshot(&node, snapshot(n, free_port(), 0));
        let t0 = Instant::now();
        let envoy = Envoy::start(
            &tmp.join(&node),
            &bootstrap_yaml(&node, &XdsAddress::Tcp(xds), 0, XdsFlavour::Sotw),
        );
        let _ = wait_acked(&cache, &node, Duration::from_secs(300)).await;
        let sotw_ack = t0.elapsed();
        drop(envoy);

        // Static file: start -> LIVE.
        let t0 = Instant::now();
        let envoy = Envoy::start(
            &tmp.join(format!("static-{n}")),
            &static_yaml(n, free_port()),
        );
        envoy.wait_live(Duration::from_secs(300));
        let static_live = t0.elapsed();
        drop(envoy);

        // Delta: start -> ACKed, then one route change and one cluster change.
        let node = format!("delta-{n}");
        let port = free_port();
        cache.set_snapshot(&node, snapshot(n, port, 0));
        let t0 = Instant::now();
        let envoy = Envoy::start(
            &tmp.join(&node),
            &bootstrap_yaml(&node, &XdsAddress::Tcp(xds), 0, XdsFlavour::Delta),
        );
        let _ = wait_acked(&cache, &node, Duration::from_secs(300)).await;
        let delta_ack = t0.elapsed();
        cache.set_snapshot(&node, snapshot(n, port, 1));
        let route_change = wait_acked(&cache, &node, Duration::from_secs(120)).await;
        cache.set_snapshot(&node, snapshot(n, port, 2));
        let cluster_change = wait_acked(&cache, &node, Duration::from_secs(120)).await;
        drop(envoy);

        println!(
            "{n:>6} services: sotw start->ACK {:>8} ms | static start->LIVE {:>8} ms | delta start->ACK {:>8} ms | delta 1-route change {:>7} ms | delta 1-cluster change {:>7} ms",
            ms(sotw_ack),
            ms(static_live),
            ms(delta_ack),
            ms(route_change),
            ms(cluster_change)
        );
        rows.push(format!(
            "{{\"services\":{n},\"sotw_start_to_ack_ms\":{},\"static_start_to_live_ms\":{},\"delta_start_to_ack_ms\":{},\"delta_one_route_change_ms\":{},\"delta_one_cluster_change_ms\":{}}}",
            ms(sotw_ack),
            ms(static_live),
            ms(delta_ack),
            ms(route_change),
            ms(cluster_change)
        ));
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let dir = identityd_tests::tools::workspace_root().join("target/bench-reports");
    let _ = std::fs::create_dir_all(&dir);
    let report = format!(
        "{{\"bench\":\"xds_push\",\"envoy\":\"1.40 (venv)\",\"results\":[{}]}}\n",
        rows.join(",")
    );
    let path = dir.join("xds_push.json");
    std::fs::write(&path, report).expect("write report");
    println!("report: {}", path.display());
}
