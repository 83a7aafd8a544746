//! The CA service's admission limits: how many connections it holds, from whom, for how
//! long, and how fast one node may ask.
//!
//! A connection is first *handshaking* (accept until the TLS handshake ends; at most
//! `handshake_timeout`), then either a *node* connection (a verified node SVID: it counts
//! against its node, at most [`Limits::max_connections_per_node`], and lives as long as the
//! client keeps it) or *anonymous* (no client certificate: only `Join` and `Bundle` work on
//! it). Handshakes and anonymous connections are capped in total and per source address, and
//! an anonymous connection is closed [`Limits::unauthenticated_lifetime`] after it was
//! accepted, so idle or slow anonymous clients cannot hold the CA's sockets. A full anonymous
//! pool refuses only anonymous connections, after their handshake: nodes still get in.
//! Everything together is capped by [`Limits::max_connections`], well above the others.
//!
//! Requests of authenticated nodes pass a token bucket per node name
//! ([`Limits::node_requests_per_second`], [`Limits::node_request_burst`]); the burst covers a
//! node that starts with a full set of pods.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Admission limits of a [`super::CaServer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Open connections of every kind (TLS handshakes in progress included).
    pub max_connections: usize,
    /// TLS handshakes in progress.
    pub max_handshakes: usize,
    /// TLS handshakes in progress from one source address.
    pub max_handshakes_per_source: usize,
    /// Established connections without a client certificate.
    pub max_unauthenticated: usize,
    /// Established connections without a client certificate from one source address.
    pub max_unauthenticated_per_source: usize,
    /// Connections of one node (by its node SVID).
    pub max_connections_per_node: usize,
    /// An unauthenticated connection is closed this long after it was accepted.
    pub unauthenticated_lifetime: Duration,
    /// Concurrent requests (HTTP/2 streams) on one connection.
    pub max_streams_per_connection: u32,
    /// Sustained requests per second of one node (`SignWorkload`, `SignServing`, `RenewNode`).
    pub node_requests_per_second: u32,
    /// Requests one node may make at once before the rate applies.
    pub node_request_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_handshakes: 1024,
            max_handshakes_per_source: 64,
            max_unauthenticated: 512,
            max_unauthenticated_per_source: 32,
            max_connections_per_node: 16,
            unauthenticated_lifetime: Duration::from_secs(30),
            max_streams_per_connection: 64,
            node_requests_per_second: 20,
            // Two requests for each of Kubernetes' default 110 pods per node.
            node_request_burst: 220,
        }
    }
}

/// Why a connection was closed at admission, as counted.
pub const CONNECTION_REFUSALS: [&str; 5] = [
    "max_connections",
    "handshakes",
    "unauthenticated",
    "per_source",
    "per_node",
];

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Connections of one kind, in total and per source address.
#[derive(Default)]
struct Pool {
    open: usize,
    by_source: HashMap<IpAddr, usize>,
}

impl Pool {
    fn has_room(&self, source: IpAddr, max: usize, per_source: usize) -> Result<(), &'static str> {
        if self.by_source.get(&source).copied().unwrap_or(0) >= per_source {
            Err("per_source")
        } else if self.open >= max {
            Err("")
        } else {
            Ok(())
        }
    }

    fn enter(&mut self, source: IpAddr) {
        self.open += 1;
        *self.by_source.entry(source).or_default() += 1;
    }

    fn leave(&mut self, source: IpAddr) {
        self.open = self.open.saturating_sub(1);
        if let Some(n) = self.by_source.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_source.remove(&source);
            }
        }
    }
}

#[derive(Default)]
struct State {
    total: usize,
    handshaking: Pool,
    anonymous: Pool,
    by_node: BTreeMap<String, u64>,
    buckets: HashMap<String, Bucket>,
}

/// The shared admission state.
pub(super) struct Gate {
    limits: Limits,
    state: Mutex<State>,
    refused: [AtomicU64; CONNECTION_REFUSALS.len()],
}

fn refusal_index(reason: &str) -> usize {
    CONNECTION_REFUSALS
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(0)
}

impl Gate {
    pub(super) fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            state: Mutex::new(State::default()),
            refused: Default::default(),
        })
    }

    pub(super) fn limits(&self) -> &Limits {
        &self.limits
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn refuse(&self, reason: &'static str) -> &'static str {
        self.refused[refusal_index(reason)].fetch_add(1, Ordering::Relaxed);
        reason
    }

    /// Admits a new connection from `source` for its TLS handshake, or says which limit
    /// refuses it (counted).
    pub(super) fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Slot, &'static str> {
        let l = &self.limits;
        let mut s = self.lock();
        if s.total >= l.max_connections {
            return Err(self.refuse("max_connections"));
        }
        s.handshaking
            .has_room(source, l.max_handshakes, l.max_handshakes_per_source)
            .map_err(|r| self.refuse(if r.is_empty() { "handshakes" } else { r }))?;
        s.handshaking.enter(source);
        s.total += 1;
        Ok(Slot {
            gate: Arc::clone(self),
            source,
            phase: Phase::Handshake,
        })
    }

    /// `Ok` when `node` may make one more request now (the caller counts a refusal).
    pub(super) fn request(&self, node: &str) -> Result<(), ()> {
        let now = Instant::now();
        let rate = f64::from(self.limits.node_requests_per_second);
        let burst = f64::from(self.limits.node_request_burst.max(1));
        let mut s = self.lock();
        // Forget buckets of nodes that have been quiet long enough to be full again.
        if s.buckets.len() > 4096 {
            s.buckets
                .retain(|_, b| b.tokens + rate * now.duration_since(b.at).as_secs_f64() < burst);
        }
        let b = s.buckets.entry(node.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = rate
            .mul_add(now.duration_since(b.at).as_secs_f64(), b.tokens)
            .min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(())
        }
    }

    /// Open connections per node, open connections without a node SVID (handshakes
    /// included), and refusals as (reason, count) for every [`CONNECTION_REFUSALS`] entry.
    pub(super) fn snapshot(&self) -> (BTreeMap<String, u64>, u64, Vec<(&'static str, u64)>) {
        let (nodes, unauthenticated) = {
            let s = self.lock();
            (
                s.by_node.clone(),
                (s.handshaking.open + s.anonymous.open) as u64,
            )
        };
        let refused = CONNECTION_REFUSALS
            .iter()
            .zip(&self.refused)
            .map(|(r, c)| (*r, c.load(Ordering::Relaxed)))
            .collect();
        (nodes, unauthenticated, refused)
    }
}

enum Phase {
    Handshake,
    Anonymous,
    Node(String),
}

/// One admitted connection; gives its room back when dropped.
pub(super) struct Slot {
    gate: Arc<Gate>,
    source: IpAddr,
    phase: Phase,
}

impl Slot {
    /// The handshake ended with `node`'s verified SVID: the connection now counts against that
    /// node, or is refused (counted) when the node has too many.
    pub(super) fn authenticated(&mut self, node: &str) -> Result<(), &'static str> {
        let gate = Arc::clone(&self.gate);
        let mut s = gate.lock();
        if !matches!(self.phase, Phase::Handshake) {
            return Ok(());
        }
        let open = s.by_node.get(node).copied().unwrap_or(0);
        if open >= gate.limits.max_connections_per_node as u64 {
            return Err(gate.refuse("per_node"));
        }
        s.handshaking.leave(self.source);
        *s.by_node.entry(node.to_owned()).or_default() += 1;
        self.phase = Phase::Node(node.to_owned());
        Ok(())
    }

    /// The handshake ended without a client certificate: the connection joins the anonymous
    /// pool, or is refused (counted) when it, or this source's share of it, is full.
    pub(super) fn anonymous(&mut self) -> Result<(), &'static str> {
        let gate = Arc::clone(&self.gate);
        let l = &gate.limits;
        let mut s = gate.lock();
        if !matches!(self.phase, Phase::Handshake) {
            return Ok(());
        }
        s.anonymous
            .has_room(
                self.source,
                l.max_unauthenticated,
                l.max_unauthenticated_per_source,
            )
            .map_err(|r| gate.refuse(if r.is_empty() { "unauthenticated" } else { r }))?;
        s.handshaking.leave(self.source);
        s.anonymous.enter(self.source);
        self.phase = Phase::Anonymous;
        Ok(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let gate = Arc::clone(&self.gate);
        let mut s = gate.lock();
        s.total = s.total.saturating_sub(1);
        match &self.phase {
            Phase::Handshake => s.handshaking.leave(self.source),
            Phase::Anonymous => s.anonymous.leave(self.source),
            Phase::Node(node) => {
                if let Some(v) = s.by_node.get_mut(node) {
                    *v = v.saturating_sub(1);
                    if *v == 0 {
                        s.by_node.remove(node);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn handshakes_and_anonymous_connections_are_capped_per_source_and_in_total() {
        let gate = Gate::new(Limits {
            max_connections: 10,
            max_handshakes: 3,
            max_handshakes_per_source: 2,
            max_unauthenticated: 2,
            max_unauthenticated_per_source: 1,
            ..Limits::default()
        });
        let mut a1 = gate.admit(ip("10.0.0.1")).unwrap();
        let mut a2 = gate.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(gate.admit(ip("10.0.0.1")).err(), Some("per_source"));
        let mut b1 = gate.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(gate.admit(ip("10.0.0.3")).err(), Some("handshakes"));
        a1.anonymous().unwrap();
        // One anonymous connection per source.
        assert_eq!(a2.anonymous().err(), Some("per_source"));
        drop(a2);
        b1.anonymous().unwrap();
        let mut c1 = gate.admit(ip("10.0.0.3")).unwrap();
        assert_eq!(c1.anonymous().err(), Some("unauthenticated"));
        // A full anonymous pool does not keep a node out.
        c1.authenticated("n3").unwrap();
        let (nodes, open, refused) = gate.snapshot();
        assert_eq!((nodes.len(), open), (1, 2));
        for r in ["per_source", "handshakes", "unauthenticated"] {
            assert!(
                refused.iter().any(|(x, n)| *x == r && *n >= 1),
                "{refused:?}"
            );
        }
        drop(a1);
        let mut a3 = gate.admit(ip("10.0.0.1")).unwrap();
        a3.anonymous().unwrap();
    }

    #[test]
    fn a_node_connection_counts_for_its_node_and_everything_for_the_total() {
        let gate = Gate::new(Limits {
            max_connections: 3,
            max_connections_per_node: 1,
            ..Limits::default()
        });
        let mut n1 = gate.admit(ip("10.0.0.1")).unwrap();
        n1.authenticated("n1").unwrap();
        let mut again = gate.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(again.authenticated("n1").err(), Some("per_node"));
        drop(again);
        let _anon = gate.admit(ip("10.0.0.9")).unwrap();
        let mut n2 = gate.admit(ip("10.0.0.2")).unwrap();
        n2.authenticated("n2").unwrap();
        assert_eq!(gate.admit(ip("10.0.0.8")).err(), Some("max_connections"));
        let (nodes, open, refused) = gate.snapshot();
        assert_eq!(open, 1);
        assert_eq!(nodes, [("n1".to_owned(), 1), ("n2".to_owned(), 1)].into());
        assert!(refused.contains(&("per_node", 1)), "{refused:?}");
        drop(n1);
        assert_eq!(gate.snapshot().0, [("n2".to_owned(), 1)].into());
    }

    #[test]
    fn a_node_gets_its_burst_then_its_rate_and_other_nodes_are_not_affected() {
        let gate = Gate::new(Limits {
            node_requests_per_second: 1,
            node_request_burst: 3,
            ..Limits::default()
        });
        for _ in 0..3 {
            gate.request("n1").unwrap();
        }
        assert!(gate.request("n1").is_err());
        gate.request("n2").unwrap();
    }
}
