//! The collector's settings: every one a flag and a key of the TOML file
//! (`--config FILE`, for config management). A flag beats the file, the
//! file beats the default. Durations read like 500ms, 3s, 1m, 30days.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};
use tcpstall_common::duration;
use tcpstall_settings::SettingsError;

pub use crate::store::StoreUrl;

/// The effective settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address for agents' streams and for queries.
    pub listen: SocketAddr,
    /// SQLite database file (created if missing).
    pub db: PathBuf,
    /// The store: `sqlite:PATH` or a path (SQLite), or
    /// `postgres://user@host:port/database` (PostgreSQL, fleet mode);
    /// `None`: SQLite at `db`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// A file whose first line is the PostgreSQL store's password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_password_file: Option<PathBuf>,
    /// How long a send queue must stay stuck to become an episode.
    #[serde(with = "duration::text")]
    pub threshold: Duration,
    /// How long a suspect's queue must be held before the agent of its
    /// peer is asked to watch the other end; `None`: the threshold less
    /// two and a half of the suspect's agent's polls (5s at the defaults).
    #[serde(
        with = "duration::option_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub watch_peer_after: Option<Duration>,
    /// How long ended episodes are kept.
    #[serde(with = "duration::text")]
    pub retention: Duration,
    /// Most bytes the database may hold; past it the oldest ended episodes
    /// go first (0: no bound but age).
    pub max_db_bytes: u64,
    /// Most agents connected at once; more are refused.
    pub max_agents: usize,
    /// Most samples in one batch; a larger batch is refused.
    pub max_batch_samples: usize,
    /// Largest gRPC message accepted, bytes.
    pub max_message_bytes: usize,
    /// Samples stored per episode and side while it is open (the last one
    /// is always stored).
    pub max_samples_per_episode: usize,
    /// Address of the Prometheus endpoint (`GET /metrics`); none by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Address of the web page (stuck pairs now, episodes, hosts); none by
    /// default. Over TLS when `tls_cert` is set; plaintext only on a
    /// loopback address unless `plaintext`. Needs the query token when one
    /// is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web_listen: Option<SocketAddr>,
    /// A file holding the token queries must present (`authorization:
    /// Bearer TOKEN`); none: queries need no token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_token_file: Option<PathBuf>,
    /// The collector's certificate chain (PEM); with `tls_key`, agents and
    /// queries are served over TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that sign the agents' certificates: an agent
    /// must present one (mutual TLS), and may report only for the host its
    /// certificate names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve without TLS on an address other hosts can reach.
    pub plaintext: bool,
    /// Threads that read the agents' streams and run the matcher;
    /// `None`: one fewer than the CPUs the collector may use, at least one
    /// ([`Config::workers`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Fleet mode: the NATS servers (with JetStream) the nodes share; none
    /// for a single collector.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nats: Vec<String>,
    /// Fleet mode: this node's name, unique in the fleet; `None`: the
    /// machine's host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Fleet mode: partitions of the flows, the same on every node.
    pub partitions: u32,
    /// Fleet mode: copies JetStream keeps of the samples stream and the
    /// buckets.
    pub nats_replicas: usize,
    /// Fleet mode: how long a partition's lease lasts unrenewed.
    #[serde(with = "duration::text")]
    pub lease: Duration,
    /// Fleet mode: how much of each partition the stream keeps for a node
    /// that takes it over.
    #[serde(with = "duration::text")]
    pub replay: Duration,
    /// Fleet mode: CA certificates (PEM) to trust for the NATS servers;
    /// set, the connection must be TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Fleet mode: a file holding the token the NATS servers ask for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_token_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7786)),
            db: PathBuf::from("tcpstall.db"),
            store: None,
            store_password_file: None,
            threshold: Duration::from_secs(10),
            watch_peer_after: None,
            retention: Duration::from_secs(30 * 24 * 3600),
            max_db_bytes: 10 * 1024 * 1024 * 1024,
            max_agents: 5000,
            max_batch_samples: 50_000,
            max_message_bytes: 16 * 1024 * 1024,
            max_samples_per_episode: 720,
            metrics_listen: None,
            web_listen: None,
            query_token_file: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            plaintext: false,
            workers: None,
            nats: Vec::new(),
            node_name: None,
            partitions: 32,
            nats_replicas: 3,
            lease: Duration::from_secs(10),
            replay: Duration::from_secs(300),
            nats_tls_ca: None,
            nats_token_file: None,
        }
    }
}

/// Most worker threads a setting may ask for.
const MAX_WORKERS: usize = 1024;

/// The flags; each overrides the file's key of the same name, and its help
/// is the key's comment in the generated file. Serialized, they are the
/// flags given, nothing else (see `tcpstall_settings`).
#[derive(Debug, Clone, Default, Args, Serialize)]
pub struct Flags {
    /// TOML file with any of the settings below.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address for agents and queries [default: 127.0.0.1:7786].
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// SQLite database file [default: ./tcpstall.db].
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db: Option<PathBuf>,
    /// The store: sqlite:PATH or a path for SQLite, or
    /// postgres://user@host:port/database for PostgreSQL, which several
    /// collector nodes share (fleet mode); a password in it never reaches
    /// the logs, and may instead come from --store-password-file [default:
    /// SQLite at --db].
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// The PostgreSQL store's password: the first line of FILE [default:
    /// the URL's, or none].
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_password_file: Option<PathBuf>,
    /// Stuck time that makes an episode [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(
        with = "duration::option_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub threshold: Option<Duration>,
    /// How long a suspect's queue must be held before its peer's agent is
    /// asked to watch the other end, 0s for at once [default: the threshold
    /// less two and a half of the suspect's agent's polls, 5s at 10s and 2s,
    /// so that queues held only briefly cost their peers nothing].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(
        with = "duration::option_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub watch_peer_after: Option<Duration>,
    /// How long ended episodes are kept [default: 30days].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(
        with = "duration::option_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub retention: Option<Duration>,
    /// Most bytes the database may hold: past it the oldest ended episodes
    /// go first, open ones never; 0 for no bound but age [default:
    /// 10737418240].
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_db_bytes: Option<u64>,
    /// Most agents connected at once [default: 5000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_agents: Option<usize>,
    /// Most samples in one batch [default: 50000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch_samples: Option<usize>,
    /// Largest gRPC message, bytes [default: 16777216].
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<usize>,
    /// Samples stored per episode and side while open [default: 720].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_samples_per_episode: Option<usize>,
    /// Serve Prometheus metrics at http://ADDR/metrics [default: off].
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve the web page at ADDR: stuck pairs now, episodes, hosts (TLS
    /// and the query token as the queries have them) [default: off].
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub web_listen: Option<SocketAddr>,
    /// Queries must present the token in FILE [default: none needed].
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_token_file: Option<PathBuf>,
    /// Serve agents and queries over TLS with this certificate chain (PEM);
    /// without it the collector serves plaintext, on a loopback address
    /// only unless --plaintext [default: none].
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Agents must present a certificate signed by a CA in FILE (PEM), and
    /// may report only for the host it names (a DNS name of its
    /// subjectAltName) [default: no client certificates].
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
    /// Allow serving without TLS on an address other hosts can reach
    /// (loopback needs no flag).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub plaintext: bool,
    /// Threads that read the agents' streams and run the matcher; the
    /// store writes on a thread of its own [default: one fewer than the CPUs
    /// the collector may use (its affinity and cgroup quota), at least 1].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Fleet mode: a NATS server with JetStream, nats://HOST:PORT; repeat
    /// for each server of the cluster. Every node given the same servers
    /// shares the agents' flows, partitions and episodes (docs/fleet.md)
    /// [default: none, a single collector].
    #[arg(long = "nats", value_name = "URL")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nats: Vec<String>,
    /// Fleet mode: this node's name, unique among the nodes [default: the
    /// machine's host name].
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Fleet mode: partitions of the flows' key space, the same on every
    /// node; each is judged by one node at a time [default: 32].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
    /// Fleet mode: copies JetStream keeps of the samples stream and the
    /// buckets, at most the NATS servers [default: 3].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_replicas: Option<usize>,
    /// Fleet mode: how long a partition's lease lasts unrenewed; a dead
    /// node's partitions are taken within it and a third [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(
        with = "duration::option_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub lease: Option<Duration>,
    /// Fleet mode: how much of each partition's samples the stream keeps
    /// for a node that takes it over [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(
        with = "duration::option_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub replay: Option<Duration>,
    /// Fleet mode: trust the NATS servers' certificates signed by a CA in
    /// FILE (PEM), and connect to them over TLS only [default: plaintext
    /// for nats:// URLs].
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Fleet mode: authenticate to NATS with the token in FILE [default:
    /// none].
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_token_file: Option<PathBuf>,
}

/// Why the settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file; keys left out keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        Ok(tcpstall_settings::from_file(path)?)
    }

    /// Defaults, then the file, then the flags.
    pub fn load(flags: &Flags) -> Result<Config, ConfigError> {
        let c: Config = tcpstall_settings::load(flags.config.as_deref(), flags)?;
        c.validate()?;
        Ok(c)
    }

    /// Checks every value (as `load` does).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.store_url()?;
        if self.threshold < Duration::from_millis(100) {
            return Err(ConfigError::Invalid("threshold: at least 100ms".into()));
        }
        if self.max_agents == 0 || self.max_batch_samples == 0 || self.max_message_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "max_agents and max_batch_samples must be positive, max_message_bytes at least 1024".into(),
            ));
        }
        if self.workers.is_some_and(|n| n == 0 || n > MAX_WORKERS) {
            return Err(ConfigError::Invalid(format!(
                "workers (--workers): from 1 to {MAX_WORKERS}"
            )));
        }
        if !self.nats.is_empty() {
            for url in &self.nats {
                if !(url.starts_with("nats://") || url.starts_with("tls://")) {
                    return Err(ConfigError::Invalid(format!(
                        "nats (--nats) {url:?}: give nats://HOST:PORT or tls://HOST:PORT"
                    )));
                }
            }
            if self.partitions == 0 || self.partitions > 4096 {
                return Err(ConfigError::Invalid(
                    "partitions (--partitions): from 1 to 4096".into(),
                ));
            }
            if !(1..=5).contains(&self.nats_replicas) {
                return Err(ConfigError::Invalid(
                    "nats_replicas (--nats-replicas): from 1 to 5 (JetStream's limit)".into(),
                ));
            }
            if self.lease < Duration::from_secs(1) {
                return Err(ConfigError::Invalid("lease (--lease): at least 1s".into()));
            }
            if self.replay < self.threshold * 2 {
                return Err(ConfigError::Invalid(format!(
                    "replay (--replay): at least twice the threshold ({:?}), so that a node \
                     taking a partition over sees its stalls from their start",
                    self.threshold * 2
                )));
            }
            if self
                .node_name
                .as_deref()
                .is_some_and(|n| n.is_empty() || n.len() > 253)
            {
                return Err(ConfigError::Invalid(
                    "node_name (--node-name): 1 to 253 characters".into(),
                ));
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "tls_cert and tls_key (--tls-cert, --tls-key) go together".into(),
            ));
        }
        if self.tls_cert.is_some() && self.plaintext {
            return Err(ConfigError::Invalid(
                "plaintext and tls_cert both set: choose one".into(),
            ));
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err(ConfigError::Invalid(
                "tls_client_ca needs TLS: give tls_cert and tls_key (--tls-cert, --tls-key)".into(),
            ));
        }
        if let Some(web) = self.web_listen {
            if self.tls_cert.is_none() && !self.plaintext && !web.ip().is_loopback() {
                return Err(ConfigError::Invalid(format!(
                    "web_listen {web}: other hosts can reach it; serve TLS with --tls-cert and \
                     --tls-key (tls_cert, tls_key), or allow plaintext with --plaintext \
                     (plaintext = true)"
                )));
            }
        }
        if self.tls_cert.is_none() && !self.plaintext && !self.listen.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "listen {}: other hosts can reach it; serve TLS with --tls-cert and --tls-key \
                 (tls_cert, tls_key), or allow plaintext with --plaintext (plaintext = true)",
                self.listen
            )));
        }
        Ok(())
    }

    /// The store to open: the `store` setting with the password of
    /// `store_password_file`, or SQLite at `db`. Its errors name the
    /// setting and never show a password.
    pub fn store_url(&self) -> Result<StoreUrl, ConfigError> {
        StoreUrl::resolve(
            self.store.as_deref(),
            &self.db,
            self.store_password_file.as_deref(),
        )
        .map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    /// Whether agents and queries are served over TLS.
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// The settings as a commented TOML file, each key under its flag's
    /// help: `print-config` prints it and collector.example.toml is it with
    /// the defaults.
    pub fn to_toml(&self) -> String {
        tcpstall_settings::to_toml::<Config, Flags>(self, HEADER, EXAMPLES)
    }

    /// The worker threads to start: the setting, or one fewer than the
    /// CPUs this process may use, at least one. The matcher is one task
    /// and the store one thread, so on a small machine more workers than
    /// that only contend with them: on 2 CPUs at 1,000 agents, one worker
    /// took 12 % less CPU than two (BENCHMARKS.md).
    pub fn workers(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1))
                .max(1)
        })
    }
}

const HEADER: &str =
    "tcpstall-collector settings, as `tcpstall-collector print-config` prints them.
Every key is also a flag (--listen, --db, ...): a flag beats this file, this
file beats the defaults. Durations read like 500ms, 3s, 1m, 30days.";

/// What the file shows, commented out, for a setting that is not set.
const EXAMPLES: &[(&str, &str)] = &[
    ("store", "\"postgres://tcpstall@db.example:5432/tcpstall\""),
    ("store_password_file", "\"/etc/tcpstall/store.password\""),
    ("watch_peer_after", "\"5s\""),
    ("metrics_listen", "\"127.0.0.1:7787\""),
    ("web_listen", "\"127.0.0.1:7788\""),
    ("query_token_file", "\"/etc/tcpstall/query.token\""),
    ("tls_cert", "\"/etc/tcpstall/collector.crt\""),
    ("tls_key", "\"/etc/tcpstall/collector.key\""),
    ("tls_client_ca", "\"/etc/tcpstall/agents-ca.crt\""),
    ("workers", "4"),
    (
        "nats",
        "[\"nats://nats-1:4222\", \"nats://nats-2:4222\", \"nats://nats-3:4222\"]",
    ),
    ("node_name", "\"collector-1\""),
    ("nats_tls_ca", "\"/etc/tcpstall/nats-ca.crt\""),
    ("nats_token_file", "\"/etc/tcpstall/nats.token\""),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_is_the_generated_defaults() {
        let committed = include_str!("../collector.example.toml");
        assert_eq!(
            committed,
            Config::default().to_toml(),
            "collector.example.toml drifted: regenerate with `tcpstall-collector print-config > collector/collector.example.toml`"
        );
        let parsed: Config = toml::from_str(committed).expect("example parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn generated_file_round_trips_any_config() {
        let c = Config {
            threshold: Duration::from_millis(1500),
            retention: Duration::from_secs(3600),
            max_agents: 3,
            ..Config::default()
        };
        let parsed: Config = toml::from_str(&c.to_toml()).expect("parses");
        assert_eq!(parsed, c);
        let c = Config {
            metrics_listen: Some(SocketAddr::from(([0, 0, 0, 0], 9100))),
            ..c
        };
        let parsed: Config = toml::from_str(&c.to_toml()).expect("parses");
        assert_eq!(parsed, c);
        let c = Config {
            tls_cert: Some("/etc/c.crt".into()),
            tls_key: Some("/etc/c.key".into()),
            tls_client_ca: Some("/etc/ca.crt".into()),
            ..c
        };
        let parsed: Config = toml::from_str(&c.to_toml()).expect("parses");
        assert_eq!(parsed, c);
        let c = Config {
            watch_peer_after: Some(Duration::from_secs(4)),
            ..c
        };
        let parsed: Config = toml::from_str(&c.to_toml()).expect("parses");
        assert_eq!(parsed, c);
        let c = Config {
            workers: Some(3),
            ..c
        };
        let parsed: Config = toml::from_str(&c.to_toml()).expect("parses");
        assert_eq!(parsed, c);
        let c = Config {
            plaintext: true,
            ..Config::default()
        };
        let parsed: Config = toml::from_str(&c.to_toml()).expect("parses");
        assert_eq!(parsed, c);
    }

    #[test]
    fn workers_are_the_cpus_less_one_unless_set_and_never_zero() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(Config::default().workers(), (cpus - 1).max(1));
        let set = Config {
            workers: Some(3),
            ..Config::default()
        };
        assert_eq!(set.workers(), 3);
        for bad in [0, MAX_WORKERS + 1] {
            let err = Config::load(&Flags {
                workers: Some(bad),
                ..Flags::default()
            })
            .expect_err("refused");
            assert!(err.to_string().contains("--workers"), "{bad}: {err}");
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "workers = 2\n").expect("write");
        let file = Flags {
            config: Some(path),
            ..Flags::default()
        };
        assert_eq!(Config::load(&file).expect("load").workers(), 2);
        let flag = Flags {
            workers: Some(5),
            ..file
        };
        assert_eq!(
            Config::load(&flag).expect("load").workers(),
            5,
            "the flag wins"
        );
    }

    #[test]
    fn the_store_is_sqlite_at_db_unless_set_and_its_errors_name_the_setting() {
        let c = Config::load(&Flags::default()).expect("defaults");
        assert_eq!(
            c.store_url().expect("store").to_string(),
            "sqlite:tcpstall.db"
        );
        let c = Config::load(&Flags {
            store: Some("postgres://tcpstall:hunter2@db.example/tcpstall".into()),
            ..Flags::default()
        })
        .expect("postgres");
        let url = c.store_url().expect("store");
        assert!(url.is_postgres());
        assert_eq!(
            url.to_string(),
            "postgres://tcpstall:***@db.example/tcpstall"
        );
        let err = Config::load(&Flags {
            store: Some("postgres://u:hunter2@db.example:99999999/x".into()),
            ..Flags::default()
        })
        .expect_err("bad port");
        assert!(err.to_string().contains("--store"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = Config::load(&Flags {
            store_password_file: Some("/nonexistent/pw".into()),
            store: Some("postgres://u@h/d".into()),
            ..Flags::default()
        })
        .expect_err("missing file");
        assert!(err.to_string().contains("store_password_file"), "{err}");
    }

    #[test]
    fn plaintext_off_loopback_only_when_asked() {
        let load = |listen: &str, plaintext: bool, tls: bool| {
            Config::load(&Flags {
                listen: Some(listen.parse().expect("address")),
                plaintext,
                tls_cert: tls.then(|| "/c.crt".into()),
                tls_key: tls.then(|| "/c.key".into()),
                ..Flags::default()
            })
        };
        load("127.0.0.1:7786", false, false).expect("loopback needs no flag");
        load("[::1]:7786", false, false).expect("loopback needs no flag");
        let err = load("0.0.0.0:7786", false, false).expect_err("refused");
        assert!(err.to_string().contains("--plaintext"), "{err}");
        assert!(err.to_string().contains("--tls-cert"), "{err}");
        load("0.0.0.0:7786", true, false).expect("asked for");
        load("0.0.0.0:7786", false, true).expect("TLS");
        load("0.0.0.0:7786", true, true).expect_err("both");
        let err = Config::load(&Flags {
            tls_client_ca: Some("/ca.crt".into()),
            ..Flags::default()
        })
        .expect_err("client CA without TLS");
        assert!(err.to_string().contains("tls_client_ca"), "{err}");
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "threshold = \"3s\"\nmax_agents = 7\nwatch_peer_after = \"1s\"\n",
        )
        .expect("write");
        let flags = Flags {
            config: Some(path.clone()),
            max_agents: Some(9),
            ..Flags::default()
        };
        let c = Config::load(&flags).expect("load");
        assert_eq!(c.threshold, Duration::from_secs(3));
        assert_eq!(c.max_agents, 9);
        assert_eq!(c.watch_peer_after, Some(Duration::from_secs(1)));
        let c = Config::load(&Flags {
            watch_peer_after: Some(Duration::ZERO),
            ..flags.clone()
        })
        .expect("load");
        assert_eq!(c.watch_peer_after, Some(Duration::ZERO), "the flag wins");
        assert_eq!(c.db, Config::default().db);
        std::fs::write(&path, "treshold = \"3s\"\n").expect("write");
        let err = Config::load(&flags).expect_err("unknown key");
        assert!(err.to_string().contains("treshold"), "{err}");
        std::fs::write(&path, "threshold = \"soon\"\n").expect("write");
        let err = Config::load(&flags).expect_err("bad duration");
        assert!(err.to_string().contains("soon"), "{err}");
    }
}
