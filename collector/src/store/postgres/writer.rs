//! The writer task: the only code that uses the node's connection to the
//! store, its batches, its reconnects, and retention.
//!
//! Each turn takes what is queued (a write first lets [`GATHER`] pass for
//! others to join it, up to [`MAX_BATCH`](crate::store::sqlite::MAX_BATCH)
//! commands) and applies it front to back: a run of writes in one
//! transaction, then a read, a flush, a prune or new limits, each on a
//! connection that has committed everything before it. A command leaves
//! the batch only once it is done; when the connection fails, the writer
//! keeps the rest, waits a jittered backoff, reconnects and goes on where
//! it stopped. Since every write but the held-span counts is idempotent,
//! a run whose COMMIT was cut off is simply applied again.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tcpstall_common::backoff::Backoff;
use tcpstall_common::time::millis_i64;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, NoTls};
use tracing::{debug, info, warn};

use super::write::{self, Prepared, WriteError};
use super::{read, PgConfig, Shared, SHUTDOWN_GRACE};
use crate::store::queue::Command;
use crate::store::sqlite::MAX_BATCH;
use crate::store::StoreError;

/// How long the first write of a transaction waits for others to join it.
/// A statement costs PostgreSQL much the same for few rows as for many:
/// longer gathering, fewer statements, at 100 ms more on a stall's way to
/// the store (against a 10 s threshold).
const GATHER: Duration = Duration::from_millis(100);

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The first wait before reconnecting.
const FIRST_RETRY: Duration = Duration::from_millis(100);

/// Episodes deleted per statement while pruning.
const PRUNE_CHUNK: i64 = 500;

/// A connection with the writes' statements prepared on it.
pub(super) struct Conn {
    pub(super) client: Client,
    prepared: Option<Prepared>,
    reads: read::Cache,
}

impl Conn {
    /// Connects and starts the task that drives the connection.
    pub(super) async fn connect(
        target: &tokio_postgres::Config,
    ) -> Result<Conn, tokio_postgres::Error> {
        let mut target = target.clone();
        if target.get_connect_timeout().is_none() {
            target.connect_timeout(CONNECT_TIMEOUT);
        }
        let (client, connection) = target.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%error, "store connection ended");
            }
        });
        Ok(Conn {
            client,
            prepared: None,
            reads: read::Cache::default(),
        })
    }

    pub(super) async fn prepare(&mut self) -> Result<(), tokio_postgres::Error> {
        self.prepared = Some(Prepared::new(&self.client).await?);
        Ok(())
    }
}

/// Runs the writer on a thread of its own, with a runtime of its own; the
/// returned task ends when it does.
///
/// A transaction is a conversation: dozens of statements, each sent once
/// the one before is answered. On the node's runtime every answer waited
/// its turn behind the gateway's and the matchers' work: with the cores
/// busy (1,000 agents on two nodes of one 2-core machine) PostgreSQL sat
/// "idle in transaction" for seconds per transaction, another node's
/// writer waited on its row locks, and the queue overflowed. On its own
/// thread the kernel schedules the writer by itself, as SQLite's store
/// thread is.
pub(super) fn spawn(w: Writer) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done_tx, done_rx) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("store-pg".into())
        .spawn(move || {
            rt.block_on(w.run());
            let _ = done_tx.send(());
        })?;
    Ok(tokio::spawn(async move {
        let _ = done_rx.await;
    }))
}

/// Fires when held-span counts that came at `since` are due; never
/// without any.
async fn held_due(since: Option<Instant>) {
    match since {
        Some(at) => tokio::time::sleep_until((at + HELD_EVERY).into()).await,
        None => std::future::pending().await,
    }
}

/// Whether an error is the connection's or the server's state (retry on a
/// new connection), not the statement's.
fn transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        // 08 connection exception, 40 rollback (serialization, deadlock),
        // 53 insufficient resources, 57 operator intervention (shutdown),
        // 58 system error.
        return matches!(&code.code()[..2], "08" | "40" | "53" | "57" | "58");
    }
    // No SQLSTATE: I/O and protocol errors are the connection's; a value
    // that does not convert is the statement's.
    std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

/// Whether an error is another transaction's doing (a deadlock, a
/// serialization failure): the same transaction again, on the same
/// connection, succeeds.
fn conflict(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED
            || *c == tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
    })
}

/// Why a turn stopped before its batch was done.
enum Stop {
    /// The connection failed; the batch is kept.
    Lost(String),
    /// A shutdown, with its acknowledgement.
    Shutdown(oneshot::Sender<()>),
}

pub(super) struct Writer {
    cfg: PgConfig,
    conn: Option<Conn>,
    rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    backoff: Backoff,
    /// When PostgreSQL went away (for the log line when it is back).
    lost_since: Option<Instant>,
    /// When a shutdown was first seen while PostgreSQL was away.
    closing_since: Option<Instant>,
    /// Held-span counts taken from committed runs, added up by key, not
    /// yet written ([`HELD_EVERY`]).
    held: write::HeldSums,
    /// Commands whose counts are in `held` (their queue places, given
    /// back once written).
    held_commands: usize,
    /// When the oldest count in `held` came.
    held_since: Option<Instant>,
}

/// How long held-span counts wait in the writer, added up, before they are
/// written. Every partition (of every node) counts the spans of the flows
/// it judges, and hands the store its counts for a minute once the minute
/// is over; the flows of one host pair are spread over the partitions, so
/// one minute's row of a pair came as one upsert per partition — 32 at
/// the default, a third of the store's rows at 1,000 agents. Added up
/// here first, a node writes each row about once a minute.
const HELD_EVERY: Duration = Duration::from_secs(5);

impl Writer {
    pub(super) fn new(
        cfg: PgConfig,
        rx: mpsc::Receiver<Command>,
        shared: Arc<Shared>,
    ) -> Writer {
        let backoff = Backoff::new(FIRST_RETRY, cfg.reconnect_ceiling.max(Duration::from_millis(10)));
        Writer {
            cfg,
            conn: None,
            rx,
            shared,
            backoff,
            lost_since: None,
            closing_since: None,
            held: write::HeldSums::new(),
            held_commands: 0,
            held_since: None,
        }
    }

    pub(super) async fn run(mut self) {
        let mut batch: VecDeque<Command> = VecDeque::with_capacity(MAX_BATCH);
        let mut tick = tokio::time::interval(self.cfg.retention_every.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if batch.is_empty() {
                tokio::select! {
                    cmd = self.rx.recv() => {
                        let Some(cmd) = cmd else { break };
                        let gather = cmd.is_write();
                        batch.push_back(cmd);
                        if gather {
                            tokio::time::sleep(GATHER).await;
                        }
                        while batch.len() < MAX_BATCH {
                            match self.rx.try_recv() {
                                Ok(c) => batch.push_back(c),
                                Err(_) => break,
                            }
                        }
                    }
                    // The first tick is at once: prune at start, as SQLite does.
                    _ = tick.tick() => batch.push_back(Command::Prune),
                    () = held_due(self.held_since) => {}
                }
            }
            let turn = match self.turn(&mut batch).await {
                Ok(()) => self.write_held(false).await,
                stop => stop,
            };
            match turn {
                Ok(()) => {}
                Err(Stop::Shutdown(ack)) => {
                    self.stop(&mut batch, ack);
                    return;
                }
                Err(Stop::Lost(error)) => {
                    self.conn = None;
                    if self.lost_since.is_none() {
                        self.lost_since = Some(Instant::now());
                        warn!(store = %self.cfg.shown, %error, held = batch.len() + self.rx.len(),
                              "store connection lost; holding writes and reconnecting");
                    }
                    if self.give_up_for_shutdown(&mut batch) {
                        return;
                    }
                    let delay = self.backoff.next_delay();
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.shared.closing_now.notified() => {}
                    }
                }
            }
        }
        debug!("every store handle dropped; store writer stops");
    }

    /// After a shutdown: later commands are refused (their writes counted
    /// as dropped), then the acknowledgement.
    fn stop(&mut self, batch: &mut VecDeque<Command>, ack: oneshot::Sender<()>) {
        self.rx.close();
        let mut late = batch.drain(..).filter(Command::is_write).count();
        while let Ok(c) = self.rx.try_recv() {
            late += usize::from(c.is_write());
        }
        self.shared.stats.dropped_after_shutdown(late as u64);
        self.shared.release(late);
        info!("store shut down");
        let _ = ack.send(());
    }

    /// With a shutdown asked for and PostgreSQL away for longer than
    /// [`SHUTDOWN_GRACE`] since: gives up every write held (counted in
    /// `write_errors`) and answers the shutdown. Says whether it did.
    fn give_up_for_shutdown(&mut self, batch: &mut VecDeque<Command>) -> bool {
        if !self.shared.closing.load(Ordering::Acquire) {
            return false;
        }
        let since = *self.closing_since.get_or_insert_with(Instant::now);
        if since.elapsed() < SHUTDOWN_GRACE {
            return false;
        }
        self.rx.close();
        let mut lost = 0usize;
        let mut ack = None;
        let mut all: Vec<Command> = batch.drain(..).collect();
        while let Ok(c) = self.rx.try_recv() {
            all.push(c);
        }
        for c in all {
            lost += usize::from(c.is_write());
            if let Command::Shutdown(a) = c {
                ack = ack.or(Some(a));
            }
            // Reads and flushes are dropped: their callers see Closed.
        }
        // Held-span counts taken but not written are lost with them.
        lost += std::mem::take(&mut self.held_commands);
        self.held = write::HeldSums::new();
        self.held_since = None;
        self.shared.stats.write_failed(lost as u64);
        self.shared.release(lost);
        warn!(store = %self.cfg.shown, writes = lost,
              "store shutting down with PostgreSQL away; writes it held are lost");
        if let Some(a) = ack {
            let _ = a.send(());
        }
        true
    }

    /// The connection, made anew if there is none.
    async fn conn(&mut self) -> Result<&Conn, Stop> {
        if self.conn.is_none() {
            let mut conn = Conn::connect(&self.cfg.target)
                .await
                .map_err(|e| Stop::Lost(e.to_string()))?;
            conn.prepare().await.map_err(|e| Stop::Lost(e.to_string()))?;
            if let Some(since) = self.lost_since.take() {
                info!(store = %self.cfg.shown, away_ms = since.elapsed().as_millis() as u64,
                      held = self.shared.held.load(Ordering::Relaxed),
                      "store reconnected; applying the writes it held");
            }
            self.closing_since = None;
            self.backoff.reset();
            self.conn = Some(conn);
        }
        self.conn.as_ref().ok_or_else(|| Stop::Lost("no connection".into()))
    }

    /// The connection with its statements, in a transaction just begun.
    async fn begin(&mut self) -> Result<(&Client, &Prepared), Stop> {
        let conn = self.conn().await?;
        let p = conn
            .prepared
            .as_ref()
            .ok_or_else(|| Stop::Lost("statements not prepared".into()))?;
        // The writes' statements take arrays: a plan made for one
        // array's values is no better than the generic one, and planning
        // anew for each execution was a tenth of PostgreSQL's work.
        conn.client
            .batch_execute("BEGIN; SET LOCAL plan_cache_mode = force_generic_plan")
            .await
            .map_err(|e| Stop::Lost(e.to_string()))?;
        Ok((&conn.client, p))
    }

    /// Applies the batch front to back; commands leave it once done.
    async fn turn(&mut self, batch: &mut VecDeque<Command>) -> Result<(), Stop> {
        while let Some(front) = batch.front() {
            if front.is_write() {
                self.write_run(batch).await?;
                continue;
            }
            // A read, a flush, a prune or a shutdown sees every count
            // handed to the store before it.
            self.write_held(true).await?;
            let conn = self.conn().await?;
            let c = &conn.client;
            // Reads: an answer that failed for the connection's sake is
            // asked again on the next one.
            let lost = |e: Option<&StoreError>| match e {
                Some(StoreError::Postgres(e)) => transient(e) || c.is_closed(),
                _ => false,
            };
            match front {
                Command::ListEpisodes(f, _) => {
                    let r = read::list_episodes(c, &conn.reads, f).await;
                    if lost(r.as_ref().err()) {
                        return Err(Stop::Lost(err_text(&r)));
                    }
                    if let Some(Command::ListEpisodes(_, reply)) = batch.pop_front() {
                        let _ = reply.send(r);
                    }
                }
                Command::CountEpisodes(f, bucket_ms, _) => {
                    let r = read::count_episodes(c, &conn.reads, f, *bucket_ms).await;
                    if lost(r.as_ref().err()) {
                        return Err(Stop::Lost(err_text(&r)));
                    }
                    if let Some(Command::CountEpisodes(_, _, reply)) = batch.pop_front() {
                        let _ = reply.send(r);
                    }
                }
                Command::ListHeld(f, _) => {
                    let r = read::list_held(c, &conn.reads, f).await;
                    if lost(r.as_ref().err()) {
                        return Err(Stop::Lost(err_text(&r)));
                    }
                    if let Some(Command::ListHeld(_, reply)) = batch.pop_front() {
                        let _ = reply.send(r);
                    }
                }
                Command::GetEpisode(id, _) => {
                    let r = read::get_episode(c, &conn.reads, *id).await;
                    if lost(r.as_ref().err()) {
                        return Err(Stop::Lost(err_text(&r)));
                    }
                    if let Some(Command::GetEpisode(_, reply)) = batch.pop_front() {
                        let _ = reply.send(r);
                    }
                }
                Command::ListHosts(_) => {
                    let r = read::list_hosts(c, &conn.reads).await;
                    if lost(r.as_ref().err()) {
                        return Err(Stop::Lost(err_text(&r)));
                    }
                    if let Some(Command::ListHosts(reply)) = batch.pop_front() {
                        let _ = reply.send(r);
                    }
                }
                Command::Flush(_) => {
                    if let Some(Command::Flush(reply)) = batch.pop_front() {
                        let _ = reply.send(());
                    }
                }
                Command::Prune => {
                    self.prune().await?;
                    batch.pop_front();
                }
                Command::SetLimits { retention, .. } => {
                    self.cfg.retention = *retention;
                    self.prune().await?;
                    batch.pop_front();
                }
                Command::Shutdown(_) => {
                    if let Some(Command::Shutdown(ack)) = batch.pop_front() {
                        return Err(Stop::Shutdown(ack));
                    }
                }
                _ => {
                    batch.pop_front();
                }
            }
        }
        Ok(())
    }

    /// Applies the run of writes at the front of the batch in one
    /// transaction. A write that fails for its own sake is taken out
    /// (logged, counted) and the rest run again; on a connection failure
    /// they all stay in the batch.
    async fn write_run(&mut self, batch: &mut VecDeque<Command>) -> Result<(), Stop> {
        let mut n = batch.iter().take_while(|c| c.is_write()).count();
        let lost = |e: &tokio_postgres::Error| Stop::Lost(e.to_string());
        // The run goes in a few statements (`write::apply`), until one of
        // them fails for a write's own sake: then one write at a time, to
        // find that write.
        let mut merge = true;
        'attempt: loop {
            if n == 0 {
                return Ok(());
            }
            let started = Instant::now();
            let (c, p) = self.begin().await?;
            let mut done = write::Applied::default();
            let mut i = 0;
            while i < n {
                // Held-span counts are added up after the commit and written
                // apart (`write_held`).
                if matches!(batch[i], Command::AddHeld(_)) {
                    i += 1;
                    continue;
                }
                let end = if merge { n } else { i + 1 };
                match write::apply(c, p, batch.range(i..end)).await {
                    Ok(d) => {
                        done.rows += d.rows;
                        done.samples += d.samples;
                        done.unknown.extend(d.unknown);
                    }
                    Err(WriteError::Pg(e)) if conflict(&e) => {
                        // Another node's transaction: again, at once.
                        if let Err(e) = c.batch_execute("ROLLBACK").await {
                            return Err(lost(&e));
                        }
                        debug!(error = %e, "store transaction in conflict with another node's: again");
                        continue 'attempt;
                    }
                    Err(WriteError::Pg(e)) if transient(&e) || c.is_closed() => {
                        return Err(lost(&e));
                    }
                    Err(error) => {
                        if let Err(e) = c.batch_execute("ROLLBACK").await {
                            return Err(lost(&e));
                        }
                        if merge {
                            merge = false;
                            continue 'attempt;
                        }
                        warn!(%error, kind = batch[i].kind(), "store write failed");
                        self.shared.stats.write_failed(1);
                        batch.remove(i);
                        self.shared.release(1);
                        n -= 1;
                        continue 'attempt;
                    }
                }
                i = end;
            }
            if let Err(e) = c.batch_execute("COMMIT").await {
                if transient(&e) || c.is_closed() {
                    // It may have committed: the writes are idempotent
                    // (held-span counts aside) and run again.
                    return Err(lost(&e));
                }
                warn!(error = %e, writes = n, "store commit failed");
                self.shared.stats.write_failed(n as u64);
                batch.drain(..n);
                self.shared.release(n);
                return Ok(());
            }
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.shared.stats.committed(done.rows, done.samples, micros);
            for id in done.unknown {
                warn!(error = %StoreError::UnknownEpisode { id }, "store write failed");
                self.shared.stats.write_failed(1);
            }
            // Held-span counts wait, added up, for their own transaction;
            // their queue places are given back once they are written.
            let mut counts = 0;
            for cmd in batch.drain(..n) {
                if let Command::AddHeld(rows) = cmd {
                    self.held.add(rows);
                    counts += 1;
                }
            }
            if counts > 0 {
                self.held_commands += counts;
                self.held_since.get_or_insert_with(Instant::now);
            }
            self.shared.release(n - counts);
            return Ok(());
        }
    }

    /// Writes the held-span counts added up so far, in a transaction of
    /// their own: when they have waited [`HELD_EVERY`], or at once when
    /// `now`. Counts PostgreSQL refuses are dropped with a warning
    /// (counted); on a lost connection they stay.
    async fn write_held(&mut self, now: bool) -> Result<(), Stop> {
        let Some(since) = self.held_since else {
            return Ok(());
        };
        if !now && since.elapsed() < HELD_EVERY {
            return Ok(());
        }
        let held = std::mem::take(&mut self.held);
        match self.held_transaction(&held).await {
            Err(stop) => {
                self.held = held;
                return Err(stop);
            }
            Ok(Some(rows)) => self.shared.stats.committed(rows.0, 0, rows.1),
            Ok(None) => self.shared.stats.write_failed(self.held_commands as u64),
        }
        self.shared.release(self.held_commands);
        self.held_commands = 0;
        self.held_since = None;
        Ok(())
    }

    /// One transaction of held-span counts, again while it conflicts with
    /// another node's: the rows written and the time it took, or none when
    /// PostgreSQL refused them (said).
    async fn held_transaction(
        &mut self,
        held: &write::HeldSums,
    ) -> Result<Option<(u64, u64)>, Stop> {
        let lost = |e: &tokio_postgres::Error| Stop::Lost(e.to_string());
        loop {
            let started = Instant::now();
            let (c, p) = self.begin().await?;
            match write::add_held(c, p, held).await {
                Ok(rows) => {
                    return match c.batch_execute("COMMIT").await {
                        Ok(()) => {
                            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                            Ok(Some((rows, micros)))
                        }
                        Err(e) if transient(&e) || c.is_closed() => Err(lost(&e)),
                        Err(error) => {
                            warn!(%error, "store commit of held-span counts failed");
                            Ok(None)
                        }
                    };
                }
                Err(WriteError::Pg(e)) if conflict(&e) => {
                    if let Err(e) = c.batch_execute("ROLLBACK").await {
                        return Err(lost(&e));
                    }
                    debug!(error = %e, "store transaction in conflict with another node's: again");
                }
                Err(WriteError::Pg(e)) if transient(&e) || c.is_closed() => return Err(lost(&e)),
                Err(error) => {
                    if let Err(e) = c.batch_execute("ROLLBACK").await {
                        return Err(lost(&e));
                    }
                    warn!(%error, "store write of held-span counts failed");
                    return Ok(None);
                }
            }
        }
    }

    /// Retention by age: closed episodes that ended before now − retention,
    /// with their samples, a chunk per statement; and held-span minutes
    /// that old. Other nodes may prune at the same time: a row deleted
    /// twice is deleted once. Fails only when the connection does.
    async fn prune(&mut self) -> Result<(), Stop> {
        let cutoff = self
            .cfg
            .clock
            .now_ms()
            .saturating_sub(millis_i64(self.cfg.retention));
        let shared = self.shared.clone();
        let c = &self.conn().await?.client;
        let mut total = 0u64;
        loop {
            let r = c
                .query_one(
                    "WITH victims AS (
                         SELECT id FROM episodes WHERE NOT open AND ended_at_ms < $1
                          ORDER BY ended_at_ms LIMIT $2),
                     s AS (DELETE FROM samples WHERE episode_id IN (SELECT id FROM victims)
                           RETURNING 1),
                     e AS (DELETE FROM episodes WHERE id IN (SELECT id FROM victims)
                           RETURNING 1)
                     SELECT (SELECT count(*) FROM e), (SELECT count(*) FROM s)",
                    &[&cutoff, &PRUNE_CHUNK],
                )
                .await;
            match r {
                Ok(row) => {
                    let episodes: i64 = row.try_get(0).unwrap_or(0);
                    let samples: i64 = row.try_get(1).unwrap_or(0);
                    if episodes == 0 {
                        break;
                    }
                    let episodes = u64::try_from(episodes).unwrap_or(0);
                    total += episodes;
                    shared.stats.pruned(episodes);
                    shared
                        .stats
                        .pruned_rows(episodes + u64::try_from(samples).unwrap_or(0));
                }
                Err(e) if c.is_closed() => return Err(Stop::Lost(e.to_string())),
                Err(error) => {
                    warn!(%error, "store prune failed");
                    break;
                }
            }
        }
        if total > 0 {
            info!(episodes = total, cutoff_ms = cutoff, "store pruned old episodes");
        }
        match c
            .execute("DELETE FROM held_spans WHERE minute_ms < $1", &[&cutoff])
            .await
        {
            Ok(n) => shared.stats.pruned_rows(n),
            Err(e) if c.is_closed() => return Err(Stop::Lost(e.to_string())),
            Err(error) => warn!(%error, "store prune of held spans failed"),
        }
        Ok(())
    }
}

fn err_text<T>(r: &Result<T, StoreError>) -> String {
    match r {
        Err(e) => e.to_string(),
        Ok(_) => String::new(),
    }
}
