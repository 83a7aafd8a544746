//! WireGuard handshake flood (issue: strict means strict, "under flood"): an attacker on the
//! node network floods node 2's WireGuard port with handshake initiations while pod 1 pings
//! pod 2 at 100 packets a second through the tunnel.
//!
//! - Without the defence (node 2's device started with `handshake_protection: false`),
//!   random 148-byte type-1 datagrams reach the public-key step: one X25519 operation each.
//! - With it: random content is dropped on mac1 (no key operation); a replayed initiation
//!   with a valid mac1 (the attacker knows the published public key) gets cookie replies
//!   once the node is under load; an attacker that follows the cookie with its real address
//!   is held to its per-source rate. In each case the ping loses under 1% and the device's
//!   counters show the refusals.
//!
//! The attacker is boringtun's own initiator with a random static key (a stranger), run
//! in-process in node 3's namespace, replaying one message at a fixed rate — sending costs
//! it a `sendto` per packet, so one core sustains the rate.

mod wg_support;

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use wg_support::{Cluster, WG_PORT};

/// Flood packets per second: what one core sends through the lab's veth/bridge path with
/// room to spare (measured: the sender, not the victim, is the limit above ~60k).
const RATE: u64 = 20_000;
const FLOOD_SECS: u64 = 8;
/// 100 pps for the length of the flood.
const PINGS: u32 = 800;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Random,
    ValidMac1,
    FollowsCookies,
}

/// The device's counters over its UAPI socket (`get=identityd-counters`).
fn counters(c: &Cluster, i: usize) -> HashMap<String, u64> {
    let path = format!("/var/run/wireguard/{}.sock", c.nodes[i].iface);
    let mut s = UnixStream::connect(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    s.write_all(b"get=identityd-counters\n\n").unwrap();
    let mut out = HashMap::new();
    for line in BufReader::new(s).lines() {
        let line = line.unwrap();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.insert(k.to_owned(), v.parse().unwrap_or(0));
        }
    }
    assert_eq!(out.get("errno"), Some(&0), "counters answer: {out:?}");
    out
}

fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>, k: &str) -> u64 {
    after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0)
}

fn public_key(b64: &str) -> x25519::PublicKey {
    let out = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            ch.stdin.take().unwrap().write_all(b64.as_bytes())?;
            ch.wait_with_output()
        })
        .expect("base64 -d");
    let bytes: [u8; 32] = out.stdout.try_into().expect("32-byte public key");
    x25519::PublicKey::from(bytes)
}

/// Sends `mode` initiations from `src` to `dst` at [`RATE`] for [`FLOOD_SECS`]; returns the
/// number sent and the cookie replies the attacker received.
fn flood(mode: Mode, src: Ipv4Addr, dst: SocketAddr, victim: x25519::PublicKey) -> (u64, u64) {
    let sock = UdpSocket::bind((src, 0)).expect("attacker socket");
    sock.set_nonblocking(true).unwrap();
    let mut attacker = Tunn::new(
        x25519::StaticSecret::from(rand::random::<[u8; 32]>()),
        victim,
        None,
        None,
        7,
        None,
    );
    let mut buf = vec![0u8; 2048];
    let mut rx = vec![0u8; 2048];
    let mut msg = match attacker.format_handshake_initiation(&mut buf, true) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        other => panic!("initiation: {other:?}"),
    };
    let (mut sent, mut cookies) = (0_u64, 0_u64);
    let start = Instant::now();
    let end = start + Duration::from_secs(FLOOD_SECS);
    while Instant::now() < end {
        for _ in 0..64 {
            if mode == Mode::Random {
                msg.iter_mut().skip(4).for_each(|b| *b = rand::random());
            }
            if sock.send_to(&msg, dst).is_ok() {
                sent += 1;
            }
        }
        // Cookie replies: the cookie-following attacker feeds them to its initiator, whose
        // next message then carries a valid mac2 for this address.
        while let Ok((n, _)) = sock.recv_from(&mut rx) {
            if n == 64 && rx[0] == 3 {
                cookies += 1;
                if mode == Mode::FollowsCookies
                    && matches!(
                        attacker.decapsulate(None, &rx[..n], &mut buf),
                        TunnResult::Done
                    )
                    && let TunnResult::WriteToNetwork(p) =
                        attacker.format_handshake_initiation(&mut buf, true)
                {
                    msg = p.to_vec();
                }
            }
        }
        // Pace to RATE.
        let due = Duration::from_secs_f64(sent as f64 / RATE as f64);
        if let Some(ahead) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
    (sent, cookies)
}

/// Pod 1 pings pod 2 at 100 pps while `mode` floods node 2 from node 3; returns the loss
/// in percent, the packets sent, the cookies received and node 2's counter deltas.
fn attack(c: &Cluster, mode: Mode) -> (f64, u64, u64, HashMap<String, u64>) {
    let victim = public_key(&c.nodes[1].public_key);
    let target = SocketAddr::from((c.nodes[1].underlay_ip, WG_PORT));
    let before = counters(c, 1);
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.nodes[0].pod_ns,
            "ping",
            "-q",
            "-i",
            "0.01",
            "-W",
            "1",
        ])
        .args(["-c", &PINGS.to_string()])
        .arg(c.nodes[1].pod_ip.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ping");
    let src = c.nodes[2].underlay_ip;
    let (sent, cookies) = c
        .topo
        .run_in(&c.nodes[2].ns, || flood(mode, src, target, victim));
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let received: f64 = text
        .split(", ")
        .find_map(|f| f.strip_suffix(" received"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("ping summary: {text}"));
    let after = counters(c, 1);
    let d = after
        .keys()
        .map(|k| (k.clone(), delta(&before, &after, k)))
        .collect();
    let loss = (f64::from(PINGS) - received) * 100.0 / f64::from(PINGS);
    eprintln!(
        "{mode:?}: sent {sent} ({:.0}/s), cookies back {cookies}, ping loss {loss:.1}%, node 2: {d:?}",
        sent as f64 / FLOOD_SECS as f64
    );
    (loss, sent, cookies, d)
}

fn restart_with_protection(c: &mut Cluster, on: bool) {
    let path = c.nodes[1].config_path.clone();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cfg["handshake_protection"] = serde_json::Value::Bool(on);
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    c.kill(1);
    c.start(1);
    // The restarted device initiates (pod 1's node still holds the old session).
    assert!(
        c.ping_until(1, c.nodes[0].pod_ip, 30, "00")
            && c.ping_until(0, c.nodes[1].pod_ip, 15, "00"),
        "pod 1 reaches pod 2 after node 2's device restarted (protection {on})"
    );
}

#[test]
fn a_handshake_flood_costs_no_key_operations_and_does_not_stop_the_tunnel() {
    let mut c = Cluster::new("hsflood", 3);
    assert!(
        c.ping_until(0, c.nodes[1].pod_ip, 15, "00"),
        "pod 1 reaches pod 2"
    );

    // Without the defence: every random initiation reaches the public-key step.
    restart_with_protection(&mut c, false);
    let (loss, sent, _, d) = attack(&c, Mode::Random);
    let ops = d["handshake_public_key_operations"];
    // Each datagram the device reads costs one; it cannot read them all (the rest overflow
    // its socket buffer, which is the attack working too).
    assert!(
        ops * 4 >= sent && ops >= 10_000,
        "without the defence each junk initiation costs a key operation: {ops} of {sent} (loss {loss:.1}%)"
    );
    eprintln!(
        "without the defence: {ops} X25519 operations for {sent} junk datagrams, ping loss {loss:.1}%"
    );

    restart_with_protection(&mut c, true);
    // Random content: dropped on mac1, no key operation.
    let (loss, sent, _, d) = attack(&c, Mode::Random);
    assert!(loss < 1.0, "random flood: ping loss {loss:.1}% (want < 1%)");
    assert!(
        d["handshake_invalid_mac"] * 2 >= sent,
        "junk counted as invalid mac1: {d:?} of {sent}"
    );
    assert!(
        d["handshake_public_key_operations"] <= 5,
        "no key operation for junk (a few are the peers' own handshakes): {d:?}"
    );

    // A valid mac1, replayed: cookie replies under load, key work bounded by the threshold.
    let (loss, sent, cookies, d) = attack(&c, Mode::ValidMac1);
    let bound = (200 + 5) * (FLOOD_SECS + 1);
    assert!(
        loss < 1.0,
        "valid-mac1 flood: ping loss {loss:.1}% (want < 1%)"
    );
    assert!(
        d["handshake_cookie_replies"] * 2 >= sent && cookies > 0,
        "under load the flood gets cookie replies: {d:?} of {sent}, {cookies} came back"
    );
    assert!(
        d["handshake_public_key_operations"] <= bound,
        "key operations bounded by the load threshold ({bound}): {d:?}"
    );

    // The attacker follows cookies with its real address: its source's rate bounds it.
    let (loss, sent, cookies, d) = attack(&c, Mode::FollowsCookies);
    let bound = (200 + 25) * (FLOOD_SECS + 1);
    assert!(
        loss < 1.0,
        "cookie-following flood: ping loss {loss:.1}% (want < 1%)"
    );
    assert!(cookies > 0, "the attacker got a cookie");
    assert!(
        d["handshake_rate_limited"] * 2 >= sent,
        "mac2-valid initiations over the source's rate are dropped: {d:?} of {sent}"
    );
    assert!(
        d["handshake_public_key_operations"] <= bound,
        "key operations bounded by threshold + per-source rate ({bound}): {d:?}"
    );
    // The device still answers its UAPI and the tunnel still carries traffic.
    assert!(
        c.ping(0, c.nodes[1].pod_ip, 5, "00"),
        "the tunnel after the floods"
    );
}
