//! Ingress through a real Envoy configured only by identityd's xDS server: routing by host,
//! path (exact, prefix, regex), header and method, request header changes and redirects;
//! TLS termination with a certificate per hostname (inline and over SDS), seen by
//! `openssl s_client`; a real gRPC client (grpcio) calling a gRPC backend through an HTTP/2
//! listener, in plaintext and over TLS verifying the server certificate.

#[path = "support/l7.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use identityd_envoy::l7::{
    CertSource, HeaderMatch, HeaderModifier, HttpRoute, HttpVersions, IngressCertificate,
    IngressListener, L7Config, ListenerTls, PathMatch, Redirect, RouteKind, RouteMatch,
    RouteParent, RouteRule, WeightedBackend,
};
use identityd_envoy::mesh::SvidPem;
use identityd_tests::tools;
use support::{Behaviour, Harness, backend, free_addr, get, ingress_mesh, ip, request, service};

fn to(service: &str, port: u16) -> Vec<WeightedBackend> {
    vec![WeightedBackend {
        service: service.into(),
        namespace: "shop".into(),
        port,
        weight: 1,
    }]
}

fn rule(m: RouteMatch, backends: Vec<WeightedBackend>) -> RouteRule {
    RouteRule {
        matches: vec![m],
        backends,
        ..Default::default()
    }
}

fn path(p: PathMatch) -> RouteMatch {
    RouteMatch {
        path: Some(p),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_routes_by_host_path_header_method_with_header_changes_and_redirect() {
    let h = Harness::start().await;
    let (a, b) = (free_addr(), free_addr());
    backend(a, "svc-a", Behaviour::Ok).await;
    backend(b, "svc-b", Behaviour::Ok).await;
    let gw = free_addr();
    let mut api = RouteRule {
        request_headers: HeaderModifier {
            set: vec![("x-set".into(), "set-by-route".into())],
            add: vec![("x-add".into(), "added".into())],
            remove: vec!["x-remove".into()],
        },
        ..rule(path(PathMatch::Prefix("/api".into())), to("a", 80))
    };
    api.matches.push(path(PathMatch::Prefix("/other".into())));
    let shop = HttpRoute {
        name: "shop".into(),
        namespace: "shop".into(),
        parents: vec![RouteParent::Listener("gw".into())],
        hostnames: vec!["shop.example".into()],
        rules: vec![
            api,
            // Listed after the prefix rule, but an exact path wins.
            rule(path(PathMatch::Exact("/api/special".into())), to("b", 80)),
            rule(path(PathMatch::Regex("/v[0-9]+/items".into())), to("b", 80)),
            rule(
                RouteMatch {
                    headers: vec![HeaderMatch {
                        name: "x-canary".into(),
                        value: "yes".into(),
                        regex: false,
                    }],
                    ..path(PathMatch::Prefix("/".into()))
                },
                to("b", 80),
            ),
            rule(
                RouteMatch {
                    method: Some("POST".into()),
                    ..Default::default()
                },
                to("b", 80),
            ),
            rule(RouteMatch::default(), to("a", 80)),
        ],
        ..Default::default()
    };
    let old = HttpRoute {
        name: "old".into(),
        namespace: "shop".into(),
        parents: vec![RouteParent::Listener("gw".into())],
        hostnames: vec!["old.example".into()],
        rules: vec![RouteRule {
            redirect: Some(Redirect {
                scheme: Some("https".into()),
                host: Some("new.example".into()),
                path: Some("/moved".into()),
                status_code: Some(301),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mesh = ingress_mesh(
        vec![
            service("a", "shop", 80, a.port(), &[ip(1)]),
            service("b", "shop", 80, b.port(), &[ip(1)]),
        ],
        L7Config {
            listeners: vec![IngressListener {
                name: "gw".into(),
                address: gw,
                ..Default::default()
            }],
            routes: vec![shop, old],
            ..Default::default()
        },
    );
    h.push(&mesh).await;
    support::wait_status(&h, gw, "shop.example", "/", 200).await;

    let backend_of = |r: &support::Resp| r.body.lines().next().unwrap_or("").to_owned();
    // (method, host, path, headers, expected backend)
    type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        ("GET", "shop.example", "/api/x", &[], "svc-a"),
        ("GET", "shop.example:8080", "/api/x", &[], "svc-a"),
        ("GET", "shop.example", "/api/special", &[], "svc-b"),
        ("GET", "shop.example", "/v2/items", &[], "svc-b"),
        ("GET", "shop.example", "/vx/items", &[], "svc-a"),
        (
            "GET",
            "shop.example",
            "/home",
            &[("x-canary", "yes")],
            "svc-b",
        ),
        (
            "GET",
            "shop.example",
            "/home",
            &[("x-canary", "no")],
            "svc-a",
        ),
        (
            "POST",
            "shop.example",
            "/home",
            &[("content-length", "0")],
            "svc-b",
        ),
        ("GET", "shop.example", "/other", &[], "svc-a"),
    ];
    for (method, host, p, headers, want) in cases {
        let r = request(ip(1), gw, method, host, p, headers).await;
        assert_eq!(r.status, 200, "{method} {host}{p} {headers:?}: {r:?}");
        assert_eq!(
            &backend_of(&r),
            want,
            "{method} {host}{p} {headers:?}: {r:?}"
        );
    }
    // Header changes reach the backend.
    let r = request(
        ip(1),
        gw,
        "GET",
        "shop.example",
        "/api/h",
        &[
            ("x-set", "from-client"),
            ("x-add", "client"),
            ("x-remove", "secret"),
        ],
    )
    .await;
    let head = r.body.to_ascii_lowercase();
    assert!(head.contains("x-set: set-by-route"), "{head}");
    assert!(!head.contains("from-client"), "set overwrites: {head}");
    assert!(
        head.contains("x-add: client") && head.contains("x-add: added"),
        "{head}"
    );
    assert!(!head.contains("x-remove"), "removed: {head}");
    // Redirect.
    let r = get(gw, "old.example", "/anything").await;
    assert_eq!(r.status, 301, "{r:?}");
    assert!(
        r.head.contains("location: https://new.example/moved"),
        "{}",
        r.head
    );
    // Unknown host: no route.
    assert_eq!(get(gw, "nobody.example", "/").await.status, 404);
}

/// A CA and a server certificate for `hosts` signed by it: (ca_pem, chain_pem, key_pem).
fn server_cert(ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>, hosts: &[&str]) -> SvidPem {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p =
        rcgen::CertificateParams::new(hosts.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
            .unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, hosts[0]);
    let cert = p.signed_by(&key, ca).unwrap();
    SvidPem {
        id: hosts[0].to_owned(),
        chain_pem: cert.pem(),
        key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
    }
}

fn test_ca() -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "identityd test ingress CA");
    rcgen::CertifiedIssuer::self_signed(p, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// `openssl s_client` to `addr` with SNI `name`, verifying against `ca` for `name`: the
/// subject line and whether verification succeeded.
fn s_client(addr: std::net::SocketAddr, name: &str, ca: &Path) -> (String, bool, String) {
    let out = Command::new(tools::openssl())
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            name,
        ])
        .arg("-CAfile")
        .arg(ca)
        .args(["-verify_hostname", name, "-brief"])
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let subject = text
        .lines()
        .find(|l| l.contains("Peer certificate:") || l.starts_with("subject="))
        .unwrap_or("")
        .to_owned();
    let ok = text.contains("Verification: OK");
    (subject, ok, text)
}

/// Starts the grpcio echo server; returns the child (killed on drop by closing stdin) and port.
struct GrpcServer(std::process::Child);

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn grpc_script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/l7_grpc.py")
}

fn start_grpc_server() -> (GrpcServer, u16) {
    start_grpc_server_on("127.0.0.1", "echo")
}

fn start_grpc_server_on(host: &str, name: &str) -> (GrpcServer, u16) {
    let mut child = Command::new(tools::python())
        .arg(grpc_script())
        .args(["server", host, name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the grpcio server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("grpc server said {line:?}"));
    (GrpcServer(child), port)
}

async fn grpc_call(args: Vec<String>) -> String {
    let out = tokio::process::Command::new(tools::python())
        .arg(grpc_script())
        .arg("client")
        .args(&args)
        .output()
        .await
        .expect("run the grpcio client");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_grpc_ingress_certificate_per_hostname_and_method_match() {
    let h = Harness::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let ca = test_ca();
    let ca_path = tmp.path().join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    // grpc.example.test: a certificate "issued by the CA" over SDS; web.example.test: inline
    // (a Secret's tls.crt/tls.key).
    let grpc_cert = server_cert(&ca, &["grpc.example.test"]);
    let web_cert = server_cert(&ca, &["web.example.test"]);

    let (_server, grpc_port) = start_grpc_server();
    let web = free_addr();
    backend(web, "web", Behaviour::Ok).await;
    let (tls_gw, h2c_gw) = (free_addr(), free_addr());
    let grpc_route = HttpRoute {
        name: "echo".into(),
        namespace: "shop".into(),
        kind: RouteKind::Grpc,
        parents: vec![
            RouteParent::Listener("tls".into()),
            RouteParent::Listener("h2c".into()),
        ],
        hostnames: vec!["grpc.example.test".into()],
        rules: vec![rule(
            RouteMatch::grpc("echo.Echo", Some("Say")),
            to("grpc", 9000),
        )],
    };
    let web_route = HttpRoute {
        name: "web".into(),
        namespace: "shop".into(),
        parents: vec![RouteParent::Listener("tls".into())],
        hostnames: vec!["web.example.test".into()],
        rules: vec![rule(RouteMatch::default(), to("web", 80))],
        ..Default::default()
    };
    let mesh = ingress_mesh(
        vec![
            service("grpc", "shop", 9000, grpc_port, &[ip(1)]),
            service("web", "shop", 80, web.port(), &[ip(1)]),
        ],
        L7Config {
            listeners: vec![
                IngressListener {
                    name: "tls".into(),
                    address: tls_gw,
                    http: HttpVersions::Auto,
                    tls: Some(ListenerTls {
                        certificates: vec![
                            IngressCertificate {
                                hostnames: vec!["grpc.example.test".into()],
                                source: CertSource::Sds("grpc.example.test".into()),
                            },
                            IngressCertificate {
                                hostnames: vec!["web.example.test".into()],
                                source: CertSource::Inline(web_cert.clone()),
                            },
                        ],
                    }),
                },
                IngressListener {
                    name: "h2c".into(),
                    address: h2c_gw,
                    http: HttpVersions::Http2,
                    tls: None,
                },
            ],
            routes: vec![grpc_route, web_route],
            tls_secrets: vec![grpc_cert],
            ..Default::default()
        },
    );
    h.push(&mesh).await;

    // gRPC over plaintext HTTP/2 (prior knowledge), with the method match.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let out = loop {
        let out = grpc_call(vec![
            h2c_gw.to_string(),
            "/echo.Echo/Say".into(),
            "grpc.example.test".into(),
        ])
        .await;
        if out.contains("OK ") || std::time::Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        out.contains("OK echo:hello"),
        "h2c gRPC call: {out}\n{}",
        h.envoy.log()
    );

    // gRPC over TLS, verifying the server certificate for grpc.example.test.
    let out = grpc_call(vec![
        tls_gw.to_string(),
        "/echo.Echo/Say".into(),
        "grpc.example.test".into(),
        ca_path.display().to_string(),
    ])
    .await;
    assert!(
        out.contains("OK echo:hello"),
        "TLS gRPC call: {out}\n{}\n{:?}",
        h.envoy.log(),
        h.cache.status(support::NODE),
    );
    // A method the route does not match: no route (gRPC UNIMPLEMENTED).
    let out = grpc_call(vec![
        tls_gw.to_string(),
        "/echo.Echo/Other".into(),
        "grpc.example.test".into(),
        ca_path.display().to_string(),
    ])
    .await;
    assert!(out.contains("ERR UNIMPLEMENTED"), "unmatched method: {out}");

    // Each hostname sees its own certificate, verified against the CA for that name.
    for name in ["grpc.example.test", "web.example.test"] {
        let (subject, ok, text) = s_client(tls_gw, name, &ca_path);
        eprintln!("{name}: {subject} verified={ok}");
        assert!(
            subject.contains(&format!("CN={name}")) || subject.contains(&format!("CN = {name}")),
            "{name}: {text}"
        );
        assert!(ok, "{name} verifies against the CA: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_reaches_a_strict_mtls_backend_with_the_gateway_identity() {
    use identityd_certs::{Ca, CaOptions, SpiffeId, TrustDomain};
    use identityd_envoy::mesh::{
        AuthzAction, AuthzPolicy, AuthzRule, Endpoint, MtlsMode, Ports, Service, Workload,
    };
    use std::net::SocketAddr;
    use std::time::{Duration, SystemTime};

    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
    const GATEWAY: &str = "spiffe://cluster.local/ns/ingress/sa/gateway";
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::init(
        &tmp.path().join("ca"),
        TrustDomain::new("cluster.local").unwrap(),
        CaOptions::default(),
        SystemTime::now(),
    )
    .unwrap();
    let svid = |id: &str| {
        let s = ca
            .issue(
                &SpiffeId::parse(id).unwrap(),
                Duration::from_secs(3600),
                SystemTime::now(),
            )
            .unwrap();
        SvidPem {
            id: id.to_owned(),
            chain_pem: s.chain_pem(),
            key_pem: s.key().to_pem(),
        }
    };
    let h = Harness::start().await;
    let pod = ip(5);
    let app = SocketAddr::new(pod, free_addr().port());
    backend(app, "web", Behaviour::Ok).await;
    let inbound = SocketAddr::new(pod, free_addr().port());
    let gw = free_addr();
    let web = Service {
        name: "web".into(),
        namespace: "shop".into(),
        port: 80,
        target_port: app.port(),
        mtls: MtlsMode::Strict,
        hosts: vec![],
        endpoints: vec![Endpoint {
            ip: pod,
            id: WEB.into(),
            mtls_address: inbound,
            weight: 1,
        }],
    };
    let mut mesh = ingress_mesh(
        vec![web],
        L7Config {
            listeners: vec![IngressListener {
                name: "gw".into(),
                address: gw,
                ..Default::default()
            }],
            routes: vec![HttpRoute {
                name: "web".into(),
                namespace: "shop".into(),
                parents: vec![RouteParent::Listener("gw".into())],
                rules: vec![rule(RouteMatch::default(), to("web", 80))],
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    mesh.ports = Ports {
        inbound,
        outbound: SocketAddr::new(pod, free_addr().port()),
        transparent: false,
    };
    mesh.bundle_pem = ca.bundle(SystemTime::now()).to_pem();
    mesh.workloads = vec![Workload {
        name: "web-0".into(),
        namespace: "shop".into(),
        id: WEB.into(),
        ip: pod,
        mtls: MtlsMode::Strict,
    }];
    mesh.svids = vec![svid(WEB), svid(GATEWAY)];
    mesh.policies = vec![AuthzPolicy {
        name: "shop/only-gateway".into(),
        service: "web".into(),
        namespace: "shop".into(),
        action: AuthzAction::Allow,
        rules: vec![AuthzRule {
            ids: vec![GATEWAY.into()],
            ..Default::default()
        }],
    }];
    // Without a gateway identity the strict backend is refused, never reached in plaintext.
    let problems = identityd_envoy::l7::validate(&mesh);
    assert!(
        problems
            .iter()
            .any(|p| p.message.contains("strict mTLS namespace")),
        "{problems:?}"
    );
    mesh.l7.gateway_id = Some(GATEWAY.into());
    h.push(&mesh).await;
    support::wait_status(&h, gw, "web.example", "/", 200).await;
    let r = get(gw, "web.example", "/").await;
    let head = r.body.to_ascii_lowercase();
    assert!(
        head.contains(&format!("uri={GATEWAY}")),
        "the backend sees the gateway's SPIFFE ID in XFCC: {}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_route_on_a_service_splits_mesh_grpc_over_mtls() {
    use identityd_certs::{Ca, CaOptions, SpiffeId, TrustDomain};
    use identityd_envoy::mesh::{Endpoint, MtlsMode, Ports, Service, Workload};
    use std::net::SocketAddr;
    use std::time::{Duration, SystemTime};

    const CLIENT: &str = "spiffe://cluster.local/ns/front/sa/client";
    const ECHO: &str = "spiffe://cluster.local/ns/shop/sa/echo";
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::init(
        &tmp.path().join("ca"),
        TrustDomain::new("cluster.local").unwrap(),
        CaOptions::default(),
        SystemTime::now(),
    )
    .unwrap();
    let svid = |id: &str| {
        let s = ca
            .issue(
                &SpiffeId::parse(id).unwrap(),
                Duration::from_secs(3600),
                SystemTime::now(),
            )
            .unwrap();
        SvidPem {
            id: id.to_owned(),
            chain_pem: s.chain_pem(),
            key_pem: s.key().to_pem(),
        }
    };
    let h = Harness::start().await;
    let (v1_ip, v2_ip) = (ip(6), ip(7));
    let (_s1, p1) = start_grpc_server_on("127.0.0.6", "v1");
    let (_s2, p2) = start_grpc_server_on("127.0.0.7", "v2");
    // Inbound on all addresses (chains select the workload by destination IP).
    let inbound_port = free_addr().port();
    let outbound = free_addr();
    let strict = |name: &str, target_port: u16, ips: &[std::net::IpAddr]| Service {
        name: name.into(),
        namespace: "shop".into(),
        port: 9000,
        target_port,
        mtls: MtlsMode::Strict,
        hosts: vec![],
        endpoints: ips
            .iter()
            .map(|ip| Endpoint {
                ip: *ip,
                id: ECHO.into(),
                mtls_address: SocketAddr::new(*ip, inbound_port),
                weight: 1,
            })
            .collect(),
    };
    let workload = |name: &str, ns: &str, id: &str, ip| Workload {
        name: name.into(),
        namespace: ns.into(),
        id: id.into(),
        ip,
        mtls: MtlsMode::Strict,
    };
    let split = HttpRoute {
        name: "echo-split".into(),
        namespace: "shop".into(),
        kind: RouteKind::Grpc,
        parents: vec![RouteParent::Service {
            name: "echo".into(),
            namespace: "shop".into(),
        }],
        hostnames: vec![],
        rules: vec![RouteRule {
            matches: vec![RouteMatch::grpc("echo.Echo", Some("Say"))],
            backends: vec![
                WeightedBackend {
                    service: "echo-v1".into(),
                    namespace: "shop".into(),
                    port: 9000,
                    weight: 50,
                },
                WeightedBackend {
                    service: "echo-v2".into(),
                    namespace: "shop".into(),
                    port: 9000,
                    weight: 50,
                },
            ],
            ..Default::default()
        }],
    };
    let mut mesh = ingress_mesh(
        vec![
            strict("echo", p1, &[v1_ip]),
            strict("echo-v1", p1, &[v1_ip]),
            strict("echo-v2", p2, &[v2_ip]),
        ],
        L7Config {
            routes: vec![split],
            ..Default::default()
        },
    );
    mesh.ports = Ports {
        inbound: SocketAddr::from(([0, 0, 0, 0], inbound_port)),
        outbound,
        transparent: false,
    };
    mesh.bundle_pem = ca.bundle(SystemTime::now()).to_pem();
    // grpcio connects from 127.0.0.1: that is the calling workload's address here.
    mesh.workloads = vec![
        workload("client-0", "front", CLIENT, ip(1)),
        workload("echo-v1-0", "shop", ECHO, v1_ip),
        workload("echo-v2-0", "shop", ECHO, v2_ip),
    ];
    mesh.svids = vec![svid(CLIENT), svid(ECHO)];
    h.push(&mesh).await;

    let call = |method: &str, n: &str| {
        grpc_call(vec![
            outbound.to_string(),
            method.into(),
            "echo.shop".into(),
            "-".into(),
            n.into(),
        ])
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let out = loop {
        let out = call("/echo.Echo/Say", "1").await;
        if out.contains("OK ") || std::time::Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        out.contains("OK v"),
        "gRPC through the mesh: {out}\n{}",
        h.envoy.log()
    );
    let out = call("/echo.Echo/Say", "40").await;
    let count = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("COUNT {name}:hello ")))
            .and_then(|n| n.trim().parse::<u32>().ok())
            .unwrap_or(0)
    };
    eprintln!(
        "mesh gRPC 50/50 over 40 calls: v1 {}, v2 {}",
        count("v1"),
        count("v2")
    );
    assert_eq!(count("v1") + count("v2"), 40, "{out}");
    assert!(
        count("v1") >= 5 && count("v2") >= 5,
        "both versions get calls: {out}"
    );
    // Only the matched method is routed.
    let out = call("/echo.Echo/Other", "1").await;
    assert!(out.contains("ERR UNIMPLEMENTED"), "unmatched method: {out}");
}
