//! Data signed by an SVID's key and verified against a trust bundle: how a node proves that an
//! object it publishes (its WireGuard key, addresses) comes from it.
//!
//! The signature is ECDSA P-256 with SHA-256 (ASN.1 DER), by the private key of an X.509-SVID;
//! the verifier checks the SVID chain against the bundle at a given time (the X.509-SVID rules
//! of [`verify_svid`]) and then the signature with the leaf's public key. Callers put a
//! context label of their own at the start of `message` (domain separation).

use std::time::SystemTime;

use ring::signature::{ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use rustls_pki_types::CertificateDer;

use crate::verify::{VerifyError, verify_svid};
use crate::{Bundle, Error, SpiffeId, Svid, x509};

/// Why signed data was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignedError {
    /// The SVID chain does not verify against the bundle at that time.
    #[error("the signer's SVID does not verify: {0}")]
    Chain(#[from] VerifyError),
    /// The leaf's key is not an ECDSA P-256 key.
    #[error("the signer's certificate has no ECDSA P-256 key")]
    KeyType,
    /// The signature does not match the data and the leaf's key.
    #[error("the signature does not match the signed data")]
    BadSignature,
}

/// Signs `message` with `svid`'s private key.
///
/// # Errors
/// A key ring cannot load (never for keys this crate made) or a failed random source.
pub fn sign(svid: &Svid, message: &[u8]) -> Result<Vec<u8>, Error> {
    let rng = ring::rand::SystemRandom::new();
    let kp = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_ASN1_SIGNING,
        svid.key().pkcs8_der(),
        &rng,
    )
    .map_err(|e| Error::Crypto(format!("load the SVID key: {e}")))?;
    kp.sign(&rng, message)
        .map(|s| s.as_ref().to_vec())
        .map_err(|e| Error::Crypto(format!("sign: {e}")))
}

/// Verifies that `signature` over `message` was made by the key of the SVID `chain`, which
/// verifies against `bundle` at `now`. Returns the signer's SPIFFE ID.
///
/// # Errors
/// [`SignedError`]: the chain, the key type or the signature.
pub fn verify(
    chain: &[CertificateDer<'_>],
    bundle: &Bundle,
    now: SystemTime,
    message: &[u8],
    signature: &[u8],
) -> Result<SpiffeId, SignedError> {
    let id = verify_svid(chain, bundle, now)?;
    let leaf = chain.first().ok_or(VerifyError::EmptyChain)?;
    let cert = x509::parse(leaf).map_err(|_| SignedError::KeyType)?;
    let point = x509::p256_point(cert.public_key().raw).ok_or(SignedError::KeyType)?;
    ring::signature::UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
        .verify(message, signature)
        .map_err(|_| SignedError::BadSignature)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Ca, CaOptions, TrustDomain};

    fn new_ca() -> (tempfile::TempDir, Ca, Bundle) {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let ca = Ca::init(
            dir.path(),
            TrustDomain::new("lab.local").unwrap(),
            CaOptions::default(),
            now,
        )
        .unwrap();
        let bundle = ca.bundle(now);
        (dir, ca, bundle)
    }

    #[test]
    fn a_signature_verifies_only_for_its_message_and_under_its_bundle() {
        let (_d, ca, bundle) = new_ca();
        let now = SystemTime::now();
        let id = SpiffeId::parse("spiffe://lab.local/identityd/node/n1").unwrap();
        let svid = ca.issue(&id, Duration::from_secs(3600), now).unwrap();
        let sig = sign(&svid, b"ctx\0hello").unwrap();
        assert_eq!(
            verify(svid.chain(), &bundle, now, b"ctx\0hello", &sig).unwrap(),
            id
        );
        assert_eq!(
            verify(svid.chain(), &bundle, now, b"ctx\0hellO", &sig),
            Err(SignedError::BadSignature)
        );
        let (_d2, _, other) = new_ca();
        assert!(matches!(
            verify(svid.chain(), &other, now, b"ctx\0hello", &sig),
            Err(SignedError::Chain(_))
        ));
        // Another SVID of the same CA cannot claim the signature.
        let id2 = SpiffeId::parse("spiffe://lab.local/identityd/node/n2").unwrap();
        let svid2 = ca.issue(&id2, Duration::from_secs(3600), now).unwrap();
        assert_eq!(
            verify(svid2.chain(), &bundle, now, b"ctx\0hello", &sig),
            Err(SignedError::BadSignature)
        );
        // An expired signer is refused.
        let later = now + Duration::from_secs(7200);
        assert!(matches!(
            verify(svid.chain(), &bundle, later, b"ctx\0hello", &sig),
            Err(SignedError::Chain(_))
        ));
    }
}
