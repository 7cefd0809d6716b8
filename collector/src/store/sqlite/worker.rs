//! The store thread: the only code that touches the connection, and its
//! group-commit loop. What each write does in SQL is in `write`, the
//! reads in `read`, pruning and the size bound in `retention`.
//!
//! Each turn takes one command with `blocking_recv` (when it is a write,
//! lets [`GATHER`] pass for others to join it), drains up to [`MAX_BATCH`]
//! more without waiting, and applies the writes among them in one
//! transaction. A read, a flush, a prune or a shutdown in the batch
//! first commits what came before it, so it sees (and, for a flush,
//! guarantees) every earlier write. A write that fails is logged and
//! counted, and the thread goes on.
//!
//! A ticker thread wakes the store every `retention_every` to prune. It
//! holds only a weak sender, so it never keeps the store alive, and it
//! stops as soon as the store thread drops its end of the stop channel.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tcpstall_common::Clock;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::{read, write, Command, StoreConfig, StoreStats, MAX_BATCH};

/// How long the first write of a transaction waits for others to join it.
/// Reads and flushes that arrive meanwhile wait as long, once.
const GATHER: Duration = Duration::from_millis(100);

/// Starts the ticker and the store thread.
pub(super) fn spawn(
    conn: Connection,
    rx: mpsc::Receiver<Command>,
    weak: mpsc::WeakSender<Command>,
    stats: Arc<StoreStats>,
    cfg: &StoreConfig,
) -> std::io::Result<JoinHandle<()>> {
    let (stop, stopped) = std_mpsc::channel::<()>();
    let every = cfg.retention_every.max(Duration::from_millis(1));
    let ticker = std::thread::Builder::new()
        .name("tcpstall-store-tick".into())
        .spawn(move || tick(weak, every, stopped))?;
    let worker = Worker {
        conn,
        rx,
        stats,
        retention: cfg.retention,
        clock: cfg.clock.clone(),
        max_bytes: cfg.max_bytes,
        wal: wal_path(&cfg.path),
        shrinking: Cell::new(false),
        shrunk: Cell::new(0),
        held_minutes: Cell::new(0),
        wal_budget: Cell::new(u64::MAX),
        wal_held: Cell::new(false),
    };
    std::thread::Builder::new()
        .name("tcpstall-store".into())
        .spawn(move || {
            let ack = worker.run();
            // Dropping the stop sender wakes the ticker at once.
            drop(stop);
            if ticker.join().is_err() {
                warn!("store ticker thread panicked");
            }
            if let Some(ack) = ack {
                let _ = ack.send(());
            }
        })
}

fn tick(weak: mpsc::WeakSender<Command>, every: Duration, stopped: std_mpsc::Receiver<()>) {
    while let Err(std_mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
        let Some(tx) = weak.upgrade() else { return };
        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Command::Prune) {
            return;
        }
        // A full queue skips this prune; the next tick tries again.
    }
}

/// A write transaction in progress.
struct Txn {
    started: Instant,
    /// BEGIN succeeded (if not, the writes ran one by one).
    began: bool,
    writes: u64,
    rows: u64,
    /// Of them, sample rows inserted.
    samples: u64,
}

/// The store thread's state: the connection, the queue's receiving end,
/// the counters, and what retention keeps between turns (its methods are
/// in `retention`).
pub(super) struct Worker {
    pub(super) conn: Connection,
    pub(super) rx: mpsc::Receiver<Command>,
    pub(super) stats: Arc<StoreStats>,
    pub(super) retention: Duration,
    /// Ages episodes for retention.
    pub(super) clock: Clock,
    pub(super) max_bytes: Option<u64>,
    /// The WAL file's path.
    pub(super) wal: PathBuf,
    /// Between passing the size bound's high mark and getting under its
    /// low mark (see `retention`), and the episodes deleted since passing
    /// it.
    pub(super) shrinking: Cell<bool>,
    pub(super) shrunk: Cell<u64>,
    /// Minutes of held-span counts deleted meanwhile.
    pub(super) held_minutes: Cell<u64>,
    /// The WAL's size that counts against the bound
    /// ([`Self::fit_wal_to_bound`]), and whether it is past that now
    /// (warned once each time).
    pub(super) wal_budget: Cell<u64>,
    pub(super) wal_held: Cell<bool>,
}

impl Worker {
    /// Runs until every sender is gone or a shutdown arrives; returns the
    /// shutdown's acknowledgement, sent once the connection is closed.
    fn run(mut self) -> Option<oneshot::Sender<()>> {
        self.fit_wal_to_bound();
        self.prune();
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = self.rx.blocking_recv() {
            let gather = first.is_write();
            batch.push(first);
            if gather {
                // Writes trickle in a few at a time; a commit costs about
                // the same for one row as for hundreds (WAL pages, index
                // pages, the checkpoint it brings nearer). Let them gather.
                std::thread::sleep(GATHER);
            }
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            if let Some(ack) = self.apply(&mut batch) {
                self.rx.close();
                let mut late = 0u64;
                while let Ok(c) = self.rx.try_recv() {
                    late += u64::from(c.is_write());
                }
                self.stats.dropped_after_shutdown(late);
                info!("store shut down");
                return Some(ack);
            }
        }
        debug!("every store handle dropped; store thread stops");
        None
    }

    /// Applies one batch; returns a shutdown's acknowledgement if the batch
    /// held one (commands after it are counted as dropped).
    fn apply(&mut self, batch: &mut Vec<Command>) -> Option<oneshot::Sender<()>> {
        let mut txn: Option<Txn> = None;
        let mut cmds = batch.drain(..);
        let mut shutdown = None;
        for cmd in cmds.by_ref() {
            if cmd.is_write() {
                let t = txn.get_or_insert_with(|| self.begin());
                let kind = cmd.kind();
                let samples = matches!(cmd, Command::AddSamples { .. });
                match write::apply(&self.conn, cmd) {
                    Ok(rows) => {
                        t.writes += 1;
                        t.rows += rows;
                        if samples {
                            t.samples += rows;
                        }
                    }
                    Err(error) => {
                        self.stats.write_failed(1);
                        warn!(%error, kind, "store write failed");
                    }
                }
                continue;
            }
            self.commit(txn.take());
            match cmd {
                Command::ListEpisodes(f, reply) => {
                    let _ = reply.send(read::list_episodes(&self.conn, &f));
                }
                Command::CountEpisodes(f, bucket_ms, reply) => {
                    let _ = reply.send(read::count_episodes(&self.conn, &f, bucket_ms));
                }
                Command::ListHeld(f, reply) => {
                    let _ = reply.send(read::list_held(&self.conn, &f));
                }
                Command::GetEpisode(id, reply) => {
                    let _ = reply.send(read::get_episode(&self.conn, id));
                }
                Command::ListHosts(reply) => {
                    let _ = reply.send(read::list_hosts(&self.conn));
                }
                Command::Flush(reply) => {
                    let _ = reply.send(());
                }
                Command::Prune => self.prune(),
                Command::SetLimits {
                    retention,
                    max_bytes,
                } => {
                    (self.retention, self.max_bytes) = (retention, max_bytes);
                    self.fit_wal_to_bound();
                    self.prune();
                }
                Command::Shutdown(ack) => {
                    shutdown = Some(ack);
                    break;
                }
                _ => {}
            }
        }
        let late = cmds.filter(Command::is_write).count();
        self.stats.dropped_after_shutdown(late as u64);
        self.commit(txn.take());
        shutdown
    }

    fn begin(&self) -> Txn {
        let began = match self.conn.execute_batch("BEGIN") {
            Ok(()) => true,
            Err(error) => {
                warn!(%error, "store cannot begin a transaction; writing row by row");
                false
            }
        };
        Txn {
            started: Instant::now(),
            began,
            writes: 0,
            rows: 0,
            samples: 0,
        }
    }

    fn commit(&self, txn: Option<Txn>) {
        let Some(t) = txn else { return };
        if t.began {
            if self.conn.is_autocommit() {
                // SQLite rolled the transaction back itself (disk full, I/O).
                self.stats.write_failed(t.writes);
                warn!(
                    writes = t.writes,
                    "store transaction was rolled back by SQLite"
                );
                return;
            }
            if let Err(error) = self.conn.execute_batch("COMMIT") {
                self.stats.write_failed(t.writes);
                warn!(%error, writes = t.writes, "store commit failed; rolling back");
                if let Err(error) = self.conn.execute_batch("ROLLBACK") {
                    warn!(%error, "store rollback failed");
                }
                return;
            }
        }
        let micros = u64::try_from(t.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.stats.committed(t.rows, t.samples, micros);
        self.keep_to_size();
    }
}

/// SQLite's name for a database's WAL: the path with `-wal` appended.
fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}
