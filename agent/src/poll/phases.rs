//! How `run`'s poll reads one namespace: the first phase — the kernel
//! filter's walk where BPF is allowed, else sock_diag's base dump of every
//! connection — chooses the wanted sockets; the second asks for them by
//! exact request; when that would cost more than one dump of everything,
//! everything is dumped at once ([`full_dump`]).

use std::collections::HashSet;
use std::net::IpAddr;

use tcpstall_common::{SocketSample, TcpState};

use super::{opened, opened_by_arithmetic, PollStats};
use crate::diag::{
    socket, Base, Detail, DiagError, DiagSocket, Dump, Exact, ExactId, Family, ParseStats, Scope,
};
use crate::netns::Netns;
use crate::probe::filter::KernelFilter;

/// One namespace a poller reads, with what it learned of the kernel.
#[derive(Debug)]
pub(super) struct Target {
    pub(super) ns: Netns,
    pub(super) sock: DiagSocket,
    /// The kernel answers the legacy dump of both families at once (every
    /// Linux since 2.6 does; set to false the first time it refuses).
    pub(super) one_walk: bool,
    /// The kernel answers exact requests (false once it refused one).
    pub(super) exact: bool,
    /// Sockets wanted, and connections, in the last poll: when that was
    /// too many to ask for one by one, the next poll dumps everything at once.
    pub(super) last_wanted: usize,
    pub(super) last_connections: usize,
}


/// Ask for wanted sockets one by one while they are at most `EXACT_MIN`,
/// or at most one in `EXACT_FRACTION` of the connections; beyond, one full
/// dump is cheaper. Measured on 6.18 at 10,000 sockets (BENCHMARKS.md,
/// "Agent at rest"): an exact request costs about 4.5 µs, the full dump
/// 3.2 µs a socket and the base dump 1.6, so exact requests pay up to
/// about 0.35 of the connections when decided before the base dump (from
/// the previous poll) and 0.7 after it; a quarter is safe for both.
pub const EXACT_MIN: usize = 64;
pub const EXACT_FRACTION: usize = 4;

pub(super) fn exact_pays(wanted: usize, connections: usize) -> bool {
    wanted <= EXACT_MIN.max(connections / EXACT_FRACTION)
}

/// What the base message of `s` says.
pub(super) fn base_of(s: &SocketSample) -> Base {
    Base {
        state: s.state,
        local: s.local,
        remote: s.remote,
        cookie: s.cookie,
        wqueue: s.wqueue,
    }
}

/// Phase 2 found more wanted sockets than exact requests pay for, or the
/// kernel refused a request the two phases need.
pub(super) struct TooMany;

impl From<DiagError> for TooMany {
    fn from(_: DiagError) -> TooMany {
        TooMany
    }
}

/// Every socket of a namespace with everything, listeners kept apart: the
/// two per-family dumps of [`Poller::poll`].
pub(super) fn full_dump(
    target: &mut Target,
    samples: &mut Vec<SocketSample>,
    ids: &mut Vec<ExactId>,
    start: usize,
    listeners: &mut HashSet<(u64, u16, IpAddr)>,
    stats: &mut PollStats,
) -> Result<(), DiagError> {
    let inode = target.ns.inode;
    for family in Family::BOTH {
        let mut bad = 0;
        let dump = Dump::full(family);
        target
            .sock
            .dump_request(dump, &mut stats.parse, |mut s, payload| {
                if s.state == TcpState::Listen {
                    listeners.insert((inode, s.local.port(), s.local.ip()));
                    return;
                }
                // parse_socket read this far: never happens.
                let Some(id) = ExactId::of(payload) else {
                    bad += 1;
                    return;
                };
                s.netns = inode;
                s.opened = opened_by_arithmetic(&s);
                samples.push(s);
                ids.push(id);
            })?;
        stats.parse.malformed_messages += bad;
    }
    for s in samples[start..].iter_mut().filter(|s| s.opened.is_none()) {
        s.opened = Some(opened(s, listeners));
    }
    Ok(())
}

/// One base dump of `target`'s connections: counts them, and notes the
/// exact ids of the wanted ones.
pub(super) fn base_dump(
    target: &mut Target,
    dump: Dump,
    wanted: &mut impl FnMut(u64, &Base) -> bool,
    ids: &mut Vec<ExactId>,
    parse: &mut ParseStats,
) -> Result<usize, DiagError> {
    let inode = target.ns.inode;
    let (mut n, mut bad) = (0, 0);
    let res = target.sock.dump_payloads(dump, parse, |payload| {
        let Some(b) = Base::of(payload) else {
            bad += 1;
            return;
        };
        // Not asked for; a kernel that sends one anyway is not counted.
        if b.state == TcpState::Listen {
            return;
        }
        n += 1;
        if wanted(inode, &b) {
            match ExactId::of(payload) {
                Some(id) => ids.push(id),
                // Base::of read this far: never happens.
                None => bad += 1,
            }
        }
    });
    parse.malformed_messages += bad;
    res.map(|()| n)
}

/// The base dump of every connection, then the wanted ones by exact
/// request, into `samples`; returns the connections counted.
/// `Err(TooMany)` (with `samples` to be truncated by the caller) when a
/// full dump should be used instead.
#[allow(clippy::too_many_arguments)]
pub(super) fn two_phase(
    target: &mut Target,
    filter: Option<&mut KernelFilter>,
    wanted: &mut impl FnMut(u64, &Base) -> bool,
    samples: &mut Vec<SocketSample>,
    ids: &mut Vec<ExactId>,
    sample_ids: &mut Vec<ExactId>,
    listeners: &mut HashSet<(u64, u16, IpAddr)>,
    stats: &mut PollStats,
) -> Result<usize, TooMany> {
    if !target.exact {
        return Err(TooMany);
    }
    let inode = target.ns.inode;
    let before = samples.len();
    let base = |scope| Dump {
        scope,
        detail: Detail::Base,
        states: socket::CONNECTION_STATES,
    };
    let mut connections = None;
    // The listeners, when the first phase gave them.
    let mut listeners_known = false;
    if let Some(filter) = filter {
        match kernel_phase(target, filter, wanted, ids, listeners, &mut stats.parse) {
            Ok(n) => {
                connections = Some(n);
                listeners_known = true;
                stats.filtered += 1;
            }
            Err(e) => {
                stats.filter_failures += 1;
                tracing::warn!(netns = %target.ns.label, error = %e,
                    "the kernel filter failed; this poll dumps with sock_diag");
                ids.clear();
            }
        }
    }
    if connections.is_none() && target.one_walk {
        match base_dump(target, base(Scope::Both), wanted, ids, &mut stats.parse) {
            Ok(n) => connections = Some(n),
            Err(DiagError::Refused(e)) => {
                tracing::info!(netns = %target.ns.label, error = %e,
                    "the kernel refused the legacy dump of both families; dumping each");
                target.one_walk = false;
                ids.clear();
            }
            Err(e) => return Err(e.into()),
        }
    }
    let connections = match connections {
        Some(n) => n,
        None => {
            let mut n = 0;
            for family in Family::BOTH {
                let dump = base(Scope::One(family));
                n += base_dump(target, dump, wanted, ids, &mut stats.parse)?;
            }
            n
        }
    };
    target.last_wanted = ids.len();
    if !exact_pays(ids.len(), connections) {
        return Err(TooMany);
    }
    let mut gone = 0;
    let res = target
        .sock
        .get_exact(ids, &mut stats.parse, |i, answer| match answer {
            Exact::Found(mut s) => match ids.get(i) {
                Some(id) => {
                    s.netns = inode;
                    s.opened = opened_by_arithmetic(&s);
                    samples.push(s);
                    sample_ids.push(*id);
                }
                // get_exact answers the ids it was given: never happens.
                None => gone += 1,
            },
            Exact::Gone | Exact::Malformed => gone += 1,
        });
    match res {
        Ok(()) => {}
        Err(DiagError::Refused(e)) => {
            tracing::info!(netns = %target.ns.label, error = %e,
                "the kernel refused an exact sock_diag request; dumping everything instead");
            target.exact = false;
            return Err(TooMany);
        }
        Err(e) => return Err(e.into()),
    }
    stats.exact += ids.len();
    stats.gone_between_phases += gone;
    // The opener, for wanted sockets the arithmetic could not tell: by the
    // listeners, dumped only then (a listener dump skips the established
    // table, so it costs little).
    if !listeners_known && samples[before..].iter().any(|s| s.opened.is_none()) {
        let listen = |scope| Dump {
            scope,
            detail: Detail::Base,
            states: socket::LISTEN_STATES,
        };
        let scopes: &[Scope] = if target.one_walk {
            &[Scope::Both]
        } else {
            &[Scope::One(Family::V4), Scope::One(Family::V6)]
        };
        for scope in scopes {
            target
                .sock
                .dump_payloads(listen(*scope), &mut stats.parse, |payload| {
                    if let Some(b) = Base::of(payload) {
                        listeners.insert((inode, b.local.port(), b.local.ip()));
                    }
                })?;
        }
    }
    for s in samples[before..].iter_mut().filter(|s| s.opened.is_none()) {
        s.opened = Some(opened(s, listeners));
    }
    Ok(connections)
}

/// The first phase in the kernel: the filter's walk of `target`'s
/// namespace, its sockets read as the base dump's are (listeners noted,
/// the wanted ones' exact ids kept); returns the connections it saw.
pub(super) fn kernel_phase(
    target: &mut Target,
    filter: &mut KernelFilter,
    wanted: &mut impl FnMut(u64, &Base) -> bool,
    ids: &mut Vec<ExactId>,
    listeners: &mut HashSet<(u64, u16, IpAddr)>,
    parse: &mut ParseStats,
) -> Result<usize, crate::probe::bpf::ProbeError> {
    let inode = target.ns.inode;
    let (mut listening, mut bad) = (0u64, 0);
    let pass = filter.pass(&target.ns, |msg| {
        let (Some(b), Some(id)) = (Base::of(msg), ExactId::of(msg)) else {
            bad += 1;
            return;
        };
        if b.state == TcpState::Listen {
            listening += 1;
            listeners.insert((inode, b.local.port(), b.local.ip()));
        } else if wanted(inode, &b) {
            ids.push(id);
        }
    });
    parse.malformed_messages += bad;
    let pass = pass?;
    Ok(usize::try_from(pass.seen.saturating_sub(listening)).unwrap_or(usize::MAX))
}

