//! An agent's clock on the collector's, per stream.

use std::time::Duration;

/// The least (arrival − agent clock) of a stream's batches, milliseconds:
/// the offset that puts the agent's clock on the collector's, plus the
/// quickest delivery seen. Only this agent's clock differences are used;
/// no two hosts' wall clocks meet.
#[derive(Debug, Default)]
pub struct AgentClock {
    offset_ms: Option<i64>,
}

impl AgentClock {
    /// When the agent took a poll stamped `mono` that arrived at `now_ms`,
    /// on the collector's clock: the agent's clock plus the least offset
    /// any of its batches showed, so never later than the arrival.
    pub fn taken_ms(&mut self, mono: Duration, now_ms: i64) -> i64 {
        let mono_ms = i64::try_from(mono.as_millis()).unwrap_or(i64::MAX);
        let offset = now_ms.saturating_sub(mono_ms);
        let least = self.offset_ms.map_or(offset, |o| o.min(offset));
        self.offset_ms = Some(least);
        mono_ms.saturating_add(least)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_is_placed_by_the_quickest_delivery_and_never_after_its_arrival() {
        let s = Duration::from_secs;
        let mut c = AgentClock::default();
        // Agent clock 100 s arrives at 1,000,000 ms: offset 900,000.
        assert_eq!(c.taken_ms(s(100), 1_000_000), 1_000_000);
        // The next poll (102 s) arrives 300 ms late: placed by the quickest
        // delivery, at 1,002,000, not at its arrival.
        assert_eq!(c.taken_ms(s(102), 1_002_300), 1_002_000);
        // One delivered quicker than any before lowers the offset for all
        // that follow.
        assert_eq!(c.taken_ms(s(104), 1_003_900), 1_003_900);
        assert_eq!(c.taken_ms(s(106), 1_006_500), 1_005_900);
        // Never later than the arrival.
        for (mono, now) in [(108, 1_007_950), (110, 1_020_000)] {
            assert!(c.taken_ms(s(mono), now) <= now);
        }
    }
}
