//! The identityd container image (`make image`, `scripts/image`): complete, clean, and what the
//! chart deploys. Every command runs inside the real image with podman (runc, vfs storage; the
//! configuration `scripts/containers-env` writes under `target/containers/`).
//!
//! `make test` builds the image before this binary runs; without it these tests fail, naming
//! the command that builds it.

use std::path::PathBuf;
use std::process::Command;

use identityd_tests::image::{self, podman};
use identityd_tests::tools;
use serde_json::Value;

fn root() -> PathBuf {
    tools::workspace_root()
}

/// `(image name, OCI archive)` as `scripts/image` names them from the chart.
fn image() -> (String, PathBuf) {
    (image::name(), image::archive())
}

/// `podman run --rm --network none [extra] IMAGE args…`; panics unless it succeeds.
fn run_in_image(extra: &[&str], args: &[&str]) -> String {
    let (img, _) = image();
    let mut a = vec!["run", "--rm", "--network", "none"];
    a.extend_from_slice(extra);
    a.push(&img);
    a.extend_from_slice(args);
    let out = podman(&a);
    assert!(
        out.status.success(),
        "podman {a:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_binaries_run_inside_the_image() {
    let v = run_in_image(&[], &["--version"]);
    assert!(v.starts_with("identityd "), "{v}");
    let v = run_in_image(
        &["--entrypoint", "/usr/local/bin/identityd-wg"],
        &["--version"],
    );
    assert!(v.starts_with("identityd-wg "), "{v}");
    let v = run_in_image(&["--entrypoint", "/usr/local/bin/envoy"], &["--version"]);
    assert!(v.contains("envoy") && v.contains("version"), "{v}");
    // The tools the daemon executes load too.
    let v = run_in_image(&["--entrypoint", "/usr/sbin/ip"], &["-V"]);
    assert!(v.contains("iproute2"), "{v}");
    let v = run_in_image(&["--entrypoint", "/usr/sbin/nft"], &["--version"]);
    assert!(v.starts_with("nftables"), "{v}");
    let crds = run_in_image(&[], &["crds"]);
    let file =
        std::fs::read_to_string(root().join("charts/identityd/crds/identityd.io.yaml")).unwrap();
    assert_eq!(
        crds, file,
        "identityd crds inside the image is the chart's CRD file"
    );
}

#[test]
fn the_ca_role_initialises_a_ca_as_its_non_root_user_with_private_files() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    // The CA Deployment runs as 65532 with fsGroup 65532: the volume is theirs.
    std::os::unix::fs::chown(dir.path(), Some(65532), Some(65532)).unwrap();
    let mount = format!("{}:/ca", dir.path().display());
    run_in_image(
        &["--user", "65532:65532", "-v", &mount],
        &[
            "ca",
            "init",
            "--trust-domain",
            "cluster.local",
            "--dir",
            "/ca/ca",
        ],
    );
    let ca = dir.path().join("ca");
    let mut keys = 0;
    for e in std::fs::read_dir(&ca).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        assert_eq!(m.uid(), 65532, "{:?} owned by the CA user", e.path());
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains("key") {
            keys += 1;
            assert_eq!(m.permissions().mode() & 0o777, 0o600, "{name}");
        }
    }
    assert!(
        keys >= 1,
        "a CA key was written: {:?}",
        std::fs::read_dir(&ca).unwrap().count()
    );
    assert_eq!(
        std::fs::metadata(&ca).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

/// Every file (not directory) of the image, by path: `podman export` of a created container,
/// minus what podman itself adds to every container (`/etc/hosts`, `/etc/resolv.conf`,
/// `/etc/hostname`, `/run/.containerenv`).
fn image_files() -> Vec<String> {
    let (img, _) = image();
    let out = podman(&["create", &img]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let tar = tempfile::NamedTempFile::new().unwrap();
    let out = podman(&["export", "-o", tar.path().to_str().unwrap(), &id]);
    let _ = podman(&["rm", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("tar")
        .arg("-tf")
        .arg(tar.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.ends_with('/'))
        .map(|l| l.trim_start_matches("./").to_owned())
        .filter(|l| {
            !matches!(
                l.as_str(),
                "etc/hosts" | "etc/resolv.conf" | "etc/hostname" | "run/.containerenv"
            )
        })
        .collect()
}

/// What the image may hold: the binaries, their libraries, and these files of /etc.
const ETC: [&str; 5] = [
    "etc/protocols",
    "etc/passwd",
    "etc/group",
    "etc/nsswitch.conf",
    "etc/ssl/certs/ca-certificates.crt",
];
const BINARIES: [&str; 6] = [
    "usr/local/bin/identityd",
    "usr/local/bin/identityd-wg",
    "usr/local/bin/envoy",
    "usr/sbin/ip",
    "usr/sbin/nft",
    "usr/bin/kill",
];

#[test]
fn the_image_holds_the_binaries_their_libraries_and_no_secret() {
    let files = image_files();
    for want in BINARIES.iter().chain(&ETC) {
        assert!(
            files.iter().any(|f| f == want),
            "{want} missing: {files:#?}"
        );
    }
    let is_library = |f: &str| {
        (f.starts_with("lib/") || f.starts_with("lib64/") || f.starts_with("usr/lib/"))
            && f.contains(".so")
    };
    let stray: Vec<&String> = files
        .iter()
        .filter(|f| !BINARIES.contains(&f.as_str()) && !ETC.contains(&f.as_str()) && !is_library(f))
        .collect();
    assert!(
        stray.is_empty(),
        "unexpected files in the image: {stray:#?}"
    );
    // Belt and braces: nothing that looks like key material, a token or a test fixture.
    let secretish: Vec<&String> = files
        .iter()
        .filter(|f| {
            let f = f.to_ascii_lowercase();
            [".key", ".pem", "token", "fixture", "testdata", "secret"]
                .iter()
                .any(|s| f.contains(s))
        })
        .collect();
    assert!(secretish.is_empty(), "{secretish:#?}");
}

fn helm_objects() -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(&tools::helm_template(&[])).unwrap();
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

#[test]
fn the_chart_deploys_this_image_and_its_commands_exist_in_it() {
    let (img, archive) = image();
    let objs = helm_objects();
    let mut seen = 0;
    for o in &objs {
        if !matches!(o["kind"].as_str(), Some("DaemonSet" | "Deployment")) {
            continue;
        }
        let name = o["metadata"]["name"].as_str().unwrap_or("?");
        for c in o["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
        {
            seen += 1;
            assert_eq!(
                c["image"].as_str(),
                Some(img.as_str()),
                "{name}: the image make image builds"
            );
            assert!(
                c["command"].is_null(),
                "{name}: the image's entrypoint runs (no command override)"
            );
            let args: Vec<&str> = c["args"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            // The subcommand exists in the image's identityd and accepts the flags given.
            let sub = args[0];
            let help = run_in_image(&[], &[sub, "--help"]);
            for flag in args.iter().filter(|a| a.starts_with("--")) {
                assert!(
                    help.contains(flag),
                    "{name}: `identityd {sub}` in the image has no {flag}:\n{help}"
                );
            }
        }
    }
    assert_eq!(seen, 2, "the node DaemonSet and the CA Deployment");
    // The archive carries the same image under that name.
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(&archive)
        .arg("index.json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let index: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .collect();
    assert!(
        names.iter().any(|n| img.ends_with(n) || *n == img),
        "{names:?} in {}",
        archive.display()
    );
}
