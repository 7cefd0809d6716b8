//! The database file: connection settings, the schema and its migrations,
//! and what opening does to rows an earlier run left behind.
//!
//! Migrations are a list of SQL steps; `PRAGMA user_version` holds how many
//! have run. Each step runs in its own transaction together with the
//! version bump, so a crash leaves the file at a whole step. A file whose
//! version is higher than the list is long was written by a newer
//! collector, and is refused rather than misread.
//!
//! Versions: 1 created the tables, with each sample as JSON text in
//! `samples.sample`; 2 added `samples.sample_pb`, where samples are written
//! since (protobuf `tcpstall.v1.Sample`, '' left in `sample`). Rows of
//! either kind are read back. 3 added `held_spans`: every held send queue
//! that ended, counted per minute, host pair, end and duration bucket.
//! 4 replaced the indexes on `open`, `a_host` and `b_host` alone by ones
//! with `ended_at_ms` or `started_at_ms` after them: retention walks the
//! ended episodes oldest first, and a host's recent episodes are found
//! without reading all of its older ones. 5 added `episodes.community_id`.
//! 6 added the translation that joined an episode's ends through a NAT
//! (`via_host`, `via_original`, `via_reply`, `via_nat`), NULL on episodes
//! joined directly and on those stored before.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use tcpstall_common::EndReason;

use crate::store::StoreError;

/// How long a statement waits for a lock another connection (a person with
/// the sqlite3 shell, a backup) holds before it fails.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite's page cache for the collector's connection, KiB.
const CACHE_KIB: i64 = 8 * 1024;

/// WAL pages (of 4 KiB) after which a commit checkpoints.
pub(super) const WAL_CHECKPOINT_PAGES: i64 = 8000;

/// The schema, one step per version. Append; never edit a released step.
const MIGRATIONS: &[&str] = &[
    // 1: hosts, episodes, samples.
    "
    CREATE TABLE hosts (
        host          TEXT PRIMARY KEY NOT NULL,
        kernel        TEXT NOT NULL,
        agent_version TEXT NOT NULL,
        boot_id       TEXT NOT NULL,
        first_seen_ms INTEGER NOT NULL,
        last_seen_ms  INTEGER NOT NULL,
        connected     INTEGER NOT NULL CHECK (connected IN (0, 1))
    );
    -- AUTOINCREMENT: ids are never handed out twice, even after retention
    -- deleted the newest episodes.
    CREATE TABLE episodes (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        diagnosis     TEXT NOT NULL,
        summary       TEXT NOT NULL,
        evidence      TEXT NOT NULL,           -- JSON object: name -> integer
        started_at_ms INTEGER NOT NULL,
        duration_ms   INTEGER NOT NULL,
        stuck_bytes   INTEGER NOT NULL,
        a_host        TEXT NOT NULL,
        a_netns       TEXT NOT NULL,
        a_local       TEXT NOT NULL,           -- ip:port, A's own end
        a_remote      TEXT NOT NULL,           -- ip:port, B's end
        a_cookie      INTEGER NOT NULL,        -- u64 bits as i64
        b_host        TEXT,
        peer_note     TEXT,
        open          INTEGER NOT NULL CHECK (open IN (0, 1)),
        ended_at_ms   INTEGER,
        end_reason    TEXT
    );
    CREATE INDEX episodes_started ON episodes (started_at_ms);
    CREATE INDEX episodes_diagnosis ON episodes (diagnosis);
    CREATE INDEX episodes_open ON episodes (open);
    CREATE INDEX episodes_a_host ON episodes (a_host);
    CREATE INDEX episodes_b_host ON episodes (b_host);
    CREATE TABLE samples (
        id         INTEGER PRIMARY KEY,
        episode_id INTEGER NOT NULL REFERENCES episodes (id) ON DELETE CASCADE,
        side       TEXT NOT NULL CHECK (side IN ('a', 'b')),
        host       TEXT NOT NULL,
        at_ms      INTEGER NOT NULL,
        sample     TEXT NOT NULL               -- JSON: tcpstall_common::EndSample
    );
    CREATE INDEX samples_episode ON samples (episode_id, at_ms);
    ",
    // 2: samples as protobuf: the collector already holds each sample in
    // its wire encoding (~150 B); the JSON was ~1 KB per row and a fifth
    // of the store thread's CPU per row.
    "
    -- tcpstall.v1.Sample, protobuf-encoded (proto/proto/tcpstall/v1/).
    -- Rows written before version 2 have it NULL and their JSON in
    -- `sample`; rows written since have '' in `sample` (NOT NULL, and
    -- relaxing that would copy the whole table at the upgrade).
    ALTER TABLE samples ADD COLUMN sample_pb BLOB;
    ",
    // 3: held spans, counted (the collector's `held` module).
    "
    CREATE TABLE held_spans (
        minute_ms   INTEGER NOT NULL,          -- the minute they ended in
        a_host      TEXT NOT NULL,             -- the held sender's host
        b_host      TEXT NOT NULL,             -- its peer's, '' if unmonitored
        end_reason  TEXT NOT NULL,             -- moved, drained, closed, reset
        le_ms       INTEGER NOT NULL,          -- bucket bound, 0 = above all
        count       INTEGER NOT NULL,
        episodes    INTEGER NOT NULL,          -- of them, held for the threshold
        total_ms    INTEGER NOT NULL,
        max_ms      INTEGER NOT NULL,
        PRIMARY KEY (minute_ms, a_host, b_host, end_reason, le_ms)
    ) WITHOUT ROWID;
    ",
    // 4: indexes whose cost does not grow with the table. Both prunes ask
    // for ended episodes by `ended_at_ms` (older than the cutoff; the
    // oldest first); on `open` alone they read every ended episode and
    // sorted them. A host's recent episodes (`report --host`, `--since`)
    // were found by reading every episode the host ever had. The new
    // indexes' prefixes serve what the old ones did.
    "
    CREATE INDEX episodes_ended ON episodes (open, ended_at_ms);
    DROP INDEX episodes_open;
    CREATE INDEX episodes_a_host_started ON episodes (a_host, started_at_ms);
    DROP INDEX episodes_a_host;
    CREATE INDEX episodes_b_host_started ON episodes (b_host, started_at_ms);
    DROP INDEX episodes_b_host;
    ",
    // 5: the Community ID of A's connection (v1, seed 0), the key of the
    // same flow in Zeek, Suricata and Elastic data: found by it, joined
    // with them in SQL. NULL on episodes stored before (their a_local and
    // a_remote give it).
    "
    ALTER TABLE episodes ADD COLUMN community_id TEXT;
    CREATE INDEX episodes_community_id ON episodes (community_id);
    ",
    // 6: the conntrack entry that joined B to A through a NAT, and whose
    // it was: all four set, or all NULL (joined directly, not joined, or
    // stored before). Text a person reads in the sqlite3 shell and a query
    // compares (`WHERE via_nat = 'dnat'`); an update replaces them.
    "
    ALTER TABLE episodes ADD COLUMN via_host TEXT;     -- whose conntrack held it
    ALTER TABLE episodes ADD COLUMN via_original TEXT; -- 'ip:port -> ip:port', first packet's source -> destination
    ALTER TABLE episodes ADD COLUMN via_reply TEXT;    -- 'ip:port -> ip:port', the replies'
    ALTER TABLE episodes ADD COLUMN via_nat TEXT
        CHECK (via_nat IN ('snat', 'dnat', 'snat+dnat', 'none'));
    ",
    // 7: one diagnosis's recent episodes, newest first (the web page's
    // History, `episodes --diagnosis`): found in the order they are listed
    // (the index ends in the rowid, the id), not all of that diagnosis
    // read and sorted (300 ms over 1,000,000 episodes before, BENCHMARKS).
    "
    CREATE INDEX episodes_diagnosis_started ON episodes (diagnosis, started_at_ms);
    DROP INDEX episodes_diagnosis;
    ",
    // 8: the web page's chart counts a window's episodes by diagnosis from
    // this index alone (a covering index: no row read), 1,000,000 episodes
    // over 30 days in BENCHMARKS' figures rather than a lookup per row.
    "
    CREATE INDEX episodes_started_diagnosis ON episodes (started_at_ms, diagnosis);
    ",
    // 9: which evidence the verdict rested on and which it went without
    // (a kernel before 6.2 gives no b_rcv_wnd, ...): a JSON object
    // {"rested_on": [names], "missing": [names]}; NULL on episodes stored
    // before.
    "
    ALTER TABLE episodes ADD COLUMN basis TEXT;
    ",
];

/// Retention by age: a chunk of the ended episodes that ended before ?1,
/// at most ?2 (their samples go by ON DELETE CASCADE).
pub const PRUNE_BY_AGE: &str = "DELETE FROM episodes WHERE id IN (
    SELECT id FROM episodes WHERE open = 0 AND ended_at_ms < ?1 LIMIT ?2)";

/// Retention by size: the ?1 ended episodes that ended first.
pub const PRUNE_OLDEST: &str = "DELETE FROM episodes WHERE id IN (
    SELECT id FROM episodes WHERE open = 0 ORDER BY ended_at_ms LIMIT ?1)";

/// When the oldest ended episode ended (NULL if none has).
pub const OLDEST_ENDED: &str = "SELECT min(ended_at_ms) FROM episodes WHERE open = 0";

/// The oldest minute of held-span counts (NULL if none).
pub const OLDEST_HELD_MINUTE: &str = "SELECT min(minute_ms) FROM held_spans";

/// Retention by size, of the held-span counts: one minute's, ?1.
pub const PRUNE_HELD_MINUTE: &str = "DELETE FROM held_spans WHERE minute_ms = ?1";

/// The schema version this code writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Opens (creating if needed) and configures a connection.
pub(super) fn open(path: &Path) -> Result<Connection, StoreError> {
    let err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    // Freed pages go back to the file system in small steps
    // (`incremental_vacuum`), never in one long VACUUM. Takes effect only on
    // a new file, before its first table; an older file keeps reusing its
    // free pages, which bounds it as well.
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
        .map_err(err)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "wal", |r| r.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), mode, "SQLite refused WAL mode; using it as is");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err)?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(err)?;
    // 8 MiB of page cache instead of SQLite's 2 MiB: the samples' index
    // takes each poll's rows at one place per open episode, and at 1,000
    // agents (6,600 open episodes) those pages did not fit; every commit
    // read them back through the kernel. With 8 MiB the store thread went
    // from 15.7–17.9 % to 13.1–13.5 % of a core and the collector's system
    // time fell by a quarter, for 16–40 B more per tracked connection
    // (BENCHMARKS.md).
    conn.pragma_update(None, "cache_size", -CACHE_KIB)
        .map_err(err)?;
    // A checkpoint every 32 MB of WAL, not SQLite's 4 MB: the pages the
    // samples' index takes its rows on are written again by nearly every
    // commit, and each checkpoint copies them to the database file and
    // syncs it. At 1,000 agents that was several checkpoints a second;
    // eight times fewer wrote a fifth fewer bytes (BENCHMARKS.md). The WAL
    // file stays within about 32 MB.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)
        .map_err(err)?;
    // Enough for every statement the worker prepares, filters included.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Brings the schema to [`SCHEMA_VERSION`], or refuses a newer file.
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found,
            known: SCHEMA_VERSION,
        });
    }
    let done = usize::try_from(found).unwrap_or(0);
    for (i, step) in MIGRATIONS.iter().enumerate().skip(done) {
        let version = i64::try_from(i + 1).unwrap_or(i64::MAX);
        let tx = conn.transaction()?;
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
        tracing::info!(path = %path.display(), version, "store schema migrated");
    }
    Ok(())
}

/// Ends the episodes an earlier run left open: at their last sample, or
/// their start when they have none. Also marks every host disconnected,
/// since no agent is connected to a collector that has just started.
/// Returns how many episodes it ended.
pub(super) fn end_left_open(conn: &Connection) -> Result<usize, StoreError> {
    let ended = conn.execute(
        "UPDATE episodes
            SET open = 0,
                end_reason = ?1,
                ended_at_ms = max(started_at_ms, coalesce(
                    (SELECT max(at_ms) FROM samples WHERE episode_id = episodes.id),
                    started_at_ms))
          WHERE open = 1",
        [EndReason::CollectorRestart.id()],
    )?;
    conn.execute("UPDATE hosts SET connected = 0 WHERE connected = 1", [])?;
    Ok(ended)
}

/// One more than any episode id ever stored (including deleted ones).
pub(super) fn next_episode_id(conn: &Connection) -> Result<i64, StoreError> {
    let max_id: i64 = conn.query_row("SELECT coalesce(max(id), 0) FROM episodes", [], |r| {
        r.get(0)
    })?;
    let seq: i64 = conn.query_row(
        "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'episodes'",
        [],
        |r| r.get(0),
    )?;
    Ok(max_id.max(seq).saturating_add(1))
}
