//! The lab end to end, as a user runs it: one `identityd lab up` (3 nodes, WireGuard, the strict
//! classifier, Envoys, the CA) for the whole binary, then one named trial per capability, run
//! one at a time in this order (later trials change the lab: kill daemons, rotate keys, turn
//! strict mode off), and `lab down` last. A failure names the capability that broke.
//!
//! `harness = false` with libtest-mimic: nextest runs every test in its own process, which would
//! mean one lab per trial, so `make test` runs this binary with `cargo test` and excludes it
//! from nextest.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};

#[path = "lab_e2e/netpol.rs"]
mod netpol;

const BIN: &str = env!("CARGO_BIN_EXE_identityd");

/// The one lab of this binary: its directory, what `lab up` printed, and daemons the trials
/// started themselves (waited for after `lab down`).
struct Lab {
    dir: PathBuf,
    stdout: String,
    children: Mutex<Vec<std::process::Child>>,
    _tmp: tempfile::TempDir,
}

impl Lab {
    fn adopt(&self, c: std::process::Child) {
        self.children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(c);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.dir.join("lab.json").exists() {
            let _ = Command::new(BIN)
                .args(["lab", "down", "--dir"])
                .arg(&self.dir)
                .status();
        }
    }
}

fn status(dir: &Path) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["lab", "status", "--json", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "lab status --json: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[allow(dead_code)] // Reason: kept for plain-HTTP checks of namespaces without mTLS.
fn get(from_pod_ns: &str, url: &str) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", from_pod_ns, BIN, "lab", "get", url])
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Polls `lab status --json` until `cond` holds; panics naming `what` (with the last status)
/// after `secs` seconds.
fn wait_for_status(dir: &Path, secs: u64, what: &str, cond: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let st = status(dir);
        if cond(&st) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not within {secs}s: {what}; status: {st}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `identityd audit --source DIR [--from-reports] --format json`: check id → result.
fn audit_results(dir: &Path, from_reports: bool) -> std::collections::BTreeMap<String, String> {
    let mut cmd = Command::new(BIN);
    cmd.args(["audit", "--format", "json", "--source"]).arg(dir);
    if from_reports {
        cmd.arg("--from-reports");
    }
    let out = cmd.output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "audit json: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let list = v["findings"]
        .as_array()
        .or(v.as_array())
        .cloned()
        .unwrap_or_default();
    list.iter()
        .map(|f| {
            (
                f["check"].as_str().unwrap_or_default().to_owned(),
                f["result"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Waits until the audit over the daemons' own reports gives `check` the result `want`.
fn wait_for_report_verdict(dir: &Path, check: &str, want: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = audit_results(dir, true);
        if r.get(check).map(String::as_str) == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not within {secs}s: {check} {want} from the node reports: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn get_host(from_pod_ns: &str, url: &str, host: &str) -> (bool, String) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            from_pod_ns,
            BIN,
            "lab",
            "get",
            url,
            "--host",
            host,
        ])
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Asks the CA, as node n1 (its own node SVID, over mTLS, as a compromised node would ask),
/// for the SVID of web's service account on pod `shop/<pod>`.
fn n1_asks_the_ca_for_web_on(
    dir: &Path,
    pod: &str,
) -> Result<(), identityd_certs::service::ServiceError> {
    node_asks_the_ca_for_web_on(dir, "n1", pod)
}

/// [`n1_asks_the_ca_for_web_on`] with `node`'s node SVID.
fn node_asks_the_ca_for_web_on(
    dir: &Path,
    node: &str,
    pod: &str,
) -> Result<(), identityd_certs::service::ServiceError> {
    use identityd_certs::service::CaClient;
    use identityd_certs::{Bundle, SpiffeId, Svid, TrustDomain};
    let td = TrustDomain::new("cluster.local").unwrap();
    let bundle = Bundle::from_pem(
        td,
        &std::fs::read_to_string(dir.join("ca/bundle.pem")).unwrap(),
    )
    .unwrap();
    let n1 = Svid::read_from_dir(&dir.join(format!("{node}/state/node-svid"))).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = CaClient::connect_mtls(identityd::lab::CA_LISTEN, &n1, &bundle)
            .await
            .unwrap();
        let web = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web").unwrap();
        client
            .sign_workload(&web, "shop", pod, Duration::from_secs(600))
            .await
            .map(|_| ())
    })
}

/// A node asking the CA for the SVID of a pod scheduled on another node is refused.
fn node_authorization_is_enforced(dir: &Path) {
    let own = n1_asks_the_ca_for_web_on(dir, "web-1");
    assert!(
        own.is_ok(),
        "n1 may get the SVID of its own pod web-1: {own:?}"
    );
    let err = n1_asks_the_ca_for_web_on(dir, "web-2").unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::PermissionDenied), "{err}");
    assert!(err.to_string().contains("web-2"), "{err}");
}

/// Runs `identityd audit --source` in every format; with `failing = None` it must pass, else it
/// must exit non-zero and name the check in each format (JUnit read by junitparser, SARIF
/// results carrying the rule id).
fn assert_audit(dir: &Path, extra: &[&str], failing: Option<&str>) {
    for format in ["text", "json", "junit", "sarif", "markdown"] {
        let out = Command::new(BIN)
            .args(["audit", "--format", format])
            .args(extra)
            .arg("--source")
            .arg(dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        match failing {
            None => assert!(
                out.status.success(),
                "audit ({format}) should pass:\n{text}"
            ),
            Some(check) => {
                assert!(
                    !out.status.success(),
                    "audit ({format}) should fail on {check}:\n{text}"
                );
                assert!(
                    text.contains(check),
                    "audit ({format}) names {check}:\n{text}"
                );
            }
        }
        if format == "junit" {
            let file = dir.join("audit-junit.xml");
            std::fs::write(&file, &text).unwrap();
            let cases = identityd_tests::reports::junit_cases(&file);
            let parsed: String = cases.iter().map(|(r, n)| format!("{r} {n}\n")).collect();
            assert!(
                parsed.lines().count() >= 8,
                "one testcase per check:\n{parsed}"
            );
            match failing {
                None => assert!(!parsed.contains("FAILED"), "{parsed}"),
                Some(check) => assert!(parsed.contains(&format!("FAILED {check}")), "{parsed}"),
            }
        }
        if format == "sarif" {
            // Microsoft's SARIF multitool validates the log against the SARIF 2.1.0 schema
            // (and its rules): no error-level result may come back.
            let file = dir.join("audit.sarif");
            let report = dir.join("audit-validation.sarif");
            std::fs::write(&file, &text).unwrap();
            let errors = identityd_tests::reports::sarif_errors(
                &identityd_tests::reports::sarif_validation(&file, &report),
            );
            assert!(errors.is_empty(), "SARIF validation errors: {errors:?}");
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["version"], "2.1.0");
            assert_eq!(v["runs"][0]["tool"]["driver"]["name"], "identityd");
            let results = v["runs"][0]["results"].as_array().unwrap();
            match failing {
                None => assert!(results.iter().all(|r| r["level"] != "error"), "{text}"),
                Some(check) => assert!(results.iter().any(|r| r["ruleId"] == check), "{text}"),
            }
        }
    }
}

/// The SARIF validation can fail: a log missing a required property is reported.
fn sarif_validation_catches_a_broken_log(dir: &Path) {
    let file = dir.join("broken.sarif");
    let report = dir.join("broken-validation.sarif");
    std::fs::write(&file, r#"{"version":"2.1.0","runs":[{"tool":{"driver":{"name":"x","version":"1"}},"results":[{"ruleId":"a","level":"error"}]}]}"#).unwrap();
    let _ = identityd_tests::reports::sarif_validation(&file, &report);
    let rep = std::fs::read_to_string(&report).unwrap();
    assert!(
        rep.contains("JSON1002"),
        "a missing required property is reported: {rep}"
    );
}

/// The Gateway's and the Ingress's listeners on every node: TLS verified against the lab's
/// bundle for the hostname identityd's CA issued the certificate for, the HTTPRoute's header
/// filter applied, the strict backend reached over mTLS with the gateway identity, and a name
/// the certificate does not carry refused by the client.
fn ingress_is_served_with_ca_issued_certificates(dir: &Path, stdout: &str) {
    assert_eq!(
        stdout
            .matches("Gateway shop/public https (web.shop.example)            OK")
            .count()
            + stdout
                .matches("Ingress shop/web-legacy https (legacy.shop.example)     OK")
                .count()
            + stdout
                .matches("Gateway shop/public http (web.shop.example)             OK")
                .count(),
        9,
        "every node serves the three ingress listeners:\n{stdout}"
    );
    let bundle = dir.join("ca/bundle.pem");
    let get = |url: &str, host: &str| {
        let o = Command::new(BIN)
            .args(["lab", "get", url, "--host", host, "--ca"])
            .arg(&bundle)
            .output()
            .unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    let (ok, body) = get("https://10.99.0.12:8443/", "web.shop.example");
    assert!(ok, "{body}");
    assert!(
        body.contains("x-ingress: identityd"),
        "HTTPRoute filter: {body}"
    );
    assert!(
        body.contains("URI=spiffe://cluster.local/identityd/gateway"),
        "the strict backend saw the gateway identity over mTLS: {body}"
    );
    let (ok, body) = get("https://10.99.0.12:8443/", "other.shop.example");
    assert!(
        !ok && body.contains("not valid for name"),
        "a name the CA did not issue for is refused by the client: {body}"
    );
    // The Ingress routes by path (/v2 → Service web-v2, whose only pod is web-3) and by host
    // (another host on its plaintext listener gets Envoy's 404).
    for _ in 0..5 {
        let (ok, body) = get("https://10.99.0.11:8444/v2/x", "legacy.shop.example");
        assert!(
            ok && body.contains("pod=web-3"),
            "/v2 goes to web-v2: {body}"
        );
    }
    let (ok, body) = get("http://10.99.0.11:8081/", "legacy.shop.example");
    assert!(
        ok,
        "the Ingress's plaintext listener serves its host: {body}"
    );
    let (ok, body) = get("http://10.99.0.11:8081/", "unknown.example");
    assert!(
        !ok && body.starts_with("404"),
        "no rule for this host: {body}"
    );

    // The controller writes Accepted conditions onto the objects.
    let cluster = dir.join("cluster");
    for f in [
        "httproute-shop-web-public.yaml",
        "httproute-shop-web-split.yaml",
        "gateway-shop-public.yaml",
        "trafficpolicy-shop-web-resilience.yaml",
    ] {
        let text = wait_file(&cluster.join(f), "reason: Accepted", 20);
        assert!(text.contains("status: \"True\""), "{f}:\n{text}");
    }
    // A route to a backend that does not exist: Accepted=False naming it, never pushed; the
    // last good config keeps serving the ingress.
    std::fs::write(
        cluster.join("httproute-shop-broken.yaml"),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: broken\n  namespace: shop\n\
         spec:\n  parentRefs:\n  - {name: public}\n  hostnames: [broken.shop.example]\n  rules:\n  - backendRefs: [{name: no-such-service, port: 80}]\n",
    )
    .unwrap();
    let text = wait_file(
        &cluster.join("httproute-shop-broken.yaml"),
        "reason: Invalid",
        20,
    );
    assert!(text.contains("no-such-service"), "{text}");
    assert!(
        text.contains("controllerName: identityd.io/gateway-controller"),
        "{text}"
    );
    wait_for_status(dir, 15, "nodes report the refused route", |st| {
        st.as_array().is_some_and(|ns| {
            ns.iter().all(|n| {
                n["problems"].as_array().is_some_and(|p| {
                    p.iter()
                        .any(|x| x.as_str().unwrap_or("").contains("no-such-service"))
                })
            })
        })
    });
    let (ok, body) = get("https://10.99.0.12:8443/", "web.shop.example");
    assert!(ok, "the last good config keeps serving: {body}");
    std::fs::remove_file(cluster.join("httproute-shop-broken.yaml")).unwrap();
    wait_for_status(dir, 15, "the refused route is gone", |st| {
        st.as_array().is_some_and(|ns| {
            ns.iter().all(|n| {
                !n["problems"].as_array().is_some_and(|p| {
                    p.iter()
                        .any(|x| x.as_str().unwrap_or("").contains("no-such-service"))
                })
            })
        })
    });
}

/// Waits until the KeyRotation in `file` shows `phase: <phase>`; returns the file.
fn wait_phase(file: &Path, phase: &str, secs: u64) -> String {
    wait_file(file, &format!("phase: {phase}"), secs)
}

/// Waits until `file` contains `want` (a status the controller writes back); returns it.
fn wait_file(file: &Path, want: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.contains(want) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never showed {want:?} in {secs}s:\n{text}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `kubectl apply -f keyrotation.yaml`, lab style: KeyRotation objects dropped into the
/// cluster folder move through their phases and get their status written back. WireGuard: every
/// node gets a new key and pods still reach each other across nodes; CA: the bundle holds the
/// new and the old root and the nodes pick it up; IPsec: Failed with a reason.
fn key_rotation_through_the_file_source(dir: &Path) {
    let keys = |st: &serde_json::Value| -> Vec<String> {
        st.as_array()
            .unwrap()
            .iter()
            .map(|n| n["public_key"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let before = keys(&status(dir));
    let cluster = dir.join("cluster");
    let write = |name: &str, body: &str| {
        let f = cluster.join(format!("keyrotation-{name}.yaml"));
        std::fs::write(
            &f,
            format!("apiVersion: identityd.io/v1alpha1\nkind: KeyRotation\nmetadata:\n  name: {name}\nspec:\n{body}"),
        )
        .unwrap();
        f
    };
    let wg = write("wg-e2e", "  target: wireguard\n");
    let text = wait_phase(&wg, "Completed", 30);
    assert!(text.contains("3 node(s) rotated: n1, n2, n3"), "{text}");
    let after = keys(&status(dir));
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(
            b, a,
            "every node has a new WireGuard key: {before:?} → {after:?}"
        );
    }
    // Peers learned the new keys: pod to pod across nodes works again (first packets may be
    // dropped while the tunnels re-handshake; never sent in clear).
    // A ping per node pair (pod to pod, through the tunnel), so every tunnel handshakes with
    // the new keys; then an mTLS request across nodes.
    for (from, to) in [
        ("idd-n1-client-1", "10.244.2.10"),
        ("idd-n1-client-1", "10.244.3.10"),
        ("idd-n2-client-2", "10.244.3.10"),
    ] {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !Command::new("ip")
            .args(["netns", "exec", from, "ping", "-c1", "-W1", to])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "after the rotation, {from} cannot reach {to} through the tunnel"
            );
        }
    }
    let (ok, body) = get_host("idd-n1-client-1", "http://10.244.2.10:8080/", "web.shop");
    assert!(ok, "mTLS across nodes after the rotation: {body}");

    let roots_in = |d: &Path| {
        std::fs::read_to_string(d.join("ca/bundle.pem"))
            .unwrap()
            .matches("BEGIN CERTIFICATE")
            .count()
    };
    // Earlier rollovers of this lab keep their old roots while their overlap lasts.
    let before = roots_in(dir);
    let ca = write("ca-e2e", "  target: ca\n  overlapWindow: 10m\n");
    let text = wait_phase(&ca, "Completed", 60);
    assert!(text.contains("reason: RootRolledOver"), "{text}");
    assert!(text.contains("step: Switched"), "{text}");
    let after = roots_in(dir);
    assert_eq!(after, before + 1, "the new root beside the old ones");
    wait_for_status(
        dir,
        30,
        "every node trusts every root of the bundle",
        |st| {
            st.as_array().is_some_and(|ns| {
                ns.iter().all(|n| {
                    n["bundle_roots"]
                        .as_array()
                        .is_some_and(|r| r.len() == after)
                })
            })
        },
    );

    let ipsec = write("ipsec-e2e", "  target: ipsec\n");
    let text = wait_phase(&ipsec, "Failed", 30);
    assert!(text.contains("reason: IpsecUnavailable"), "{text}");
}

fn capture_start(path: &Path) -> std::process::Child {
    let c = Command::new(identityd_tests::tools::tcpdump())
        .args(["-i", "idd-fabric", "-U", "-s", "0", "-w"])
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    c
}

/// (all packets, offending packets as tcpdump prints them)
fn capture_stop(mut c: std::process::Child, path: &Path) -> (usize, Vec<String>) {
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("kill")
        .args(["-INT", &c.id().to_string()])
        .status();
    let _ = c.wait();
    let count = |filter: &str| {
        let o = Command::new(identityd_tests::tools::tcpdump())
            .args(["-nn", "-r"])
            .arg(path)
            .arg(filter)
            .stderr(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    (count("").len(), count(identityd::lab::NOT_WIREGUARD_FILTER))
}

/// The node's tasks are independent: with the CA stalled (SIGSTOP: connections hang, the
/// worst case for a client), a new peer appearing in the cluster state is configured on every
/// node within 2 s and status keeps updating; when the CA returns, the identity wanted during
/// the outage is issued without a restart.
fn a_stalled_ca_delays_nothing_but_identities(dir: &Path) {
    let pgrep = Command::new("pgrep")
        .args(["-f", &format!("{}/ca.yaml", dir.display())])
        .output()
        .unwrap();
    let ca_pid = String::from_utf8_lossy(&pgrep.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("the CA role is running"))
        .to_owned();
    struct Resume(String);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = Command::new("kill").args(["-CONT", &self.0]).status();
        }
    }
    let _ = Command::new("kill").args(["-STOP", &ca_pid]).status();
    let resume = Resume(ca_pid);
    // A pod whose identity nobody holds yet: n1 must ask the stalled CA for it.
    std::fs::write(
        dir.join("cluster/pod-outage.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: outage\n  namespace: shop\nspec:\n  \
         nodeName: n1\n  serviceAccountName: outage\nstatus:\n  podIP: 10.244.1.99\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let before: Vec<u64> = status(dir)
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["cluster_version"].as_u64().unwrap_or(0))
        .collect();
    let key = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
    // The control plane allocates n9 its pod CIDR (a Node object), then n9 publishes.
    std::fs::write(dir.join(NODE_N9), node_object("n9", "10.244.9.0/24")).unwrap();
    let added = Instant::now();
    // Signed by n9's node identity (the lab's CA issues it: reading the CA's files needs no
    // CA process); peers verify against the trust bundle they hold, without the CA.
    write_signed_node(
        dir,
        &dir.join("cluster/identitydnode-n9.yaml"),
        &format!(
            "apiVersion: identityd.io/v1alpha1\nkind: IdentitydNode\nmetadata:\n  name: n9\nspec:\n  \
             podCIDRs: [10.244.9.0/24]\n  underlayAddresses: [10.99.0.19]\n  wireguard:\n    \
             publicKey: {key}\n    port: 51871\n"
        ),
        "n9",
    );
    let configured = |i: usize| {
        std::fs::read_to_string(dir.join(format!("n{i}/run/wg.json")))
            .is_ok_and(|j| j.contains(key))
    };
    while !(1..=3).all(configured) {
        assert!(
            added.elapsed() < Duration::from_secs(2),
            "with the CA stalled, the new peer must reach every node's WireGuard config within 2s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = added.elapsed();
    wait_for_status(dir, 3, "status keeps updating with the CA stalled", |st| {
        st.as_array().unwrap().iter().zip(&before).all(|(n, b)| {
            n["cluster_version"].as_u64().unwrap_or(0) > *b
                && n["peers"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|x| x["name"] == "n9"))
        })
    });
    eprintln!("new peer configured on all nodes {took:?} after it appeared, CA stalled");
    let st = status(dir);
    assert!(
        !st[0]["svids"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s[0] == "spiffe://cluster.local/ns/shop/sa/outage"),
        "no SVID can be issued while the CA is stalled: {}",
        st[0]
    );
    drop(resume);
    wait_for_status(
        dir,
        30,
        "the identity wanted during the outage is issued",
        |st| {
            st[0]["svids"].as_array().is_some_and(|v| {
                v.iter()
                    .any(|s| s[0] == "spiffe://cluster.local/ns/shop/sa/outage")
            })
        },
    );
    std::fs::remove_file(dir.join("cluster/identitydnode-n9.yaml")).unwrap();
    std::fs::remove_file(dir.join(NODE_N9)).unwrap();
    std::fs::remove_file(dir.join("cluster/pod-outage.yaml")).unwrap();
    wait_for_status(dir, 10, "n9 and the outage pod gone", |st| {
        st.as_array().unwrap().iter().all(|n| {
            !n["peers"]
                .as_array()
                .is_some_and(|p| p.iter().any(|x| x["name"] == "n9"))
        }) && !st[0]["svids"].as_array().is_some_and(|v| {
            v.iter()
                .any(|s| s[0] == "spiffe://cluster.local/ns/shop/sa/outage")
        })
    });
}

fn lab_up_leaves_no_plaintext_on_the_underlay(lab: &Lab) {
    let stdout = &lab.stdout;
    assert!(
        stdout.contains(" 0 neither WireGuard (UDP/51871) nor TLS to the CA"),
        "no plaintext on the underlay:\n{stdout}"
    );
    assert!(stdout.contains("marker found in clear: no"), "{stdout}");
}

/// Node encryption (`encryption.nodeEncryption`, on in the lab): a pod's request to a remote
/// node's own address (n2's metrics port) and the node's own request to it (host network)
/// cross the underlay only inside WireGuard. Control: the same request from the underlay host
/// (the root namespace, not a node) is in clear on the same capture.
fn a_remote_node_address_is_reached_only_through_wireguard(lab: &Lab) {
    let fetch = |ns: Option<&str>, marker: &str| {
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, BIN]);
                c
            }
            None => Command::new(BIN),
        };
        let out = cmd
            .args([
                "lab",
                "get",
                "http://10.99.0.12:9962/metrics",
                "--payload",
                marker,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "GET n2's metrics from {ns:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let pcap = lab.dir.join("node-encryption.pcap");
    let cap = capture_start(&pcap);
    fetch(None, "IDD-NODE-ENC-CONTROL");
    fetch(Some("idd-n1-client-1"), "IDD-NODE-ENC-FROM-POD");
    fetch(Some("idd-n1"), "IDD-NODE-ENC-FROM-NODE");
    let _ = capture_stop(cap, &pcap);
    let dump = |filter: &str| {
        let out = Command::new(identityd_tests::tools::tcpdump())
            .args(["-nn", "-A", "-r"])
            .arg(&pcap)
            .arg(filter)
            .stderr(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let all = dump("");
    assert!(
        all.contains("IDD-NODE-ENC-CONTROL"),
        "the capture sees the underlay host's request in clear (control)"
    );
    for m in ["IDD-NODE-ENC-FROM-POD", "IDD-NODE-ENC-FROM-NODE"] {
        assert!(!all.contains(m), "{m} crossed the underlay in clear");
    }
    let clear = dump("tcp port 9962 and host 10.99.0.11");
    assert!(
        clear.trim().is_empty(),
        "n1 reached n2's metrics port outside the tunnel:\n{clear}"
    );
}

fn every_request_goes_over_mtls_with_the_callers_spiffe_id(lab: &Lab) {
    let stdout = &lab.stdout;
    assert_eq!(
        stdout.matches("across nodes  OK").count(),
        6,
        "all cross-node requests succeed:\n{stdout}"
    );
    assert!(
        stdout
            .matches("server saw caller spiffe://cluster.local/ns/front/sa/client")
            .count()
            == 9,
        "every request, across nodes and on the same node, went over mTLS and the server saw the caller's SPIFFE ID:\n{stdout}"
    );
}

fn an_identity_the_authorization_policy_does_not_allow_gets_403(lab: &Lab) {
    assert!(
        lab.stdout.contains("→ web.shop: HTTP 403"),
        "an identity the AuthorizationPolicy does not allow gets 403:\n{}",
        lab.stdout
    );
}

fn the_httproute_splits_traffic_90_10(lab: &Lab) {
    let stdout = &lab.stdout;
    let split = stdout
        .lines()
        .find(|l| l.starts_with("traffic split:"))
        .unwrap_or_else(|| panic!("no split line:\n{stdout}"));
    assert!(
        split.contains("of 100 requests"),
        "all split requests succeeded: {split}"
    );
    let to_v2: u32 = split
        .split(" and ")
        .nth(1)
        .and_then(|x| x.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        (1..=25).contains(&to_v2),
        "the 90/10 HTTPRoute sends some but few requests to v2: {split}"
    );
}

/// Strict mTLS on the server side: plaintext TCP that reaches a strict pod's node through the
/// tunnel without going through the node's Envoy (here: from n1's own namespace, which the
/// classifier does not proxy) is dropped by the pod's ingress strict.
/// Datagrams with `marker` from client-1 to `dst`:9999, with n1 given a CNI-style route for
/// `via_cidr` over the underlay to n3 (removed again, also on panic); returns how many of the
/// markers the underlay capture saw in clear.
fn udp_over_a_cni_route(lab: &Lab, via_cidr: &str, dst: &str, marker: &str) -> usize {
    struct Unroute(String);
    impl Drop for Unroute {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["-n", "idd-n1", "route", "del", &self.0])
                .status();
        }
    }
    let pcap = lab.dir.join(format!("cni-route-{marker}.pcap"));
    let cap = capture_start(&pcap);
    let ok = Command::new("ip")
        .args([
            "-n",
            "idd-n1",
            "route",
            "add",
            via_cidr,
            "via",
            "10.99.0.13",
            "dev",
            "eth0",
        ])
        .status()
        .unwrap();
    assert!(ok.success(), "ip route add {via_cidr}");
    let _unroute = Unroute(via_cidr.to_owned());
    for _ in 0..5 {
        let _ = Command::new("ip")
            .args(["netns", "exec", "idd-n1-client-1", "bash", "-c"])
            .arg(format!("echo {marker} > /dev/udp/{dst}/9999"))
            .status();
    }
    let _ = capture_stop(cap, &pcap);
    let out = Command::new(identityd_tests::tools::tcpdump())
        .args(["-nn", "-A", "-r"])
        .arg(&pcap)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).matches(marker).count()
}

/// Strict mode knows the cluster CIDRs for the daemon's whole life, not only at load: pod
/// traffic to a pod CIDR no node has published (a node that never joined, or left) is dropped
/// and counted, even where another route (a CNI's, over the underlay) would carry it in clear.
/// Before, the first datapath round removed the cluster CIDR's "no path" entry and such
/// traffic left in clear over that route.
fn an_unpublished_pod_cidr_is_no_path_even_over_a_cni_route(lab: &Lab) {
    // Control: outside the cluster CIDRs the same route carries it, and the capture sees it.
    let seen = udp_over_a_cni_route(lab, "10.250.7.0/24", "10.250.7.10", "IDD-CNI-CONTROL");
    assert_eq!(
        seen, 5,
        "the capture sees traffic a CNI route carries in clear"
    );
    let seen = udp_over_a_cni_route(lab, "10.244.7.0/24", "10.244.7.10", "IDD-CNI-LEAK");
    assert_eq!(seen, 0, "nothing to the unpublished 10.244.7.0/24 in clear");
    let stdout = identityd_ok(&["observe", "--json", "--dir"], &lab.dir);
    let flows = String::from_utf8_lossy(&stdout);
    assert!(
        flows
            .lines()
            .any(|l| l.contains("\"dst\":\"10.244.7.10:9999\"")
                && l.contains("\"verdict\":\"dropped\"")
                && l.contains("no encrypted path")),
        "dropped and counted as no path on n1:\n{}",
        flows.lines().rev().take(8).collect::<Vec<_>>().join("\n")
    );
}

fn plaintext_through_the_tunnel_to_a_strict_pod_is_dropped(_lab: &Lab) {
    let (ok, out) = get_host("idd-n1", "http://10.244.2.10:8080/", "web.shop");
    assert!(
        !ok,
        "plaintext to a strict pod bypassing mTLS must not get through: {out}"
    );
}

/// A TCP line exchange from a pod (`identityd lab tcp`): the lines read, or why it failed.
fn tcp(
    from_pod_ns: &str,
    addr: &str,
    greeting: bool,
    send: &[&str],
) -> Result<Vec<String>, String> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", from_pod_ns, BIN, "lab", "tcp", addr]);
    if greeting {
        cmd.arg("--greeting");
    }
    for l in send {
        cmd.args(["--send", l]);
    }
    let out = cmd.output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Polls `f` every 300 ms until it holds (true) or `secs` pass (false).
fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// mTLS for any TCP: a client-first binary-ish protocol (Redis-like `PING`) and a server-first
/// one (an SMTP-like greeting, which sends nothing the proxy could detect a protocol from)
/// between strict pods, across nodes and on one node, through the node Envoys' L4 path
/// (before, every mesh listener was HTTP and answered `400 Bad Request`); the underlay
/// carries nothing but WireGuard; an AuthorizationPolicy denying the caller's identity on the
/// TCP service closes the connection, counted by the server node's Envoy, and removing it
/// lets the caller in again.
fn any_tcp_between_strict_pods_is_mtls_and_authorized_by_identity(lab: &Lab) {
    let marker = identityd::lab::PAYLOAD_MARKER;
    let pcap = lab.dir.join("tcp-l4.pcap");
    let cap = capture_start(&pcap);
    for (to, pod) in [("10.244.2.10", "web-2"), ("10.244.1.10", "web-1")] {
        let kv = tcp(
            "idd-n1-client-1",
            &format!("{to}:6379"),
            false,
            &[&format!("PING {marker}")],
        )
        .unwrap_or_else(|e| panic!("client-first TCP to {pod}: {e}"));
        assert!(
            kv[0].starts_with(&format!("+PONG pod={pod} ")) && kv[0].ends_with(marker),
            "the kv server answers through the mesh: {kv:?}"
        );
        let started = Instant::now();
        let mail = tcp(
            "idd-n1-client-1",
            &format!("{to}:2525"),
            true,
            &[&format!("HELO {marker}"), "QUIT"],
        )
        .unwrap_or_else(|e| panic!("server-first TCP to {pod}: {e}"));
        assert!(
            mail[0].starts_with(&format!("220 pod={pod} "))
                && mail[1] == format!("250 HELO {marker}")
                && mail[2] == "221 bye",
            "the greeter speaks first and the exchange completes: {mail:?}"
        );
        eprintln!(
            "server-first exchange with {pod}: {} ms (protocol detection waits {} ms)",
            started.elapsed().as_millis(),
            identityd_envoy::translate::DETECTION_TIMEOUT_MS
        );
    }
    let (packets, offending) = capture_stop(cap, &pcap);
    assert!(packets > 0, "the capture saw the exchanges");
    assert!(
        offending.is_empty(),
        "only WireGuard on the underlay: {offending:?}"
    );
    let raw = std::fs::read(&pcap).unwrap();
    assert!(
        !raw.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "the marker never crosses the underlay in clear"
    );
    // Identity-based authorization at L4: deny front/client on the kv Service.
    let policy = lab
        .dir
        .join("cluster/authorizationpolicy-shop-kv-deny.yaml");
    std::fs::write(
        &policy,
        "apiVersion: identityd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: kv-deny\n  namespace: shop\n\
         spec:\n  targetRef: {kind: Service, name: kv}\n  deny:\n  - from: {serviceAccounts: [front/client]}\n",
    )
    .unwrap();
    let refused = eventually(15, || {
        tcp("idd-n1-client-1", "10.244.2.10:6379", false, &["PING"]).is_err()
    });
    let err = tcp("idd-n1-client-1", "10.244.2.10:6379", false, &["PING"]);
    std::fs::remove_file(&policy).unwrap();
    assert!(
        refused,
        "a DENY on the caller's identity closes the TCP connection: {err:?}"
    );
    let stats = envoy_admin_get(&lab.dir, "n2", "/stats?filter=rbac");
    assert!(
        stats.lines().any(|l| l.contains("inbound_tcp_6379")
            && l.contains("rbac.denied")
            && !l.trim_end().ends_with(": 0")),
        "n2's Envoy counts the denied connection:\n{stats}"
    );
    assert!(
        eventually(15, || {
            tcp("idd-n1-client-1", "10.244.2.10:6379", false, &["PING"]).is_ok()
        }),
        "with the policy removed the caller gets in again"
    );
}

/// `GET path` on node `node`'s Envoy admin API, through its unix socket (as root).
fn envoy_admin_get(dir: &Path, node: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let sock = identityd::daemon::config::envoy_admin_socket(&dir.join(format!("{node}/run")));
    let mut s = std::os::unix::net::UnixStream::connect(&sock)
        .unwrap_or_else(|e| panic!("{}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// As uid/gid 65534 in `netns`: python connects to the unix socket `sock` (`Ok`) or to TCP
/// `127.0.0.1:15000`, Envoy's old admin port; the error text otherwise.
fn connect_as_nobody(netns: &str, target: &str) -> Result<(), String> {
    let code = if target.starts_with('/') {
        "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])"
    } else {
        "import socket\nsocket.create_connection(('127.0.0.1', 15000), timeout=3)"
    };
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
        ])
        // The system python (scripts/bootstrap installs it): one under /root is not
        // readable by uid 65534.
        .args(["--clear-groups", "/usr/bin/python3", "-c", code, target])
        .output()
        .expect("ip, setpriv (util-linux) and /usr/bin/python3 must be installed");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Envoy's admin API (it can change Envoy's state and dump its secrets' metadata) listens on a
/// 0600 unix socket in the daemon's 0700 run dir, not on TCP: root gets `/ready`; another user
/// in the node's network namespace reaches neither the socket nor a TCP admin port.
fn envoy_admin_is_reachable_only_by_root_through_its_socket(lab: &Lab) {
    let ready = envoy_admin_get(&lab.dir, "n2", "/ready");
    assert!(
        ready.contains("LIVE"),
        "root asks the admin socket: {ready}"
    );
    let sock = identityd::daemon::config::envoy_admin_socket(&lab.dir.join("n2/run"));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", sock.display());
    }
    // Control: the same probe reaches a socket that lets everyone in.
    let open = std::env::temp_dir().join(format!("idd-admin-probe-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&open);
    let listener = std::os::unix::net::UnixListener::bind(&open).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let control = connect_as_nobody("idd-n2", open.to_str().unwrap());
    drop(listener);
    let _ = std::fs::remove_file(&open);
    assert!(
        control.is_ok(),
        "the probe works on an open socket: {control:?}"
    );
    let denied = connect_as_nobody("idd-n2", sock.to_str().unwrap()).unwrap_err();
    assert!(denied.contains("PermissionError"), "{denied}");
    let tcp = connect_as_nobody("idd-n2", "tcp").unwrap_err();
    assert!(
        tcp.contains("ConnectionRefusedError"),
        "no admin on TCP: {tcp}"
    );
}

/// Mode changes never break traffic: through all nine (server, client) pairs of strict,
/// permissive and disabled and back the same way (18 switches), new HTTP requests and TCP
/// exchanges across nodes, polled during each switch, take the path the README's table says
/// (seen by the server: the caller's own address when direct, a node address through Envoy,
/// the caller's SPIFFE ID in XFCC over mTLS) or, for a disabled client to a strict server, are
/// refused, within a bounded convergence time; after it every new connection does. Before, n2
/// kept an inbound drop after strict → disabled and cross-node TCP timed out.
fn mode_changes_keep_http_and_tcp_working(lab: &Lab) {
    let files = ["shop", "front"].map(|n| lab.dir.join(format!("cluster/namespace-{n}.yaml")));
    let strict: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert!(
        strict
            .iter()
            .all(|t| t.contains("identityd.io/mtls: strict"))
    );
    let set = |shop: &str, front: &str| {
        for (f, (t, m)) in files.iter().zip(strict.iter().zip([shop, front])) {
            std::fs::write(f, t.replace("mtls: strict", &format!("mtls: {m}"))).unwrap();
        }
    };
    // The path the server sees (or that the request is refused).
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Path {
        Direct,
        Passthrough,
        Mtls,
        Refused,
    }
    // One new HTTP request and one new TCP exchange: the path each took, and what failed.
    let observe = || -> ((Path, Path), String) {
        let path_of = |peer_line: &str, xfcc: bool| {
            if peer_line.contains("peer=10.244.1.11:") {
                Path::Direct
            } else if xfcc
                || (!peer_line.contains("peer=10.244.1.") && peer_line.contains("peer=10.244."))
            {
                Path::Mtls
            } else {
                Path::Passthrough
            }
        };
        let mut errors = String::new();
        let (ok, http) = get_host("idd-n1-client-1", "http://10.244.2.10:8080/", "web.shop");
        // HTTP is routed by Host on the L7 path: any web pod may answer.
        let http_path = if ok && http.contains("pod=web-") {
            path_of(
                &http,
                http.contains("URI=spiffe://cluster.local/ns/front/sa/client"),
            )
        } else {
            errors.push_str(&format!("http: {http} "));
            Path::Refused
        };
        let tcp_path = match tcp("idd-n1-client-1", "10.244.2.10:6379", false, &["PING"]) {
            Ok(kv) if !kv.is_empty() => path_of(&kv[0], false),
            Ok(_) => Path::Refused,
            Err(e) => {
                errors.push_str(&format!("tcp: {e}"));
                Path::Refused
            }
        };
        ((http_path, tcp_path), errors)
    };
    // (shop = server, front = client, the path the README's table says): all nine pairs from
    // strict/strict, then back the same way. Every step is a switch with new connections
    // polled during it.
    let forward = [
        ("strict", "permissive", Path::Mtls),
        ("permissive", "permissive", Path::Mtls),
        ("disabled", "permissive", Path::Passthrough),
        ("disabled", "strict", Path::Passthrough),
        ("permissive", "strict", Path::Mtls),
        ("permissive", "disabled", Path::Direct),
        ("disabled", "disabled", Path::Direct),
        ("strict", "disabled", Path::Refused),
        ("strict", "strict", Path::Mtls),
    ];
    let back: Vec<_> = forward
        .iter()
        .rev()
        .skip(1)
        .copied()
        .chain([("strict", "strict", Path::Mtls)])
        .collect();
    let mut failures = Vec::new();
    let mut converged_ms = Vec::new();
    for (shop, front, want) in forward.iter().copied().chain(back) {
        set(shop, front);
        let started = Instant::now();
        // Converged: three new connections in a row take the new path (both nodes have
        // applied every part of the change: classifier maps, routing, Envoy), within 20 s.
        let mut in_a_row = 0;
        let ok = eventually(20, || {
            in_a_row = if observe().0 == (want, want) {
                in_a_row + 1
            } else {
                0
            };
            in_a_row >= if want == Path::Refused { 1 } else { 3 }
        });
        let took = started.elapsed().as_millis();
        let (seen, errors) = observe();
        eprintln!(
            "shop={shop} front={front}: {want:?} {} after {took} ms (last: {seen:?} {errors})",
            if ok { "reached" } else { "NOT reached" },
        );
        if !ok {
            failures.push(format!(
                "shop={shop} front={front}: want {want:?}, saw {seen:?} {errors}"
            ));
            continue;
        }
        converged_ms.push(took);
        // Converged means every new connection works (or, where the modes forbid it, every
        // one is refused), not one in a few: before, a mesh pod's SYN-ACK to a caller that
        // came in directly went to the node's Envoy, which reset it (permissive server,
        // disabled client).
        let checks = if want == Path::Refused { 2 } else { 6 };
        let broken: Vec<String> = (0..checks)
            .filter_map(|_| match observe() {
                (p, _) if p == (want, want) => None,
                other => Some(format!("{other:?}")),
            })
            .collect();
        if !broken.is_empty() {
            failures.push(format!(
                "shop={shop} front={front}: {} of {checks} new connections after convergence failed: {broken:?}",
                broken.len()
            ));
        }
    }
    converged_ms.sort_unstable();
    eprintln!(
        "{} switches converged; median {} ms, max {} ms",
        converged_ms.len(),
        converged_ms
            .get(converged_ms.len() / 2)
            .copied()
            .unwrap_or(0),
        converged_ms.last().copied().unwrap_or(0)
    );
    for (f, t) in files.iter().zip(&strict) {
        std::fs::write(f, t).unwrap();
    }
    assert!(
        failures.is_empty(),
        "mode pairs where traffic broke or took the wrong path: {failures:#?}"
    );
    // Back to strict everywhere: SVIDs, inbound listeners and ingress strict in place again
    // (the audit passes), so the trials after this one see the lab as it was.
    assert!(
        eventually(30, || Command::new(BIN)
            .args(["audit", "--source"])
            .arg(&lab.dir)
            .output()
            .is_ok_and(|o| o.status.success())),
        "the lab converges back to a passing audit after the mode changes"
    );
}

/// Flow visibility: the classifiers' events, resolved to pods and identities.
fn observe_shows_flows_with_their_path_and_the_callers_identity(lab: &Lab) {
    let observe = || {
        let out = Command::new(BIN)
            .args(["observe", "--json", "--dir"])
            .arg(&lab.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "observe: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The earlier trials' requests (this read also drains the ring buffers).
    let flows = observe();
    assert!(
        flows.lines().any(|l| l.contains("\"verdict\":\"mtls\"")
            && l.contains("\"src_identity\":\"spiffe://cluster.local/ns/front/sa/client\"")),
        "mTLS flows with the caller's identity:\n{}",
        flows.lines().take(5).collect::<Vec<_>>().join("\n")
    );
    // ICMP between pods of different nodes takes the WireGuard path (not Envoy).
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            "idd-n1-client-1",
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
        ])
        .arg("10.244.2.10")
        .output()
        .unwrap();
    assert!(ping.status.success(), "ping client-1 → web-2: {ping:?}");
    let flows = observe();
    assert!(
        flows
            .lines()
            .any(|l| l.contains("\"verdict\":\"wireguard\"")),
        "WireGuard flows (the pings):\n{}",
        flows.lines().take(5).collect::<Vec<_>>().join("\n")
    );
}

/// The audit agrees: live on the lab, static on its manifests.
fn the_live_and_static_audits_pass_on_a_healthy_lab(lab: &Lab) {
    let out = Command::new(BIN)
        .args(["audit", "--format", "junit", "--source"])
        .arg(&lab.dir)
        .output()
        .unwrap();
    let junit = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && junit.contains("<testsuite") && !junit.contains("<failure"),
        "live audit:\n{junit}"
    );
    // What each daemon wrote as its IdentitydNodeReport gives the same verdicts as asking the
    // daemons (only how the nodes were reached differs).
    let live = audit_results(&lab.dir, false);
    let reported = audit_results(&lab.dir, true);
    assert_eq!(
        reported.get("nodes.reporting").map(String::as_str),
        Some("pass"),
        "{reported:?}"
    );
    let strip = |m: &std::collections::BTreeMap<String, String>| {
        m.iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "daemons.reachable" | "nodes.reporting" | "nodes.published"
                )
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&reported), strip(&live), "reports vs daemons");
    assert!(
        reported.values().all(|v| v != "fail")
            && reported.values().filter(|v| *v == "pass").count() >= 10,
        "{reported:?}"
    );
    let out = Command::new(BIN)
        .args(["audit", "--require-mtls", "shop,front", "--manifests"])
        .arg(lab.dir.join("cluster"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "static audit:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn every_node_is_strict_with_a_wireguard_path_to_every_peer(lab: &Lab) {
    let st = status(&lab.dir);
    assert_eq!(st.as_array().map(Vec::len), Some(3), "{st}");
    for n in st.as_array().unwrap() {
        assert_eq!(n["strict_mode"], true);
        for p in n["peers"].as_array().unwrap() {
            assert_eq!(p["path"], "wireguard", "{n}");
        }
        assert_eq!(
            n["ingress_strict_in_place"], true,
            "ingress strict guards every pod of {}: {}",
            n["node"], n["ingress_strict_problem"]
        );
        let components = n["components"].as_array().unwrap();
        assert!(
            components.iter().all(|c| c["ok"] == true),
            "every task of the node is healthy: {components:?}"
        );
    }
}

fn a_broken_yaml_file_mid_run_is_reported_and_ignored(lab: &Lab) {
    let broken = lab.dir.join("cluster/broken.yaml");
    std::fs::write(
        &broken,
        "apiVersion: v1\nkind: Pod\nmetadata: [this is not a map\n",
    )
    .unwrap();
    wait_for_status(&lab.dir, 10, "broken.yaml reported", |st| {
        st[0]["problems"].as_array().is_some_and(|p| {
            p.iter()
                .any(|x| x.as_str().unwrap_or("").contains("broken.yaml"))
        })
    });
    let (ok, body) = get_host("idd-n1-client-1", "http://10.244.2.10:8080/", "web.shop");
    std::fs::remove_file(&broken).unwrap();
    assert!(
        ok,
        "traffic still works with a broken file in the cluster dir: {body}"
    );
}

/// `kill -9` of a node daemon under traffic: no plaintext, same key after restart, Envoy and
/// SVIDs re-adopted.
fn a_killed_node_daemon_leaks_nothing_and_comes_back_with_its_key(lab: &Lab) {
    let keys: Vec<String> = status(&lab.dir)
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["public_key"].as_str().unwrap().to_owned())
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let pcap = tmp.path().join("restart.pcap");
    let cap = capture_start(&pcap);
    // n2's daemon, found by its config path (lab.json's pids also hold the CA and workloads).
    let n2_pattern = format!("{}/n2/node.yaml", lab.dir.display());
    let pgrep = Command::new("pgrep")
        .args(["-f", &n2_pattern])
        .output()
        .unwrap();
    let n2_pids: Vec<String> = String::from_utf8_lossy(&pgrep.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert!(!n2_pids.is_empty(), "n2's daemon is running");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let traffic = std::thread::spawn(move || {
        let mut ok = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            if get_host("idd-n1-client-1", "http://10.244.2.10:8080/", "web.shop").0 {
                ok += 1;
            }
        }
        ok
    });
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("pkill")
        .args(["-KILL", "-f", &n2_pattern])
        .status();
    std::thread::sleep(Duration::from_secs(1));
    let (ok, body) = get_host("idd-n1-client-1", "http://10.244.2.10:8080/", "web.shop");
    assert!(ok, "the tunnel outlives the killed daemon: {body}");
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(lab.dir.join("n2/daemon-restart.log")).unwrap();
    lab.adopt(
        Command::new("nsenter")
            .args(["--net=/run/netns/idd-n2", "--", BIN, "run", "--config"])
            .arg(lab.dir.join("n2/node.yaml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    wait_for_status(
        &lab.dir,
        15,
        "restarted n2 daemon back with its key",
        |st| {
            st[1]["public_key"].as_str() == Some(keys[1].as_str())
                && st[1]["peers"].as_array().is_some_and(|p| p.len() == 2)
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let ok = traffic.join().unwrap();
    assert!(ok > 0, "requests succeeded across the restart");
    let (total, plain) = capture_stop(cap, &pcap);
    let plain_lines = plain
        .iter()
        .take(12)
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    let plain = plain.len();
    assert!(total > 0, "the capture saw the traffic");
    assert_eq!(
        plain, 0,
        "no plaintext on the underlay during the daemon restart ({total} packets):\n{plain_lines}"
    );
    let (ok, body) = get_host("idd-n3-client-3", "http://10.244.2.10:8080/", "web.shop");
    assert!(ok, "after the restart: {body}");
    // The restarted daemon re-adopted its Envoy and holds its SVIDs again (the identity task
    // reconnects to the CA on its own; status reports the datapath before that).
    wait_for_status(&lab.dir, 15, "restarted n2 holds its SVIDs again", |st| {
        st[1]["svids"].as_array().map(Vec::len) == Some(3)
    });
    let st = status(&lab.dir);
    assert_eq!(
        st[1]["envoy_restarts"], 0,
        "the Envoy was adopted, not restarted: {}",
        st[1]
    );
    // client, web and the gateway identity of the ingress listeners.
    assert_eq!(
        st[1]["svids"].as_array().map(Vec::len),
        Some(3),
        "{}",
        st[1]
    );
    for _ in 0..6 {
        let (ok, body) = get_host("idd-n2-client-2", "http://10.244.1.10:8080/", "web.shop");
        assert!(
            ok && body.contains("URI=spiffe://cluster.local/ns/front/sa/client"),
            "mTLS from n2 after the restart: {body}"
        );
    }
}

/// A node daemon (re)started while the CA is unreachable (SIGSTOP: connections hang): from its
/// first second, plaintext into a strict pod is refused — from another node through the tunnel
/// and from the node itself; once the CA answers again, the daemon gets its identities back
/// without a restart and mTLS from its pods works.
fn a_daemon_restarted_while_the_ca_is_down_lets_no_plaintext_into_strict_pods(lab: &Lab) {
    restart_with_the_ca_down(lab, false);
}

/// The same after a simulated reboot of n2: its pinned BPF state (maps and program links)
/// is gone, and so are its WireGuard device and TUN. The fresh classifier refuses new TCP into
/// every local pod until the first plan (from the cluster state, not the CA) is in its maps,
/// and then refuses plaintext into strict pods: from the moment its guard is attached to the
/// pod's veth, no plaintext request gets an answer. (Before the daemon attaches anything,
/// nothing guards the pods: in Kubernetes the startup taint keeps new pods off the node.)
fn a_node_rebooted_while_the_ca_is_down_lets_no_plaintext_into_strict_pods(lab: &Lab) {
    restart_with_the_ca_down(lab, true);
}

/// Whether `idd_to_pod` is attached to n2's `p-web-2`: the daemon pins each tcx link it
/// attaches (`<pins>/v1/links/p-web-2-<ifindex>-to-pod`); the pin is what keeps a link of a
/// dead daemon attached, so with it gone the program is detached.
fn guard_attached_on_web_2() -> bool {
    std::fs::read_dir("/sys/fs/bpf/identityd/n2/v1/links").is_ok_and(|d| {
        d.filter_map(Result::ok).any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("p-web-2-") && n.ends_with("-to-pod")
        })
    })
}

fn restart_with_the_ca_down(lab: &Lab, reboot: bool) {
    // Before: the target answers over mTLS, so a refusal below is the guard, not a dead pod.
    let (ok, body) = get_host("idd-n1-client-1", "http://10.244.2.10:8080/", "web.shop");
    assert!(
        ok && body.contains("URI=spiffe://cluster.local/ns/front/sa/client"),
        "before: {body}"
    );
    let ca = String::from_utf8_lossy(
        &Command::new("pgrep")
            .args(["-f", &format!("{}/ca.yaml", lab.dir.display())])
            .output()
            .unwrap()
            .stdout,
    )
    .split_whitespace()
    .next()
    .expect("the CA role is running")
    .to_owned();
    struct Resume(String);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = Command::new("kill").args(["-CONT", &self.0]).status();
        }
    }
    let _ = Command::new("kill").args(["-STOP", &ca]).status();
    let resume = Resume(ca);
    let n2_pattern = format!("{}/n2/node.yaml", lab.dir.display());
    let _ = Command::new("pkill")
        .args(["-KILL", "-f", &n2_pattern])
        .status();
    std::thread::sleep(Duration::from_millis(300));
    if reboot {
        // What a reboot takes: the pinned maps and links (so the programs detach), the
        // WireGuard device and its TUN.
        assert!(guard_attached_on_web_2(), "the guard is attached before");
        let _ = Command::new("pkill")
            .args([
                "-KILL",
                "-f",
                &format!("{}/n2/run/wg.json", lab.dir.display()),
            ])
            .status();
        std::fs::remove_dir_all("/sys/fs/bpf/identityd/n2").expect("remove n2's pins");
        let _ = Command::new("ip")
            .args(["-n", "idd-n2", "link", "del", "idd2"])
            .status();
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !guard_attached_on_web_2(),
            "with its pins gone the guard is detached (a fresh boot)"
        );
        // Control: nothing guards web-2 now, and plaintext from n2's host gets in.
        let (ok, body) = get_host("idd-n2", "http://10.244.2.10:8080/", "web.shop");
        assert!(
            ok,
            "control: with no guard, n2's host reaches web-2 in plaintext: {body}"
        );
    }
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(lab.dir.join(if reboot {
        "n2/daemon-reboot-ca-down.log"
    } else {
        "n2/daemon-ca-down.log"
    }))
    .unwrap();
    let started = Instant::now();
    lab.adopt(
        Command::new("nsenter")
            .args(["--net=/run/netns/idd-n2", "--", BIN, "run", "--config"])
            .arg(lab.dir.join("n2/node.yaml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    // The first seconds of the new daemon, CA unreachable: plaintext from n1's host (through
    // the tunnel) and from n2's own host never gets an answer from the strict pod.
    // Two rounds from each (a refused request takes its 5 s timeout, so this covers about
    // 20 s); the first starts within the daemon's first second (after a reboot: as soon as
    // the fresh guard is attached).
    if reboot {
        while !guard_attached_on_web_2() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the rebooted daemon attached no guard to web-2's veth in 30 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("guard attached {:?} after the start", started.elapsed());
    }
    let first_try = started.elapsed();
    for _ in 0..2 {
        for from in ["idd-n1", "idd-n2"] {
            let (ok, out) = get_host(from, "http://10.244.2.10:8080/", "web.shop");
            assert!(
                !ok,
                "{from} → web-2 in plaintext {:?} after the restart, CA down: {out}",
                started.elapsed(),
            );
        }
    }
    assert!(
        reboot || first_try < Duration::from_secs(1),
        "the first attempt came {first_try:?} after the start"
    );
    eprintln!(
        "plaintext refused from {first_try:?} to {:?} after the daemon started, CA down",
        started.elapsed()
    );
    // What mTLS does meanwhile is reported, not promised (the restarted daemon has no workload
    // SVIDs until the CA answers).
    let (ok, _) = get_host("idd-n1-client-1", "http://10.244.2.10:8080/", "web.shop");
    eprintln!(
        "mTLS n1 → web-2 during the outage, after the restart: {}",
        if ok { "answered" } else { "no answer" }
    );
    drop(resume);
    // The CA is back: the restarted daemon reconnects on its own (no restart) and serves its
    // identities; mTLS from n2's pods works.
    wait_for_status(
        &lab.dir,
        60,
        "restarted n2 holds its SVIDs again after the CA returned",
        |st| st[1]["svids"].as_array().map(Vec::len) == Some(3),
    );
    let (ok, body) = get_host("idd-n2-client-2", "http://10.244.1.10:8080/", "web.shop");
    assert!(
        ok && body.contains("URI=spiffe://cluster.local/ns/front/sa/client"),
        "mTLS from n2 once the CA is back: {body}"
    );
}

fn the_daemon_restarts_an_envoy_that_dies(lab: &Lab) {
    let envoy_pid = std::fs::read_to_string(lab.dir.join("n3/run/envoy.pid")).unwrap();
    let _ = Command::new("kill")
        .args(["-KILL", envoy_pid.trim()])
        .status();
    wait_for_status(&lab.dir, 20, "Envoy on n3 restarted and serving", |st| {
        st[2]["envoy_restarts"].as_u64().unwrap_or(0) >= 1
            && st[2]["envoy_ready"] == true
            && get_host("idd-n3-client-3", "http://10.244.1.10:8080/", "web.shop").0
    });
    // Every daemon answers.
    let st = status(&lab.dir);
    assert!(
        st.as_array().unwrap().iter().all(|n| n["error"].is_null()),
        "{st}"
    );
}

/// kill -9 of n2's WireGuard device under a 100 pps ping from n1 to n2 and n3: the daemon
/// starts it again at once (pidfd) and the new device handshakes with every peer as it adds
/// them, so replies stop for less than 1 s; then the daemon and the device killed together,
/// the daemon back 3 s later: replies again within 1 s of it being back. Same key, nothing in clear,
/// the n1 → n3 pair untouched.
fn a_killed_wireguard_device_is_back_within_a_second_with_its_key(lab: &Lab) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("recovery.json");
    let run = Command::new(BIN)
        .args(["lab", "bench-recovery", "--dir"])
        .arg(&lab.dir)
        .args([
            "--scenarios",
            "device-kill,daemon-device-kill",
            "--seconds",
            "12",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "bench-recovery: {}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let scenarios = report["scenarios"].as_array().unwrap();
    assert_eq!(scenarios.len(), 2, "{report:#}");
    for s in scenarios {
        let name = s["scenario"].as_str().unwrap();
        let flow = |pair: &str| {
            s["flows"]
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["pair"] == pair)
                .cloned()
                .unwrap()
        };
        let (n2, n3) = (flow("n1->n2"), flow("n1->n3"));
        assert!(s["underlay_packets"].as_u64().unwrap() > 0, "{name}: {s:#}");
        assert_eq!(s["packets_in_clear"], 0, "{name}: nothing in clear: {s:#}");
        assert_eq!(s["marker_in_clear"], false, "{name}: {s:#}");
        assert_eq!(s["key_changed"], false, "{name}: same key: {s:#}");
        assert_eq!(
            n3["lost"], 0,
            "{name}: the n1 → n3 pair is untouched: {s:#}"
        );
        match name {
            "device-kill" => {
                assert_eq!(
                    s["device_restarts_after"].as_u64(),
                    s["device_restarts_before"].as_u64().map(|b| b + 1),
                    "the daemon restarted its device once: {s:#}"
                );
                assert!(
                    n2["longest_gap_ms"].as_u64().unwrap() < 1000,
                    "under 1 s without replies: {s:#}"
                );
            }
            _ => {
                // The control: with daemon and device dead for 3 s, replies stopped.
                assert!(
                    n2["longest_gap_ms"].as_u64().unwrap() >= 2500,
                    "the device was really down: {s:#}"
                );
                assert!(
                    n2["first_reply_after_back_ms"]
                        .as_u64()
                        .is_some_and(|ms| ms < 1000),
                    "replies again within 1 s of the daemon being back: {s:#}"
                );
            }
        }
    }
}

/// `KeyRotation {target: wireguard}` of every node under 100 pps between every pair of nodes:
/// next keys announced beside the old ones, peers switch, old keys retired, no device
/// restart. Nothing in clear, `wg show` lists only the new keys, and at most
/// [`ROTATION_LOSS_BOUND`] pings lost per pair. Then the same with n3's daemon frozen (SIGSTOP)
/// and a 15 s deadline: Failed naming n3, the others withdraw their next keys, within the same
/// bound.
/// Pings (of 3,000 per pair, 100 pps) a rotation may lose, in all and in a row (≤ 200 ms).
/// Most runs lose none; about one run in five loses ~11 in a row on one pair (a ~110 ms
/// event whose cause is not found yet). The device-level test
/// `wg_both_ends_retiring_at_once_lose_nothing_while_the_retired_keys_answer` asserts 0 for
/// the retirement race it covers; the baseline before rotation without restart lost 178.
const ROTATION_LOSS_BOUND: u64 = 20;

fn a_wireguard_rotation_under_load_loses_at_most_a_blip_and_a_frozen_node_fails_it_by_name(
    lab: &Lab,
) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rotation.json");
    let run = Command::new(BIN)
        .args(["lab", "bench-recovery", "--dir"])
        .arg(&lab.dir)
        .args([
            "--scenarios",
            "rotation,rotation-frozen",
            "--seconds",
            "30",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    // The rotation objects go again whatever happened (later trials expect none running).
    remove_bench_rotations(lab);
    assert!(
        run.status.success(),
        "bench-recovery: {}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let scenarios = report["scenarios"].as_array().unwrap();
    assert_eq!(scenarios.len(), 2, "{report:#}");
    for s in scenarios {
        let name = s["scenario"].as_str().unwrap();
        assert!(s["underlay_packets"].as_u64().unwrap() > 0, "{name}: {s:#}");
        assert_eq!(s["packets_in_clear"], 0, "{name}: nothing in clear: {s:#}");
        assert_eq!(s["marker_in_clear"], false, "{name}: {s:#}");
        assert_eq!(
            s["device_restarts_after"], s["device_restarts_before"],
            "{name}: no device restart: {s:#}"
        );
        let flows = s["flows"].as_array().unwrap();
        assert_eq!(flows.len(), 3, "every pair of nodes: {s:#}");
        for f in flows {
            assert!(f["sent"].as_u64().unwrap() >= 2900, "{name}: {f:#}");
            let lost = f["lost"].as_u64().unwrap();
            if lost > 0 {
                eprintln!(
                    "{name} {}: {lost} ping(s) lost (bound {ROTATION_LOSS_BOUND})",
                    f["pair"]
                );
            }
            assert!(
                lost <= ROTATION_LOSS_BOUND
                    && f["longest_loss_run"].as_u64().unwrap() <= ROTATION_LOSS_BOUND,
                "{name} {}: at most {ROTATION_LOSS_BOUND} lost: {s:#}",
                f["pair"]
            );
        }
        assert_eq!(
            s["wg_show_matches_published"], true,
            "{name}: wg show lists exactly the published keys: {s:#}"
        );
        let tcp = &s["tcp_load"];
        assert!(
            tcp["ok"].as_u64().unwrap() > 0,
            "{name}: TCP answered: {s:#}"
        );
        assert_eq!(
            tcp["errors"], 0,
            "{name}: every TCP connection through the mTLS path succeeded: {s:#}"
        );
        assert_streams(s);
        let msg = s["rotation_message"].as_str().unwrap_or("");
        match name {
            "rotation" => {
                assert_eq!(s["rotation_phase"], "Completed", "{s:#}");
                assert_eq!(msg, "3 node(s) rotated: n1, n2, n3", "{s:#}");
                assert_eq!(s["key_changed"], true, "n2 has a new key: {s:#}");
            }
            _ => {
                assert_eq!(s["rotation_phase"], "Failed", "{s:#}");
                assert!(
                    msg.contains("n3 (Pending)") && msg.contains("spec.deadline 15s passed"),
                    "the frozen node is named: {s:#}"
                );
                assert_eq!(
                    s["key_changed"], false,
                    "withdrawn: n2 keeps its key: {s:#}"
                );
            }
        }
    }
}

/// A CA rollover under 50 HTTP requests and 50 TCP connections a second of mTLS traffic
/// (client-1 on n1 → both node Envoys → web-2 on n2): the new root reaches every node's Envoy
/// before anything is signed under it, so not one request fails; every node then renews its
/// workload SVIDs under the new root while the load runs.
fn a_ca_rollover_under_load_fails_no_request(lab: &Lab) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ca.json");
    let run = Command::new(BIN)
        .args(["lab", "bench-recovery", "--dir"])
        .arg(&lab.dir)
        .args(["--scenarios", "ca-rollover", "--seconds", "45", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    remove_bench_rotations(lab);
    assert!(
        run.status.success(),
        "bench-recovery: {}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let s = &report["scenarios"][0];
    assert_eq!(s["scenario"], "ca-rollover", "{report:#}");
    assert_eq!(s["rotation_phase"], "Completed", "{s:#}");
    let msg = s["rotation_message"].as_str().unwrap_or("");
    assert!(
        msg.contains("3 node(s) trust the new root") && msg.contains("it signs now"),
        "{s:#}"
    );
    assert!(
        s["svids_renewed_at_ms"].as_u64().is_some(),
        "every node renewed its SVIDs under the new root: {s:#}"
    );
    for kind in ["http_load", "tcp_load"] {
        let l = &s[kind];
        assert!(
            l["ok"].as_u64().unwrap() >= 2000,
            "{kind}: 50/s for 44 s answered: {s:#}"
        );
        assert_eq!(l["errors"], 0, "{kind}: no request failed: {s:#}");
    }
    // The renewal happened with the loads still running (they end 44 s after the start).
    assert!(
        s["svids_renewed_at_ms"].as_u64().unwrap() < 40_000,
        "the new SVIDs served load: {s:#}"
    );
    assert_eq!(s["packets_in_clear"], 0, "{s:#}");
    for f in s["flows"].as_array().unwrap() {
        assert_eq!(f["lost"], 0, "{s:#}");
    }
    assert_streams(s);
}

/// Every long-lived stream of a scenario stayed open and had every PING answered.
fn assert_streams(s: &serde_json::Value) {
    let streams = s["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 3, "a stream per node pair: {s:#}");
    for st in streams {
        assert!(st["sent"].as_u64().unwrap() > 100, "{st:#}");
        assert_eq!(
            st["error"],
            serde_json::Value::Null,
            "the stream never broke: {st:#}"
        );
        assert_eq!(st["replies"], st["sent"], "every PING answered: {st:#}");
    }
}

/// Removes the KeyRotation objects bench-recovery wrote (later trials expect none running).
fn remove_bench_rotations(lab: &Lab) {
    for e in std::fs::read_dir(lab.dir.join("cluster"))
        .unwrap()
        .flatten()
    {
        if e.file_name()
            .to_string_lossy()
            .starts_with("keyrotation-bench-")
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn the_audit_fails_for_the_right_reasons_in_every_format(lab: &Lab) {
    sarif_validation_catches_a_broken_log(&lab.dir);
    assert_audit(&lab.dir, &[], None);
    assert_audit(
        &lab.dir,
        &["--min-svid-lifetime", "2h"],
        Some("identity.svid-expiry"),
    );
    // A node's Envoy stopped (SIGSTOP: alive but not answering).
    let envoy1 = std::fs::read_to_string(lab.dir.join("n1/run/envoy.pid"))
        .unwrap()
        .trim()
        .to_owned();
    let _ = Command::new("kill").args(["-STOP", &envoy1]).status();
    wait_for_status(&lab.dir, 15, "n1 notices its Envoy stopped", |st| {
        st[0]["envoy_ready"] == false
    });
    let stopped =
        std::panic::catch_unwind(|| assert_audit(&lab.dir, &[], Some("proxy.envoy-ready")));
    let _ = Command::new("kill").args(["-CONT", &envoy1]).status();
    wait_for_status(&lab.dir, 15, "n1's Envoy back", |st| {
        st[0]["envoy_ready"] == true
    });
    if let Err(e) = stopped {
        std::panic::resume_unwind(e);
    }
}

/// The underlay bypass, tried as an attacker on the node network would (the root namespace
/// is on the lab's bridge): with a route to n2's pod CIDR, its packets reach n2's pods (ICMP
/// answers), but no TCP connection into a strict pod is accepted (so a forged XFCC header
/// never reaches the workload), and a packet spoofing a remote pod's source address reaches
/// no pod at all; both drops are counted with their reason and the audit reports them.
fn an_underlay_host_reaches_no_strict_pod_and_no_spoofed_pod_source_gets_in(lab: &Lab) {
    struct Undo(Vec<Vec<&'static str>>);
    impl Drop for Undo {
        fn drop(&mut self) {
            for args in &self.0 {
                let _ = Command::new("ip").args(args).status();
            }
        }
    }
    let ip = |args: &[&str]| {
        let out = Command::new("ip").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ip(&["route", "add", "10.244.2.0/24", "via", "10.99.0.12"]);
    let _undo = Undo(vec![
        vec!["route", "del", "10.244.2.0/24", "via", "10.99.0.12"],
        vec!["addr", "del", "10.244.1.77/32", "dev", "idd-fabric"],
    ]);
    let ping = |from: Option<&str>, to: &str| {
        let mut args = vec!["-c", "1", "-W", "2"];
        if let Some(f) = from {
            args.extend(["-I", f]);
        }
        args.push(to);
        Command::new("ping")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    // The attack's packets arrive: the strict pod answers ICMP from the underlay host.
    assert!(
        ping(None, "10.244.2.10"),
        "the underlay host reaches web-2 (10.244.2.10) through the route it added"
    );
    // TCP with a forged caller identity. Without the defence (namespace shop switched to
    // permissive, which accepts plaintext by design) the workload answers and sees the forged
    // XFCC as if it were the caller's; strict again, the same request is never answered.
    let forged = || {
        let out = Command::new("timeout")
            .args([
                "4",
                "bash",
                "-c",
                "exec 3<>/dev/tcp/10.244.2.10/8080 && printf 'GET / HTTP/1.0\\r\\nHost: web.shop\\r\\n\
                 x-forwarded-client-cert: By=spiffe://cluster.local/ns/shop/sa/web;URI=spiffe://cluster.local/ns/front/sa/client\\r\\n\\r\\n' >&3 && cat <&3",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ns_file = lab.dir.join("cluster/namespace-shop.yaml");
    let strict_ns = std::fs::read_to_string(&ns_file).unwrap();
    assert!(
        strict_ns.contains("identityd.io/mtls: strict"),
        "{strict_ns}"
    );
    std::fs::write(
        &ns_file,
        strict_ns.replace("mtls: strict", "mtls: permissive"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut answer = forged();
    while !answer.contains("HTTP/") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        answer = forged();
    }
    std::fs::write(&ns_file, &strict_ns).unwrap();
    assert!(
        answer.contains("HTTP/")
            && answer.contains("URI=spiffe://cluster.local/ns/front/sa/client"),
        "without ingress strict (permissive), the forged identity reaches the workload:\n{answer}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut answer = forged();
    while answer.contains("HTTP/") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
        answer = forged();
    }
    assert!(
        !answer.contains("HTTP/"),
        "plaintext TCP from the underlay into a strict pod must not be accepted: {answer}"
    );
    // A packet spoofing a remote pod's source (n1's pod CIDR) from the underlay: reaches no
    // pod, not even one of a WireGuard-only path (ICMP).
    ip(&["addr", "add", "10.244.1.77/32", "dev", "idd-fabric"]);
    assert!(
        !ping(Some("10.244.1.77"), "10.244.2.11"),
        "a packet from the underlay with a remote pod's source address must not reach client-2"
    );
    // Counted, with their reasons, on n2.
    let out = Command::new(BIN)
        .args(["observe", "--json", "--dir"])
        .arg(&lab.dir)
        .output()
        .unwrap();
    let flows = String::from_utf8_lossy(&out.stdout);
    assert!(
        flows
            .lines()
            .any(|l| l.contains("ingress-not-mtls") && l.contains("10.244.2.10")),
        "the refused TCP is a flow event with reason ingress-not-mtls:\n{}",
        flows.lines().rev().take(8).collect::<Vec<_>>().join("\n")
    );
    assert!(
        flows
            .lines()
            .any(|l| l.contains("ingress-not-encrypted") && l.contains("10.244.1.77")),
        "the spoofed packet is a flow event with reason ingress-not-encrypted:\n{}",
        flows.lines().rev().take(8).collect::<Vec<_>>().join("\n")
    );
    assert_audit(
        &lab.dir,
        &["--fail-on", "warning"],
        Some("encryption.strict-drops"),
    );
}

/// Key rotation (after the clean audits: the device restarts drop a few packets, which the
/// strict-drops check rightly reports).
/// The file of the rogue IdentitydNode the conflict trial leaves for the rotation trial.
const ROGUE: &str = "cluster/identitydnode-a-rogue.yaml";

/// The Kubernetes Node object of the trials' extra node n9 (the control plane's allocation of
/// its pod CIDR, which its IdentitydNode is checked against).
const NODE_N9: &str = "cluster/node-n9.yaml";

/// Writes `yaml` (one IdentitydNode) to `dest` signed by the node identity `signer`
/// (`spiffe://cluster.local/identityd/node/<signer>`, issued by the lab's CA): the proof a node
/// daemon puts on its own object, here for objects no daemon publishes. Signed outside the
/// cluster folder, then moved in whole.
fn write_signed_node(dir: &Path, dest: &Path, yaml: &str, signer: &str) {
    let tmp = tempfile::tempdir_in(dir).unwrap();
    let svid = tmp.path().join("svid");
    let staged = tmp.path().join("node.yaml");
    std::fs::write(&staged, yaml).unwrap();
    for args in [
        vec![
            "svid".to_owned(),
            "issue".into(),
            "--ca-dir".into(),
            dir.join("ca").display().to_string(),
            "--spiffe-id".into(),
            format!("spiffe://cluster.local/identityd/node/{signer}"),
            "--out".into(),
            svid.display().to_string(),
        ],
        vec![
            "svid".into(),
            "sign-node".into(),
            "--svid-dir".into(),
            svid.display().to_string(),
            staged.display().to_string(),
        ],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "identityd {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::rename(&staged, dest).unwrap();
}

fn node_object(name: &str, cidr: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\nspec: {{podCIDR: {cidr}, podCIDRs: [{cidr}]}}\n"
    )
}

fn peer_names(n: &serde_json::Value) -> Vec<&str> {
    n["peers"]
        .as_array()
        .map(|p| p.iter().filter_map(|x| x["name"].as_str()).collect())
        .unwrap_or_default()
}

fn has_problem(n: &serde_json::Value, text: &str) -> bool {
    n["problems"].as_array().is_some_and(|p| {
        p.iter()
            .any(|x| x.as_str().is_some_and(|x| x.contains(text)))
    })
}

/// One bad IdentitydNode: `a-rogue` claims n1's pod CIDR (before this was handled, n1 took its
/// own pods for a peer's — same-node requests lost mTLS — and every device refused the whole
/// new config). Now every node leaves the object out, names the conflict, keeps applying
/// other changes (a genuine new node n9 published after it appears everywhere), n1's pods keep
/// mTLS on the same node and across nodes, and the static audit fails
/// `nodes.cidr-conflicts`. The rogue object stays for the key-rotation trial, which must
/// complete beside it and removes it.
fn a_conflicting_identitydnode_takes_nothing_from_its_owner(lab: &Lab) {
    let doc = |name: &str, cidr: &str, underlay: &str, key: &str| {
        format!(
            "apiVersion: identityd.io/v1alpha1\nkind: IdentitydNode\nmetadata: {{name: {name}}}\n\
             spec: {{podCIDRs: [{cidr}], underlayAddresses: [{underlay}], wireguard: {{publicKey: \"{key}\", port: 51871}}}}\n"
        )
    };
    // Written by hand: no creation time, so each is the newest claim. Each is signed by its own
    // node identity (an authentic but conflicting claim: what a proof cannot stop).
    write_signed_node(
        &lab.dir,
        &lab.dir.join(ROGUE),
        &doc(
            "a-rogue",
            "10.244.1.0/24",
            "10.99.0.99",
            "ZW1gK0HpMBOhsJmB6oFmtBSaYmCm+tmWcSNyAtqbnAs=",
        ),
        "a-rogue",
    );
    std::thread::sleep(Duration::from_millis(1500));
    // n9 publishes a free pod CIDR with its own key before the control plane allocated it one
    // (no Node n9): a claim alone, which every node refuses, naming why. Then its Node object
    // appears (the control: the same IdentitydNode is applied once the Node backs it).
    let n9 = lab.dir.join("cluster/identitydnode-n9.yaml");
    write_signed_node(
        &lab.dir,
        &n9,
        &doc(
            "n9",
            "10.244.9.0/24",
            "10.99.0.19",
            "Q2hvb3NlIGFub3RoZXIga2V5IGZvciBuOSAwMTIzNDU=",
        ),
        "n9",
    );
    let unbacked = "IdentitydNode n9: spec.podCIDRs 10.244.9.0/24: no Node n9 allocates a pod CIDR";
    wait_for_status(
        &lab.dir,
        20,
        "every node leaves n9 out while no Node object allocates its pod CIDR",
        |st| {
            st.as_array().is_some_and(|nodes| {
                nodes
                    .iter()
                    .all(|n| !peer_names(n).contains(&"n9") && has_problem(n, unbacked))
            })
        },
    );
    let wg_holds_n9 = || {
        (1..=3).any(|i| {
            std::fs::read_to_string(lab.dir.join(format!("n{i}/run/wg.json")))
                .is_ok_and(|j| j.contains("Q2hvb3NlIGFub3RoZXIga2V5IGZvciBuOSAwMTIzNDU="))
        })
    };
    assert!(!wg_holds_n9(), "no device may hold the unbacked n9's key");
    std::fs::write(lab.dir.join(NODE_N9), node_object("n9", "10.244.9.0/24")).unwrap();
    let conflict = "IdentitydNode a-rogue: spec.podCIDRs 10.244.1.0/24 overlaps 10.244.1.0/24 of IdentitydNode n1";
    wait_for_status(
        &lab.dir,
        20,
        "every node applies n9, leaves a-rogue out and names the conflict",
        |st| {
            st.as_array().is_some_and(|nodes| {
                nodes.iter().all(|n| {
                    let peers = peer_names(n);
                    peers.contains(&"n9")
                        && !peers.contains(&"a-rogue")
                        && has_problem(n, conflict)
                        && !has_problem(n, unbacked)
                })
            })
        },
    );
    assert!(
        wg_holds_n9(),
        "n9's key is in the devices once its Node backs it"
    );
    // n1's own pods: same node and from n2, still mTLS with the caller's identity.
    for (from, what) in [
        ("idd-n1-client-1", "same node"),
        ("idd-n2-client-2", "from n2"),
    ] {
        let (ok, body) = get_host(from, "http://10.244.1.10:8080/", "web.shop");
        assert!(
            ok && body.contains("URI=spiffe://cluster.local/ns/front/sa/client"),
            "{what}: web-1 answers over mTLS with the caller's SPIFFE ID beside a-rogue:\n{body}"
        );
    }
    let out = Command::new(BIN)
        .args(["audit", "--format", "json", "--manifests"])
        .arg(lab.dir.join("cluster"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "nodes.cidr-conflicts")
        .cloned()
        .unwrap();
    assert!(!out.status.success() && c["result"] == "fail", "{c}");
    assert!(c.to_string().contains(conflict), "{c}");
    // n9 has no daemon: remove it again (its peers drop it).
    std::fs::remove_file(&n9).unwrap();
    std::fs::remove_file(lab.dir.join(NODE_N9)).unwrap();
    wait_for_status(&lab.dir, 20, "every node drops n9", |st| {
        st.as_array().is_some_and(|nodes| {
            nodes.iter().all(|n| {
                !n["peers"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|x| x["name"] == "n9"))
            })
        })
    });
}

/// A node's status straight from its API socket (`identityd status --json`): for when another
/// node's daemon is frozen and `lab status` would wait for it.
fn node_status(dir: &Path, node: &str) -> serde_json::Value {
    let sock = dir.join(format!("{node}/run/api.sock"));
    let out = Command::new(BIN)
        .args(["status", "--json", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status of {node}: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A forged IdentitydNode for n2 — another WireGuard key, the underlay address of an attacker
/// host (10.99.0.1, the root namespace on the fabric) — written over n2's own object while n2's
/// daemon is frozen (so nothing republishes the real one): first unsigned, then signed by
/// another node's identity (n3's). Before node proofs every node took it (the device config
/// follows the object: n2's pods would be sent to the attacker). Now no node configures it,
/// each names why and keeps n2's last verified version: n1 → n2 mTLS keeps working through
/// n2's real tunnel, no WireGuard packet goes to the attacker's address, and the audit fails
/// `nodes.authentic` naming the object and the nodes that refused it.
fn a_forged_identitydnode_for_n2_configures_nothing(lab: &Lab) {
    const EVIL: &str = "RXZpbEtleUV2aWxLZXlFdmlsS2V5RXZpbEtleUV2aWw=";
    let n2_file = lab.dir.join("cluster/identitydnode-n2.yaml");
    let original = std::fs::read_to_string(&n2_file).unwrap();
    assert!(
        original.contains("proof:"),
        "n2 publishes a signed object:\n{original}"
    );
    let n2_pattern = format!("{}/n2/node.yaml", lab.dir.display());
    let pids: Vec<String> = String::from_utf8_lossy(
        &Command::new("pgrep")
            .args(["-f", &n2_pattern])
            .output()
            .unwrap()
            .stdout,
    )
    .split_whitespace()
    .map(str::to_owned)
    .collect();
    assert!(!pids.is_empty(), "n2's daemon is running");
    struct Restore {
        pids: Vec<String>,
        file: PathBuf,
        original: String,
    }
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write(&self.file, &self.original);
            for p in &self.pids {
                let _ = Command::new("kill").args(["-CONT", p]).status();
            }
        }
    }
    for p in &pids {
        let _ = Command::new("kill").args(["-STOP", p]).status();
    }
    let restore = Restore {
        pids,
        file: n2_file.clone(),
        original: original.clone(),
    };
    let tmp = tempfile::tempdir().unwrap();
    let pcap = tmp.path().join("forged.pcap");
    let cap = capture_start(&pcap);
    let forged = format!(
        "apiVersion: identityd.io/v1alpha1\nkind: IdentitydNode\nmetadata: {{name: n2}}\n\
         spec: {{podCIDRs: [10.244.2.0/24], underlayAddresses: [10.99.0.1], wireguard: {{publicKey: \"{EVIL}\", port: 51871}}}}\n"
    );
    let holds_evil = || {
        ["n1", "n3"].iter().any(|n| {
            std::fs::read_to_string(lab.dir.join(format!("{n}/run/wg.json")))
                .is_ok_and(|j| j.contains(EVIL) || j.contains("10.99.0.1:"))
        })
    };
    for (how, write, why) in [
        (
            "unsigned",
            Box::new(|| std::fs::write(&n2_file, &forged).unwrap()) as Box<dyn Fn()>,
            "IdentitydNode n2: spec.proof is missing; keeping the last verified version",
        ),
        (
            "signed by n3",
            Box::new(|| write_signed_node(&lab.dir, &n2_file, &forged, "n3")),
            "signed by spiffe://cluster.local/identityd/node/n3, not by spiffe://cluster.local/identityd/node/n2; keeping the last verified version",
        ),
    ] {
        write();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let seen = ["n1", "n3"]
                .iter()
                .all(|n| has_problem(&node_status(&lab.dir, n), why));
            assert!(
                !holds_evil(),
                "{how}: no device may take the forged key or address"
            );
            if seen {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{how}: n1 and n3 name the refused object: {}",
                node_status(&lab.dir, "n1")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        for n in ["n1", "n3"] {
            let st = node_status(&lab.dir, n);
            assert!(
                peer_names(&st).contains(&"n2"),
                "{how}: {n} keeps n2 as a peer: {st}"
            );
        }
        let (ok, body) = get_host("idd-n1-client-1", "http://10.244.2.10:8080/", "web.shop");
        assert!(
            ok && body.contains("URI=spiffe://cluster.local/ns/front/sa/client"),
            "{how}: n1 → n2 keeps working over mTLS through n2's real tunnel:\n{body}"
        );
    }
    let r = audit_results(&lab.dir, true);
    assert_eq!(
        r.get("nodes.authentic").map(String::as_str),
        Some("fail"),
        "the audit over the nodes' reports fails nodes.authentic: {r:?}"
    );
    let (_, _) = capture_stop(cap, &pcap);
    let to_attacker = Command::new(identityd_tests::tools::tcpdump())
        .args(["-nn", "-r"])
        .arg(&pcap)
        .arg("udp and dst host 10.99.0.1 and dst port 51871")
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&to_attacker.stdout).into_owned();
    assert!(
        lines.trim().is_empty(),
        "no WireGuard packet goes to the attacker's address:\n{lines}"
    );
    drop(restore);
    wait_for_status(
        &lab.dir,
        20,
        "n2 republishes its own object and every refusal clears",
        |st| {
            st.as_array()
                .is_some_and(|nodes| nodes.iter().all(|n| !has_problem(n, "IdentitydNode n2:")))
        },
    );
    wait_for_report_verdict(&lab.dir, "nodes.authentic", "pass", 30);
}

fn a_wireguard_key_rotation_completes_through_the_file_source(lab: &Lab) {
    // With the conflict trial's rogue object still there (when that trial ran): one bad
    // IdentitydNode must not stop a rotation from completing.
    key_rotation_through_the_file_source(&lab.dir);
    let _ = std::fs::remove_file(lab.dir.join(ROGUE));
}

/// Strict mode off on n3 (its daemon restarted with the changed config) fails the audit.
fn strict_mode_off_on_a_node_fails_the_audit(lab: &Lab) {
    let cfg3 = lab.dir.join("n3/node.yaml");
    std::fs::write(
        &cfg3,
        std::fs::read_to_string(&cfg3)
            .unwrap()
            .replace("strictMode: true", "strictMode: false"),
    )
    .unwrap();
    let _ = Command::new("pkill")
        .args([
            "-KILL",
            "-f",
            &format!("{}/n3/node.yaml", lab.dir.display()),
        ])
        .status();
    std::thread::sleep(Duration::from_millis(300));
    use std::os::unix::process::CommandExt;
    let log = std::fs::File::create(lab.dir.join("n3/daemon-nonstrict.log")).unwrap();
    lab.adopt(
        Command::new("nsenter")
            .args(["--net=/run/netns/idd-n3", "--", BIN, "run", "--config"])
            .arg(&cfg3)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    wait_for_status(&lab.dir, 15, "n3 back without strict mode", |st| {
        st[2]["strict_mode"] == false
    });
    assert_audit(&lab.dir, &[], Some("encryption.strict-mode"));
    // n3's own report says so too, within its minimum write interval.
    wait_for_report_verdict(&lab.dir, "encryption.strict-mode", "fail", 20);
}

/// A running node whose IdentitydNode disappears: its peers drop it, the audit says so, and
/// the CA gives it nothing more (its node SVID still verifies until it expires).
fn a_removed_identitydnode_is_dropped_by_its_peers(lab: &Lab) {
    // Before: n3 may ask; asking for n1's pod is refused on the pod rule.
    let before = node_asks_the_ca_for_web_on(&lab.dir, "n3", "web-1").unwrap_err();
    assert!(before.to_string().contains("scheduled on node"), "{before}");
    std::fs::remove_file(lab.dir.join("cluster/identitydnode-n3.yaml")).unwrap();
    assert!(
        eventually(10, || node_asks_the_ca_for_web_on(&lab.dir, "n3", "web-1")
            .is_err_and(|e| e.code() == Some(tonic::Code::PermissionDenied)
                && e.to_string().contains("has published no IdentitydNode"))),
        "the CA refuses a node that left the cluster: {:?}",
        node_asks_the_ca_for_web_on(&lab.dir, "n3", "web-1")
    );
    wait_for_status(&lab.dir, 15, "n1 drops peer n3", |st| {
        !st[0]["peers"]
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x["name"] == "n3"))
    });
    assert_audit(&lab.dir, &[], Some("nodes.published"));
}

/// `GET /metrics` of a node (its underlay address, port 9962) with an `Accept` header: the
/// content type and the body.
fn scrape(node: usize, accept: &str) -> (String, String) {
    scrape_at(&format!("10.99.0.{}:9962", 10 + node), accept)
}

/// `GET /metrics` of `addr`.
fn scrape_at(addr: &str, accept: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("metrics of {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nhost: {addr}\r\naccept: {accept}\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    let ctype = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_owned();
    (ctype, body.to_owned())
}

/// Sum of the samples of `name` whose labels include every `label="value"` of `want`.
fn metric_sum(body: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            want.iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Runs `identityd <args> <last>` and returns its stdout; fails the trial, with its stderr, when
/// it does not succeed.
fn identityd_ok(args: &[&str], last: &Path) -> Vec<u8> {
    let out = Command::new(BIN).args(args).arg(last).output().unwrap();
    assert!(
        out.status.success(),
        "identityd {args:?} {}: {}",
        last.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Every request a caller sends through the mesh is counted once on the caller's node
/// (outbound) and once on the callee's (inbound), labelled with both SPIFFE IDs; paths never
/// become labels; every endpoint passes `promtool check metrics` and speaks OpenMetrics when
/// asked.
fn request_metrics_count_every_request_per_identity_pair(lab: &Lab) {
    const CLIENT: &str = "spiffe://cluster.local/ns/front/sa/client";
    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
    let counts = || {
        let out = metric_sum(
            &scrape(1, "text/plain").1,
            "identityd_requests_total",
            &[
                ("direction", "outbound"),
                ("source_identity", CLIENT),
                ("destination_identity", WEB),
                ("response_code_class", "2xx"),
            ],
        );
        let inb: f64 = (1..=3)
            .map(|n| {
                metric_sum(
                    &scrape(n, "text/plain").1,
                    "identityd_requests_total",
                    &[
                        ("direction", "inbound"),
                        ("source_identity", CLIENT),
                        ("destination_service", "web.shop"),
                        ("response_code_class", "2xx"),
                    ],
                )
            })
            .sum();
        (out, inb)
    };
    let series = || {
        metric_sum(
            &scrape(1, "text/plain").1,
            "identityd_telemetry_series",
            &[],
        )
    };
    // Let earlier trials' entries arrive first (Envoy flushes every 250 ms).
    std::thread::sleep(Duration::from_secs(2));
    let (out0, in0) = counts();
    let series0 = series();
    const N: usize = 25;
    for i in 0..N {
        let (ok, body) = get_host(
            "idd-n1-client-1",
            &format!("http://10.244.2.10:8080/path-{i}?q={i}"),
            "web.shop",
        );
        assert!(ok && body.contains("pod="), "request {i}: {body}");
    }
    let want = (out0 + N as f64, in0 + N as f64);
    let arrived = eventually(10, || counts() == want);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        arrived && counts() == want,
        "{N} requests from {CLIENT} to web.shop: counters went from {:?} to {:?}",
        (out0, in0),
        counts()
    );
    assert_eq!(
        series(),
        series0,
        "{N} distinct paths of one caller and route add no series"
    );
    let (_, ca) = scrape_at("10.99.0.1:9963", "text/plain");
    assert!(
        metric_sum(&ca, "identityd_ca_issued_total", &[("request", "workload")]) >= 3.0,
        "the CA counts the lab's workload SVIDs:\n{ca}"
    );
    assert!(
        metric_sum(&ca, "identityd_ca_root_expiry_seconds", &[]) > 0.0,
        "{ca}"
    );
    for (n, body) in (1..=3)
        .map(|n| (format!("n{n}"), scrape(n, "text/plain;version=0.0.4")))
        .chain([("ca".to_owned(), scrape_at("10.99.0.1:9963", "text/plain"))])
    {
        let (ctype, body) = body;
        assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), &body).unwrap();
        let check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::fs::File::open(tmp.path()).unwrap())
            .output()
            .expect("promtool (scripts/bootstrap installs Debian's prometheus)");
        assert!(
            check.status.success(),
            "promtool check metrics on {n}: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let Some(i) = n.strip_prefix('n') else {
            continue; // the CA: classic text only checked
        };
        let (ctype, om) = scrape_at(
            &format!("10.99.0.1{i}:9962"),
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        );
        assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
        assert!(om.ends_with("# EOF\n"), "{n}: OpenMetrics ends with # EOF");
        assert!(om.contains("# TYPE identityd_requests counter"), "{n}");
    }
    // `stat` (callers' side, per caller): both sides of the 90/10 split answered for the
    // client; web's own call (refused by the AuthorizationPolicy) is a 4xx for web's identity.
    let (_, body) = get_host("idd-n1-web-1", "http://10.244.2.10:8080/", "web.shop");
    assert!(body.contains("403"), "web's own call is refused: {body}");
    // A request slower than the route's timeout (TrafficPolicy web-resilience on Service web,
    // which the split route's parent is: 1 s per try, 3 s in all) is a 504 from the caller's
    // Envoy: a 5xx in stat, with its latency.
    let t0 = Instant::now();
    let (_, body) = get_host(
        "idd-n1-client-1",
        "http://10.244.2.10:8080/delay/5000",
        "web.shop",
    );
    assert!(
        body.contains("504"),
        "a request past the timeout gets 504 after {:?}: {body}",
        t0.elapsed()
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    std::thread::sleep(Duration::from_secs(1));
    let stdout = identityd_ok(&["stat", "--json", "--by-caller", "--dir"], &lab.dir);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&stdout).unwrap();
    let row = |svc: &str, caller: &str| {
        rows.iter()
            .find(|r| r["service"] == svc && r["source_identity"] == caller && r["kind"] == "http")
            .unwrap_or_else(|| panic!("stat has no row for {svc} from {caller}: {rows:#?}"))
    };
    for svc in ["web-v1.shop", "web-v2.shop"] {
        let r = row(svc, CLIENT);
        assert!(r["count"].as_u64().unwrap() > 0, "{r}");
        assert!(r["p50_ms"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert!(
        rows.iter().any(|r| r["source_identity"] == CLIENT
            && r["kind"] == "http"
            && r["server_errors"].as_u64() > Some(0)),
        "the 504 is a 5xx for the client in stat: {rows:#?}"
    );
    let refused = rows
        .iter()
        .filter(|r| r["source_identity"] == WEB && r["kind"] == "http")
        .map(|r| r["client_errors"].as_u64().unwrap())
        .sum::<u64>();
    assert!(
        refused >= 1,
        "the 403 to web's identity is a 4xx in stat: {rows:#?}"
    );
    // `lab up` ended with the same data as a table.
    let table = lab
        .stdout
        .split_once("latency and success per service")
        .map(|(_, t)| t)
        .unwrap_or_else(|| panic!("lab up prints a latency table:\n{}", lab.stdout));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("http") && l.contains("web-v1.shop") && l.contains('%')),
        "lab up's table has the split's services with a success rate:\n{table}"
    );
    // `top --json`: the split's routes among the busiest, with their counts; one refresh.
    let stdout = identityd_ok(
        &[
            "top",
            "--json",
            "--iterations",
            "1",
            "--window",
            "60",
            "--dir",
        ],
        &lab.dir,
    );
    let top: Vec<serde_json::Value> =
        serde_json::from_str(String::from_utf8_lossy(&stdout).trim()).unwrap();
    assert!(
        top.iter()
            .any(|r| r["service"] == "web-v1.shop" && r["count"].as_u64().unwrap_or(0) > 0),
        "top lists the split's busiest route: {top:#?}"
    );
    assert!(
        top.windows(2)
            .all(|w| w[0]["count"].as_u64() >= w[1]["count"].as_u64()),
        "busiest first: {top:#?}"
    );
    // The same from one node's local API (its telemetry socket).
    let sock = lab.dir.join("n1/run/telemetry.sock");
    let stdout = identityd_ok(&["stat", "--json", "--socket"], &sock);
    let local: Vec<serde_json::Value> = serde_json::from_slice(&stdout).unwrap();
    assert!(
        local.iter().any(|r| r["service"] == "web-v1.shop"),
        "n1's own socket has the client's calls: {local:#?}"
    );
    // `observe --l7 --json`: a request of this trial with both SPIFFE IDs, status and path.
    let stdout = identityd_ok(&["observe", "--l7", "--json", "--dir"], &lab.dir);
    let text = String::from_utf8_lossy(&stdout);
    let flows: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let seen = flows.iter().find(|f| {
        f["direction"] == "outbound"
            && f["source_identity"] == CLIENT
            && f["destination_identity"] == WEB
            && f["status"] == 200
            && f["source_pod"] == "front/client-1"
            && f["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("mtls over "))
    });
    assert!(
        seen.is_some(),
        "observe --l7 lists the client's requests:\n{text}"
    );
    assert!(
        flows.iter().any(|f| f["direction"] == "outbound"
            && f["source_identity"] == CLIENT
            && f["status"] == 504
            && f["response_code_class"] == "5xx"
            && f["latency_ms"].as_f64().is_some_and(|ms| ms >= 900.0)),
        "observe --l7 shows the 504 with its latency:\n{text}"
    );
}

/// A running Prometheus server (Debian's `prometheus`) that scrapes the lab's three node
/// daemons and its CA every second; killed on drop.
struct Prometheus {
    child: std::process::Child,
    addr: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = dir.join("prometheus.yml");
        std::fs::write(
            &cfg,
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n\
             scrape_configs:\n\
             - job_name: identityd-node\n  static_configs:\n  - targets: ['10.99.0.11:9962', '10.99.0.12:9962', '10.99.0.13:9962']\n\
             - job_name: identityd-ca\n  static_configs:\n  - targets: ['10.99.0.1:9963']\n",
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("prometheus-data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus (scripts/bootstrap installs Debian's prometheus)");
        Self {
            child,
            addr: format!("127.0.0.1:{port}"),
        }
    }

    /// `GET path` of Prometheus's HTTP API, as JSON.
    fn api(&self, path: &str) -> Option<serde_json::Value> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
            self.addr
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let (head, body) = out.split_once("\r\n\r\n")?;
        // The API answers with a length or in chunks.
        if !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            return serde_json::from_str(body).ok();
        }
        let mut rest = body;
        let mut joined = String::new();
        loop {
            let (size, after) = rest.split_once("\r\n")?;
            let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                break;
            }
            joined.push_str(after.get(..size)?);
            rest = after.get(size + 2..)?;
        }
        serde_json::from_str(&joined).ok()
    }

    /// The result vector of an instant query.
    fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let enc: String = expr
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let v = self
            .api(&format!("/api/v1/query?query={enc}"))
            .unwrap_or_else(|| panic!("Prometheus did not answer the query {expr}"));
        assert_eq!(v["status"], "success", "{expr}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The value of a query that sums to one sample (0 when it has none).
    fn scalar(&self, expr: &str) -> f64 {
        self.query(expr)
            .first()
            .and_then(|r| r["value"][1].as_str()?.parse().ok())
            .unwrap_or(0.0)
    }
}

/// A real Prometheus scrapes every node daemon and the CA: all targets are up, every PromQL
/// expression of the dashboard returns at least one series, and the request counter it holds
/// grows by exactly the number of requests sent, per identity pair.
fn prometheus_scrapes_the_lab_and_every_dashboard_query_has_data(lab: &Lab) {
    const CLIENT: &str = "spiffe://cluster.local/ns/front/sa/client";
    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
    let prom = Prometheus::start(&lab.dir);
    let up = eventually(30, || {
        prom.api("/api/v1/targets").is_some_and(|t| {
            let active = t["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            active.len() == 4 && active.iter().all(|a| a["health"] == "up")
        })
    });
    assert!(
        up,
        "Prometheus has all four targets up: {:?}\n{}",
        prom.api("/api/v1/targets"),
        std::fs::read_to_string(lab.dir.join("prometheus.log")).unwrap_or_default()
    );
    // Exact counts per identity pair, as Prometheus sees them.
    let pair = |src: &str, dst: &str, class: &str| {
        prom.scalar(&format!(
            "sum(identityd_requests_total{{direction=\"outbound\",source_identity=\"{src}\",destination_identity=\"{dst}\",response_code_class=\"{class}\"}})"
        ))
    };
    // Let the scrapes catch up with what the earlier trials sent.
    std::thread::sleep(Duration::from_secs(3));
    let ok0 = pair(CLIENT, WEB, "2xx");
    let denied0 = prom.scalar(&format!(
        "sum(identityd_requests_total{{direction=\"inbound\",source_identity=\"{WEB}\",destination_service=\"web.shop\",response_code_class=\"4xx\"}})"
    ));
    const N: usize = 20;
    const REFUSED: usize = 3;
    for i in 0..N {
        let (ok, body) = get_host(
            "idd-n1-client-1",
            &format!("http://10.244.2.10:8080/prom-{i}"),
            "web.shop",
        );
        assert!(ok && body.contains("pod="), "request {i}: {body}");
    }
    for _ in 0..REFUSED {
        let (_, body) = get_host("idd-n1-web-1", "http://10.244.2.10:8080/", "web.shop");
        assert!(body.contains("403"), "web's own call is refused: {body}");
    }
    let want = (ok0 + N as f64, denied0 + REFUSED as f64);
    let current = || {
        (
            pair(CLIENT, WEB, "2xx"),
            prom.scalar(&format!(
                "sum(identityd_requests_total{{direction=\"inbound\",source_identity=\"{WEB}\",destination_service=\"web.shop\",response_code_class=\"4xx\"}})"
            )),
        )
    };
    let seen = eventually(15, || current() == want);
    assert!(
        seen,
        "{N} requests {CLIENT} → {WEB} and {REFUSED} refused from {WEB}: Prometheus went from {:?} to {:?} (want {want:?})",
        (ok0, denied0),
        current()
    );
    // The CA counts each refusal by request and reason: n1 asking for a pod of n2, K times.
    let ca_refused = || {
        prom.scalar(
            "sum(identityd_ca_refused_total{request=\"workload\",reason=\"authorization\"})",
        )
    };
    let refused0 = ca_refused();
    const CA_REFUSALS: usize = 4;
    for _ in 0..CA_REFUSALS {
        let err = n1_asks_the_ca_for_web_on(&lab.dir, "web-2").unwrap_err();
        assert_eq!(err.code(), Some(tonic::Code::PermissionDenied), "{err}");
    }
    let want = refused0 + CA_REFUSALS as f64;
    assert!(
        eventually(15, || ca_refused() == want),
        "{CA_REFUSALS} refused workload requests: Prometheus went from {refused0} to {} (want {want})",
        ca_refused()
    );
    // Two more scrapes so every rate() has samples after the traffic.
    std::thread::sleep(Duration::from_secs(3));
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/identityd/dashboards/identityd.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut empty = Vec::new();
    let mut n = 0;
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            n += 1;
            if prom.query(expr).is_empty() {
                empty.push(format!("{}: {expr}", p["title"]));
            }
        }
    }
    assert!(n >= 20, "the dashboard has its queries ({n})");
    assert!(
        empty.is_empty(),
        "dashboard queries with no series in Prometheus:\n{}",
        empty.join("\n")
    );
}

fn lab_down_leaves_nothing(lab: &Lab) {
    let out = Command::new(BIN)
        .args(["lab", "down", "--dir"])
        .arg(&lab.dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `lab down` killed everything in the node namespaces, the restarted daemons included.
    for c in lab
        .children
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter_mut()
    {
        let _ = c.wait();
    }
    let ns = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        !ns.lines().any(|l| l.starts_with("idd-n")),
        "namespaces left: {ns}"
    );
    assert!(
        !Path::new("/sys/class/net/idd-fabric").exists(),
        "bridge left"
    );
    for i in 1..=3 {
        assert!(
            !Path::new(&format!("/var/run/wireguard/idd{i}.sock")).exists(),
            "UAPI socket idd{i} left"
        );
        assert!(
            !Path::new(&format!("/sys/fs/bpf/identityd/n{i}")).exists(),
            "BPF pins of n{i} left"
        );
    }
    let ps = String::from_utf8_lossy(
        &Command::new("ps")
            .args(["-eo", "args"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    let dir_s = lab.dir.display().to_string();
    assert!(
        !ps.lines()
            .any(|l| l.contains(&dir_s) && !l.contains("ps -eo")),
        "processes left:\n{ps}"
    );
}

/// One capability: its name and its check.
type Check = (&'static str, fn(&Lab));

/// The trials, in the order they run.
const TRIALS: &[Check] = &[
    (
        "lab_up_leaves_no_plaintext_on_the_underlay",
        lab_up_leaves_no_plaintext_on_the_underlay,
    ),
    (
        "every_request_goes_over_mtls_with_the_callers_spiffe_id",
        every_request_goes_over_mtls_with_the_callers_spiffe_id,
    ),
    (
        "a_remote_node_address_is_reached_only_through_wireguard",
        a_remote_node_address_is_reached_only_through_wireguard,
    ),
    (
        "an_identity_the_authorization_policy_does_not_allow_gets_403",
        an_identity_the_authorization_policy_does_not_allow_gets_403,
    ),
    (
        "the_httproute_splits_traffic_90_10",
        the_httproute_splits_traffic_90_10,
    ),
    ("node_authorization_is_enforced", |l| {
        node_authorization_is_enforced(&l.dir)
    }),
    ("ingress_is_served_with_ca_issued_certificates", |l| {
        ingress_is_served_with_ca_issued_certificates(&l.dir, &l.stdout)
    }),
    (
        "any_tcp_between_strict_pods_is_mtls_and_authorized_by_identity",
        any_tcp_between_strict_pods_is_mtls_and_authorized_by_identity,
    ),
    (
        "observe_shows_flows_with_their_path_and_the_callers_identity",
        observe_shows_flows_with_their_path_and_the_callers_identity,
    ),
    (
        "request_metrics_count_every_request_per_identity_pair",
        request_metrics_count_every_request_per_identity_pair,
    ),
    (
        "prometheus_scrapes_the_lab_and_every_dashboard_query_has_data",
        prometheus_scrapes_the_lab_and_every_dashboard_query_has_data,
    ),
    (
        "the_live_and_static_audits_pass_on_a_healthy_lab",
        the_live_and_static_audits_pass_on_a_healthy_lab,
    ),
    (
        "every_node_is_strict_with_a_wireguard_path_to_every_peer",
        every_node_is_strict_with_a_wireguard_path_to_every_peer,
    ),
    ("a_stalled_ca_delays_nothing_but_identities", |l| {
        a_stalled_ca_delays_nothing_but_identities(&l.dir)
    }),
    (
        "a_broken_yaml_file_mid_run_is_reported_and_ignored",
        a_broken_yaml_file_mid_run_is_reported_and_ignored,
    ),
    (
        "a_killed_node_daemon_leaks_nothing_and_comes_back_with_its_key",
        a_killed_node_daemon_leaks_nothing_and_comes_back_with_its_key,
    ),
    (
        "the_daemon_restarts_an_envoy_that_dies",
        the_daemon_restarts_an_envoy_that_dies,
    ),
    (
        "a_killed_wireguard_device_is_back_within_a_second_with_its_key",
        a_killed_wireguard_device_is_back_within_a_second_with_its_key,
    ),
    (
        "the_audit_fails_for_the_right_reasons_in_every_format",
        the_audit_fails_for_the_right_reasons_in_every_format,
    ),
    // Attacks from here on leave strict-mode drops behind (counted, as they should be): they
    // run after the trials that expect a clean audit.
    (
        "plaintext_through_the_tunnel_to_a_strict_pod_is_dropped",
        plaintext_through_the_tunnel_to_a_strict_pod_is_dropped,
    ),
    (
        "an_unpublished_pod_cidr_is_no_path_even_over_a_cni_route",
        an_unpublished_pod_cidr_is_no_path_even_over_a_cni_route,
    ),
    (
        "an_underlay_host_reaches_no_strict_pod_and_no_spoofed_pod_source_gets_in",
        an_underlay_host_reaches_no_strict_pod_and_no_spoofed_pod_source_gets_in,
    ),
    (
        "mode_changes_keep_http_and_tcp_working",
        mode_changes_keep_http_and_tcp_working,
    ),
    (
        "network_policy_matches_the_truth_table",
        netpol::network_policy_matches_the_truth_table,
    ),
    (
        "a_conflicting_identitydnode_takes_nothing_from_its_owner",
        a_conflicting_identitydnode_takes_nothing_from_its_owner,
    ),
    (
        "a_daemon_restarted_while_the_ca_is_down_lets_no_plaintext_into_strict_pods",
        a_daemon_restarted_while_the_ca_is_down_lets_no_plaintext_into_strict_pods,
    ),
    (
        "a_node_rebooted_while_the_ca_is_down_lets_no_plaintext_into_strict_pods",
        a_node_rebooted_while_the_ca_is_down_lets_no_plaintext_into_strict_pods,
    ),
    (
        "a_forged_identitydnode_for_n2_configures_nothing",
        a_forged_identitydnode_for_n2_configures_nothing,
    ),
    (
        "a_wireguard_rotation_under_load_loses_at_most_a_blip_and_a_frozen_node_fails_it_by_name",
        a_wireguard_rotation_under_load_loses_at_most_a_blip_and_a_frozen_node_fails_it_by_name,
    ),
    (
        "a_ca_rollover_under_load_fails_no_request",
        a_ca_rollover_under_load_fails_no_request,
    ),
    (
        "a_wireguard_key_rotation_completes_through_the_file_source",
        a_wireguard_key_rotation_completes_through_the_file_source,
    ),
    (
        "strict_mode_off_on_a_node_fails_the_audit",
        strict_mode_off_on_a_node_fails_the_audit,
    ),
    (
        "a_removed_identitydnode_is_dropped_by_its_peers",
        a_removed_identitydnode_is_dropped_by_its_peers,
    ),
    (
        "envoy_admin_is_reachable_only_by_root_through_its_socket",
        envoy_admin_is_reachable_only_by_root_through_its_socket,
    ),
    ("lab_down_leaves_nothing", lab_down_leaves_nothing),
];

/// Brings the lab up once; `None` with the reason when it does not come up (every trial then
/// fails with that reason).
fn lab_up() -> Result<Lab, String> {
    identityd_tests::require_root();
    if Path::new("/sys/class/net/idd-fabric").exists() {
        return Err(
            "another lab is up (bridge idd-fabric exists): run `identityd lab down` first".into(),
        );
    }
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = tmp.path().join("lab");
    let out = Command::new(BIN)
        .args(["lab", "up", "--nodes", "3", "--dir"])
        .arg(&dir)
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lab = Lab {
        dir,
        stdout,
        children: Mutex::new(Vec::new()),
        _tmp: tmp,
    };
    if !out.status.success() {
        return Err(format!(
            "lab up failed:\n{}\n{}",
            lab.stdout,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(lab)
}

fn main() {
    let args = Arguments::from_args();
    let names = || TRIALS.iter().map(|(n, _)| *n);
    // Listing (nextest, `--list`) or a filter that selects nothing must not build a lab.
    let selected = names().any(|n| {
        !args.skip.iter().any(|s| n.contains(s.as_str()))
            && args.filter.as_deref().is_none_or(
                |f| {
                    if args.exact { n == f } else { n.contains(f) }
                },
            )
    });
    if args.list || !selected {
        let trials = names().map(|n| Trial::test(n, || Ok(()))).collect();
        libtest_mimic::run(&args, trials).exit();
    }
    let lab = std::sync::Arc::new(lab_up());
    let trials = TRIALS
        .iter()
        .map(|&(name, f)| {
            let lab = std::sync::Arc::clone(&lab);
            Trial::test(name, move || match lab.as_ref() {
                Ok(l) => {
                    f(l);
                    Ok(())
                }
                Err(e) => Err(Failed::from(e)),
            })
        })
        .collect();
    let args = Arguments {
        test_threads: Some(1),
        ..args
    };
    let conclusion = libtest_mimic::run(&args, trials);
    drop(lab);
    conclusion.exit();
}
