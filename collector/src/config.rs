//! The collector's settings: every one a flag and a key of the TOML file
//! (`--config FILE`, for config management). A flag beats the file, the
//! file beats the default. Durations read like 500ms, 3s, 1m, 30days.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};
use tcpstall_common::duration;

/// The effective settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address for agents' streams and for queries.
    pub listen: SocketAddr,
    /// SQLite database file (created if missing).
    pub db: PathBuf,
    /// How long a send queue must stay stuck to become an episode.
    #[serde(with = "duration::text")]
    pub threshold: Duration,
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
    /// A file holding the token queries must present (`authorization:
    /// Bearer TOKEN`); none: queries need no token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_token_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7786)),
            db: PathBuf::from("tcpstall.db"),
            threshold: Duration::from_secs(10),
            retention: Duration::from_secs(30 * 24 * 3600),
            max_db_bytes: 10 * 1024 * 1024 * 1024,
            max_agents: 5000,
            max_batch_samples: 50_000,
            max_message_bytes: 16 * 1024 * 1024,
            max_samples_per_episode: 720,
            metrics_listen: None,
            query_token_file: None,
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s)
}

/// The flags; each overrides the file's key of the same name.
#[derive(Debug, Clone, Default, Args)]
pub struct Flags {
    /// TOML file with any of the settings below.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address for agents and queries [default: 127.0.0.1:7786].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// SQLite database file [default: ./tcpstall.db].
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// Stuck time that makes an episode [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub threshold: Option<Duration>,
    /// How long ended episodes are kept [default: 30days].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub retention: Option<Duration>,
    /// Most bytes the database may hold, 0 for no bound [default: 10737418240].
    #[arg(long, value_name = "BYTES")]
    pub max_db_bytes: Option<u64>,
    /// Most agents connected at once [default: 5000].
    #[arg(long, value_name = "N")]
    pub max_agents: Option<usize>,
    /// Most samples in one batch [default: 50000].
    #[arg(long, value_name = "N")]
    pub max_batch_samples: Option<usize>,
    /// Largest gRPC message, bytes [default: 16777216].
    #[arg(long, value_name = "BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Samples stored per episode and side while open [default: 720].
    #[arg(long, value_name = "N")]
    pub max_samples_per_episode: Option<usize>,
    /// Serve Prometheus metrics at http://ADDR/metrics [default: off].
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Queries must present the token in FILE [default: none needed].
    #[arg(long, value_name = "FILE")]
    pub query_token_file: Option<PathBuf>,
}

/// Why the settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file; keys left out keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    /// Defaults, then the file, then the flags.
    pub fn load(flags: &Flags) -> Result<Config, ConfigError> {
        let mut c = match &flags.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! take {
            ($($f:ident),*) => {$( if let Some(v) = flags.$f.clone() { c.$f = v; } )*};
        }
        take!(
            listen,
            db,
            threshold,
            retention,
            max_db_bytes,
            max_agents,
            max_batch_samples,
            max_message_bytes,
            max_samples_per_episode
        );
        if flags.metrics_listen.is_some() {
            c.metrics_listen = flags.metrics_listen;
        }
        if flags.query_token_file.is_some() {
            c.query_token_file = flags.query_token_file.clone();
        }
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.threshold < Duration::from_millis(100) {
            return Err(ConfigError::Invalid("threshold: at least 100ms".into()));
        }
        if self.max_agents == 0 || self.max_batch_samples == 0 || self.max_message_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "max_agents and max_batch_samples must be positive, max_message_bytes at least 1024".into(),
            ));
        }
        Ok(())
    }

    /// The settings as a commented TOML file: `print-config` prints it and
    /// collector.example.toml is it with the defaults.
    pub fn to_toml(&self) -> String {
        let d = duration::format;
        format!(
            "# tcpstall-collector settings. Every key is also a flag (--listen, --db, ...);\n\
             # a flag beats this file. Durations read like 500ms, 3s, 1m, 30days.\n\
             \n\
             # Address for agents' streams and for queries.\n\
             listen = \"{}\"\n\
             # SQLite database file, created if missing.\n\
             db = \"{}\"\n\
             # How long a send queue must stay stuck to become an episode.\n\
             threshold = \"{}\"\n\
             # How long ended episodes are kept.\n\
             retention = \"{}\"\n\
             # Most bytes the database may hold; past it the oldest ended episodes go\n\
             # first, open ones never (0: no bound but age).\n\
             max_db_bytes = {}\n\
             # Most agents connected at once; more are refused.\n\
             max_agents = {}\n\
             # Most samples in one batch; a larger batch is refused.\n\
             max_batch_samples = {}\n\
             # Largest gRPC message accepted, bytes.\n\
             max_message_bytes = {}\n\
             # Samples stored per episode and side while it is open.\n\
             max_samples_per_episode = {}\n\
             # Prometheus endpoint, http://ADDR/metrics; off when not set.\n\
             {}metrics_listen = \"{}\"\n\
             # File with the token queries must present (authorization: Bearer TOKEN);\n\
             # queries need none when not set.\n\
             {}query_token_file = \"{}\"\n",
            self.listen,
            self.db.display(),
            d(self.threshold),
            d(self.retention),
            self.max_db_bytes,
            self.max_agents,
            self.max_batch_samples,
            self.max_message_bytes,
            self.max_samples_per_episode,
            if self.metrics_listen.is_some() {
                ""
            } else {
                "# "
            },
            self.metrics_listen
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7787))),
            if self.query_token_file.is_some() {
                ""
            } else {
                "# "
            },
            self.query_token_file
                .as_deref()
                .unwrap_or(Path::new("/etc/tcpstall/query.token"))
                .display(),
        )
    }
}

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
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "threshold = \"3s\"\nmax_agents = 7\n").expect("write");
        let flags = Flags {
            config: Some(path.clone()),
            max_agents: Some(9),
            ..Flags::default()
        };
        let c = Config::load(&flags).expect("load");
        assert_eq!(c.threshold, Duration::from_secs(3));
        assert_eq!(c.max_agents, 9);
        assert_eq!(c.db, Config::default().db);
        std::fs::write(&path, "treshold = \"3s\"\n").expect("write");
        let err = Config::load(&flags).expect_err("unknown key");
        assert!(err.to_string().contains("treshold"), "{err}");
        std::fs::write(&path, "threshold = \"soon\"\n").expect("write");
        let err = Config::load(&flags).expect_err("bad duration");
        assert!(err.to_string().contains("soon"), "{err}");
    }
}
