//! `identityd ca …` and `identityd svid …`.

use std::path::Path;
use std::time::SystemTime;

use identityd_certs::bundle::certs_from_pem;
use identityd_certs::fsutil::{read_string, write_atomic};
use identityd_certs::{
    Bundle, Ca, CaOptions, SpiffeId, TrustDomain, duration, inspect, verify_svid,
};

/// Errors of the certificate subcommands, each naming the flag or file at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// A flag has an invalid value.
    #[error("--{flag}={value}: {reason}")]
    Flag {
        /// The flag's name.
        flag: &'static str,
        /// The value given.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
    /// An operation of the certs crate failed.
    #[error(transparent)]
    Certs(#[from] identityd_certs::Error),
    /// Verification failed: the rule that failed.
    #[error("verification failed: {0}")]
    Verify(#[from] identityd_certs::VerifyError),
}

fn flag(flag: &'static str, value: &str, reason: impl ToString) -> CliError {
    CliError::Flag {
        flag,
        value: value.to_owned(),
        reason: reason.to_string(),
    }
}

/// `identityd ca init`.
///
/// # Errors
/// Bad flags, or a directory that already holds a CA.
pub fn ca_init(
    trust_domain: &str,
    dir: &Path,
    max_ttl: &str,
    intermediate: bool,
) -> Result<String, CliError> {
    let td = TrustDomain::new(trust_domain).map_err(|e| flag("trust-domain", trust_domain, e))?;
    let max = duration::parse(max_ttl).map_err(|e| flag("max-ttl", max_ttl, e))?;
    if max.is_zero() {
        return Err(flag("max-ttl", max_ttl, "must be > 0"));
    }
    let opts = CaOptions {
        max_svid_ttl: max,
        intermediate,
        ..CaOptions::default()
    };
    let ca = Ca::init(dir, td, opts, SystemTime::now())?;
    let root = inspect::describe(ca.root())?;
    Ok(format!(
        "created CA for trust domain {} in {}\n  root: {} (valid until {})\n  signing with: {}\n  bundle: {} and {}\n  private keys: 0600, never printed",
        ca.trust_domain(),
        dir.display(),
        root.subject,
        root.not_after,
        if intermediate {
            "an intermediate"
        } else {
            "the root"
        },
        dir.join("bundle.pem").display(),
        dir.join("bundle.json").display(),
    ))
}

/// `identityd svid issue`.
///
/// # Errors
/// Bad flags, an unreadable CA, or an ID outside the CA's trust domain.
pub fn svid_issue(
    ca_dir: &Path,
    spiffe_id: &str,
    out: &Path,
    ttl: &str,
) -> Result<String, CliError> {
    let id = SpiffeId::parse(spiffe_id).map_err(|e| flag("spiffe-id", spiffe_id, e))?;
    let ttl_d = duration::parse(ttl).map_err(|e| flag("ttl", ttl, e))?;
    let ca = Ca::load(ca_dir)?;
    let now = SystemTime::now();
    let svid = ca.issue(&id, ttl_d, now)?;
    svid.write_to_dir(out)?;
    write_atomic(
        &out.join("bundle.pem"),
        ca.bundle(now).to_pem().as_bytes(),
        0o644,
    )?;
    let info = inspect::describe(svid.leaf())?;
    Ok(format!(
        "issued {id}\n  valid {} .. {}\n  wrote {} (chain), {} (0600), {}",
        info.not_before,
        info.not_after,
        out.join("svid.pem").display(),
        out.join("key.pem").display(),
        out.join("bundle.pem").display()
    ))
}

/// `identityd svid inspect`.
///
/// # Errors
/// An unreadable or malformed file.
pub fn svid_inspect(file: &Path) -> Result<String, CliError> {
    let chain = certs_from_pem(&read_string(file)?)?;
    let mut out = String::new();
    for (i, c) in chain.iter().enumerate() {
        let info = inspect::describe(c)?;
        let role = if i == 0 { "leaf" } else { "chain" };
        out.push_str(&format!(
            "[{i}] {role}\n  spiffe id:  {}\n  subject:    {}\n  issuer:     {}\n  serial:     {}\n  valid:      {} .. {}\n  cA:         {}\n  key usage:  {}\n  key:        {}\n",
            if info.uris.is_empty() { "-".to_owned() } else { info.uris.join(", ") },
            info.subject,
            info.issuer,
            info.serial,
            info.not_before,
            info.not_after,
            info.is_ca,
            info.key_usage.join(", "),
            info.key,
        ));
    }
    Ok(out)
}

/// `identityd svid verify`.
///
/// # Errors
/// An unreadable file or a rule that failed.
pub fn svid_verify(
    bundle_file: &Path,
    file: &Path,
    trust_domain: Option<&str>,
) -> Result<String, CliError> {
    let pem = read_string(bundle_file)?;
    let roots = certs_from_pem(&pem)?;
    let td = match trust_domain {
        Some(t) => TrustDomain::new(t).map_err(|e| flag("trust-domain", t, e))?,
        None => roots
            .iter()
            .find_map(inspect::root_trust_domain)
            .ok_or_else(|| {
                flag(
                    "bundle",
                    &bundle_file.display().to_string(),
                    "no root names its trust domain in a URI SAN; pass --trust-domain",
                )
            })?,
    };
    let bundle = Bundle::new(td, roots)?;
    let chain = certs_from_pem(&read_string(file)?)?;
    let id = verify_svid(&chain, &bundle, SystemTime::now())?;
    Ok(format!("OK {id}"))
}

/// `identityd svid sign-node`: signs the IdentitydNode in `file` with the SVID in `svid_dir`
/// (its `spec.proof`, [`crate::daemon::node_proof`]) and rewrites the file. Node daemons sign
/// their own objects; this is for objects a node does not publish itself, and for tests.
///
/// # Errors
/// An unreadable SVID, a file that does not hold exactly one valid IdentitydNode, a write.
pub fn svid_sign_node(
    svid_dir: &Path,
    file: &Path,
    generation: Option<i64>,
) -> Result<String, CliError> {
    let svid = identityd_certs::Svid::read_from_dir(svid_dir)?;
    let shown = file.display().to_string();
    let text = read_string(file)?;
    let docs = crate::source::decode::decode_all(&text);
    let mut nodes = Vec::new();
    for (_, r) in docs {
        match r {
            Ok(Some(crate::model::Object::IdentitydNode(n))) => nodes.push(n),
            Ok(_) => {
                return Err(flag(
                    "file",
                    &shown,
                    "holds something other than an IdentitydNode",
                ));
            }
            Err(e) => return Err(flag("file", &shown, e)),
        }
    }
    let [mut node] = <[_; 1]>::try_from(nodes).map_err(|v| {
        flag(
            "file",
            &shown,
            format!("holds {} IdentitydNodes, want exactly one", v.len()),
        )
    })?;
    let generation = generation.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    });
    if generation < 1 {
        return Err(flag(
            "generation",
            &generation.to_string(),
            "must be positive",
        ));
    }
    node.spec.proof = None;
    let proof =
        crate::daemon::node_proof::sign(&node.metadata.name, &node.spec, generation, &svid)?;
    node.spec.proof = Some(proof);
    let name = node.metadata.name.clone();
    let yaml = crate::model::Object::IdentitydNode(node)
        .to_yaml()
        .map_err(|e| flag("file", &shown, e))?;
    write_atomic(file, yaml.as_bytes(), 0o644)?;
    Ok(format!(
        "signed IdentitydNode {name} (generation {generation}) with {} in {shown}",
        svid.id()
    ))
}
