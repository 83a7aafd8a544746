//! Serving certificates for ingress hostnames: DNS SANs only, `serverAuth` only, issued by the
//! same CA as the SVIDs so clients that trust the bundle verify them. A node asks for one per
//! Gateway listener (or Ingress TLS entry) that names hostnames and no Secret; the CA's
//! authorizer checks that the hostnames are on such an object.

use std::time::SystemTime;

use rcgen::{CertificateParams, DistinguishedName, DnType, SanType};
use rustls_pki_types::CertificateDer;

use crate::bundle::der_to_pem;
use crate::key::PrivateKey;
use crate::{Error, x509};

/// Most DNS names one serving certificate may carry.
pub const MAX_DNS_NAMES: usize = 32;

/// Checks one requested DNS name: lower-case LDH labels, at most one leading `*.` wildcard
/// label, 1–253 characters, no trailing dot, at least two labels.
///
/// # Errors
/// The name and what is wrong with it.
pub fn check_dns_name(name: &str) -> Result<(), Error> {
    let bad = |why: &str| Err(Error::Csr(format!("dns name {name:?}: {why}")));
    if name.is_empty() || name.len() > 253 {
        return bad("must be 1 to 253 characters");
    }
    let rest = name.strip_prefix("*.").unwrap_or(name);
    let labels: Vec<&str> = rest.split('.').collect();
    if labels.len() < 2 {
        return bad("must have at least two labels (a host in a domain)");
    }
    for l in &labels {
        if l.is_empty() || l.len() > 63 {
            return bad("every label must be 1 to 63 characters");
        }
        if !l
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return bad(
                "labels may hold only a-z, 0-9 and '-' (lower case; '*' only as the whole first label)",
            );
        }
        if l.starts_with('-') || l.ends_with('-') {
            return bad("a label must not start or end with '-'");
        }
    }
    Ok(())
}

/// Checks a list of requested names: non-empty, at most [`MAX_DNS_NAMES`], each valid, no
/// duplicates.
///
/// # Errors
/// The first problem.
pub fn check_dns_names(names: &[String]) -> Result<(), Error> {
    if names.is_empty() {
        return Err(Error::Csr("dns names: at least one is required".to_owned()));
    }
    if names.len() > MAX_DNS_NAMES {
        return Err(Error::Csr(format!(
            "dns names: {} requested, at most {MAX_DNS_NAMES}",
            names.len()
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for n in names {
        check_dns_name(n)?;
        if !seen.insert(n.as_str()) {
            return Err(Error::Csr(format!("dns name {n:?}: listed twice")));
        }
    }
    Ok(())
}

/// A PKCS#10 CSR (DER) for `names` (DNS SANs), signed with `key`.
///
/// # Errors
/// When a name is invalid or signing fails.
pub fn serving_csr_for(names: &[String], key: &PrivateKey) -> Result<Vec<u8>, Error> {
    check_dns_names(names)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "identityd");
    params.distinguished_name = dn;
    params.subject_alt_names = names
        .iter()
        .map(|n| {
            n.clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|e: rcgen::Error| Error::Csr(format!("dns name {n:?}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let kp = key.key_pair()?;
    let csr = params
        .serialize_request(&kp)
        .map_err(|e| Error::Csr(e.to_string()))?;
    Ok(csr.der().to_vec())
}

/// A serving certificate chain (leaf first) and its key. `Debug` never prints the key.
#[derive(Clone)]
pub struct ServingCert {
    dns_names: Vec<String>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKey,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("dns_names", &self.dns_names)
            .field("chain_len", &self.chain.len())
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl ServingCert {
    /// Assembles a serving certificate; the leaf must carry exactly `names` as DNS SANs and no
    /// URI SAN, and `key` must match it.
    ///
    /// # Errors
    /// When the leaf cannot be parsed, its names differ, or the key does not match.
    pub fn from_parts(
        names: &[String],
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKey,
    ) -> Result<Self, Error> {
        let leaf_der = chain
            .first()
            .ok_or_else(|| Error::Cert("empty chain".to_owned()))?;
        let leaf = x509::parse(leaf_der).map_err(Error::Cert)?;
        let mut got = x509::dns_names(&leaf);
        got.sort();
        let mut want = names.to_vec();
        want.sort();
        if got != want {
            return Err(Error::Cert(format!(
                "the certificate names {got:?}, asked for {want:?}"
            )));
        }
        if leaf.public_key().raw != key.public_key_der()?.as_slice() {
            return Err(Error::Key(
                "private key does not match the leaf certificate".to_owned(),
            ));
        }
        let (not_before, not_after) = x509::validity(&leaf);
        drop(leaf);
        Ok(Self {
            dns_names: names.to_vec(),
            chain,
            key,
            not_before,
            not_after,
        })
    }

    /// The DNS names.
    #[must_use]
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// The chain, leaf first.
    #[must_use]
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
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
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{Ca, CaOptions, TrustDomain};

    fn ca(intermediate: bool) -> (tempfile::TempDir, Ca) {
        let dir = tempfile::tempdir().unwrap();
        let opts = CaOptions {
            intermediate,
            ..CaOptions::default()
        };
        let ca = Ca::init(
            dir.path(),
            TrustDomain::new("lab.local").unwrap(),
            opts,
            SystemTime::now(),
        )
        .unwrap();
        (dir, ca)
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn issued_certificate_verifies_as_a_tls_server_for_every_name_and_is_not_an_svid() {
        for intermediate in [false, true] {
            let (_d, ca) = ca(intermediate);
            let now = SystemTime::now();
            let want = names(&["web.shop.example", "*.api.example"]);
            let c = ca
                .issue_serving(&want, Duration::from_secs(600), now)
                .unwrap();
            assert_eq!(c.dns_names(), want.as_slice());
            let bundle = ca.bundle(now);
            crate::verify::verify_serving(c.chain(), &bundle, &want, now).unwrap();
            // A name it was not issued for is refused by the same client check.
            let e =
                crate::verify::verify_serving(c.chain(), &bundle, &names(&["other.example"]), now)
                    .unwrap_err();
            assert!(e.contains("other.example"), "{e}");
            // No URI SAN: it can never pass as an X.509-SVID.
            assert!(crate::verify_svid(c.chain(), &bundle, now).is_err());
            assert!(format!("{c:?}").contains("<redacted>"));
            assert!(c.not_after() <= now + Duration::from_secs(601));
        }
    }

    #[test]
    fn csr_names_must_equal_the_authorized_names() {
        let (_d, ca) = ca(false);
        let key = PrivateKey::generate().unwrap();
        let csr = serving_csr_for(&names(&["a.example", "b.example"]), &key).unwrap();
        let e = ca
            .sign_serving_csr(
                &csr,
                &names(&["a.example"]),
                Duration::from_secs(60),
                SystemTime::now(),
            )
            .unwrap_err();
        assert!(e.to_string().contains("authorized names"), "{e}");
        // An SVID CSR (URI SAN) is refused for a serving certificate.
        let id = crate::SpiffeId::parse("spiffe://lab.local/ns/a/sa/b").unwrap();
        let csr = crate::svid::csr_for(&id, &key).unwrap();
        let e = ca
            .sign_serving_csr(
                &csr,
                &names(&["a.example"]),
                Duration::from_secs(60),
                SystemTime::now(),
            )
            .unwrap_err();
        assert!(e.to_string().contains("DNS names only"), "{e}");
    }

    #[test]
    fn bad_names_are_refused_naming_the_value() {
        for (n, why) in [
            ("", "1 to 253"),
            ("localhost", "two labels"),
            ("Web.example", "lower case"),
            ("a..example", "1 to 63"),
            ("-a.example", "start or end"),
            ("a.*.example", "lower case"),
            ("spiffe://x/y", "two labels"),
            ("a_b.example", "lower case"),
        ] {
            let e = check_dns_name(n).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(&format!("{n:?}")), "{n}: {e}");
        }
        assert!(check_dns_names(&[]).is_err());
        assert!(check_dns_names(&names(&["a.example", "a.example"])).is_err());
        check_dns_names(&names(&["*.a.example", "a.example"])).unwrap();
    }
}
