//! Ingress end to end with real peers: Gateway + GRPCRoute objects → the daemon's plan →
//! a serving certificate for the listener's hostname from the real CA service (authorized by
//! the CA role's rule) → a real Envoy configured over xDS → a real gRPC client (grpcio) that
//! verifies the server certificate against identityd's trust bundle and is routed by method.

#[path = "../../envoy/tests/support/l7.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use identityd::daemon::ca::{authorize, authorize_gateway, authorize_serving};
use identityd::daemon::ingress::{IngressPorts, cert_wants};
use identityd::daemon::mesh::{IngressInputs, plan_mesh_with};
use identityd::model::ClusterState;
use identityd_certs::service::{
    Authorizer, CaClient, CaServer, CaServerOptions, Denied, JoinToken, ServingRequest,
    WorkloadRequest, tokens,
};
use identityd_certs::{Ca, CaOptions, TrustDomain};
use identityd_envoy::mesh::Ports;
use identityd_tests::tools;
use support::{Harness, free_addr};

const HOUR: Duration = Duration::from_secs(3600);

struct Rules(Arc<ClusterState>, TrustDomain);

impl Authorizer for Rules {
    fn authorize(&self, node: &str, req: &WorkloadRequest) -> Result<(), Denied> {
        authorize(&self.0, &self.1, node, req)
    }
    fn authorize_gateway(&self, node: &str) -> Result<(), Denied> {
        authorize_gateway(&self.0, node)
    }
    fn authorize_serving(&self, node: &str, req: &ServingRequest) -> Result<(), Denied> {
        authorize_serving(&self.0, node, req)
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../envoy/tests/l7_grpc.py")
}

fn grpc_server() -> (Server, u16) {
    let mut child = Command::new(tools::python())
        .arg(script())
        .args(["server", "127.0.0.1", "echo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the grpcio server (bootstrap installs grpcio into .tools/venv)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("grpc server said {line:?}"));
    (Server(child), port)
}

async fn grpc_call(addr: &str, method: &str, authority: &str, ca: &str) -> String {
    let out = tokio::process::Command::new(tools::python())
        .arg(script())
        .args(["client", addr, method, authority, ca])
        .output()
        .await
        .expect("run the grpcio client");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn cluster(gw_port: u16, backend_port: u16) -> ClusterState {
    let text = format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: identityd.io/v1alpha1
kind: IdentitydNode
metadata: {{name: n1}}
spec: {{podCIDRs: [10.244.1.0/24], underlayAddresses: [10.99.0.11]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: echo-1, namespace: shop, labels: {{app: echo}}}}
spec:
  nodeName: n1
  serviceAccountName: echo
  containers: [{{name: server, ports: [{{name: grpc, containerPort: {backend_port}}}]}}]
status: {{phase: Running, podIP: 127.0.0.1}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: shop}}
spec:
  selector: {{app: echo}}
  ports: [{{name: grpc, port: 50051, targetPort: grpc, appProtocol: grpc}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: public, namespace: shop}}
spec:
  gatewayClassName: identityd
  listeners:
    - {{name: grpc, port: {gw_port}, protocol: HTTPS, hostname: grpc.shop.example}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: echo, namespace: shop}}
spec:
  parentRefs: [{{name: public, sectionName: grpc}}]
  hostnames: [grpc.shop.example]
  rules:
    - matches: [{{method: {{service: echo.Echo, method: Say}}}}]
      backendRefs: [{{name: echo, port: 50051}}]
"#
    );
    let decoded = identityd::source::decode::decode_all(&text);
    let objects: Vec<_> = decoded
        .into_iter()
        .map(|(_, r)| r.expect("valid document").expect("an object"))
        .collect();
    ClusterState::from_objects(1, objects)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_through_a_grpcroute_over_tls_with_a_certificate_from_identityds_ca() {
    let (_backend, backend_port) = grpc_server();
    let gw = free_addr();
    let state = Arc::new(cluster(gw.port(), backend_port));
    let td = TrustDomain::new("cluster.local").unwrap();

    // The CA role: real service, the CA role's authorization rules over this cluster state.
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let ca = Ca::init(&ca_dir, td.clone(), CaOptions::default(), SystemTime::now()).unwrap();
    let bundle = ca.bundle(SystemTime::now());
    let bundle_path = dir.path().join("bundle.pem");
    std::fs::write(&bundle_path, bundle.to_pem()).unwrap();
    let server = CaServer::new(
        Arc::new(Mutex::new(ca)),
        &ca_dir,
        Arc::new(Rules(Arc::clone(&state), td.clone())),
        CaServerOptions::default(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ca_addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { server.serve(listener).await });

    // The node: joins, asks for exactly what the ingress plan needs.
    let tok_path = dir.path().join("token");
    tokens::mint_to_file(&ca_dir, "n1", &tok_path, HOUR, SystemTime::now()).unwrap();
    let joined = CaClient::join(
        &ca_addr,
        "n1",
        &JoinToken::read(&tok_path).unwrap(),
        &bundle,
    )
    .await
    .unwrap();
    let client = CaClient::connect_mtls(&ca_addr, &joined.svid, &bundle)
        .await
        .unwrap();
    let ports = IngressPorts::default();
    let wants = cert_wants(&state, ports);
    assert_eq!(wants.len(), 1, "{wants:?}");
    let mut certs = BTreeMap::new();
    for w in wants {
        let c = client
            .sign_serving(&w.dns_names, &w.kind, &w.namespace, &w.name, HOUR)
            .await
            .unwrap();
        certs.insert(w.secret, Arc::new(c));
    }
    // A hostname no listener lists is refused by the CA.
    let e = client
        .sign_serving(
            &["admin.shop.example".to_owned()],
            "Gateway",
            "shop",
            "public",
            HOUR,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");

    let (mut mesh, problems) = plan_mesh_with(
        &state,
        "n1",
        &td,
        &BTreeMap::new(),
        &bundle.to_pem(),
        &IngressInputs {
            ports,
            certs,
            ..Default::default()
        },
    );
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(mesh.l7.listeners.len(), 1);
    // This test runs Envoy as an ordinary process: no TPROXY ports.
    mesh.ports = Ports {
        inbound: free_addr(),
        outbound: free_addr(),
        transparent: false,
    };
    let h = Harness::start().await;
    h.push(&mesh).await;

    let addr = gw.to_string();
    let ca = bundle_path.to_str().unwrap();
    // The listener is pushed, not necessarily listening yet (Envoy warms it): a connection
    // reset or refused before then is not the route's answer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let ok = loop {
        let r = grpc_call(&addr, "/echo.Echo/Say", "grpc.shop.example", ca).await;
        if !r.starts_with("ERR UNAVAILABLE") || std::time::Instant::now() >= deadline {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(ok.starts_with("OK echo:hello"), "{ok}\n{}", h.envoy.log());
    // The method match: another method of the service is not routed.
    let other = grpc_call(&addr, "/echo.Echo/Shout", "grpc.shop.example", ca).await;
    assert!(other.starts_with("ERR UNIMPLEMENTED"), "{other}");
    // The client verifies the certificate's name: a name it was not issued for fails TLS.
    let wrong = grpc_call(&addr, "/echo.Echo/Say", "wrong.shop.example", ca).await;
    assert!(wrong.starts_with("ERR UNAVAILABLE"), "{wrong}");
    // And a client that trusts another CA refuses it.
    let other_ca = dir.path().join("other-ca.pem");
    let other = Ca::init(
        &dir.path().join("other"),
        td.clone(),
        CaOptions::default(),
        SystemTime::now(),
    )
    .unwrap();
    std::fs::write(&other_ca, other.bundle(SystemTime::now()).to_pem()).unwrap();
    let refused = grpc_call(
        &addr,
        "/echo.Echo/Say",
        "grpc.shop.example",
        other_ca.to_str().unwrap(),
    )
    .await;
    assert!(refused.starts_with("ERR UNAVAILABLE"), "{refused}");
}
