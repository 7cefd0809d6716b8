//! The store as one SQLite file, written by one OS thread that owns the
//! connection: [`SqliteStore`] is the handle the other roles hold (as a
//! [`SharedStore`](super::SharedStore)), and the thread does the rest.
//!
//! The async side never touches SQLite. Writes go into a bounded queue
//! with `try_send`, and when the queue is full they are counted and
//! refused, never waited for. The store thread takes a command with
//! `blocking_recv`, drains what else is queued (up to `MAX_BATCH`) and
//! applies the writes in one transaction (group commit). Reads and flushes
//! travel the same queue with a oneshot reply, so they see every write
//! sent before them. Pruning by age runs on the same thread, woken by a
//! small ticker thread.
//!
//! Timestamps (`*_at_ms`) are Unix epoch milliseconds of the collector's
//! clock; retention compares them with the collector's clock too.
//!
//! Submodules: [`schema`] (pragmas, migrations, the restart sweep),
//! `worker` (the thread and its group-commit loop), `write` (each write as
//! SQL), `retention` (pruning by age and by size, giving pages back) and
//! `read` (queries and decoding).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tcpstall_common::Clock;
use tokio::sync::{mpsc, oneshot};

pub(crate) use super::queue::{Command, Reply, StoreStats};
use super::{
    BoxFuture, EpisodeEnd, EpisodeCount, EpisodeFilter, EpisodeRow, EpisodeUpdate, HeldFilter, HeldRow,
    HostRecord, HostRow, NewEpisode, Store, StoreError, StoreStatsSnapshot, StoredEpisode,
    StoredSample,
};

pub(crate) mod read;
mod retention;
pub mod schema;
mod worker;
mod write;

/// Most commands the store thread applies in one transaction.
pub(crate) const MAX_BATCH: usize = 4096;

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

/// A handle on the SQLite store. Cheap to clone; the thread stops when
/// every handle is dropped or [`Store::shutdown`] is called.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    tx: mpsc::Sender<Command>,
    stats: Arc<StoreStats>,
}

impl SqliteStore {
    /// Opens or creates the database (WAL, synchronous=NORMAL, a busy
    /// timeout, foreign keys on), brings its schema up to date, ends the
    /// episodes an earlier run left open with
    /// [`EndReason::CollectorRestart`](tcpstall_common::EndReason::CollectorRestart),
    /// marks every host disconnected until its agent says hello again, and
    /// starts the store thread.
    ///
    /// Returns the handle, the thread, and the next free episode id: the
    /// caller allocates ids from it and never waits for the database.
    ///
    /// This blocks on SQLite: call it before the async runtime's work
    /// starts or from `spawn_blocking`.
    pub fn open(cfg: StoreConfig) -> Result<(SqliteStore, JoinHandle<()>, i64), StoreError> {
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
        Ok((SqliteStore { tx, stats }, thread, next_id))
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

    async fn ask<T>(&self, cmd: impl FnOnce(Reply<T>) -> Command) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(cmd(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

impl Store for SqliteStore {
    fn host_seen(&self, h: HostRecord) -> bool {
        self.write(Command::HostSeen(h))
    }

    fn host_gone(&self, host: &str, at_ms: i64) -> bool {
        self.write(Command::HostGone {
            host: host.to_string(),
            at_ms,
        })
    }

    fn open_episode(&self, e: NewEpisode) -> bool {
        self.write(Command::OpenEpisode(Box::new(e)))
    }

    fn update_episode(&self, u: EpisodeUpdate) -> bool {
        self.write(Command::UpdateEpisode(Box::new(u)))
    }

    fn close_episode(&self, id: i64, end: EpisodeEnd) -> bool {
        self.write(Command::CloseEpisode { id, end })
    }

    fn add_samples(&self, id: i64, samples: Vec<StoredSample>) -> bool {
        self.write(Command::AddSamples { id, samples })
    }

    fn add_held(&self, rows: Vec<HeldRow>) -> bool {
        self.write(Command::AddHeld(rows))
    }

    fn list_episodes(
        &self,
        f: EpisodeFilter,
    ) -> BoxFuture<'_, Result<Vec<EpisodeRow>, StoreError>> {
        Box::pin(self.ask(|r| Command::ListEpisodes(f, r)))
    }

    fn count_episodes(
        &self,
        f: EpisodeFilter,
        bucket_ms: i64,
    ) -> BoxFuture<'_, Result<Vec<EpisodeCount>, StoreError>> {
        Box::pin(self.ask(move |r| Command::CountEpisodes(f, bucket_ms, r)))
    }

    fn get_episode(&self, id: i64) -> BoxFuture<'_, Result<Option<StoredEpisode>, StoreError>> {
        Box::pin(self.ask(move |r| Command::GetEpisode(id, r)))
    }

    fn list_held(&self, f: HeldFilter) -> BoxFuture<'_, Result<Vec<HeldRow>, StoreError>> {
        Box::pin(self.ask(|r| Command::ListHeld(f, r)))
    }

    fn list_hosts(&self) -> BoxFuture<'_, Result<Vec<HostRow>, StoreError>> {
        Box::pin(self.ask(Command::ListHosts))
    }

    fn set_limits(&self, retention: Duration, max_bytes: Option<u64>) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            self.tx
                .send(Command::SetLimits {
                    retention,
                    max_bytes,
                })
                .await
                .is_ok()
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            self.tx
                .send(Command::Flush(reply))
                .await
                .map_err(|_| StoreError::Closed)?;
            answer.await.map_err(|_| StoreError::Closed)
        })
    }

    /// Applies everything queued before it, commits, closes the database
    /// and stops the thread, even while other handles remain (their later
    /// writes are counted as dropped).
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let (reply, answer) = oneshot::channel();
            if self.tx.send(Command::Shutdown(reply)).await.is_ok() {
                // An error means the thread is gone already: nothing to wait for.
                let _ = answer.await;
            }
        })
    }

    fn stats(&self) -> StoreStatsSnapshot {
        self.stats.snapshot()
    }
}
