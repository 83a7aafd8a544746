//! Reading the X.509 fields that the X.509-SVID rules talk about.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::id::SpiffeId;

/// DER prefix of a SubjectPublicKeyInfo for an uncompressed ECDSA P-256 key
/// (id-ecPublicKey, prime256v1, BIT STRING of 66 bytes).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// True when `spki` is an ECDSA P-256 public key.
pub(crate) fn is_p256_spki(spki: &[u8]) -> bool {
    spki.len() == P256_SPKI_PREFIX.len() + 65
        && spki.starts_with(&P256_SPKI_PREFIX)
        && spki[26] == 0x04
}

/// The uncompressed point (0x04 || x || y) of a P-256 SPKI.
pub(crate) fn p256_point(spki: &[u8]) -> Option<&[u8]> {
    is_p256_spki(spki).then(|| &spki[P256_SPKI_PREFIX.len()..])
}

/// Parses a DER certificate, requiring no trailing bytes.
pub(crate) fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match X509Certificate::from_der(der) {
        Ok(([], c)) => Ok(c),
        Ok(_) => Err("trailing bytes after the certificate".to_owned()),
        Err(e) => Err(format!("not a DER X.509 certificate: {e}")),
    }
}

/// The URI SANs of a certificate, and whether it has SANs of other types.
pub(crate) struct Sans {
    pub uris: Vec<String>,
    pub others: usize,
}

pub(crate) fn sans(c: &X509Certificate<'_>) -> Result<Sans, String> {
    let mut out = Sans {
        uris: Vec::new(),
        others: 0,
    };
    match c.subject_alternative_name() {
        Ok(Some(san)) => {
            for n in &san.value.general_names {
                match n {
                    GeneralName::URI(u) => out.uris.push((*u).to_owned()),
                    _ => out.others += 1,
                }
            }
        }
        Ok(None) => {}
        Err(e) => return Err(format!("unreadable subjectAltName: {e}")),
    }
    Ok(out)
}

/// The DNS SANs of a certificate (unreadable SANs give none).
pub(crate) fn dns_names(c: &X509Certificate<'_>) -> Vec<String> {
    match c.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The single SPIFFE ID of a certificate (exactly one URI SAN), if it has one.
pub(crate) fn spiffe_id(c: &X509Certificate<'_>) -> Result<SpiffeId, String> {
    let s = sans(c)?;
    match s.uris.as_slice() {
        [one] => {
            SpiffeId::parse(one).map_err(|e| format!("URI SAN {one:?} is not a SPIFFE ID: {e}"))
        }
        [] => Err("no URI SAN (an X.509-SVID has exactly one)".to_owned()),
        many => Err(format!(
            "{} URI SANs (an X.509-SVID has exactly one): {many:?}",
            many.len()
        )),
    }
}

pub(crate) fn to_system_time(t: &x509_parser::time::ASN1Time) -> SystemTime {
    let ts = t.timestamp();
    if ts >= 0 {
        UNIX_EPOCH + Duration::from_secs(ts.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(ts.unsigned_abs())
    }
}

/// (not_before, not_after)
pub(crate) fn validity(c: &X509Certificate<'_>) -> (SystemTime, SystemTime) {
    (
        to_system_time(&c.validity().not_before),
        to_system_time(&c.validity().not_after),
    )
}
