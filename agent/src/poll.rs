//! One poll: dump every TCP socket of every namespace asked for, keep the
//! connections, and use the listeners to tell which side opened each one.
//!
//! Two kinds of poll. [`Poller::poll`] reads everything about every socket
//! (`snapshot`). [`Poller::poll_wanted`] is `run`'s: it needs everything
//! only about the few sockets it may send, so it first dumps every
//! connection with the base message alone (4-tuple, state, cookie, queues:
//! about half the kernel's cost of a full dump, both families in one walk of
//! the table), decides from those bytes alone which sockets it wants, then
//! asks for those by their exact identity, or dumps everything when too
//! many are wanted for that to pay.
//!
//! The poller owns its sockets and buffers and reuses them, so memory stays
//! flat from one poll to the next.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tcpstall_common::{Opened, SocketSample, TcpState};

use crate::diag::{Base, DiagError, Exact, ExactId, Family, ParseStats};
use crate::netns::{self, Netns, NetnsError};
use crate::probe::filter::{KernelFilter, Wants};
use phases::{base_of, exact_pays, full_dump, two_phase, Target, TooMany};

/// What a poll counted besides the sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PollStats {
    /// Connections in the last poll (listeners excluded).
    pub connections: usize,
    /// Listening sockets in the last poll.
    pub listeners: usize,
    /// Namespaces whose dump failed in the last poll.
    pub failed_namespaces: usize,
    /// Sockets [`Poller::poll_wanted`] wanted (and returned) in the last poll.
    pub wanted: usize,
    /// Of them, asked for one by one (the rest came with a full dump).
    pub exact: usize,
    /// Wanted sockets that were gone by the time they were asked for.
    pub gone_between_phases: usize,
    /// Namespaces whose first phase the kernel filter did in the last poll
    /// (the others: sock_diag's base dump).
    pub filtered: usize,
    /// First phases the kernel filter failed, since the poller started:
    /// each fell back to sock_diag's base dump.
    pub filter_failures: u64,
    /// Everything the parser had to skip, since the poller started.
    pub parse: ParseStats,
}

/// Reads every TCP connection of a set of namespaces.
#[derive(Debug)]
pub struct Poller {
    targets: Vec<Target>,
    samples: Vec<SocketSample>,
    /// How to ask for each of `samples` alone ([`Poller::poll_wanted`]'s).
    ids: Vec<ExactId>,
    /// (namespace, port, address) of every listener; address unspecified
    /// for a wildcard bind.
    listeners: HashSet<(u64, u16, IpAddr)>,
    stats: PollStats,
    /// The poll's first phase in the kernel, where BPF is allowed.
    filter: Option<KernelFilter>,
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
                    one_walk: true,
                    exact: true,
                    last_wanted: 0,
                    last_connections: 0,
                })
            })
            .collect::<Result<Vec<_>, NetnsError>>()?;
        Ok(Poller {
            targets,
            samples: Vec::new(),
            ids: Vec::new(),
            listeners: HashSet::new(),
            stats: PollStats::default(),
            filter: None,
        })
    }

    /// Does [`Poller::poll_filtered_ids`]'s first phase in the kernel with
    /// `filter` (sock_diag's base dump stays the fallback at any failure).
    pub fn with_filter(mut self, filter: KernelFilter) -> Poller {
        self.filter = Some(filter);
        self
    }

    /// Whether the first phase may run in the kernel.
    pub fn filtered(&self) -> bool {
        self.filter.is_some()
    }

    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // the tests' and benchmarks'
    /// What the kernel filter counted, if there is one.
    pub fn filter_stats(&self) -> Option<crate::probe::filter::FilterStats> {
        self.filter.as_ref().map(|f| f.stats())
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

    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // the tests' and benchmarks'
    /// Whether [`Poller::poll_wanted`] still walks both families in one
    /// dump in every namespace (no kernel refused the legacy request).
    pub fn one_walk(&self) -> bool {
        self.targets.iter().all(|t| t.one_walk)
    }

    /// Polls every namespace. Returns the connections (no listeners) and
    /// the namespaces that failed, which a caller reports and carries on.
    pub fn poll(&mut self) -> (&[SocketSample], Vec<NamespaceFailure>) {
        self.samples.clear();
        self.ids.clear();
        self.listeners.clear();
        let mut failures = Vec::new();
        let Poller {
            targets,
            samples,
            listeners,
            stats,
            ..
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
        stats.wanted = 0;
        stats.exact = 0;
        stats.gone_between_phases = 0;
        (&self.samples, failures)
    }

    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // the tests' and benchmarks'
    /// Polls every namespace for `run`. Of every connection (listeners
    /// excluded) only the base message is read, and `wanted` is asked,
    /// with the namespace's inode, whether the socket is worth reading in
    /// full; only those are returned, read in full (tcp_info, memory,
    /// congestion control, opener). Returns them, how many connections
    /// the namespaces that answered hold, and the namespaces that failed.
    ///
    /// A wanted socket's sample is read after the base dump, whole, so it
    /// is one consistent reading; a wanted socket gone meanwhile is left
    /// out, as if the poll had come a moment later. A socket that gets a
    /// queue between the two phases is not wanted in this poll: the next
    /// one sees it queued, as if it had queued just after this one.
    pub fn poll_wanted(
        &mut self,
        wanted: impl FnMut(u64, &Base) -> bool,
    ) -> (&[SocketSample], usize, Vec<NamespaceFailure>) {
        let (samples, _, connections, failures) = self.poll_wanted_ids(wanted);
        (samples, connections, failures)
    }

    /// [`Poller::poll_wanted`], with how to ask the kernel for each
    /// returned socket alone ([`Poller::look`]), index for index.
    pub fn poll_wanted_ids(
        &mut self,
        wanted: impl FnMut(u64, &Base) -> bool,
    ) -> (&[SocketSample], &[ExactId], usize, Vec<NamespaceFailure>) {
        self.poll_ids(false, wanted)
    }

    /// [`Poller::poll_wanted_ids`] with its first phase in the kernel where
    /// the filter is loaded: the program writes out only the sockets with
    /// a send queue or named in `wants`, and `wanted` chooses among those.
    /// `wants` must name every socket `wanted` may want without a send
    /// queue (by cookie, 4-tuple, or local endpoint for those it only
    /// sees); the samples out are then those of sock_diag's path.
    pub fn poll_filtered_ids(
        &mut self,
        wants: &Wants,
        wanted: impl FnMut(u64, &Base) -> bool,
    ) -> (&[SocketSample], &[ExactId], usize, Vec<NamespaceFailure>) {
        // Maps out of step with `wants` would let through too little.
        let ready = match self.filter.as_mut().map(|f| f.set(wants)) {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                self.stats.filter_failures += 1;
                tracing::warn!(error = %e, "the kernel filter's maps could not be set; this poll dumps with sock_diag");
                false
            }
            None => false,
        };
        self.poll_ids(ready, wanted)
    }

    fn poll_ids(
        &mut self,
        use_filter: bool,
        mut wanted: impl FnMut(u64, &Base) -> bool,
    ) -> (&[SocketSample], &[ExactId], usize, Vec<NamespaceFailure>) {
        self.samples.clear();
        self.ids.clear();
        self.listeners.clear();
        let mut failures = Vec::new();
        let Poller {
            targets,
            samples,
            ids: sample_ids,
            listeners,
            stats,
            filter: loaded,
        } = self;
        let mut filter = if use_filter { loaded.as_mut() } else { None };
        stats.wanted = 0;
        stats.exact = 0;
        stats.gone_between_phases = 0;
        stats.filtered = 0;
        let mut connections = 0;
        let mut ids: Vec<ExactId> = Vec::new();
        for target in targets.iter_mut() {
            let before = samples.len();
            ids.clear();
            let res = if exact_pays(target.last_wanted, target.last_connections) {
                two_phase(
                    target,
                    filter.as_deref_mut(),
                    &mut wanted,
                    samples,
                    &mut ids,
                    sample_ids,
                    listeners,
                    stats,
                )
            } else {
                Err(TooMany)
            };
            let res = match res {
                Ok(n) => Ok(n),
                Err(TooMany) => {
                    // Everything at once, as `poll` does; then the wanted.
                    samples.truncate(before);
                    sample_ids.truncate(before);
                    let res = full_dump(target, samples, sample_ids, before, listeners, stats);
                    let n = samples.len() - before;
                    let inode = target.ns.inode;
                    let keep: Vec<bool> = samples
                        .iter()
                        .enumerate()
                        .map(|(i, s)| i < before || wanted(inode, &base_of(s)))
                        .collect();
                    let mut k = keep.iter();
                    samples.retain(|_| k.next().copied().unwrap_or(false));
                    let mut k = keep.iter();
                    sample_ids.retain(|_| k.next().copied().unwrap_or(false));
                    target.last_wanted = samples.len() - before;
                    res.map(|()| n)
                }
            };
            match res {
                Ok(n) => {
                    target.last_connections = n;
                    connections += n;
                    stats.wanted += target.last_wanted;
                }
                Err(source) => {
                    samples.truncate(before);
                    sample_ids.truncate(before);
                    failures.push(NamespaceFailure {
                        label: target.ns.label.clone(),
                        source,
                    });
                }
            }
        }
        stats.connections = connections;
        stats.listeners = listeners.len();
        stats.failed_namespaces = failures.len();
        (&self.samples, &self.ids, connections, failures)
    }

    /// Asks the kernel for a few sockets alone, each by its exact identity
    /// in the namespace `netns` names, and hands `on` each one's index in
    /// `ids` and the answer (a found socket's `netns` set; its opener as
    /// far as its counters tell). Costs a few microseconds a socket, not a
    /// walk of the table. Fails when the namespace is not read here or the
    /// kernel refuses exact requests.
    pub fn look(
        &mut self,
        netns: u64,
        ids: &[ExactId],
        mut on: impl FnMut(usize, Exact),
    ) -> Result<(), DiagError> {
        let Some(target) = self.targets.iter_mut().find(|t| t.ns.inode == netns) else {
            return Err(DiagError::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("namespace inode {netns} is not read by this poller"),
            )));
        };
        if !target.exact {
            return Err(DiagError::Refused(std::io::Error::from_raw_os_error(
                libc::EOPNOTSUPP,
            )));
        }
        target
            .sock
            .get_exact(ids, &mut self.stats.parse, |i, answer| match answer {
                Exact::Found(mut s) => {
                    s.netns = netns;
                    s.opened = opened_by_arithmetic(&s);
                    on(i, Exact::Found(s));
                }
                other => on(i, other),
            })
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

mod phases;

#[cfg(test)]
mod tests;
