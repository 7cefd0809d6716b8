//! Time as tcpstall carries it: durations as the whole microseconds or
//! milliseconds the wire, SQLite and logs hold, instants as Unix
//! milliseconds, and the wall clock read through one [`Clock`] so that
//! tests can set it.
//!
//! Two clocks meet in tcpstall and never mix: each agent's monotonic clock
//! (a `Duration` since an arbitrary start, only its differences mean
//! anything elsewhere) and the collector's wall clock (Unix milliseconds,
//! `i64`, as stored).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Whole microseconds of `d`, saturating (an agent clock reading on the
/// wire, or in a table where half a `Duration`'s size counts).
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Whole milliseconds of `d`, saturating.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whole milliseconds of `d` as a signed count, saturating: for arithmetic
/// with Unix milliseconds.
pub fn millis_i64(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Unix milliseconds of `t`; 0 before 1970.
pub fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, millis_i64)
}

/// Unix milliseconds `ms` as an RFC 3339 UTC time to the second, for
/// people (logs, messages); times before 1970 read as 1970.
pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The collector's wall clock, Unix milliseconds. Every component that
/// stamps or ages a record reads it through one of these, handed to it at
/// start, never `SystemTime::now()` past it: a test hands a [`ManualClock`]
/// (or an async runtime's paused clock, through [`Clock::from_fn`]) and the
/// whole collector sees the same time.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    /// The system's wall clock, read at each call.
    pub fn system() -> Clock {
        Clock(Arc::new(|| unix_ms(SystemTime::now())))
    }

    /// The wall clock at this call, advanced by a monotonic clock from
    /// then on (a step of the system clock does not move it backwards).
    pub fn monotonic() -> Clock {
        let (wall0, t0) = (unix_ms(SystemTime::now()), Instant::now());
        Clock(Arc::new(move || {
            wall0.saturating_add(millis_i64(t0.elapsed()))
        }))
    }

    /// A clock that reads `f`.
    pub fn from_fn(f: impl Fn() -> i64 + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(f))
    }

    /// A clock stopped at `ms`, moved only by its [`ManualClock`].
    pub fn manual(ms: i64) -> (Clock, ManualClock) {
        let now = Arc::new(std::sync::atomic::AtomicI64::new(ms));
        let read = now.clone();
        let clock = Clock(Arc::new(move || {
            read.load(std::sync::atomic::Ordering::Relaxed)
        }));
        (clock, ManualClock(now))
    }

    /// Now, Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Clock({})", self.now_ms())
    }
}

/// The hand that moves a [`Clock::manual`].
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<std::sync::atomic::AtomicI64>);

impl ManualClock {
    pub fn set(&self, ms: i64) {
        self.0.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn advance(&self, d: Duration) {
        self.0
            .fetch_add(millis_i64(d), std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_saturate_instead_of_wrapping() {
        assert_eq!(micros(Duration::from_millis(1500)), 1_500_000);
        assert_eq!(millis(Duration::from_micros(2999)), 2);
        assert_eq!(micros(Duration::MAX), u64::MAX);
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(millis_i64(Duration::MAX), i64::MAX);
    }

    #[test]
    fn rfc3339_reads_to_the_second() {
        assert_eq!(rfc3339(1_796_635_201_999), "2026-12-07T09:20:01Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn unix_ms_is_zero_before_the_epoch() {
        assert_eq!(unix_ms(UNIX_EPOCH + Duration::from_millis(1234)), 1234);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }

    #[test]
    fn a_manual_clock_moves_only_by_its_hand() {
        let (clock, hand) = Clock::manual(1_000);
        let copy = clock.clone();
        assert_eq!(clock.now_ms(), 1_000);
        hand.advance(Duration::from_secs(2));
        assert_eq!(copy.now_ms(), 3_000);
        hand.set(5);
        assert_eq!(clock.now_ms(), 5);
    }

    #[test]
    fn the_monotonic_clock_starts_at_the_wall_clock() {
        let before = unix_ms(SystemTime::now());
        let c = Clock::monotonic().now_ms();
        let after = unix_ms(SystemTime::now());
        assert!(before <= c && c <= after, "{before} <= {c} <= {after}");
    }
}
