//! Deeper probes than sock_diag, each optional at run time: tried at
//! start, announced, and reported as unavailable (with the reason, such as
//! "no permission") rather than failing the agent.
//!
//! | probe | gives | needs |
//! |---|---|---|
//! | [`bpf`]: BPF `iter/tcp` | absolute snd_una/snd_nxt/write_seq/rcv_nxt/copied_seq, rcv_wup, both windows and scales, SACK blocks sent and received, cork and nodelay | CAP_BPF + CAP_PERFMON, kernel BTF, kernel 5.12+, an agent built with clang |
//!
//! Records are joined to the sock_diag samples by socket cookie.

pub mod bpf;
pub mod json;
pub mod owner;
pub mod record;

use std::collections::HashMap;
use std::fmt;

use tcpstall_common::KernelTcp;

use crate::netns::Netns;
pub use bpf::{ProbeError, TcpIterProbe};

/// A probe's state, as announced at start.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum ProbeStatus {
    Available,
    /// Turned off by the operator.
    Off,
    /// Missing a capability: its facts are "unknown (no permission)".
    NoPermission(String),
    Unavailable(String),
}

impl fmt::Display for ProbeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeStatus::Available => f.write_str("available"),
            ProbeStatus::Off => f.write_str("off"),
            ProbeStatus::NoPermission(why) => write!(f, "unknown (no permission): {why}"),
            ProbeStatus::Unavailable(why) => write!(f, "unavailable: {why}"),
        }
    }
}

/// The deeper probes of one agent, and what the last pass read.
#[derive(Debug)]
pub struct Probes {
    bpf: Option<TcpIterProbe>,
    bpf_status: ProbeStatus,
    by_cookie: HashMap<u64, KernelTcp>,
}

impl Probes {
    /// Tries every probe (or none when `enabled` is false).
    pub fn start(enabled: bool) -> Probes {
        let (bpf, bpf_status) = if !enabled {
            (None, ProbeStatus::Off)
        } else {
            match TcpIterProbe::load() {
                Ok(p) => (Some(p), ProbeStatus::Available),
                Err(e) if e.is_permission() => (None, ProbeStatus::NoPermission(e.to_string())),
                Err(e) => (None, ProbeStatus::Unavailable(e.to_string())),
            }
        };
        Probes {
            bpf,
            bpf_status,
            by_cookie: HashMap::new(),
        }
    }

    /// Each probe by name with its status, for the start-up announcement.
    pub fn announce(&self) -> Vec<(&'static str, &ProbeStatus)> {
        vec![("bpf", &self.bpf_status)]
    }

    /// Runs the BPF pass over `namespaces`; returns the namespaces that
    /// failed, with why. Records stay until the next pass.
    pub fn pass(&mut self, namespaces: &[Netns]) -> Vec<(String, ProbeError)> {
        match self.bpf.as_mut() {
            Some(probe) => read_all(probe, namespaces, &mut self.by_cookie),
            None => Vec::new(),
        }
    }

    /// The BPF record of a socket from the last pass.
    pub fn bpf(&self, cookie: u64) -> Option<&KernelTcp> {
        self.by_cookie.get(&cookie)
    }

    /// What the BPF record parser skipped since start.
    pub fn bpf_stats(&self) -> Option<&record::RecordStats> {
        self.bpf.as_ref().map(|p| p.stats())
    }
}

/// One pass of the BPF probe over several namespaces, keyed by socket
/// cookie (cookies are unique across namespaces: one counter per host).
pub fn read_all(
    probe: &mut TcpIterProbe,
    namespaces: &[Netns],
    out: &mut HashMap<u64, KernelTcp>,
) -> Vec<(String, ProbeError)> {
    out.clear();
    let mut failures = Vec::new();
    for ns in namespaces {
        if let Err(e) = probe.read(ns, |t| {
            out.insert(t.cookie, t);
        }) {
            failures.push((ns.label.clone(), e));
        }
    }
    failures
}
