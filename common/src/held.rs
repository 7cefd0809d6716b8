//! A held send queue from start to end, as the agent that saw it measured
//! it: when its marks (snd_una, write_seq, a non-empty queue) were first
//! held, the last look that still found them held, the first look that
//! found the hold over, and how it ended. Every time is the reporting
//! agent's own monotonic clock; only differences of them mean anything
//! elsewhere.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a held send queue stopped being held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeldEnd {
    /// snd_una or write_seq moved, bytes still queued.
    Moved,
    /// The send queue emptied.
    Drained,
    /// The connection began to close while the queue was held: a FIN came
    /// in (the peer closed) or went out (this side's application closed),
    /// or a socket last seen closing went away.
    Closed,
    /// The socket went away while open with bytes queued. Its FIN would
    /// have waited behind those bytes, so nothing but an abort removes such
    /// a socket: a reset received or sent (an application closing with
    /// unread data sends one), or the kernel giving up.
    Reset,
}

impl HeldEnd {
    /// Every way, in the order they are listed (metrics label all of them).
    pub const ALL: [HeldEnd; 4] = [
        HeldEnd::Moved,
        HeldEnd::Drained,
        HeldEnd::Closed,
        HeldEnd::Reset,
    ];

    /// The id used on the wire's consumers, in metrics, SQLite and JSON.
    pub fn id(self) -> &'static str {
        match self {
            HeldEnd::Moved => "moved",
            HeldEnd::Drained => "drained",
            HeldEnd::Closed => "closed",
            HeldEnd::Reset => "reset",
        }
    }

    /// Its place in [`HeldEnd::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Parses an id.
    pub fn from_id(id: &str) -> Option<HeldEnd> {
        Self::ALL.into_iter().find(|e| e.id() == id)
    }
}

impl fmt::Display for HeldEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// One held span, on its agent's monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldSpan {
    /// When the marks were first held (the agent's estimate: see the
    /// agent's `held` module for how it is bounded).
    pub since: Duration,
    /// The last look that found them held.
    pub last_held: Duration,
    /// The first look that found the hold over.
    pub ended: Duration,
    pub end: HeldEnd,
}

/// Why a [`HeldSpan`] cannot be one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeldSpanError {
    #[error("held span out of order: since {since:?}, last held {last_held:?}, ended {ended:?}")]
    Order {
        since: Duration,
        last_held: Duration,
        ended: Duration,
    },
}

impl HeldSpan {
    /// A span whose times are in order (since ≤ last held ≤ ended).
    pub fn new(
        since: Duration,
        last_held: Duration,
        ended: Duration,
        end: HeldEnd,
    ) -> Result<HeldSpan, HeldSpanError> {
        if since > last_held || last_held > ended {
            return Err(HeldSpanError::Order {
                since,
                last_held,
                ended,
            });
        }
        Ok(HeldSpan {
            since,
            last_held,
            ended,
            end,
        })
    }

    /// When the hold ended: halfway between the last look that found it
    /// held and the first that found it over, so within half the time
    /// between those looks either way.
    pub fn end_at(&self) -> Duration {
        self.last_held + self.ended.saturating_sub(self.last_held) / 2
    }

    /// How long the queue was held.
    pub fn held(&self) -> Duration {
        self.end_at().saturating_sub(self.since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_end_is_halfway_between_the_last_two_looks() {
        let s = HeldSpan::new(ms(1_000), ms(11_250), ms(11_500), HeldEnd::Reset).expect("ordered");
        assert_eq!(s.end_at(), ms(11_375));
        assert_eq!(s.held(), ms(10_375));
        let same = HeldSpan::new(ms(5), ms(5), ms(5), HeldEnd::Moved).expect("ordered");
        assert_eq!(same.held(), Duration::ZERO);
    }

    #[test]
    fn times_out_of_order_are_refused() {
        assert!(HeldSpan::new(ms(2), ms(1), ms(3), HeldEnd::Moved).is_err());
        assert!(HeldSpan::new(ms(1), ms(3), ms(2), HeldEnd::Moved).is_err());
    }

    #[test]
    fn ids_read_back() {
        for e in HeldEnd::ALL {
            assert_eq!(HeldEnd::from_id(e.id()), Some(e));
            assert_eq!(HeldEnd::ALL[e.index()], e);
        }
        assert_eq!(HeldEnd::from_id("gone"), None);
    }
}
