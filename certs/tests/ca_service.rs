//! The CA issuance service over real TCP on loopback with real TLS: join tokens are single
//! use, node authorization decides workload SVIDs, the caller's node comes from its verified
//! certificate, and foreign or missing client certificates are refused.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use identityd_certs::service::{
    Authorizer, CaClient, CaServer, CaServerOptions, Denied, JoinToken, ServiceError,
    WorkloadRequest, limits::Limits, node_id, tokens,
};
use identityd_certs::tls::{SvidResolver, shared};
use identityd_certs::{Bundle, Ca, CaOptions, SpiffeId, Svid, TrustDomain, verify_svid};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const TD: &str = "lab.local";
const HOUR: Duration = Duration::from_secs(3600);

/// (namespace, pod) → (node, service account): the cluster state the daemon would hold.
type Pods = HashMap<(String, String), (String, String)>;

struct Lab {
    dir: tempfile::TempDir,
    ca: Arc<Mutex<Ca>>,
    ca_dir: PathBuf,
    server: CaServer,
    addr: String,
    bundle: Bundle,
    /// The nodes the cluster has (all that may ask): node-a and node-b at start.
    nodes: Arc<Mutex<HashSet<String>>>,
    _stop: oneshot::Sender<()>,
}

/// The pod rule of [`authorizer`] plus the node rule: only nodes in `nodes` may ask at all.
struct Published<F> {
    pods: F,
    nodes: Arc<Mutex<HashSet<String>>>,
}

impl<F> Authorizer for Published<F>
where
    F: Fn(&str, &WorkloadRequest) -> Result<(), Denied> + Send + Sync + 'static,
{
    fn authorize(&self, node: &str, req: &WorkloadRequest) -> Result<(), Denied> {
        (self.pods)(node, req)
    }

    fn authorize_node(&self, node: &str) -> Result<(), Denied> {
        if self.nodes.lock().unwrap().contains(node) {
            Ok(())
        } else {
            Err(Denied(format!("node {node} is no longer in the cluster")))
        }
    }
}

fn td() -> TrustDomain {
    TrustDomain::new(TD).unwrap()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// The daemon's rule: the pod must be scheduled on the caller's node and the ID must be the
/// pod's namespace/service account.
fn authorizer(pods: Pods) -> impl Fn(&str, &WorkloadRequest) -> Result<(), Denied> {
    move |node: &str, req: &WorkloadRequest| {
        let key = (req.pod_namespace.clone(), req.pod_name.clone());
        let Some((pod_node, sa)) = pods.get(&key) else {
            return Err(Denied(format!(
                "pod {}/{} does not exist",
                req.pod_namespace, req.pod_name
            )));
        };
        if pod_node != node {
            return Err(Denied(format!(
                "pod {}/{} is scheduled on node {pod_node}",
                req.pod_namespace, req.pod_name
            )));
        }
        let want = td().workload_id(&req.pod_namespace, sa).unwrap();
        if req.spiffe_id != want {
            return Err(Denied(format!(
                "the pod's identity is {want}, not {}",
                req.spiffe_id
            )));
        }
        Ok(())
    }
}

async fn start() -> Lab {
    start_with(CaOptions::default()).await
}

async fn start_with(options: CaOptions) -> Lab {
    start_full(options, CaServerOptions::default()).await
}

async fn start_full(options: CaOptions, server_options: CaServerOptions) -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let ca = Ca::init(&ca_dir, td(), options, SystemTime::now()).unwrap();
    let bundle = ca.bundle(SystemTime::now());
    let mut pods = Pods::new();
    for (ns, pod, node, sa) in [
        ("shop", "web-1", "node-a", "web"),
        ("shop", "db-1", "node-b", "db"),
    ] {
        pods.insert((ns.into(), pod.into()), (node.into(), sa.into()));
    }
    let ca = Arc::new(Mutex::new(ca));
    let nodes = Arc::new(Mutex::new(HashSet::from([
        "node-a".into(),
        "node-b".into(),
    ])));
    let server = CaServer::new(
        Arc::clone(&ca),
        &ca_dir,
        Arc::new(Published {
            pods: authorizer(pods),
            nodes: Arc::clone(&nodes),
        }),
        server_options,
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let s = server.clone();
    tokio::spawn(async move {
        s.serve_with_shutdown(listener, async {
            let _ = stopped.await;
        })
        .await
        .expect("CA service runs");
    });
    Lab {
        dir,
        ca,
        ca_dir,
        server,
        addr,
        bundle,
        nodes,
        _stop: stop,
    }
}

impl Lab {
    /// Mints a token file for `node` the way `lab up` does, and reads it back node-side.
    fn token(&self, node: &str) -> JoinToken {
        let path = self.dir.path().join(format!("{node}.token"));
        tokens::mint_to_file(&self.ca_dir, node, &path, HOUR, SystemTime::now()).unwrap();
        JoinToken::read(&path).unwrap()
    }

    async fn join(&self, node: &str) -> Svid {
        let tok = self.token(node);
        CaClient::join(&self.addr, node, &tok, &self.bundle)
            .await
            .unwrap_or_else(|e| panic!("join {node}: {e}"))
            .svid
    }

    async fn node_client(&self, node: &str) -> CaClient {
        let svid = self.join(node).await;
        CaClient::connect_mtls(&self.addr, &svid, &self.bundle)
            .await
            .unwrap_or_else(|e| panic!("connect_mtls {node}: {e}"))
    }
}

fn expect_code(r: Result<impl std::fmt::Debug, ServiceError>, code: tonic::Code) -> String {
    match r {
        Err(e) if e.code() == Some(code) => e.to_string(),
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn join_with_a_valid_token_yields_a_node_svid_that_verifies() {
    let lab = start().await;
    let tok = lab.token("node-a");
    let joined = CaClient::join(&lab.addr, "node-a", &tok, &lab.bundle)
        .await
        .unwrap();
    let want = node_id(&td(), "node-a").unwrap();
    assert_eq!(joined.svid.id(), &want);
    let now = SystemTime::now();
    assert_eq!(
        verify_svid(joined.svid.chain(), &lab.bundle, now).unwrap(),
        want
    );
    assert_eq!(joined.bundle.roots(), lab.bundle.roots());
    let life = joined
        .svid
        .not_after()
        .duration_since(now)
        .expect("not expired");
    assert!(
        life <= HOUR,
        "node SVID lifetime {life:?} is capped by node_svid_ttl"
    );
    assert_eq!(lab.server.counters().joins, 1);
    assert!(
        tokens::outstanding(&lab.ca_dir, now).unwrap().is_empty(),
        "the token is consumed"
    );
}

#[tokio::test]
async fn a_join_token_works_only_once() {
    let lab = start().await;
    let tok = lab.token("node-a");
    CaClient::join(&lab.addr, "node-a", &tok, &lab.bundle)
        .await
        .unwrap();
    let msg = expect_code(
        CaClient::join(&lab.addr, "node-a", &tok, &lab.bundle).await,
        tonic::Code::Unauthenticated,
    );
    assert!(msg.contains("invalid, already used or expired"), "{msg}");
    let c = lab.server.counters();
    assert_eq!((c.joins, c.failed_joins), (1, 1));
    assert!(
        c.refusals.contains(&("join", "authentication", 1)),
        "{:?}",
        c.refusals
    );
    let join = c.latency.iter().find(|l| l.request == "join").unwrap();
    assert_eq!(join.count, 2, "both answers are timed: {join:?}");
    assert_eq!(join.buckets.iter().sum::<u64>(), 2, "{join:?}");
    assert!(join.sum_seconds > 0.0, "{join:?}");
}

#[tokio::test]
async fn wrong_tokens_are_refused_and_leave_the_real_one_usable() {
    let lab = start().await;
    let real = lab.token("node-a");
    let forged = JoinToken::generate().unwrap();
    expect_code(
        CaClient::join(&lab.addr, "node-a", &forged, &lab.bundle).await,
        tonic::Code::Unauthenticated,
    );
    // node-a's token does not let anyone join as node-b.
    expect_code(
        CaClient::join(&lab.addr, "node-b", &real, &lab.bundle).await,
        tonic::Code::Unauthenticated,
    );
    assert_eq!(lab.server.counters().failed_joins, 2);
    CaClient::join(&lab.addr, "node-a", &real, &lab.bundle)
        .await
        .expect("the real token still works");
}

#[tokio::test]
async fn an_authorized_pod_gets_an_svid_with_the_requested_id() {
    let lab = start().await;
    let client = lab.node_client("node-a").await;
    let want = id("spiffe://lab.local/ns/shop/sa/web");
    let svid = client
        .sign_workload(&want, "shop", "web-1", Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(svid.id(), &want);
    let now = SystemTime::now();
    assert_eq!(verify_svid(svid.chain(), &lab.bundle, now).unwrap(), want);
    let life = svid.not_after().duration_since(now).unwrap();
    assert!(life <= Duration::from_secs(600), "{life:?}");
    let c = lab.server.counters();
    assert_eq!(c.issued, 1);
    // The node's mTLS connection is open and counted under its name; it goes when the client
    // is dropped.
    assert_eq!(c.connected_nodes.get("node-a"), Some(&1), "{c:?}");
    drop(client);
    let mut left = false;
    for _ in 0..100 {
        if lab.server.counters().connected_nodes.is_empty() {
            left = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        left,
        "a closed connection is not counted: {:?}",
        lab.server.counters()
    );
}

#[tokio::test]
async fn a_pod_on_another_node_is_permission_denied_and_counted() {
    let lab = start().await;
    let client = lab.node_client("node-a").await;
    // db-1 runs on node-b.
    let msg = expect_code(
        client
            .sign_workload(
                &id("spiffe://lab.local/ns/shop/sa/db"),
                "shop",
                "db-1",
                HOUR,
            )
            .await,
        tonic::Code::PermissionDenied,
    );
    assert!(
        msg.contains("node node-a may not have") && msg.contains("scheduled on node node-b"),
        "{msg}"
    );
    // The right pod but another pod's identity.
    let msg = expect_code(
        client
            .sign_workload(
                &id("spiffe://lab.local/ns/shop/sa/db"),
                "shop",
                "web-1",
                HOUR,
            )
            .await,
        tonic::Code::PermissionDenied,
    );
    assert!(msg.contains("the pod's identity is"), "{msg}");
    // identityd's own identities are never issued as workloads, whatever the authorizer says.
    let msg = expect_code(
        client
            .sign_workload(
                &id("spiffe://lab.local/identityd/node/node-b"),
                "shop",
                "web-1",
                HOUR,
            )
            .await,
        tonic::Code::PermissionDenied,
    );
    assert!(msg.contains("reserved"), "{msg}");
    let c = lab.server.counters();
    assert_eq!((c.issued, c.refused), (0, 3));
    assert!(
        c.refusals.contains(&("workload", "authorization", 3)),
        "{:?}",
        c.refusals
    );
}

#[tokio::test]
async fn sign_workload_without_a_client_certificate_is_refused() {
    let lab = start().await;
    let anonymous =
        CaClient::connect_with(&lab.addr, SvidResolver::new(), shared(lab.bundle.clone()))
            .await
            .unwrap();
    let msg = expect_code(
        anonymous
            .sign_workload(
                &id("spiffe://lab.local/ns/shop/sa/web"),
                "shop",
                "web-1",
                HOUR,
            )
            .await,
        tonic::Code::Unauthenticated,
    );
    assert!(msg.contains("requires mTLS with a node SVID"), "{msg}");
    // Bundle is public: it works without a client certificate.
    let b = anonymous.fetch_bundle().await.unwrap();
    assert_eq!(b.roots(), lab.bundle.roots());
    let c = lab.server.counters();
    assert_eq!(c.refused, 1);
    assert!(
        c.refusals.contains(&("workload", "authentication", 1)),
        "{:?}",
        c.refusals
    );
    assert!(
        c.connected_nodes.is_empty(),
        "no node SVID, not counted: {c:?}"
    );
}

#[tokio::test]
async fn a_workload_svid_cannot_act_as_a_node() {
    let lab = start().await;
    let node = lab.node_client("node-a").await;
    let web = node
        .sign_workload(
            &id("spiffe://lab.local/ns/shop/sa/web"),
            "shop",
            "web-1",
            HOUR,
        )
        .await
        .unwrap();
    let as_web = CaClient::connect_mtls(&lab.addr, &web, &lab.bundle)
        .await
        .unwrap();
    let msg = expect_code(
        as_web
            .sign_workload(
                &id("spiffe://lab.local/ns/shop/sa/web"),
                "shop",
                "web-1",
                HOUR,
            )
            .await,
        tonic::Code::PermissionDenied,
    );
    assert!(msg.contains("is not a node identity"), "{msg}");
}

#[tokio::test]
async fn a_csr_for_another_id_is_refused_with_the_csr_rule() {
    let lab = start().await;
    let client = lab.node_client("node-a").await;
    let asked = id("spiffe://lab.local/ns/shop/sa/web");
    let key = identityd_certs::PrivateKey::generate().unwrap();
    let csr =
        identityd_certs::svid::csr_for(&id("spiffe://lab.local/ns/shop/sa/db"), &key).unwrap();
    let msg = expect_code(
        client
            .sign_csr(&asked, "shop", "web-1", HOUR, csr, key)
            .await,
        tonic::Code::InvalidArgument,
    );
    assert!(
        msg.contains("subjectAltName: requests spiffe://lab.local/ns/shop/sa/db")
            && msg.contains("authorized ID is spiffe://lab.local/ns/shop/sa/web"),
        "{msg}"
    );
    let c = lab.server.counters();
    assert_eq!((c.issued, c.refused), (0, 1));
}

#[tokio::test]
async fn a_node_svid_from_another_ca_is_refused_at_tls() {
    let lab = start().await;
    // Same trust domain, same ID shape, different key: an impostor CA.
    let other_dir = lab.dir.path().join("other-ca");
    let other = Ca::init(&other_dir, td(), CaOptions::default(), SystemTime::now()).unwrap();
    let forged = other
        .issue(&node_id(&td(), "node-a").unwrap(), HOUR, SystemTime::now())
        .unwrap();
    let before = lab.server.counters();
    // With TLS 1.3 the server's verdict on the client certificate arrives after the client's
    // handshake is done: the failure shows on connect or on the first request.
    let result = match CaClient::connect_mtls(&lab.addr, &forged, &lab.bundle).await {
        Err(e) => Err(e),
        Ok(c) => c
            .sign_workload(
                &id("spiffe://lab.local/ns/shop/sa/web"),
                "shop",
                "web-1",
                HOUR,
            )
            .await
            .map(|_| ()),
    };
    let err = result.expect_err("a foreign node SVID must not get through");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while lab.server.counters().tls_failures == before.tls_failures {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no TLS failure counted; client saw: {err}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = lab.server.counters();
    assert_eq!(after.issued, before.issued);
    assert_eq!(
        after.refused, before.refused,
        "refused at TLS, before any RPC: {err}"
    );
}

#[tokio::test]
async fn a_node_does_not_join_a_ca_it_cannot_verify() {
    let lab = start().await;
    let other_dir = lab.dir.path().join("other-ca");
    let other = Ca::init(&other_dir, td(), CaOptions::default(), SystemTime::now()).unwrap();
    let tok = lab.token("node-a");
    let err = CaClient::join(&lab.addr, "node-a", &tok, &other.bundle(SystemTime::now()))
        .await
        .expect_err("the CA's serving SVID does not verify against another root");
    assert!(matches!(err, ServiceError::Connect { .. }), "{err}");
    assert_eq!(
        tokens::outstanding(&lab.ca_dir, SystemTime::now()).unwrap(),
        ["node-a"],
        "the token was never sent, so it is still outstanding"
    );
}

#[tokio::test]
async fn a_node_renews_its_own_svid_over_mtls() {
    let lab = start().await;
    let first = lab.join("node-a").await;
    let client = CaClient::connect_mtls(&lab.addr, &first, &lab.bundle)
        .await
        .unwrap();
    let renewed = client.renew_node(&first).await.unwrap();
    assert_eq!(renewed.id(), first.id());
    assert_ne!(renewed.leaf(), first.leaf());
    assert_ne!(
        renewed.key().public_key_der().unwrap(),
        first.key().public_key_der().unwrap(),
        "a new key per renewal"
    );
    assert_eq!(lab.server.counters().node_renewals, 1);
}

#[tokio::test]
async fn issuance_works_through_an_intermediate() {
    let lab = start_with(CaOptions {
        intermediate: true,
        ..CaOptions::default()
    })
    .await;
    let node = lab.join("node-a").await;
    assert_eq!(node.chain().len(), 2, "leaf + intermediate");
    let client = CaClient::connect_mtls(&lab.addr, &node, &lab.bundle)
        .await
        .unwrap();
    let want = id("spiffe://lab.local/ns/shop/sa/web");
    let svid = client
        .sign_workload(&want, "shop", "web-1", HOUR)
        .await
        .unwrap();
    assert_eq!(svid.chain().len(), 2);
    assert_eq!(
        verify_svid(svid.chain(), &lab.bundle, SystemTime::now()).unwrap(),
        want
    );
}

#[tokio::test]
async fn after_a_rollover_nodes_knowing_only_the_old_root_keep_working_and_learn_the_new_one() {
    let lab = start().await;
    let old_bundle = lab.bundle.clone();
    let node = lab.join("node-a").await;
    lab.ca
        .lock()
        .unwrap()
        .rollover(&lab.ca_dir, HOUR, SystemTime::now())
        .unwrap();
    lab.server.refresh().unwrap();

    // The node still holds only the old root and a node SVID under it.
    let client = CaClient::connect_mtls(&lab.addr, &node, &old_bundle)
        .await
        .unwrap();
    let want = id("spiffe://lab.local/ns/shop/sa/web");
    let svid = client
        .sign_workload(&want, "shop", "web-1", HOUR)
        .await
        .unwrap();
    let now = SystemTime::now();
    let learned = client.bundle().read().unwrap().clone();
    assert_eq!(
        learned.roots().len(),
        2,
        "old and new root during the overlap"
    );
    assert_eq!(verify_svid(svid.chain(), &learned, now).unwrap(), want);
    assert!(
        verify_svid(svid.chain(), &old_bundle, now).is_err(),
        "new SVIDs are signed under the new root"
    );
    let renewed = client.renew_node(&node).await.unwrap();
    assert!(verify_svid(renewed.chain(), &old_bundle, now).is_err());
    assert_eq!(
        verify_svid(renewed.chain(), &learned, now).unwrap(),
        *node.id()
    );
}

#[tokio::test]
async fn a_restarted_node_reuses_its_saved_identity_without_a_new_token() {
    let lab = start().await;
    let state = lab.dir.path().join("node-a-state");
    let token_path = lab.dir.path().join("node-a.token");
    tokens::mint_to_file(&lab.ca_dir, "node-a", &token_path, HOUR, SystemTime::now()).unwrap();
    let margin = Duration::from_secs(60);
    let first = CaClient::load_or_join(
        &state,
        &lab.addr,
        "node-a",
        &token_path,
        &lab.bundle,
        margin,
    )
    .await
    .unwrap();
    assert!(!token_path.exists(), "the used token file is removed");
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(state.join("key.pem"))
            .unwrap()
            .permissions(),
    ) & 0o777;
    assert_eq!(key_mode, 0o600);

    // "Restart": no token any more, the saved identity is used and still authenticates.
    let again = CaClient::load_or_join(
        &state,
        &lab.addr,
        "node-a",
        &token_path,
        &lab.bundle,
        margin,
    )
    .await
    .unwrap();
    assert_eq!(again.svid.leaf(), first.svid.leaf());
    let client = CaClient::connect_mtls(&lab.addr, &again.svid, &again.bundle)
        .await
        .unwrap();
    client
        .sign_workload(
            &id("spiffe://lab.local/ns/shop/sa/web"),
            "shop",
            "web-1",
            HOUR,
        )
        .await
        .unwrap();
    assert_eq!(lab.server.counters().joins, 1);

    // A saved identity that would expire within the margin is not used: a join is needed.
    let err = CaClient::load_or_join(
        &state,
        &lab.addr,
        "node-a",
        &token_path,
        &lab.bundle,
        2 * HOUR,
    )
    .await
    .expect_err("no usable identity and no token");
    assert!(err.to_string().contains("node-a.token"), "{err}");
}

/// A platform credential check (the daemon's TokenReview in Kubernetes): `credential` must be
/// `platform-token-for.<node>`.
struct PlatformTokens;

impl identityd_certs::service::JoinAuthenticator for PlatformTokens {
    fn authenticate<'a>(
        &'a self,
        node: &'a str,
        credential: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Denied>> + Send + 'a>> {
        Box::pin(async move {
            match credential.strip_prefix("platform-token-for.") {
                Some(n) if n == node => Ok(()),
                Some(n) => Err(Denied(format!("the credential is bound to node {n:?}"))),
                None => Err(Denied("not a platform credential".into())),
            }
        })
    }
}

#[tokio::test]
async fn a_join_authenticator_admits_platform_credentials_and_join_tokens_still_work() {
    let lab = start().await;
    assert!(lab.server.set_join_authenticator(Arc::new(PlatformTokens)));
    let joined = CaClient::join_with_credential(
        &lab.addr,
        "node-a",
        "platform-token-for.node-a",
        &lab.bundle,
    )
    .await
    .unwrap();
    assert_eq!(joined.svid.id(), &node_id(&td(), "node-a").unwrap());
    assert_eq!(
        verify_svid(joined.svid.chain(), &lab.bundle, SystemTime::now()).unwrap(),
        node_id(&td(), "node-a").unwrap()
    );
    // Bound to another node: refused with a fixed message; the authenticator's reason (which
    // may say why a platform token failed) goes to the CA's log only, never to the caller.
    let e = expect_code(
        CaClient::join_with_credential(
            &lab.addr,
            "node-b",
            "platform-token-for.node-a",
            &lab.bundle,
        )
        .await,
        tonic::Code::Unauthenticated,
    );
    assert!(e.contains("the credential was not accepted"), "{e}");
    assert!(!e.contains("bound to node"), "{e}");
    assert!(!e.contains("platform-token-for"), "{e}");
    assert_eq!(lab.server.counters().failed_joins, 1);
    // Join tokens keep going to the token store.
    let _ = lab.join("node-b").await;
    assert_eq!(lab.server.counters().joins, 2);
}

/// Lifetime of a workload SVID asked for `ttl`.
async fn workload_lifetime(lab: &Lab, ttl: Duration) -> Duration {
    let client = lab.node_client("node-a").await;
    let svid = client
        .sign_workload(
            &id("spiffe://lab.local/ns/shop/sa/web"),
            "shop",
            "web-1",
            ttl,
        )
        .await
        .unwrap();
    svid.not_after()
        .duration_since(SystemTime::now())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_lifetime_above_the_configured_svid_ttl_is_cut_to_it() {
    // Before: the only cap was the CA's 24 h, whatever svidTTL said.
    let uncapped = start().await;
    let asked = 48 * HOUR;
    let life = workload_lifetime(&uncapped, asked).await;
    assert!(life > 23 * HOUR, "24 h cap only: {life:?}");
    let svid_ttl = Duration::from_secs(30 * 60);
    let lab = start_full(
        CaOptions::default(),
        CaServerOptions {
            max_workload_ttl: svid_ttl,
            ..CaServerOptions::default()
        },
    )
    .await;
    let life = workload_lifetime(&lab, asked).await;
    assert!(
        life <= svid_ttl && life > svid_ttl - Duration::from_secs(120),
        "cut to svidTTL: {life:?}"
    );
}

#[tokio::test]
async fn a_node_removed_from_the_cluster_gets_no_renewal_and_no_svid() {
    let lab = start().await;
    let svid = lab.join("node-a").await;
    let client = CaClient::connect_mtls(&lab.addr, &svid, &lab.bundle)
        .await
        .unwrap();
    let web = id("spiffe://lab.local/ns/shop/sa/web");
    // While it is part of the cluster it renews and gets SVIDs.
    client.renew_node(&svid).await.unwrap();
    client
        .sign_workload(&web, "shop", "web-1", HOUR)
        .await
        .unwrap();
    lab.nodes.lock().unwrap().remove("node-a");
    let msg = expect_code(
        client.renew_node(&svid).await,
        tonic::Code::PermissionDenied,
    );
    assert!(msg.contains("no longer in the cluster"), "{msg}");
    expect_code(
        client.sign_workload(&web, "shop", "web-1", HOUR).await,
        tonic::Code::PermissionDenied,
    );
    let c = lab.server.counters();
    assert!(
        c.refusals.contains(&("node_renewal", "authorization", 1)),
        "{:?}",
        c.refusals
    );
    assert!(
        c.refusals.contains(&("workload", "authorization", 1)),
        "{:?}",
        c.refusals
    );
    assert_eq!((c.node_renewals, c.issued), (1, 1));
}

#[tokio::test]
async fn a_node_asking_faster_than_its_limit_is_refused_and_counted_and_others_are_served() {
    let lab = start_full(
        CaOptions::default(),
        CaServerOptions {
            limits: Limits {
                node_requests_per_second: 1,
                node_request_burst: 3,
                ..Limits::default()
            },
            ..CaServerOptions::default()
        },
    )
    .await;
    let a = lab.node_client("node-a").await;
    let web = id("spiffe://lab.local/ns/shop/sa/web");
    for _ in 0..3 {
        a.sign_workload(&web, "shop", "web-1", HOUR).await.unwrap();
    }
    let msg = expect_code(
        a.sign_workload(&web, "shop", "web-1", HOUR).await,
        tonic::Code::ResourceExhausted,
    );
    assert!(msg.contains("retry later"), "{msg}");
    // Another node has its own budget.
    let b = lab.node_client("node-b").await;
    b.sign_workload(
        &id("spiffe://lab.local/ns/shop/sa/db"),
        "shop",
        "db-1",
        HOUR,
    )
    .await
    .unwrap();
    // The budget refills at the rate.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.sign_workload(&web, "shop", "web-1", HOUR).await.unwrap();
    let c = lab.server.counters();
    assert!(
        c.refusals.contains(&("workload", "rate_limited", 1)),
        "{:?}",
        c.refusals
    );
}
