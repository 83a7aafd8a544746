//! Two real Envoys ("node A" and "node B") configured only by identityd's xDS server:
//! client → Envoy A → mTLS (SVIDs over SDS, SPIFFE validation) → Envoy B → server.
//! The server sees the caller's SPIFFE ID in XFCC; an identity not allowed gets 403; an SVID
//! rotated mid-test is presented by new handshakes with zero failed requests; an invalid
//! resource is NACKed, recorded, and Envoy keeps serving the last accepted version.
//! Node A speaks delta xDS, node B state-of-the-world.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use identityd_certs::{Ca, CaOptions, SpiffeId, TrustDomain};
use identityd_envoy::bootstrap::{XdsAddress, XdsFlavour, bootstrap_yaml};
use identityd_envoy::mesh::{
    AuthzAction, AuthzPolicy, AuthzRule, Endpoint, MeshConfig, MtlsMode, Ports, Service, SvidPem,
    Workload,
};
use identityd_envoy::server::{Snapshot, XdsCache, XdsServer, serve, type_url};
use identityd_envoy::translate::translate;
use identityd_tests::envoy::Envoy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

const TD: &str = "cluster.local";
const CLIENT: &str = "spiffe://cluster.local/ns/front/sa/client";
const INTRUDER: &str = "spiffe://cluster.local/ns/front/sa/intruder";
const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn svid_pem(ca: &Ca, id: &str) -> SvidPem {
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
}

/// An HTTP/1.1 server that answers every request with the request's headers as the body.
async fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
                let body = String::from_utf8_lossy(&buf).to_string();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

/// GET `/` with `Host: host` to `to`, from source address `from`. Returns (status, body).
async fn get(from: IpAddr, to: SocketAddr, host: &str) -> (u16, String) {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from, 0)).unwrap();
    let Ok(mut s) = sock.connect(to).await else {
        return (0, String::new());
    };
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn cert_serials(envoy: &Envoy) -> String {
    envoy.admin_get("/certs").1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_between_two_envoys_with_xfcc_rbac_rotation_and_nack() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::init(
        &tmp.path().join("ca"),
        TrustDomain::new(TD).unwrap(),
        CaOptions::default(),
        SystemTime::now(),
    )
    .unwrap();
    let bundle_pem = ca.bundle(SystemTime::now()).to_pem();

    // xDS server on loopback.
    let cache = XdsCache::new();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let xds_addr = l.local_addr().unwrap();
    let server = XdsServer::new(Arc::clone(&cache));
    tokio::spawn(serve(server, None, tokio_stream_listener(l)));

    let app_port = echo_server().await;
    let (in_b, out_b, out_a, in_a) = (free_port(), free_port(), free_port(), free_port());
    let web_service = Service {
        name: "web".into(),
        namespace: "shop".into(),
        port: 80,
        target_port: app_port,
        mtls: MtlsMode::Strict,
        hosts: vec![],
        endpoints: vec![Endpoint {
            ip: ip(1),
            id: WEB.into(),
            mtls_address: SocketAddr::new(ip(1), in_b),
            weight: 1,
        }],
    };
    let policy = AuthzPolicy {
        name: "shop/web-callers".into(),
        service: "web".into(),
        namespace: "shop".into(),
        action: AuthzAction::Allow,
        rules: vec![AuthzRule {
            ids: vec![CLIENT.into()],
            ..Default::default()
        }],
    };
    let mesh_b = |web_svid: SvidPem| MeshConfig {
        trust_domain: TD.into(),
        ports: Ports {
            inbound: SocketAddr::new(ip(1), in_b),
            outbound: SocketAddr::new(ip(1), out_b),
            transparent: false,
        },
        workloads: vec![Workload {
            name: "web-0".into(),
            namespace: "shop".into(),
            id: WEB.into(),
            ip: ip(1),
            mtls: MtlsMode::Strict,
        }],
        services: vec![web_service.clone()],
        policies: vec![policy.clone()],
        svids: vec![web_svid],
        bundle_pem: bundle_pem.clone(),
        l7: Default::default(),
        access_logs: false,
    };
    let mesh_a = MeshConfig {
        trust_domain: TD.into(),
        ports: Ports {
            inbound: SocketAddr::new(ip(1), in_a),
            outbound: SocketAddr::new(ip(1), out_a),
            transparent: false,
        },
        workloads: vec![
            Workload {
                name: "client-0".into(),
                namespace: "front".into(),
                id: CLIENT.into(),
                ip: ip(2),
                mtls: MtlsMode::Strict,
            },
            Workload {
                name: "intruder-0".into(),
                namespace: "front".into(),
                id: INTRUDER.into(),
                ip: ip(3),
                mtls: MtlsMode::Strict,
            },
        ],
        services: vec![web_service.clone()],
        policies: vec![],
        svids: vec![svid_pem(&ca, CLIENT), svid_pem(&ca, INTRUDER)],
        bundle_pem: bundle_pem.clone(),
        l7: Default::default(),
        access_logs: false,
    };
    let first_web = svid_pem(&ca, WEB);
    cache.set_snapshot("node-b", translate(&mesh_b(first_web.clone())));
    cache.set_snapshot("node-a", translate(&mesh_a));

    let envoy_b = Envoy::start(
        &tmp.path().join("envoy-b"),
        &bootstrap_yaml("node-b", &XdsAddress::Tcp(xds_addr), 0, XdsFlavour::Sotw),
    );
    let envoy_a = Envoy::start(
        &tmp.path().join("envoy-a"),
        &bootstrap_yaml("node-a", &XdsAddress::Tcp(xds_addr), 0, XdsFlavour::Delta),
    );
    let outbound_a = SocketAddr::new(ip(1), out_a);

    // Wait until the client's request goes through end to end.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        let r = get(ip(2), outbound_a, "web.shop").await;
        if r.0 == 200 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        status,
        200,
        "client -> Envoy A -> mTLS -> Envoy B -> server: {body}\nA log:\n{}\nB log:\n{}\nA: {:?}\nB: {:?}",
        envoy_a.log(),
        envoy_b.log(),
        cache.status("node-a"),
        cache.status("node-b")
    );
    let xfcc = body
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("x-forwarded-client-cert")
        })
        .unwrap_or("");
    assert!(
        xfcc.contains(&format!("URI={CLIENT}")),
        "server sees the caller's SPIFFE ID in XFCC: {body}"
    );
    assert!(
        xfcc.contains(&format!("By={WEB}")),
        "XFCC names the server identity: {xfcc}"
    );

    // An identity not on the allow-list gets 403.
    let (status, body) = get(ip(3), outbound_a, "web.shop").await;
    assert_eq!(status, 403, "intruder must be refused by RBAC: {body}");
    // An unknown source matches no outbound chain: nothing is forwarded.
    let (status, _) = get(ip(9), outbound_a, "web.shop").await;
    assert_ne!(status, 200, "unknown source must not get through");

    // Both nodes ACKed every type, no NACK outstanding.
    for node in ["node-a", "node-b"] {
        for t in cache.status(node) {
            assert_eq!(t.accepted, Some(t.version), "{node} accepted {t:?}");
            assert!(t.nack.is_none(), "{node}: {t:?}");
        }
    }

    // ---- SVID rotation on node B under continuous traffic ----
    let before = cert_serials(&envoy_b);
    let new_web = svid_pem(&ca, WEB);
    let new_serial = identityd_certs::inspect::describe(
        &identityd_certs::bundle::certs_from_pem(&new_web.chain_pem).unwrap()[0],
    )
    .unwrap()
    .serial
    .replace(':', "");
    assert!(!before.contains(&new_serial));
    let traffic = tokio::spawn(async move {
        let mut ok = 0u32;
        let mut failed = Vec::new();
        let end = Instant::now() + Duration::from_secs(4);
        while Instant::now() < end {
            let (s, b) = get(ip(2), outbound_a, "web.shop").await;
            if s == 200 {
                ok += 1;
            } else {
                failed.push((s, b));
            }
        }
        (ok, failed)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    cache.set_snapshot("node-b", translate(&mesh_b(new_web.clone())));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cert_serials(&envoy_b).contains(&new_serial) {
        assert!(
            Instant::now() < deadline,
            "Envoy B /certs never showed the new serial {new_serial}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, failed) = traffic.await.unwrap();
    assert!(ok > 10, "requests flowed during rotation: {ok}");
    assert!(
        failed.is_empty(),
        "zero failed requests during rotation, got {}: {:?}",
        failed.len(),
        failed.first()
    );
    // A new handshake presents the new certificate (the server's chain is in XFCC's Hash? use /certs).
    let (status, _) = get(ip(2), outbound_a, "web.shop").await;
    assert_eq!(status, 200);

    // ---- A deliberately invalid resource is NACKed; Envoy keeps serving ----
    let mut bad = translate(&mesh_a);
    let broken = envoy_types_cluster_with_bad_lb("broken-cluster");
    bad.insert(type_url::CLUSTER, "broken-cluster", broken);
    let good_version = cache
        .status("node-a")
        .into_iter()
        .find(|t| t.type_url == type_url::CLUSTER)
        .unwrap()
        .version;
    cache.set_snapshot("node-a", bad);
    let deadline = Instant::now() + Duration::from_secs(10);
    let nack = loop {
        let st = cache
            .status("node-a")
            .into_iter()
            .find(|t| t.type_url == type_url::CLUSTER)
            .unwrap();
        if let Some(n) = st.nack.clone() {
            break (st, n);
        }
        assert!(
            Instant::now() < deadline,
            "Envoy A never NACKed the broken cluster: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        nack.0.accepted,
        Some(good_version),
        "the last accepted version is kept"
    );
    assert!(nack.1.version > good_version);
    assert!(
        !nack.1.message.is_empty(),
        "the NACK's error detail is recorded"
    );
    let pushes = cache
        .counters
        .pushes
        .load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        cache
            .counters
            .pushes
            .load(std::sync::atomic::Ordering::Relaxed),
        pushes,
        "no resend loop after a NACK"
    );
    let (status, body) = get(ip(2), outbound_a, "web.shop").await;
    assert_eq!(status, 200, "Envoy keeps serving after the NACK: {body}");
    // Fixing the config clears the NACK.
    cache.set_snapshot("node-a", translate(&mesh_a));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = cache
            .status("node-a")
            .into_iter()
            .find(|t| t.type_url == type_url::CLUSTER)
            .unwrap();
        if st.nack.is_none() && st.accepted == Some(st.version) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fixed config never ACKed: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(envoy_a);
    drop(envoy_b);
    let _ = Snapshot::new();
}

/// A cluster Envoy rejects: STATIC with an endpoint address that is not an IP.
fn envoy_types_cluster_with_bad_lb(
    name: &str,
) -> identityd_envoy::envoy_types::pb::google::protobuf::Any {
    use identityd_envoy::envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
    use identityd_envoy::envoy_types::pb::envoy::config::core::v3::{
        Address, SocketAddress, address, socket_address,
    };
    use identityd_envoy::envoy_types::pb::envoy::config::endpoint::v3::{
        ClusterLoadAssignment, Endpoint as Ep, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
    };
    let c = Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_owned(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Ep {
                        address: Some(Address {
                            address: Some(address::Address::SocketAddress(SocketAddress {
                                address: "not-an-ip-address".to_owned(),
                                port_specifier: Some(socket_address::PortSpecifier::PortValue(80)),
                                ..Default::default()
                            })),
                        }),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    identityd_envoy::envoy_types::util::pack_any(c)
}

fn tokio_stream_listener(
    l: TcpListener,
) -> impl tokio_stream::Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> {
    tokio_stream::wrappers::TcpListenerStream::new(l)
}
