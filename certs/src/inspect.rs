//! Human-readable summaries of certificates (for `identityd svid inspect`).

use rustls_pki_types::CertificateDer;
use serde::Serialize;

use crate::x509;

/// What `svid inspect` shows of one certificate.
#[derive(Debug, Clone, Serialize)]
pub struct CertInfo {
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Serial number (hex).
    pub serial: String,
    /// notBefore, RFC 3339.
    pub not_before: String,
    /// notAfter, RFC 3339.
    pub not_after: String,
    /// notAfter, Unix seconds.
    pub not_after_unix: i64,
    /// URI SANs.
    pub uris: Vec<String>,
    /// basicConstraints cA.
    pub is_ca: bool,
    /// keyUsage flags set.
    pub key_usage: Vec<&'static str>,
    /// Key algorithm.
    pub key: &'static str,
}

/// `t` as RFC 3339 (UTC), e.g. `2026-11-26T13:03:14Z`.
#[must_use]
pub fn rfc3339(t: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Parses an RFC 3339 time (as [`rfc3339`] writes it); `None` when it is not one.
#[must_use]
pub fn parse_rfc3339(s: &str) -> Option<std::time::SystemTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(std::time::SystemTime::from)
}

/// Summarises a certificate.
///
/// # Errors
/// When it cannot be parsed.
pub fn describe(der: &CertificateDer<'_>) -> Result<CertInfo, crate::Error> {
    let c = x509::parse(der).map_err(crate::Error::Cert)?;
    let sans = x509::sans(&c).map_err(crate::Error::Cert)?;
    let (nb, na) = x509::validity(&c);
    let mut key_usage = Vec::new();
    if let Ok(Some(ku)) = c.key_usage() {
        let k = ku.value;
        for (set, name) in [
            (k.digital_signature(), "digitalSignature"),
            (k.key_encipherment(), "keyEncipherment"),
            (k.key_agreement(), "keyAgreement"),
            (k.key_cert_sign(), "keyCertSign"),
            (k.crl_sign(), "cRLSign"),
        ] {
            if set {
                key_usage.push(name);
            }
        }
    }
    Ok(CertInfo {
        subject: c.subject().to_string(),
        issuer: c.issuer().to_string(),
        serial: c.raw_serial_as_string(),
        not_before: rfc3339(nb),
        not_after: rfc3339(na),
        not_after_unix: c.validity().not_after.timestamp(),
        uris: sans.uris,
        is_ca: c.is_ca(),
        key_usage,
        key: if x509::is_p256_spki(c.public_key().raw) {
            "ECDSA P-256"
        } else {
            "other"
        },
    })
}

/// The trust domain named by a root's URI SAN (`spiffe://<td>`), if it carries one.
#[must_use]
pub fn root_trust_domain(der: &CertificateDer<'_>) -> Option<crate::TrustDomain> {
    let c = x509::parse(der).ok()?;
    let sans = x509::sans(&c).ok()?;
    sans.uris
        .iter()
        .find_map(|u| crate::TrustDomain::new(u).ok())
}
