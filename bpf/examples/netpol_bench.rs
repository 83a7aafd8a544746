//! Bench (not a test): ns per packet of the classifier with NetworkPolicy maps holding 0, 100
//! and 10,000 policies (each 8 allow rules for its own subject identity, 1,000 pod entries),
//! measured with `BPF_PROG_TEST_RUN` (`repeat`; the kernel reports the mean time per run) on a
//! packet leaving a pod: not isolated, isolated and allowed by a rule, isolated and denied
//! (every lookup misses), and a reply of a tracked connection. Needs root.
//!
//! ```text
//! cargo run --release -p identityd-bpf --example netpol_bench -- [--out FILE] [--repeat N]
//! ```
#![allow(clippy::cast_precision_loss)] // Reason: ns figures as f64 for the report.

use std::net::IpAddr;

use anyhow::Context;
use identityd_bpf::packet::{self, L4};
use identityd_bpf::{
    Classifier, ClassifierConfig, FlowEvents, PolicyDirection, PolicyPod, PolicyRule, Route,
    RouteKind,
};
use serde_json::json;

const SRC: &str = "10.244.1.10";
const ALLOWED: &str = "10.244.2.10";
const DENIED: &str = "10.244.2.11";
const ID_SRC: u32 = 1;
const ID_ALLOWED: u32 = 2;
const ID_DENIED: u32 = 3;
const POLICY: u32 = 77;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn rule(subject: u32, peer: u32, port: u16) -> PolicyRule {
    PolicyRule {
        subject,
        direction: PolicyDirection::Egress,
        peer,
        protocol: Some(6),
        port,
        port_prefix: 16,
    }
}

fn load(policies: u32) -> anyhow::Result<Classifier> {
    let mut c = Classifier::load(&ClassifierConfig {
        flow_events: FlowEvents::None,
        ..ClassifierConfig::default()
    })
    .context("load classifier.o (root?)")?;
    for (cidr, kind, node) in [
        ("10.244.1.0/24", RouteKind::Local, 1),
        ("10.244.0.0/16", RouteKind::WireGuard, 2),
    ] {
        c.set_route(
            cidr.parse()?,
            Route {
                kind,
                node_id: node,
            },
        )?;
    }
    c.set_tunnels(&[7])?;
    c.set_ready(true)?;
    // 1,000 pod entries of 100 identities, plus the three of the measured packets.
    for i in 0..1000u32 {
        let a = IpAddr::from([10, 244, 3 + (i / 250) as u8, (i % 250) as u8]);
        c.set_policy_pod(
            a,
            PolicyPod {
                identity: 1000 + i % 100,
                ..PolicyPod::default()
            },
        )?;
    }
    for (a, identity) in [(ALLOWED, ID_ALLOWED), (DENIED, ID_DENIED)] {
        c.set_policy_pod(
            ip(a),
            PolicyPod {
                identity,
                ..PolicyPod::default()
            },
        )?;
    }
    c.set_policy_pod(
        ip(SRC),
        PolicyPod {
            identity: ID_SRC,
            ingress_policy: 0,
            egress_policy: if policies > 0 { POLICY } else { 0 },
        },
    )?;
    // Each policy: 8 rules of its own subject (so the trie holds 8 × N entries).
    for p in 0..policies {
        for r in 0..8u32 {
            c.set_policy_rule(
                rule(10_000 + p, 1000 + (p + r) % 100, 8000 + (r as u16)),
                p + 1,
            )?;
        }
    }
    if policies > 0 {
        c.set_policy_rule(rule(ID_SRC, ID_ALLOWED, 8080), POLICY)?;
    }
    Ok(c)
}

fn ns(
    c: &Classifier,
    pkt: &[u8],
    repeat: u32,
    rounds: u32,
    want_pass: bool,
) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for _ in 0..rounds {
        let out = c.test_run(pkt, 0, repeat)?;
        anyhow::ensure!(
            out.passed() == want_pass,
            "unexpected verdict {out:?} (want pass = {want_pass})"
        );
        total += out.duration.as_nanos() as f64;
    }
    Ok(total / f64::from(rounds))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let repeat: u32 = arg("--repeat").map_or(Ok(200_000), |s| s.parse())?;
    let out = arg("--out").unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/bench-reports/netpol_classifier.json"
        )
        .to_owned()
    });
    let mut rows = Vec::new();
    let mut buf = Vec::new();
    for policies in [0u32, 100, 10_000] {
        let mut c = load(policies)?;
        let mut row = serde_json::Map::new();
        row.insert("policies".into(), json!(policies));
        row.insert("rules".into(), json!(c.policy_rules()?.len()));
        let name = if policies == 0 {
            "not_isolated"
        } else {
            "allowed_by_rule"
        };
        // A new connection (SYN: judged and tracked), then an established one (ACK: judged
        // only where isolation applies, never tracked), then UDP (tracked on every packet).
        packet::build(&mut buf, ip(SRC), ip(ALLOWED), L4::Tcp, (40000, 8080), 64);
        row.insert(
            format!("{name}_syn_ns"),
            json!(ns(&c, &buf, repeat, 5, true)?),
        );
        buf[14 + 20 + 13] = 0x10;
        row.insert(
            format!("{name}_ack_ns"),
            json!(ns(&c, &buf, repeat, 5, true)?),
        );
        if policies > 0 {
            c.set_policy_rule(
                PolicyRule {
                    protocol: Some(17),
                    ..rule(ID_SRC, ID_ALLOWED, 8080)
                },
                POLICY,
            )?;
        }
        packet::build(&mut buf, ip(SRC), ip(ALLOWED), L4::Udp, (40000, 8080), 64);
        row.insert(
            format!("{name}_udp_ns"),
            json!(ns(&c, &buf, repeat, 5, true)?),
        );
        if policies > 0 {
            packet::build(&mut buf, ip(SRC), ip(DENIED), L4::Tcp, (40000, 8080), 64);
            row.insert(
                "denied_syn_ns".into(),
                json!(ns(&c, &buf, repeat, 5, false)?),
            );
            // A reply: the denied peer opened the connection into the pod (ingress is open).
            let mut rev = Vec::new();
            packet::build(&mut rev, ip(DENIED), ip(SRC), L4::Tcp, (8080, 40001), 64);
            anyhow::ensure!(
                c.test_run_to_pod(&rev, 0, 7)?.passed(),
                "tracking the reply"
            );
            packet::build(&mut buf, ip(SRC), ip(DENIED), L4::Tcp, (40001, 8080), 64);
            buf[14 + 20 + 13] = 0x10;
            row.insert("reply_ack_ns".into(), json!(ns(&c, &buf, repeat, 5, true)?));
        }
        println!("{}", serde_json::Value::Object(row.clone()));
        rows.push(serde_json::Value::Object(row));
    }
    let report = json!({
        "method": "BPF_PROG_TEST_RUN, mean ns per run reported by the kernel, mean of 5 rounds",
        "repeat": repeat,
        "runs": rows,
    });
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {out}");
    Ok(())
}
