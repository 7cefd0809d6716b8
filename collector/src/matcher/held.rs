//! Every held send queue the agents saw end, short or long, counted: a
//! histogram of how long they were held by how they ended (for
//! `/metrics`), and counts per minute and host pair (for the store, then
//! `tcpstall report` and `tcpstall stalls`). The stalls that timed out an
//! RPC at 3 to 9 s never become episodes; these counts are where an
//! operator sees them.
//!
//! The counts wait here, by minute, pair, end and bucket, until their
//! minute is over; then the matcher hands them to the store in one
//! write. A query reads both: the store's minutes and the one in progress
//! here ([`HeldTally::pending`]). Writing once a minute keeps the store's
//! share small when holds end by the tens of thousands a second between
//! many pairs (the 1,000-agent benchmark's full mesh: an upsert per pair
//! every few seconds took the store thread from 7 to 11 % of a core). What
//! waits is bounded: past [`MAX_PENDING`] distinct entries, further spans
//! are counted in the histogram but not by pair, and counted as dropped.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use tcpstall_common::HeldEnd;

/// Bucket bounds of the held time, seconds: every second to the default
/// threshold and a little past it, then coarser.
pub static BUCKETS_S: [f64; 17] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 12.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

/// Buckets with the last one, above every bound.
pub const BUCKETS: usize = BUCKETS_S.len() + 1;

/// Most (minute, pair, end, bucket) entries held before they are stored.
pub const MAX_PENDING: usize = 65_536;

/// One minute, in milliseconds.
const MINUTE_MS: i64 = 60_000;

/// The bucket of a held time: the first bound it does not exceed.
pub fn bucket(held: Duration) -> usize {
    let secs = held.as_secs_f64();
    BUCKETS_S
        .iter()
        .position(|b| secs <= *b)
        .unwrap_or(BUCKETS_S.len())
}

/// A bucket's upper bound in milliseconds, 0 for the last (no bound).
pub fn le_ms(bucket: usize) -> u64 {
    BUCKETS_S.get(bucket).map_or(0, |s| (s * 1000.0) as u64)
}

#[cfg(test)]
/// The bucket whose upper bound is `le_ms` (0: the last).
pub fn bucket_of_le(le_ms: u64) -> Option<usize> {
    (0..BUCKETS).find(|b| self::le_ms(*b) == le_ms)
}

/// Held times of the spans that ended one way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldHistogram {
    /// Per bucket, not cumulative.
    pub counts: [u64; BUCKETS],
    pub sum_ms: u64,
}

impl Default for HeldHistogram {
    fn default() -> Self {
        HeldHistogram {
            counts: [0; BUCKETS],
            sum_ms: 0,
        }
    }
}

impl HeldHistogram {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// What the tally has counted since the collector started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeldStats {
    /// By [`HeldEnd::index`].
    pub by_end: [HeldHistogram; 4],
    /// Spans counted in the histogram but not by pair (too many pending).
    pub dropped: u64,
}

/// What one entry of a minute counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Count {
    pub count: u64,
    /// Of them, held for the threshold: episodes.
    pub episodes: u64,
    pub total_ms: u64,
    pub max_ms: u64,
}

/// A minute's entry: the held sender's host, its peer's (if monitored),
/// how the holds ended, and their bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key<H> {
    pub minute_ms: i64,
    pub a: H,
    pub b: Option<H>,
    pub end: HeldEnd,
    pub bucket: u8,
}

/// The counts, kept by the matcher (one owner, no locks).
#[derive(Debug)]
pub struct HeldTally<H> {
    stats: HeldStats,
    /// Keyed with foldhash, as the matcher's tables are: a span of
    /// each release goes through it, tens of thousands a second in a busy
    /// fleet.
    pending: HashMap<Key<H>, Count, foldhash::fast::RandomState>,
    /// The earliest minute pending, so that most calls of
    /// [`HeldTally::take_done`] find nothing to do without a walk.
    oldest: i64,
    /// The most distinct entries pending ([`MAX_PENDING`] unless bound).
    max_pending: usize,
}

impl<H> Default for HeldTally<H> {
    fn default() -> Self {
        HeldTally {
            stats: HeldStats::default(),
            pending: HashMap::default(),
            oldest: i64::MAX,
            max_pending: MAX_PENDING,
        }
    }
}

impl<H> HeldTally<H> {
    /// Holds at most `n` distinct entries pending.
    pub fn bound(&mut self, n: usize) {
        self.max_pending = n;
    }
}

impl<H: Copy + Eq + Hash> HeldTally<H> {
    /// Counts one span that ended at collector time `at_ms`, held for
    /// `held`, between `a` (the sender) and `b` (its peer's host).
    pub fn add(
        &mut self,
        at_ms: i64,
        a: H,
        b: Option<H>,
        end: HeldEnd,
        held: Duration,
        episode: bool,
    ) {
        let i = bucket(held);
        let ms = u64::try_from(held.as_millis()).unwrap_or(u64::MAX);
        let h = &mut self.stats.by_end[end.index()];
        h.counts[i] += 1;
        h.sum_ms = h.sum_ms.saturating_add(ms);
        let key = Key {
            minute_ms: at_ms.div_euclid(MINUTE_MS) * MINUTE_MS,
            a,
            b,
            end,
            bucket: i as u8,
        };
        if self.pending.len() >= self.max_pending && !self.pending.contains_key(&key) {
            self.stats.dropped += 1;
            return;
        }
        self.oldest = self.oldest.min(key.minute_ms);
        let c = self.pending.entry(key).or_default();
        c.count += 1;
        c.episodes += u64::from(episode);
        c.total_ms = c.total_ms.saturating_add(ms);
        c.max_ms = c.max_ms.max(ms);
    }

    /// Takes the entries of every minute over at collector time `now_ms`
    /// (all of them when `all`, at shutdown).
    pub fn take_done(&mut self, now_ms: i64, all: bool) -> Vec<(Key<H>, Count)> {
        let current = now_ms.div_euclid(MINUTE_MS) * MINUTE_MS;
        if !all && self.oldest >= current {
            return Vec::new();
        }
        let mut done = Vec::new();
        let mut oldest = i64::MAX;
        self.pending.retain(|k, c| {
            let over = all || k.minute_ms < current;
            if over {
                done.push((*k, *c));
            } else {
                oldest = oldest.min(k.minute_ms);
            }
            !over
        });
        self.oldest = oldest;
        done
    }

    /// The entries not yet taken, for a query to add to the store's.
    pub fn pending(&self) -> impl Iterator<Item = (&Key<H>, &Count)> {
        self.pending.iter()
    }

    pub fn stats(&self) -> HeldStats {
        self.stats
    }

    #[cfg(test)]
    /// Entries waiting for their minute to end.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn buckets_take_each_held_time_below_its_bound() {
        assert_eq!(bucket(s(0.2)), 0);
        assert_eq!(bucket(s(1.0)), 0);
        assert_eq!(bucket(s(9.5)), 9, "(9, 10]");
        assert_eq!(bucket(s(10.5)), 10, "(10, 12]");
        assert_eq!(bucket(s(1e6)), BUCKETS - 1);
        assert_eq!(le_ms(9), 10_000);
        assert_eq!(le_ms(BUCKETS - 1), 0);
        for b in 0..BUCKETS {
            assert_eq!(bucket_of_le(le_ms(b)), Some(b));
        }
        assert_eq!(bucket_of_le(7), None);
    }

    #[test]
    fn spans_are_counted_by_end_and_by_minute_and_pair() {
        let mut t: HeldTally<u32> = HeldTally::default();
        t.add(60_500, 1, Some(2), HeldEnd::Reset, s(9.5), false);
        t.add(61_000, 1, Some(2), HeldEnd::Reset, s(9.7), false);
        t.add(65_000, 1, Some(2), HeldEnd::Reset, s(10.5), true);
        t.add(125_000, 1, None, HeldEnd::Moved, s(3.0), false);
        let st = t.stats();
        assert_eq!(st.by_end[HeldEnd::Reset.index()].count(), 3);
        assert_eq!(st.by_end[HeldEnd::Reset.index()].counts[9], 2);
        assert_eq!(st.by_end[HeldEnd::Reset.index()].sum_ms, 29_700);
        assert_eq!(st.by_end[HeldEnd::Moved.index()].count(), 1);
        // Within the first minute nothing is done yet; the query sees it.
        assert!(t.take_done(119_999, false).is_empty());
        assert_eq!(t.pending().count(), 3);
        let mut done = t.take_done(120_000, false);
        done.sort_by_key(|(k, _)| k.bucket);
        assert_eq!(done.len(), 2, "{done:?}");
        let (k, c) = done[0];
        assert_eq!(
            (k.minute_ms, k.a, k.b, k.end, k.bucket),
            (60_000, 1, Some(2), HeldEnd::Reset, 9)
        );
        assert_eq!(
            c,
            Count {
                count: 2,
                episodes: 0,
                total_ms: 19_200,
                max_ms: 9_700
            }
        );
        assert_eq!(done[1].1.episodes, 1);
        assert_eq!(t.pending_len(), 1, "the minute in progress stays");
        let rest = t.take_done(120_000, true);
        assert_eq!(
            (rest[0].0.minute_ms, rest[0].0.b),
            (120_000, None),
            "all at shutdown"
        );
        assert_eq!(t.pending_len(), 0);
        assert!(t.take_done(999_999, true).is_empty(), "taken once");
    }

    #[test]
    fn a_tally_given_a_smaller_bound_keeps_to_it() {
        let mut t: HeldTally<u32> = HeldTally::default();
        t.bound(3);
        for a in 0..5 {
            t.add(60_500, a, Some(99), HeldEnd::Drained, s(1.0), false);
        }
        // A pair already pending is still counted.
        t.add(60_600, 0, Some(99), HeldEnd::Drained, s(1.0), false);
        assert_eq!(t.pending_len(), 3);
        assert_eq!(t.stats().dropped, 2);
        assert_eq!(t.stats().by_end[HeldEnd::Drained.index()].count(), 6);
    }

    #[test]
    fn pending_entries_are_bounded_and_the_rest_counted_as_dropped() {
        let mut t: HeldTally<u32> = HeldTally::default();
        for a in 0..MAX_PENDING as u32 + 10 {
            t.add(0, a, None, HeldEnd::Drained, s(2.0), false);
        }
        assert_eq!(t.pending_len(), MAX_PENDING);
        assert_eq!(t.stats().dropped, 10);
        assert_eq!(
            t.stats().by_end[HeldEnd::Drained.index()].count(),
            MAX_PENDING as u64 + 10,
            "the histogram counts them all"
        );
        // An entry already pending still counts.
        t.add(0, 0, None, HeldEnd::Drained, s(2.0), false);
        assert_eq!(t.stats().dropped, 10);
    }
}
