//! What is worth sending: the agent's local decision, pure and fed one look
//! at a time with the agent's monotonic `now`.
//!
//! - A connection whose send queue is non-zero and whose (snd_una,
//!   write_seq, sendq) are the same as at the previous look is a
//!   **suspect**; its `unchanged_ms` is the time since those marks were
//!   first held, as [`crate::held::since`] estimates it at their first look.
//! - A suspect whose hold ends gets one **released** sample with the
//!   [`HeldSpan`]: when it was first held, the last look that found it
//!   held, the first that found it over, and how it ended (moved, drained,
//!   or closed: its connection began to close), then nothing more.
//! - A flow the collector asked to watch is sent every poll (**watched**);
//!   when this host has no socket for it, it is reported **absent**.
//! - A socket that was sent (suspect or watched) and is gone gets a
//!   **closed**, with its span when it was a held suspect: `reset` when it
//!   went while open with bytes queued (only an abort removes such a
//!   socket), `closed` when it was last seen closing.
//!
//! Looks come from polls ([`Selector::select`]), which see every socket,
//! and from follows ([`Selector::follow`]) between them, which ask the
//! kernel again for each suspect alone so that a hold's end is known to
//! within a fraction of a poll. Only polls make suspects; a follow only
//! finds where holds end.
//!
//! A socket is sent at most once per poll, with the first reason that
//! applies of suspect, released, watched. Identity is (namespace inode,
//! socket cookie): a reused 4-tuple is a new connection. Memory holds only
//! connections with a non-empty send queue and the watched sockets.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use tcpstall_common::{
    ClosedSocket, EndSample, FlowTuple, HeldEnd, HeldSpan, Lookup, Opened, SampleReason,
    SocketSample, TcpState,
};

use crate::diag::{Base, Exact, ExactId};
use crate::probe::filter::Wants;

/// Most flows watched at once; further watch requests are refused.
pub const MAX_WATCHED: usize = 4096;

/// A connection's identity: (network namespace inode, socket cookie).
pub type SocketKey = (u64, u64);

/// What one look has worth sending.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    pub samples: Vec<(SampleReason, EndSample)>,
    /// Sent sockets that are gone.
    pub closed: Vec<ClosedSocket>,
    /// Watched flows with no socket on this host.
    pub absent: Vec<FlowTuple>,
    /// What this host knows of flows it has no socket for (filled by
    /// [`crate::translate::Translator`], not by the selector).
    pub lookups: Vec<Lookup>,
    /// Connections in the poll (for a follow, the last poll's).
    pub connections: usize,
}

impl Selection {
    /// Nothing to send: a heartbeat will do.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
            && self.closed.is_empty()
            && self.absent.is_empty()
            && self.lookups.is_empty()
    }

    /// The holds this look found over, with how long each was held.
    pub fn ended(&self) -> impl Iterator<Item = &HeldSpan> {
        let released = self.samples.iter().filter_map(|(r, _)| match r {
            SampleReason::Released(h) => h.as_ref(),
            _ => None,
        });
        released.chain(self.closed.iter().filter_map(|g| g.held.as_ref()))
    }
}

/// What decides whether a queue is stuck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Marks {
    snd_una: Option<u64>,
    write_seq: Option<u64>,
    sendq: u32,
}

/// `s` with the opener its queue was first read with. Which side opened
/// decides whether `bytes_acked` counts a SYN, so positions read with one
/// opener and then the other would seem to move; the poll's first reading
/// of it (arithmetic, else the listeners) holds for the socket's life,
/// over a later reading whose counters happen not to add up the same way.
fn steady(s: &SocketSample, opened: Option<Opened>) -> Cow<'_, SocketSample> {
    match opened {
        Some(o) if s.opened != Some(o) => {
            let mut s = s.clone();
            s.opened = Some(o);
            Cow::Owned(s)
        }
        _ => Cow::Borrowed(s),
    }
}

fn marks_of(s: &SocketSample) -> Marks {
    let pos = s.positions();
    Marks {
        snd_una: pos.snd_una,
        write_seq: pos.write_seq,
        sendq: s.wqueue,
    }
}

/// How far a connection has got towards closing: a FIN received, then a
/// FIN sent (by its own application's close).
fn closing_stage(state: TcpState) -> u8 {
    match state {
        TcpState::CloseWait => 1,
        TcpState::FinWait1
        | TcpState::FinWait2
        | TcpState::Closing
        | TcpState::LastAck
        | TcpState::TimeWait
        | TcpState::Close => 2,
        _ => 0,
    }
}

/// A connection with bytes in its send queue.
#[derive(Debug)]
struct Queued {
    marks: Marks,
    /// When these marks were first held (estimated at their first look).
    since: Duration,
    /// The last look that saw the socket (with these marks).
    looked: Duration,
    /// Sent as a suspect and not yet released.
    suspect: bool,
    /// Its connection began to close while these marks were held: that
    /// hold's span ended (`closed`), and they make no suspect again. Never
    /// set with `suspect`.
    closing: bool,
    state: TcpState,
    /// As the poll that read it in full found it; a follow's exact answer
    /// cannot always tell (and positions need it).
    opened: Option<Opened>,
    flow: FlowTuple,
    /// How to ask the kernel for it alone, when the poll gave it.
    id: Option<ExactId>,
    /// The poll that last saw it.
    seen: u64,
}

impl Queued {
    fn span(&self, ended: Duration, end: HeldEnd) -> HeldSpan {
        HeldSpan {
            since: self.since.min(self.looked),
            last_held: self.looked,
            ended: ended.max(self.looked),
            end,
        }
    }

    /// How it ends if it is gone now.
    fn gone_end(&self) -> HeldEnd {
        if closing_stage(self.state) == 2 {
            HeldEnd::Closed
        } else {
            HeldEnd::Reset
        }
    }
}

/// A watched socket that was sent.
#[derive(Debug)]
struct WatchedSocket {
    flow: FlowTuple,
    seen: u64,
}

/// A suspect to follow: its namespace, how to ask for it, and its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Followed {
    pub netns: u64,
    pub id: ExactId,
    pub key: SocketKey,
}

/// Decides, look after look, which sockets are worth sending.
#[derive(Debug, Default)]
pub struct Selector {
    labels: HashMap<u64, String>,
    queued: HashMap<SocketKey, Queued>,
    watched: BTreeSet<FlowTuple>,
    watched_sockets: HashMap<SocketKey, WatchedSocket>,
    generation: u64,
    /// When the last poll was, and the connections it counted.
    last_poll: Option<Duration>,
    connections: usize,
}

impl Selector {
    /// A selector for namespaces known by (inode, label).
    pub fn new(labels: impl IntoIterator<Item = (u64, String)>) -> Selector {
        Selector {
            labels: labels.into_iter().collect(),
            ..Selector::default()
        }
    }

    fn label(&self, inode: u64) -> String {
        self.labels
            .get(&inode)
            .cloned()
            .unwrap_or_else(|| format!("inode:{inode}"))
    }

    /// Starts watching `flow` (local is this host's address). False when
    /// [`MAX_WATCHED`] flows are already watched.
    pub fn watch(&mut self, flow: FlowTuple) -> bool {
        if self.watched.len() >= MAX_WATCHED && !self.watched.contains(&flow) {
            return false;
        }
        self.watched.insert(flow);
        true
    }

    /// Stops watching `flow`; its sockets get no `closed` later.
    pub fn unwatch(&mut self, flow: &FlowTuple) {
        self.watched.remove(flow);
        self.watched_sockets.retain(|_, w| w.flow != *flow);
    }

    /// Forgets every watch (the stream that asked for them ended).
    pub fn clear_watches(&mut self) {
        self.watched.clear();
        self.watched_sockets.clear();
    }

    pub fn watched(&self) -> usize {
        self.watched.len()
    }

    /// The watched flows the last poll found no socket for, and those
    /// asked for since it. Nothing to walk while nothing is watched.
    pub fn unmatched_watches(&self) -> impl Iterator<Item = FlowTuple> + '_ {
        let matched: HashSet<FlowTuple> = match self.watched.is_empty() {
            true => HashSet::new(),
            false => self.watched_sockets.values().map(|w| w.flow).collect(),
        };
        self.watched
            .iter()
            .filter(move |f| !matched.contains(f))
            .copied()
    }

    #[cfg(test)]
    /// Connections the selector remembers (queued and watched sockets).
    pub fn tracked(&self) -> usize {
        self.queued.len() + self.watched_sockets.len()
    }

    /// Held suspects now (those a follow looks at, when it can ask for
    /// them).
    pub fn suspects(&self) -> usize {
        self.queued.values().filter(|q| q.suspect).count()
    }

    /// Whether a poll must read a socket in full, and hand it to
    /// [`Selector::select`], given its namespace and its base message: it
    /// has a send queue (a suspect's marks and sample need its positions),
    /// its flow is watched (sent every poll), or it was sent as a suspect
    /// (its release is sent). `select` does the same with or without the
    /// other sockets (see `leaving_out_unwanted_sockets_changes_nothing`).
    /// What [`Selector::wants`] may want without a send queue, for the
    /// kernel filter: the suspects' cookies and the watched flows.
    pub fn kernel_wants(&self, wants: &mut Wants) {
        wants.cookies.clear();
        wants.cookies.extend(
            self.queued
                .iter()
                .filter(|(_, q)| q.suspect)
                .map(|((_, cookie), _)| *cookie),
        );
        wants.tuples.clear();
        wants.tuples.extend(self.watched.iter().copied());
    }

    pub fn wants(&self, netns: u64, b: &Base) -> bool {
        b.wqueue > 0
            || (!self.queued.is_empty()
                && self
                    .queued
                    .get(&(netns, b.cookie))
                    .is_some_and(|q| q.suspect))
            || (!self.watched.is_empty()
                && self.watched.contains(&FlowTuple::new(b.local, b.remote)))
    }

    #[cfg(test)]
    /// Takes one poll's connections. Namespaces in `failed` did not dump
    /// this time: their sockets are neither gone nor absent, only unseen.
    pub fn select(&mut self, samples: &[SocketSample], failed: &[u64], now: Duration) -> Selection {
        self.select_wanted(samples, &[], samples.len(), failed, now)
    }

    /// [`Selector::select`] of a poll that returned only the sockets
    /// [`Selector::wants`], out of `connections`; `ids[i]`, when given, is
    /// how to ask the kernel for `samples[i]` alone (for following it).
    pub fn select_wanted(
        &mut self,
        samples: &[SocketSample],
        ids: &[ExactId],
        connections: usize,
        failed: &[u64],
        now: Duration,
    ) -> Selection {
        self.generation += 1;
        let gen = self.generation;
        let after = self.last_poll;
        let mut out = Selection {
            connections,
            ..Selection::default()
        };
        let mut found: HashSet<FlowTuple> = HashSet::new();
        for (i, s) in samples.iter().enumerate() {
            let key = (s.netns, s.cookie);
            let flow = FlowTuple::new(s.local, s.remote);
            let mut reason = None;
            let mut unchanged = Duration::ZERO;
            let s = match self.queued.get(&key) {
                Some(q) => steady(s, q.opened),
                None => Cow::Borrowed(s),
            };
            let s = s.as_ref();
            if s.wqueue > 0 {
                if let Some(q) = self.queued.get_mut(&key) {
                    q.seen = gen;
                    q.opened = q.opened.or(s.opened);
                    if let Some(id) = ids.get(i) {
                        q.id = Some(*id);
                    }
                    match step(q, s, now) {
                        Step::Held if !q.closing => {
                            q.suspect = true;
                            unchanged = now.saturating_sub(q.since);
                            reason = Some(SampleReason::Suspect);
                        }
                        Step::Held => {}
                        Step::Ended(span) => reason = Some(SampleReason::Released(Some(span))),
                        Step::Restarted => {}
                    }
                } else {
                    self.queued.insert(
                        key,
                        Queued {
                            marks: marks_of(s),
                            since: crate::held::since(s, now, after, false),
                            looked: now,
                            suspect: false,
                            closing: false,
                            state: s.state,
                            opened: s.opened,
                            flow,
                            id: ids.get(i).copied(),
                            seen: gen,
                        },
                    );
                }
            } else if let Some(q) = self.queued.remove(&key) {
                if q.suspect {
                    reason = Some(SampleReason::Released(Some(q.span(now, HeldEnd::Drained))));
                }
            }
            if self.watched.contains(&flow) {
                found.insert(flow);
                self.watched_sockets
                    .insert(key, WatchedSocket { flow, seen: gen });
                reason = reason.or(Some(SampleReason::Watched));
            }
            if let Some(reason) = reason {
                let ms = u64::try_from(unchanged.as_millis()).unwrap_or(u64::MAX);
                let label = self.label(s.netns);
                out.samples
                    .push((reason, EndSample::from_socket(s, &label, ms)));
            }
        }

        let mut closed: Vec<(SocketKey, FlowTuple, Option<HeldSpan>)> = Vec::new();
        self.queued.retain(|key, q| {
            let keep = q.seen == gen || failed.contains(&key.0);
            if !keep && q.suspect {
                closed.push((*key, q.flow, Some(q.span(now, q.gone_end()))));
            }
            keep
        });
        self.watched_sockets.retain(|key, w| {
            let keep = w.seen == gen || failed.contains(&key.0);
            if !keep && !closed.iter().any(|(k, _, _)| k == key) {
                closed.push((*key, w.flow, None));
            }
            keep
        });
        closed.sort_unstable_by_key(|(k, f, _)| (*k, *f));
        out.closed = closed
            .into_iter()
            .map(|((netns, cookie), flow, held)| ClosedSocket {
                netns: self.label(netns),
                flow,
                cookie,
                held,
            })
            .collect();
        if failed.is_empty() {
            out.absent = self
                .watched
                .iter()
                .filter(|f| !found.contains(f))
                .copied()
                .collect();
        }
        self.last_poll = Some(now);
        self.connections = connections;
        out
    }

    /// The held suspects a follow should ask the kernel for, longest held
    /// first, at most `max` of them.
    pub fn followed(&self, max: usize) -> Vec<Followed> {
        let mut held: Vec<(Duration, Followed)> = self
            .queued
            .iter()
            .filter(|(_, q)| q.suspect)
            .filter_map(|(key, q)| {
                let id = q.id?;
                Some((
                    q.since,
                    Followed {
                        netns: key.0,
                        id,
                        key: *key,
                    },
                ))
            })
            .collect();
        if held.len() > max {
            held.select_nth_unstable_by_key(max, |(since, f)| (*since, f.key));
            held.truncate(max);
        }
        held.sort_unstable_by_key(|(since, f)| (*since, f.key));
        held.into_iter().map(|(_, f)| f).collect()
    }

    /// Takes what a follow found of the sockets [`Selector::followed`]
    /// named, at `now`: each one's answer to its exact request. A hold
    /// that ended is released (or, for a socket gone, closed) at once; a
    /// hold still there is known held until `now`. Makes no suspects and
    /// sends nothing about a socket still held.
    pub fn follow(&mut self, looks: &[(SocketKey, Exact)], now: Duration) -> Selection {
        let mut out = Selection {
            connections: self.connections,
            ..Selection::default()
        };
        for (key, answer) in looks {
            let Some(q) = self.queued.get_mut(key) else {
                continue;
            };
            if !q.suspect {
                continue;
            }
            match answer {
                Exact::Found(s) => {
                    let mut s = steady(s, q.opened).into_owned();
                    s.netns = key.0;
                    if s.wqueue == 0 {
                        let span = q.span(now, HeldEnd::Drained);
                        self.queued.remove(key);
                        let label = self.label(key.0);
                        let sample = EndSample::from_socket(&s, &label, 0);
                        out.samples
                            .push((SampleReason::Released(Some(span)), sample));
                        continue;
                    }
                    if let Step::Ended(span) = step(q, &s, now) {
                        let label = self.label(key.0);
                        let sample = EndSample::from_socket(&s, &label, 0);
                        out.samples
                            .push((SampleReason::Released(Some(span)), sample));
                    }
                }
                Exact::Gone => {
                    let Some(q) = self.queued.remove(key) else {
                        continue;
                    };
                    self.watched_sockets.remove(key);
                    out.closed.push(ClosedSocket {
                        netns: self.label(key.0),
                        flow: q.flow,
                        cookie: key.1,
                        held: Some(q.span(now, q.gone_end())),
                    });
                }
                Exact::Malformed => {}
            }
        }
        out
    }
}

/// What one look at a queued socket with bytes still queued did to its
/// hold.
enum Step {
    /// The marks held (or the socket is past its closing, its hold ended).
    Held,
    /// The marks moved: a new hold starts at this look; not a suspect's.
    Restarted,
    /// A suspect's hold ended: its marks moved, or its connection began
    /// to close.
    Ended(HeldSpan),
}

/// One look at a queued socket that still has bytes queued: moves its
/// marks, its clocks and its suspicion on.
fn step(q: &mut Queued, s: &SocketSample, now: Duration) -> Step {
    let marks = marks_of(s);
    let was = std::mem::replace(&mut q.state, s.state);
    let closing = closing_stage(s.state) > closing_stage(was);
    // An application's close queues a FIN behind the held bytes: one more
    // byte of sequence space, the same hold.
    if q.marks == marks || (closing && only_a_fin_more(q.marks, marks)) {
        if q.suspect && closing {
            q.suspect = false;
            q.closing = true;
            q.marks = marks;
            return Step::Ended(q.span(now, HeldEnd::Closed));
        }
        if !q.closing {
            q.looked = now;
        }
        q.marks = marks;
        return Step::Held;
    }
    let span = q.suspect.then(|| q.span(now, HeldEnd::Moved));
    let write_only = q.marks.snd_una.is_some() && q.marks.snd_una == marks.snd_una;
    q.since = crate::held::since(s, now, Some(q.looked), write_only);
    q.marks = marks;
    q.looked = now;
    q.suspect = false;
    q.closing = false;
    match span {
        Some(span) => Step::Ended(span),
        None => Step::Restarted,
    }
}

/// `now` is `was` with a FIN queued after the bytes: nothing acknowledged,
/// one more byte written.
fn only_a_fin_more(was: Marks, now: Marks) -> bool {
    now.snd_una == was.snd_una
        && now.sendq == was.sendq.saturating_add(1)
        && match (was.write_seq, now.write_seq) {
            (Some(w), Some(n)) => n == w + 1,
            (None, None) => true,
            _ => false,
        }
}

#[cfg(test)]
mod tests;
