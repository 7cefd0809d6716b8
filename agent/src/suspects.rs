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
    EndSample, FlowTuple, HeldEnd, HeldSpan, Opened, SampleReason, SocketSample, TcpState,
};

use crate::diag::{Base, Exact, ExactId};

/// Most flows watched at once; further watch requests are refused.
pub const MAX_WATCHED: usize = 4096;

/// A connection's identity: (network namespace inode, socket cookie).
pub type SocketKey = (u64, u64);

/// A sent socket that is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gone {
    /// The namespace's label.
    pub netns: String,
    pub flow: FlowTuple,
    pub cookie: u64,
    /// Its hold, when it went as a held suspect.
    pub held: Option<HeldSpan>,
}

/// What one look has worth sending.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    pub samples: Vec<(SampleReason, EndSample)>,
    pub closed: Vec<Gone>,
    /// Watched flows with no socket on this host.
    pub absent: Vec<FlowTuple>,
    /// Connections in the poll (for a follow, the last poll's).
    pub connections: usize,
}

impl Selection {
    /// Nothing to send: a heartbeat will do.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty() && self.closed.is_empty() && self.absent.is_empty()
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
            .map(|((netns, cookie), flow, held)| Gone {
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
                    out.closed.push(Gone {
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
mod tests {
    use std::net::SocketAddr;

    use tcpstall_common::{Opened, TcpState};

    use super::*;

    const NS: u64 = 4026531840;
    const POLL: Duration = Duration::from_secs(2);

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    /// A connection with `sendq` queued bytes, `acked` of them acknowledged
    /// since the start (no tcp_info: marks come from the queue alone
    /// unless `info` is given).
    fn conn(cookie: u64, local: &str, remote: &str, sendq: u32) -> SocketSample {
        SocketSample {
            netns: NS,
            local: addr(local),
            remote: addr(remote),
            state: TcpState::Established,
            cookie,
            inode: 1000 + cookie as u32,
            uid: 0,
            rqueue: 0,
            wqueue: sendq,
            timer: None,
            timer_expires_ms: 0,
            timer_retransmits: 0,
            opened: Some(Opened::Active),
            info: None,
            skmem: None,
            cong: None,
            shutdown: None,
        }
    }

    fn a(cookie: u64, sendq: u32) -> SocketSample {
        conn(cookie, "198.18.0.1:40000", "198.18.0.2:80", sendq)
    }

    fn selector() -> Selector {
        Selector::new([(NS, "host".to_string())])
    }

    fn at(polls: u32) -> Duration {
        Duration::from_secs(100) + POLL * polls
    }

    fn held(since: Duration, last_held: Duration, ended: Duration, end: HeldEnd) -> HeldSpan {
        HeldSpan::new(since, last_held, ended, end).expect("an ordered span")
    }

    fn reasons(sel: &Selection) -> Vec<(SampleReason, u64, u64)> {
        sel.samples
            .iter()
            .map(|(r, s)| (*r, s.cookie, s.unchanged_ms))
            .collect()
    }

    #[test]
    fn unchanged_twice_is_a_suspect_with_its_age() {
        let mut sel = selector();
        let first = sel.select(&[a(1, 300)], &[], at(0));
        assert!(first.is_empty(), "one poll proves nothing: {first:?}");
        assert_eq!(first.connections, 1);
        let second = sel.select(&[a(1, 300)], &[], at(1));
        assert_eq!(reasons(&second), vec![(SampleReason::Suspect, 1, 2000)]);
        assert_eq!(second.samples[0].1.netns, "host");
        let third = sel.select(&[a(1, 300)], &[], at(2) + Duration::from_millis(7));
        assert_eq!(reasons(&third), vec![(SampleReason::Suspect, 1, 4007)]);
    }

    #[test]
    fn empty_and_moving_queues_are_never_sent() {
        let mut sel = selector();
        for i in 0..5 {
            // Idle, and a bulk transfer whose queue changes every poll.
            let polled = [a(1, 0), a(2, 1000 + i)];
            let out = sel.select(&polled, &[], at(i));
            assert!(out.is_empty(), "poll {i}: {out:?}");
        }
        assert_eq!(sel.tracked(), 1, "only the queued connection is kept");
    }

    #[test]
    fn a_suspect_that_moves_is_released_once() {
        let mut sel = selector();
        sel.select(&[a(1, 300)], &[], at(0));
        assert_eq!(sel.select(&[a(1, 300)], &[], at(1)).samples.len(), 1);
        let moved = sel.select(&[a(1, 200)], &[], at(2));
        let span = held(at(0), at(1), at(2), HeldEnd::Moved);
        assert_eq!(
            reasons(&moved),
            vec![(SampleReason::Released(Some(span)), 1, 0)]
        );
        let later = sel.select(&[a(1, 100)], &[], at(3));
        assert!(later.is_empty(), "then nothing: {later:?}");
        // Stuck again at the new marks: a suspect again, aged from there.
        let again = sel.select(&[a(1, 100)], &[], at(4));
        assert_eq!(reasons(&again), vec![(SampleReason::Suspect, 1, 2000)]);
    }

    #[test]
    fn a_suspect_that_drains_is_released_once_and_forgotten() {
        let mut sel = selector();
        sel.select(&[a(1, 300)], &[], at(0));
        sel.select(&[a(1, 300)], &[], at(1));
        let drained = sel.select(&[a(1, 0)], &[], at(2));
        let span = held(at(0), at(1), at(2), HeldEnd::Drained);
        assert_eq!(
            reasons(&drained),
            vec![(SampleReason::Released(Some(span)), 1, 0)]
        );
        assert_eq!(sel.tracked(), 0);
        assert!(sel.select(&[a(1, 0)], &[], at(3)).is_empty());
        assert!(
            sel.select(&[], &[], at(4)).is_empty(),
            "no closed after release"
        );
    }

    #[test]
    fn a_suspect_that_goes_is_closed() {
        let mut sel = selector();
        sel.select(&[a(1, 300)], &[], at(0));
        sel.select(&[a(1, 300)], &[], at(1));
        let gone = sel.select(&[], &[], at(2));
        assert!(gone.samples.is_empty());
        assert_eq!(
            gone.closed,
            vec![Gone {
                netns: "host".into(),
                flow: FlowTuple::new(addr("198.18.0.1:40000"), addr("198.18.0.2:80")),
                cookie: 1,
                // Gone while open with bytes queued: only an abort does that.
                held: Some(held(at(0), at(1), at(2), HeldEnd::Reset)),
            }]
        );
        assert_eq!(sel.tracked(), 0);
        assert!(sel.select(&[], &[], at(3)).is_empty(), "closed once");
    }

    #[test]
    fn an_unsent_connection_that_goes_is_not_closed() {
        let mut sel = selector();
        sel.select(&[a(1, 300)], &[], at(0));
        let gone = sel.select(&[], &[], at(1));
        assert!(gone.is_empty(), "{gone:?}");
        assert_eq!(sel.tracked(), 0);
    }

    #[test]
    fn a_new_cookie_on_the_same_tuple_is_a_new_connection() {
        let mut sel = selector();
        sel.select(&[a(1, 300)], &[], at(0));
        sel.select(&[a(1, 300)], &[], at(1));
        // Same 4-tuple, same queue, new socket: the old one is closed and
        // the new one starts from nothing.
        let reused = sel.select(&[a(2, 300)], &[], at(2));
        assert!(reused.samples.is_empty(), "{reused:?}");
        assert_eq!(reused.closed.len(), 1);
        assert_eq!(reused.closed[0].cookie, 1);
        let next = sel.select(&[a(2, 300)], &[], at(3));
        assert_eq!(reasons(&next), vec![(SampleReason::Suspect, 2, 2000)]);
    }

    #[test]
    fn the_same_cookie_in_two_namespaces_is_two_connections() {
        let mut sel = Selector::new([(NS, "host".to_string()), (7, "lab".to_string())]);
        let mut other = a(1, 500);
        other.netns = 7;
        sel.select(&[a(1, 300), other.clone()], &[], at(0));
        let out = sel.select(&[a(1, 300), other], &[], at(1));
        let mut labels: Vec<&str> = out.samples.iter().map(|(_, s)| s.netns.as_str()).collect();
        labels.sort_unstable();
        assert_eq!(labels, vec!["host", "lab"]);
    }

    #[test]
    fn marks_include_the_stream_positions() {
        let mut sel = selector();
        let mut s = a(1, 300);
        s.info = Some(tcp_info_with_acked(5000));
        sel.select(std::slice::from_ref(&s), &[], at(0));
        // Same queue length, but 100 more bytes acknowledged (and written):
        // it moved, so it is not a suspect.
        let mut moved = s;
        moved.info = Some(tcp_info_with_acked(5100));
        assert!(sel.select(&[moved.clone()], &[], at(1)).is_empty());
        let out = sel.select(&[moved], &[], at(2));
        assert_eq!(reasons(&out), vec![(SampleReason::Suspect, 1, 2000)]);
        assert_eq!(out.samples[0].1.pos.snd_una, Some(5099), "minus the SYN");
    }

    /// A tcp_info of the oldest supported length with `bytes_acked` set.
    fn tcp_info_with_acked(acked: u64) -> tcpstall_common::TcpInfo {
        // tcpi_bytes_acked sits at offset 120 (after the 4.1 additions).
        let mut raw = vec![0u8; 192];
        raw[120..128].copy_from_slice(&acked.to_ne_bytes());
        tcpstall_common::TcpInfo::parse(&raw).expect("tcp_info")
    }

    #[test]
    fn watched_flows_are_sent_every_poll_and_absent_when_missing() {
        let mut sel = selector();
        let b = conn(9, "198.18.0.2:80", "198.18.0.1:40000", 0);
        let flow = FlowTuple::new(b.local, b.remote);
        let nobody = FlowTuple::new(addr("198.18.0.2:81"), addr("198.18.0.9:1"));
        assert!(sel.watch(flow));
        assert!(sel.watch(nobody));
        for i in 0..3 {
            let out = sel.select(&[b.clone(), a(1, 0)], &[], at(i));
            assert_eq!(
                reasons(&out),
                vec![(SampleReason::Watched, 9, 0)],
                "poll {i}"
            );
            assert_eq!(out.absent, vec![nobody], "poll {i}");
        }
        // The watched socket goes: closed once, then the flow is absent.
        let gone = sel.select(&[a(1, 0)], &[], at(3));
        assert_eq!(gone.closed.len(), 1);
        assert_eq!(gone.closed[0].cookie, 9);
        let mut absent = gone.absent.clone();
        absent.sort_unstable();
        let mut want = vec![flow, nobody];
        want.sort_unstable();
        assert_eq!(absent, want);
        let later = sel.select(&[a(1, 0)], &[], at(4));
        assert!(later.closed.is_empty());
        // Unwatched: nothing more about either.
        sel.unwatch(&flow);
        sel.unwatch(&nobody);
        assert!(sel.select(&[b, a(1, 0)], &[], at(5)).is_empty());
        assert_eq!(sel.watched(), 0);
    }

    #[test]
    fn a_watched_suspect_is_sent_once_as_a_suspect_and_closed_once() {
        let mut sel = selector();
        let s = a(1, 300);
        sel.watch(FlowTuple::new(s.local, s.remote));
        let first = sel.select(std::slice::from_ref(&s), &[], at(0));
        assert_eq!(reasons(&first), vec![(SampleReason::Watched, 1, 0)]);
        let second = sel.select(std::slice::from_ref(&s), &[], at(1));
        assert_eq!(reasons(&second), vec![(SampleReason::Suspect, 1, 2000)]);
        let gone = sel.select(&[], &[], at(2));
        assert_eq!(gone.closed.len(), 1, "{gone:?}");
    }

    #[test]
    fn unwatched_sockets_are_not_closed_later() {
        let mut sel = selector();
        let b = conn(9, "198.18.0.2:80", "198.18.0.1:40000", 0);
        let flow = FlowTuple::new(b.local, b.remote);
        sel.watch(flow);
        sel.select(std::slice::from_ref(&b), &[], at(0));
        sel.unwatch(&flow);
        assert!(sel.select(&[], &[], at(1)).is_empty());
        sel.watch(flow);
        sel.select(&[b], &[], at(2));
        sel.clear_watches();
        assert!(sel.select(&[], &[], at(3)).is_empty());
        assert_eq!(sel.tracked(), 0);
    }

    #[test]
    fn a_failed_namespace_hides_nothing_and_closes_nothing() {
        let mut sel = selector();
        let b = conn(9, "198.18.0.2:80", "198.18.0.1:40000", 0);
        sel.watch(FlowTuple::new(b.local, b.remote));
        sel.select(&[a(1, 300), b.clone()], &[], at(0));
        sel.select(&[a(1, 300), b.clone()], &[], at(1));
        let failed = sel.select(&[], &[NS], at(2));
        assert!(failed.is_empty(), "{failed:?}");
        // Back: still a suspect, aged from when its marks were first seen.
        let back = sel.select(&[a(1, 300), b], &[], at(3));
        assert_eq!(
            reasons(&back),
            vec![
                (SampleReason::Suspect, 1, 6000),
                (SampleReason::Watched, 9, 0)
            ]
        );
    }

    #[test]
    fn watches_are_bounded() {
        let mut sel = selector();
        for port in 0..MAX_WATCHED as u16 {
            let f = FlowTuple::new(
                SocketAddr::from(([198, 18, 0, 1], port)),
                addr("198.18.0.2:80"),
            );
            assert!(sel.watch(f));
        }
        let one_more = FlowTuple::new(addr("198.18.0.3:1"), addr("198.18.0.2:80"));
        assert!(!sel.watch(one_more));
        let again = FlowTuple::new(
            SocketAddr::from(([198, 18, 0, 1], 0)),
            addr("198.18.0.2:80"),
        );
        assert!(sel.watch(again), "watching a watched flow again is fine");
        assert_eq!(sel.watched(), MAX_WATCHED);
    }

    fn base(s: &SocketSample) -> Base {
        Base {
            state: s.state,
            local: s.local,
            remote: s.remote,
            cookie: s.cookie,
            wqueue: s.wqueue,
        }
    }

    #[test]
    fn leaving_out_unwanted_sockets_changes_nothing() {
        // Two selectors fed the same polls: one all connections, the other
        // only those it wants. Queues stick, move, drain and come back; a
        // watched idle flow; a suspect goes; a namespace fails once.
        let b = conn(9, "198.18.0.2:80", "198.18.0.1:40000", 0);
        let polls: Vec<(Vec<SocketSample>, Vec<u64>)> = vec![
            (vec![a(1, 300), a(2, 0), a(3, 50), b.clone()], vec![]),
            (vec![a(1, 300), a(2, 0), a(3, 50), b.clone()], vec![]),
            (vec![a(1, 0), a(2, 70), a(3, 50), b.clone()], vec![]),
            (vec![a(1, 0), a(2, 70), b.clone()], vec![]),
            (vec![], vec![NS]),
            (vec![a(1, 20), a(2, 0), b.clone()], vec![]),
            (vec![a(1, 20), a(2, 0)], vec![]),
            (vec![a(1, 20), a(2, 0), a(4, 0)], vec![]),
        ];
        let mut all = selector();
        let mut some = selector();
        let flow = FlowTuple::new(b.local, b.remote);
        assert!(all.watch(flow) && some.watch(flow));
        for (i, (polled, failed)) in polls.iter().enumerate() {
            let wanted: Vec<SocketSample> = polled
                .iter()
                .filter(|s| some.wants(s.netns, &base(s)))
                .cloned()
                .collect();
            let want = all.select(polled, failed, at(i as u32));
            let got = some.select_wanted(&wanted, &[], polled.len(), failed, at(i as u32));
            assert_eq!(got, want, "poll {i}");
        }
        assert_eq!(all.tracked(), some.tracked());
    }

    #[test]
    fn memory_follows_the_queued_connections() {
        let mut sel = selector();
        let many: Vec<SocketSample> = (0..1000).map(|c| a(c, 10)).collect();
        sel.select(&many, &[], at(0));
        assert_eq!(sel.tracked(), 1000);
        let out = sel.select(&many, &[], at(1));
        assert_eq!(out.samples.len(), 1000);
        // All drain but ten; all are released once and the rest forgotten.
        let drained: Vec<SocketSample> = (0..1000).map(|c| a(c, u32::from(c < 10) * 10)).collect();
        let out = sel.select(&drained, &[], at(2));
        assert_eq!(
            out.samples
                .iter()
                .filter(|(r, _)| matches!(r, SampleReason::Released(_)))
                .count(),
            990
        );
        assert_eq!(sel.tracked(), 10);
        let out = sel.select(&[], &[], at(3));
        assert_eq!(out.closed.len(), 10);
        assert_eq!(sel.tracked(), 0);
    }

    fn id(n: u8) -> ExactId {
        ExactId {
            family: 2,
            sockid: [n; crate::diag::parse::SOCKID_LEN],
        }
    }

    /// Polls `a(1, 300)` twice with its exact id: a held suspect.
    fn held_suspect() -> Selector {
        let mut sel = selector();
        sel.select_wanted(&[a(1, 300)], &[id(1)], 1, &[], at(0));
        let out = sel.select_wanted(&[a(1, 300)], &[id(1)], 1, &[], at(1));
        assert_eq!(reasons(&out), vec![(SampleReason::Suspect, 1, 2000)]);
        sel
    }

    const QUARTER: Duration = Duration::from_millis(500);

    #[test]
    fn a_follow_finds_where_a_hold_ends_between_polls() {
        let mut sel = held_suspect();
        let f = sel.followed(10);
        assert_eq!(
            f,
            vec![Followed {
                netns: NS,
                id: id(1),
                key: (NS, 1)
            }]
        );
        // Still held a quarter in: nothing to send.
        let still = sel.follow(&[((NS, 1), Exact::Found(a(1, 300)))], at(1) + QUARTER);
        assert!(still.is_empty(), "{still:?}");
        // Gone at the next follow: closed at once, its span ending between
        // the two follows, not at the next poll.
        let gone = sel.follow(&[((NS, 1), Exact::Gone)], at(1) + 2 * QUARTER);
        assert!(gone.samples.is_empty());
        assert_eq!(gone.closed.len(), 1, "{gone:?}");
        let span = gone.closed[0].held.expect("a held span");
        assert_eq!(
            span,
            held(at(0), at(1) + QUARTER, at(1) + 2 * QUARTER, HeldEnd::Reset)
        );
        assert_eq!(span.held(), Duration::from_millis(2750));
        assert_eq!(gone.connections, 1, "the last poll's count");
        // The next poll has nothing more to say of it.
        let next = sel.select_wanted(&[], &[], 0, &[], at(2));
        assert!(next.is_empty(), "{next:?}");
        assert!(sel.followed(10).is_empty());
    }

    #[test]
    fn a_follow_releases_a_queue_that_moved_or_drained_and_the_next_poll_does_not() {
        let mut sel = held_suspect();
        let moved = sel.follow(&[((NS, 1), Exact::Found(a(1, 200)))], at(1) + QUARTER);
        let span = held(at(0), at(1), at(1) + QUARTER, HeldEnd::Moved);
        assert_eq!(
            reasons(&moved),
            vec![(SampleReason::Released(Some(span)), 1, 0)]
        );
        assert!(sel.followed(10).is_empty(), "no longer held");
        // Unchanged since the follow: held again, a suspect at this poll,
        // aged from the follow that saw its new marks first.
        let again = sel.select_wanted(&[a(1, 200)], &[id(1)], 1, &[], at(2));
        assert_eq!(reasons(&again), vec![(SampleReason::Suspect, 1, 1500)]);
        let drained = sel.follow(&[((NS, 1), Exact::Found(a(1, 0)))], at(2) + QUARTER);
        let span = held(at(1) + QUARTER, at(2), at(2) + QUARTER, HeldEnd::Drained);
        assert_eq!(
            reasons(&drained),
            vec![(SampleReason::Released(Some(span)), 1, 0)]
        );
        assert!(sel
            .select_wanted(&[a(1, 0)], &[id(1)], 1, &[], at(3))
            .is_empty());
        assert_eq!(sel.tracked(), 0);
    }

    #[test]
    fn a_connection_that_starts_closing_while_held_ends_its_hold_once() {
        let mut sel = held_suspect();
        // The peer's FIN arrives: the same bytes held, now in CLOSE-WAIT.
        let mut fin = a(1, 300);
        fin.state = TcpState::CloseWait;
        let out = sel.follow(&[((NS, 1), Exact::Found(fin.clone()))], at(1) + QUARTER);
        let span = held(at(0), at(1), at(1) + QUARTER, HeldEnd::Closed);
        assert_eq!(
            reasons(&out),
            vec![(SampleReason::Released(Some(span)), 1, 0)]
        );
        // The same marks make no suspect again, and its going is no news.
        for i in 2..4 {
            let out = sel.select_wanted(std::slice::from_ref(&fin), &[id(1)], 1, &[], at(i));
            assert!(out.is_empty(), "poll {i}: {out:?}");
        }
        assert!(sel.select_wanted(&[], &[], 0, &[], at(4)).is_empty());
        assert_eq!(sel.tracked(), 0);
    }

    #[test]
    fn a_hold_first_seen_closing_is_held_and_goes_closed() {
        // A client that shut its side down before asking (HTTP/1.0): the
        // server's stall starts in CLOSE-WAIT and is a stall like any.
        let mut half = a(1, 300);
        half.state = TcpState::CloseWait;
        let mut sel = selector();
        sel.select(std::slice::from_ref(&half), &[], at(0));
        let out = sel.select(std::slice::from_ref(&half), &[], at(1));
        assert_eq!(reasons(&out), vec![(SampleReason::Suspect, 1, 2000)]);
        // Its application closes: LAST-ACK, the bytes still held.
        half.state = TcpState::LastAck;
        let out = sel.select(std::slice::from_ref(&half), &[], at(2));
        let span = held(at(0), at(1), at(2), HeldEnd::Closed);
        assert_eq!(
            reasons(&out),
            vec![(SampleReason::Released(Some(span)), 1, 0)]
        );
        // A suspect gone after it was seen closing went closed, not reset.
        let mut sel = selector();
        let mut closing = a(2, 300);
        sel.select(std::slice::from_ref(&closing), &[], at(0));
        closing.state = TcpState::FinWait1;
        sel.select(std::slice::from_ref(&closing), &[], at(1));
        let gone = sel.select(&[], &[], at(2));
        let span = gone.closed[0].held.expect("held");
        assert_eq!(span.end, HeldEnd::Closed);
    }

    /// A tcp_info of a sender facing a shut window, its last data sent
    /// `sent_ms` before the look.
    fn shut_window(sent_ms: u32) -> tcpstall_common::TcpInfo {
        let mut raw = vec![0u8; 232];
        raw[44..48].copy_from_slice(&sent_ms.to_ne_bytes());
        raw[144..148].copy_from_slice(&300u32.to_ne_bytes()); // all unsent
        raw[168..176].copy_from_slice(&u64::MAX.to_ne_bytes()); // busy for ever
        tcpstall_common::TcpInfo::parse(&raw).expect("tcp_info")
    }

    #[test]
    fn a_hold_is_aged_from_the_kernels_clocks_within_the_agents_looks() {
        let mut sel = selector();
        sel.select(&[], &[], at(0));
        // First seen at the second poll, its window shut 1.5 s before.
        let mut s = a(1, 300);
        s.info = Some(shut_window(1500));
        sel.select(std::slice::from_ref(&s), &[], at(1));
        let out = sel.select(std::slice::from_ref(&s), &[], at(2));
        assert_eq!(reasons(&out), vec![(SampleReason::Suspect, 1, 3500)]);
        // A clock that says 5 s is held to the previous poll, which saw no
        // queue: 2 s before the first look.
        let mut sel = selector();
        sel.select(&[], &[], at(0));
        s.info = Some(shut_window(5000));
        sel.select(std::slice::from_ref(&s), &[], at(1));
        let out = sel.select(std::slice::from_ref(&s), &[], at(2));
        assert_eq!(reasons(&out), vec![(SampleReason::Suspect, 1, 4000)]);
    }

    #[test]
    fn follows_ask_for_the_longest_held_first_and_no_more_than_asked() {
        let mut sel = selector();
        let polled: Vec<SocketSample> = (1..=5).map(|c| a(c, 100)).collect();
        let ids: Vec<ExactId> = (1..=5).map(|c| id(c as u8)).collect();
        // 4 and 5 are queued a poll later than the rest.
        sel.select_wanted(&polled[..3], &ids[..3], 3, &[], at(0));
        sel.select_wanted(&polled, &ids, 5, &[], at(1));
        sel.select_wanted(&polled, &ids, 5, &[], at(2));
        assert_eq!(sel.suspects(), 5);
        let first: Vec<u64> = sel.followed(3).iter().map(|f| f.key.1).collect();
        assert_eq!(first, vec![1, 2, 3]);
        assert_eq!(sel.followed(10).len(), 5);
        // A socket the poll gave no id for is not followed.
        let mut sel = selector();
        sel.select(&[a(9, 10)], &[], at(0));
        sel.select(&[a(9, 10)], &[], at(1));
        assert_eq!(sel.suspects(), 1);
        assert!(sel.followed(10).is_empty());
    }

    #[test]
    fn a_later_reading_of_the_opener_does_not_move_the_marks() {
        // First read as accepted (no SYN in bytes_acked); a later reading
        // whose counters do not add up calls it the connecting side.
        let mut s = a(1, 300);
        s.opened = Some(Opened::Passive);
        s.info = Some(tcp_info_with_acked(5000));
        let mut sel = selector();
        sel.select_wanted(std::slice::from_ref(&s), &[id(1)], 1, &[], at(0));
        let mut odd = s.clone();
        odd.opened = Some(Opened::Active);
        let out = sel.select_wanted(std::slice::from_ref(&odd), &[id(1)], 1, &[], at(1));
        assert_eq!(reasons(&out), vec![(SampleReason::Suspect, 1, 2000)]);
        assert_eq!(out.samples[0].1.pos.snd_una, Some(5000), "as first read");
        let follow = sel.follow(&[((NS, 1), Exact::Found(odd))], at(1) + QUARTER);
        assert!(follow.is_empty(), "still held: {follow:?}");
    }

    #[test]
    fn an_application_closing_a_held_socket_ends_its_hold_closed_not_moved() {
        // The server's application closes while its bytes are held: the
        // FIN goes behind them (one byte more) and the socket is LAST-ACK.
        let mut sel = held_suspect();
        let mut closed = a(1, 301);
        closed.state = TcpState::LastAck;
        let out = sel.follow(&[((NS, 1), Exact::Found(closed.clone()))], at(1) + QUARTER);
        let span = held(at(0), at(1), at(1) + QUARTER, HeldEnd::Closed);
        assert_eq!(
            reasons(&out),
            vec![(SampleReason::Released(Some(span)), 1, 0)]
        );
        let later = sel.select_wanted(std::slice::from_ref(&closed), &[id(1)], 1, &[], at(2));
        assert!(later.is_empty(), "{later:?}");
        // A FIN's byte without a close is a write like any.
        let mut sel = held_suspect();
        let out = sel.follow(&[((NS, 1), Exact::Found(a(1, 301)))], at(1) + QUARTER);
        assert!(
            matches!(out.samples[0].0, SampleReason::Released(Some(h)) if h.end == HeldEnd::Moved)
        );
    }
}
