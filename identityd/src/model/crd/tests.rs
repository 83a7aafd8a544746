use serde_json::Value;

use super::*;
use crate::source::{decode_document, split_documents};

/// The CRDs as JSON, by kind.
fn crd_json(kind: &str) -> Value {
    let crd = crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"));
    serde_json::to_value(crd).unwrap()
}

fn schema(kind: &str) -> Value {
    crd_json(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// The schema at a dotted path of property names (`spec.retries.attempts`); `[]` steps into
/// array items.
fn at<'a>(schema: &'a Value, path: &str) -> &'a Value {
    let mut s = schema;
    for part in path.split('.') {
        s = if part == "[]" {
            &s["items"]
        } else {
            &s["properties"][part]
        };
        assert!(!s.is_null(), "no schema at {path} (stuck at {part})");
    }
    s
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[test]
fn chart_crds_file_is_the_generated_output() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(CHART_CRDS_FILE);
    let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; generate it with `cargo run -p identityd -- crds > {CHART_CRDS_FILE}`",
            path.display()
        )
    });
    let generated = crds_yaml().unwrap();
    assert!(
        on_disk == generated,
        "{CHART_CRDS_FILE} is out of date with the Rust CRD types; regenerate it with\n  \
         cargo run -p identityd -- crds > {CHART_CRDS_FILE}"
    );
}

#[test]
fn names_scopes_versions_and_status_subresources() {
    for (kind, plural, scope, short) in [
        ("IdentitydNode", "identitydnodes", "Cluster", "idn"),
        ("KeyRotation", "keyrotations", "Cluster", "kr"),
        ("TrafficPolicy", "trafficpolicies", "Namespaced", "tp"),
        (
            "AuthorizationPolicy",
            "authorizationpolicies",
            "Namespaced",
            "authzpol",
        ),
    ] {
        let c = crd_json(kind);
        assert_eq!(c["metadata"]["name"], format!("{plural}.identityd.io"));
        assert_eq!(c["spec"]["group"], "identityd.io");
        assert_eq!(c["spec"]["scope"], scope, "{kind}");
        assert!(
            strings(&c["spec"]["names"]["shortNames"]).contains(&short),
            "{kind}"
        );
        let v = &c["spec"]["versions"][0];
        assert_eq!(v["name"], "v1alpha1");
        assert_eq!(v["served"], true);
        assert_eq!(v["storage"], true);
        assert_eq!(v["subresources"]["status"], serde_json::json!({}), "{kind}");
        assert!(
            !v["additionalPrinterColumns"].as_array().unwrap().is_empty(),
            "{kind} has printer columns"
        );
        assert!(strings(&v["schema"]["openAPIV3Schema"]["required"]).contains(&"spec"));
    }
    let kr = crd_json("KeyRotation");
    let cols: Vec<&str> = kr["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["jsonPath"].as_str().unwrap())
        .collect();
    assert!(cols.contains(&".spec.target") && cols.contains(&".status.phase"));
}

#[test]
fn schemas_carry_enums_minimums_and_required_fields() {
    let kr = schema("KeyRotation");
    assert_eq!(
        strings(&at(&kr, "spec.target")["enum"]),
        ["wireguard", "ipsec", "ca"]
    );
    assert!(strings(&at(&kr, "spec")["required"]).contains(&"target"));
    assert_eq!(
        strings(&at(&kr, "status.phase")["enum"]),
        ["Pending", "InProgress", "Completed", "Failed"]
    );
    assert_eq!(
        strings(&at(&kr, "status.conditions.[].status")["enum"]),
        ["True", "False", "Unknown"]
    );

    let node = schema("IdentitydNode");
    let port = at(&node, "spec.wireguard.port");
    assert_eq!(port["minimum"].as_f64(), Some(1.0));
    assert_eq!(port["maximum"].as_f64(), Some(65535.0));
    assert!(strings(&at(&node, "spec")["required"]).contains(&"underlayAddresses"));
    assert_eq!(at(&node, "spec.underlayAddresses")["minItems"], 1);
    assert!(strings(&at(&node, "spec.wireguard")["required"]).contains(&"publicKey"));

    let tp = schema("TrafficPolicy");
    let attempts = at(&tp, "spec.retries.attempts");
    assert_eq!(attempts["minimum"].as_f64(), Some(0.0));
    assert_eq!(attempts["maximum"].as_f64(), Some(100.0));
    let pct = at(&tp, "spec.outlierDetection.maxEjectionPercent");
    assert_eq!(
        (pct["minimum"].as_f64(), pct["maximum"].as_f64()),
        (Some(0.0), Some(100.0))
    );
    assert_eq!(
        at(&tp, "spec.localRateLimit.tokens")["minimum"].as_f64(),
        Some(1.0)
    );
    assert_eq!(
        at(&tp, "spec.outlierDetection.consecutive5xx")["minimum"].as_f64(),
        Some(1.0)
    );
    assert!(strings(&at(&tp, "spec.retries.retryOn.[]")["enum"]).contains(&"connect-failure"));
    assert_eq!(
        strings(&at(&tp, "spec.targetRef.kind")["enum"]),
        ["Service", "HTTPRoute", "GRPCRoute", "Gateway"]
    );
    assert!(strings(&at(&tp, "spec")["required"]).contains(&"targetRef"));
    assert!(strings(&at(&tp, "spec.targetRef")["required"]).contains(&"name"));

    let ap = schema("AuthorizationPolicy");
    assert_eq!(
        strings(&at(&ap, "spec.targetRef.kind")["enum"]),
        ["Service"]
    );
    assert!(strings(&at(&ap, "spec.allow.[].to.methods.[]")["enum"]).contains(&"GET"));
}

// ---------------------------------------------------------------------------------------------
// A structural check of objects against the generated schemas (the subset of OpenAPI the API
// server applies that matters here: known fields, types, enums, bounds, required, patterns).

fn check(schema: &Value, v: &Value, path: &str, errs: &mut Vec<String>) {
    if v.is_null() {
        if schema["nullable"] != true {
            errs.push(format!("{path}: null not allowed"));
        }
        return;
    }
    let ty = schema["type"].as_str();
    let ok = match (ty, v) {
        (Some("object"), Value::Object(_))
        | (Some("array"), Value::Array(_))
        | (Some("string"), Value::String(_))
        | (Some("boolean"), Value::Bool(_))
        | (None, _) => true,
        (Some("integer"), Value::Number(n)) => n.is_i64() || n.is_u64(),
        (Some("number"), Value::Number(_)) => true,
        _ => false,
    };
    if !ok {
        errs.push(format!("{path}: {v} is not of type {ty:?}"));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        errs.push(format!("{path}: {v} not in enum {allowed:?}"));
    }
    if let Some(n) = v.as_f64() {
        if schema["minimum"].as_f64().is_some_and(|m| n < m) {
            errs.push(format!("{path}: {n} below minimum"));
        }
        if schema["maximum"].as_f64().is_some_and(|m| n > m) {
            errs.push(format!("{path}: {n} above maximum"));
        }
    }
    if let (Some(s), Some(p)) = (v.as_str(), schema["pattern"].as_str())
        && !regex::Regex::new(p).unwrap().is_match(s)
    {
        errs.push(format!("{path}: {s:?} does not match {p}"));
    }
    match v {
        Value::Object(map) => {
            for r in schema["required"].as_array().into_iter().flatten() {
                if !map.contains_key(r.as_str().unwrap()) {
                    errs.push(format!("{path}.{}: required", r.as_str().unwrap()));
                }
            }
            let props = schema["properties"].as_object();
            let extra = &schema["additionalProperties"];
            for (k, child) in map {
                let p = format!("{path}.{k}");
                match props.and_then(|ps| ps.get(k)) {
                    Some(s) => check(s, child, &p, errs),
                    None if extra.is_object() => check(extra, child, &p, errs),
                    None if schema["x-kubernetes-preserve-unknown-fields"] == true => {}
                    None => errs.push(format!("{p}: unknown field")),
                }
            }
        }
        Value::Array(items) => {
            if schema["minItems"]
                .as_u64()
                .is_some_and(|m| (items.len() as u64) < m)
            {
                errs.push(format!("{path}: fewer than minItems"));
            }
            for (i, it) in items.iter().enumerate() {
                check(&schema["items"], it, &format!("{path}[{i}]"), errs);
            }
        }
        _ => {}
    }
}

/// Structural errors of one YAML object against its CRD (metadata is left to the API server).
fn structural_errors(yaml: &str) -> Vec<String> {
    let mut v: Value = serde_saphyr::from_str(yaml).unwrap();
    let kind = v["kind"].as_str().unwrap().to_owned();
    // apiVersion, kind and metadata are the API server's own business.
    for k in ["apiVersion", "kind", "metadata"] {
        v.as_object_mut().unwrap().remove(k);
    }
    let s = schema(&kind);
    let mut errs = Vec::new();
    check(&s, &v, "", &mut errs);
    errs
}

const EXAMPLES: &[&str] = &[
    r"
apiVersion: identityd.io/v1alpha1
kind: IdentitydNode
metadata: {name: n1, labels: {zone: a}}
spec:
  podCIDRs: [10.244.1.0/24]
  underlayAddresses: [10.99.0.11]
  wireguard: {publicKey: hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=, port: 51871}
  ipsec: {keyEpoch: 3}
status:
  observedGeneration: 2
  conditions: [{type: Ready, status: 'True', reason: DatapathUp}]
",
    r"
apiVersion: identityd.io/v1alpha1
kind: KeyRotation
metadata: {name: rotate-wg}
spec: {target: wireguard, nodeSelector: {zone: a}, overlapWindow: 30s}
status:
  phase: InProgress
  conditions: [{type: Progressing, status: 'True', lastTransitionTime: '2026-11-26T12:00:00Z'}]
",
    r"
apiVersion: identityd.io/v1alpha1
kind: TrafficPolicy
metadata: {name: web-resilience, namespace: shop}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: web}
  retries:
    attempts: 3
    perTryTimeout: 500ms
    retryOn: [5xx, connect-failure]
    backoff: {baseInterval: 25ms, maxInterval: 250ms}
  timeout: 2s
  circuitBreaker: {maxConnections: 100, maxPendingRequests: 10, maxRequests: 100, maxRetries: 3}
  outlierDetection: {consecutive5xx: 5, baseEjectionTime: 30s, maxEjectionPercent: 50, interval: 1s}
  localRateLimit: {tokens: 100, fillInterval: 1s}
status:
  conditions: [{type: Accepted, status: 'True'}]
",
    r"
apiVersion: identityd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-authz, namespace: shop}
spec:
  targetRef: {kind: Service, name: web}
  allow:
    - from:
        spiffeIds: [spiffe://cluster.local/ns/shop/sa/frontend]
        namespaces: [shop]
        serviceAccounts: [shop/frontend, checkout]
      to: {paths: [/api/*, /healthz], methods: [GET, POST]}
  deny:
    - to: {paths: [/admin/*]}
",
];

#[test]
fn examples_the_filesource_accepts_validate_against_the_crds() {
    let lab = include_str!("../testdata/lab-cluster.yaml");
    let mut docs: Vec<String> = EXAMPLES.iter().map(|s| (*s).to_owned()).collect();
    docs.extend(
        split_documents(lab)
            .into_iter()
            .filter(|d| d.text.contains("identityd.io/v1alpha1"))
            .map(|d| d.text),
    );
    let mut seen = std::collections::BTreeSet::new();
    for text in &docs {
        let doc = &split_documents(text)[0];
        let obj = decode_document(doc)
            .unwrap_or_else(|e| panic!("the FileSource refuses the example: {e}\n{text}"))
            .unwrap();
        seen.insert(obj.kind());
        // What identityd writes (its own serialization) must also pass.
        for yaml in [text.clone(), obj.to_yaml().unwrap()] {
            let errs = structural_errors(&yaml);
            assert!(errs.is_empty(), "{errs:?}\n{yaml}");
        }
    }
    assert_eq!(seen.len(), 4, "one example per CRD kind: {seen:?}");
}

#[test]
fn the_schemas_refuse_what_the_model_refuses() {
    for (yaml, want) in [
        (
            "apiVersion: identityd.io/v1alpha1\nkind: KeyRotation\nmetadata: {name: r}\nspec: {target: tls}\n",
            ".spec.target: \"tls\" not in enum",
        ),
        (
            "apiVersion: identityd.io/v1alpha1\nkind: KeyRotation\nmetadata: {name: r}\nspec: {target: ca}\nstatus: {phase: Done}\n",
            ".status.phase: \"Done\" not in enum",
        ),
        (
            "apiVersion: identityd.io/v1alpha1\nkind: KeyRotation\nmetadata: {name: r}\nspec: {}\n",
            ".spec.target: required",
        ),
        (
            "apiVersion: identityd.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p}\nspec: {targetRef: {kind: Service, name: web}, retries: {attempts: -1}}\n",
            ".spec.retries.attempts: -1 below minimum",
        ),
        (
            "apiVersion: identityd.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p}\nspec: {targetRef: {kind: Service, name: web}, outlierDetection: {maxEjectionPercent: 101}}\n",
            ".spec.outlierDetection.maxEjectionPercent: 101 above maximum",
        ),
        (
            "apiVersion: identityd.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: p}\nspec: {targetRef: {kind: Service, name: web}, timeout: soon}\n",
            ".spec.timeout: \"soon\" does not match",
        ),
        (
            "apiVersion: identityd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {targetRef: {kind: HTTPRoute, name: web}}\n",
            ".spec.targetRef.kind: \"HTTPRoute\" not in enum",
        ),
        (
            "apiVersion: identityd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {targetRef: {kind: Service, name: web}, denny: []}\n",
            ".spec.denny: unknown field",
        ),
        (
            "apiVersion: identityd.io/v1alpha1\nkind: IdentitydNode\nmetadata: {name: n}\nspec: {wireguard: {publicKey: short, port: 0}}\n",
            ".spec.underlayAddresses: required",
        ),
        (
            "apiVersion: identityd.io/v1alpha1\nkind: IdentitydNode\nmetadata: {name: n}\nspec: {underlayAddresses: [10.0.0.1], wireguard: {publicKey: hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=, port: 70000}}\n",
            ".spec.wireguard.port: 70000 above maximum",
        ),
    ] {
        let errs = structural_errors(yaml);
        assert!(
            errs.iter().any(|e| e.contains(want)),
            "want {want:?} in {errs:?}\n{yaml}"
        );
    }
}

#[test]
fn a_node_report_as_the_daemon_writes_it_validates_against_its_crd() {
    use crate::model::report::{Examples, NodeReport, PeerProblem};
    let mut r = NodeReport {
        reported_at: "2026-12-02T05:00:00Z".into(),
        encryption_mode: "wireguard".into(),
        strict_mode: true,
        ingress_strict_in_place: false,
        ingress_strict_problem: Some("not attached to p-web-1".into()),
        cluster_version: 42,
        key_created_at: Some("2026-11-30T05:00:00Z".into()),
        envoy_ready: Some(true),
        xds_nacks: Examples::of(["Cluster v3 NACK: bad".to_owned()], 5),
        ..NodeReport::default()
    };
    r.peers.expected = 2;
    r.peers.unhealthy = 1;
    r.peers.worst.push(PeerProblem {
        name: "n2".into(),
        problem: "handshake 900s ago".into(),
        last_handshake: Some("2026-12-02T04:45:00Z".into()),
    });
    let doc = serde_json::json!({
        "apiVersion": "identityd.io/v1alpha1", "kind": "IdentitydNodeReport",
        "metadata": {"name": "n1"}, "spec": r});
    let yaml = serde_saphyr::to_string(&doc).unwrap();
    let errs = structural_errors(&yaml);
    assert!(errs.is_empty(), "{errs:?}\n{yaml}");
}
