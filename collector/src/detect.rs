//! Episodes from samples: a send queue that stays non-zero with the same
//! `snd_una` and `write_seq` for the threshold opens one; a move, a drain or
//! the socket's end closes it.
//!
//! Time is the agent's own monotonic clock (`now`, passed in), never a
//! difference of two hosts' wall clocks. A connection is its host and its
//! socket cookie: a new cookie on the same 4-tuple is a new connection.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;
use tcpstall_common::{EndSample, FlowTuple};

/// A connection's identity: the host that reports it and its cookie.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    pub host: String,
    pub cookie: u64,
}

/// Why an episode ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// snd_una or write_seq moved.
    Moved,
    /// The send queue emptied.
    Drained,
    /// The socket went away.
    Closed,
    /// Another socket took the same 4-tuple.
    Replaced,
    /// The reporting agent disconnected.
    HostGone,
}

impl EndReason {
    pub fn id(self) -> &'static str {
        match self {
            EndReason::Moved => "moved",
            EndReason::Drained => "drained",
            EndReason::Closed => "closed",
            EndReason::Replaced => "replaced",
            EndReason::HostGone => "host_gone",
        }
    }
}

/// What an observation changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The queue has been stuck for the threshold: an episode begins.
    Opened {
        conn: ConnKey,
        flow: FlowTuple,
        /// How long it had been stuck when detected.
        stuck_for: Duration,
    },
    /// An open episode ended.
    Closed {
        conn: ConnKey,
        flow: FlowTuple,
        reason: EndReason,
        stuck_for: Duration,
    },
}

/// The marks that must not move: positions where known, else the queue.
type Marks = (Option<u64>, Option<u64>, u32);

fn marks(s: &EndSample) -> Marks {
    (s.pos.snd_una, s.pos.write_seq, s.pos.sendq)
}

#[derive(Debug)]
struct Track {
    flow: FlowTuple,
    marks: Marks,
    /// Agent clock when the marks were first seen as they are.
    since: Duration,
    /// Agent clock of the latest observation.
    last: Duration,
    open: bool,
}

/// The episode detector for all connections. Memory: one small entry per
/// connection that is currently suspect.
#[derive(Debug)]
pub struct Detector {
    threshold: Duration,
    tracks: HashMap<ConnKey, Track>,
    /// (host, 4-tuple) -> cookie, to see a cookie change.
    by_flow: HashMap<(String, FlowTuple), u64>,
}

impl Detector {
    pub fn new(threshold: Duration) -> Detector {
        Detector {
            threshold,
            tracks: HashMap::new(),
            by_flow: HashMap::new(),
        }
    }

    pub fn threshold(&self) -> Duration {
        self.threshold
    }

    /// Connections tracked now.
    pub fn tracked(&self) -> usize {
        self.tracks.len()
    }

    /// Whether this connection has an open episode.
    pub fn is_open(&self, conn: &ConnKey) -> bool {
        self.tracks.get(conn).is_some_and(|t| t.open)
    }

    /// One sample of a connection at agent time `now`. May close an episode
    /// of an older socket on the same 4-tuple first, so up to two events.
    pub fn observe(&mut self, host: &str, s: &EndSample, now: Duration) -> Vec<Event> {
        let mut events = Vec::new();
        let conn = ConnKey {
            host: host.to_string(),
            cookie: s.cookie,
        };
        let flow_key = (host.to_string(), s.flow);
        match self.by_flow.insert(flow_key, s.cookie) {
            Some(old) if old != s.cookie => {
                let old = ConnKey {
                    host: host.to_string(),
                    cookie: old,
                };
                events.extend(self.end(&old, EndReason::Replaced, now));
            }
            _ => {}
        }

        let m = marks(s);
        if s.pos.sendq == 0 {
            events.extend(self.end(&conn, EndReason::Drained, now));
            return events;
        }
        let reported_since = now.saturating_sub(Duration::from_millis(s.unchanged_ms));
        let track = match self.tracks.get_mut(&conn) {
            Some(t) if t.marks == m => t,
            Some(_) => {
                events.extend(self.end(&conn, EndReason::Moved, now));
                self.tracks.entry(conn.clone()).or_insert(Track {
                    flow: s.flow,
                    marks: m,
                    since: reported_since,
                    last: now,
                    open: false,
                })
            }
            None => self.tracks.entry(conn.clone()).or_insert(Track {
                flow: s.flow,
                marks: m,
                since: reported_since,
                last: now,
                open: false,
            }),
        };
        // The agent may have watched it longer than we have.
        track.since = track.since.min(reported_since);
        track.last = track.last.max(now);
        let stuck_for = now.saturating_sub(track.since);
        if !track.open && stuck_for >= self.threshold {
            track.open = true;
            events.push(Event::Opened {
                conn,
                flow: s.flow,
                stuck_for,
            });
        }
        events
    }

    /// The socket went away (the agent said so).
    pub fn closed(&mut self, host: &str, cookie: u64, now: Duration) -> Option<Event> {
        let conn = ConnKey {
            host: host.to_string(),
            cookie,
        };
        self.end(&conn, EndReason::Closed, now)
    }

    /// The host's agent disconnected: everything it reported ends.
    pub fn host_gone(&mut self, host: &str) -> Vec<Event> {
        let conns: Vec<ConnKey> = self
            .tracks
            .keys()
            .filter(|c| c.host == host)
            .cloned()
            .collect();
        let mut events = Vec::new();
        for conn in conns {
            let last = self.tracks.get(&conn).map_or(Duration::ZERO, |t| t.last);
            events.extend(self.end(&conn, EndReason::HostGone, last));
        }
        self.by_flow.retain(|(h, _), _| h != host);
        events
    }

    /// Forgets suspects of `host` not seen since `before` (agent clock)
    /// that never became episodes: the agent stopped reporting them
    /// without a word (a lost release). Bounds memory.
    pub fn expire(&mut self, host: &str, before: Duration) -> usize {
        let n = self.tracks.len();
        self.tracks
            .retain(|c, t| c.host != host || t.open || t.last >= before);
        n - self.tracks.len()
    }

    fn end(&mut self, conn: &ConnKey, reason: EndReason, now: Duration) -> Option<Event> {
        let track = self.tracks.remove(conn)?;
        if self.by_flow.get(&(conn.host.clone(), track.flow)) == Some(&conn.cookie)
            && reason != EndReason::Moved
        {
            self.by_flow.remove(&(conn.host.clone(), track.flow));
        }
        track.open.then(|| Event::Closed {
            conn: conn.clone(),
            flow: track.flow,
            reason,
            stuck_for: now.saturating_sub(track.since),
        })
    }
}
