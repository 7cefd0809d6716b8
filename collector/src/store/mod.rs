//! The store role: what the collector keeps once it has seen it, and gives
//! back to operators.
//!
//! It owns the episodes (opened, updated, closed), the samples of both
//! ends kept for each episode, the held-span counts (every held send queue
//! that ended, per minute, host pair, end and duration bucket), and the
//! hosts that ever said hello; the queries over them; and retention (by
//! age, and by size under a bound). The other roles see it only through
//! the [`Store`] trait, held as a [`SharedStore`]. [`sqlite`] is the
//! implementation a single collector runs, one SQLite file written by one
//! OS thread; [`postgres`] is the one collector nodes share in fleet mode,
//! one PostgreSQL database written by one task per node. Which one a
//! collector opens is its `store` setting ([`StoreUrl`]).
//!
//! How writes flow: a write is fire-and-forget. It goes into a bounded
//! queue without waiting and without an await, and says only whether it
//! was accepted; one that finds the queue full (or the store stopped) is
//! refused and counted ([`StoreStatsSnapshot::dropped`]), never waited
//! for, so the matcher's hot path never blocks on the disk. Writes are
//! applied in the order they were sent. A read, [`Store::flush`] or
//! [`Store::set_limits`] waits its turn behind every write sent before it,
//! so it sees all of them.
//!
//! The records that cross this seam (`records`) are plain domain data:
//! samples travel in the [`Packed`](tcpstall_common::Packed) encoding the
//! collector already holds them in, and come back as the same bytes.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub mod postgres;
mod queue;
mod records;
pub mod sqlite;
mod url;

pub use records::{
    EpisodeEnd, EpisodeCount, EpisodeFilter, EpisodeRow, EpisodeUpdate, HeldFilter, HeldRow, HostRecord, HostRow,
    NewEpisode, StoredSample, VerdictBasis,
};
pub use postgres::{PgConfig, PgStore};
pub use sqlite::{SqliteStore, StoreConfig};
pub use url::StoreUrl;


/// A future the store hands back from a read or a barrier: boxed, so that
/// [`Store`] can be used as a trait object (reads are rare; writes never
/// return one).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How the other roles hold the store.
pub type SharedStore = Arc<dyn Store>;

/// One episode with its samples in time order, as
/// [`Store::get_episode`] gives it back.
pub type StoredEpisode = (EpisodeRow, Vec<StoredSample>);

/// The store role, as the gateway, the matcher, the query service and the
/// metrics use it.
///
/// Writes return at once: `true` when the write was queued, `false` when
/// it was refused (queue full, or the store stopped) and counted in
/// [`StoreStatsSnapshot::dropped`]. A write that is queued but then fails
/// is counted in [`StoreStatsSnapshot::write_errors`]. Reads see every
/// write sent before them.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Records an agent's hello: inserts the host or refreshes it, and
    /// marks it connected.
    fn host_seen(&self, h: HostRecord) -> bool;

    /// Marks a host disconnected as of `at_ms`.
    fn host_gone(&self, host: &str, at_ms: i64) -> bool;

    /// Stores a new, open episode under the id the caller allocated.
    fn open_episode(&self, e: NewEpisode) -> bool;

    /// Replaces an open episode's diagnosis, evidence and figures.
    fn update_episode(&self, u: EpisodeUpdate) -> bool;

    /// Ends episode `id`.
    fn close_episode(&self, id: i64, end: EpisodeEnd) -> bool;

    /// Adds samples to episode `id`.
    fn add_samples(&self, id: i64, samples: Vec<StoredSample>) -> bool;

    /// Adds counts of held spans: each row's figures are added to those
    /// already stored for its minute, pair, end and bucket.
    fn add_held(&self, rows: Vec<HeldRow>) -> bool;

    /// Episodes matching `f`, newest first (by start, then id), at most
    /// [`EpisodeFilter::effective_limit`] of them.
    fn list_episodes(&self, f: EpisodeFilter)
        -> BoxFuture<'_, Result<Vec<EpisodeRow>, StoreError>>;

    /// How many episodes matching `f` (its limit and `after` aside)
    /// started in each `bucket_ms`-wide bucket, per diagnosis, by bucket.
    fn count_episodes(
        &self,
        f: EpisodeFilter,
        bucket_ms: i64,
    ) -> BoxFuture<'_, Result<Vec<EpisodeCount>, StoreError>>;

    /// One episode with its samples in time order; `None` when there is
    /// no such episode.
    fn get_episode(&self, id: i64) -> BoxFuture<'_, Result<Option<StoredEpisode>, StoreError>>;

    /// Held spans counted over the filter's window, one row per host pair,
    /// end and bucket (`minute_ms`: the latest minute), busiest pairs
    /// first.
    fn list_held(&self, f: HeldFilter) -> BoxFuture<'_, Result<Vec<HeldRow>, StoreError>>;

    /// Every host ever seen, by name.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // tests; the hosts page to come
    fn list_hosts(&self) -> BoxFuture<'_, Result<Vec<HostRow>, StoreError>>;

    /// New retention limits (a reloaded config): closed episodes older than
    /// `retention` go, and under `max_bytes` the oldest ones go first.
    /// Applied, with a prune, in queue order; `false` when the store has
    /// stopped.
    fn set_limits(&self, retention: Duration, max_bytes: Option<u64>) -> BoxFuture<'_, bool>;

    /// A barrier: returns once every write sent before it is stored (or has
    /// failed and been counted).
    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // the tests' barrier
    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Applies everything sent before it, and stops the store, even while
    /// other holders remain (their later writes are refused and counted).
    fn shutdown(&self) -> BoxFuture<'_, ()>;

    /// The store's counters now.
    fn stats(&self) -> StoreStatsSnapshot;
}

/// What the store refuses or fails at.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the database {path} has schema version {found}, newer than the {known} this \
         collector knows; refusing to use it (run a newer collector or another --db)"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// A stored value that does not decode (edited by hand, or a bug).
    #[error("episode {id}: column {column} holds {value:?}, which does not decode")]
    Corrupt {
        id: i64,
        column: &'static str,
        value: String,
    },
    /// A stored value outside an episode that does not decode.
    #[error("{table}: column {column} holds {value:?}, which does not decode")]
    CorruptRow {
        table: &'static str,
        column: &'static str,
        value: String,
    },
    /// An update or close named an episode that is not stored.
    #[error("no episode {id}")]
    UnknownEpisode { id: i64 },
    #[error("cannot start the store thread: {0}")]
    Spawn(std::io::Error),
    /// The store has stopped (shut down, or it never started).
    #[error("the store has stopped")]
    Closed,
    /// PostgreSQL refused the connection or the login; `store` is the
    /// setting's URL with its password hidden.
    #[error("cannot connect to the store {store}: {source}")]
    PgConnect {
        store: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "the store {store} has schema version {found}, newer than the {known} this \
         collector knows; refusing to use it (run a newer collector or another --store)"
    )]
    PgTooNew {
        store: String,
        found: i64,
        known: i64,
    },
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

/// An episode's id from its identity: the flow's direction-free key and
/// when the episode started. Two collector nodes that judge the same flow
/// (a partition taken over and replayed) give its episode the same id, so
/// the store keeps it once.
///
/// FNV-1a over the key's endpoints (each address's octets, then its port,
/// big-endian) and the start (big-endian), the same in every process and
/// build; folded to 53 bits (so that JSON readers keep it exact) and never
/// 0. Two episodes of different identity share an id with a chance of
/// about n²/2⁵⁴ among n episodes (one in 18,000 for 10⁶ kept episodes). The
/// PostgreSQL store then keeps the first one's row, and the second one's
/// updates and samples land on it: rare enough to accept, not impossible.
// Fleet mode's matcher gives episodes these ids; until then, tests.
#[cfg_attr(not(feature = "internals"), allow(dead_code))]
pub fn episode_id_of(key: tcpstall_common::FlowKey, start_ms: i64) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for end in [key.0, key.1] {
        match end.ip() {
            std::net::IpAddr::V4(v4) => eat(&v4.octets()),
            std::net::IpAddr::V6(v6) => eat(&v6.octets()),
        }
        eat(&end.port().to_be_bytes());
    }
    eat(&start_ms.to_be_bytes());
    // The high bits folded onto the low 53: FNV's low bits alone mix less.
    let id = (h ^ (h >> 53)) & ((1u64 << 53) - 1);
    i64::try_from(id.max(1)).unwrap_or(1)
}

/// The store's counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStatsSnapshot {
    /// Writes refused because the queue was full or the store had stopped.
    pub dropped: u64,
    /// Rows inserted, updated or deleted by committed transactions.
    pub committed_rows: u64,
    /// Write transactions committed.
    pub transactions: u64,
    /// How long the latest write transaction took, BEGIN to COMMIT.
    pub last_commit_micros: u64,
    /// The longest one since the store opened.
    pub max_commit_micros: u64,
    /// Writes that failed in SQLite (logged) or were lost with a failed
    /// commit.
    pub write_errors: u64,
    /// Episodes deleted by retention.
    pub pruned_episodes: u64,
    /// Rows deleted by retention: episodes, their samples, held-span
    /// counts.
    pub pruned_rows: u64,
    /// Sample rows inserted by committed transactions (the store's main
    /// load; with `pruned_rows`, how fast the file turns over).
    pub samples_stored: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcpstall_common::FlowTuple;

    fn key(a: &str, b: &str) -> tcpstall_common::FlowKey {
        FlowTuple::new(a.parse().expect("addr"), b.parse().expect("addr")).key()
    }

    #[test]
    fn episode_ids_are_fixed_direction_free_json_safe_and_positive() {
        let k = key("10.0.0.1:40000", "10.0.0.2:5432");
        // Pinned: a change here changes every fleet's ids, so that nodes of
        // two builds would store one episode twice.
        assert_eq!(episode_id_of(k, 1_700_000_000_000), 6_466_634_943_132_853);
        assert_eq!(
            episode_id_of(key("[2001:db8::1]:443", "[2001:db8::2]:51000"), 0),
            8_235_091_986_606_857
        );
        assert_eq!(
            episode_id_of(key("10.0.0.2:5432", "10.0.0.1:40000"), 1_700_000_000_000),
            episode_id_of(k, 1_700_000_000_000),
            "either end's view"
        );
        assert_ne!(episode_id_of(k, 1), episode_id_of(k, 2));
        for start in [i64::MIN, -1, 0, 1, i64::MAX] {
            let id = episode_id_of(k, start);
            assert!(id > 0 && id < 1 << 53, "{start}: {id}");
        }
    }

    #[test]
    fn episode_ids_spread_over_flows_and_starts() {
        let mut ids = std::collections::HashSet::new();
        let mut top = [0u32; 8];
        for port in 40_000..42_000u16 {
            for start in [0, 1_000, 2_000, 1_700_000_000_000] {
                let id = episode_id_of(key(&format!("10.0.0.1:{port}"), "10.0.0.2:5432"), start);
                assert!(ids.insert(id), "collision at {port} {start}");
                // The top 3 of the 53 bits: every eighth of the range used.
                top[usize::try_from(id >> 50).expect("3 bits")] += 1;
            }
        }
        for (i, n) in top.iter().enumerate() {
            assert!((800..1200).contains(n), "eighth {i}: {n} of 8000");
        }
    }
}
