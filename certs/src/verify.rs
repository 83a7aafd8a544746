//! Verification of an X.509-SVID chain against a trust bundle, with the X.509-SVID rules.
//!
//! Leaf: exactly one URI SAN holding a SPIFFE ID with a path, `cA=false`, keyUsage present with
//! digitalSignature and without keyCertSign/cRLSign. Signing certificates (intermediates and
//! roots): `cA=true`, keyCertSign, and — when they carry a URI SAN — the trust domain's ID
//! without a path. Every certificate is within its validity at the verification time, each is
//! signed by the next, and the last is signed by (or is) a root of the bundle, whose trust domain
//! must be the leaf's.

use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;

use crate::bundle::Bundle;
use crate::id::SpiffeId;
use crate::x509;

use crate::rules::check_signing;
pub use crate::rules::{Position, VerifyError};

fn rfc3339(t: SystemTime) -> String {
    let odt = time::OffsetDateTime::from(t);
    odt.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{odt}"))
}

fn check_time(c: &X509Certificate<'_>, at: Position, now: SystemTime) -> Result<(), VerifyError> {
    let (nb, na) = x509::validity(c);
    if now < nb {
        return Err(VerifyError::NotYetValid {
            at,
            not_before: rfc3339(nb),
        });
    }
    if now > na {
        return Err(VerifyError::Expired {
            at,
            not_after: rfc3339(na),
        });
    }
    Ok(())
}

/// Checks the leaf rules and returns the leaf's SPIFFE ID.
pub(crate) fn check_leaf(c: &X509Certificate<'_>) -> Result<SpiffeId, VerifyError> {
    let id = x509::spiffe_id(c).map_err(VerifyError::LeafSan)?;
    if id.is_trust_domain_id() {
        return Err(VerifyError::LeafIdWithoutPath(id.to_string()));
    }
    let bc = c.basic_constraints().map_err(|e| VerifyError::Malformed {
        at: Position::Leaf,
        reason: e.to_string(),
    })?;
    if bc.is_some_and(|b| b.value.ca) {
        return Err(VerifyError::LeafIsCa);
    }
    let ku = c
        .key_usage()
        .map_err(|e| VerifyError::Malformed {
            at: Position::Leaf,
            reason: e.to_string(),
        })?
        .ok_or(VerifyError::LeafKeyUsageMissing)?;
    if !ku.value.digital_signature() {
        return Err(VerifyError::LeafNoDigitalSignature);
    }
    if ku.value.key_cert_sign() {
        return Err(VerifyError::LeafSigningUsage("keyCertSign"));
    }
    if ku.value.crl_sign() {
        return Err(VerifyError::LeafSigningUsage("cRLSign"));
    }
    Ok(id)
}

/// Verifies an SVID chain (leaf first, then intermediates) against `bundle` at time `now`.
/// Returns the leaf's SPIFFE ID.
///
/// # Errors
/// The rule that failed, and on which certificate.
pub fn verify_svid(
    chain: &[CertificateDer<'_>],
    bundle: &Bundle,
    now: SystemTime,
) -> Result<SpiffeId, VerifyError> {
    let (leaf_der, rest) = chain.split_first().ok_or(VerifyError::EmptyChain)?;
    let leaf = x509::parse(leaf_der).map_err(|reason| VerifyError::Malformed {
        at: Position::Leaf,
        reason,
    })?;
    let id = check_leaf(&leaf)?;
    if id.trust_domain() != bundle.trust_domain() {
        return Err(VerifyError::WrongTrustDomain {
            id: id.to_string(),
            bundle: bundle.trust_domain().to_string(),
        });
    }
    check_time(&leaf, Position::Leaf, now)?;

    let mut parsed = Vec::with_capacity(rest.len());
    for (i, der) in rest.iter().enumerate() {
        let at = Position::Intermediate(i + 1);
        // A presented copy of a bundle root ends the chain.
        if bundle.roots().iter().any(|r| r.as_ref() == der.as_ref()) {
            break;
        }
        let c = x509::parse(der).map_err(|reason| VerifyError::Malformed { at, reason })?;
        let plen = check_signing(&c, at, Some(bundle.trust_domain()))?;
        check_time(&c, at, now)?;
        // Number of non-leaf CA certs below this one = i.
        if plen.is_some_and(|p| (p as usize) < i) {
            return Err(VerifyError::PathLen { at });
        }
        parsed.push((at, c));
    }

    // Each certificate is signed by the next one in the chain.
    let mut child: (Position, &X509Certificate<'_>) = (Position::Leaf, &leaf);
    for (at, c) in &parsed {
        if child.1.issuer() != c.subject()
            || child.1.verify_signature(Some(c.public_key())).is_err()
        {
            return Err(VerifyError::BadSignature { at: child.0 });
        }
        child = (*at, c);
    }

    // The top of the presented chain is signed by a bundle root.
    let depth = parsed.len();
    for root_der in bundle.roots() {
        let Ok(root) = x509::parse(root_der) else {
            continue;
        };
        if child.1.issuer() != root.subject()
            || child.1.verify_signature(Some(root.public_key())).is_err()
        {
            continue;
        }
        let plen = check_signing(&root, Position::Root, Some(bundle.trust_domain()))?;
        check_time(&root, Position::Root, now)?;
        if plen.is_some_and(|p| (p as usize) < depth) {
            return Err(VerifyError::PathLen { at: Position::Root });
        }
        return Ok(id);
    }
    Err(VerifyError::UnknownIssuer(
        bundle.trust_domain().to_string(),
    ))
}

/// The SPIFFE ID in a leaf certificate (exactly one URI SAN), without verifying anything else.
///
/// # Errors
/// When the certificate cannot be parsed or does not hold exactly one SPIFFE ID.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, VerifyError> {
    let c = x509::parse(cert).map_err(|reason| VerifyError::Malformed {
        at: Position::Leaf,
        reason,
    })?;
    x509::spiffe_id(&c).map_err(VerifyError::LeafSan)
}

/// Verifies a serving certificate chain (leaf first) the way a TLS client does (webpki, with
/// the bundle's roots as the only trust anchors) for every name in `names` at `now`; a
/// wildcard name is checked with a host under it.
///
/// # Errors
/// The name and why a client would refuse the certificate.
pub fn verify_serving(
    chain: &[CertificateDer<'_>],
    bundle: &Bundle,
    names: &[String],
    now: SystemTime,
) -> Result<(), String> {
    use rustls::client::danger::ServerCertVerifier as _;
    let (leaf, rest) = chain.split_first().ok_or("empty certificate chain")?;
    let mut roots = rustls::RootCertStore::empty();
    for r in bundle.roots() {
        roots
            .add(r.clone().into_owned())
            .map_err(|e| format!("bundle root: {e}"))?;
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        crate::provider::provider(),
    )
    .build()
    .map_err(|e| format!("verifier: {e}"))?;
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|e| e.to_string())?;
    let at = rustls_pki_types::UnixTime::since_unix_epoch(secs);
    let intermediates: Vec<CertificateDer<'_>> = rest.to_vec();
    for n in names {
        let host = n
            .strip_prefix("*.")
            .map_or_else(|| n.clone(), |d| format!("wildcard-check.{d}"));
        let sn = rustls_pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("{n}: {e}"))?;
        verifier
            .verify_server_cert(leaf, &intermediates, &sn, &[], at)
            .map_err(|e| format!("{n}: {e}"))?;
    }
    Ok(())
}
