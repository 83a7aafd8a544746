//! Ingress bench: requests/s and p50/p99 latency with `wrk` straight to an HTTP backend and
//! through an Envoy ingress listener configured by identityd (a route to the backend's
//! service), in the same run. Envoy runs with one worker (`--concurrency 1`).
//!
//! `cargo bench -p identityd-envoy --bench l7_ingress` (duration via
//! `IDENTITYD_BENCH_SECONDS`, default 5); writes `target/bench-reports/l7_ingress.json`.

#[path = "../tests/support/l7.rs"]
mod support;

use std::net::SocketAddr;
use std::process::Command;

use identityd_envoy::l7::{
    HttpRoute, IngressListener, L7Config, RouteParent, RouteRule, WeightedBackend,
};
use support::{Behaviour, Harness, backend, free_addr, ingress_mesh, ip, service};

#[derive(Debug)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: String,
}

fn millis(v: &str) -> f64 {
    let v = v.trim();
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

fn wrk(addr: SocketAddr, seconds: u32) -> Run {
    let out = Command::new("wrk")
        .args(["-t1", "-c32", &format!("-d{seconds}s"), "--latency"])
        .arg(format!("http://{addr}/"))
        .output()
        .expect("wrk (Debian package wrk, installed by the apt step)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_owned))
            .unwrap_or_default()
    };
    Run {
        rps: field("Requests/sec:").trim().parse().unwrap_or(f64::NAN),
        p50_ms: millis(&field("50%")),
        p99_ms: millis(&field("99%")),
        errors: text
            .lines()
            .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: u32 = std::env::var("IDENTITYD_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let h = Harness::start().await;
    let b = free_addr();
    backend(b, "backend", Behaviour::Ok).await;
    let gw = free_addr();
    let mesh = ingress_mesh(
        vec![service("web", "shop", 80, b.port(), &[ip(1)])],
        L7Config {
            listeners: vec![IngressListener {
                name: "gw".into(),
                address: gw,
                ..Default::default()
            }],
            routes: vec![HttpRoute {
                name: "web".into(),
                namespace: "shop".into(),
                parents: vec![RouteParent::Listener("gw".into())],
                rules: vec![RouteRule {
                    backends: vec![WeightedBackend {
                        service: "web".into(),
                        namespace: "shop".into(),
                        port: 80,
                        weight: 1,
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    h.push(&mesh).await;
    support::wait_status(&h, gw, "x", "/", 200).await;
    // wrk blocks: run it on a blocking thread so the backend keeps being served.
    let direct = tokio::task::spawn_blocking(move || wrk(b, seconds))
        .await
        .unwrap();
    let ingress = tokio::task::spawn_blocking(move || wrk(gw, seconds))
        .await
        .unwrap();
    println!("direct : {direct:?}");
    println!("ingress: {ingress:?}");
    let dir = identityd_tests::tools::workspace_root().join("target/bench-reports");
    std::fs::create_dir_all(&dir).expect("create report dir");
    let one = |r: &Run| {
        format!(
            "{{\"requests_per_second\": {:.0}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \"errors\": {:?}}}",
            r.rps, r.p50_ms, r.p99_ms, r.errors
        )
    };
    let report = format!(
        "{{\"tool\": \"wrk -t1 -c32 -d{seconds}s\", \"envoy_workers\": 1, \"direct\": {}, \"ingress\": {}}}\n",
        one(&direct),
        one(&ingress)
    );
    let path = dir.join("l7_ingress.json");
    std::fs::write(&path, report).expect("write report");
    println!("report: {}", path.display());
}
