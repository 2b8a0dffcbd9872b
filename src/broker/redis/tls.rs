//! Whom a `rediss://` connection trusts: the platform's root certificates, plus the CAs of
//! `redis.tls_ca_file` when one is given. TLS itself is rustls, inside the redis crate.
//!
//! Leaves to others: checking that the file exists and parses (the configuration, at start),
//! the connections (the redis crate).

use crate::broker::redis::error::RedisFailure;

use redis::{Client, ConnectionAddr, TlsCertificates};
use tracing::warn;

use crate::broker::BrokerError;

/// The client for `url`: with a CA file and a `rediss://` URL, one that trusts the
/// platform's roots and the file's CAs; otherwise the platform's roots alone (the redis
/// crate's default). Errors name the key, never the URL (it may hold a password).
pub(crate) fn client(url: &str, ca_file: &str) -> Result<Client, BrokerError> {
    let client = Client::open(url).map_err(|err| super::bad_setting("redis.url", &err))?;
    let is_tls = matches!(
        client.get_connection_info().addr(),
        ConnectionAddr::TcpTls { .. }
    );
    if ca_file.is_empty() || !is_tls {
        return Ok(client);
    }
    let certificates = TlsCertificates {
        client_tls: None,
        root_cert: Some(roots_with(ca_file)?),
    };
    Client::build_with_tls(client.get_connection_info().clone(), certificates)
        .map_err(|err| super::bad_setting("redis.tls_ca_file", &err))
}

/// The platform's roots and the CA file, as one PEM bundle: given a bundle, the redis crate
/// trusts it instead of the platform's roots, so they go in too.
fn roots_with(ca_file: &str) -> Result<Vec<u8>, BrokerError> {
    let mut bundle = std::fs::read(ca_file).map_err(RedisFailure::TlsCaFile)?;
    let platform = rustls_native_certs::load_native_certs();
    if let Some(err) = platform.errors.first() {
        warn!(%err, "some platform root certificates could not be loaded");
    }
    for root in platform.certs {
        bundle.push(b'\n');
        bundle.extend_from_slice(
            pem::encode(&pem::Pem::new("CERTIFICATE", root.to_vec())).as_bytes(),
        );
    }
    Ok(bundle)
}
