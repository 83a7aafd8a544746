//! `identityd audit`: proof that traffic is encrypted and identities are in place, for CI.
//!
//! - Live (`--source DIR`, a lab directory): every node daemon's status (local API) plus the
//!   cluster state: every node pair has an encrypted path with a recent handshake, strict mode
//!   is on, strict-mode drops and plaintext counts, SVIDs not about to expire, every workload of
//!   an `mtls=strict` namespace holds an SVID, no outstanding xDS NACKs, no cluster problems.
//! - Static (`--manifests PATH`, a file or a directory of YAML, e.g. `helm template` output
//!   plus the app's manifests): encryption disabled or strict mode off in values, namespaces
//!   without an `identityd.io/mtls` annotation (`--require-mtls` makes them errors), routes
//!   pointing at missing Services, invalid identityd objects.
//!
//! The checks are pure functions of their inputs; rendering is text, JSON, JUnit, SARIF 2.1.0
//! or Markdown.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::daemon::api::NodeStatus;
use crate::model::report::NodeReport;
use crate::model::{ClusterState, Kind, MtlsMode};

/// How bad a failed check is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Informational.
    Info,
    /// Should be looked at.
    Warning,
    /// Breaks a promise (plaintext possible, identity missing).
    Error,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Error => "error",
        }
    }
}

/// What a check concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It examined something and found nothing wrong.
    Pass,
    /// It found something wrong.
    Fail,
    /// It had nothing to examine (never a pass: `--require` makes it fail).
    Skipped,
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable id (`encryption.node-pairs`).
    pub check: String,
    /// Severity when it fails.
    pub severity: Severity,
    /// `pass`, `fail` or `skipped`.
    pub result: Outcome,
    /// Passed? (`result == pass`.)
    pub passed: bool,
    /// What was found, or why nothing could be examined.
    pub message: String,
    /// Details (one per offending item).
    pub details: Vec<String>,
}

impl Finding {
    /// Did it fail?
    #[must_use]
    pub fn is_failure(&self) -> bool {
        self.result == Outcome::Fail
    }
}

fn finding(check: &str, severity: Severity, details: Vec<String>, ok: &str, bad: &str) -> Finding {
    let passed = details.is_empty();
    Finding {
        check: check.to_owned(),
        severity,
        result: if passed { Outcome::Pass } else { Outcome::Fail },
        passed,
        message: if passed {
            ok.to_owned()
        } else {
            format!("{bad} ({})", details.len())
        },
        details,
    }
}

/// [`skipped`] with `absent` (the reason) when there was nothing to examine, else [`finding`].
fn finding_or_skip(
    absent: Option<&str>,
    check: &str,
    severity: Severity,
    details: Vec<String>,
    ok: &str,
    bad: &str,
) -> Finding {
    match absent {
        Some(reason) => skipped(check, severity, reason),
        None => finding(check, severity, details, ok, bad),
    }
}

/// A check that had nothing to examine: `reason` says what was missing.
fn skipped(check: &str, severity: Severity, reason: &str) -> Finding {
    Finding {
        check: check.to_owned(),
        severity,
        result: Outcome::Skipped,
        passed: false,
        message: format!("skipped: {reason}"),
        details: Vec::new(),
    }
}

/// Options of the checks.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Handshakes older than this fail `encryption.node-pairs`.
    pub max_handshake_age_secs: u64,
    /// SVIDs expiring sooner fail `identity.svid-expiry`.
    pub min_svid_lifetime_secs: u64,
    /// Namespaces that must carry `identityd.io/mtls` (static).
    pub require_mtls: Vec<String>,
    /// Trust domain of the workload IDs.
    pub trust_domain: String,
    /// WireGuard keys older than this fail `keys.age` (a warning).
    pub max_key_age_secs: u64,
    /// Flows behind strict-mode drops (from `identityd observe`), shown as evidence.
    pub drop_flows: Vec<String>,
    /// `config.encryption` fails unless host-network traffic is encrypted too.
    pub require_node_encryption: bool,
    /// `config.encryption` fails when `mtls.defaultMode` is weaker than this.
    pub min_default_mtls: Option<MtlsMode>,
    /// An `IdentitydNodeReport` older than this fails `nodes.reporting` (`--kube`).
    pub max_report_age_secs: u64,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            max_handshake_age_secs: 180,
            min_svid_lifetime_secs: 600,
            require_mtls: Vec::new(),
            trust_domain: "cluster.local".to_owned(),
            max_key_age_secs: 90 * 24 * 3600,
            drop_flows: Vec::new(),
            require_node_encryption: false,
            min_default_mtls: None,
            max_report_age_secs: 600,
        }
    }
}

/// Live checks over node statuses (fetched from each daemon's API) and the cluster state:
/// each status is summarised the way the daemon summarises itself for its
/// `IdentitydNodeReport` ([`crate::daemon::report::summarise`], every example kept), then
/// the same [`report_checks`] as `audit --kube` run over the summaries.
#[must_use]
pub fn live(
    nodes: &[Result<NodeStatus, String>],
    state: &ClusterState,
    opts: &AuditOptions,
) -> Vec<Finding> {
    let now = std::time::SystemTime::now();
    let mut unreachable = Vec::new();
    let limits = crate::daemon::report::SummaryLimits {
        max_items: usize::MAX,
        handshake_max_age_secs: opts.max_handshake_age_secs,
        svid_min_lifetime_secs: opts.min_svid_lifetime_secs,
    };
    let reports: Vec<(String, NodeReport)> = nodes
        .iter()
        .filter_map(|n| match n {
            Ok(s) => Some((
                s.node.clone(),
                crate::daemon::report::summarise(s, state, &opts.trust_domain, &limits, now),
            )),
            Err(e) => {
                unreachable.push(e.clone());
                None
            }
        })
        .collect();
    let mut out = vec![finding(
        "daemons.reachable",
        Severity::Error,
        unreachable,
        "every node daemon answered",
        "node daemons not answering",
    )];
    let unpublished: Vec<String> = reports
        .iter()
        .filter(|(n, _)| !state.nodes.contains_key(n))
        .map(|(n, _)| {
            format!("{n}: runs but has no IdentitydNode (its peers cannot encrypt to it)")
        })
        .collect();
    out.push(finding(
        "nodes.published",
        Severity::Error,
        unpublished,
        "every running node is published",
        "running nodes that peers do not know",
    ));
    out.extend(report_checks(&reports, opts, now));
    out.push(policy_enforced(&reports, state));
    out.extend(policy_checks(state));
    out.push(node_conflicts(state));
    out.push(cluster_problems(state));
    out
}

/// `policy.enforced`: every reporting node's classifier holds the NetworkPolicy the cluster
/// state compiles to (the same digest). Skipped when the cluster has no NetworkPolicy.
#[must_use]
pub fn policy_enforced(reports: &[(String, NodeReport)], state: &ClusterState) -> Finding {
    if state.network_policies.is_empty() {
        return skipped(
            "policy.enforced",
            Severity::Error,
            "the cluster has no NetworkPolicy",
        );
    }
    if reports.is_empty() {
        return skipped(
            "policy.enforced",
            Severity::Error,
            "no node reported its live state",
        );
    }
    let want = crate::daemon::node::policy_digest(&crate::daemon::netpol::compile(state));
    let behind: Vec<String> = reports
        .iter()
        .filter_map(|(n, r)| match &r.network_policy_digest {
            Some(d) if *d == want => None,
            Some(d) => Some(format!(
                "{n}: enforces NetworkPolicy digest {d}, the cluster's current policies compile to {want}"
            )),
            None => Some(format!(
                "{n}: its classifier does not hold the whole NetworkPolicy (see its status: network_policy, errors)"
            )),
        })
        .collect();
    finding(
        "policy.enforced",
        Severity::Error,
        behind,
        &format!(
            "every node enforces the current NetworkPolicies ({} policies, digest {want})",
            state.network_policies.len()
        ),
        "nodes not enforcing the current NetworkPolicies",
    )
}

/// `policy.default-deny` (info: namespaces without a default-deny-ingress NetworkPolicy) and
/// `policy.selects-nothing` (warning: policies whose podSelector selects no pod).
fn policy_checks(state: &ClusterState) -> Vec<Finding> {
    let plan = crate::daemon::netpol::compile(state);
    let mut out = Vec::new();
    if state.namespaces.is_empty() {
        out.push(skipped(
            "policy.default-deny",
            Severity::Info,
            "the input has no Namespace",
        ));
    } else {
        let open: Vec<String> = state
            .namespaces
            .keys()
            .filter(|n| !plan.default_deny.contains(*n))
            .map(|n| format!("namespace {n}: no default-deny ingress NetworkPolicy"))
            .collect();
        // Information, not a failure: Kubernetes namespaces are open by default, and the
        // listing tells which still are.
        out.push(Finding {
            check: "policy.default-deny".to_owned(),
            severity: Severity::Info,
            result: Outcome::Pass,
            passed: true,
            message: format!(
                "{} of {} namespaces have a default-deny ingress NetworkPolicy",
                state.namespaces.len() - open.len(),
                state.namespaces.len()
            ),
            details: open,
        });
    }
    if state.network_policies.is_empty() {
        out.push(skipped(
            "policy.selects-nothing",
            Severity::Warning,
            "the input has no NetworkPolicy",
        ));
    } else {
        out.push(finding(
            "policy.selects-nothing",
            Severity::Warning,
            plan.selects_nothing
                .iter()
                .map(|n| format!("NetworkPolicy {n}: its podSelector selects no pod"))
                .chain(plan.problems.iter().map(ToString::to_string))
                .collect(),
            "every NetworkPolicy selects pods and compiles whole",
            "NetworkPolicies that select nothing or were compiled in part",
        ));
    }
    out
}

/// `nodes.reporting`, then [`report_checks`], over the `IdentitydNodeReport`s a cluster holds
/// (`audit --kube`): every IdentitydNode must have a report newer than
/// `opts.max_report_age_secs`; a node without one is only that finding, not a pass of the
/// others.
#[must_use]
pub fn report_live(
    reports: &[(String, NodeReport)],
    state: &ClusterState,
    opts: &AuditOptions,
    now: std::time::SystemTime,
) -> Vec<Finding> {
    let mut stale = Vec::new();
    for name in state.nodes.keys() {
        match reports.iter().find(|(n, _)| n == name) {
            None => stale.push(format!(
                "IdentitydNodeReport {name}: none (the node's daemon never reported)"
            )),
            Some((_, r)) => match identityd_certs::inspect::parse_rfc3339(&r.reported_at) {
                None => stale.push(format!(
                    "IdentitydNodeReport {name}: spec.reportedAt={:?} is not an RFC 3339 time",
                    r.reported_at
                )),
                Some(t) => {
                    let age = now.duration_since(t).map_or(0, |d| d.as_secs());
                    if age > opts.max_report_age_secs {
                        stale.push(format!(
                            "IdentitydNodeReport {name}: spec.reportedAt={} is {age}s old (the daemon stopped reporting; limit {}s)",
                            r.reported_at, opts.max_report_age_secs
                        ));
                    }
                }
            },
        }
    }
    stale.extend(
        reports
            .iter()
            .filter(|(n, _)| !state.nodes.contains_key(n))
            .map(|(n, _)| {
                format!("IdentitydNodeReport {n}: reports, but no IdentitydNode {n} is published (its peers cannot encrypt to it)")
            }),
    );
    let mut out = vec![finding(
        "nodes.reporting",
        Severity::Error,
        stale,
        "every node reported its live state recently",
        "nodes whose live state is missing or stale",
    )];
    out.extend(report_checks(reports, opts, now));
    out.push(policy_enforced(reports, state));
    out.extend(policy_checks(state));
    out.push(node_conflicts(state));
    out
}

fn age_of(now: std::time::SystemTime, t: Option<&str>) -> Option<u64> {
    let t = identityd_certs::inspect::parse_rfc3339(t?)?;
    Some(now.duration_since(t).map_or(0, |d| d.as_secs()))
}

fn left_of(now: std::time::SystemTime, t: Option<&str>) -> Option<u64> {
    let t = identityd_certs::inspect::parse_rfc3339(t?)?;
    Some(t.duration_since(now).map_or(0, |d| d.as_secs()))
}

/// The live checks over node summaries (`(node, report)`), at `now`. Times in a report are
/// absolute, so an old report is judged by the audit's clock (a handshake or an SVID that was
/// fine when reported can have aged since).
#[must_use]
pub fn report_checks(
    reports: &[(String, NodeReport)],
    opts: &AuditOptions,
    now: std::time::SystemTime,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let none = reports
        .is_empty()
        .then_some("no node reported its live state");
    let sum = |f: fn(&NodeReport) -> u64| reports.iter().map(|(_, r)| f(r)).sum::<u64>();
    let no_peers = none
        .or((sum(|r| r.peers.expected) == 0).then_some("no node has another node to encrypt to"));
    let no_svids = none.or((sum(|r| r.svids.count) == 0).then_some("no node holds an SVID"));
    let no_strict = none
        .or((sum(|r| r.strict_workloads) == 0).then_some("no workload of a strict namespace runs"));
    let no_served = none.or((sum(|r| r.strict_served) == 0)
        .then_some("no workload of a strict namespace is behind a Service"));
    let no_keys = none.or(reports
        .iter()
        .all(|(_, r)| r.key_created_at.is_none())
        .then_some("no node reported its key's age"));
    let no_bundle = none.or(reports
        .iter()
        .all(|(_, r)| r.svids.count == 0 && r.bundle.roots == 0)
        .then_some("no node holds a trust bundle"));
    let no_envoy = none.or(reports
        .iter()
        .all(|(_, r)| r.envoy_ready.is_none())
        .then_some("no node runs an Envoy"));
    let mut pairs = Vec::new();
    for (n, r) in reports {
        let p = &r.peers;
        for w in &p.worst {
            pairs.push(format!("{n} → {}: {}", w.name, w.problem));
        }
        let more = p.unhealthy.saturating_sub(p.worst.len() as u64);
        if more > 0 {
            pairs.push(format!(
                "{n}: … and {more} more peers without a recent handshake"
            ));
        }
        if p.handshake_max_age_secs > opts.max_handshake_age_secs && p.recent > 0 {
            // Counted with a looser threshold than this audit's: judge the report's age too.
            let age = age_of(now, Some(&r.reported_at)).unwrap_or(0);
            if age + p.handshake_max_age_secs > opts.max_handshake_age_secs {
                pairs.push(format!(
                    "{n}: {} peers counted recent within {}s, looser than --max-handshake-age {}s",
                    p.recent, p.handshake_max_age_secs, opts.max_handshake_age_secs
                ));
            }
        }
    }
    out.push(finding_or_skip(
        no_peers,
        "encryption.node-pairs",
        Severity::Error,
        pairs,
        "every node pair has a WireGuard path with a recent handshake",
        "node pairs without a recent encrypted path",
    ));
    let not_strict: Vec<String> = reports
        .iter()
        .filter(|(_, r)| !r.strict_mode)
        .map(|(n, r)| format!("{n} (encryption {})", r.encryption_mode))
        .collect();
    out.push(finding_or_skip(
        none,
        "encryption.strict-mode",
        Severity::Error,
        not_strict,
        "strict mode is on on every node",
        "nodes without strict mode",
    ));
    let unguarded: Vec<String> = reports
        .iter()
        .filter(|(_, r)| !r.ingress_strict_in_place)
        .map(|(n, r)| {
            format!(
                "{n}: {}",
                r.ingress_strict_problem
                    .as_deref()
                    .unwrap_or("the daemon does not report ingress strict")
            )
        })
        .collect();
    out.push(finding_or_skip(
        none,
        "encryption.ingress-strict",
        Severity::Error,
        unguarded,
        "every node guards its pods: remote pods' packets only out of the tunnel, new TCP into strict pods only from its Envoy",
        "nodes whose pods are not guarded by ingress strict",
    ));
    let count = |r: &NodeReport, path: &str| {
        r.packets
            .iter()
            .find(|c| c.path == path)
            .map_or(0, |c| c.packets)
    };
    let mut drops: Vec<String> = reports
        .iter()
        .filter(|(_, r)| count(r, "drop") > 0)
        .map(|(n, r)| format!("{n}: {} packets dropped by strict mode", count(r, "drop")))
        .collect();
    if !drops.is_empty() {
        drops.extend(
            opts.drop_flows
                .iter()
                .take(10)
                .map(|f| format!("flow: {f}")),
        );
    }
    out.push(finding_or_skip(
        none,
        "encryption.strict-drops",
        Severity::Warning,
        drops,
        "no strict-mode drops",
        "strict-mode drops happened",
    ));
    let plain: Vec<String> = reports
        .iter()
        .filter(|(_, r)| count(r, "plaintext") > 0)
        .map(|(n, r)| {
            format!(
                "{n}: {} packets on the plaintext path",
                count(r, "plaintext")
            )
        })
        .collect();
    out.push(finding_or_skip(
        none,
        "encryption.plaintext",
        Severity::Error,
        plain,
        "no pod traffic took the plaintext path",
        "pod traffic left in clear",
    ));

    let mut expiring = Vec::new();
    for (n, r) in reports {
        expiring.extend(r.svids.expiring.lines(&format!("{n}: ")));
        // Fine when reported, expiring by now.
        if r.svids.expiring.count == 0
            && let (Some(left), Some(id)) = (
                left_of(now, r.svids.earliest_expiry.as_deref()),
                &r.svids.earliest_id,
            )
            && left < opts.min_svid_lifetime_secs
        {
            expiring.push(format!("{n}: {id} expires in {left}s"));
        }
    }
    out.push(finding_or_skip(
        no_svids,
        "identity.svid-expiry",
        Severity::Error,
        expiring,
        "no SVID expires soon",
        "SVIDs about to expire",
    ));
    let missing: Vec<String> = reports
        .iter()
        .flat_map(|(n, r)| {
            r.svids
                .missing
                .lines("")
                .into_iter()
                .map(move |l| format!("{l} (on {n})"))
        })
        .collect();
    out.push(finding_or_skip(
        no_strict,
        "identity.strict-workloads",
        Severity::Error,
        missing,
        "every workload of a strict namespace holds its SVID",
        "strict workloads without an SVID",
    ));
    let no_inbound: Vec<String> = reports
        .iter()
        .flat_map(|(n, r)| {
            r.inbound_missing
                .lines("")
                .into_iter()
                .map(move |l| format!("{l} (on {n})"))
        })
        .collect();
    out.push(finding_or_skip(
        no_served,
        "identity.inbound-mtls",
        Severity::Error,
        no_inbound,
        "every strict workload behind a Service has an inbound mTLS listener",
        "strict workloads without an inbound mTLS listener",
    ));
    let old_keys: Vec<String> = reports
        .iter()
        .filter_map(|(n, r)| {
            let a = age_of(now, r.key_created_at.as_deref())?;
            (a > opts.max_key_age_secs)
                .then(|| format!("{n}: WireGuard key {} days old", a / 86_400))
        })
        .collect();
    out.push(finding_or_skip(
        no_keys,
        "keys.age",
        Severity::Warning,
        old_keys,
        "node keys are within their maximum age",
        "node keys older than the maximum",
    ));
    let mut bundles = Vec::new();
    for (n, r) in reports {
        if r.svids.count == 0 && r.bundle.roots == 0 {
            continue;
        }
        match r.bundle.roots {
            0 => bundles.push(format!("{n}: no trust bundle")),
            1..=MAX_BUNDLE_ROOTS => {}
            k => bundles.push(format!(
                "{n}: {k} roots in the bundle (at most {MAX_BUNDLE_ROOTS}: the current root, an announced next one and previous ones in their overlap)"
            )),
        }
        if let Some(left) = left_of(now, r.bundle.earliest_expiry.as_deref())
            && left < opts.min_svid_lifetime_secs
        {
            bundles.push(format!("{n}: a bundle root expires in {left}s"));
        }
    }
    out.push(finding_or_skip(
        no_bundle,
        "identity.bundle",
        Severity::Error,
        bundles,
        "trust bundles hold 1–4 valid roots",
        "trust bundle problems",
    ));
    let not_ready: Vec<String> = reports
        .iter()
        .filter(|(_, r)| r.envoy_ready == Some(false))
        .map(|(n, _)| format!("{n}: Envoy does not answer LIVE on its admin /ready"))
        .collect();
    out.push(finding_or_skip(
        no_envoy,
        "proxy.envoy-ready",
        Severity::Error,
        not_ready,
        "every node's Envoy is LIVE",
        "Envoys not ready",
    ));
    // mTLS is ready on a node with strict workloads once its Envoy answers and every one of
    // them holds its SVID; until then those pods take no plaintext (ingress strict) but no
    // mTLS either, which is "not ready", never a pass.
    let mtls_not_ready: Vec<String> = reports
        .iter()
        .filter(|(_, r)| r.strict_workloads > 0)
        .filter_map(|(n, r)| {
            let mut why = Vec::new();
            if r.envoy_ready != Some(true) {
                why.push(match r.envoy_ready {
                    None => "no Envoy runs".to_owned(),
                    Some(_) => "its Envoy is not LIVE".to_owned(),
                });
            }
            if r.svids.missing.count > 0 {
                why.push(format!(
                    "{} of {} strict workloads without an SVID",
                    r.svids.missing.count, r.strict_workloads
                ));
            }
            (!why.is_empty()).then(|| format!("{n}: mTLS not ready: {}", why.join("; ")))
        })
        .collect();
    out.push(finding_or_skip(
        no_strict,
        "mtls.ready",
        Severity::Error,
        mtls_not_ready,
        "mTLS is ready on every node that runs strict workloads (Envoy LIVE, every SVID held)",
        "nodes where mTLS is not ready",
    ));
    let allowed: Vec<String> = reports
        .iter()
        .filter(|(_, r)| !r.allow_from.is_empty())
        .map(|(n, r)| allow_from_line(n, ":", &r.allow_from))
        .collect();
    out.push(finding_or_skip(
        none,
        "encryption.allow-from",
        Severity::Warning,
        allowed,
        "no node lets any source past ingress strict (encryption.allowFrom is empty)",
        "sources whose plaintext reaches local pods (encryption.allowFrom)",
    ));
    // Authentic node objects: what each node concluded about its peers' proofs.
    let no_proofs = none.or(reports
        .iter()
        .all(|(_, r)| r.unverified_nodes.is_none())
        .then_some("no node checks node proofs (no node runs with a CA)"));
    let unverified: Vec<String> = reports
        .iter()
        .flat_map(|(n, r)| match &r.unverified_nodes {
            Some(u) => u.lines(&format!("{n}: ")),
            None => vec![format!(
                "{n}: does not check node proofs (no CA): it configures any IdentitydNode"
            )],
        })
        .collect();
    out.push(finding_or_skip(
        no_proofs,
        "nodes.authentic",
        Severity::Error,
        unverified,
        "every node verified every other node's IdentitydNode proof",
        "IdentitydNodes a node does not act on (or only in an older verified version)",
    ));
    let nacks: Vec<String> = reports
        .iter()
        .flat_map(|(n, r)| r.xds_nacks.lines(&format!("{n}: ")))
        .collect();
    out.push(finding_or_skip(
        no_envoy,
        "xds.nacks",
        Severity::Error,
        nacks,
        "no outstanding xDS NACKs",
        "Envoy rejected configuration",
    ));
    out
}

/// `nodes.cidr-conflicts`: no two IdentitydNodes claim overlapping pod CIDRs or the same
/// WireGuard key (each later claim is one the nodes leave out; [`crate::model::conflicts`]).
#[must_use]
pub fn node_conflicts(state: &ClusterState) -> Finding {
    let c = crate::model::conflicts::node_conflicts(state, None);
    finding_or_skip(
        (state.nodes.len() < 2).then_some("fewer than two IdentitydNodes"),
        "nodes.cidr-conflicts",
        Severity::Error,
        c.rejected.into_values().collect(),
        "no two nodes claim overlapping pod CIDRs or the same key",
        "IdentitydNodes the nodes leave out (conflicting claims)",
    )
}

/// `cluster.problems`: every object of the state is valid.
#[must_use]
pub fn cluster_problems(state: &ClusterState) -> Finding {
    let problems: Vec<String> = state.problems.iter().map(ToString::to_string).collect();
    finding(
        "cluster.problems",
        Severity::Warning,
        problems,
        "every cluster object is valid",
        "invalid cluster objects",
    )
}

fn mode_str(m: MtlsMode) -> &'static str {
    match m {
        MtlsMode::Disabled => "disabled",
        MtlsMode::Permissive => "permissive",
        MtlsMode::Strict => "strict",
    }
}

fn mtls_rank(m: MtlsMode) -> u8 {
    match m {
        MtlsMode::Disabled => 0,
        MtlsMode::Permissive => 1,
        MtlsMode::Strict => 2,
    }
}

/// The `config.encryption` check over what the input deploys: Helm values files and the
/// node daemon configs of rendered ConfigMaps. Skipped when the input has neither.
fn config_encryption(m: &Manifests, opts: &AuditOptions) -> Finding {
    const CHECK: &str = "config.encryption";
    if m.values.is_empty() && m.node_configs.is_empty() {
        return skipped(
            CHECK,
            Severity::Error,
            "no Helm values file and no rendered node ConfigMap (config.yaml with role: node) in the input",
        );
    }
    let mut bad = Vec::new();
    let weaker = |mode: MtlsMode| {
        opts.min_default_mtls
            .is_some_and(|min| mtls_rank(mode) < mtls_rank(min))
    };
    for (origin, v) in &m.values {
        let e = &v["encryption"];
        if e["mode"].as_str() == Some("disabled") {
            bad.push(format!("{origin}: encryption.mode=disabled"));
        }
        if e["strictMode"].as_bool() == Some(false) {
            bad.push(format!("{origin}: encryption.strictMode=false"));
        }
        if opts.require_node_encryption && e["nodeEncryption"].as_bool() != Some(true) {
            bad.push(format!(
                "{origin}: encryption.nodeEncryption={} (required on)",
                e["nodeEncryption"].as_bool().unwrap_or(false)
            ));
        }
        if let Some(d) = v["mtls"]["defaultMode"].as_str()
            && let Ok(mode) = serde_json::from_value::<MtlsMode>(serde_json::json!(d))
            && weaker(mode)
        {
            bad.push(format!(
                "{origin}: mtls.defaultMode={d} (weaker than required)"
            ));
        }
    }
    for (origin, cfg) in &m.node_configs {
        match cfg {
            Err(e) => bad.push(format!("{origin}: {e}")),
            Ok(c) => {
                use crate::daemon::config::EncryptionMode;
                if c.encryption.mode == EncryptionMode::Disabled {
                    bad.push(format!("{origin} encryption.mode=disabled"));
                }
                if !c.encryption.strict_mode {
                    bad.push(format!("{origin} encryption.strictMode=false"));
                }
                if opts.require_node_encryption && !c.encryption.node_encryption {
                    bad.push(format!(
                        "{origin} encryption.nodeEncryption=false (required on)"
                    ));
                }
                if weaker(c.mtls.default_mode) {
                    bad.push(format!(
                        "{origin} mtls.defaultMode={} (weaker than required)",
                        mode_str(c.mtls.default_mode)
                    ));
                }
            }
        }
    }
    let what = format!(
        "encryption on with strict mode in {} values file(s) and {} node config(s)",
        m.values.len(),
        m.node_configs.len()
    );
    finding(CHECK, Severity::Error, bad, &what, "encryption weakened")
}

/// `encryption.allow-from` over what the input deploys: every source CIDR a values file or a
/// rendered node config lets past ingress strict's encryption rule (plaintext from it reaches
/// local pods). A warning: the list is an explicit choice, but it must be seen.
fn config_allow_from(m: &Manifests) -> Finding {
    const CHECK: &str = "encryption.allow-from";
    if m.values.is_empty() && m.node_configs.is_empty() {
        return skipped(
            CHECK,
            Severity::Warning,
            "no Helm values file and no rendered node ConfigMap (config.yaml with role: node) in the input",
        );
    }
    let mut listed = Vec::new();
    for (origin, v) in &m.values {
        if let Some(a) = v["encryption"]["allowFrom"]
            .as_array()
            .filter(|a| !a.is_empty())
        {
            let cidrs: Vec<String> = a
                .iter()
                .map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_owned))
                .collect();
            listed.push(allow_from_line(origin, ":", &cidrs));
        }
    }
    for (origin, cfg) in &m.node_configs {
        if let Ok(c) = cfg
            && !c.encryption.allow_from.is_empty()
        {
            listed.push(allow_from_line(origin, "", &c.encryption.allow_from));
        }
    }
    finding(
        CHECK,
        Severity::Warning,
        listed,
        "no source is let past ingress strict (encryption.allowFrom is empty)",
        "sources whose plaintext reaches local pods (encryption.allowFrom)",
    )
}

fn allow_from_line(origin: &str, sep: &str, cidrs: &[String]) -> String {
    format!(
        "{origin}{sep} encryption.allowFrom={} (plaintext from these sources reaches local pods)",
        cidrs.join(",")
    )
}

/// Static checks over what a CI job would deploy: rendered manifests (`helm template`
/// output: the node ConfigMap parsed with the daemon's own config parser, the cluster
/// objects) and Helm values files. A check with nothing to examine is skipped, never passed.
#[must_use]
pub fn static_checks(m: &Manifests, opts: &AuditOptions) -> Vec<Finding> {
    let state = &m.state;
    let mut out = vec![
        config_encryption(m, opts),
        config_allow_from(m),
        node_conflicts(state),
    ];
    let mut unannotated = Vec::new();
    let mut required_missing = Vec::new();
    for (name, ns) in &state.namespaces {
        let required = opts.require_mtls.contains(name);
        match ns.mtls_mode() {
            None if required => {
                required_missing.push(format!(
                    "Namespace {name}: metadata.annotations identityd.io/mtls missing (required strict)"
                ));
            }
            None => unannotated.push(format!("Namespace {name}: no identityd.io/mtls annotation")),
            Some(m) if required && m != MtlsMode::Strict => required_missing.push(format!(
                "Namespace {name}: metadata.annotations identityd.io/mtls={} (required strict)",
                mode_str(m)
            )),
            Some(_) => {}
        }
    }
    for r in &opts.require_mtls {
        if !state.namespaces.contains_key(r) {
            required_missing.push(format!("Namespace {r}: required but not in the manifests"));
        }
    }
    out.push(finding_or_skip(
        opts.require_mtls
            .is_empty()
            .then_some("no namespace is required to be strict (--require-mtls)"),
        "namespaces.mtls-required",
        Severity::Error,
        required_missing,
        "every required namespace is strict",
        "required namespaces not strict",
    ));
    out.push(finding_or_skip(
        state
            .namespaces
            .is_empty()
            .then_some("no Namespace in the input"),
        "namespaces.mtls-annotation",
        Severity::Warning,
        unannotated,
        "every namespace says its mTLS mode",
        "namespaces without identityd.io/mtls",
    ));
    // An AuthorizationPolicy that allows every caller on a strict service makes its identity
    // check a formality.
    let mut allow_all = Vec::new();
    for (key, p) in &state.authorization_policies {
        let strict = state
            .namespaces
            .get(&key.namespace)
            .and_then(crate::model::Namespace::mtls_mode)
            == Some(MtlsMode::Strict);
        for (i, r) in p.spec.allow.iter().enumerate() {
            let from_anyone = r.from.as_ref().is_none_or(|f| {
                f.spiffe_ids.is_empty() && f.namespaces.is_empty() && f.service_accounts.is_empty()
            });
            if strict && from_anyone {
                allow_all.push(format!(
                    "AuthorizationPolicy {key}: spec.allow[{i}] allows every identity on Service {}/{} (strict namespace)",
                    key.namespace, p.spec.target_ref.name
                ));
            }
        }
    }
    out.push(finding_or_skip(
        state
            .authorization_policies
            .is_empty()
            .then_some("no AuthorizationPolicy in the input"),
        "policies.allow-all",
        Severity::Error,
        allow_all,
        "no AuthorizationPolicy allows every identity on a strict service",
        "AuthorizationPolicies allowing every identity",
    ));
    let mut dangling = Vec::new();
    for (key, r) in &state.http_routes {
        for rule in &r.spec.rules {
            for b in &rule.backend_refs {
                let ns = b.namespace.clone().unwrap_or_else(|| key.namespace.clone());
                if !state
                    .services
                    .contains_key(&crate::model::NamespacedName::new(
                        ns.clone(),
                        b.name.clone(),
                    ))
                {
                    dangling.push(format!(
                        "HTTPRoute {key}: backendRef {ns}/{} does not exist",
                        b.name
                    ));
                }
            }
        }
    }
    out.push(finding_or_skip(
        state
            .http_routes
            .is_empty()
            .then_some("no HTTPRoute in the input"),
        "routes.backends",
        Severity::Error,
        dangling,
        "every route points at an existing Service",
        "routes pointing at missing Services",
    ));
    let invalid: Vec<String> = state
        .problems
        .iter()
        .filter(|p| {
            p.kind
                .as_deref()
                .is_some_and(|k| k == "object" || Kind::from_kind(k).is_some())
        })
        .map(ToString::to_string)
        .collect();
    out.push(finding_or_skip(
        (m.objects == 0 && invalid.is_empty())
            .then_some("no Kubernetes object identityd reads in the input"),
        "objects.valid",
        Severity::Error,
        invalid,
        "every identityd and mesh object is valid",
        "invalid objects",
    ));
    out.extend(policy_checks(state));
    out
}

/// Checks over a Kubernetes cluster's objects as the API server holds them (`audit --kube`):
/// the static checks, plus what the daemons and the controller wrote back —
/// `nodes.published` (node daemons publish an `IdentitydNode` with their WireGuard key),
/// `objects.accepted` (no Gateway, route or TrafficPolicy the controller marked
/// `Accepted=False`) and `rotations.failed` (KeyRotations that ended `Failed`). Node-local
/// state (handshakes, SVIDs, Envoy) is only reachable on the nodes: `identityd status` there.
#[must_use]
pub fn cluster_checks(state: &ClusterState, opts: &AuditOptions) -> Vec<Finding> {
    let m = Manifests {
        state: state.clone(),
        objects: 1,
        ..Manifests::default()
    };
    let mut out: Vec<Finding> = static_checks(&m, opts)
        .into_iter()
        .filter(|f| f.check != "config.encryption")
        .collect();
    let mut nodes = Vec::new();
    if state.nodes.is_empty() {
        nodes.push("no IdentitydNode is published: is the DaemonSet running?".to_owned());
    }
    for (name, n) in &state.nodes {
        if n.spec.wireguard.is_none() && n.spec.ipsec.is_none() {
            nodes.push(format!(
                "IdentitydNode {name}: publishes no WireGuard (or IPsec) key; its pods have no encrypted path"
            ));
        }
    }
    out.push(finding(
        "nodes.published",
        Severity::Error,
        nodes,
        "every node daemon published its keys",
        "nodes without published keys",
    ));
    let refused = |kind: &str, key: &dyn std::fmt::Display, conds: &[crate::model::Condition]| {
        conds
            .iter()
            .filter(|c| c.type_ == "Accepted" && c.status == "False")
            .map(|c| format!("{kind} {key}: {}: {}", c.reason, c.message))
            .collect::<Vec<_>>()
    };
    let mut accepted = Vec::new();
    for (k, g) in &state.gateways {
        if let Some(st) = &g.status {
            accepted.extend(refused("Gateway", k, &st.conditions));
        }
    }
    for (k, r) in &state.http_routes {
        for p in r.status.iter().flat_map(|s| &s.parents) {
            accepted.extend(refused("HTTPRoute", k, &p.conditions));
        }
    }
    for (k, r) in &state.grpc_routes {
        for p in r.status.iter().flat_map(|s| &s.parents) {
            accepted.extend(refused("GRPCRoute", k, &p.conditions));
        }
    }
    for (k, t) in &state.traffic_policies {
        if let Some(st) = &t.status {
            accepted.extend(refused("TrafficPolicy", k, &st.conditions));
        }
    }
    out.push(finding(
        "objects.accepted",
        Severity::Error,
        accepted,
        "the controller accepted every Gateway, route and TrafficPolicy",
        "objects the controller refused (never pushed to Envoy)",
    ));
    let failed: Vec<String> = state
        .key_rotations
        .iter()
        .filter(|(_, kr)| kr.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"))
        .map(|(name, kr)| {
            let why = kr
                .status
                .iter()
                .flat_map(|s| &s.conditions)
                .map(|c| format!("{}: {}", c.reason, c.message))
                .collect::<Vec<_>>()
                .join("; ");
            format!("KeyRotation {name} ({}): {why}", kr.spec.target)
        })
        .collect();
    out.push(finding(
        "rotations.failed",
        Severity::Warning,
        failed,
        "no key rotation failed",
        "key rotations that failed",
    ));
    out
}

/// One snapshot of a Kubernetes cluster through the KubeSource (every kind but Secrets), once
/// every list has answered or `timeout` passed (kinds that could not be listed are problems
/// in the snapshot).
///
/// # Errors
/// When no snapshot arrives within `timeout`.
pub async fn kube_snapshot(
    client: kube::Client,
    timeout: std::time::Duration,
) -> Result<std::sync::Arc<ClusterState>, String> {
    use crate::source::kube::{KubeSource, KubeSourceOptions};
    let source = std::sync::Arc::new(KubeSource::new(
        client,
        KubeSourceOptions {
            initial_sync_timeout: timeout,
            ..KubeSourceOptions::default()
        },
    ));
    let mut rx = source.subscribe();
    let task = tokio::spawn(std::sync::Arc::clone(&source).run());
    let got = tokio::time::timeout(timeout + std::time::Duration::from_secs(5), async {
        loop {
            if rx.borrow_and_update().version() >= 1 {
                return Some(rx.borrow().clone());
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    })
    .await;
    task.abort();
    match got {
        Ok(Some(s)) => Ok(s),
        _ => Err(format!(
            "no snapshot from the API server within {}s",
            timeout.as_secs()
        )),
    }
}

/// What `audit --manifests` examines.
#[derive(Debug, Default)]
pub struct Manifests {
    /// The cluster objects identityd reads.
    pub state: ClusterState,
    /// How many documents were such objects.
    pub objects: usize,
    /// Helm values documents (a top-level `encryption:` key), by origin (`values FILE`).
    pub values: Vec<(String, serde_json::Value)>,
    /// Node daemon configs from rendered ConfigMaps (`config.yaml` with `role: node`), parsed
    /// by the daemon's own parser, by origin (`ConfigMap NS/NAME: config.yaml`).
    pub node_configs: Vec<(String, Result<crate::daemon::config::DaemonConfig, String>)>,
}

/// Loads manifests: a file, a directory (recursively), or `-` for standard input
/// (`helm template … | identityd audit --manifests -`). Values documents and the node config
/// of rendered ConfigMaps are kept apart; unknown Kubernetes kinds are not problems here.
///
/// # Errors
/// When the path (or stdin) cannot be read.
pub fn load_manifests(path: &Path) -> Result<Manifests, String> {
    let mut texts = Vec::new();
    if path == Path::new("-") {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
            .map_err(|e| format!("--manifests=-: reading stdin: {e}"))?;
        texts.push(("stdin".to_owned(), t));
    } else {
        let mut files = Vec::new();
        collect(path, &mut files).map_err(|e| format!("--manifests={}: {e}", path.display()))?;
        for f in files {
            let t = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
            texts.push((f.display().to_string(), t));
        }
    }
    let mut m = Manifests::default();
    let mut objects = Vec::new();
    let mut state_problems = Vec::new();
    let mut config_maps = Vec::new();
    let mut daemon_sets = Vec::new();
    for (file, text) in texts {
        for (doc, r) in crate::source::decode::decode_all(&text) {
            let value = || serde_saphyr::from_str::<serde_json::Value>(&doc.text).ok();
            match r {
                Ok(Some(o)) => objects.push(o),
                Ok(None) => {}
                Err(e) => {
                    let Some(v) = value() else {
                        continue;
                    };
                    if v.get("encryption").is_some() && v.get("kind").is_none() {
                        m.values.push((format!("values {file}"), v));
                        continue;
                    }
                    if v["kind"] == "ConfigMap" {
                        config_maps.push(v);
                        continue;
                    }
                    if v["kind"] == "DaemonSet" {
                        daemon_sets.push(v);
                        continue;
                    }
                    // Only documents of kinds identityd knows are its business (a Deployment
                    // in `helm template` output is not a problem).
                    let kind = match &e {
                        crate::source::decode::DocError::Schema { kind, .. } => {
                            Some(kind.as_str().to_owned())
                        }
                        crate::source::decode::DocError::UnknownKind { .. }
                        | crate::source::decode::DocError::Syntax { .. } => None,
                        _ => Some("object".to_owned()),
                    };
                    if let Some(kind) = kind {
                        state_problems.push((file.clone(), doc.index, kind, e.to_string()));
                    }
                }
            }
        }
    }
    node_configs(&config_maps, &daemon_sets, &mut m);
    m.objects = objects.len();
    let mut state = ClusterState::from_objects(1, objects);
    for (file, index, kind, reason) in state_problems {
        state.push_problem(crate::model::state::Problem {
            origin: crate::model::state::Origin {
                file: Some(file.into()),
                document: Some(index),
                line: None,
            },
            kind: Some(kind),
            name: None,
            field: None,
            value: None,
            reason,
        });
    }
    m.state = state;
    Ok(m)
}

fn meta_of(v: &serde_json::Value) -> (String, String) {
    (
        v["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned(),
        v["metadata"]["name"].as_str().unwrap_or("?").to_owned(),
    )
}

/// The node daemon configs of the input, each parsed by the daemon's own parser
/// ([`crate::daemon::config::DaemonConfig::from_text_with_env`]):
/// - for each DaemonSet container running `identityd run --config PATH`: the ConfigMap key
///   mounted at PATH, with the container's literal `env` values (values the downward API
///   supplies at run time get a documentation stand-in); a `--config` the input does not
///   provide from a ConfigMap is itself a finding;
/// - every other ConfigMap holding a `config.yaml` with `role: node`.
fn node_configs(
    config_maps: &[serde_json::Value],
    daemon_sets: &[serde_json::Value],
    m: &mut Manifests,
) {
    use crate::daemon::config::{DaemonConfig, ENV_NODE_NAME, ENV_UNDERLAY_ADDRESS};
    let stand_in = |k: &str| match k {
        k if k == ENV_NODE_NAME => Some("audit".to_owned()),
        k if k == ENV_UNDERLAY_ADDRESS => Some("192.0.2.1".to_owned()),
        _ => None,
    };
    let parse = |text: &str, origin: &str, env: &dyn Fn(&str) -> Option<String>| {
        DaemonConfig::from_text_with_env(text, origin, env).map_err(|e| {
            format!(
                "does not load in the daemon: {}={}: {}",
                e.field, e.value, e.reason
            )
        })
    };
    let mut used = BTreeSet::new();
    for ds in daemon_sets {
        let (ns, name) = meta_of(ds);
        let pod = &ds["spec"]["template"]["spec"];
        for c in pod["containers"].as_array().into_iter().flatten() {
            let argv: Vec<&str> = c["command"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(c["args"].as_array().into_iter().flatten())
                .filter_map(serde_json::Value::as_str)
                .collect();
            if !argv.contains(&"run") {
                continue;
            }
            let cname = c["name"].as_str().unwrap_or("?");
            let origin = format!("DaemonSet {ns}/{name} container {cname}");
            let path = argv
                .iter()
                .position(|a| *a == "--config")
                .and_then(|i| argv.get(i + 1).copied())
                .or_else(|| argv.iter().find_map(|a| a.strip_prefix("--config=")));
            let Some(path) = path else {
                m.node_configs.push((
                    origin,
                    Err(
                        "args: `run` without --config (the daemon needs its config file)"
                            .to_owned(),
                    ),
                ));
                continue;
            };
            // The mount that holds PATH, its volume, and the ConfigMap key it projects.
            let found = c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|vm| {
                    let mount = vm["mountPath"].as_str()?.trim_end_matches('/');
                    let key = path.strip_prefix(mount)?.strip_prefix('/')?;
                    let vol = pod["volumes"]
                        .as_array()?
                        .iter()
                        .find(|v| v["name"] == vm["name"])?;
                    let cm = vol["configMap"]["name"].as_str()?;
                    Some((cm.to_owned(), key.to_owned()))
                });
            let Some((cm, key)) = found else {
                m.node_configs.push((
                    origin,
                    Err(format!("--config {path}: not mounted from a ConfigMap of the input, so what the daemon runs with cannot be checked")),
                ));
                continue;
            };
            let Some(text) = config_maps
                .iter()
                .find(|v| meta_of(v) == (ns.clone(), cm.clone()))
                .and_then(|v| v["data"][key.as_str()].as_str())
            else {
                m.node_configs.push((
                    origin,
                    Err(format!(
                        "--config {path}: ConfigMap {ns}/{cm} key {key} is not in the input"
                    )),
                ));
                continue;
            };
            used.insert((ns.clone(), cm.clone()));
            // Literal env values are what the daemon sees; downward-API ones get stand-ins.
            let literal: Vec<(String, String)> = c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| {
                    Some((
                        e["name"].as_str()?.to_owned(),
                        e["value"].as_str()?.to_owned(),
                    ))
                })
                .collect();
            let env = |k: &str| {
                literal
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
                    .or_else(|| stand_in(k))
            };
            let origin = format!("{origin} → ConfigMap {ns}/{cm}: {key}");
            let cfg = parse(text, &origin, &env);
            m.node_configs.push((origin, cfg));
        }
    }
    for v in config_maps {
        let id = meta_of(v);
        if used.contains(&id) {
            continue;
        }
        let Some(text) = v["data"]["config.yaml"].as_str() else {
            continue;
        };
        let is_node =
            serde_saphyr::from_str::<serde_json::Value>(text).is_ok_and(|c| c["role"] == "node");
        if !is_node {
            continue;
        }
        let origin = format!("ConfigMap {}/{}: config.yaml", id.0, id.1);
        let cfg = parse(text, &origin, &stand_in);
        m.node_configs.push((origin, cfg));
    }
}

/// The check ids a `--require` list may name that the given findings do not satisfy: each
/// required check must have run and passed (skipped or absent fails).
#[must_use]
pub fn unmet_requirements(findings: &[Finding], require: &[String]) -> Vec<String> {
    require
        .iter()
        .filter_map(|r| match findings.iter().find(|f| &f.check == r) {
            None => Some(format!("{r}: required, but no such check ran")),
            Some(f) if f.result == Outcome::Skipped => {
                Some(format!("{r}: required, but {}", f.message))
            }
            Some(_) => None,
        })
        .collect()
}

fn collect(path: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    if path.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<_> = std::fs::read_dir(path)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
    Ok(())
}

/// The most roots a healthy trust bundle holds: the current root, an announced next root, and
/// previous roots in their overlap (two rollovers within the longest SVID lifetime).
pub const MAX_BUNDLE_ROOTS: u64 = 4;

/// Every check: (id, what it proves and how to fix a failure).
pub const CHECKS: &[(&str, &str)] = &[
    (
        "daemons.reachable",
        "Every node daemon of the lab answers on its API socket.\nFix: start the node daemon (`identityd run --config …`); look at its log.",
    ),
    (
        "nodes.reporting",
        "(--kube) Every IdentitydNode has an IdentitydNodeReport newer than --max-report-age: the bounded live-state summary its daemon writes when a summarised value changes and at least every heartbeat (5 min by default). The live checks below then run on those summaries, with the audit's clock for every time they carry.\nFix: a missing or old report means the node's daemon is not running or cannot write (RBAC: identitydnodereports create/patch for the node role); look at its log.",
    ),
    (
        "nodes.cidr-conflicts",
        "No two IdentitydNodes claim overlapping pod CIDRs or the same WireGuard key. Each node leaves a later claim out whole (the first owner by creationTimestamp, then name, keeps it; a node's own config always wins for its own CIDR), so a conflicting object never takes traffic from its owner nor freezes the device config, but its node has no encrypted path. Skipped with fewer than two nodes.\nFix: the finding names both objects and the field; delete or correct the later one.",
    ),
    (
        "encryption.allow-from",
        "(warning) No node lets a source past ingress strict's encryption rule: `encryption.allowFrom` (empty by default) lists source CIDRs whose packets local pods accept from outside the tunnel, in clear. Run live on the nodes' reports and statically on values files and rendered node configs; each listed CIDR is named with the node or file.\nFix: remove the entries that are not needed; for the rest, this finding is the record that plaintext from them is accepted.",
    ),
    (
        "nodes.authentic",
        "Every node daemon verified every other node's IdentitydNode proof: a signature by that node's own node SVID (spiffe://<td>/identityd/node/<name>, chained to the trust bundle) over its pod CIDRs, underlay addresses, WireGuard key(s) and port, and a generation that only grows. A node acts on other nodes only in their last verified version, so an unsigned, foreign-signed or replayed object configures nothing; this finding names each such object and the node that refused it. Skipped when no node runs with a CA (nothing to verify against).\nFix: an object written by someone other than its node (or by an old daemon) — delete it; the node's daemon republishes its own, signed. A node that just joined signs once it holds its node SVID.",
    ),
    (
        "nodes.published",
        "Every running node daemon has published its IdentitydNode (WireGuard key, endpoint, pod CIDR), so its peers can reach it.\nFix: check the daemon's log for publish errors (RBAC on identitydnodes in a cluster).",
    ),
    (
        "encryption.node-pairs",
        "Every pair of nodes has a WireGuard path with a handshake newer than --max-handshake-age.\nFix: check UDP 51871 between the nodes, the peers' keys in `identityd status`, and the WireGuard device's log.",
    ),
    (
        "encryption.strict-mode",
        "Every node runs with strict mode on: pod traffic with no encrypted path is dropped, never sent in clear.\nFix: set encryption.strictMode=true (the default) and restart the node daemon.",
    ),
    (
        "encryption.ingress-strict",
        "Ingress strict is in place on every strict pod: only tunnel traffic from remote pods and only the node Envoy's connections reach it.\nFix: look at `identityd status` (ingress_strict_problem) on the node named.",
    ),
    (
        "encryption.strict-drops",
        "No packet was dropped by strict mode (a drop means a pod tried to send without an encrypted path; the flows are the evidence).\nFix: find the flow's source; a missing peer or a pod outside every pod CIDR are the usual causes.",
    ),
    (
        "encryption.plaintext",
        "No classifier counted a plaintext path to another node.\nFix: turn strict mode on; check encryption.mode.",
    ),
    (
        "identity.svid-expiry",
        "Every SVID a node serves lives longer than --min-svid-lifetime.\nFix: check that the node reaches the CA (`identityd status`, identities).",
    ),
    (
        "identity.strict-workloads",
        "Every workload in a strict namespace holds its SVID.\nFix: check the CA connection of the workload's node and the pod's service account.",
    ),
    (
        "identity.inbound-mtls",
        "Every strict workload behind a Service has an inbound mTLS listener in its node's Envoy.\nFix: check `identityd status` (xDS state, NACKs) on the node.",
    ),
    (
        "identity.bundle",
        "The trust bundle holds 1–4 valid roots: the current one, during a CA rollover the announced next one, and previous ones while their overlap lasts (at least the longest SVID lifetime). More means rollovers faster than their overlap.\nFix: finish or restart a CA rollover (KeyRotation target: ca), or space rollovers by the overlap.",
    ),
    (
        "keys.age",
        "No WireGuard key is older than the maximum key age.\nFix: apply a KeyRotation {target: wireguard}.",
    ),
    (
        "proxy.envoy-ready",
        "Every node's Envoy is LIVE.\nFix: look at the node's envoy.log; the daemon restarts an Envoy that exits.",
    ),
    (
        "mtls.ready",
        "On every node that runs workloads of a strict namespace, mTLS is ready: the node's Envoy answers LIVE and every such workload holds its SVID. Until then the node refuses plaintext into those pods (ingress strict) and they get no mTLS either, which is reported here as not ready, never as a pass. Skipped when no strict workload runs.\nFix: the finding names the node and what is missing; check its CA connection and Envoy (`identityd status`).",
    ),
    (
        "xds.nacks",
        "No Envoy rejected the configuration its daemon sent.\nFix: the NACK message names the resource; report it with the cluster objects involved.",
    ),
    (
        "cluster.problems",
        "No cluster object was refused by the daemons.\nFix: each problem names the object, field and value.",
    ),
    (
        "config.encryption",
        "What the input deploys keeps encryption on: no Helm values file and no rendered node ConfigMap sets encryption.mode=disabled or strictMode=false (and, when asked, nodeEncryption is on and mtls.defaultMode is at least --min-default-mtls). Skipped when the input has neither.\nFix: remove the weakening from the values (`--set encryption.mode=wireguard`).",
    ),
    (
        "namespaces.mtls-required",
        "Every namespace given with --require-mtls exists and is annotated identityd.io/mtls=strict. Skipped without --require-mtls.\nFix: `kubectl annotate ns NAME identityd.io/mtls=strict`.",
    ),
    (
        "namespaces.mtls-annotation",
        "Every namespace says its mTLS mode explicitly. Skipped when the input has no Namespace.\nFix: annotate it (strict, permissive or disabled).",
    ),
    (
        "policies.allow-all",
        "No AuthorizationPolicy allow rule on a Service in a strict namespace accepts every identity (a rule without `from`). Skipped when the input has no AuthorizationPolicy.\nFix: name the callers (spiffeIds, namespaces or serviceAccounts).",
    ),
    (
        "routes.backends",
        "Every HTTPRoute backend names an existing Service. Skipped when the input has no HTTPRoute.\nFix: correct the backendRef or add the Service.",
    ),
    (
        "objects.valid",
        "Every identityd and mesh object in the input is valid. Skipped when there is none.\nFix: each problem names the object, field and value.",
    ),
    (
        "objects.accepted",
        "No Gateway, route or TrafficPolicy is Accepted=False (--kube).\nFix: the condition's message names the field.",
    ),
    (
        "policy.enforced",
        "Every node's classifier holds the NetworkPolicy the cluster's current policies compile to (the digest each node reports equals the one the audit computes). Skipped when the cluster has no NetworkPolicy.\nFix: the finding names the node; its `identityd status` shows network_policy and the apply errors.",
    ),
    (
        "policy.default-deny",
        "Information, never a failure: how many namespaces have a default-deny ingress NetworkPolicy (podSelector {}, policyTypes [Ingress], no rule), listing those without, whose pods take traffic from every pod unless another policy selects them. Skipped when the input has no Namespace.\nFix: add one per namespace and allow what is needed.",
    ),
    (
        "policy.selects-nothing",
        "No NetworkPolicy has a podSelector that selects no pod, and every policy compiled whole (the compiler's problems are listed). Skipped when the input has no NetworkPolicy.\nFix: correct the selector's labels or remove the policy.",
    ),
    (
        "rotations.failed",
        "No KeyRotation ended Failed (--kube).\nFix: the rotation's status says why; apply a new one.",
    ),
];

/// What `check` proves and how to fix a failure.
#[must_use]
pub fn explain(check: &str) -> Option<&'static str> {
    CHECKS.iter().find(|(c, _)| *c == check).map(|(_, t)| *t)
}

/// Whether any failed check is at or above `fail_on`.
#[must_use]
pub fn failed(findings: &[Finding], fail_on: Severity) -> bool {
    findings
        .iter()
        .any(|f| f.is_failure() && f.severity >= fail_on)
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Output formats of `identityd audit`.
#[derive(Debug, Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum AuditFormat {
    /// A table.
    Text,
    /// JSON.
    Json,
    /// JUnit XML.
    Junit,
    /// SARIF 2.1.0.
    Sarif,
    /// Markdown.
    Markdown,
}

/// Renders findings in one of the formats.
#[must_use]
pub fn render(findings: &[Finding], format: AuditFormat) -> String {
    use self::AuditFormat as F;
    match format {
        F::Text => {
            let mut s = format!(
                "{:<28} {:<8} {:<7} {}\n",
                "check", "severity", "result", "message"
            );
            for f in findings {
                let _ = writeln!(
                    s,
                    "{:<28} {:<8} {:<7} {}",
                    f.check,
                    f.severity.as_str(),
                    match f.result {
                        Outcome::Pass => "pass",
                        Outcome::Fail => "FAIL",
                        Outcome::Skipped => "skip",
                    },
                    f.message
                );
                for d in &f.details {
                    let _ = writeln!(s, "{:<45} - {d}", "");
                }
            }
            s
        }
        F::Json => serde_json::to_string_pretty(&serde_json::json!({ "findings": findings }))
            .unwrap_or_default(),
        F::Junit => {
            let failures = findings.iter().filter(|f| f.is_failure()).count();
            let skips = findings
                .iter()
                .filter(|f| f.result == Outcome::Skipped)
                .count();
            let mut s = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"identityd-audit\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skips}\">\n",
                findings.len()
            );
            for f in findings {
                let _ = write!(
                    s,
                    "  <testcase classname=\"identityd.audit\" name=\"{}\"",
                    xml(&f.check)
                );
                if f.result == Outcome::Skipped {
                    let _ = write!(
                        s,
                        ">\n    <skipped message=\"{}\"/>\n  </testcase>\n",
                        xml(&f.message)
                    );
                } else if f.passed {
                    s.push_str("/>\n");
                } else {
                    let _ = write!(
                        s,
                        ">\n    <failure type=\"{}\" message=\"{}\">{}</failure>\n  </testcase>\n",
                        f.severity.as_str(),
                        xml(&f.message),
                        xml(&f.details.join("\n"))
                    );
                }
            }
            s.push_str("</testsuite>\n");
            s
        }
        F::Sarif => {
            let rules: Vec<_> = findings
                .iter()
                .map(|f| serde_json::json!({ "id": f.check, "shortDescription": { "text": f.check } }))
                .collect();
            let not_applicable = findings
                .iter()
                .filter(|f| f.result == Outcome::Skipped)
                .map(|f| {
                    serde_json::json!({
                        "ruleId": f.check,
                        "kind": "notApplicable",
                        "level": "none",
                        "message": { "text": f.message },
                    })
                });
            let results: Vec<_> = findings
                .iter()
                .filter(|f| f.is_failure())
                .flat_map(|f| {
                    let details = if f.details.is_empty() { vec![f.message.clone()] } else { f.details.clone() };
                    details.into_iter().map(move |d| {
                        serde_json::json!({
                            "ruleId": f.check,
                            "level": match f.severity { Severity::Error => "error", Severity::Warning => "warning", Severity::Info => "note" },
                            "message": { "text": d },
                        })
                    })
                })
                .chain(not_applicable)
                .collect();
            serde_json::to_string_pretty(&serde_json::json!({
                "version": "2.1.0",
                "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
                "runs": [{ "tool": { "driver": { "name": "identityd", "version": env!("CARGO_PKG_VERSION"), "semanticVersion": env!("CARGO_PKG_VERSION"), "informationUri": "https://example.invalid/identityd", "rules": rules } }, "results": results }],
            }))
            .unwrap_or_default()
        }
        F::Markdown => {
            let mut s =
                String::from("| check | severity | result | message |\n|---|---|---|---|\n");
            for f in findings {
                let _ = writeln!(
                    s,
                    "| `{}` | {} | {} | {} |",
                    f.check,
                    f.severity.as_str(),
                    match f.result {
                        Outcome::Pass => "✅ pass",
                        Outcome::Fail => "❌ fail",
                        Outcome::Skipped => "⏭ skipped",
                    },
                    f.message.replace('|', "\\|")
                );
            }
            for f in findings.iter().filter(|f| f.is_failure()) {
                let _ = writeln!(s, "\n<details><summary>{}</summary>\n", f.check);
                for d in &f.details {
                    let _ = writeln!(s, "- {}", d.replace('|', "\\|"));
                }
                s.push_str("\n</details>\n");
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::api::PeerStatus;
    use crate::model::{Namespace, Object, Pod};

    fn status(node: &str, peers: &[(&str, Option<u64>)]) -> NodeStatus {
        NodeStatus {
            node: node.into(),
            strict_mode: true,
            ingress_strict_in_place: true,
            peers: peers
                .iter()
                .map(|(n, h)| PeerStatus {
                    name: (*n).into(),
                    path: "wireguard".into(),
                    handshake_age_secs: *h,
                    ..Default::default()
                })
                .collect(),
            unverified_nodes: Some(Vec::new()),
            ..Default::default()
        }
    }

    fn nodes_state() -> ClusterState {
        let text = "apiVersion: identityd.io/v1alpha1\nkind: IdentitydNode\nmetadata: {name: n1}\nspec: {podCIDRs: [10.244.1.0/24], underlayAddresses: [10.99.0.11]}\n---\napiVersion: identityd.io/v1alpha1\nkind: IdentitydNode\nmetadata: {name: n2}\nspec: {podCIDRs: [10.244.2.0/24], underlayAddresses: [10.99.0.12]}\n";
        let mut objs: Vec<Object> = crate::source::decode::decode_all(text)
            .into_iter()
            .filter_map(|(_, r)| r.ok().flatten())
            .collect();
        objs.push(Object::Namespace(Namespace::new(
            "shop",
            Some(MtlsMode::Strict),
        )));
        objs.push(Object::Pod(Pod::new(
            "shop",
            "web-1",
            "n1",
            "web",
            "10.244.1.10".parse().unwrap(),
        )));
        ClusterState::from_objects(1, objs)
    }

    /// `policy.enforced` is skipped without a NetworkPolicy, passes when every node reports
    /// the digest the cluster's policies compile to, and fails naming a node that enforces
    /// another version or did not write all of it; `policy.selects-nothing` names a policy
    /// whose selector matches no pod; `policy.default-deny` lists open namespaces.
    #[test]
    fn policy_checks_follow_the_compiled_digest_and_name_the_node() {
        let mut st = nodes_state();
        let with_digest = |d: Option<String>| {
            let mut s = status("n1", &[("n2", Some(5))]);
            s.network_policy = Some(crate::daemon::api::NetworkPolicyStatus {
                digest: d,
                ..Default::default()
            });
            s
        };
        let old = crate::daemon::node::policy_digest(&crate::daemon::netpol::compile(&st));
        let f = live(
            &[Ok(with_digest(Some(old.clone())))],
            &st,
            &AuditOptions::default(),
        );
        assert_eq!(by(&f, "policy.enforced").result, Outcome::Skipped);
        let policy = |name: &str, app: &str| {
            crate::source::decode::decode_all(&format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{podSelector: {{matchLabels: {{app: {app}}}}}, policyTypes: [Ingress]}}\n"
            ))
            .into_iter()
            .filter_map(|(_, r)| r.ok().flatten())
            .collect::<Vec<_>>()
        };
        let mut objs: Vec<Object> = Vec::new();
        objs.extend(st.pods.values().cloned().map(|mut p| {
            p.metadata.labels.insert("app".into(), "web".into());
            Object::Pod(p)
        }));
        objs.extend(st.namespaces.values().cloned().map(Object::Namespace));
        objs.extend(st.nodes.values().cloned().map(Object::IdentitydNode));
        objs.extend(policy("deny-web", "web"));
        objs.extend(policy("deny-nothing", "nobody"));
        st = ClusterState::from_objects(2, objs);
        assert_eq!(st.network_policies.len(), 2);
        let now = crate::daemon::node::policy_digest(&crate::daemon::netpol::compile(&st));
        assert_ne!(old, now, "isolating web changes the digest");
        let f = live(&[Ok(with_digest(Some(now)))], &st, &AuditOptions::default());
        assert!(by(&f, "policy.enforced").passed, "{f:#?}");
        for (d, why) in [
            (Some(old), "enforces NetworkPolicy digest"),
            (None, "does not hold"),
        ] {
            let f = live(&[Ok(with_digest(d))], &st, &AuditOptions::default());
            let e = by(&f, "policy.enforced");
            assert!(e.is_failure(), "{e:#?}");
            assert!(
                e.details
                    .iter()
                    .any(|l| l.starts_with("n1: ") && l.contains(why)),
                "{e:#?}"
            );
        }
        let statics = cluster_checks(&st, &AuditOptions::default());
        let nothing = by(&statics, "policy.selects-nothing");
        assert!(nothing.is_failure(), "{nothing:#?}");
        assert!(
            nothing
                .details
                .iter()
                .any(|l| l.contains("shop/deny-nothing")),
            "{nothing:#?}"
        );
        assert!(
            !nothing.details.iter().any(|l| l.contains("deny-web")),
            "{nothing:#?}"
        );
        let open = by(&statics, "policy.default-deny");
        assert!(
            open.passed && open.details.iter().any(|l| l.contains("namespace shop")),
            "{open:#?}"
        );
    }

    fn by<'a>(f: &'a [Finding], check: &str) -> &'a Finding {
        f.iter()
            .find(|x| x.check == check)
            .unwrap_or_else(|| panic!("no {check} in {f:#?}"))
    }

    #[test]
    fn live_checks_pass_and_fail_for_the_right_reasons() {
        let st = nodes_state();
        let mut n1 = status("n1", &[("n2", Some(5))]);
        n1.svids = vec![("spiffe://cluster.local/ns/shop/sa/web".into(), 3000)];
        n1.bundle_roots = vec![300 * 86_400];
        n1.envoy_ready = Some(true);
        let n2 = status("n2", &[("n1", Some(5))]);
        let f = live(
            &[Ok(n1.clone()), Ok(n2.clone())],
            &st,
            &AuditOptions::default(),
        );
        assert!(f.iter().all(|x| !x.is_failure()), "{f:#?}");
        // What the statuses do not carry is skipped, never passed.
        let skipped: Vec<&str> = f
            .iter()
            .filter(|x| x.result == Outcome::Skipped)
            .map(|x| x.check.as_str())
            .collect();
        assert_eq!(
            skipped,
            [
                "identity.inbound-mtls",
                "keys.age",
                "policy.enforced",
                "policy.selects-nothing"
            ],
            "{f:#?}"
        );
        assert!(!failed(&f, Severity::Warning));
        let c = f.iter().find(|x| x.check == "nodes.authentic").unwrap();
        assert!(c.passed && c.result != Outcome::Skipped, "{c:?}");

        // A node that refused an object's proof, and a node that checks no proofs at all.
        let mut refusing = n2.clone();
        refusing.unverified_nodes = Some(vec![
            "IdentitydNode n9: spec.proof is missing; the node is not configured".into(),
        ]);
        let mut unchecked = n1.clone();
        unchecked.unverified_nodes = None;
        let f = live(
            &[Ok(unchecked.clone()), Ok(refusing)],
            &st,
            &AuditOptions::default(),
        );
        let c = f.iter().find(|x| x.check == "nodes.authentic").unwrap();
        assert!(!c.passed, "{c:?}");
        assert_eq!(
            c.details,
            [
                "n1: does not check node proofs (no CA): it configures any IdentitydNode",
                "n2: IdentitydNode n9: spec.proof is missing; the node is not configured"
            ],
            "{c:?}"
        );
        // A node with an allow-list: a warning naming it and the sources.
        let mut open = n1.clone();
        open.allow_from = vec!["192.0.2.0/24".into()];
        let f = live(&[Ok(open), Ok(n2.clone())], &st, &AuditOptions::default());
        let c = f
            .iter()
            .find(|x| x.check == "encryption.allow-from")
            .unwrap();
        assert!(c.is_failure() && c.severity == Severity::Warning, "{c:?}");
        assert_eq!(
            c.details,
            [
                "n1: encryption.allowFrom=192.0.2.0/24 (plaintext from these sources reaches local pods)"
            ]
        );
        // Nothing checks proofs anywhere: skipped, never passed.
        let mut unchecked2 = n2.clone();
        unchecked2.unverified_nodes = None;
        let f = live(
            &[Ok(unchecked), Ok(unchecked2)],
            &st,
            &AuditOptions::default(),
        );
        let c = f.iter().find(|x| x.check == "nodes.authentic").unwrap();
        assert_eq!(c.result, Outcome::Skipped, "{c:?}");

        // No handshake, strict mode off, an expiring SVID, a NACK, a daemon down.
        let mut bad1 = status("n1", &[("n2", None)]);
        bad1.strict_mode = false;
        bad1.svids = vec![("spiffe://cluster.local/ns/shop/sa/web".into(), 30)];
        bad1.xds = vec!["Cluster v3 NACK: bad".into()];
        bad1.counters = vec![("drop".into(), (4, 400))];
        bad1.ingress_strict_in_place = false;
        bad1.ingress_strict_problem = Some("not attached to p-web-1".into());
        let f = live(
            &[Ok(bad1), Err("n2: connection refused".into())],
            &st,
            &AuditOptions::default(),
        );
        let failed_checks: Vec<&str> = f
            .iter()
            .filter(|x| !x.passed)
            .map(|x| x.check.as_str())
            .collect();
        for c in [
            "daemons.reachable",
            "encryption.node-pairs",
            "encryption.strict-mode",
            "encryption.strict-drops",
            "encryption.ingress-strict",
            "identity.svid-expiry",
            "xds.nacks",
        ] {
            assert!(
                failed_checks.contains(&c),
                "{c} should fail: {failed_checks:?}"
            );
        }
        assert!(failed(&f, Severity::Error));

        // A strict workload without its SVID.
        let f = live(
            &[Ok(status("n1", &[("n2", Some(1))])), Ok(n2)],
            &st,
            &AuditOptions::default(),
        );
        let c = f
            .iter()
            .find(|x| x.check == "identity.strict-workloads")
            .unwrap();
        assert!(!c.passed && c.details[0].contains("shop/web-1"), "{c:?}");
        // … which, with no Envoy on its node, is mTLS not ready there.
        let c = f.iter().find(|x| x.check == "mtls.ready").unwrap();
        assert!(!c.passed, "{c:?}");
        assert_eq!(
            c.details,
            ["n1: mTLS not ready: no Envoy runs; 1 of 1 strict workloads without an SVID"],
            "{c:?}"
        );
        // Envoy LIVE but the SVID still missing (the CA not answering yet): still not ready.
        let mut waiting = status("n1", &[("n2", Some(1))]);
        waiting.envoy_ready = Some(true);
        let f = live(
            &[Ok(waiting), Ok(status("n2", &[("n1", Some(1))]))],
            &st,
            &AuditOptions::default(),
        );
        let c = f.iter().find(|x| x.check == "mtls.ready").unwrap();
        assert!(
            !c.passed && c.details[0].contains("1 of 1 strict workloads without an SVID"),
            "{c:?}"
        );
    }

    #[test]
    fn static_checks_and_formats() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("app.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: web}]\n  rules: [{backendRefs: [{name: nope, port: 80}]}]\n---\n\
             encryption: {mode: disabled, strictMode: false}\n",
        )
        .unwrap();
        let m = load_manifests(dir.path()).unwrap();
        let opts = AuditOptions {
            require_mtls: vec!["shop".into(), "pay".into()],
            ..AuditOptions::default()
        };
        let f = static_checks(&m, &opts);
        let get = |c: &str| f.iter().find(|x| x.check == c).unwrap();
        assert!(get("config.encryption").is_failure());
        assert_eq!(get("config.encryption").details.len(), 2);
        assert!(
            get("config.encryption").details[0].starts_with("values "),
            "names where it came from: {:?}",
            get("config.encryption").details
        );
        assert_eq!(
            get("policies.allow-all").result,
            Outcome::Skipped,
            "nothing to examine is not a pass"
        );
        assert!(!get("namespaces.mtls-required").passed);
        assert!(
            !get("routes.backends").passed,
            "{:?}",
            get("routes.backends")
        );
        assert!(
            get("objects.valid").passed,
            "a Deployment is not identityd's business: {:?}",
            get("objects.valid")
        );
        let junit = render(&f, AuditFormat::Junit);
        assert!(
            junit.contains("<testsuite name=\"identityd-audit\"") && junit.contains("<failure"),
            "{junit}"
        );
        let sarif: serde_json::Value =
            serde_json::from_str(&render(&f, AuditFormat::Sarif)).unwrap();
        assert_eq!(sarif["version"], "2.1.0");
        assert!(
            sarif["runs"][0]["results"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["level"] == "error")
        );
        let json: serde_json::Value = serde_json::from_str(&render(&f, AuditFormat::Json)).unwrap();
        assert!(json["findings"].as_array().unwrap().len() >= 5);
        assert!(
            render(&f, AuditFormat::Markdown).contains("| `routes.backends` | error | ❌ fail |")
        );
        assert!(render(&f, AuditFormat::Text).contains("FAIL"));
    }
}

#[cfg(test)]
mod static_sets {
    use super::*;

    fn failing(yaml: &str, require: &[&str]) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.yaml"), yaml).unwrap();
        let m = load_manifests(dir.path()).unwrap();
        let opts = AuditOptions {
            require_mtls: require.iter().map(|s| (*s).to_owned()).collect(),
            ..AuditOptions::default()
        };
        static_checks(&m, &opts)
            .into_iter()
            .filter(Finding::is_failure)
            .map(|f| f.check)
            .collect()
    }

    const GOOD: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  annotations: {identityd.io/mtls: strict}\n---\n\
        apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n---\n\
        apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\n\
        spec: {parentRefs: [{group: \"\", kind: Service, name: web}], rules: [{backendRefs: [{name: web, port: 80}]}]}\n---\n\
        apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\n---\n\
        encryption: {mode: wireguard, strictMode: true}\n";

    #[test]
    fn good_manifests_pass_every_check() {
        assert!(
            failing(GOOD, &["shop"]).is_empty(),
            "{:?}",
            failing(GOOD, &["shop"])
        );
    }

    #[test]
    fn bad_manifests_fail_exactly_the_expected_checks() {
        let bad = format!(
            "{}---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: legacy}}\n---\n\
             apiVersion: identityd.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: p, namespace: shop}}\n\
             spec: {{targetRef: {{kind: Service, name: web}}, retries: {{attempts: -1}}}}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r2, namespace: shop}}\n\
             spec: {{parentRefs: [{{group: \"\", kind: Service, name: web}}], rules: [{{backendRefs: [{{name: gone, port: 80}}]}}]}}\n---\n\
             encryption: {{mode: disabled}}\n",
            GOOD
        );
        let mut got = failing(&bad, &["shop", "payments"]);
        got.sort();
        assert_eq!(
            got,
            [
                "config.encryption",
                "namespaces.mtls-annotation",
                "namespaces.mtls-required",
                "objects.valid",
                "routes.backends",
            ],
        );
    }

    #[test]
    fn an_allow_list_is_reported_as_a_warning_naming_the_file_and_the_cidrs() {
        let with = GOOD.replace(
            "encryption: {mode: wireguard, strictMode: true}\n",
            "encryption: {mode: wireguard, strictMode: true, allowFrom: [192.0.2.0/24, 198.51.100.7/32]}\n",
        );
        assert_ne!(with, GOOD);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.yaml"), &with).unwrap();
        let m = load_manifests(dir.path()).unwrap();
        let f = static_checks(&m, &AuditOptions::default());
        let c = f
            .iter()
            .find(|x| x.check == "encryption.allow-from")
            .unwrap();
        assert!(c.is_failure() && c.severity == Severity::Warning, "{c:?}");
        assert_eq!(c.details.len(), 1, "{c:?}");
        assert!(
            c.details[0].ends_with(
                ": encryption.allowFrom=192.0.2.0/24,198.51.100.7/32 (plaintext from these sources reaches local pods)"
            ),
            "{c:?}"
        );
        // Without a list it passes; with nothing to examine it is skipped.
        std::fs::write(dir.path().join("m.yaml"), GOOD).unwrap();
        let f = static_checks(
            &load_manifests(dir.path()).unwrap(),
            &AuditOptions::default(),
        );
        assert!(
            f.iter()
                .any(|x| x.check == "encryption.allow-from" && x.passed)
        );
        let f = static_checks(&Manifests::default(), &AuditOptions::default());
        let c = f
            .iter()
            .find(|x| x.check == "encryption.allow-from")
            .unwrap();
        assert_eq!(c.result, Outcome::Skipped);
    }

    #[test]
    fn every_check_is_explained() {
        let src = include_str!("audit.rs");
        for line in src.lines() {
            let t = line.trim();
            if let Some(rest) = t.strip_prefix('"')
                && let Some(id) = rest.strip_suffix("\",")
                && id.contains('.')
                && !id.contains(' ')
                && id
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '.' || c == '-')
            {
                assert!(explain(id).is_some(), "check {id} has no --explain entry");
            }
        }
        assert!(explain("config.encryption").unwrap().contains("Fix:"));
    }

    #[test]
    fn a_skipped_check_fails_only_when_required() {
        let m = Manifests::default();
        let f = static_checks(&m, &AuditOptions::default());
        assert!(!failed(&f, Severity::Info), "nothing failed");
        let enc = f.iter().find(|x| x.check == "config.encryption").unwrap();
        assert_eq!(enc.result, Outcome::Skipped);
        assert!(!enc.passed);
        assert_eq!(
            unmet_requirements(&f, &["config.encryption".into()]),
            [
                "config.encryption: required, but skipped: no Helm values file and no rendered node ConfigMap (config.yaml with role: node) in the input"
            ]
        );
        let junit = render(&f, AuditFormat::Junit);
        assert!(
            junit.contains("<skipped message=\"skipped: no Helm values"),
            "{junit}"
        );
        let sarif: serde_json::Value =
            serde_json::from_str(&render(&f, AuditFormat::Sarif)).unwrap();
        assert!(
            sarif["runs"][0]["results"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["ruleId"] == "config.encryption" && r["kind"] == "notApplicable"),
            "{sarif}"
        );
        let json: serde_json::Value = serde_json::from_str(&render(&f, AuditFormat::Json)).unwrap();
        assert!(
            json["findings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["check"] == "config.encryption" && x["result"] == "skipped")
        );
    }
}
