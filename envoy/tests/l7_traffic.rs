//! L7 traffic management through a real Envoy configured only by identityd's xDS server:
//! weighted splitting (ingress and mesh), retries, timeouts, circuit breaking, outlier
//! detection and local rate limiting, each checked with real requests and Envoy's own stats.

#[path = "support/l7.rs"]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use identityd_envoy::l7::HttpRoute;
use identityd_envoy::l7::{
    CircuitBreaker, IngressListener, L7Config, LocalRateLimit, OutlierDetection, PolicyTarget,
    Retries, RouteParent, RouteRule, TrafficPolicy, WeightedBackend,
};
use identityd_envoy::mesh::{MtlsMode, Workload};
use support::{Behaviour, Harness, backend, free_addr, get, ingress_mesh, ip, request, service};

fn listener(name: &str, address: SocketAddr) -> IngressListener {
    IngressListener {
        name: name.into(),
        address,
        ..Default::default()
    }
}

fn backend_ref(service: &str, port: u16, weight: u32) -> WeightedBackend {
    WeightedBackend {
        service: service.into(),
        namespace: "shop".into(),
        port,
        weight,
    }
}

fn route_to(name: &str, parent: RouteParent, backends: Vec<WeightedBackend>) -> HttpRoute {
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

/// Sends `n` requests (16 at a time) and counts the responses whose body starts with `first`.
async fn split(
    from: std::net::IpAddr,
    to: SocketAddr,
    host: &str,
    n: usize,
    first: &str,
) -> (usize, usize, usize) {
    let mut tasks = Vec::new();
    for t in 0..16 {
        let host = host.to_owned();
        let first = first.to_owned();
        tasks.push(tokio::spawn(async move {
            let (mut a, mut b, mut bad) = (0, 0, 0);
            for _ in (t..n).step_by(16) {
                let r = request(from, to, "GET", &host, "/", &[]).await;
                if r.status != 200 {
                    bad += 1;
                } else if r.body.starts_with(&first) {
                    a += 1;
                } else {
                    b += 1;
                }
            }
            (a, b, bad)
        }));
    }
    let mut sum = (0, 0, 0);
    for t in tasks {
        let (a, b, bad) = t.await.unwrap();
        sum = (sum.0 + a, sum.1 + b, sum.2 + bad);
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_90_10_on_ingress_and_mesh_and_0_100() {
    let h = Harness::start().await;
    let (v1, v2) = (free_addr(), free_addr());
    backend(v1, "v1", Behaviour::Ok).await;
    backend(v2, "v2", Behaviour::Ok).await;
    let ingress = free_addr();
    let outbound = free_addr();
    let services = vec![
        service("web", "shop", 80, v1.port(), &[ip(1)]),
        service("web-v1", "shop", 80, v1.port(), &[ip(1)]),
        service("web-v2", "shop", 80, v2.port(), &[ip(1)]),
    ];
    let mesh_with = |w1: u32, w2: u32| {
        let mut m = ingress_mesh(
            services.clone(),
            L7Config {
                listeners: vec![listener("gw", ingress)],
                routes: vec![
                    route_to(
                        "canary",
                        RouteParent::Listener("gw".into()),
                        vec![backend_ref("web-v1", 80, 90), backend_ref("web-v2", 80, 10)],
                    ),
                    // GAMMA: the same kind of route attached to the Service drives the
                    // outbound routes of the node's Envoy.
                    route_to(
                        "web-mesh",
                        RouteParent::Service {
                            name: "web".into(),
                            namespace: "shop".into(),
                        },
                        vec![backend_ref("web-v1", 80, w1), backend_ref("web-v2", 80, w2)],
                    ),
                ],
                ..Default::default()
            },
        );
        m.ports.outbound = outbound;
        m.workloads = vec![Workload {
            name: "client-0".into(),
            namespace: "front".into(),
            id: "spiffe://cluster.local/ns/front/sa/client".into(),
            ip: ip(2),
            mtls: MtlsMode::Disabled,
        }];
        m
    };
    h.push(&mesh_with(90, 10)).await;
    support::wait_status(&h, ingress, "shop.example", "/", 200).await;

    let n = 2000;
    let (a, b, bad) = split(ip(1), ingress, "shop.example", n, "v1").await;
    let pct = 100.0 * a as f64 / n as f64;
    eprintln!("ingress 90/10 over {n}: v1 {a} ({pct:.2}%), v2 {b}, errors {bad}");
    assert_eq!(bad, 0, "no failed requests");
    assert!((pct - 90.0).abs() <= 3.0, "ingress split: v1 got {pct:.2}%");

    let (a, b, bad) = split(ip(2), outbound, "web.shop", n, "v1").await;
    let pct = 100.0 * a as f64 / n as f64;
    eprintln!("mesh 90/10 over {n}: v1 {a} ({pct:.2}%), v2 {b}, errors {bad}");
    assert_eq!(bad, 0, "no failed requests");
    assert!((pct - 90.0).abs() <= 3.0, "mesh split: v1 got {pct:.2}%");

    // 0/100: nothing reaches the first backend.
    h.push(&mesh_with(0, 100)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(outbound, "web.shop", "/").await.body.starts_with("v1") {
        assert!(Instant::now() < deadline, "0/100 never took effect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (a, b, bad) = split(ip(2), outbound, "web.shop", 500, "v1").await;
    eprintln!("mesh 0/100 over 500: v1 {a}, v2 {b}, errors {bad}");
    assert_eq!((a, bad), (0, 0), "0/100 sends none to the first backend");
    assert_eq!(b, 500);
}

fn policy(target: PolicyTarget) -> TrafficPolicy {
    TrafficPolicy {
        name: "p".into(),
        namespace: "shop".into(),
        target,
        ..Default::default()
    }
}

fn svc_target(name: &str) -> PolicyTarget {
    PolicyTarget::Service {
        name: name.into(),
        namespace: "shop".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_503_succeeds_and_shows_in_stats() {
    let h = Harness::start().await;
    let b = free_addr();
    let count = backend(b, "flaky", Behaviour::FailOdd).await;
    let ingress = free_addr();
    let mut p = policy(svc_target("flaky"));
    p.retries = Some(Retries {
        attempts: 2,
        retry_on: vec!["5xx".into()],
        backoff_base_ms: Some(5),
        backoff_max_ms: Some(20),
        per_try_timeout_ms: Some(2000),
    });
    let mesh = ingress_mesh(
        vec![service("flaky", "shop", 80, b.port(), &[ip(1)])],
        L7Config {
            listeners: vec![listener("gw", ingress)],
            routes: vec![route_to(
                "r",
                RouteParent::Listener("gw".into()),
                vec![backend_ref("flaky", 80, 1)],
            )],
            policies: vec![p],
            ..Default::default()
        },
    );
    h.push(&mesh).await;
    support::wait_status(&h, ingress, "x", "/", 200).await;
    let retries_before = h.stat("flaky", ".upstream_rq_retry");
    let sent_before = count.load(std::sync::atomic::Ordering::SeqCst);
    for i in 0..10 {
        let r = get(ingress, "x", "/").await;
        assert_eq!(r.status, 200, "request {i} succeeds on retry: {r:?}");
    }
    let attempts = count.load(std::sync::atomic::Ordering::SeqCst) - sent_before;
    let retries = h.stat("flaky", ".upstream_rq_retry") - retries_before;
    eprintln!("10 requests: {attempts} upstream attempts, upstream_rq_retry +{retries}");
    assert_eq!(attempts, 20, "each request: a 503 then a success");
    assert_eq!(retries, 10, "Envoy counted one retry per request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backend_gets_504_within_the_timeout() {
    let h = Harness::start().await;
    let b = free_addr();
    backend(b, "slow", Behaviour::Slow(Duration::from_secs(3))).await;
    let fast = free_addr();
    backend(fast, "fast", Behaviour::Ok).await;
    let ingress = free_addr();
    let mut p = policy(PolicyTarget::Route {
        name: "r".into(),
        namespace: "shop".into(),
    });
    p.timeout_ms = Some(500);
    let mut r = route_to(
        "r",
        RouteParent::Listener("gw".into()),
        vec![backend_ref("slow", 80, 1)],
    );
    r.hostnames = vec!["slow.example".into()];
    let mut ok = route_to(
        "ok",
        RouteParent::Listener("gw".into()),
        vec![backend_ref("fast", 80, 1)],
    );
    ok.hostnames = vec!["fast.example".into()];
    let mesh = ingress_mesh(
        vec![
            service("slow", "shop", 80, b.port(), &[ip(1)]),
            service("fast", "shop", 80, fast.port(), &[ip(1)]),
        ],
        L7Config {
            listeners: vec![listener("gw", ingress)],
            routes: vec![r, ok],
            policies: vec![p],
            ..Default::default()
        },
    );
    h.push(&mesh).await;
    support::wait_status(&h, ingress, "fast.example", "/", 200).await;
    let mut took = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let r = get(ingress, "slow.example", "/").await;
        let el = t.elapsed();
        assert_eq!(r.status, 504, "slow backend → 504: {r:?}");
        took.push(el.as_millis());
        assert!(
            el >= Duration::from_millis(400) && el <= Duration::from_millis(600),
            "504 after {el:?}, expected 500ms ±20%"
        );
    }
    eprintln!("timeout 500ms: 504 after {took:?} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_overflow_gets_503_and_shows_in_stats() {
    let h = Harness::start().await;
    let b = free_addr();
    backend(b, "cb", Behaviour::Slow(Duration::from_millis(800))).await;
    let ingress = free_addr();
    let mut p = policy(svc_target("cb"));
    p.circuit_breaker = Some(CircuitBreaker {
        max_connections: Some(1),
        max_pending_requests: Some(1),
        max_requests: Some(1),
        max_retries: Some(0),
    });
    let mesh = ingress_mesh(
        vec![service("cb", "shop", 80, b.port(), &[ip(1)])],
        L7Config {
            listeners: vec![listener("gw", ingress)],
            routes: vec![route_to(
                "r",
                RouteParent::Listener("gw".into()),
                vec![backend_ref("cb", 80, 1)],
            )],
            policies: vec![p],
            ..Default::default()
        },
    );
    h.push(&mesh).await;
    support::wait_status(&h, ingress, "x", "/", 200).await;
    let tasks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(async move { get(ingress, "x", "/").await }))
        .collect();
    let mut ok = 0;
    let mut overflow = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 => ok += 1,
            503 if r.head.contains("x-envoy-overloaded") => overflow += 1,
            _ => panic!("unexpected response {r:?}"),
        }
    }
    let pending_overflow = h.stat("cb", ".upstream_rq_pending_overflow");
    eprintln!(
        "10 concurrent: {ok} ok, {overflow} overflow 503, upstream_rq_pending_overflow {pending_overflow}"
    );
    assert!(ok >= 1, "some requests pass");
    assert!(
        overflow >= 3,
        "load above the breaker gets 503 overflow: {overflow}"
    );
    assert!(pending_overflow >= 1, "stats show the overflow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_the_failing_endpoint() {
    let h = Harness::start().await;
    let ips = [ip(20), ip(21)];
    let port = support::shared_port(&ips);
    backend(SocketAddr::new(ips[0], port), "bad", Behaviour::Fail).await;
    backend(SocketAddr::new(ips[1], port), "good", Behaviour::Ok).await;
    let ingress = free_addr();
    let mut p = policy(svc_target("od"));
    p.outlier_detection = Some(OutlierDetection {
        consecutive_5xx: Some(2),
        base_ejection_time_ms: Some(30_000),
        max_ejection_percent: Some(100),
        interval_ms: Some(200),
    });
    let mesh = ingress_mesh(
        vec![service("od", "shop", 80, port, &ips)],
        L7Config {
            listeners: vec![listener("gw", ingress)],
            routes: vec![route_to(
                "r",
                RouteParent::Listener("gw".into()),
                vec![backend_ref("od", 80, 1)],
            )],
            policies: vec![p],
            ..Default::default()
        },
    );
    h.push(&mesh).await;
    support::wait_status(&h, ingress, "x", "/", 200).await;
    // Send until Envoy reports the ejection (it depends on Envoy's own bookkeeping of
    // consecutive 5xx per host, not on a fixed request count), then all traffic must succeed.
    let mut before = Vec::new();
    let mut ejections = 0;
    for _ in 0..200 {
        before.push(get(ingress, "x", "/").await.status);
        ejections = h.stat(
            "cluster.ingress",
            "outlier_detection.ejections_enforced_total",
        );
        if ejections >= 1 {
            break;
        }
    }
    assert!(
        ejections >= 1,
        "Envoy ejected the failing endpoint after {} requests: {before:?}",
        before.len()
    );
    assert!(
        before.iter().any(|s| *s != 200),
        "the failing endpoint was hit before the ejection"
    );
    let mut after = Vec::new();
    for _ in 0..20 {
        after.push(get(ingress, "x", "/").await.status);
    }
    eprintln!(
        "outlier: ejected after {} requests; then {after:?}",
        before.len()
    );
    assert!(
        after.iter().all(|s| *s == 200),
        "after ejection all traffic goes to the healthy endpoint: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_bursts_get_429_per_route_and_per_listener() {
    let h = Harness::start().await;
    let b = free_addr();
    backend(b, "rl", Behaviour::Ok).await;
    let (gw1, gw2) = (free_addr(), free_addr());
    let mut per_route = policy(PolicyTarget::Route {
        name: "limited".into(),
        namespace: "shop".into(),
    });
    per_route.local_rate_limit = Some(LocalRateLimit {
        tokens: 3,
        fill_interval_ms: 60_000,
    });
    let mut per_listener = policy(PolicyTarget::Listener("gw2".into()));
    per_listener.name = "p2".into();
    per_listener.local_rate_limit = Some(LocalRateLimit {
        tokens: 5,
        fill_interval_ms: 60_000,
    });
    let mut limited = route_to(
        "limited",
        RouteParent::Listener("gw1".into()),
        vec![backend_ref("rl", 80, 1)],
    );
    limited.rules[0].matches = vec![identityd_envoy::l7::RouteMatch {
        path: Some(identityd_envoy::l7::PathMatch::Prefix("/limited".into())),
        ..Default::default()
    }];
    let free = route_to(
        "free",
        RouteParent::Listener("gw1".into()),
        vec![backend_ref("rl", 80, 1)],
    );
    let on_gw2 = route_to(
        "gw2-route",
        RouteParent::Listener("gw2".into()),
        vec![backend_ref("rl", 80, 1)],
    );
    let mesh = ingress_mesh(
        vec![service("rl", "shop", 80, b.port(), &[ip(1)])],
        L7Config {
            listeners: vec![listener("gw1", gw1), listener("gw2", gw2)],
            routes: vec![limited, free, on_gw2],
            policies: vec![per_route, per_listener],
            ..Default::default()
        },
    );
    h.push(&mesh).await;
    support::wait_status(&h, gw1, "x", "/free", 200).await;

    let mut codes = Vec::new();
    for _ in 0..10 {
        codes.push(get(gw1, "x", "/limited").await.status);
    }
    eprintln!("per-route bucket of 3: {codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 3, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 7, "{codes:?}");
    // Other routes of the listener are not limited.
    for _ in 0..10 {
        assert_eq!(get(gw1, "x", "/free").await.status, 200);
    }
    // The listener-wide bucket of 5 (no probe requests were sent to gw2 yet).
    let tasks: Vec<_> = (0..12)
        .map(|_| tokio::spawn(async move { get(gw2, "x", "/").await.status }))
        .collect();
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    eprintln!("listener bucket of 5, burst of 12: {codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 5, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 7, "{codes:?}");
    assert!(
        h.stat("ingress_gw2", "rate_limited") >= 7
            || h.stat("", "local_rate_limit.rate_limited") >= 7
    );
}
