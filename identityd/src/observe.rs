//! `identityd observe`: flow events from the classifiers' ring buffers (pinned by each node
//! daemon), with source/destination pod, identity where known, and the path verdict.

use std::path::Path;
use std::time::Duration;

use identityd_bpf::classifier::{DropReason, FlowEvent, FlowEventReader, Path as BpfPath};
use serde::Serialize;

use crate::model::{ClusterState, MtlsMode};

/// One flow event, resolved against the cluster state.
#[derive(Debug, Clone, Serialize)]
pub struct Flow {
    /// The node whose classifier saw it.
    pub node: String,
    /// `ip:port`.
    pub src: String,
    /// `ip:port`.
    pub dst: String,
    /// Source pod (`ns/name`), when known.
    pub src_pod: Option<String>,
    /// Destination pod, when known.
    pub dst_pod: Option<String>,
    /// The source's SPIFFE ID, when its namespace uses mTLS.
    pub src_identity: Option<String>,
    /// `tcp`, `udp`, `icmp` or the protocol number.
    pub protocol: String,
    /// `wireguard`, `ipsec`, `mtls`, `plaintext-allowed`, `dropped` or `pass`.
    pub verdict: String,
    /// Why it was dropped.
    pub drop_reason: Option<String>,
    /// Bytes.
    pub len: u32,
}

/// Resolves a raw event.
#[must_use]
pub fn resolve(node: &str, e: &FlowEvent, state: &ClusterState, trust_domain: &str) -> Flow {
    let pod_of = |ip| {
        state
            .pod_by_ip(ip)
            .map(|p| format!("{}/{}", p.namespace(), p.metadata.name))
    };
    let src_identity = state.pod_by_ip(e.src).and_then(|p| {
        (state.pod_mtls(p, MtlsMode::Disabled) != MtlsMode::Disabled).then(|| {
            format!(
                "spiffe://{trust_domain}/ns/{}/sa/{}",
                p.namespace(),
                p.service_account()
            )
        })
    });
    Flow {
        node: node.to_owned(),
        src: format!("{}:{}", e.src, e.src_port),
        dst: format!("{}:{}", e.dst, e.dst_port),
        src_pod: pod_of(e.src),
        dst_pod: pod_of(e.dst),
        src_identity,
        protocol: match e.protocol {
            6 => "tcp".into(),
            17 => "udp".into(),
            1 | 58 => "icmp".into(),
            n => n.to_string(),
        },
        verdict: match e.path {
            BpfPath::WireGuard => "wireguard",
            BpfPath::Ipsec => "ipsec",
            BpfPath::Proxy => "mtls",
            BpfPath::Plaintext => "plaintext-allowed",
            BpfPath::Drop => "dropped",
            BpfPath::Pass => "pass",
        }
        .to_owned(),
        drop_reason: e.drop_reason.map(|r| match r {
            DropReason::NoPath => "no encrypted path (strict mode)".to_owned(),
            DropReason::PlaintextRoute => "plaintext route (strict mode)".to_owned(),
            DropReason::NotEncrypted => "ingress-not-encrypted".to_owned(),
            DropReason::NotMtls => "ingress-not-mtls".to_owned(),
            DropReason::Other(n) => format!("reason {n}"),
        }),
        len: e.len,
    }
}

/// Renders one flow as a line.
#[must_use]
pub fn line(f: &Flow) -> String {
    format!(
        "{:<4} {:<5} {:<22} {:<18} → {:<22} {:<18} {:<18} {}{}",
        f.node,
        f.protocol,
        f.src,
        f.src_pod.as_deref().unwrap_or("-"),
        f.dst,
        f.dst_pod.as_deref().unwrap_or("-"),
        f.verdict,
        f.src_identity.as_deref().unwrap_or(""),
        f.drop_reason
            .as_ref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    )
}

/// Reads flows from every node of a lab. Without `follow`, drains what is buffered and returns.
///
/// # Errors
/// When the lab or a node's pinned ring buffer cannot be opened.
pub fn run(
    dir: &Path,
    follow: bool,
    json: bool,
    mut out: impl FnMut(&str),
) -> Result<usize, String> {
    let lab: crate::lab::LabState = serde_json::from_slice(
        &std::fs::read(dir.join("lab.json"))
            .map_err(|e| format!("--dir={}: no lab ({e})", dir.display()))?,
    )
    .map_err(|e| e.to_string())?;
    let source = crate::source::FileSource::open(
        dir.join("cluster"),
        crate::source::FileSourceOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    let mut readers = Vec::new();
    for ((name, _), pin) in lab.nodes.iter().zip(&lab.bpf_pins) {
        let r =
            FlowEventReader::from_pin(Path::new(pin)).map_err(|e| format!("node {name}: {e}"))?;
        readers.push((name.clone(), r));
    }
    let mut n = 0;
    loop {
        let state = source.snapshot();
        let mut got = 0;
        for (name, r) in &mut readers {
            while let Some(e) = r.try_next() {
                let f = resolve(name, &e, &state, "cluster.local");
                out(&if json {
                    serde_json::to_string(&f).unwrap_or_default()
                } else {
                    line(&f)
                });
                got += 1;
            }
        }
        n += got;
        if !follow {
            return Ok(n);
        }
        if got == 0 {
            std::thread::sleep(Duration::from_millis(100));
            let _ = source.poll();
        }
    }
}
