//! CA, issuance and verification: the X.509-SVID rules, bad input, persistence, rollover.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use identityd_certs::svid::csr_for;
use identityd_certs::verify::Position;
use identityd_certs::{
    Bundle, Ca, CaOptions, Error, PrivateKey, SpiffeId, TrustDomain, VerifyError, verify_svid,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;

const HOUR: Duration = Duration::from_secs(3600);

fn td(s: &str) -> TrustDomain {
    TrustDomain::new(s).unwrap()
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn now() -> SystemTime {
    SystemTime::now()
}

fn new_ca(opts: CaOptions) -> (tempfile::TempDir, Ca) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::init(&dir.path().join("ca"), td("cluster.local"), opts, now()).unwrap();
    (dir, ca)
}

#[test]
fn issued_svid_verifies_and_follows_the_rules() {
    for intermediate in [false, true] {
        let (_d, ca) = new_ca(CaOptions {
            intermediate,
            ..CaOptions::default()
        });
        let want = id("spiffe://cluster.local/ns/shop/sa/web");
        let svid = ca.issue(&want, HOUR, now()).unwrap();
        assert_eq!(svid.chain().len(), if intermediate { 2 } else { 1 });
        assert_eq!(svid.id(), &want);
        let got = verify_svid(svid.chain(), &ca.bundle(now()), now()).unwrap();
        assert_eq!(got, want);
        let life = svid.not_after().duration_since(svid.not_before()).unwrap();
        assert!(
            life >= HOUR && life <= HOUR + Duration::from_secs(31),
            "lifetime {life:?}"
        );
    }
}

#[test]
fn ttl_is_capped_by_max_and_ca_lifetime() {
    let (_d, ca) = new_ca(CaOptions {
        max_svid_ttl: HOUR,
        root_ttl: 10 * HOUR,
        ..CaOptions::default()
    });
    let svid = ca
        .issue(&id("spiffe://cluster.local/a"), 100 * HOUR, now())
        .unwrap();
    let life = svid.not_after().duration_since(now()).unwrap();
    assert!(life <= HOUR, "capped by max_svid_ttl: {life:?}");

    let (_d, ca) = new_ca(CaOptions {
        max_svid_ttl: 100 * HOUR,
        root_ttl: 2 * HOUR,
        ..CaOptions::default()
    });
    let svid = ca
        .issue(&id("spiffe://cluster.local/a"), 50 * HOUR, now())
        .unwrap();
    let left = svid.not_after().duration_since(now()).unwrap();
    assert!(
        left <= 2 * HOUR,
        "capped by the CA's remaining lifetime: {left:?}"
    );

    let err = ca
        .issue(&id("spiffe://cluster.local/a"), HOUR, now() + 3 * HOUR)
        .unwrap_err();
    assert!(matches!(err, Error::Ttl(_)), "{err}");
    assert!(matches!(
        ca.issue(&id("spiffe://cluster.local/a"), Duration::ZERO, now()),
        Err(Error::Ttl(_))
    ));
}

#[test]
fn persisted_and_reloaded_with_private_keys_0600() {
    let dir = tempfile::tempdir().unwrap();
    let cadir = dir.path().join("ca");
    let ca = Ca::init(
        &cadir,
        td("cluster.local"),
        CaOptions {
            intermediate: true,
            ..CaOptions::default()
        },
        now(),
    )
    .unwrap();
    for key in ["root.key", "intermediate.key"] {
        let mode = std::fs::metadata(cadir.join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    assert_eq!(
        std::fs::metadata(&cadir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(
        !format!("{ca:?}").contains("PRIVATE"),
        "Debug redacts keys: {ca:?}"
    );
    let svid = ca
        .issue(&id("spiffe://cluster.local/x"), HOUR, now())
        .unwrap();
    let again = Ca::load(&cadir).unwrap();
    assert_eq!(again.root(), ca.root(), "same root after reload");
    verify_svid(svid.chain(), &again.bundle(now()), now()).unwrap();
    let svid2 = again
        .issue(&id("spiffe://cluster.local/y"), HOUR, now())
        .unwrap();
    verify_svid(svid2.chain(), &ca.bundle(now()), now()).unwrap();
    // Refuses to overwrite.
    let err = Ca::init(&cadir, td("cluster.local"), CaOptions::default(), now()).unwrap_err();
    assert!(err.to_string().contains("already holds a CA"), "{err}");
    let err = Ca::load_or_init(&cadir, td("other.td"), CaOptions::default(), now()).unwrap_err();
    assert!(err.to_string().contains("other.td"), "{err}");
    // SVID files: key 0600 and reloadable.
    let out = dir.path().join("svid");
    svid.write_to_dir(&out).unwrap();
    assert_eq!(
        std::fs::metadata(out.join("key.pem"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let back = identityd_certs::Svid::read_from_dir(&out).unwrap();
    assert_eq!(back.chain(), svid.chain());
    assert!(!format!("{back:?}").contains("BEGIN"), "{back:?}");
}

#[test]
fn rollover_keeps_old_root_during_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let cadir = dir.path().join("ca");
    let t0 = now();
    let mut ca = Ca::init(&cadir, td("cluster.local"), CaOptions::default(), t0).unwrap();
    let old = ca
        .issue(&id("spiffe://cluster.local/old"), HOUR, t0)
        .unwrap();
    let old_root = ca.root().clone();
    ca.rollover(&cadir, 2 * HOUR, t0).unwrap();
    assert_ne!(ca.root(), &old_root);
    let new = ca
        .issue(&id("spiffe://cluster.local/new"), HOUR, t0)
        .unwrap();
    let b = ca.bundle(t0);
    assert_eq!(b.roots().len(), 2, "old and new root during the overlap");
    verify_svid(old.chain(), &b, t0).unwrap();
    verify_svid(new.chain(), &b, t0).unwrap();
    // The new SVID does not chain to the old root alone.
    let old_only = Bundle::new(td("cluster.local"), vec![old_root]).unwrap();
    assert!(matches!(
        verify_svid(new.chain(), &old_only, t0),
        Err(VerifyError::UnknownIssuer(_))
    ));
    // Persisted: a reload sees both roots, and after the overlap only the new one.
    let reloaded = Ca::load(&cadir).unwrap();
    assert_eq!(reloaded.bundle(t0).roots().len(), 2);
    // The old root stays for the overlap and at least the longest SVID lifetime (24 h here),
    // so an SVID signed just before the switch keeps verifying until it expires.
    assert_eq!(reloaded.bundle(t0 + 3 * HOUR).roots().len(), 2);
    let later = t0 + 25 * HOUR;
    assert_eq!(reloaded.bundle(later).roots().len(), 1);
    assert!(b.sequence() > 1, "sequence increases on rollover");
}

#[test]
fn a_staged_root_is_trusted_before_it_signs_and_survives_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let cadir = dir.path().join("ca");
    let t0 = now();
    let opts = CaOptions {
        intermediate: true,
        ..CaOptions::default()
    };
    let mut ca = Ca::init(&cadir, td("cluster.local"), opts, t0).unwrap();
    let old_root = ca.root().clone();
    assert!(ca.stage_next_root(&cadir, t0).unwrap());
    assert!(!ca.stage_next_root(&cadir, t0).unwrap(), "staged once");
    let next = ca.next_root().unwrap().clone();
    let b = ca.bundle(t0);
    assert_eq!(b.roots(), &[old_root.clone(), next.clone()][..]);
    // Announced: the current root still signs.
    let during = ca.issue(&id("spiffe://cluster.local/a"), HOUR, t0).unwrap();
    let old_only = Bundle::new(td("cluster.local"), vec![old_root.clone()]).unwrap();
    let next_only = Bundle::new(td("cluster.local"), vec![next.clone()]).unwrap();
    verify_svid(during.chain(), &old_only, t0).unwrap();
    assert!(verify_svid(during.chain(), &next_only, t0).is_err());
    // A restarted CA still has the staged root, with its key 0600.
    let mut ca = Ca::load(&cadir).unwrap();
    assert_eq!(ca.next_root(), Some(&next));
    let mode = std::fs::metadata(cadir.join("next-root.key"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    assert!(!format!("{ca:?}").contains("BEGIN"));
    // Switched: the next root signs; the old one stays for the overlap.
    let until = ca.promote_next_root(&cadir, 2 * HOUR, t0).unwrap();
    assert_eq!(until, t0 + 24 * HOUR, "at least the longest SVID lifetime");
    assert_eq!(ca.root(), &next);
    assert!(ca.next_root().is_none());
    assert!(
        !cadir.join("next-root.key").exists(),
        "the staged files are gone"
    );
    let after = ca.issue(&id("spiffe://cluster.local/b"), HOUR, t0).unwrap();
    verify_svid(after.chain(), &next_only, t0).unwrap();
    verify_svid(during.chain(), &ca.bundle(t0), t0).unwrap();
    assert!(
        ca.promote_next_root(&cadir, HOUR, t0).is_err(),
        "nothing staged"
    );
    // A withdrawn announcement leaves the bundle as it was.
    assert!(ca.stage_next_root(&cadir, t0).unwrap());
    assert_eq!(ca.bundle(t0).roots().len(), 3);
    assert!(ca.withdraw_next_root(&cadir, t0).unwrap());
    assert_eq!(
        Ca::load(&cadir).unwrap().bundle(t0).roots(),
        &[next, old_root][..]
    );
}

#[test]
fn bundle_pem_and_jwks_round_trip() {
    let (_d, ca) = new_ca(CaOptions::default());
    let b = ca.bundle(now());
    let pem = b.to_pem();
    assert_eq!(
        Bundle::from_pem(td("cluster.local"), &pem).unwrap().roots(),
        b.roots()
    );
    let jwks = b.to_jwks().unwrap();
    let v: serde_json::Value = serde_json::from_str(&jwks).unwrap();
    assert_eq!(v["keys"][0]["use"], "x509-svid");
    assert_eq!(v["keys"][0]["kty"], "EC");
    assert_eq!(v["keys"][0]["crv"], "P-256");
    let back = Bundle::from_jwks(td("cluster.local"), &jwks).unwrap();
    assert_eq!(back.roots(), b.roots());
    // A bundle of another trust domain is refused.
    let err = Bundle::from_pem(td("other.td"), &pem).unwrap_err();
    assert!(
        err.to_string().contains("signing certificate SPIFFE ID"),
        "{err}"
    );
    // Tampered x/y are refused.
    let bad = jwks.replace(v["keys"][0]["x"].as_str().unwrap(), "AAAA");
    assert!(
        Bundle::from_jwks(td("cluster.local"), &bad)
            .unwrap_err()
            .to_string()
            .contains("x/y")
    );
}

#[test]
fn verification_against_another_trust_domain_or_time_fails() {
    let (_d, ca) = new_ca(CaOptions::default());
    let (_d2, other) = {
        let dir = tempfile::tempdir().unwrap();
        let c = Ca::init(
            &dir.path().join("ca"),
            td("other.td"),
            CaOptions::default(),
            now(),
        )
        .unwrap();
        (dir, c)
    };
    let svid = ca
        .issue(&id("spiffe://cluster.local/w"), HOUR, now())
        .unwrap();
    assert!(matches!(
        verify_svid(svid.chain(), &other.bundle(now()), now()),
        Err(VerifyError::WrongTrustDomain { .. })
    ));
    assert!(matches!(
        verify_svid(svid.chain(), &ca.bundle(now()), now() + 2 * HOUR),
        Err(VerifyError::Expired {
            at: Position::Leaf,
            ..
        })
    ));
    assert!(matches!(
        verify_svid(svid.chain(), &ca.bundle(now()), now() - HOUR),
        Err(VerifyError::NotYetValid {
            at: Position::Leaf,
            ..
        })
    ));
    // Same trust domain name, different CA: unknown issuer.
    let dir = tempfile::tempdir().unwrap();
    let imposter = Ca::init(
        &dir.path().join("ca"),
        td("cluster.local"),
        CaOptions::default(),
        now(),
    )
    .unwrap();
    assert!(matches!(
        verify_svid(svid.chain(), &imposter.bundle(now()), now()),
        Err(VerifyError::UnknownIssuer(_))
    ));
    assert!(matches!(
        verify_svid(&[], &ca.bundle(now()), now()),
        Err(VerifyError::EmptyChain)
    ));
}

// ---- CSR bad input -------------------------------------------------------------------------

fn csr_with(params: CertificateParams, kp: &KeyPair) -> Vec<u8> {
    params.serialize_request(kp).unwrap().der().to_vec()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

#[test]
fn csr_rules() {
    let (_d, ca) = new_ca(CaOptions::default());
    let want = id("spiffe://cluster.local/ns/a/sa/b");
    let p256 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let reject = |csr: &[u8], needle: &str| {
        let err = ca.sign_csr(csr, &want, HOUR, now()).unwrap_err();
        assert!(matches!(err, Error::Csr(_)), "{err}");
        assert!(
            err.to_string().contains(needle),
            "expected {needle:?} in: {err}"
        );
    };

    // Extra SANs.
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![
        uri(&want.to_string()),
        SanType::DnsName("evil.example".try_into().unwrap()),
    ];
    reject(&csr_with(p, &p256), "other SANs");
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![
        uri(&want.to_string()),
        uri("spiffe://cluster.local/ns/a/sa/c"),
    ];
    reject(&csr_with(p, &p256), "exactly one URI SAN");
    // A SAN other than the authorized ID.
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![uri("spiffe://cluster.local/ns/kube-system/sa/admin")];
    reject(&csr_with(p, &p256), "authorized ID");
    // CA flag / signing usages requested.
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    reject(&csr_with(p, &p256), "cA=true");
    let mut p = CertificateParams::default();
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    reject(&csr_with(p, &p256), "keyCertSign");
    // Wrong key types.
    for alg in [&rcgen::PKCS_ED25519, &rcgen::PKCS_ECDSA_P384_SHA384] {
        let kp = KeyPair::generate_for(alg).unwrap();
        reject(
            &csr_with(CertificateParams::default(), &kp),
            "key type: expected ECDSA P-256",
        );
    }
    // Garbage and truncation.
    reject(b"not a csr", "not a DER PKCS#10");
    let good = csr_for(&want, &PrivateKey::generate().unwrap()).unwrap();
    reject(&good[..good.len() - 3], "PKCS#10");
    // A flipped signature bit: no proof of possession.
    let mut tampered = good.clone();
    let n = tampered.len();
    tampered[n - 5] ^= 0x01;
    reject(&tampered, "signature does not verify");
    // Foreign trust domain and path-less IDs.
    let foreign = id("spiffe://other.td/ns/a/sa/b");
    let csr = csr_for(&foreign, &PrivateKey::generate().unwrap()).unwrap();
    assert!(matches!(
        ca.sign_csr(&csr, &foreign, HOUR, now()),
        Err(Error::ForeignTrustDomain { .. })
    ));
    let tdid = id("spiffe://cluster.local");
    assert!(
        ca.sign_csr(
            &csr_for(&tdid, &PrivateKey::generate().unwrap()).unwrap(),
            &tdid,
            HOUR,
            now()
        )
        .is_err()
    );
    // A CSR without any SAN gets the authorized ID.
    let chain = ca
        .sign_csr(
            &csr_with(CertificateParams::default(), &p256),
            &want,
            HOUR,
            now(),
        )
        .unwrap();
    assert_eq!(verify_svid(&chain, &ca.bundle(now()), now()).unwrap(), want);
}

// ---- Verification rules on crafted chains --------------------------------------------------

/// Signs a leaf with custom parameters directly with the CA's root key (as a broken or
/// malicious issuer would).
fn crafted(
    cadir: &std::path::Path,
    f: impl FnOnce(&mut CertificateParams),
) -> Vec<CertificateDer<'static>> {
    let root_pem = std::fs::read_to_string(cadir.join("root.pem")).unwrap();
    let key = KeyPair::from_pem(&std::fs::read_to_string(cadir.join("root.key")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&root_pem, key).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::OrganizationName, "x");
    p.subject_alt_names = vec![uri("spiffe://cluster.local/w")];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
    p.not_after = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    p.use_authority_key_identifier_extension = true;
    f(&mut p);
    let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    vec![p.signed_by(&leaf_key, &issuer).unwrap().der().clone()]
}

#[test]
fn leaf_rules_each_have_their_error() {
    let dir = tempfile::tempdir().unwrap();
    let cadir = dir.path().join("ca");
    let ca = Ca::init(&cadir, td("cluster.local"), CaOptions::default(), now()).unwrap();
    let b = ca.bundle(now());
    let v = |chain: Vec<CertificateDer<'static>>| verify_svid(&chain, &b, now());

    assert!(
        v(crafted(&cadir, |_| {})).is_ok(),
        "the crafted baseline is valid"
    );
    assert!(matches!(
        v(crafted(&cadir, |p| p.subject_alt_names.clear())),
        Err(VerifyError::LeafSan(_))
    ));
    assert!(matches!(
        v(crafted(&cadir, |p| p.subject_alt_names.push(uri("spiffe://cluster.local/x")))),
        Err(VerifyError::LeafSan(m)) if m.contains("2 URI SANs")
    ));
    assert!(matches!(
        v(crafted(&cadir, |p| p.subject_alt_names = vec![uri("https://cluster.local/w")])),
        Err(VerifyError::LeafSan(m)) if m.contains("not a SPIFFE ID")
    ));
    assert!(matches!(
        v(crafted(&cadir, |p| p.subject_alt_names =
            vec![uri("spiffe://cluster.local")])),
        Err(VerifyError::LeafIdWithoutPath(_))
    ));
    assert!(matches!(
        v(crafted(&cadir, |p| p.is_ca =
            IsCa::Ca(BasicConstraints::Unconstrained))),
        Err(VerifyError::LeafIsCa)
    ));
    assert!(matches!(
        v(crafted(&cadir, |p| p.key_usages.clear())),
        Err(VerifyError::LeafKeyUsageMissing)
    ));
    assert!(matches!(
        v(crafted(&cadir, |p| p.key_usages =
            vec![KeyUsagePurpose::KeyEncipherment])),
        Err(VerifyError::LeafNoDigitalSignature)
    ));
    assert!(matches!(
        v(crafted(&cadir, |p| p
            .key_usages
            .push(KeyUsagePurpose::KeyCertSign))),
        Err(VerifyError::LeafSigningUsage("keyCertSign"))
    ));
    assert!(matches!(
        v(crafted(&cadir, |p| p
            .key_usages
            .push(KeyUsagePurpose::CrlSign))),
        Err(VerifyError::LeafSigningUsage("cRLSign"))
    ));
}

fn chain_with_intermediate(
    cadir: &std::path::Path,
    f: &dyn Fn(&mut CertificateParams),
) -> Vec<CertificateDer<'static>> {
    let root_pem = std::fs::read_to_string(cadir.join("root.pem")).unwrap();
    let root_key =
        KeyPair::from_pem(&std::fs::read_to_string(cadir.join("root.key")).unwrap()).unwrap();
    let root_issuer = Issuer::from_ca_cert_pem(&root_pem, root_key).unwrap();
    let mut ip = CertificateParams::default();
    ip.distinguished_name.push(DnType::CommonName, "int");
    ip.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ip.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    ip.subject_alt_names = vec![uri("spiffe://cluster.local")];
    ip.use_authority_key_identifier_extension = true;
    f(&mut ip);
    let ik = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let icert = ip.signed_by(&ik, &root_issuer).unwrap();
    let iss = Issuer::new(ip, ik);
    let mut lp = CertificateParams::default();
    lp.subject_alt_names = vec![uri("spiffe://cluster.local/w")];
    lp.is_ca = IsCa::ExplicitNoCa;
    lp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    lp.use_authority_key_identifier_extension = true;
    let lk = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf = lp.signed_by(&lk, &iss).unwrap();
    vec![leaf.der().clone(), icert.der().clone()]
}

#[test]
fn intermediate_rules() {
    let dir = tempfile::tempdir().unwrap();
    let cadir = dir.path().join("ca");
    // A CA configured for an intermediate has a root with pathLen 1.
    let ca = Ca::init(
        &cadir,
        td("cluster.local"),
        CaOptions {
            intermediate: true,
            ..CaOptions::default()
        },
        now(),
    )
    .unwrap();
    let b = ca.bundle(now());
    assert!(verify_svid(&chain_with_intermediate(&cadir, &|_| {}), &b, now()).is_ok());
    assert!(matches!(
        verify_svid(
            &chain_with_intermediate(&cadir, &|p| p.is_ca = IsCa::ExplicitNoCa),
            &b,
            now()
        ),
        Err(VerifyError::NotCa(Position::Intermediate(1)))
    ));
    assert!(matches!(
        verify_svid(
            &chain_with_intermediate(&cadir, &|p| p.key_usages =
                vec![KeyUsagePurpose::DigitalSignature]),
            &b,
            now()
        ),
        Err(VerifyError::NoKeyCertSign(Position::Intermediate(1)))
    ));
    assert!(matches!(
        verify_svid(
            &chain_with_intermediate(&cadir, &|p| p.subject_alt_names =
                vec![uri("spiffe://cluster.local/ca")]),
            &b,
            now()
        ),
        Err(VerifyError::SigningId { .. })
    ));
    // Missing the intermediate: the leaf does not chain to the root.
    let chain = chain_with_intermediate(&cadir, &|_| {});
    assert!(matches!(
        verify_svid(&chain[..1], &b, now()),
        Err(VerifyError::UnknownIssuer(_))
    ));

    // A CA without an intermediate has a root with pathLen 0: an intermediate under it is refused.
    let dir0 = tempfile::tempdir().unwrap();
    let cadir0 = dir0.path().join("ca");
    let ca0 = Ca::init(&cadir0, td("cluster.local"), CaOptions::default(), now()).unwrap();
    assert!(matches!(
        verify_svid(
            &chain_with_intermediate(&cadir0, &|_| {}),
            &ca0.bundle(now()),
            now()
        ),
        Err(VerifyError::PathLen { at: Position::Root })
    ));
}
