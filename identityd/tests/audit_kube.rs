//! `identityd audit --kube` against kube's mock API server (tower-test) with API-shaped lists:
//! the snapshot comes through the KubeSource, and the cluster checks fail for the right
//! reasons — a route the controller refused, a failed KeyRotation, a namespace that must be
//! strict, a node without keys — and pass on a healthy cluster.

mod fake_api;

use std::time::Duration;

use fake_api::{FakeApi, path_of};
use identityd::audit::{self, AuditOptions, Finding, Severity};
use serde_json::{Value, json};

const KINDS: [&str; 13] = [
    "namespaces",
    "nodes",
    "pods",
    "services",
    "ingresses",
    "networkpolicies",
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

// --- Whole-cluster live state: IdentitydNodeReports -------------------------------------

use identityd::daemon::api::{NodeStatus, PeerStatus};
use identityd::daemon::report::{SummaryLimits, summarise};
use identityd::model::report::NodeReport;
use std::time::SystemTime;

const NODES: [&str; 3] = ["w1", "w2", "w3"];
/// One WireGuard key per node (a shared key is a conflict the audit reports).
const KEYS: [&str; 3] = [
    "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
    "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=",
    "AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=",
];

/// Three published nodes with keys; `reports` as the API server holds them.
fn serve_live(api: &FakeApi, reports: &[(String, NodeReport)]) {
    let mut items: std::collections::BTreeMap<&str, Vec<Value>> =
        KINDS.iter().map(|k| (*k, Vec::new())).collect();
    for (i, n) in NODES.iter().enumerate() {
        items.get_mut("identitydnodes").unwrap().push(json!({
            "metadata": {"name": n, "resourceVersion": format!("{}", 10 + i)},
            "spec": {"podCIDRs": [format!("10.244.{}.0/24", i + 1)],
                "underlayAddresses": [format!("192.0.2.{}", 11 + i)],
                "wireguard": {"publicKey": KEYS[i], "port": 51871}}}));
    }
    for (plural, items) in items {
        api.script(&path_of(plural), &[list(items)], &[]);
    }
    let docs: Vec<Value> = reports
        .iter()
        .map(|(n, r)| {
            json!({"apiVersion": "identityd.io/v1alpha1", "kind": "IdentitydNodeReport",
                "metadata": {"name": n, "resourceVersion": "50"}, "spec": r})
        })
        .collect();
    api.script(&path_of("identitydnodereports"), &[list(docs)], &[]);
}

/// What node `n`'s daemon would report: every peer handshaked 20 s ago, strict, guarded.
fn healthy_status(n: &str) -> NodeStatus {
    NodeStatus {
        node: n.into(),
        encryption_mode: "wireguard".into(),
        strict_mode: true,
        ingress_strict_in_place: true,
        cluster_version: 7,
        envoy_ready: Some(true),
        peers: NODES
            .iter()
            .filter(|p| **p != n)
            .map(|p| PeerStatus {
                name: (*p).into(),
                path: "wireguard".into(),
                handshake_age_secs: Some(20),
                ..PeerStatus::default()
            })
            .collect(),
        counters: vec![
            ("wireguard".into(), (5000, 500_000)),
            ("drop".into(), (0, 0)),
        ],
        ..NodeStatus::default()
    }
}

/// The reports through the fake API server (list), then the live checks of `audit --kube`.
async fn live_findings(statuses: Vec<(NodeStatus, SystemTime)>) -> Vec<Finding> {
    // The cluster state the daemons summarise against (the same one the auditor reads).
    let api = FakeApi::start();
    serve_live(&api, &[]);
    let state = audit::kube_snapshot(api.client(), Duration::from_secs(5))
        .await
        .unwrap();
    let reports: Vec<(String, NodeReport)> = statuses
        .iter()
        .map(|(s, at)| {
            (
                s.node.clone(),
                summarise(s, &state, "cluster.local", &SummaryLimits::default(), *at),
            )
        })
        .collect();
    let api = FakeApi::start();
    serve_live(&api, &reports);
    let state = audit::kube_snapshot(api.client(), Duration::from_secs(5))
        .await
        .unwrap();
    let listed = identityd::source::kube::list_reports(api.client())
        .await
        .unwrap();
    assert_eq!(listed, reports, "the reports survive the API round trip");
    audit::report_live(&listed, &state, &AuditOptions::default(), SystemTime::now())
}

#[tokio::test]
async fn node_reports_of_a_healthy_cluster_pass_every_live_check() {
    let now = SystemTime::now();
    let f = live_findings(NODES.iter().map(|n| (healthy_status(n), now)).collect()).await;
    for c in [
        "nodes.reporting",
        "nodes.cidr-conflicts",
        "encryption.node-pairs",
        "encryption.strict-mode",
        "encryption.ingress-strict",
        "encryption.strict-drops",
        "encryption.plaintext",
        "proxy.envoy-ready",
        "xds.nacks",
    ] {
        assert!(by_check(&f, c).passed, "{c}: {:?}", by_check(&f, c));
    }
    assert!(!audit::failed(&f, Severity::Warning), "{f:#?}");
}

#[tokio::test]
async fn a_stale_node_a_missing_handshake_and_strict_mode_off_are_each_their_own_failure() {
    let now = SystemTime::now();
    // w1: healthy, but it has never completed a handshake with w3.
    let mut w1 = healthy_status("w1");
    w1.peers
        .iter_mut()
        .find(|p| p.name == "w3")
        .unwrap()
        .handshake_age_secs = None;
    // w2: strict mode off.
    let mut w2 = healthy_status("w2");
    w2.strict_mode = false;
    // w3: its daemon stopped reporting an hour ago.
    let w3 = healthy_status("w3");
    let f = live_findings(vec![
        (w1, now),
        (w2, now),
        (w3, now - Duration::from_secs(3600)),
    ])
    .await;
    let failed: Vec<&str> = f
        .iter()
        .filter(|x| x.is_failure())
        .map(|x| x.check.as_str())
        .collect();
    assert_eq!(
        failed,
        [
            "nodes.reporting",
            "encryption.node-pairs",
            "encryption.strict-mode"
        ],
        "{f:#?}"
    );
    let rep = by_check(&f, "nodes.reporting");
    assert_eq!(rep.details.len(), 1, "{rep:?}");
    assert!(
        rep.details[0].starts_with("IdentitydNodeReport w3: spec.reportedAt=")
            && rep.details[0].contains("old"),
        "{rep:?}"
    );
    let pairs = by_check(&f, "encryption.node-pairs");
    assert_eq!(pairs.details, ["w1 → w3: no handshake"], "{pairs:?}");
    let strict = by_check(&f, "encryption.strict-mode");
    assert_eq!(strict.details, ["w2 (encryption wireguard)"], "{strict:?}");
}

#[tokio::test]
async fn a_node_that_never_reported_fails_nodes_reporting() {
    let now = SystemTime::now();
    let f = live_findings(vec![
        (healthy_status("w1"), now),
        (healthy_status("w2"), now),
    ])
    .await;
    let rep = by_check(&f, "nodes.reporting");
    assert!(!rep.passed, "{rep:?}");
    assert_eq!(
        rep.details,
        ["IdentitydNodeReport w3: none (the node's daemon never reported)"]
    );
}

#[tokio::test]
async fn the_daemon_writes_its_report_by_server_side_apply() {
    let api = FakeApi::start();
    api.echo_patches();
    let state = identityd::model::ClusterState::default();
    let report = summarise(
        &healthy_status("w1"),
        &state,
        "cluster.local",
        &SummaryLimits::default(),
        SystemTime::now(),
    );
    identityd::source::kube::write_report(api.client(), "w1", &report)
        .await
        .unwrap();
    let seen = api.requests();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    let r = &seen[0];
    assert_eq!(r.method, "PATCH");
    assert_eq!(
        r.path,
        "/apis/identityd.io/v1alpha1/identitydnodereports/w1"
    );
    assert!(
        r.query.contains("fieldManager=identityd") && r.query.contains("force=true"),
        "{}",
        r.query
    );
    assert_eq!(
        r.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(r.body["kind"], "IdentitydNodeReport");
    let back: NodeReport = serde_json::from_value(r.body["spec"].clone()).unwrap();
    assert_eq!(back, report);
}

/// NetworkPolicies have no status: the controller's Events about them are server-side applied
/// as `events.k8s.io/v1` Events in the policy's namespace, named after the policy and the
/// event (the same event updates one object), regarding the policy.
#[tokio::test]
async fn policy_events_are_applied_as_events_regarding_the_policy() {
    let api = FakeApi::start();
    api.echo_patches();
    let key = identityd::model::ObjectKey {
        kind: identityd::model::Kind::NetworkPolicy,
        namespace: Some("shop".into()),
        name: "deny-nothing".into(),
    };
    let event = identityd::source::ObjectEvent {
        reason: "SelectsNothing".into(),
        message: "spec.podSelector selects no pod in namespace shop".into(),
    };
    identityd::source::kube::record_events(api.client(), &key, std::slice::from_ref(&event))
        .await
        .unwrap();
    let seen = api.requests();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    let r = &seen[0];
    assert_eq!(r.method, "PATCH");
    assert_eq!(
        r.path,
        format!(
            "/apis/events.k8s.io/v1/namespaces/shop/events/{}",
            event.name_for(&key)
        )
    );
    assert!(r.path.contains("deny-nothing.idd-"), "{}", r.path);
    assert!(r.query.contains("fieldManager=identityd"), "{}", r.query);
    assert_eq!(r.body["kind"], "Event");
    assert_eq!(r.body["type"], "Warning");
    assert_eq!(r.body["reason"], "SelectsNothing");
    assert_eq!(r.body["note"], event.message);
    assert_eq!(r.body["regarding"]["kind"], "NetworkPolicy");
    assert_eq!(r.body["regarding"]["apiVersion"], "networking.k8s.io/v1");
    assert_eq!(r.body["regarding"]["name"], "deny-nothing");
    let t = r.body["eventTime"].as_str().unwrap();
    assert!(
        t.len() == 27 && t.as_bytes()[19] == b'.' && t.ends_with('Z'),
        "MicroTime with six fractional digits: {t}"
    );
}
