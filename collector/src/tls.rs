//! TLS on the collector's one listener (agents' streams and queries):
//! the server's identity, optional client certificates (mutual TLS for
//! agents), the handshakes, and the binding of an agent's certificate to
//! the host it reports for.
//!
//! Handshakes are done here rather than inside tonic so that a refused one
//! is logged at `warn` with the peer's address and rustls's reason (an
//! unknown CA, an expired certificate). The streams handed to tonic are
//! `tokio_rustls` streams, so `Request::peer_certs` still works.
//!
//! With a client CA, a certificate is optional at the TLS layer (the query
//! API is for operators, protected by TLS and its token); one presented
//! must verify. The ingest service then refuses a stream without one
//! ([`agent_identity`]).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::Status;

use crate::config::Config;

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more connections wait to be accepted.
const MAX_HANDSHAKES: usize = 256;
/// Finished handshakes waiting for the gRPC server to take them.
const ACCEPTED_QUEUE: usize = 64;

/// Why TLS could not be set up; names the setting and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{flag} {}: {why}", path.display())]
    File {
        flag: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error("TLS setup: {0}")]
    Setup(String),
}

fn file_error(flag: &'static str, path: &Path, why: impl ToString) -> TlsError {
    TlsError::File {
        flag,
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

/// Every certificate of a PEM file; at least one.
pub fn read_certs(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| file_error(flag, path, e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(flag, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(flag, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// The first private key of a PEM file.
pub fn read_key(flag: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| file_error(flag, path, e))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| file_error(flag, path, format!("no PEM private key in it: {e}")))
}

/// The rustls server settings of `config`, or `None` when it serves
/// plaintext.
pub fn server_config(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let chain = read_certs("--tls-cert", cert)?;
    let key_der = read_key("--tls-key", key)?;
    // Explicit, so that no other crate's features can change the choice.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = match &config.tls_client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs("--tls-client-ca", ca)? {
                roots
                    .add(c)
                    .map_err(|e| file_error("--tls-client-ca", ca, e))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| file_error("--tls-client-ca", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| file_error("--tls-key", key, format!("does not fit --tls-cert: {e}")))?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(Arc::new(server)))
}

/// Accepts connections on `listener` and hands over those whose handshake
/// succeeded; refused ones are logged with the peer and the reason, and
/// counted in `refused`. Ends when the receiver is dropped.
pub fn accept(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    refused: Arc<AtomicU64>,
) -> mpsc::Receiver<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    let acceptor = TlsAcceptor::from(config);
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a
                        // moment rather than spin.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let refused = refused.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let reason =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                            return;
                        }
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "handshake timed out".to_string(),
                    };
                refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, reason, "TLS handshake refused");
            });
        }
    });
    rx
}

/// What an agent's stream proved about itself at the TLS layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentIdentity {
    /// Served plaintext, or TLS without client certificates.
    NotRequired,
    /// A verified certificate: the host names it is valid for.
    Certificate(CertificateDer<'static>),
}

/// The identity an agent's stream must carry, from the certificates the
/// client presented: with mTLS required, a stream without one is refused.
pub fn agent_identity(
    mtls: bool,
    peer_certs: Option<&[CertificateDer<'static>]>,
) -> Result<AgentIdentity, Status> {
    if !mtls {
        return Ok(AgentIdentity::NotRequired);
    }
    match peer_certs.and_then(|c| c.first()) {
        Some(leaf) => Ok(AgentIdentity::Certificate(leaf.clone())),
        None => Err(Status::unauthenticated(
            "agents must present a client certificate signed by the collector's --tls-client-ca",
        )),
    }
}

/// Whether `host` (from the agent's Hello) is a name the agent's
/// certificate is valid for (a DNS name of its subjectAltName, compared
/// as DNS names are: case-insensitively; a wildcard the CA issued
/// counts). Refused with both names otherwise.
pub fn check_host(identity: &AgentIdentity, host: &str) -> Result<(), Status> {
    let AgentIdentity::Certificate(der) = identity else {
        return Ok(());
    };
    let cert = webpki::EndEntityCert::try_from(der).map_err(|e| {
        Status::permission_denied(format!("the client certificate does not parse: {e}"))
    })?;
    let names = || cert.valid_dns_names().collect::<Vec<_>>().join(", ");
    let name = ServerName::try_from(host).map_err(|_| {
        Status::permission_denied(format!(
            "host {host:?} is not a DNS name, so no certificate can name it (the certificate names: {})",
            names()
        ))
    })?;
    cert.verify_is_valid_for_subject_name(&name).map_err(|_| {
        Status::permission_denied(format!(
            "host {host:?} is not named by the client certificate (it names: {})",
            names()
        ))
    })
}
