//! Episodes from samples, for one connection end at a time: a pure state
//! machine that the collector keeps one of per suspect, in its own table.
//!
//! A track follows the socket on one 4-tuple: its marks (snd_una,
//! write_seq, the queue), since when the agent saw them held, and whether
//! an episode is open. A send queue that stays non-zero with the same marks
//! for the threshold opens an episode; a move, a drain or the socket's end
//! closes it. Time is the reporting agent's monotonic clock (`now`), never
//! a difference of two hosts' clocks; a new cookie on the same 4-tuple is a
//! new connection.
//!
//! - [`Track::new`] and [`Track::step`]: each sample with bytes queued.
//!   Marks held, the clock goes on and past the threshold the episode
//!   opens; marks moved, the stall starts again (its episode closes
//!   `moved`); another cookie, the old socket's track ends (`replaced`) and
//!   a new one starts in its place.
//! - [`Track::end`]: the track ends (drained, closed, its host gone): its
//!   episode closes, if one is open.
//! - [`Track::held_end`]: the agent measured the hold's end: an open
//!   episode closes with the measured length and how it ended, and a hold
//!   that reached the threshold between two polls opens and closes.

use std::time::Duration;

use tcpstall_common::time::micros;
use tcpstall_common::{EndReason, EndSample, HeldSpan};

/// The marks that must not move: positions where known, else the queue. Unknown
/// positions are kept as 0 with a bit saying so (one per tracked connection: size counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Marks {
    snd_una: u64,
    write_seq: u64,
    sendq: u32,
    /// Bit 0: snd_una known; bit 1: write_seq known.
    known: u8,
}

impl Marks {
    fn of(s: &EndSample) -> Marks {
        Marks {
            snd_una: s.pos.snd_una.unwrap_or(0),
            write_seq: s.pos.write_seq.unwrap_or(0),
            sendq: s.pos.sendq,
            known: u8::from(s.pos.snd_una.is_some()) | (u8::from(s.pos.write_seq.is_some()) << 1),
        }
    }
}

/// An episode's start or end, as a step of its track finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Held for the threshold: an episode of socket `cookie` begins.
    Opened {
        cookie: u64,
        /// How long it had been held when found.
        stuck_for: Duration,
    },
    /// The episode of socket `cookie` ended.
    Closed {
        cookie: u64,
        reason: EndReason,
        stuck_for: Duration,
    },
}

/// What a sample ended before its own step: the socket's stall (`Moved`: the track goes
/// on from this sample, what the caller keeps of the socket with it) or another socket's
/// track on the 4-tuple (`Replaced`: what the caller kept of that socket ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    pub reason: EndReason,
    /// The old stall's episode's end, if it had one open.
    pub closed: Option<Event>,
}

/// One sample's step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub restart: Option<Restart>,
    /// The episode this sample opened.
    pub opened: Option<Event>,
    /// How long the marks have been held as of this sample.
    pub held: Duration,
}

/// One connection end followed by the detector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track {
    cookie: u64,
    marks: Marks,
    open: bool,
    /// Agent clock (µs) when the marks were first held, by the agent's count.
    since: u64,
    /// Agent clock (µs) of the latest sample.
    last: u64,
}

impl Track {
    /// A track starting at `s`, taken at agent time `now`; its first
    /// [`Track::step`] is with the same sample.
    pub fn new(s: &EndSample, now: Duration) -> Track {
        Track {
            cookie: s.cookie,
            marks: Marks::of(s),
            open: false,
            since: reported_since(s, now),
            last: micros(now),
        }
    }

    /// A later sample with bytes queued, of the socket on this track's 4-tuple.
    pub fn step(&mut self, s: &EndSample, now: Duration, threshold: Duration) -> Step {
        let marks = Marks::of(s);
        let reason = if self.cookie != s.cookie {
            Some(EndReason::Replaced)
        } else if self.marks != marks {
            Some(EndReason::Moved)
        } else {
            None
        };
        let restart = reason.map(|reason| {
            let closed = self.end(reason, now);
            *self = Track::new(s, now);
            Restart { reason, closed }
        });
        let opened = self.advance(s, now, threshold);
        Step {
            restart,
            opened,
            held: self.held(now),
        }
    }

    /// The track's end at agent time `now`: its episode's close, if one is open.
    pub fn end(&self, reason: EndReason, now: Duration) -> Option<Event> {
        self.open.then(|| Event::Closed {
            cookie: self.cookie,
            reason,
            stuck_for: self.held(now),
        })
    }

    /// The end of the hold as its agent measured it (`span`, the agent's clock): an open
    /// episode closes with the measured length and the way it ended; a hold measured at the
    /// threshold or more is an episode even when no poll found it so (opened, then closed).
    pub fn held_end(&self, span: &HeldSpan, threshold: Duration) -> [Option<Event>; 2] {
        let stuck_for = span.held();
        let opened = (!self.open && stuck_for >= threshold).then_some(Event::Opened {
            cookie: self.cookie,
            stuck_for,
        });
        let closed = (self.open || opened.is_some()).then_some(Event::Closed {
            cookie: self.cookie,
            reason: span.end.into(),
            stuck_for,
        });
        [opened, closed]
    }

    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // for the tests
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The agent clock of its latest sample.
    pub fn last(&self) -> Duration {
        Duration::from_micros(self.last)
    }

    /// How long its marks have been held at agent time `now`.
    pub fn held(&self, now: Duration) -> Duration {
        now.saturating_sub(Duration::from_micros(self.since))
    }

    /// The sample keeps the marks: the clocks move on (the agent may have held them
    /// longer than we have seen), and past the threshold the episode opens.
    fn advance(&mut self, s: &EndSample, now: Duration, threshold: Duration) -> Option<Event> {
        self.since = self.since.min(reported_since(s, now));
        self.last = self.last.max(micros(now));
        let stuck_for = self.held(now);
        if self.open || stuck_for < threshold {
            return None;
        }
        self.open = true;
        Some(Event::Opened {
            cookie: self.cookie,
            stuck_for,
        })
    }
}

/// Agent clock (µs) at which the sample's marks were first held, by the agent's count.
fn reported_since(s: &EndSample, now: Duration) -> u64 {
    micros(now.saturating_sub(Duration::from_millis(s.unchanged_ms)))
}
