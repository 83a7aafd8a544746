//! Conflicting IdentitydNodes: overlapping or duplicate pod CIDRs, a WireGuard key another
//! node already has. Pure.
//!
//! The first owner keeps what it claims and the later object is rejected as a whole (none of
//! its CIDRs, key or endpoint is applied), with a problem naming both objects and the field.
//! "First" is the earliest `metadata.creationTimestamp` (the API server's; the FileSource
//! stamps objects it creates the same way), then the name; an object without one counts as the
//! newest. A node judging its peers puts itself first, with the pod CIDR of its own
//! config: nothing published can take its own pods from it. Every other peer keeps being
//! applied, so one bad object never freezes the device config.
//!
//! Pod CIDRs are claims until the control plane backs them: where Kubernetes `Node` objects
//! carry `spec.podCIDRs` (allocated by the node IPAM controller, which a node cannot write
//! for another node), an IdentitydNode's pod CIDRs must lie inside its own Node's, and a node
//! without a Node that allocates it one is rejected. Only when no Node object in the cluster
//! carries a pod CIDR at all (a CNI with its own IPAM, or a folder without Nodes) are the claims
//! taken as they are, still subject to the first-owner rule; [`NodeConflicts::unverified`]
//! says so.

use std::collections::BTreeMap;

use super::validate::Cidr;

use super::ClusterState;

fn overlaps(a: &Cidr, b: &Cidr) -> bool {
    a.contains(b.addr) || b.contains(a.addr)
}

fn show(c: &Cidr) -> String {
    format!("{}/{}", c.addr, c.prefix)
}

/// The IdentitydNodes to leave out: name → why (naming the object it conflicts with).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeConflicts {
    /// Rejected node → the problem.
    pub rejected: BTreeMap<String, String>,
    /// No `Node` object carries a pod CIDR: the accepted pod CIDRs are the IdentitydNodes'
    /// own claims (held only by the first-owner rule).
    pub unverified: bool,
}

impl NodeConflicts {
    /// Whether node `name` is rejected.
    #[must_use]
    pub fn is_rejected(&self, name: &str) -> bool {
        self.rejected.contains_key(name)
    }
}

/// The conflicts among `state`'s IdentitydNodes. With `this = Some((name, pod CIDRs))`, node
/// `name` comes first with those CIDRs (its own config) and is never rejected.
#[must_use]
pub fn node_conflicts(state: &ClusterState, this: Option<(&str, &[String])>) -> NodeConflicts {
    struct Owner<'a> {
        name: &'a str,
        cidrs: Vec<Cidr>,
        keys: Vec<&'a str>,
    }
    let parse = |cs: &[String]| -> Vec<Cidr> { cs.iter().filter_map(|c| c.parse().ok()).collect() };
    // Both keys of a rotating node (the current and the announced next one) are its own.
    fn keys_of(n: &super::IdentitydNode) -> Vec<&str> {
        n.spec.wireguard.as_ref().map_or_else(Vec::new, |w| {
            std::iter::once(w.public_key.trim())
                .chain(w.next_public_key.as_deref().map(str::trim))
                .collect()
        })
    }
    let mut owners: Vec<Owner<'_>> = Vec::new();
    if let Some((name, cidrs)) = this {
        owners.push(Owner {
            name,
            cidrs: parse(cidrs),
            keys: state.nodes.get(name).map(keys_of).unwrap_or_default(),
        });
    }
    let mut order: Vec<_> = state
        .nodes
        .values()
        .filter(|n| this.is_none_or(|(t, _)| n.metadata.name != t))
        .collect();
    let rank = |n: &&super::IdentitydNode| {
        (
            n.metadata.creation_timestamp.is_none(),
            n.metadata.creation_timestamp.clone(),
            n.metadata.name.clone(),
        )
    };
    order.sort_by_key(rank);
    // The pod CIDRs the control plane allocated, per node, when it allocates any.
    let allocated: BTreeMap<&str, Vec<Cidr>> = state
        .node_objects
        .iter()
        .map(|(n, o)| (n.as_str(), o.pod_cidrs()))
        .filter(|(_, c)| !c.is_empty())
        .collect();
    let mut out = NodeConflicts {
        unverified: allocated.is_empty(),
        ..NodeConflicts::default()
    };
    for n in order {
        let name = n.metadata.name.as_str();
        let cidrs = parse(&n.spec.pod_cidrs);
        let keys = keys_of(n);
        let own = |o: &Owner<'_>| {
            if this.is_some_and(|(t, _)| t == o.name) {
                format!(
                    "IdentitydNode {} (this node's own, from its config)",
                    o.name
                )
            } else {
                format!("IdentitydNode {}", o.name)
            }
        };
        let mut why = None;
        'owners: for o in &owners {
            for c in &cidrs {
                if let Some(oc) = o.cidrs.iter().find(|oc| overlaps(oc, c)) {
                    why = Some(format!(
                        "IdentitydNode {name}: spec.podCIDRs {} overlaps {} of {}; {} keeps it and {name} is not applied",
                        show(c),
                        show(oc),
                        own(o),
                        o.name
                    ));
                    break 'owners;
                }
            }
            if let Some((i, k)) = keys.iter().enumerate().find(|(_, k)| o.keys.contains(k)) {
                let field = if i == 0 { "publicKey" } else { "nextPublicKey" };
                why = Some(format!(
                    "IdentitydNode {name}: spec.wireguard.{field}={k} is also {}'s; {} keeps it and {name} is not applied",
                    own(o),
                    o.name
                ));
                break;
            }
        }
        if why.is_none() && !allocated.is_empty() {
            why = not_allocated(name, &cidrs, allocated.get(name));
        }
        match why {
            Some(w) => {
                out.rejected.insert(name.to_owned(), w);
            }
            None => owners.push(Owner { name, cidrs, keys }),
        }
    }
    out
}

/// Why `name`'s claimed pod CIDRs are not backed by its Node's allocation, if they are not.
fn not_allocated(name: &str, claimed: &[Cidr], node: Option<&Vec<Cidr>>) -> Option<String> {
    let Some(alloc) = node else {
        return Some(format!(
            "IdentitydNode {name}: spec.podCIDRs {}: no Node {name} allocates a pod CIDR \
             (spec.podCIDRs), and a node's own claim is not accepted; {name} is not applied",
            claimed.iter().map(show).collect::<Vec<_>>().join(",")
        ));
    };
    let inside = |c: &Cidr| {
        alloc
            .iter()
            .any(|a| a.prefix <= c.prefix && a.contains(c.addr))
    };
    let outside: Vec<String> = claimed.iter().filter(|c| !inside(c)).map(show).collect();
    (!outside.is_empty()).then(|| {
        format!(
            "IdentitydNode {name}: spec.podCIDRs {} lies outside Node {name}'s spec.podCIDRs {}; \
             {name} is not applied",
            outside.join(","),
            alloc.iter().map(show).collect::<Vec<_>>().join(",")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{IdentitydNode, IdentitydNodeSpec, Object, WireguardSpec};

    const K1: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
    const K2: &str = "+4bCzYtTN6VnYEoEDEqKA3s9/vfKRQW6x42NoEGXmAQ=";
    const K3: &str = "ZW1gK0HpMBOhsJmB6oFmtBSaYmCm+tmWcSNyAtqbnAs=";

    fn node(name: &str, cidr: &str, key: &str, created: Option<&str>) -> Object {
        let mut n = IdentitydNode::new(
            name,
            IdentitydNodeSpec {
                pod_cidrs: vec![cidr.into()],
                underlay_addresses: vec!["192.0.2.1".into()],
                wireguard: Some(WireguardSpec {
                    public_key: key.into(),
                    port: 51871,
                    next_public_key: None,
                }),
                ipsec: None,
                proof: None,
            },
        );
        n.metadata.creation_timestamp = created.map(str::to_owned);
        Object::IdentitydNode(n)
    }

    #[test]
    fn the_later_claim_is_rejected_naming_both_and_this_node_always_keeps_its_own() {
        let state = ClusterState::from_objects(
            1,
            vec![
                node("n1", "10.244.1.0/24", K1, Some("2026-12-01T10:00:00Z")),
                node("n2", "10.244.2.0/24", K2, Some("2026-12-01T10:00:01Z")),
                // Created earlier than n2 in name order, but later in time: n2 keeps its CIDR.
                node(
                    "a-evil",
                    "10.244.2.128/25",
                    K3,
                    Some("2026-12-02T00:00:00Z"),
                ),
                // n1's key under another name.
                node("n9", "10.244.9.0/24", K1, Some("2026-12-02T00:00:01Z")),
            ],
        );
        let c = node_conflicts(&state, None);
        assert_eq!(c.rejected.len(), 2, "{c:#?}");
        assert!(
            c.rejected["a-evil"].contains("overlaps 10.244.2.0/24 of IdentitydNode n2"),
            "{c:#?}"
        );
        assert!(
            c.rejected["n9"].contains("spec.wireguard.publicKey"),
            "{c:#?}"
        );
        assert!(!c.is_rejected("n1") && !c.is_rejected("n2"));

        // A rotating node's next key is its own too: another node publishing it (as its key
        // or as its next key) is rejected, naming the field.
        let mut rotating = node("n1", "10.244.1.0/24", K1, Some("2026-12-01T10:00:00Z"));
        if let Object::IdentitydNode(n) = &mut rotating {
            n.spec.wireguard.as_mut().unwrap().next_public_key = Some(K3.into());
        }
        let mut thief = node("n2", "10.244.2.0/24", K2, Some("2026-12-01T10:00:01Z"));
        if let Object::IdentitydNode(n) = &mut thief {
            n.spec.wireguard.as_mut().unwrap().next_public_key = Some(K3.into());
        }
        let state = ClusterState::from_objects(
            1,
            vec![
                rotating,
                thief,
                node("n3", "10.244.3.0/24", K3, Some("2026-12-01T10:00:02Z")),
            ],
        );
        let c = node_conflicts(&state, None);
        assert!(
            c.rejected["n2"].contains("spec.wireguard.nextPublicKey="),
            "{c:#?}"
        );
        assert!(
            c.rejected["n3"].contains("spec.wireguard.publicKey="),
            "{c:#?}"
        );
        assert!(!c.is_rejected("n1"));

        // An object claiming n1's CIDR, judged by n1: n1's config wins even if the object is
        // older than n1's own IdentitydNode.
        let state = ClusterState::from_objects(
            1,
            vec![
                node("n1", "10.244.1.0/24", K1, Some("2026-12-01T10:00:00Z")),
                node("n0", "10.244.1.0/24", K2, Some("2026-01-01T00:00:00Z")),
            ],
        );
        let mine = ["10.244.1.0/24".to_owned()];
        let c = node_conflicts(&state, Some(("n1", &mine)));
        assert_eq!(c.rejected.keys().collect::<Vec<_>>(), ["n0"]);
        assert!(c.rejected["n0"].contains("this node's own"), "{c:#?}");
        // Without the node's own view, the older object wins (a conflict either way).
        assert!(node_conflicts(&state, None).is_rejected("n1"));
        // An object without a creation time (written by hand) counts as the newest.
        let state = ClusterState::from_objects(
            1,
            vec![
                node("n1", "10.244.1.0/24", K1, Some("2026-12-01T10:00:00Z")),
                node("a", "10.244.1.0/24", K2, None),
            ],
        );
        assert!(node_conflicts(&state, None).is_rejected("a"));
    }

    #[test]
    fn where_node_objects_allocate_pod_cidrs_a_claim_outside_its_own_nodes_is_rejected() {
        use crate::model::Node;
        let objs = |extra: Vec<Object>| {
            let mut v = vec![
                node("n1", "10.244.1.0/24", K1, Some("2026-12-01T10:00:00Z")),
                // n2's object claims a CIDR the control plane gave n3.
                node("n2", "10.244.3.0/24", K2, Some("2026-12-01T10:00:01Z")),
                // n9 has no Node at all.
                node("n9", "10.244.9.0/24", K3, Some("2026-12-01T10:00:02Z")),
            ];
            v.extend(extra);
            ClusterState::from_objects(1, v)
        };
        // No Node object: claims as they are, and the result says they are unverified.
        let c = node_conflicts(&objs(vec![]), None);
        assert!(c.rejected.is_empty() && c.unverified, "{c:#?}");
        let c = node_conflicts(
            &objs(vec![
                Object::Node(Node::new("n1", &["10.244.1.0/24"])),
                Object::Node(Node::new("n2", &["10.244.2.0/24", "fd00:10:244:2::/64"])),
                Object::Node(Node::new("n3", &["10.244.3.0/24"])),
            ]),
            None,
        );
        assert!(!c.unverified);
        assert_eq!(
            c.rejected.keys().collect::<Vec<_>>(),
            ["n2", "n9"],
            "{c:#?}"
        );
        assert!(
            c.rejected["n2"].contains(
                "spec.podCIDRs 10.244.3.0/24 lies outside Node n2's spec.podCIDRs 10.244.2.0/24,fd00:10:244:2::/64"
            ),
            "{c:#?}"
        );
        assert!(
            c.rejected["n9"].contains("no Node n9 allocates a pod CIDR"),
            "{c:#?}"
        );
        // A claim inside the allocation (a /25 of its /24) is the node's own; one wider than it
        // (the /23 around it) is not.
        let state = ClusterState::from_objects(
            1,
            vec![
                node("n1", "10.244.1.0/25", K1, None),
                node("n2", "10.244.2.0/23", K2, None),
                Object::Node(Node::new("n1", &["10.244.1.0/24"])),
                Object::Node(Node::new("n2", &["10.244.2.0/24"])),
            ],
        );
        let c = node_conflicts(&state, None);
        assert_eq!(c.rejected.keys().collect::<Vec<_>>(), ["n2"], "{c:#?}");
        assert!(
            c.rejected["n2"].contains("10.244.2.0/23 lies outside"),
            "{c:#?}"
        );
    }
}
