//! The node's identity worker: one task that keeps every certificate the node needs fresh —
//! its own node SVID, an SVID per local workload identity in an mTLS namespace, and a serving
//! certificate per CA-issued ingress listener — and publishes what can be served on a `watch`.
//!
//! Every certificate is kept by a [`Rotator`] from `identityd-certs` on an injected [`Clock`]:
//! renewal at 50% ± 10% of its lifetime (so nodes started together do not renew together),
//! exponential backoff while the CA refuses or does not answer, the last good certificate kept
//! until it expires, and then [`SvidState::Unavailable`]: an expired identity is left out of
//! what is published, so the mesh plan gives its workload no inbound chain (fail closed).
//!
//! The worker is the only part of the node that talks to the CA. A CA that is down or stalled
//! delays nothing but this task: the datapath, classifier and status tasks never wait for it.
//!
//! [`IdentityTable`] is the pure part (wanted set in, renewals through an [`Issuer`] out), unit
//! tested with a [`ManualClock`](identityd_certs::rotation::ManualClock) and a fake issuer.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;
use identityd_certs::rotation::{Clock, RefreshPolicy, Rotator, SvidState, SystemClock, Validity};
use identityd_certs::service::CaClient;
use identityd_certs::{Bundle, ServingCert, SpiffeId, Svid, TrustDomain};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::daemon::config::DaemonConfig;
use crate::daemon::ingress::{self, CertWant, IngressPorts};
use crate::model::{ClusterState, MtlsMode};

/// How long one CA call may take before it counts as a failure (and is retried with backoff).
pub const CA_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a node asks the CA for its trust bundle (a rollover adds a root).
pub const BUNDLE_CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// How many issuance requests are in flight at once.
pub const MAX_CONCURRENT_ISSUANCE: usize = 16;
/// The longest the worker sleeps without looking at its clock again.
const MAX_SLEEP: Duration = Duration::from_secs(5);

/// Why a call to the CA (or the setup before it) failed. Kept per identity as its last error
/// (status shows it) while the last good certificate stays in service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The node config has no `ca:` section.
    #[error("the node config has no ca: section")]
    NotConfigured,
    /// The bootstrap trust bundle (`ca.bundleFile`) cannot be read or parsed.
    #[error("ca.bundleFile={}: {reason}", path.display())]
    BootstrapBundle {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The node could not join the CA.
    #[error(transparent)]
    Join(#[from] crate::daemon::node_auth::JoinError),
    /// The node SVID could not be saved.
    #[error("{}: {source}", path.display())]
    SaveNodeSvid {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: identityd_certs::Error,
    },
    /// The node SVID expired: the node must join again.
    #[error("the node SVID expired; the node must join again")]
    NodeSvidExpired,
    /// The CA did not answer in time.
    #[error("{rpc}: the CA at {endpoint} did not answer within {}s", CA_CALL_TIMEOUT.as_secs())]
    Timeout {
        /// The call (`SignWorkload`, `Join`, `Connect`, …).
        rpc: &'static str,
        /// The CA endpoint.
        endpoint: String,
    },
    /// The CA answered with an error (refusal, transport).
    #[error("{rpc}: {source}")]
    Rpc {
        /// The call.
        rpc: &'static str,
        /// The CA's answer.
        #[source]
        source: identityd_certs::service::ServiceError,
    },
}

/// One workload identity the node wants: a pod that carries it (the CA checks that the pod is
/// scheduled on this node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadWant {
    /// The pod's namespace (empty for the gateway identity).
    pub namespace: String,
    /// A pod carrying the identity (empty for the gateway identity).
    pub pod: String,
}

/// Where one certificate stands, for status and audit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityStatus {
    /// `node`, a SPIFFE ID, or `serving <dns names>`.
    pub name: String,
    /// `initializing`, `available` or `unavailable`.
    pub state: String,
    /// When the certificate served expires, Unix seconds (absent when none is served).
    pub expires_at_unix: Option<u64>,
    /// When the next renewal attempt is due, Unix seconds.
    pub next_attempt_at_unix: u64,
    /// Consecutive failed attempts.
    pub failures: u32,
    /// The latest failure, while failures last.
    pub error: Option<String>,
}

/// What the worker publishes: the certificates that can be served now, and why others cannot.
#[derive(Debug, Clone, Default)]
pub struct Identities {
    /// Valid workload SVIDs (the gateway identity included) by SPIFFE ID.
    pub svids: BTreeMap<SpiffeId, Arc<Svid>>,
    /// Valid serving certificates by SDS secret name, with the want they answer.
    pub serving: BTreeMap<String, (CertWant, Arc<ServingCert>)>,
    /// The trust bundle (PEM): the CA's latest answer, or the bootstrap bundle before that.
    pub bundle_pem: String,
    /// Every certificate the node wants, the node SVID first.
    pub status: Vec<IdentityStatus>,
    /// Why the worker is not connected to the CA, while it is not.
    pub ca_error: Option<String>,
    /// Whether the worker has a connection to the CA.
    pub connected: bool,
}

/// Issues certificates for the worker. [`CaIssuer`] is the CA service over mTLS; tests pass a
/// fake with outages.
pub trait Issuer: Sync {
    /// An SVID for `id`, carried by pod `want`.
    fn sign_workload(
        &self,
        id: &SpiffeId,
        want: &WorkloadWant,
        ttl: Duration,
    ) -> impl Future<Output = Result<Svid, CaError>> + Send;
    /// A serving certificate for an ingress listener.
    fn sign_serving(
        &self,
        want: &CertWant,
        ttl: Duration,
    ) -> impl Future<Output = Result<ServingCert, CaError>> + Send;
}

/// The CA service, reached over mTLS with the node SVID.
#[derive(Debug)]
pub struct CaIssuer {
    client: CaClient,
    endpoint: String,
}

impl Issuer for CaIssuer {
    async fn sign_workload(
        &self,
        id: &SpiffeId,
        want: &WorkloadWant,
        ttl: Duration,
    ) -> Result<Svid, CaError> {
        with_timeout(
            "SignWorkload",
            &self.endpoint,
            self.client
                .sign_workload(id, &want.namespace, &want.pod, ttl),
        )
        .await
    }

    async fn sign_serving(&self, w: &CertWant, ttl: Duration) -> Result<ServingCert, CaError> {
        with_timeout(
            "SignServing",
            &self.endpoint,
            self.client
                .sign_serving(&w.dns_names, &w.kind, &w.namespace, &w.name, ttl),
        )
        .await
    }
}

async fn with_timeout<T, E: Into<CaError>>(
    rpc: &'static str,
    endpoint: &str,
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, CaError> {
    match tokio::time::timeout(CA_CALL_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(match e.into() {
            CaError::Rpc { source, .. } => CaError::Rpc { rpc, source },
            other => other,
        }),
        Err(_) => Err(CaError::Timeout {
            rpc,
            endpoint: endpoint.to_owned(),
        }),
    }
}

impl From<identityd_certs::service::ServiceError> for CaError {
    fn from(source: identityd_certs::service::ServiceError) -> Self {
        Self::Rpc { rpc: "", source }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether `chain` verifies under the root of `bundle` with fingerprint `root` alone (false
/// when the bundle has no such root).
fn chains_to(
    chain: &[rustls_pki_types::CertificateDer<'static>],
    root: &str,
    bundle: &Bundle,
    now: SystemTime,
) -> bool {
    bundle
        .roots()
        .iter()
        .find(|r| identityd_certs::bundle::root_fingerprint(r) == root)
        .and_then(|der| Bundle::new(bundle.trust_domain().clone(), vec![der.clone()]).ok())
        .is_some_and(|only| identityd_certs::verify_svid(chain, &only, now).is_ok())
}

fn status_of<C: Validity>(name: String, r: &Rotator<C>) -> IdentityStatus {
    let (state, expires) = match r.state() {
        SvidState::Initializing => ("initializing", None),
        SvidState::Available(c) => ("available", Some(unix(c.not_after()))),
        SvidState::Unavailable(_) => ("unavailable", None),
    };
    IdentityStatus {
        name,
        state: state.to_owned(),
        expires_at_unix: expires,
        next_attempt_at_unix: unix(r.next_attempt()),
        failures: r.failures(),
        error: r.last_error().map(str::to_owned),
    }
}

/// The certificates a node wants and their rotators. Pure apart from the [`Issuer`] calls.
pub struct IdentityTable {
    policy: RefreshPolicy,
    clock: Arc<dyn Clock>,
    ttl: Duration,
    workloads: BTreeMap<SpiffeId, (WorkloadWant, Rotator<Svid>)>,
    serving: BTreeMap<String, (CertWant, Rotator<ServingCert>)>,
}

impl std::fmt::Debug for IdentityTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityTable")
            .field("workloads", &self.workloads.len())
            .field("serving", &self.serving.len())
            .finish_non_exhaustive()
    }
}

impl IdentityTable {
    /// An empty table issuing certificates valid for `ttl`.
    #[must_use]
    pub fn new(policy: RefreshPolicy, clock: Arc<dyn Clock>, ttl: Duration) -> Self {
        Self {
            policy,
            clock,
            ttl,
            workloads: BTreeMap::new(),
            serving: BTreeMap::new(),
        }
    }

    /// Makes the wanted set `workloads` + `serving`: new entries are due at once, entries no
    /// longer wanted are dropped (their certificates with them), kept ones keep their state.
    /// A serving want whose names changed starts over.
    pub fn set_wanted(
        &mut self,
        workloads: BTreeMap<SpiffeId, WorkloadWant>,
        serving: Vec<CertWant>,
    ) {
        self.workloads.retain(|id, _| workloads.contains_key(id));
        for (id, want) in workloads {
            match self.workloads.get_mut(&id) {
                Some(entry) => entry.0 = want,
                None => {
                    let r = Rotator::new(self.policy, Arc::clone(&self.clock));
                    self.workloads.insert(id, (want, r));
                }
            }
        }
        self.serving
            .retain(|k, (w, _)| serving.iter().any(|s| &s.secret == k && s == w));
        for w in serving {
            if !self.serving.contains_key(&w.secret) {
                let r = Rotator::new(self.policy, Arc::clone(&self.clock));
                self.serving.insert(w.secret.clone(), (w, r));
            }
        }
    }

    /// Makes every workload SVID that does not chain to the root with fingerprint `root` (a
    /// root of `bundle`) due for renewal now: after a CA rollover switched to it. Returns how
    /// many; none when `bundle` does not hold that root.
    pub fn renew_not_under(&mut self, root: &str, bundle: &Bundle) -> usize {
        let Some(der) = bundle
            .roots()
            .iter()
            .find(|r| identityd_certs::bundle::root_fingerprint(r) == root)
        else {
            return 0;
        };
        let Ok(only) = Bundle::new(bundle.trust_domain().clone(), vec![der.clone()]) else {
            return 0;
        };
        let now = self.clock.now();
        let mut n = 0;
        for (_, r) in self.workloads.values_mut() {
            if r.current()
                .is_some_and(|c| identityd_certs::verify_svid(c.chain(), &only, now).is_err())
            {
                r.renew_now();
                n += 1;
            }
        }
        n
    }

    /// Asks `issuer` for every certificate that is due (at most [`MAX_CONCURRENT_ISSUANCE`]
    /// at once) and records the outcomes. Returns how many were attempted.
    pub async fn renew_due<I: Issuer>(&mut self, issuer: &I) -> usize {
        let ttl = self.ttl;
        let due_w: Vec<(SpiffeId, WorkloadWant)> = self
            .workloads
            .iter()
            .filter(|(_, (_, r))| r.due())
            .map(|(id, (w, _))| (id.clone(), w.clone()))
            .collect();
        let due_s: Vec<CertWant> = self
            .serving
            .values()
            .filter(|(_, r)| r.due())
            .map(|(w, _)| w.clone())
            .collect();
        let n = due_w.len() + due_s.len();
        let results: Vec<(SpiffeId, Result<Svid, CaError>)> = futures::stream::iter(due_w)
            .map(|(id, w)| async move {
                let r = issuer.sign_workload(&id, &w, ttl).await;
                (id, r)
            })
            .buffer_unordered(MAX_CONCURRENT_ISSUANCE)
            .collect()
            .await;
        for (id, r) in results {
            if let Some((w, rot)) = self.workloads.get_mut(&id) {
                match &r {
                    Ok(_) => tracing::info!(%id, "SVID issued"),
                    Err(e) => {
                        tracing::warn!(%id, pod = format!("{}/{}", w.namespace, w.pod), error = %e, "SVID not issued; keeping the last good one");
                    }
                }
                rot.on_result(r);
            }
        }
        let results: Vec<(String, Result<ServingCert, CaError>)> = futures::stream::iter(due_s)
            .map(|w| async move {
                let r = issuer.sign_serving(&w, ttl).await;
                (w.secret, r)
            })
            .buffer_unordered(MAX_CONCURRENT_ISSUANCE)
            .collect()
            .await;
        for (k, r) in results {
            if let Some((w, rot)) = self.serving.get_mut(&k) {
                match &r {
                    Ok(_) => {
                        tracing::info!(names = ?w.dns_names, object = format!("{} {}/{}", w.kind, w.namespace, w.name), "serving certificate issued")
                    }
                    Err(e) => {
                        tracing::warn!(names = ?w.dns_names, error = %e, "serving certificate not issued")
                    }
                }
                rot.on_result(r);
            }
        }
        n
    }

    /// The earliest next attempt of any entry.
    #[must_use]
    pub fn next_attempt(&self) -> Option<SystemTime> {
        self.workloads
            .values()
            .map(|(_, r)| r.next_attempt())
            .chain(self.serving.values().map(|(_, r)| r.next_attempt()))
            .min()
    }

    /// When each workload identity's next renewal is due (for tests and benchmarks).
    #[must_use]
    pub fn workload_schedule(&self) -> Vec<SystemTime> {
        self.workloads
            .values()
            .map(|(_, r)| r.next_attempt())
            .collect()
    }

    /// The valid certificates now and the status of every entry, as a publication without
    /// the bundle and CA connection state (the worker adds those).
    #[must_use]
    pub fn snapshot(&self) -> Identities {
        let svids = self
            .workloads
            .iter()
            .filter_map(|(id, (_, r))| Some((id.clone(), r.current()?)))
            .collect();
        let serving = self
            .serving
            .iter()
            .filter_map(|(k, (w, r))| Some((k.clone(), (w.clone(), r.current()?))))
            .collect();
        let status = self
            .workloads
            .iter()
            .map(|(id, (_, r))| status_of(id.to_string(), r))
            .chain(
                self.serving
                    .values()
                    .map(|(w, r)| status_of(format!("serving {}", w.dns_names.join(",")), r)),
            )
            .collect();
        Identities {
            svids,
            serving,
            status,
            ..Identities::default()
        }
    }
}

/// Local identities wanted: SPIFFE ID → (namespace, a pod name carrying it).
#[must_use]
pub fn wanted_identities(
    state: &ClusterState,
    node: &str,
    td: &TrustDomain,
) -> BTreeMap<SpiffeId, (String, String)> {
    wanted_identities_with(state, node, td, MtlsMode::Disabled)
}

/// [`wanted_identities`] with the mTLS mode of namespaces that carry no annotation.
#[must_use]
pub fn wanted_identities_with(
    state: &ClusterState,
    node: &str,
    td: &TrustDomain,
    default_mtls: MtlsMode,
) -> BTreeMap<SpiffeId, (String, String)> {
    let mut out = BTreeMap::new();
    for pod in state.pods_on_node(node) {
        if state.pod_mtls(pod, default_mtls) == MtlsMode::Disabled || pod.ip().is_none() {
            continue;
        }
        if let Ok(id) = td.workload_id(pod.namespace(), pod.service_account()) {
            out.entry(id)
                .or_insert_with(|| (pod.namespace().to_owned(), pod.metadata.name.clone()));
        }
    }
    // The ingress listeners present the gateway identity to backends in mTLS namespaces.
    let has_ingress = state
        .gateways
        .values()
        .any(|g| g.spec.gateway_class_name == ingress::GATEWAY_CLASS)
        || state
            .ingresses
            .values()
            .any(|i| i.spec.ingress_class_name.as_deref() == Some(ingress::GATEWAY_CLASS));
    if has_ingress {
        out.insert(
            identityd_certs::service::gateway_id(td),
            (String::new(), String::new()),
        );
    }
    out
}

/// The workload identities and serving certificates `state` asks of node `cfg.name`.
#[must_use]
pub fn wanted(
    cfg: &DaemonConfig,
    state: &ClusterState,
    td: &TrustDomain,
) -> (BTreeMap<SpiffeId, WorkloadWant>, Vec<CertWant>) {
    let workloads = wanted_identities_with(state, &cfg.name, td, cfg.mtls.default_mode)
        .into_iter()
        .map(|(id, (namespace, pod))| (id, WorkloadWant { namespace, pod }))
        .collect();
    let ports = IngressPorts {
        http: cfg.ingress.http_port,
        https: cfg.ingress.https_port,
    };
    (workloads, ingress::cert_wants(state, ports))
}

/// The node SVID (from `<stateDir>/node-svid`, or a fresh join) and a client connected to the
/// CA over mTLS with it.
async fn connect(cfg: &DaemonConfig, bootstrap: &Bundle) -> Result<(Svid, CaClient), CaError> {
    let access = cfg.ca.as_ref().ok_or(CaError::NotConfigured)?;
    let timeout = |rpc| CaError::Timeout {
        rpc,
        endpoint: access.endpoint.clone(),
    };
    let node_dir = cfg.state_dir.join("node-svid");
    let node_svid = match Svid::read_from_dir(&node_dir) {
        Ok(s) if s.not_after() > SystemTime::now() + Duration::from_secs(60) => s,
        _ => {
            let joined = tokio::time::timeout(
                CA_CALL_TIMEOUT,
                crate::daemon::node_auth::join(access, &cfg.name, bootstrap),
            )
            .await
            .map_err(|_| timeout("Join"))??;
            joined
                .svid
                .write_to_dir(&node_dir)
                .map_err(|source| CaError::SaveNodeSvid {
                    path: node_dir.clone(),
                    source,
                })?;
            let _ = std::fs::remove_file(&access.join_token_file);
            tracing::info!(id = %joined.svid.id(), "joined the CA; node SVID saved (key 0600)");
            joined.svid
        }
    };
    let client = with_timeout(
        "Connect",
        &access.endpoint,
        CaClient::connect_mtls(&access.endpoint, &node_svid, bootstrap),
    )
    .await?;
    Ok((node_svid, client))
}

/// The bootstrap trust bundle (`ca.bundleFile`) as PEM and parsed.
///
/// # Errors
/// [`CaError::BootstrapBundle`] naming `ca.bundleFile` and the path.
pub fn bootstrap_bundle(cfg: &DaemonConfig, td: &TrustDomain) -> Result<(String, Bundle), CaError> {
    let access = cfg.ca.as_ref().ok_or(CaError::NotConfigured)?;
    let bad = |reason: String| CaError::BootstrapBundle {
        path: access.bundle_file.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&access.bundle_file).map_err(|e| bad(e.to_string()))?;
    let bundle = Bundle::from_pem(td.clone(), &text).map_err(|e| bad(e.to_string()))?;
    Ok((text, bundle))
}

fn sleep_for(next: Option<SystemTime>, now: SystemTime) -> Duration {
    next.map_or(MAX_SLEEP, |t| {
        t.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_SLEEP)
    })
    .max(Duration::from_millis(10))
}

/// Runs the identity worker until `state` closes, publishing on `out`.
pub async fn run(
    cfg: Arc<DaemonConfig>,
    mut state: watch::Receiver<Arc<ClusterState>>,
    out: watch::Sender<Arc<Identities>>,
) {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let policy = RefreshPolicy::default();
    let td = match TrustDomain::new(&cfg.trust_domain) {
        Ok(t) => t,
        Err(e) => {
            let _ = out.send(Arc::new(Identities {
                ca_error: Some(format!("trustDomain={}: {e}", cfg.trust_domain)),
                ..Identities::default()
            }));
            // Keep the channel open (subscribers would see it closed) until the node stops.
            while state.changed().await.is_ok() {}
            return;
        }
    };
    // Connect (join on first start), retrying with backoff while the CA is away.
    let mut failures = 0u32;
    let (node_svid, client, mut bundle_pem) = loop {
        let attempt = match bootstrap_bundle(&cfg, &td) {
            Ok((pem, bundle)) => connect(&cfg, &bundle)
                .await
                .map(|(s, c)| (s, c, pem.clone()))
                .map_err(|e| (e, pem)),
            Err(e) => Err((e, String::new())),
        };
        match attempt {
            Ok(x) => break x,
            Err((e, pem)) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(error = %e, "identity: not connected to the CA yet; retrying");
                }
                let _ = out.send(Arc::new(Identities {
                    bundle_pem: pem,
                    ca_error: Some(e.to_string()),
                    ..Identities::default()
                }));
                let wait = policy.retry_delay(failures);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    r = state.changed() => if r.is_err() { return },
                }
            }
        }
    };
    tracing::info!(id = %node_svid.id(), "identity: connected to the CA");
    let node_dir = cfg.state_dir.join("node-svid");
    let mut node = Rotator::<Svid>::new(policy, Arc::clone(&clock));
    node.on_result(Ok::<_, CaError>(node_svid));
    let issuer = CaIssuer {
        client,
        endpoint: cfg
            .ca
            .as_ref()
            .map(|a| a.endpoint.clone())
            .unwrap_or_default(),
    };
    let mut table = IdentityTable::new(policy, Arc::clone(&clock), cfg.svid_ttl());
    let mut bundle_check_at = clock.now() + BUNDLE_CHECK_INTERVAL;
    let mut bundle_error: Option<String> = None;
    // The root a finished CA rollover signs with, once acted on.
    let mut renewed_for: Option<String> = None;
    loop {
        let st = state.borrow_and_update().clone();
        let (w, s) = wanted(&cfg, &st, &td);
        table.set_wanted(w, s);
        // After a CA rollover's switch, SVIDs signed under the old root are renewed now (every
        // node trusted the new root before it signed anything).
        let signing = crate::daemon::rotation::signing_root(&st);
        if signing.is_some() && signing != renewed_for {
            let bundle = issuer
                .client
                .bundle()
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            // Not acted on until this node's bundle holds the root (the next CA answer).
            let holds = signing.as_ref().is_some_and(|root| {
                bundle
                    .roots()
                    .iter()
                    .any(|r| identityd_certs::bundle::root_fingerprint(r) == *root)
            });
            if let Some(root) = signing.as_ref().filter(|_| holds) {
                let n = table.renew_not_under(root, &bundle);
                if n > 0 {
                    tracing::info!(svids = n, root = %root, "renewing SVIDs under the CA's new root");
                }
                // The node SVID too: a later rollover may retire the root it chains to.
                if node
                    .current()
                    .is_some_and(|c| !chains_to(c.chain(), root, &bundle, clock.now()))
                {
                    tracing::info!(root = %root, "renewing the node SVID under the CA's new root");
                    node.renew_now();
                }
            }
            if holds {
                renewed_for = signing;
            }
        }
        if node.due() {
            let r = match node.current() {
                Some(cur) => {
                    with_timeout(
                        "RenewNode",
                        &issuer.endpoint,
                        issuer.client.renew_node(&cur),
                    )
                    .await
                }
                None => Err(CaError::NodeSvidExpired),
            };
            if let Ok(s) = &r
                && let Err(e) = s.write_to_dir(&node_dir)
            {
                tracing::warn!(error = %e, "saving the renewed node SVID");
            }
            node.on_result(r);
        }
        if clock.now() >= bundle_check_at {
            bundle_check_at = clock.now() + BUNDLE_CHECK_INTERVAL;
            bundle_error = with_timeout("Bundle", &issuer.endpoint, issuer.client.fetch_bundle())
                .await
                .err()
                .map(|e| e.to_string());
        }
        table.renew_due(&issuer).await;
        // The CA's answers carry its bundle: a rollover's new root reaches Envoy's validation
        // context before any SVID issued under it does.
        let current = issuer
            .client
            .bundle()
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .to_pem();
        if current != bundle_pem {
            tracing::info!("trust bundle changed");
            bundle_pem = current;
        }
        let mut published = table.snapshot();
        published
            .status
            .insert(0, status_of("node".to_owned(), &node));
        published.bundle_pem.clone_from(&bundle_pem);
        published.ca_error.clone_from(&bundle_error);
        published.connected = true;
        out.send_if_modified(|cur| {
            let changed = !same(cur, &published);
            if changed {
                *cur = Arc::new(published);
            }
            changed
        });
        let next = [
            table.next_attempt(),
            Some(node.next_attempt()),
            Some(bundle_check_at),
        ]
        .into_iter()
        .flatten()
        .min();
        tokio::select! {
            () = tokio::time::sleep(sleep_for(next, clock.now())) => {}
            r = state.changed() => if r.is_err() { return },
        }
    }
}

/// Whether two publications serve the same certificates and say the same (second-granular
/// counters aside, a new publication each second would wake every subscriber).
fn same(a: &Identities, b: &Identities) -> bool {
    let key = |i: &Identities| {
        (
            i.svids
                .iter()
                .map(|(k, v)| (k.clone(), v.not_after()))
                .collect::<Vec<_>>(),
            i.serving
                .iter()
                .map(|(k, (_, v))| (k.clone(), v.not_after()))
                .collect::<Vec<_>>(),
            i.bundle_pem.clone(),
            i.status
                .iter()
                .map(|s| {
                    (
                        s.name.clone(),
                        s.state.clone(),
                        s.failures,
                        s.error.clone(),
                        s.expires_at_unix,
                        s.next_attempt_at_unix,
                    )
                })
                .collect::<Vec<_>>(),
            i.ca_error.clone(),
            i.connected,
        )
    };
    key(a) == key(b)
}

#[cfg(test)]
mod tests;
