//! One description of the network-namespace cluster identityd runs on a single machine —
//! an underlay bridge, node namespaces on it, pod namespaces behind each node — shared by the
//! lab (`identityd lab up`), the test harness and the WireGuard bench.
//!
//! Pure plan, thin apply: [`ClusterSpec::standard`] lays out the addresses (node *i* is
//! `10.99.0.(10+i)` on the underlay, its pods live in `10.244.i.0/24`), [`plan`] turns a spec
//! into [`Step`]s without touching the machine (tested without root), and [`apply`] runs them
//! with `ip`, reporting each namespace and root-namespace link it creates so the caller can
//! remove them again. Names come from the caller ([`Names`]): the lab uses fixed, readable
//! names; tests use a unique tag per topology so they run in parallel.
#![deny(unsafe_code)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

/// The longest interface name Linux accepts (`IFNAMSIZ` - 1).
pub const MAX_IFNAME: usize = 15;

/// The underlay gateway address (on the bridge), with its prefix.
pub const UNDERLAY_GATEWAY: &str = "10.99.0.1/24";

/// Where the underlay bridge lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Underlay {
    /// A bridge in the root namespace (the lab: the host is on the node network).
    Root {
        /// Bridge name.
        bridge: String,
    },
    /// A bridge inside its own namespace (tests: nothing touches the host's links).
    Namespace {
        /// Namespace holding the bridge.
        ns: String,
        /// Bridge name.
        bridge: String,
    },
}

impl Underlay {
    fn ns(&self) -> Option<&str> {
        match self {
            Self::Root { .. } => None,
            Self::Namespace { ns, .. } => Some(ns),
        }
    }
    fn bridge(&self) -> &str {
        match self {
            Self::Root { bridge } | Self::Namespace { bridge, .. } => bridge,
        }
    }
}

/// How a pod is addressed behind its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodAddressing {
    /// Like a CNI point-to-point plugin: the pod has a /32, the node's end of the veth holds
    /// the node's gateway address `10.244.i.1/32` and a host route to the pod; the pod routes
    /// everything via that gateway. Several pods share one node subnet.
    Routed,
    /// One pod per node on a shared /24: node end `10.244.i.1/24`, pod `ip/24`.
    Subnet,
}

/// One pod namespace behind a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    /// Namespace name.
    pub ns: String,
    /// Pod address.
    pub ip: Ipv4Addr,
    /// The veth end in the node namespace.
    pub host_if: String,
    /// The veth end in the pod namespace.
    pub pod_if: String,
}

/// One node namespace on the underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Namespace name.
    pub ns: String,
    /// Address on the underlay (/24).
    pub underlay_ip: Ipv4Addr,
    /// The uplink veth end on the underlay side (enslaved to the bridge).
    pub uplink_outer: String,
    /// The uplink veth end inside the node.
    pub uplink_inner: String,
    /// The node's gateway address for its pods (`10.244.i.1`).
    pub pod_gateway: Ipv4Addr,
    /// Its pods.
    pub pods: Vec<PodSpec>,
}

/// A whole cluster topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// The underlay bridge.
    pub underlay: Underlay,
    /// Nodes, in order.
    pub nodes: Vec<NodeSpec>,
    /// Pod addressing.
    pub addressing: PodAddressing,
    /// Give each node a default route via the underlay gateway (so anything not routed into a
    /// tunnel would leave in clear — what capture tests look for).
    pub node_default_route: bool,
    /// Turn IPv6 off in every namespace (IPv4-only tests: no router solicitations in captures).
    pub disable_ipv6: bool,
}

/// The names a topology's owner chooses; node and pod indices start at 1.
pub trait Names {
    /// The node `node`'s namespace.
    fn node_ns(&self, node: usize) -> String;
    /// The node's uplink veth ends: (underlay side, inside the node).
    fn uplink(&self, node: usize) -> (String, String);
    /// Pod `pod` (of `node`) named `name`: its namespace.
    fn pod_ns(&self, node: usize, pod: usize, name: &str) -> String;
    /// The pod's veth ends: (in the node, in the pod).
    fn pod_link(&self, node: usize, pod: usize, name: &str) -> (String, String);
}

impl ClusterSpec {
    /// The standard address plan: `nodes` nodes, node *i* at `10.99.0.(10+i)`, its pods
    /// (`pods` names, in order) at `10.244.i.(first_pod_host + k)`.
    ///
    /// # Panics
    /// More than 200 nodes or more than 200 pods per node (the address plan has room for
    /// no more).
    #[must_use]
    pub fn standard(
        underlay: Underlay,
        nodes: usize,
        pods: &[&str],
        first_pod_host: u8,
        addressing: PodAddressing,
        names: &dyn Names,
    ) -> Self {
        assert!(
            nodes <= 200 && pods.len() <= 200,
            "address plan holds ≤ 200 nodes × 200 pods"
        );
        let nodes = (1..=nodes)
            .map(|i| {
                let octet = u8::try_from(i).unwrap_or(u8::MAX);
                let (uplink_outer, uplink_inner) = names.uplink(i);
                NodeSpec {
                    ns: names.node_ns(i),
                    underlay_ip: Ipv4Addr::new(10, 99, 0, 10 + octet),
                    uplink_outer,
                    uplink_inner,
                    pod_gateway: Ipv4Addr::new(10, 244, octet, 1),
                    pods: pods
                        .iter()
                        .enumerate()
                        .map(|(k, name)| {
                            let (host_if, pod_if) = names.pod_link(i, k + 1, name);
                            let host = first_pod_host.saturating_add(u8::try_from(k).unwrap_or(0));
                            PodSpec {
                                ns: names.pod_ns(i, k + 1, name),
                                ip: Ipv4Addr::new(10, 244, octet, host),
                                host_if,
                                pod_if,
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        Self {
            underlay,
            nodes,
            addressing,
            node_default_route: false,
            disable_ipv6: false,
        }
    }
}

/// One change to the machine; each is one `ip` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `ip netns add NAME`.
    Netns(String),
    /// Run `argv` (an `ip`/`sysctl` command) in namespace `ns` (`None`: the root namespace).
    In {
        /// Namespace, `None` for the root namespace.
        ns: Option<String>,
        /// The command (`ip …` or `sysctl …`).
        argv: Vec<String>,
    },
}

/// What [`apply`] created and the owner must remove again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// A network namespace (its links go with it).
    Namespace(String),
    /// A link in the root namespace (the bridge, an uplink's outer end).
    RootLink(String),
}

impl Step {
    /// What this step creates, if anything the owner must remove.
    #[must_use]
    pub fn creates(&self) -> Option<Created> {
        match self {
            Self::Netns(n) => Some(Created::Namespace(n.clone())),
            Self::In { ns: None, argv }
                if argv.get(1).map(String::as_str) == Some("link")
                    && argv.get(2).map(String::as_str) == Some("add") =>
            {
                argv.get(3).cloned().map(Created::RootLink)
            }
            Self::In { .. } => None,
        }
    }

    /// The command line this step runs.
    #[must_use]
    pub fn command_line(&self) -> Vec<String> {
        match self {
            Self::Netns(n) => vec!["ip".into(), "netns".into(), "add".into(), n.clone()],
            Self::In { ns: None, argv } => argv.clone(),
            Self::In { ns: Some(ns), argv } => ["ip", "netns", "exec", ns]
                .into_iter()
                .map(str::to_owned)
                .chain(argv.iter().cloned())
                .collect(),
        }
    }
}

/// A spec that cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// An interface name longer than Linux allows.
    #[error("{field}: interface name {name:?} is {len} bytes, Linux allows at most {MAX_IFNAME}")]
    IfnameTooLong {
        /// Which field (e.g. `nodes[0].pods[1].host_if`).
        field: String,
        /// The name.
        name: String,
        /// Its length.
        len: usize,
    },
    /// A name used twice where it must be unique.
    #[error("{field}: name {name:?} is used twice")]
    Duplicate {
        /// Which field.
        field: String,
        /// The name.
        name: String,
    },
}

/// A step that failed.
#[derive(Debug, thiserror::Error)]
#[error("`{command}` failed: {detail}")]
pub struct ApplyError {
    /// The command line.
    pub command: String,
    /// Its stderr, or why it could not start.
    pub detail: String,
}

fn cmd(ns: Option<&str>, argv: &[&str]) -> Step {
    Step::In {
        ns: ns.map(str::to_owned),
        argv: argv.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn check_ifname(field: String, name: &str) -> Result<(), PlanError> {
    if name.len() > MAX_IFNAME || name.is_empty() {
        return Err(PlanError::IfnameTooLong {
            field,
            name: name.to_owned(),
            len: name.len(),
        });
    }
    Ok(())
}

/// Checks names (interface lengths, unique namespaces).
///
/// # Errors
/// The first name that cannot work, naming its field.
pub fn validate(spec: &ClusterSpec) -> Result<(), PlanError> {
    check_ifname("underlay.bridge".into(), spec.underlay.bridge())?;
    let mut seen = std::collections::BTreeSet::new();
    let mut unique = |field: String, name: &str| {
        if seen.insert(name.to_owned()) {
            Ok(())
        } else {
            Err(PlanError::Duplicate {
                field,
                name: name.to_owned(),
            })
        }
    };
    if let Some(ns) = spec.underlay.ns() {
        unique("underlay.ns".into(), ns)?;
    }
    for (n, node) in spec.nodes.iter().enumerate() {
        unique(format!("nodes[{n}].ns"), &node.ns)?;
        check_ifname(format!("nodes[{n}].uplink_outer"), &node.uplink_outer)?;
        check_ifname(format!("nodes[{n}].uplink_inner"), &node.uplink_inner)?;
        for (p, pod) in node.pods.iter().enumerate() {
            unique(format!("nodes[{n}].pods[{p}].ns"), &pod.ns)?;
            check_ifname(format!("nodes[{n}].pods[{p}].host_if"), &pod.host_if)?;
            check_ifname(format!("nodes[{n}].pods[{p}].pod_if"), &pod.pod_if)?;
        }
    }
    Ok(())
}

fn no_ipv6(steps: &mut Vec<Step>, ns: &str) {
    for key in ["all", "default"] {
        steps.push(cmd(
            Some(ns),
            &[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{key}.disable_ipv6=1"),
            ],
        ));
    }
}

/// The steps that build `spec`, in order: underlay, then each node and its pods.
///
/// # Errors
/// See [`validate`].
pub fn plan(spec: &ClusterSpec) -> Result<Vec<Step>, PlanError> {
    validate(spec)?;
    let mut steps = Vec::new();
    let u_ns = spec.underlay.ns();
    let br = spec.underlay.bridge();
    if let Some(ns) = u_ns {
        steps.push(Step::Netns(ns.to_owned()));
        steps.push(cmd(Some(ns), &["ip", "link", "set", "lo", "up"]));
        if spec.disable_ipv6 {
            no_ipv6(&mut steps, ns);
        }
    }
    steps.push(cmd(u_ns, &["ip", "link", "add", br, "type", "bridge"]));
    steps.push(cmd(
        u_ns,
        &["ip", "addr", "add", UNDERLAY_GATEWAY, "dev", br],
    ));
    steps.push(cmd(u_ns, &["ip", "link", "set", br, "up"]));
    let gw = UNDERLAY_GATEWAY.split('/').next().unwrap_or_default();
    for node in &spec.nodes {
        let ns = node.ns.as_str();
        steps.push(Step::Netns(ns.to_owned()));
        steps.push(cmd(Some(ns), &["ip", "link", "set", "lo", "up"]));
        if spec.disable_ipv6 {
            no_ipv6(&mut steps, ns);
        }
        steps.push(cmd(Some(ns), &["sysctl", "-qw", "net.ipv4.ip_forward=1"]));
        let (outer, inner) = (node.uplink_outer.as_str(), node.uplink_inner.as_str());
        steps.push(cmd(
            u_ns,
            &[
                "ip", "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns,
            ],
        ));
        steps.push(cmd(u_ns, &["ip", "link", "set", outer, "master", br]));
        steps.push(cmd(u_ns, &["ip", "link", "set", outer, "up"]));
        let addr = format!("{}/24", node.underlay_ip);
        steps.push(cmd(Some(ns), &["ip", "addr", "add", &addr, "dev", inner]));
        steps.push(cmd(Some(ns), &["ip", "link", "set", inner, "up"]));
        if spec.node_default_route {
            steps.push(cmd(Some(ns), &["ip", "route", "add", "default", "via", gw]));
        }
        let gw_ip = node.pod_gateway.to_string();
        for pod in &node.pods {
            let pns = pod.ns.as_str();
            let (host_if, pod_if) = (pod.host_if.as_str(), pod.pod_if.as_str());
            steps.push(Step::Netns(pns.to_owned()));
            steps.push(cmd(Some(pns), &["ip", "link", "set", "lo", "up"]));
            if spec.disable_ipv6 {
                no_ipv6(&mut steps, pns);
            }
            steps.push(cmd(
                Some(ns),
                &[
                    "ip", "link", "add", host_if, "type", "veth", "peer", "name", pod_if, "netns",
                    pns,
                ],
            ));
            let pod_ip = pod.ip.to_string();
            match spec.addressing {
                PodAddressing::Routed => {
                    let host = format!("{gw_ip}/32");
                    let pod32 = format!("{pod_ip}/32");
                    steps.push(cmd(Some(ns), &["ip", "addr", "add", &host, "dev", host_if]));
                    steps.push(cmd(Some(ns), &["ip", "link", "set", host_if, "up"]));
                    steps.push(cmd(
                        Some(ns),
                        &["ip", "route", "add", &pod32, "dev", host_if],
                    ));
                    steps.push(cmd(
                        Some(pns),
                        &["ip", "addr", "add", &pod32, "dev", pod_if],
                    ));
                    steps.push(cmd(Some(pns), &["ip", "link", "set", pod_if, "up"]));
                    steps.push(cmd(
                        Some(pns),
                        &["ip", "route", "add", &gw_ip, "dev", pod_if, "scope", "link"],
                    ));
                }
                PodAddressing::Subnet => {
                    let host = format!("{gw_ip}/24");
                    let pod24 = format!("{pod_ip}/24");
                    steps.push(cmd(Some(ns), &["ip", "addr", "add", &host, "dev", host_if]));
                    steps.push(cmd(Some(ns), &["ip", "link", "set", host_if, "up"]));
                    steps.push(cmd(
                        Some(pns),
                        &["ip", "addr", "add", &pod24, "dev", pod_if],
                    ));
                    steps.push(cmd(Some(pns), &["ip", "link", "set", pod_if, "up"]));
                }
            }
            steps.push(cmd(
                Some(pns),
                &[
                    "ip", "route", "add", "default", "via", &gw_ip, "dev", pod_if,
                ],
            ));
        }
    }
    Ok(steps)
}

/// Runs `steps` with the `ip` binary at `ip` (the first word of each command line is
/// replaced by it when it is `ip`), calling `created` for each namespace and root link right
/// after it exists — so an owner that records them can clean up even when a later step fails.
///
/// # Errors
/// The first step that fails (nothing after it runs).
pub fn apply(
    ip: &Path,
    steps: &[Step],
    mut created: impl FnMut(Created),
) -> Result<(), ApplyError> {
    for step in steps {
        let line = step.command_line();
        let mut command = if line[0] == "ip" {
            Command::new(ip)
        } else {
            Command::new(&line[0])
        };
        command.args(&line[1..]);
        let shown = line.join(" ");
        let out = command.output().map_err(|e| ApplyError {
            command: shown.clone(),
            detail: e.to_string(),
        })?;
        if !out.status.success() {
            return Err(ApplyError {
                command: shown,
                detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        if let Some(c) = step.creates() {
            created(c);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
