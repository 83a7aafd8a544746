//! The `identityd-wg pubkey` command generates the node key once (0600) and prints the same
//! WireGuard base64 public key on every run. Needs no root.

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

fn pubkey(path: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_identityd-wg"))
        .args(["pubkey", "--key"])
        .arg(path)
        .output()
        .expect("run identityd-wg");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn pubkey_generates_a_0600_key_once_and_is_stable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/wg.key");
    let first = pubkey(&path);
    assert_eq!(first.len(), 44, "{first}");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(pubkey(&path), first);
    let file = std::fs::read_to_string(&path).unwrap();
    assert!(
        !file.contains(&first),
        "the key file holds the private key, not the public one"
    );
}
