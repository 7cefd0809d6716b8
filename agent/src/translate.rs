//! Translations through NAT for what the agent sends (issue 23): a sent
//! socket's conntrack entry when a NAT rule rewrote its connection, what
//! this host knows of a watched flow it has no socket for, and the answers
//! to the collector's Translate requests.
//!
//! [`Tables`] holds one ctnetlink socket ([`Conntrack`]) per namespace:
//! the host's own (PID 1's: a container's connection is translated there,
//! not in the container) and every namespace the agent reads. One that
//! cannot be read (no ctnetlink in the kernel, not permitted) is said once
//! in the log, counted, and left out: the agent goes on without its
//! translations. [`Translator`], owned by the poll thread, decides what to
//! ask, always one flow at a time, never a table dump:
//!
//! - **A sent sample** (suspect, released, watched): its flow in its own
//!   namespace's table, then the host's; attached only when translated.
//!   Once per socket (namespace inode, cookie) for as long as it is sent:
//!   a NAT mapping is fixed by a connection's first packet, so the answer
//!   never changes. The cache keeps the sockets the last poll sent, and
//!   at most [`MAX_CACHED`].
//! - **A watched flow with no socket here** `W`: `W` reversed (the packets
//!   the far end sends, as they arrive) in the host's table and every
//!   other; and, counted during the poll's base dump ([`Endpoints`]), the
//!   remote of the one socket on `W`'s local endpoint. A [`Lookup`] goes
//!   beside the absent entry when either says something, once while it
//!   says the same.
//! - **A Translate request**: the flow and its reverse in every table,
//!   answered at the next poll, found or not, exactly once.
//!
//! A poll (or a follow) makes at most [`LOOKUP_BUDGET`] requests; what is
//! left waits for the next. A table that did not answer in time is not
//! asked again until the next poll.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;

use tcpstall_common::{normalize_addr, FlowTuple, Lookup, TcpState, Translation};

use crate::conntrack::{Conntrack, ConntrackError};
use crate::diag::Base;
use crate::netns::{self, Netns, NetnsError};
use crate::suspects::{Selection, SocketKey};

/// Most ctnetlink requests in one poll or follow. A request costs a few
/// microseconds; this bounds a poll's lookups to a few milliseconds
/// whatever is due (a thousand new suspects at once, many namespaces).
pub const LOOKUP_BUDGET: usize = 1024;
/// Most sockets whose translation is remembered.
pub const MAX_CACHED: usize = 16_384;
/// Most Translate requests waiting for the next poll.
pub const MAX_ASKED: usize = 1024;

/// The flow every table is asked about when opened: no connection has it,
/// so an answer (that there is no such entry) says the table can be read.
fn probe_flow() -> FlowTuple {
    let nowhere = SocketAddr::from(([0, 0, 0, 0], 0));
    FlowTuple::new(nowhere, nowhere)
}

/// Why a namespace's table cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("opening a ctnetlink socket: {0}")]
    Open(io::Error),
    #[error("a first lookup failed: {0}")]
    Probe(ConntrackError),
}

/// Where flows are looked up, by namespace inode: [`Tables`], or tables
/// held in memory by the unit tests.
pub trait Conntracks {
    /// The host's own namespace.
    fn host(&self) -> u64;
    /// The namespaces whose table can be read, the host's first.
    fn readable(&self) -> &[u64];
    /// The entry holding `flow` (either direction) in `netns`'s table;
    /// `None` when that table is not asked (unreadable, or it did not
    /// answer earlier in this poll).
    fn lookup(
        &mut self,
        netns: u64,
        flow: FlowTuple,
    ) -> Option<Result<Option<Translation>, ConntrackError>>;
    /// A poll or a follow begins.
    fn begin(&mut self) {}
}

/// One readable table.
#[derive(Debug)]
struct Table {
    inode: u64,
    label: String,
    ct: Conntrack,
    /// It did not answer in time in this poll.
    stalled: bool,
}

/// The ctnetlink sockets: the host's namespace and every namespace read.
#[derive(Debug)]
pub struct Tables {
    host: u64,
    readable: Vec<u64>,
    tables: Vec<Table>,
    unreadable: usize,
}

impl Tables {
    /// Opens a table in `host` and in each of `read` (each namespace
    /// once), asking each a first question. Those that cannot be read are
    /// said once in the log and left out. Blocking: it enters namespaces.
    pub fn open(host: &Netns, read: &[Netns]) -> Tables {
        let mut seen = HashSet::new();
        let mut tables = Vec::new();
        let mut failed: Vec<(String, TableError)> = Vec::new();
        for ns in std::iter::once(host).chain(read) {
            if !seen.insert(ns.inode) {
                continue;
            }
            match open_table(ns) {
                Ok(ct) => tables.push(Table {
                    inode: ns.inode,
                    label: ns.label.clone(),
                    ct,
                    stalled: false,
                }),
                Err(e) => {
                    tracing::debug!(netns = %ns.label, error = %e, "connection tracking cannot be read");
                    failed.push((ns.label.clone(), e));
                }
            }
        }
        if let Some((label, error)) = failed.first() {
            tracing::warn!(
                netns = %label,
                %error,
                unreadable = failed.len(),
                namespaces = seen.len(),
                "connection tracking cannot be read: flows of these namespaces are sent without their NAT translations"
            );
        } else {
            tracing::info!(namespaces = seen.len(), "connection tracking readable");
        }
        Tables {
            host: host.inode,
            readable: tables.iter().map(|t| t.inode).collect(),
            tables,
            unreadable: failed.len(),
        }
    }

    /// Namespaces whose table could not be opened.
    pub fn unreadable(&self) -> usize {
        self.unreadable
    }
}

/// A ctnetlink socket in `ns` that answered a first lookup.
fn open_table(ns: &Netns) -> Result<Conntrack, TableError> {
    let mut ct = netns::run_in(ns, Conntrack::open)?.map_err(TableError::Open)?;
    ct.lookup(probe_flow()).map_err(TableError::Probe)?;
    Ok(ct)
}

impl Conntracks for Tables {
    fn host(&self) -> u64 {
        self.host
    }

    fn readable(&self) -> &[u64] {
        &self.readable
    }

    fn lookup(
        &mut self,
        netns: u64,
        flow: FlowTuple,
    ) -> Option<Result<Option<Translation>, ConntrackError>> {
        let table = self
            .tables
            .iter_mut()
            .find(|t| t.inode == netns && !t.stalled)?;
        let answer = table.ct.lookup(flow);
        if let Err(ConntrackError::TimedOut) = answer {
            tracing::debug!(netns = %table.label, "ctnetlink did not answer in time; not asked again in this poll");
            table.stalled = true;
        }
        Some(answer)
    }

    fn begin(&mut self) {
        for t in &mut self.tables {
            t.stalled = false;
        }
    }
}

/// Whether the host forwards packets: IPv4 or IPv6 forwarding on in
/// `host`'s namespace (read from its own /proc/sys/net, which shows the
/// namespace of the thread that reads it).
pub fn forwards(host: &Netns) -> Result<bool, NetnsError> {
    netns::run_in(host, || {
        [
            "/proc/sys/net/ipv4/ip_forward",
            "/proc/sys/net/ipv6/conf/all/forwarding",
        ]
        .iter()
        .any(|path| std::fs::read_to_string(path).is_ok_and(|text| switched_on(&text)))
    })
}

/// A sysctl's text says on: a number other than 0.
fn switched_on(text: &str) -> bool {
    text.trim().parse::<u32>().is_ok_and(|v| v != 0)
}

/// Who holds a local endpoint, as far as a poll has counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holders {
    Nobody,
    One { cookie: u64, remote: SocketAddr },
    Several,
}

/// Counts, during a poll's dump, the sockets on each local endpoint of
/// the watched flows that had no socket: the one socket there, when there
/// is one, talks to the flow's far end through a translation this host
/// does not hold. Costs nothing while no endpoint is counted.
#[derive(Debug, Default)]
pub struct Endpoints {
    held: HashMap<SocketAddr, Holders>,
}

impl Endpoints {
    /// Starts counting the sockets on `locals` (and no other).
    pub fn count(&mut self, locals: impl IntoIterator<Item = SocketAddr>) {
        self.held.clear();
        for local in locals {
            self.held.insert(normalize_addr(local), Holders::Nobody);
        }
    }

    /// One connection of the poll's dump. A socket seen twice (a poll that
    /// dumps again after its first phase) counts once: by its cookie.
    /// Connections that are over (TIME_WAIT, CLOSE) talk to nobody.
    #[inline]
    pub fn see(&mut self, b: &Base) {
        if self.held.is_empty() || matches!(b.state, TcpState::TimeWait | TcpState::Close) {
            return;
        }
        if let Some(h) = self.held.get_mut(&b.local) {
            *h = match *h {
                Holders::Nobody => Holders::One {
                    cookie: b.cookie,
                    remote: b.remote,
                },
                Holders::One { cookie, .. } if cookie == b.cookie => *h,
                _ => Holders::Several,
            };
        }
    }

    /// The local endpoints being counted.
    pub fn locals(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.held.keys().copied()
    }

    /// The remote of the one socket on `local`, if exactly one was seen.
    pub fn connected_to(&self, local: SocketAddr) -> Option<SocketAddr> {
        match self.held.get(&normalize_addr(local)) {
            Some(Holders::One { remote, .. }) => Some(*remote),
            _ => None,
        }
    }
}

/// What the translator has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TranslateStats {
    /// ctnetlink requests made.
    pub lookups: u64,
    /// Of them, those that found a translated entry.
    pub translated: u64,
    /// Of them, those that failed (no answer in time, refused, malformed).
    pub errors: u64,
    /// Sockets and flows left for a later poll: the budget ran out.
    pub deferred: u64,
    /// Sockets whose answer is cached now.
    pub cached: usize,
    /// Answers not cached: the cache was full.
    pub cache_drops: u64,
    /// Translate requests answered, and dropped (queue full, or the stream
    /// that asked ended first).
    pub answered: u64,
    pub asked_dropped: u64,
    /// Namespaces whose table cannot be read.
    pub unreadable: usize,
}

/// A socket's answer, and the poll that last sent the socket.
#[derive(Debug)]
struct Cached {
    translation: Option<Box<Translation>>,
    seen: u64,
}

/// What the last [`Lookup`] sent about an absent watched flow said.
type Said = (Option<Translation>, Option<SocketAddr>);

/// Decides what to look up for what a poll sends, and keeps the answers.
#[derive(Debug)]
pub struct Translator<T = Tables> {
    tables: T,
    /// Samples name their namespace by label.
    inodes: HashMap<String, u64>,
    cache: HashMap<SocketKey, Cached>,
    generation: u64,
    said: HashMap<FlowTuple, Said>,
    asked: VecDeque<FlowTuple>,
    endpoints: Endpoints,
    /// Requests left in this poll or follow.
    budget: usize,
    stats: TranslateStats,
}

impl Translator<Tables> {
    /// Opens the tables of `host` and of the namespaces `read`. Blocking.
    pub fn open(host: &Netns, read: &[Netns]) -> Translator<Tables> {
        let tables = Tables::open(host, read);
        let mut t = Translator::new(tables, read.iter().map(|ns| (ns.inode, ns.label.clone())));
        t.stats.unreadable = t.tables.unreadable();
        t
    }

    /// Whether any namespace's table can be read.
    pub fn available(&self) -> bool {
        !self.tables.readable().is_empty()
    }
}

impl<T: Conntracks> Translator<T> {
    /// A translator over `tables`, for namespaces known by (inode, label).
    pub fn new(tables: T, labels: impl IntoIterator<Item = (u64, String)>) -> Translator<T> {
        Translator {
            tables,
            inodes: labels.into_iter().map(|(i, l)| (l, i)).collect(),
            cache: HashMap::new(),
            generation: 0,
            said: HashMap::new(),
            asked: VecDeque::new(),
            endpoints: Endpoints::default(),
            budget: LOOKUP_BUDGET,
            stats: TranslateStats::default(),
        }
    }

    pub fn stats(&self) -> TranslateStats {
        self.stats
    }

    /// Before a poll: the counter its dump feeds, counting the local
    /// endpoints of `unmatched` (the watched flows with no socket found).
    pub fn endpoints(&mut self, unmatched: impl IntoIterator<Item = FlowTuple>) -> &mut Endpoints {
        self.endpoints.count(unmatched.into_iter().map(|f| f.local));
        &mut self.endpoints
    }

    /// Queues a Translate request for the next poll; false (and counted)
    /// when [`MAX_ASKED`] are already waiting.
    pub fn ask(&mut self, flow: FlowTuple) -> bool {
        if self.asked.len() >= MAX_ASKED {
            self.stats.asked_dropped += 1;
            return false;
        }
        self.asked.push_back(flow);
        true
    }

    /// The stream that asked and watched is gone: its requests go
    /// unanswered (counted) and what was said about its watches is
    /// forgotten. Returns the requests dropped.
    pub fn forget_stream(&mut self) -> usize {
        let n = self.asked.len();
        self.asked.clear();
        self.said.clear();
        self.stats.asked_dropped += n as u64;
        n
    }

    /// Completes a poll's selection: translations on its samples, a
    /// [`Lookup`] beside each absent flow it knows more of, the answers to
    /// the Translate requests waiting. `complete`: every namespace
    /// answered the poll, so its absent flows are all there are.
    pub fn poll(&mut self, sel: &mut Selection, complete: bool) {
        self.generation += 1;
        self.begin();
        self.translate_samples(sel);
        self.absent_lookups(sel, complete);
        self.answer_asked(sel);
        let generation = self.generation;
        self.cache.retain(|_, c| c.seen == generation);
        self.stats.cached = self.cache.len();
    }

    /// Completes a follow's selection: translations on its samples.
    pub fn follow(&mut self, sel: &mut Selection) {
        self.begin();
        self.translate_samples(sel);
        self.stats.cached = self.cache.len();
    }

    fn begin(&mut self) {
        self.budget = LOOKUP_BUDGET;
        self.tables.begin();
    }

    fn translate_samples(&mut self, sel: &mut Selection) {
        let host = self.tables.host();
        for (_, s) in sel.samples.iter_mut() {
            let Some(&netns) = self.inodes.get(&s.netns) else {
                continue;
            };
            let key = (netns, s.cookie);
            if let Some(c) = self.cache.get_mut(&key) {
                c.seen = self.generation;
                s.translation = c.translation.clone();
                continue;
            }
            if self.budget == 0 {
                self.stats.deferred += 1;
                continue;
            }
            let (found, answered) = self.first_translated(&[netns, host], &[s.flow]);
            let translation = found.map(Box::new);
            s.translation = translation.clone();
            // A failed request is asked again at the next poll.
            if !answered {
                continue;
            }
            if self.cache.len() >= MAX_CACHED {
                self.stats.cache_drops += 1;
                continue;
            }
            self.cache.insert(
                key,
                Cached {
                    translation,
                    seen: self.generation,
                },
            );
        }
    }

    fn absent_lookups(&mut self, sel: &mut Selection, complete: bool) {
        if complete {
            let absent: HashSet<&FlowTuple> = sel.absent.iter().collect();
            self.said.retain(|flow, _| absent.contains(flow));
        }
        if sel.absent.is_empty() {
            return;
        }
        let order = self.tables.readable().to_vec();
        for &flow in &sel.absent {
            if self.budget == 0 {
                self.stats.deferred += 1;
                continue;
            }
            let (translation, _) = self.first_translated(&order, &[flow.reversed()]);
            let said = (translation, self.endpoints.connected_to(flow.local));
            // Saying nothing retracts nothing: the last word stands.
            if said == (None, None) || self.said.get(&flow) == Some(&said) {
                continue;
            }
            self.said.insert(flow, said);
            sel.lookups.push(Lookup {
                flow,
                translation: said.0,
                connected_to: said.1,
                asked: false,
            });
        }
    }

    fn answer_asked(&mut self, sel: &mut Selection) {
        if self.asked.is_empty() {
            return;
        }
        let order = self.tables.readable().to_vec();
        while self.budget > 0 {
            let Some(flow) = self.asked.pop_front() else {
                break;
            };
            let (translation, _) = self.first_translated(&order, &[flow, flow.reversed()]);
            sel.lookups.push(Lookup {
                flow,
                translation,
                connected_to: None,
                asked: true,
            });
            self.stats.answered += 1;
        }
    }

    /// Asks each readable namespace of `order` (each once, in order) about
    /// each of `flows`, until an entry is translated. Also says whether
    /// every request was answered (a failure may have hidden an entry).
    fn first_translated(
        &mut self,
        order: &[u64],
        flows: &[FlowTuple],
    ) -> (Option<Translation>, bool) {
        let mut answered = true;
        for (i, &netns) in order.iter().enumerate() {
            if order[..i].contains(&netns) || !self.tables.readable().contains(&netns) {
                continue;
            }
            for &flow in flows {
                let Some(answer) = self.tables.lookup(netns, flow) else {
                    answered = false;
                    continue;
                };
                self.budget = self.budget.saturating_sub(1);
                self.stats.lookups += 1;
                match answer {
                    Ok(Some(t)) if t.translated() => {
                        self.stats.translated += 1;
                        return (Some(t), true);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(%flow, netns, error = %e, "conntrack lookup failed");
                        self.stats.errors += 1;
                        answered = false;
                    }
                }
            }
        }
        (None, answered)
    }
}

#[cfg(test)]
mod tests;
