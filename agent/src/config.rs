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
use tcpstall_common::{duration, MachineId};
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
    /// The collectors' URLs (http://HOST:PORT): one, or a list. No
    /// default: `run` needs one.
    pub collector: Option<Collectors>,
    /// The name this host reports; `None` = the hostname.
    pub host: Option<String>,
    /// This machine's stable identity; `None` = /etc/machine-id (or
    /// /var/lib/dbus/machine-id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
    /// How often to poll.
    #[serde(with = "duration::text")]
    pub interval: Duration,
    /// Network namespaces to read (as `--netns` takes them); empty = own.
    pub netns: Vec<String>,
    /// The host's own network namespace (as `--host-netns` takes it);
    /// `None` = PID 1's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_netns: Option<String>,
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
    /// Do the poll's first phase with sock_diag's base dump even where the
    /// BPF filter could do it in the kernel.
    pub no_kernel_filter: bool,
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
            machine_id: None,
            interval: Duration::from_secs(2),
            netns: Vec::new(),
            host_netns: None,
            buffer: 64,
            batch_max: crate::run::DEFAULT_BATCH_MAX,
            backoff_max: Duration::from_secs(30),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_server_name: None,
            plaintext: false,
            no_kernel_filter: false,
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

fn parse_host_netns(s: &str) -> Result<String, String> {
    match s.parse::<NetnsSpec>()? {
        NetnsSpec::All => Err("`all` is not one namespace: name the host's".to_string()),
        _ => Ok(s.to_string()),
    }
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
    /// http://HOST:PORT; `run` needs one. Repeat for several, or give a
    /// name with several addresses: the agent streams to one and moves to
    /// another when it goes (in the file: a URL or a list of URLs; the
    /// flags replace the file's list).
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub collector: Vec<String>,
    /// The name this host reports, unique in the fleet [default: the
    /// hostname].
    #[arg(long, value_name = "NAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// This machine's stable identity, sent beside --host: the collector
    /// lets one machine at a time report as a host name, and refuses
    /// another machine's agent that claims it. 1 to 128 printable ASCII
    /// characters without spaces [default: /etc/machine-id, else
    /// /var/lib/dbus/machine-id; none if neither reads].
    #[arg(long, value_name = "ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<String>,
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
    /// The host's own network namespace: a name under /run/netns or a path
    /// such as /proc/PID/ns/net. Containers' connections are translated
    /// (NAT) in it, so their conntrack entries are looked up there, and its
    /// IP forwarding says whether this host may translate other hosts'
    /// connections. Give it when the agent runs outside the host's
    /// namespace [default: PID 1's].
    #[arg(long, value_name = "NAME|PATH", value_parser = parse_host_netns)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_netns: Option<String>,
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
    /// Find the sockets worth reading with sock_diag's dump of every
    /// connection, not the BPF program that picks them in the kernel
    /// (used where BPF is allowed; sock_diag is the fallback anyway).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_kernel_filter: bool,
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
        let mut c: Config = tcpstall_settings::load(flags.config.as_deref(), flags)?;
        // One URL given as a flag reads as one, not as a list of one.
        if let Some(Collectors::Several(urls)) = &mut c.collector {
            if let [one] = urls.as_mut_slice() {
                c.collector = Some(Collectors::One(std::mem::take(one)));
            }
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks every value; `collector` may be unset (only `run` needs it).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(collectors) = &self.collector {
            let urls = collectors.urls();
            if urls.is_empty() {
                return Err(invalid("collector", "an empty list: give at least one URL"));
            }
            for url in urls {
                check_collector(url)?;
                self.check_transport(url)?;
            }
            // One TLS setting serves every collector, so all are https://
            // or none is.
            let tls = |u: &String| u.starts_with("https://");
            if urls.iter().any(tls) && !urls.iter().all(tls) {
                return Err(invalid(
                    "collector",
                    format!(
                        "{} mix https:// and http://: give all one scheme",
                        urls.join(", ")
                    ),
                ));
            }
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
        self.configured_machine_id()?;
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
        self.host_netns_spec()?;
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

    /// The machine id set by flag or file, checked; `None` when not set
    /// (then it is read from the host: [`crate::hello::machine_id`]).
    pub fn configured_machine_id(&self) -> Result<Option<MachineId>, ConfigError> {
        self.machine_id
            .as_deref()
            .map(|s| {
                MachineId::new(s).map_err(|why| {
                    invalid("machine_id", format!("{why} (--machine-id, machine_id)"))
                })
            })
            .transpose()
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
        match self.collector.as_ref().and_then(|c| c.urls().first()) {
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

    /// The host's namespace as a spec; `None`: PID 1's.
    pub fn host_netns_spec(&self) -> Result<Option<NetnsSpec>, ConfigError> {
        self.host_netns
            .as_deref()
            .map(|s| parse_host_netns(s).and_then(|s| s.parse::<NetnsSpec>()))
            .transpose()
            .map_err(|why| invalid("host_netns", why))
    }

    /// The namespaces as `--netns` specs.
    pub fn netns_specs(&self) -> Result<Vec<NetnsSpec>, ConfigError> {
        self.netns
            .iter()
            .map(|s| s.parse::<NetnsSpec>().map_err(|why| invalid("netns", why)))
            .collect()
    }

    /// The collectors' URLs (one at least), which `run` cannot do
    /// without.
    pub fn require_collectors(&self) -> Result<&[String], ConfigError> {
        self.collector
            .as_ref()
            .map(Collectors::urls)
            .filter(|urls| !urls.is_empty())
            .ok_or_else(|| {
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
    (
        "collector",
        "[\"https://collector-1.example:7786\", \"https://collector-2.example:7786\"]",
    ),
    ("host", "\"web-17\""),
    ("machine_id", "\"4c4c4544004d3510804ec4c04f4d3232\""),
    ("tls_ca", "\"/etc/tcpstall/ca.crt\""),
    ("tls_cert", "\"/etc/tcpstall/agent.crt\""),
    ("tls_key", "\"/etc/tcpstall/agent.key\""),
    ("tls_server_name", "\"collector.example\""),
    ("metrics_listen", "\"127.0.0.1:7788\""),
    ("follow_interval", "\"250ms\""),
];

/// The `collector` setting: one URL or a list of them. In the file,
/// `collector = "URL"` or `collector = ["URL", ...]`; the flag, repeated,
/// gives a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Collectors {
    One(String),
    Several(Vec<String>),
}

impl Collectors {
    /// The URLs, in the order given.
    pub fn urls(&self) -> &[String] {
        match self {
            Collectors::One(url) => std::slice::from_ref(url),
            Collectors::Several(urls) => urls,
        }
    }
}

impl From<&str> for Collectors {
    fn from(url: &str) -> Collectors {
        Collectors::One(url.to_string())
    }
}

impl<'de> Deserialize<'de> for Collectors {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Collectors, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Collectors;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a collector URL or a list of them")
            }
            fn visit_str<E: serde::de::Error>(self, url: &str) -> Result<Collectors, E> {
                Ok(Collectors::One(url.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Collectors, A::Error> {
                let mut urls = Vec::new();
                while let Some(url) = seq.next_element::<String>()? {
                    urls.push(url);
                }
                Ok(Collectors::Several(urls))
            }
        }
        d.deserialize_any(Visitor)
    }
}

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
mod tests;
