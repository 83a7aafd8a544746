//! FileSource: loading, broken documents and files, change detection, apply.

use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::model::{IdentitydNode, IdentitydNodeSpec, MtlsMode, Namespace, WireguardSpec};

const GOOD: &str = r"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  annotations: {identityd.io/mtls: strict}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {nodeName: n1, serviceAccountName: web}
status: {podIP: 10.244.1.10}
";

fn write(dir: &Path, name: &str, text: &str) {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(p, text).unwrap();
}

fn open(dir: &Path) -> FileSource {
    FileSource::open(dir, FileSourceOptions::default()).unwrap()
}

fn problems(s: &ClusterState) -> String {
    s.problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn loads_a_directory_recursively_and_skips_hidden_and_other_files() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "a.yaml", GOOD);
    write(
        d.path(),
        "sub/svc.yml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {selector: {app: web}, ports: [{port: 80}]}\n",
    );
    write(
        d.path(),
        ".hidden.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: hidden}\n",
    );
    write(d.path(), "notes.txt", "not yaml: [");
    let src = open(d.path());
    let s = src.snapshot();
    assert_eq!(s.version(), 1);
    assert_eq!(s.len(), 3, "{s:#?}");
    assert!(s.problems.is_empty(), "{}", problems(&s));
    assert_eq!(
        s.service_endpoints("shop", "web").unwrap().endpoints.len(),
        1
    );
    assert_eq!(
        s.namespace_mtls("shop", MtlsMode::Disabled),
        MtlsMode::Strict
    );
    let origin = &s.origins[&crate::model::Object::from(Namespace::new("shop", None)).key()];
    assert_eq!(origin.document, Some(0));
    assert_eq!(origin.line, Some(2));
}

#[test]
fn missing_directory_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let e = FileSource::open(d.path().join("nope"), FileSourceOptions::default()).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}

#[test]
fn broken_document_is_reported_and_the_rest_kept() {
    let d = tempfile::tempdir().unwrap();
    let text = format!(
        "{GOOD}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: web, namespace: shop}}\n\
         spec:\n  parentRefs: [{{kind: Service, group: '', name: web}}]\n  rules:\n    - backendRefs: [{{name: a, port: 80, weight: 0}}]\n\
         ---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: x}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p2, namespace: shop}}\nspec: {{nodeName: 5}}\nstatus: {{podIP: [1]}}\n"
    );
    write(d.path(), "mixed.yaml", &text);
    let s = open(d.path()).snapshot();
    assert_eq!(s.namespaces.len(), 1);
    assert_eq!(s.pods.len(), 1);
    assert!(s.http_routes.is_empty());
    let p = problems(&s);
    assert_eq!(s.problems.len(), 3, "{p}");
    let route = &s.problems[0];
    assert_eq!(route.origin.document, Some(2));
    assert_eq!(route.kind.as_deref(), Some("HTTPRoute"));
    assert_eq!(route.name.as_deref(), Some("shop/web"));
    assert_eq!(route.field.as_deref(), Some("spec.rules[0].backendRefs"));
    assert!(route.reason.contains("weights sum to 0"), "{p}");
    assert!(p.contains("mixed.yaml document 3"), "{p}");
    assert!(p.contains("ConfigMap"), "{p}");
    assert_eq!(s.problems[2].origin.document, Some(4), "{p}");
    assert_eq!(s.problems[2].kind.as_deref(), Some("Pod"), "{p}");
    assert_eq!(s.problems[2].name.as_deref(), Some("shop/p2"), "{p}");
    assert_eq!(s.problems[2].field.as_deref(), Some("status.podIP"), "{p}");
    let last_line = text.lines().count();
    assert_eq!(
        s.problems[2].origin.line,
        Some(last_line),
        "absolute line in the file: {p}"
    );
    assert!(p.contains(&format!("(line {last_line}, column")), "{p}");
}

#[test]
fn syntax_error_keeps_the_last_good_objects_of_that_file() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "a.yaml", GOOD);
    write(
        d.path(),
        "b.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n",
    );
    let src = open(d.path());
    assert_eq!(src.snapshot().len(), 3);

    write(
        d.path(),
        "a.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: [unclosed\n",
    );
    let s = src.poll().unwrap().expect("a problem is a change");
    assert_eq!(s.version(), 2);
    assert_eq!(s.len(), 3, "last good objects of a.yaml are kept");
    assert!(s.namespaces.contains_key("shop"));
    let p = problems(&s);
    assert!(
        p.contains("a.yaml document 0") && p.contains("YAML syntax error"),
        "{p}"
    );
    assert!(p.contains("keeping the 2 object(s)"), "{p}");

    // A brand-new broken file contributes nothing.
    write(d.path(), "c.yaml", "kind: [\n");
    let s = src.poll().unwrap().unwrap();
    assert_eq!(s.len(), 3);
    assert!(
        problems(&s).contains("nothing loaded from this file"),
        "{}",
        problems(&s)
    );

    // Fixing the file replaces the kept objects; deleting one removes its objects.
    write(
        d.path(),
        "a.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: fixed}\n",
    );
    std::fs::remove_file(d.path().join("c.yaml")).unwrap();
    std::fs::remove_file(d.path().join("b.yaml")).unwrap();
    let s = src.poll().unwrap().unwrap();
    assert_eq!(s.namespaces.keys().collect::<Vec<_>>(), vec!["fixed"]);
    assert!(s.problems.is_empty(), "{}", problems(&s));
}

#[test]
fn change_produces_a_new_version_and_an_unchanged_poll_does_not() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "a.yaml", GOOD);
    let src = open(d.path());
    let mut rx = src.subscribe();
    assert!(src.poll().unwrap().is_none());
    // Same objects, different bytes (a comment): still no new version.
    write(d.path(), "a.yaml", &format!("# a comment\n{GOOD}"));
    assert!(src.poll().unwrap().is_none());
    assert!(!rx.has_changed().unwrap());
    assert_eq!(src.snapshot().version(), 1);

    write(
        d.path(),
        "b.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: more}\n",
    );
    let s = src.poll().unwrap().unwrap();
    assert_eq!(s.version(), 2);
    assert!(rx.has_changed().unwrap());
    assert_eq!(rx.borrow_and_update().version(), 2);
    assert!(src.poll().unwrap().is_none());
    assert!(!rx.has_changed().unwrap());
}

#[tokio::test]
async fn run_publishes_changes_on_the_watch_channel() {
    let d = tempfile::tempdir().unwrap();
    let src = Arc::new(
        FileSource::open(
            d.path(),
            FileSourceOptions {
                poll_interval: Duration::from_millis(20),
            },
        )
        .unwrap(),
    );
    let mut rx = src.subscribe();
    let task = src.spawn();
    write(d.path(), "a.yaml", GOOD);
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("a snapshot within 5s")
        .unwrap();
    let s = rx.borrow_and_update().clone();
    assert_eq!(s.version(), 2);
    assert_eq!(s.len(), 2);
    task.abort();
}

fn wg_node(name: &str, port: i64) -> IdentitydNode {
    IdentitydNode::new(
        name,
        IdentitydNodeSpec {
            pod_cidrs: vec!["10.244.1.0/24".into()],
            underlay_addresses: vec!["10.99.0.11".into()],
            wireguard: Some(WireguardSpec {
                public_key: "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=".into(),
                port,
                next_public_key: None,
            }),
            ipsec: None,
            proof: None,
        },
    )
}

#[test]
fn apply_round_trips_and_other_sources_see_it() {
    let d = tempfile::tempdir().unwrap();
    let src = open(d.path());
    let other = open(d.path());
    let node = wg_node("n1", 51871);
    let path = src.apply(&node.clone().into()).unwrap();
    assert_eq!(path, d.path().join("identitydnode-n1.yaml"));
    let s = src.snapshot();
    assert_eq!(s.version(), 2);
    // The store stamps a new object's creation time, like an API server.
    let created = s.node("n1").unwrap().metadata.creation_timestamp.clone();
    assert!(
        created
            .as_deref()
            .and_then(identityd_certs::inspect::parse_rfc3339)
            .is_some(),
        "{created:?}"
    );
    let mut node = node;
    node.metadata.creation_timestamp.clone_from(&created);
    assert_eq!(s.node("n1"), Some(&node));
    assert_eq!(
        std::fs::read_dir(d.path()).unwrap().count(),
        1,
        "no temp files left behind"
    );
    // A second daemon watching the same directory sees the same object.
    let seen = other.poll().unwrap().unwrap();
    assert_eq!(seen.node("n1"), Some(&node));

    // Re-applying updates in place, keeping the creation time.
    let mut updated = wg_node("n1", 51872);
    assert_eq!(src.apply(&updated.clone().into()).unwrap(), path);
    updated.metadata.creation_timestamp = created;
    assert_eq!(src.snapshot().node("n1"), Some(&updated));
    assert_eq!(src.snapshot().version(), 3);
    // Applying the same object again changes nothing.
    src.apply(&updated.into()).unwrap();
    assert_eq!(src.snapshot().version(), 3);
}

#[test]
fn apply_refuses_invalid_objects_and_shared_files() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "a.yaml", GOOD);
    let src = open(d.path());
    let e = src.apply(&wg_node("n1", 0).into()).unwrap_err();
    assert!(e.to_string().contains("spec.wireguard.port=0"), "{e}");
    let e = src
        .apply(&Namespace::new("shop", Some(MtlsMode::Permissive)).into())
        .unwrap_err();
    assert!(matches!(e, SourceError::SharedFile { .. }), "{e}");
    // A namespace in its own file is rewritten in place.
    write(
        d.path(),
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: solo}\n",
    );
    src.poll().unwrap();
    let p = src
        .apply(&Namespace::new("solo", Some(MtlsMode::Disabled)).into())
        .unwrap();
    assert_eq!(p, d.path().join("ns.yaml"));
    assert_eq!(
        src.snapshot().namespace_mtls("solo", MtlsMode::Strict),
        MtlsMode::Disabled
    );
}

#[test]
fn duplicates_across_files_first_path_wins() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "a.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {from: a}}\n",
    );
    write(
        d.path(),
        "b.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {from: b}}\n",
    );
    let s = open(d.path()).snapshot();
    assert_eq!(s.namespaces["x"].metadata.labels["from"], "a");
    let p = problems(&s);
    assert!(
        p.contains("b.yaml document 0") && p.contains("duplicate"),
        "{p}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_text_never_panics_the_loader(s in "\\PC{0,200}") {
        let _ = crate::source::decode::decode_all(&s);
    }

    #[test]
    fn random_bytes_never_panic_the_file_source(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x.yaml"), &bytes).unwrap();
        let src = FileSource::open(d.path(), FileSourceOptions::default()).unwrap();
        prop_assert_eq!(src.snapshot().version(), 1);
        prop_assert!(src.poll().unwrap().is_none());
    }

    #[test]
    fn yamlish_text_never_panics_the_loader(
        lines in proptest::collection::vec(
            prop_oneof![
                Just("---".to_owned()),
                Just("...".to_owned()),
                Just("apiVersion: v1".to_owned()),
                Just("apiVersion: identityd.io/v1alpha1".to_owned()),
                Just("apiVersion: gateway.networking.k8s.io/v1".to_owned()),
                Just("kind: Pod".to_owned()),
                Just("kind: HTTPRoute".to_owned()),
                Just("kind: TrafficPolicy".to_owned()),
                Just("kind: IdentitydNode".to_owned()),
                Just("metadata: {name: a}".to_owned()),
                Just("spec:".to_owned()),
                Just("  rules: [{backendRefs: [{name: a, port: 80, weight: 0}]}]".to_owned()),
                Just("  retries: {attempts: -1}".to_owned()),
                Just("  podCIDRs: [10.0.0.0/99]".to_owned()),
                Just("&a [*a]".to_owned()),
                "[ -~]{0,30}",
            ],
            0..20,
        )
    ) {
        let text = lines.join("\n");
        for (_, r) in crate::source::decode::decode_all(&text) {
            if let Ok(Some(o)) = r {
                prop_assert!(o.validate().is_ok());
            }
        }
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x.yaml"), &text).unwrap();
        let src = FileSource::open(d.path(), FileSourceOptions::default()).unwrap();
        let _ = src.snapshot();
    }
}

#[test]
fn rejected_namespace_fails_closed_to_strict() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: typo\n  annotations: {identityd.io/mtls: strcit}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata:\n  name: listy\n  annotations: {identityd.io/mtls: [strict]}\n",
    );
    let s = open(d.path()).snapshot();
    assert!(s.namespaces.is_empty());
    assert_eq!(s.problems.len(), 2, "{}", problems(&s));
    assert_eq!(
        s.problems[1].name.as_deref(),
        Some("listy"),
        "schema errors keep the name"
    );
    for ns in ["typo", "listy"] {
        assert_eq!(
            s.namespace_mtls(ns, MtlsMode::Disabled),
            MtlsMode::Strict,
            "{ns}"
        );
    }
    assert_eq!(
        s.namespace_mtls("absent", MtlsMode::Disabled),
        MtlsMode::Disabled
    );
}
