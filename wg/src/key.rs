//! The node's WireGuard key: generated on the node, stored 0600 with an atomic rename,
//! zeroized in memory, never printed.
//!
//! The file holds the private key in WireGuard's base64 form (what `wg genkey` writes), so
//! `wg pubkey < node.key` gives the same public key as [`NodeKey::public_key`].

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use boringtun::x25519;
use zeroize::{Zeroize as _, Zeroizing};

/// Errors reading, generating or writing a node key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key file could not be read, written or renamed.
    #[error("node key {path}: {op}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The key file is readable or writable by group or others.
    #[error("node key {path}: mode {mode:o} is too open; expected 0600 (owner read/write only)")]
    InsecureMode {
        /// The file involved.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file does not hold a base64 32-byte key.
    #[error("node key {path}: not a WireGuard key (expected 44 base64 characters for 32 bytes)")]
    Malformed {
        /// The file involved.
        path: PathBuf,
    },
}

/// A WireGuard (X25519) public key, shown in WireGuard's base64 form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

/// A string that is not a base64 WireGuard public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("public key {value:?}: expected 44 base64 characters encoding 32 bytes")]
pub struct PublicKeyParseError {
    /// The rejected input (public keys are not secret).
    pub value: String,
}

impl PublicKey {
    /// The raw 32 bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, as the UAPI protocol spells keys.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses the UAPI hex form.
    ///
    /// # Errors
    /// When `s` is not 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, PublicKeyParseError> {
        parse_hex32(s).map(Self).ok_or_else(|| PublicKeyParseError {
            value: s.to_owned(),
        })
    }

    pub(crate) fn to_x25519(self) -> x25519::PublicKey {
        x25519::PublicKey::from(self.0)
    }
}

impl From<[u8; 32]> for PublicKey {
    fn from(b: [u8; 32]) -> Self {
        Self(b)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&B64.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = PublicKeyParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PublicKeyParseError {
            value: s.to_owned(),
        };
        let bytes = B64.decode(s.trim()).map_err(|_| err())?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| err())?;
        Ok(Self(arr))
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The node's static private key. Zeroized on drop; `Debug` prints only the public half.
#[derive(Clone)]
pub struct NodeKey {
    secret: x25519::StaticSecret,
    public: PublicKey,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey")
            .field("public", &self.public)
            .field("secret", &format_args!("<redacted>"))
            .finish()
    }
}

/// Whether [`NodeKey::load_or_generate`] found a key or made a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    /// The key file existed and was loaded.
    Loaded,
    /// No key file existed; a new key was generated and written.
    Generated,
}

impl NodeKey {
    /// A fresh random key from the operating system's CSPRNG.
    #[must_use]
    pub fn generate() -> Self {
        Self::from_secret(x25519::StaticSecret::random_from_rng(rand::rngs::OsRng))
    }

    fn from_secret(secret: x25519::StaticSecret) -> Self {
        let public = PublicKey(x25519::PublicKey::from(&secret).to_bytes());
        Self { secret, public }
    }

    /// The public key (safe to publish).
    #[must_use]
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    pub(crate) fn secret(&self) -> &x25519::StaticSecret {
        &self.secret
    }

    /// The private key in UAPI hex form, for the root-only UAPI socket's `get` answer.
    pub(crate) fn secret_hex(&self) -> Zeroizing<String> {
        let bytes = Zeroizing::new(self.secret.to_bytes());
        Zeroizing::new(hex(bytes.as_ref()))
    }

    /// Loads the key at `path`, or generates one and writes it there (0600, atomic rename)
    /// when the file does not exist. A key file readable by others is refused.
    ///
    /// # Errors
    /// I/O errors, a too-open file mode, or a file that is not a WireGuard key.
    pub fn load_or_generate(path: &Path) -> Result<(Self, KeyOrigin), KeyError> {
        match Self::load(path) {
            Ok(k) => Ok((k, KeyOrigin::Loaded)),
            Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                let k = Self::generate();
                k.save(path)?;
                Ok((k, KeyOrigin::Generated))
            }
            Err(e) => Err(e),
        }
    }

    /// Loads the key at `path`.
    ///
    /// # Errors
    /// I/O errors, a too-open file mode, or a file that is not a WireGuard key.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io = |op, source| KeyError::Io {
            path: path.to_owned(),
            op,
            source,
        };
        let mut f = File::open(path).map_err(|e| io("open", e))?;
        let mode = f
            .metadata()
            .map_err(|e| io("stat", e))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::InsecureMode {
                path: path.to_owned(),
                mode,
            });
        }
        let mut text = Zeroizing::new(String::new());
        f.read_to_string(&mut text).map_err(|e| io("read", e))?;
        let malformed = || KeyError::Malformed {
            path: path.to_owned(),
        };
        let mut bytes = Zeroizing::new(B64.decode(text.trim()).map_err(|_| malformed())?);
        if bytes.len() != 32 {
            return Err(malformed());
        }
        let mut arr = [0u8; 32];
        arr.copy_from_slice(&bytes);
        bytes.zeroize();
        let secret = x25519::StaticSecret::from(arr);
        arr.zeroize();
        Ok(Self::from_secret(secret))
    }

    /// Writes the key to `path`: a temporary file created 0600 in the same folder, synced,
    /// then renamed over `path`, then the folder synced. The folder is created (0700) if
    /// missing.
    ///
    /// # Errors
    /// I/O errors.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let io = |op, source| KeyError::Io {
            path: path.to_owned(),
            op,
            source,
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io("create folder", e))?;
        }
        let file_name = path
            .file_name()
            .map_or_else(|| "node.key".into(), |n| n.to_string_lossy().into_owned());
        let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io("create temporary file", e))?;
        let bytes = Zeroizing::new(self.secret.to_bytes());
        let mut text = Zeroizing::new(B64.encode(*bytes));
        text.push('\n');
        let written = f
            .write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| io("write temporary file", e));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        drop(f);
        fs::rename(&tmp, path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io("rename temporary file", e)
        })?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub(crate) fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_is_saved_0600_and_reloads_with_the_same_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/node.key");
        let (k1, o1) = NodeKey::load_or_generate(&path).unwrap();
        assert_eq!(o1, KeyOrigin::Generated);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        let (k2, o2) = NodeKey::load_or_generate(&path).unwrap();
        assert_eq!(o2, KeyOrigin::Loaded);
        assert_eq!(k1.public_key(), k2.public_key());
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("node.key")]);
    }

    #[test]
    fn debug_never_prints_the_private_key() {
        let k = NodeKey::generate();
        let dbg = format!("{k:?}");
        assert!(dbg.contains("<redacted>"), "{dbg}");
        let secret_b64 = B64.encode(k.secret.to_bytes());
        assert!(!dbg.contains(&secret_b64));
        assert!(!dbg.contains(&*k.secret_hex()));
        assert!(dbg.contains(&k.public_key().to_string()));
    }

    #[test]
    fn too_open_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        NodeKey::generate().save(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = NodeKey::load(&path).unwrap_err();
        assert!(
            matches!(err, KeyError::InsecureMode { mode: 0o644, .. }),
            "{err}"
        );
    }

    #[test]
    fn malformed_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap()
            .write_all(b"not a key\n")
            .unwrap();
        assert!(matches!(
            NodeKey::load(&path),
            Err(KeyError::Malformed { .. })
        ));
    }

    #[test]
    fn public_key_round_trips_base64_and_hex() {
        let k = NodeKey::generate().public_key();
        let b64 = k.to_string();
        assert_eq!(b64.len(), 44);
        assert_eq!(b64.parse::<PublicKey>().unwrap(), k);
        assert_eq!(PublicKey::from_hex(&k.to_hex()).unwrap(), k);
        let e = "abc".parse::<PublicKey>().unwrap_err();
        assert!(e.to_string().contains("\"abc\""), "{e}");
    }

    #[test]
    fn public_key_matches_the_wireguard_derivation() {
        // RFC 7748 section 6.1 test vector (Alice).
        let secret: [u8; 32] =
            parse_hex32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap();
        let k = NodeKey::from_secret(x25519::StaticSecret::from(secret));
        assert_eq!(
            k.public_key().to_hex(),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }
}
