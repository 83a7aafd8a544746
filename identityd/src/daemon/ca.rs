//! The CA role: the only holder of the CA key. Serves the issuance service (gRPC over TLS):
//! nodes join once with a token, then ask over mTLS for SVIDs of the pods scheduled on them.
//! Node authorization comes from the cluster state: the pod must exist, be scheduled on the
//! asking node, and the SPIFFE ID must be its namespace/service account. Ingress: a published
//! node may have the gateway identity when an ingress object of class identityd exists, and a
//! serving certificate for exactly the hostnames a Gateway listener or Ingress TLS entry lists.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use identityd_certs::bundle::root_fingerprint;
use identityd_certs::service::{Authorizer, Denied, ServingRequest, WorkloadRequest};
use identityd_certs::service::{CaServer, CaServerOptions};
use identityd_certs::{Ca, CaOptions, TrustDomain};

use crate::daemon::config::{ClusterSourceKind, DaemonConfig};
use crate::daemon::node_auth::{
    DEFAULT_NODE_SERVICE_ACCOUNT, ServiceAccountRef, TokenReviewAuthenticator, publish_bundle,
};
use crate::daemon::{conditions, ingress, rotation};
use crate::model::identityd::KeyRotationStatus;
use crate::model::{ClusterState, NamespacedName};
use crate::model::{KeyRotation, Object};
use crate::source::{ClusterSource, SourceError};

/// Start-up failures of the CA role.
#[derive(Debug, thiserror::Error)]
#[error("ca: {0}")]
pub struct CaRoleError(pub String);

/// The authorization rule, pure: `node` may have `req.spiffe_id` for `req.pod_*` when the pod
/// exists, runs on `node`, has not finished (phase `Succeeded` or `Failed`), and the ID is
/// `spiffe://<td>/ns/<pod ns>/sa/<pod sa>`.
///
/// # Errors
/// Why not.
pub fn authorize(
    state: &ClusterState,
    td: &TrustDomain,
    node: &str,
    req: &WorkloadRequest,
) -> Result<(), Denied> {
    let key = NamespacedName::new(req.pod_namespace.clone(), req.pod_name.clone());
    let pod = state.pods.get(&key).ok_or_else(|| {
        Denied(format!(
            "pod {}/{} does not exist",
            req.pod_namespace, req.pod_name
        ))
    })?;
    let on = pod.spec.node_name.as_deref().unwrap_or("");
    if on != node {
        return Err(Denied(format!(
            "pod {}/{} is scheduled on node {on:?}, not on the requesting node {node:?}",
            req.pod_namespace, req.pod_name
        )));
    }
    if let Some(phase @ ("Succeeded" | "Failed")) =
        pod.status.as_ref().and_then(|s| s.phase.as_deref())
    {
        return Err(Denied(format!(
            "pod {}/{} has finished (status.phase {phase}); finished pods get no SVID",
            req.pod_namespace, req.pod_name
        )));
    }
    let want = td
        .workload_id(pod.namespace(), pod.service_account())
        .map_err(|e| Denied(format!("pod {}/{}: {e}", req.pod_namespace, req.pod_name)))?;
    if want != req.spiffe_id {
        return Err(Denied(format!(
            "pod {}/{} runs as {want}, not {}",
            req.pod_namespace, req.pod_name, req.spiffe_id
        )));
    }
    Ok(())
}

/// Kubernetes mode: admits node joins by TokenReview ([`TokenReviewAuthenticator`]) and keeps
/// the trust bundle published to the ConfigMap `identityd-ca-bundle` in the CA's namespace (at
/// start and after every change, e.g. a rollover; checked every minute).
async fn start_kube(
    cfg: &DaemonConfig,
    server: &CaServer,
) -> Result<tokio::task::JoinHandle<()>, CaRoleError> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| CaRoleError(format!("Kubernetes client configuration: {e}")))?;
    let sa = cfg
        .ca
        .as_ref()
        .and_then(|c| c.node_service_account.as_deref())
        .unwrap_or(DEFAULT_NODE_SERVICE_ACCOUNT);
    let account = ServiceAccountRef::parse(sa)
        .map_err(|e| CaRoleError(format!("ca.nodeServiceAccount={sa}: {e}")))?;
    tracing::info!(account = %account, "node joins: ServiceAccount tokens checked by TokenReview");
    server.set_join_authenticator(Arc::new(TokenReviewAuthenticator::new(
        client.clone(),
        account,
    )));
    let namespace = client.default_namespace().to_owned();
    let server = server.clone();
    Ok(tokio::spawn(async move {
        let mut published = String::new();
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            let pem = server.bundle().to_pem();
            if pem == published {
                continue;
            }
            match publish_bundle(&client, &namespace, &pem).await {
                Ok(()) => {
                    tracing::info!(%namespace, "trust bundle published to ConfigMap identityd-ca-bundle");
                    published = pem;
                }
                Err(e) => tracing::warn!(error = %e, "publishing the trust bundle; retrying"),
            }
        }
    }))
}

/// Whether `node` may ask the CA for anything (renew its node SVID, workload SVIDs, serving
/// certificates): it has published an IdentitydNode. A node removed from the cluster keeps a
/// valid node SVID until it expires, but gets nothing more.
///
/// # Errors
/// Why not.
pub fn authorize_node(state: &ClusterState, node: &str) -> Result<(), Denied> {
    if state.node(node).is_none() {
        return Err(Denied(format!(
            "node {node:?} has published no IdentitydNode (removed from the cluster, or not yet seen by the CA)"
        )));
    }
    Ok(())
}

/// Whether `node` may have the gateway identity: it is a published node and the cluster has an
/// ingress object of class identityd (every node serves every ingress listener).
///
/// # Errors
/// Why not.
pub fn authorize_gateway(state: &ClusterState, node: &str) -> Result<(), Denied> {
    if state.node(node).is_none() {
        return Err(Denied(format!(
            "node {node:?} has published no IdentitydNode"
        )));
    }
    let plan = ingress::plan_ingress(state, ingress::IngressPorts::default());
    if plan.listeners.is_empty() {
        return Err(Denied(format!(
            "no Gateway or Ingress of class {:?} exists; the gateway identity is not needed",
            ingress::GATEWAY_CLASS
        )));
    }
    Ok(())
}

/// Whether `node` may have a serving certificate for `req`: a published node, and exactly the
/// names one listener (Gateway) or TLS entry (Ingress) of that object lists, with no Secret.
///
/// # Errors
/// Why not.
pub fn authorize_serving(
    state: &ClusterState,
    node: &str,
    req: &ServingRequest,
) -> Result<(), Denied> {
    if state.node(node).is_none() {
        return Err(Denied(format!(
            "node {node:?} has published no IdentitydNode"
        )));
    }
    let mut names = req.dns_names.clone();
    names.sort();
    names.dedup();
    let wants = ingress::cert_wants(state, ingress::IngressPorts::default());
    let of_object: Vec<_> = wants
        .iter()
        .filter(|w| w.kind == req.kind && w.namespace == req.namespace && w.name == req.name)
        .collect();
    if of_object.is_empty() {
        return Err(Denied(format!(
            "{} {}/{} does not exist, is not of class {:?}, or needs no certificate from identityd's CA",
            req.kind,
            req.namespace,
            req.name,
            ingress::GATEWAY_CLASS
        )));
    }
    if of_object.iter().any(|w| w.dns_names == names) {
        Ok(())
    } else {
        Err(Denied(format!(
            "{} {}/{} lists {:?}, not {names:?}",
            req.kind,
            req.namespace,
            req.name,
            of_object.iter().map(|w| &w.dns_names).collect::<Vec<_>>()
        )))
    }
}

/// The CA's authorizer over the latest cluster snapshot.
struct ClusterAuthorizer {
    latest: Arc<Mutex<Arc<ClusterState>>>,
    td: TrustDomain,
}

impl std::fmt::Debug for ClusterAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterAuthorizer")
            .field("td", &self.td.to_string())
            .finish_non_exhaustive()
    }
}

impl ClusterAuthorizer {
    fn state(&self) -> Arc<ClusterState> {
        Arc::clone(
            &self
                .latest
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl Authorizer for ClusterAuthorizer {
    fn authorize(&self, node: &str, req: &WorkloadRequest) -> Result<(), Denied> {
        authorize(&self.state(), &self.td, node, req)
    }

    fn authorize_node(&self, node: &str) -> Result<(), Denied> {
        authorize_node(&self.state(), node)
    }

    fn authorize_gateway(&self, node: &str) -> Result<(), Denied> {
        authorize_gateway(&self.state(), node)
    }

    fn authorize_serving(&self, node: &str, req: &ServingRequest) -> Result<(), Denied> {
        authorize_serving(&self.state(), node, req)
    }
}

/// Drives `KeyRotation` objects ([`rotation::controller_steps`]) and writes their status.
struct Controller {
    td: TrustDomain,
    source: Arc<dyn ClusterSource>,
    ca: Arc<Mutex<Ca>>,
    ca_dir: std::path::PathBuf,
    server: CaServer,
    /// The NetworkPolicy events last recorded, per policy.
    policy_events: Mutex<PolicyEvents>,
}

type PolicyEvents = BTreeMap<crate::model::ObjectKey, Vec<crate::source::ObjectEvent>>;

/// The Events NetworkPolicies call for (they have no status): a policy whose podSelector
/// selects no pod, and the parts of a policy the compiler had to skip.
#[must_use]
pub fn policy_events(state: &ClusterState) -> PolicyEvents {
    use crate::model::{Kind, ObjectKey};
    use crate::source::ObjectEvent;
    let plan = crate::daemon::netpol::compile(state);
    let mut out = PolicyEvents::new();
    for nn in &plan.selects_nothing {
        out.entry(ObjectKey {
            kind: Kind::NetworkPolicy,
            namespace: Some(nn.namespace.clone()),
            name: nn.name.clone(),
        })
        .or_default()
        .push(ObjectEvent {
            reason: "SelectsNothing".into(),
            message: format!(
                "spec.podSelector selects no pod in namespace {}: the policy isolates nothing",
                nn.namespace
            ),
        });
    }
    for p in plan
        .problems
        .iter()
        .filter(|p| p.object.kind == Kind::NetworkPolicy)
    {
        out.entry(p.object.clone()).or_default().push(ObjectEvent {
            reason: "PartlyCompiled".into(),
            message: format!("{}: {}", p.field, p.message),
        });
    }
    for evs in out.values_mut() {
        evs.sort();
        evs.dedup();
    }
    out
}

impl Controller {
    /// The fingerprints of the CA's signing and staged roots.
    fn view(&self) -> rotation::CaView {
        let ca = self
            .ca
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        rotation::CaView {
            root: root_fingerprint(ca.root()),
            next_root: ca.next_root().map(|r| root_fingerprint(r)),
        }
    }

    /// Does a rollover's [`rotation::CaAction`] on the CA and its files, then refreshes what
    /// the service answers with (the bundle in every answer).
    fn act(&self, action: rotation::CaAction) -> Result<rotation::CaDone, String> {
        use rotation::{CaAction, CaDone};
        let now = SystemTime::now();
        let done = {
            let mut ca = self
                .ca
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match action {
                CaAction::Stage => ca
                    .stage_next_root(&self.ca_dir, now)
                    .map_err(|e| format!("staging a new root: {e}"))
                    .and_then(|_| {
                        ca.next_root()
                            .map(|r| CaDone::Staged(root_fingerprint(r)))
                            .ok_or_else(|| "staging a new root: none staged".to_owned())
                    }),
                CaAction::Promote { overlap } => ca
                    .promote_next_root(&self.ca_dir, overlap, now)
                    .map(CaDone::Promoted)
                    .map_err(|e| format!("promoting the new root: {e}")),
                CaAction::Withdraw => ca
                    .withdraw_next_root(&self.ca_dir, now)
                    .map(|_| CaDone::Withdrawn)
                    .map_err(|e| format!("withdrawing the new root: {e}")),
            }
        }?;
        if let Err(e) = self.server.refresh() {
            tracing::warn!(error = %e, "CA service refresh after a rollover step");
        }
        Ok(done)
    }

    async fn step(&self, state: &ClusterState) {
        let now = rotation::now_rfc3339();
        for step in rotation::controller_steps(state, SystemTime::now(), &self.view()) {
            let Some(kr) = state.key_rotations.get(&step.name) else {
                continue;
            };
            let mut status = step.status.clone();
            if let Some(action) = step.ca {
                let result = self.act(action);
                tracing::info!(rotation = %step.name, ?action, ?result, "KeyRotation ca");
                status = rotation::ca_action_done(kr, status, result, &now);
            }
            tracing::info!(rotation = %step.name, phase = ?status.phase, step = ?status.step, "KeyRotation status");
            self.write(kr, status).await;
        }
        // Events of NetworkPolicies (which have no status), when they change.
        let want = policy_events(state);
        let changed: Vec<(crate::model::ObjectKey, Vec<crate::source::ObjectEvent>)> = {
            let last = self
                .policy_events
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            want.iter()
                .filter(|(k, v)| last.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .chain(
                    last.keys()
                        .filter(|k| !want.contains_key(*k))
                        .map(|k| (k.clone(), Vec::new())),
                )
                .collect()
        };
        let mut all_written = true;
        for (key, events) in &changed {
            if let Err(e) = self.source.record_events(key, events).await {
                all_written = false;
                tracing::warn!(object = %key, error = %e, "recording events");
            }
        }
        if all_written {
            *self
                .policy_events
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = want;
        }
        // `Accepted` conditions on L7 objects. Objects sharing a file with others cannot get
        // a status written (the source refuses to rewrite a multi-document file).
        for obj in conditions::status_updates(state, &self.td, &now) {
            match self.source.write_status(&obj).await {
                Ok(()) => tracing::info!(object = %obj.key(), "status written"),
                Err(SourceError::SharedFile { .. }) => {
                    tracing::debug!(object = %obj.key(), "status not written: shared file");
                }
                Err(e) => tracing::warn!(object = %obj.key(), error = %e, "writing status"),
            }
        }
    }

    async fn write(&self, kr: &KeyRotation, status: KeyRotationStatus) {
        let mut kr = kr.clone();
        kr.status = Some(status);
        if let Err(e) = self
            .source
            .write_status(&Object::KeyRotation(kr.clone()))
            .await
        {
            tracing::warn!(rotation = %kr.metadata.name, error = %e, "writing KeyRotation status");
        }
    }
}

/// Runs the CA role until SIGTERM.
///
/// # Errors
/// Start-up failures.
pub async fn run(cfg: DaemonConfig) -> Result<(), CaRoleError> {
    let ca_dir = cfg
        .ca_dir
        .clone()
        .ok_or_else(|| CaRoleError("caDir is required for role ca".into()))?;
    let listen = cfg
        .listen
        .ok_or_else(|| CaRoleError("listen is required for role ca".into()))?;
    let td = TrustDomain::new(&cfg.trust_domain)
        .map_err(|e| CaRoleError(format!("trustDomain: {e}")))?;
    let ca = Ca::load_or_init(&ca_dir, td.clone(), CaOptions::default(), SystemTime::now())
        .map_err(|e| CaRoleError(e.to_string()))?;
    let source = crate::source::open(&cfg.source_spec())
        .await
        .map_err(|e| CaRoleError(e.to_string()))?;
    let latest: Arc<Mutex<Arc<ClusterState>>> = Arc::new(Mutex::new(source.snapshot()));
    let _poll = source.spawn();
    let mut rx = source.subscribe();
    let l2 = Arc::clone(&latest);
    let authorizer = ClusterAuthorizer {
        latest,
        td: td.clone(),
    };
    let ca = Arc::new(Mutex::new(ca));
    let ca_for_metrics = Arc::clone(&ca);
    let server = CaServer::new(
        Arc::clone(&ca),
        &ca_dir,
        Arc::new(authorizer),
        CaServerOptions {
            default_workload_ttl: cfg.svid_ttl(),
            max_workload_ttl: cfg.svid_ttl(),
            ..CaServerOptions::default()
        },
    )
    .map_err(|e| CaRoleError(e.to_string()))?;
    let _bundle_task = if cfg.cluster_source == ClusterSourceKind::Kube {
        Some(start_kube(&cfg, &server).await?)
    } else {
        None
    };
    // The cluster's controller: keeps the authorizer's snapshot current and drives
    // KeyRotation objects (written back through the source).
    let controller = Controller {
        td: td.clone(),
        source: Arc::clone(&source),
        ca,
        ca_dir: ca_dir.clone(),
        server: server.clone(),
        policy_events: Mutex::new(PolicyEvents::new()),
    };
    controller.step(&source.snapshot()).await;
    tokio::spawn(async move {
        // On every change, and every few seconds for deadlines.
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tokio::select! {
                r = rx.changed() => if r.is_err() { break },
                _ = tick.tick() => {}
            }
            let s = rx.borrow_and_update().clone();
            *l2.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::clone(&s);
            controller.step(&s).await;
        }
    });
    let _metrics = cfg.metrics_address.map(|addr| {
        let server = server.clone();
        tokio::spawn(crate::daemon::metrics::serve_with(addr, move |format| {
            let not_after = ca_for_metrics
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .not_after();
            exposition(
                &server.counters(),
                not_after,
                &server.bundle().to_pem(),
                SystemTime::now(),
            )
            .render(format)
        }))
    });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CaRoleError(format!("listen={listen}: {e}")))?;
    tracing::info!(%listen, trust_domain = %td, "CA role serving");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| CaRoleError(e.to_string()))?;
    tokio::select! {
        r = server.serve(listener) => r.map_err(|e| CaRoleError(e.to_string())),
        _ = term.recv() => Ok(()),
    }
}

/// The CA role's metrics (`metricsAddress` of role ca): issuance and refusals by request,
/// failed TLS handshakes, and how long the signing certificate and each root stay valid.
#[must_use]
pub fn exposition(
    c: &identityd_certs::service::CounterSnapshot,
    signer_not_after: SystemTime,
    bundle_pem: &str,
    now: SystemTime,
) -> crate::daemon::expo::Exposition {
    use crate::daemon::expo::{Exposition, Kind, labels};
    #[allow(clippy::cast_precision_loss)]
    let f = |v: u64| v as f64;
    let left = |t: SystemTime| t.duration_since(now).map_or(0.0, |d| d.as_secs_f64());
    let mut e = Exposition::new();
    e.family(
        "identityd_ca_issued",
        "Certificates the CA issued: workload SVIDs (and serving certificates), node SVIDs for join tokens, node SVID renewals",
        Kind::Counter,
    )
    .set(labels(&[("request", "workload")]), f(c.issued))
    .set(labels(&[("request", "join")]), f(c.joins))
    .set(labels(&[("request", "node_renewal")]), f(c.node_renewals));
    {
        let mut fam = e.family(
            "identityd_ca_refused",
            "Requests the CA refused, by request and reason: authentication (no or an unverifiable client certificate or join credential), authorization (the node may not have what it asked for), invalid_request (CSR, ID or lifetime rules), internal, rate_limited (the node asked faster than its limit)",
            Kind::Counter,
        );
        for (request, reason, n) in &c.refusals {
            fam.set(labels(&[("request", request), ("reason", reason)]), f(*n));
        }
    }
    {
        let mut fam = e.family(
            "identityd_ca_request_duration_seconds",
            "Time the CA took to answer a request (issued or refused), by request",
            Kind::Histogram,
        );
        for l in &c.latency {
            fam.histogram(
                labels(&[("request", l.request)]),
                &identityd_certs::service::LATENCY_BUCKETS,
                l.buckets.clone(),
                l.sum_seconds,
            );
        }
    }
    e.family(
        "identityd_ca_connected_nodes",
        "Nodes with an open mTLS connection to the CA (by node SVID)",
        Kind::Gauge,
    )
    .set(Vec::new(), f(c.connected_nodes.len() as u64));
    {
        let mut fam = e.family(
            "identityd_ca_node_connections",
            "Open mTLS connections to the CA per node",
            Kind::Gauge,
        );
        for (node, n) in &c.connected_nodes {
            fam.set(labels(&[("node", node)]), f(*n));
        }
    }
    e.family(
        "identityd_ca_unauthenticated_connections",
        "Open connections to the CA without a node SVID (joins, bundle fetches, TLS handshakes in progress); capped, each closed 30 s after it was accepted",
        Kind::Gauge,
    )
    .set(Vec::new(), f(c.unauthenticated_connections));
    {
        let mut fam = e.family(
            "identityd_ca_connections_refused",
            "Connections the CA closed at admission, by the limit that refused them: max_connections, unauthenticated (too many without a node SVID), per_source (too many without a node SVID from one address), per_node",
            Kind::Counter,
        );
        for (reason, n) in &c.connections_refused {
            fam.set(labels(&[("reason", reason)]), f(*n));
        }
    }
    e.family(
        "identityd_ca_tls_handshake_failures",
        "TLS handshakes to the CA that failed or timed out",
        Kind::Counter,
    )
    .set(Vec::new(), f(c.tls_failures));
    e.family(
        "identityd_ca_signer_expiry_seconds",
        "Seconds until the certificate that signs SVIDs expires",
        Kind::Gauge,
    )
    .set(Vec::new(), left(signer_not_after));
    let mut roots = e.family(
        "identityd_ca_root_expiry_seconds",
        "Seconds until each root of the trust bundle expires",
        Kind::Gauge,
    );
    for (i, cert) in identityd_certs::bundle::certs_from_pem(bundle_pem)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        if let Ok(d) = identityd_certs::inspect::describe(cert) {
            let t = std::time::UNIX_EPOCH
                + std::time::Duration::from_secs(u64::try_from(d.not_after_unix).unwrap_or(0));
            roots.set(labels(&[("root", &i.to_string())]), left(t));
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Object, Pod};
    use identityd_certs::SpiffeId;

    /// A NetworkPolicy whose selector matches no pod gets a `SelectsNothing` Event; one that
    /// selects a pod gets none; the FileSource writes them under `.events/` and removes the
    /// file once there are none.
    #[test]
    fn a_policy_that_selects_nothing_gets_an_event() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: shop, labels: {app: web}}\nspec: {nodeName: n1}\nstatus: {phase: Running, podIP: 10.244.1.10}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-web, namespace: shop}\nspec: {podSelector: {matchLabels: {app: web}}}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-nothing, namespace: shop}\nspec: {podSelector: {matchLabels: {app: nobody}}}\n";
        let objs: Vec<Object> = crate::source::decode::decode_all(text)
            .into_iter()
            .filter_map(|(_, r)| r.ok().flatten())
            .collect();
        let state = ClusterState::from_objects(1, objs);
        let events = policy_events(&state);
        assert_eq!(events.len(), 1, "{events:?}");
        let (key, evs) = events.iter().next().unwrap();
        assert_eq!(key.name, "deny-nothing");
        assert_eq!(evs[0].reason, "SelectsNothing");
        assert!(evs[0].message.contains("spec.podSelector"), "{evs:?}");

        let dir = tempfile::tempdir().unwrap();
        let source = crate::source::FileSource::open(
            dir.path().to_path_buf(),
            crate::source::FileSourceOptions::default(),
        )
        .unwrap();
        let path = source.record_events(key, evs).unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(
            written.contains("SelectsNothing") && written.contains("deny-nothing.idd-"),
            "{written}"
        );
        assert!(
            path.starts_with(dir.path().join(".events")),
            "{}",
            path.display()
        );
        source.record_events(key, &[]).unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn ca_metrics_count_issuance_and_pass_promtool() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let td = TrustDomain::new("cluster.local").unwrap();
        let ca = Ca::load_or_init(dir.path(), td, CaOptions::default(), now).unwrap();
        let c = identityd_certs::service::CounterSnapshot {
            issued: 7,
            refused: 2,
            joins: 3,
            refusals: vec![
                ("workload", "authorization", 2),
                ("join", "authentication", 0),
            ],
            latency: vec![identityd_certs::service::LatencySnapshot {
                request: "workload",
                buckets: {
                    let mut b = vec![0; identityd_certs::service::LATENCY_BUCKETS.len() + 1];
                    b[3] = 7;
                    b
                },
                count: 7,
                sum_seconds: 0.021,
            }],
            connected_nodes: [("n1".to_owned(), 2), ("n2".to_owned(), 1)].into(),
            connections_refused: vec![("per_source", 5), ("max_connections", 0)],
            ..Default::default()
        };
        let text = exposition(&c, ca.not_after(), &ca.bundle(now).to_pem(), now)
            .render(crate::daemon::expo::Format::Classic);
        assert!(
            text.contains("identityd_ca_issued_total{request=\"workload\"} 7"),
            "{text}"
        );
        assert!(
            text.contains(
                "identityd_ca_refused_total{request=\"workload\",reason=\"authorization\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "identityd_ca_request_duration_seconds_bucket{request=\"workload\",le=\"0.005\"} 7"
            ),
            "{text}"
        );
        assert!(text.contains("identityd_ca_connected_nodes 2"), "{text}");
        assert!(
            text.contains("identityd_ca_connections_refused_total{reason=\"per_source\"} 5"),
            "{text}"
        );
        let root = text
            .lines()
            .find(|l| l.starts_with("identityd_ca_root_expiry_seconds{root=\"0\"}"))
            .unwrap_or_else(|| panic!("a root expiry: {text}"));
        let secs: f64 = root.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(secs > 86_400.0, "{root}");
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool (scripts/bootstrap installs Debian's prometheus)");
        {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn only_pods_of_the_node_with_their_own_identity() {
        let pod = Pod::new("shop", "web-1", "n1", "web", "10.244.1.10".parse().unwrap());
        let state = ClusterState::from_objects(1, [Object::Pod(pod)]);
        let td = TrustDomain::new("cluster.local").unwrap();
        let req = |id: &str, pod: &str| WorkloadRequest {
            spiffe_id: SpiffeId::parse(id).unwrap(),
            pod_namespace: "shop".into(),
            pod_name: pod.into(),
        };
        assert!(
            authorize(
                &state,
                &td,
                "n1",
                &req("spiffe://cluster.local/ns/shop/sa/web", "web-1")
            )
            .is_ok()
        );
        let e = authorize(
            &state,
            &td,
            "n2",
            &req("spiffe://cluster.local/ns/shop/sa/web", "web-1"),
        )
        .unwrap_err();
        assert!(e.0.contains("scheduled on node \"n1\""), "{e}");
        let e = authorize(
            &state,
            &td,
            "n1",
            &req("spiffe://cluster.local/ns/shop/sa/admin", "web-1"),
        )
        .unwrap_err();
        assert!(
            e.0.contains("runs as spiffe://cluster.local/ns/shop/sa/web"),
            "{e}"
        );
        let e = authorize(
            &state,
            &td,
            "n1",
            &req("spiffe://cluster.local/ns/shop/sa/web", "nope"),
        )
        .unwrap_err();
        assert!(e.0.contains("does not exist"), "{e}");
    }

    #[test]
    fn finished_pods_and_unpublished_nodes_get_nothing() {
        let td = TrustDomain::new("cluster.local").unwrap();
        let pod = |name: &str, phase: &str| {
            let mut p = Pod::new("shop", name, "n1", "web", "10.244.1.10".parse().unwrap());
            p.status.as_mut().unwrap().phase = Some(phase.into());
            Object::Pod(p)
        };
        let node = Object::IdentitydNode(crate::model::IdentitydNode::new(
            "n1",
            crate::model::IdentitydNodeSpec {
                pod_cidrs: vec!["10.244.1.0/24".into()],
                underlay_addresses: vec!["192.0.2.1".into()],
                ..Default::default()
            },
        ));
        let state = ClusterState::from_objects(
            1,
            [
                pod("running", "Running"),
                pod("done", "Succeeded"),
                pod("crashed", "Failed"),
                node,
            ],
        );
        let req = |pod: &str| WorkloadRequest {
            spiffe_id: SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web").unwrap(),
            pod_namespace: "shop".into(),
            pod_name: pod.into(),
        };
        assert!(authorize(&state, &td, "n1", &req("running")).is_ok());
        for (pod, phase) in [("done", "Succeeded"), ("crashed", "Failed")] {
            let e = authorize(&state, &td, "n1", &req(pod)).unwrap_err();
            assert!(e.0.contains(&format!("status.phase {phase}")), "{e}");
        }
        assert!(authorize_node(&state, "n1").is_ok());
        let e = authorize_node(&state, "n2").unwrap_err();
        assert!(e.0.contains("\"n2\" has published no IdentitydNode"), "{e}");
    }
}
