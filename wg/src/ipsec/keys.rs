//! Per-node-pair, per-direction ESP keys with no shared secret.
//!
//! Each node has its own X25519 IPsec key ([`NodeKey`], generated on the node, 0600, atomic,
//! zeroized; a different file from the WireGuard key) and publishes only the public half. The
//! key of the SA that carries traffic from node S to node D is
//!
//! ```text
//! ikm  = X25519(own private, peer public)            (same value on both nodes)
//! prk  = HKDF-Extract(salt = "identityd ipsec v1 extract", ikm)
//! key  = HKDF-Expand(prk, info, 36)                   (AES-256 key ‖ 4-byte GCM salt, RFC 4106)
//! info = "identityd ipsec v1 sa" ‖ lp(S name) ‖ lp(D name) ‖ S public ‖ D public
//!        ‖ SPI (BE32, allocated by D for this peer and epoch) ‖ epoch (BE64)
//! ```
//!
//! so both ends derive it alone, each direction, SPI and epoch gets an independent key, and
//! nothing secret is ever written to the cluster. `lp` is a 2-byte length prefix (names cannot
//! run into each other). The epoch changes on every (re)install of an outbound SA, so a key is
//! never used again with restarted sequence numbers; see `threat-model/ipsec-keys.md`.

use std::fmt;

use zeroize::{Zeroize as _, ZeroizeOnDrop};

use crate::key::{NodeKey, PublicKey};

/// Length of an SA key: AES-256 (32 bytes) and the RFC 4106 salt (4 bytes).
pub const SA_KEY_LEN: usize = 36;
/// The kernel's name of the AEAD: AES-GCM for ESP (RFC 4106).
pub const AEAD_NAME: &str = "rfc4106(gcm(aes))";
/// GCM's integrity check value, in bits.
pub const ICV_BITS: u32 = 128;

const EXTRACT_SALT: &[u8] = b"identityd ipsec v1 extract";
const INFO_LABEL: &[u8] = b"identityd ipsec v1 sa";

/// The key of one SA. Zeroized on drop; `Debug` never shows it.
#[derive(Clone, ZeroizeOnDrop)]
pub struct SaKey([u8; SA_KEY_LEN]);

impl SaKey {
    /// The key bytes, for the netlink message that installs the SA.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; SA_KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for SaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SaKey(<redacted>)")
    }
}

/// One end of a node pair: its name and published IPsec public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint<'a> {
    /// The node's name (the IdentitydNode's `metadata.name`).
    pub name: &'a str,
    /// Its published IPsec public key.
    pub public: PublicKey,
}

/// Which SA of the pair: the one this node sends on, or the one it receives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From this node to the peer.
    Outbound,
    /// From the peer to this node.
    Inbound,
}

/// Why no key could be derived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeriveError {
    /// The peer's public key is a low-order point: the shared secret would be all zero and
    /// known to anyone.
    #[error("IPsec public key of node {peer:?} is not usable (X25519 output is all zero)")]
    NonContributory {
        /// The peer node.
        peer: String,
    },
    /// Own key does not match the endpoint given for this node.
    #[error("IPsec key of node {node:?}: the local private key does not match its public key")]
    WrongLocalKey {
        /// This node.
        node: String,
    },
    /// A name longer than the length prefix allows.
    #[error("node name of {len} bytes is too long for the key derivation")]
    NameTooLong {
        /// Its length.
        len: usize,
    },
}

/// Derives the key of the SA between `local` (whose private key is `own`) and `peer` in
/// `direction`, with the SPI the receiving node allocated and the sender's epoch.
///
/// # Errors
/// A non-contributory peer key, a private key that is not `local`'s, an over-long name.
pub fn derive_sa_key(
    own: &NodeKey,
    local: Endpoint<'_>,
    peer: Endpoint<'_>,
    direction: Direction,
    spi: u32,
    epoch: u64,
) -> Result<SaKey, DeriveError> {
    if own.public_key() != local.public {
        return Err(DeriveError::WrongLocalKey {
            node: local.name.to_owned(),
        });
    }
    let peer_pk = boringtun::x25519::PublicKey::from(*peer.public.as_bytes());
    let shared = own.secret().diffie_hellman(&peer_pk);
    if !shared.was_contributory() {
        return Err(DeriveError::NonContributory {
            peer: peer.name.to_owned(),
        });
    }
    let (src, dst) = match direction {
        Direction::Outbound => (local, peer),
        Direction::Inbound => (peer, local),
    };
    let mut info =
        Vec::with_capacity(INFO_LABEL.len() + 4 + 128 + 12 + src.name.len() + dst.name.len());
    info.extend_from_slice(INFO_LABEL);
    for name in [src.name, dst.name] {
        let len =
            u16::try_from(name.len()).map_err(|_| DeriveError::NameTooLong { len: name.len() })?;
        info.extend_from_slice(&len.to_be_bytes());
        info.extend_from_slice(name.as_bytes());
    }
    info.extend_from_slice(src.public.as_bytes());
    info.extend_from_slice(dst.public.as_bytes());
    info.extend_from_slice(&spi.to_be_bytes());
    info.extend_from_slice(&epoch.to_be_bytes());

    let prk =
        ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, EXTRACT_SALT).extract(shared.as_bytes());
    let mut out = [0u8; SA_KEY_LEN];
    let info_parts = [info.as_slice()];
    prk.expand(&info_parts, SaKeyLen)
        .and_then(|okm| okm.fill(&mut out))
        .expect("HKDF-SHA256 can expand 36 bytes");
    let key = SaKey(out);
    out.zeroize();
    Ok(key)
}

struct SaKeyLen;

impl ring::hkdf::KeyType for SaKeyLen {
    fn len(&self) -> usize {
        SA_KEY_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep<'a>(name: &'a str, k: &NodeKey) -> Endpoint<'a> {
        Endpoint {
            name,
            public: k.public_key(),
        }
    }

    #[test]
    fn both_ends_derive_the_same_key_for_each_direction() {
        let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
        let (a, b) = (ep("n1", &ka), ep("n2", &kb));
        let a_out = derive_sa_key(&ka, a, b, Direction::Outbound, 0x100, 7).unwrap();
        let b_in = derive_sa_key(&kb, b, a, Direction::Inbound, 0x100, 7).unwrap();
        assert_eq!(a_out.as_bytes(), b_in.as_bytes());
        let b_out = derive_sa_key(&kb, b, a, Direction::Outbound, 0x200, 7).unwrap();
        let a_in = derive_sa_key(&ka, a, b, Direction::Inbound, 0x200, 7).unwrap();
        assert_eq!(b_out.as_bytes(), a_in.as_bytes());
    }

    #[test]
    fn directions_spis_epochs_and_pairs_never_share_a_key() {
        let (ka, kb, kc) = (
            NodeKey::generate(),
            NodeKey::generate(),
            NodeKey::generate(),
        );
        let (a, b, c) = (ep("n1", &ka), ep("n2", &kb), ep("n3", &kc));
        let keys = [
            derive_sa_key(&ka, a, b, Direction::Outbound, 0x100, 1).unwrap(),
            derive_sa_key(&ka, a, b, Direction::Inbound, 0x100, 1).unwrap(),
            derive_sa_key(&ka, a, b, Direction::Outbound, 0x101, 1).unwrap(),
            derive_sa_key(&ka, a, b, Direction::Outbound, 0x100, 2).unwrap(),
            derive_sa_key(&ka, a, c, Direction::Outbound, 0x100, 1).unwrap(),
            // The same key material under swapped names is still another key.
            derive_sa_key(
                &ka,
                Endpoint { name: "n2", ..a },
                Endpoint { name: "n1", ..b },
                Direction::Outbound,
                0x100,
                1,
            )
            .unwrap(),
        ];
        for (i, x) in keys.iter().enumerate() {
            for y in &keys[i + 1..] {
                assert_ne!(x.as_bytes(), y.as_bytes());
            }
        }
    }

    #[test]
    fn names_cannot_run_into_each_other() {
        let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
        let x =
            derive_sa_key(&ka, ep("n1", &ka), ep("2n", &kb), Direction::Outbound, 1, 1).unwrap();
        let y =
            derive_sa_key(&ka, ep("n12", &ka), ep("n", &kb), Direction::Outbound, 1, 1).unwrap();
        assert_ne!(x.as_bytes(), y.as_bytes());
    }

    #[test]
    fn a_low_order_peer_key_and_a_foreign_private_key_are_refused() {
        let ka = NodeKey::generate();
        let zero = Endpoint {
            name: "evil",
            public: PublicKey::from([0u8; 32]),
        };
        let e = derive_sa_key(&ka, ep("n1", &ka), zero, Direction::Outbound, 1, 1).unwrap_err();
        assert!(matches!(e, DeriveError::NonContributory { .. }), "{e}");
        let other = NodeKey::generate();
        let e = derive_sa_key(
            &other,
            ep("n1", &ka),
            ep("n2", &ka),
            Direction::Outbound,
            1,
            1,
        )
        .unwrap_err();
        assert!(matches!(e, DeriveError::WrongLocalKey { .. }), "{e}");
    }

    #[test]
    fn debug_never_shows_key_material() {
        let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
        let k =
            derive_sa_key(&ka, ep("n1", &ka), ep("n2", &kb), Direction::Outbound, 1, 1).unwrap();
        let dbg = format!("{k:?}");
        assert_eq!(dbg, "SaKey(<redacted>)");
        let hex: String = k.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert!(!format!("{:?}", (&k, &ka)).contains(&hex[..16]));
    }
}
