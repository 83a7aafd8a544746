//! `SignServing` and the gateway identity over the real CA service: issued only when the
//! daemon's authorizer allows them (default: refused), checked by the client as a TLS server
//! certificate against the bundle.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use identityd_certs::service::{
    Authorizer, CaClient, CaServer, CaServerOptions, Denied, JoinToken, ServingRequest,
    WorkloadRequest, gateway_id, tokens,
};
use identityd_certs::{Ca, CaOptions, TrustDomain, verify_svid};
use tokio::net::TcpListener;

const HOUR: Duration = Duration::from_secs(3600);

/// Allows `web.shop.example` of Gateway shop/public, and the gateway identity to node-a.
#[derive(Debug)]
struct Ingress;

impl Authorizer for Ingress {
    fn authorize(&self, _node: &str, _req: &WorkloadRequest) -> Result<(), Denied> {
        Err(Denied("no pods here".into()))
    }
    fn authorize_gateway(&self, node: &str) -> Result<(), Denied> {
        if node == "node-a" {
            Ok(())
        } else {
            Err(Denied(format!("{node} runs no ingress")))
        }
    }
    fn authorize_serving(&self, _node: &str, req: &ServingRequest) -> Result<(), Denied> {
        let ok = req.kind == "Gateway"
            && req.namespace == "shop"
            && req.name == "public"
            && req.dns_names.iter().all(|n| n == "web.shop.example");
        if ok {
            Ok(())
        } else {
            Err(Denied(format!(
                "{:?} is on no listener of {}",
                req.dns_names, req.name
            )))
        }
    }
}

async fn client(
    authorizer: Arc<dyn Authorizer>,
    dir: &Path,
    node: &str,
) -> (CaClient, identityd_certs::Bundle) {
    let td = TrustDomain::new("lab.local").unwrap();
    let ca_dir = dir.join("ca");
    let ca = Ca::init(&ca_dir, td, CaOptions::default(), SystemTime::now()).unwrap();
    let bundle = ca.bundle(SystemTime::now());
    let server = CaServer::new(
        Arc::new(Mutex::new(ca)),
        &ca_dir,
        authorizer,
        CaServerOptions::default(),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { server.serve(listener).await });
    let path = dir.join("token");
    tokens::mint_to_file(&ca_dir, node, &path, HOUR, SystemTime::now()).unwrap();
    let tok = JoinToken::read(&path).unwrap();
    let joined = CaClient::join(&addr, node, &tok, &bundle).await.unwrap();
    let c = CaClient::connect_mtls(&addr, &joined.svid, &bundle)
        .await
        .unwrap();
    (c, bundle)
}

#[tokio::test]
async fn an_authorized_hostname_gets_a_serving_certificate_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (c, bundle) = client(Arc::new(Ingress), dir.path(), "node-a").await;
    let names = vec!["web.shop.example".to_owned()];
    let cert = c
        .sign_serving(&names, "Gateway", "shop", "public", HOUR)
        .await
        .unwrap();
    assert_eq!(cert.dns_names(), names.as_slice());
    identityd_certs::verify::verify_serving(cert.chain(), &bundle, &names, SystemTime::now())
        .unwrap();
    assert!(verify_svid(cert.chain(), &bundle, SystemTime::now()).is_err());

    // A hostname on no listener is refused with the authorizer's reason.
    let e = c
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
    assert!(e.to_string().contains("admin.shop.example"), "{e}");
    // An invalid name is an InvalidArgument naming it.
    let e = c
        .sign_serving(&["Bad_Name".to_owned()], "Gateway", "shop", "public", HOUR)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Bad_Name"), "{e}");

    // The gateway identity is issued to the node the authorizer allows.
    let td = TrustDomain::new("lab.local").unwrap();
    let gw = c
        .sign_workload(&gateway_id(&td), "", "", HOUR)
        .await
        .unwrap();
    assert_eq!(gw.id().to_string(), "spiffe://lab.local/identityd/gateway");
}

#[tokio::test]
async fn a_default_authorizer_issues_neither_serving_certificates_nor_the_gateway_identity() {
    let dir = tempfile::tempdir().unwrap();
    let pods_only = |_: &str, _: &WorkloadRequest| -> Result<(), Denied> { Ok(()) };
    let (c, _) = client(Arc::new(pods_only), dir.path(), "node-b").await;
    let e = c
        .sign_serving(
            &["web.shop.example".to_owned()],
            "Gateway",
            "shop",
            "public",
            HOUR,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");
    let td = TrustDomain::new("lab.local").unwrap();
    let e = c
        .sign_workload(&gateway_id(&td), "", "", HOUR)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");
    // Other reserved identities stay refused even to an allow-all pod authorizer.
    let node = identityd_certs::service::node_id(&td, "node-x").unwrap();
    let e = c.sign_workload(&node, "", "", HOUR).await.unwrap_err();
    assert!(e.to_string().contains("reserved"), "{e}");
}
