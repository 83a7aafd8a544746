use std::sync::Arc;
use std::time::{Duration, SystemTime};

use identityd_certs::{Ca, CaOptions, TrustDomain};

use super::*;
use crate::model::{Object, WireguardSpec};

const K2: &str = "+4bCzYtTN6VnYEoEDEqKA3s9/vfKRQW6x42NoEGXmAQ=";
const K_EVIL: &str = "ZW1gK0HpMBOhsJmB6oFmtBSaYmCm+tmWcSNyAtqbnAs=";

struct Fixture {
    _dir: tempfile::TempDir,
    ca: Ca,
    td: TrustDomain,
    now: SystemTime,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let td = TrustDomain::new("lab.local").unwrap();
        let now = SystemTime::now();
        let ca = Ca::init(
            &dir.path().join("ca"),
            td.clone(),
            CaOptions::default(),
            now,
        )
        .unwrap();
        Self {
            _dir: dir,
            ca,
            td,
            now,
        }
    }

    fn bundle(&self) -> Bundle {
        self.ca.bundle(self.now)
    }

    fn node_svid(&self, name: &str, ttl: Duration) -> Svid {
        let id = identityd_certs::service::node_id(&self.td, name).unwrap();
        self.ca.issue(&id, ttl, self.now).unwrap()
    }
}

fn spec(key: &str, underlay: &str) -> IdentitydNodeSpec {
    IdentitydNodeSpec {
        pod_cidrs: vec!["10.244.2.0/24".into()],
        underlay_addresses: vec![underlay.into()],
        wireguard: Some(WireguardSpec {
            public_key: key.into(),
            port: 51871,
            next_public_key: None,
        }),
        ipsec: None,
        proof: None,
    }
}

fn signed(name: &str, mut s: IdentitydNodeSpec, generation: i64, svid: &Svid) -> IdentitydNode {
    s.proof = Some(sign(name, &s, generation, svid).unwrap());
    IdentitydNode::new(name, s)
}

fn state(version: u64, nodes: Vec<IdentitydNode>) -> Arc<ClusterState> {
    Arc::new(ClusterState::from_objects(
        version,
        nodes.into_iter().map(Object::IdentitydNode),
    ))
}

#[test]
fn a_proof_verifies_only_for_its_node_and_its_exact_fields() {
    let f = Fixture::new();
    let n2 = f.node_svid("n2", Duration::from_secs(3600));
    let n3 = f.node_svid("n3", Duration::from_secs(3600));
    let good = signed("n2", spec(K2, "10.99.0.12"), 5, &n2);
    assert_eq!(verify(&good, &f.td, &f.bundle(), f.now), Ok(5));

    // Any field peers act on, changed after signing: refused.
    for tamper in [
        |s: &mut IdentitydNodeSpec| s.wireguard.as_mut().unwrap().public_key = K_EVIL.into(),
        |s: &mut IdentitydNodeSpec| s.underlay_addresses = vec!["10.99.0.66".into()],
        |s: &mut IdentitydNodeSpec| s.pod_cidrs = vec!["10.244.3.0/24".into()],
        |s: &mut IdentitydNodeSpec| s.wireguard.as_mut().unwrap().port = 51872,
        |s: &mut IdentitydNodeSpec| s.proof.as_mut().unwrap().generation = 6,
    ] {
        let mut bad = good.clone();
        tamper(&mut bad.spec);
        assert_eq!(
            verify(&bad, &f.td, &f.bundle(), f.now),
            Err(ProofError::Signature(
                identityd_certs::signed::SignedError::BadSignature
            ))
        );
    }
    // Another node's identity cannot vouch for n2.
    let by_n3 = signed("n2", spec(K_EVIL, "10.99.0.66"), 9, &n3);
    let e = verify(&by_n3, &f.td, &f.bundle(), f.now).unwrap_err();
    assert!(
        matches!(&e, ProofError::WrongSigner { expected, .. } if expected.ends_with("/identityd/node/n2")),
        "{e}"
    );
    // Unsigned, and signed under another CA.
    let unsigned = IdentitydNode::new("n2", spec(K_EVIL, "10.99.0.66"));
    assert_eq!(
        verify(&unsigned, &f.td, &f.bundle(), f.now),
        Err(ProofError::Missing)
    );
    let other = Fixture::new();
    let foreign = signed(
        "n2",
        spec(K_EVIL, "10.99.0.66"),
        9,
        &other.node_svid("n2", Duration::from_secs(3600)),
    );
    assert!(matches!(
        verify(&foreign, &f.td, &f.bundle(), f.now),
        Err(ProofError::Signature(
            identityd_certs::signed::SignedError::Chain(_)
        ))
    ));
}

#[test]
fn peers_keep_the_last_verified_version_against_unsigned_replayed_and_expired_objects() {
    let f = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("verified-nodes.json");
    let n2 = f.node_svid("n2", Duration::from_secs(600));
    let v10 = signed("n2", spec(K2, "10.99.0.12"), 10, &n2);
    let mut vn = VerifiedNodes::load(file.clone());
    let s1 = state(
        1,
        vec![
            IdentitydNode::new("n1", spec(K2, "10.99.0.11")),
            v10.clone(),
        ],
    );
    assert!(vn.refresh(&s1, "n1", &f.td, Some(&f.bundle()), f.now));
    assert_eq!(vn.view(&s1, "n1").nodes["n2"], s1.nodes["n2"]);
    assert!(vn.problems().is_empty(), "{:?}", vn.problems());

    // An unsigned object with an attacker's key and address written over n2's.
    let rogue = IdentitydNode::new("n2", spec(K_EVIL, "10.99.0.66"));
    let s2 = state(2, vec![rogue]);
    assert!(!vn.refresh(&s2, "n1", &f.td, Some(&f.bundle()), f.now));
    let view = vn.view(&s2, "n1");
    let kept = &view.nodes["n2"].spec;
    assert_eq!(kept.wireguard.as_ref().unwrap().public_key, K2);
    assert_eq!(kept.underlay_addresses, ["10.99.0.12"]);
    let p = vn.problems().join("\n");
    assert!(
        p.contains("IdentitydNode n2: spec.proof is missing; keeping the last verified version (generation 10)"),
        "{p}"
    );

    // A replay of an older signed version.
    let v7 = signed("n2", spec(K_EVIL, "10.99.0.66"), 7, &n2);
    let s3 = state(3, vec![v7]);
    assert!(!vn.refresh(&s3, "n1", &f.td, Some(&f.bundle()), f.now));
    assert!(
        vn.problems()
            .join("\n")
            .contains("is not newer than the verified generation 10")
    );
    assert_eq!(vn.generation("n2"), Some(10));

    // Later: the CA is gone (no bundle) and n2's SVID has expired: the verified version stays
    // configured, as long as n2's object is the one that was verified.
    let later = f.now + Duration::from_secs(3600);
    let s4 = state(4, vec![v10.clone()]);
    vn.refresh(&s4, "n1", &f.td, None, later);
    assert_eq!(vn.view(&s4, "n1").nodes["n2"].spec, v10.spec);
    assert!(vn.problems().is_empty(), "{:?}", vn.problems());

    // A restarted daemon starts from the file: still configured, with no CA and the SVID expired.
    let mut again = VerifiedNodes::load(file);
    again.refresh(&s2, "n1", &f.td, None, later);
    assert_eq!(again.view(&s2, "n1").nodes["n2"].spec, v10.spec);

    // A newer signed version replaces it; a deleted object is forgotten.
    let n2b = f.node_svid("n2", Duration::from_secs(600));
    let v11 = signed("n2", spec(K_EVIL, "10.99.0.12"), 11, &n2b);
    let s5 = state(5, vec![v11.clone()]);
    assert!(vn.refresh(&s5, "n1", &f.td, Some(&f.bundle()), f.now));
    assert_eq!(vn.view(&s5, "n1").nodes["n2"].spec, v11.spec);
    let s6 = state(6, vec![]);
    assert!(vn.refresh(&s6, "n1", &f.td, Some(&f.bundle()), f.now));
    assert!(!vn.view(&s6, "n1").nodes.contains_key("n2"));
}

#[test]
fn a_node_never_verified_is_not_configured_and_its_own_object_is_kept_as_is() {
    let f = Fixture::new();
    let mut vn = VerifiedNodes::default();
    let own = IdentitydNode::new("n1", spec(K2, "10.99.0.11"));
    let rogue = IdentitydNode::new("n9", spec(K_EVIL, "10.99.0.66"));
    let s = state(1, vec![own.clone(), rogue]);
    vn.refresh(&s, "n1", &f.td, Some(&f.bundle()), f.now);
    let v = vn.view(&s, "n1");
    assert_eq!(v.nodes.keys().collect::<Vec<_>>(), ["n1"]);
    assert!(
        vn.problems()
            .join("\n")
            .contains("IdentitydNode n9: spec.proof is missing; the node is not configured")
    );
}

#[test]
fn the_signer_keeps_its_proof_until_the_content_changes_and_generations_only_grow() {
    let f = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let mut signer = ProofSigner::new("n2", dir.path());
    assert_eq!(
        signer.proof_for(&spec(K2, "10.99.0.12"), f.now),
        None,
        "no node SVID yet"
    );
    f.node_svid("n2", Duration::from_secs(600))
        .write_to_dir(&dir.path().join("node-svid"))
        .unwrap();
    let p1 = signer.proof_for(&spec(K2, "10.99.0.12"), f.now).unwrap();
    assert_eq!(
        signer.proof_for(&spec(K2, "10.99.0.12"), f.now).unwrap(),
        p1
    );
    let p2 = signer
        .proof_for(&spec(K_EVIL, "10.99.0.12"), f.now)
        .unwrap();
    assert!(p2.generation > p1.generation);
    // A restarted node (same clock reading) still signs above what it signed before.
    let mut restarted = ProofSigner::new("n2", dir.path());
    let p3 = restarted.proof_for(&spec(K2, "10.99.0.12"), f.now).unwrap();
    assert!(p3.generation > p2.generation);
    let mut node = IdentitydNode::new("n2", spec(K2, "10.99.0.12"));
    node.spec.proof = Some(p3.clone());
    assert!(verify(&node, &f.td, &f.bundle(), f.now).is_ok());
    // Once the node SVID has expired (the CA unreachable for its whole lifetime), the same
    // content keeps its proof; new content cannot be signed.
    let later = f.now + Duration::from_secs(3600);
    assert_eq!(
        restarted.proof_for(&spec(K2, "10.99.0.12"), later),
        Some(p3)
    );
    assert_eq!(
        restarted.proof_for(&spec(K_EVIL, "10.99.0.12"), later),
        None
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("node-proof-generation"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}
