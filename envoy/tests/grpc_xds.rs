//! gRPC's own xDS client (grpcio from the project venv, `GRPC_XDS_BOOTSTRAP`, an `xds:///`
//! target) resolves a service through identityd's xDS server and reaches its endpoint.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use identityd_envoy::mesh::{Endpoint, MtlsMode, Service};
use identityd_envoy::server::{XdsCache, XdsServer, serve};
use identityd_envoy::translate::grpc_client_resources;
use identityd_tests::tools;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_xds_client_resolves_a_service() {
    let cache = XdsCache::new();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let xds = l.local_addr().unwrap();
    tokio::spawn(serve(
        XdsServer::new(Arc::clone(&cache)),
        None,
        tokio_stream::wrappers::TcpListenerStream::new(l),
    ));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let svc = Service {
        name: "echo".into(),
        namespace: "demo".into(),
        port: 9000,
        target_port: port,
        mtls: MtlsMode::Disabled,
        hosts: vec![],
        endpoints: vec![Endpoint {
            ip: lo,
            id: "spiffe://cluster.local/ns/demo/sa/echo".into(),
            mtls_address: SocketAddr::new(lo, 15008),
            weight: 1,
        }],
    };
    cache.set_snapshot("grpc-client", grpc_client_resources(&[svc]));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc_xds_client.py");
    let out = tokio::process::Command::new(tools::python())
        .arg(script)
        .arg(xds.to_string())
        .arg(port.to_string())
        .arg("echo.demo")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("OK echo:hello"),
        "grpc xDS client: {stdout}\n{}\nstatus: {:?}",
        String::from_utf8_lossy(&out.stderr),
        cache.status("grpc-client")
    );
    // The client ACKed what it was given.
    for t in cache.status("grpc-client") {
        assert_eq!(t.accepted, Some(t.version), "{t:?}");
    }
}
