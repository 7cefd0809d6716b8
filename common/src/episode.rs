//! An episode's words: which end of its connection a sample shows, and why
//! it ended. Their ids are stored, printed and sent: a contract with
//! users' scripts, never renamed.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::held::HeldEnd;

/// Which end of an episode's connection a sample shows: A is the stuck
/// sender, B its peer. Stored and sent as `"a"` / `"b"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The stuck sender.
    A,
    /// Its peer.
    B,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::A => "a",
            Side::B => "b",
        }
    }

    pub fn parse(s: &str) -> Option<Side> {
        match s {
            "a" => Some(Side::A),
            "b" => Some(Side::B),
            _ => None,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an episode ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// snd_una or write_seq moved.
    Moved,
    /// The send queue emptied.
    Drained,
    /// The socket went away, or (as its agent saw it) its connection began
    /// to close while the queue was held.
    Closed,
    /// The socket went away while open with bytes queued: aborted (a reset
    /// received or sent, or the kernel gave up), as its agent saw it.
    Reset,
    /// Another socket took the same 4-tuple.
    Replaced,
    /// The reporting agent disconnected.
    HostGone,
    /// Left open by a collector that stopped: ended by the next one's
    /// start, at the time it was last known open.
    CollectorRestart,
}

impl EndReason {
    pub fn id(self) -> &'static str {
        match self {
            EndReason::Moved => "moved",
            EndReason::Drained => "drained",
            EndReason::Closed => "closed",
            EndReason::Reset => "reset",
            EndReason::Replaced => "replaced",
            EndReason::HostGone => "host_gone",
            EndReason::CollectorRestart => "collector_restart",
        }
    }

    /// Every reason, in the order they are listed.
    pub const ALL: [EndReason; 7] = [
        EndReason::Moved,
        EndReason::Drained,
        EndReason::Closed,
        EndReason::Reset,
        EndReason::Replaced,
        EndReason::HostGone,
        EndReason::CollectorRestart,
    ];

    /// Parses an id.
    pub fn from_id(id: &str) -> Option<EndReason> {
        Self::ALL.into_iter().find(|r| r.id() == id)
    }
}

impl From<HeldEnd> for EndReason {
    fn from(e: HeldEnd) -> EndReason {
        match e {
            HeldEnd::Moved => EndReason::Moved,
            HeldEnd::Drained => EndReason::Drained,
            HeldEnd::Closed => EndReason::Closed,
            HeldEnd::Reset => EndReason::Reset,
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_back() {
        for r in EndReason::ALL {
            assert_eq!(EndReason::from_id(r.id()), Some(r));
        }
        for s in [Side::A, Side::B] {
            assert_eq!(Side::parse(s.as_str()), Some(s));
        }
        assert_eq!(EndReason::from_id("timeout"), None);
        assert_eq!(Side::parse("c"), None);
    }
}
