//! The lab once more, with every daemon from the container image (`identityd lab up --image`):
//! the CA role and the three node daemons — with the WireGuard devices and Envoys they start —
//! run as podman containers of the image `make image` built, so the lab proves the image is
//! complete. Checked: cross-node mTLS with the caller's SPIFFE ID, no plaintext in the
//! underlay capture, a passing `identityd audit`, that each daemon and its Envoy really run from
//! the image's root filesystem with the chart's capabilities (the CA as the image's non-root
//! user), and that `lab down` removes the containers.
//!
//! One lab on the global bridge, like `lab_e2e`: `make test` runs this binary with
//! `cargo test` after `lab_e2e`, never beside it, and excludes it from nextest.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use identityd_tests::tools;

const BIN: &str = env!("CARGO_BIN_EXE_identityd");

use identityd_tests::image::{containers_env as with_containers_env, podman};

fn inspect(name: &str, format: &str) -> String {
    let out = podman(&["inspect", "--format", format, name]);
    assert!(
        out.status.success(),
        "podman inspect {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The mount namespace of `pid`.
fn mnt_ns(pid: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap()
}

/// Whether `pid` sees the image's root filesystem: its `/etc/passwd` is the one
/// `scripts/image` writes (the CA role's user), which the build machine has not.
fn sees_the_image(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/root/etc/passwd"))
        .is_ok_and(|p| p.contains("identityd:x:65532:65532:"))
        && !Path::new(&format!("/proc/{pid}/root/usr/bin/cargo")).exists()
}

/// The capabilities the chart's DaemonSet adds (rendered by real helm).
fn chart_node_capabilities() -> Vec<String> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&tools::helm_template(&[])).unwrap();
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("the chart's DaemonSet");
    let mut caps: Vec<String> = ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]
        ["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("CAP_{}", c.as_str().unwrap()))
        .collect();
    caps.sort();
    caps
}

struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        if self.0.join("lab.json").exists() {
            let _ = with_containers_env(&mut Command::new(BIN))
                .args(["lab", "down", "--dir"])
                .arg(self.0)
                .status();
        }
    }
}

#[test]
fn the_lab_runs_from_the_image() {
    identityd_tests::require_root();
    assert!(
        !Path::new("/sys/class/net/idd-fabric").exists(),
        "another lab is up (bridge idd-fabric exists): run `identityd lab down` first"
    );
    let image = identityd_tests::image::name();
    let tmp = tempfile::tempdir().unwrap();
    // The CA runs as 65532: it must be able to walk to its directory.
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let dir = tmp.path().join("lab");
    let down = Down(&dir);
    let t = Instant::now();
    let out = with_containers_env(&mut Command::new(BIN))
        .args(["lab", "up", "--nodes", "3", "--image", &image, "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let ready = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "lab up --image:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.join("n1/daemon.log")).unwrap_or_default()
    );
    println!(
        "lab up --image {image}: ready in {:.1}s",
        ready.as_secs_f64()
    );

    // The traffic `lab up` sends: mTLS with the caller's identity, nothing in clear.
    assert_eq!(
        stdout.matches("across nodes  OK").count(),
        6,
        "all cross-node requests succeed:\n{stdout}"
    );
    assert_eq!(
        stdout
            .matches("server saw caller spiffe://cluster.local/ns/front/sa/client")
            .count(),
        9,
        "every request went over mTLS with the caller's SPIFFE ID:\n{stdout}"
    );
    assert!(
        stdout.contains(" 0 neither WireGuard (UDP/51871) nor TLS to the CA"),
        "no plaintext on the underlay:\n{stdout}"
    );
    assert!(stdout.contains("marker found in clear: no"), "{stdout}");

    // Every daemon is a container of the image, from the image's root filesystem.
    let want_caps = chart_node_capabilities();
    for i in 1..=3 {
        let name = format!("idd-lab-n{i}");
        assert_eq!(inspect(&name, "{{.State.Running}}"), "true", "{name}");
        assert_eq!(
            inspect(&name, "{{.ImageName}}").trim_start_matches("localhost/"),
            image
        );
        let pid: u32 = inspect(&name, "{{.State.Pid}}").parse().unwrap();
        assert_ne!(
            mnt_ns(&pid.to_string()),
            mnt_ns("self"),
            "{name}: its own mount namespace"
        );
        assert!(
            sees_the_image(pid),
            "{name} runs in the image's root filesystem"
        );
        assert_eq!(
            std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(),
            Path::new("/usr/local/bin/identityd")
        );
        // The Envoy it started runs from the image too.
        let envoy: u32 = std::fs::read_to_string(dir.join(format!("n{i}/run/envoy.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(
            mnt_ns(&envoy.to_string()),
            mnt_ns(&pid.to_string()),
            "n{i}'s Envoy runs in the daemon's container"
        );
        assert!(sees_the_image(envoy), "n{i}'s Envoy");
        let mut caps: Vec<String> = inspect(&name, "{{.EffectiveCaps}}")
            .trim_matches(|c| c == '[' || c == ']')
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        caps.sort();
        assert_eq!(caps, want_caps, "{name}: exactly the chart's capabilities");
    }
    let ca_pid: u32 = inspect("idd-lab-ca", "{{.State.Pid}}").parse().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{ca_pid}/status")).unwrap();
    assert!(sees_the_image(ca_pid), "the CA runs in the image");
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid.split_whitespace().skip(1).all(|u| u == "65532"),
        "the CA runs as the image's non-root user: {uid}"
    );

    // The audit of the lab passes.
    let out = Command::new(BIN)
        .args(["audit", "--source"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "audit:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // lab down removes the containers.
    let out = with_containers_env(&mut Command::new(BIN))
        .args(["lab", "down", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(down);
    let out = podman(&[
        "ps",
        "--all",
        "--filter",
        "name=idd-lab",
        "--format",
        "{{.Names}}",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "",
        "containers left"
    );
}
