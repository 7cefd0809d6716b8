//! The bounded buffer of batches waiting for the collector.
//!
//! Every batch goes through it: while the stream is up it is empty or
//! nearly so; while the agent is cut off it fills, and when full the oldest
//! batches are dropped and counted. The counters are stamped on each batch
//! as it leaves (and on each heartbeat), so the collector always learns the
//! latest totals, the buffered batches included.
//!
//! A poll's selection goes out as one or more batches (at most `batch_max`
//! entries each). The buffer is bounded in polls (`--buffer`, as many
//! polls as it kept when a poll was one batch) and in entries (`--buffer`
//! times [`crate::run::MAX_BATCH_ENTRIES`], the most those polls could hold
//! when a poll was cut at that size): however a poll is split, it never
//! holds more than it did.

use std::collections::VecDeque;
use std::time::Duration;

use tcpstall_common::{AgentBatch, Heartbeat};

/// Loss since the agent started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    pub batches: u64,
    pub samples: u64,
}

/// What [`Outbox::push_poll`] had to drop to make room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Batches dropped.
    pub batches: usize,
    /// Samples in them.
    pub samples: usize,
    /// All their entries (samples, closed, absent, lookups).
    pub entries: usize,
}

/// Entries of a batch: what bounds its size.
pub fn entries(b: &AgentBatch) -> usize {
    b.samples.len() + b.closed.len() + b.absent.len() + b.lookups.len()
}

/// Batches waiting to be sent, oldest first: at most `polls` polls' worth
/// and at most `max_entries` entries.
#[derive(Debug)]
pub struct Outbox {
    /// Each batch with the number of the poll it belongs to.
    queue: VecDeque<(u64, AgentBatch)>,
    max_polls: usize,
    max_entries: usize,
    /// Polls with a batch in the queue, and the entries queued.
    polls: usize,
    entries: usize,
    next_poll: u64,
    dropped: Dropped,
}

impl Outbox {
    /// A buffer of `polls` polls (at least one) and `max_entries` entries
    /// (at least one).
    pub fn new(polls: usize, max_entries: usize) -> Outbox {
        Outbox {
            queue: VecDeque::new(),
            max_polls: polls.max(1),
            max_entries: max_entries.max(1),
            polls: 0,
            entries: 0,
            next_poll: 0,
            dropped: Dropped::default(),
        }
    }

    /// Queues one poll's batches; while over either bound, drops the
    /// oldest batch and counts it (a poll larger than the entry bound on
    /// its own loses its first batches).
    pub fn push_poll(&mut self, batches: impl IntoIterator<Item = AgentBatch>) -> Option<Evicted> {
        let poll = self.next_poll;
        let before = self.queue.len();
        for b in batches {
            self.entries += entries(&b);
            self.queue.push_back((poll, b));
        }
        if self.queue.len() == before {
            return None;
        }
        self.next_poll += 1;
        self.polls += 1;
        let mut evicted = Evicted::default();
        while self.polls > self.max_polls || self.entries > self.max_entries {
            let Some(old) = self.pop_front() else {
                break;
            };
            self.count_lost(1, old.samples.len());
            evicted.batches += 1;
            evicted.samples += old.samples.len();
            evicted.entries += entries(&old);
        }
        (evicted.batches > 0).then_some(evicted)
    }

    /// The oldest batch, stamped with the loss counters as they are now.
    pub fn pop(&mut self) -> Option<AgentBatch> {
        let mut batch = self.pop_front()?;
        batch.dropped_batches = self.dropped.batches;
        batch.dropped_samples = self.dropped.samples;
        Some(batch)
    }

    fn pop_front(&mut self) -> Option<AgentBatch> {
        let (poll, batch) = self.queue.pop_front()?;
        self.entries -= entries(&batch);
        if self.queue.front().is_none_or(|(next, _)| *next != poll) {
            self.polls -= 1;
        }
        Some(batch)
    }

    /// Counts a loss that happened elsewhere (a batch lost with a broken
    /// stream).
    pub fn count_lost(&mut self, batches: u64, samples: usize) {
        self.dropped.batches = self.dropped.batches.saturating_add(batches);
        self.dropped.samples = self
            .dropped
            .samples
            .saturating_add(u64::try_from(samples).unwrap_or(u64::MAX));
    }

    /// A heartbeat carrying the loss counters.
    pub fn heartbeat(&self, mono: Duration, connections: u32) -> Heartbeat {
        Heartbeat {
            mono,
            connections,
            dropped_batches: self.dropped.batches,
            dropped_samples: self.dropped.samples,
        }
    }

    pub fn dropped(&self) -> Dropped {
        self.dropped
    }

    /// Batches waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    #[cfg(test)]
    /// Polls with a batch waiting, and the entries waiting.
    pub fn held(&self) -> (usize, usize) {
        (self.polls, self.entries)
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use tcpstall_common::{ClosedSocket, EndSample, SampleReason};

    use super::*;

    fn sample() -> (SampleReason, EndSample) {
        (SampleReason::Suspect, crate::run::tests::sample(1))
    }

    fn closed() -> ClosedSocket {
        let (_, s) = sample();
        ClosedSocket {
            netns: s.netns,
            flow: s.flow,
            cookie: s.cookie,
            held: None,
        }
    }

    fn us(mono_us: u64) -> Duration {
        Duration::from_micros(mono_us)
    }

    fn batch(mono_us: u64, samples: usize) -> AgentBatch {
        AgentBatch {
            mono: us(mono_us),
            samples: vec![sample(); samples],
            ..AgentBatch::default()
        }
    }

    /// One poll at `mono_us` of `samples` samples and `closed` closings,
    /// split in batches of at most `max` entries as the run loop does.
    fn poll(mono_us: u64, samples: usize, closed: usize, max: usize) -> Vec<AgentBatch> {
        let mut out = Vec::new();
        let (mut s, mut c) = (samples, closed);
        while s + c > 0 {
            let ks = s.min(max);
            let kc = c.min(max - ks);
            out.push(AgentBatch {
                mono: us(mono_us),
                samples: vec![sample(); ks],
                closed: vec![self::closed(); kc],
                ..AgentBatch::default()
            });
            (s, c) = (s - ks, c - kc);
        }
        out
    }

    #[test]
    fn keeps_order_and_drops_the_oldest_when_full() {
        let mut out = Outbox::new(2, 1000);
        assert_eq!(out.push_poll([batch(1, 3)]), None);
        assert_eq!(out.push_poll([batch(2, 1)]), None);
        let one = |samples| {
            Some(Evicted {
                batches: 1,
                samples,
                entries: samples,
            })
        };
        assert_eq!(out.push_poll([batch(3, 2)]), one(3));
        assert_eq!(out.push_poll([batch(4, 0)]), one(1));
        assert_eq!(out.len(), 2);
        assert_eq!(
            out.dropped(),
            Dropped {
                batches: 2,
                samples: 4
            }
        );
        let first = out.pop().expect("buffered");
        assert_eq!(
            (first.mono, first.dropped_batches, first.dropped_samples),
            (us(3), 2, 4)
        );
        let second = out.pop().expect("buffered");
        assert_eq!(second.mono, us(4));
        assert!(out.pop().is_none());
        assert!(out.is_empty());
        assert_eq!(out.held(), (0, 0));
    }

    #[test]
    fn counters_are_stamped_when_a_batch_leaves() {
        let mut out = Outbox::new(8, 1000);
        out.push_poll([batch(1, 1)]);
        out.count_lost(1, 5);
        let b = out.pop().expect("buffered");
        assert_eq!((b.dropped_batches, b.dropped_samples), (1, 5));
        let hb = out.heartbeat(us(77), 12);
        assert_eq!(
            (
                hb.mono,
                hb.connections,
                hb.dropped_batches,
                hb.dropped_samples
            ),
            (us(77), 12, 1, 5)
        );
    }

    #[test]
    fn capacity_is_at_least_one() {
        let mut out = Outbox::new(0, 0);
        out.push_poll([batch(1, 0)]);
        out.push_poll([batch(2, 0)]);
        assert_eq!(out.len(), 1);
        assert_eq!(out.pop().map(|b| b.mono), Some(us(2)));
    }

    #[test]
    fn nothing_to_queue_is_no_poll() {
        let mut out = Outbox::new(1, 10);
        out.push_poll([batch(1, 2)]);
        assert_eq!(out.push_poll([]), None);
        assert_eq!(out.held(), (1, 2));
    }

    #[test]
    fn split_polls_fit_as_many_as_whole_ones_did() {
        // Three polls of 300 samples and 20 closings, 128 entries a batch:
        // 3 batches each. A buffer of 2 polls keeps the last two whole.
        let mut out = Outbox::new(2, 2 * 8192);
        for mono in 1..=2 {
            assert_eq!(out.push_poll(poll(mono, 300, 20, 128)), None);
        }
        assert_eq!((out.len(), out.held()), (6, (2, 640)));
        let evicted = out.push_poll(poll(3, 300, 20, 128)).expect("full");
        assert_eq!(
            evicted,
            Evicted {
                batches: 3,
                samples: 300,
                entries: 320
            },
            "the whole oldest poll, every batch counted"
        );
        assert_eq!(
            out.dropped(),
            Dropped {
                batches: 3,
                samples: 300
            }
        );
        assert_eq!((out.len(), out.held()), (6, (2, 640)));
        let monos: Vec<u64> = std::iter::from_fn(|| out.pop())
            .map(|b| tcpstall_common::time::micros(b.mono))
            .collect();
        assert_eq!(monos, [2, 2, 2, 3, 3, 3], "in order, polls whole");
    }

    #[test]
    fn a_poll_partly_sent_still_counts_until_its_last_batch_leaves() {
        let mut out = Outbox::new(2, 1000);
        out.push_poll(poll(1, 300, 0, 128));
        out.push_poll(poll(2, 10, 0, 128));
        assert_eq!(out.pop().map(|b| b.samples.len()), Some(128));
        assert_eq!(out.held(), (2, 182));
        // A third poll: the oldest batches go until two polls remain.
        let evicted = out.push_poll(poll(3, 5, 0, 128)).expect("full");
        assert_eq!(
            (evicted.batches, evicted.samples),
            (2, 172),
            "poll 1's two remaining batches"
        );
        assert_eq!(out.held(), (2, 15));
    }

    #[test]
    fn entries_are_bounded_too() {
        // Room for 10 polls but 500 entries: a 300-sample poll and a
        // second one make 600; the oldest batches go until 500 or less.
        let mut out = Outbox::new(10, 500);
        assert_eq!(out.push_poll(poll(1, 300, 0, 128)), None);
        let evicted = out.push_poll(poll(2, 300, 0, 128)).expect("over");
        assert_eq!((evicted.batches, evicted.samples), (1, 128));
        assert_eq!(out.held(), (2, 472));
        assert_eq!(
            out.dropped(),
            Dropped {
                batches: 1,
                samples: 128
            }
        );
        // One poll beyond the bound on its own keeps its last entries.
        let mut out = Outbox::new(10, 200);
        let evicted = out.push_poll(poll(1, 300, 0, 128)).expect("over");
        assert_eq!((evicted.batches, evicted.samples), (1, 128));
        assert_eq!(out.held(), (1, 172));
    }
}
