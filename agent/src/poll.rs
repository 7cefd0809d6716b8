//! One poll: dump every TCP socket of every namespace asked for, keep the
//! connections, and use the listeners to tell which side opened each one.
//!
//! The poller owns its sockets and buffers and reuses them, so memory stays
//! flat from one poll to the next.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tcpstall_common::{Opened, SocketSample, TcpState};

use crate::diag::{DiagError, DiagSocket, Family, ParseStats};
use crate::netns::{self, Netns, NetnsError};

/// What a poll counted besides the sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PollStats {
    /// Connections in the last poll (listeners excluded).
    pub connections: usize,
    /// Listening sockets in the last poll.
    pub listeners: usize,
    /// Namespaces whose dump failed in the last poll.
    pub failed_namespaces: usize,
    /// Everything the parser had to skip, since the poller started.
    pub parse: ParseStats,
}

#[derive(Debug)]
struct Target {
    ns: Netns,
    sock: DiagSocket,
}

/// Reads every TCP connection of a set of namespaces.
#[derive(Debug)]
pub struct Poller {
    targets: Vec<Target>,
    samples: Vec<SocketSample>,
    /// (namespace, port, address) of every listener; address unspecified
    /// for a wildcard bind.
    listeners: HashSet<(u64, u16, IpAddr)>,
    stats: PollStats,
}

/// A namespace that failed to dump in a poll; the others still count.
#[derive(Debug, thiserror::Error)]
#[error("network namespace {label}: {source}")]
pub struct NamespaceFailure {
    pub label: String,
    #[source]
    pub source: DiagError,
}

impl Poller {
    /// Opens one sock_diag socket in each namespace.
    pub fn new(namespaces: Vec<Netns>) -> Result<Poller, NetnsError> {
        let targets = namespaces
            .into_iter()
            .map(|ns| {
                Ok(Target {
                    sock: netns::open_diag(&ns)?,
                    ns,
                })
            })
            .collect::<Result<Vec<_>, NetnsError>>()?;
        Ok(Poller {
            targets,
            samples: Vec::new(),
            listeners: HashSet::new(),
            stats: PollStats::default(),
        })
    }

    /// The namespaces this poller reads.
    pub fn namespaces(&self) -> impl Iterator<Item = &Netns> {
        self.targets.iter().map(|t| &t.ns)
    }

    /// The label of a namespace by inode, for display.
    pub fn label(&self, inode: u64) -> &str {
        self.namespaces()
            .find(|ns| ns.inode == inode)
            .map(|ns| ns.label.as_str())
            .unwrap_or("?")
    }

    pub fn stats(&self) -> &PollStats {
        &self.stats
    }

    /// Polls every namespace. Returns the connections (no listeners) and
    /// the namespaces that failed, which a caller reports and carries on.
    pub fn poll(&mut self) -> (&[SocketSample], Vec<NamespaceFailure>) {
        self.samples.clear();
        self.listeners.clear();
        let mut failures = Vec::new();
        let Poller {
            targets,
            samples,
            listeners,
            stats,
        } = self;
        for target in targets.iter_mut() {
            let inode = target.ns.inode;
            for family in Family::BOTH {
                let before = samples.len();
                let res = target.sock.dump(family, &mut stats.parse, |mut s| {
                    if s.state == TcpState::Listen {
                        listeners.insert((inode, s.local.port(), s.local.ip()));
                    } else {
                        s.netns = inode;
                        // Exact where the kernel allows; the rest wait for
                        // the listeners below.
                        s.opened = opened_by_arithmetic(&s);
                        samples.push(s);
                    }
                });
                if let Err(source) = res {
                    samples.truncate(before);
                    failures.push(NamespaceFailure {
                        label: target.ns.label.clone(),
                        source,
                    });
                    break;
                }
            }
        }
        for s in samples.iter_mut().filter(|s| s.opened.is_none()) {
            s.opened = Some(opened(s, listeners));
        }
        stats.connections = samples.len();
        stats.listeners = listeners.len();
        stats.failed_namespaces = failures.len();
        (&self.samples, failures)
    }
}

/// Which side opened `s`.
///
/// First by arithmetic, where the kernel gives `bytes_sent` and
/// `bytes_retrans` (4.19+): every byte of sequence space this side used is
/// either acknowledged or in flight, so
/// `bytes_acked + in_flight - (bytes_sent - bytes_retrans)` counts what is
/// not data: the SYN if this side connected, plus the FIN once sent. That
/// holds whatever the application or the listener did since.
///
/// When the counters are missing or were read mid-change (the sum is not
/// 0 or 1), by the listeners: a socket whose local port has a listener in
/// its namespace was accepted; so was an established one with nothing in
/// `bytes_acked` (a connecting side has at least its SYN there). The one
/// case that fallback gets wrong: a socket accepted by a listener that has
/// since closed, with data acknowledged, on a kernel before 4.19.
pub fn opened(s: &SocketSample, listeners: &HashSet<(u64, u16, IpAddr)>) -> Opened {
    if let Some(o) = opened_by_arithmetic(s) {
        return o;
    }
    let port = s.local.port();
    let any4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let any6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    let listened = [s.local.ip(), any4, any6]
        .iter()
        .any(|ip| listeners.contains(&(s.netns, port, *ip)));
    let never_acked =
        s.info.as_ref().and_then(|i| i.bytes_acked()) == Some(0) && s.state != TcpState::SynSent;
    if listened || never_acked || matches!(s.state, TcpState::SynRecv | TcpState::NewSynRecv) {
        Opened::Passive
    } else {
        Opened::Active
    }
}

/// The SYN left over once data and FIN are accounted for; `None` when the
/// kernel does not give the counters or they do not add up.
pub fn opened_by_arithmetic(s: &SocketSample) -> Option<Opened> {
    let info = s.info.as_ref()?;
    let inflight = u64::from(s.wqueue.checked_sub(info.notsent_bytes()?)?);
    let unique_sent = info.bytes_sent()?.checked_sub(info.bytes_retrans()?)?;
    let used = info.bytes_acked()?.checked_add(inflight)?;
    // A queued FIN is the last byte of the queue: sent once nothing is
    // left unsent, and then counted in bytes_acked or in flight.
    let fin_sent = u64::from(
        matches!(
            s.state,
            TcpState::FinWait1 | TcpState::FinWait2 | TcpState::Closing | TcpState::LastAck
        ) && info.notsent_bytes() == Some(0),
    );
    match used.checked_sub(unique_sent)?.checked_sub(fin_sent)? {
        0 => Some(Opened::Passive),
        1 => Some(Opened::Active),
        _ => None,
    }
}
