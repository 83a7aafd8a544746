//! `identityd audit --kube` against kube's mock API server (tower-test) with API-shaped lists:
//! the snapshot comes through the KubeSource, and the cluster checks fail for the right
//! reasons — a route the controller refused, a failed KeyRotation, a namespace that must be
//! strict, a node without keys — and pass on a healthy cluster.

mod fake_api;

use std::time::Duration;

use fake_api::{FakeApi, path_of};
use identityd::audit::{self, AuditOptions, Finding, Severity};
use serde_json::{Value, json};

const KINDS: [&str; 11] = [
    "namespaces",
    "pods",
    "services",
    "ingresses",
    "gateways",
    "httproutes",
    "grpcroutes",
    "identitydnodes",
    "keyrotations",
    "trafficpolicies",
    "authorizationpolicies",
];

fn list(items: Vec<Value>) -> Value {
    json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "100"}, "items": items})
}

fn serve(api: &FakeApi, broken: bool) {
    let mut items: std::collections::BTreeMap<&str, Vec<Value>> =
        KINDS.iter().map(|k| (*k, Vec::new())).collect();
    items.get_mut("namespaces").unwrap().extend([
        json!({"metadata": {"name": "shop", "resourceVersion": "1",
            "annotations": {"identityd.io/mtls": "strict"}}}),
        json!({"metadata": {"name": "front", "resourceVersion": "2",
            "annotations": if broken { json!({}) } else { json!({"identityd.io/mtls": "strict"}) }}}),
    ]);
    items.get_mut("services").unwrap().push(json!({
        "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "3"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}}));
    items.get_mut("identitydnodes").unwrap().push(json!({
        "metadata": {"name": "worker-1", "resourceVersion": "4"},
        "spec": {"podCIDRs": ["10.244.1.0/24"], "underlayAddresses": ["192.0.2.11"],
            "wireguard": if broken { Value::Null } else {
                json!({"publicKey": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=", "port": 51871}) }}}));
    let accepted = if broken { "False" } else { "True" };
    items.get_mut("httproutes").unwrap().push(json!({
        "metadata": {"name": "web-split", "namespace": "shop", "resourceVersion": "5"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
            "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]},
        "status": {"parents": [{"parentRef": {"group": "", "kind": "Service", "name": "web", "port": 80},
            "controllerName": "identityd.io/gateway-controller",
            "conditions": [{"type": "Accepted", "status": accepted,
                "reason": if broken { "Invalid" } else { "Accepted" },
                "message": "rules[0].backends[0]: shop/nope does not exist"}]}]}}));
    if broken {
        items.get_mut("keyrotations").unwrap().push(json!({
            "metadata": {"name": "ipsec-now", "resourceVersion": "6"},
            "spec": {"target": "ipsec"},
            "status": {"phase": "Failed", "conditions": [{"type": "Ready", "status": "False",
                "reason": "IpsecUnavailable", "message": "this identityd build has no IPsec datapath"}]}}));
    }
    for (plural, items) in items {
        api.script(&path_of(plural), &[list(items)], &[]);
    }
}

async fn findings(broken: bool) -> Vec<Finding> {
    let api = FakeApi::start();
    serve(&api, broken);
    let state = audit::kube_snapshot(api.client(), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(state.problems.is_empty(), "{:#?}", state.problems);
    audit::cluster_checks(
        &state,
        &AuditOptions {
            require_mtls: vec!["shop".into(), "front".into()],
            ..AuditOptions::default()
        },
    )
}

fn by_check<'a>(f: &'a [Finding], check: &str) -> &'a Finding {
    f.iter()
        .find(|x| x.check == check)
        .unwrap_or_else(|| panic!("no {check} in {f:#?}"))
}

#[tokio::test]
async fn a_healthy_cluster_passes() {
    let f = findings(false).await;
    assert!(f.iter().all(|x| !x.is_failure()), "{f:#?}");
    for c in [
        "nodes.published",
        "objects.accepted",
        "rotations.failed",
        "namespaces.mtls-required",
        "routes.backends",
        "objects.valid",
    ] {
        assert!(by_check(&f, c).passed, "{c} examined something and passed");
    }
    // The fake API server holds no AuthorizationPolicy: nothing to examine is not a pass.
    assert_eq!(
        by_check(&f, "policies.allow-all").result,
        identityd::audit::Outcome::Skipped
    );
    assert!(!audit::failed(&f, Severity::Warning));
}

#[tokio::test]
async fn refused_objects_failed_rotations_missing_keys_and_unannotated_namespaces_fail() {
    let f = findings(true).await;
    let accepted = by_check(&f, "objects.accepted");
    assert!(!accepted.passed);
    assert!(
        accepted.details[0].contains("HTTPRoute shop/web-split: Invalid"),
        "{accepted:?}"
    );
    let rot = by_check(&f, "rotations.failed");
    assert!(!rot.passed && rot.severity == Severity::Warning);
    assert!(rot.details[0].contains("IpsecUnavailable"), "{rot:?}");
    let nodes = by_check(&f, "nodes.published");
    assert!(
        !nodes.passed && nodes.details[0].contains("worker-1"),
        "{nodes:?}"
    );
    let ns = by_check(&f, "namespaces.mtls-required");
    assert!(!ns.passed && ns.details[0].contains("front"), "{ns:?}");
    assert!(audit::failed(&f, Severity::Error));
    // Every format renders the failures.
    for format in [
        identityd::cli::AuditFormat::Json,
        identityd::cli::AuditFormat::Junit,
        identityd::cli::AuditFormat::Sarif,
    ] {
        let out = audit::render(&f, format);
        assert!(out.contains("objects.accepted"), "{format:?}: {out}");
    }
}
