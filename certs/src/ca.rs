//! The certificate authority: a self-signed ECDSA P-256 root, optionally an intermediate that
//! does the signing, persisted to a directory and reloadable; root rollover with an overlap
//! window; X.509-SVID issuance from CSRs.
//!
//! Directory layout (`dir` is created 0700):
//! `ca.json` (settings and rollover state), `root.pem`, `root.key` (0600),
//! `intermediate.pem` + `intermediate.key` (0600) when an intermediate is used,
//! `previous-root.pem` (the previous roots still in their overlap, oldest first) during a
//! rollover overlap, `next-root.pem` + `next-root.key` (0600, and
//! `next-intermediate.*`) while a rollover is announced, and `bundle.pem` / `bundle.json` (the
//! trust bundle as PEM and as a SPIFFE bundle) for distribution.
//!
//! A rollover has two steps so that no SVID signed under a new root reaches a peer that does
//! not trust it yet: [`Ca::stage_next_root`] puts a new root in the bundle while the current
//! one keeps signing; [`Ca::promote_next_root`] (once every relying party holds the new bundle)
//! makes it the signer and keeps the old root in the bundle for the overlap.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::bundle::{Bundle, certs_from_pem, der_to_pem};
use crate::fsutil::{read_string, write_atomic};
use crate::id::{SpiffeId, TrustDomain};
use crate::key::PrivateKey;
use crate::svid::{Svid, csr_for};
use crate::{Error, x509};

/// Clock skew tolerance: certificates start this long before the issuance time.
pub const BACKDATE: Duration = Duration::from_secs(30);

/// Settings of a CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaOptions {
    /// Longest SVID lifetime the CA grants, whatever is requested.
    #[serde(with = "secs")]
    pub max_svid_ttl: Duration,
    /// Lifetime of a root (on init and on rollover).
    #[serde(with = "secs")]
    pub root_ttl: Duration,
    /// Sign SVIDs with an intermediate under the root (the root key then only signs
    /// intermediates).
    pub intermediate: bool,
    /// Lifetime of the intermediate.
    #[serde(with = "secs")]
    pub intermediate_ttl: Duration,
}

impl Default for CaOptions {
    fn default() -> Self {
        Self {
            max_svid_ttl: Duration::from_secs(24 * 3600),
            root_ttl: Duration::from_secs(365 * 24 * 3600),
            intermediate: false,
            intermediate_ttl: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct CaState {
    trust_domain: String,
    options: CaOptions,
    /// Unix seconds until which the previous root stays in the bundle (the newest one, when
    /// several are in their overlap).
    previous_root_until: Option<u64>,
    /// Unix seconds until which each previous root of `previous-root.pem` stays (absent in
    /// files written before there could be several: one root, `previous_root_until`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    previous_roots_until: Vec<u64>,
    bundle_sequence: u64,
    /// A next root is staged (`next-root.*`).
    #[serde(default)]
    next_root: bool,
}

/// A certificate and its key.
struct Signer {
    cert: CertificateDer<'static>,
    key: PrivateKey,
    issuer: Issuer<'static, KeyPair>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl Signer {
    fn new(cert: CertificateDer<'static>, key: PrivateKey) -> Result<Self, Error> {
        let c = x509::parse(&cert).map_err(Error::Cert)?;
        if c.public_key().raw != key.public_key_der()?.as_slice() {
            return Err(Error::Key(
                "CA key does not match its certificate".to_owned(),
            ));
        }
        let (not_before, not_after) = x509::validity(&c);
        drop(c);
        let issuer = Issuer::from_ca_cert_der(&cert, key.key_pair()?)
            .map_err(|e| Error::Cert(e.to_string()))?;
        Ok(Self {
            cert,
            key,
            issuer,
            not_before,
            not_after,
        })
    }
}

/// A SPIFFE certificate authority for one trust domain. Holds private keys: `Debug` prints
/// none of them.
pub struct Ca {
    td: TrustDomain,
    options: CaOptions,
    root: Signer,
    intermediate: Option<Signer>,
    /// Earlier roots still in the bundle, each until its overlap ends (oldest first): a
    /// rollover during another's overlap keeps both.
    previous_roots: Vec<(CertificateDer<'static>, SystemTime)>,
    /// The announced next root (and its intermediate): in the bundle, not signing yet.
    next: Option<(Signer, Option<Signer>)>,
    sequence: u64,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.td.as_str())
            .field("intermediate", &self.intermediate.is_some())
            .field("previous_roots", &self.previous_roots.len())
            .field("next_root", &self.next.is_some())
            .field("keys", &"<redacted>")
            .finish_non_exhaustive()
    }
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // no leading zero byte, always 16 bytes
    SerialNumber::from_slice(&b)
}

fn odt(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn signing_params(
    td: &TrustDomain,
    cn: &str,
    path_len: u8,
    nb: SystemTime,
    na: SystemTime,
) -> Result<CertificateParams, Error> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "identityd");
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.subject_alt_names = vec![SanType::URI(
        td.id()
            .to_string()
            .try_into()
            .map_err(|e: rcgen::Error| Error::Cert(e.to_string()))?,
    )];
    p.not_before = odt(nb);
    p.not_after = odt(na);
    p.serial_number = Some(random_serial());
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

fn new_root(td: &TrustDomain, opts: &CaOptions, now: SystemTime) -> Result<Signer, Error> {
    let key = PrivateKey::generate()?;
    let path_len = u8::from(opts.intermediate);
    let mut p = signing_params(
        td,
        &format!("identityd root {td}"),
        path_len,
        now - BACKDATE,
        now + opts.root_ttl,
    )?;
    // A self-signed root has no authority key identifier of its own issuer to point at.
    p.use_authority_key_identifier_extension = false;
    let cert = p
        .self_signed(&key.key_pair()?)
        .map_err(|e| Error::Cert(e.to_string()))?;
    Signer::new(cert.der().clone(), key)
}

fn new_intermediate(
    td: &TrustDomain,
    opts: &CaOptions,
    root: &Signer,
    now: SystemTime,
) -> Result<Signer, Error> {
    let key = PrivateKey::generate()?;
    let na = (now + opts.intermediate_ttl).min(root.not_after);
    let p = signing_params(
        td,
        &format!("identityd intermediate {td}"),
        0,
        now - BACKDATE,
        na,
    )?;
    let cert = p
        .signed_by(&key.key_pair()?, &root.issuer)
        .map_err(|e| Error::Cert(e.to_string()))?;
    Signer::new(cert.der().clone(), key)
}

fn dir_err(dir: &Path, reason: impl Into<String>) -> Error {
    Error::CaDir {
        dir: dir.to_path_buf(),
        reason: reason.into(),
    }
}

/// The SubjectPublicKeyInfo of a CSR after checking it against the X.509-SVID rules for `id`.
fn check_csr(csr_der: &[u8], id: &SpiffeId) -> Result<Vec<u8>, Error> {
    check_csr_with(csr_der, "an SVID leaf", |names| {
        let mut uris = Vec::new();
        let mut others = Vec::new();
        for n in names {
            match n {
                GeneralName::URI(u) => uris.push((*u).to_owned()),
                other => others.push(format!("{other}")),
            }
        }
        if !others.is_empty() {
            return Err(Error::Csr(format!(
                "subjectAltName: only one URI SAN is allowed, found other SANs {others:?}"
            )));
        }
        if uris.len() > 1 {
            return Err(Error::Csr(format!(
                "subjectAltName: exactly one URI SAN is allowed, found {}: {uris:?}",
                uris.len()
            )));
        }
        if let Some(u) = uris.first()
            && *u != id.to_string()
        {
            return Err(Error::Csr(format!(
                "subjectAltName: requests {u}, but the authorized ID is {id}"
            )));
        }
        Ok(())
    })
}

/// Checks a serving-certificate CSR: DER, proof of possession, P-256, and the DNS SANs it
/// requests (if any) exactly `names` with no other SAN type. Returns the SPKI (DER).
fn check_serving_csr(csr_der: &[u8], names: &[String]) -> Result<Vec<u8>, Error> {
    check_csr_with(csr_der, "a serving certificate", |general| {
        let mut dns = Vec::new();
        for n in general {
            match n {
                GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                other => {
                    return Err(Error::Csr(format!(
                        "subjectAltName: a serving certificate carries DNS names only, found {other}"
                    )));
                }
            }
        }
        let mut want = names.to_vec();
        want.sort();
        dns.sort();
        if dns != want {
            return Err(Error::Csr(format!(
                "subjectAltName: requests {dns:?}, but the authorized names are {want:?}"
            )));
        }
        Ok(())
    })
}

/// The rules every CSR follows: DER with nothing after it, a signature that verifies (proof
/// of possession), an ECDSA P-256 key, no CA flags; `san` judges the requested SANs (`leaf`
/// names the certificate in errors). Anything else requested is ignored: the CA sets the
/// certificate's extensions itself. Returns the SPKI (DER).
fn check_csr_with(
    csr_der: &[u8],
    leaf: &str,
    san: impl Fn(&[GeneralName<'_>]) -> Result<(), Error>,
) -> Result<Vec<u8>, Error> {
    let (rest, csr) = X509CertificationRequest::from_der(csr_der)
        .map_err(|e| Error::Csr(format!("not a DER PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(Error::Csr("trailing bytes after the request".to_owned()));
    }
    csr.verify_signature().map_err(|_| {
        Error::Csr("signature does not verify (no proof of possession of the key)".to_owned())
    })?;
    let spki = csr.certification_request_info.subject_pki.raw;
    if !x509::is_p256_spki(spki) {
        return Err(Error::Csr(format!(
            "key type: expected ECDSA P-256, got algorithm {}",
            csr.certification_request_info
                .subject_pki
                .algorithm
                .algorithm
        )));
    }
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            match ext {
                ParsedExtension::SubjectAlternativeName(names) => san(&names.general_names)?,
                ParsedExtension::BasicConstraints(bc) if bc.ca => {
                    return Err(Error::Csr(format!(
                        "basicConstraints: cA=true requested; {leaf} cannot be a CA"
                    )));
                }
                ParsedExtension::KeyUsage(ku) if ku.key_cert_sign() || ku.crl_sign() => {
                    return Err(Error::Csr(
                        "keyUsage: keyCertSign/cRLSign requested; not allowed on a leaf".to_owned(),
                    ));
                }
                _ => {}
            }
        }
    }
    Ok(spki.to_vec())
}

impl Ca {
    /// Creates a new CA in `dir` (which must not already hold one).
    ///
    /// # Errors
    /// When `dir` already holds a CA, or files cannot be written.
    pub fn init(
        dir: &Path,
        td: TrustDomain,
        options: CaOptions,
        now: SystemTime,
    ) -> Result<Self, Error> {
        if dir.join("ca.json").exists() {
            return Err(dir_err(
                dir,
                "already holds a CA (ca.json exists); refusing to overwrite it",
            ));
        }
        if options.max_svid_ttl.is_zero() || options.root_ttl.is_zero() {
            return Err(Error::Ttl(
                "max_svid_ttl and root_ttl must be > 0".to_owned(),
            ));
        }
        create_private_dir(dir)?;
        let root = new_root(&td, &options, now)?;
        let intermediate = if options.intermediate {
            Some(new_intermediate(&td, &options, &root, now)?)
        } else {
            None
        };
        let ca = Self {
            td,
            options,
            root,
            intermediate,
            previous_roots: Vec::new(),
            next: None,
            sequence: 1,
        };
        ca.save(dir, now)?;
        Ok(ca)
    }

    /// Loads a CA from `dir`.
    ///
    /// # Errors
    /// When files are missing, unreadable or inconsistent.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let state: CaState = serde_json::from_str(&read_string(&dir.join("ca.json"))?)
            .map_err(|e| dir_err(dir, format!("ca.json: {e}")))?;
        let td = TrustDomain::new(&state.trust_domain)?;
        let load_signer = |name: &str| -> Result<Signer, Error> {
            let cert = certs_from_pem(&read_string(&dir.join(format!("{name}.pem")))?)?
                .into_iter()
                .next()
                .ok_or_else(|| dir_err(dir, format!("{name}.pem is empty")))?;
            let key = PrivateKey::from_pem(&read_string(&dir.join(format!("{name}.key")))?)?;
            Signer::new(cert, key)
        };
        let root = load_signer("root")?;
        let intermediate = if state.options.intermediate {
            Some(load_signer("intermediate")?)
        } else {
            None
        };
        let previous_roots = match state.previous_root_until {
            Some(until) => {
                let certs = certs_from_pem(&read_string(&dir.join("previous-root.pem"))?)?;
                let untils = if state.previous_roots_until.is_empty() {
                    vec![until]
                } else {
                    state.previous_roots_until.clone()
                };
                if certs.is_empty() || certs.len() != untils.len() {
                    return Err(dir_err(
                        dir,
                        format!(
                            "previous-root.pem holds {} certificate(s), ca.json names {}",
                            certs.len(),
                            untils.len()
                        ),
                    ));
                }
                certs
                    .into_iter()
                    .zip(untils)
                    .map(|(c, u)| (c, UNIX_EPOCH + Duration::from_secs(u)))
                    .collect()
            }
            None => Vec::new(),
        };
        let next = if state.next_root {
            let root = load_signer("next-root")?;
            let intermediate = if state.options.intermediate {
                Some(load_signer("next-intermediate")?)
            } else {
                None
            };
            Some((root, intermediate))
        } else {
            None
        };
        Ok(Self {
            td,
            options: state.options,
            root,
            intermediate,
            previous_roots,
            next,
            sequence: state.bundle_sequence,
        })
    }

    /// Loads the CA in `dir`, or creates it when `dir` holds none.
    ///
    /// # Errors
    /// As [`Ca::load`] / [`Ca::init`]; also when the existing CA has another trust domain.
    pub fn load_or_init(
        dir: &Path,
        td: TrustDomain,
        options: CaOptions,
        now: SystemTime,
    ) -> Result<Self, Error> {
        if dir.join("ca.json").exists() {
            let ca = Self::load(dir)?;
            if ca.td != td {
                return Err(dir_err(
                    dir,
                    format!("holds a CA for trust domain {}, not {td}", ca.td),
                ));
            }
            Ok(ca)
        } else {
            Self::init(dir, td, options, now)
        }
    }

    fn save(&self, dir: &Path, now: SystemTime) -> Result<(), Error> {
        write_atomic(
            &dir.join("root.key"),
            self.root.key.to_pem().as_bytes(),
            0o600,
        )?;
        write_atomic(
            &dir.join("root.pem"),
            der_to_pem("CERTIFICATE", &self.root.cert).as_bytes(),
            0o644,
        )?;
        if let Some(i) = &self.intermediate {
            write_atomic(
                &dir.join("intermediate.key"),
                i.key.to_pem().as_bytes(),
                0o600,
            )?;
            write_atomic(
                &dir.join("intermediate.pem"),
                der_to_pem("CERTIFICATE", &i.cert).as_bytes(),
                0o644,
            )?;
        }
        if !self.previous_roots.is_empty() {
            let pem: String = self
                .previous_roots
                .iter()
                .map(|(c, _)| der_to_pem("CERTIFICATE", c))
                .collect();
            write_atomic(&dir.join("previous-root.pem"), pem.as_bytes(), 0o644)?;
        }
        match &self.next {
            Some((root, intermediate)) => {
                let mut pairs = vec![("next-root", root)];
                pairs.extend(intermediate.iter().map(|i| ("next-intermediate", i)));
                for (name, s) in pairs {
                    write_atomic(
                        &dir.join(format!("{name}.key")),
                        s.key.to_pem().as_bytes(),
                        0o600,
                    )?;
                    write_atomic(
                        &dir.join(format!("{name}.pem")),
                        der_to_pem("CERTIFICATE", &s.cert).as_bytes(),
                        0o644,
                    )?;
                }
            }
            None => {
                for f in [
                    "next-root.key",
                    "next-root.pem",
                    "next-intermediate.key",
                    "next-intermediate.pem",
                ] {
                    match std::fs::remove_file(dir.join(f)) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(dir_err(dir, format!("removing {f}: {e}")));
                        }
                        _ => {}
                    }
                }
            }
        }
        let bundle = self.bundle(now);
        write_atomic(&dir.join("bundle.pem"), bundle.to_pem().as_bytes(), 0o644)?;
        write_atomic(
            &dir.join("bundle.json"),
            bundle.to_jwks()?.as_bytes(),
            0o644,
        )?;
        let state = CaState {
            trust_domain: self.td.to_string(),
            options: self.options.clone(),
            previous_root_until: self.previous_roots.last().map(|(_, t)| unix(*t)),
            previous_roots_until: self.previous_roots.iter().map(|(_, t)| unix(*t)).collect(),
            bundle_sequence: self.sequence,
            next_root: self.next.is_some(),
        };
        let json = serde_json::to_string_pretty(&state).map_err(|e| dir_err(dir, e.to_string()))?;
        // ca.json is written last: a CA directory without it is an unfinished init.
        write_atomic(&dir.join("ca.json"), json.as_bytes(), 0o644)
    }

    /// The trust domain.
    #[must_use]
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.td
    }

    /// The settings.
    #[must_use]
    pub fn options(&self) -> &CaOptions {
        &self.options
    }

    /// The current root certificate.
    #[must_use]
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root.cert
    }

    /// The certificate that signs SVIDs (the intermediate, or the root).
    fn signer(&self) -> &Signer {
        self.intermediate.as_ref().unwrap_or(&self.root)
    }

    /// End of the signing certificate's validity (caps every SVID's lifetime).
    #[must_use]
    pub fn not_after(&self) -> SystemTime {
        self.signer().not_after
    }

    /// The announced next root, if a rollover is staged.
    #[must_use]
    pub fn next_root(&self) -> Option<&CertificateDer<'static>> {
        self.next.as_ref().map(|(r, _)| &r.cert)
    }

    /// Until when the last previous root stays in the bundle, during an overlap.
    #[must_use]
    pub fn previous_root_until(&self) -> Option<SystemTime> {
        self.previous_roots.iter().map(|(_, t)| *t).max()
    }

    /// The trust bundle at `now`: the current root, the announced next root, and the previous
    /// root while its overlap window lasts.
    #[must_use]
    pub fn bundle(&self, now: SystemTime) -> Bundle {
        let mut roots = vec![self.root.cert.clone()];
        if let Some((next, _)) = &self.next {
            roots.push(next.cert.clone());
        }
        for (prev, until) in self.previous_roots.iter().rev() {
            if now <= *until {
                roots.push(prev.clone());
            }
        }
        // The roots were made by this CA and pass Bundle's checks by construction.
        Bundle::new(self.td.clone(), roots)
            .unwrap_or_else(|e| unreachable!("CA's own roots form a valid bundle: {e}"))
            .with_sequence(self.sequence)
    }

    /// Both steps of a rollover at once ([`Ca::stage_next_root`], then
    /// [`Ca::promote_next_root`]): for a CA whose relying parties all read its bundle before
    /// they see a new SVID (tests, a single process).
    ///
    /// # Errors
    /// As the two steps.
    pub fn rollover(
        &mut self,
        dir: &Path,
        overlap: Duration,
        now: SystemTime,
    ) -> Result<(), Error> {
        self.stage_next_root(dir, now)?;
        self.promote_next_root(dir, overlap, now).map(|_| ())
    }

    /// Announces a rollover: a new root (and intermediate) joins the bundle; the current root
    /// keeps signing. Returns whether a new root was made (`false`: one was staged already).
    /// Persists the result to `dir`.
    ///
    /// # Errors
    /// When the new keys cannot be generated or written.
    pub fn stage_next_root(&mut self, dir: &Path, now: SystemTime) -> Result<bool, Error> {
        if self.next.is_some() {
            return Ok(false);
        }
        let root = new_root(&self.td, &self.options, now)?;
        let intermediate = if self.options.intermediate {
            Some(new_intermediate(&self.td, &self.options, &root, now)?)
        } else {
            None
        };
        self.next = Some((root, intermediate));
        self.sequence += 1;
        self.save(dir, now)?;
        Ok(true)
    }

    /// Makes the staged next root the signer. The old root stays in the bundle for `overlap`,
    /// and at least for the longest SVID lifetime the CA grants, so every SVID signed under it
    /// keeps verifying until it expires. Returns when the old root leaves the bundle.
    /// Persists the result to `dir`.
    ///
    /// # Errors
    /// When no next root is staged, or the files cannot be written.
    pub fn promote_next_root(
        &mut self,
        dir: &Path,
        overlap: Duration,
        now: SystemTime,
    ) -> Result<SystemTime, Error> {
        let (root, intermediate) = self
            .next
            .take()
            .ok_or_else(|| dir_err(dir, "no next root is staged to promote"))?;
        let old = std::mem::replace(&mut self.root, root);
        self.intermediate = intermediate;
        let until = now + overlap.max(self.options.max_svid_ttl);
        // Roots whose overlap is over are dropped; the others stay beside the one retired now.
        self.previous_roots.retain(|(_, t)| *t >= now);
        self.previous_roots.push((old.cert, until));
        self.sequence += 1;
        self.save(dir, now)?;
        Ok(until)
    }

    /// Drops the staged next root (a rollover that failed before its switch): the bundle goes
    /// back to the current root (and the previous one during its overlap).
    ///
    /// # Errors
    /// When the files cannot be written.
    pub fn withdraw_next_root(&mut self, dir: &Path, now: SystemTime) -> Result<bool, Error> {
        if self.next.take().is_none() {
            return Ok(false);
        }
        self.sequence += 1;
        self.save(dir, now)?;
        Ok(true)
    }

    /// Signs an X.509-SVID for `id` from a CSR. The CSR's key must be ECDSA P-256, its
    /// signature must verify, and any SAN it requests must be exactly `id` (the caller decides
    /// which ID the requester is authorized for). The lifetime is `ttl` capped by the CA's
    /// maximum and by the signing certificate's remaining lifetime.
    /// Returns the chain, leaf first (intermediate included, root not).
    ///
    /// # Errors
    /// The CSR rule or ID rule that failed, or a TTL that leaves no lifetime.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        id: &SpiffeId,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Vec<CertificateDer<'static>>, Error> {
        if id.trust_domain() != &self.td {
            return Err(Error::ForeignTrustDomain {
                id: id.to_string(),
                ca: self.td.to_string(),
            });
        }
        if id.is_trust_domain_id() {
            return Err(Error::Csr(format!(
                "{id} has no path; an SVID must identify a workload"
            )));
        }
        let spki = check_csr(csr_der, id)?;
        let uri = id
            .to_string()
            .try_into()
            .map_err(|e: rcgen::Error| Error::Cert(e.to_string()))?;
        self.sign_leaf(
            &spki,
            None,
            vec![SanType::URI(uri)],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            ttl,
            now,
        )
    }

    /// Signs a serving certificate for ingress hostnames from a CSR: DNS SANs exactly `names`
    /// (checked with [`crate::serving::check_dns_names`]), `serverAuth` only, no URI SAN, so
    /// it can never pass as an SVID. The caller decides which names the requester may have.
    /// Lifetime as [`Ca::sign_csr`]. Returns the chain, leaf first.
    ///
    /// # Errors
    /// A name, CSR or TTL rule that failed.
    pub fn sign_serving_csr(
        &self,
        csr_der: &[u8],
        names: &[String],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Vec<CertificateDer<'static>>, Error> {
        crate::serving::check_dns_names(names)?;
        let spki = check_serving_csr(csr_der, names)?;
        let sans = names
            .iter()
            .map(|n| {
                n.clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|e: rcgen::Error| Error::Cert(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        self.sign_leaf(
            &spki,
            Some(&names[0]),
            sans,
            vec![ExtendedKeyUsagePurpose::ServerAuth],
            ttl,
            now,
        )
    }

    /// Signs a leaf for `spki` (checked by the caller): O=identityd (and CN when given),
    /// `sans`, `ekus`, digitalSignature, no CA; the lifetime `ttl` capped by the CA's maximum
    /// and by the signing certificate's. Returns the chain, leaf first.
    fn sign_leaf(
        &self,
        spki: &[u8],
        common_name: Option<&str>,
        sans: Vec<SanType>,
        ekus: Vec<ExtendedKeyUsagePurpose>,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Vec<CertificateDer<'static>>, Error> {
        let signer = self.signer();
        let ttl = ttl.min(self.options.max_svid_ttl);
        if ttl.is_zero() {
            return Err(Error::Ttl("requested ttl is 0".to_owned()));
        }
        let not_after = (now + ttl).min(signer.not_after);
        if not_after <= now {
            return Err(Error::Ttl(
                "the CA's signing certificate has expired; rotate the CA".to_owned(),
            ));
        }
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "identityd");
        if let Some(cn) = common_name {
            dn.push(DnType::CommonName, cn);
        }
        p.distinguished_name = dn;
        p.subject_alt_names = sans;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = ekus;
        p.not_before = odt((now - BACKDATE).max(signer.not_before.min(now)));
        p.not_after = odt(not_after);
        p.serial_number = Some(random_serial());
        p.use_authority_key_identifier_extension = true;
        let pk = SubjectPublicKeyInfo::from_der(spki)
            .map_err(|e| Error::Csr(format!("public key: {e}")))?;
        let leaf = p
            .signed_by(&pk, &signer.issuer)
            .map_err(|e| Error::Cert(e.to_string()))?;
        let mut chain = vec![leaf.der().clone()];
        if let Some(i) = &self.intermediate {
            chain.push(i.cert.clone());
        }
        Ok(chain)
    }

    /// Issues a serving certificate for `names` with a freshly generated key (tests and the
    /// CLI), through the same CSR path as remote requests.
    ///
    /// # Errors
    /// As [`Ca::sign_serving_csr`].
    pub fn issue_serving(
        &self,
        names: &[String],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<crate::ServingCert, Error> {
        let key = PrivateKey::generate()?;
        let csr = crate::serving::serving_csr_for(names, &key)?;
        let chain = self.sign_serving_csr(&csr, names, ttl, now)?;
        crate::ServingCert::from_parts(names, chain, key)
    }

    /// Issues an SVID for `id` with a freshly generated key (for the CLI and tests). It goes
    /// through the same CSR path as remote requests.
    ///
    /// # Errors
    /// As [`Ca::sign_csr`].
    pub fn issue(&self, id: &SpiffeId, ttl: Duration, now: SystemTime) -> Result<Svid, Error> {
        let key = PrivateKey::generate()?;
        let csr = csr_for(id, &key)?;
        let chain = self.sign_csr(&csr, id, ttl, now)?;
        Svid::from_parts(chain, key)
    }
}

fn create_private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::Io {
            path: PathBuf::from(dir),
            source: std::sync::Arc::new(e),
        })
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    fn fixture() -> (tempfile::TempDir, Ca, Vec<u8>, SpiffeId) {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = SystemTime::now();
        let ca = Ca::init(
            &dir.path().join("ca"),
            TrustDomain::new("td").expect("td"),
            CaOptions::default(),
            now,
        )
        .expect("init");
        let id = SpiffeId::parse("spiffe://td/w").expect("id");
        let csr = csr_for(&id, &PrivateKey::generate().expect("key")).expect("csr");
        (dir, ca, csr, id)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Arbitrary bytes never panic the CSR parser and are never signed.
        #[test]
        fn random_bytes_are_rejected(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let (_d, ca, _csr, id) = fixture();
            prop_assert!(ca.sign_csr(&bytes, &id, Duration::from_secs(60), SystemTime::now()).is_err());
        }

        /// A valid CSR with one byte changed is either rejected or (if the change hit a
        /// field we ignore, e.g. the subject) still yields a chain that verifies for the
        /// authorized ID only.
        #[test]
        fn mutated_csrs_never_yield_a_wrong_svid(pos in any::<prop::sample::Index>(), xor in 1u8..=255) {
            let (_d, ca, mut csr, id) = fixture();
            let i = pos.index(csr.len());
            csr[i] ^= xor;
            let now = SystemTime::now();
            if let Ok(chain) = ca.sign_csr(&csr, &id, Duration::from_secs(60), now) {
                let got = crate::verify_svid(&chain, &ca.bundle(now), now).expect("issued chains verify");
                prop_assert_eq!(got, id);
            }
        }
    }
}
