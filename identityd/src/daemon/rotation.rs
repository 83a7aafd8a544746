//! `KeyRotation`, pure: the controller's phase machine (run by the CA role, the cluster's one
//! controller) and each node's part of a WireGuard rotation.
//!
//! - `wireguard`: Pending → InProgress once the selected nodes are known. Each selected node
//!   generates a new key, restarts its WireGuard device with it and republishes its
//!   `IdentitydNode` with the new public key and the condition [`ROTATED_CONDITION`] naming the
//!   rotation; peers pick the new key up from the object. Completed when every selected node
//!   reports it. (The device restart loses packets for a moment — strict mode drops them, it
//!   never sends them in clear; zero-loss rotation with two keys is later work.)
//! - `ca`: the CA role rolls the root over with `spec.overlapWindow` (both roots stay in the
//!   bundle during the overlap) and marks the rotation Completed.
//! - `ipsec`: Failed — this build has no IPsec datapath.

use crate::model::identityd::{KeyRotationStatus, RotationPhase, RotationTarget};
use crate::model::{ClusterState, Condition, IdentitydNode, KeyRotation, selector_matches};

/// Condition type a node sets on its `IdentitydNode` when it rotated its WireGuard key for a
/// rotation; the message starts with `<rotation name>:`.
pub const ROTATED_CONDITION: &str = "WireguardKeyRotated";

/// Default overlap of a CA rollover when `spec.overlapWindow` is absent.
pub const DEFAULT_CA_OVERLAP: std::time::Duration = std::time::Duration::from_secs(3600);

/// What the controller does for one rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The rotation's name.
    pub name: String,
    /// The status to write.
    pub status: KeyRotationStatus,
    /// For `ca`: roll the root over with this overlap, then write Completed (or Failed).
    pub ca_rollover: Option<std::time::Duration>,
}

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

/// Whether `node` reports having rotated its WireGuard key for the rotation `name`.
#[must_use]
pub fn node_rotated(node: &IdentitydNode, name: &str) -> bool {
    node.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == ROTATED_CONDITION
                && c.status == "True"
                && c.message.split(':').next() == Some(name)
        })
    })
}

/// The controller's steps for the current state: one per rotation whose status changes.
/// `now` is an RFC 3339 time for the conditions. Pure.
#[must_use]
pub fn controller_steps(state: &ClusterState, now: &str) -> Vec<Step> {
    let mut out = Vec::new();
    for (name, kr) in &state.key_rotations {
        let generation = kr.metadata.generation;
        let phase = kr.status.as_ref().and_then(KeyRotationStatus::phase);
        let cur = kr.status.clone().unwrap_or_default();
        let step = |status: KeyRotationStatus, ca: Option<std::time::Duration>| Step {
            name: name.clone(),
            status,
            ca_rollover: ca,
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
                        now,
                        generation,
                    ),
                    generation,
                ),
                None,
            )),
            (None | Some(RotationPhase::Pending), Some(RotationTarget::Ca)) => {
                let overlap = kr.spec.overlap_window().unwrap_or(DEFAULT_CA_OVERLAP);
                out.push(step(
                    status(
                        RotationPhase::InProgress,
                        condition(
                            "Progressing",
                            true,
                            "RollingOverRoot",
                            format!(
                                "new root; the old one stays in the bundle for {}s",
                                overlap.as_secs()
                            ),
                            now,
                            generation,
                        ),
                        generation,
                    ),
                    Some(overlap),
                ));
            }
            // A CA rollover the CA role did not finish (it restarted): do it again.
            (Some(RotationPhase::InProgress), Some(RotationTarget::Ca)) => {
                out.push(step(
                    cur,
                    Some(kr.spec.overlap_window().unwrap_or(DEFAULT_CA_OVERLAP)),
                ));
            }
            (_, Some(RotationTarget::Wireguard)) => {
                // An object every node leaves out (a conflicting claim) is no node to wait for.
                let conflicts = crate::model::conflicts::node_conflicts(state, None);
                let nodes: Vec<&IdentitydNode> = selected_nodes(state, kr)
                    .into_iter()
                    .filter(|n| n.spec.wireguard.is_some())
                    .filter(|n| !conflicts.is_rejected(&n.metadata.name))
                    .collect();
                if nodes.is_empty() {
                    out.push(step(
                        status(
                            RotationPhase::Failed,
                            condition(
                                "Ready",
                                false,
                                "NoMatchingNodes",
                                format!(
                                    "no node running WireGuard matches spec.nodeSelector {:?}",
                                    kr.spec.node_selector
                                ),
                                now,
                                generation,
                            ),
                            generation,
                        ),
                        None,
                    ));
                    continue;
                }
                let done: Vec<&str> = nodes
                    .iter()
                    .filter(|n| node_rotated(n, name))
                    .map(|n| n.metadata.name.as_str())
                    .collect();
                let pending: Vec<&str> = nodes
                    .iter()
                    .filter(|n| !node_rotated(n, name))
                    .map(|n| n.metadata.name.as_str())
                    .collect();
                let new = if pending.is_empty() {
                    status(
                        RotationPhase::Completed,
                        condition(
                            "Ready",
                            true,
                            "AllNodesRotated",
                            format!("{} node(s) rotated: {}", done.len(), done.join(", ")),
                            now,
                            generation,
                        ),
                        generation,
                    )
                } else {
                    status(
                        RotationPhase::InProgress,
                        condition(
                            "Progressing",
                            true,
                            "RotatingKeys",
                            format!(
                                "{}/{} node(s) rotated; waiting for {}",
                                done.len(),
                                nodes.len(),
                                pending.join(", ")
                            ),
                            now,
                            generation,
                        ),
                        generation,
                    )
                };
                // Only write when the phase or the message changes (not for the time alone).
                let same = cur.phase == new.phase
                    && cur.conditions.first().map(|c| &c.message)
                        == new.conditions.first().map(|c| &c.message);
                if !same {
                    out.push(step(new, None));
                }
            }
        }
    }
    out
}

/// The status after the CA role's rollover: Completed, or Failed with the error.
#[must_use]
pub fn ca_rollover_done(
    kr: &KeyRotation,
    result: Result<String, String>,
    now: &str,
) -> KeyRotationStatus {
    let generation = kr.metadata.generation;
    match result {
        Ok(msg) => status(
            RotationPhase::Completed,
            condition("Ready", true, "RootRolledOver", msg, now, generation),
            generation,
        ),
        Err(e) => status(
            RotationPhase::Failed,
            condition("Ready", false, "RolloverFailed", e, now, generation),
            generation,
        ),
    }
}

/// The WireGuard rotation `node` must perform now, if any: an InProgress `wireguard` rotation
/// that selects it and that it has not reported yet. Pure.
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

/// The condition a node adds after rotating for `name`.
#[must_use]
pub fn rotated_condition(name: &str, public_key: &str, now: &str) -> Condition {
    condition(
        ROTATED_CONDITION,
        true,
        "Rotated",
        format!("{name}: new WireGuard public key {public_key}"),
        now,
        None,
    )
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

    const NOW: &str = "2026-11-26T13:00:00Z";

    fn node(name: &str, zone: &str, rotated_for: Option<&str>) -> Object {
        let mut n = IdentitydNode::new(
            name,
            IdentitydNodeSpec {
                pod_cidrs: vec![],
                underlay_addresses: vec!["10.99.0.11".into()],
                wireguard: Some(WireguardSpec {
                    // One key per node (a shared key is a conflict: the node would be left out).
                    public_key: {
                        use base64::Engine as _;
                        let mut k = [7_u8; 32];
                        k[..name.len()].copy_from_slice(name.as_bytes());
                        base64::engine::general_purpose::STANDARD.encode(k)
                    },
                    port: 51871,
                }),
                ipsec: None,
            },
        );
        n.metadata.labels.insert("zone".into(), zone.into());
        if let Some(r) = rotated_for {
            n.status = Some(IdentitydNodeStatus {
                observed_generation: None,
                conditions: vec![rotated_condition(r, "KEY", NOW)],
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
            ..Default::default()
        });
        Object::KeyRotation(kr)
    }

    fn phase(s: &Step) -> &str {
        s.status.phase.as_deref().unwrap_or("")
    }

    #[test]
    fn wireguard_rotation_moves_through_its_phases_as_nodes_report() {
        // Pending → InProgress, naming the selected nodes (zone a only).
        let st = ClusterState::from_objects(
            1,
            [
                node("n1", "a", None),
                node("n2", "a", None),
                node("n3", "b", None),
                rotation("r1", RotationTarget::Wireguard, Some("a"), None),
            ],
        );
        let steps = controller_steps(&st, NOW);
        assert_eq!(steps.len(), 1);
        assert_eq!(phase(&steps[0]), "InProgress");
        assert!(
            steps[0].status.conditions[0]
                .message
                .contains("0/2 node(s) rotated; waiting for n1, n2")
        );
        assert_eq!(steps[0].ca_rollover, None);
        // Nodes: n1 and n2 must rotate, n3 is not selected.
        let st = ClusterState::from_objects(
            2,
            [
                node("n1", "a", None),
                node("n2", "a", None),
                node("n3", "b", None),
                rotation(
                    "r1",
                    RotationTarget::Wireguard,
                    Some("a"),
                    Some(RotationPhase::InProgress),
                ),
            ],
        );
        assert_eq!(node_pending_rotation(&st, "n1").as_deref(), Some("r1"));
        assert_eq!(node_pending_rotation(&st, "n3"), None);
        // n1 reported: progress message changes; n1 has nothing left to do.
        let st = ClusterState::from_objects(
            3,
            [
                node("n1", "a", Some("r1")),
                node("n2", "a", None),
                rotation(
                    "r1",
                    RotationTarget::Wireguard,
                    Some("a"),
                    Some(RotationPhase::InProgress),
                ),
            ],
        );
        assert_eq!(node_pending_rotation(&st, "n1"), None);
        let steps = controller_steps(&st, NOW);
        assert!(
            steps[0].status.conditions[0].message.starts_with("1/2"),
            "{steps:?}"
        );
        // Both reported: Completed. A report for another rotation does not count.
        let st = ClusterState::from_objects(
            4,
            [
                node("n1", "a", Some("r1")),
                node("n2", "a", Some("r1")),
                rotation(
                    "r1",
                    RotationTarget::Wireguard,
                    Some("a"),
                    Some(RotationPhase::InProgress),
                ),
            ],
        );
        let steps = controller_steps(&st, NOW);
        assert_eq!(phase(&steps[0]), "Completed");
        assert_eq!(steps[0].status.conditions[0].reason, "AllNodesRotated");
        let st = ClusterState::from_objects(
            5,
            [
                node("n1", "a", Some("other")),
                rotation(
                    "r1",
                    RotationTarget::Wireguard,
                    None,
                    Some(RotationPhase::InProgress),
                ),
            ],
        );
        assert_eq!(node_pending_rotation(&st, "n1").as_deref(), Some("r1"));
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
        let steps = controller_steps(&st, NOW);
        let by: std::collections::BTreeMap<&str, &Step> =
            steps.iter().map(|s| (s.name.as_str(), s)).collect();
        assert!(!by.contains_key("done"));
        assert_eq!(phase(by["ipsec"]), "Failed");
        assert_eq!(by["ipsec"].status.conditions[0].reason, "IpsecUnavailable");
        assert_eq!(phase(by["nobody"]), "Failed");
        assert_eq!(by["nobody"].status.conditions[0].reason, "NoMatchingNodes");
        assert_eq!(phase(by["root"]), "InProgress");
        assert_eq!(by["root"].ca_rollover, Some(DEFAULT_CA_OVERLAP));
        let KeyRotation { .. } = st.key_rotations["root"].clone();
        let done = ca_rollover_done(&st.key_rotations["root"], Ok("root 2".into()), NOW);
        assert_eq!(done.phase.as_deref(), Some("Completed"));
        let failed = ca_rollover_done(&st.key_rotations["root"], Err("disk full".into()), NOW);
        assert_eq!(failed.phase.as_deref(), Some("Failed"));
        assert_eq!(failed.conditions[0].message, "disk full");
    }
}
