//! The node side: join with a token, then mTLS with the node SVID for workload SVIDs. Keys are
//! generated here; only CSRs travel.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::codegen::Service;
use tonic::codegen::http::Uri;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic_prost::ProstCodec;

use super::{JoinToken, ServiceError, ca_server_id, node_id, pb};
use crate::fsutil::{read_string, write_atomic};
use crate::id::{SpiffeId, TrustDomain};
use crate::key::PrivateKey;
use crate::svid::{Svid, csr_for};
use crate::tls::{PeerPolicy, SharedBundle, SvidResolver, client_config, server_name, shared};
use crate::{Bundle, Error, verify_svid};

/// TCP + TLS connect timeout.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-request timeout.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `error` and its sources, joined with `: ` (tonic's transport errors say little on top).
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = c.source();
    }
    s
}

/// What a join yields: the node SVID (key generated on this node) and the CA's bundle.
/// Holds a key: `Debug` prints none.
#[derive(Clone)]
pub struct NodeIdentity {
    /// `spiffe://<td>/identityd/node/<name>`.
    pub svid: Svid,
    /// The trust bundle the CA sent (verified the CA's serving SVID chain's trust anchor).
    pub bundle: Bundle,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("svid", &self.svid)
            .field("bundle_sequence", &self.bundle.sequence())
            .finish()
    }
}

/// The bundle file [`NodeIdentity::save`] writes next to `svid.pem` and `key.pem`.
pub const BUNDLE_FILE: &str = "bundle.pem";

impl NodeIdentity {
    /// Writes `svid.pem` (0644), `key.pem` (0600) and `bundle.pem` (0644) into `dir`,
    /// atomically each, so a restarted daemon can use [`CaClient::connect_mtls`] again without
    /// a new join token.
    ///
    /// # Errors
    /// Any I/O failure.
    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        self.svid.write_to_dir(dir)?;
        write_atomic(
            &dir.join(BUNDLE_FILE),
            self.bundle.to_pem().as_bytes(),
            0o644,
        )
    }

    /// Reads what [`NodeIdentity::save`] wrote, for trust domain `td`.
    ///
    /// # Errors
    /// When a file is missing or unusable.
    pub fn load(dir: &Path, td: &TrustDomain) -> Result<Self, Error> {
        let svid = Svid::read_from_dir(dir)?;
        let bundle = Bundle::from_pem(td.clone(), &read_string(&dir.join(BUNDLE_FILE))?)?;
        Ok(Self { svid, bundle })
    }

    /// Whether the SVID verifies against the bundle at `now`, names `want`, and has at least
    /// `margin` of lifetime left.
    fn usable(&self, want: &SpiffeId, now: SystemTime, margin: Duration) -> bool {
        verify_svid(self.svid.chain(), &self.bundle, now).is_ok_and(|id| id == *want)
            && self.svid.not_after() > now + margin
    }
}

/// Dials TCP and does the TLS handshake with the SPIFFE client config.
#[derive(Clone)]
struct Connector {
    addr: Arc<str>,
    tls: TlsConnector,
}

impl Service<Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let addr = Arc::clone(&self.addr);
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&*addr).await?;
            tcp.set_nodelay(true)?;
            let s = tls.connect(server_name(), tcp).await?;
            Ok(TokioIo::new(s))
        })
    }
}

/// A connection to the CA's issuance service. Cheap to clone. The CA is authenticated as
/// `spiffe://<td>/identityd/ca` against the bundle; after [`CaClient::connect_mtls`] the
/// client presents its node SVID (through a resolver, so renewals apply to new connections).
#[derive(Clone)]
pub struct CaClient {
    endpoint: Arc<str>,
    td: TrustDomain,
    grpc: tonic::client::Grpc<Channel>,
    resolver: Arc<SvidResolver>,
    bundle: SharedBundle,
}

impl std::fmt::Debug for CaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaClient")
            .field("endpoint", &self.endpoint)
            .field("trust_domain", &self.td.as_str())
            .finish_non_exhaustive()
    }
}

impl CaClient {
    /// Exchanges `token` for the node SVID `spiffe://<td>/identityd/node/<node_name>`.
    /// `endpoint` is `host:port` (TCP); `ca_bundle` is the root(s) this node was given to
    /// authenticate the CA. The key is generated here and only a CSR is sent.
    ///
    /// # Errors
    /// When connecting or the TLS check of the CA fails, the CA refuses (a used, wrong or
    /// expired token is `Unauthenticated`), or the answer is not an SVID for the node ID.
    pub async fn join(
        endpoint: &str,
        node_name: &str,
        token: &JoinToken,
        ca_bundle: &Bundle,
    ) -> Result<NodeIdentity, ServiceError> {
        Self::join_with_credential(endpoint, node_name, token.expose_secret(), ca_bundle).await
    }

    /// [`CaClient::join`] with a credential the CA checks through its
    /// [`super::JoinAuthenticator`] (e.g. a projected Kubernetes ServiceAccount token) instead
    /// of a join token. The credential is sent once, over the TLS connection that authenticated
    /// the CA, and never logged.
    ///
    /// # Errors
    /// As [`CaClient::join`]; a refused credential is `Unauthenticated` with the CA's reason.
    pub async fn join_with_credential(
        endpoint: &str,
        node_name: &str,
        credential: &str,
        ca_bundle: &Bundle,
    ) -> Result<NodeIdentity, ServiceError> {
        let id = node_id(ca_bundle.trust_domain(), node_name).map_err(Error::from)?;
        let key = PrivateKey::generate()?;
        let csr = csr_for(&id, &key)?;
        // No client certificate: the resolver stays empty.
        let client =
            Self::connect_with(endpoint, SvidResolver::new(), shared(ca_bundle.clone())).await?;
        let resp: pb::SvidResponse = client
            .unary(
                "Join",
                pb::JOIN,
                pb::JoinRequest {
                    node_name: node_name.to_owned(),
                    token: credential.to_owned(),
                    csr_der: csr,
                },
            )
            .await?;
        let (svid, bundle) = client.accept("Join", resp, key, &id)?;
        Ok(NodeIdentity { svid, bundle })
    }

    /// The node identity for a (re)starting daemon: the one saved in `state_dir` when it is
    /// still valid (verifies, names this node, at least `margin` left), otherwise a join with
    /// the token in `token_path`, saved to `state_dir`, after which the token file (now used
    /// up) is removed. `ca_bundle` is the bundle the node was given; a saved bundle (learned
    /// from the CA, e.g. after a rollover) takes precedence.
    ///
    /// # Errors
    /// When there is no usable saved identity and joining fails (e.g. the token was used by an
    /// earlier run: mint a new one).
    pub async fn load_or_join(
        state_dir: &Path,
        endpoint: &str,
        node_name: &str,
        token_path: &Path,
        ca_bundle: &Bundle,
        margin: Duration,
    ) -> Result<NodeIdentity, ServiceError> {
        let td = ca_bundle.trust_domain();
        let want = node_id(td, node_name).map_err(Error::from)?;
        if let Ok(saved) = NodeIdentity::load(state_dir, td)
            && saved.usable(&want, SystemTime::now(), margin)
        {
            return Ok(saved);
        }
        let token = JoinToken::read(token_path)?;
        let joined = Self::join(endpoint, node_name, &token, ca_bundle).await?;
        std::fs::create_dir_all(state_dir).map_err(|e| Error::Io {
            path: state_dir.to_path_buf(),
            source: Arc::new(e),
        })?;
        joined.save(state_dir)?;
        let _ = std::fs::remove_file(token_path);
        Ok(joined)
    }

    /// Connects with mTLS, presenting `node_svid`, trusting `bundle` for the CA.
    ///
    /// # Errors
    /// When the endpoint is unusable or the connection fails. A node SVID the CA does not
    /// trust makes the CA abort the handshake; with TLS 1.3 that may only show on the first
    /// request.
    pub async fn connect_mtls(
        endpoint: &str,
        node_svid: &Svid,
        bundle: &Bundle,
    ) -> Result<Self, ServiceError> {
        Self::connect_with(
            endpoint,
            SvidResolver::with(node_svid)?,
            shared(bundle.clone()),
        )
        .await
    }

    /// Connects presenting whatever `resolver` holds (nothing: no client certificate), trusting
    /// `bundle` for the CA. Both are shared: updating them affects new connections.
    ///
    /// # Errors
    /// As [`CaClient::connect_mtls`].
    pub async fn connect_with(
        endpoint: &str,
        resolver: Arc<SvidResolver>,
        bundle: SharedBundle,
    ) -> Result<Self, ServiceError> {
        let td = bundle
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .trust_domain()
            .clone();
        let mut cfg = client_config(
            Arc::clone(&resolver),
            Arc::clone(&bundle),
            PeerPolicy::AllowList(vec![ca_server_id(&td)]),
        )?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let bad = |reason: String| ServiceError::Endpoint {
            endpoint: endpoint.to_owned(),
            reason,
        };
        if endpoint.contains('/') || !endpoint.contains(':') {
            return Err(bad("expected host:port, e.g. 10.99.0.1:8443".to_owned()));
        }
        let channel = Endpoint::from_shared(format!("http://{endpoint}"))
            .map_err(|e| bad(error_chain(&e)))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .connect_with_connector(Connector {
                addr: Arc::from(endpoint),
                tls: TlsConnector::from(Arc::new(cfg)),
            })
            .await
            .map_err(|e| ServiceError::Connect {
                endpoint: endpoint.to_owned(),
                reason: error_chain(&e),
            })?;
        Ok(Self {
            endpoint: Arc::from(endpoint),
            td,
            grpc: tonic::client::Grpc::new(channel),
            resolver,
            bundle,
        })
    }

    /// Asks for an SVID for `id` for pod `pod_namespace/pod_name` (which the CA checks is on
    /// this node). The key is generated here; only a CSR is sent. `ttl` zero means the CA's
    /// default. The CA's bundle in the answer replaces the client's bundle.
    ///
    /// # Errors
    /// When the CA refuses (`PermissionDenied` for authorization, `InvalidArgument` for CSR
    /// rules, `Unauthenticated` without a node SVID) or the answer is not an SVID for `id`.
    pub async fn sign_workload(
        &self,
        id: &SpiffeId,
        pod_namespace: &str,
        pod_name: &str,
        ttl: Duration,
    ) -> Result<Svid, ServiceError> {
        let key = PrivateKey::generate()?;
        let csr = csr_for(id, &key)?;
        self.sign_csr(id, pod_namespace, pod_name, ttl, csr, key)
            .await
    }

    /// Asks for a serving certificate for `dns_names` of an ingress object (`kind` `Gateway` or
    /// `Ingress`, `namespace/name`). The key is generated here; the answer must verify against
    /// the CA's bundle as a TLS server certificate for every name.
    ///
    /// # Errors
    /// When the CA refuses or the answer is not a certificate for exactly those names.
    pub async fn sign_serving(
        &self,
        dns_names: &[String],
        kind: &str,
        namespace: &str,
        name: &str,
        ttl: Duration,
    ) -> Result<crate::ServingCert, ServiceError> {
        const RPC: &str = "SignServing";
        let key = PrivateKey::generate()?;
        let csr_der = crate::serving::serving_csr_for(dns_names, &key)?;
        let resp: pb::SvidResponse = self
            .unary(
                RPC,
                pb::SIGN_SERVING,
                pb::SignServingRequest {
                    csr_der,
                    dns_names: dns_names.to_vec(),
                    kind: kind.to_owned(),
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    ttl_seconds: ttl.as_secs(),
                },
            )
            .await?;
        let bad = |reason: String| ServiceError::Response { rpc: RPC, reason };
        let chain: Vec<CertificateDer<'static>> = resp
            .chain_der
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let bundle = Bundle::from_pem(self.td.clone(), &resp.bundle_pem)
            .map_err(|e| bad(format!("bundle_pem: {e}")))?;
        crate::verify::verify_serving(&chain, &bundle, dns_names, SystemTime::now())
            .map_err(|e| bad(format!("issued certificate does not verify: {e}")))?;
        let cert = crate::ServingCert::from_parts(dns_names, chain, key)
            .map_err(|e| bad(e.to_string()))?;
        self.adopt(&bundle);
        Ok(cert)
    }

    /// [`CaClient::sign_workload`] with a CSR made by the caller (which also holds `key`).
    ///
    /// # Errors
    /// As [`CaClient::sign_workload`].
    pub async fn sign_csr(
        &self,
        id: &SpiffeId,
        pod_namespace: &str,
        pod_name: &str,
        ttl: Duration,
        csr_der: Vec<u8>,
        key: PrivateKey,
    ) -> Result<Svid, ServiceError> {
        let resp: pb::SvidResponse = self
            .unary(
                "SignWorkload",
                pb::SIGN_WORKLOAD,
                pb::SignRequest {
                    csr_der,
                    spiffe_id: id.to_string(),
                    pod_namespace: pod_namespace.to_owned(),
                    pod_name: pod_name.to_owned(),
                    ttl_seconds: ttl.as_secs(),
                },
            )
            .await?;
        Ok(self.accept("SignWorkload", resp, key, id)?.0)
    }

    /// Renews the node SVID `current` (mTLS with it) and presents the new one from the next
    /// connection on. A daemon saves the result ([`NodeIdentity::save`]) so a restart finds it.
    ///
    /// # Errors
    /// When the CA refuses or the answer is not an SVID for the same node ID.
    pub async fn renew_node(&self, current: &Svid) -> Result<Svid, ServiceError> {
        let key = PrivateKey::generate()?;
        let csr = csr_for(current.id(), &key)?;
        let resp: pb::SvidResponse = self
            .unary(
                "RenewNode",
                pb::RENEW_NODE,
                pb::RenewNodeRequest { csr_der: csr },
            )
            .await?;
        let (svid, _) = self.accept("RenewNode", resp, key, current.id())?;
        self.resolver.set(&svid)?;
        Ok(svid)
    }

    /// Fetches the CA's trust bundle (and adopts it for checking the CA).
    ///
    /// # Errors
    /// When the request fails or the bundle is malformed or of another trust domain.
    pub async fn fetch_bundle(&self) -> Result<Bundle, ServiceError> {
        let resp: pb::BundleResponse = self
            .unary("Bundle", pb::BUNDLE, pb::BundleRequest {})
            .await?;
        let b = Bundle::from_pem(self.td.clone(), &resp.bundle_pem)?.with_sequence(resp.sequence);
        self.adopt(&b);
        Ok(b)
    }

    /// The bundle used to authenticate the CA (updated from the CA's answers).
    #[must_use]
    pub fn bundle(&self) -> SharedBundle {
        Arc::clone(&self.bundle)
    }

    /// The resolver presenting this client's certificate.
    #[must_use]
    pub fn resolver(&self) -> Arc<SvidResolver> {
        Arc::clone(&self.resolver)
    }

    fn adopt(&self, b: &Bundle) {
        let mut cur = self
            .bundle
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cur.roots() != b.roots() {
            *cur = b.clone();
        }
    }

    async fn unary<Req, Resp>(
        &self,
        rpc: &'static str,
        path: &'static str,
        msg: Req,
    ) -> Result<Resp, ServiceError>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = self.grpc.clone();
        grpc.ready().await.map_err(|e| ServiceError::Connect {
            endpoint: self.endpoint.to_string(),
            reason: error_chain(&e),
        })?;
        let codec: ProstCodec<Req, Resp> = ProstCodec::default();
        grpc.unary(
            tonic::Request::new(msg),
            PathAndQuery::from_static(path),
            codec,
        )
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| ServiceError::Status {
            rpc,
            code: s.code(),
            message: match std::error::Error::source(&s) {
                Some(src) => format!("{}: {}", s.message(), error_chain(src)),
                None => s.message().to_owned(),
            },
        })
    }

    /// Checks an issued chain: it verifies against the bundle that came with it (the CA was
    /// authenticated by TLS), names `want`, and matches `key`.
    fn accept(
        &self,
        rpc: &'static str,
        resp: pb::SvidResponse,
        key: PrivateKey,
        want: &SpiffeId,
    ) -> Result<(Svid, Bundle), ServiceError> {
        let bad = |reason: String| ServiceError::Response { rpc, reason };
        let chain: Vec<CertificateDer<'static>> = resp
            .chain_der
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let bundle = Bundle::from_pem(self.td.clone(), &resp.bundle_pem)
            .map_err(|e| bad(format!("bundle_pem: {e}")))?;
        let got = verify_svid(&chain, &bundle, SystemTime::now())
            .map_err(|e| bad(format!("issued chain does not verify: {e}")))?;
        if got != *want {
            return Err(bad(format!("issued SVID is for {got}, asked for {want}")));
        }
        let svid = Svid::from_parts(chain, key).map_err(|e| bad(e.to_string()))?;
        self.adopt(&bundle);
        Ok((svid, bundle))
    }
}
