//! The floor of `agent-idle`: CPU per poll, in this process, of tcpstall's
//! two polls, of raw sock_diag dumps with and without extensions, of
//! exact requests, and of conntrack lookups, over the namespace the agent
//! read.

use std::time::Duration;

use anyhow::bail;
use nix::sys::resource::UsageWho;
use tcpstall_agent::conntrack::Conntrack;
use tcpstall_agent::diag::socket::{ALL_STATES, CONNECTION_STATES};
use tcpstall_agent::diag::{Detail, DiagSocket, Dump, ExactId, Family, ParseStats, Scope};
use tcpstall_agent::netns::{self, Netns};
use tcpstall_agent::probe::filter::{KernelFilter, Wants};
use tcpstall_agent::Poller;
use tcpstall_common::{FlowTuple, TcpState};

use super::IdleArgs;
use crate::lab::nap;
use crate::measure::{timed, Summary};

/// The kinds of poll the floor compares.
pub(super) const FLOOR_KINDS: [&str; 10] = [
    "tcpstall `Poller::poll`: every socket with everything (`snapshot`; the agent's poll before)",
    "tcpstall `Poller::poll_wanted`: base message of every socket, the queued ones in full (the agent's poll now)",
    "raw dump, INFO+MEMINFO+SKMEMINFO+CONG, one dump per family (`Poller::poll`'s request)",
    "raw dump, INFO+MEMINFO+SKMEMINFO+CONG, both families in one legacy dump",
    "raw dump, no extensions, one dump per family",
    "raw dump, no extensions, both families in one legacy dump, listeners excluded (`poll_wanted`'s first phase)",
    "raw dump of the IPv6 family alone (no IPv6 sockets here: the table walk)",
    "exact requests, INFO+MEMINFO+SKMEMINFO+CONG, one per socket (`--floor-exact` sockets)",
    "conntrack lookups (ctnetlink GET), one per socket's flow (the same sockets)",
    "tcpstall `Poller::poll_filtered_ids`: the first phase in the kernel (BPF filter), the queued ones in full (the agent's poll where BPF is allowed)",
];

/// CPU per poll of each of [`FLOOR_KINDS`] over the same sockets.
#[derive(Debug)]
pub(super) struct Floor {
    pub(super) cpu: [Summary; FLOOR_KINDS.len()],
    /// Bytes received (raw dumps), sockets (polls), answers (exact).
    pub(super) out: [usize; FLOOR_KINDS.len()],
}

/// One round runs each kind once, in a rotating order; rounds are one
/// interval apart, as the agent's polls are, so that each starts with the
/// caches as cold as the agent finds them (back to back, a dump of 20,000
/// sockets finds much of the previous one's data still cached).
pub(super) fn floor(args: &IdleArgs, polled: &[Netns]) -> anyhow::Result<Floor> {
    let [ns] = polled else {
        bail!("the floor reads one namespace");
    };
    let spacing = args.interval;
    let mut full = Poller::new(polled.to_vec())?;
    let mut wanted = Poller::new(polled.to_vec())?;
    let mut filtered = Poller::new(polled.to_vec())?.with_filter(KernelFilter::load()?);
    let nothing = Wants::default();
    let mut sock = netns::open_diag(ns)?;
    let dump = |scope, detail, states| Dump {
        scope,
        detail,
        states,
    };
    // The sockets the exact requests ask for.
    let mut ids: Vec<ExactId> = Vec::new();
    let mut flows: Vec<FlowTuple> = Vec::new();
    let mut stats = ParseStats::default();
    sock.dump_request(
        dump(Scope::Both, Detail::Base, CONNECTION_STATES),
        &mut stats,
        |s, payload| {
            if ids.len() < args.floor_exact && s.state == TcpState::Established {
                ids.extend(ExactId::of(payload));
                flows.push(FlowTuple::new(s.local, s.remote));
            }
        },
    )?;
    let mut ct = netns::run_in(ns, Conntrack::open)??;
    let mut cpu: [Vec<Duration>; FLOOR_KINDS.len()] = Default::default();
    let mut out = [0usize; FLOOR_KINDS.len()];
    let n = FLOOR_KINDS.len();
    // A warm-up round, then `polls` measured ones.
    for round in 0..=args.floor_polls {
        for k in 0..n {
            let kind = (round + k) % n;
            if k > 0 {
                nap(spacing / n as u32)?;
            }
            let (run, got) = timed(UsageWho::RUSAGE_SELF, || {
                let raw = |sock: &mut DiagSocket, dumps: &[Dump]| -> anyhow::Result<usize> {
                    let mut bytes = 0;
                    for d in dumps {
                        bytes += sock.dump_request_raw(*d)?;
                    }
                    Ok(bytes)
                };
                let per_family =
                    |detail| Family::BOTH.map(|f| dump(Scope::One(f), detail, ALL_STATES));
                match kind {
                    0 | 1 => {
                        let (n, failures) = if kind == 0 {
                            let (samples, failures) = full.poll();
                            (samples.len(), failures)
                        } else {
                            let (_, n, failures) = wanted.poll_wanted(|_, b| b.wqueue > 0);
                            (n, failures)
                        };
                        match failures.into_iter().next() {
                            Some(e) => Err(e.into()),
                            None => Ok(n),
                        }
                    }
                    2 => raw(&mut sock, &per_family(Detail::Full)),
                    3 => raw(&mut sock, &[dump(Scope::Both, Detail::Full, ALL_STATES)]),
                    4 => raw(&mut sock, &per_family(Detail::Base)),
                    5 => raw(
                        &mut sock,
                        &[dump(Scope::Both, Detail::Base, CONNECTION_STATES)],
                    ),
                    6 => raw(&mut sock, &[Dump::full(Family::V6)]),
                    9 => {
                        let (_, _, n, failures) =
                            filtered.poll_filtered_ids(&nothing, |_, b| b.wqueue > 0);
                        match failures.into_iter().next() {
                            Some(e) => Err(e.into()),
                            None => Ok(n),
                        }
                    }
                    8 => {
                        let mut asked = 0;
                        for f in &flows {
                            ct.lookup(*f)?;
                            asked += 1;
                        }
                        Ok(asked)
                    }
                    _ => {
                        let mut found = 0;
                        sock.get_exact(&ids, &mut stats, |_, a| {
                            found +=
                                usize::from(matches!(a, tcpstall_agent::diag::Exact::Found(_)));
                        })?;
                        Ok(found)
                    }
                }
            })?;
            if round > 0 {
                cpu[kind].push(run.cpu.total());
                out[kind] = got;
            }
        }
        nap(spacing / n as u32)?;
    }
    Ok(Floor {
        cpu: cpu.map(Summary::of),
        out,
    })
}
