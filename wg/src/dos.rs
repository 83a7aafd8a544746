//! Handshake flood defence, in front of every public-key operation.
//!
//! A handshake initiation costs the responder an X25519 operation (and a response two more)
//! before it knows who sent it, so a flood of initiations is the cheap way to take a
//! WireGuard node down. The protocol's own answer (WireGuard §5.3) is applied here, in the
//! order the Linux implementation uses:
//!
//! 1. **mac1** (a BLAKE2s MAC keyed by this node's public key) is checked first: random
//!    datagrams cost one hash and are dropped.
//! 2. **Under load** (more than [`LOAD_THRESHOLD`] handshake messages in a second) a message
//!    must also carry a valid **mac2**, a MAC keyed by a cookie bound to its source address;
//!    without one it gets a *cookie reply* (one XChaCha20-Poly1305 seal, no DH) and is
//!    dropped. A spoofed source never sees its cookie. Steps 1–2 are boringtun's
//!    `RateLimiter`, shared by the device and every peer's `Tunn` so both agree on the cookie.
//! 3. Still under load, **per-source token buckets** ([`PER_SOURCE_PER_SECOND`] messages a
//!    second, bursts of [`PER_SOURCE_BURST`]) bound what an attacker that follows cookies
//!    with its real address can make the node compute — the published public key lets it
//!    send valid mac1s, and replaying one valid message costs it nothing.
//!
//! Together they bound the public-key work per second by `LOAD_THRESHOLD` plus
//! `PER_SOURCE_PER_SECOND` per address that can receive packets, whatever the flood rate, so
//! the handshake work never starves the data path (which shares the receive loop).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, TunnResult};
use boringtun::x25519;

/// Handshake messages per second the node takes before it asks for cookies. Legitimate
/// peers handshake once per two minutes each (plus retries); 100 is boringtun's device
/// default. Each message counts twice (the device's check and the peer's `Tunn` re-check).
pub const LOAD_THRESHOLD: u64 = 200;
/// Handshake messages per second one source address may have processed while under load
/// (the Linux implementation's figure).
pub const PER_SOURCE_PER_SECOND: f64 = 20.0;
/// Burst of [`PER_SOURCE_PER_SECOND`].
pub const PER_SOURCE_BURST: f64 = 5.0;
/// Sources tracked at most; past that, buckets idle for a second are forgotten.
const MAX_SOURCES: usize = 16_384;

/// What the guard decided about one datagram.
#[derive(Debug)]
pub enum Verdict<'a> {
    /// Process it (a data packet, a cookie reply, or a handshake that passed every check),
    /// with the local public key a handshake's mac1 was made for (`None` for other messages,
    /// and when the defence is off).
    Process(Packet<'a>, Option<x25519::PublicKey>),
    /// Send this cookie reply to the source, drop the handshake.
    CookieReply(&'a [u8]),
    /// Drop it.
    Drop(Refusal),
}

/// Why a handshake message was dropped before any public-key operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a WireGuard message, or a handshake whose mac1 is wrong.
    Invalid,
    /// Under load, over its source's rate.
    RateLimited,
}

/// Handshake-defence counters (device lifetime).
#[derive(Debug, Default)]
pub struct HandshakeCounters {
    /// Handshake messages dropped because their mac1 was wrong (or they did not parse).
    pub invalid_mac: AtomicU64,
    /// Cookie replies sent (under load, no valid mac2).
    pub cookie_replies: AtomicU64,
    /// Handshake messages dropped by a source's rate limit.
    pub rate_limited: AtomicU64,
    /// Handshake initiations that reached the public-key step (one X25519 each, or more).
    pub public_key_operations: AtomicU64,
}

/// Whether `datagram` has the size and type of a handshake initiation or response.
fn is_handshake(datagram: &[u8]) -> bool {
    matches!(
        (datagram.first(), datagram.len()),
        (Some(1), 148) | (Some(2), 92)
    )
}

/// Whether the mac1 of handshake message `datagram` was made for the responder key `public`
/// (WireGuard §5.4.4: `MAC(HASH(LABEL_MAC1 ‖ public), message up to mac1)`), compared in
/// constant time.
fn mac1_matches(public: &x25519::PublicKey, datagram: &[u8]) -> bool {
    use blake2::digest::{Digest as _, Mac as _};
    type Blake2sMac16 = blake2::Blake2sMac<blake2::digest::consts::U16>;
    if datagram.len() < 32 {
        return false;
    }
    let key = blake2::Blake2s256::new()
        .chain_update(b"mac1----")
        .chain_update(public.as_bytes())
        .finalize();
    let (msg, macs) = datagram.split_at(datagram.len() - 32);
    let Ok(mut mac) = <Blake2sMac16 as blake2::digest::KeyInit>::new_from_slice(&key) else {
        return false;
    };
    mac.update(msg);
    mac.verify_slice(&macs[..16]).is_ok()
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Shared by the receive loop and the timers.
pub struct HandshakeGuard {
    /// One limiter per local key (mac1 is keyed by the responder's public key): the current
    /// key and, while the node rotates, the next one.
    limiters: std::sync::RwLock<Vec<(x25519::PublicKey, Arc<RateLimiter>)>>,
    /// Off only when a test measures the attack without the defence.
    enabled: bool,
    window: Mutex<(Instant, u64)>,
    sources: Mutex<HashMap<IpAddr, Bucket>>,
    /// The counters.
    pub counters: HandshakeCounters,
}

impl std::fmt::Debug for HandshakeGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandshakeGuard")
            .field("enabled", &self.enabled)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl HandshakeGuard {
    /// A guard for the node whose public key is `public`.
    #[must_use]
    pub fn new(public: &x25519::PublicKey, enabled: bool) -> Self {
        Self {
            limiters: std::sync::RwLock::new(vec![(
                *public,
                Arc::new(RateLimiter::new(public, LOAD_THRESHOLD)),
            )]),
            enabled,
            window: Mutex::new((Instant::now(), 0)),
            sources: Mutex::new(HashMap::new()),
            counters: HandshakeCounters::default(),
        }
    }

    fn limiters(&self) -> Vec<(x25519::PublicKey, Arc<RateLimiter>)> {
        self.limiters
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The rate limiter of local key `public` that each `Tunn` of that key shares (same
    /// cookie secret, one load count); `None` when the defence is off (each `Tunn` then has
    /// its own, as boringtun does) or the key is not one of this node's.
    #[must_use]
    pub fn shared_limiter(&self, public: &x25519::PublicKey) -> Option<Arc<RateLimiter>> {
        if !self.enabled {
            return None;
        }
        self.limiters()
            .into_iter()
            .find(|(k, _)| k == public)
            .map(|(_, l)| l)
    }

    /// Sets the local keys: limiters of kept keys stay (their cookies stay valid), new keys
    /// get one, removed keys lose theirs.
    pub fn set_keys(&self, publics: &[x25519::PublicKey]) {
        let mut l = self
            .limiters
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let old = std::mem::take(&mut *l);
        for p in publics {
            let lim = old.iter().find(|(k, _)| k == p).map_or_else(
                || Arc::new(RateLimiter::new(p, LOAD_THRESHOLD)),
                |(_, x)| Arc::clone(x),
            );
            l.push((*p, lim));
        }
    }

    /// Called at least once a second: starts a new load window.
    pub fn tick(&self) {
        for (_, l) in self.limiters() {
            l.reset_count();
        }
    }

    /// Whether more than [`LOAD_THRESHOLD`] handshake messages passed the mac checks in the
    /// current second (counted here, beside the limiter's own count).
    fn count_and_check_load(&self, now: Instant) -> bool {
        let mut w = lock(&self.window);
        if now.duration_since(w.0) >= Duration::from_secs(1) {
            *w = (now, 0);
        }
        w.1 += 1;
        w.1 > LOAD_THRESHOLD
    }

    fn source_allows(&self, src: IpAddr, now: Instant) -> bool {
        let mut sources = lock(&self.sources);
        if sources.len() >= MAX_SOURCES && !sources.contains_key(&src) {
            sources.retain(|_, b| now.duration_since(b.at) < Duration::from_secs(1));
            if sources.len() >= MAX_SOURCES {
                return false;
            }
        }
        let b = sources.entry(src).or_insert(Bucket {
            tokens: PER_SOURCE_BURST,
            at: now,
        });
        let refill = now.duration_since(b.at).as_secs_f64() * PER_SOURCE_PER_SECOND;
        b.tokens = (b.tokens + refill).min(PER_SOURCE_BURST);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Checks one datagram from `src`; `scratch` holds a cookie reply when one is due.
    pub fn check<'a>(&self, src: IpAddr, datagram: &'a [u8], scratch: &'a mut [u8]) -> Verdict<'a> {
        if !self.enabled {
            return match boringtun::noise::Tunn::parse_incoming_packet(datagram) {
                Ok(p) => Verdict::Process(p, None),
                Err(_) => Verdict::Drop(Refusal::Invalid),
            };
        }
        // While the node rotates it has two keys: a handshake goes to the one its mac1 was
        // made for (one BLAKE2s per key, no side effect; the limiter then checks it again).
        let limiters = self.limiters();
        let i = if limiters.len() > 1 && is_handshake(datagram) {
            let Some(i) = limiters.iter().position(|(k, _)| mac1_matches(k, datagram)) else {
                self.counters.invalid_mac.fetch_add(1, Ordering::Relaxed);
                return Verdict::Drop(Refusal::Invalid);
            };
            i
        } else {
            0
        };
        let (public, limiter) = &limiters[i];
        match limiter.verify_packet(Some(src), datagram, scratch) {
            Ok(p @ (Packet::HandshakeInit(_) | Packet::HandshakeResponse(_))) => {
                let now = Instant::now();
                if self.count_and_check_load(now) && !self.source_allows(src, now) {
                    self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                    return Verdict::Drop(Refusal::RateLimited);
                }
                Verdict::Process(p, Some(*public))
            }
            Ok(p) => Verdict::Process(p, None),
            Err(TunnResult::WriteToNetwork(reply)) => {
                self.counters.cookie_replies.fetch_add(1, Ordering::Relaxed);
                Verdict::CookieReply(reply)
            }
            Err(TunnResult::Err(WireGuardError::InvalidMac)) => {
                self.counters.invalid_mac.fetch_add(1, Ordering::Relaxed);
                Verdict::Drop(Refusal::Invalid)
            }
            Err(_) => Verdict::Drop(Refusal::Invalid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keypair() -> (x25519::StaticSecret, x25519::PublicKey) {
        let s = x25519::StaticSecret::from(rand::random::<[u8; 32]>());
        let p = x25519::PublicKey::from(&s);
        (s, p)
    }

    /// One valid initiation from a stranger (random static key) to `responder`.
    fn initiation(responder: &x25519::PublicKey) -> (boringtun::noise::Tunn, Vec<u8>) {
        let (s, _) = keypair();
        let mut t = boringtun::noise::Tunn::new(s, *responder, None, None, 1, None);
        let mut buf = vec![0u8; 256];
        let TunnResult::WriteToNetwork(p) = t.format_handshake_initiation(&mut buf, true) else {
            panic!("initiation")
        };
        let p = p.to_vec();
        (t, p)
    }

    const SRC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 99, 0, 13));

    #[test]
    fn random_content_is_dropped_by_mac1_before_any_key_operation() {
        let (_, public) = keypair();
        let g = HandshakeGuard::new(&public, true);
        let mut scratch = vec![0u8; 256];
        let mut junk = vec![0u8; 148];
        for i in 0..1000_u32 {
            junk.iter_mut().for_each(|b| *b = rand::random());
            junk[..4].copy_from_slice(&1_u32.to_le_bytes());
            let v = g.check(SRC, &junk, &mut scratch);
            assert!(
                matches!(v, Verdict::Drop(Refusal::Invalid)),
                "junk {i}: {v:?}"
            );
        }
        assert_eq!(g.counters.invalid_mac.load(Ordering::Relaxed), 1000);
        // Without the guard the same junk reaches the key step (what the attack costs).
        let off = HandshakeGuard::new(&public, false);
        assert!(matches!(
            off.check(SRC, &junk, &mut scratch),
            Verdict::Process(Packet::HandshakeInit(_), None)
        ));
    }

    #[test]
    fn with_two_keys_a_handshake_goes_to_the_key_its_mac1_was_made_for() {
        let (_, current) = keypair();
        let (_, next) = keypair();
        let (_, stranger) = keypair();
        let g = HandshakeGuard::new(&current, true);
        g.set_keys(&[current, next]);
        let mut scratch = vec![0u8; 256];
        for (to, want) in [(current, current), (next, next)] {
            let (_, init) = initiation(&to);
            assert!(mac1_matches(&to, &init));
            match g.check(SRC, &init, &mut scratch) {
                Verdict::Process(Packet::HandshakeInit(_), Some(k)) => {
                    assert_eq!(k.as_bytes(), want.as_bytes());
                }
                v => panic!("{v:?}"),
            }
        }
        // Made for a key this node does not have: dropped on mac1.
        let (_, init) = initiation(&stranger);
        assert!(matches!(
            g.check(SRC, &init, &mut scratch),
            Verdict::Drop(Refusal::Invalid)
        ));
        // The next key retired: its handshakes are refused, the current key's still pass.
        g.set_keys(&[current]);
        let (_, init) = initiation(&next);
        assert!(matches!(
            g.check(SRC, &init, &mut scratch),
            Verdict::Drop(Refusal::Invalid)
        ));
        assert!(g.shared_limiter(&next).is_none());
        assert!(g.shared_limiter(&current).is_some());
    }

    #[test]
    fn a_replayed_valid_initiation_gets_cookies_then_the_source_is_rate_limited() {
        let (_, public) = keypair();
        let g = HandshakeGuard::new(&public, true);
        let (mut attacker, init) = initiation(&public);
        let mut scratch = vec![0u8; 256];
        // Below the load threshold a valid mac1 passes.
        let mut passed = 0;
        let mut cookie = None;
        for _ in 0..(LOAD_THRESHOLD + 50) {
            match g.check(SRC, &init, &mut scratch) {
                Verdict::Process(..) => passed += 1,
                Verdict::CookieReply(r) => cookie = Some(r.to_vec()),
                Verdict::Drop(r) => panic!("dropped {r:?} before any cookie"),
            }
        }
        assert_eq!(passed, LOAD_THRESHOLD, "the limiter's own threshold");
        let cookie = cookie.expect("under load: a cookie reply");
        assert!(g.counters.cookie_replies.load(Ordering::Relaxed) >= 50);
        // The attacker follows the cookie (it owns its address): its next initiation
        // carries a valid mac2 and is replayed as fast as it likes.
        let mut buf = vec![0u8; 256];
        let r = attacker.decapsulate(None, &cookie, &mut buf);
        assert!(matches!(r, TunnResult::Done), "cookie accepted: {r:?}");
        let TunnResult::WriteToNetwork(with_mac2) =
            attacker.format_handshake_initiation(&mut buf, true)
        else {
            panic!("initiation with mac2")
        };
        let with_mac2 = with_mac2.to_vec();
        let mut processed = 0;
        for _ in 0..1000 {
            if let Verdict::Process(..) = g.check(SRC, &with_mac2, &mut scratch) {
                processed += 1;
            }
        }
        assert!(
            processed <= PER_SOURCE_BURST as u64 + 1,
            "the source's bucket bounds the key work: {processed} of 1000"
        );
        assert!(g.counters.rate_limited.load(Ordering::Relaxed) >= 990);
        // Another source is not limited by the first one's bucket.
        let other = IpAddr::V4(std::net::Ipv4Addr::new(10, 99, 0, 11));
        let v = g.check(other, &init, &mut scratch);
        assert!(matches!(v, Verdict::CookieReply(_)), "{v:?}");
    }
}
