//! NetworkPolicy on the lab, checked against a truth table: for each policy set, every
//! (source pod, destination pod, port, protocol) of the pods on n1 and n2 is probed at once
//! and compared with what a small, independent model of the Kubernetes rules written here
//! says (not the daemon's compiler): a flow passes only if the source's egress and the
//! destination's ingress allow it, and, for TCP, mTLS lets it (a strict destination takes TCP
//! only over mTLS from a mesh pod, on the ports of a Service in front of it).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{BIN, Lab, audit_results, node_status, wait_for_report_verdict};

/// A lab pod: (name, namespace, pod labels, IP, netns).
#[derive(Debug, Clone)]
struct Pod {
    name: String,
    ns: &'static str,
    labels: BTreeMap<&'static str, String>,
    ip: String,
}

impl Pod {
    fn netns(&self, node: usize) -> String {
        format!("idd-n{node}-{}", self.name)
    }
}

fn ns_labels(ns: &str) -> BTreeMap<&'static str, String> {
    let tier = match ns {
        "front" => "frontend",
        _ => "backend",
    };
    BTreeMap::from([
        ("kubernetes.io/metadata.name", ns.to_owned()),
        ("tier", tier.to_owned()),
    ])
}

/// Namespaces in the mesh with `identityd.io/mtls: strict`.
const STRICT: [&str; 2] = ["shop", "front"];

/// The pods probed: web, client and db on n1 and n2.
fn pods() -> Vec<(usize, Pod)> {
    let mut v = Vec::new();
    for node in 1..=2 {
        for (i, (app, ns)) in [("web", "shop"), ("client", "front"), ("db", "data")]
            .into_iter()
            .enumerate()
        {
            v.push((
                node,
                Pod {
                    name: format!("{app}-{node}"),
                    ns,
                    labels: BTreeMap::from([("app", app.to_owned()), ("version", "v1".to_owned())]),
                    ip: format!("10.244.{node}.{}", 10 + i),
                },
            ));
        }
    }
    v
}

/// (protocol, port, the container port's name) of the lab servers.
const PORTS: [(&str, u16, &str); 4] = [
    ("tcp", 6379, "kv"),
    ("tcp", 2525, "mail"),
    ("udp", 7001, "udp-a"),
    ("udp", 7002, "udp-b"),
];

/// A label selector: matchLabels and `key In [values]` expressions.
#[derive(Debug, Clone, Default)]
struct Sel {
    labels: Vec<(&'static str, &'static str)>,
    key_in: Vec<(&'static str, Vec<&'static str>)>,
}

impl Sel {
    fn all() -> Self {
        Self::default()
    }
    fn eq(k: &'static str, v: &'static str) -> Self {
        Self {
            labels: vec![(k, v)],
            ..Self::default()
        }
    }
    fn matches(&self, l: &BTreeMap<&'static str, String>) -> bool {
        self.labels
            .iter()
            .all(|(k, v)| l.get(k).map(String::as_str) == Some(*v))
            && self
                .key_in
                .iter()
                .all(|(k, vs)| l.get(k).is_some_and(|x| vs.contains(&x.as_str())))
    }
    fn yaml(&self, indent: &str) -> String {
        let mut y = String::from("{");
        if !self.labels.is_empty() {
            y.push_str("matchLabels: {");
            y.push_str(
                &self
                    .labels
                    .iter()
                    .map(|(k, v)| format!("\"{k}\": \"{v}\""))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            y.push('}');
        }
        if !self.key_in.is_empty() {
            if !self.labels.is_empty() {
                y.push_str(", ");
            }
            y.push_str("matchExpressions: [");
            y.push_str(
                &self
                    .key_in
                    .iter()
                    .map(|(k, vs)| {
                        format!(
                            "{{key: \"{k}\", operator: In, values: [{}]}}",
                            vs.join(", ")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            y.push(']');
        }
        y.push('}');
        let _ = indent;
        y
    }
}

#[derive(Debug, Clone)]
enum Peer {
    /// podSelector and/or namespaceSelector (`None`: absent).
    Pods(Option<Sel>, Option<Sel>),
    /// ipBlock cidr, except (IPv4 /8–/32 only here).
    Block(&'static str, Vec<&'static str>),
}

#[derive(Debug, Clone)]
enum PortSpec {
    Num(u16),
    Name(&'static str),
    Range(u16, u16),
}

#[derive(Debug, Clone)]
struct Rule {
    /// `None`: every peer.
    peers: Option<Vec<Peer>>,
    /// `None`: every port and protocol; else (protocol, port).
    ports: Option<Vec<(&'static str, Option<PortSpec>)>>,
}

#[derive(Debug, Clone)]
struct Policy {
    ns: &'static str,
    name: &'static str,
    select: Sel,
    /// Explicit policyTypes (Kubernetes' defaulting is not under test here).
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
}

fn in_cidr(ip: &str, cidr: &str) -> bool {
    let (net, len) = cidr.split_once('/').unwrap();
    let v = |s: &str| u32::from(s.parse::<std::net::Ipv4Addr>().unwrap());
    let len: u32 = len.parse().unwrap();
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    v(ip) & mask == v(net) & mask
}

impl Peer {
    fn matches(&self, policy_ns: &str, p: &Pod) -> bool {
        match self {
            Peer::Pods(pod, ns) => {
                let ns_ok = match ns {
                    None => p.ns == policy_ns,
                    Some(s) => s.matches(&ns_labels(p.ns)),
                };
                ns_ok && pod.as_ref().is_none_or(|s| s.matches(&p.labels))
            }
            Peer::Block(cidr, except) => {
                in_cidr(&p.ip, cidr) && !except.iter().any(|e| in_cidr(&p.ip, e))
            }
        }
    }
}

impl Rule {
    /// Whether this rule lets `peer` reach `dst_port` on (`proto`, `port`) of `target` (the
    /// pod whose container ports a named port refers to: the destination).
    fn allows(&self, policy_ns: &str, peer: &Pod, proto: &str, port: u16, name: &str) -> bool {
        let peer_ok = self
            .peers
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|x| x.matches(policy_ns, peer)));
        let port_ok = self.ports.as_ref().is_none_or(|ps| {
            ps.iter().any(|(p, spec)| {
                *p == proto
                    && match spec {
                        None => true,
                        Some(PortSpec::Num(n)) => *n == port,
                        Some(PortSpec::Name(n)) => *n == name,
                        Some(PortSpec::Range(a, b)) => (*a..=*b).contains(&port),
                    }
            })
        });
        peer_ok && port_ok
    }
}

/// The model: whether `src → dst` on (proto, port) passes.
fn expected(set: &[Policy], src: &Pod, dst: &Pod, proto: &str, port: u16, name: &str) -> bool {
    let side = |pod: &Pod, other: &Pod, egress: bool| {
        let selecting: Vec<&Policy> = set
            .iter()
            .filter(|p| p.ns == pod.ns && p.select.matches(&pod.labels))
            .filter(|p| {
                if egress {
                    p.egress.is_some()
                } else {
                    p.ingress.is_some()
                }
            })
            .collect();
        selecting.is_empty()
            || selecting.iter().any(|p| {
                let rules = if egress { &p.egress } else { &p.ingress };
                rules
                    .iter()
                    .flatten()
                    .any(|r| r.allows(p.ns, other, proto, port, name))
            })
    };
    // mTLS: a strict pod takes TCP only from its node's Envoy, whose inbound listeners serve
    // the ports of the Services in front of it (web: kv and mail); a caller outside the mesh
    // is refused.
    let behind_service = dst.labels.get("app").is_some_and(|a| a == "web");
    let mtls_ok =
        proto != "tcp" || !STRICT.contains(&dst.ns) || (STRICT.contains(&src.ns) && behind_service);
    mtls_ok && side(src, dst, true) && side(dst, src, false)
}

fn rules_yaml(y: &mut String, key: &str, peer_key: &str, rules: &[Rule]) {
    let _ = writeln!(y, "  {key}:");
    if rules.is_empty() {
        // `ingress: []`: isolated, nothing allowed.
        y.truncate(y.len() - 1);
        y.push_str(" []\n");
        return;
    }
    for r in rules {
        y.push_str("  - ");
        let mut first = true;
        let mut field = |y: &mut String, s: &str| {
            if !first {
                y.push_str("    ");
            }
            first = false;
            y.push_str(s);
            y.push('\n');
        };
        if let Some(peers) = &r.peers {
            field(y, &format!("{peer_key}:"));
            for p in peers {
                match p {
                    Peer::Pods(pod, ns) => {
                        let mut parts = Vec::new();
                        if let Some(s) = pod {
                            parts.push(format!("podSelector: {}", s.yaml("")));
                        }
                        if let Some(s) = ns {
                            parts.push(format!("namespaceSelector: {}", s.yaml("")));
                        }
                        let _ = writeln!(y, "    - {{{}}}", parts.join(", "));
                    }
                    Peer::Block(cidr, except) => {
                        let _ = writeln!(
                            y,
                            "    - ipBlock: {{cidr: {cidr}, except: [{}]}}",
                            except.join(", ")
                        );
                    }
                }
            }
        }
        if let Some(ports) = &r.ports {
            field(y, "ports:");
            for (proto, spec) in ports {
                let proto = proto.to_uppercase();
                let _ = match spec {
                    None => writeln!(y, "    - {{protocol: {proto}}}"),
                    Some(PortSpec::Num(n)) => writeln!(y, "    - {{protocol: {proto}, port: {n}}}"),
                    Some(PortSpec::Name(n)) => {
                        writeln!(y, "    - {{protocol: {proto}, port: {n}}}")
                    }
                    Some(PortSpec::Range(a, b)) => {
                        writeln!(y, "    - {{protocol: {proto}, port: {a}, endPort: {b}}}")
                    }
                };
            }
        }
        if first {
            // `- {}`: every peer, every port.
            y.truncate(y.len() - 2);
            y.push_str("- {}\n");
        }
    }
}

fn yaml(set: &[Policy]) -> String {
    let mut y = String::new();
    for p in set {
        let mut types = Vec::new();
        if p.ingress.is_some() {
            types.push("Ingress");
        }
        if p.egress.is_some() {
            types.push("Egress");
        }
        let _ = write!(
            y,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {}\n  namespace: {}\nspec:\n  podSelector: {}\n  policyTypes: [{}]\n",
            p.name,
            p.ns,
            p.select.yaml(""),
            types.join(", ")
        );
        if let Some(r) = &p.ingress {
            rules_yaml(&mut y, "ingress", "from", r);
        }
        if let Some(r) = &p.egress {
            rules_yaml(&mut y, "egress", "to", r);
        }
    }
    y
}

fn pods_of(sel: Sel, ns: Option<Sel>) -> Peer {
    Peer::Pods(Some(sel), ns)
}

fn ns_named(ns: &'static str) -> Sel {
    Sel::eq("kubernetes.io/metadata.name", ns)
}

fn all_from(ns: Sel) -> Peer {
    Peer::Pods(None, Some(ns))
}

fn rule(peers: Option<Vec<Peer>>, ports: Option<Vec<(&'static str, Option<PortSpec>)>>) -> Rule {
    Rule { peers, ports }
}

fn policy(
    ns: &'static str,
    name: &'static str,
    select: Sel,
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
) -> Policy {
    Policy {
        ns,
        name,
        select,
        ingress,
        egress,
    }
}

/// The policy sets, each applied alone (the previous set's file is replaced).
fn sets() -> Vec<(&'static str, Vec<Policy>)> {
    use PortSpec::{Name, Num, Range};
    vec![
        ("no policy", vec![]),
        (
            "default deny ingress in shop",
            vec![policy("shop", "deny-in", Sel::all(), Some(vec![]), None)],
        ),
        (
            "default deny egress in front",
            vec![policy("front", "deny-out", Sel::all(), None, Some(vec![]))],
        ),
        (
            "data takes everything from front only (kubernetes.io/metadata.name)",
            vec![policy(
                "data",
                "from-front",
                Sel::all(),
                Some(vec![rule(Some(vec![all_from(ns_named("front"))]), None)]),
                None,
            )],
        ),
        (
            "web takes kv from client pods of frontend-tier namespaces (pod and namespace selector)",
            vec![policy(
                "shop",
                "kv-from-clients",
                Sel::eq("app", "web"),
                Some(vec![rule(
                    Some(vec![pods_of(
                        Sel::eq("app", "client"),
                        Some(Sel::eq("tier", "frontend")),
                    )]),
                    Some(vec![("tcp", Some(Num(6379)))]),
                )]),
                None,
            )],
        ),
        (
            "data takes from 10.244.0.0/16 except n2's pod CIDR (ipBlock with except)",
            vec![policy(
                "data",
                "block",
                Sel::all(),
                Some(vec![rule(
                    Some(vec![Peer::Block("10.244.0.0/16", vec!["10.244.2.0/24"])]),
                    None,
                )]),
                None,
            )],
        ),
        (
            "shop and data take the named ports mail and udp-b from anyone",
            vec![
                policy(
                    "shop",
                    "named",
                    Sel::all(),
                    Some(vec![rule(None, Some(vec![("tcp", Some(Name("mail")))]))]),
                    None,
                ),
                policy(
                    "data",
                    "named",
                    Sel::all(),
                    Some(vec![rule(None, Some(vec![("udp", Some(Name("udp-b")))]))]),
                    None,
                ),
            ],
        ),
        (
            "data takes UDP 7000-7001 (endPort) and any TCP port from shop",
            vec![policy(
                "data",
                "range",
                Sel::all(),
                Some(vec![
                    rule(None, Some(vec![("udp", Some(Range(7000, 7001)))])),
                    rule(
                        Some(vec![all_from(ns_named("shop"))]),
                        Some(vec![("tcp", None)]),
                    ),
                ]),
                None,
            )],
        ),
        (
            "front sends only to n1's pod CIDR (egress to a CIDR)",
            vec![policy(
                "front",
                "to-n1",
                Sel::all(),
                None,
                Some(vec![rule(
                    Some(vec![Peer::Block("10.244.1.0/24", vec![])]),
                    None,
                )]),
            )],
        ),
        (
            "two policies on web unioned: kv from front, udp-a from data",
            vec![
                policy(
                    "shop",
                    "kv-from-front",
                    Sel::eq("app", "web"),
                    Some(vec![rule(
                        Some(vec![all_from(ns_named("front"))]),
                        Some(vec![("tcp", Some(Num(6379)))]),
                    )]),
                    None,
                ),
                policy(
                    "shop",
                    "udp-from-data",
                    Sel::eq("app", "web"),
                    Some(vec![rule(
                        Some(vec![all_from(ns_named("data"))]),
                        Some(vec![("udp", Some(Num(7001)))]),
                    )]),
                    None,
                ),
            ],
        ),
        (
            "db sends only to named port udp-a and to shop (egress with a named port)",
            vec![policy(
                "data",
                "db-out",
                Sel::eq("app", "db"),
                None,
                Some(vec![
                    rule(None, Some(vec![("udp", Some(Name("udp-a")))])),
                    rule(Some(vec![all_from(ns_named("shop"))]), None),
                ]),
            )],
        ),
        (
            "data takes from app In (web, client) in any namespace (matchExpressions)",
            vec![policy(
                "data",
                "in-expr",
                Sel::all(),
                Some(vec![rule(
                    Some(vec![pods_of(
                        Sel {
                            key_in: vec![("app", vec!["web", "client"])],
                            ..Sel::default()
                        },
                        Some(Sel::all()),
                    )]),
                    None,
                )]),
                None,
            )],
        ),
        (
            "front isolated both ways, allowing only itself",
            vec![policy(
                "front",
                "self-only",
                Sel::all(),
                Some(vec![rule(Some(vec![pods_of(Sel::all(), None)]), None)]),
                Some(vec![rule(Some(vec![pods_of(Sel::all(), None)]), None)]),
            )],
        ),
    ]
}

/// Probes every (source, destination, port) at once: one `identityd lab probe` per source pod.
fn probe_all(pods: &[(usize, Pod)]) -> BTreeMap<(String, String, String), bool> {
    let mut children = Vec::new();
    for (node, src) in pods {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &src.netns(*node), BIN, "lab", "probe"]);
        cmd.args(["--timeout-ms", "2500"]);
        let mut keys = Vec::new();
        for (_, dst) in pods.iter().filter(|(_, d)| d.name != src.name) {
            for (proto, port, _) in PORTS {
                cmd.arg("--target")
                    .arg(format!("{proto}:{}:{port}", dst.ip));
                keys.push((
                    src.name.clone(),
                    dst.name.clone(),
                    format!("{proto}/{port}"),
                ));
            }
        }
        children.push((
            keys,
            cmd.stdout(std::process::Stdio::piped()).spawn().unwrap(),
        ));
    }
    let mut out = BTreeMap::new();
    for (keys, child) in children {
        let o = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        let got: Vec<bool> = text.lines().map(|l| l.trim() == "true").collect();
        assert_eq!(got.len(), keys.len(), "probe output: {text}");
        out.extend(keys.into_iter().zip(got));
    }
    out
}

/// The policy digest every node reports, once all three report the same one (and, when
/// `not` is given, a different one).
fn converged_digest(dir: &Path, not: Option<&str>) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let digests: Vec<Option<String>> = (1..=3)
            .map(|i| {
                node_status(dir, &format!("n{i}"))["network_policy"]["digest"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        if let Some(Some(d)) = digests.first()
            && digests.iter().all(|x| x.as_deref() == Some(d.as_str()))
            && not != Some(d.as_str())
        {
            return d.clone();
        }
        assert!(
            Instant::now() < deadline,
            "nodes did not converge on one policy digest: {digests:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

pub(crate) fn network_policy_matches_the_truth_table(lab: &Lab) {
    let file = lab.dir.join("cluster/networkpolicy-truth.yaml");
    let pods = pods();
    let baseline = converged_digest(&lab.dir, None);
    let mut digest = baseline.clone();
    let mut failures = Vec::new();
    for (what, set) in sets() {
        let y = yaml(&set);
        if set.is_empty() {
            let _ = std::fs::remove_file(&file);
        } else {
            std::fs::write(&file, &y).unwrap();
        }
        if what != "no policy" {
            digest = converged_digest(&lab.dir, Some(&digest));
        }
        let started = Instant::now();
        let got = probe_all(&pods);
        let mut wrong = Vec::new();
        let (mut allowed, mut denied) = (0, 0);
        for (_, src) in &pods {
            for (_, dst) in pods.iter().filter(|(_, d)| d.name != src.name) {
                for (proto, port, name) in PORTS {
                    let want = expected(&set, src, dst, proto, port, name);
                    let key = (
                        src.name.clone(),
                        dst.name.clone(),
                        format!("{proto}/{port}"),
                    );
                    if want {
                        allowed += 1;
                    } else {
                        denied += 1;
                    }
                    if got[&key] != want {
                        wrong.push(format!(
                            "{} → {} {proto}/{port}: expected {}, got {}",
                            src.name,
                            dst.name,
                            if want { "pass" } else { "denied" },
                            if got[&key] { "pass" } else { "denied" }
                        ));
                    }
                }
            }
        }
        eprintln!(
            "  netpol {what:?}: {} probes ({allowed} expected to pass, {denied} denied) in {} ms, {} wrong",
            got.len(),
            started.elapsed().as_millis(),
            wrong.len()
        );
        if !wrong.is_empty() {
            failures.push(format!("{what}:\n{y}\n  {}", wrong.join("\n  ")));
        }
    }
    let _ = std::fs::remove_file(&file);
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // Denials are reported: the flow events name the policy (observe), the nodes count them.
    let s = node_status(&lab.dir, "n1");
    let drops = s["network_policy"]["drops"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        !drops.is_empty(),
        "n1 counted no NetworkPolicy drop: {}",
        s["network_policy"]
    );
    the_audit_and_events_report_policies(lab, &file, &digest);
    // Back to no policy everywhere before the next part measures an update.
    let back = converged_digest(&lab.dir, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut back = back;
    while back != baseline {
        assert!(
            Instant::now() < deadline,
            "nodes did not return to the digest of no policy"
        );
        std::thread::sleep(Duration::from_millis(300));
        back = converged_digest(&lab.dir, None);
    }
    connections_cut_by_an_update_and_kept_when_still_allowed(lab, &file, &baseline);
}

/// With a policy applied, the live audit and the one over the nodes' reports pass
/// `policy.enforced`; a policy that selects nothing fails `policy.selects-nothing` naming it,
/// and the controller records a `SelectsNothing` Event for it (the FileSource's `.events/`),
/// removed with the policy.
fn the_audit_and_events_report_policies(lab: &Lab, file: &Path, previous: &str) {
    let mut set = sets()
        .into_iter()
        .find(|(w, _)| w.starts_with("default deny ingress"))
        .unwrap()
        .1;
    set.push(policy(
        "data",
        "selects-nothing",
        Sel::eq("app", "nobody"),
        Some(vec![]),
        None,
    ));
    std::fs::write(file, yaml(&set)).unwrap();
    converged_digest(&lab.dir, Some(previous));
    let live = audit_results(&lab.dir, false);
    assert_eq!(
        live.get("policy.enforced").map(String::as_str),
        Some("pass"),
        "{live:?}"
    );
    assert_eq!(
        live.get("policy.selects-nothing").map(String::as_str),
        Some("fail"),
        "{live:?}"
    );
    wait_for_report_verdict(&lab.dir, "policy.enforced", "pass", 40);
    let event = lab
        .dir
        .join("cluster/.events/networkpolicy-data-selects-nothing.yaml");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !event.exists() {
        assert!(Instant::now() < deadline, "no Event at {}", event.display());
        std::thread::sleep(Duration::from_millis(300));
    }
    let text = std::fs::read_to_string(&event).unwrap();
    assert!(
        text.contains("SelectsNothing") && text.contains("spec.podSelector"),
        "{text}"
    );
    let _ = std::fs::remove_file(file);
    let deadline = Instant::now() + Duration::from_secs(20);
    while event.exists() {
        assert!(
            Instant::now() < deadline,
            "the Event outlived its policy: {}",
            event.display()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Two long kv streams between db pods (data is not in the mesh): an update that keeps both
/// allowed loses nothing; the next denies db-2 → db-1 (ipBlock without n2), which is cut,
/// while db-1 → db-2 runs on.
fn connections_cut_by_an_update_and_kept_when_still_allowed(lab: &Lab, file: &Path, now: &str) {
    let stream = |node: usize, from: &str, to: &str| {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &format!("idd-n{node}-{from}"),
                BIN,
                "lab",
                "stream",
            ])
            .arg(format!("{to}:6379"))
            .args(["--interval-ms", "50", "--seconds", "12"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let kept = stream(1, "db-1", "10.244.2.12");
    let cut = stream(2, "db-2", "10.244.1.12");
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let still = vec![policy(
        "data",
        "from-data",
        Sel::all(),
        Some(vec![rule(Some(vec![pods_of(Sel::all(), None)]), None)]),
        None,
    )];
    std::fs::write(file, yaml(&still)).unwrap();
    let before = converged_digest(&lab.dir, Some(now));
    std::thread::sleep(Duration::from_secs(2));
    let deny = vec![policy(
        "data",
        "from-data",
        Sel::all(),
        Some(vec![rule(
            Some(vec![Peer::Block("10.244.0.0/16", vec!["10.244.2.0/24"])]),
            None,
        )]),
        None,
    )];
    std::fs::write(file, yaml(&deny)).unwrap();
    let denied = converged_digest(&lab.dir, Some(&before));
    let denied_at = t0.elapsed();
    let report = |c: std::process::Child| -> serde_json::Value {
        let o = c.wait_with_output().unwrap();
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!("stream report: {e}: {}", String::from_utf8_lossy(&o.stdout))
        })
    };
    let (k, c) = (report(kept), report(cut));
    let _ = std::fs::remove_file(file);
    converged_digest(&lab.dir, Some(&denied));
    eprintln!("  netpol streams: kept {k}, cut {c}, denial applied at {denied_at:?}");
    assert!(k["error"].is_null(), "the still-allowed stream broke: {k}");
    assert!(
        k["sent"].as_u64().unwrap() > 150 && k["replies"] == k["sent"],
        "the still-allowed stream lost replies: {k}"
    );
    assert!(
        k["max_reply_gap_ms"].as_u64().unwrap() < 1000,
        "the still-allowed stream stalled: {k}"
    );
    assert!(!c["error"].is_null(), "the denied stream was not cut: {c}");
    // Cut at the first packet after every node applied the denial (the stream's last reply
    // came before that, give or take one exchange).
    let lived_ms = c["replies"].as_u64().unwrap() * 50;
    assert!(
        lived_ms <= u64::try_from(denied_at.as_millis()).unwrap() + 1000,
        "the denied stream lived {lived_ms} ms, the denial was applied at {denied_at:?}: {c}"
    );
}
