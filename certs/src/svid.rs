//! X.509-SVIDs: a certificate chain (leaf first) and its private key; CSRs for them.

use std::path::Path;
use std::time::SystemTime;

use rcgen::{CertificateParams, DistinguishedName, DnType, SanType};
use rustls_pki_types::CertificateDer;

use crate::bundle::{certs_from_pem, der_to_pem};
use crate::fsutil::{read_string, write_atomic};
use crate::id::SpiffeId;
use crate::key::PrivateKey;
use crate::{Error, x509};

/// An X.509-SVID with its private key. `Debug` never prints the key.
#[derive(Clone)]
pub struct Svid {
    id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKey,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("id", &self.id.to_string())
            .field("chain_len", &self.chain.len())
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Svid {
    /// Assembles an SVID from a chain (leaf first) and the leaf's private key.
    ///
    /// # Errors
    /// When the leaf cannot be parsed, holds no single SPIFFE ID, or the key does not match it.
    pub fn from_parts(chain: Vec<CertificateDer<'static>>, key: PrivateKey) -> Result<Self, Error> {
        let leaf_der = chain
            .first()
            .ok_or_else(|| Error::Cert("empty chain".to_owned()))?;
        let leaf = x509::parse(leaf_der).map_err(Error::Cert)?;
        let id = x509::spiffe_id(&leaf).map_err(Error::Cert)?;
        if leaf.public_key().raw != key.public_key_der()?.as_slice() {
            return Err(Error::Key(
                "private key does not match the leaf certificate".to_owned(),
            ));
        }
        let (not_before, not_after) = x509::validity(&leaf);
        drop(leaf);
        Ok(Self {
            id,
            chain,
            key,
            not_before,
            not_after,
        })
    }

    /// The SPIFFE ID.
    #[must_use]
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The chain, leaf first.
    #[must_use]
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The leaf certificate.
    #[must_use]
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// The private key.
    #[must_use]
    pub fn key(&self) -> &PrivateKey {
        &self.key
    }

    /// Start of validity.
    #[must_use]
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of validity.
    #[must_use]
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The chain as PEM, leaf first.
    #[must_use]
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| der_to_pem("CERTIFICATE", c))
            .collect()
    }

    /// Writes `svid.pem` (0644) and `key.pem` (0600) into `dir`, atomically.
    ///
    /// # Errors
    /// Any I/O failure.
    pub fn write_to_dir(&self, dir: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io {
            path: dir.to_path_buf(),
            source: std::sync::Arc::new(e),
        })?;
        write_atomic(&dir.join("key.pem"), self.key.to_pem().as_bytes(), 0o600)?;
        write_atomic(&dir.join("svid.pem"), self.chain_pem().as_bytes(), 0o644)
    }

    /// Reads `svid.pem` and `key.pem` from `dir`.
    ///
    /// # Errors
    /// When a file is missing or does not hold a matching chain and key.
    pub fn read_from_dir(dir: &Path) -> Result<Self, Error> {
        let chain = certs_from_pem(&read_string(&dir.join("svid.pem"))?)?;
        let key = PrivateKey::from_pem(&read_string(&dir.join("key.pem"))?)?;
        Self::from_parts(chain, key)
    }
}

/// A PKCS#10 CSR (DER) for `id`, signed with `key`: one URI SAN, no other extension.
///
/// # Errors
/// When signing fails.
pub fn csr_for(id: &SpiffeId, key: &PrivateKey) -> Result<Vec<u8>, Error> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "identityd");
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(
        id.to_string()
            .try_into()
            .map_err(|e: rcgen::Error| Error::Csr(e.to_string()))?,
    )];
    let kp = key.key_pair()?;
    let csr = params
        .serialize_request(&kp)
        .map_err(|e| Error::Csr(e.to_string()))?;
    Ok(csr.der().to_vec())
}
