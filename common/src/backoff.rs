//! Waits between attempts (the agent's link to its collectors, the
//! collector's to PostgreSQL): jittered exponential backoff from `backon`,
//! with a ceiling that is a ceiling.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Jittered exponential backoff whose ceiling is a ceiling.
///
/// `backon`'s jitter adds up to 100% on top of the delay it computed, and
/// its `max_delay` caps the delay before jitter: a `max_delay` of 30 s
/// would wait up to 60 s. So the delay before jitter is capped at half the
/// ceiling, and jitter brings it to [half, ceiling).
/// The first retry after a failure waits about `first` (doubled by jitter
/// at most), unless the ceiling is lower.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: <ExponentialBuilder as BackoffBuilder>::Backoff,
    ceiling: Duration,
}

impl Backoff {
    pub fn new(first: Duration, ceiling: Duration) -> Backoff {
        let half = ceiling / 2;
        let builder = ExponentialBuilder::new()
            .with_jitter()
            .with_factor(2.0)
            .with_min_delay(first.min(half))
            .with_max_delay(half)
            .without_max_times();
        Backoff {
            builder,
            delays: builder.build(),
            ceiling,
        }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        // `min` only trims the nanoseconds backon's f32 arithmetic may add.
        self.delays.next().unwrap_or(self.ceiling).min(self.ceiling)
    }

    /// Back to the first, short wait.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST_RETRY: Duration = Duration::from_millis(200);

    #[test]
    fn the_ceiling_is_a_ceiling() {
        for ceiling_ms in [100u64, 301, 1000, 30_000, 3_600_000] {
            let ceiling = Duration::from_millis(ceiling_ms);
            let mut b = Backoff::new(FIRST_RETRY, ceiling);
            let mut reached = Duration::ZERO;
            for _ in 0..2000 {
                let d = b.next_delay();
                assert!(d <= ceiling, "{d:?} above the ceiling {ceiling:?}");
                assert!(d >= FIRST_RETRY.min(ceiling / 2), "{d:?} too short");
                reached = reached.max(d);
            }
            assert!(
                reached >= ceiling / 2,
                "{ceiling:?}: the delays grow to the ceiling, reached {reached:?}"
            );
        }
    }

    #[test]
    fn delays_grow_and_are_jittered_then_reset() {
        let mut b = Backoff::new(FIRST_RETRY, Duration::from_secs(30));
        let first: Vec<Duration> = (0..4).map(|_| b.next_delay()).collect();
        for (i, d) in first.iter().enumerate() {
            // f32 arithmetic in backon may be off by a few nanoseconds.
            let base = FIRST_RETRY * (1 << i);
            let slack = Duration::from_micros(1);
            assert!(
                *d + slack >= base && *d < base * 2 + slack,
                "attempt {i}: {d:?}"
            );
        }
        let plateau: Vec<Duration> = (0..50).map(|_| b.next_delay()).skip(10).collect();
        assert!(
            plateau.windows(2).any(|w| w[0] != w[1]),
            "jittered, not all equal: {plateau:?}"
        );
        b.reset();
        let d = b.next_delay();
        assert!(d < FIRST_RETRY * 2, "reset starts short again: {d:?}");
    }
}
