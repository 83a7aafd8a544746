//! The identityd container image as `make image` (`scripts/image`) names and stores it: its
//! name from the chart, its OCI archive, and podman pointed at the storage
//! `scripts/containers-env` configures under `target/containers/`.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::tools;

/// `repository:appVersion`, as the chart deploys it and `scripts/image` tags it.
#[must_use]
pub fn name() -> String {
    let root = tools::workspace_root();
    let chart = std::fs::read_to_string(root.join("charts/identityd/Chart.yaml"))
        .expect("charts/identityd/Chart.yaml");
    let version = chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .expect("appVersion in Chart.yaml");
    let values = std::fs::read_to_string(root.join("charts/identityd/values.yaml"))
        .expect("charts/identityd/values.yaml");
    let repo = values
        .lines()
        .find_map(|l| l.strip_prefix("  repository: "))
        .expect("image.repository in values.yaml")
        .trim()
        .to_owned();
    format!("{repo}:{version}")
}

/// The OCI archive `make image` writes; panics, naming the command, when it is missing.
#[must_use]
pub fn archive() -> PathBuf {
    let version = name().rsplit(':').next().unwrap_or_default().to_owned();
    let archive = tools::workspace_root().join(format!("target/image/identityd-{version}.oci.tar"));
    assert!(
        archive.is_file(),
        "{} is missing: build the image with `make image` (scripts/image)",
        archive.display()
    );
    archive
}

/// `cmd` with podman's storage and engine configuration of this checkout.
pub fn containers_env(cmd: &mut Command) -> &mut Command {
    let dir = tools::workspace_root().join("target/containers");
    assert!(
        dir.join("storage.conf").is_file(),
        "{} has no storage.conf: build the image with `make image` first",
        dir.display()
    );
    cmd.env("CONTAINERS_STORAGE_CONF", dir.join("storage.conf"))
        .env("CONTAINERS_CONF", dir.join("containers.conf"))
}

/// `podman ARGS` against that storage.
#[must_use]
pub fn podman(args: &[&str]) -> Output {
    containers_env(&mut Command::new(tools::podman()))
        .args(args)
        .output()
        .expect("podman (scripts/bootstrap installs it)")
}
