//! TLS for tests: a CA and a certificate for 127.0.0.1 it signed (made with the `openssl` CLI,
//! as redis-server needs files), and a TLS-terminating proxy in front of a plain server (an
//! `https://` backend). The proxy stops on drop.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A CA, and a certificate for 127.0.0.1 it signed (with openssl, as redis-server needs files).
pub fn make_server_certificate(dir: &Path, ca: &Path, cert: &Path, key: &Path) {
    let ca_key = dir.join("ca-key.pem");
    let request = dir.join("server.csr");
    let extensions = dir.join("server.ext");
    std::fs::write(&extensions, "subjectAltName = IP:127.0.0.1\n").expect("write extensions");
    let run = |args: &[&std::ffi::OsStr]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl on PATH");
        assert!(status.success(), "openssl {args:?}");
    };
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    run(&[
        os("req"),
        os("-x509"),
        os("-newkey"),
        os("rsa:2048"),
        os("-nodes"),
        os("-days"),
        os("1"),
        os("-subj"),
        os("/CN=roomcast test CA"),
        os("-keyout"),
        ca_key.as_os_str(),
        os("-out"),
        ca.as_os_str(),
    ]);
    run(&[
        os("req"),
        os("-newkey"),
        os("rsa:2048"),
        os("-nodes"),
        os("-subj"),
        os("/CN=127.0.0.1"),
        os("-keyout"),
        key.as_os_str(),
        os("-out"),
        request.as_os_str(),
    ]);
    run(&[
        os("x509"),
        os("-req"),
        os("-in"),
        request.as_os_str(),
        os("-CA"),
        ca.as_os_str(),
        os("-CAkey"),
        ca_key.as_os_str(),
        os("-CAcreateserial"),
        os("-days"),
        os("1"),
        os("-extfile"),
        extensions.as_os_str(),
        os("-out"),
        cert.as_os_str(),
    ]);
}

/// Accepts TLS on a loopback port 0 with `cert` / `key` and relays each connection, decrypted,
/// to `upstream`.
pub struct TlsProxy {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TlsProxy {
    pub async fn start(cert: &Path, key: &Path, upstream: SocketAddr) -> TlsProxy {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .expect("read certificate")
            .collect::<Result<_, _>>()
            .expect("parse certificate");
        let key = PrivateKeyDer::from_pem_file(key).expect("read key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("certificate and key");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that refuses our certificate ends its handshake here.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if let Ok(mut plain) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                    }
                });
            }
        });
        TlsProxy { addr, task }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
