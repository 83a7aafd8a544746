//! WireGuard key rotation without a restart and without loss, at the device level: node 1
//! announces a next key beside its current one, its peers handshake to it while the current
//! key's sessions keep carrying traffic, then the next key becomes the only one. A 100 pps
//! ping in each direction of rotation (a peer → node 1, node 1 → a peer) loses nothing, and
//! nothing appears in clear on the underlay. The control: the same flows across the old way
//! of rotating (the device restarted on a new key, the peers given the new key) lose packets,
//! so the measurement can see loss.

mod wg_support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use identityd_tests::tools;
use wg_support::{Capture, Cluster, assert_only_wireguard, pattern_bytes};

const PING_PATTERN: &str = "69646477672d726b"; // "iddwg-rk"

/// A 100 pps ping of `count` packets from node `from`'s pod to node `to`'s pod.
fn flow(c: &Cluster, from: usize, to: usize, count: u32) -> Child {
    Command::new(tools::ip())
        .args(["netns", "exec", &c.nodes[from].pod_ns])
        .arg(tools::ping())
        .args(["-n", "-i", "0.01", "-W", "1", "-p", PING_PATTERN, "-c"])
        .arg(count.to_string())
        .arg(c.nodes[to].pod_ip.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ping")
}

/// (sent, received) from ping's summary line.
fn finish(child: Child) -> (u64, u64) {
    let out = child.wait_with_output().expect("ping output");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary: {text}"));
    let num = |what: &str| -> u64 {
        line.split(", ")
            .find(|p| p.contains(what))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{what} in {line:?}"))
    };
    (num("transmitted"), num("received"))
}

fn wait(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "not within {secs}s: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn hex_of(b64: &str) -> String {
    b64.parse::<identityd_wg::key::PublicKey>()
        .expect("a public key")
        .to_hex()
}

#[test]
fn wg_a_rotation_through_a_next_key_loses_no_packet() {
    let mut c = Cluster::new("wgrotate", 3);
    let node_ips: Vec<_> = c.nodes.iter().map(|n| n.underlay_ip).collect();
    for (from, to) in [(1, 0), (0, 2)] {
        let ip = c.nodes[to].pod_ip;
        assert!(
            c.ping_until(from, ip, 10, PING_PATTERN),
            "before: {from} -> {to}"
        );
    }
    let old = c.nodes[0].public_key.clone();

    let cap = Capture::start(&mut c, "rotate");
    let flows = [flow(&c, 1, 0, 1200), flow(&c, 0, 2, 1200)];
    std::thread::sleep(Duration::from_secs(1));

    // Announced: node 1 has a next key; its peers know it.
    let (next_path, next) = c.new_key(0, "wg.next.key");
    c.nodes[0].next_key = Some((next_path.clone(), next.clone()));
    for i in 0..3 {
        let peers: Vec<usize> = (0..3).filter(|&j| j != i).collect();
        c.write_config(i, &peers);
    }
    let (old_hex, next_hex) = (hex_of(&old), hex_of(&next));
    // Switched: both peers built a session to the next key, and node 1 sends on it.
    wait(
        10,
        "both peers have a session with node 1's next key",
        || {
            (1..3).all(|i| {
                c.links(i)
                    .iter()
                    .any(|l| l.remote.to_hex() == next_hex && l.session_age.is_some() && l.sending)
            })
        },
    );
    wait(10, "node 1 sends from its next key to both peers", || {
        let links = c.links(0);
        (1..3).all(|i| {
            let peer = hex_of(&c.nodes[i].public_key);
            links
                .iter()
                .any(|l| l.peer.to_hex() == peer && l.local.to_hex() == next_hex && l.sending)
        })
    });
    // Retired: the next key is node 1's only key.
    c.nodes[0].key_path = next_path;
    c.nodes[0].public_key = next.clone();
    c.nodes[0].next_key = None;
    for i in 0..3 {
        let peers: Vec<usize> = (0..3).filter(|&j| j != i).collect();
        c.write_config(i, &peers);
    }
    wait(10, "node 1's old key is gone from every device", || {
        c.wg_show(0, "public-key").trim() == next
            && (1..3).all(|i| {
                c.links(i)
                    .iter()
                    .all(|l| l.remote.to_hex() != old_hex && l.local.to_hex() != old_hex)
            })
            && c.links(0).iter().all(|l| l.local.to_hex() != old_hex)
    });
    let [a, b] = flows;
    let (sent_a, got_a) = finish(a);
    let (sent_b, got_b) = finish(b);
    let (raw, pkts) = cap.stop(&mut c);
    eprintln!(
        "rotation through a next key: peer → node 1 {got_a}/{sent_a}, node 1 → peer {got_b}/{sent_b}"
    );
    assert_eq!(got_a, sent_a, "a peer → the rotating node: no packet lost");
    assert_eq!(got_b, sent_b, "the rotating node → a peer: no packet lost");
    assert_only_wireguard(&raw, &pkts, &node_ips, &[&pattern_bytes(PING_PATTERN)]);
    // `wg show` lists the new key only.
    for i in 1..3 {
        let peers = c.wg_show(i, "peers");
        assert!(peers.contains(&next) && !peers.contains(&old), "{peers}");
    }

    // The control: the old way (restart on a new key, peers told afterwards) loses packets.
    let flows = [flow(&c, 1, 0, 600), flow(&c, 0, 2, 600)];
    std::thread::sleep(Duration::from_secs(1));
    c.kill(0);
    // A restart takes its time (a daemon start, a config read): 300 ms of it here, so the
    // control does not depend on how fast this machine restarts a process.
    std::thread::sleep(Duration::from_millis(300));
    let (fresh_path, fresh) = c.new_key(0, "wg.fresh.key");
    c.nodes[0].key_path = fresh_path;
    c.nodes[0].public_key = fresh;
    for i in 0..3 {
        let peers: Vec<usize> = (0..3).filter(|&j| j != i).collect();
        c.write_config(i, &peers);
    }
    c.start(0);
    let [a, b] = flows;
    let (sent_a, got_a) = finish(a);
    let (sent_b, got_b) = finish(b);
    eprintln!(
        "control, restart on a new key: peer → node 1 {got_a}/{sent_a}, node 1 → peer {got_b}/{sent_b}"
    );
    // Packets node 1 sends while it is down wait in its persistent TUN and may all get through;
    // what peers send to it meanwhile cannot.
    assert!(
        got_a < sent_a,
        "restarting on a new key loses the packets sent to the node meanwhile (the measurement sees loss)"
    );
}

/// Drops (or stops dropping) WireGuard handshake messages (initiation, response) leaving node
/// `i`; transport data passes.
fn block_handshakes(c: &Cluster, i: usize, on: bool) {
    let nft = tools::nft();
    let nft = nft.to_str().unwrap();
    let ns = &c.nodes[i].ns;
    if on {
        let port = wg_support::WG_PORT.to_string();
        c.topo.exec(ns, &[nft, "add", "table", "inet", "iddhs"]);
        c.topo.exec(
            ns,
            &[
                nft, "add", "chain", "inet", "iddhs", "out", "{", "type", "filter", "hook",
                "output", "priority", "0", ";", "}",
            ],
        );
        for kind in ["1", "2"] {
            c.topo.exec(
                ns,
                &[
                    nft, "add", "rule", "inet", "iddhs", "out", "udp", "dport", &port, "@th,64,8",
                    kind, "drop",
                ],
            );
        }
    } else {
        c.topo.exec(ns, &[nft, "delete", "table", "inet", "iddhs"]);
    }
}

/// Both ends of a pair rotate and retire at once, before either has a session between the two
/// new keys (that handshake takes one round trip; here handshakes are held back meanwhile so
/// the window is seconds, not a millisecond): each one's only session to the other is then the
/// one to the other's *old* key. With the retired key kept answering (what the node daemon does
/// for `RETIRE_GRACE`), nothing is lost; the control, the same retirement with the old key
/// dropped at once, loses what both send in that window.
#[allow(clippy::needless_range_loop)] // nodes and their keys side by side, by index
fn rotate_both_and_retire(c: &mut Cluster, tag: &str, keep_old: bool) -> [(u64, u64); 2] {
    let old: Vec<(PathBuf, String)> = (0..2)
        .map(|i| (c.nodes[i].key_path.clone(), c.nodes[i].public_key.clone()))
        .collect();
    // Announced on both nodes; each peer handshakes to the other's next key.
    let next: Vec<(PathBuf, String)> = (0..2)
        .map(|i| c.new_key(i, &format!("wg.{tag}.key")))
        .collect();
    for i in 0..2 {
        c.nodes[i].next_key = Some(next[i].clone());
        c.nodes[i].next_answer_only = false;
    }
    c.write_config(0, &[1]);
    c.write_config(1, &[0]);
    wait(
        10,
        "each node's next key has a session with the other",
        || {
            (0..2).all(|i| {
                let n = hex_of(&next[i].1);
                c.links(i)
                    .iter()
                    .any(|l| l.local.to_hex() == n && l.session_age.is_some())
            })
        },
    );
    let flows = [flow(c, 0, 1, 800), flow(c, 1, 0, 800)];
    std::thread::sleep(Duration::from_millis(500));
    // Both retire (the peers' views of each other unchanged: they learn it later).
    for i in 0..2 {
        block_handshakes(c, i, true);
    }
    // Each node's own config says it retired; what it says about the other is unchanged (the
    // other's old key with its next one): it learns the other's switch later.
    let announced: Vec<(PathBuf, Option<(PathBuf, String)>)> = (0..2)
        .map(|i| (c.nodes[i].key_path.clone(), c.nodes[i].next_key.clone()))
        .collect();
    for i in 0..2 {
        c.nodes[i].key_path = next[i].0.clone();
        c.nodes[i].next_key = keep_old.then(|| old[i].clone());
        c.nodes[i].next_answer_only = keep_old;
        c.write_config(i, &[1 - i]);
        (c.nodes[i].key_path, c.nodes[i].next_key) = announced[i].clone();
        c.nodes[i].next_answer_only = false;
    }
    wait(
        5,
        "both devices hold their new key as the current one",
        || (0..2).all(|i| c.wg_show(i, "public-key").trim() == next[i].1),
    );
    std::thread::sleep(Duration::from_secs(2));
    // The new keys' handshake completes; then each learns the other's switch and the retired
    // keys go.
    for i in 0..2 {
        block_handshakes(c, i, false);
    }
    wait(15, "a session between the two new keys", || {
        (0..2).all(|i| {
            let (n, m) = (hex_of(&next[i].1), hex_of(&next[1 - i].1));
            c.links(i)
                .iter()
                .any(|l| l.local.to_hex() == n && l.remote.to_hex() == m && l.session_age.is_some())
        })
    });
    for i in 0..2 {
        c.nodes[i].key_path = next[i].0.clone();
        c.nodes[i].public_key = next[i].1.clone();
        c.nodes[i].next_key = None;
        c.nodes[i].next_answer_only = false;
    }
    c.write_config(0, &[1]);
    c.write_config(1, &[0]);
    let [a, b] = flows;
    [finish(a), finish(b)]
}

#[test]
fn wg_both_ends_retiring_at_once_lose_nothing_while_the_retired_keys_answer() {
    let mut c = Cluster::new("wgretire", 2);
    for (from, to) in [(0, 1), (1, 0)] {
        let ip = c.nodes[to].pod_ip;
        assert!(
            c.ping_until(from, ip, 10, PING_PATTERN),
            "before: {from} -> {to}"
        );
    }
    // The control first: old keys dropped at the switch.
    let control = rotate_both_and_retire(&mut c, "control", false);
    eprintln!(
        "both retire, old keys dropped: 0 → 1 {:?}, 1 → 0 {:?} (sent, received)",
        control[0], control[1]
    );
    for (sent, got) in control {
        assert!(
            got < sent,
            "dropping the old keys at once loses what is sent on sessions to them (the measurement sees loss)"
        );
    }
    for (from, to) in [(0, 1), (1, 0)] {
        let ip = c.nodes[to].pod_ip;
        assert!(
            c.ping_until(from, ip, 10, PING_PATTERN),
            "after the control: {from} -> {to}"
        );
    }
    let kept = rotate_both_and_retire(&mut c, "kept", true);
    eprintln!(
        "both retire, old keys answering: 0 → 1 {:?}, 1 → 0 {:?} (sent, received)",
        kept[0], kept[1]
    );
    for (dir, (sent, got)) in ["0 → 1", "1 → 0"].into_iter().zip(kept) {
        assert_eq!(
            got, sent,
            "{dir}: no packet lost while the retired keys answer"
        );
    }
}
