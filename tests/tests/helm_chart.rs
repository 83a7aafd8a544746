//! The Helm chart `charts/identityd`, checked with the real Helm 4 and `kubernetes-validate`:
//! it lints strictly and renders for every `encryption.mode`, every rendered object is accepted
//! by the Kubernetes 1.33 schemas, the daemon config carries the values, invalid values are
//! refused by the values schema, the RBAC is least-privilege and the DaemonSet is unprivileged.
//!
//! Each helm run gets its own `HOME` (a temp dir), so the tests run in parallel.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use identityd_tests::tools;
use serde_json::Value;

const MODES: [&str; 3] = ["wireguard", "ipsec", "disabled"];
const RELEASE: &str = "identityd";
const NAMESPACE: &str = "identityd-system";
/// Kinds `kubernetes-validate` has no schema for; each is checked by a test of its own
/// (`service_monitor_selects_the_metrics_service`), never silently skipped.
const NO_UPSTREAM_SCHEMA: [(&str, &str); 1] = [("monitoring.coreos.com/v1", "ServiceMonitor")];
/// Every optional object switched on.
const ALL_ON: [&str; 6] = [
    "--set",
    "prometheus.serviceMonitor.enabled=true",
    "--set",
    "dashboards.enabled=true",
    "--set",
    "ingress.secretNamespaces={shop,web}",
];

fn chart() -> PathBuf {
    tools::workspace_root().join("charts/identityd")
}

/// Runs helm with a private `HOME` and XDG dirs (helm writes its cache and config there).
fn helm(args: &[&str]) -> Output {
    let home = tempfile::tempdir().expect("temp HOME for helm");
    let h = home.path();
    let helm = tools::helm();
    Command::new(&helm)
        .args(args)
        .env("HOME", h)
        .env("XDG_CACHE_HOME", h.join("cache"))
        .env("XDG_CONFIG_HOME", h.join("config"))
        .env("XDG_DATA_HOME", h.join("data"))
        .env_remove("HELM_NAMESPACE")
        .env_remove("KUBECONFIG")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", helm.display()))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `helm template` of the chart (with `--include-crds`) plus `extra`; panics with helm's output
/// if it fails.
fn render(extra: &[&str]) -> String {
    let chart = chart();
    let mut args = vec![
        "template",
        RELEASE,
        chart.to_str().expect("utf-8 chart path"),
        "--namespace",
        NAMESPACE,
        "--include-crds",
    ];
    args.extend_from_slice(extra);
    let out = helm(&args);
    assert!(
        out.status.success(),
        "helm {args:?} failed ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn render_mode(mode: &str, extra: &[&str]) -> String {
    let set = format!("encryption.mode={mode}");
    let mut args = vec!["--set", set.as_str()];
    args.extend_from_slice(extra);
    render(&args)
}

/// The rendered objects (empty documents dropped).
fn objects(yaml: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml)
        .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}\n{yaml}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn kind_of(o: &Value) -> &str {
    o["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("object without kind: {o}"))
}

fn name_of(o: &Value) -> &str {
    o["metadata"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("object without metadata.name: {o}"))
}

fn all_of<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| kind_of(o) == kind).collect()
}

fn one<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = objs
        .iter()
        .filter(|o| kind_of(o) == kind && name_of(o) == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind}/{name}, found {}",
        found.len()
    );
    found[0]
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a list, got {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("expected a string, got {s}"))
                .to_owned()
        })
        .collect()
}

/// The daemon config (`config.yaml`) of a config ConfigMap, parsed.
fn daemon_config(objs: &[Value], configmap: &str) -> Value {
    let cm = one(objs, "ConfigMap", configmap);
    let yaml = cm["data"]["config.yaml"]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap {configmap} has no data.config.yaml"));
    serde_saphyr::from_str(yaml)
        .unwrap_or_else(|e| panic!("{configmap} config.yaml does not parse: {e}\n{yaml}"))
}

/// Runs `kubernetes-validate -k 1.33.0 --strict` on `yaml` and checks that it passed every
/// object except the kinds in [`NO_UPSTREAM_SCHEMA`], which must be reported as schema-less.
fn validate(yaml: &str, what: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, yaml).expect("write rendered.yaml");
    let kv = tools::kubernetes_validate();
    let out = Command::new(&kv)
        .args(["-k", "1.33.0", "--strict"])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", kv.display()));
    let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && !report.contains("ERROR"),
        "{what}: kubernetes-validate refused the rendered chart ({}):\n{report}",
        out.status
    );
    let objs = objects(yaml);
    let mut expected_passes = 0;
    for o in &objs {
        let api = o["apiVersion"].as_str().unwrap_or_default();
        let kind = kind_of(o);
        if NO_UPSTREAM_SCHEMA.contains(&(api, kind)) {
            let warn = format!("Couldn't find schema for kind {kind} with api version {api}");
            assert!(
                report.contains(&warn),
                "{what}: expected `{warn}` in:\n{report}"
            );
        } else {
            expected_passes += 1;
            let pass = format!("passed for resource {}/{}", kind.to_lowercase(), name_of(o));
            assert!(report.contains(&pass), "{what}: no `{pass}` in:\n{report}");
        }
    }
    let passes = report.matches(" passed for resource ").count();
    assert_eq!(
        passes, expected_passes,
        "{what}: pass lines vs objects:\n{report}"
    );
    let schema_less = report.matches("Couldn't find schema").count();
    let allowed = objs
        .iter()
        .filter(|o| {
            NO_UPSTREAM_SCHEMA.contains(&(o["apiVersion"].as_str().unwrap_or_default(), kind_of(o)))
        })
        .count();
    assert_eq!(
        schema_less, allowed,
        "{what}: an object kind has no schema and is not on the explicit list:\n{report}"
    );
}

#[test]
fn lint_is_strictly_clean_for_every_encryption_mode() {
    let chart = chart();
    for mode in MODES {
        let set = format!("encryption.mode={mode}");
        let out = helm(&[
            "lint",
            "--strict",
            chart.to_str().expect("utf-8 chart path"),
            "--set",
            &set,
        ]);
        let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(
            out.status.success(),
            "helm lint --strict ({mode}) failed:\n{report}"
        );
        assert!(report.contains("0 chart(s) failed"), "{mode}:\n{report}");
        assert!(
            !report.contains("[WARNING]") && !report.contains("[ERROR]"),
            "{mode}: helm lint --strict is not clean:\n{report}"
        );
    }
}

#[test]
fn every_mode_renders_manifests_kubernetes_1_33_accepts() {
    for mode in MODES {
        let defaults = render_mode(mode, &[]);
        validate(&defaults, &format!("{mode}, defaults"));
        let all_on = render_mode(mode, &ALL_ON);
        validate(&all_on, &format!("{mode}, every optional object"));
        let no_pvc = render_mode(
            mode,
            &[
                "--set",
                "ca.persistence.enabled=false",
                "--set",
                "prometheus.enabled=false",
            ],
        );
        validate(&no_pvc, &format!("{mode}, no persistence, no prometheus"));
    }
}

#[test]
fn default_render_has_the_documented_objects() {
    let objs = objects(&render(&[]));
    let mut kinds: Vec<String> = objs
        .iter()
        .filter(|o| kind_of(o) != "CustomResourceDefinition")
        .map(|o| format!("{}/{}", kind_of(o), name_of(o)))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole/identityd-ca",
            "ClusterRole/identityd-node",
            "ClusterRoleBinding/identityd-ca",
            "ClusterRoleBinding/identityd-node",
            "ConfigMap/identityd-ca-config",
            "ConfigMap/identityd-node-config",
            "DaemonSet/identityd-node",
            "Deployment/identityd-ca",
            "PersistentVolumeClaim/identityd-ca",
            "Role/identityd-ca-bundle",
            "RoleBinding/identityd-ca-bundle",
            "Service/identityd-ca",
            "Service/identityd-metrics",
            "ServiceAccount/identityd-ca",
            "ServiceAccount/identityd-node",
            "ValidatingAdmissionPolicy/identityd-node-own-node",
            "ValidatingAdmissionPolicy/identityd-node-own-objects",
            "ValidatingAdmissionPolicyBinding/identityd-node-own-node",
            "ValidatingAdmissionPolicyBinding/identityd-node-own-objects",
        ]
    );
    // No Secret is ever rendered: the CA key is made in the CA pod, node keys on the node.
    assert!(all_of(&objs, "Secret").is_empty());
    for o in &objs {
        let scoped = !matches!(
            kind_of(o),
            "ClusterRole"
                | "ClusterRoleBinding"
                | "CustomResourceDefinition"
                | "ValidatingAdmissionPolicy"
                | "ValidatingAdmissionPolicyBinding"
        );
        if scoped {
            assert_eq!(
                o["metadata"]["namespace"],
                NAMESPACE,
                "{}/{}",
                kind_of(o),
                name_of(o)
            );
        }
    }
}

#[test]
fn config_carries_the_mode_strictness_and_trust_domain() {
    for mode in MODES {
        for strict in [true, false] {
            let strict_set = format!("encryption.strictMode={strict}");
            let objs = objects(&render_mode(
                mode,
                &[
                    "--set",
                    &strict_set,
                    "--set",
                    "identity.trustDomain=prod.example.org",
                    "--set",
                    "identity.svidTTL=30m",
                    "--set",
                    "mtls.defaultMode=strict",
                ],
            ));
            let what = format!("mode={mode} strictMode={strict}");
            let node = daemon_config(&objs, "identityd-node-config");
            assert_eq!(node["role"], "node", "{what}");
            assert_eq!(node["clusterSource"], "kube", "{what}");
            assert!(
                node.get("clusterDir").is_none(),
                "{what}: clusterDir in kube mode"
            );
            assert_eq!(node["encryption"]["mode"], mode, "{what}");
            assert_eq!(node["encryption"]["strictMode"], strict, "{what}");
            assert_eq!(node["encryption"]["nodeEncryption"], false, "{what}");
            assert_eq!(node["trustDomain"], "prod.example.org", "{what}");
            assert_eq!(node["mtls"]["defaultMode"], "strict", "{what}");
            assert_eq!(node["metricsAddress"], "0.0.0.0:9962", "{what}");
            assert_eq!(node["flowEvents"], "drops", "{what}");
            assert_eq!(node["envoy"]["binary"], "/usr/local/bin/envoy", "{what}");
            assert_eq!(node["stateDir"], "/var/lib/identityd", "{what}");
            assert_eq!(node["runDir"], "/run/identityd", "{what}");
            // Name and underlay address come from the downward API, never from the file.
            assert!(node.get("name").is_none() && node.get("underlayAddress").is_none());
            if mode == "wireguard" {
                assert_eq!(node["wireguard"]["interface"], "idd0", "{what}");
                assert_eq!(node["wireguard"]["port"], 51871, "{what}");
            } else {
                assert!(
                    node.get("wireguard").is_none(),
                    "{what}: wireguard: section rendered"
                );
            }
            let ca = &node["ca"];
            assert_eq!(ca["endpoint"], format!("identityd-ca.{NAMESPACE}.svc:8443"));
            assert_eq!(ca["bundleFile"], "/etc/identityd/ca/bundle.pem");
            assert_eq!(ca["auth"], "serviceAccountToken");
            assert_eq!(ca["tokenFile"], "/var/run/secrets/identityd/token");
            assert_eq!(
                ca["nodeServiceAccount"],
                format!("{NAMESPACE}/identityd-node")
            );

            let issuer = daemon_config(&objs, "identityd-ca-config");
            assert_eq!(issuer["role"], "ca", "{what}");
            assert_eq!(issuer["trustDomain"], "prod.example.org", "{what}");
            assert_eq!(issuer["svidTTL"], "30m", "{what}");
            assert_eq!(issuer["listen"], "0.0.0.0:8443", "{what}");
            assert_eq!(issuer["caDir"], "/var/lib/identityd-ca", "{what}");
            assert_eq!(
                issuer["ca"]["nodeServiceAccount"],
                format!("{NAMESPACE}/identityd-node")
            );
        }
    }
    // The defaults are the documented ones.
    let node = daemon_config(&objects(&render(&[])), "identityd-node-config");
    assert_eq!(node["encryption"]["mode"], "wireguard");
    assert_eq!(node["encryption"]["strictMode"], true);
    assert_eq!(node["trustDomain"], "cluster.local");
    assert_eq!(node["mtls"]["defaultMode"], "permissive");
}

#[test]
fn invalid_values_are_refused_naming_the_field() {
    let chart = chart();
    let chart = chart.to_str().expect("utf-8 chart path");
    let bad_mode = ["--set", "encryption.mode=plaintext"];
    for cmd in [
        vec!["template", RELEASE, chart],
        vec!["lint", "--strict", chart],
    ] {
        let mut args = cmd.clone();
        args.extend_from_slice(&bad_mode);
        let out = helm(&args);
        let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(
            !out.status.success(),
            "helm {cmd:?} accepted encryption.mode=plaintext:\n{report}"
        );
        assert!(
            report.contains("/encryption/mode"),
            "field not named:\n{report}"
        );
        for allowed in MODES {
            assert!(
                report.contains(&format!("'{allowed}'")),
                "`{allowed}` not named:\n{report}"
            );
        }
    }
    for (set, field) in [
        ("mtls.defaultMode=sometimes", "/mtls/defaultMode"),
        ("encryption.strictMode=maybe", "/encryption/strictMode"),
        ("identity.trustDomain=Not A Domain", "/identity/trustDomain"),
        (
            "ingress.secretNamespaces[0]=Bad_NS",
            "/ingress/secretNamespaces/0",
        ),
        ("encryption.modus=wireguard", "modus"),
        ("unknownTopLevel=1", "unknownTopLevel"),
    ] {
        let out = helm(&["template", RELEASE, chart, "--set", set]);
        let report = text(&out.stderr);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(
            report.contains(field),
            "--set {set}: `{field}` not named:\n{report}"
        );
    }
    let out = helm(&[
        "template",
        RELEASE,
        chart,
        "--set",
        "prometheus.enabled=false",
        "--set",
        "prometheus.serviceMonitor.enabled=true",
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("prometheus.serviceMonitor.enabled"));
}

/// Every rule of a ClusterRole or Role.
fn rules(role: &Value) -> Vec<&Value> {
    role["rules"]
        .as_array()
        .unwrap_or_else(|| panic!("{} has no rules", name_of(role)))
        .iter()
        .collect()
}

/// `(apiGroup, resource, verb)` triples a role grants, with `resourceNames` when restricted.
fn grants(role: &Value) -> BTreeSet<(String, String, String, Vec<String>)> {
    let mut out = BTreeSet::new();
    for r in rules(role) {
        let names = r.get("resourceNames").map(strings).unwrap_or_default();
        for g in strings(&r["apiGroups"]) {
            for res in strings(&r["resources"]) {
                for v in strings(&r["verbs"]) {
                    out.insert((g.clone(), res.clone(), v, names.clone()));
                }
            }
        }
    }
    out
}

fn can(role: &Value, group: &str, resource: &str, verb: &str) -> bool {
    grants(role)
        .iter()
        .any(|(g, r, v, _)| g == group && r == resource && v == verb)
}

fn triples(list: &[(&str, &[&str], &[&str])]) -> BTreeSet<(String, String, String, Vec<String>)> {
    let mut out = BTreeSet::new();
    for (group, resources, verbs) in list {
        for r in *resources {
            for v in *verbs {
                out.insert((
                    (*group).to_owned(),
                    (*r).to_owned(),
                    (*v).to_owned(),
                    vec![],
                ));
            }
        }
    }
    out
}

#[test]
fn rbac_is_least_privilege() {
    const READ: &[&str] = &["get", "list", "watch"];
    let objs = objects(&render(&ALL_ON));
    let cluster_roles = all_of(&objs, "ClusterRole");
    let roles = all_of(&objs, "Role");
    assert_eq!(cluster_roles.len(), 2);
    // identityd-ca-bundle + one per ingress.secretNamespaces entry.
    assert_eq!(roles.len(), 3);

    for role in cluster_roles.iter().chain(&roles) {
        assert!(
            role.get("aggregationRule").is_none(),
            "{}: aggregation",
            name_of(role)
        );
        for r in rules(role) {
            assert!(
                r.get("nonResourceURLs").is_none(),
                "{}: nonResourceURLs",
                name_of(role)
            );
            for field in ["apiGroups", "resources", "verbs"] {
                for s in strings(&r[field]) {
                    assert!(!s.contains('*'), "{}: `*` in {field}: {r}", name_of(role));
                }
            }
            for v in strings(&r["verbs"]) {
                assert!(
                    !matches!(
                        v.as_str(),
                        "escalate" | "bind" | "impersonate" | "delete" | "deletecollection"
                    ),
                    "{}: verb {v}",
                    name_of(role)
                );
            }
        }
    }
    for role in &cluster_roles {
        for (_, res, _, _) in grants(role) {
            assert_ne!(
                res,
                "secrets",
                "ClusterRole {} grants secrets",
                name_of(role)
            );
        }
    }

    let node = one(&objs, "ClusterRole", "identityd-node");
    let mut want = triples(&[
        ("", &["namespaces", "pods", "services"], READ),
        ("", &["nodes"], READ),
        // Its own Node's startup taint (the admission policy holds it to that).
        ("", &["nodes"], &["patch"]),
        ("networking.k8s.io", &["ingresses", "networkpolicies"], READ),
        (
            "gateway.networking.k8s.io",
            &["gateways", "httproutes", "grpcroutes"],
            READ,
        ),
        (
            "identityd.io",
            &[
                "identitydnodes",
                "keyrotations",
                "trafficpolicies",
                "authorizationpolicies",
            ],
            READ,
        ),
        ("identityd.io", &["identitydnodes"], &["create", "patch"]),
        ("identityd.io", &["identitydnodes/status"], &["patch"]),
        // Its live-state report (write only: no daemon reads another's).
        (
            "identityd.io",
            &["identitydnodereports"],
            &["create", "patch"],
        ),
    ]);
    assert_eq!(grants(node), want, "node ClusterRole");
    assert!(!can(
        node,
        "authentication.k8s.io",
        "tokenreviews",
        "create"
    ));

    let ca = one(&objs, "ClusterRole", "identityd-ca");
    want = triples(&[
        ("authentication.k8s.io", &["tokenreviews"], &["create"]),
        ("", &["namespaces", "pods", "services"], READ),
        ("", &["nodes"], READ),
        ("networking.k8s.io", &["ingresses", "networkpolicies"], READ),
        (
            "gateway.networking.k8s.io",
            &["gateways", "httproutes", "grpcroutes"],
            READ,
        ),
        (
            "identityd.io",
            &[
                "identitydnodes",
                "keyrotations",
                "trafficpolicies",
                "authorizationpolicies",
            ],
            READ,
        ),
        (
            "identityd.io",
            &["keyrotations/status", "trafficpolicies/status"],
            &["patch"],
        ),
        (
            "gateway.networking.k8s.io",
            &["gateways/status", "httproutes/status", "grpcroutes/status"],
            &["patch"],
        ),
        ("events.k8s.io", &["events"], &["create", "patch"]),
    ]);
    assert_eq!(grants(ca), want, "CA ClusterRole");

    // The CA's bundle Role: get/patch only on identityd-ca-bundle; create (which RBAC cannot
    // restrict by name) only in the release namespace.
    let bundle = one(&objs, "Role", "identityd-ca-bundle");
    assert_eq!(bundle["metadata"]["namespace"], NAMESPACE);
    let names = vec!["identityd-ca-bundle".to_owned()];
    let mut want: BTreeSet<_> = ["get", "patch"]
        .iter()
        .map(|v| {
            (
                "".to_owned(),
                "configmaps".to_owned(),
                (*v).to_owned(),
                names.clone(),
            )
        })
        .collect();
    want.insert(("".into(), "configmaps".into(), "create".into(), vec![]));
    assert_eq!(grants(bundle), want, "CA bundle Role");

    // Secrets only in the opt-in namespaces, read-only, bound to the node service account.
    let secret_roles: Vec<&&Value> = roles
        .iter()
        .filter(|r| can(r, "", "secrets", "get"))
        .collect();
    let mut namespaces: Vec<&str> = secret_roles
        .iter()
        .map(|r| r["metadata"]["namespace"].as_str().expect("namespace"))
        .collect();
    namespaces.sort_unstable();
    assert_eq!(namespaces, ["shop", "web"]);
    for r in &secret_roles {
        assert_eq!(grants(r), triples(&[("", &["secrets"], READ)]));
    }
    let default_objs = objects(&render(&[]));
    for role in all_of(&default_objs, "ClusterRole")
        .into_iter()
        .chain(all_of(&default_objs, "Role"))
    {
        assert!(
            !can(role, "", "secrets", "get"),
            "{} reads secrets by default",
            name_of(role)
        );
    }

    // Bindings: each role to its own service account in the release namespace.
    for (kind, name, sa, ns) in [
        (
            "ClusterRoleBinding",
            "identityd-node",
            "identityd-node",
            None,
        ),
        ("ClusterRoleBinding", "identityd-ca", "identityd-ca", None),
        (
            "RoleBinding",
            "identityd-ca-bundle",
            "identityd-ca",
            Some(NAMESPACE),
        ),
    ] {
        let b = one(&objs, kind, name);
        assert_eq!(b["roleRef"]["name"], name);
        assert_eq!(
            b["subjects"].as_array().map(Vec::len),
            Some(1),
            "{kind}/{name}"
        );
        assert_eq!(b["subjects"][0]["kind"], "ServiceAccount");
        assert_eq!(b["subjects"][0]["name"], sa);
        assert_eq!(b["subjects"][0]["namespace"], NAMESPACE);
        if let Some(ns) = ns {
            assert_eq!(b["metadata"]["namespace"], ns);
        }
    }
    // The opt-in Secret Roles are bound to the node daemons (they serve the certificates) and
    // to the CA role (it validates the listeners), nobody else.
    let mut bound: Vec<(String, String)> = all_of(&objs, "RoleBinding")
        .into_iter()
        .filter(|b| b["roleRef"]["name"] == "identityd-node-secrets")
        .map(|b| {
            assert_eq!(b["subjects"].as_array().map(Vec::len), Some(1));
            assert_eq!(b["subjects"][0]["namespace"], NAMESPACE);
            (
                b["metadata"]["namespace"].as_str().unwrap_or("").to_owned(),
                b["subjects"][0]["name"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    bound.sort();
    assert_eq!(
        bound,
        [
            ("shop".to_owned(), "identityd-ca".to_owned()),
            ("shop".to_owned(), "identityd-node".to_owned()),
            ("web".to_owned(), "identityd-ca".to_owned()),
            ("web".to_owned(), "identityd-node".to_owned()),
        ]
    );
}

fn find<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap_or_else(|| panic!("expected a list, got {list}"))
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no entry named {name} in {list}"))
}

#[test]
fn daemonset_runs_unprivileged_with_the_documented_capabilities() {
    for mode in MODES {
        let objs = objects(&render_mode(mode, &[]));
        let ds = one(&objs, "DaemonSet", "identityd-node");
        let pod = &ds["spec"]["template"]["spec"];
        assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
        assert_eq!(pod["hostNetwork"], true);
        assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
        assert_eq!(pod["priorityClassName"], "system-node-critical");
        assert_eq!(pod["serviceAccountName"], "identityd-node");
        assert_eq!(
            pod["tolerations"],
            serde_json::json!([{ "operator": "Exists" }])
        );
        assert!(pod.get("hostPID").is_none() && pod.get("hostIPC").is_none());

        let containers = pod["containers"].as_array().expect("containers");
        assert_eq!(
            containers.len(),
            1,
            "Envoy runs inside the daemon's container"
        );
        assert!(pod.get("initContainers").is_none());
        let c = &containers[0];
        let sc = &c["securityContext"];
        assert_ne!(sc["privileged"], true, "{mode}: privileged");
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
        let mut caps = strings(&sc["capabilities"]["add"]);
        caps.sort();
        assert_eq!(caps, ["BPF", "NET_ADMIN", "NET_RAW", "PERFMON"], "{mode}");

        let env = &c["env"];
        assert_eq!(
            find(env, "IDENTITYD_NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
            "spec.nodeName"
        );
        assert_eq!(
            find(env, "IDENTITYD_UNDERLAY_ADDRESS")["valueFrom"]["fieldRef"]["fieldPath"],
            "status.hostIP"
        );
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(c[probe]["httpGet"]["port"], 9962, "{probe}");
            assert_eq!(c[probe]["httpGet"]["path"], "/metrics", "{probe}");
        }
        let wg_port = c["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["name"] == "wireguard");
        assert_eq!(wg_port, mode == "wireguard", "{mode}: wireguard port");

        let volumes = &pod["volumes"];
        let token = &find(volumes, "ca-token")["projected"]["sources"][0]["serviceAccountToken"];
        assert_eq!(token["audience"], "identityd-ca");
        assert_eq!(token["path"], "token");
        assert_eq!(
            find(volumes, "config")["configMap"]["name"],
            "identityd-node-config"
        );
        assert_eq!(
            find(volumes, "ca-bundle")["configMap"]["name"],
            "identityd-ca-bundle"
        );
        for (volume, path) in [
            ("bpffs", "/sys/fs/bpf"),
            ("run", "/run/identityd"),
            ("state", "/var/lib/identityd"),
            ("lib-modules", "/lib/modules"),
        ] {
            assert_eq!(find(volumes, volume)["hostPath"]["path"], path);
        }
        let mounts = &c["volumeMounts"];
        assert_eq!(find(mounts, "lib-modules")["readOnly"], true);
        assert_eq!(find(mounts, "bpffs")["mountPath"], "/sys/fs/bpf");
        // Bidirectional propagation is only allowed for privileged containers.
        assert_ne!(find(mounts, "bpffs")["mountPropagation"], "Bidirectional");
        assert_eq!(
            find(mounts, "ca-token")["mountPath"],
            "/var/run/secrets/identityd"
        );
        assert_eq!(find(mounts, "ca-bundle")["mountPath"], "/etc/identityd/ca");
        let args = strings(&c["args"]);
        let config_mount = find(mounts, "config")["mountPath"].as_str().expect("path");
        assert_eq!(
            args,
            ["run", "--config", &format!("{config_mount}/config.yaml")]
        );
    }
}

#[test]
fn ca_is_one_recreated_pod_with_its_own_volume() {
    let objs = objects(&render(&[]));
    let dep = one(&objs, "Deployment", "identityd-ca");
    assert_eq!(dep["spec"]["replicas"], 1);
    assert_eq!(dep["spec"]["strategy"]["type"], "Recreate");
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "identityd-ca");
    assert!(pod.get("hostNetwork").is_none());
    let c = &pod["containers"][0];
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert!(c["securityContext"]["capabilities"].get("add").is_none());
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    // A control-plane node by default, overridable.
    assert_eq!(
        pod["nodeSelector"],
        serde_json::json!({"node-role.kubernetes.io/control-plane": ""})
    );
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}])
    );
    let moved = objects(&render(&[
        "--set",
        "ca.nodeSelector=null",
        "--set-json",
        "ca.tolerations=[]",
    ]));
    let moved = &one(&moved, "Deployment", "identityd-ca")["spec"]["template"]["spec"];
    assert!(
        moved.get("nodeSelector").is_none() && moved.get("tolerations").is_none(),
        "{moved}"
    );
    let ca_dir = find(&pod["volumes"], "ca-dir");
    assert_eq!(ca_dir["persistentVolumeClaim"]["claimName"], "identityd-ca");
    let pvc = one(&objs, "PersistentVolumeClaim", "identityd-ca");
    assert_eq!(
        pvc["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    assert_eq!(
        find(&c["volumeMounts"], "ca-dir")["mountPath"],
        daemon_config(&objs, "identityd-ca-config")["caDir"]
    );

    let svc = one(&objs, "Service", "identityd-ca");
    assert_eq!(svc["spec"]["ports"][0]["port"], 8443);
    assert_eq!(
        svc["spec"]["selector"],
        dep["spec"]["selector"]["matchLabels"]
    );

    let objs = objects(&render(&["--set", "ca.persistence.enabled=false"]));
    assert!(all_of(&objs, "PersistentVolumeClaim").is_empty());
    let dep = one(&objs, "Deployment", "identityd-ca");
    let ca_dir = find(&dep["spec"]["template"]["spec"]["volumes"], "ca-dir");
    assert!(ca_dir.get("emptyDir").is_some(), "{ca_dir}");
}

#[test]
fn service_monitor_selects_the_metrics_service() {
    // ServiceMonitor has no upstream schema in kubernetes-validate: its shape is checked here.
    let objs = objects(&render(&ALL_ON));
    let sm = one(&objs, "ServiceMonitor", "identityd");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["metadata"]["namespace"], NAMESPACE);
    let spec = sm["spec"].as_object().expect("spec");
    let keys: BTreeSet<&str> = spec.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["endpoints", "namespaceSelector", "selector"])
    );
    assert_eq!(
        strings(&sm["spec"]["namespaceSelector"]["matchNames"]),
        [NAMESPACE]
    );
    let svc = one(&objs, "Service", "identityd-metrics");
    let svc_labels = svc["metadata"]["labels"].as_object().expect("labels");
    for (k, v) in sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(
            svc_labels.get(k),
            Some(v),
            "Service lacks selected label {k}"
        );
    }
    let endpoints = sm["spec"]["endpoints"].as_array().expect("endpoints");
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0]["port"], svc["spec"]["ports"][0]["name"]);
    assert_eq!(endpoints[0]["path"], "/metrics");
    assert!(
        endpoints[0]["interval"]
            .as_str()
            .is_some_and(|i| i.ends_with('s'))
    );
    assert_eq!(svc["spec"]["ports"][0]["port"], 9962);
    // The metrics Service selects the DaemonSet's pods.
    let ds = one(&objs, "DaemonSet", "identityd-node");
    assert_eq!(
        svc["spec"]["selector"],
        ds["spec"]["selector"]["matchLabels"]
    );
    // The CA's: selects the CA Service (and nothing else) on its metrics port 9963.
    let sm = one(&objs, "ServiceMonitor", "identityd-ca");
    let ca = one(&objs, "Service", "identityd-ca");
    let ca_labels = ca["metadata"]["labels"].as_object().expect("labels");
    for (k, v) in sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(
            ca_labels.get(k),
            Some(v),
            "CA Service lacks selected label {k}"
        );
        assert!(
            svc_labels.get(k).is_none_or(|n| n != v) || k != "app.kubernetes.io/component",
            "the CA ServiceMonitor does not select the node metrics Service"
        );
    }
    let port = ca["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == sm["spec"]["endpoints"][0]["port"])
        .expect("the CA Service has the ServiceMonitor's port");
    assert_eq!(port["port"], 9963);

    let objs = objects(&render(&[]));
    assert!(all_of(&objs, "ServiceMonitor").is_empty(), "off by default");
    let objs = objects(&render(&["--set", "prometheus.enabled=false"]));
    assert!(objs.iter().all(|o| name_of(o) != "identityd-metrics"));
}

#[test]
fn dashboard_configmap_ships_the_chart_dashboard() {
    let objs = objects(&render(&[]));
    assert!(
        objs.iter().all(|o| name_of(o) != "identityd-dashboard"),
        "off by default"
    );
    let objs = objects(&render(&["--set", "dashboards.enabled=true"]));
    let cm = one(&objs, "ConfigMap", "identityd-dashboard");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value = serde_json::from_str(
        cm["data"]["identityd.json"]
            .as_str()
            .expect("data.identityd.json"),
    )
    .expect("dashboard JSON parses");
    let file = chart().join("dashboards/identityd.json");
    let on_disk: Value = serde_json::from_str(
        &std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())),
    )
    .expect("dashboard file parses");
    assert_eq!(shipped, on_disk);
}

#[test]
fn docs_name_every_value() {
    // Every leaf of values.yaml is in the chart README and in values.schema.json.
    let dir = chart();
    let read =
        |p: &Path| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let values: Value = serde_saphyr::from_str(&read(&dir.join("values.yaml"))).expect("values");
    let schema: Value =
        serde_json::from_str(&read(&dir.join("values.schema.json"))).expect("schema");
    let readme = read(&dir.join("README.md"));
    let mut leaves = vec![];
    fn walk(prefix: &str, v: &Value, out: &mut Vec<String>) {
        match v.as_object() {
            // Resources and label maps are one value each.
            Some(map)
                if !map.is_empty()
                    && !prefix.ends_with("resources")
                    && !prefix.ends_with("nodeSelector") =>
            {
                for (k, v) in map {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, v, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    walk("", &values, &mut leaves);
    assert!(leaves.len() > 20, "{leaves:?}");
    for leaf in &leaves {
        assert!(
            readme.contains(&format!("`{leaf}`")),
            "README does not document `{leaf}`"
        );
        let mut node = &schema;
        for part in leaf.split('.') {
            node = &node["properties"][part];
        }
        assert!(!node.is_null(), "values.schema.json has no {leaf}");
    }
    assert!(readme.contains("ipsec") && readme.contains("CONFIG_INET_ESP"));
}

#[test]
fn chart_ships_the_four_crds() {
    let objs = objects(&render(&[]));
    let crds: BTreeSet<&str> = all_of(&objs, "CustomResourceDefinition")
        .into_iter()
        .map(name_of)
        .collect();
    for crd in [
        "identitydnodes.identityd.io",
        "keyrotations.identityd.io",
        "trafficpolicies.identityd.io",
        "authorizationpolicies.identityd.io",
    ] {
        assert!(
            crds.contains(crd),
            "CRD {crd} is not in the rendered chart (charts/identityd/crds/ is generated from \
             `identityd crds`); rendered CRDs: {crds:?}"
        );
    }
}

/// The install notes, as `helm install --dry-run=client` prints them (no cluster needed).
fn notes(mode: &str) -> String {
    let chart = chart();
    let set = format!("encryption.mode={mode}");
    let args = [
        "install",
        RELEASE,
        chart.to_str().expect("utf-8 chart path"),
        "--namespace",
        NAMESPACE,
        "--dry-run=client",
        "--set",
        &set,
    ];
    let out = helm(&args);
    let all = text(&out.stdout);
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{all}{}",
        text(&out.stderr)
    );
    let start = all
        .find("NOTES:")
        .unwrap_or_else(|| panic!("no NOTES in:\n{all}"));
    all[start..].to_owned()
}

#[test]
fn notes_say_what_was_installed_and_how_to_check_and_audit() {
    for mode in MODES {
        let notes = notes(mode);
        for needle in [
            format!("encryption.mode={mode}"),
            format!("kubectl -n {NAMESPACE} get ds,deploy"),
            "kubectl get identitydnodes".to_owned(),
            "identityd audit --kube".to_owned(),
            "identityd audit --manifests rendered.yaml --require-mtls".to_owned(),
            format!("helm template {RELEASE} <chart> -n {NAMESPACE} --include-crds"),
        ] {
            assert!(
                notes.contains(&needle),
                "{mode}: NOTES lack `{needle}`:\n{notes}"
            );
        }
        assert_eq!(
            notes.contains("CONFIG_INET_ESP"),
            mode == "ipsec",
            "{mode}: the ESP caveat belongs to ipsec only:\n{notes}"
        );
    }
}

/// An AdmissionRequest as the API server hands it to admission: `op` on `resource`
/// (`sub`resource) named `name`, by `user` whose token carries `node` (its bound node), if any.
fn admission_request(
    op: &str,
    resource: &str,
    sub: &str,
    name: &str,
    user: &str,
    node: Option<&str>,
) -> Value {
    let mut user_info = serde_json::json!({"username": user, "groups": ["system:serviceaccounts", "system:authenticated"]});
    if let Some(n) = node {
        user_info["extra"] = serde_json::json!({
            "authentication.kubernetes.io/node-name": [n],
            "authentication.kubernetes.io/pod-name": ["identityd-node-x7k2p"],
        });
    }
    serde_json::json!({
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": "identityd.io", "version": "v1alpha1", "kind": "IdentitydNode"},
        "resource": {"group": "identityd.io", "version": "v1alpha1", "resource": resource},
        "subResource": sub,
        "name": name,
        "operation": op,
        "userInfo": user_info,
    })
}

#[test]
fn a_node_service_account_writes_only_its_own_nodes_objects() {
    let node_sa = format!("system:serviceaccount:{NAMESPACE}:identityd-node");
    let ca_sa = format!("system:serviceaccount:{NAMESPACE}:identityd-ca");
    // Without the policy, RBAC alone lets any node's ServiceAccount write every IdentitydNode
    // (one ClusterRole for all nodes, no resourceNames): n1 could publish n2's object.
    let objs = objects(&render(&["--set", "admission.nodeObjectsPolicy=false"]));
    assert!(all_of(&objs, "ValidatingAdmissionPolicy").is_empty());
    let node = one(&objs, "ClusterRole", "identityd-node");
    assert!(can(node, "identityd.io", "identitydnodes", "patch"));
    assert!(
        grants(node)
            .iter()
            .all(|(_, r, _, names)| r != "identitydnodes" || names.is_empty()),
        "RBAC cannot name each node's own object"
    );

    let objs = objects(&render(&[]));
    let policy = enforced_policy(&objs, "identityd-node-own-objects");

    // (operation, resource, subresource, name, user, bound node, allowed?, what)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        Option<&'a str>,
        bool,
        &'a str,
    );
    let cases: &[Case<'_>] = &[
        (
            "UPDATE",
            "identitydnodes",
            "",
            "n1",
            &node_sa,
            Some("n1"),
            true,
            "n1 its own object",
        ),
        (
            "CREATE",
            "identitydnodes",
            "",
            "n1",
            &node_sa,
            Some("n1"),
            true,
            "n1 creates its own",
        ),
        (
            "UPDATE",
            "identitydnodes",
            "status",
            "n1",
            &node_sa,
            Some("n1"),
            true,
            "n1 its own status",
        ),
        (
            "UPDATE",
            "identitydnodereports",
            "",
            "n1",
            &node_sa,
            Some("n1"),
            true,
            "n1 its own report",
        ),
        (
            "UPDATE",
            "identitydnodes",
            "",
            "n2",
            &node_sa,
            Some("n1"),
            false,
            "n1 writes n2's object",
        ),
        (
            "CREATE",
            "identitydnodes",
            "",
            "a-rogue",
            &node_sa,
            Some("n1"),
            false,
            "n1 creates another node",
        ),
        (
            "DELETE",
            "identitydnodes",
            "",
            "n2",
            &node_sa,
            Some("n1"),
            false,
            "n1 deletes n2's object",
        ),
        (
            "UPDATE",
            "identitydnodes",
            "status",
            "n2",
            &node_sa,
            Some("n1"),
            false,
            "n1 writes n2's status",
        ),
        (
            "UPDATE",
            "identitydnodereports",
            "",
            "n2",
            &node_sa,
            Some("n1"),
            false,
            "n1 writes n2's report",
        ),
        (
            "UPDATE",
            "identitydnodes",
            "",
            "n1",
            &node_sa,
            None,
            false,
            "a token bound to no node",
        ),
        // Not the node role: the policy does not judge it (RBAC does).
        (
            "UPDATE",
            "identitydnodes",
            "status",
            "n2",
            &ca_sa,
            None,
            true,
            "the CA role",
        ),
        (
            "UPDATE",
            "keyrotations",
            "",
            "r1",
            &node_sa,
            Some("n1"),
            true,
            "a kind the policy does not cover",
        ),
    ];
    let requests: Vec<Value> = cases
        .iter()
        .map(|(op, res, sub, name, user, node, _, _)| {
            admission_request(op, res, sub, name, user, *node)
        })
        .collect();
    let verdicts = evaluate_policy(policy, &requests);
    assert_eq!(verdicts.len(), cases.len());
    for (c, v) in cases.iter().zip(&verdicts) {
        assert_eq!(v["allowed"], c.6, "{}: {v}", c.7);
    }
    // The refusals are the policy's judgement, not a request it did not look at.
    for (c, v) in cases.iter().zip(&verdicts) {
        if !c.6 {
            assert_eq!(v["matched"], true, "{}: {v}", c.7);
        }
    }
}

/// The ValidatingAdmissionPolicy `name`, after checking that it fails closed and that its
/// binding of the same name enforces it (`Deny`).
fn enforced_policy<'a>(objs: &'a [Value], name: &str) -> &'a Value {
    let policy = one(objs, "ValidatingAdmissionPolicy", name);
    assert_eq!(policy["spec"]["failurePolicy"], "Fail", "{name}");
    let binding = one(objs, "ValidatingAdmissionPolicyBinding", name);
    assert_eq!(binding["spec"]["policyName"], name);
    assert_eq!(
        strings(&binding["spec"]["validationActions"]),
        ["Deny"],
        "{name}"
    );
    policy
}

/// The verdicts of `policy` on `requests`, by an independent CEL implementation (cel-python,
/// `tests/tests/vap_eval.py`), following the API server's admission rules.
fn evaluate_policy(policy: &Value, requests: &[Value]) -> Vec<Value> {
    let input = serde_json::json!({"policy": policy, "requests": requests});
    let mut child = Command::new(tools::python())
        .arg(tools::workspace_root().join("tests/tests/vap_eval.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python (.tools/venv, with cel-python)");
    std::io::Write::write_all(
        child.stdin.as_mut().expect("stdin"),
        input.to_string().as_bytes(),
    )
    .expect("writing to vap_eval.py");
    let out = child.wait_with_output().expect("vap_eval.py");
    assert!(
        out.status.success(),
        "vap_eval.py (cel-python) failed:\n{}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("verdicts")
}

#[test]
fn a_node_service_account_only_takes_the_startup_taint_off_its_own_node() {
    let node_sa = format!("system:serviceaccount:{NAMESPACE}:identityd-node");
    // RBAC alone: one ClusterRole lets every node's ServiceAccount patch every Node.
    let objs = objects(&render(&["--set", "admission.nodeObjectsPolicy=false"]));
    assert!(can(
        one(&objs, "ClusterRole", "identityd-node"),
        "",
        "nodes",
        "patch"
    ));
    // No startup taint: neither the grant nor the policy.
    let objs = objects(&render(&["--set", "node.startupTaint="]));
    assert!(!can(
        one(&objs, "ClusterRole", "identityd-node"),
        "",
        "nodes",
        "patch"
    ));
    assert!(
        all_of(&objs, "ValidatingAdmissionPolicy")
            .iter()
            .all(|p| name_of(p) != "identityd-node-own-node")
    );
    let cfg = daemon_config(&objs, "identityd-node-config");
    assert_eq!(cfg["startupTaint"], "");

    let objs = objects(&render(&[]));
    assert_eq!(
        daemon_config(&objs, "identityd-node-config")["startupTaint"],
        "identityd.io/agent-not-ready"
    );
    let policy = enforced_policy(&objs, "identityd-node-own-node");
    let taint = |key: &str| serde_json::json!({"key": key, "effect": "NoSchedule"});
    let node = |taints: Vec<Value>, labels: Value, unschedulable: bool| {
        let mut n = serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "labels": labels},
            "spec": {"podCIDR": "10.244.1.0/24", "taints": taints},
        });
        if unschedulable {
            n["spec"]["unschedulable"] = true.into();
        }
        n
    };
    let labels = serde_json::json!({"kubernetes.io/hostname": "n1"});
    let old = node(
        vec![taint("identityd.io/agent-not-ready"), taint("gpu")],
        labels.clone(),
        false,
    );
    let update = |name: &str, bound: Option<&str>, new: Value| {
        let mut r = admission_request("UPDATE", "nodes", "", name, &node_sa, bound);
        r["resource"]["group"] = "".into();
        r["resource"]["version"] = "v1".into();
        r["kind"] = serde_json::json!({"group": "", "version": "v1", "kind": "Node"});
        r["object"] = new;
        r["oldObject"] = old.clone();
        r
    };
    let cases: Vec<(Value, bool, &str)> = vec![
        (
            update(
                "n1",
                Some("n1"),
                node(vec![taint("gpu")], labels.clone(), false),
            ),
            true,
            "n1 takes the startup taint off its own Node",
        ),
        (
            update(
                "n2",
                Some("n1"),
                node(vec![taint("gpu")], labels.clone(), false),
            ),
            false,
            "n1 changes n2's Node",
        ),
        (
            update("n1", Some("n1"), node(vec![], labels.clone(), false)),
            false,
            "n1 removes another taint too",
        ),
        (
            update(
                "n1",
                Some("n1"),
                node(
                    vec![taint("gpu")],
                    serde_json::json!({"kubernetes.io/hostname": "n1", "node-role.kubernetes.io/control-plane": ""}),
                    false,
                ),
            ),
            false,
            "n1 adds a label to its Node",
        ),
        (
            update(
                "n1",
                Some("n1"),
                node(vec![taint("gpu")], labels.clone(), true),
            ),
            false,
            "n1 cordons its Node",
        ),
        (
            update("n1", None, node(vec![taint("gpu")], labels.clone(), false)),
            false,
            "a token bound to no node",
        ),
    ];
    let requests: Vec<Value> = cases.iter().map(|c| c.0.clone()).collect();
    let verdicts = evaluate_policy(policy, &requests);
    for (c, v) in cases.iter().zip(&verdicts) {
        assert_eq!(v["allowed"], c.1, "{}: {v}", c.2);
        assert_eq!(v["matched"], true, "{}: {v}", c.2);
    }
}
