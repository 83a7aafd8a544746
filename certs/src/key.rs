//! ECDSA P-256 private keys: generated where they are used, zeroized on drop, never printed.

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

use crate::Error;

/// An ECDSA P-256 private key (PKCS#8). `Debug` prints `<redacted>`; the bytes are zeroized on
/// drop.
pub struct PrivateKey {
    pkcs8: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl Clone for PrivateKey {
    fn clone(&self) -> Self {
        Self {
            pkcs8: self.pkcs8.clone(),
        }
    }
}

impl PrivateKey {
    /// Generates a new P-256 key.
    ///
    /// # Errors
    /// When the system random source fails.
    pub fn generate() -> Result<Self, Error> {
        let kp = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| Error::Crypto(e.to_string()))?;
        Ok(Self {
            pkcs8: Zeroizing::new(kp.serialize_der()),
        })
    }

    /// Reads a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) P-256 key.
    ///
    /// # Errors
    /// When the PEM is not a PKCS#8 ECDSA P-256 key.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        use rustls_pki_types::pem::PemObject;
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| Error::Key(format!("not a PKCS#8 PEM private key: {e}")))?;
        Self::from_pkcs8_der(der.secret_pkcs8_der())
    }

    /// Reads a PKCS#8 DER P-256 key.
    ///
    /// # Errors
    /// When the bytes are not a PKCS#8 ECDSA P-256 key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, Error> {
        let der = Zeroizing::new(der.to_vec());
        let pk = PrivatePkcs8KeyDer::from(der.as_slice());
        KeyPair::from_pkcs8_der_and_sign_algo(&pk, &PKCS_ECDSA_P256_SHA256)
            .map_err(|e| Error::Key(format!("not an ECDSA P-256 PKCS#8 key: {e}")))?;
        Ok(Self { pkcs8: der })
    }

    /// The key as PKCS#8 PEM (zeroized when dropped).
    #[must_use]
    pub fn to_pem(&self) -> Zeroizing<String> {
        let b64 = Zeroizing::new(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            &*self.pkcs8,
        ));
        let mut out = Zeroizing::new(String::from("-----BEGIN PRIVATE KEY-----\n"));
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END PRIVATE KEY-----\n");
        out
    }

    /// The PKCS#8 DER bytes, for signing inside this crate.
    pub(crate) fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// An rcgen key pair for signing.
    pub(crate) fn key_pair(&self) -> Result<KeyPair, Error> {
        let pk = PrivatePkcs8KeyDer::from(self.pkcs8.as_slice());
        KeyPair::from_pkcs8_der_and_sign_algo(&pk, &PKCS_ECDSA_P256_SHA256)
            .map_err(|e| Error::Key(e.to_string()))
    }

    /// The SubjectPublicKeyInfo (DER) of the key.
    ///
    /// # Errors
    /// Never for a key this type accepted.
    pub fn public_key_der(&self) -> Result<Vec<u8>, Error> {
        Ok(rcgen::PublicKeyData::subject_public_key_info(
            &self.key_pair()?,
        ))
    }

    /// The key for rustls.
    #[must_use]
    pub fn to_rustls(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pkcs8.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted_and_pem_round_trips() {
        let k = PrivateKey::generate().unwrap();
        assert_eq!(format!("{k:?}"), "PrivateKey(<redacted>)");
        let pem = k.to_pem();
        let k2 = PrivateKey::from_pem(&pem).unwrap();
        assert_eq!(k.public_key_der().unwrap(), k2.public_key_der().unwrap());
    }

    #[test]
    fn rejects_other_key_types() {
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let err = PrivateKey::from_pkcs8_der(&ed.serialize_der()).unwrap_err();
        assert!(err.to_string().contains("P-256"), "{err}");
    }
}
