//! The XFRM state a node wants (pure), and applying it as a diff against what the kernel
//! holds — so a restarted daemon re-adopts the SAs in place (no gap, no replay-window reset)
//! and only changes what changed.
//!
//! Per ordered node pair one tunnel-mode ESP SA: on the sending node an outbound SA and `out`
//! policies from its pod CIDRs to the peer's; on the receiving node the inbound SA and `in` and
//! `fwd` policies, all `level required`. The receiving node allocates the SPI (published); the
//! sending node chooses the epoch (published). identityd's states and policies are the ones
//! whose reqid lies in [`REQID_BASE`]`..+0x10000`: nothing else in the kernel is touched.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::keys::{DeriveError, Direction, Endpoint, derive_sa_key};
use super::xfrm::{
    InstalledPolicy, InstalledSa, PolicyDir, PolicySpec, SaSpec, Xfrm, XfrmError, XfrmMark,
};
use crate::key::{NodeKey, PublicKey};
use crate::plan::Cidr;

/// The reqid range that marks identityd's SAs and policies (`0x1dd0_xxxx`).
pub const REQID_BASE: u32 = 0x1dd0_0000;
const REQID_MASK: u32 = 0xffff_0000;
/// The replay window of inbound SAs, in packets.
pub const REPLAY_WINDOW: u32 = 1024;
/// Priority of identityd's policies.
pub const PRIORITY: u32 = 100;

/// Whether an SA or policy with this reqid is identityd's.
#[must_use]
pub fn is_ours(reqid: u32) -> bool {
    reqid & REQID_MASK == REQID_BASE
}

/// One node as the plan sees it (its published IPsec fields).
#[derive(Debug, Clone)]
pub struct IpsecNode {
    /// Name.
    pub name: String,
    /// A small number unique in the cluster (reqid of the pairs with it), 1..=0xffff.
    pub id: u16,
    /// Underlay address (the tunnel endpoint).
    pub underlay: IpAddr,
    /// Pod CIDRs.
    pub pod_cidrs: Vec<Cidr>,
    /// Its IPsec public key.
    pub public: PublicKey,
    /// The epoch it sends on.
    pub epoch: u64,
    /// The SPIs it allocated for its inbound SA from each peer: (peer name, SPI).
    pub inbound_spis: Vec<(String, u32)>,
}

impl IpsecNode {
    fn spi_from(&self, peer: &str) -> Option<u32> {
        self.inbound_spis
            .iter()
            .find(|(n, _)| n == peer)
            .map(|(_, s)| *s)
    }

    fn endpoint(&self) -> Endpoint<'_> {
        Endpoint {
            name: &self.name,
            public: self.public,
        }
    }
}

/// What the node wants in the kernel.
#[derive(Debug, Default)]
pub struct XfrmPlan {
    /// SAs, inbound ones first (a peer may send as soon as it has its outbound SA).
    pub sas: Vec<SaSpec>,
    /// Policies.
    pub policies: Vec<PolicySpec>,
    /// Peers left out, and why.
    pub problems: Vec<String>,
}

/// The plan of node `local` (private key `own`) with `peers`, under `mark` when the classifier
/// selects IPsec traffic by mark.
#[must_use]
pub fn plan(
    local: &IpsecNode,
    own: &NodeKey,
    peers: &[IpsecNode],
    mark: Option<XfrmMark>,
) -> XfrmPlan {
    let mut p = XfrmPlan::default();
    let mut outbound = Vec::new();
    for peer in peers.iter().filter(|x| x.name != local.name) {
        if (peer.underlay.is_ipv4()) != (local.underlay.is_ipv4()) {
            p.problems.push(format!(
                "IPsec peer {}: underlay {} is not of the family of this node's {}",
                peer.name, peer.underlay, local.underlay
            ));
            continue;
        }
        let reqid = REQID_BASE | u32::from(peer.id);
        let derive = |dir, spi, epoch| -> Result<_, DeriveError> {
            derive_sa_key(own, local.endpoint(), peer.endpoint(), dir, spi, epoch)
        };
        // Policies for every peer, SA or not: `level required` drops what has no SA (strict
        // mode in the kernel), in both directions.
        for (srcs, dsts, dirs, ts, td, m) in [
            (
                &peer.pod_cidrs,
                &local.pod_cidrs,
                &[PolicyDir::In, PolicyDir::Fwd][..],
                peer.underlay,
                local.underlay,
                None,
            ),
            (
                &local.pod_cidrs,
                &peer.pod_cidrs,
                &[PolicyDir::Out][..],
                local.underlay,
                peer.underlay,
                mark,
            ),
        ] {
            for src in srcs {
                for dst in dsts
                    .iter()
                    .filter(|d| d.addr().is_ipv4() == src.addr().is_ipv4())
                {
                    for dir in dirs {
                        p.policies.push(PolicySpec {
                            src: *src,
                            dst: *dst,
                            dir: *dir,
                            tunnel_src: ts,
                            tunnel_dst: td,
                            reqid,
                            priority: PRIORITY,
                            mark: m,
                        });
                    }
                }
            }
        }
        // Inbound: the SPI this node allocated for the peer, the peer's epoch.
        match local.spi_from(&peer.name) {
            Some(spi) => match derive(Direction::Inbound, spi, peer.epoch) {
                Ok(key) => p.sas.push(SaSpec {
                    src: peer.underlay,
                    dst: local.underlay,
                    spi,
                    reqid,
                    key,
                    replay_window: REPLAY_WINDOW,
                    mark,
                }),
                Err(e) => p.problems.push(format!("IPsec peer {}: {e}", peer.name)),
            },
            None => p.problems.push(format!(
                "IPsec peer {}: this node has allocated no inbound SPI for it yet (its traffic is refused)",
                peer.name
            )),
        }
        // Outbound: the SPI the peer allocated for this node, this node's epoch.
        match peer.spi_from(&local.name) {
            Some(spi) => match derive(Direction::Outbound, spi, local.epoch) {
                Ok(key) => outbound.push(SaSpec {
                    src: local.underlay,
                    dst: peer.underlay,
                    spi,
                    reqid,
                    key,
                    replay_window: REPLAY_WINDOW,
                    mark,
                }),
                Err(e) => p.problems.push(format!("IPsec peer {}: {e}", peer.name)),
            },
            None => p.problems.push(format!(
                "IPsec peer {}: it has published no SPI for this node yet (traffic to it is dropped)",
                peer.name
            )),
        }
    }
    p.sas.extend(outbound);
    p
}

/// What [`apply`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// SAs added.
    pub sas_added: usize,
    /// SAs deleted (identityd's, no longer wanted).
    pub sas_deleted: usize,
    /// Policies added or replaced.
    pub policies_put: usize,
    /// Policies deleted (identityd's, no longer wanted).
    pub policies_deleted: usize,
}

impl ApplyReport {
    /// Whether nothing changed.
    #[must_use]
    pub fn is_noop(&self) -> bool {
        *self == Self::default()
    }
}

fn sa_key(s: &SaSpec) -> (IpAddr, IpAddr, u32) {
    (s.src, s.dst, s.spi)
}

fn policy_key(p: &PolicySpec) -> (Cidr, Cidr, PolicyDir) {
    (p.src, p.dst, p.dir)
}

fn installed_matches(i: &InstalledPolicy, p: &PolicySpec) -> bool {
    i.tmpl == Some((p.tunnel_src, p.tunnel_dst, p.reqid))
        && i.mark == p.mark.map(|m| (m.value, m.mask))
}

/// Makes the kernel's identityd SAs and policies equal to `plan`: new inbound SAs, then new
/// outbound SAs, then policies (added or replaced only where they differ), then stale policies
/// and stale SAs removed. SAs already installed under the same (source, destination, SPI) are
/// kept as they are: their key is a function of the SPI and epoch, and their sequence numbers
/// and replay windows live on.
///
/// # Errors
/// The first kernel refusal; what was done before it stays (the next round converges).
pub fn apply(x: &mut Xfrm, plan: &XfrmPlan) -> Result<ApplyReport, XfrmError> {
    let mut r = ApplyReport::default();
    let have_sas: Vec<InstalledSa> = x.sas()?.into_iter().filter(|s| is_ours(s.reqid)).collect();
    let have: BTreeSet<(IpAddr, IpAddr, u32)> =
        have_sas.iter().map(|s| (s.src, s.dst, s.spi)).collect();
    for sa in &plan.sas {
        if !have.contains(&sa_key(sa)) {
            x.add_sa(sa)?;
            r.sas_added += 1;
        }
    }
    let have_pols: Vec<InstalledPolicy> = x
        .policies()?
        .into_iter()
        .filter(|p| p.tmpl.is_some_and(|(_, _, reqid)| is_ours(reqid)))
        .collect();
    for p in &plan.policies {
        let ok = have_pols
            .iter()
            .any(|i| (i.src, i.dst, i.dir) == policy_key(p) && installed_matches(i, p));
        if !ok {
            x.put_policy(p)?;
            r.policies_put += 1;
        }
    }
    let want_pols: BTreeSet<(Cidr, Cidr, PolicyDir)> =
        plan.policies.iter().map(policy_key).collect();
    for i in &have_pols {
        if !want_pols.contains(&(i.src, i.dst, i.dir)) {
            let (ts, td, reqid) = i.tmpl.unwrap_or((i.src.addr(), i.dst.addr(), 0));
            x.delete_policy(&PolicySpec {
                src: i.src,
                dst: i.dst,
                dir: i.dir,
                tunnel_src: ts,
                tunnel_dst: td,
                reqid,
                priority: PRIORITY,
                mark: i.mark.map(|(value, mask)| XfrmMark { value, mask }),
            })?;
            r.policies_deleted += 1;
        }
    }
    let want_sas: BTreeSet<(IpAddr, IpAddr, u32)> = plan.sas.iter().map(sa_key).collect();
    for s in &have_sas {
        if !want_sas.contains(&(s.src, s.dst, s.spi)) {
            x.delete_sa(
                s.dst,
                s.spi,
                s.mark.map(|(value, mask)| XfrmMark { value, mask }),
            )?;
            r.sas_deleted += 1;
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, id: u16, key: &NodeKey, spis: &[(&str, u32)]) -> IpsecNode {
        IpsecNode {
            name: name.into(),
            id,
            underlay: format!("10.99.0.{}", 10 + id).parse().unwrap(),
            pod_cidrs: vec![format!("10.244.{id}.0/24").parse().unwrap()],
            public: key.public_key(),
            epoch: 1,
            inbound_spis: spis.iter().map(|(n, s)| ((*n).to_owned(), *s)).collect(),
        }
    }

    #[test]
    fn each_pair_gets_one_sa_per_direction_with_keys_both_ends_agree_on() {
        let (k1, k2) = (NodeKey::generate(), NodeKey::generate());
        let n1 = node("n1", 1, &k1, &[("n2", 0x1201)]);
        let n2 = node("n2", 2, &k2, &[("n1", 0x2101)]);
        let p1 = plan(&n1, &k1, &[n1.clone(), n2.clone()], None);
        let p2 = plan(&n2, &k2, &[n1.clone(), n2.clone()], None);
        assert!(
            p1.problems.is_empty() && p2.problems.is_empty(),
            "{:?} {:?}",
            p1.problems,
            p2.problems
        );
        // n1: inbound from n2 (SPI n1 allocated) first, then outbound to n2 (SPI n2 allocated).
        assert_eq!(
            p1.sas
                .iter()
                .map(|s| (s.src.to_string(), s.dst.to_string(), s.spi))
                .collect::<Vec<_>>(),
            [
                ("10.99.0.12".to_owned(), "10.99.0.11".to_owned(), 0x1201),
                ("10.99.0.11".to_owned(), "10.99.0.12".to_owned(), 0x2101)
            ]
        );
        let out1 = &p1.sas[1];
        let in2 = p2.sas.iter().find(|s| s.spi == out1.spi).unwrap();
        assert_eq!(
            out1.key.as_bytes(),
            in2.key.as_bytes(),
            "n1's outbound = n2's inbound"
        );
        assert_ne!(p1.sas[0].key.as_bytes(), out1.key.as_bytes());
        assert!(p1.sas.iter().all(|s| is_ours(s.reqid)));
        let dirs: Vec<PolicyDir> = p1.policies.iter().map(|p| p.dir).collect();
        assert_eq!(dirs, [PolicyDir::In, PolicyDir::Fwd, PolicyDir::Out]);
    }

    #[test]
    fn a_peer_without_spis_gets_no_sa_but_is_named() {
        let (k1, k2) = (NodeKey::generate(), NodeKey::generate());
        let n1 = node("n1", 1, &k1, &[]);
        let n2 = node("n2", 2, &k2, &[]);
        let p = plan(&n1, &k1, &[n2], None);
        assert!(p.sas.is_empty());
        assert_eq!(p.problems.len(), 2, "{:?}", p.problems);
        assert!(p.problems[1].contains("traffic to it is dropped"));
        // The policies are there all the same: without an SA nothing passes in clear.
        assert_eq!(p.policies.len(), 3);
    }
}
