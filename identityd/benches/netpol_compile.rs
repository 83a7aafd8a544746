//! NetworkPolicy compile time at scale: P pods (20 apps × 5 namespaces of 2 tiers) and N
//! policies (ingress from a namespace selector on a port range, egress to an ipBlock with an
//! except and a named port, and a pod+namespace selector), compiled with
//! `daemon::netpol::compile`; the map sizes it gives and the process's peak RSS.
//! `cargo bench -p identityd --bench netpol_compile` → `target/bench-reports/netpol_compile.json`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use identityd::daemon::netpol::compile;
use identityd::model::ClusterState;

fn cluster_yaml(pods: usize, policies: usize) -> String {
    let mut y = String::new();
    for ns in 0..5 {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: ns-{ns}\n  labels: {{tier: t{}}}\n",
            ns % 2
        );
    }
    for p in 0..pods {
        let _ = write!(
            y,
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: app-{p}\n  namespace: ns-{}\n  labels: {{app: app-{}}}\nspec:\n  nodeName: n1\n  containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}, {{name: dns, containerPort: 53, protocol: UDP}}]}}]\nstatus: {{phase: Running, podIP: 10.{}.{}.{}}}\n",
            p % 5,
            p % 20,
            100 + p / 65_536,
            (p / 256) % 256,
            p % 256
        );
    }
    for i in 0..policies {
        let ns = i % 5;
        let app = i % 20;
        let lo = 1000 + (i % 50) * 10;
        let _ = write!(
            y,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p-{i}\n  namespace: ns-{ns}\nspec:\n  podSelector: {{matchLabels: {{app: app-{app}}}}}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from: [{{namespaceSelector: {{matchLabels: {{tier: t{}}}}}}}]\n    ports: [{{protocol: TCP, port: {lo}, endPort: {}}}]\n  - from: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{app: app-{}}}}}}}]\n  egress:\n  - to: [{{ipBlock: {{cidr: 192.{}.0.0/16, except: [192.{}.{}.0/24]}}}}]\n  - ports: [{{protocol: UDP, port: dns}}]\n",
            i % 2,
            lo + 9,
            (i + 1) % 20,
            i % 250,
            i % 250,
            i % 200
        );
    }
    y
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
    for (pods, policies) in [(100usize, 10usize), (1000, 100), (1000, 1000)] {
        let text = cluster_yaml(pods, policies);
        let objects = identityd::source::decode::decode_all(&text)
            .into_iter()
            .filter_map(|(_, r)| r.ok().flatten());
        let state = ClusterState::from_objects(1, objects);
        assert!(state.problems.is_empty(), "{:?}", state.problems.first());
        assert_eq!(state.network_policies.len(), policies);
        // Median of 5 compiles.
        let mut times: Vec<Duration> = Vec::new();
        let mut plan = compile(&state);
        for _ in 0..5 {
            let t0 = Instant::now();
            plan = compile(&state);
            times.push(t0.elapsed());
        }
        times.sort();
        let median = times[times.len() / 2];
        println!(
            "{pods} pods × {policies} policies: compile {:.1} ms (median of 5); {} pod entries, {} CIDR identities, {} rules; peak RSS {} KiB",
            median.as_secs_f64() * 1e3,
            plan.pods.len(),
            plan.cidrs.len(),
            plan.rules.len(),
            vm_hwm_kib()
        );
        rows.push(serde_json::json!({
            "pods": pods,
            "policies": policies,
            "compile_ms_median": median.as_secs_f64() * 1e3,
            "compile_ms_min": times[0].as_secs_f64() * 1e3,
            "pod_entries": plan.pods.len(),
            "cidr_entries": plan.cidrs.len(),
            "rule_entries": plan.rules.len(),
            "peak_rss_kib": vm_hwm_kib(),
        }));
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-reports");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("netpol_compile.json"),
        serde_json::to_string_pretty(&serde_json::json!({ "runs": rows })).unwrap_or_default(),
    );
}
