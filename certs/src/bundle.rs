//! Trust bundles: the root certificates of one trust domain, as PEM or as a SPIFFE bundle
//! (a JWK Set whose keys carry `use: "x509-svid"` and the root in `x5c`).

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};

use crate::id::TrustDomain;
use crate::rules::{Position, check_signing};
use crate::{Error, x509};

/// The roots trusted for one trust domain. During a CA rollover it holds the old and the new
/// root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    td: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
    sequence: u64,
}

impl Bundle {
    /// A bundle of `roots` for `td`. Each root must be a CA certificate whose SPIFFE ID (if it
    /// carries one) is `td`'s own ID.
    ///
    /// # Errors
    /// When a root is not a signing certificate of `td`.
    pub fn new(td: TrustDomain, roots: Vec<CertificateDer<'static>>) -> Result<Self, Error> {
        if roots.is_empty() {
            return Err(Error::Bundle(format!("bundle for {td} has no roots")));
        }
        for (i, r) in roots.iter().enumerate() {
            let c = x509::parse(r).map_err(|e| Error::Bundle(format!("root {i}: {e}")))?;
            check_signing(&c, Position::Root, Some(&td))
                .map_err(|e| Error::Bundle(format!("root {i}: {e}")))?;
        }
        Ok(Self {
            td,
            roots,
            sequence: 0,
        })
    }

    /// The trust domain.
    #[must_use]
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.td
    }

    /// The roots.
    #[must_use]
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The SPIFFE bundle sequence number.
    #[must_use]
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Sets the sequence number (increase it whenever the roots change).
    #[must_use]
    pub fn with_sequence(mut self, sequence: u64) -> Self {
        self.sequence = sequence;
        self
    }

    /// The roots as concatenated PEM.
    #[must_use]
    pub fn to_pem(&self) -> String {
        self.roots
            .iter()
            .map(|r| der_to_pem("CERTIFICATE", r))
            .collect()
    }

    /// Reads a PEM bundle for `td`.
    ///
    /// # Errors
    /// When the PEM holds no certificates, or a root is not a signing certificate of `td`.
    pub fn from_pem(td: TrustDomain, pem: &str) -> Result<Self, Error> {
        let roots = certs_from_pem(pem)?;
        Self::new(td, roots)
    }

    /// The SPIFFE bundle (JWKS) document.
    ///
    /// # Errors
    /// When a root's key is not ECDSA P-256.
    pub fn to_jwks(&self) -> Result<String, Error> {
        let mut keys = Vec::new();
        for (i, r) in self.roots.iter().enumerate() {
            let c = x509::parse(r).map_err(|e| Error::Bundle(format!("root {i}: {e}")))?;
            let point = x509::p256_point(c.public_key().raw)
                .ok_or_else(|| Error::Bundle(format!("root {i}: key is not ECDSA P-256")))?;
            keys.push(json!({
                "use": "x509-svid",
                "kty": "EC",
                "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
                "x5c": [STANDARD.encode(r.as_ref())],
            }));
        }
        let doc =
            json!({ "keys": keys, "spiffe_sequence": self.sequence, "spiffe_refresh_hint": 300 });
        serde_json::to_string_pretty(&doc).map_err(|e| Error::Bundle(e.to_string()))
    }

    /// Reads a SPIFFE bundle (JWKS) for `td`: the `x509-svid` keys' `x5c` roots. JWT keys
    /// (`use: jwt-svid`) are ignored; a key whose `x5c` does not match its `x`/`y` is rejected.
    ///
    /// # Errors
    /// When the document is malformed or a root is not a signing certificate of `td`.
    pub fn from_jwks(td: TrustDomain, json: &str) -> Result<Self, Error> {
        let doc: Value =
            serde_json::from_str(json).map_err(|e| Error::Bundle(format!("not JSON: {e}")))?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::Bundle("missing `keys` array".to_owned()))?;
        let mut roots = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match k.get("use").and_then(Value::as_str) {
                Some("x509-svid") => {}
                Some(_) => continue,
                None => return Err(Error::Bundle(format!("keys[{i}].use is missing"))),
            }
            let x5c = k
                .get("x5c")
                .and_then(Value::as_array)
                .filter(|a| a.len() == 1)
                .and_then(|a| a[0].as_str())
                .ok_or_else(|| {
                    Error::Bundle(format!("keys[{i}].x5c must hold exactly one certificate"))
                })?;
            let der = STANDARD
                .decode(x5c)
                .map_err(|e| Error::Bundle(format!("keys[{i}].x5c: {e}")))?;
            let c = x509::parse(&der).map_err(|e| Error::Bundle(format!("keys[{i}].x5c: {e}")))?;
            let point = x509::p256_point(c.public_key().raw)
                .ok_or_else(|| Error::Bundle(format!("keys[{i}]: key is not ECDSA P-256")))?;
            let field = |f: &str| {
                k.get(f)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            if field("x") != URL_SAFE_NO_PAD.encode(&point[1..33])
                || field("y") != URL_SAFE_NO_PAD.encode(&point[33..65])
            {
                return Err(Error::Bundle(format!(
                    "keys[{i}]: x/y do not match the x5c certificate's key"
                )));
            }
            drop(c);
            roots.push(CertificateDer::from(der));
        }
        let seq = doc
            .get("spiffe_sequence")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        Ok(Self::new(td, roots)?.with_sequence(seq))
    }
}

/// The SHA-256 fingerprint of a certificate's DER, lowercase hex (how nodes report the roots
/// they trust, and how a CA rollover names its roots).
#[must_use]
pub fn root_fingerprint(der: &[u8]) -> String {
    use std::fmt::Write as _;
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// PEM-encodes DER bytes with the given label.
#[must_use]
pub fn der_to_pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// All certificates in a PEM text, in order.
///
/// # Errors
/// When the text holds no certificate or a block is malformed.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Cert(format!("malformed PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Cert("no CERTIFICATE block in PEM".to_owned()));
    }
    Ok(certs)
}
