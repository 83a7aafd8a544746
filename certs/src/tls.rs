//! rustls configurations for SPIFFE mTLS: the local SVID is presented through a resolver that
//! can be updated in place (rotation without rebuilding configs, and no handshake before the
//! first SVID arrives); the peer's chain is verified with [`verify_svid`] against the trust
//! bundle and its SPIFFE ID checked against a [`PeerPolicy`].

use std::sync::{Arc, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WantsClientCert};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, ConfigBuilder, DigitallySignedStruct, DistinguishedName,
    OtherError, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::bundle::Bundle;
use crate::id::SpiffeId;
use crate::provider::provider;
use crate::svid::Svid;
use crate::verify::{VerifyError, verify_svid};
use crate::{Error, id::TrustDomain};

/// Which peer SPIFFE IDs are accepted (after the chain verifies against the bundle).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerPolicy {
    /// Any ID of the given trust domain.
    TrustDomain(TrustDomain),
    /// Exactly these IDs.
    AllowList(Vec<SpiffeId>),
}

impl PeerPolicy {
    /// Whether `id` is accepted.
    #[must_use]
    pub fn allows(&self, id: &SpiffeId) -> bool {
        match self {
            Self::TrustDomain(td) => id.trust_domain() == td,
            Self::AllowList(ids) => ids.contains(id),
        }
    }
}

/// The peer's SPIFFE ID is valid but not allowed by the policy.
#[derive(Debug, thiserror::Error)]
#[error("peer SPIFFE ID {0} is not allowed by the policy")]
pub struct NotAllowed(pub String);

/// A bundle that can be replaced while configs using it stay in place.
pub type SharedBundle = Arc<RwLock<Bundle>>;

/// The name a client puts in SNI. SPIFFE authentication ignores it: the verifier checks the
/// SPIFFE ID instead.
pub const PLACEHOLDER_SERVER_NAME: &str = "spiffe.identityd.invalid";

/// The `ServerName` to connect with (see [`PLACEHOLDER_SERVER_NAME`]).
#[must_use]
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(PLACEHOLDER_SERVER_NAME)
        .unwrap_or_else(|_| unreachable!("a valid DNS name"))
}

/// Presents the current SVID; updated in place on rotation. Until the first SVID is set it
/// presents nothing, so servers refuse handshakes and clients cannot authenticate.
#[derive(Debug)]
pub struct SvidResolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    provider: Arc<CryptoProvider>,
}

impl Default for SvidResolver {
    fn default() -> Self {
        Self {
            current: RwLock::new(None),
            provider: provider(),
        }
    }
}

impl SvidResolver {
    /// An empty resolver.
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A resolver presenting `svid`.
    ///
    /// # Errors
    /// When the key cannot be loaded.
    pub fn with(svid: &Svid) -> Result<Arc<Self>, Error> {
        let r = Self::new();
        r.set(svid)?;
        Ok(r)
    }

    /// Presents `svid` from the next handshake on.
    ///
    /// # Errors
    /// When the key cannot be loaded or does not match the chain.
    pub fn set(&self, svid: &Svid) -> Result<(), Error> {
        let ck = CertifiedKey::from_der(
            svid.chain().to_vec(),
            svid.key().to_rustls(),
            &self.provider,
        )
        .map_err(|e| Error::Tls(e.to_string()))?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(ck));
        Ok(())
    }

    fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.get()
    }
}

impl ResolvesClientCert for SvidResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        self.get().is_some()
    }
}

/// Verifies peers' SVIDs (both directions).
#[derive(Debug)]
pub struct SpiffeVerifier {
    bundle: SharedBundle,
    policy: PeerPolicy,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeVerifier {
    /// A verifier against `bundle` with `policy`.
    #[must_use]
    pub fn new(bundle: SharedBundle, policy: PeerPolicy) -> Arc<Self> {
        Arc::new(Self {
            bundle,
            policy,
            algs: provider().signature_verification_algorithms,
        })
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        let now = UNIX_EPOCH + Duration::from_secs(now.as_secs());
        let bundle = self
            .bundle
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = verify_svid(&chain, &bundle, now).map_err(to_rustls)?;
        if !self.policy.allows(&id) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(NotAllowed(id.to_string()))),
            )));
        }
        Ok(())
    }
}

fn to_rustls(e: VerifyError) -> rustls::Error {
    let ce = match e {
        VerifyError::Expired { .. } => CertificateError::Expired,
        VerifyError::NotYetValid { .. } => CertificateError::NotValidYet,
        VerifyError::BadSignature { .. } => CertificateError::BadSignature,
        VerifyError::UnknownIssuer(_) => CertificateError::UnknownIssuer,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(ce)
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ClientCertVerifier for SpiffeVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A server config that presents `resolver`'s SVID and requires a client SVID accepted by
/// `policy` (mTLS is mandatory).
///
/// # Errors
/// When the protocol versions cannot be configured.
pub fn server_config(
    resolver: Arc<SvidResolver>,
    bundle: SharedBundle,
    policy: PeerPolicy,
) -> Result<ServerConfig, Error> {
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(SpiffeVerifier::new(bundle, policy))
        .with_cert_resolver(resolver);
    Ok(cfg)
}

/// A client config that presents `resolver`'s SVID and accepts a server SVID allowed by
/// `policy`. Connect with [`server_name`].
///
/// # Errors
/// When the protocol versions cannot be configured.
pub fn client_config(
    resolver: Arc<SvidResolver>,
    bundle: SharedBundle,
    policy: PeerPolicy,
) -> Result<ClientConfig, Error> {
    let builder: ConfigBuilder<ClientConfig, WantsClientCert> =
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(SpiffeVerifier::new(bundle, policy));
    Ok(builder.with_client_cert_resolver(resolver))
}

/// The verified peer's SPIFFE ID of an established connection (from its leaf certificate).
///
/// # Errors
/// When the peer presented no certificate or its leaf holds no single SPIFFE ID.
pub fn peer_id(peer_certs: Option<&[CertificateDer<'_>]>) -> Result<SpiffeId, VerifyError> {
    let leaf = peer_certs
        .and_then(<[_]>::first)
        .ok_or(VerifyError::EmptyChain)?;
    crate::verify::spiffe_id_of(leaf)
}

/// Shares a bundle for [`server_config`] / [`client_config`].
#[must_use]
pub fn shared(bundle: Bundle) -> SharedBundle {
    Arc::new(RwLock::new(bundle))
}
