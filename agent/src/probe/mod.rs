//! Deeper probes than sock_diag, each optional at run time: tried at
//! start, announced, and reported as unavailable (with the reason, such as
//! "no permission") rather than failing the agent.
//!
//! | probe | gives | needs |
//! |---|---|---|
//! | [`bpf`]: BPF `iter/tcp` | absolute snd_una/snd_nxt/write_seq/rcv_nxt/copied_seq, rcv_wup, both windows and scales, SACK blocks sent and received, cork and nodelay | CAP_BPF + CAP_PERFMON, kernel BTF, kernel 5.12+, an agent built with clang |
//! | [`owner`]: /proc/PID/fd walk, pidfd_getfd + getsockopt | the owning process (pid, command line, systemd unit or cgroup); cork and nodelay of suspect sockets where BPF is not allowed | CAP_SYS_PTRACE for other users' and more privileged processes, the host's PID namespace, kernel 5.6+ |
//!
//! Records are joined to the sock_diag samples by socket cookie.

pub mod bpf;
pub mod filter;
pub mod json;
pub mod owner;
pub mod record;
pub mod scrub;

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use tcpstall_common::{FactSource, KernelTcp, OwnerMissing, ProbeSet, ProcessOwner};
use tcpstall_proto::convert;

use crate::netns::Netns;
pub use bpf::{ProbeError, TcpIterProbe};
use owner::OwnerIndex;
use scrub::Scrubber;

/// TCP_CORK and TCP_NODELAY of one socket, and the probe that read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flags {
    pub cork: bool,
    pub nodelay: bool,
    pub source: FactSource,
}

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
    /// Owners of suspect sockets, for the getsockopt fallback.
    owners: Option<OwnerIndex>,
    getsockopt_status: ProbeStatus,
}

/// How often the owner index may walk /proc again on a miss.
pub const OWNER_RESCAN: Duration = Duration::from_secs(30);

impl Probes {
    /// Tries every probe (or none when `enabled` is false), owners'
    /// command lines scrubbed of secrets.
    pub fn start(enabled: bool) -> Probes {
        Self::start_scrubbed(enabled, Scrubber::default())
    }

    /// [`Probes::start`], owners' command lines told as `scrubber` says.
    pub fn start_scrubbed(enabled: bool, scrubber: Scrubber) -> Probes {
        let (bpf, bpf_status) = if !enabled {
            (None, ProbeStatus::Off)
        } else {
            match TcpIterProbe::load() {
                Ok(p) => (Some(p), ProbeStatus::Available),
                Err(e) if e.is_permission() => (None, ProbeStatus::NoPermission(e.to_string())),
                Err(e) => (None, ProbeStatus::Unavailable(e.to_string())),
            }
        };
        // Whether the kernel has pidfds shows at once (ENOSYS before 5.6);
        // borrowing other processes' descriptors needs CAP_SYS_PTRACE.
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let getsockopt_status = if !enabled {
            ProbeStatus::Off
        } else if let Err(e) = rustix::process::pidfd_open(
            rustix::process::getpid(),
            rustix::process::PidfdFlags::empty(),
        ) {
            ProbeStatus::Unavailable(format!("pidfd_open: {e}"))
        } else if !has_effective_cap(&status, CAP_SYS_PTRACE) {
            ProbeStatus::NoPermission("pidfd_getfd needs CAP_SYS_PTRACE".into())
        } else {
            ProbeStatus::Available
        };
        Probes {
            bpf,
            bpf_status,
            by_cookie: HashMap::new(),
            owners: enabled.then(|| OwnerIndex::new(OWNER_RESCAN).scrubbed_by(scrubber)),
            getsockopt_status,
        }
    }

    /// Each probe by name with its status, for the start-up announcement.
    pub fn announce(&self) -> Vec<(&'static str, &ProbeStatus)> {
        vec![
            ("bpf", &self.bpf_status),
            ("getsockopt", &self.getsockopt_status),
        ]
    }

    /// Whether the owner lookup (the /proc walk) is on.
    pub fn owners_on(&self) -> bool {
        self.owners.is_some()
    }

    /// Which probes work, as the Hello tells the collector.
    pub fn found(&self) -> ProbeSet {
        ProbeSet {
            sock_diag: true,
            bpf_iter: self.bpf_status == ProbeStatus::Available,
            getsockopt: self.getsockopt_status == ProbeStatus::Available,
        }
    }

    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // the tests' and benchmarks'
    /// The cork of a socket and where it came from: the last BPF pass,
    /// else (for a suspect, `suspect` true) its owner's descriptor; `None`
    /// = unknown.
    pub fn cork(&mut self, cookie: u64, inode: u32, suspect: bool) -> Option<(bool, FactSource)> {
        self.flags(cookie, inode, suspect)
            .map(|f| (f.cork, f.source))
    }

    /// Cork and nodelay of a socket, read the same way as [`Self::cork`].
    pub fn flags(&mut self, cookie: u64, inode: u32, suspect: bool) -> Option<Flags> {
        if let Some(k) = self.by_cookie.get(&cookie) {
            return Some(Flags {
                cork: k.cork(),
                nodelay: k.nodelay(),
                source: FactSource::Bpf,
            });
        }
        if !suspect || self.getsockopt_status != ProbeStatus::Available {
            return None;
        }
        let index = self.owners.as_mut()?;
        match index.lookup(u64::from(inode)) {
            owner::OwnerLookup::Found(o) => owner::cork_by_getsockopt(&o, u64::from(inode))
                .map(|(cork, nodelay)| Flags {
                    cork,
                    nodelay,
                    source: FactSource::Getsockopt,
                })
                .map_err(|e| tracing::debug!(pid = o.pid, error = %e, "cork unknown"))
                .ok(),
            _ => None,
        }
    }

    /// The process holding the socket with this inode, or why it is
    /// unknown. Walks /proc only on a miss, at most once per
    /// [`OWNER_RESCAN`].
    pub fn owner(&mut self, inode: u32) -> Result<ProcessOwner, OwnerMissing> {
        let Some(index) = self.owners.as_mut() else {
            return Err(OwnerMissing::Off);
        };
        match index.lookup(u64::from(inode)) {
            // What the collector would refuse is left out, not sent.
            owner::OwnerLookup::Found(o) => Ok(ProcessOwner {
                pid: o.pid,
                command: o.command,
                unit: o.unit.filter(|u| u.len() <= convert::MAX_UNIT),
                cgroup: o.cgroup.filter(|c| c.len() <= convert::MAX_CGROUP),
            }),
            owner::OwnerLookup::None => Err(OwnerMissing::NoOwner),
            owner::OwnerLookup::NoPermission => Err(OwnerMissing::NoPermission),
        }
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
}

/// capability.h's number for CAP_SYS_PTRACE.
pub const CAP_SYS_PTRACE: u32 = 19;

/// Whether the `CapEff:` line of a /proc/PID/status holds `cap`.
pub fn has_effective_cap(status: &str, cap: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| cap < 64 && mask & (1 << cap) != 0)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_capabilities_from_status() {
        let root = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert!(has_effective_cap(root, CAP_SYS_PTRACE));
        let bpf_only = "CapEff:\t000000c000000000\n"; // CAP_PERFMON 38, CAP_BPF 39
        assert!(!has_effective_cap(bpf_only, CAP_SYS_PTRACE));
        assert!(has_effective_cap(bpf_only, 39));
        assert!(!has_effective_cap("CapEff:\tzz\n", 0));
        assert!(!has_effective_cap("", 0));
    }
}
