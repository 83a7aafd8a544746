//! `KeyRotation`, pure: the controller's phase machine (run by the CA role, the cluster's one
//! controller) and each node's part of a WireGuard rotation.
//!
//! - `wireguard`, without a device restart and without loss. Each selected node goes through
//!   three steps ([`NodeStep`]), reported on its `IdentitydNode` in the condition
//!   [`ROTATED_CONDITION`] (reason = the step, message `<rotation>: …`) and kept in a record in
//!   its state directory ([`NodeRecord`]), so a restarted daemon resumes instead of redoing:
//!   1. **Announced**: the node generates a next key (0600, atomic), its device answers
//!      handshakes for both keys, and once the device holds it the node publishes it as
//!      `spec.wireguard.nextPublicKey`. Peers map both keys to the node and handshake to the
//!      new one at once; their sessions to the old key keep working meanwhile.
//!   2. **Switched**: every peer of the device has a session with the node's next key (it
//!      handshook to it, which shows it knows it), read from the device
//!      (`get=identityd-links`).
//!   3. **Retired**: the next key becomes the current one (sessions built to it stay), the old
//!      one is removed from the object and, after `RETIRE_GRACE` of answering only, from the
//!      device.
//!
//!   The controller moves Pending → InProgress (`status.startTime`), shows each node's step in
//!   `status.nodes` and the step every node has reached in `status.step`, and ends Completed
//!   when every node retired its old key, or Failed when `spec.deadline` (default
//!   [`DEFAULT_DEADLINE`]) passes first, naming the nodes that did not finish. Nodes of a
//!   rotation that ended (Failed, deleted) before they retired withdraw their next key and keep
//!   the current one.
//! - `ca`: the CA role rolls the root over with `spec.overlapWindow` (both roots stay in the
//!   bundle during the overlap) and marks the rotation Completed.
//! - `ipsec`: Failed — this build has no IPsec datapath. Its rotation is meant to take the same
//!   steps: install the new inbound state (Announced), switch the outbound state (Switched),
//!   remove the old state (Retired).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::model::identityd::{
    KeyRotationStatus, NodeRotationStatus, RotationPhase, RotationTarget,
};
use crate::model::{ClusterState, Condition, IdentitydNode, KeyRotation, selector_matches};

/// Condition type a node sets on its `IdentitydNode` for its part of a WireGuard rotation:
/// reason = its [`NodeStep`], status True once Retired, message `<rotation name>: …`.
pub const ROTATED_CONDITION: &str = "WireguardKeyRotated";

/// Default overlap of a CA rollover when `spec.overlapWindow` is absent.
pub const DEFAULT_CA_OVERLAP: std::time::Duration = std::time::Duration::from_secs(3600);

/// Default `spec.deadline` of a WireGuard rotation: above WireGuard's 180 s session lifetime
/// plus propagation, so peers that are merely slow still get to handshake.
pub const DEFAULT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

/// A node's step in a WireGuard rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum NodeStep {
    /// Nothing reported yet (controller view only).
    Pending,
    /// The next key is in the device and published.
    Announced,
    /// Every peer handshook to the next key.
    Switched,
    /// The next key is the current one; the old key is gone.
    Retired,
    /// The rotation ended before this node retired its old key: the next key was dropped.
    Withdrawn,
}

impl NodeStep {
    /// The name used in conditions and `status.nodes[].step`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Announced => "Announced",
            Self::Switched => "Switched",
            Self::Retired => "Retired",
            Self::Withdrawn => "Withdrawn",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Announced,
            Self::Switched,
            Self::Retired,
            Self::Withdrawn,
        ]
        .into_iter()
        .find(|x| x.name() == s)
    }
}

/// What a node keeps in its state directory about its part of a rotation (public data only:
/// the next private key is its own 0600 file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    /// The rotation.
    pub rotation: String,
    /// The node's step.
    pub step: NodeStep,
    /// The next (after Retired: the new current) public key, base64.
    pub next_public_key: String,
}

impl NodeRecord {
    /// Whether the node holds a next key beside its current one.
    #[must_use]
    pub fn active(&self) -> bool {
        matches!(self.step, NodeStep::Announced | NodeStep::Switched)
    }
}

/// What a node does next for a WireGuard rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAction {
    /// Nothing.
    None,
    /// Generate a next key and start answering on it (then publish it once the device has it).
    Announce(String),
    /// Every peer handshook to the next key: record Switched.
    Switch,
    /// Make the next key the current one and drop the old one.
    Retire,
    /// The rotation ended first: drop the next key, keep the current one.
    Withdraw,
}

/// What the device shows of one link (from `get=identityd-links`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkView {
    /// The peer's current key (base64).
    pub peer: String,
    /// This node's key on the link (base64).
    pub local: String,
    /// Whether the link has a valid session.
    pub session: bool,
}

/// The peers (by current key, base64) without a session to `next` yet.
#[must_use]
pub fn peers_not_switched(peers: &[String], links: &[LinkView], next: &str) -> Vec<String> {
    peers
        .iter()
        .filter(|p| {
            !links
                .iter()
                .any(|l| &l.peer == *p && l.local == next && l.session)
        })
        .cloned()
        .collect()
}

fn rotation_running(state: &ClusterState, name: &str) -> bool {
    state.key_rotations.get(name).is_some_and(|kr| {
        kr.spec.target() == Some(RotationTarget::Wireguard)
            && kr.status.as_ref().and_then(KeyRotationStatus::phase)
                == Some(RotationPhase::InProgress)
    })
}

/// This node's next action. `record` is its saved record, `peers` the current keys of the
/// peers in its device config, `links` what the device shows (`None`: not readable). Pure.
#[must_use]
pub fn node_action(
    state: &ClusterState,
    node: &str,
    record: Option<&NodeRecord>,
    peers: &[String],
    links: Option<&[LinkView]>,
) -> NodeAction {
    if let Some(r) = record.filter(|r| r.active()) {
        if !rotation_running(state, &r.rotation) {
            return NodeAction::Withdraw;
        }
        return match r.step {
            NodeStep::Switched => NodeAction::Retire,
            _ => match links {
                Some(l) if peers_not_switched(peers, l, &r.next_public_key).is_empty() => {
                    NodeAction::Switch
                }
                _ => NodeAction::None,
            },
        };
    }
    match node_pending_rotation(state, node) {
        Some(name) if record.is_none_or(|r| r.rotation != name) => NodeAction::Announce(name),
        _ => NodeAction::None,
    }
}

/// The condition a node reports for its record (`None` without one).
#[must_use]
pub fn record_condition(record: &NodeRecord, now: &str) -> Condition {
    let message = match record.step {
        NodeStep::Pending | NodeStep::Announced => format!(
            "{}: next WireGuard public key {} announced",
            record.rotation, record.next_public_key
        ),
        NodeStep::Switched => format!(
            "{}: every peer handshook to the next key {}",
            record.rotation, record.next_public_key
        ),
        NodeStep::Retired => format!(
            "{}: new WireGuard public key {}",
            record.rotation, record.next_public_key
        ),
        NodeStep::Withdrawn => format!(
            "{}: ended before this node retired its old key; next key {} withdrawn",
            record.rotation, record.next_public_key
        ),
    };
    condition(
        ROTATED_CONDITION,
        record.step == NodeStep::Retired,
        record.step.name(),
        message,
        now,
        None,
    )
}

/// The `IdentitydNode` this node publishes: `published` (the object in the store, if any)
/// with the given spec, the next key while announced (and once the device holds it), and the
/// record's condition; other conditions and labels kept. Pure.
#[must_use]
pub fn published_node(
    published: Option<&IdentitydNode>,
    fresh: IdentitydNode,
    record: Option<&NodeRecord>,
    next_in_device: bool,
    now: &str,
) -> IdentitydNode {
    let mut node = published.cloned().unwrap_or_else(|| fresh.clone());
    node.spec = fresh.spec;
    if let (Some(w), Some(r)) = (node.spec.wireguard.as_mut(), record)
        && r.active()
        && next_in_device
    {
        w.next_public_key = Some(r.next_public_key.clone());
    }
    let mut st = node.status.take().unwrap_or_default();
    let keep = st
        .conditions
        .iter()
        .find(|c| c.type_ == ROTATED_CONDITION)
        .cloned();
    st.conditions.retain(|c| c.type_ != ROTATED_CONDITION);
    if let Some(r) = record {
        let mut c = record_condition(r, now);
        // The same report keeps its transition time.
        if let Some(k) = keep.filter(|k| same_condition(k, &c)) {
            c = k;
        }
        st.conditions.push(c);
    }
    node.status = (st != crate::model::IdentitydNodeStatus::default()).then_some(st);
    node
}

/// `node` with the roots its Envoy trusts (`None`: not known yet, the published list stays).
/// Pure.
#[must_use]
pub fn with_trusted_roots(mut node: IdentitydNode, roots: Option<Vec<String>>) -> IdentitydNode {
    if let Some(roots) = roots {
        let mut st = node.status.take().unwrap_or_default();
        st.trusted_roots = roots;
        node.status = (st != crate::model::IdentitydNodeStatus::default()).then_some(st);
    }
    node
}

fn same_condition(a: &Condition, b: &Condition) -> bool {
    a.type_ == b.type_ && a.status == b.status && a.reason == b.reason && a.message == b.message
}

/// Whether the published object differs from the desired one in anything but condition
/// times.
#[must_use]
pub fn node_differs(published: Option<&IdentitydNode>, want: &IdentitydNode) -> bool {
    let Some(p) = published else { return true };
    if p.spec != want.spec || p.metadata.labels != want.metadata.labels {
        return true;
    }
    let conds = |n: &IdentitydNode| -> Vec<Condition> {
        n.status
            .as_ref()
            .map_or_else(Vec::new, |s| s.conditions.clone())
    };
    let roots = |n: &IdentitydNode| -> Vec<String> {
        n.status
            .as_ref()
            .map_or_else(Vec::new, |s| s.trusted_roots.clone())
    };
    let (a, b) = (conds(p), conds(want));
    a.len() != b.len()
        || a.iter().zip(&b).any(|(x, y)| !same_condition(x, y))
        || roots(p) != roots(want)
}

/// What the controller does for one rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The rotation's name.
    pub name: String,
    /// The status to write.
    pub status: KeyRotationStatus,
    /// For `ca`: what the CA does before the status is written.
    pub ca: Option<CaAction>,
}

/// A step of a CA rollover the CA role takes ([`controller_steps`] decides, the CA role does it
/// and completes the status: the new root's fingerprint, the end of the overlap, or an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaAction {
    /// Put a new root in the bundle (the current root keeps signing); the status gets
    /// `newRoot`.
    Stage,
    /// Every node's Envoy trusts the new root: it signs from now on; the old root stays in the
    /// bundle for this overlap (and at least the longest SVID lifetime).
    Promote {
        /// `spec.overlapWindow`.
        overlap: std::time::Duration,
    },
    /// The rollover failed before its switch: the announced root leaves the bundle.
    Withdraw,
}

/// What the controller knows of the CA: the fingerprints of its signing root and of the
/// announced next root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaView {
    /// The root that signs now.
    pub root: String,
    /// The staged next root, during a rollover.
    pub next_root: Option<String>,
}

/// How a node's step reads in a CA rollover's `status.nodes`.
const CA_TRUSTED: &str = "Trusted";

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    now: &str,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: Some(now.to_owned()),
        observed_generation: generation,
    }
}

fn status(phase: RotationPhase, cond: Condition, generation: Option<i64>) -> KeyRotationStatus {
    KeyRotationStatus {
        phase: Some(phase.to_string()),
        conditions: vec![cond],
        observed_generation: generation,
        ..KeyRotationStatus::default()
    }
}

/// The nodes a rotation selects (by `IdentitydNode` labels), sorted by name.
#[must_use]
pub fn selected_nodes<'a>(state: &'a ClusterState, kr: &KeyRotation) -> Vec<&'a IdentitydNode> {
    state
        .nodes
        .values()
        .filter(|n| selector_matches(&kr.spec.node_selector, &n.metadata.labels))
        .collect()
}

/// The step `node` reports for the rotation `name` (Pending when it reports none).
#[must_use]
pub fn node_step(node: &IdentitydNode, name: &str) -> NodeStep {
    node.status
        .as_ref()
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == ROTATED_CONDITION && c.message.split(':').next() == Some(name))
        })
        .and_then(|c| NodeStep::parse(&c.reason))
        .unwrap_or(NodeStep::Pending)
}

/// Whether `node` reports having rotated its WireGuard key for the rotation `name`.
#[must_use]
pub fn node_rotated(node: &IdentitydNode, name: &str) -> bool {
    node_step(node, name) == NodeStep::Retired
}

/// The controller's steps for the current state: one per rotation whose status changes.
/// `now` is the time for the conditions and the deadline. Pure.
#[must_use]
pub fn controller_steps(
    state: &ClusterState,
    now: std::time::SystemTime,
    ca: &CaView,
) -> Vec<Step> {
    let now_s = identityd_certs::inspect::rfc3339(now);
    let now_str = now_s.as_str();
    let mut out = Vec::new();
    for (name, kr) in &state.key_rotations {
        let generation = kr.metadata.generation;
        let phase = kr.status.as_ref().and_then(KeyRotationStatus::phase);
        let cur = kr.status.clone().unwrap_or_default();
        let step = |status: KeyRotationStatus, action: Option<CaAction>| Step {
            name: name.clone(),
            status,
            ca: action,
        };
        match (phase, kr.spec.target()) {
            (Some(RotationPhase::Completed | RotationPhase::Failed), _) | (_, None) => {}
            (_, Some(RotationTarget::Ipsec)) => out.push(step(
                status(
                    RotationPhase::Failed,
                    condition(
                        "Ready",
                        false,
                        "IpsecUnavailable",
                        "this identityd build has no IPsec datapath; use encryption.mode=wireguard"
                            .into(),
                        now_str,
                        generation,
                    ),
                    generation,
                ),
                None,
            )),
            (_, Some(RotationTarget::Ca)) => {
                if let Some((s, action)) = ca_status(state, kr, &cur, ca, now, now_str) {
                    out.push(step(s, action));
                }
            }
            (_, Some(RotationTarget::Wireguard)) => {
                if let Some(s) = wireguard_status(state, name, kr, &cur, now, now_str) {
                    out.push(step(s, None));
                }
            }
        }
    }
    out
}

/// The new status of a `wireguard` rotation, when it changes (not for the time alone).
fn wireguard_status(
    state: &ClusterState,
    name: &str,
    kr: &KeyRotation,
    cur: &KeyRotationStatus,
    now: std::time::SystemTime,
    now_str: &str,
) -> Option<KeyRotationStatus> {
    let generation = kr.metadata.generation;
    // An object every node leaves out (a conflicting claim) is no node to wait for.
    let conflicts = crate::model::conflicts::node_conflicts(state, None);
    let nodes: Vec<&IdentitydNode> = selected_nodes(state, kr)
        .into_iter()
        .filter(|n| n.spec.wireguard.is_some())
        .filter(|n| !conflicts.is_rejected(&n.metadata.name))
        .collect();
    if nodes.is_empty() {
        return Some(status(
            RotationPhase::Failed,
            condition(
                "Ready",
                false,
                "NoMatchingNodes",
                format!(
                    "no node running WireGuard matches spec.nodeSelector {:?}",
                    kr.spec.node_selector
                ),
                now_str,
                generation,
            ),
            generation,
        ));
    }
    let steps: Vec<(&str, NodeStep)> = nodes
        .iter()
        .map(|n| (n.metadata.name.as_str(), node_step(n, name)))
        .collect();
    let per_node: Vec<NodeRotationStatus> = nodes
        .iter()
        .zip(&steps)
        .map(|(n, (nm, s))| NodeRotationStatus {
            name: (*nm).to_owned(),
            step: s.name().to_owned(),
            message: n
                .status
                .as_ref()
                .and_then(|st| {
                    st.conditions.iter().find(|c| {
                        c.type_ == ROTATED_CONDITION && c.message.split(':').next() == Some(name)
                    })
                })
                .map(|c| c.message.clone())
                .unwrap_or_default(),
        })
        .collect();
    let least = steps
        .iter()
        .map(|(_, s)| *s)
        .min()
        .unwrap_or(NodeStep::Pending);
    let done: Vec<&str> = steps
        .iter()
        .filter(|(_, s)| *s == NodeStep::Retired)
        .map(|(n, _)| *n)
        .collect();
    let waiting: Vec<String> = steps
        .iter()
        .filter(|(_, s)| *s != NodeStep::Retired)
        .map(|(n, s)| format!("{n} ({})", s.name()))
        .collect();
    let start_time = cur.start_time.clone().unwrap_or_else(|| now_str.to_owned());
    let deadline = kr.spec.deadline().unwrap_or(DEFAULT_DEADLINE);
    let started = identityd_certs::inspect::parse_rfc3339(&start_time).unwrap_or(now);
    let late = now.duration_since(started).unwrap_or_default() > deadline;
    let (phase, cond) = if waiting.is_empty() {
        (
            RotationPhase::Completed,
            condition(
                "Ready",
                true,
                "AllNodesRotated",
                format!("{} node(s) rotated: {}", done.len(), done.join(", ")),
                now_str,
                generation,
            ),
        )
    } else if late {
        (
            RotationPhase::Failed,
            condition(
                "Ready",
                false,
                "DeadlineExceeded",
                format!(
                    "spec.deadline {}s passed: {} did not retire the old key; nodes still announcing withdraw their next key",
                    deadline.as_secs(),
                    waiting.join(", ")
                ),
                now_str,
                generation,
            ),
        )
    } else {
        (
            RotationPhase::InProgress,
            condition(
                "Progressing",
                true,
                "RotatingKeys",
                format!(
                    "{}/{} node(s) rotated; waiting for {}",
                    done.len(),
                    nodes.len(),
                    waiting.join(", ")
                ),
                now_str,
                generation,
            ),
        )
    };
    let new = KeyRotationStatus {
        phase: Some(phase.to_string()),
        step: (least > NodeStep::Pending && least != NodeStep::Withdrawn)
            .then(|| least.name().to_owned()),
        start_time: Some(start_time),
        nodes: per_node,
        conditions: vec![cond],
        observed_generation: generation,
        new_root: None,
    };
    // Only write when something but the time changes.
    let same = cur.phase == new.phase
        && cur.step == new.step
        && cur.nodes == new.nodes
        && cur.start_time == new.start_time
        && cur.conditions.first().map(|c| &c.message) == new.conditions.first().map(|c| &c.message);
    (!same).then_some(new)
}

/// The nodes a CA rollover waits for: every node the cluster does not leave out (a CA
/// rollover concerns every relying party; `spec.nodeSelector` does not apply), with whether
/// its Envoy trusts `root`.
fn ca_nodes<'a>(state: &'a ClusterState, root: &str) -> Vec<(&'a str, bool)> {
    let conflicts = crate::model::conflicts::node_conflicts(state, None);
    state
        .nodes
        .values()
        .filter(|n| !conflicts.is_rejected(&n.metadata.name))
        .map(|n| {
            let trusted = n
                .status
                .as_ref()
                .is_some_and(|s| s.trusted_roots.iter().any(|r| r == root));
            (n.metadata.name.as_str(), trusted)
        })
        .collect()
}

fn short(fp: &str) -> &str {
    fp.get(..16).unwrap_or(fp)
}

/// The new status of a `ca` rotation and what the CA does first, when either changes. Pure.
///
/// Announced: the CA stages a new root (in the bundle, not signing) → every node's Envoy
/// trusts it (`IdentitydNode.status.trustedRoots`) → the CA promotes it and the rotation is
/// Completed at step Switched. A node that does not confirm within `spec.deadline` fails the
/// rotation by name, and the announced root is withdrawn.
fn ca_status(
    state: &ClusterState,
    kr: &KeyRotation,
    cur: &KeyRotationStatus,
    ca: &CaView,
    now: std::time::SystemTime,
    now_str: &str,
) -> Option<(KeyRotationStatus, Option<CaAction>)> {
    let generation = kr.metadata.generation;
    let with = |phase: RotationPhase, cond: Condition, step: &str| KeyRotationStatus {
        phase: Some(phase.to_string()),
        step: Some(step.to_owned()),
        start_time: Some(cur.start_time.clone().unwrap_or_else(|| now_str.to_owned())),
        new_root: cur.new_root.clone(),
        conditions: vec![cond],
        observed_generation: generation,
        nodes: Vec::new(),
    };
    let announced = cur.phase() == Some(RotationPhase::InProgress)
        && cur.new_root.is_some()
        && cur.step.as_deref() == Some("Announced");
    if !announced {
        // New (or an InProgress without a staged root, e.g. written by an older version): stage.
        let mut s = with(
            RotationPhase::InProgress,
            condition(
                "Progressing",
                true,
                "RootAnnounced",
                "a new root joins the trust bundle; the current root signs until every node's Envoy trusts the new one".into(),
                now_str,
                generation,
            ),
            "Announced",
        );
        s.start_time = Some(now_str.to_owned());
        return Some((s, Some(CaAction::Stage)));
    }
    let new_root = cur.new_root.clone().unwrap_or_default();
    if ca.root == new_root {
        // Promoted, the status not written (the CA role restarted in between).
        return Some((
            with(
                RotationPhase::Completed,
                condition(
                    "Ready",
                    true,
                    "RootRolledOver",
                    format!("the new root {} signs", short(&new_root)),
                    now_str,
                    generation,
                ),
                "Switched",
            ),
            None,
        ));
    }
    if ca.next_root.as_deref() != Some(new_root.as_str()) {
        return Some((
            with(
                RotationPhase::Failed,
                condition(
                    "Ready",
                    false,
                    "RootLost",
                    format!(
                        "the CA no longer holds the announced root {} (its directory was replaced?); apply a new KeyRotation",
                        short(&new_root)
                    ),
                    now_str,
                    generation,
                ),
                "Announced",
            ),
            None,
        ));
    }
    let nodes = ca_nodes(state, &new_root);
    let per_node: Vec<NodeRotationStatus> = nodes
        .iter()
        .map(|(n, t)| NodeRotationStatus {
            name: (*n).to_owned(),
            step: if *t { CA_TRUSTED } else { "Pending" }.to_owned(),
            message: String::new(),
        })
        .collect();
    let waiting: Vec<&str> = nodes.iter().filter(|(_, t)| !t).map(|(n, _)| *n).collect();
    let overlap = kr.spec.overlap_window().unwrap_or(DEFAULT_CA_OVERLAP);
    if waiting.is_empty() {
        let mut s = with(
            RotationPhase::Completed,
            condition(
                "Ready",
                true,
                "RootRolledOver",
                format!(
                    "{} node(s) trust the new root {}; it signs now",
                    nodes.len(),
                    short(&new_root)
                ),
                now_str,
                generation,
            ),
            "Switched",
        );
        s.nodes = per_node;
        return Some((s, Some(CaAction::Promote { overlap })));
    }
    let deadline = kr.spec.deadline().unwrap_or(DEFAULT_DEADLINE);
    let started = cur
        .start_time
        .as_deref()
        .and_then(identityd_certs::inspect::parse_rfc3339)
        .unwrap_or(now);
    let late = now.duration_since(started).unwrap_or_default() > deadline;
    let mut s = if late {
        with(
            RotationPhase::Failed,
            condition(
                "Ready",
                false,
                "DeadlineExceeded",
                format!(
                    "spec.deadline {}s passed: {} do(es) not trust the new root {}; it left the bundle and the current root keeps signing",
                    deadline.as_secs(),
                    waiting.join(", "),
                    short(&new_root)
                ),
                now_str,
                generation,
            ),
            "Announced",
        )
    } else {
        with(
            RotationPhase::InProgress,
            condition(
                "Progressing",
                true,
                "RootAnnounced",
                format!(
                    "the new root {} is in the bundle; {}/{} node(s) trust it; waiting for {}",
                    short(&new_root),
                    nodes.len() - waiting.len(),
                    nodes.len(),
                    waiting.join(", ")
                ),
                now_str,
                generation,
            ),
            "Announced",
        )
    };
    s.nodes = per_node;
    let same = cur.phase == s.phase
        && cur.nodes == s.nodes
        && cur.conditions.first().map(|c| &c.message) == s.conditions.first().map(|c| &c.message);
    if same {
        return None;
    }
    Some((s, late.then_some(CaAction::Withdraw)))
}

/// The status of a `ca` rotation after the CA role tried `action`: `status` completed with
/// the new root's fingerprint (Stage) or the end of the overlap (Promote), or Failed with the
/// error.
#[must_use]
pub fn ca_action_done(
    kr: &KeyRotation,
    mut status: KeyRotationStatus,
    result: Result<CaDone, String>,
    now: &str,
) -> KeyRotationStatus {
    let generation = kr.metadata.generation;
    match result {
        Ok(CaDone::Staged(fp)) => {
            status.new_root = Some(fp);
            status
        }
        Ok(CaDone::Promoted(until)) => {
            if let Some(c) = status.conditions.first_mut() {
                c.message = format!(
                    "{}; the previous root stays in the bundle until {}, and nodes renew the SVIDs signed under it",
                    c.message,
                    identityd_certs::inspect::rfc3339(until)
                );
            }
            status
        }
        Ok(CaDone::Withdrawn) => status,
        Err(e) => {
            status.phase = Some(RotationPhase::Failed.to_string());
            status.conditions = vec![condition(
                "Ready",
                false,
                "RolloverFailed",
                e,
                now,
                generation,
            )];
            status
        }
    }
}

/// What a [`CaAction`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaDone {
    /// The staged root's fingerprint.
    Staged(String),
    /// When the previous root leaves the bundle.
    Promoted(std::time::SystemTime),
    /// The announced root left the bundle.
    Withdrawn,
}

/// The root a node's SVIDs should chain to: the new root of the latest Completed `ca`
/// rotation (by start time), if any. Nodes renew SVIDs signed under another root. Pure.
#[must_use]
pub fn signing_root(state: &ClusterState) -> Option<String> {
    state
        .key_rotations
        .values()
        .filter(|kr| kr.spec.target() == Some(RotationTarget::Ca))
        .filter_map(|kr| kr.status.as_ref())
        .filter(|s| {
            s.phase() == Some(RotationPhase::Completed) && s.step.as_deref() == Some("Switched")
        })
        .filter_map(|s| Some((s.start_time.clone()?, s.new_root.clone()?)))
        .max()
        .map(|(_, r)| r)
}

/// The WireGuard rotation `node` takes part in now, if any: an InProgress `wireguard` rotation
/// that selects it and that it has not retired yet. Pure.
#[must_use]
pub fn node_pending_rotation(state: &ClusterState, node: &str) -> Option<String> {
    let me = state.node(node)?;
    me.spec.wireguard.as_ref()?;
    state
        .key_rotations
        .iter()
        .find(|(name, kr)| {
            kr.spec.target() == Some(RotationTarget::Wireguard)
                && kr.status.as_ref().and_then(KeyRotationStatus::phase)
                    == Some(RotationPhase::InProgress)
                && selector_matches(&kr.spec.node_selector, &me.metadata.labels)
                && !node_rotated(me, name)
        })
        .map(|(name, _)| name.clone())
}

/// The peers' current keys of a device config, base64.
#[must_use]
pub fn device_peers(cfg: &identityd_wg::config::DeviceConfig) -> Vec<String> {
    let set: BTreeSet<String> = cfg.peers.iter().map(|p| p.public_key.to_string()).collect();
    set.into_iter().collect()
}

/// Now as RFC 3339.
#[must_use]
pub fn now_rfc3339() -> String {
    identityd_certs::inspect::rfc3339(std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Object;
    use crate::model::identityd::{IdentitydNodeSpec, IdentitydNodeStatus, WireguardSpec};
    use std::time::{Duration, SystemTime};

    fn now() -> SystemTime {
        identityd_certs::inspect::parse_rfc3339("2026-11-26T13:00:00Z").unwrap()
    }

    fn key(name: &str) -> String {
        use base64::Engine as _;
        let mut k = [7_u8; 32];
        k[..name.len()].copy_from_slice(name.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(k)
    }

    fn record(rotation: &str, step: NodeStep, node: &str) -> NodeRecord {
        NodeRecord {
            rotation: rotation.into(),
            step,
            next_public_key: key(&format!("{node}-next")),
        }
    }

    /// A node reporting `step` for rotation `r` (through the record's condition).
    fn node(name: &str, zone: &str, step: Option<(&str, NodeStep)>) -> Object {
        let mut n = IdentitydNode::new(
            name,
            IdentitydNodeSpec {
                pod_cidrs: vec![],
                underlay_addresses: vec!["10.99.0.11".into()],
                wireguard: Some(WireguardSpec {
                    // One key per node (a shared key is a conflict: the node would be left out).
                    public_key: key(name),
                    port: 51871,
                    next_public_key: None,
                }),
                ipsec: None,
                proof: None,
            },
        );
        n.metadata.labels.insert("zone".into(), zone.into());
        if let Some((r, st)) = step {
            n.status = Some(IdentitydNodeStatus {
                trusted_roots: vec![],
                observed_generation: None,
                conditions: vec![record_condition(
                    &record(r, st, name),
                    "2026-11-26T13:00:00Z",
                )],
            });
        }
        Object::IdentitydNode(n)
    }

    fn rotation(
        name: &str,
        target: RotationTarget,
        zone: Option<&str>,
        phase: Option<RotationPhase>,
    ) -> Object {
        let mut kr = KeyRotation::new(name, target);
        if let Some(z) = zone {
            kr.spec.node_selector.insert("zone".into(), z.into());
        }
        kr.status = phase.map(|p| KeyRotationStatus {
            phase: Some(p.to_string()),
            start_time: Some("2026-11-26T13:00:00Z".into()),
            ..Default::default()
        });
        Object::KeyRotation(kr)
    }

    fn phase(s: &Step) -> &str {
        s.status.phase.as_deref().unwrap_or("")
    }

    fn running(r: &str, zone: Option<&str>) -> Object {
        rotation(
            r,
            RotationTarget::Wireguard,
            zone,
            Some(RotationPhase::InProgress),
        )
    }

    #[test]
    fn wireguard_rotation_moves_through_its_steps_as_nodes_report() {
        use NodeStep::{Announced, Retired, Switched};
        // Pending → InProgress, naming the selected nodes (zone a only), with a start time.
        let st = ClusterState::from_objects(
            1,
            [
                node("n1", "a", None),
                node("n2", "a", None),
                node("n3", "b", None),
                rotation("r1", RotationTarget::Wireguard, Some("a"), None),
            ],
        );
        let steps = controller_steps(&st, now(), &CaView::default());
        assert_eq!(steps.len(), 1);
        assert_eq!(phase(&steps[0]), "InProgress");
        let msg = &steps[0].status.conditions[0].message;
        assert!(
            msg.contains("0/2 node(s) rotated; waiting for n1 (Pending), n2 (Pending)"),
            "{msg}"
        );
        assert_eq!(
            steps[0].status.start_time.as_deref(),
            Some("2026-11-26T13:00:00Z")
        );
        assert_eq!(steps[0].status.step, None);
        assert_eq!(steps[0].ca, None);
        // n1 and n2 take part, n3 is not selected.
        let st = ClusterState::from_objects(
            2,
            [
                node("n1", "a", None),
                node("n2", "a", None),
                node("n3", "b", None),
                running("r1", Some("a")),
            ],
        );
        assert_eq!(node_pending_rotation(&st, "n1").as_deref(), Some("r1"));
        assert_eq!(node_pending_rotation(&st, "n3"), None);
        // Steps: the least advanced one is the rotation's; each node's is listed.
        let at = |a: NodeStep, b: NodeStep| {
            let st = ClusterState::from_objects(
                3,
                [
                    node("n1", "a", Some(("r1", a))),
                    node("n2", "a", Some(("r1", b))),
                    running("r1", Some("a")),
                ],
            );
            controller_steps(&st, now() + Duration::from_secs(30), &CaView::default())
                .pop()
                .expect("a status change")
                .status
        };
        let s = at(Announced, Switched);
        assert_eq!(s.phase.as_deref(), Some("InProgress"));
        assert_eq!(s.step.as_deref(), Some("Announced"));
        assert_eq!(
            s.nodes
                .iter()
                .map(|n| (n.name.as_str(), n.step.as_str()))
                .collect::<Vec<_>>(),
            [("n1", "Announced"), ("n2", "Switched")]
        );
        assert!(s.nodes[0].message.contains("announced"), "{:?}", s.nodes);
        let s = at(Retired, Switched);
        assert_eq!(s.step.as_deref(), Some("Switched"));
        assert!(
            s.conditions[0]
                .message
                .starts_with("1/2 node(s) rotated; waiting for n2 (Switched)"),
            "{s:?}"
        );
        let s = at(Retired, Retired);
        assert_eq!(s.phase.as_deref(), Some("Completed"));
        assert_eq!(s.step.as_deref(), Some("Retired"));
        assert_eq!(s.conditions[0].reason, "AllNodesRotated");
        assert_eq!(s.conditions[0].message, "2 node(s) rotated: n1, n2");
        // A report for another rotation does not count.
        let st = ClusterState::from_objects(
            5,
            [
                node("n1", "a", Some(("other", Retired))),
                running("r1", None),
            ],
        );
        assert_eq!(node_pending_rotation(&st, "n1").as_deref(), Some("r1"));
    }

    #[test]
    fn a_node_that_does_not_confirm_by_the_deadline_fails_the_rotation_naming_it() {
        let mut r = running("r1", None);
        if let Object::KeyRotation(kr) = &mut r {
            kr.spec.deadline = Some("60s".into());
        }
        let st = ClusterState::from_objects(
            1,
            [
                node("n1", "a", Some(("r1", NodeStep::Retired))),
                node("n2", "a", Some(("r1", NodeStep::Announced))),
                node("n3", "a", None),
                r,
            ],
        );
        let s = controller_steps(&st, now() + Duration::from_secs(59), &CaView::default());
        assert_eq!(phase(&s[0]), "InProgress", "not yet");
        let s = controller_steps(&st, now() + Duration::from_secs(61), &CaView::default());
        assert_eq!(phase(&s[0]), "Failed");
        let c = &s[0].status.conditions[0];
        assert_eq!(c.reason, "DeadlineExceeded");
        assert!(
            c.message
                .contains("spec.deadline 60s passed: n2 (Announced), n3 (Pending) did not retire"),
            "{c:?}"
        );
        // The default deadline is above WireGuard's 180 s session lifetime.
        let st = ClusterState::from_objects(1, [node("n3", "a", None), running("r1", None)]);
        let s = controller_steps(&st, now() + Duration::from_secs(181), &CaView::default());
        assert_eq!(phase(&s[0]), "InProgress");
        assert!(DEFAULT_DEADLINE > Duration::from_secs(180));
    }

    #[test]
    fn a_node_announces_switches_once_every_peer_handshook_to_the_next_key_then_retires() {
        let peers = vec![key("n2"), key("n3")];
        let st = ClusterState::from_objects(1, [node("n1", "a", None), running("r1", None)]);
        // No record: announce.
        assert_eq!(
            node_action(&st, "n1", None, &peers, None),
            NodeAction::Announce("r1".into())
        );
        let rec = record("r1", NodeStep::Announced, "n1");
        let link = |peer: &str, local: &str, session: bool| LinkView {
            peer: key(peer),
            local: local.to_owned(),
            session,
        };
        let next = rec.next_public_key.clone();
        // Unreadable device, or one peer without a session to the next key: wait.
        assert_eq!(
            node_action(&st, "n1", Some(&rec), &peers, None),
            NodeAction::None
        );
        let links = vec![
            link("n2", &next, true),
            link("n3", &next, false),
            link("n3", &key("n1"), true),
        ];
        assert_eq!(
            node_action(&st, "n1", Some(&rec), &peers, Some(&links)),
            NodeAction::None
        );
        assert_eq!(peers_not_switched(&peers, &links, &next), [key("n3")]);
        let links = vec![link("n2", &next, true), link("n3", &next, true)];
        assert_eq!(
            node_action(&st, "n1", Some(&rec), &peers, Some(&links)),
            NodeAction::Switch
        );
        let rec = record("r1", NodeStep::Switched, "n1");
        assert_eq!(
            node_action(&st, "n1", Some(&rec), &peers, None),
            NodeAction::Retire
        );
        // Retired for r1: nothing more, even while r1 runs (a restarted daemon does not redo it).
        let rec = record("r1", NodeStep::Retired, "n1");
        assert_eq!(
            node_action(&st, "n1", Some(&rec), &peers, None),
            NodeAction::None
        );
        // A rotation that ended (Failed, deleted) before this node retired: withdraw.
        let failed = ClusterState::from_objects(
            2,
            [
                node("n1", "a", None),
                rotation(
                    "r1",
                    RotationTarget::Wireguard,
                    None,
                    Some(RotationPhase::Failed),
                ),
            ],
        );
        let rec = record("r1", NodeStep::Announced, "n1");
        assert_eq!(
            node_action(&failed, "n1", Some(&rec), &peers, None),
            NodeAction::Withdraw
        );
        let gone = ClusterState::from_objects(3, [node("n1", "a", None)]);
        assert_eq!(
            node_action(&gone, "n1", Some(&rec), &peers, None),
            NodeAction::Withdraw
        );
        // A later rotation starts from a finished record.
        let st2 = ClusterState::from_objects(4, [node("n1", "a", None), running("r2", None)]);
        let done = record("r1", NodeStep::Withdrawn, "n1");
        assert_eq!(
            node_action(&st2, "n1", Some(&done), &peers, None),
            NodeAction::Announce("r2".into())
        );
    }

    #[test]
    fn the_published_object_carries_the_next_key_once_the_device_has_it_and_the_step() {
        let Object::IdentitydNode(fresh) = node("n1", "", None) else {
            unreachable!()
        };
        let mut published = fresh.clone();
        published.metadata.labels.insert("zone".into(), "a".into());
        published.status = Some(IdentitydNodeStatus {
            trusted_roots: vec![],
            observed_generation: None,
            conditions: vec![condition("Ready", true, "Up", "ok".into(), "t0", None)],
        });
        let rec = record("r1", NodeStep::Announced, "n1");
        let t = "2026-11-26T13:00:00Z";
        // Not in the device yet: no next key published, but the step is reported.
        let want = published_node(Some(&published), fresh.clone(), Some(&rec), false, t);
        assert_eq!(want.spec.wireguard.as_ref().unwrap().next_public_key, None);
        assert!(node_differs(Some(&published), &want));
        let want = published_node(Some(&published), fresh.clone(), Some(&rec), true, t);
        assert_eq!(
            want.spec
                .wireguard
                .as_ref()
                .unwrap()
                .next_public_key
                .as_deref(),
            Some(rec.next_public_key.as_str())
        );
        assert_eq!(want.metadata.labels["zone"], "a", "labels kept");
        let conds = &want.status.as_ref().unwrap().conditions;
        assert_eq!(conds.len(), 2, "other conditions kept: {conds:?}");
        assert_eq!(node_step(&want, "r1"), NodeStep::Announced);
        // The same state an hour later is no change (condition times do not count).
        let again = published_node(
            Some(&want),
            fresh.clone(),
            Some(&rec),
            true,
            "2026-11-26T14:00:00Z",
        );
        assert!(!node_differs(Some(&want), &again));
        // Retired: the new key is the current one (the caller's spec), no next key.
        let retired = record("r1", NodeStep::Retired, "n1");
        let mut fresh2 = fresh.clone();
        fresh2.spec.wireguard.as_mut().unwrap().public_key = retired.next_public_key.clone();
        let want = published_node(Some(&want), fresh2, Some(&retired), true, t);
        let w = want.spec.wireguard.as_ref().unwrap();
        assert_eq!(w.public_key, retired.next_public_key);
        assert_eq!(w.next_public_key, None);
        assert!(node_rotated(&want, "r1"));
        // The object validates (both keys differ, the condition is well formed).
        assert!(Object::IdentitydNode(want).validate().is_ok());
    }

    #[test]
    fn finished_rotations_are_left_alone_and_unsupported_ones_fail_with_a_reason() {
        let st = ClusterState::from_objects(
            1,
            [
                node("n1", "a", None),
                rotation(
                    "done",
                    RotationTarget::Wireguard,
                    None,
                    Some(RotationPhase::Completed),
                ),
                rotation("ipsec", RotationTarget::Ipsec, None, None),
                rotation("nobody", RotationTarget::Wireguard, Some("zzz"), None),
                rotation(
                    "root",
                    RotationTarget::Ca,
                    None,
                    Some(RotationPhase::Pending),
                ),
            ],
        );
        let steps = controller_steps(&st, now(), &CaView::default());
        let by: std::collections::BTreeMap<&str, &Step> =
            steps.iter().map(|s| (s.name.as_str(), s)).collect();
        assert!(!by.contains_key("done"));
        assert_eq!(phase(by["ipsec"]), "Failed");
        assert_eq!(by["ipsec"].status.conditions[0].reason, "IpsecUnavailable");
        assert_eq!(phase(by["nobody"]), "Failed");
        assert_eq!(by["nobody"].status.conditions[0].reason, "NoMatchingNodes");
        assert_eq!(phase(by["root"]), "InProgress");
        assert_eq!(by["root"].ca, Some(CaAction::Stage));
    }

    /// A node whose Envoy trusts `roots`.
    fn trusting(name: &str, roots: &[&str]) -> Object {
        let Object::IdentitydNode(mut n) = node(name, "a", None) else {
            unreachable!()
        };
        n.status = Some(IdentitydNodeStatus {
            trusted_roots: roots.iter().map(|r| (*r).to_owned()).collect(),
            ..Default::default()
        });
        Object::IdentitydNode(n)
    }

    fn ca_rotation(status: Option<KeyRotationStatus>) -> Object {
        let mut kr = KeyRotation::new("root", RotationTarget::Ca);
        kr.spec.deadline = Some("60s".into());
        kr.status = status;
        Object::KeyRotation(kr)
    }

    #[test]
    fn a_ca_rollover_signs_under_the_new_root_only_once_every_node_trusts_it() {
        let r1 = "11".repeat(32);
        let r2 = "22".repeat(32);
        let staged = CaView {
            root: r1.clone(),
            next_root: Some(r2.clone()),
        };
        // Pending: stage a new root, nothing signs under it yet.
        let st = ClusterState::from_objects(
            1,
            [
                trusting("n1", &[&r1]),
                trusting("n2", &[&r1]),
                ca_rotation(None),
            ],
        );
        let s = controller_steps(
            &st,
            now(),
            &CaView {
                root: r1.clone(),
                next_root: None,
            },
        );
        assert_eq!(s[0].ca, Some(CaAction::Stage));
        assert_eq!(phase(&s[0]), "InProgress");
        assert_eq!(s[0].status.step.as_deref(), Some("Announced"));
        let announced = ca_action_done(
            &KeyRotation::new("root", RotationTarget::Ca),
            s[0].status.clone(),
            Ok(CaDone::Staged(r2.clone())),
            "2026-11-26T13:00:00Z",
        );
        assert_eq!(announced.new_root.as_deref(), Some(r2.as_str()));

        // n1 trusts the new root, n2 not yet: wait, naming n2; no switch.
        let st = ClusterState::from_objects(
            2,
            [
                trusting("n1", &[&r1, &r2]),
                trusting("n2", &[&r1]),
                ca_rotation(Some(announced.clone())),
            ],
        );
        let s = controller_steps(&st, now() + Duration::from_secs(5), &staged);
        assert_eq!(
            s[0].ca, None,
            "no switch while a node does not trust the new root"
        );
        assert_eq!(phase(&s[0]), "InProgress");
        let msg = &s[0].status.conditions[0].message;
        assert!(
            msg.contains("1/2") && msg.contains("waiting for n2"),
            "{msg}"
        );
        let steps: Vec<(&str, &str)> = s[0]
            .status
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.step.as_str()))
            .collect();
        assert_eq!(steps, [("n1", "Trusted"), ("n2", "Pending")]);
        // The same state again writes nothing.
        let waiting = s[0].status.clone();
        let st = ClusterState::from_objects(
            3,
            [
                trusting("n1", &[&r1, &r2]),
                trusting("n2", &[&r1]),
                ca_rotation(Some(waiting.clone())),
            ],
        );
        assert!(controller_steps(&st, now() + Duration::from_secs(6), &staged).is_empty());

        // Past the deadline: Failed naming n2, the announced root withdrawn.
        let s = controller_steps(&st, now() + Duration::from_secs(61), &staged);
        assert_eq!(s[0].ca, Some(CaAction::Withdraw));
        assert_eq!(phase(&s[0]), "Failed");
        let c = &s[0].status.conditions[0];
        assert_eq!(c.reason, "DeadlineExceeded");
        assert!(
            c.message.contains("n2") && !c.message.contains("n1,"),
            "{}",
            c.message
        );

        // Both trust it: promote, Completed at step Switched.
        let st = ClusterState::from_objects(
            4,
            [
                trusting("n1", &[&r1, &r2]),
                trusting("n2", &[&r2, &r1]),
                ca_rotation(Some(waiting.clone())),
            ],
        );
        let s = controller_steps(&st, now() + Duration::from_secs(7), &staged);
        assert_eq!(
            s[0].ca,
            Some(CaAction::Promote {
                overlap: DEFAULT_CA_OVERLAP
            })
        );
        assert_eq!(phase(&s[0]), "Completed");
        assert_eq!(s[0].status.step.as_deref(), Some("Switched"));
        assert_eq!(signing_root(&st), None, "not before the status says so");
        let done = ca_action_done(
            &KeyRotation::new("root", RotationTarget::Ca),
            s[0].status.clone(),
            Ok(CaDone::Promoted(now() + Duration::from_secs(86_400))),
            "2026-11-26T13:00:07Z",
        );
        assert!(
            done.conditions[0]
                .message
                .contains("until 2026-11-27T13:00:00Z"),
            "{}",
            done.conditions[0].message
        );
        let st = ClusterState::from_objects(5, [trusting("n1", &[&r2]), ca_rotation(Some(done))]);
        assert_eq!(
            signing_root(&st).as_deref(),
            Some(r2.as_str()),
            "nodes renew under it"
        );

        // Promoted but the status not written (the CA restarted): Completed without a step.
        let st = ClusterState::from_objects(
            6,
            [trusting("n1", &[&r1]), ca_rotation(Some(waiting.clone()))],
        );
        let s = controller_steps(
            &st,
            now() + Duration::from_secs(8),
            &CaView {
                root: r2.clone(),
                next_root: None,
            },
        );
        assert_eq!((phase(&s[0]), s[0].ca), ("Completed", None));
        // The CA lost the announced root: Failed, saying so.
        let s = controller_steps(
            &st,
            now() + Duration::from_secs(8),
            &CaView {
                root: r1.clone(),
                next_root: Some("33".repeat(32)),
            },
        );
        assert_eq!(s[0].status.conditions[0].reason, "RootLost");
        // A failed CA step is Failed with the error.
        let failed = ca_action_done(
            &KeyRotation::new("root", RotationTarget::Ca),
            waiting,
            Err("staging a new root: disk full".into()),
            "2026-11-26T13:00:09Z",
        );
        assert_eq!(failed.phase.as_deref(), Some("Failed"));
        assert_eq!(failed.conditions[0].reason, "RolloverFailed");
        assert_eq!(
            failed.conditions[0].message,
            "staging a new root: disk full"
        );
    }
}
