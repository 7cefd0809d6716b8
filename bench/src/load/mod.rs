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
//!
//! In fleet mode (`--fleet-nodes N`, issue 24) the same load is spread over
//! N collector nodes on NATS JetStream sharing a PostgreSQL store, and
//! every process of that system is measured (`system`).
//!
//! Where each part lives: `run` starts the collector and drives the
//! simulated fleet through those phases; `snap` reads everything at one
//! moment; `after` reads the database and the collector's log once the run
//! is over; `series` makes the table over the window and a soak's trend;
//! `report` prints the markdown report.

mod after;
mod agent;
pub mod inproc;
mod probe;
mod report;
mod run;
mod series;
pub mod sim;
mod snap;
mod system;
mod units;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::ensure;

pub(crate) use run::run;

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
    /// One in N of each host's connections crosses a NAT (0: none). Half
    /// of those are translated on the sender's own host (it dials its
    /// peer's service address, DNATed there: its samples carry the
    /// conntrack entry), half on the peer's (a port forwarded into a
    /// container: the peer reports the 4-tuple it was asked for absent,
    /// with its entry, and holds the socket at the container's). The last
    /// two hosts then say they forward packets, and answer Translate
    /// requests.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub translated_every: u32,
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
            net: sim::Net {
                hosts: self.agents,
                translated_every: self.translated_every,
            },
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
    /// Fleet mode: this many collector nodes (0: one collector, as
    /// before), on `--nats-servers` NATS servers with JetStream and one
    /// PostgreSQL they share, all started by the bench; the agents' HTTP/2
    /// connections go to the nodes in turn.
    #[arg(long, default_value_t = 0, value_name = "N")]
    fleet_nodes: usize,
    /// Fleet mode: NATS servers in the cluster (the stream's and buckets'
    /// replicas: as many, at most 3).
    #[arg(long, default_value_t = 1, value_name = "N")]
    nats_servers: usize,
    /// Fleet mode: the nodes' --partitions.
    #[arg(long, default_value_t = 32, value_name = "N")]
    partitions: u32,
    /// One collector on PostgreSQL (the bench starts it) instead of
    /// SQLite: the store's cost without the bus's. Fleet mode always uses
    /// PostgreSQL.
    #[arg(long)]
    postgres: bool,
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
