//! Retention, on the store thread: closed episodes (with their samples)
//! and held-span minutes older than the retention go at start, at each
//! tick and with new limits; under a size bound, the oldest go after any
//! commit that brings the file near it; and the pages they held are given
//! back to the file system a step at a time. Open episodes are never
//! deleted.


use rusqlite::params;
use tcpstall_common::time::millis_i64;
use tracing::{info, warn};

use super::schema;
use super::worker::Worker;

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

impl Worker {
    /// The WAL counts against the size bound, so under a small bound it is
    /// checkpointed sooner than every [`schema::WAL_CHECKPOINT_PAGES`]:
    /// at [`WAL_SHARE`] of the bound, and its file is cut back to that
    /// after a checkpoint that let it grow past.
    pub(super) fn fit_wal_to_bound(&self) {
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
    pub(super) fn keep_to_size(&self) {
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

    /// Retention: by age, then by size; counts what it deleted, and gives
    /// the freed pages back.
    pub(super) fn prune(&self) {
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
