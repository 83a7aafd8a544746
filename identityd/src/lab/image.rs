//! `identityd lab up --image IMAGE`: the CA role and every node daemon (with the WireGuard
//! device and the Envoy it starts) run as podman containers of the identityd image instead of
//! this binary, so the lab proves the image is complete.
//!
//! Each node container joins its node's network namespace and gets what the chart's DaemonSet
//! gives the daemon: the capabilities it adds (nothing else; no privileged mode), the host's
//! bpffs, `/dev/net/tun`, the WireGuard UAPI directory, and its state and runtime directories
//! (here: the lab directory, mounted at the same path so the configs' paths hold). The CA
//! container runs as the image's non-root user 65532 in the root namespace, where the lab's
//! CA address lives. `--pid host` keeps process ids as the lab records them (pid files, `lab
//! down`, the trials that stop an Envoy).
//!
//! podman finds the image in the storage its environment names (`CONTAINERS_STORAGE_CONF`,
//! `CONTAINERS_CONF`): `. scripts/containers-env` points it at the storage `make image` fills.

use std::path::Path;
use std::process::{Command, Stdio};

use super::LabError;

/// The capabilities the chart's DaemonSet adds to the node daemon's container (all others
/// dropped). `tests/lab_image_e2e.rs` compares them with the rendered chart.
pub const NODE_CAPABILITIES: [&str; 4] = ["NET_ADMIN", "NET_RAW", "BPF", "PERFMON"];

/// The CA role's user in the image (the chart's CA Deployment `runAsUser`).
pub const CA_UID: u32 = 65532;

/// Where the image holds the binaries the daemon starts.
pub const IMAGE_WG_BINARY: &str = "/usr/local/bin/identityd-wg";
/// The Envoy binary in the image.
pub const IMAGE_ENVOY_BINARY: &str = "/usr/local/bin/envoy";

/// The container name of lab node `i` (`0` is the CA).
#[must_use]
pub fn container_name(i: usize) -> String {
    if i == 0 {
        "idd-lab-ca".to_owned()
    } else {
        format!("idd-lab-n{i}")
    }
}

/// `podman run` arguments for node `i`'s daemon. Pure.
#[must_use]
pub fn node_args(image: &str, i: usize, dir: &Path, config: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    let mut a: Vec<String> = [
        "run",
        "--detach",
        "--name",
        &container_name(i),
        "--network",
        &format!("ns:/run/netns/idd-n{i}"),
        "--pid",
        "host",
        "--cap-drop",
        "ALL",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for c in NODE_CAPABILITIES {
        a.extend(["--cap-add".to_owned(), c.to_owned()]);
    }
    a.extend(
        [
            "--security-opt",
            &format!("seccomp={d}/seccomp-node.json"),
            "--device",
            "/dev/net/tun",
            "--volume",
            "/sys/fs/bpf:/sys/fs/bpf",
            "--volume",
            "/var/run/wireguard:/var/run/wireguard",
            "--volume",
            &format!("{d}:{d}"),
            "--log-driver",
            "k8s-file",
            "--log-opt",
            &format!("path={d}/n{i}/daemon.log"),
            image,
            "run",
            "--config",
            &config.display().to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned()),
    );
    a
}

/// `podman run` arguments for the CA role (user [`CA_UID`], the root namespace). Pure.
#[must_use]
pub fn ca_args(image: &str, dir: &Path, config: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    [
        "run",
        "--detach",
        "--name",
        &container_name(0),
        "--network",
        "host",
        "--pid",
        "host",
        "--user",
        &format!("{CA_UID}:{CA_UID}"),
        "--cap-drop",
        "ALL",
        "--volume",
        &format!("{d}:{d}"),
        "--log-driver",
        "k8s-file",
        "--log-opt",
        &format!("path={d}/ca.log"),
        image,
        "run",
        "--config",
        &config.display().to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// The seccomp profile of the node containers: podman's default profile (`default`, its JSON)
/// with `bpf(2)` allowed under CAP_BPF and `perf_event_open(2)` under CAP_PERFMON, as the
/// runtime default of current container runtimes has it (moby and containerd since the
/// capabilities split off CAP_SYS_ADMIN). The podman these machines have predates that and
/// allows both only with CAP_SYS_ADMIN, which the chart does not grant. Everything else of the
/// default profile stays. Pure.
///
/// # Errors
/// `default` is not a seccomp profile.
pub fn node_seccomp_profile(default: &str) -> Result<String, LabError> {
    use serde_json::{Value, json};
    let bad = |why: &str| LabError::Io(format!("the default seccomp profile: {why}"));
    let mut p: Value = serde_json::from_str(default).map_err(|e| bad(&e.to_string()))?;
    let calls = p["syscalls"]
        .as_array_mut()
        .ok_or_else(|| bad("no syscalls list"))?;
    let split = [("bpf", "CAP_BPF"), ("perf_event_open", "CAP_PERFMON")];
    // The rules that name them for CAP_SYS_ADMIN only lose them …
    for c in calls.iter_mut() {
        if let Some(names) = c["names"].as_array_mut() {
            names.retain(|n| !split.iter().any(|(s, _)| n == s));
        }
    }
    calls.retain(|c| c["names"].as_array().is_some_and(|n| !n.is_empty()));
    // … and each gets: allowed with CAP_SYS_ADMIN or its own capability, EPERM otherwise.
    for (name, cap) in split {
        for admin in ["CAP_SYS_ADMIN", cap] {
            calls.push(
                json!({"names": [name], "action": "SCMP_ACT_ALLOW", "args": [],
                "includes": {"caps": [admin]}, "excludes": {}}),
            );
        }
        calls.push(
            json!({"names": [name], "action": "SCMP_ACT_ERRNO", "args": [],
            "includes": {}, "excludes": {"caps": ["CAP_SYS_ADMIN", cap]},
            "errnoRet": 1, "errno": "EPERM"}),
        );
    }
    serde_json::to_string_pretty(&p).map_err(|e| bad(&e.to_string()))
}

/// Where podman's default seccomp profile is (Debian's containers-common).
pub const PODMAN_DEFAULT_SECCOMP: &str = "/usr/share/containers/seccomp.json";

/// Writes [`node_seccomp_profile`] of podman's default to `path`.
///
/// # Errors
/// The default profile cannot be read, or `path` written.
pub fn write_node_seccomp_profile(path: &Path) -> Result<(), LabError> {
    let default = std::fs::read_to_string(PODMAN_DEFAULT_SECCOMP).map_err(|e| {
        LabError::Io(format!(
            "{PODMAN_DEFAULT_SECCOMP}: {e} (podman's containers-common)"
        ))
    })?;
    std::fs::write(path, node_seccomp_profile(&default)?)
        .map_err(|e| LabError::Io(format!("{}: {e}", path.display())))
}

fn podman(args: &[String]) -> Result<String, LabError> {
    let out = Command::new("podman")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError::Command {
            cmd: format!("podman {}", args.join(" ")),
            reason: format!("{e} (scripts/bootstrap installs podman)"),
        })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: format!("podman {}", args.join(" ")),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Checks that podman runs and holds `image`.
///
/// # Errors
/// podman missing, or no such image in its storage.
pub fn check(image: &str) -> Result<(), LabError> {
    podman(&["image".into(), "exists".into(), image.into()]).map_err(|_| {
        LabError::Io(format!(
            "--image={image}: not in podman's image storage (build it with `make image`; `. scripts/containers-env` points podman at that storage)"
        ))
    })?;
    Ok(())
}

/// Starts a container from `args` (a `podman run --detach …`) and returns the host pid of its
/// first process.
///
/// # Errors
/// podman's, naming the command.
pub fn start(args: &[String]) -> Result<u32, LabError> {
    let name = args
        .iter()
        .position(|a| a == "--name")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_default();
    // A container of an earlier lab that `lab down` could not remove.
    let _ = podman(&["rm".into(), "--force".into(), name.clone()]);
    podman(args)?;
    let pid = podman(&[
        "inspect".into(),
        "--format".into(),
        "{{.State.Pid}}".into(),
        name.clone(),
    ])?;
    pid.parse().map_err(|_| LabError::Command {
        cmd: format!("podman inspect {name}"),
        reason: format!("no pid: {pid:?}"),
    })
}

/// Removes the lab's containers (whatever state they are in).
pub fn remove(names: &[String]) {
    for n in names {
        let _ = podman(&[
            "rm".into(),
            "--force".into(),
            "--time".into(),
            "0".into(),
            n.clone(),
        ]);
    }
}

/// Gives the CA role's user what it needs of the lab directory: the CA directory (its key
/// stays 0600; the directory becomes traversable, not listable, so node daemons read
/// `bundle.pem`), its own state and runtime directories, and group-root write on the cluster
/// directory it writes statuses into (the node daemons, root without CAP_DAC_OVERRIDE, keep
/// writing there as group 0).
///
/// # Errors
/// A chown/chmod that fails, naming the path.
pub fn prepare_ca_dirs(dir: &Path) -> Result<(), LabError> {
    use std::os::unix::fs::PermissionsExt;
    let set = |p: &Path, uid: u32, gid: u32, mode: Option<u32>| -> Result<(), LabError> {
        std::os::unix::fs::chown(p, Some(uid), Some(gid))
            .map_err(|e| LabError::Io(format!("chown {}: {e}", p.display())))?;
        if let Some(m) = mode {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m))
                .map_err(|e| LabError::Io(format!("chmod {}: {e}", p.display())))?;
        }
        Ok(())
    };
    // The CA's user must be able to walk down to the lab directory.
    for a in dir.ancestors().skip(1) {
        let mode = std::fs::metadata(a)
            .map_err(|e| LabError::Io(format!("{}: {e}", a.display())))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            return Err(LabError::Io(format!(
                "--image: {} (mode {:o}) is not traversable by others, so the CA container (uid {CA_UID}) cannot reach {}; use a --dir under a world-traversable directory or chmod o+x it",
                a.display(),
                mode & 0o777,
                dir.display()
            )));
        }
    }
    let ca = dir.join("ca");
    let mut stack = vec![ca.clone()];
    while let Some(p) = stack.pop() {
        set(&p, CA_UID, CA_UID, None)?;
        if p.is_dir() {
            for e in
                std::fs::read_dir(&p).map_err(|e| LabError::Io(format!("{}: {e}", p.display())))?
            {
                stack.push(e.map_err(|e| LabError::Io(e.to_string()))?.path());
            }
        }
    }
    set(&ca, CA_UID, CA_UID, Some(0o711))?;
    for d in ["ca-state", "ca-run"] {
        let p = dir.join(d);
        std::fs::create_dir_all(&p).map_err(|e| LabError::Io(format!("{}: {e}", p.display())))?;
        set(&p, CA_UID, CA_UID, Some(0o700))?;
    }
    set(&dir.join("cluster"), CA_UID, 0, Some(0o775))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_seccomp_profile_allows_bpf_with_cap_bpf_and_keeps_the_rest() {
        let default = r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "args": [], "includes": {}, "excludes": {}},
            {"names": ["bpf", "perf_event_open", "setns"], "action": "SCMP_ACT_ALLOW", "args": [], "includes": {"caps": ["CAP_SYS_ADMIN"]}, "excludes": {}},
            {"names": ["bpf", "perf_event_open", "setns"], "action": "SCMP_ACT_ERRNO", "args": [], "includes": {}, "excludes": {"caps": ["CAP_SYS_ADMIN"]}, "errnoRet": 1}]}"#;
        let p: serde_json::Value =
            serde_json::from_str(&node_seccomp_profile(default).unwrap()).unwrap();
        let rules = |name: &str| -> Vec<String> {
            p["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["names"].as_array().unwrap().iter().any(|n| n == name))
                .map(|c| {
                    format!(
                        "{} +{} -{}",
                        c["action"], c["includes"]["caps"], c["excludes"]["caps"]
                    )
                })
                .collect()
        };
        assert_eq!(
            rules("bpf"),
            [
                r#""SCMP_ACT_ALLOW" +["CAP_SYS_ADMIN"] -null"#,
                r#""SCMP_ACT_ALLOW" +["CAP_BPF"] -null"#,
                r#""SCMP_ACT_ERRNO" +null -["CAP_SYS_ADMIN","CAP_BPF"]"#
            ]
        );
        assert_eq!(rules("perf_event_open").len(), 3);
        // setns stays CAP_SYS_ADMIN only; the rest is untouched.
        assert_eq!(rules("setns").len(), 2);
        assert_eq!(rules("read"), [r#""SCMP_ACT_ALLOW" +null -null"#]);
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
    }

    #[test]
    fn node_containers_get_the_charts_capabilities_and_nothing_privileged() {
        let a = node_args(
            "identityd/identityd:0.1.0",
            2,
            Path::new("/lab"),
            Path::new("/lab/n2/node.yaml"),
        );
        let s = a.join(" ");
        assert!(s.starts_with("run --detach --name idd-lab-n2 --network ns:/run/netns/idd-n2 --pid host --cap-drop ALL"), "{s}");
        let caps: Vec<&String> = a
            .iter()
            .enumerate()
            .filter(|(i, _)| *i > 0 && a[i - 1] == "--cap-add")
            .map(|(_, c)| c)
            .collect();
        assert_eq!(caps, NODE_CAPABILITIES);
        assert!(
            !s.contains("--privileged") && !s.contains("SYS_ADMIN"),
            "{s}"
        );
        assert!(
            s.ends_with("identityd/identityd:0.1.0 run --config /lab/n2/node.yaml"),
            "{s}"
        );
        assert!(
            s.contains("--security-opt seccomp=/lab/seccomp-node.json"),
            "{s}"
        );
        let ca = ca_args("img", Path::new("/lab"), Path::new("/lab/ca.yaml")).join(" ");
        assert!(
            ca.contains("--user 65532:65532") && ca.contains("--cap-drop ALL"),
            "{ca}"
        );
        assert!(!ca.contains("--cap-add"), "{ca}");
    }
}
