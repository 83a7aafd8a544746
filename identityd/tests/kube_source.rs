//! The KubeSource against kube's mock service (tower-test): real API-server JSON (lists, watch
//! events ADDED/MODIFIED/DELETED/BOOKMARK, a `410 Gone` ERROR forcing a re-list) for every
//! watched kind, and the snapshots it builds from them; the status writers' server-side apply
//! requests.

mod fake_api;

use std::sync::Arc;
use std::time::Duration;

use fake_api::FakeApi;
use identityd::model::identityd::{IdentitydNodeSpec, IdentitydNodeStatus, PolicyStatus};
use identityd::model::{
    ClusterState, Condition, IdentitydNode, KeyRotation, KeyRotationStatus, MtlsMode,
    NamespacedName, Object, RotationTarget,
};
use identityd::source::{ClusterSource, KubeSource, KubeSourceOptions, SourceError};

const KINDS: [&str; 14] = [
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
    "secrets",
];

fn nn(ns: &str, name: &str) -> NamespacedName {
    NamespacedName::new(ns, name)
}

/// Waits (up to 20 s) for a snapshot satisfying `pred`; panics with the last one otherwise.
async fn wait_for(
    rx: &mut tokio::sync::watch::Receiver<Arc<ClusterState>>,
    what: &str,
    pred: impl Fn(&ClusterState) -> bool,
) -> Arc<ClusterState> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = rx.borrow_and_update().clone();
        if pred(&s) {
            return s;
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            panic!("timed out waiting for {what}; last snapshot: {s:#?}");
        }
    }
}

#[tokio::test]
async fn snapshots_follow_lists_watch_events_bookmarks_and_a_410_relist() {
    let api = FakeApi::start();
    for k in KINDS {
        api.script_fixture(k);
    }
    let source = Arc::new(KubeSource::new(
        api.client(),
        KubeSourceOptions {
            debounce: Duration::from_millis(50),
            initial_sync_timeout: Duration::from_secs(20),
            secret_namespaces: vec!["shop".to_owned()],
            ..KubeSourceOptions::default()
        },
    ));
    let mut rx = source.subscribe();
    assert_eq!(rx.borrow().version(), 0, "nothing before the first lists");
    let task = tokio::spawn(Arc::clone(&source).run());

    // The end state of every script: lists, then the watch events, then (pods) the re-list.
    let s = wait_for(
        &mut rx,
        "every kind's watch events and the pod re-list",
        |s| {
            s.pods.contains_key(&nn("shop", "web-3"))
                && s.namespaces.contains_key("payments")
                && s.nodes.contains_key("n2")
                && s.node_objects.contains_key("n3")
                && s.grpc_routes.contains_key(&nn("shop", "greeter"))
                && s.ingresses.is_empty()
                && s.traffic_policies.is_empty()
                && s.problems
                    .iter()
                    .any(|p| p.name.as_deref() == Some("shop/typo"))
                && s.services
                    .get(&nn("shop", "web"))
                    .is_some_and(|svc| svc.spec.ports[0].port == 8080)
        },
    )
    .await;
    assert!(s.version() >= 1);

    // Namespaces: ADDED payments, MODIFIED shop's annotation; the bookmark changes nothing.
    assert_eq!(
        s.namespaces.keys().map(String::as_str).collect::<Vec<_>>(),
        ["default", "payments", "shop"]
    );
    assert_eq!(
        s.namespace_mtls("shop", MtlsMode::Strict),
        MtlsMode::Disabled
    );
    assert_eq!(
        s.namespace_mtls("payments", MtlsMode::Strict),
        MtlsMode::Permissive
    );
    // Nodes: listed n1 and n2 (dual stack), ADDED n3; n9's pod CIDR is a problem naming it.
    assert_eq!(
        s.node_object_pod_cidrs()
            .iter()
            .map(|c| format!("{}/{}", c.addr, c.prefix))
            .collect::<Vec<_>>(),
        [
            "10.244.1.0/24",
            "10.244.2.0/24",
            "fd00:10:244:2::/64",
            "10.244.3.0/24"
        ]
    );
    let n9 = s
        .problems
        .iter()
        .find(|p| p.kind.as_deref() == Some("Node") && p.name.as_deref() == Some("n9"))
        .unwrap_or_else(|| panic!("Node n9 is a problem: {:#?}", s.problems));
    assert!(n9.to_string().contains("spec.podCIDR"), "{n9}");
    // Pods: web-2 DELETED, then 410 Gone: the re-list brings web-3 (created while the watch
    // was down) and a pod with a bad IP, which is a problem, not a crash.
    let pods: Vec<_> = s.pods.keys().map(|k| k.name.as_str()).collect();
    assert_eq!(pods, ["web-1", "web-3"]);
    assert_eq!(
        s.pods[&nn("shop", "web-3")].spec.node_name.as_deref(),
        Some("n3")
    );
    let broken = s
        .problems
        .iter()
        .find(|p| p.name.as_deref() == Some("shop/broken"))
        .unwrap_or_else(|| panic!("pod broken is a problem: {:#?}", s.problems));
    assert_eq!(broken.kind.as_deref(), Some("Pod"));
    assert!(broken.to_string().contains("10.244.1.999"), "{broken}");
    // Services: MODIFIED port; endpoints are derived from the pods' labels as for files.
    let eps = s.service_endpoints("shop", "web").unwrap();
    let ips: Vec<String> = eps.endpoints.iter().map(|e| e.ip.to_string()).collect();
    assert_eq!(ips, ["10.244.1.10", "10.244.3.10"]);
    // Ingress and TrafficPolicy: DELETED after a bookmark.
    assert!(s.ingresses.is_empty() && s.traffic_policies.is_empty());
    // Gateway API.
    assert_eq!(
        s.gateways[&nn("shop", "ingress")].spec.listeners[0].port,
        9080
    );
    assert_eq!(
        s.http_routes
            .keys()
            .map(|k| k.name.as_str())
            .collect::<Vec<_>>(),
        ["web-canary", "web-split"]
    );
    // identityd kinds.
    assert_eq!(s.nodes["n1"].spec.underlay_addresses, ["192.168.1.21"]);
    assert_eq!(s.nodes["n2"].spec.pod_cidrs, ["10.244.2.0/24"]);
    assert_eq!(
        s.key_rotations["rotate-wg"]
            .status
            .as_ref()
            .unwrap()
            .phase
            .as_deref(),
        Some("InProgress")
    );
    let ap = &s.authorization_policies[&nn("shop", "web")];
    assert_eq!(ap.spec.deny[0].to.as_ref().unwrap().paths, ["/admin/*"]);
    let typo = s
        .problems
        .iter()
        .find(|p| p.name.as_deref() == Some("shop/typo"))
        .unwrap();
    assert_eq!(typo.kind.as_deref(), Some("AuthorizationPolicy"));
    assert_eq!(typo.field.as_deref(), Some("spec.allow[0].to.methods[0]"));
    assert_eq!(typo.value.as_deref(), Some("FETCH"));
    assert!(!s.authorization_policies.contains_key(&nn("shop", "typo")));

    // Secrets: only in the listed namespace, only kubernetes.io/tls (field selector).
    assert_eq!(
        s.secrets[&nn("shop", "api-tls")].type_.as_deref(),
        Some("kubernetes.io/tls")
    );

    // The watcher listed pods twice (initial + after 410) and resumed watches from the last
    // bookmark's resourceVersion.
    let log = api.requests();
    let pod_lists = log
        .iter()
        .filter(|r| r.path == "/api/v1/pods" && !r.query.contains("watch=true"))
        .count();
    assert_eq!(pod_lists, 2, "{log:#?}");
    assert!(
        log.iter().any(|r| r.path == "/api/v1/namespaces"
            && r.query.contains("watch=true")
            && r.query.contains("resourceVersion=1003")),
        "namespaces re-watch from the bookmark: {log:#?}"
    );
    assert!(
        log.iter()
            .filter(|r| r.query.contains("watch=true"))
            .all(|r| r.query.contains("allowWatchBookmarks=true")),
        "{log:#?}"
    );
    assert!(
        !log.iter().any(|r| r.path == "/api/v1/secrets"),
        "Secrets are never listed cluster-wide"
    );
    let secrets: Vec<_> = log
        .iter()
        .filter(|r| r.path == "/api/v1/namespaces/shop/secrets")
        .collect();
    assert!(secrets.len() >= 2, "{log:#?}");
    assert!(
        secrets
            .iter()
            .all(|r| r.query.contains("fieldSelector=type%3Dkubernetes.io%2Ftls")),
        "{secrets:#?}"
    );
    task.abort();
}

#[tokio::test]
async fn first_snapshot_waits_for_every_list_then_reports_unwatchable_kinds() {
    let api = FakeApi::start();
    for k in KINDS {
        if k != "grpcroutes" {
            api.script_fixture(k);
        }
    }
    // GRPCRoute CRD not installed: 404 on every list.
    api.not_found("/apis/gateway.networking.k8s.io/v1/grpcroutes");
    let source = Arc::new(KubeSource::new(
        api.client(),
        KubeSourceOptions {
            debounce: Duration::from_millis(20),
            initial_sync_timeout: Duration::from_millis(1500),
            secret_namespaces: vec!["shop".to_owned()],
            ..KubeSourceOptions::default()
        },
    ));
    let mut rx = source.subscribe();
    let task = tokio::spawn(Arc::clone(&source).run());
    let s = wait_for(&mut rx, "a first snapshot without GRPCRoutes", |s| {
        s.version() >= 1 && s.pods.contains_key(&nn("shop", "web-1"))
    })
    .await;
    let p = s
        .problems
        .iter()
        .find(|p| p.kind.as_deref() == Some("GRPCRoute"))
        .unwrap_or_else(|| panic!("the unwatchable kind is reported: {:#?}", s.problems));
    assert!(p.reason.contains("cannot watch GRPCRoute"), "{p}");
    assert!(!s.namespaces.is_empty() && !s.nodes.is_empty());
    task.abort();
}

#[tokio::test]
async fn a_burst_of_events_is_folded_into_one_snapshot() {
    let api = FakeApi::start();
    // The other kinds: their first list only, quiet watches.
    for k in KINDS.into_iter().filter(|k| *k != "namespaces") {
        let file = format!(
            "{}/tests/fixtures/kube/{k}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        api.script(&fake_api::path_of(k), &[v["lists"][0].clone()], &[]);
    }
    let ns = |name: String, rv: usize| {
        serde_json::json!({"kind": "Namespace", "apiVersion": "v1",
            "metadata": {"name": name, "resourceVersion": rv.to_string(), "uid": format!("uid-{rv}")},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
    };
    let burst: Vec<serde_json::Value> = (0..40)
        .map(|i| serde_json::json!({"type": "ADDED", "object": ns(format!("team-{i:02}"), 2000 + i)}))
        .collect();
    api.script(
        "/api/v1/namespaces",
        &[
            serde_json::json!({"kind": "NamespaceList", "apiVersion": "v1",
            "metadata": {"resourceVersion": "1999"}, "items": []}),
        ],
        &[burst],
    );
    let source = Arc::new(KubeSource::new(
        api.client(),
        KubeSourceOptions {
            debounce: Duration::from_millis(300),
            initial_sync_timeout: Duration::from_secs(20),
            secret_namespaces: vec!["shop".to_owned()],
            ..KubeSourceOptions::default()
        },
    ));
    let mut rx = source.subscribe();
    let task = tokio::spawn(Arc::clone(&source).run());
    let s = wait_for(&mut rx, "all 40 namespaces", |s| s.namespaces.len() == 40).await;
    // Version 1 is the first complete snapshot; the burst adds at most one more.
    assert!(
        s.version() <= 2,
        "40 events published {} snapshots",
        s.version()
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        source.snapshot().version(),
        s.version(),
        "nothing further to publish"
    );
    task.abort();
}

/// The same objects through both sources give the same snapshot: the lab's cluster YAML as
/// files, and as API lists (items without apiVersion/kind, with store metadata).
#[tokio::test]
async fn kube_and_file_sources_build_the_same_snapshot() {
    let text = include_str!("../src/model/testdata/lab-cluster.yaml");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), text).unwrap();
    let files = identityd::source::FileSource::open(
        dir.path(),
        identityd::source::FileSourceOptions::default(),
    )
    .unwrap()
    .snapshot();
    assert!(files.problems.is_empty(), "{:#?}", files.problems);
    assert!(files.len() > 10);

    let api = FakeApi::start();
    let mut items: std::collections::BTreeMap<&str, Vec<serde_json::Value>> =
        KINDS.iter().map(|k| (*k, Vec::new())).collect();
    let mut versions = std::collections::BTreeMap::new();
    for (i, doc) in identityd::source::split_documents(text).iter().enumerate() {
        let Some(obj) = identityd::source::decode_document(doc).unwrap() else {
            continue;
        };
        let mut v = serde_json::to_value(&obj).unwrap();
        let m = v.as_object_mut().unwrap();
        m.remove("apiVersion");
        m.remove("kind");
        v["metadata"]["resourceVersion"] = (100 + i).to_string().into();
        versions.insert(obj.key(), (100 + i).to_string());
        v["metadata"]["uid"] = format!("uid-{i}").into();
        let plural = match obj.kind() {
            identityd::model::Kind::Namespace => "namespaces",
            identityd::model::Kind::Node => "nodes",
            identityd::model::Kind::Pod => "pods",
            identityd::model::Kind::Service => "services",
            identityd::model::Kind::HttpRoute => "httproutes",
            identityd::model::Kind::TrafficPolicy => "trafficpolicies",
            identityd::model::Kind::AuthorizationPolicy => "authorizationpolicies",
            other => panic!("the lab fixture grew a {other}; map it here"),
        };
        items.get_mut(plural).unwrap().push(v);
    }
    for (plural, items) in items {
        api.script(
            &fake_api::path_of(plural),
            &[serde_json::json!({"kind": "List", "apiVersion": "v1",
                "metadata": {"resourceVersion": "500"}, "items": items})],
            &[],
        );
    }
    let source = Arc::new(KubeSource::new(
        api.client(),
        KubeSourceOptions {
            debounce: Duration::from_millis(20),
            secret_namespaces: vec!["shop".to_owned()],
            ..KubeSourceOptions::default()
        },
    ));
    let mut rx = source.subscribe();
    let task = tokio::spawn(Arc::clone(&source).run());
    let kube = wait_for(&mut rx, "the first snapshot", |s| s.version() >= 1).await;
    // The FileSource's objects, with the store's resourceVersions (files have none).
    let files = ClusterState::from_objects(
        1,
        files.origins.keys().map(|k| {
            let mut o = files.object(k).unwrap();
            o.meta_mut().resource_version = Some(versions[k].clone());
            o
        }),
    );
    assert!(
        kube.same_content(&files),
        "KubeSource snapshot differs from the FileSource's:\nkube: {kube:#?}\nfiles: {files:#?}"
    );
    task.abort();
}

#[tokio::test]
async fn node_pod_cidr_reads_the_node_object() {
    let api = FakeApi::start();
    api.get(
        "/api/v1/nodes/n1",
        include_str!("fixtures/kube/node-n1.json"),
    );
    api.not_found("/api/v1/nodes/n9");
    let source = KubeSource::new(api.client(), KubeSourceOptions::default());
    assert_eq!(
        source.node_pod_cidr("n1").await.unwrap().as_deref(),
        Some("10.244.1.0/24")
    );
    let e = source.node_pod_cidr("n9").await.unwrap_err();
    assert!(e.to_string().contains("reading Node n9"), "{e}");
}

#[tokio::test]
async fn the_startup_taint_leaves_the_node_alone_with_its_other_taints_and_a_precondition() {
    let api = FakeApi::start();
    let mut tainted: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/kube/node-n1.json")).unwrap();
    tainted["spec"]["taints"] = serde_json::json!([
        {"key": "identityd.io/agent-not-ready", "effect": "NoSchedule"},
        {"key": "gpu", "value": "a100", "effect": "NoSchedule"},
    ]);
    api.get("/api/v1/nodes/n1", &tainted.to_string());
    api.get(
        "/api/v1/nodes/n2",
        include_str!("fixtures/kube/node-n1.json"),
    );
    let source = KubeSource::new(api.client(), KubeSourceOptions::default());
    assert!(
        source
            .remove_node_taint("n1", "identityd.io/agent-not-ready")
            .await
            .unwrap()
    );
    let patches: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert_eq!(patches.len(), 1, "{patches:#?}");
    let p = &patches[0];
    assert_eq!(p.path, "/api/v1/nodes/n1");
    assert_eq!(
        p.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(
        p.body,
        serde_json::json!({
            "metadata": {"resourceVersion": "5"},
            "spec": {"taints": [{"key": "gpu", "value": "a100", "effect": "NoSchedule"}]},
        }),
        "only the startup taint goes, under the read resourceVersion"
    );
    // A Node without it: nothing to write.
    api.clear_requests();
    assert!(
        !source
            .remove_node_taint("n2", "identityd.io/agent-not-ready")
            .await
            .unwrap()
    );
    assert!(api.requests().iter().all(|r| r.method == "GET"));
    // A refused write is an error naming the taint and the Node.
    api.respond(
        "/api/v1/nodes/n1",
        403,
        &serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "forbidden", "reason": "Forbidden", "code": 403})
        .to_string(),
    );
    let e = source
        .remove_node_taint("n1", "identityd.io/agent-not-ready")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Node n1"), "{e}");
}

fn ready() -> Condition {
    Condition {
        type_: "Ready".into(),
        status: "True".into(),
        reason: "DatapathUp".into(),
        message: "WireGuard and classifier in place".into(),
        last_transition_time: Some("2026-11-26T12:00:00Z".into()),
        observed_generation: Some(1),
    }
}

#[tokio::test]
async fn status_writes_are_server_side_applies_by_identityd() {
    let api = FakeApi::start();
    api.echo_patches();
    let source: Arc<dyn ClusterSource> =
        Arc::new(KubeSource::new(api.client(), KubeSourceOptions::default()));

    // IdentitydNode: spec by apply, then status by apply on /status.
    let mut node = IdentitydNode::new(
        "n1",
        IdentitydNodeSpec {
            pod_cidrs: vec!["10.244.1.0/24".into()],
            underlay_addresses: vec!["192.168.1.11".into()],
            ..IdentitydNodeSpec::default()
        },
    );
    node.metadata.resource_version = Some("77".into());
    node.status = Some(IdentitydNodeStatus {
        observed_generation: Some(1),
        conditions: vec![ready()],
        trusted_roots: vec![],
    });
    source
        .apply(&Object::IdentitydNode(node.clone()))
        .await
        .unwrap();
    let reqs = api.requests();
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    let (spec, status) = (&reqs[0], &reqs[1]);
    for r in [spec, status] {
        assert_eq!(r.method, "PATCH");
        assert_eq!(
            r.content_type.as_deref(),
            Some("application/apply-patch+yaml")
        );
        assert!(r.query.contains("fieldManager=identityd"), "{}", r.query);
        assert!(r.query.contains("force=true"), "{}", r.query);
    }
    assert_eq!(spec.path, "/apis/identityd.io/v1alpha1/identitydnodes/n1");
    assert_eq!(
        spec.body,
        serde_json::json!({
            "apiVersion": "identityd.io/v1alpha1",
            "kind": "IdentitydNode",
            "metadata": {"name": "n1"},
            "spec": {"podCIDRs": ["10.244.1.0/24"], "underlayAddresses": ["192.168.1.11"]},
        }),
        "no status and no resourceVersion in the spec apply"
    );
    assert_eq!(
        status.path,
        "/apis/identityd.io/v1alpha1/identitydnodes/n1/status"
    );
    assert_eq!(
        status.body,
        serde_json::json!({
            "apiVersion": "identityd.io/v1alpha1",
            "kind": "IdentitydNode",
            "metadata": {"name": "n1"},
            "status": {"observedGeneration": 1, "conditions": [{
                "type": "Ready", "status": "True", "reason": "DatapathUp",
                "message": "WireGuard and classifier in place",
                "lastTransitionTime": "2026-11-26T12:00:00Z", "observedGeneration": 1,
            }]},
        })
    );

    // KeyRotation phase + conditions: status only.
    api.clear_requests();
    let mut kr = KeyRotation::new("rotate-wg", RotationTarget::Wireguard);
    kr.status = Some(KeyRotationStatus {
        phase: Some("Completed".into()),
        conditions: vec![Condition {
            type_: "Progressing".into(),
            status: "False".into(),
            reason: "Completed".into(),
            ..Condition::default()
        }],
        observed_generation: Some(3),
        ..KeyRotationStatus::default()
    });
    source.write_status(&Object::KeyRotation(kr)).await.unwrap();
    let reqs = api.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "PATCH");
    assert_eq!(
        reqs[0].path,
        "/apis/identityd.io/v1alpha1/keyrotations/rotate-wg/status"
    );
    assert_eq!(
        reqs[0].body["status"],
        serde_json::json!({"phase": "Completed", "observedGeneration": 3,
            "conditions": [{"type": "Progressing", "status": "False", "reason": "Completed"}]})
    );
    assert!(reqs[0].body.get("spec").is_none());

    // Policies: namespaced status paths.
    api.clear_requests();
    let accepted = PolicyStatus {
        conditions: vec![Condition {
            type_: "Accepted".into(),
            status: "True".into(),
            reason: "Accepted".into(),
            ..Condition::default()
        }],
    };
    let mut tp = identityd::model::TrafficPolicy::new(
        "shop",
        "web",
        identityd::model::TrafficPolicySpec::default(),
    );
    tp.status = Some(accepted.clone());
    let mut ap = identityd::model::AuthorizationPolicy::new(
        "shop",
        "web",
        identityd::model::AuthorizationPolicySpec::default(),
    );
    ap.status = Some(accepted);
    source
        .write_status(&Object::TrafficPolicy(tp))
        .await
        .unwrap();
    source
        .write_status(&Object::AuthorizationPolicy(ap))
        .await
        .unwrap();
    let reqs = api.requests();
    assert_eq!(
        reqs.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        [
            "/apis/identityd.io/v1alpha1/namespaces/shop/trafficpolicies/web/status",
            "/apis/identityd.io/v1alpha1/namespaces/shop/authorizationpolicies/web/status",
        ]
    );
    for r in &reqs {
        assert_eq!(
            r.body["metadata"],
            serde_json::json!({"name": "web", "namespace": "shop"})
        );
        assert_eq!(r.body["status"]["conditions"][0]["type"], "Accepted");
        assert!(r.query.contains("fieldManager=identityd"));
    }

    // A status for an object the API server does not have: NotFound, naming it.
    api.clear_requests();
    api.not_found("/apis/identityd.io/v1alpha1/keyrotations/gone/status");
    let e = source
        .write_status(&Object::KeyRotation(KeyRotation::new(
            "gone",
            RotationTarget::Ca,
        )))
        .await
        .unwrap_err();
    assert!(matches!(e, SourceError::NotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("KeyRotation gone"), "{e}");

    // Invalid objects never reach the API server.
    api.clear_requests();
    let mut bad = node;
    bad.spec.underlay_addresses.clear();
    let e = source.apply(&Object::IdentitydNode(bad)).await.unwrap_err();
    assert!(e.to_string().contains("spec.underlayAddresses"), "{e}");
    assert!(api.requests().is_empty());
}
