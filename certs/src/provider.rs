//! The one rustls crypto provider of the crate (ring), for TLS configs and verifiers.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// ring's default provider.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
