//! `identityd audit --manifests -` as a CI gate over what is deployed: the real chart rendered
//! by `helm template` (real helm) with each weakening a user could pass, plus the
//! application manifests of `tests/fixtures/audit/`, piped in on stdin. Each weakened install
//! fails with the expected check naming the object and field; the untouched chart passes;
//! input with nothing to examine is `skipped` (never a pass) and fails under `--require`; the
//! JUnit and SARIF outputs validate (junitparser, SARIF multitool) with the skipped state.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use identityd_tests::tools;

const BIN: &str = env!("CARGO_BIN_EXE_identityd");

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/audit")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn helm_template(sets: &[&str]) -> String {
    tools::helm_template(sets)
}

/// Runs `identityd audit --manifests - ARGS` with `input` on stdin: (exit ok, stdout, stderr).
fn audit(input: &str, args: &[&str]) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .args(["audit", "--manifests", "-"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A usage error exits before reading stdin: a broken pipe here is its answer, not ours.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn findings(input: &str, args: &[&str]) -> (bool, Vec<serde_json::Value>) {
    let mut a = vec!["--format", "json"];
    a.extend_from_slice(args);
    let (ok, out, err) = audit(input, &a);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("audit json: {e}\n{out}\n{err}"));
    (ok, v["findings"].as_array().unwrap().clone())
}

fn check<'a>(f: &'a [serde_json::Value], id: &str) -> &'a serde_json::Value {
    f.iter()
        .find(|x| x["check"] == id)
        .unwrap_or_else(|| panic!("no check {id} in {f:#?}"))
}

fn details(f: &serde_json::Value) -> String {
    f["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

const REQUIRE: &[&str] = &["--require-mtls", "shop"];

#[test]
fn the_untouched_chart_and_its_application_pass_with_nothing_skipped_that_matters() {
    let input = format!(
        "{}\n---\n{}",
        helm_template(&[]),
        fixture("shop-strict.yaml")
    );
    let (ok, f) = findings(&input, REQUIRE);
    assert!(ok, "{f:#?}");
    let enc = check(&f, "config.encryption");
    assert_eq!(enc["result"], "pass", "{enc}");
    assert!(
        enc["message"].as_str().unwrap().contains("1 node config"),
        "the rendered node ConfigMap was examined: {enc}"
    );
    for id in [
        "namespaces.mtls-required",
        "policies.allow-all",
        "routes.backends",
        "objects.valid",
    ] {
        assert_eq!(check(&f, id)["result"], "pass", "{id}: {}", check(&f, id));
    }
}

#[test]
fn every_weakened_install_fails_naming_the_object_and_field() {
    let app = fixture("shop-strict.yaml");
    // (helm --set values, extra manifests, extra audit args, failing check, detail it names)
    type Case<'a> = (&'a [&'a str], String, &'a [&'a str], &'a str, &'a str);
    let cases: &[Case] = &[
        (
            &["encryption.mode=disabled"],
            app.clone(),
            &[],
            "config.encryption",
            // Found through the DaemonSet: its `run --config` path, the mount, the ConfigMap.
            "DaemonSet identityd-system/identityd-node container identityd → ConfigMap identityd-system/identityd-node-config: config.yaml encryption.mode=disabled",
        ),
        (
            &["encryption.strictMode=false"],
            app.clone(),
            &[],
            "config.encryption",
            "ConfigMap identityd-system/identityd-node-config: config.yaml encryption.strictMode=false",
        ),
        (
            &["mtls.defaultMode=disabled"],
            app.clone(),
            &["--min-default-mtls", "permissive"],
            "config.encryption",
            "ConfigMap identityd-system/identityd-node-config: config.yaml mtls.defaultMode=disabled (weaker than required)",
        ),
        (
            &[],
            app.clone(),
            &["--require-node-encryption"],
            "config.encryption",
            "config.yaml encryption.nodeEncryption=false (required on)",
        ),
        (
            &[],
            app.replace("identityd.io/mtls: strict", "identityd.io/mtls: permissive"),
            &[],
            "namespaces.mtls-required",
            "Namespace shop: metadata.annotations identityd.io/mtls=permissive (required strict)",
        ),
        (
            &[],
            format!("{app}\n---\n{}", fixture("allow-all.yaml")),
            &[],
            "policies.allow-all",
            "AuthorizationPolicy shop/anyone: spec.allow[0] allows every identity on Service shop/web",
        ),
        (
            &[],
            format!("{app}\n---\n{}", fixture("missing-backend.yaml")),
            &[],
            "routes.backends",
            "HTTPRoute shop/broken: backendRef shop/no-such-service does not exist",
        ),
    ];
    for (sets, extra, args, id, named) in cases {
        let input = format!("{}\n---\n{extra}", helm_template(sets));
        let mut a = REQUIRE.to_vec();
        a.extend_from_slice(args);
        let (ok, f) = findings(&input, &a);
        let c = check(&f, id);
        assert!(!ok, "{sets:?} {args:?}: the audit must fail; {c}");
        assert_eq!(c["result"], "fail", "{sets:?}: {c}");
        assert!(
            details(c).contains(named),
            "{sets:?}: {id} names {named:?}; got:\n{}",
            details(c)
        );
    }
}

/// The DaemonSet decides what the daemon runs with: a `--config` the input does not provide
/// from a ConfigMap cannot be vouched for, and the container's literal env is what the
/// daemon's parser sees.
#[test]
fn the_daemonset_args_and_env_are_what_is_checked() {
    let chart = helm_template(&[]);
    let app = fixture("shop-strict.yaml");
    let args = "args: [run, --config, /etc/identityd/config/config.yaml]";
    assert!(chart.contains(args), "the chart's DaemonSet args changed");
    let moved = chart.replace(args, "args: [run, --config, /host/etc/identityd.yaml]");
    let (ok, f) = findings(&format!("{moved}\n---\n{app}"), REQUIRE);
    let c = check(&f, "config.encryption");
    assert!(!ok && c["result"] == "fail", "{c}");
    assert!(
        details(c).contains("DaemonSet identityd-system/identityd-node container identityd: --config /host/etc/identityd.yaml: not mounted from a ConfigMap of the input"),
        "{}",
        details(c)
    );

    let from_api = "            - name: IDENTITYD_UNDERLAY_ADDRESS\n              valueFrom:\n                fieldRef:\n                  fieldPath: status.hostIP\n";
    assert!(
        chart.contains(from_api),
        "the chart's DaemonSet env changed"
    );
    let literal = chart.replace(
        from_api,
        "            - name: IDENTITYD_UNDERLAY_ADDRESS\n              value: not-an-address\n",
    );
    let (ok, f) = findings(&format!("{literal}\n---\n{app}"), REQUIRE);
    let c = check(&f, "config.encryption");
    assert!(!ok && c["result"] == "fail", "{c}");
    assert!(
        details(c).contains("does not load in the daemon") && details(c).contains("not-an-address"),
        "{}",
        details(c)
    );
}

#[test]
fn input_with_nothing_to_examine_is_skipped_and_fails_when_required() {
    // A rendered Deployment only: nothing identityd can judge.
    let input = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n";
    let (ok, f) = findings(input, &[]);
    let enc = check(&f, "config.encryption");
    assert_eq!(enc["result"], "skipped", "{enc}");
    assert_eq!(enc["passed"], false);
    assert!(ok, "skipped is not a failure unless required");
    let (ok, _, err) = audit(input, &["--require", "config.encryption"]);
    assert!(!ok, "a required check that was skipped fails");
    assert!(
        err.contains("config.encryption: required, but skipped"),
        "{err}"
    );
    let (ok, _, err) = audit(input, &["--require", "no.such-check"]);
    assert!(
        !ok && err.contains("--require=no.such-check: no such check"),
        "{err}"
    );
    // --explain says what a check proves and how to fix it.
    let out = Command::new(BIN)
        .args(["audit", "--explain", "config.encryption"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("Fix:"), "{text}");
}

#[test]
fn junit_and_sarif_of_the_corpus_validate_with_the_skipped_state() {
    let dir = tempfile::tempdir().unwrap();
    let input = format!(
        "{}\n---\n{}",
        helm_template(&["encryption.mode=disabled"]),
        fixture("shop-strict.yaml")
    );
    // No --require-mtls: namespaces.mtls-required is skipped, config.encryption fails.
    let (_, junit, _) = audit(&input, &["--format", "junit"]);
    let file = dir.path().join("audit.xml");
    std::fs::write(&file, &junit).unwrap();
    let parsed: String = identityd_tests::reports::junit_cases(&file)
        .iter()
        .map(|(r, n)| format!("{r} {n}\n"))
        .collect();
    assert!(parsed.contains("FAILED config.encryption"), "{parsed}");
    assert!(
        parsed.contains("SKIPPED namespaces.mtls-required"),
        "{parsed}"
    );
    assert!(parsed.contains("PASSED routes.backends"), "{parsed}");
    let (_, sarif, _) = audit(&input, &["--format", "sarif"]);
    let file = dir.path().join("audit.sarif");
    let report = dir.path().join("validation.sarif");
    std::fs::write(&file, &sarif).unwrap();
    let errors = identityd_tests::reports::sarif_errors(
        &identityd_tests::reports::sarif_validation(&file, &report),
    );
    assert!(errors.is_empty(), "SARIF validation errors: {errors:#?}");
    let log: serde_json::Value = serde_json::from_str(&sarif).unwrap();
    let results = log["runs"][0]["results"].as_array().unwrap();
    assert!(
        results
            .iter()
            .any(|r| r["ruleId"] == "namespaces.mtls-required" && r["kind"] == "notApplicable")
    );
    assert!(
        results
            .iter()
            .any(|r| r["ruleId"] == "config.encryption" && r["level"] == "error")
    );
}
