//! Reaching a collector's query service: where it is, how to trust it, the
//! token it may ask for, and the one connected client.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tcpstall_common::error_chain;
use tcpstall_proto::v1::query_client::QueryClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig};

use crate::tls::{self, ClientFiles};

/// Why a collector could not be reached, by whose fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// A setting is wrong (a flag, a file a flag names); the message names it.
    #[error("{0}")]
    Usage(String),
    /// The collector did not answer (or refused the connection or the
    /// handshake).
    #[error("{0}")]
    Unreachable(String),
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

/// Adds the query token, if any, to every request.
#[derive(Clone, Default)]
pub struct WithToken(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for WithToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_tuple("WithToken").field(&self.0.is_some()).finish()
    }
}

impl tonic::service::Interceptor for WithToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

impl WithToken {
    /// The token in the first line of `path` (surrounding blanks trimmed).
    pub fn read(path: &Path) -> Result<WithToken, ConnectError> {
        let bad = |m: String| ConnectError::Usage(format!("--token-file {}: {m}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let token = text.lines().next().unwrap_or("").trim();
        if token.is_empty() {
            return Err(bad("empty".into()));
        }
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| bad("not a printable ASCII token".into()))?;
        Ok(WithToken(Some(value)))
    }
}

/// The query client, with the token.
pub type Client = QueryClient<InterceptedService<Channel, WithToken>>;

/// Where the collector is and how to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// `https://HOST:PORT`, or `http://` (plaintext).
    pub url: String,
    pub token_file: Option<PathBuf>,
    pub tls: ClientFiles,
    /// Plaintext to another host allowed (loopback needs no leave).
    pub plaintext: bool,
}

impl Target {
    /// The TLS settings for an https:// URL; plaintext only to this host
    /// unless allowed.
    pub fn tls(&self) -> Result<Option<ClientTlsConfig>, ConnectError> {
        let url = &self.url;
        if url.starts_with("https://") {
            return tls::client_config(&self.tls)
                .map(Some)
                .map_err(|e| ConnectError::Usage(e.to_string()));
        }
        if self.tls != ClientFiles::default() {
            return Err(ConnectError::Usage(format!(
                "--collector {url}: TLS flags given for a plaintext URL; use https://"
            )));
        }
        if !self.plaintext && !tls::is_loopback_url(url) {
            return Err(ConnectError::Usage(format!(
                "--collector {url} is plaintext to another host: use https:// (with --tls-ca), \
                 or allow plaintext with --plaintext"
            )));
        }
        Ok(None)
    }

    /// Connects (5 s to connect, 30 s a request).
    pub async fn connect(&self) -> Result<Client, ConnectError> {
        let url = &self.url;
        let token = match &self.token_file {
            Some(p) => WithToken::read(p)?,
            None => WithToken::default(),
        };
        let tls = self.tls()?;
        let mut endpoint = Channel::from_shared(url.to_string())
            .map_err(|e| ConnectError::Failed(format!("--collector {url}: {e}")))?;
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| ConnectError::Usage(format!("TLS settings: {e}")))?;
        }
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30));
        let channel = endpoint.connect().await.map_err(|e| {
            let reason = error_chain(&e);
            ConnectError::Unreachable(format!("cannot reach the collector at {url}: {reason}"))
        })?;
        Ok(QueryClient::with_interceptor(channel, token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Target {
        Target {
            url: url.into(),
            ..Target::default()
        }
    }

    #[test]
    fn plaintext_leaves_this_host_only_when_allowed() {
        assert!(matches!(target("http://127.0.0.1:7786").tls(), Ok(None)));
        let far = target("http://198.18.0.1:7786");
        assert!(matches!(far.tls(), Err(ConnectError::Usage(m)) if m.contains("--plaintext")));
        let allowed = Target {
            plaintext: true,
            ..far
        };
        assert!(matches!(allowed.tls(), Ok(None)));
        let mixed = Target {
            tls: ClientFiles {
                server_name: Some("c".into()),
                ..ClientFiles::default()
            },
            ..target("http://127.0.0.1:7786")
        };
        assert!(matches!(mixed.tls(), Err(ConnectError::Usage(m)) if m.contains("https://")));
    }

    #[test]
    fn a_token_file_is_read_and_never_printed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let good = dir.path().join("token");
        std::fs::write(&good, "  s3cret-token \nignored\n").expect("write");
        let t = WithToken::read(&good).expect("a token");
        assert!(!format!("{t:?}").contains("s3cret"), "{t:?}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").expect("write");
        let err = WithToken::read(&empty).expect_err("refused");
        assert!(err.to_string().contains("--token-file") && err.to_string().contains("empty"));
        let err = WithToken::read(&dir.path().join("missing")).expect_err("refused");
        assert!(matches!(err, ConnectError::Usage(_)));
    }
}
