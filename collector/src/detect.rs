//! Episodes from samples: a send queue that stays non-zero with the same
//! `snd_una` and `write_seq` for the threshold opens one; a move, a drain or
//! the socket's end closes it.
//!
//! Time is the agent's own monotonic clock (`now`, passed in), never a
//! difference of two hosts' wall clocks. A connection is its host and its
//! socket cookie: a new cookie on the same 4-tuple is a new connection.

use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use tcpstall_common::time::micros;
use tcpstall_common::{EndReason, EndSample, FlowTuple, HeldSpan};

use crate::slab_map::SlabMap;
use crate::tuple::Tuple;

/// A connection's identity: the host that reports it and its cookie. The
/// collector names hosts by a small number ([`crate::aggregator::HostId`]);
/// tests may name them by string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey<H = crate::aggregator::HostId> {
    pub host: H,
    pub cookie: u64,
}

/// What a host may be named by in the detector.
pub trait HostKey: Copy + Eq + Hash + Debug {}
impl<T: Copy + Eq + Hash + Debug> HostKey for T {}

/// What an observation changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<H = crate::aggregator::HostId> {
    /// The queue has been stuck for the threshold: an episode begins.
    Opened {
        conn: ConnKey<H>,
        flow: FlowTuple,
        /// How long it had been stuck when detected.
        stuck_for: Duration,
    },
    /// An open episode ended.
    Closed {
        conn: ConnKey<H>,
        flow: FlowTuple,
        reason: EndReason,
        stuck_for: Duration,
    },
}

/// The marks that must not move: positions where known, else the queue.
/// (Unknown positions are `None`, kept as 0 with a bit saying so: one
/// entry per tracked connection, so its size counts.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Marks {
    snd_una: u64,
    write_seq: u64,
    sendq: u32,
    /// Bit 0: snd_una known; bit 1: write_seq known.
    known: u8,
}

fn marks(s: &EndSample) -> Marks {
    Marks {
        snd_una: s.pos.snd_una.unwrap_or(0),
        write_seq: s.pos.write_seq.unwrap_or(0),
        sendq: s.pos.sendq,
        known: u8::from(s.pos.snd_una.is_some()) | (u8::from(s.pos.write_seq.is_some()) << 1),
    }
}

/// What one observation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed<H = crate::aggregator::HostId> {
    /// Up to two: an older socket's episode on the same 4-tuple may close
    /// before this one's opens.
    pub events: Vec<Event<H>>,
    /// How long its marks have been held as of this sample (zero once the
    /// queue drained).
    pub held: Duration,
}

/// What an agent's last word on a connection found
/// ([`Detector::last_word_at`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWord<H = crate::aggregator::HostId> {
    /// The sample's own events, as [`Detector::observe_at`] finds them.
    pub events: Vec<Event<H>>,
    /// The end of the track the sample left behind, when it had an episode
    /// open (a restarted track the agent had seen held for the threshold):
    /// it comes after `events`.
    pub closed: Option<Event<H>>,
}

#[derive(Debug)]
struct Track<T> {
    /// The socket tracked on this 4-tuple.
    cookie: u64,
    marks: Marks,
    open: bool,
    /// Agent clock (µs) when the marks were first seen as they are.
    since: u64,
    /// Agent clock (µs) of the latest observation.
    last: u64,
    /// What the caller keeps of the connection beside its track (the
    /// aggregator's suspect: its samples, its peer, its episode), so that
    /// one lookup per sample finds both. Kept while the socket's track
    /// lives, a moved queue's restart included; a new socket on the 4-tuple
    /// starts with `T::default()`.
    data: T,
}

/// A connection's data the detector no longer tracks: the track it was
/// kept with ended (the socket drained, closed, went silent or was
/// replaced on its 4-tuple, or its host went). Any closing event for that
/// socket came with it.
#[derive(Debug)]
pub struct Ended<T> {
    pub cookie: u64,
    pub data: T,
}

/// One sample's step with the caller's data ([`Detector::step`]).
#[derive(Debug)]
pub struct Step<'a, H, T> {
    pub observed: Observed<H>,
    /// The data kept with the sample's socket; `None` once its queue
    /// drained (then nothing of the 4-tuple is tracked).
    pub data: Option<&'a mut T>,
    /// The track started at this sample: `data` is `T::default()`.
    pub fresh: bool,
    /// The socket's queue moved, and its stall started again at this
    /// sample, its data kept.
    pub restarted: bool,
    /// What this sample ended: another socket's track on the 4-tuple, or
    /// the socket's own on a drain.
    pub ended: Option<Ended<T>>,
}

/// An agent's last word with the caller's data ([`Detector::last_step`]).
#[derive(Debug)]
pub struct LastStep<H, T> {
    pub word: LastWord<H>,
    /// The data of what the 4-tuple had tracked before the sample: the
    /// socket's own, or another socket's it replaced. Nothing of the
    /// 4-tuple is tracked after.
    pub ended: Option<Ended<T>>,
}

/// What the end of a hold its agent measured found
/// ([`Detector::held_end`]).
#[derive(Debug)]
pub struct HeldStep<H, T> {
    /// The episode the hold made, when it was not open yet: held for the
    /// threshold by the agent's measure, it reached it after the last poll
    /// and ended before the next. Comes before `closed`.
    pub opened: Option<Event<H>>,
    /// The episode's end, with the hold's measured length.
    pub closed: Option<Event<H>>,
    /// The socket's track and its data; `None` when it was not tracked.
    pub ended: Option<Ended<T>>,
}

impl<H, T> HeldStep<H, T> {
    /// Whether the hold was, or became, an episode.
    pub fn episode(&self) -> bool {
        self.closed.is_some()
    }
}

/// A tracked connection as [`Detector::tracks`] shows it.
#[derive(Debug)]
pub struct TrackView<'a, H, T> {
    pub host: H,
    pub flow: &'a Tuple,
    pub cookie: u64,
    /// The agent clock of its latest sample.
    pub last: Duration,
    pub data: &'a T,
}

/// The episode detector for all connections. Memory: one small entry per
/// connection that is currently suspect, with the caller's `T`.
///
/// A track is keyed by its host and 4-tuple, and holds the cookie of the
/// socket on it: a sample with another cookie is a new socket on the same
/// 4-tuple, which replaces the old one, without a second table to map
/// 4-tuples to cookies.
#[derive(Debug)]
pub struct Detector<H = crate::aggregator::HostId, T = ()> {
    threshold: Duration,
    tracks: SlabMap<(H, Tuple), Track<T>>,
}

/// A sample that keeps a track's marks: its clocks move on, and past the
/// threshold its episode opens.
fn advance<H, T>(
    track: &mut Track<T>,
    conn: ConnKey<H>,
    flow: FlowTuple,
    reported_since: u64,
    now: Duration,
    threshold: Duration,
) -> Option<Event<H>> {
    // The agent may have watched it longer than we have.
    track.since = track.since.min(reported_since);
    track.last = track.last.max(micros(now));
    let stuck_for = held(track, now);
    if track.open || stuck_for < threshold {
        return None;
    }
    track.open = true;
    Some(Event::Opened {
        conn,
        flow,
        stuck_for,
    })
}

/// How long a track's marks have been held at agent time `now`.
fn held<T>(track: &Track<T>, now: Duration) -> Duration {
    now.saturating_sub(Duration::from_micros(track.since))
}

impl<H: HostKey, T: Default> Detector<H, T> {
    pub fn new(threshold: Duration) -> Detector<H, T> {
        Detector {
            threshold,
            tracks: SlabMap::new(),
        }
    }

    pub fn threshold(&self) -> Duration {
        self.threshold
    }

    /// A new threshold (a reloaded config): counts for every connection
    /// from its next sample; open episodes stay open.
    pub fn set_threshold(&mut self, threshold: Duration) {
        self.threshold = threshold;
    }

    /// Connections tracked now.
    pub fn tracked(&self) -> usize {
        self.tracks.len()
    }

    /// Bytes its table holds (an estimate from its capacity; what the data
    /// owns on the heap is not counted).
    pub fn table_bytes(&self) -> usize {
        self.tracks.bytes()
    }

    /// The cookie of the socket `host` reports on `flow` now, if tracked.
    pub fn cookie_of(&self, host: H, flow: FlowTuple) -> Option<u64> {
        self.tracks.get(&(host, Tuple::new(flow))).map(|t| t.cookie)
    }

    /// Whether the socket `host` reports on `flow` has an open episode.
    pub fn is_open(&self, host: H, flow: FlowTuple) -> bool {
        self.tracks
            .get(&(host, Tuple::new(flow)))
            .is_some_and(|t| t.open)
    }

    /// The data kept with the socket `host` reports on `flow`, if tracked,
    /// and its cookie.
    pub fn data(&self, host: H, flow: Tuple) -> Option<(u64, &T)> {
        self.tracks.get(&(host, flow)).map(|t| (t.cookie, &t.data))
    }

    /// [`Detector::data`], to change it.
    pub fn data_mut(&mut self, host: H, flow: Tuple) -> Option<(u64, &mut T)> {
        self.tracks
            .get_mut(&(host, flow))
            .map(|t| (t.cookie, &mut t.data))
    }

    /// Every tracked connection.
    pub fn tracks(&self) -> impl Iterator<Item = TrackView<'_, H, T>> {
        self.tracks.iter().map(|((host, flow), t)| TrackView {
            host: *host,
            flow,
            cookie: t.cookie,
            last: Duration::from_micros(t.last),
            data: &t.data,
        })
    }

    /// One sample of a connection at agent time `now`. May close an episode
    /// of an older socket on the same 4-tuple first, so up to two events.
    pub fn observe(&mut self, host: H, s: &EndSample, now: Duration) -> Vec<Event<H>> {
        self.observe_at(host, Tuple::new(s.flow), s, now).events
    }

    /// [`Detector::observe`] with the sample's 4-tuple as the caller keyed
    /// it already (`flow` is `Tuple::new(s.flow)`), and how long the marks
    /// have been held.
    pub fn observe_at(
        &mut self,
        host: H,
        flow: Tuple,
        s: &EndSample,
        now: Duration,
    ) -> Observed<H> {
        self.step(host, flow, s, now).observed
    }

    /// [`Detector::observe_at`], with the data kept beside the socket's
    /// track, and what the sample ended.
    pub fn step(&mut self, host: H, flow: Tuple, s: &EndSample, now: Duration) -> Step<'_, H, T> {
        let mut events = Vec::new();
        let key = (host, flow);
        let conn = ConnKey {
            host,
            cookie: s.cookie,
        };
        if s.pos.sendq == 0 {
            // Drained: its 4-tuple is no longer tracked, whichever socket
            // had it (an older one is replaced).
            let old = self.tracks.remove(&key);
            events.extend(old.as_ref().and_then(|t| drained(host, flow, t, s, now)));
            return Step {
                observed: Observed {
                    events,
                    held: Duration::ZERO,
                },
                data: None,
                fresh: false,
                restarted: false,
                ended: old.map(Track::ended),
            };
        }
        let m = marks(s);
        let since = reported_since(s, now);
        let (mut fresh, mut restarted, mut ended) = (false, false, None);
        // Most samples: the socket tracked on its 4-tuple, one lookup.
        // Marks held, its clock goes on; marks moved, its stall ends and a
        // new one starts with the socket's data kept; another cookie, the
        // old socket was replaced, and its data goes with it.
        let (track, inserted) = self
            .tracks
            .get_or_insert_with(key, || start(s, m, since, now));
        if inserted {
            fresh = true;
        } else if let Some(reason) = ends(track, s, m) {
            let mut old = std::mem::replace(track, start(s, m, since, now));
            events.extend(closing(host, flow, &old, reason, now));
            if reason == EndReason::Moved {
                track.data = std::mem::take(&mut old.data);
                restarted = true;
            } else {
                ended = Some(old.ended());
                fresh = true;
            }
        }
        events.extend(advance(track, conn, s.flow, since, now, self.threshold));
        let held = held(track, now);
        Step {
            observed: Observed { events, held },
            data: Some(&mut track.data),
            fresh,
            restarted,
            ended,
        }
    }

    /// The agent's last word on a connection (its release, or a drained
    /// queue): what [`Detector::observe_at`] and then
    /// [`Detector::closed_at`] would find, in one lookup instead of two.
    /// Nothing of the 4-tuple is tracked afterwards. Most suspects end
    /// this way (two samples in five, in a busy fleet).
    pub fn last_word_at(
        &mut self,
        host: H,
        flow: Tuple,
        s: &EndSample,
        now: Duration,
    ) -> LastWord<H> {
        self.last_step(host, flow, s, now).word
    }

    /// [`Detector::last_word_at`], with the data the 4-tuple's track held
    /// before the sample, if it held any (the socket's own, or that of the
    /// socket it replaced).
    pub fn last_step(
        &mut self,
        host: H,
        flow: Tuple,
        s: &EndSample,
        now: Duration,
    ) -> LastStep<H, T> {
        let key = (host, flow);
        let old = self.tracks.remove(&key);
        if s.pos.sendq == 0 {
            return LastStep {
                word: LastWord {
                    events: old
                        .as_ref()
                        .and_then(|t| drained(host, flow, t, s, now))
                        .into_iter()
                        .collect(),
                    closed: None,
                },
                ended: old.map(Track::ended),
            };
        }
        let mut events = Vec::new();
        let m = marks(s);
        let since = reported_since(s, now);
        let mut ended = None;
        // The track the sample leaves behind, and whether it carries the
        // data the socket was tracked with (not if it was new, or another
        // socket's track was replaced: then that one's data ended).
        let (mut track, own) = match old {
            Some(mut t) => match ends(&t, s, m) {
                None => (t, true),
                Some(reason) => {
                    events.extend(closing(host, flow, &t, reason, now));
                    let mut new = start(s, m, since, now);
                    if reason == EndReason::Moved {
                        new.data = std::mem::take(&mut t.data);
                        (new, true)
                    } else {
                        ended = Some(t.ended());
                        (new, false)
                    }
                }
            },
            None => (start(s, m, since, now), false),
        };
        let conn = ConnKey {
            host,
            cookie: s.cookie,
        };
        events.extend(advance(
            &mut track,
            conn,
            s.flow,
            since,
            now,
            self.threshold,
        ));
        let closed = closing(host, flow, &track, EndReason::Closed, now);
        LastStep {
            word: LastWord { events, closed },
            ended: if own { Some(track.ended()) } else { ended },
        }
    }

    /// The socket `cookie` on `flow` went away (the agent said so).
    pub fn closed(
        &mut self,
        host: H,
        flow: FlowTuple,
        cookie: u64,
        now: Duration,
    ) -> Option<Event<H>> {
        self.closed_at(host, Tuple::new(flow), cookie, now)
    }

    /// [`Detector::closed`] with the 4-tuple keyed already.
    pub fn closed_at(
        &mut self,
        host: H,
        flow: Tuple,
        cookie: u64,
        now: Duration,
    ) -> Option<Event<H>> {
        self.close(host, flow, cookie, now)?.0
    }

    /// [`Detector::closed_at`], with the data that was kept with it;
    /// `None` if the socket was not tracked.
    pub fn close(
        &mut self,
        host: H,
        flow: Tuple,
        cookie: u64,
        now: Duration,
    ) -> Option<(Option<Event<H>>, T)> {
        let track = self
            .tracks
            .remove_if(&(host, flow), |t| t.cookie == cookie)?;
        let event = closing(host, flow, &track, EndReason::Closed, now);
        Some((event, track.data))
    }

    /// The hold of socket `cookie` on `flow` ended as its agent measured it
    /// (`span`, the agent's clock): its track ends, its episode with the
    /// measured length and the way it ended. A hold the agent measured at
    /// the threshold or more is an episode even when no poll found it so.
    /// Nothing happens for a socket not tracked (the collector never heard
    /// of its hold, so holds no sample of it to diagnose).
    pub fn held_end(
        &mut self,
        host: H,
        flow: Tuple,
        cookie: u64,
        span: &HeldSpan,
    ) -> HeldStep<H, T> {
        let Some(track) = self.tracks.remove_if(&(host, flow), |t| t.cookie == cookie) else {
            return HeldStep {
                opened: None,
                closed: None,
                ended: None,
            };
        };
        let held = span.held();
        let conn = ConnKey { host, cookie };
        let opened = (!track.open && held >= self.threshold).then(|| Event::Opened {
            conn,
            flow: flow.flow(),
            stuck_for: held,
        });
        let closed = (track.open || opened.is_some()).then(|| Event::Closed {
            conn,
            flow: flow.flow(),
            reason: span.end.into(),
            stuck_for: held,
        });
        HeldStep {
            opened,
            closed,
            ended: Some(track.ended()),
        }
    }

    /// The host's agent disconnected: everything it reported ends.
    pub fn host_gone(&mut self, host: H) -> Vec<Event<H>> {
        self.host_gone_with(host)
            .into_iter()
            .filter_map(|(_, event, _)| event)
            .collect()
    }

    /// [`Detector::host_gone`]: each connection's 4-tuple, its episode's
    /// end if it had one open, and its data.
    pub fn host_gone_with(&mut self, host: H) -> Vec<(Tuple, Option<Event<H>>, Ended<T>)> {
        let keys: Vec<(H, Tuple)> = self
            .tracks
            .keys()
            .filter(|(h, _)| *h == host)
            .copied()
            .collect();
        let mut gone = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(track) = self.tracks.remove(&key) {
                let last = Duration::from_micros(track.last);
                let event = closing(host, key.1, &track, EndReason::HostGone, last);
                gone.push((key.1, event, track.ended()));
            }
        }
        gone
    }

    /// Forgets suspects of `host` not seen since `before` (agent clock)
    /// that never became episodes: the agent stopped reporting them
    /// without a word (a lost release). Bounds memory. Their data goes
    /// with them.
    pub fn expire(&mut self, host: H, before: Duration) -> usize {
        let before = micros(before);
        let n = self.tracks.len();
        self.tracks
            .retain(|(h, _), t| *h != host || t.open || t.last >= before);
        n - self.tracks.len()
    }
}

impl<T> Track<T> {
    fn ended(self) -> Ended<T> {
        Ended {
            cookie: self.cookie,
            data: self.data,
        }
    }
}

/// Why a sample with queued bytes ends the stall its 4-tuple's track
/// holds; `None` while the stall holds.
fn ends<T>(track: &Track<T>, s: &EndSample, m: Marks) -> Option<EndReason> {
    if track.cookie != s.cookie {
        Some(EndReason::Replaced)
    } else if track.marks != m {
        Some(EndReason::Moved)
    } else {
        None
    }
}

/// Agent clock (µs) at which the sample's marks were first seen as they
/// are, by the agent's count.
fn reported_since(s: &EndSample, now: Duration) -> u64 {
    micros(now.saturating_sub(Duration::from_millis(s.unchanged_ms)))
}

/// A track starting at this sample, with new data.
fn start<T: Default>(s: &EndSample, m: Marks, since: u64, now: Duration) -> Track<T> {
    Track {
        cookie: s.cookie,
        marks: m,
        open: false,
        since,
        last: micros(now),
        data: T::default(),
    }
}

/// The end of what a drained sample's 4-tuple tracked (`old`): its own
/// stall drained, or an older socket's was replaced.
fn drained<H: HostKey, T>(
    host: H,
    flow: Tuple,
    old: &Track<T>,
    s: &EndSample,
    now: Duration,
) -> Option<Event<H>> {
    let reason = if old.cookie == s.cookie {
        EndReason::Drained
    } else {
        EndReason::Replaced
    };
    closing(host, flow, old, reason, now)
}

/// The event a track's end makes: a closed episode if it had one open.
fn closing<H: HostKey, T>(
    host: H,
    flow: Tuple,
    track: &Track<T>,
    reason: EndReason,
    now: Duration,
) -> Option<Event<H>> {
    track.open.then(|| Event::Closed {
        conn: ConnKey {
            host,
            cookie: track.cookie,
        },
        flow: flow.flow(),
        reason,
        stuck_for: now.saturating_sub(Duration::from_micros(track.since)),
    })
}
