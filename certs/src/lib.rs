//! SPIFFE identity core for identityd.
//!
//! What this crate promises:
//! - [`SpiffeId`] and [`TrustDomain`] parse exactly per the SPIFFE-ID spec; errors name the rule.
//! - [`Ca`]: a self-signed ECDSA P-256 root (optionally with an intermediate), persisted to a
//!   directory (keys 0600, atomic writes), reloadable, with root rollover (the bundle holds the
//!   old and the new root during an overlap window).
//! - X.509-SVIDs issued from CSRs (the workload key never reaches the CA) following the
//!   X.509-SVID spec; TTL capped by the configured maximum and the CA's remaining lifetime.
//! - [`verify_svid`]: chain verification against a [`Bundle`] with the same rules; a rejection
//!   says which rule failed.
//! - Bundles as PEM and as SPIFFE bundles (JWKS, `use: x509-svid`).
//! - [`rotation`]: refresh at 50% ± 10% of lifetime, clamped; keeps the last good SVID.
//! - [`tls`]: rustls client/server configs whose verifiers check the peer's SPIFFE ID.
//! - [`service`]: the CA's gRPC issuance service (join tokens → node SVIDs; node-authorized
//!   workload SVIDs over mTLS) and its client.
//!
//! Private keys are zeroized on drop and never appear in `Debug` output or logs.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod ca;
pub mod duration;
pub mod fsutil;
pub mod id;
pub mod inspect;
pub mod key;
mod provider;
pub mod rotation;
mod rules;
pub mod service;
pub mod serving;
pub mod signed;
pub mod svid;
pub mod tls;
pub mod verify;
mod x509;

use std::path::PathBuf;
use std::sync::Arc;

pub use bundle::Bundle;
pub use ca::{Ca, CaOptions};
pub use id::{IdError, SpiffeId, TrustDomain};
pub use key::PrivateKey;
pub use serving::ServingCert;
pub use svid::Svid;
pub use verify::{VerifyError, verify_svid};

/// Errors of CA operations, issuance and file handling.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A SPIFFE ID or trust domain is invalid.
    #[error("invalid SPIFFE ID: {0}")]
    Id(#[from] IdError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A private key is unusable.
    #[error("private key: {0}")]
    Key(String),
    /// A certificate could not be parsed or does not have the expected form.
    #[error("certificate: {0}")]
    Cert(String),
    /// A CSR was rejected; the reason names the rule.
    #[error("CSR rejected: {0}")]
    Csr(String),
    /// The requested SPIFFE ID belongs to another trust domain than the CA's.
    #[error("SPIFFE ID {id} is not in the CA's trust domain {ca}")]
    ForeignTrustDomain {
        /// The requested ID.
        id: String,
        /// The CA's trust domain.
        ca: String,
    },
    /// A TTL or lifetime is unusable.
    #[error("ttl: {0}")]
    Ttl(String),
    /// The CA directory is missing something or is inconsistent.
    #[error("CA directory {dir}: {reason}")]
    CaDir {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A bundle is malformed or belongs to another trust domain.
    #[error("bundle: {0}")]
    Bundle(String),
    /// A crypto primitive failed.
    #[error("crypto: {0}")]
    Crypto(String),
    /// Building a TLS configuration failed.
    #[error("tls: {0}")]
    Tls(String),
}
