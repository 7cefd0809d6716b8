//! The store thread: the only code that touches the connection (reads are
//! in `read`).
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

use rusqlite::{params, Connection};
use tcpstall_common::time::millis_i64;
use tcpstall_common::Clock;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::{read, schema, Command, StoreConfig, StoreError, StoreStats, MAX_BATCH};

/// Episodes deleted per statement while pruning, so that one prune of a
/// large backlog does not hold the write lock for long.
const PRUNE_CHUNK: i64 = 500;

/// Free pages given back to the file system per step of vacuum.
const VACUUM_STEP: i64 = 1000;

/// Size retention starts when the pages in use pass this share (%) of the
/// bound, and deletes until they are under [`SIZE_LOW`]: the 5 points
/// between are left for the writes of the commits before the next check
/// and for the free pages kept for reuse.
const SIZE_HIGH: u64 = 95;
const SIZE_LOW: u64 = 90;

/// Episodes deleted per turn of the store thread while getting under
/// [`SIZE_LOW`] (about 2,000 rows with their samples). At the 5 to 10
/// turns a second of a loaded store that is 500 to 1,000 episodes a
/// second, against the 315 a second the 1,000-agent bench writes.
const SIZE_CHUNK: i64 = 100;

/// Under a size bound, the WAL is checkpointed at 1/`WAL_SHARE` of it (but
/// at least every [`WAL_MIN_PAGES`] pages, and at most as without a bound).
const WAL_SHARE: i64 = 50;
const WAL_MIN_PAGES: i64 = 64;

/// Free pages kept for reuse, as a share (%) of the pages in use; only
/// those beyond it go back to the file system. Giving back pages that the
/// next minute's writes take again cost the store a vacuum (pages moved to
/// fill the holes) and the file system a truncate and a regrow each time.
const FREE_SLACK: i64 = 10;

/// One minute, in milliseconds: held spans are counted per minute.
const MINUTE_MS: i64 = 60_000;

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

/// SQLite's name for a database's WAL: the path with `-wal` appended.
fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
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

struct Worker {
    conn: Connection,
    rx: mpsc::Receiver<Command>,
    stats: Arc<StoreStats>,
    retention: Duration,
    /// Ages episodes for retention.
    clock: Clock,
    max_bytes: Option<u64>,
    /// The WAL file's path.
    wal: PathBuf,
    /// Between passing [`SIZE_HIGH`] and getting under [`SIZE_LOW`], and
    /// the episodes deleted since passing it.
    shrinking: Cell<bool>,
    shrunk: Cell<u64>,
    /// Minutes of held-span counts deleted meanwhile.
    held_minutes: Cell<u64>,
    /// The WAL's size that counts against the bound
    /// ([`Self::fit_wal_to_bound`]), and whether it is past that now
    /// (warned once each time).
    wal_budget: Cell<u64>,
    wal_held: Cell<bool>,
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
                match self.write(cmd) {
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

    /// The WAL counts against the size bound, so under a small bound it is
    /// checkpointed sooner than every [`schema::WAL_CHECKPOINT_PAGES`]:
    /// at [`WAL_SHARE`] of the bound, and its file is cut back to that
    /// after a checkpoint that let it grow past.
    fn fit_wal_to_bound(&self) {
        let page_size: i64 = self
            .conn
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .unwrap_or(4096)
            .max(512);
        let pages = match self.max_bytes {
            Some(max) => (i64::try_from(max).unwrap_or(i64::MAX) / page_size / WAL_SHARE)
                .clamp(WAL_MIN_PAGES, schema::WAL_CHECKPOINT_PAGES),
            None => schema::WAL_CHECKPOINT_PAGES,
        };
        let limit = match self.max_bytes {
            Some(_) => pages * page_size,
            None => -1,
        };
        self.wal_budget
            .set(u64::try_from(pages * page_size).unwrap_or(u64::MAX));
        for (pragma, value) in [("wal_autocheckpoint", pages), ("journal_size_limit", limit)] {
            if let Err(error) = self.conn.pragma_update(None, pragma, value) {
                warn!(%error, pragma, "store cannot set its WAL's size");
            }
        }
    }

    /// After a commit: retention by size, if the bound is near.
    fn keep_to_size(&self) {
        if self.max_bytes.is_some() {
            self.counting_pruned(|w| w.prune_to_size());
        }
    }

    /// Runs `prune`; if it says it deleted, counts every row it deleted
    /// (the samples their episodes cascade to included: SQLite counts
    /// those in total_changes, not changes) and gives the freed pages back.
    fn counting_pruned(&self, prune: impl FnOnce(&Self) -> bool) {
        let changes = self.conn.total_changes();
        if prune(self) {
            self.stats
                .pruned_rows(self.conn.total_changes().saturating_sub(changes));
            self.give_back_free_pages();
        }
    }

    /// Applies one write command; returns the rows it changed.
    fn write(&self, cmd: Command) -> Result<u64, StoreError> {
        let c = &self.conn;
        let rows = match cmd {
            Command::HostSeen(h) => c
                .prepare_cached(
                    "INSERT INTO hosts (host, kernel, agent_version, boot_id,
                                        first_seen_ms, last_seen_ms, connected)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5, 1)
                     ON CONFLICT (host) DO UPDATE SET
                        kernel = excluded.kernel,
                        agent_version = excluded.agent_version,
                        boot_id = excluded.boot_id,
                        last_seen_ms = max(last_seen_ms, excluded.last_seen_ms),
                        connected = 1",
                )?
                .execute(params![
                    h.host,
                    h.kernel,
                    h.agent_version,
                    h.boot_id,
                    h.at_ms
                ])?,
            Command::HostGone { host, at_ms } => c
                .prepare_cached(
                    "UPDATE hosts SET connected = 0, last_seen_ms = max(last_seen_ms, ?2)
                      WHERE host = ?1",
                )?
                .execute(params![host, at_ms])?,
            Command::OpenEpisode(e) => c
                .prepare_cached(
                    "INSERT INTO episodes (id, diagnosis, summary, evidence, started_at_ms,
                        duration_ms, stuck_bytes, a_host, a_netns, a_local, a_remote,
                        a_cookie, b_host, peer_note, open)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, 1)",
                )?
                .execute(params![
                    e.id,
                    e.diagnosis,
                    e.summary,
                    serde_json::to_string(&e.evidence)?,
                    e.started_at_ms,
                    int(e.duration_ms),
                    e.stuck_bytes,
                    e.a_host,
                    e.a_netns,
                    e.a_flow.local.to_string(),
                    e.a_flow.remote.to_string(),
                    read::cookie_to_sql(e.a_cookie),
                    e.b_host,
                    e.peer_note,
                ])?,
            Command::UpdateEpisode(u) => known(
                u.id,
                c.prepare_cached(
                    "UPDATE episodes SET diagnosis = ?2, summary = ?3, evidence = ?4,
                        b_host = ?5, peer_note = ?6, duration_ms = ?7, stuck_bytes = ?8
                      WHERE id = ?1",
                )?
                .execute(params![
                    u.id,
                    u.diagnosis,
                    u.summary,
                    serde_json::to_string(&u.evidence)?,
                    u.b_host,
                    u.peer_note,
                    int(u.duration_ms),
                    u.stuck_bytes,
                ])?,
            )?,
            Command::CloseEpisode { id, end } => known(
                id,
                c.prepare_cached(
                    "UPDATE episodes SET open = 0, ended_at_ms = ?2, end_reason = ?3,
                        duration_ms = ?4
                      WHERE id = ?1",
                )?
                .execute(params![
                    id,
                    end.ended_at_ms,
                    end.end_reason,
                    int(end.duration_ms)
                ])?,
            )?,
            Command::AddSamples { id, samples } => {
                // `sample` (the JSON of schema version 1) is NOT NULL: ''.
                let mut stmt = c.prepare_cached(
                    "INSERT INTO samples (episode_id, side, host, at_ms, sample, sample_pb)
                     VALUES (?1, ?2, ?3, ?4, '', ?5)",
                )?;
                let mut n = 0;
                for s in &samples {
                    n += stmt.execute(params![
                        id,
                        s.side.as_str(),
                        s.host,
                        s.at_ms,
                        s.sample.as_bytes()
                    ])?;
                }
                n
            }
            Command::AddHeld(rows) => {
                let mut stmt = c.prepare_cached(
                    "INSERT INTO held_spans (minute_ms, a_host, b_host, end_reason, le_ms,
                                             count, episodes, total_ms, max_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                     ON CONFLICT (minute_ms, a_host, b_host, end_reason, le_ms) DO UPDATE SET
                        count = count + excluded.count,
                        episodes = episodes + excluded.episodes,
                        total_ms = total_ms + excluded.total_ms,
                        max_ms = max(max_ms, excluded.max_ms)",
                )?;
                let mut n = 0;
                for r in &rows {
                    n += stmt.execute(params![
                        r.minute_ms,
                        r.a_host,
                        r.b_host,
                        r.end.id(),
                        int(r.le_ms),
                        int(r.count),
                        int(r.episodes),
                        int(r.total_ms),
                        int(r.max_ms),
                    ])?;
                }
                n
            }
            _ => 0,
        };
        Ok(rows as u64)
    }

    /// Retention: by age, then by size; counts what it deleted, and gives
    /// the freed pages back.
    fn prune(&self) {
        self.counting_pruned(|w| {
            w.prune_by_age();
            w.prune_to_size();
            true
        });
    }

    /// Deletes closed episodes that ended before now − retention, with
    /// their samples (ON DELETE CASCADE), a chunk per statement; and the
    /// held-span counts of minutes that old.
    fn prune_by_age(&self) {
        let cutoff = self
            .clock
            .now_ms()
            .saturating_sub(millis_i64(self.retention));
        let mut total = 0u64;
        loop {
            let deleted = self
                .conn
                .prepare_cached(schema::PRUNE_BY_AGE)
                .and_then(|mut s| s.execute(params![cutoff, PRUNE_CHUNK]));
            match deleted {
                Ok(0) => break,
                Ok(n) => {
                    total += n as u64;
                    self.stats.pruned(n as u64);
                }
                Err(error) => {
                    warn!(%error, "store prune failed");
                    break;
                }
            }
        }
        if total > 0 {
            info!(
                episodes = total,
                cutoff_ms = cutoff,
                "store pruned old episodes"
            );
        }
        // Held-span counts: a row per minute and pair, by age alone.
        if let Err(error) = self
            .conn
            .prepare_cached("DELETE FROM held_spans WHERE minute_ms < ?1")
            .and_then(|mut s| s.execute(params![cutoff]))
        {
            warn!(%error, "store prune of held spans failed");
        }
    }

    /// Bytes held by the database's pages in use (the file less its free
    /// pages), and by the WAL file beside it up to its budget (what it
    /// holds between checkpoints, cut back to after one): that much counts
    /// against the bound as the disk sees it. Beyond its budget the WAL
    /// is held by a reader's snapshot (a long export, someone's sqlite3
    /// shell; a checkpoint cannot pass it), and is not counted: deleting
    /// episodes cannot shrink it, and would only write more of it.
    fn used_bytes(&self) -> rusqlite::Result<u64> {
        let pragma = |name: &str| -> rusqlite::Result<i64> {
            self.conn.pragma_query_value(None, name, |r| r.get(0))
        };
        let used = (pragma("page_count")? - pragma("freelist_count")?).max(0);
        let wal = std::fs::metadata(&self.wal).map_or(0, |m| m.len());
        let budget = self.wal_budget.get();
        // A commit's frames may pass the budget before the checkpoint it
        // brings; twice the budget is a reader's doing.
        let held = wal / 2 > budget;
        if held && !self.wal_held.replace(true) {
            warn!(
                wal_bytes = wal,
                budget,
                "store's WAL is past its budget: a reader holds an old snapshot, so \
                 checkpoints cannot reset it; it is not counted against the size bound"
            );
        } else if !held {
            self.wal_held.set(false);
        }
        Ok(u64::try_from(used * pragma("page_size")?).unwrap_or(0) + wal.min(budget))
    }

    /// Once the pages in use pass [`SIZE_HIGH`] of `max_bytes`, deletes the
    /// oldest ended episodes and held-span minutes until they are under
    /// [`SIZE_LOW`] of it ([`Self::delete_oldest`]): one step per call,
    /// so that the writes and reads queued meanwhile go first (deleting a round's 5 % of a 1 GiB store at once
    /// held the store thread for seconds, and every episode due then was
    /// listed late). Only past the bound itself does one call delete until
    /// it is back under. Open episodes are never deleted. Runs after every
    /// commit (three pragmas when there is nothing to do), so the file
    /// follows its bound within a commit's writes, not within a retention
    /// tick's. Says whether it deleted anything.
    fn prune_to_size(&self) -> bool {
        let Some(max) = self.max_bytes else {
            return false;
        };
        let high = max / 100 * SIZE_HIGH;
        let target = max / 100 * SIZE_LOW;
        let (mut total, mut deleted_any) = (0u64, false);
        loop {
            let used = match self.used_bytes() {
                Ok(u) => u,
                Err(error) => {
                    warn!(%error, "store size check failed");
                    return deleted_any;
                }
            };
            if used > high {
                self.shrinking.set(true);
            }
            if used <= target || !self.shrinking.get() || (deleted_any && used <= max) {
                break;
            }
            match self.delete_oldest() {
                Ok(Oldest::Nothing) => {
                    warn!(
                        used,
                        max, "store above its size bound with only open episodes left"
                    );
                    self.shrinking.set(false);
                    break;
                }
                Ok(Oldest::Episodes(n)) => {
                    total += n;
                    self.stats.pruned(n);
                }
                Ok(Oldest::HeldMinute) => self.held_minutes.set(self.held_minutes.get() + 1),
                Err(error) => {
                    warn!(%error, "store size prune failed");
                    break;
                }
            }
            deleted_any = true;
        }
        if self.shrinking.get() {
            let round = self.shrunk.get() + total;
            self.shrunk.set(round);
            let done = self.used_bytes().is_ok_and(|used| used <= target);
            if done {
                self.shrinking.set(false);
                self.shrunk.set(0);
                info!(
                    episodes = round,
                    held_minutes = self.held_minutes.replace(0),
                    max_bytes = max,
                    "store pruned its oldest episodes and held-span minutes to stay under its size bound"
                );
            }
        }
        deleted_any
    }

    /// One step of retention by size: the oldest minute of held-span
    /// counts if it ended before the oldest ended episode did, else a
    /// chunk of [`SIZE_CHUNK`] of the oldest ended episodes. Both tables
    /// so keep the same stretch of time; held-span counts (up to 65,536
    /// rows a minute at 1,000 agents, a quarter of the file after an
    /// hour) would otherwise outgrow the bound by themselves within hours,
    /// retention by age being days, and leave room for no episode at all.
    fn delete_oldest(&self) -> rusqlite::Result<Oldest> {
        let c = &self.conn;
        let ended: Option<i64> = c
            .prepare_cached(schema::OLDEST_ENDED)?
            .query_row([], |r| r.get(0))?;
        let minute: Option<i64> = c
            .prepare_cached(schema::OLDEST_HELD_MINUTE)?
            .query_row([], |r| r.get(0))?;
        match (minute, ended) {
            (Some(m), e) if e.is_none_or(|e| m.saturating_add(MINUTE_MS) <= e) => {
                c.prepare_cached(schema::PRUNE_HELD_MINUTE)?.execute([m])?;
                Ok(Oldest::HeldMinute)
            }
            (_, None) => Ok(Oldest::Nothing),
            (_, Some(_)) => {
                let n = c
                    .prepare_cached(schema::PRUNE_OLDEST)?
                    .execute(params![SIZE_CHUNK])?;
                Ok(Oldest::Episodes(n as u64))
            }
        }
    }

    /// Returns free pages to the file system beyond those kept for reuse
    /// ([`FREE_SLACK`]; all beyond the size bound, if the file is past
    /// it), in steps of at most [`VACUUM_STEP`] pages, so that writes never
    /// wait long behind it. In WAL mode the file only shrinks when the WAL
    /// is checkpointed: a passive checkpoint follows (it waits for no
    /// reader or writer).
    fn give_back_free_pages(&self) {
        let mut stepped = false;
        self.vacuum_steps(&mut stepped);
        if stepped {
            if let Err(error) = self.conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
                warn!(%error, "store checkpoint after vacuum failed");
            }
        }
    }

    /// Free pages beyond those kept for reuse; 0 if the file is not
    /// vacuumed incrementally (files created before `auto_vacuum` was set
    /// reuse their free pages, which bounds them as well).
    fn free_pages_to_give_back(&self) -> rusqlite::Result<i64> {
        let pragma = |name: &str| -> rusqlite::Result<i64> {
            self.conn.pragma_query_value(None, name, |r| r.get(0))
        };
        // 2 = incremental.
        if pragma("auto_vacuum")? != 2 {
            return Ok(0);
        }
        let (pages, free) = (pragma("page_count")?, pragma("freelist_count")?);
        let mut excess = free - (pages - free) * FREE_SLACK / 100;
        if let Some(max) = self.max_bytes {
            // The pages alone: the WAL grows with every page a vacuum
            // moves, and would ask for more.
            let max_pages = i64::try_from(max).unwrap_or(i64::MAX) / pragma("page_size")?.max(1);
            excess = excess.max(pages - max_pages);
        }
        Ok(excess.clamp(0, free))
    }

    fn vacuum_steps(&self, stepped: &mut bool) {
        loop {
            let excess = match self.free_pages_to_give_back() {
                Ok(n) => n,
                Err(error) => {
                    warn!(%error, "store free page count failed");
                    return;
                }
            };
            if excess == 0 {
                return;
            }
            let step = excess.min(VACUUM_STEP);
            if let Err(error) = self
                .conn
                .execute_batch(&format!("PRAGMA incremental_vacuum({step})"))
            {
                warn!(%error, "store incremental vacuum failed");
                return;
            }
            *stepped = true;
            // Let queued writes in between steps.
            if !self.rx.is_empty() {
                return;
            }
        }
    }
}

/// What one step of retention by size deleted.
enum Oldest {
    /// A chunk of ended episodes, with their samples.
    Episodes(u64),
    /// One minute of held-span counts.
    HeldMinute,
    /// Nothing: only open episodes are left.
    Nothing,
}

/// An UPDATE that matched no row names an episode the store never had.
fn known(id: i64, rows: usize) -> Result<usize, StoreError> {
    if rows == 0 {
        Err(StoreError::UnknownEpisode { id })
    } else {
        Ok(rows)
    }
}
