//! Node authentication at the CA in Kubernetes, and the CA's bundle ConfigMap.
//!
//! A node daemon (DaemonSet pod) joins the CA with its projected ServiceAccount token
//! (audience [`CA_AUDIENCE`], `ca.auth: serviceAccountToken`). The CA posts a TokenReview and
//! admits the join for node `N` only when:
//! 1. the API server says the token is authenticated,
//! 2. for the audience [`CA_AUDIENCE`],
//! 3. of the node daemons' ServiceAccount (`ca.nodeServiceAccount`, default
//!    [`DEFAULT_NODE_SERVICE_ACCOUNT`]),
//! 4. bound to a pod ([`EXTRA_POD_NAME`]) on node `N` ([`EXTRA_NODE_NAME`]),
//! 5. and that pod exists (same UID when the token names one) and is scheduled on `N`.
//!
//! Refusals name the failed check; the token itself is never logged or echoed.
//!
//! The CA also publishes its trust bundle to the ConfigMap [`BUNDLE_CONFIGMAP`] (key
//! [`BUNDLE_KEY`]) in its own namespace by server-side apply, for nodes to mount.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use identityd_certs::Bundle;
use identityd_certs::service::{CaClient, Denied, JoinAuthenticator, JoinToken, NodeIdentity};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::daemon::config::{CaAccess, NodeAuth};
pub use crate::daemon::config::{DEFAULT_NODE_SERVICE_ACCOUNT, ServiceAccountRef};
use crate::source::{FIELD_MANAGER, SourceError};

/// The audience node tokens are projected for (the chart's `serviceAccountToken.audience`).
pub const CA_AUDIENCE: &str = "identityd-ca";
/// The ConfigMap the CA publishes its trust bundle to (in its own namespace).
pub const BUNDLE_CONFIGMAP: &str = "identityd-ca-bundle";
/// The key of the bundle PEM in [`BUNDLE_CONFIGMAP`].
pub const BUNDLE_KEY: &str = "bundle.pem";
/// TokenReview `user.extra` key: the pod the token is bound to.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// TokenReview `user.extra` key: that pod's UID.
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// TokenReview `user.extra` key: the node that pod runs on.
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";

/// What an admitted token proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The node daemon's pod (in the ServiceAccount's namespace).
    pub pod_name: String,
    /// Its UID, when the token names one.
    pub pod_uid: Option<String>,
    /// The node the token is bound to (= the node asked for).
    pub node: String,
}

fn extra<'a>(status: &'a TokenReviewStatus, key: &str) -> Option<&'a str> {
    status
        .user
        .as_ref()?
        .extra
        .as_ref()?
        .get(key)?
        .first()
        .map(String::as_str)
}

/// The pure part of the decision: checks 1–4 on a TokenReview's status for a join as `node`.
///
/// # Errors
/// [`Denied`] naming the failed check.
pub fn judge(
    status: Option<&TokenReviewStatus>,
    account: &ServiceAccountRef,
    node: &str,
) -> Result<Admitted, Denied> {
    let status = status.ok_or_else(|| Denied("the TokenReview has no status".into()))?;
    if status.authenticated != Some(true) {
        return Err(Denied(format!(
            "ServiceAccount token not authenticated by the API server{}",
            status
                .error
                .as_deref()
                .filter(|e| !e.is_empty())
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )));
    }
    let audiences = status.audiences.clone().unwrap_or_default();
    if !audiences.iter().any(|a| a == CA_AUDIENCE) {
        return Err(Denied(format!(
            "ServiceAccount token audience {audiences:?} does not include {CA_AUDIENCE:?}"
        )));
    }
    let username = status
        .user
        .as_ref()
        .and_then(|u| u.username.clone())
        .unwrap_or_default();
    if username != account.username() {
        return Err(Denied(format!(
            "token of {username:?}, not of the node ServiceAccount {account} ({})",
            account.username()
        )));
    }
    let pod_name = extra(status, EXTRA_POD_NAME).ok_or_else(|| {
        Denied(format!(
            "the token is not bound to a pod (no {EXTRA_POD_NAME} in the TokenReview)"
        ))
    })?;
    let token_node = extra(status, EXTRA_NODE_NAME).ok_or_else(|| {
        Denied(format!(
            "the token does not name its node (no {EXTRA_NODE_NAME} in the TokenReview; Kubernetes >= 1.30 adds it)"
        ))
    })?;
    if token_node != node {
        return Err(Denied(format!(
            "the token of pod {}/{pod_name} is bound to node {token_node:?}, not {node:?}",
            account.namespace
        )));
    }
    Ok(Admitted {
        pod_name: pod_name.to_owned(),
        pod_uid: extra(status, EXTRA_POD_UID).map(str::to_owned),
        node: node.to_owned(),
    })
}

/// The CA's [`JoinAuthenticator`] in Kubernetes: TokenReview, then the pod's node.
#[derive(Clone)]
pub struct TokenReviewAuthenticator {
    client: kube::Client,
    account: ServiceAccountRef,
}

impl fmt::Debug for TokenReviewAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenReviewAuthenticator")
            .field("account", &self.account.to_string())
            .field("audience", &CA_AUDIENCE)
            .finish_non_exhaustive()
    }
}

impl TokenReviewAuthenticator {
    /// Admits tokens of `account` through `client`'s API server.
    #[must_use]
    pub fn new(client: kube::Client, account: ServiceAccountRef) -> Self {
        Self { client, account }
    }

    /// Checks `token` for a join as `node` (all five checks of the module docs).
    ///
    /// # Errors
    /// [`Denied`] naming the failed check (never the token).
    pub async fn check(&self, node: &str, token: &str) -> Result<Admitted, Denied> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.trim().to_owned()),
                audiences: Some(vec![CA_AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Denied(format!("the TokenReview failed: {e}")))?;
        let admitted = judge(reviewed.status.as_ref(), &self.account, node)?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.account.namespace);
        let who = format!("{}/{}", self.account.namespace, admitted.pod_name);
        let pod = match pods.get_opt(&admitted.pod_name).await {
            Ok(Some(p)) => p,
            Ok(None) => {
                return Err(Denied(format!(
                    "pod {who} of the token does not exist (any more)"
                )));
            }
            Err(e) => return Err(Denied(format!("reading pod {who}: {e}"))),
        };
        if let (Some(want), Some(have)) = (&admitted.pod_uid, &pod.metadata.uid)
            && want != have
        {
            return Err(Denied(format!(
                "pod {who} was replaced (uid {have}, the token names {want})"
            )));
        }
        let on = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or("");
        if on != node {
            return Err(Denied(format!(
                "pod {who} is scheduled on node {on:?}, not on {node:?}"
            )));
        }
        tracing::info!(%node, pod = %who, "node admitted by TokenReview");
        Ok(admitted)
    }
}

impl JoinAuthenticator for TokenReviewAuthenticator {
    fn authenticate<'a>(
        &'a self,
        node: &'a str,
        credential: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), Denied>> + Send + 'a>> {
        Box::pin(async move { self.check(node, credential).await.map(drop) })
    }
}

/// Why a node could not join the CA.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// A credential file named by the config cannot be read or is empty.
    #[error("{field}={}: {reason}", path.display())]
    Credential {
        /// The config field (`ca.joinTokenFile`, `ca.tokenFile`).
        field: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// `ca.auth=serviceAccountToken` without `ca.tokenFile`.
    #[error("ca.tokenFile is required when ca.auth=serviceAccountToken")]
    NoTokenFile,
    /// The CA refused or could not be reached.
    #[error("joining the CA at {endpoint}: {source}")]
    Refused {
        /// The CA endpoint.
        endpoint: String,
        /// The CA's answer.
        #[source]
        source: identityd_certs::service::ServiceError,
    },
}

/// Node side: joins the CA as `node` with the credential `access.auth` names — the join token
/// file, or the projected ServiceAccount token file (re-read each time: the kubelet rotates it).
///
/// # Errors
/// [`JoinError`], naming the config field (`ca.tokenFile=PATH: …`) or the CA's refusal.
pub async fn join(
    access: &CaAccess,
    node: &str,
    bundle: &Bundle,
) -> Result<NodeIdentity, JoinError> {
    let refused = |source| JoinError::Refused {
        endpoint: access.endpoint.clone(),
        source,
    };
    match access.auth {
        NodeAuth::JoinToken => {
            let token =
                JoinToken::read(&access.join_token_file).map_err(|e| JoinError::Credential {
                    field: "ca.joinTokenFile",
                    path: access.join_token_file.clone(),
                    reason: e.to_string(),
                })?;
            CaClient::join(&access.endpoint, node, &token, bundle)
                .await
                .map_err(refused)
        }
        NodeAuth::ServiceAccountToken => {
            let path = access.token_file.as_deref().ok_or(JoinError::NoTokenFile)?;
            let credential = |reason: String| JoinError::Credential {
                field: "ca.tokenFile",
                path: path.to_path_buf(),
                reason,
            };
            let token = zeroize::Zeroizing::new(
                std::fs::read_to_string(path).map_err(|e| credential(e.to_string()))?,
            );
            if token.trim().is_empty() {
                return Err(credential("the file is empty".into()));
            }
            CaClient::join_with_credential(&access.endpoint, node, token.trim(), bundle)
                .await
                .map_err(refused)
        }
    }
}

/// Server-side applies the trust bundle `pem` to ConfigMap [`BUNDLE_CONFIGMAP`] (key
/// [`BUNDLE_KEY`]) in `namespace`, field manager [`FIELD_MANAGER`].
///
/// # Errors
/// [`SourceError::Kube`] when the apply fails.
pub async fn publish_bundle(
    client: &kube::Client,
    namespace: &str,
    pem: &str,
) -> Result<(), SourceError> {
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": BUNDLE_CONFIGMAP,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "identityd",
                "app.kubernetes.io/component": "ca",
            },
        },
        "data": { BUNDLE_KEY: pem },
    });
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .patch(
            BUNDLE_CONFIGMAP,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|e| SourceError::Kube {
            action: format!("server-side apply of ConfigMap {namespace}/{BUNDLE_CONFIGMAP}"),
            source: std::sync::Arc::new(e),
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    fn status(user: &str, audiences: &[&str], node: &str) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(audiences.iter().map(|s| (*s).to_owned()).collect()),
            user: Some(UserInfo {
                username: Some(user.to_owned()),
                extra: Some(
                    [
                        (EXTRA_POD_NAME, "identityd-node-x7k2p"),
                        (EXTRA_NODE_NAME, node),
                        (EXTRA_POD_UID, "u-1"),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), vec![v.to_owned()]))
                    .collect(),
                ),
                ..UserInfo::default()
            }),
            error: None,
        }
    }

    #[test]
    fn judge_names_each_failed_check() {
        let sa = ServiceAccountRef::parse(DEFAULT_NODE_SERVICE_ACCOUNT).unwrap();
        let user = "system:serviceaccount:identityd-system:identityd-node";
        let ok = judge(Some(&status(user, &[CA_AUDIENCE], "n1")), &sa, "n1").unwrap();
        assert_eq!(ok.pod_name, "identityd-node-x7k2p");
        assert_eq!(ok.pod_uid.as_deref(), Some("u-1"));
        let mut no = status(user, &[CA_AUDIENCE], "n1");
        no.authenticated = Some(false);
        no.error = Some("token has expired".into());
        let e = judge(Some(&no), &sa, "n1").unwrap_err().0;
        assert!(
            e.contains("not authenticated") && e.contains("expired"),
            "{e}"
        );
        let e = judge(Some(&status(user, &["api"], "n1")), &sa, "n1")
            .unwrap_err()
            .0;
        assert!(e.contains("audience") && e.contains("identityd-ca"), "{e}");
        let e = judge(
            Some(&status(
                "system:serviceaccount:shop:web",
                &[CA_AUDIENCE],
                "n1",
            )),
            &sa,
            "n1",
        )
        .unwrap_err()
        .0;
        assert!(
            e.contains("shop:web") && e.contains("identityd-system/identityd-node"),
            "{e}"
        );
        let e = judge(Some(&status(user, &[CA_AUDIENCE], "n2")), &sa, "n1")
            .unwrap_err()
            .0;
        assert!(e.contains("bound to node \"n2\", not \"n1\""), "{e}");
        assert!(judge(None, &sa, "n1").is_err());
        assert!(ServiceAccountRef::parse("just-a-name").is_err());
        assert!(ServiceAccountRef::parse("ns/Bad_Name").is_err());
    }
}
