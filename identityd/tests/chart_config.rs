//! The Helm chart's daemon configs load in the daemon: `helm template` (real helm 4) for each
//! encryption mode and a few values, the node and CA config files taken from the rendered
//! ConfigMaps, parsed and checked by `DaemonConfig::load_with_env` with the DaemonSet's
//! downward-API variables. A key the chart writes and the daemon does not know fails here.

use std::process::Command;

use identityd::daemon::config::{
    ClusterSourceKind, DaemonConfig, ENV_NODE_NAME, ENV_UNDERLAY_ADDRESS, Role,
};
use identityd::model::MtlsMode;
use identityd_tests::tools;

fn render(extra: &[&str]) -> Vec<serde_json::Value> {
    let home = tempfile::tempdir().unwrap();
    let chart = tools::workspace_root().join("charts/identityd");
    let out = Command::new(tools::helm())
        .args(["template", "identityd"])
        .arg(&chart)
        .args(["--namespace", "identityd-system"])
        .args(extra)
        .env("HOME", home.path())
        .env("XDG_CACHE_HOME", home.path().join("cache"))
        .env("XDG_CONFIG_HOME", home.path().join("config"))
        .env("XDG_DATA_HOME", home.path().join("data"))
        .env_remove("KUBECONFIG")
        .output()
        .expect("helm (scripts/bootstrap installs it into .tools/bin)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "helm template {extra:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn config_of(objs: &[serde_json::Value], configmap: &str) -> String {
    objs.iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == configmap)
        .and_then(|o| o["data"]["config.yaml"].as_str())
        .unwrap_or_else(|| panic!("no ConfigMap {configmap} with config.yaml"))
        .to_owned()
}

/// The DaemonSet's downward-API variables.
fn env(k: &str) -> Option<String> {
    match k {
        k if k == ENV_NODE_NAME => Some("worker-1".to_owned()),
        k if k == ENV_UNDERLAY_ADDRESS => Some("192.0.2.11".to_owned()),
        _ => None,
    }
}

fn try_load(text: &str) -> Result<DaemonConfig, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, text).unwrap();
    DaemonConfig::load_with_env(&path, env).map_err(|e| e.to_string())
}

fn load(text: &str) -> DaemonConfig {
    try_load(text).unwrap_or_else(|e| panic!("the chart's config does not load: {e}\n{text}"))
}

#[test]
fn the_charts_node_and_ca_configs_load_in_the_daemon() {
    for mode in ["wireguard", "disabled"] {
        let objs = render(&[
            "--set",
            &format!("encryption.mode={mode}"),
            "--set",
            "identity.svidTTL=30m",
            "--set",
            "mtls.defaultMode=strict",
            "--set",
            "ingress.secretNamespaces={shop}",
        ]);
        let node = load(&config_of(&objs, "identityd-node-config"));
        assert_eq!(node.role, Role::Node);
        assert_eq!(node.name, "worker-1", "from {ENV_NODE_NAME}");
        assert_eq!(node.cluster_source, ClusterSourceKind::Kube);
        assert_eq!(node.mtls.default_mode, MtlsMode::Strict);
        assert_eq!(node.svid_ttl().as_secs(), 1800);
        assert_eq!(node.secret_namespaces, ["shop"]);
        assert_eq!(node.wireguard.is_some(), mode == "wireguard", "{mode}");
        let ca = load(&config_of(&objs, "identityd-ca-config"));
        assert_eq!(ca.role, Role::Ca);
        assert_eq!(
            ca.metrics_address.map(|a| a.port()),
            Some(9963),
            "the CA serves its metrics"
        );
        assert_eq!(ca.svid_ttl().as_secs(), 1800);
        assert_eq!(ca.secret_namespaces, ["shop"]);
    }
    // ipsec renders; the daemon refuses it, naming the field, on a kernel without ESP.
    let objs = render(&["--set", "encryption.mode=ipsec"]);
    let e = try_load(&config_of(&objs, "identityd-node-config")).unwrap_err();
    assert!(e.contains("encryption.mode=ipsec"), "{e}");
}

#[test]
fn node_encryption_renders_into_the_node_config_and_needs_wireguard() {
    let node = load(&config_of(&render(&[]), "identityd-node-config"));
    assert!(!node.encryption.node_encryption, "off by default");
    let objs = render(&["--set", "encryption.nodeEncryption=true"]);
    let node = load(&config_of(&objs, "identityd-node-config"));
    assert!(node.encryption.node_encryption);
    // With IPsec it is refused, naming the field (the chart refuses it with mode=disabled).
    let objs = render(&[
        "--set",
        "encryption.nodeEncryption=true",
        "--set",
        "encryption.mode=ipsec",
    ]);
    let e = try_load(&config_of(&objs, "identityd-node-config")).unwrap_err();
    assert!(e.contains("encryption."), "{e}");
}

#[test]
fn the_strict_mode_allow_list_renders_into_the_node_config_and_a_bad_cidr_is_named() {
    let node = load(&config_of(&render(&[]), "identityd-node-config"));
    assert!(node.encryption.allow_from.is_empty(), "empty by default");
    let objs = render(&[
        "--set-json",
        r#"encryption.allowFrom=["10.244.7.0/28","fd00:244:7::/80"]"#,
    ]);
    let node = load(&config_of(&objs, "identityd-node-config"));
    assert_eq!(
        node.encryption.allow_from,
        ["10.244.7.0/28", "fd00:244:7::/80"]
    );
    let objs = render(&["--set-json", r#"encryption.allowFrom=["10.244.7.1/28"]"#]);
    let e = try_load(&config_of(&objs, "identityd-node-config")).unwrap_err();
    assert!(e.contains("encryption.allowFrom[0]=10.244.7.1/28"), "{e}");
}
