//! The collector's store: hosts, episodes and samples of both ends in one
//! SQLite file, written by one OS thread that owns the connection.
//!
//! The async side never touches SQLite. Writes are fire-and-forget: they go
//! into a bounded queue with `try_send`, and when the queue is full they are
//! counted in [`StoreStats`] and refused, never waited for. The store thread
//! takes a command with `blocking_recv`, drains what else is queued (up to
//! [`MAX_BATCH`]) and applies the writes in one transaction (group commit).
//! Reads and [`Store::flush`] travel the same queue with a oneshot reply, so
//! they see every write sent before them. Pruning by age runs on the same
//! thread, woken by a small ticker thread.
//!
//! Timestamps (`*_at_ms`) are Unix epoch milliseconds of the collector's
//! clock; retention compares them with the collector's clock too.
//!
//! Submodules: `records` (the domain records stored and read back),
//! [`schema`] (pragmas, migrations, the restart sweep), `worker` (the
//! thread: group commit, pruning) and `read` (queries and decoding).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tcpstall_common::Clock;
use tokio::sync::{mpsc, oneshot};

mod read;
mod records;
pub mod schema;
mod worker;

pub use records::{
    EpisodeEnd, EpisodeFilter, EpisodeRow, EpisodeUpdate, HeldFilter, HeldRow, HostRecord, HostRow,
    NewEpisode, StoredSample,
};

/// Most commands the store thread applies in one transaction.
pub const MAX_BATCH: usize = 4096;
/// Rows [`Store::list_episodes`] returns when the filter's limit is 0, and
/// the most it returns whatever the filter asks.
pub use tcpstall_common::record::{DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};

/// Where and how the store keeps its data.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The SQLite file; created when missing (its directory must exist).
    pub path: PathBuf,
    /// Closed episodes that ended longer ago than this are deleted with
    /// their samples. Open episodes are never deleted.
    pub retention: Duration,
    /// How often the store looks for episodes to delete.
    pub retention_every: Duration,
    /// Most bytes the database's pages may hold: past it, the oldest ended
    /// episodes are deleted until it is back under 90 % of it. `None`:
    /// bounded by age only.
    pub max_bytes: Option<u64>,
    /// Capacity of the bounded command queue.
    pub queue: usize,
    /// The wall clock retention ages episodes by.
    pub clock: Clock,
}

impl StoreConfig {
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
    pub const DEFAULT_RETENTION_EVERY: Duration = Duration::from_secs(60);
    pub const DEFAULT_QUEUE: usize = 65536;

    /// A store at `path` with the default retention and queue.
    pub fn new(path: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            path: path.into(),
            retention: Self::DEFAULT_RETENTION,
            retention_every: Self::DEFAULT_RETENTION_EVERY,
            max_bytes: None,
            queue: Self::DEFAULT_QUEUE,
            clock: Clock::system(),
        }
    }
}

impl Default for StoreConfig {
    /// `tcpstall.db` in the working directory, with the default retention.
    fn default() -> StoreConfig {
        StoreConfig::new("tcpstall.db")
    }
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
    /// The store thread has stopped (shut down, or it never started).
    #[error("the store has stopped")]
    Closed,
}

/// The store's counters, shared between the handles and the thread.
#[derive(Debug, Default)]
pub struct StoreStats {
    dropped: AtomicU64,
    committed_rows: AtomicU64,
    transactions: AtomicU64,
    last_commit_micros: AtomicU64,
    max_commit_micros: AtomicU64,
    write_errors: AtomicU64,
    pruned_episodes: AtomicU64,
    pruned_rows: AtomicU64,
    samples_stored: AtomicU64,
}

/// A copy of [`StoreStats`] at one moment.
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

impl StoreStats {
    pub fn snapshot(&self) -> StoreStatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreStatsSnapshot {
            dropped: get(&self.dropped),
            committed_rows: get(&self.committed_rows),
            transactions: get(&self.transactions),
            last_commit_micros: get(&self.last_commit_micros),
            max_commit_micros: get(&self.max_commit_micros),
            write_errors: get(&self.write_errors),
            pruned_episodes: get(&self.pruned_episodes),
            pruned_rows: get(&self.pruned_rows),
            samples_stored: get(&self.samples_stored),
        }
    }

    fn committed(&self, rows: u64, samples: u64, micros: u64) {
        self.committed_rows.fetch_add(rows, Ordering::Relaxed);
        self.samples_stored.fetch_add(samples, Ordering::Relaxed);
        self.transactions.fetch_add(1, Ordering::Relaxed);
        self.last_commit_micros.store(micros, Ordering::Relaxed);
        self.max_commit_micros.fetch_max(micros, Ordering::Relaxed);
    }

    fn write_failed(&self, n: u64) {
        self.write_errors.fetch_add(n, Ordering::Relaxed);
    }

    /// Writes accepted into the queue but behind a shutdown.
    fn dropped_after_shutdown(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    fn pruned(&self, n: u64) {
        self.pruned_episodes.fetch_add(n, Ordering::Relaxed);
    }

    fn pruned_rows(&self, n: u64) {
        self.pruned_rows.fetch_add(n, Ordering::Relaxed);
    }
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// What the handles ask of the store thread.
#[derive(Debug)]
enum Command {
    HostSeen(HostRecord),
    HostGone {
        host: String,
        at_ms: i64,
    },
    OpenEpisode(Box<NewEpisode>),
    UpdateEpisode(Box<EpisodeUpdate>),
    CloseEpisode {
        id: i64,
        end: EpisodeEnd,
    },
    AddSamples {
        id: i64,
        samples: Vec<StoredSample>,
    },
    AddHeld(Vec<HeldRow>),
    ListEpisodes(EpisodeFilter, Reply<Vec<EpisodeRow>>),
    ListHeld(HeldFilter, Reply<Vec<HeldRow>>),
    GetEpisode(i64, Reply<Option<(EpisodeRow, Vec<StoredSample>)>>),
    ListHosts(Reply<Vec<HostRow>>),
    Flush(oneshot::Sender<()>),
    Prune,
    SetLimits {
        retention: Duration,
        max_bytes: Option<u64>,
    },
    Shutdown(oneshot::Sender<()>),
}

impl Command {
    fn is_write(&self) -> bool {
        matches!(
            self,
            Command::HostSeen(_)
                | Command::HostGone { .. }
                | Command::OpenEpisode(_)
                | Command::UpdateEpisode(_)
                | Command::CloseEpisode { .. }
                | Command::AddSamples { .. }
                | Command::AddHeld(_)
        )
    }

    /// A name for logs.
    fn kind(&self) -> &'static str {
        match self {
            Command::HostSeen(_) => "host_seen",
            Command::HostGone { .. } => "host_gone",
            Command::OpenEpisode(_) => "open_episode",
            Command::UpdateEpisode(_) => "update_episode",
            Command::CloseEpisode { .. } => "close_episode",
            Command::AddSamples { .. } => "add_samples",
            Command::AddHeld(_) => "add_held",
            Command::ListEpisodes(..) => "list_episodes",
            Command::ListHeld(..) => "list_held",
            Command::GetEpisode(..) => "get_episode",
            Command::ListHosts(_) => "list_hosts",
            Command::Flush(_) => "flush",
            Command::Prune => "prune",
            Command::SetLimits { .. } => "set_limits",
            Command::Shutdown(_) => "shutdown",
        }
    }
}

/// A handle on the store. Cheap to clone; the thread stops when every
/// handle is dropped or [`Store::shutdown`] is called.
#[derive(Debug, Clone)]
pub struct Store {
    tx: mpsc::Sender<Command>,
    stats: Arc<StoreStats>,
}

impl Store {
    /// Opens or creates the database (WAL, synchronous=NORMAL, a busy
    /// timeout, foreign keys on), brings its schema up to date, ends the
    /// episodes an earlier run left open with
    /// [`EndReason::CollectorRestart`],
    /// marks every host disconnected until its agent says hello again, and
    /// starts the store thread.
    ///
    /// Returns the handle, the thread, and the next free episode id: the
    /// caller allocates ids from it and never waits for the database.
    ///
    /// This blocks on SQLite: call it before the async runtime's work
    /// starts or from `spawn_blocking`.
    pub fn open(cfg: StoreConfig) -> Result<(Store, JoinHandle<()>, i64), StoreError> {
        let mut conn = schema::open(&cfg.path)?;
        schema::migrate(&mut conn, &cfg.path)?;
        let ended = schema::end_left_open(&conn)?;
        if ended > 0 {
            tracing::info!(
                episodes = ended,
                "ended episodes left open by an earlier run"
            );
        }
        let next_id = schema::next_episode_id(&conn)?;
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let stats = Arc::new(StoreStats::default());
        let thread = worker::spawn(conn, rx, tx.downgrade(), stats.clone(), &cfg)
            .map_err(StoreError::Spawn)?;
        Ok((Store { tx, stats }, thread, next_id))
    }

    /// The shared counters.
    pub fn stats(&self) -> &Arc<StoreStats> {
        &self.stats
    }

    /// Commands waiting in the queue now.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    fn write(&self, cmd: Command) -> bool {
        match self.tx.try_send(cmd) {
            Ok(()) => true,
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Records an agent's hello: inserts the host or refreshes it, and marks
    /// it connected. `false` when the write was dropped.
    pub fn host_seen(&self, h: HostRecord) -> bool {
        self.write(Command::HostSeen(h))
    }

    /// Marks a host disconnected.
    pub fn host_gone(&self, host: &str, at_ms: i64) -> bool {
        self.write(Command::HostGone {
            host: host.to_string(),
            at_ms,
        })
    }

    pub fn open_episode(&self, e: NewEpisode) -> bool {
        self.write(Command::OpenEpisode(Box::new(e)))
    }

    pub fn update_episode(&self, u: EpisodeUpdate) -> bool {
        self.write(Command::UpdateEpisode(Box::new(u)))
    }

    pub fn close_episode(&self, id: i64, end: EpisodeEnd) -> bool {
        self.write(Command::CloseEpisode { id, end })
    }

    pub fn add_samples(&self, id: i64, samples: Vec<StoredSample>) -> bool {
        self.write(Command::AddSamples { id, samples })
    }

    /// Adds counts of held spans: each row's figures are added to those
    /// already stored for its minute, pair, end and bucket.
    pub fn add_held(&self, rows: Vec<HeldRow>) -> bool {
        self.write(Command::AddHeld(rows))
    }

    async fn ask<T>(&self, cmd: impl FnOnce(Reply<T>) -> Command) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(cmd(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Episodes matching `f`, newest first (by start, then id).
    pub async fn list_episodes(&self, f: EpisodeFilter) -> Result<Vec<EpisodeRow>, StoreError> {
        self.ask(|r| Command::ListEpisodes(f, r)).await
    }

    /// Held spans counted over the filter's window, one row per host pair,
    /// end and bucket (`minute_ms`: the latest minute), busiest pairs
    /// first.
    pub async fn list_held(&self, f: HeldFilter) -> Result<Vec<HeldRow>, StoreError> {
        self.ask(|r| Command::ListHeld(f, r)).await
    }

    /// One episode with its samples in time order.
    pub async fn get_episode(
        &self,
        id: i64,
    ) -> Result<Option<(EpisodeRow, Vec<StoredSample>)>, StoreError> {
        self.ask(|r| Command::GetEpisode(id, r)).await
    }

    /// Every host ever seen, by name.
    pub async fn list_hosts(&self) -> Result<Vec<HostRow>, StoreError> {
        self.ask(Command::ListHosts).await
    }

    /// New retention limits (a reloaded config); applied, with a prune, in
    /// queue order.
    pub async fn set_limits(&self, retention: Duration, max_bytes: Option<u64>) -> bool {
        self.tx
            .send(Command::SetLimits {
                retention,
                max_bytes,
            })
            .await
            .is_ok()
    }

    /// A barrier: returns once every write sent before it is committed (or
    /// has failed and been counted).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Flush(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)
    }

    /// Applies everything queued before it, commits, closes the database
    /// and stops the thread, even while other handles remain (their later
    /// writes are counted as dropped).
    pub async fn shutdown(self) {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Command::Shutdown(reply)).await.is_ok() {
            // An error means the thread is gone already: nothing to wait for.
            let _ = answer.await;
        }
    }
}
