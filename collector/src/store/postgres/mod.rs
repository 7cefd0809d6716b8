//! The store as one PostgreSQL database that every collector node shares
//! (fleet mode): [`PgStore`] is the handle the other roles hold (as a
//! [`SharedStore`](super::SharedStore)), and one writer task per node does
//! the rest over one connection.
//!
//! Writes are fire-and-forget as the [`Store`] trait says: a write is
//! admitted when fewer than [`PgConfig::queue`] writes are held (queued,
//! or taken by the writer and not yet committed), and refused and counted
//! in `dropped` otherwise, never waited for. The writer applies them in the
//! order sent, in batched transactions. When PostgreSQL goes away (a
//! restart, a failover, the network) the writer keeps every write it holds,
//! reconnects with a jittered backoff, and applies them when PostgreSQL is
//! back; meanwhile the bound holds, so what does not fit is refused and
//! counted exactly. A transaction that fails for one write's own sake (a
//! value PostgreSQL refuses) is rolled back and run again without that
//! write, which is logged and counted in `write_errors`: no other write is
//! lost with it.
//!
//! Reads, flushes and new limits travel the same queue, so they see every
//! write sent before them, as with SQLite. Where PostgreSQL differs:
//! - while PostgreSQL is away a read waits, behind the writes before it,
//!   until the writer has reconnected and applied them (the query service's
//!   caller sees a slow answer, not a wrong one);
//! - a read sees the writes of other nodes too, as far as they committed;
//! - the database is shared, so opening does not end the episodes left
//!   open or mark the hosts disconnected (other nodes are running); and a
//!   shutdown that finds PostgreSQL away waits [`SHUTDOWN_GRACE`] for it,
//!   then counts what it still holds in `write_errors`;
//! - retention is by age only: the size bound (`max_db_bytes`) is SQLite's
//!   (PostgreSQL's disk is its administrator's, and deleted rows free
//!   space for reuse, not on disk).
//!
//! Submodules: [`schema`] (migrations under an advisory lock), `writer`
//! (the task, its batches and reconnects, retention), `write` (each write as
//! idempotent SQL) and `read` (queries and decoding).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tcpstall_common::Clock;
use tokio::sync::{mpsc, oneshot, Notify};

use super::queue::{Command, Reply, StoreStats};
use super::{
    BoxFuture, EpisodeEnd, EpisodeCount, EpisodeFilter, EpisodeRow, EpisodeUpdate, HeldFilter, HeldRow,
    HostRecord, HostRow, NewEpisode, Store, StoreError, StoreStatsSnapshot, StoredEpisode,
    StoredSample,
};

mod read;
pub mod schema;
mod write;
mod writer;

/// How long a shutdown waits for PostgreSQL to come back before it gives
/// up the writes it holds (counted in `write_errors`).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Queue slots beyond the write bound, for reads, flushes and the
/// shutdown, so that a full write queue never refuses them.
const CONTROL_SLOTS: usize = 64;

/// Where and how the store keeps its data.
#[derive(Clone)]
pub struct PgConfig {
    /// What the client connects with (password included).
    pub target: tokio_postgres::Config,
    /// The store's URL with its password hidden: what logs and errors show.
    pub shown: String,
    /// Closed episodes that ended longer ago than this are deleted with
    /// their samples, and held-span minutes that old.
    pub retention: Duration,
    /// How often the store looks for episodes to delete.
    pub retention_every: Duration,
    /// Most writes held at once (queued, or being applied); more are
    /// refused and counted in `dropped`.
    pub queue: usize,
    /// The wall clock retention ages episodes by.
    pub clock: Clock,
    /// The longest wait between two reconnect attempts.
    pub reconnect_ceiling: Duration,
}

impl PgConfig {
    /// A store on `target`, shown as `shown`, with the SQLite store's
    /// default retention and queue.
    pub fn new(target: tokio_postgres::Config, shown: impl Into<String>) -> PgConfig {
        PgConfig {
            target,
            shown: shown.into(),
            retention: super::StoreConfig::DEFAULT_RETENTION,
            retention_every: super::StoreConfig::DEFAULT_RETENTION_EVERY,
            queue: super::StoreConfig::DEFAULT_QUEUE,
            clock: Clock::system(),
            reconnect_ceiling: Duration::from_secs(5),
        }
    }
}

impl std::fmt::Debug for PgConfig {
    /// Without the target: it holds the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("store", &self.shown)
            .field("retention", &self.retention)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

/// What the handles share with the writer besides the queue.
#[derive(Debug, Default)]
struct Shared {
    stats: StoreStats,
    /// Writes admitted and not yet committed or given up.
    held: AtomicUsize,
    /// A shutdown was asked for: the writer stops waiting for PostgreSQL
    /// after [`SHUTDOWN_GRACE`].
    closing: AtomicBool,
    closing_now: Notify,
}

impl Shared {
    /// `n` held writes left the store (committed, failed or given up).
    fn release(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::AcqRel);
    }
}

/// A handle on the PostgreSQL store. Cheap to clone; the writer stops when
/// every handle is dropped or [`Store::shutdown`] is called.
#[derive(Debug, Clone)]
pub struct PgStore {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    bound: usize,
}

impl PgStore {
    /// Connects, brings the schema up to date (or refuses a newer one) and
    /// starts the writer on a thread of its own ([`writer::spawn`]).
    ///
    /// Returns the handle, the writer task, and one more than the highest
    /// episode id stored (where a single node allocates ids from; fleet
    /// mode gives episodes their identity's id, [`super::episode_id_of`]).
    pub async fn open(
        cfg: PgConfig,
    ) -> Result<(PgStore, tokio::task::JoinHandle<()>, i64), StoreError> {
        let mut conn = writer::Conn::connect(&cfg.target)
            .await
            .map_err(|source| StoreError::PgConnect {
                store: cfg.shown.clone(),
                source,
            })?;
        schema::migrate(&mut conn.client, &cfg.shown).await?;
        let next_id = schema::next_episode_id(&conn.client).await?;
        // The statements prepare on this schema (checked here, so that a
        // store that cannot take them fails the start); the writer makes
        // its own connection, driven by its own thread.
        conn.prepare().await?;
        drop(conn);
        let bound = cfg.queue.max(1);
        let (tx, rx) = mpsc::channel(bound + CONTROL_SLOTS);
        let shared = Arc::new(Shared::default());
        tracing::info!(store = %cfg.shown, schema = schema::SCHEMA_VERSION, "store opened");
        let task = writer::spawn(writer::Writer::new(cfg, rx, shared.clone()))
            .map_err(StoreError::Spawn)?;
        Ok((PgStore { tx, shared, bound }, task, next_id))
    }

    fn write(&self, cmd: Command) -> bool {
        let refuse = || {
            self.shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
            false
        };
        if self.shared.held.fetch_add(1, Ordering::AcqRel) >= self.bound {
            self.shared.release(1);
            return refuse();
        }
        match self.tx.try_send(cmd) {
            Ok(()) => true,
            Err(_) => {
                self.shared.release(1);
                refuse()
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

impl Store for PgStore {
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

    /// Adds held-span counts. Not idempotent: a batch applied again after
    /// a COMMIT whose answer was lost, or a partition replayed by another
    /// node, may count its held spans twice (see `write`).
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

    /// New retention; the size bound is SQLite's and is ignored here.
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

    /// Applies everything queued before it and stops the writer, even
    /// while other handles remain (their later writes are counted as
    /// dropped). With PostgreSQL away it waits [`SHUTDOWN_GRACE`] for it.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.shared.closing.store(true, Ordering::Release);
            self.shared.closing_now.notify_waiters();
            let (reply, answer) = oneshot::channel();
            if self.tx.send(Command::Shutdown(reply)).await.is_ok() {
                let _ = answer.await;
            }
        })
    }

    fn stats(&self) -> StoreStatsSnapshot {
        self.shared.stats.snapshot()
    }
}
