//! Join tokens: how a node proves, once, that it may become `spiffe://<td>/identityd/node/<name>`.
//!
//! A token is 32 random bytes, base64url without padding. The node side gets the token in a
//! file (0600, atomic write); the CA side keeps only its SHA-256 in `<ca_dir>/join-tokens.json`
//! (one entry per node name, with an expiry). A token is compared in constant time and
//! removed from the store when a join succeeds, so it works once. The store is guarded by an
//! advisory lock on `<ca_dir>/join-tokens.lock`, so a CLI minting tokens and a running CA
//! consuming them do not lose each other's updates.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SecureRandom as _;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use crate::Error;
use crate::fsutil::{read_string, write_atomic};

/// The CA-side store of token hashes, inside the CA directory.
pub const TOKENS_FILE: &str = "join-tokens.json";
/// The lock file guarding [`TOKENS_FILE`].
pub const LOCK_FILE: &str = "join-tokens.lock";
/// How long a minted token stays usable unless told otherwise.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// Random bytes in a token.
pub const TOKEN_BYTES: usize = 32;

/// A join token. Holds a secret: `Debug` prints `<redacted>`, the text is zeroized on drop.
#[derive(Clone)]
pub struct JoinToken(Zeroizing<String>);

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JoinToken(<redacted>)")
    }
}

impl JoinToken {
    /// A new random token.
    ///
    /// # Errors
    /// When the system random source fails.
    pub fn generate() -> Result<Self, Error> {
        let mut b = Zeroizing::new([0u8; TOKEN_BYTES]);
        ring::rand::SystemRandom::new()
            .fill(&mut *b)
            .map_err(|_| Error::Crypto("system random source failed".to_owned()))?;
        Ok(Self(Zeroizing::new(URL_SAFE_NO_PAD.encode(*b))))
    }

    /// A token from its text (surrounding whitespace is ignored).
    ///
    /// # Errors
    /// When the text is not base64url of [`TOKEN_BYTES`] bytes.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let t = text.trim();
        let ok = URL_SAFE_NO_PAD
            .decode(t)
            .map(Zeroizing::new)
            .is_ok_and(|b| b.len() == TOKEN_BYTES);
        if !ok {
            return Err(Error::Key(format!(
                "join token: expected base64url (no padding) of {TOKEN_BYTES} bytes, got {} characters that are not",
                t.len()
            )));
        }
        Ok(Self(Zeroizing::new(t.to_owned())))
    }

    /// Reads a token file written by [`JoinToken::write`].
    ///
    /// # Errors
    /// When the file cannot be read or does not hold a token.
    pub fn read(path: &Path) -> Result<Self, Error> {
        let text = Zeroizing::new(read_string(path)?);
        Self::parse(&text).map_err(|e| Error::Key(format!("{}: {e}", path.display())))
    }

    /// Writes the token to `path`, 0600, atomically.
    ///
    /// # Errors
    /// Any I/O failure.
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        let mut text = Zeroizing::new(self.0.to_string());
        text.push('\n');
        write_atomic(path, text.as_bytes(), 0o600)
    }

    /// The token text, to put in a request. Named so that uses stand out in review.
    #[must_use]
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    fn hash(text: &str) -> [u8; 32] {
        let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Store {
    /// Node name → entry.
    tokens: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    /// SHA-256 of the token text, hex.
    sha256: String,
    created_unix: u64,
    expires_unix: u64,
}

/// Why a join token was not accepted. The service answers every variant with the same
/// message (so a caller learns nothing about which nodes have tokens); the logs name it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No token is outstanding for the node (never minted, or already used).
    #[error("no join token is outstanding for node {0:?} (never minted or already used)")]
    NotFound(String),
    /// The token does not match the node's token.
    #[error("join token for node {0:?} does not match")]
    Mismatch(String),
    /// The token expired.
    #[error("join token for node {node:?} expired at unix time {expired_unix}")]
    Expired {
        /// The node.
        node: String,
        /// When it expired.
        expired_unix: u64,
    },
    /// The store could not be read or written.
    #[error("join token store: {0}")]
    Store(#[source] Arc<Error>),
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// Holds the exclusive advisory lock on the store while alive.
struct Locked {
    _file: File,
    path: PathBuf,
}

impl Locked {
    fn acquire(ca_dir: &Path) -> Result<Self, Error> {
        let lock_path = ca_dir.join(LOCK_FILE);
        let io = |e: std::io::Error| Error::Io {
            path: lock_path.clone(),
            source: Arc::new(e),
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io)?;
        file.lock().map_err(io)?;
        Ok(Self {
            _file: file,
            path: ca_dir.join(TOKENS_FILE),
        })
    }

    fn load(&self) -> Result<Store, Error> {
        if !self.path.exists() {
            return Ok(Store::default());
        }
        serde_json::from_str(&read_string(&self.path)?).map_err(|e| Error::CaDir {
            dir: self.path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            reason: format!("{TOKENS_FILE}: {e}"),
        })
    }

    fn save(&self, store: &Store) -> Result<(), Error> {
        let json = serde_json::to_string_pretty(store).map_err(|e| Error::CaDir {
            dir: self.path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            reason: format!("{TOKENS_FILE}: {e}"),
        })?;
        write_atomic(&self.path, json.as_bytes(), 0o600)
    }
}

fn validate_node_name(node: &str) -> Result<(), Error> {
    // The name becomes a path segment of a SPIFFE ID; check it with the real rules.
    let td = crate::TrustDomain::new("identityd.invalid")?;
    super::node_id(&td, node)?;
    Ok(())
}

/// Mints a token for `node`, valid for `ttl` from `now`, and records its hash in `ca_dir`
/// (replacing any earlier token of that node). Returns the token for the node side.
///
/// # Errors
/// When the node name is not a valid SPIFFE path segment, or the store cannot be written.
pub fn mint(ca_dir: &Path, node: &str, ttl: Duration, now: SystemTime) -> Result<JoinToken, Error> {
    validate_node_name(node)?;
    let token = JoinToken::generate()?;
    let lock = Locked::acquire(ca_dir)?;
    let mut store = lock.load()?;
    store.tokens.retain(|_, e| e.expires_unix > unix(now));
    store.tokens.insert(
        node.to_owned(),
        Entry {
            sha256: hex(&JoinToken::hash(token.expose_secret())),
            created_unix: unix(now),
            expires_unix: unix(now + ttl),
        },
    );
    lock.save(&store)?;
    Ok(token)
}

/// [`mint`], then writes the token to `token_path` (0600, atomic) for the node.
///
/// # Errors
/// As [`mint`], or when the token file cannot be written (the token is then revoked again).
pub fn mint_to_file(
    ca_dir: &Path,
    node: &str,
    token_path: &Path,
    ttl: Duration,
    now: SystemTime,
) -> Result<(), Error> {
    let token = mint(ca_dir, node, ttl, now)?;
    if let Err(e) = token.write(token_path) {
        let _ = revoke(ca_dir, node);
        return Err(e);
    }
    Ok(())
}

/// Removes `node`'s outstanding token, if any. Returns whether there was one.
///
/// # Errors
/// When the store cannot be read or written.
pub fn revoke(ca_dir: &Path, node: &str) -> Result<bool, Error> {
    let lock = Locked::acquire(ca_dir)?;
    let mut store = lock.load()?;
    let had = store.tokens.remove(node).is_some();
    if had {
        lock.save(&store)?;
    }
    Ok(had)
}

/// Node names with an outstanding (unexpired) token.
///
/// # Errors
/// When the store cannot be read.
pub fn outstanding(ca_dir: &Path, now: SystemTime) -> Result<Vec<String>, Error> {
    let lock = Locked::acquire(ca_dir)?;
    let store = lock.load()?;
    Ok(store
        .tokens
        .into_iter()
        .filter(|(_, e)| e.expires_unix > unix(now))
        .map(|(n, _)| n)
        .collect())
}

/// Checks `presented` against `node`'s token and, while holding the store lock, runs `issue`.
/// When `issue` succeeds the token is consumed (removed) before its result is returned; when
/// it fails the token stays, so a node whose CSR was malformed can retry.
///
/// # Errors
/// The [`TokenError`] (outer), or `issue`'s own error (inner).
pub fn consume_with<T, E>(
    ca_dir: &Path,
    node: &str,
    presented: &str,
    now: SystemTime,
    issue: impl FnOnce() -> Result<T, E>,
) -> Result<Result<T, E>, TokenError> {
    let store_err = |e: Error| TokenError::Store(Arc::new(e));
    let lock = Locked::acquire(ca_dir).map_err(store_err)?;
    let mut store = lock.load().map_err(store_err)?;
    let presented_hash = hex(&JoinToken::hash(presented.trim()));
    let Some(entry) = store.tokens.get(node) else {
        // Same work as a real comparison, so absence is not cheaper to detect.
        let _ = presented_hash.as_bytes().ct_eq(presented_hash.as_bytes());
        return Err(TokenError::NotFound(node.to_owned()));
    };
    let matches: bool = entry
        .sha256
        .as_bytes()
        .ct_eq(presented_hash.as_bytes())
        .into();
    if !matches {
        return Err(TokenError::Mismatch(node.to_owned()));
    }
    if entry.expires_unix <= unix(now) {
        let expired_unix = entry.expires_unix;
        store.tokens.remove(node);
        lock.save(&store).map_err(store_err)?;
        return Err(TokenError::Expired {
            node: node.to_owned(),
            expired_unix,
        });
    }
    let out = issue();
    if out.is_ok() {
        store.tokens.remove(node);
        lock.save(&store).map_err(store_err)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const H: Duration = Duration::from_secs(3600);

    fn ok() -> Result<(), ()> {
        Ok(())
    }

    #[test]
    fn minted_token_works_once_and_only_hashes_are_stored() {
        let d = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let tok_path = d.path().join("node-a.token");
        mint_to_file(d.path(), "node-a", &tok_path, H, now).unwrap();
        let mode = std::fs::metadata(&tok_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let tok = JoinToken::read(&tok_path).unwrap();
        let store = std::fs::read_to_string(d.path().join(TOKENS_FILE)).unwrap();
        assert!(
            !store.contains(tok.expose_secret()),
            "the CA store must hold only the hash: {store}"
        );
        let mode = std::fs::metadata(d.path().join(TOKENS_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(outstanding(d.path(), now).unwrap(), ["node-a"]);

        // Wrong node, wrong token: refused, token kept.
        assert!(matches!(
            consume_with(d.path(), "node-b", tok.expose_secret(), now, ok),
            Err(TokenError::NotFound(_))
        ));
        let other = JoinToken::generate().unwrap();
        assert!(matches!(
            consume_with(d.path(), "node-a", other.expose_secret(), now, ok),
            Err(TokenError::Mismatch(_))
        ));
        // Failed issuance keeps the token.
        assert!(matches!(
            consume_with(
                d.path(),
                "node-a",
                tok.expose_secret(),
                now,
                || Err::<(), _>("bad csr")
            ),
            Ok(Err("bad csr"))
        ));
        // Success consumes it.
        assert!(matches!(
            consume_with(d.path(), "node-a", tok.expose_secret(), now, ok),
            Ok(Ok(()))
        ));
        assert!(matches!(
            consume_with(d.path(), "node-a", tok.expose_secret(), now, ok),
            Err(TokenError::NotFound(_))
        ));
    }

    #[test]
    fn expired_tokens_are_refused_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let tok = mint(d.path(), "n", H, now).unwrap();
        assert!(matches!(
            consume_with(d.path(), "n", tok.expose_secret(), now + 2 * H, ok),
            Err(TokenError::Expired { .. })
        ));
        assert!(outstanding(d.path(), now).unwrap().is_empty());
    }

    #[test]
    fn bad_names_and_tokens_are_rejected_with_reasons() {
        let d = tempfile::tempdir().unwrap();
        let e = mint(d.path(), "a/b", H, SystemTime::now()).unwrap_err();
        assert!(e.to_string().contains("SPIFFE"), "{e}");
        let e = JoinToken::parse("short").unwrap_err();
        assert!(e.to_string().contains("base64url"), "{e}");
        let t = JoinToken::generate().unwrap();
        assert_eq!(
            JoinToken::parse(&format!("  {}\n", t.expose_secret()))
                .unwrap()
                .expose_secret(),
            t.expose_secret()
        );
        assert_eq!(format!("{t:?}"), "JoinToken(<redacted>)");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Arbitrary presented tokens (the untrusted input of `Join`) never panic, never match,
        /// and never consume the real token.
        #[test]
        fn arbitrary_tokens_never_match(presented in ".{0,80}") {
            let d = tempfile::tempdir().unwrap();
            let now = SystemTime::now();
            let real = mint(d.path(), "n", H, now).unwrap();
            proptest::prop_assume!(presented.trim() != real.expose_secret());
            let r = consume_with(d.path(), "n", &presented, now, ok);
            proptest::prop_assert!(matches!(r, Err(TokenError::Mismatch(_))));
            let _ = JoinToken::parse(&presented);
            proptest::prop_assert_eq!(outstanding(d.path(), now).unwrap(), vec!["n".to_owned()]);
        }
    }
}
