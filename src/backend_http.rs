//! The HTTP client toward the app's backend (hooks and webhooks): `http://` and `https://`,
//! TLS by rustls with the ring provider, trusting the platform's root certificates
//! (`SSL_CERT_FILE` / `SSL_CERT_DIR` are honoured), no proxy from the environment (the backend
//! is on the internal network).
//!
//! The provider is handed to this client itself, so the node's hooks and webhooks never depend
//! on a global choice. reqwest's other clients (the CLI's admin client, tests) find no provider
//! unless one is installed process-wide: [`install_default_provider`] does, at the start of
//! `main` (reqwest would panic building a client otherwise).
//!
//! Leaves to others: pool sizes and timeouts (the hooks and the webhook delivery set them on
//! the builder this returns), what is sent and how answers are read.

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use tracing::warn;

/// Make ring the process's rustls provider, for reqwest clients built without
/// [`client_builder`]. Idempotent; a provider installed earlier stays.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client builder that speaks `https://` with the platform's roots; an error only when the
/// TLS provider refuses its own default protocol versions.
pub fn client_builder() -> Result<reqwest::ClientBuilder, rustls::Error> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .tls_backend_preconfigured(tls_config()?))
}

/// rustls with ring, trusting the platform's roots. A root that cannot be read is logged and
/// skipped: an `https://` backend signed by it then fails its requests (fail closed), and
/// `http://` ones work as before.
fn tls_config() -> Result<ClientConfig, rustls::Error> {
    let mut roots = RootCertStore::empty();
    let platform = rustls_native_certs::load_native_certs();
    if let Some(err) = platform.errors.first() {
        warn!(%err, "some platform root certificates could not be loaded");
    }
    let (_, unusable) = roots.add_parsable_certificates(platform.certs);
    if unusable > 0 {
        warn!(unusable, "some platform root certificates are not usable");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_builds_without_a_process_wide_provider() {
        let builder = client_builder().expect("ring has the default versions");
        assert!(builder.build().is_ok());
    }
}
