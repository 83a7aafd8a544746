//! Node authentication at the CA in Kubernetes mode: a projected ServiceAccount token checked
//! with a TokenReview against kube's mock service (real API JSON), bound to the pod's node;
//! end to end through the real CA issuance service; and the bundle ConfigMap apply.

mod fake_api;

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use fake_api::FakeApi;
use identityd::daemon::config::{CaAccess, NodeAuth};
use identityd::daemon::node_auth::{
    self, BUNDLE_CONFIGMAP, BUNDLE_KEY, CA_AUDIENCE, DEFAULT_NODE_SERVICE_ACCOUNT,
    ServiceAccountRef, TokenReviewAuthenticator,
};
use identityd_certs::service::{CaServer, CaServerOptions, Denied, WorkloadRequest, node_id};
use identityd_certs::{Ca, CaOptions, TrustDomain, verify_svid};

const TOKEN: &str =
    "eyJhbGciOiJSUzI1NiIsImtpZCI6InRlc3QifQ.eyJhdWQiOlsiaWRlbnRpdHlkLWNhIl19.c2lnbmF0dXJl";
const REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const POD: &str = "/api/v1/namespaces/identityd-system/pods/identityd-node-x7k2p";

fn fixture(name: &str) -> String {
    let p = format!(
        "{}/tests/fixtures/kube/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// A fake API server answering the TokenReview with `review` and the pod GET with `pod`.
fn api(review: &str, pod: Option<&str>) -> FakeApi {
    let api = FakeApi::start();
    api.respond(REVIEWS, 201, &fixture(review));
    match pod {
        Some(p) => api.get(POD, &fixture(p)),
        None => api.not_found(POD),
    }
    api
}

fn authenticator(api: &FakeApi) -> TokenReviewAuthenticator {
    TokenReviewAuthenticator::new(
        api.client(),
        ServiceAccountRef::parse(DEFAULT_NODE_SERVICE_ACCOUNT).unwrap(),
    )
}

#[tokio::test]
async fn accepted_token_posts_a_review_for_the_ca_audience_and_checks_the_pod() {
    let api = api("tokenreview-accepted", Some("pod-identityd-node-on-n1"));
    let admitted = authenticator(&api).check("n1", TOKEN).await.unwrap();
    assert_eq!(admitted.pod_name, "identityd-node-x7k2p");
    assert_eq!(admitted.node, "n1");
    let reqs = api.requests();
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    assert_eq!(
        (reqs[0].method.as_str(), reqs[0].path.as_str()),
        ("POST", REVIEWS)
    );
    assert_eq!(reqs[0].body["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(reqs[0].body["kind"], "TokenReview");
    assert_eq!(reqs[0].body["spec"]["token"], TOKEN);
    assert_eq!(
        reqs[0].body["spec"]["audiences"],
        serde_json::json!([CA_AUDIENCE])
    );
    assert_eq!(
        (reqs[1].method.as_str(), reqs[1].path.as_str()),
        ("GET", POD)
    );
    // The authenticator's Debug never shows a token.
    assert!(!format!("{:?}", authenticator(&api)).contains("eyJ"));
}

async fn refused(review: &str, pod: Option<&str>, node: &str) -> String {
    let api = api(review, pod);
    let e = authenticator(&api).check(node, TOKEN).await.unwrap_err().0;
    assert!(
        !e.contains(TOKEN),
        "the refusal never echoes the token: {e}"
    );
    e
}

#[tokio::test]
async fn refusals_name_the_failed_check() {
    let e = refused("tokenreview-not-authenticated", None, "n1").await;
    assert!(
        e.contains("not authenticated") && e.contains("expired"),
        "{e}"
    );

    let e = refused("tokenreview-wrong-audience", None, "n1").await;
    assert!(
        e.contains("audience") && e.contains("\"identityd-ca\""),
        "{e}"
    );

    let e = refused("tokenreview-wrong-sa", None, "n1").await;
    assert!(
        e.contains("system:serviceaccount:shop:web")
            && e.contains("identityd-system/identityd-node"),
        "{e}"
    );

    // The token is bound to n1 but the join asks for n2.
    let e = refused(
        "tokenreview-accepted",
        Some("pod-identityd-node-on-n1"),
        "n2",
    )
    .await;
    assert!(e.contains("bound to node \"n1\", not \"n2\""), "{e}");

    // The token claims n1 but the pod runs on n2.
    let e = refused(
        "tokenreview-accepted",
        Some("pod-identityd-node-on-n2"),
        "n1",
    )
    .await;
    assert!(
        e.contains(
            "pod identityd-system/identityd-node-x7k2p is scheduled on node \"n2\", not on \"n1\""
        ),
        "{e}"
    );

    // The pod is gone.
    let e = refused("tokenreview-accepted", None, "n1").await;
    assert!(e.contains("does not exist"), "{e}");

    // The API server refuses the review itself (RBAC).
    let api = FakeApi::start();
    api.respond(
        REVIEWS,
        403,
        r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:identityd-system:identityd-ca\" cannot create resource \"tokenreviews\"","reason":"Forbidden","code":403}"#,
    );
    let e = authenticator(&api).check("n1", TOKEN).await.unwrap_err().0;
    assert!(
        e.contains("TokenReview failed") && e.contains("forbidden"),
        "{e}"
    );
}

#[tokio::test]
async fn a_node_joins_the_real_ca_with_its_projected_token() {
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("cluster.local").unwrap();
    let ca_dir = dir.path().join("ca");
    let ca = Ca::init(&ca_dir, td.clone(), CaOptions::default(), SystemTime::now()).unwrap();
    let bundle = ca.bundle(SystemTime::now());
    let deny_all = |_: &str, _: &WorkloadRequest| -> Result<(), Denied> {
        Err(Denied("not in this test".into()))
    };
    let server = CaServer::new(
        Arc::new(Mutex::new(ca)),
        &ca_dir,
        Arc::new(deny_all),
        CaServerOptions::default(),
    )
    .unwrap();
    let api = api("tokenreview-accepted", Some("pod-identityd-node-on-n1"));
    assert!(server.set_join_authenticator(Arc::new(authenticator(&api))));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let s = server.clone();
    let serving = tokio::spawn(async move { s.serve(listener).await });

    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let access = CaAccess {
        endpoint: addr,
        bundle_file: dir.path().join("unused-bundle.pem"),
        auth: NodeAuth::ServiceAccountToken,
        join_token_file: std::path::PathBuf::new(),
        token_file: Some(token_file.clone()),
        node_service_account: None,
    };
    let joined = node_auth::join(&access, "n1", &bundle).await.unwrap();
    let want = node_id(&td, "n1").unwrap();
    assert_eq!(joined.svid.id(), &want);
    assert_eq!(
        verify_svid(joined.svid.chain(), &bundle, SystemTime::now()).unwrap(),
        want
    );
    assert!(token_file.exists(), "the projected token is not consumed");

    // The same token cannot join as another node. The caller is not authenticated, so the
    // CA tells it only that (the TokenReview's reason goes to the CA's log).
    let e = node_auth::join(&access, "n2", &bundle)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("the credential was not accepted"), "{e}");
    assert!(!e.contains("bound to node"), "{e}");
    assert!(!e.contains(TOKEN), "{e}");
    assert_eq!(server.counters().joins, 1);
    assert_eq!(server.counters().failed_joins, 1);

    // A missing token file names the field.
    let mut missing = access.clone();
    missing.token_file = Some(dir.path().join("nope"));
    let e = node_auth::join(&missing, "n1", &bundle).await.unwrap_err();
    assert!(
        matches!(
            e,
            node_auth::JoinError::Credential {
                field: "ca.tokenFile",
                ..
            }
        ),
        "{e:?}"
    );
    let e = e.to_string();
    assert!(e.starts_with("ca.tokenFile="), "{e}");
    serving.abort();
}

#[tokio::test]
async fn the_bundle_is_server_side_applied_to_the_configmap() {
    let api = FakeApi::start();
    api.echo_patches();
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    node_auth::publish_bundle(&api.client(), "identityd-system", pem)
        .await
        .unwrap();
    let reqs = api.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "PATCH");
    assert_eq!(
        r.path,
        format!("/api/v1/namespaces/identityd-system/configmaps/{BUNDLE_CONFIGMAP}")
    );
    assert_eq!(
        r.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert!(
        r.query.contains("fieldManager=identityd") && r.query.contains("force=true"),
        "{}",
        r.query
    );
    assert_eq!(r.body["kind"], "ConfigMap");
    assert_eq!(r.body["metadata"]["name"], "identityd-ca-bundle");
    assert_eq!(r.body["metadata"]["namespace"], "identityd-system");
    assert_eq!(r.body["data"][BUNDLE_KEY], pem);
}
