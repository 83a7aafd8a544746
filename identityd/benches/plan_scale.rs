//! Plans at scale, without datapaths: a cluster of N nodes and P pods in the FileSource shape,
//! one node's datapath plan + mesh plan + Envoy translation, timed, with the process's peak RSS.
//! `cargo bench -p identityd --bench plan_scale` → `target/bench-reports/plan_scale.json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use identityd::daemon::config::{DaemonConfig, Encryption, EncryptionMode, Role, Wireguard};
use identityd::daemon::mesh::plan_mesh;
use identityd::daemon::plan::plan;
use identityd::model::{ClusterState, MtlsMode};
use identityd_certs::TrustDomain;

fn cluster_yaml(nodes: usize, pods: usize) -> String {
    let mut y = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  annotations:\n    identityd.io/mtls: strict\n",
    );
    for n in 1..=nodes {
        // A syntactically valid, distinct 32-byte key per node.
        let key = base64_key(n);
        let _ = write!(
            y,
            "---\napiVersion: identityd.io/v1alpha1\nkind: IdentitydNode\nmetadata:\n  name: n{n}\nspec:\n  podCIDRs: [10.{}.{}.0/24]\n  underlayAddresses: [10.99.{}.{}]\n  wireguard: {{publicKey: \"{key}\", port: 51871}}\n",
            200 + n / 256,
            n % 256,
            n / 256,
            n % 256
        );
    }
    for p in 0..pods {
        let n = p % nodes + 1;
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: app-{p}\n  namespace: shop\n  labels: {{app: app-{}}}\nspec:\n  nodeName: n{n}\n  serviceAccountName: sa-{}\n  containers: [{{name: c, ports: [{{containerPort: 8080}}]}}]\nstatus: {{phase: Running, podIP: 10.{}.{}.{}}}\n",
            p % 20,
            p % 20,
            200 + n / 256,
            n % 256,
            10 + p / nodes
        );
    }
    for s in 0..20 {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: app-{s}\n  namespace: shop\nspec:\n  selector: {{app: app-{s}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n"
        );
    }
    y
}

fn base64_key(n: usize) -> String {
    use base64::Engine as _;
    let mut k = [7u8; 32];
    k[0] = (n % 251) as u8 + 1;
    k[1] = (n / 251) as u8;
    base64::engine::general_purpose::STANDARD.encode(k)
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let mut rows = Vec::new();
    for (nodes, pods) in [(3usize, 6usize), (50, 200), (1000, 10_000)] {
        let text = cluster_yaml(nodes, pods);
        let t0 = Instant::now();
        let objects = identityd::source::decode::decode_all(&text)
            .into_iter()
            .filter_map(|(_, r)| r.ok().flatten());
        let state = ClusterState::from_objects(1, objects);
        let load = t0.elapsed();
        assert!(state.problems.is_empty(), "{:?}", state.problems.first());
        let cfg = DaemonConfig {
            role: Role::Node,
            name: "n1".into(),
            trust_domain: "cluster.local".into(),
            cluster_source: identityd::daemon::config::ClusterSourceKind::File,
            secret_namespaces: Vec::new(),
            cluster_dir: "/c".into(),
            state_dir: "/s".into(),
            run_dir: "/r".into(),
            underlay_address: Some("10.99.0.1".parse().expect("ip")),
            pod_cidr: Some("10.200.1.0/24".into()),
            cluster_cidrs: vec!["10.200.0.0/14".into()],
            encryption: Encryption {
                mode: EncryptionMode::Wireguard,
                strict_mode: true,
                node_encryption: false,
                allow_from: Vec::new(),
            },
            wireguard: Some(Wireguard {
                interface: "idd1".into(),
                port: 51871,
            }),
            pod_interface_prefix: "p-".into(),
            wireguard_binary: None,
            pin_bpf: false,
            tunnel_address: None,
            metrics_address: None,
            flow_events: identityd::daemon::config::FlowEventsMode::Drops,
            ca_dir: None,
            listen: None,
            ca: None,
            envoy: None,
            ingress: Default::default(),
            mtls: Default::default(),
            svid_ttl: None,
            report: identityd::daemon::config::ReportSettings::default(),
            telemetry: identityd::daemon::config::TelemetrySettings::default(),
            startup_taint: String::new(),
        };
        let td = TrustDomain::new("cluster.local").expect("td");
        // Real SVIDs for this node's identities (as the CA role would issue them).
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = identityd_certs::Ca::init(
            &dir.path().join("ca"),
            td.clone(),
            identityd_certs::CaOptions::default(),
            std::time::SystemTime::now(),
        )
        .expect("ca");
        let svids: BTreeMap<_, _> = identityd::daemon::mesh::wanted_identities(&state, "n1", &td)
            .into_keys()
            .map(|id| {
                let s = ca
                    .issue(
                        &id,
                        std::time::Duration::from_secs(3600),
                        std::time::SystemTime::now(),
                    )
                    .expect("svid");
                (id, std::sync::Arc::new(s))
            })
            .collect();
        let bundle = ca.bundle(std::time::SystemTime::now()).to_pem();
        let mut peers = 0;
        let mut resources = 0;
        let iters: u32 = if nodes >= 1000 { 5 } else { 20 };
        let (mut planning, mut translating) =
            (std::time::Duration::ZERO, std::time::Duration::ZERO);
        for _ in 0..iters {
            let t1 = Instant::now();
            let p = plan(&cfg, &state, Path::new("/s/k"), MtlsMode::Disabled);
            peers = p.wireguard.as_ref().map_or(0, |w| w.peers.len());
            let m = plan_mesh(&state, "n1", &td, &svids, &bundle);
            let t2 = Instant::now();
            resources = identityd_envoy::translate::translate(&m).len();
            planning += t2 - t1;
            translating += t2.elapsed();
        }
        let row = format!(
            "{{\"nodes\":{nodes},\"pods\":{pods},\"load_ms\":{:.2},\"plan_ms\":{:.3},\"translate_ms\":{:.3},\"plan_and_translate_ms\":{:.3},\"wireguard_peers\":{peers},\"envoy_resources\":{resources},\"peak_rss_kib\":{}}}",
            load.as_secs_f64() * 1000.0,
            (planning / iters).as_secs_f64() * 1000.0,
            (translating / iters).as_secs_f64() * 1000.0,
            ((planning + translating) / iters).as_secs_f64() * 1000.0,
            vm_hwm_kib()
        );
        println!("{row}");
        rows.push(row);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-reports");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("plan_scale.json"),
        format!(
            "{{\"bench\":\"plan_scale\",\"results\":[{}]}}\n",
            rows.join(",")
        ),
    );
}
