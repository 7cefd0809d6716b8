//! The bounded buffer of batches waiting for the collector.
//!
//! Every batch goes through it: while the stream is up it is empty or
//! nearly so; while the agent is cut off it fills, and when full the oldest
//! batch is dropped and counted. The counters are stamped on each batch as
//! it leaves (and on each heartbeat), so the collector always learns the
//! latest totals, the buffered batches included.

use std::collections::VecDeque;

use tcpstall_proto::v1;

/// Loss since the agent started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    pub batches: u64,
    pub samples: u64,
}

/// What [`Outbox::push`] had to drop to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// Samples in the dropped batch.
    pub samples: usize,
}

/// Batches waiting to be sent, oldest first, at most `capacity`.
#[derive(Debug)]
pub struct Outbox {
    queue: VecDeque<v1::Batch>,
    capacity: usize,
    dropped: Dropped,
}

impl Outbox {
    /// A buffer of `capacity` batches (at least one).
    pub fn new(capacity: usize) -> Outbox {
        Outbox {
            queue: VecDeque::new(),
            capacity: capacity.max(1),
            dropped: Dropped::default(),
        }
    }

    /// Queues a batch; when full, drops the oldest and counts it.
    pub fn push(&mut self, batch: v1::Batch) -> Option<Evicted> {
        let evicted = if self.queue.len() >= self.capacity {
            self.queue.pop_front().map(|old| {
                self.count_lost(1, old.samples.len());
                Evicted {
                    samples: old.samples.len(),
                }
            })
        } else {
            None
        };
        self.queue.push_back(batch);
        evicted
    }

    /// The oldest batch, stamped with the loss counters as they are now.
    pub fn pop(&mut self) -> Option<v1::Batch> {
        let mut batch = self.queue.pop_front()?;
        batch.dropped_batches = self.dropped.batches;
        batch.dropped_samples = self.dropped.samples;
        Some(batch)
    }

    /// Counts a loss that happened elsewhere (a batch lost with a broken
    /// stream, samples cut from an oversized batch).
    pub fn count_lost(&mut self, batches: u64, samples: usize) {
        self.dropped.batches = self.dropped.batches.saturating_add(batches);
        self.dropped.samples = self
            .dropped
            .samples
            .saturating_add(u64::try_from(samples).unwrap_or(u64::MAX));
    }

    /// A heartbeat carrying the loss counters.
    pub fn heartbeat(&self, mono_us: u64, connections: u32) -> v1::Heartbeat {
        v1::Heartbeat {
            mono_us,
            connections,
            dropped_batches: self.dropped.batches,
            dropped_samples: self.dropped.samples,
        }
    }

    pub fn dropped(&self) -> Dropped {
        self.dropped
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(mono_us: u64, samples: usize) -> v1::Batch {
        v1::Batch {
            mono_us,
            samples: vec![v1::Sample::default(); samples],
            ..v1::Batch::default()
        }
    }

    #[test]
    fn keeps_order_and_drops_the_oldest_when_full() {
        let mut out = Outbox::new(2);
        assert_eq!(out.push(batch(1, 3)), None);
        assert_eq!(out.push(batch(2, 1)), None);
        assert_eq!(out.push(batch(3, 2)), Some(Evicted { samples: 3 }));
        assert_eq!(out.push(batch(4, 0)), Some(Evicted { samples: 1 }));
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
            (first.mono_us, first.dropped_batches, first.dropped_samples),
            (3, 2, 4)
        );
        let second = out.pop().expect("buffered");
        assert_eq!(second.mono_us, 4);
        assert!(out.pop().is_none());
        assert!(out.is_empty());
    }

    #[test]
    fn counters_are_stamped_when_a_batch_leaves() {
        let mut out = Outbox::new(8);
        out.push(batch(1, 1));
        out.count_lost(1, 5);
        let b = out.pop().expect("buffered");
        assert_eq!((b.dropped_batches, b.dropped_samples), (1, 5));
        let hb = out.heartbeat(77, 12);
        assert_eq!(
            (
                hb.mono_us,
                hb.connections,
                hb.dropped_batches,
                hb.dropped_samples
            ),
            (77, 12, 1, 5)
        );
    }

    #[test]
    fn capacity_is_at_least_one() {
        let mut out = Outbox::new(0);
        out.push(batch(1, 0));
        out.push(batch(2, 0));
        assert_eq!(out.len(), 1);
        assert_eq!(out.pop().map(|b| b.mono_us), Some(2));
    }
}
