//! The WireGuard cross-platform userspace API (UAPI) text protocol, as spoken on
//! `/var/run/wireguard/<iface>.sock` by `wg` from wireguard-tools.
//!
//! Parsing and formatting are pure; [`crate::device`] serves the socket. Input comes from a
//! local root-only socket but is still parsed defensively: every error names the line.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use zeroize::Zeroizing;

use crate::key::{PublicKey, parse_hex32};
use crate::plan::{Cidr, PeerConfig};

/// The folder holding UAPI sockets (global across network namespaces).
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// The UAPI socket path of interface `iface`.
#[must_use]
pub fn socket_path(iface: &str) -> std::path::PathBuf {
    std::path::Path::new(SOCKET_DIR).join(format!("{iface}.sock"))
}

/// identityd's extension request: the device's drop and handshake-defence counters as
/// `key=value` lines (never sent by the `wg` tool).
pub const GET_COUNTERS: &str = "get=identityd-counters";

/// identityd's extension request: every (local key, peer key) link of every peer, one
/// `link=<peer> local=<key> remote=<key> session_age_ms=<ms|none> sending=<bool>` line each
/// (keys in hex), then `errno=0`.
pub const GET_LINKS: &str = "get=identityd-links";

/// errno values returned on the socket.
pub(crate) const EINVAL: i32 = 22;
pub(crate) const EPERM: i32 = 1;

/// A malformed or unsupported UAPI request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UapiError {
    /// A line that is not `key=value`, or a value of the wrong form.
    #[error("UAPI line {line:?}: {reason}")]
    Invalid {
        /// The offending line.
        line: String,
        /// What was expected.
        reason: &'static str,
    },
    /// A request the device refuses (e.g. replacing the node key, which identityd manages).
    #[error("UAPI {key}: {reason}")]
    Refused {
        /// The key that was refused.
        key: &'static str,
        /// Why.
        reason: &'static str,
    },
}

impl UapiError {
    pub(crate) fn errno(&self) -> i32 {
        match self {
            Self::Invalid { .. } => EINVAL,
            Self::Refused { .. } => EPERM,
        }
    }
}

/// Live state of one peer, for a `get` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer's key.
    pub public_key: PublicKey,
    /// The endpoint in use (configured, or learned from the peer's last valid packet).
    pub endpoint: Option<SocketAddr>,
    /// Allowed IPs.
    pub allowed_ips: BTreeSet<Cidr>,
    /// Persistent keepalive (seconds, 0 = off).
    pub keepalive: u16,
    /// Wall-clock time of the last completed handshake.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received (decrypted payload).
    pub rx_bytes: u64,
    /// Bytes sent (payload before encryption).
    pub tx_bytes: u64,
}

/// One link of a peer (see [`GET_LINKS`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStatus {
    /// The peer (its current key).
    pub peer: PublicKey,
    /// This node's key on the link.
    pub local: PublicKey,
    /// The peer's key on the link.
    pub remote: PublicKey,
    /// Age of the link's valid session, if it has one.
    pub session_age: Option<std::time::Duration>,
    /// Whether the device sends the peer's packets on this link now.
    pub sending: bool,
}

/// Formats a [`GET_LINKS`] answer.
#[must_use]
pub fn format_links(links: &[LinkStatus]) -> String {
    let mut out = String::new();
    for l in links {
        out.push_str(&format!(
            "link={} local={} remote={} session_age_ms={} sending={}\n",
            l.peer.to_hex(),
            l.local.to_hex(),
            l.remote.to_hex(),
            l.session_age
                .map_or_else(|| "none".to_owned(), |d| d.as_millis().to_string()),
            l.sending
        ));
    }
    out.push_str("errno=0\n\n");
    out
}

/// Parses a [`GET_LINKS`] answer (the lines before `errno=0`); lines that do not parse are
/// skipped.
#[must_use]
pub fn parse_links(text: &str) -> Vec<LinkStatus> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = std::collections::HashMap::new();
        for part in line.split_whitespace() {
            if let Some((k, v)) = part.split_once('=') {
                f.insert(k, v);
            }
        }
        let key = |k: &str| f.get(k).and_then(|v| PublicKey::from_hex(v).ok());
        let (Some(peer), Some(local), Some(remote)) = (key("link"), key("local"), key("remote"))
        else {
            continue;
        };
        out.push(LinkStatus {
            peer,
            local,
            remote,
            session_age: f
                .get("session_age_ms")
                .and_then(|v| v.parse().ok())
                .map(std::time::Duration::from_millis),
            sending: f.get("sending") == Some(&"true"),
        });
    }
    out
}

/// Formats a `get=1` answer. `private_key_hex` is included because `wg show` derives the
/// public key from it; the socket is root-only (0600 in a 0700 folder), like the kernel's
/// netlink API, which also returns it to `CAP_NET_ADMIN` only.
#[must_use]
pub fn format_get(
    private_key_hex: &str,
    listen_port: u16,
    fwmark: u32,
    peers: &[PeerStatus],
) -> Zeroizing<String> {
    let mut s = Zeroizing::new(String::new());
    let _ = writeln!(s, "private_key={private_key_hex}");
    let _ = writeln!(s, "listen_port={listen_port}");
    if fwmark != 0 {
        let _ = writeln!(s, "fwmark={fwmark}");
    }
    for p in peers {
        let _ = writeln!(s, "public_key={}", p.public_key.to_hex());
        if let Some(e) = p.endpoint {
            let _ = writeln!(s, "endpoint={e}");
        }
        let (sec, nsec) = p
            .last_handshake
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or((0, 0), |d| (d.as_secs(), d.subsec_nanos()));
        let _ = writeln!(s, "last_handshake_time_sec={sec}");
        let _ = writeln!(s, "last_handshake_time_nsec={nsec}");
        let _ = writeln!(s, "tx_bytes={}", p.tx_bytes);
        let _ = writeln!(s, "rx_bytes={}", p.rx_bytes);
        let _ = writeln!(s, "persistent_keepalive_interval={}", p.keepalive);
        for a in &p.allowed_ips {
            let _ = writeln!(s, "allowed_ip={a}");
        }
        let _ = writeln!(s, "protocol_version=1");
    }
    let _ = writeln!(s, "errno=0");
    s.push('\n');
    s
}

/// One peer section of a `set=1` request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerOp {
    /// The peer.
    pub public_key: Option<PublicKey>,
    /// `remove=true`.
    pub remove: bool,
    /// `update_only=true`: change the peer only if it exists.
    pub update_only: bool,
    /// `endpoint=`.
    pub endpoint: Option<SocketAddr>,
    /// `persistent_keepalive_interval=`.
    pub keepalive: Option<u16>,
    /// `replace_allowed_ips=true`.
    pub replace_allowed_ips: bool,
    /// `allowed_ip=` lines.
    pub allowed_ips: Vec<Cidr>,
}

/// A parsed `set=1` request.
#[derive(Debug, Default)]
pub struct SetRequest {
    /// `private_key=` (hex), kept zeroized.
    pub private_key: Option<Zeroizing<[u8; 32]>>,
    /// `listen_port=`.
    pub listen_port: Option<u16>,
    /// `fwmark=`.
    pub fwmark: Option<u32>,
    /// `replace_peers=true`.
    pub replace_peers: bool,
    /// Peer sections in order.
    pub peers: Vec<PeerOp>,
}

fn bool_value(line: &str, v: &str) -> Result<bool, UapiError> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(line, "expected true or false")),
    }
}

fn invalid(line: &str, reason: &'static str) -> UapiError {
    // Never echo a private key back.
    let line = if line.starts_with("private_key=") || line.starts_with("preshared_key=") {
        line.split('=').next().unwrap_or_default().to_owned() + "=<redacted>"
    } else {
        line.to_owned()
    };
    UapiError::Invalid { line, reason }
}

/// Parses the body of a `set=1` request (the lines after `set=1`, up to the blank line).
///
/// # Errors
/// A line that is not `key=value`, an unknown key, or a value of the wrong form.
pub fn parse_set(body: &str) -> Result<SetRequest, UapiError> {
    let mut req = SetRequest::default();
    for line in body.lines() {
        if line.is_empty() {
            break;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| invalid(line, "expected key=value"))?;
        let peer = req.peers.last_mut();
        match (k, peer) {
            ("private_key", _) => {
                let b = parse_hex32(v).ok_or_else(|| invalid(line, "expected 64 hex digits"))?;
                req.private_key = Some(Zeroizing::new(b));
            }
            ("listen_port", _) => {
                req.listen_port = Some(v.parse().map_err(|_| invalid(line, "expected a port"))?);
            }
            ("fwmark", _) => {
                req.fwmark = Some(v.parse().map_err(|_| invalid(line, "expected a u32"))?);
            }
            ("replace_peers", _) => req.replace_peers = bool_value(line, v)?,
            ("public_key", _) => {
                let key =
                    PublicKey::from_hex(v).map_err(|_| invalid(line, "expected 64 hex digits"))?;
                req.peers.push(PeerOp {
                    public_key: Some(key),
                    ..PeerOp::default()
                });
            }
            (_, None) => {
                return Err(invalid(
                    line,
                    "unknown device key or peer key before public_key",
                ));
            }
            ("remove", Some(p)) => p.remove = bool_value(line, v)?,
            ("update_only", Some(p)) => p.update_only = bool_value(line, v)?,
            ("endpoint", Some(p)) => {
                p.endpoint = Some(
                    v.parse()
                        .map_err(|_| invalid(line, "expected IP:PORT or [IPv6]:PORT"))?,
                );
            }
            ("persistent_keepalive_interval", Some(p)) => {
                p.keepalive = Some(v.parse().map_err(|_| invalid(line, "expected 0..=65535"))?);
            }
            ("replace_allowed_ips", Some(p)) => p.replace_allowed_ips = bool_value(line, v)?,
            ("allowed_ip", Some(p)) => p.allowed_ips.push(
                v.parse()
                    .map_err(|_| invalid(line, "expected ADDRESS/PREFIX"))?,
            ),
            ("preshared_key", Some(_)) => {
                // All-zero means "none"; anything else is not supported (yet).
                let b = parse_hex32(v).ok_or_else(|| invalid(line, "expected 64 hex digits"))?;
                if b != [0; 32] {
                    return Err(UapiError::Refused {
                        key: "preshared_key",
                        reason: "preshared keys are not supported by identityd",
                    });
                }
            }
            ("protocol_version", Some(_)) => {
                if v != "1" {
                    return Err(invalid(line, "only protocol_version=1 exists"));
                }
            }
            (_, Some(_)) => return Err(invalid(line, "unknown peer key")),
        }
    }
    Ok(req)
}

/// Applies the peer part of `req` to `peers` (pure), for the device to then diff and apply.
pub fn apply_set(req: &SetRequest, peers: &mut BTreeMap<PublicKey, PeerConfig>) {
    if req.replace_peers {
        peers.clear();
    }
    for op in &req.peers {
        let Some(key) = op.public_key else { continue };
        if op.remove {
            peers.remove(&key);
            continue;
        }
        if op.update_only && !peers.contains_key(&key) {
            continue;
        }
        let p = peers.entry(key).or_insert_with(|| PeerConfig {
            endpoint: None,
            allowed_ips: BTreeSet::new(),
            keepalive: 0,
            next_public_key: None,
        });
        if let Some(e) = op.endpoint {
            p.endpoint = Some(e);
        }
        if let Some(k) = op.keepalive {
            p.keepalive = k;
        }
        if op.replace_allowed_ips {
            p.allowed_ips.clear();
        }
        p.allowed_ips.extend(op.allowed_ips.iter().copied());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_round_trip() {
        let l = vec![
            LinkStatus {
                peer: PublicKey::from([2; 32]),
                local: PublicKey::from([1; 32]),
                remote: PublicKey::from([2; 32]),
                session_age: Some(std::time::Duration::from_millis(1500)),
                sending: false,
            },
            LinkStatus {
                peer: PublicKey::from([2; 32]),
                local: PublicKey::from([1; 32]),
                remote: PublicKey::from([12; 32]),
                session_age: None,
                sending: true,
            },
        ];
        let text = format_links(&l);
        assert!(text.ends_with("errno=0\n\n"));
        assert_eq!(parse_links(&text), l);
    }

    #[test]
    fn set_request_parses_and_applies() {
        let k2 = PublicKey::from([2; 32]);
        let k3 = PublicKey::from([3; 32]);
        let body = format!(
            "listen_port=51871\nreplace_peers=false\npublic_key={}\nendpoint=10.0.0.2:51871\n\
             persistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.244.2.0/24\n\
             public_key={}\nremove=true\n\n",
            k2.to_hex(),
            k3.to_hex()
        );
        let req = parse_set(&body).unwrap();
        assert_eq!(req.listen_port, Some(51871));
        assert_eq!(req.peers.len(), 2);
        let mut peers = BTreeMap::new();
        peers.insert(
            k3,
            PeerConfig {
                endpoint: None,
                allowed_ips: BTreeSet::new(),
                keepalive: 0,
                next_public_key: None,
            },
        );
        apply_set(&req, &mut peers);
        assert_eq!(peers.len(), 1);
        let p = &peers[&k2];
        assert_eq!(p.keepalive, 25);
        assert_eq!(p.endpoint, Some("10.0.0.2:51871".parse().unwrap()));
        assert_eq!(p.allowed_ips.len(), 1);
    }

    #[test]
    fn bad_set_lines_are_named_and_private_keys_not_echoed() {
        let e = parse_set("endpoint=1.2.3.4:5\n").unwrap_err();
        assert!(e.to_string().contains("endpoint=1.2.3.4:5"), "{e}");
        let e = parse_set("private_key=zz\n").unwrap_err();
        assert!(e.to_string().contains("private_key=<redacted>"), "{e}");
        let e = parse_set(&format!(
            "public_key={}\nallowed_ip=10.0.0.0/40\n",
            "11".repeat(32)
        ))
        .unwrap_err();
        assert!(e.to_string().contains("allowed_ip=10.0.0.0/40"), "{e}");
        assert!(parse_set("no-equals\n").is_err());
    }

    #[test]
    fn get_answer_has_the_uapi_shape() {
        let peer = PeerStatus {
            public_key: PublicKey::from([2; 32]),
            endpoint: Some("10.0.0.2:51871".parse().unwrap()),
            allowed_ips: ["10.244.2.0/24".parse().unwrap()].into(),
            keepalive: 25,
            last_handshake: Some(UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)),
            rx_bytes: 5,
            tx_bytes: 7,
        };
        let s = format_get(&"ab".repeat(32), 51871, 0, &[peer]);
        assert!(s.starts_with(&format!(
            "private_key={}\nlisten_port=51871\n",
            "ab".repeat(32)
        )));
        assert!(s.contains(&format!("public_key={}\n", "02".repeat(32))));
        assert!(s.contains("last_handshake_time_sec=1700000000\n"));
        assert!(s.contains("allowed_ip=10.244.2.0/24\n"));
        assert!(s.ends_with("errno=0\n\n"));
    }

    proptest::proptest! {
        #[test]
        fn parse_set_never_panics_and_never_echoes_key_material(body in "(private_key=[0-9a-fz]{0,70}\n|public_key=[0-9a-f]{64}\n|allowed_ip=[0-9./:a-f]{0,20}\n|endpoint=[^\n]{0,24}\n|[a-z_]{0,12}=[^\n]{0,12}\n|[^\n]{0,30}\n){0,8}") {
            if let Err(e) = parse_set(&body) {
                let msg = e.to_string();
                for line in body.lines().filter(|l| l.starts_with("private_key=")) {
                    let v = &line["private_key=".len()..];
                    if v.len() >= 8 {
                        proptest::prop_assert!(!msg.contains(v), "{msg}");
                    }
                }
            }
        }
    }
}
