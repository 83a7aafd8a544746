//! The real Envoy from the project venv starts and reports LIVE on its loopback admin port.

use std::time::Duration;

use identityd_tests::envoy::Envoy;

#[test]
fn envoy_from_venv_reports_live() {
    let dir = tempdir("envoy-ready");
    let envoy = Envoy::start(&dir, &Envoy::minimal_bootstrap("ready-test"));
    assert!(
        envoy.admin().starts_with("127.0.0.1:"),
        "admin must be loopback only: {}",
        envoy.admin()
    );
    envoy.wait_live(Duration::from_secs(20));
    let (status, body) = envoy.admin_get("/server_info");
    assert_eq!(status, 200, "server_info: {body}");
    assert!(
        body.contains("\"version\""),
        "server_info has a version: {body}"
    );
    assert!(body.contains("1.40"), "the venv ships Envoy 1.40: {body}");
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("identityd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}
