//! TLS towards the collector, for the operator's CLI and the agent: which
//! CA to trust, the client certificate to present, and whether a plaintext
//! URL stays on this host.
//!
//! The PEM files are read and checked here, at start, so that a bad one is
//! an error naming its flag and path rather than a failed handshake later.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The TLS files of a client; all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFiles {
    /// CA certificates (PEM) to trust for the collector; none: the
    /// system's roots.
    pub ca: Option<PathBuf>,
    /// The client certificate chain (PEM) and its key.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name checked on the collector's certificate; none: the URL's
    /// host.
    pub server_name: Option<String>,
}

/// A TLS file that cannot be used, named by its flag.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {}: {why}", path.display())]
pub struct FileError {
    pub flag: &'static str,
    pub path: PathBuf,
    pub why: String,
}

fn read_pem(flag: &'static str, path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|e| FileError {
        flag,
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

/// Reads a PEM file of certificates, checking it holds at least one.
fn read_certs(flag: &'static str, path: &Path) -> Result<Vec<u8>, FileError> {
    let pem = read_pem(flag, path)?;
    let bad = |why: String| FileError {
        flag,
        path: path.to_path_buf(),
        why,
    };
    let n = CertificateDer::pem_slice_iter(&pem)
        .try_fold(0usize, |n, c| c.map(|_| n + 1))
        .map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
    if n == 0 {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(pem)
}

/// The client TLS settings for `files`.
pub fn client_config(files: &ClientFiles) -> Result<ClientTlsConfig, FileError> {
    let mut tls = ClientTlsConfig::new();
    tls = match &files.ca {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read_certs("--tls-ca", ca)?)),
        None => tls.with_native_roots(),
    };
    match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs("--tls-cert", cert)?;
            let key_pem = read_pem("--tls-key", key)?;
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| FileError {
                flag: "--tls-key",
                path: key.clone(),
                why: format!("no PEM private key in it: {e}"),
            })?;
            tls = tls.identity(Identity::from_pem(chain, key_pem));
        }
        (None, None) => {}
        (Some(path), None) | (None, Some(path)) => {
            return Err(FileError {
                flag: "--tls-cert/--tls-key",
                path: path.clone(),
                why: "a client certificate needs both --tls-cert and --tls-key".into(),
            })
        }
    }
    if let Some(name) = &files.server_name {
        tls = tls.domain_name(name.clone());
    }
    Ok(tls)
}

/// Whether the URL's host is this host only: `localhost` or a loopback
/// address. What goes there plaintext never leaves the machine.
pub fn is_loopback_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<tonic::codegen::http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_host_is_loopback() {
        for url in [
            "http://127.0.0.1:7786",
            "http://127.9.9.9:1",
            "http://[::1]:7786",
            "http://localhost:7786",
            "http://LocalHost",
        ] {
            assert!(is_loopback_url(url), "{url}");
        }
        for url in [
            "http://198.18.0.1:7786",
            "http://[2001:db8::1]:7786",
            "http://collector.example:7786",
            "http://localhost.example:7786",
            "not a url",
        ] {
            assert!(!is_loopback_url(url), "{url}");
        }
    }

    #[test]
    fn bad_files_are_named_by_flag_and_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem at all\n").expect("write");
        let missing = dir.path().join("missing.pem");
        let cases = [
            (
                ClientFiles {
                    ca: Some(missing.clone()),
                    ..ClientFiles::default()
                },
                "--tls-ca",
                &missing,
            ),
            (
                ClientFiles {
                    ca: Some(junk.clone()),
                    ..ClientFiles::default()
                },
                "--tls-ca",
                &junk,
            ),
            (
                ClientFiles {
                    cert: Some(junk.clone()),
                    key: Some(junk.clone()),
                    ..ClientFiles::default()
                },
                "--tls-cert",
                &junk,
            ),
            (
                ClientFiles {
                    key: Some(junk.clone()),
                    ..ClientFiles::default()
                },
                "--tls-cert/--tls-key",
                &junk,
            ),
        ];
        for (files, flag, path) in cases {
            let err = client_config(&files).expect_err("refused").to_string();
            assert!(err.contains(flag), "{err}");
            assert!(err.contains(&path.display().to_string()), "{err}");
        }
    }
}
