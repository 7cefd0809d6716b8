//! The settings of `tcpstall-agent run`: every one a flag and a key of the
//! TOML file (`--config FILE`, for config management). A flag beats the
//! file, the file beats the default. Durations read like 500ms, 3s, 1m.
//!
//! `tcpstall-agent print-config` prints the effective settings as a
//! commented TOML file; `agent.example.toml` is that file with the defaults
//! and a test keeps the two equal.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};
use tcpstall_common::duration;
use tcpstall_settings::SettingsError;

use crate::netns::NetnsSpec;
use crate::probe::scrub::{OwnerArgs, Scrubber};

/// Shortest poll interval (the collector refuses shorter ones).
pub const MIN_INTERVAL: Duration = Duration::from_millis(50);
/// Longest poll interval.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Most polls the buffer may be asked to keep.
pub const MAX_BUFFER: usize = 100_000;
/// Most entries `batch_max` may allow in one batch.
pub const MAX_BATCH_MAX: usize = crate::run::MAX_BATCH_ENTRIES;
/// Shortest reconnection ceiling.
pub const MIN_BACKOFF_MAX: Duration = Duration::from_millis(100);
/// Longest host name (as the collector accepts it).
pub const MAX_HOST: usize = 255;
/// Shortest follow interval.
pub const MIN_FOLLOW: Duration = Duration::from_millis(10);
/// Most held suspects `follow_max` may allow at each follow.
pub const MAX_FOLLOW_MAX: usize = 100_000;
/// The follow interval when none is set: an eighth of the poll interval
/// (250 ms at the default 2 s), within these bounds.
pub const AUTO_FOLLOW_MIN: Duration = Duration::from_millis(50);
pub const AUTO_FOLLOW_MAX: Duration = Duration::from_secs(1);

/// The effective settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The collector's URL (http://HOST:PORT). No default: `run` needs one.
    pub collector: Option<String>,
    /// The name this host reports; `None` = the hostname.
    pub host: Option<String>,
    /// How often to poll.
    #[serde(with = "duration::text")]
    pub interval: Duration,
    /// Network namespaces to read (as `--netns` takes them); empty = own.
    pub netns: Vec<String>,
    /// Polls kept while cut off from the collector.
    pub buffer: usize,
    /// Most entries (samples, closed, absent) in one batch; a poll with
    /// more is sent as several batches.
    pub batch_max: usize,
    /// Ceiling of the reconnection backoff.
    #[serde(with = "duration::text")]
    pub backoff_max: Duration,
    /// CA certificates (PEM) to trust for an https:// collector; `None` =
    /// the system's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// This agent's certificate chain (PEM), for a collector that asks
    /// for one; it must name `host`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// The name checked on the collector's certificate; `None` = the URL's
    /// host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// Allow an http:// collector on another host.
    pub plaintext: bool,
    /// Where to serve Prometheus metrics (`GET /metrics`); `None` = off.
    pub metrics_listen: Option<SocketAddr>,
    /// How often each held suspect is asked for alone between polls, so
    /// that a hold's end is known to within it; zero: never. `None`: an
    /// eighth of `interval`, within 50 ms..=1 s ([`Config::follow_every`]).
    #[serde(
        default,
        with = "duration::option_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub follow_interval: Option<Duration>,
    /// Most held suspects asked for at each follow, the longest held
    /// first; the others wait for the next poll.
    pub follow_max: usize,
    /// How much of a socket owner's command line leaves the host.
    pub owner_args: OwnerArgs,
    /// Words, besides the built-in ones, that make an argument's value a
    /// secret to scrub.
    pub owner_scrub_words: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            collector: None,
            host: None,
            interval: Duration::from_secs(2),
            netns: Vec::new(),
            buffer: 64,
            batch_max: crate::run::DEFAULT_BATCH_MAX,
            backoff_max: Duration::from_secs(30),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_server_name: None,
            plaintext: false,
            metrics_listen: None,
            follow_interval: None,
            follow_max: 1000,
            owner_args: OwnerArgs::Scrubbed,
            owner_scrub_words: Vec::new(),
        }
    }
}

fn parse_netns(s: &str) -> Result<String, String> {
    s.parse::<NetnsSpec>().map(|_| s.to_string())
}

/// The flags; each one overrides the file's key of the same name, and its
/// help is the key's comment in the generated file. Serialized, they are the
/// flags given, nothing else (see `tcpstall_settings`).
#[derive(Debug, Clone, Default, Args, Serialize)]
pub struct Flags {
    /// TOML file with any of the settings below (see agent.example.toml).
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// The collector to stream to, as https://HOST:PORT (TLS) or
    /// http://HOST:PORT; `run` needs one.
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collector: Option<String>,
    /// The name this host reports, unique in the fleet [default: the
    /// hostname].
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// How often to poll every TCP connection [default: 2s].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(
        with = "duration::option_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
    /// Network namespace to read: a name under /run/netns, a path such as
    /// /proc/PID/ns/net, or `all`. Repeat for several; replaces the file's
    /// list [default: the agent's own].
    #[arg(long, value_name = "NAME|PATH|all", value_parser = parse_netns)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub netns: Vec<String>,
    /// Polls kept while cut off from the collector; when full the oldest
    /// batches are dropped, and the drops counted and reported in every
    /// batch and heartbeat [default: 64].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buffer: Option<usize>,
    /// Most samples, closings and absent flows in one batch: a poll with
    /// more is sent as several batches, so that the collector's buffers
    /// for this stream stay small; at most the collector's
    /// max_batch_samples [default: 128].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_max: Option<usize>,
    /// Ceiling of the jittered exponential backoff between reconnection
    /// attempts; no wait is longer [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(
        with = "duration::option_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub backoff_max: Option<Duration>,
    /// CA certificates (PEM) to trust for an https:// collector [default:
    /// the system's roots].
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// This agent's certificate chain (PEM), for a collector that asks
    /// for one (mutual TLS); it must name this host's --host.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// The name to check on the collector's certificate [default: the
    /// URL's host].
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// Allow an http:// (plaintext) collector on another host; loopback
    /// needs no flag.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub plaintext: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0: any free
    /// port, printed on stderr) [default: off].
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// How often each held suspect (a send queue unchanged between two
    /// polls) is asked for alone between polls, so that the end of its
    /// hold is known to within this, not a poll; 0s: never [default: an
    /// eighth of --interval, within 50ms..1s: 250ms at 2s].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    #[serde(
        with = "duration::option_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub follow_interval: Option<Duration>,
    /// Most held suspects asked for at each follow, the longest held
    /// first; the others wait for the next poll [default: 1000].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub follow_max: Option<usize>,
    /// How much of a socket owner's command line the agent sends:
    /// `scrubbed` (the values of arguments named like a secret, and URL
    /// passwords, become ********), `none` (the executable alone) or
    /// `full` [default: scrubbed].
    #[arg(long, value_name = "scrubbed|none|full", value_parser = OwnerArgs::parse)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_args: Option<OwnerArgs>,
    /// A word that makes an argument's value a secret, besides password,
    /// passwd, pwd, secret, token, api_key, apikey, access_key, auth,
    /// credential and private_key (compared without case, - read as _).
    /// Repeat for several; replaces the file's list.
    #[arg(long = "owner-scrub-word", value_name = "WORD")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub owner_scrub_words: Vec<String>,
}

/// Why the settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("{key}: {why}")]
    Invalid { key: &'static str, why: String },
}

fn invalid(key: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        why: why.into(),
    }
}

impl Config {
    /// Reads a TOML file; keys left out keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        Ok(tcpstall_settings::from_file(path)?)
    }

    /// Defaults, then the file, then the flags; then checks the result.
    pub fn load(flags: &Flags) -> Result<Config, ConfigError> {
        let c: Config = tcpstall_settings::load(flags.config.as_deref(), flags)?;
        c.validate()?;
        Ok(c)
    }

    /// Checks every value; `collector` may be unset (only `run` needs it).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.collector {
            check_collector(url)?;
            self.check_transport(url)?;
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid(
                "tls_cert",
                "tls_cert and tls_key (--tls-cert, --tls-key) go together",
            ));
        }
        if let Some(host) = &self.host {
            check_host(host)?;
        }
        if self.interval < MIN_INTERVAL || self.interval > MAX_INTERVAL {
            return Err(invalid(
                "interval",
                format!(
                    "{} is out of range {}..={}",
                    duration::format(self.interval),
                    duration::format(MIN_INTERVAL),
                    duration::format(MAX_INTERVAL)
                ),
            ));
        }
        self.netns_specs()?;
        if self.buffer == 0 || self.buffer > MAX_BUFFER {
            return Err(invalid(
                "buffer",
                format!("{} is out of range 1..={MAX_BUFFER}", self.buffer),
            ));
        }
        if self.batch_max == 0 || self.batch_max > MAX_BATCH_MAX {
            return Err(invalid(
                "batch_max",
                format!(
                    "{} is out of range 1..={MAX_BATCH_MAX} (--batch-max, batch_max)",
                    self.batch_max
                ),
            ));
        }
        if self.backoff_max < MIN_BACKOFF_MAX {
            return Err(invalid(
                "backoff_max",
                format!("at least {}", duration::format(MIN_BACKOFF_MAX)),
            ));
        }
        if let Some(f) = self.follow_interval {
            if !f.is_zero() && (f < MIN_FOLLOW || f >= self.interval) {
                return Err(invalid(
                    "follow_interval",
                    format!(
                        "{} must be 0s (off) or at least {} and shorter than the interval ({}) \
                         (--follow-interval, follow_interval)",
                        duration::format(f),
                        duration::format(MIN_FOLLOW),
                        duration::format(self.interval)
                    ),
                ));
            }
        }
        if self.follow_max == 0 || self.follow_max > MAX_FOLLOW_MAX {
            return Err(invalid(
                "follow_max",
                format!(
                    "{} is out of range 1..={MAX_FOLLOW_MAX} (--follow-max, follow_max)",
                    self.follow_max
                ),
            ));
        }
        Ok(())
    }

    /// What tells owners' command lines.
    pub fn scrubber(&self) -> Scrubber {
        Scrubber::new(self.owner_args, &self.owner_scrub_words)
    }

    /// How often held suspects are followed between polls; `None`: never
    /// (asked for, or an interval too short to leave room between polls).
    pub fn follow_every(&self) -> Option<Duration> {
        match self.follow_interval {
            Some(every) => (!every.is_zero() && every < self.interval).then_some(every),
            None => auto_follow(self.interval),
        }
    }
}

/// The follow interval for a poll `interval` when none is set: an eighth
/// of it, within [`AUTO_FOLLOW_MIN`]..=[`AUTO_FOLLOW_MAX`]; `None` when
/// that leaves no room between polls.
pub fn auto_follow(interval: Duration) -> Option<Duration> {
    let every = (interval / 8).clamp(AUTO_FOLLOW_MIN, AUTO_FOLLOW_MAX);
    (every < interval).then_some(every)
}

impl Config {
    /// TLS settings only with https://, and plaintext off this host only
    /// when asked for.
    fn check_transport(&self, url: &str) -> Result<(), ConfigError> {
        let tls = url.starts_with("https://");
        let any_tls_file = self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self.tls_key.is_some()
            || self.tls_server_name.is_some();
        if tls && self.plaintext {
            return Err(invalid(
                "plaintext",
                format!("`{url}` is https://: drop --plaintext (plaintext = true)"),
            ));
        }
        if !tls && any_tls_file {
            return Err(invalid(
                "collector",
                format!("`{url}`: TLS settings given for a plaintext URL; use https://"),
            ));
        }
        if !tls && !self.plaintext && !tcpstall_client::tls::is_loopback_url(url) {
            return Err(invalid(
                "collector",
                format!(
                    "`{url}` is plaintext to another host: use https:// (with --tls-ca, \
                     --tls-cert, --tls-key as the collector needs), or allow plaintext \
                     with --plaintext (plaintext = true)"
                ),
            ));
        }
        Ok(())
    }

    /// The client TLS settings when the collector is https://.
    pub fn client_tls(
        &self,
    ) -> Result<Option<tonic::transport::ClientTlsConfig>, tcpstall_client::tls::FileError> {
        match &self.collector {
            Some(url) if url.starts_with("https://") => {
                tcpstall_client::tls::client_config(&tcpstall_client::tls::ClientFiles {
                    ca: self.tls_ca.clone(),
                    cert: self.tls_cert.clone(),
                    key: self.tls_key.clone(),
                    server_name: self.tls_server_name.clone(),
                })
                .map(Some)
            }
            _ => Ok(None),
        }
    }

    /// The namespaces as `--netns` specs.
    pub fn netns_specs(&self) -> Result<Vec<NetnsSpec>, ConfigError> {
        self.netns
            .iter()
            .map(|s| s.parse::<NetnsSpec>().map_err(|why| invalid("netns", why)))
            .collect()
    }

    /// The collector's URL, which `run` cannot do without.
    pub fn require_collector(&self) -> Result<&str, ConfigError> {
        self.collector.as_deref().ok_or_else(|| {
            invalid(
                "collector",
                "not set: give --collector URL or `collector` in the config file",
            )
        })
    }

    /// The settings as a commented TOML file that parses back to them, each
    /// key under its flag's help: `print-config` prints it and
    /// agent.example.toml is it with the defaults.
    pub fn to_toml(&self) -> String {
        tcpstall_settings::to_toml::<Config, Flags>(self, HEADER, EXAMPLES)
    }
}

const HEADER: &str = "tcpstall-agent settings, as `tcpstall-agent print-config` prints them.
Every key is also a flag of `tcpstall-agent run` (--collector, --interval,
--backoff-max, ...): a flag beats this file, this file beats the defaults.
Durations read like 500ms, 3s, 1m.";

/// What the file shows, commented out, for a setting that is not set.
const EXAMPLES: &[(&str, &str)] = &[
    ("collector", "\"https://collector.example:7786\""),
    ("host", "\"web-17\""),
    ("tls_ca", "\"/etc/tcpstall/ca.crt\""),
    ("tls_cert", "\"/etc/tcpstall/agent.crt\""),
    ("tls_key", "\"/etc/tcpstall/agent.key\""),
    ("tls_server_name", "\"collector.example\""),
    ("metrics_listen", "\"127.0.0.1:7788\""),
    ("follow_interval", "\"250ms\""),
];

fn check_collector(url: &str) -> Result<(), ConfigError> {
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .map_err(|e| invalid("collector", format!("`{url}`: {e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(invalid(
                "collector",
                format!("`{url}`: scheme {other} is not supported (use https:// or http://)"),
            ))
        }
        None => {
            return Err(invalid(
                "collector",
                format!("`{url}`: give a URL such as https://collector:7786"),
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("collector", format!("`{url}`: no host")));
    }
    Ok(())
}

/// A host name as the collector accepts it.
pub fn check_host(host: &str) -> Result<(), ConfigError> {
    if host.is_empty() || host.len() > MAX_HOST {
        return Err(invalid("host", format!("1 to {MAX_HOST} bytes")));
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "host",
            format!("{host:?} has spaces or control characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_is_the_generated_defaults() {
        let committed = include_str!("../agent.example.toml");
        let generated = Config::default().to_toml();
        if std::env::var_os("TCPSTALL_BLESS").is_some() && committed != generated {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("agent.example.toml");
            std::fs::write(&path, &generated).expect("rewrite agent.example.toml");
            return;
        }
        assert_eq!(
            committed, generated,
            "agent.example.toml drifted: regenerate it with \
             `tcpstall-agent print-config > agent/agent.example.toml` \
             (or run this test with TCPSTALL_BLESS=1)"
        );
        let parsed: Config = toml::from_str(committed).expect("example parses");
        assert_eq!(parsed, Config::default());
        parsed.validate().expect("defaults are valid");
    }

    #[test]
    fn any_config_round_trips_through_its_toml() {
        let c = Config {
            collector: Some("http://198.18.0.1:7786".into()),
            host: Some("db-\"quoted\"".into()),
            interval: Duration::from_millis(1500),
            netns: vec!["lab1".into(), "/proc/1/ns/net".into(), "all".into()],
            buffer: 3,
            batch_max: 500,
            backoff_max: Duration::from_secs(90),
            metrics_listen: Some("[::1]:9102".parse().expect("addr")),
            ..Config::default()
        };
        let parsed: Config = toml::from_str(&c.to_toml()).expect("parses");
        assert_eq!(parsed, c);
        let c = Config {
            collector: Some("https://198.18.0.1:7786".into()),
            tls_ca: Some("/etc/ca \"x\".pem".into()),
            tls_cert: Some("/etc/a.crt".into()),
            tls_key: Some("/etc/a.key".into()),
            tls_server_name: Some("collector.example".into()),
            ..c
        };
        let parsed: Config = toml::from_str(&c.to_toml()).expect("parses");
        assert_eq!(parsed, c);
        let c = Config {
            collector: Some("http://198.18.0.1:7786".into()),
            plaintext: true,
            ..Config::default()
        };
        let parsed: Config = toml::from_str(&c.to_toml()).expect("parses");
        assert_eq!(parsed, c);
    }

    /// A file in a directory removed when the returned guard drops, also
    /// when the test fails.
    fn temp_file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let (_dir, path) = temp_file(
            "layers.toml",
            "interval = \"3s\"\nbuffer = 7\nnetns = [\"lab1\"]\ncollector = \"http://a:1\"\nplaintext = true\n",
        );
        let flags = Flags {
            config: Some(path.clone()),
            buffer: Some(9),
            ..Flags::default()
        };
        let c = Config::load(&flags).expect("load");
        assert_eq!(c.interval, Duration::from_secs(3), "from the file");
        assert_eq!(c.buffer, 9, "the flag wins");
        assert_eq!(c.netns, vec!["lab1".to_string()], "from the file");
        assert_eq!(c.backoff_max, Duration::from_secs(30), "the default");
        assert_eq!(c.require_collector().expect("set"), "http://a:1");

        let flags = Flags {
            netns: vec!["all".into()],
            collector: Some("http://b:2".into()),
            ..flags
        };
        let c = Config::load(&flags).expect("load");
        assert_eq!(c.netns, vec!["all".to_string()], "flags replace the list");
        assert_eq!(c.collector.as_deref(), Some("http://b:2"));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn bad_files_and_values_are_named() {
        let cases = [
            ("intervall = \"3s\"\n", "intervall"),
            ("interval = \"soon\"\n", "soon"),
            ("interval = \"10ms\"\n", "interval"),
            ("buffer = 0\n", "buffer"),
            ("batch_max = 0\n", "--batch-max"),
            ("batch_max = 8193\n", "batch_max"),
            ("batch_max = -1\n", "batch_max"),
            ("backoff_max = \"1ms\"\n", "backoff_max"),
            ("collector = \"grpc://x:1\"\n", "collector"),
            ("collector = \"x:1\"\n", "collector"),
            ("host = \"two words\"\n", "host"),
            ("host = \"\"\n", "host"),
            ("netns = [\"\"]\n", "netns"),
            ("metrics_listen = \"localhost\"\n", "metrics_listen"),
        ];
        for (i, (text, named)) in cases.iter().enumerate() {
            let (_dir, path) = temp_file(&format!("bad{i}.toml"), text);
            let flags = Flags {
                config: Some(path.clone()),
                ..Flags::default()
            };
            let err = Config::load(&flags).expect_err(text);
            assert!(err.to_string().contains(named), "{text:?} gave {err}");
            let _ = std::fs::remove_file(path);
        }
        let missing = Flags {
            config: Some("/nonexistent/tcpstall-agent.toml".into()),
            ..Flags::default()
        };
        let err = Config::load(&missing).expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent"), "{err}");
    }

    #[test]
    fn batch_max_is_a_flag_and_a_key() {
        let (_dir, path) = temp_file("batch.toml", "batch_max = 64\n");
        let from_file = Flags {
            config: Some(path.clone()),
            ..Flags::default()
        };
        assert_eq!(Config::load(&from_file).expect("load").batch_max, 64);
        let flag = Flags {
            batch_max: Some(1),
            ..from_file
        };
        assert_eq!(
            Config::load(&flag).expect("load").batch_max,
            1,
            "the flag wins"
        );
        assert_eq!(Config::default().batch_max, 128);
        let zero = Flags {
            batch_max: Some(0),
            ..Flags::default()
        };
        let err = Config::load(&zero).expect_err("0 refused");
        assert!(err.to_string().contains("--batch-max"), "{err}");
    }

    #[test]
    fn plaintext_leaves_this_host_only_when_asked() {
        let load = |collector: &str, plaintext: bool, tls_ca: Option<&str>| {
            Config::load(&Flags {
                collector: Some(collector.into()),
                plaintext,
                tls_ca: tls_ca.map(PathBuf::from),
                ..Flags::default()
            })
        };
        load("http://127.0.0.1:7786", false, None).expect("loopback needs no flag");
        load("http://localhost:7786", false, None).expect("loopback needs no flag");
        let err = load("http://198.18.0.1:7786", false, None).expect_err("refused");
        assert!(err.to_string().contains("--plaintext"), "{err}");
        assert!(err.to_string().contains("https://"), "{err}");
        load("http://198.18.0.1:7786", true, None).expect("asked for");
        load("https://198.18.0.1:7786", false, Some("/ca.pem")).expect("TLS");
        let err = load("https://198.18.0.1:7786", true, None).expect_err("both");
        assert!(err.to_string().contains("plaintext"), "{err}");
        let err =
            load("http://127.0.0.1:7786", false, Some("/ca.pem")).expect_err("TLS file, plain URL");
        assert!(err.to_string().contains("https://"), "{err}");
    }

    #[test]
    fn run_needs_a_collector() {
        let err = Config::default().require_collector().expect_err("unset");
        assert!(err.to_string().contains("--collector"), "{err}");
    }

    #[test]
    fn following_runs_at_an_eighth_of_the_interval_unless_told() {
        let ms = Duration::from_millis;
        let load = |flags: Flags| Config::load(&flags);
        let c = load(Flags::default()).expect("defaults");
        assert_eq!(c.follow_every(), Some(ms(250)));
        assert_eq!(c.follow_max, 1000);
        let fast = load(Flags {
            interval: Some(ms(500)),
            ..Flags::default()
        })
        .expect("fast");
        assert_eq!(
            fast.follow_every(),
            Some(ms(62) + Duration::from_micros(500))
        );
        let slow = load(Flags {
            interval: Some(Duration::from_secs(60)),
            ..Flags::default()
        })
        .expect("slow");
        assert_eq!(
            slow.follow_every(),
            Some(Duration::from_secs(1)),
            "at most 1s"
        );
        let off = load(Flags {
            follow_interval: Some(Duration::ZERO),
            ..Flags::default()
        })
        .expect("off");
        assert_eq!(off.follow_every(), None);
        let set = load(Flags {
            follow_interval: Some(ms(100)),
            follow_max: Some(5),
            ..Flags::default()
        })
        .expect("set");
        assert_eq!((set.follow_every(), set.follow_max), (Some(ms(100)), 5));
        // The file says it too, and the flag wins.
        let file: Config =
            toml::from_str("follow_interval = \"400ms\"\nfollow_max = 7\n").expect("parses");
        assert_eq!((file.follow_every(), file.follow_max), (Some(ms(400)), 7));
        for (bad, key) in [
            (
                Flags {
                    follow_interval: Some(Duration::from_secs(2)),
                    ..Flags::default()
                },
                "--follow-interval",
            ),
            (
                Flags {
                    follow_interval: Some(ms(1)),
                    ..Flags::default()
                },
                "--follow-interval",
            ),
            (
                Flags {
                    follow_max: Some(0),
                    ..Flags::default()
                },
                "--follow-max",
            ),
        ] {
            let err = load(bad).expect_err("refused");
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn owner_command_lines_are_scrubbed_unless_told_and_words_can_be_added() {
        let argv = ["app", "--db-password=x", "--session-id", "42"];
        let c = Config::load(&Flags::default()).expect("defaults");
        assert_eq!(c.owner_args, OwnerArgs::Scrubbed);
        assert_eq!(
            c.scrubber().command(&argv),
            "app --db-password=******** --session-id 42"
        );
        let file: Config =
            toml::from_str("owner_args = \"none\"\nowner_scrub_words = [\"session-id\"]\n")
                .expect("parses");
        assert_eq!(file.scrubber().command(&argv), "app");
        // The flags win over the file.
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "owner_args = \"none\"\n").expect("write");
        let c = Config::load(&Flags {
            config: Some(path),
            owner_args: Some(OwnerArgs::Scrubbed),
            owner_scrub_words: vec!["session_id".into()],
            ..Flags::default()
        })
        .expect("loads");
        assert_eq!(
            c.scrubber().command(&argv),
            "app --db-password=******** --session-id ********"
        );
        let full = Config {
            owner_args: OwnerArgs::Full,
            ..Config::default()
        };
        assert_eq!(full.scrubber().command(&argv), argv.join(" "));
        let back: Config = toml::from_str(&full.to_toml()).expect("round trip");
        assert_eq!(back.owner_args, OwnerArgs::Full);
        assert!(toml::from_str::<Config>("owner_args = \"some\"\n").is_err());
    }
}
