//! Request telemetry of a node: the access-log records its Envoy streams
//! ([`identityd_envoy::telemetry`]) resolved against the cluster state into identity-labelled
//! aggregates — cumulative (exported as Prometheus metrics), per 10-second window (for
//! `identityd stat`/`top`) — and a ring of recent flow records (`identityd observe --l7`).
//!
//! Labels are bounded: SPIFFE IDs, namespaces, service names, route *names* (never paths),
//! direction, tls and the status class. Pod names appear only in flow records, never in
//! labels. Past [`MAX_SERIES`] label sets, new ones are folded into one `_other` series, so a
//! flood of new identities cannot grow the daemon's memory or a Prometheus without bound.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use identityd_envoy::telemetry::{AccessLogSink, AccessRecord, Direction, RecordKind};
use serde::{Deserialize, Serialize};

use crate::daemon::expo::{Exposition, Kind, Labels};
use crate::model::ClusterState;

/// Most label sets kept per node (beyond: folded into `_other`).
pub const MAX_SERIES: usize = 4096;
/// Flow records kept for `observe --l7`.
pub const MAX_RECORDS: usize = 4096;
/// Width of a stat window bucket, seconds.
pub const WINDOW_SECS: u64 = 10;
/// Buckets kept (the longest `stat` window is `WINDOW_SECS * WINDOWS`).
pub const WINDOWS: usize = 6;

/// Upper bounds of the exported latency histogram, seconds (classic buckets).
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Fine buckets for `stat` percentiles: 50 µs × 1.25^i (up to about 2 min), then `+Inf`.
pub const FINE_BUCKETS: usize = 66;

fn fine_bound(i: usize) -> f64 {
    5e-5 * 1.25f64.powi(i32::try_from(i).unwrap_or(i32::MAX))
}

fn fine_index(secs: f64) -> usize {
    (0..FINE_BUCKETS)
        .find(|&i| secs <= fine_bound(i))
        .unwrap_or(FINE_BUCKETS)
}

/// The labels of one series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    /// `inbound`, `outbound`, `ingress`.
    pub direction: String,
    /// `http` or `tcp`.
    pub kind: String,
    /// `mtls`, `tls` (server-authenticated only: HTTPS ingress) or `plaintext`.
    pub tls: String,
    /// The caller's SPIFFE ID (verified: the peer certificate inbound, the SVID the caller's
    /// Envoy presented outbound); empty when the caller has none.
    pub source_identity: String,
    /// The caller's namespace (empty: outside the cluster).
    pub source_namespace: String,
    /// The callee's SPIFFE ID (empty: plaintext).
    pub destination_identity: String,
    /// The callee's namespace.
    pub destination_namespace: String,
    /// `name.namespace` of the Service.
    pub destination_service: String,
    /// The route's name (HTTPRoute `ns/name|rule`, empty: the service's default route).
    pub route: String,
    /// `2xx` … `5xx`, `none` (no response); empty for TCP.
    pub response_code_class: String,
}

impl Key {
    fn other(direction: &str, kind: &str) -> Self {
        let o = || "_other".to_owned();
        Self {
            direction: direction.to_owned(),
            kind: kind.to_owned(),
            tls: o(),
            source_identity: o(),
            source_namespace: o(),
            destination_identity: o(),
            destination_namespace: o(),
            destination_service: o(),
            route: o(),
            response_code_class: if kind == "http" { o() } else { String::new() },
        }
    }

    fn labels(&self, node: &str, with_class: bool) -> Labels {
        let mut l = vec![
            ("node".to_owned(), node.to_owned()),
            ("direction".to_owned(), self.direction.clone()),
            ("tls".to_owned(), self.tls.clone()),
            ("source_identity".to_owned(), self.source_identity.clone()),
            ("source_namespace".to_owned(), self.source_namespace.clone()),
            (
                "destination_identity".to_owned(),
                self.destination_identity.clone(),
            ),
            (
                "destination_namespace".to_owned(),
                self.destination_namespace.clone(),
            ),
            (
                "destination_service".to_owned(),
                self.destination_service.clone(),
            ),
        ];
        if self.kind == "http" {
            l.push(("route".to_owned(), self.route.clone()));
            if with_class {
                l.push((
                    "response_code_class".to_owned(),
                    self.response_code_class.clone(),
                ));
            }
        }
        l
    }
}

/// Aggregates of one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agg {
    /// Requests (HTTP) or connections (TCP).
    pub count: u64,
    /// Sum of durations, seconds.
    pub duration_sum: f64,
    /// Per [`DURATION_BUCKETS`] bucket (not cumulative), plus `+Inf`.
    pub buckets: Vec<u64>,
    /// Per fine bucket (not cumulative), plus `+Inf`.
    pub fine: Vec<u64>,
    /// Bytes from the client.
    pub request_bytes: u64,
    /// Bytes to the client.
    pub response_bytes: u64,
}

impl Default for Agg {
    fn default() -> Self {
        Self {
            count: 0,
            duration_sum: 0.0,
            buckets: vec![0; DURATION_BUCKETS.len() + 1],
            fine: vec![0; FINE_BUCKETS + 1],
            request_bytes: 0,
            response_bytes: 0,
        }
    }
}

impl Agg {
    fn add(&mut self, secs: f64, req: u64, resp: u64) {
        self.count += 1;
        self.duration_sum += secs;
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[i] += 1;
        self.fine[fine_index(secs)] += 1;
        self.request_bytes += req;
        self.response_bytes += resp;
    }

    /// Adds another aggregate.
    pub fn merge(&mut self, o: &Self) {
        self.count += o.count;
        self.duration_sum += o.duration_sum;
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            *a += b;
        }
        for (a, b) in self.fine.iter_mut().zip(&o.fine) {
            *a += b;
        }
        self.request_bytes += o.request_bytes;
        self.response_bytes += o.response_bytes;
    }

    /// The `q` quantile (0..1) of the durations, seconds, by linear interpolation inside the
    /// fine bucket (like PromQL's `histogram_quantile`); `None` without samples.
    #[must_use]
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.fine.iter().sum();
        if total == 0 {
            return None;
        }
        #[allow(clippy::cast_precision_loss)]
        let rank = q * total as f64;
        let mut acc = 0u64;
        for (i, c) in self.fine.iter().enumerate() {
            let before = acc;
            acc += c;
            #[allow(clippy::cast_precision_loss)]
            if acc as f64 >= rank && *c > 0 {
                let lo = if i == 0 { 0.0 } else { fine_bound(i - 1) };
                let hi = if i < FINE_BUCKETS {
                    fine_bound(i)
                } else {
                    return Some(lo);
                };
                let frac = (rank - before as f64) / *c as f64;
                return Some(lo + (hi - lo) * frac.clamp(0.0, 1.0));
            }
        }
        Some(fine_bound(FINE_BUCKETS - 1))
    }
}

/// One HTTP request or TCP connection, for `observe --l7`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// Sequence number on this node (increasing).
    pub seq: u64,
    /// The node whose Envoy logged it.
    pub node: String,
    /// Start, RFC 3339 (UTC).
    pub time: String,
    /// Series labels.
    #[serde(flatten)]
    pub key: Key,
    /// Source pod (`ns/name`), when known.
    pub source_pod: Option<String>,
    /// Destination pod (`ns/name`), when known.
    pub destination_pod: Option<String>,
    /// HTTP method (TCP: none).
    pub method: Option<String>,
    /// `:authority`.
    pub authority: Option<String>,
    /// HTTP status (0: none).
    pub status: u32,
    /// Duration, milliseconds.
    pub latency_ms: f64,
    /// Bytes from the client.
    pub request_bytes: u64,
    /// Bytes to the client.
    pub response_bytes: u64,
    /// Envoy's response flags (`UT` upstream timeout, …).
    pub flags: Vec<String>,
    /// How it crossed the network: `wireguard`/`ipsec` between nodes, `node-local`, or
    /// `plaintext`; with `mtls` in front when it went through the mTLS tunnel.
    pub path: String,
}

/// One series' aggregate over a window, for `stat` (merged across nodes by the CLI).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowRow {
    /// The node.
    pub node: String,
    /// Series labels.
    #[serde(flatten)]
    pub key: Key,
    /// The aggregate.
    pub agg: Agg,
    /// Seconds the window covers.
    pub secs: f64,
}

#[derive(Debug, Clone)]
struct PodInfo {
    namespace: String,
    name: String,
    node: String,
    id: String,
}

/// What records are resolved against: pods by IP, services' endpoints; pure data built from
/// the cluster state on each change.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    node: String,
    /// `wireguard`, `ipsec` or `plaintext`: how pod traffic leaves this node.
    network: String,
    pods: HashMap<IpAddr, PodInfo>,
    /// (namespace, name) → (endpoint IP, target port).
    services: BTreeMap<(String, String), Vec<(IpAddr, u16)>>,
    /// Published pod CIDRs (IPv4 network, prefix length) → node: a caller's node Envoy
    /// connects from its tunnel address, inside its node's pod CIDR.
    cidrs: Vec<(u32, u8, String)>,
}

impl Resolver {
    /// From the cluster state.
    #[must_use]
    pub fn new(state: &ClusterState, node: &str, network: &str, td: &str) -> Self {
        let mut pods = HashMap::new();
        for p in state.pods.values().filter(|p| !p.is_terminated()) {
            let id = format!(
                "spiffe://{td}/ns/{}/sa/{}",
                p.namespace(),
                p.service_account()
            );
            for ip in p.ips() {
                pods.insert(
                    ip,
                    PodInfo {
                        namespace: p.namespace().to_owned(),
                        name: p.metadata.name.clone(),
                        node: p.spec.node_name.clone().unwrap_or_default(),
                        id: id.clone(),
                    },
                );
            }
        }
        let mut services = BTreeMap::new();
        for se in state.services_with_endpoints() {
            let s = se.service;
            let mut eps = Vec::new();
            for sp in &s.spec.ports {
                for e in &se.endpoints {
                    if let Some(tp) = e.pod.resolve_port(&sp.target()) {
                        eps.push((e.ip, tp));
                    }
                }
            }
            services.insert((s.namespace().to_owned(), s.metadata.name.clone()), eps);
        }
        let mut cidrs = Vec::new();
        for (name, n) in &state.nodes {
            for c in &n.spec.pod_cidrs {
                if let Some((ip, len)) = c.split_once('/')
                    && let (Ok(ip), Ok(len)) = (ip.parse::<std::net::Ipv4Addr>(), len.parse::<u8>())
                    && len <= 32
                {
                    cidrs.push((u32::from(ip), len, name.clone()));
                }
            }
        }
        Self {
            node: node.to_owned(),
            network: network.to_owned(),
            pods,
            services,
            cidrs,
        }
    }

    /// The node whose pod CIDR holds `ip`.
    fn node_of(&self, ip: Option<IpAddr>) -> Option<&str> {
        let Some(IpAddr::V4(v4)) = ip else {
            return None;
        };
        let a = u32::from(v4);
        self.cidrs
            .iter()
            .filter(|(net, len, _)| {
                let mask = if *len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(*len))
                };
                a & mask == net & mask
            })
            .max_by_key(|(_, len, _)| *len)
            .map(|(_, _, n)| n.as_str())
    }

    fn pod(&self, ip: Option<IpAddr>) -> Option<&PodInfo> {
        self.pods.get(&ip?)
    }

    /// The Service a request to `pod_ip:port` (any port: `None`) with `authority` was for: the authority's
    /// service when it has that endpoint, else the first service with it (by namespace/name).
    fn service_of(&self, authority: &str, pod_ip: IpAddr, port: Option<u16>) -> String {
        let has = |k: &(String, String)| {
            self.services.get(k).is_some_and(|e| {
                e.iter()
                    .any(|(ip, p)| *ip == pod_ip && port.is_none_or(|want| want == *p))
            })
        };
        let host = authority.rsplit_once(':').map_or(authority, |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                authority
            }
        });
        let mut parts = host.split('.');
        if let (Some(name), ns) = (parts.next(), parts.next()) {
            let ns = ns.map_or_else(
                || {
                    self.pods
                        .get(&pod_ip)
                        .map(|p| p.namespace.clone())
                        .unwrap_or_default()
                },
                str::to_owned,
            );
            let k = (ns, name.to_owned());
            if has(&k) {
                return format!("{}.{}", k.1, k.0);
            }
        }
        self.services
            .keys()
            .find(|k| has(k))
            .map(|k| format!("{}.{}", k.1, k.0))
            .unwrap_or_default()
    }

    fn network_to(&self, dest: Option<&PodInfo>) -> &str {
        match dest {
            Some(d) if d.node == self.node => "node-local",
            Some(_) => &self.network,
            None => "unknown",
        }
    }

    /// A record's series key, its pods and its path.
    #[must_use]
    pub fn resolve(&self, r: &AccessRecord) -> (Key, Option<String>, Option<String>, String) {
        let direction = r.direction.map_or("unknown", Direction::as_str).to_owned();
        let kind = match r.kind {
            Some(RecordKind::Tcp) => "tcp",
            _ => "http",
        }
        .to_owned();
        let class = if kind == "tcp" {
            String::new()
        } else if (100..600).contains(&r.status) {
            format!("{}xx", r.status / 100)
        } else {
            "none".to_owned()
        };
        let ns_of_id = |id: &str| {
            id.split("/ns/")
                .nth(1)
                .and_then(|s| s.split('/').next())
                .unwrap_or_default()
                .to_owned()
        };
        let pod_name = |p: &PodInfo| format!("{}/{}", p.namespace, p.name);
        let mut key = Key {
            direction,
            kind,
            tls: "plaintext".to_owned(),
            source_identity: String::new(),
            source_namespace: String::new(),
            destination_identity: String::new(),
            destination_namespace: String::new(),
            destination_service: String::new(),
            route: r.route_name.clone(),
            response_code_class: class,
        };
        let src = self.pod(r.downstream_remote.map(|a| a.ip()));
        let (dst, path);
        match r.direction {
            Some(Direction::Outbound) => {
                // outbound|port|svc.ns|caller, outbound|port|svc.ns, outbound-tcp|tport|svc.ns|caller
                let parts: Vec<&str> = r.upstream_cluster.split('|').collect();
                let mtls = parts.len() == 4;
                dst = self.pod(r.upstream_remote.map(|a| a.ip())).or_else(|| {
                    // The L4 path dials the original destination through the tunnel.
                    self.pod(r.downstream_local.map(|a| a.ip()))
                });
                if let Some(svc) = parts.get(2) {
                    key.destination_service = (*svc).to_owned();
                }
                if mtls {
                    key.tls = "mtls".to_owned();
                    key.source_identity = parts[3].to_owned();
                    if let Some(d) = dst {
                        key.destination_identity.clone_from(&d.id);
                    }
                }
                key.source_namespace = src.map(|p| p.namespace.clone()).unwrap_or_default();
                key.destination_namespace = dst
                    .map(|p| p.namespace.clone())
                    .or_else(|| {
                        key.destination_service
                            .split_once('.')
                            .map(|(_, ns)| ns.to_owned())
                    })
                    .unwrap_or_default();
                path = self.network_to(dst).to_owned();
            }
            Some(Direction::Inbound) => {
                // inbound|port|ns/pod
                let parts: Vec<&str> = r.upstream_cluster.split('|').collect();
                let port = parts.get(1).and_then(|p| p.parse::<u16>().ok());
                dst = r
                    .downstream_local
                    .and_then(|a| self.pods.get(&a.ip()))
                    .or_else(|| {
                        let (ns, name) = parts.get(2)?.split_once('/')?;
                        self.pods
                            .values()
                            .find(|p| p.namespace == ns && p.name == name)
                    });
                if let Some(id) = &r.peer_uri_san {
                    key.tls = "mtls".to_owned();
                    key.source_identity.clone_from(id);
                    key.source_namespace = ns_of_id(id);
                }
                if let Some(d) = dst {
                    key.destination_identity.clone_from(&d.id);
                    key.destination_namespace.clone_from(&d.namespace);
                    // No cluster (RBAC refused the request before routing): any port of the pod.
                    if let Some(ip) = r.downstream_local.map(|a| a.ip()) {
                        key.destination_service = self.service_of(&r.authority, ip, port);
                    }
                }
                // The caller's node: the peer's node when its address is a pod's.
                let from = src
                    .map(|s| s.node.as_str())
                    .or_else(|| self.node_of(r.downstream_remote.map(|a| a.ip())));
                path = match from {
                    Some(n) if n == self.node => "node-local".to_owned(),
                    Some(_) => self.network.clone(),
                    None => "unknown".to_owned(),
                };
            }
            _ => {
                // Ingress: clusters ingress|port|svc.ns[|h2], plaintext to the endpoints.
                let parts: Vec<&str> = r.upstream_cluster.split('|').collect();
                dst = self.pod(r.upstream_remote.map(|a| a.ip()));
                if let Some(svc) = parts.get(2) {
                    key.destination_service = (*svc).to_owned();
                }
                key.tls = if r.peer_uri_san.is_some() {
                    "mtls"
                } else if r.downstream_tls {
                    "tls"
                } else {
                    "plaintext"
                }
                .to_owned();
                key.destination_namespace = dst.map(|p| p.namespace.clone()).unwrap_or_default();
                path = self.network_to(dst).to_owned();
            }
        }
        let path = if key.tls == "mtls" && key.direction != "ingress" {
            format!("mtls over {path}")
        } else {
            path
        };
        (key, src.map(pod_name), dst.map(pod_name), path)
    }
}

/// Per-record accounting of the telemetry itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfCounters {
    /// Records aggregated.
    pub records: u64,
    /// Records folded into an `_other` series (series limit).
    pub overflow: u64,
}

#[derive(Debug, Default)]
struct Inner {
    resolver: Resolver,
    total: HashMap<Key, Agg>,
    /// (window start, unix secs / WINDOW_SECS) → aggregates.
    windows: VecDeque<(u64, HashMap<Key, Agg>)>,
    records: VecDeque<FlowRecord>,
    seq: u64,
    counters: SelfCounters,
}

/// The node's telemetry: shared by the ALS server (writer), the metrics endpoint and the
/// telemetry socket (readers).
#[derive(Debug, Clone, Default)]
pub struct Telemetry {
    node: String,
    inner: Arc<Mutex<Inner>>,
}

fn now_secs() -> u64 {
    identityd_envoy::telemetry::now_unix_ms() / 1000
}

fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    identityd_certs::inspect::rfc3339(t)
}

impl Telemetry {
    /// Empty telemetry of `node`.
    #[must_use]
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            inner: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces the resolver (on each cluster state change).
    pub fn set_resolver(&self, r: Resolver) {
        self.lock().resolver = r;
    }

    /// Aggregates a batch at `now` (Unix seconds).
    pub fn ingest_at(&self, batch: Vec<AccessRecord>, now: u64) {
        let mut g = self.lock();
        let inner = &mut *g;
        let w = now / WINDOW_SECS;
        if inner.windows.back().is_none_or(|(s, _)| *s != w) {
            inner.windows.push_back((w, HashMap::new()));
            while inner.windows.len() > WINDOWS {
                inner.windows.pop_front();
            }
        }
        for r in batch {
            let (mut key, src_pod, dst_pod, path) = inner.resolver.resolve(&r);
            if !inner.total.contains_key(&key) && inner.total.len() >= MAX_SERIES {
                key = Key::other(&key.direction, &key.kind);
                inner.counters.overflow += 1;
            }
            inner.counters.records += 1;
            inner.total.entry(key.clone()).or_default().add(
                r.duration_secs,
                r.request_bytes,
                r.response_bytes,
            );
            if let Some((_, win)) = inner.windows.back_mut() {
                win.entry(key.clone()).or_default().add(
                    r.duration_secs,
                    r.request_bytes,
                    r.response_bytes,
                );
            }
            inner.seq += 1;
            let http = key.kind == "http";
            inner.records.push_back(FlowRecord {
                seq: inner.seq,
                node: self.node.clone(),
                time: rfc3339(r.start_unix_ms),
                key,
                source_pod: src_pod,
                destination_pod: dst_pod,
                method: http.then(|| r.method.clone()),
                authority: (http && !r.authority.is_empty()).then(|| r.authority.clone()),
                status: r.status,
                latency_ms: r.duration_secs * 1000.0,
                request_bytes: r.request_bytes,
                response_bytes: r.response_bytes,
                flags: r.flags.iter().map(|f| (*f).to_owned()).collect(),
                path,
            });
            while inner.records.len() > MAX_RECORDS {
                inner.records.pop_front();
            }
        }
    }

    /// Flow records after `seq` (at most `limit`).
    #[must_use]
    pub fn records_after(&self, seq: u64, limit: usize) -> Vec<FlowRecord> {
        self.lock()
            .records
            .iter()
            .filter(|r| r.seq > seq)
            .take(limit)
            .cloned()
            .collect()
    }

    /// Aggregates over the last `secs` seconds (rounded up to whole windows, at most
    /// `WINDOW_SECS * WINDOWS`), at `now`.
    #[must_use]
    pub fn window_at(&self, secs: u64, now: u64) -> Vec<WindowRow> {
        let g = self.lock();
        let n = secs.div_ceil(WINDOW_SECS).clamp(1, WINDOWS as u64);
        let first = (now / WINDOW_SECS).saturating_sub(n - 1);
        let mut merged: BTreeMap<Key, Agg> = BTreeMap::new();
        let mut oldest = now / WINDOW_SECS;
        for (w, m) in g.windows.iter().filter(|(w, _)| *w >= first) {
            oldest = oldest.min(*w);
            for (k, a) in m {
                merged.entry(k.clone()).or_default().merge(a);
            }
        }
        #[allow(clippy::cast_precision_loss)]
        let covered = (now.saturating_sub(oldest * WINDOW_SECS) as f64).max(1.0);
        merged
            .into_iter()
            .map(|(key, agg)| WindowRow {
                node: self.node.clone(),
                key,
                agg,
                secs: covered,
            })
            .collect()
    }

    /// The metrics of the cumulative aggregates, appended to `e`.
    pub fn export(&self, e: &mut Exposition) {
        let g = self.lock();
        let mut keys: Vec<&Key> = g.total.keys().collect();
        keys.sort();
        let node = &self.node;
        #[allow(clippy::cast_precision_loss)]
        let f = |v: u64| v as f64;
        {
            let mut fam = e.family(
                "identityd_requests",
                "HTTP requests through the node's Envoy, by caller and callee identity",
                Kind::Counter,
            );
            for k in keys.iter().filter(|k| k.kind == "http") {
                fam.set(k.labels(node, true), f(g.total[*k].count));
            }
        }
        {
            let mut fam = e.family(
                "identityd_request_duration_seconds",
                "HTTP request duration at the node's Envoy (start to last byte sent to the client)",
                Kind::Histogram,
            );
            for k in keys.iter().filter(|k| k.kind == "http") {
                let a = &g.total[*k];
                fam.histogram(
                    k.labels(node, true),
                    &DURATION_BUCKETS,
                    a.buckets.clone(),
                    a.duration_sum,
                );
            }
        }
        for (name, help, req) in [
            (
                "identityd_request_bytes",
                "HTTP request bytes (headers and body) from callers",
                true,
            ),
            (
                "identityd_response_bytes",
                "HTTP response bytes (headers and body) to callers",
                false,
            ),
        ] {
            let mut fam = e.family(name, help, Kind::Counter);
            for k in keys.iter().filter(|k| k.kind == "http") {
                let a = &g.total[*k];
                fam.set(
                    k.labels(node, true),
                    f(if req {
                        a.request_bytes
                    } else {
                        a.response_bytes
                    }),
                );
            }
        }
        {
            let mut fam = e.family(
                "identityd_tcp_connections",
                "Closed TCP connections on the L4 mTLS path, by caller and callee identity",
                Kind::Counter,
            );
            for k in keys.iter().filter(|k| k.kind == "tcp") {
                fam.set(k.labels(node, false), f(g.total[*k].count));
            }
        }
        for (name, help, req) in [
            (
                "identityd_tcp_received_bytes",
                "TCP payload bytes from callers on the L4 mTLS path",
                true,
            ),
            (
                "identityd_tcp_sent_bytes",
                "TCP payload bytes to callers on the L4 mTLS path",
                false,
            ),
        ] {
            let mut fam = e.family(name, help, Kind::Counter);
            for k in keys.iter().filter(|k| k.kind == "tcp") {
                let a = &g.total[*k];
                fam.set(
                    k.labels(node, false),
                    f(if req {
                        a.request_bytes
                    } else {
                        a.response_bytes
                    }),
                );
            }
        }
        let nl = || vec![("node".to_owned(), node.clone())];
        e.family(
            "identityd_telemetry_records",
            "Access-log records the daemon aggregated",
            Kind::Counter,
        )
        .set(nl(), f(g.counters.records));
        e.family(
            "identityd_telemetry_overflow_records",
            "Records folded into an _other series because the series limit was reached",
            Kind::Counter,
        )
        .set(nl(), f(g.counters.overflow));
        e.family(
            "identityd_telemetry_series",
            "Label sets of the request and connection metrics",
            Kind::Gauge,
        )
        .set(nl(), f(g.total.len() as u64));
    }
}

impl AccessLogSink for Telemetry {
    fn record(&self, batch: Vec<AccessRecord>) {
        self.ingest_at(batch, now_secs());
    }
}

/// The telemetry socket's requests: `records <after-seq>` and `window <secs>`, one line;
/// the answer is JSON (an array), then the connection closes.
pub async fn serve(path: PathBuf, t: Telemetry) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "telemetry socket");
            return;
        }
    };
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    loop {
        let Ok((s, _)) = listener.accept().await else {
            continue;
        };
        let t = t.clone();
        tokio::spawn(async move {
            let (r, mut w) = s.into_split();
            let mut line = String::new();
            let mut r = tokio::io::BufReader::new(r.take(256));
            if tokio::time::timeout(std::time::Duration::from_secs(2), r.read_line(&mut line))
                .await
                .is_err()
            {
                return;
            }
            let mut words = line.split_whitespace();
            let body = match (words.next(), words.next().and_then(|n| n.parse::<u64>().ok())) {
                (Some("records"), Some(after)) => {
                    serde_json::to_vec(&t.records_after(after, 1000)).unwrap_or_default()
                }
                (Some("window"), Some(secs)) => {
                    serde_json::to_vec(&t.window_at(secs, now_secs())).unwrap_or_default()
                }
                _ => format!(
                    "{{\"error\":\"unknown request {:?}: want `records <seq>` or `window <secs>`\"}}",
                    line.trim()
                )
                .into_bytes(),
            };
            let _ = w.write_all(&body).await;
            let _ = w.shutdown().await;
        });
    }
}

/// Asks a node's telemetry socket.
///
/// # Errors
/// When it cannot be reached or answers something else.
pub fn ask<T: serde::de::DeserializeOwned>(path: &std::path::Path, req: &str) -> Result<T, String> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(3)));
    s.write_all(format!("{req}\n").as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&buf).map_err(|e| {
        format!(
            "{}: not a telemetry answer ({e}): {}",
            path.display(),
            String::from_utf8_lossy(&buf[..buf.len().min(200)])
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::expo::Format;

    fn state() -> ClusterState {
        let text = include_str!("../model/testdata/lab-cluster.yaml");
        let objects = crate::source::decode::decode_all(text)
            .into_iter()
            .filter_map(|(_, r)| r.ok().flatten());
        ClusterState::from_objects(1, objects)
    }

    fn outbound(path: &str, caller: &str, status: u32) -> AccessRecord {
        AccessRecord {
            direction: Some(Direction::Outbound),
            kind: Some(RecordKind::Http),
            upstream_cluster: format!("outbound|80|web.shop|{caller}"),
            route_name: "shop/web-split|0".into(),
            path: path.into(),
            status,
            duration_secs: 0.002,
            ..Default::default()
        }
    }

    #[test]
    fn paths_never_become_series_and_the_series_limit_folds_into_other() {
        let t = Telemetry::new("n1");
        t.set_resolver(Resolver::new(&state(), "n1", "wireguard", "cluster.local"));
        let id = "spiffe://cluster.local/ns/front/sa/client";
        t.ingest_at(
            (0..1000)
                .map(|i| outbound(&format!("/p/{i}"), id, 200))
                .collect(),
            100,
        );
        let mut e = Exposition::new();
        t.export(&mut e);
        let text = e.render(Format::Classic);
        let req: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("identityd_requests_total{"))
            .collect();
        assert_eq!(req.len(), 1, "{text}");
        assert!(req[0].ends_with(" 1000"), "{}", req[0]);
        assert!(req[0].contains(&format!("source_identity=\"{id}\"")));
        assert!(req[0].contains("tls=\"mtls\""));
        assert!(!text.contains("/p/"), "no path in any label");
        // A flood of new identities stops at MAX_SERIES label sets.
        t.ingest_at(
            (0..MAX_SERIES + 10)
                .map(|i| outbound("/", &format!("spiffe://cluster.local/ns/x/sa/s{i}"), 500))
                .collect(),
            100,
        );
        let g = t.lock();
        assert_eq!(
            g.total.len(),
            MAX_SERIES + 1,
            "the limit plus one _other series"
        );
        assert_eq!(g.counters.overflow, 11);
    }

    #[test]
    fn window_quantiles_follow_the_latencies() {
        let t = Telemetry::new("n1");
        let mut batch = Vec::new();
        for i in 0..100u32 {
            let mut r = outbound("/", "spiffe://td/ns/a/sa/b", 200);
            r.duration_secs = f64::from(i + 1) / 1000.0; // 1..100 ms
            batch.push(r);
        }
        t.ingest_at(batch, 1000);
        let rows = t.window_at(60, 1005);
        assert_eq!(rows.len(), 1);
        let a = &rows[0].agg;
        let p50 = a.quantile(0.5).unwrap();
        let p99 = a.quantile(0.99).unwrap();
        assert!((0.04..0.065).contains(&p50), "p50 {p50}");
        assert!((0.08..0.125).contains(&p99), "p99 {p99}");
        assert!(t.window_at(10, 1000 + 10 * WINDOWS as u64 + 20).is_empty());
    }
}
