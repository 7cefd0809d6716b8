//! A reading of everything at one moment of a `collector-load` run: the
//! collector's (every node's, in fleet mode, with NATS's and PostgreSQL's)
//! and this process's CPU and memory, the simulated agents' counters, the
//! bytes on the collector's, NATS's and PostgreSQL's ports, the database's
//! rows and size, and the store's own counters.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use rusqlite::{Connection, OpenFlags};
use tcpstall_agent::run::monotonic;
use tcpstall_agent::{netns, Poller};
use tcpstall_common::TcpState;

use super::agent::Counters;
use super::probe;
use super::system::{PartTicks, Ports, System};
use crate::procfs::{self, Mem, ThreadCpu, Ticks};

/// A reading of everything at one moment.
#[derive(Debug, Clone, Default)]
pub(super) struct Snap {
    pub(super) at: Duration,
    /// Every collector node's CPU, added up.
    pub(super) collector: Ticks,
    /// CPU by part: the nodes, NATS, PostgreSQL.
    pub(super) parts: PartTicks,
    pub(super) collector_threads: BTreeMap<u32, (String, ThreadCpu)>,
    pub(super) collector_mem: Mem,
    pub(super) generator: Ticks,
    pub(super) generator_threads: BTreeMap<u32, (String, ThreadCpu)>,
    pub(super) samples_taken: u64,
    pub(super) suspect_taken: u64,
    pub(super) released_taken: u64,
    pub(super) watched_taken: u64,
    pub(super) batches_taken: u64,
    pub(super) heartbeats_taken: u64,
    /// TCP payload the collector received on / acknowledged from its
    /// listening port's connections (gRPC and HTTP/2 framing included).
    pub(super) wire_in: u64,
    pub(super) wire_out: u64,
    /// The same on the NATS servers' and PostgreSQL's client ports.
    pub(super) nats_in: u64,
    pub(super) nats_out: u64,
    pub(super) pg_in: u64,
    pub(super) pg_out: u64,
    pub(super) samples_offered: u64,
    pub(super) samples_dropped: u64,
    pub(super) batches_dropped: u64,
    pub(super) watches: u64,
    pub(super) unwatches: u64,
    /// Lookups the simulated agents sent, Translate requests they got, and
    /// those they dropped for want of room.
    pub(super) lookups_taken: u64,
    pub(super) translates: u64,
    pub(super) translates_dropped: u64,
    /// The collector's joins through a translation and Translate requests,
    /// since it started (its metrics; 0 from a collector without them).
    pub(super) joined_via_translation: f64,
    pub(super) translate_requests: f64,
    pub(super) suspects: i64,
    pub(super) watched: i64,
    pub(super) stuck: i64,
    pub(super) outboxed: i64,
    pub(super) db: DbCounts,
    /// The database file and its WAL, bytes.
    pub(super) db_bytes: u64,
    /// Rows the collector's retention deleted, since it started (its
    /// metrics; 0 when it did not answer).
    pub(super) pruned_rows: f64,
    /// Sample rows ever stored (`tcpstall_collector_store_samples_total`).
    pub(super) samples_stored: i64,
    /// Episodes retention deleted, all of them ended
    /// (`tcpstall_collector_store_pruned_episodes_total`).
    pub(super) pruned_episodes: i64,
    /// Counters of the nodes' /metrics that say whether anything was lost
    /// or how much crossed the bus, added up over the nodes (0 where
    /// absent: single-node mode has no fleet counters).
    pub(super) totals: BTreeMap<&'static str, f64>,
}

/// The counters [`Snap::totals`] holds.
pub(super) const TOTALS: &[&str] = &[
    "tcpstall_collector_batch_parts_published_total",
    "tcpstall_collector_batch_bundles_published_total",
    "tcpstall_collector_batch_bundles_read_total",
    "tcpstall_collector_batch_parts_late_total",
    "tcpstall_collector_batch_parts_failed_total",
    "tcpstall_collector_batch_parts_handled_total",
    "tcpstall_collector_batch_parts_stale_total",
    "tcpstall_collector_batch_parts_malformed_total",
    "tcpstall_collector_batch_parts_unknown_host_dropped_total",
    "tcpstall_collector_fleet_requests_forwarded_total",
    "tcpstall_collector_host_registrations_failed_total",
    "tcpstall_collector_partitions_lost_total",
    "tcpstall_collector_store_writes_dropped_total",
    "tcpstall_collector_store_write_errors_total",
    "tcpstall_collector_store_rows_total",
    "tcpstall_collector_store_transactions_total",
];

#[derive(Debug, Clone, Copy, Default)]
pub(super) struct DbCounts {
    pub(super) episodes: i64,
    pub(super) closed: i64,
    /// The highest episode id: every episode ever stored (ids are never
    /// handed out twice), where `episodes` is those still there.
    pub(super) episodes_max: i64,
}

pub(super) fn db_counts(conn: &Connection) -> anyhow::Result<DbCounts> {
    let one = |sql: &str| -> anyhow::Result<i64> {
        Ok(conn
            .query_row(sql, [], |r| r.get::<_, Option<i64>>(0))?
            .unwrap_or(0))
    };
    Ok(DbCounts {
        episodes: one("SELECT count(*) FROM episodes")?,
        closed: one("SELECT count(*) FROM episodes WHERE open = 0")?,
        episodes_max: one("SELECT max(id) FROM episodes")?,
    })
}

pub(super) fn open_db(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {} read-only", path.display()))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    Ok(conn)
}

/// Bytes received and sent on the connections of each part's listening
/// ports, from the kernel (sock_diag): `tcpi_bytes_received` and
/// `tcpi_bytes_acked` of every established socket whose local port is one
/// of them. Each part's pair: into it, out of it.
fn wire(ports: &Ports) -> anyhow::Result<[(u64, u64); 3]> {
    let mut poller = Poller::new(vec![netns::current()?])?;
    let (samples, failures) = poller.poll();
    if let Some(f) = failures.into_iter().next() {
        return Err(f).context("polling the sockets");
    }
    let mut out = [(0, 0); 3];
    for s in samples {
        if s.state != TcpState::Established {
            continue;
        }
        let part = [&ports.nodes, &ports.nats, &ports.postgres]
            .iter()
            .position(|p| p.contains(&s.local.port()));
        if let (Some(part), Some(i)) = (part, &s.info) {
            out[part].0 += i.bytes_received().unwrap_or(0);
            out[part].1 += i.bytes_acked().unwrap_or(0);
        }
    }
    Ok(out)
}

pub(super) async fn snap(system: &System, counters: &Counters) -> anyhow::Result<Snap> {
    let ports = system.ports();
    // A psql or SQLite reading and a sock_diag poll: blocking, brief.
    let (counts, db_bytes, [(wire_in, wire_out), (nats_in, nats_out), (pg_in, pg_out)]) =
        tokio::task::block_in_place(|| {
            Ok::<_, anyhow::Error>((system.counts()?, system.store_bytes(), wire(&ports)?))
        })?;
    // Rows leave under a size bound, so the table's rows are not the
    // rows ever stored: the store's own counters say both.
    let metrics = system.metrics()?;
    let counter = |name: &str| -> anyhow::Result<f64> {
        metrics
            .get(name)
            .copied()
            .with_context(|| format!("{name} missing from the collector's /metrics"))
    };
    let pruned_rows = counter("tcpstall_collector_store_pruned_rows_total")?;
    let samples_stored = counter("tcpstall_collector_store_samples_total")? as i64;
    let pruned_episodes = counter("tcpstall_collector_store_pruned_episodes_total")? as i64;
    let optional = |name: &str| metrics.get(name).copied().unwrap_or(0.0);
    let totals = TOTALS
        .iter()
        .map(|&k| (k, metrics.get(k).copied().unwrap_or(0.0)))
        .collect();
    let parts = system.ticks()?;
    let me = std::process::id();
    let g = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let gi = |c: &std::sync::atomic::AtomicI64| c.load(Ordering::Relaxed);
    Ok(Snap {
        at: monotonic(),
        collector: parts.nodes,
        parts,
        collector_threads: system.threads()?,
        collector_mem: system.mem()?,
        generator: procfs::process_ticks(me)?,
        generator_threads: procfs::threads(me)?,
        samples_taken: counters.samples_taken(),
        suspect_taken: g(&counters.suspect_taken),
        released_taken: g(&counters.released_taken),
        watched_taken: g(&counters.watched_taken),
        batches_taken: g(&counters.batches_taken),
        heartbeats_taken: g(&counters.heartbeats_taken),
        wire_in,
        wire_out,
        nats_in,
        nats_out,
        pg_in,
        pg_out,
        samples_offered: g(&counters.samples_offered),
        samples_dropped: g(&counters.samples_dropped),
        batches_dropped: g(&counters.batches_dropped),
        watches: g(&counters.watches),
        unwatches: g(&counters.unwatches),
        lookups_taken: g(&counters.lookups_taken),
        translates: g(&counters.translates),
        translates_dropped: g(&counters.translates_dropped),
        joined_via_translation: optional("tcpstall_collector_peers_joined_via_translation_total"),
        translate_requests: optional("tcpstall_collector_translate_requests_total"),
        suspects: gi(&counters.suspects),
        watched: gi(&counters.watched),
        stuck: gi(&counters.stuck),
        outboxed: gi(&counters.outboxed),
        db: counts,
        db_bytes,
        pruned_rows,
        samples_stored,
        pruned_episodes,
        totals,
    })
}

/// What one run measured.
#[derive(Debug)]
pub(super) struct Measured {
    pub(super) connections: usize,
    pub(super) connect_time: Duration,
    pub(super) idle: Mem,
    pub(super) idle_cpu: f64,
    pub(super) start: Snap,
    pub(super) series: Vec<Snap>,
    pub(super) end: Snap,
    pub(super) probed: probe::Probed,
    /// The matcher's round trips: (when, how long; None = failed).
    pub(super) delays: Vec<(Duration, Option<Duration>)>,
    pub(super) failed_agents: u64,
    pub(super) window_start: Duration,
    pub(super) window_end: Duration,
    /// The collector's own memory figures at the window's end (its
    /// /metrics): what it tracks, what jemalloc has allocated, resident.
    pub(super) memory: Option<(f64, f64, f64)>,
}
