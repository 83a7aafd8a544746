//! The CA role: the only holder of the CA key. Serves the issuance service (gRPC over TLS):
//! nodes join once with a token, then ask over mTLS for SVIDs of the pods scheduled on them.
//! Node authorization comes from the cluster state: the pod must exist, be scheduled on the
//! asking node, and the SPIFFE ID must be its namespace/service account.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use identityd_certs::service::{CaServer, CaServerOptions};
use identityd_certs::service::{Denied, WorkloadRequest};
use identityd_certs::{Ca, CaOptions, TrustDomain};

use crate::daemon::config::{ClusterSourceKind, DaemonConfig};
use crate::daemon::node_auth::{
    DEFAULT_NODE_SERVICE_ACCOUNT, ServiceAccountRef, TokenReviewAuthenticator, publish_bundle,
};
use crate::model::{ClusterState, NamespacedName};

/// Start-up failures of the CA role.
#[derive(Debug, thiserror::Error)]
#[error("ca: {0}")]
pub struct CaRoleError(pub String);

/// The authorization rule, pure: `node` may have `req.spiffe_id` for `req.pod_*` when the pod
/// exists, runs on `node`, and the ID is `spiffe://<td>/ns/<pod ns>/sa/<pod sa>`.
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
    let source = crate::source::open(&cfg)
        .await
        .map_err(|e| CaRoleError(e.to_string()))?;
    let latest: Arc<Mutex<Arc<ClusterState>>> = Arc::new(Mutex::new(source.snapshot()));
    let _poll = source.spawn();
    let mut rx = source.subscribe();
    let l2 = Arc::clone(&latest);
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let s = rx.borrow_and_update().clone();
            *l2.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = s;
        }
    });
    let td2 = td.clone();
    let authorizer = move |node: &str, req: &WorkloadRequest| {
        let state = Arc::clone(
            &latest
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        authorize(&state, &td2, node, req)
    };
    let server = CaServer::new(
        Arc::new(Mutex::new(ca)),
        &ca_dir,
        Arc::new(authorizer),
        CaServerOptions::default(),
    )
    .map_err(|e| CaRoleError(e.to_string()))?;
    let _bundle_task = if cfg.cluster_source == ClusterSourceKind::Kube {
        Some(start_kube(&cfg, &server).await?)
    } else {
        None
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Object, Pod};
    use identityd_certs::SpiffeId;

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
}
