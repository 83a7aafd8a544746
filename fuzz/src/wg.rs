//! One-input function for the parser of `identityd-wg`: the body of a WireGuard UAPI `set=1`
//! request (the lines after `set=1`), as the device's UAPI socket reads it.

use std::collections::BTreeMap;

use identityd_wg::uapi::{UapiError, apply_set, parse_set};

/// Lines that carry key material.
const KEY_PREFIXES: [&str; 2] = ["private_key=", "preshared_key="];

/// Values of the key lines (`private_key=`, `preshared_key=`) that an error must never echo:
/// those long enough to search for and not also written on another line.
fn secrets(body: &str) -> Vec<&str> {
    let is_key_line = |l: &str| KEY_PREFIXES.iter().any(|p| l.starts_with(p));
    body.lines()
        .filter(|l| is_key_line(l))
        .filter_map(|l| l.split_once('=').map(|(_, v)| v))
        .filter(|v| v.len() >= 8)
        .filter(|v| !body.lines().any(|l| !is_key_line(l) && l.contains(*v)))
        .collect()
}

/// A `set=1` body (lossy UTF-8) through [`parse_set`], then [`apply_set`] onto no peers.
///
/// # Errors
/// The parser's message when it rejects the body.
///
/// # Panics
/// When a rejection echoes a key line or key material, or applying a parsed request breaks its
/// shape.
pub fn wg_uapi(data: &[u8]) -> Result<(), String> {
    let body = String::from_utf8_lossy(data);
    match parse_set(&body) {
        Ok(req) => {
            assert!(
                req.peers.iter().all(|p| p.public_key.is_some()),
                "a peer section without its public_key"
            );
            let mut peers = BTreeMap::new();
            apply_set(&req, &mut peers);
            assert!(
                peers.len() <= req.peers.len(),
                "more peers than peer sections"
            );
            for (key, p) in &peers {
                let ops = req.peers.iter().filter(|o| o.public_key == Some(*key));
                let ips: usize = ops.map(|o| o.allowed_ips.len()).sum();
                assert!(
                    p.allowed_ips.len() <= ips,
                    "allowed IPs that no section gave"
                );
            }
            Ok(())
        }
        Err(e) => {
            let message = e.to_string();
            assert!(!message.trim().is_empty(), "a rejection without a message");
            // The echoed line itself, not the message: `Display` escapes it (`\0` and a digit
            // can spell a key) and adds its own words.
            if let UapiError::Invalid { line, .. } = &e {
                if let Some(value) = KEY_PREFIXES.iter().find_map(|p| line.strip_prefix(p)) {
                    assert_eq!(value, "<redacted>", "a key line is echoed: {message}");
                } else {
                    for secret in secrets(&body) {
                        assert!(
                            !line.contains(secret),
                            "the error echoes key material: {message}"
                        );
                    }
                }
            }
            Err(message)
        }
    }
}
