//! `tcpstall-bench collector-load`: many simulated agents over real gRPC
//! against one real `tcpstall-collector` process with a fresh SQLite file.
//!
//! Phases: start the collector; connect every simulated agent (one HTTP/2
//! connection each by default, as real agents have) and wait for its
//! Welcome; a few polls of heartbeats only (the idle baseline: memory and
//! CPU of N connected agents); the load starts (churning suspects, stuck
//! flows, watched peers: see [`sim`]); a warm-up until stuck flows have
//! reached their steady state; then the measured window. Over the window:
//! the collector's CPU from /proc/PID/stat (and per thread), its memory,
//! the samples tonic took from the simulated agents' streams, the rows the
//! store added to the database (read with rusqlite, live), and the time
//! from each stall's start to its stored episode for the probe hosts.

mod agent;
pub mod inproc;
mod probe;
pub mod sim;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use rusqlite::{Connection, OpenFlags};
use tcpstall_agent::run::monotonic;
use tcpstall_agent::{netns, Poller};
use tcpstall_common::TcpState;
use tokio::sync::{mpsc, watch};
use tonic::transport::{Channel, Endpoint};

use crate::procfs::{self, Mem, ThreadCpu, Ticks};
use crate::procs::{self, Collector};
use agent::{Counters, Shared};

/// The simulated fleet: hosts, their connections and how many are stuck
/// (`collector-load` and `collector-inproc` alike).
#[derive(Debug, Clone, clap::Args)]
pub struct Fleet {
    /// Simulated agents (hosts), one ingest stream each.
    #[arg(long, default_value_t = 1000)]
    pub agents: u32,
    /// Connections each simulated host holds.
    #[arg(long, default_value_t = 20_000)]
    pub conns_per_agent: u32,
    /// Fraction of the connections that are suspects at any poll (their
    /// queues hold for a poll or two, then move on).
    #[arg(long, default_value_t = 0.01)]
    pub suspect_frac: f64,
    /// Fraction of the connections that are stuck long enough to become
    /// episodes, at any time.
    #[arg(long, default_value_t = 0.0005)]
    pub stuck_frac: f64,
    /// How long each stall lasts before its queue drains; a new one takes
    /// its slot at once.
    #[arg(long, default_value = "30s", value_parser = tcpstall_common::duration::parse)]
    pub stuck_for: Duration,
}

impl Fleet {
    /// Refuses what the simulation cannot model, naming the flag.
    pub fn check(&self) -> anyhow::Result<()> {
        ensure!(
            (1..=sim::MAX_HOSTS).contains(&self.agents),
            "--agents must be 1..={}",
            sim::MAX_HOSTS
        );
        ensure!(
            (1..=sim::MAX_CONNS).contains(&self.conns_per_agent),
            "--conns-per-agent must be 1..={}",
            sim::MAX_CONNS
        );
        ensure!(
            (0.0..=0.5).contains(&self.suspect_frac) && (0.0..=0.5).contains(&self.stuck_frac),
            "--suspect-frac and --stuck-frac must be within 0..=0.5"
        );
        Ok(())
    }

    pub fn shape(&self, interval: Duration) -> sim::Shape {
        let conns = f64::from(self.conns_per_agent);
        sim::Shape {
            hosts: self.agents,
            conns: self.conns_per_agent,
            suspects: conns * self.suspect_frac,
            stuck: (conns * self.stuck_frac).round() as u32,
            interval,
            stuck_for: self.stuck_for,
        }
    }
}

/// Arguments of `tcpstall-bench collector-load`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    #[command(flatten)]
    fleet: Fleet,
    /// Poll interval of every simulated agent.
    #[arg(long, default_value = "2s", value_parser = tcpstall_common::duration::parse)]
    interval: Duration,
    /// The collector's --threshold.
    #[arg(long, default_value = "10s", value_parser = tcpstall_common::duration::parse)]
    threshold: Duration,
    /// The measured window.
    #[arg(long, default_value = "60s", value_parser = tcpstall_common::duration::parse)]
    duration: Duration,
    /// Load before the window [default: stuck-for + threshold + 2 polls,
    /// when the number of open episodes has levelled].
    #[arg(long, value_parser = tcpstall_common::duration::parse)]
    warmup: Option<Duration>,
    /// Heartbeat-only polls before the load, for the idle baseline.
    #[arg(long, default_value_t = 3)]
    idle_polls: u32,
    /// Simulated agents per HTTP/2 connection (1 = one connection per
    /// agent, as real agents have).
    #[arg(long, default_value_t = 1)]
    agents_per_conn: u32,
    /// Polls each simulated agent keeps while its stream has no room
    /// (the agent's --buffer default).
    #[arg(long, default_value_t = 64)]
    buffer: usize,
    /// Most entries in one batch: a poll with more is sent as several
    /// batches (the agent's --batch-max default; a large value sends each
    /// poll as one batch, up to the agent's 8192).
    #[arg(long, default_value_t = tcpstall_agent::run::DEFAULT_BATCH_MAX)]
    batch_max: usize,
    /// Hosts whose stalls are followed to their stored episodes (each is
    /// listed every --probe-every: that costs the collector CPU too).
    #[arg(long, default_value_t = 10)]
    probe_hosts: u32,
    /// How often the probe lists each probe host's episodes.
    #[arg(long, default_value = "250ms", value_parser = tcpstall_common::duration::parse)]
    probe_every: Duration,
    /// Worker threads of the generator's runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The collector's RUST_LOG (its default is info).
    #[arg(long, default_value = "info")]
    collector_log: String,
    /// Directory of tcpstall-collector [default: this executable's].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Keep the collector's directory (database and log) after the run.
    #[arg(long)]
    keep: bool,
    /// Also record `perf record` (DWARF call graphs) of the collector over the window into
    /// this file (perturbs the CPU figures: use a separate run).
    #[arg(long)]
    perf: Option<PathBuf>,
    /// The collector's --max-db-bytes [default: the collector's, 10 GiB]:
    /// a small bound makes a run reach it, so that deletion runs beside
    /// ingest (a soak).
    #[arg(long, value_name = "BYTES")]
    max_db_bytes: Option<u64>,
    /// One row of the table over the window this often; at a minute or
    /// more the report also compares the first ten rows with the last ten
    /// (a soak's trend).
    #[arg(long, default_value = "10s", value_parser = tcpstall_common::duration::parse)]
    every: Duration,
}

impl LoadArgs {
    fn shape(&self) -> sim::Shape {
        self.fleet.shape(self.interval)
    }

    fn warmup(&self) -> Duration {
        self.warmup
            .unwrap_or(self.fleet.stuck_for + self.threshold + 2 * self.interval)
    }

    /// Stall start to stored episode, the target: threshold + 2 polls.
    fn deadline(&self) -> Duration {
        self.threshold + 2 * self.interval
    }
}

/// A reading of everything at one moment.
#[derive(Debug, Clone, Default)]
struct Snap {
    at: Duration,
    collector: Ticks,
    collector_threads: BTreeMap<u32, (String, ThreadCpu)>,
    collector_mem: Mem,
    generator: Ticks,
    generator_threads: BTreeMap<u32, (String, ThreadCpu)>,
    samples_taken: u64,
    suspect_taken: u64,
    released_taken: u64,
    watched_taken: u64,
    batches_taken: u64,
    heartbeats_taken: u64,
    /// TCP payload the collector received on / acknowledged from its
    /// listening port's connections (gRPC and HTTP/2 framing included).
    wire_in: u64,
    wire_out: u64,
    samples_offered: u64,
    samples_dropped: u64,
    batches_dropped: u64,
    watches: u64,
    unwatches: u64,
    suspects: i64,
    watched: i64,
    stuck: i64,
    outboxed: i64,
    db: DbCounts,
    /// The database file and its WAL, bytes.
    db_bytes: u64,
    /// Rows the collector's retention deleted, since it started (its
    /// metrics; 0 when it did not answer).
    pruned_rows: f64,
    /// Sample rows ever stored (`tcpstall_collector_store_samples_total`).
    samples_stored: i64,
    /// Episodes retention deleted, all of them ended
    /// (`tcpstall_collector_store_pruned_episodes_total`).
    pruned_episodes: i64,
}

#[derive(Debug, Clone, Copy, Default)]
struct DbCounts {
    episodes: i64,
    closed: i64,
    /// The highest episode id: every episode ever stored (ids are never
    /// handed out twice), where `episodes` is those still there.
    episodes_max: i64,
}

fn db_counts(conn: &Connection) -> anyhow::Result<DbCounts> {
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

fn open_db(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {} read-only", path.display()))?;
    conn.busy_timeout(Duration::from_secs(10))?;
    Ok(conn)
}

/// Bytes the collector received and sent on its port's connections, from
/// the kernel (sock_diag): `tcpi_bytes_received` and `tcpi_bytes_acked`
/// of every established socket whose local port is the collector's.
fn collector_wire(port: u16) -> anyhow::Result<(u64, u64)> {
    let mut poller = Poller::new(vec![netns::current()?])?;
    let (samples, failures) = poller.poll();
    if let Some(f) = failures.into_iter().next() {
        return Err(f).context("polling the collector's sockets");
    }
    let (mut rx, mut tx) = (0, 0);
    for s in samples {
        if s.state == TcpState::Established && s.local.port() == port {
            if let Some(i) = &s.info {
                rx += i.bytes_received().unwrap_or(0);
                tx += i.bytes_acked().unwrap_or(0);
            }
        }
    }
    Ok((rx, tx))
}

/// The database file and its WAL, bytes.
fn db_file_bytes(db: &Path) -> u64 {
    ["", "-wal"]
        .iter()
        .map(|suffix| PathBuf::from(format!("{}{suffix}", db.display())))
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}

async fn snap(collector: &Collector, counters: &Counters) -> anyhow::Result<Snap> {
    let (pid, port) = (collector.pid(), collector.addr.port());
    let path = collector.db.clone();
    let (counts, (wire_in, wire_out)) = tokio::task::spawn_blocking(move || {
        Ok::<_, anyhow::Error>((
            open_db(&path).and_then(|c| db_counts(&c))?,
            collector_wire(port)?,
        ))
    })
    .await
    .context("the database and socket reader")??;
    // Rows leave under a size bound, so the table's rows are not the
    // rows ever stored: the store's own counters say both.
    let metrics = collector
        .scrape_metrics()
        .context("the collector's /metrics")?;
    let counter = |name: &str| -> anyhow::Result<f64> {
        metrics
            .get(name)
            .copied()
            .with_context(|| format!("{name} missing from the collector's /metrics"))
    };
    let pruned_rows = counter("tcpstall_collector_store_pruned_rows_total")?;
    let samples_stored = counter("tcpstall_collector_store_samples_total")? as i64;
    let pruned_episodes = counter("tcpstall_collector_store_pruned_episodes_total")? as i64;
    let me = std::process::id();
    let g = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let gi = |c: &std::sync::atomic::AtomicI64| c.load(Ordering::Relaxed);
    Ok(Snap {
        at: monotonic(),
        collector: procfs::process_ticks(pid)?,
        collector_threads: procfs::threads(pid)?,
        collector_mem: Mem::of(pid)?,
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
        samples_offered: g(&counters.samples_offered),
        samples_dropped: g(&counters.samples_dropped),
        batches_dropped: g(&counters.batches_dropped),
        watches: g(&counters.watches),
        unwatches: g(&counters.unwatches),
        suspects: gi(&counters.suspects),
        watched: gi(&counters.watched),
        stuck: gi(&counters.stuck),
        outboxed: gi(&counters.outboxed),
        db: counts,
        db_bytes: db_file_bytes(&collector.db),
        pruned_rows,
        samples_stored,
        pruned_episodes,
    })
}

/// What one run measured.
#[derive(Debug)]
struct Measured {
    connections: usize,
    connect_time: Duration,
    idle: Mem,
    idle_cpu: f64,
    start: Snap,
    series: Vec<Snap>,
    end: Snap,
    probed: probe::Probed,
    /// The aggregator's round trips: (when, how long; None = failed).
    delays: Vec<(Duration, Option<Duration>)>,
    failed_agents: u64,
    window_start: Duration,
    window_end: Duration,
    /// The collector's own memory figures at the window's end (its
    /// /metrics): what it tracks, what jemalloc has allocated, resident.
    memory: Option<(f64, f64, f64)>,
}

/// Runs the benchmark and prints a markdown report on stdout.
pub fn run(args: &LoadArgs) -> anyhow::Result<()> {
    args.fleet.check()?;
    ensure!(
        args.agents_per_conn >= 1,
        "--agents-per-conn must be at least 1"
    );
    ensure!(
        args.interval >= Duration::from_millis(50),
        "--interval below 50ms"
    );
    ensure!(args.threads >= 1, "--threads must be at least 1");
    ensure!(args.batch_max >= 1, "--batch-max must be at least 1");
    // Each HTTP/2 connection is one descriptor here and one in the
    // collector; a process may hold 20,000.
    let conns = args.fleet.agents.div_ceil(args.agents_per_conn);
    ensure!(
        conns <= 19_000,
        "{conns} connections exceed the 20,000 descriptors a process may hold; raise --agents-per-conn"
    );
    let bins = procs::bin_dir(args.bin_dir.as_deref())?;
    let threshold = humantime::format_duration(args.threshold).to_string();
    eprintln!("tcpstall-bench: starting the collector ...");
    let mut flags = vec![
        "--threshold".to_string(),
        threshold,
        "--metrics-listen".to_string(),
        "127.0.0.1:0".to_string(),
    ];
    if let Some(max) = args.max_db_bytes {
        flags.extend(["--max-db-bytes".to_string(), max.to_string()]);
    }
    let mut collector = Collector::start(&bins, &args.collector_log, &flags)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .thread_name("bench-rt")
        .enable_all()
        .build()
        .context("starting the generator's runtime")?;
    let measured = runtime.block_on(drive(args, &mut collector));
    runtime.shutdown_timeout(Duration::from_secs(5));
    let measured = measured?;
    let after = after_run(&collector)?;
    let alive = collector.alive();
    if args.keep {
        collector.keep();
        eprintln!(
            "tcpstall-bench: kept the database and log in {}",
            collector.dir().display()
        );
    }
    drop(collector);
    report(args, &measured, &after, alive);
    Ok(())
}

async fn drive(args: &LoadArgs, collector: &mut Collector) -> anyhow::Result<Measured> {
    let pid = collector.pid();
    let shape = args.shape();
    let shared = Arc::new(Shared {
        counters: Counters::default(),
        load: std::sync::atomic::AtomicBool::new(false),
        shape,
        seed: args.seed,
        buffer: args.buffer,
        batch_max: args.batch_max,
    });
    let url = collector.url();
    let endpoint = Endpoint::from_shared(url.clone())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let n_conns = args.fleet.agents.div_ceil(args.agents_per_conn) as usize;
    eprintln!(
        "tcpstall-bench: collector pid {pid} on {url}; opening {n_conns} HTTP/2 connections ..."
    );
    let t0 = Instant::now();
    let mut channels: Vec<Channel> = Vec::with_capacity(n_conns);
    for _ in 0..n_conns {
        channels.push(
            endpoint
                .connect()
                .await
                .context("connecting to the collector")?,
        );
    }
    let connect_time = t0.elapsed();

    let (stop_tx, stop_rx) = watch::channel(false);
    let probe_hosts: Vec<u32> = (0..args.probe_hosts.min(args.fleet.agents)).collect();
    let (stall_tx, stall_rx) = mpsc::channel(65_536);
    let query = endpoint.connect().await.context("connecting the probe")?;
    let probe = tokio::spawn(probe::run(
        query,
        probe_hosts.clone(),
        stall_rx,
        args.probe_every,
        (3 * args.deadline()).max(Duration::from_secs(30)),
        stop_rx.clone(),
    ));
    let delay = tokio::spawn(probe::aggregator_delay(
        endpoint
            .connect()
            .await
            .context("connecting the delay probe")?,
        Duration::from_millis(500),
        stop_rx.clone(),
    ));
    let mut agents = tokio::task::JoinSet::new();
    for i in 0..args.fleet.agents {
        let channel = channels[(i / args.agents_per_conn) as usize].clone();
        let stalls = probe_hosts.contains(&i).then(|| stall_tx.clone());
        agents.spawn(agent::run(
            i,
            channel,
            shared.clone(),
            stop_rx.clone(),
            stalls,
        ));
    }
    drop(stall_tx);
    drop(channels);
    let c = &shared.counters;
    let deadline = Instant::now() + Duration::from_secs(120);
    while c.welcomed.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed)
        < u64::from(args.fleet.agents)
    {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} agents welcomed after 120 s",
                c.welcomed.load(Ordering::Relaxed),
                args.fleet.agents
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(Err(e)) = agents.try_join_next() {
        bail!("an agent task failed: {e}");
    }
    let failed = c.failed.load(Ordering::Relaxed);
    ensure!(failed == 0, "{failed} simulated agents failed to connect");
    eprintln!(
        "tcpstall-bench: {} agents connected in {:.1} s; {} heartbeat-only polls ...",
        args.fleet.agents,
        connect_time.as_secs_f64(),
        args.idle_polls
    );

    // Idle baseline: connected, heartbeats only.
    let idle_t0 = procfs::process_ticks(pid)?;
    let idle_at = Instant::now();
    tokio::time::sleep(args.interval * args.idle_polls).await;
    let idle_cpu = procfs::percent_of_core(
        procfs::process_ticks(pid)?.since(&idle_t0).total(),
        idle_at.elapsed(),
    );
    let idle = Mem::of(pid)?;

    eprintln!(
        "tcpstall-bench: load on; warm-up {} ...",
        humantime::format_duration(args.warmup())
    );
    shared.load.store(true, Ordering::Relaxed);
    tokio::time::sleep(args.warmup()).await;
    ensure!(
        collector.alive(),
        "the collector died during the warm-up:\n{}",
        collector.log_tail(20)
    );

    eprintln!(
        "tcpstall-bench: window of {} starts (collector pid {pid}) ...",
        humantime::format_duration(args.duration)
    );
    let start = snap(collector, c).await?;
    let mut perf = match &args.perf {
        Some(out) => Some(procs::Perf::record(pid, out, args.duration)?),
        None => None,
    };
    let mut series = Vec::new();
    let step = args.every.min(args.duration);
    let window_end = start.at + args.duration;
    loop {
        let left = window_end.saturating_sub(monotonic());
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(left.min(step)).await;
        if !collector.alive() {
            bail!(
                "the collector died during the window:\n{}",
                collector.log_tail(20)
            );
        }
        series.push(snap(collector, c).await?);
    }
    let end = series.last().cloned().context("an empty window")?;
    let memory = collector.scrape_metrics().ok().and_then(|m| {
        let get = |k: &str| m.get(k).copied();
        Some((
            get("tcpstall_collector_tracked_bytes")?,
            get("tcpstall_collector_heap_allocated_bytes")?,
            get("tcpstall_collector_heap_resident_bytes")?,
        ))
    });
    if let Some(p) = perf.as_mut() {
        p.wait();
    }
    eprintln!("tcpstall-bench: window over; stopping the agents ...");
    let _ = stop_tx.send(true);
    let stop_deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(stop_deadline);
    loop {
        tokio::select! {
            r = agents.join_next() => if r.is_none() { break },
            _ = &mut stop_deadline => {
                agents.abort_all();
                break;
            }
        }
    }
    let probed = probe.await.context("the probe task")?;
    let delays = delay.await.context("the delay probe")?;
    Ok(Measured {
        connections: n_conns,
        connect_time,
        idle,
        idle_cpu,
        window_start: start.at,
        window_end: end.at,
        start,
        series,
        end,
        probed,
        delays,
        failed_agents: c.failed.load(Ordering::Relaxed),
        memory,
    })
}

/// Read after the run: the database and the collector's log.
#[derive(Debug, Default)]
struct After {
    diagnoses: Vec<(String, i64)>,
    end_reasons: Vec<(String, i64)>,
    samples_by_side: Vec<(String, i64)>,
    db_bytes: u64,
    log_lines: usize,
    warnings: Vec<(String, usize)>,
    opened_logged: usize,
}

fn after_run(collector: &Collector) -> anyhow::Result<After> {
    let conn = open_db(&collector.db)?;
    let group = |sql: &str| -> anyhow::Result<Vec<(String, i64)>> {
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                r.get(1)?,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    };
    let mut after = After {
        diagnoses: group("SELECT diagnosis, count(*) FROM episodes GROUP BY 1 ORDER BY 2 DESC")?,
        end_reasons: group(
            "SELECT coalesce(end_reason, '(open)'), count(*) FROM episodes GROUP BY 1 ORDER BY 2 DESC",
        )?,
        samples_by_side: group("SELECT side, count(*) FROM samples GROUP BY 1 ORDER BY 1")?,
        ..After::default()
    };
    for suffix in ["", "-wal"] {
        let p = PathBuf::from(format!("{}{suffix}", collector.db.display()));
        after.db_bytes += std::fs::metadata(p).map_or(0, |m| m.len());
    }
    let text = std::fs::read_to_string(&collector.log).unwrap_or_default();
    let mut warnings: BTreeMap<String, usize> = BTreeMap::new();
    for line in text.lines() {
        after.log_lines += 1;
        if line.contains("episode opened") {
            after.opened_logged += 1;
        }
        if line.contains(" WARN ") || line.contains(" ERROR ") {
            *warnings.entry(log_message(line)).or_default() += 1;
        }
    }
    let mut warnings: Vec<(String, usize)> = warnings.into_iter().collect();
    warnings.sort_by_key(|w| std::cmp::Reverse(w.1));
    after.warnings = warnings;
    Ok(after)
}

/// A log line without its time and fields: `LEVEL target: message`.
fn log_message(line: &str) -> String {
    let rest = line.split_once(' ').map_or(line, |(_, r)| r).trim_start();
    let words: Vec<&str> = rest.split(' ').take_while(|w| !w.contains('=')).collect();
    words.join(" ")
}

/// One row of the table over the window.
#[derive(Debug, Clone)]
struct Row {
    /// Since the window's start, at the row's end.
    t: Duration,
    collector_pct: f64,
    store_pct: f64,
    /// This process's CPU: the same work every minute, so a change in it
    /// is the machine's (its speed, its neighbours), not the collector's.
    generator_pct: f64,
    rss_mib: f64,
    db_mib: f64,
    stored_per_s: f64,
    deleted_per_s: f64,
    delay_max: Duration,
    ingested_per_s: f64,
    dropped_per_s: f64,
    outboxed: i64,
    suspects: i64,
    watched: i64,
    episodes: i64,
    /// Stalls whose episode was due in the row: how many, how many stored,
    /// the p99 of their start → stored.
    due: usize,
    stored: usize,
    p99: Option<Duration>,
}

fn rows(args: &LoadArgs, m: &Measured) -> Vec<Row> {
    let s = &m.start;
    let stopped = m.window_end;
    let d = |a: u64, b: u64| a.saturating_sub(b) as i64;
    let deadline = args.deadline();
    let mut out = Vec::with_capacity(m.series.len());
    let mut prev = s;
    for x in &m.series {
        let w = x.at.saturating_sub(prev.at);
        let delay_max = m
            .delays
            .iter()
            .filter(|(at, _)| *at >= prev.at && *at < x.at)
            .map(|(at, d)| d.unwrap_or_else(|| stopped.saturating_sub(*at)))
            .max()
            .unwrap_or_default();
        let store: u64 = procfs::threads_since(&prev.collector_threads, &x.collector_threads)
            .iter()
            .filter(|(name, _)| name.as_str() == "tcpstall-store")
            .map(|(_, (_, t, _))| t.total())
            .sum();
        let due: Vec<&probe::Stall> = m
            .probed
            .stalls
            .iter()
            .filter(|st| st.start + deadline >= prev.at && st.start + deadline < x.at)
            .collect();
        let mut lat: Vec<Duration> = due
            .iter()
            .filter_map(|st| st.stored.as_ref().map(|(t, _)| t.saturating_sub(st.start)))
            .collect();
        lat.sort();
        let rows_now = x.samples_stored + x.db.episodes_max;
        let rows_before = prev.samples_stored + prev.db.episodes_max;
        out.push(Row {
            t: x.at.saturating_sub(s.at),
            collector_pct: procfs::percent_of_core(x.collector.since(&prev.collector).total(), w),
            store_pct: procfs::percent_of_core(store, w),
            generator_pct: procfs::percent_of_core(x.generator.since(&prev.generator).total(), w),
            rss_mib: mib(x.collector_mem.rss_kib),
            db_mib: x.db_bytes as f64 / (1 << 20) as f64,
            stored_per_s: per_s(rows_now - rows_before, w),
            deleted_per_s: (x.pruned_rows - prev.pruned_rows).max(0.0) / w.as_secs_f64().max(1e-9),
            delay_max,
            ingested_per_s: per_s(d(x.samples_taken, prev.samples_taken), w),
            dropped_per_s: per_s(d(x.samples_dropped, prev.samples_dropped), w),
            outboxed: x.outboxed,
            suspects: x.suspects,
            watched: x.watched,
            episodes: x.db.episodes,
            due: due.len(),
            stored: lat.len(),
            p99: (!lat.is_empty()).then(|| pct(&lat, 0.99)),
        });
        prev = x;
    }
    out
}

/// A soak's trend: the first ten rows against the last ten; and, when the
/// size bound was reached early enough, the first ten rows wholly at it
/// (from the row after the one where deletion began) against the last ten,
/// so that the climb from writing only to writing and deleting is told
/// apart from a climb at the bound.
fn trend(args: &LoadArgs, rows: &[Row]) {
    println!("The trend: the first ten rows against the last ten.");
    println!();
    trend_table(args, rows, &rows[..10], &rows[rows.len() - 10..]);
    let at_bound = rows
        .iter()
        .position(|r| r.deleted_per_s > 0.0)
        .map(|i| i + 1);
    if let Some(i) = at_bound.filter(|i| rows.len().saturating_sub(*i) >= 20) {
        println!(
            "At the bound: rows {}–{} (the first ten wholly after deletion began, in the row ending at {} s) against the last ten.",
            i + 1,
            i + 10,
            rows[i - 1].t.as_secs()
        );
        println!();
        trend_table(args, &rows[i..], &rows[i..i + 10], &rows[rows.len() - 10..]);
    }
}

fn trend_table(args: &LoadArgs, rows: &[Row], first: &[Row], last: &[Row]) {
    let mean = |r: &[Row], f: fn(&Row) -> f64| r.iter().map(f).sum::<f64>() / r.len() as f64;
    let change = |a: f64, b: f64| if a > 0.0 { (b - a) / a * 100.0 } else { 0.0 };
    let cpu = (
        mean(first, |r| r.collector_pct),
        mean(last, |r| r.collector_pct),
    );
    let store = (mean(first, |r| r.store_pct), mean(last, |r| r.store_pct));
    let generator = (
        mean(first, |r| r.generator_pct),
        mean(last, |r| r.generator_pct),
    );
    let rss = (mean(first, |r| r.rss_mib), mean(last, |r| r.rss_mib));
    let db_max = rows.iter().map(|r| r.db_mib).fold(0.0, f64::max);
    let p99_max = rows.iter().filter_map(|r| r.p99).max().unwrap_or_default();
    let missed: usize = rows.iter().map(|r| r.due - r.stored).sum();
    let deadline = args.deadline();
    let verdict = |ok: bool| if ok { "met" } else { "**MISSED**" };
    println!("| what | first ten | last ten | change | goal | verdict |");
    println!("|---|---:|---:|---:|---|---|");
    println!(
        "| collector CPU, % of one core | {:.1} | {:.1} | {:+.1} % | within 10 % | {} |",
        cpu.0,
        cpu.1,
        change(cpu.0, cpu.1),
        verdict(change(cpu.0, cpu.1).abs() <= 10.0)
    );
    println!(
        "| store thread, % of one core | {:.1} | {:.1} | {:+.1} % | | |",
        store.0,
        store.1,
        change(store.0, store.1)
    );
    println!(
        "| generator (the same work throughout: the machine's drift), % of one core | {:.1} | {:.1} | {:+.1} % | | |",
        generator.0,
        generator.1,
        change(generator.0, generator.1)
    );
    println!(
        "| collector VmRSS, MiB | {:.1} | {:.1} | {:+.1} % | within 10 % | {} |",
        rss.0,
        rss.1,
        change(rss.0, rss.1),
        verdict(change(rss.0, rss.1).abs() <= 10.0)
    );
    match args.max_db_bytes {
        Some(max) => {
            let bound = max as f64 / (1 << 20) as f64;
            println!(
                "| database file + WAL, MiB, largest seen | | {db_max:.0} | | within --max-db-bytes ({bound:.0}) | {} |",
                verdict(db_max <= bound)
            );
        }
        None => println!("| database file + WAL, MiB, largest seen | | {db_max:.0} | | | |"),
    }
    println!(
        "| stall → episode p99, worst row | | {} | | within {} | {} |",
        secs(p99_max),
        secs(deadline),
        verdict(p99_max <= deadline && missed == 0)
    );
    println!();
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn per_s(n: i64, wall: Duration) -> f64 {
    n as f64 / wall.as_secs_f64().max(1e-9)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

fn report(args: &LoadArgs, m: &Measured, after: &After, alive: bool) {
    let (s, e) = (&m.start, &m.end);
    let wall = e.at.saturating_sub(s.at);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    let coll = e.collector.since(&s.collector);
    let gen = e.generator.since(&s.generator);
    let coll_pct = procfs::percent_of_core(coll.total(), wall);
    let gen_pct = procfs::percent_of_core(gen.total(), wall);
    let shape = args.shape();
    let tracked = e.suspects + e.watched;
    let d = |a: u64, b: u64| a.saturating_sub(b) as i64;

    let command: Vec<String> = std::env::args().collect();
    println!("Command: `{}`", command.join(" "));
    println!(
        "Machine: {} cores, kernel {}",
        cores,
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "Load: {} agents x {} connections, {:.0} suspects and {} stuck flows per agent at any \
         poll, {} polls, stalls of {}, collector --threshold {}; {} HTTP/2 connections \
         ({} agents each), connected in {:.1} s; warm-up {}, window {:.1} s; batches of at \
         most {} entries.",
        args.fleet.agents,
        args.fleet.conns_per_agent,
        shape.suspects,
        shape.stuck,
        humantime::format_duration(args.interval),
        humantime::format_duration(args.fleet.stuck_for),
        humantime::format_duration(args.threshold),
        m.connections,
        args.agents_per_conn,
        m.connect_time.as_secs_f64(),
        humantime::format_duration(args.warmup()),
        wall.as_secs_f64(),
        args.batch_max.min(tcpstall_agent::run::MAX_BATCH_ENTRIES),
    );
    println!();
    println!("| what | value |");
    println!("|---|---:|");
    let row = |k: &str, v: String| println!("| {k} | {v} |");
    row(
        "samples ingested /s (taken by the collector's streams)",
        format!("{:.0}", per_s(d(e.samples_taken, s.samples_taken), wall)),
    );
    row(
        "… suspect / released / watched /s",
        format!(
            "{:.0} / {:.0} / {:.0}",
            per_s(d(e.suspect_taken, s.suspect_taken), wall),
            per_s(d(e.released_taken, s.released_taken), wall),
            per_s(d(e.watched_taken, s.watched_taken), wall)
        ),
    );
    row(
        "samples offered /s (by the simulated polls)",
        format!(
            "{:.0}",
            per_s(d(e.samples_offered, s.samples_offered), wall)
        ),
    );
    row(
        "samples (batches) dropped /s: outbox full, the collector fell behind",
        format!(
            "{:.0} ({:.1})",
            per_s(d(e.samples_dropped, s.samples_dropped), wall),
            per_s(d(e.batches_dropped, s.batches_dropped), wall)
        ),
    );
    row(
        "batches / heartbeats ingested /s",
        format!(
            "{:.0} / {:.0}",
            per_s(d(e.batches_taken, s.batches_taken), wall),
            per_s(d(e.heartbeats_taken, s.heartbeats_taken), wall)
        ),
    );
    row(
        "TCP payload into / out of the collector (kernel counters)",
        format!(
            "{:.2} / {:.2} MB/s",
            per_s(d(e.wire_in, s.wire_in), wall) / 1e6,
            per_s(d(e.wire_out, s.wire_out), wall) / 1e6
        ),
    );
    row(
        "watch / unwatch requests received /s",
        format!(
            "{:.0} / {:.0}",
            per_s(d(e.watches, s.watches), wall),
            per_s(d(e.unwatches, s.unwatches), wall)
        ),
    );
    // Unanswered calls count as what they had waited when the run ended.
    let stopped = m.delays.iter().map(|(at, _)| *at).max().unwrap_or_default();
    let in_window: Vec<&(Duration, Option<Duration>)> = m
        .delays
        .iter()
        .filter(|(at, _)| *at >= s.at && *at <= e.at)
        .collect();
    let unanswered = in_window.iter().filter(|(_, d)| d.is_none()).count();
    let mut delays: Vec<Duration> = in_window
        .iter()
        .map(|(at, d)| d.unwrap_or_else(|| stopped.saturating_sub(*at)))
        .collect();
    delays.sort();
    row(
        "aggregator delay: GetFlow round trip every 0.5 s, p50 / p99 / max",
        format!(
            "{} / {} / {} s{}",
            secs(pct(&delays, 0.5)),
            secs(pct(&delays, 0.99)),
            secs(delays.last().copied().unwrap_or_default()),
            if unanswered > 0 {
                format!(
                    " ({unanswered} of {} never answered: counted as at least their wait)",
                    delays.len()
                )
            } else {
                String::new()
            }
        ),
    );
    row(
        "batches waiting in outboxes (start → end)",
        format!("{} → {}", s.outboxed, e.outboxed),
    );
    row(
        "**collector CPU, % of one core** (user + sys)",
        format!(
            "**{coll_pct:.1}** ({:.1} + {:.1})",
            procfs::percent_of_core(coll.user, wall),
            procfs::percent_of_core(coll.sys, wall)
        ),
    );
    row(
        "**collector CPU, % of the machine** (2 cores)",
        format!("**{:.1}**", coll_pct / cores),
    );
    row(
        "collector CPU per sample ingested",
        format!(
            "{:.1} µs",
            coll.duration().as_secs_f64() * 1e6 / d(e.samples_taken, s.samples_taken).max(1) as f64
        ),
    );
    row(
        "collector CPU when idle (heartbeats only), % of one core",
        format!("{:.1}", m.idle_cpu),
    );
    row(
        "generator CPU, % of one core (this process)",
        format!("{gen_pct:.1}"),
    );
    row(
        "collector VmRSS idle (agents connected) → window end",
        format!(
            "{:.1} → {:.1} MiB",
            mib(m.idle.rss_kib),
            mib(e.collector_mem.rss_kib)
        ),
    );
    row(
        "collector VmHWM at window end",
        format!("{:.1} MiB", mib(e.collector_mem.hwm_kib)),
    );
    row(
        "tracked connections at window end (suspects + watched peers)",
        format!(
            "{tracked} ({} + {}; {} stuck)",
            e.suspects, e.watched, e.stuck
        ),
    );
    let per = |kib: u64| kib as f64 * 1024.0 / tracked.max(1) as f64;
    row(
        "**collector memory per tracked connection**: VmRSS / tracked",
        format!("**{:.0} B**", per(e.collector_mem.rss_kib)),
    );
    row(
        "… (VmRSS − idle VmRSS) / tracked",
        format!(
            "{:.0} B",
            per(e.collector_mem.rss_kib.saturating_sub(m.idle.rss_kib))
        ),
    );
    if let Some((tracked_b, allocated, resident)) = m.memory {
        row(
            "… of which the aggregator's tables and kept samples (its estimate) / tracked",
            format!("{:.0} B", tracked_b / tracked.max(1) as f64),
        );
        row(
            "… heap allocated (jemalloc) / tracked; resident heap",
            format!(
                "{:.0} B; {:.1} MiB of {:.1} MiB allocated",
                allocated / tracked.max(1) as f64,
                resident / 1048576.0,
                allocated / 1048576.0
            ),
        );
    }
    row(
        "… idle VmRSS per connected agent",
        format!(
            "{:.1} KiB",
            m.idle.rss_kib as f64 / f64::from(args.fleet.agents)
        ),
    );
    row(
        "size of one `EndSample` (the aggregator keeps 2 per suspect, 1 per watched peer)",
        format!("{} B", std::mem::size_of::<tcpstall_common::EndSample>()),
    );
    let dsamples = e.samples_stored - s.samples_stored;
    // Ever stored and ever closed: what retention deleted counts too.
    let depisodes = e.db.episodes_max - s.db.episodes_max;
    let dclosed = (e.db.closed + e.pruned_episodes) - (s.db.closed + s.pruned_episodes);
    row(
        "SQLite rows inserted /s: samples + episodes",
        format!(
            "{:.0} ({:.0} + {:.0})",
            per_s(dsamples + depisodes, wall),
            per_s(dsamples, wall),
            per_s(depisodes, wall)
        ),
    );
    row(
        "SQLite episodes closed (updated) /s",
        format!("{:.0}", per_s(dclosed, wall)),
    );
    row(
        "database size after the run",
        format!("{:.1} MiB", after.db_bytes as f64 / 1048576.0),
    );
    row("simulated agents failed", m.failed_agents.to_string());
    row(
        "collector alive at the end",
        if alive { "yes".into() } else { "**no**".into() },
    );
    println!();

    println!("Collector CPU by thread over the window (threads alive throughout):");
    println!();
    println!("| thread | n | % of one core (ticks) | % of one core (schedstat) |");
    println!("|---|---:|---:|---:|");
    for (name, (n, t, ns)) in procfs::threads_since(&s.collector_threads, &e.collector_threads) {
        println!(
            "| {name} | {n} | {:.1} | {:.1} |",
            procfs::percent_of_core(t.total(), wall),
            ns as f64 / 1e9 / wall.as_secs_f64() * 100.0
        );
    }
    println!();
    println!("Generator CPU by thread:");
    println!();
    println!("| thread | n | % of one core (ticks) |");
    println!("|---|---:|---:|");
    for (name, (n, t, _)) in procfs::threads_since(&s.generator_threads, &e.generator_threads) {
        println!(
            "| {name} | {n} | {:.1} |",
            procfs::percent_of_core(t.total(), wall)
        );
    }
    println!();

    let rows = rows(args, m);
    println!(
        "Every ~{} of the window (stalls: those whose episode was due in the row's time):",
        humantime::format_duration(args.every.min(wall))
    );
    println!();
    println!("| t s | collector % core | store thread % core | generator % core | VmRSS MiB | database MiB | rows stored/s | rows deleted/s | aggregator delay max s | ingested samples/s | dropped/s | outboxed | suspects | watched | episodes in the database | stalls due: stored, p99 s |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} of {}, {} |",
            r.t.as_secs_f64(),
            r.collector_pct,
            r.store_pct,
            r.generator_pct,
            r.rss_mib,
            r.db_mib,
            r.stored_per_s,
            r.deleted_per_s,
            secs(r.delay_max),
            r.ingested_per_s,
            r.dropped_per_s,
            r.outboxed,
            r.suspects,
            r.watched,
            r.episodes,
            r.stored,
            r.due,
            r.p99.map_or_else(|| "-".to_string(), secs),
        );
    }
    println!();
    if args.every >= Duration::from_secs(60) && rows.len() >= 20 {
        trend(args, &rows);
    }

    // Latency: stalls whose episode was due (start + deadline) within the
    // window.
    let deadline = args.deadline();
    let due_from = m.window_start.saturating_sub(deadline);
    let due_to = m.window_end.saturating_sub(deadline);
    let due: Vec<&probe::Stall> = m
        .probed
        .stalls
        .iter()
        .filter(|st| st.start >= due_from && st.start < due_to)
        .collect();
    let mut lat: Vec<Duration> = due
        .iter()
        .filter_map(|st| st.stored.as_ref().map(|(t, _)| t.saturating_sub(st.start)))
        .collect();
    lat.sort();
    let missing = due.len() - lat.len();
    let within = lat.iter().filter(|l| **l <= deadline).count();
    // Polls from the one that first saw the queue held to the episode
    // being listed: threshold / interval of them at best.
    let mut polls_after: BTreeMap<u64, usize> = BTreeMap::new();
    for st in &due {
        if let Some((t, _)) = &st.stored {
            let n = t.saturating_sub(st.first_seen).as_secs_f64() / args.interval.as_secs_f64();
            *polls_after.entry(n.floor() as u64).or_default() += 1;
        }
    }
    let mut diag: BTreeMap<&str, usize> = BTreeMap::new();
    for st in &due {
        if let Some((_, dg)) = &st.stored {
            *diag.entry(dg.as_str()).or_default() += 1;
        }
    }
    println!(
        "Stall start → episode listed by ListEpisodes, for the {} probe hosts' stalls due within \
         the window ({} stalls; probe every {}, {} calls, {} failed, {} rows):",
        args.probe_hosts.min(args.fleet.agents),
        due.len(),
        humantime::format_duration(args.probe_every),
        m.probed.calls,
        m.probed.failed_calls,
        m.probed.rows,
    );
    println!();
    println!("| stalls | stored | never stored | p50 s | p99 s | max s | target (threshold + 2 polls) s | within target |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {} | {} | {} | {} | {} of {} |",
        due.len(),
        lat.len(),
        missing,
        secs(pct(&lat, 0.5)),
        secs(pct(&lat, 0.99)),
        secs(lat.last().copied().unwrap_or_default()),
        secs(deadline),
        within,
        due.len(),
    );
    println!();
    println!(
        "Listed after this many whole polls from the poll that first saw the queue held \
         (threshold / interval = {:.1}): {}",
        args.threshold.as_secs_f64() / args.interval.as_secs_f64(),
        polls_after
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    println!(
        "Diagnoses of those: {}",
        diag.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    println!(
        "Whole run, from the database: episodes by diagnosis {}; by end {}; samples by side {}.",
        fmt_pairs(&after.diagnoses),
        fmt_pairs(&after.end_reasons),
        fmt_pairs(&after.samples_by_side)
    );
    println!(
        "Collector log: {} lines, {} \"episode opened\"; warnings and errors: {}",
        after.log_lines,
        after.opened_logged,
        if after.warnings.is_empty() {
            "none".to_string()
        } else {
            after
                .warnings
                .iter()
                .take(8)
                .map(|(k, v)| format!("{v} × `{k}`"))
                .collect::<Vec<_>>()
                .join("; ")
        }
    );
    println!();
    let verdict = |ok: bool| if ok { "met" } else { "**MISSED**" };
    println!("| target | measured | verdict |");
    println!("|---|---|---|");
    let lag_p99 = pct(&delays, 0.99);
    println!(
        "| {} agents held: nothing dropped, the aggregator keeps up (delay p99 < 1 poll) | {:.0} samples/s dropped, {} batches outboxed at the end, delay p99 {} s | {} |",
        args.fleet.agents,
        per_s(d(e.samples_dropped, s.samples_dropped), wall),
        e.outboxed,
        secs(lag_p99),
        verdict(
            e.samples_dropped == s.samples_dropped
                && e.outboxed <= i64::from(args.fleet.agents)
                && m.failed_agents == 0
                && !delays.is_empty()
                && lag_p99 < args.interval
        ),
    );
    println!(
        "| collector < 25 % CPU of the 2 cores | {:.1} % | {} |",
        coll_pct / cores,
        verdict(coll_pct / cores < 25.0)
    );
    println!(
        "| < 1 KB collector memory per tracked connection | {:.0} B (VmRSS / tracked) | {} |",
        per(e.collector_mem.rss_kib),
        verdict(per(e.collector_mem.rss_kib) < 1000.0)
    );
    println!(
        "| episode stored within threshold + 2 polls ({} s) | p99 {} s, max {} s, {} never | {} |",
        secs(deadline),
        secs(pct(&lat, 0.99)),
        secs(lat.last().copied().unwrap_or_default()),
        missing,
        verdict(!due.is_empty() && missing == 0 && within == due.len())
    );
}

fn fmt_pairs(v: &[(String, i64)]) -> String {
    v.iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_lose_their_time_and_fields() {
        let l = "2026-11-26T10:00:00.123456Z  WARN tcpstall_collector::aggregator: agent's outbound queue is full; watch request dropped host=sim-00001";
        assert_eq!(
            log_message(l),
            "WARN tcpstall_collector::aggregator: agent's outbound queue is full; watch request dropped"
        );
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_secs).collect();
        assert_eq!(pct(&v, 0.5), Duration::from_secs(50));
        assert_eq!(pct(&v, 0.99), Duration::from_secs(99));
        assert_eq!(pct(&v[..1], 0.99), Duration::from_secs(1));
        assert_eq!(pct(&[], 0.5), Duration::ZERO);
    }
}
