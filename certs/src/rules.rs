//! The X.509-SVID rules shared by chain verification ([`crate::verify`]) and bundle loading
//! ([`crate::bundle`]): which certificate a rule failed on, the typed failure, and the rules of
//! signing certificates (roots and intermediates).

use x509_parser::certificate::X509Certificate;

use crate::id::SpiffeId;
use crate::x509;

/// Which certificate of a chain a rule failed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The leaf (the SVID itself).
    Leaf,
    /// An intermediate, by index in the presented chain (1 = the first after the leaf).
    Intermediate(usize),
    /// A root of the bundle.
    Root,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Leaf => f.write_str("leaf"),
            Self::Intermediate(i) => write!(f, "chain certificate {i}"),
            Self::Root => f.write_str("bundle root"),
        }
    }
}

/// Why an SVID chain was rejected: the rule that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// No certificate was presented.
    #[error("empty certificate chain")]
    EmptyChain,
    /// A certificate could not be parsed.
    #[error("{at}: {reason}")]
    Malformed {
        /// Where.
        at: Position,
        /// Why.
        reason: String,
    },
    /// The leaf's URI SAN rule failed (none, several, or not a SPIFFE ID).
    #[error("leaf: {0}")]
    LeafSan(String),
    /// The leaf's SPIFFE ID has no path.
    #[error("leaf: SPIFFE ID {0} has no path (a leaf SVID must identify a workload)")]
    LeafIdWithoutPath(String),
    /// The leaf has `cA=true`.
    #[error("leaf: basicConstraints cA=true (a leaf SVID must have cA=false)")]
    LeafIsCa,
    /// The leaf has no keyUsage extension.
    #[error("leaf: keyUsage extension missing (must be present with digitalSignature)")]
    LeafKeyUsageMissing,
    /// The leaf's keyUsage lacks digitalSignature.
    #[error("leaf: keyUsage lacks digitalSignature")]
    LeafNoDigitalSignature,
    /// The leaf's keyUsage has keyCertSign or cRLSign.
    #[error("leaf: keyUsage has {0} (not allowed on a leaf SVID)")]
    LeafSigningUsage(&'static str),
    /// A signing certificate lacks `cA=true`.
    #[error("{0}: not a CA certificate (basicConstraints cA=true required)")]
    NotCa(Position),
    /// A signing certificate lacks keyCertSign.
    #[error("{0}: keyUsage lacks keyCertSign")]
    NoKeyCertSign(Position),
    /// A signing certificate carries a SPIFFE ID with a path, or of another trust domain.
    #[error(
        "{at}: signing certificate SPIFFE ID {id} must be the trust domain's ID without a path"
    )]
    SigningId {
        /// Where.
        at: Position,
        /// The ID found.
        id: String,
    },
    /// The leaf's trust domain is not the bundle's.
    #[error("SPIFFE ID {id} is not in the bundle's trust domain {bundle}")]
    WrongTrustDomain {
        /// The leaf's ID.
        id: String,
        /// The bundle's trust domain.
        bundle: String,
    },
    /// A certificate is expired at the verification time.
    #[error("{at}: expired (not after {not_after})")]
    Expired {
        /// Where.
        at: Position,
        /// Its notAfter, RFC 3339.
        not_after: String,
    },
    /// A certificate is not yet valid at the verification time.
    #[error("{at}: not yet valid (not before {not_before})")]
    NotYetValid {
        /// Where.
        at: Position,
        /// Its notBefore, RFC 3339.
        not_before: String,
    },
    /// A certificate's signature does not verify with the next certificate's key.
    #[error("{at}: signature does not verify against its issuer in the chain")]
    BadSignature {
        /// Where.
        at: Position,
    },
    /// A path-length constraint was exceeded.
    #[error("{at}: pathLenConstraint exceeded")]
    PathLen {
        /// Where.
        at: Position,
    },
    /// No root of the bundle signed the chain.
    #[error("chain does not lead to a root of the bundle for trust domain {0}")]
    UnknownIssuer(String),
}

/// Checks the signing-certificate rules. Returns the pathLenConstraint, if any.
pub(crate) fn check_signing(
    c: &X509Certificate<'_>,
    at: Position,
    td: Option<&crate::id::TrustDomain>,
) -> Result<Option<u32>, VerifyError> {
    let bc = c
        .basic_constraints()
        .map_err(|e| VerifyError::Malformed {
            at,
            reason: e.to_string(),
        })?
        .filter(|b| b.value.ca)
        .ok_or(VerifyError::NotCa(at))?;
    let ku = c.key_usage().map_err(|e| VerifyError::Malformed {
        at,
        reason: e.to_string(),
    })?;
    if !ku.is_some_and(|k| k.value.key_cert_sign()) {
        return Err(VerifyError::NoKeyCertSign(at));
    }
    let sans = x509::sans(c).map_err(|reason| VerifyError::Malformed { at, reason })?;
    for u in &sans.uris {
        let ok = SpiffeId::parse(u)
            .is_ok_and(|id| id.is_trust_domain_id() && td.is_none_or(|td| id.trust_domain() == td));
        if !ok {
            return Err(VerifyError::SigningId { at, id: u.clone() });
        }
    }
    Ok(bc.value.path_len_constraint)
}
