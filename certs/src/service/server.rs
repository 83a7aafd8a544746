//! The CA side: TLS termination (server SVID `spiffe://<td>/identityd/ca`, optional client
//! SVID), the four handlers, counters, and the loop that keeps the serving SVID and the client
//! verifier's bundle current.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{debug, error, info, warn};

use super::grpc::CaGrpc;
use super::limits::{Gate, Limits, Slot};
use super::tokens::{self, TokenError};
use super::{
    Authorizer, CounterSnapshot, Counters, JoinAuthenticator, JoinToken, RESERVED_PREFIX,
    ServiceError, ServingRequest, WorkloadRequest, ca_server_id, gateway_id, node_id, node_name_of,
    pb,
};
use crate::id::{SpiffeId, TrustDomain};
use crate::rotation::{Clock, SystemClock};
use crate::tls::{PeerPolicy, SharedBundle, SpiffeVerifier, SvidResolver, shared};
use crate::{Bundle, Ca, Error, verify_svid};

/// Settings of a [`CaServer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaServerOptions {
    /// Lifetime of node SVIDs (from `Join` and `RenewNode`).
    pub node_svid_ttl: Duration,
    /// Lifetime of workload SVIDs when the request asks for none (`ttl_seconds = 0`).
    pub default_workload_ttl: Duration,
    /// The longest lifetime a workload SVID or serving certificate gets; a longer request is
    /// cut to it (the configured `svidTTL` in the CA role).
    pub max_workload_ttl: Duration,
    /// Lifetime of the CA's own serving SVID; renewed at half of it.
    pub serving_svid_ttl: Duration,
    /// A TLS handshake that takes longer is dropped.
    pub handshake_timeout: Duration,
    /// How often the serving SVID and the bundle used to verify clients are checked.
    pub refresh_interval: Duration,
    /// Connection and request limits.
    pub limits: Limits,
}

impl Default for CaServerOptions {
    fn default() -> Self {
        Self {
            node_svid_ttl: Duration::from_secs(3600),
            default_workload_ttl: Duration::from_secs(3600),
            max_workload_ttl: Duration::from_secs(24 * 3600),
            serving_svid_ttl: Duration::from_secs(24 * 3600),
            handshake_timeout: Duration::from_secs(10),
            refresh_interval: Duration::from_secs(30),
            limits: Limits::default(),
        }
    }
}

/// What the serving SVID was issued under, to know when to renew it.
struct Serving {
    renew_at: SystemTime,
    root: CertificateDer<'static>,
}

pub(super) struct Inner {
    ca: Arc<Mutex<Ca>>,
    ca_dir: PathBuf,
    td: TrustDomain,
    authorizer: Arc<dyn Authorizer>,
    options: CaServerOptions,
    clock: Arc<dyn Clock>,
    counters: Counters,
    resolver: Arc<SvidResolver>,
    serving: Mutex<Serving>,
    bundle: SharedBundle,
    join_authenticator: std::sync::OnceLock<Arc<dyn JoinAuthenticator>>,
    gate: Arc<Gate>,
}

/// The issuance server. Cheap to clone (one shared state); holds the CA (and so its keys):
/// `Debug` prints none of them.
#[derive(Clone)]
pub struct CaServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CaServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaServer")
            .field("trust_domain", &self.inner.td.as_str())
            .field("ca_dir", &self.inner.ca_dir)
            .field("options", &self.inner.options)
            .field("counters", &self.inner.counters.snapshot())
            .field("keys", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// What a caller whose client certificate does not verify is told.
const CERT_NOT_ACCEPTED: &str = "the client certificate was not accepted (expired, revoked root or another trust domain; see the CA's log)";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Accepts a client certificate when one is offered (verified as a SPIFFE SVID of the trust
/// domain) and also a handshake without one: `Join` needs none; the other RPCs check.
#[derive(Debug)]
struct OptionalClientAuth(Arc<SpiffeVerifier>);

impl ClientCertVerifier for OptionalClientAuth {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Aborts the server's helper tasks when `serve` returns or is dropped.
struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl CaServer {
    /// A server for `ca` (shared with whoever rotates it), keeping join tokens in `ca_dir`
    /// (see [`tokens`]), asking `authorizer` about every workload request. Issues the CA's
    /// serving SVID right away.
    ///
    /// # Errors
    /// When the serving SVID cannot be issued.
    pub fn new(
        ca: Arc<Mutex<Ca>>,
        ca_dir: &Path,
        authorizer: Arc<dyn Authorizer>,
        options: CaServerOptions,
    ) -> Result<Self, ServiceError> {
        Self::with_clock(ca, ca_dir, authorizer, options, Arc::new(SystemClock))
    }

    /// [`CaServer::new`] with an injected clock (issuance times, token expiry, peer checks).
    /// The TLS handshake itself checks validity against the system clock.
    ///
    /// # Errors
    /// As [`CaServer::new`].
    pub fn with_clock(
        ca: Arc<Mutex<Ca>>,
        ca_dir: &Path,
        authorizer: Arc<dyn Authorizer>,
        options: CaServerOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ServiceError> {
        let now = clock.now();
        let (td, bundle, root) = {
            let ca = lock(&ca);
            (ca.trust_domain().clone(), ca.bundle(now), ca.root().clone())
        };
        let gate = Gate::new(options.limits.clone());
        let inner = Inner {
            ca,
            ca_dir: ca_dir.to_path_buf(),
            td,
            authorizer,
            options,
            clock,
            counters: Counters::default(),
            resolver: SvidResolver::new(),
            serving: Mutex::new(Serving {
                renew_at: now,
                root,
            }),
            bundle: shared(bundle),
            join_authenticator: std::sync::OnceLock::new(),
            gate,
        };
        inner.refresh(true)?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Admits `Join` requests whose credential is not a join token through `authenticator`
    /// (set once; later calls are ignored and return `false`).
    pub fn set_join_authenticator(&self, authenticator: Arc<dyn JoinAuthenticator>) -> bool {
        self.inner.join_authenticator.set(authenticator).is_ok()
    }

    /// The counters now.
    #[must_use]
    pub fn counters(&self) -> CounterSnapshot {
        let mut c = self.inner.counters.snapshot();
        (
            c.connected_nodes,
            c.unauthenticated_connections,
            c.connections_refused,
        ) = self.inner.gate.snapshot();
        c
    }

    /// The trust domain.
    #[must_use]
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.inner.td
    }

    /// The current trust bundle (what clients must be given to verify the CA).
    #[must_use]
    pub fn bundle(&self) -> Bundle {
        lock(&self.inner.ca).bundle(self.inner.clock.now())
    }

    /// Re-reads the bundle from the CA and renews the serving SVID when half its lifetime has
    /// passed or the root it was issued under has left the bundle (after a rollover it stays
    /// under the old root during the overlap, so nodes that only know the old root still
    /// reach the CA and learn the new bundle from its answers). The serve loop calls this every
    /// [`CaServerOptions::refresh_interval`]; call it after a rollover to apply it at once.
    ///
    /// # Errors
    /// When the serving SVID cannot be issued (the previous one stays in use).
    pub fn refresh(&self) -> Result<(), ServiceError> {
        self.inner.refresh(false)
    }

    /// The rustls configuration the server uses (ALPN h2).
    fn tls_config(&self) -> Result<ServerConfig, ServiceError> {
        let verifier = OptionalClientAuth(SpiffeVerifier::new(
            Arc::clone(&self.inner.bundle),
            PeerPolicy::TrustDomain(self.inner.td.clone()),
        ));
        let mut cfg =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| Error::Tls(e.to_string()))?
                .with_client_cert_verifier(Arc::new(verifier))
                .with_cert_resolver(Arc::clone(&self.inner.resolver) as _);
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(cfg)
    }

    /// Serves on `listener` until an error.
    ///
    /// # Errors
    /// When the TLS configuration cannot be built or the gRPC server fails.
    pub async fn serve(&self, listener: TcpListener) -> Result<(), ServiceError> {
        self.serve_with_shutdown(listener, std::future::pending())
            .await
    }

    /// Serves on `listener` until `signal` completes, then stops accepting and lets open
    /// requests finish.
    ///
    /// # Errors
    /// When the TLS configuration cannot be built or the gRPC server fails.
    pub async fn serve_with_shutdown(
        &self,
        listener: TcpListener,
        signal: impl Future<Output = ()> + Send,
    ) -> Result<(), ServiceError> {
        let acceptor = TlsAcceptor::from(Arc::new(self.tls_config()?));
        let local = listener.local_addr().ok();
        let (tx, rx) = mpsc::channel(64);
        let accept = tokio::spawn(accept_loop(listener, acceptor, tx, Arc::clone(&self.inner)));
        let inner = Arc::clone(&self.inner);
        let refresher = tokio::spawn(async move {
            let mut tick = tokio::time::interval(inner.options.refresh_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = inner.refresh(false) {
                    error!(error = %e, "CA service: renewing the serving SVID failed; keeping the current one");
                }
            }
        });
        let _tasks = AbortOnDrop(vec![accept, refresher]);
        info!(addr = ?local, trust_domain = %self.inner.td, "CA issuance service listening");
        tonic::transport::Server::builder()
            .max_concurrent_streams(self.inner.options.limits.max_streams_per_connection)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(CaGrpc(Arc::clone(&self.inner)))
            .serve_with_incoming_shutdown(ReceiverStream::new(rx), signal)
            .await
            .map_err(|e| ServiceError::Serve(super::client::error_chain(&e)))
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<Result<Tracked, std::io::Error>>,
    inner: Arc<Inner>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "CA service: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Refused connections are counted, not logged one by one (a flood would fill the log).
        let mut slot = match inner.gate.admit(peer.ip()) {
            Ok(s) => s,
            Err(reason) => {
                debug!(%peer, reason, "CA service: connection refused by a limit");
                continue;
            }
        };
        let accepted = tokio::time::Instant::now();
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        let inner = Arc::clone(&inner);
        tokio::spawn(async move {
            match tokio::time::timeout(inner.options.handshake_timeout, acceptor.accept(tcp)).await
            {
                Ok(Ok(tls)) => {
                    let node = crate::tls::peer_id(tls.get_ref().1.peer_certificates())
                        .ok()
                        .and_then(|id| node_name_of(&id).map(str::to_owned));
                    let deadline = match &node {
                        Some(n) => {
                            if let Err(reason) = slot.authenticated(n) {
                                debug!(%peer, node = ?n, reason, "CA service: connection refused by a limit");
                                return;
                            }
                            None
                        }
                        None => {
                            if let Err(reason) = slot.anonymous() {
                                debug!(%peer, reason, "CA service: connection refused by a limit");
                                return;
                            }
                            Some(Box::pin(tokio::time::sleep_until(
                                accepted + inner.gate.limits().unauthenticated_lifetime,
                            )))
                        }
                    };
                    let _ = tx
                        .send(Ok(Tracked {
                            io: tls,
                            _slot: slot,
                            deadline,
                        }))
                        .await;
                }
                Ok(Err(e)) => {
                    Counters::bump(&inner.counters.tls_failures);
                    warn!(%peer, error = %e, "CA service: TLS handshake refused");
                }
                Err(_) => {
                    Counters::bump(&inner.counters.tls_failures);
                    warn!(%peer, "CA service: TLS handshake timed out");
                }
            }
        });
    }
}

/// A client connection with its admission [`Slot`] (a node SVID's connections count in
/// `connected_nodes`). One without a node SVID ends at its deadline: reads see the end of the
/// stream and writes fail, so the server closes it.
struct Tracked {
    io: TlsStream<TcpStream>,
    _slot: Slot,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Tracked {
    fn expired(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        self.deadline
            .as_mut()
            .is_some_and(|d| d.as_mut().poll(cx).is_ready())
    }
}

impl tonic::transport::server::Connected for Tracked {
    type ConnectInfo = <TlsStream<TcpStream> as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl tokio::io::AsyncRead for Tracked {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.expired(cx) {
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Tracked {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.expired(cx) {
            return std::task::Poll::Ready(Err(lifetime_over()));
        }
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.expired(cx) {
            return std::task::Poll::Ready(Err(lifetime_over()));
        }
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

fn lifetime_over() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "unauthenticated connection reached its lifetime",
    )
}

fn svid_response(chain: &[CertificateDer<'static>], bundle: &Bundle) -> pb::SvidResponse {
    pb::SvidResponse {
        chain_der: chain.iter().map(|c| c.to_vec()).collect(),
        bundle_pem: bundle.to_pem(),
    }
}

fn not_after_of(chain: &[CertificateDer<'static>]) -> String {
    chain
        .first()
        .and_then(|c| {
            crate::x509::parse(c)
                .ok()
                .map(|p| crate::x509::validity(&p).1)
        })
        .map_or_else(String::new, |t| {
            time::OffsetDateTime::from(t)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        })
}

/// How an issuance error is reported: rule violations are the caller's fault.
fn issue_status(e: &Error) -> Status {
    match e {
        Error::Csr(_) | Error::Id(_) | Error::ForeignTrustDomain { .. } | Error::Ttl(_) => {
            Status::invalid_argument(e.to_string())
        }
        _ => Status::internal(format!("issuing failed: {e}")),
    }
}

impl Inner {
    fn refresh(&self, force: bool) -> Result<(), ServiceError> {
        let now = self.clock.now();
        let ca = lock(&self.ca);
        let bundle = ca.bundle(now);
        let mut serving = lock(&self.serving);
        // After a rollover the serving SVID stays under the old root while that root is still
        // in the bundle: nodes that only know the old root keep reaching the CA and pick up the
        // new bundle from its answers. It moves to the new root at half-life, or when the old
        // root leaves the bundle.
        let root_trusted = bundle.roots().contains(&serving.root);
        {
            let mut b = self
                .bundle
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *b != bundle {
                info!(
                    sequence = bundle.sequence(),
                    roots = bundle.roots().len(),
                    "CA service: trust bundle updated"
                );
                *b = bundle;
            }
        }
        if !force && serving.renew_at > now && root_trusted {
            return Ok(());
        }
        let id = ca_server_id(&self.td);
        let svid = ca.issue(&id, self.options.serving_svid_ttl, now)?;
        self.resolver.set(&svid)?;
        let life = svid
            .not_after()
            .duration_since(svid.not_before())
            .unwrap_or_default();
        serving.renew_at = svid.not_before() + life / 2;
        serving.root = ca.root().clone();
        info!(%id, not_after = ?svid.not_after(), "CA service: serving SVID issued");
        Ok(())
    }

    /// The node name of an mTLS caller, after re-verifying its chain against the current
    /// bundle at the current time (the handshake may be old).
    fn node_caller<T>(&self, req: &Request<T>, rpc: &str) -> Result<(String, SpiffeId), Status> {
        let Some(certs) = req.peer_certs().filter(|c| !c.is_empty()) else {
            return Err(Status::unauthenticated(format!(
                "{rpc} requires mTLS with a node SVID (spiffe://{}/{RESERVED_PREFIX}/node/<name>); no client certificate was presented",
                self.td
            )));
        };
        let now = self.clock.now();
        let bundle = lock(&self.ca).bundle(now);
        // The details go to the log only: an unauthenticated caller learns nothing from them.
        let id = verify_svid(&certs, &bundle, now).map_err(|e| {
            warn!(rpc, error = ?e.to_string(), "CA service: client certificate not accepted");
            Status::unauthenticated(CERT_NOT_ACCEPTED)
        })?;
        let Some(node) = node_name_of(&id) else {
            return Err(Status::permission_denied(format!(
                "{rpc}: caller {id} is not a node identity (spiffe://{}/{RESERVED_PREFIX}/node/<name>)",
                self.td
            )));
        };
        self.authorizer.authorize_node(node).map_err(|d| {
            Status::permission_denied(format!("{rpc}: node {node} may not ask: {d}"))
        })?;
        if self.gate.request(node).is_err() {
            let l = self.gate.limits();
            return Err(Status::resource_exhausted(format!(
                "{rpc}: node {node} asked more than {} times in a burst or {}/s; retry later",
                l.node_request_burst, l.node_requests_per_second
            )));
        }
        Ok((node.to_owned(), id))
    }

    /// A request's lifetime: `ttl_seconds`, or the default for 0, at most
    /// [`CaServerOptions::max_workload_ttl`].
    fn requested_ttl(&self, ttl_seconds: u64) -> Duration {
        if ttl_seconds == 0 {
            self.options.default_workload_ttl
        } else {
            Duration::from_secs(ttl_seconds)
        }
        .min(self.options.max_workload_ttl)
    }

    /// Signs with the CA at the clock's now and returns the chain with the bundle of that
    /// moment (both under one lock, so a concurrent rollover cannot split them).
    fn issue(
        &self,
        sign: impl FnOnce(&Ca, SystemTime) -> Result<Vec<CertificateDer<'static>>, Error>,
    ) -> Result<(Vec<CertificateDer<'static>>, Bundle), Error> {
        let now = self.clock.now();
        let ca = lock(&self.ca);
        let chain = sign(&ca, now)?;
        Ok((chain, ca.bundle(now)))
    }

    /// Records the latency of one answered request of handler `method`.
    pub(super) fn observed(&self, method: &str, took: Duration) {
        let request = match method {
            "join" => "join",
            "renew_node" => "node_renewal",
            "sign_workload" | "sign_serving" => "workload",
            _ => return,
        };
        self.counters.observe(request, took);
    }

    fn refuse(&self, rpc: &str, node: Option<&str>, status: Status) -> Status {
        Counters::bump(&self.counters.refused);
        let request = if rpc == "RenewNode" {
            "node_renewal"
        } else {
            "workload"
        };
        self.counters
            .refusal(request, super::refusal_reason(status.code()));
        // `?`: the message carries strings from the request, logged escaped.
        warn!(
            rpc,
            node = node.unwrap_or("<unauthenticated>"),
            code = ?status.code(),
            reason = ?status.message(),
            "CA service: request refused"
        );
        status
    }

    pub(super) async fn join(
        self: Arc<Self>,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::SvidResponse>, Status> {
        let peer = req.remote_addr();
        let r = req.into_inner();
        // A credential that is not a join token goes to the installed authenticator.
        let external = match self.join_authenticator.get() {
            Some(a) if JoinToken::parse(&r.token).is_err() => Some(Arc::clone(a)),
            _ => None,
        };
        if let Some(auth) = &external
            && let Err(d) = auth.authenticate(&r.node_name, &r.token).await
        {
            Counters::bump(&self.counters.failed_joins);
            self.counters.refusal("join", "authentication");
            // The authenticator's reason (e.g. the TokenReview's) goes to the log only.
            warn!(?peer, node = ?r.node_name, reason = ?d.to_string(), "CA service: join refused");
            return Err(Status::unauthenticated(format!(
                "join refused for node {:?}: the credential was not accepted (see the CA's log)",
                r.node_name
            )));
        }
        let is_external = external.is_some();
        let this = Arc::clone(&self);
        // File locking, fsync and signing: off the async workers.
        let res = tokio::task::spawn_blocking(move || this.join_blocking(&r, is_external))
            .await
            .map_err(|e| Status::internal(format!("join task failed: {e}")))?;
        match res {
            Ok((chain, bundle, node)) => {
                Counters::bump(&self.counters.joins);
                info!(?peer, %node, not_after = not_after_of(&chain), "CA service: node joined");
                Ok(Response::new(svid_response(&chain, &bundle)))
            }
            Err((node, status)) => {
                Counters::bump(&self.counters.failed_joins);
                self.counters
                    .refusal("join", super::refusal_reason(status.code()));
                warn!(?peer, node = ?node, code = ?status.code(), reason = ?status.message(), "CA service: join refused");
                Err(status)
            }
        }
    }

    #[allow(clippy::type_complexity)] // Reason: a private helper's (ok, (node, err)) pair.
    fn join_blocking(
        &self,
        r: &pb::JoinRequest,
        external: bool,
    ) -> Result<(Vec<CertificateDer<'static>>, Bundle, SpiffeId), (String, Status)> {
        let name = r.node_name.clone();
        let id = node_id(&self.td, &r.node_name).map_err(|e| {
            (
                name.clone(),
                Status::invalid_argument(format!("node_name {:?}: {e}", r.node_name)),
            )
        })?;
        let now = self.clock.now();
        let sign = || {
            let ca = lock(&self.ca);
            ca.sign_csr(&r.csr_der, &id, self.options.node_svid_ttl, now)
                .map(|chain| (chain, ca.bundle(now)))
        };
        // Admitted by the join authenticator already (see `join`).
        let out = if external {
            Ok(sign())
        } else {
            tokens::consume_with(&self.ca_dir, &r.node_name, &r.token, now, sign)
        };
        match out {
            Ok(Ok((chain, bundle))) => Ok((chain, bundle, id)),
            Ok(Err(e)) => Err((name, issue_status(&e))),
            Err(TokenError::Store(e)) => {
                error!(error = %e, "CA service: join token store unusable");
                Err((
                    name,
                    Status::internal("join token store unusable; see the CA's log"),
                ))
            }
            Err(e) => {
                // The reason (unknown, mismatch, expired) goes to the log only.
                debug!(reason = %e, "join token check");
                Err((
                    name,
                    Status::unauthenticated(format!(
                        "join refused for node {:?}: the token is invalid, already used or expired ({})",
                        r.node_name,
                        match e {
                            TokenError::Expired { .. } => "expired",
                            _ => "invalid or used",
                        }
                    )),
                ))
            }
        }
    }

    pub(super) async fn sign_workload(
        self: Arc<Self>,
        req: Request<pb::SignRequest>,
    ) -> Result<Response<pb::SvidResponse>, Status> {
        const RPC: &str = "SignWorkload";
        let (node, _caller) = self
            .node_caller(&req, RPC)
            .map_err(|s| self.refuse(RPC, None, s))?;
        let r = req.into_inner();
        let refuse = |s: Status| self.refuse(RPC, Some(&node), s);
        let id = SpiffeId::parse(&r.spiffe_id).map_err(|e| {
            refuse(Status::invalid_argument(format!(
                "spiffe_id {:?}: {e}",
                r.spiffe_id
            )))
        })?;
        if id == gateway_id(&self.td) {
            self.authorizer.authorize_gateway(&node).map_err(|d| {
                refuse(Status::permission_denied(format!(
                    "node {node} may not have {id}: {d}"
                )))
            })?;
        } else if id.segments().next() == Some(RESERVED_PREFIX) {
            return Err(refuse(Status::permission_denied(format!(
                "spiffe_id {id}: the path /{RESERVED_PREFIX}/ is reserved for identityd's own identities"
            ))));
        } else {
            let wr = WorkloadRequest {
                spiffe_id: id.clone(),
                pod_namespace: r.pod_namespace.clone(),
                pod_name: r.pod_name.clone(),
            };
            self.authorizer.authorize(&node, &wr).map_err(|d| {
                refuse(Status::permission_denied(format!(
                    "node {node} may not have {id} for pod {}/{}: {d}",
                    r.pod_namespace, r.pod_name
                )))
            })?;
        }
        let ttl = self.requested_ttl(r.ttl_seconds);
        let (chain, bundle) = self
            .issue(|ca, now| ca.sign_csr(&r.csr_der, &id, ttl, now))
            .map_err(|e| refuse(issue_status(&e)))?;
        Counters::bump(&self.counters.issued);
        info!(%node, %id, pod = format!("{}/{}", r.pod_namespace, r.pod_name), not_after = not_after_of(&chain), "CA service: workload SVID issued");
        Ok(Response::new(svid_response(&chain, &bundle)))
    }

    pub(super) async fn sign_serving(
        self: Arc<Self>,
        req: Request<pb::SignServingRequest>,
    ) -> Result<Response<pb::SvidResponse>, Status> {
        const RPC: &str = "SignServing";
        let (node, _caller) = self
            .node_caller(&req, RPC)
            .map_err(|s| self.refuse(RPC, None, s))?;
        let r = req.into_inner();
        let refuse = |s: Status| self.refuse(RPC, Some(&node), s);
        crate::serving::check_dns_names(&r.dns_names)
            .map_err(|e| refuse(Status::invalid_argument(e.to_string())))?;
        let sr = ServingRequest {
            dns_names: r.dns_names.clone(),
            kind: r.kind.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
        };
        self.authorizer.authorize_serving(&node, &sr).map_err(|d| {
            refuse(Status::permission_denied(format!(
                "node {node} may not have a certificate for {:?} ({} {}/{}): {d}",
                r.dns_names, r.kind, r.namespace, r.name
            )))
        })?;
        let ttl = self.requested_ttl(r.ttl_seconds);
        let (chain, bundle) = self
            .issue(|ca, now| ca.sign_serving_csr(&r.csr_der, &r.dns_names, ttl, now))
            .map_err(|e| refuse(issue_status(&e)))?;
        Counters::bump(&self.counters.issued);
        info!(%node, names = ?r.dns_names, object = format!("{} {}/{}", r.kind, r.namespace, r.name), not_after = not_after_of(&chain), "CA service: serving certificate issued");
        Ok(Response::new(svid_response(&chain, &bundle)))
    }

    pub(super) async fn renew_node(
        self: Arc<Self>,
        req: Request<pb::RenewNodeRequest>,
    ) -> Result<Response<pb::SvidResponse>, Status> {
        const RPC: &str = "RenewNode";
        let (node, id) = self
            .node_caller(&req, RPC)
            .map_err(|s| self.refuse(RPC, None, s))?;
        let r = req.into_inner();
        let (chain, bundle) = self
            .issue(|ca, now| ca.sign_csr(&r.csr_der, &id, self.options.node_svid_ttl, now))
            .map_err(|e| self.refuse(RPC, Some(&node), issue_status(&e)))?;
        Counters::bump(&self.counters.node_renewals);
        info!(%node, not_after = not_after_of(&chain), "CA service: node SVID renewed");
        Ok(Response::new(svid_response(&chain, &bundle)))
    }

    pub(super) async fn bundle(
        self: Arc<Self>,
        _req: Request<pb::BundleRequest>,
    ) -> Result<Response<pb::BundleResponse>, Status> {
        let b = lock(&self.ca).bundle(self.clock.now());
        let jwks = b
            .to_jwks()
            .map_err(|e| Status::internal(format!("bundle: {e}")))?;
        Ok(Response::new(pb::BundleResponse {
            bundle_pem: b.to_pem(),
            jwks,
            sequence: b.sequence(),
        }))
    }
}
