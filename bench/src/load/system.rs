//! What `collector-load` runs against: one collector on SQLite (the
//! default, as every run before fleet mode), one collector on PostgreSQL
//! (`--postgres`: the store's cost apart from the bus's), or a fleet of
//! collector nodes on NATS JetStream sharing one PostgreSQL
//! (`--fleet-nodes N`, issue 24).
//!
//! The NATS servers and the PostgreSQL server are the tests' harnesses
//! (`tcpstall_tests::nats`, `tcpstall_tests::postgres`): real servers on
//! free loopback ports in temporary directories, PostgreSQL as `nobody`
//! when the bench runs as root. Everything here is read as one system:
//! CPU by part (the nodes, NATS, PostgreSQL with its backends), the nodes'
//! /metrics added up, the store's rows counted in whichever database it is.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use tcpstall_tests::nats::NatsCluster;
use tcpstall_tests::postgres::Postgres;

use super::snap::{db_counts, open_db, DbCounts};
use super::LoadArgs;
use crate::procfs::{self, Mem, ThreadCpu, Ticks};
use crate::procs::Collector;

/// The database fleet mode's nodes share.
const DB: &str = "tcpstall";

/// CPU of each part of the system at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct PartTicks {
    /// Every collector node's process, added up.
    pub(super) nodes: Ticks,
    /// Every NATS server.
    pub(super) nats: Ticks,
    /// PostgreSQL: the postmaster and its children, live and reaped.
    pub(super) postgres: Ticks,
}

impl PartTicks {
    pub(super) fn since(&self, earlier: &PartTicks) -> PartTicks {
        PartTicks {
            nodes: self.nodes.since(&earlier.nodes),
            nats: self.nats.since(&earlier.nats),
            postgres: self.postgres.since(&earlier.postgres),
        }
    }

    pub(super) fn total(&self) -> u64 {
        self.nodes.total() + self.nats.total() + self.postgres.total()
    }
}

/// The collector nodes and the servers they use.
#[derive(Debug)]
pub(super) struct System {
    pub(super) nodes: Vec<Collector>,
    nats: Option<NatsCluster>,
    pg: Option<Postgres>,
}

impl System {
    /// Starts what `args` asks for, each collector with `flags` besides
    /// its own; in fleet mode waits until every partition is owned and
    /// every node owns some.
    pub(super) fn start(args: &LoadArgs, bins: &Path, flags: &[String]) -> anyhow::Result<System> {
        let n = args.fleet_nodes.max(1);
        let fleet = args.fleet_nodes > 0;
        let pg = if fleet || args.postgres {
            eprintln!("tcpstall-bench: starting PostgreSQL ...");
            Some(
                // PostgreSQL's own default buffers (the tests' 16 MB made
                // every write read and write pages through the kernel);
                // durability stays off, as in the tests.
                Postgres::start_with("collector-load", &["shared_buffers=128MB"])
                    .context("PostgreSQL 15 is not installed (apt-get install postgresql)")?,
            )
        } else {
            None
        };
        let store = pg.as_ref().map(|pg| pg.create_db(DB));
        let nats = if fleet {
            ensure!(
                tcpstall_tests::nats::server_binary().is_some(),
                "fleet mode needs nats-server (apt-get install nats-server)"
            );
            eprintln!(
                "tcpstall-bench: starting {} NATS server(s) ...",
                args.nats_servers
            );
            Some(NatsCluster::start(args.nats_servers))
        } else {
            None
        };
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let mut node_flags = flags.to_vec();
            if let Some(url) = &store {
                node_flags.extend(["--store".to_string(), url.clone()]);
            }
            if let Some(nats) = &nats {
                node_flags.extend(nats.args());
                node_flags.extend([
                    "--node-name".to_string(),
                    format!("node-{i}"),
                    "--partitions".to_string(),
                    args.partitions.to_string(),
                    "--nats-replicas".to_string(),
                    args.nats_servers.min(3).to_string(),
                ]);
            }
            eprintln!("tcpstall-bench: starting collector node {i} ...");
            nodes.push(Collector::start(bins, &args.collector_log, &node_flags)?);
        }
        let system = System { nodes, nats, pg };
        if fleet {
            system.wait_spread(args.partitions)?;
        }
        Ok(system)
    }

    /// Waits until the partitions are all owned, by every node.
    fn wait_spread(&self, partitions: u32) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let owned: Vec<f64> = self
                .nodes
                .iter()
                .map(|n| {
                    n.scrape_metrics()
                        .ok()
                        .and_then(|m| m.get("tcpstall_collector_partitions_owned").copied())
                        .unwrap_or(0.0)
                })
                .collect();
            if owned.iter().sum::<f64>() == f64::from(partitions) && owned.iter().all(|&o| o > 0.0)
            {
                eprintln!("tcpstall-bench: partitions owned by node: {owned:?}");
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the partitions were not all owned, by every node, within 60 s: {owned:?}\n{}",
                    self.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether this is fleet mode.
    pub(super) fn fleet(&self) -> bool {
        self.nats.is_some()
    }

    /// The store's name, for the report.
    pub(super) fn store_name(&self) -> &'static str {
        if self.pg.is_some() {
            "PostgreSQL 15"
        } else {
            "SQLite"
        }
    }

    /// The node the probes ask (any node answers any query).
    pub(super) fn first(&self) -> &Collector {
        &self.nodes[0]
    }

    /// Whether every node still runs.
    pub(super) fn alive(&mut self) -> bool {
        self.nodes.iter_mut().all(Collector::alive)
    }

    /// Every node's last `n` log lines.
    pub(super) fn log_tail(&self, n: usize) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, c)| format!("node {i}:\n{}", c.log_tail(n)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every node's whole log, one after the other.
    pub(super) fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|c| std::fs::read_to_string(&c.log).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Leaves the nodes' directories in place; says where.
    pub(super) fn keep(&mut self) {
        for c in &mut self.nodes {
            c.keep();
            eprintln!("tcpstall-bench: kept {}", c.dir().display());
        }
    }

    /// CPU by part now.
    pub(super) fn ticks(&self) -> anyhow::Result<PartTicks> {
        let mut t = PartTicks::default();
        for c in &self.nodes {
            add(&mut t.nodes, procfs::process_ticks(c.pid())?);
        }
        if let Some(nats) = &self.nats {
            for pid in nats.pids() {
                add(&mut t.nats, procfs::process_ticks(pid)?);
            }
        }
        if let Some(pid) = self.pg.as_ref().and_then(Postgres::pid) {
            t.postgres = procfs::tree_ticks(pid)?;
        }
        Ok(t)
    }

    /// Every node's threads (thread ids are the machine's: they do not
    /// collide).
    pub(super) fn threads(
        &self,
    ) -> anyhow::Result<std::collections::BTreeMap<u32, (String, ThreadCpu)>> {
        let mut all = std::collections::BTreeMap::new();
        for c in &self.nodes {
            all.extend(procfs::threads(c.pid())?);
        }
        Ok(all)
    }

    /// The nodes' memory, added up.
    pub(super) fn mem(&self) -> anyhow::Result<Mem> {
        let mut m = Mem::default();
        for c in &self.nodes {
            let one = Mem::of(c.pid())?;
            m.rss_kib += one.rss_kib;
            m.hwm_kib += one.hwm_kib;
        }
        Ok(m)
    }

    /// Every node's /metrics, each series added up over the nodes.
    pub(super) fn metrics(&self) -> anyhow::Result<HashMap<String, f64>> {
        let mut sum: HashMap<String, f64> = HashMap::new();
        for (i, c) in self.nodes.iter().enumerate() {
            let m = c
                .scrape_metrics()
                .with_context(|| format!("node {i}'s /metrics"))?;
            for (k, v) in m {
                *sum.entry(k).or_default() += v;
            }
        }
        Ok(sum)
    }

    /// One series of each node's /metrics (0 where a node lacks it).
    pub(super) fn per_node(&self, name: &str) -> Vec<f64> {
        self.nodes
            .iter()
            .map(|c| {
                c.scrape_metrics()
                    .ok()
                    .and_then(|m| m.get(name).copied())
                    .unwrap_or(0.0)
            })
            .collect()
    }

    /// The ports of the nodes' agent listeners, the NATS servers' client
    /// listeners and PostgreSQL's listener: whose sockets' byte counters
    /// say the traffic into and out of each part.
    pub(super) fn ports(&self) -> Ports {
        Ports {
            nodes: self.nodes.iter().map(|c| c.addr.port()).collect(),
            nats: self
                .nats
                .as_ref()
                .map(|n| {
                    n.urls()
                        .iter()
                        .filter_map(|u| u.rsplit(':').next()?.parse().ok())
                        .collect()
                })
                .unwrap_or_default(),
            postgres: self.pg.as_ref().map(Postgres::port).into_iter().collect(),
        }
    }

    /// Episodes stored, ended, and every episode ever stored. PostgreSQL's
    /// ids are the episodes' identities' hashes, not a sequence: there the
    /// count stands for the last (nothing is deleted within a run at the
    /// default retention). PostgreSQL is read with `psql`: each reading is
    /// one short connection, a backend's start counted in its CPU.
    pub(super) fn counts(&self) -> anyhow::Result<DbCounts> {
        let Some(pg) = &self.pg else {
            return open_db(&self.nodes[0].db).and_then(|c| db_counts(&c));
        };
        let line = pg.psql(
            DB,
            "SELECT count(*), count(*) FILTER (WHERE NOT open) FROM episodes",
        );
        let (a, b) = line
            .split_once('|')
            .with_context(|| format!("psql said {line:?}"))?;
        let episodes: i64 = a.parse()?;
        Ok(DbCounts {
            episodes,
            closed: b.parse()?,
            episodes_max: episodes,
        })
    }

    /// The bytes the store takes on disk.
    pub(super) fn store_bytes(&self) -> u64 {
        match &self.pg {
            Some(pg) => pg
                .psql(DB, &format!("SELECT pg_database_size('{DB}')"))
                .parse()
                .unwrap_or(0),
            None => ["", "-wal"]
                .iter()
                .map(|suffix| format!("{}{suffix}", self.nodes[0].db.display()))
                .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
                .sum(),
        }
    }

    /// `SELECT key, count` rows of the store.
    pub(super) fn group(&self, sql: &str) -> anyhow::Result<Vec<(String, i64)>> {
        let Some(pg) = &self.pg else {
            let conn = open_db(&self.nodes[0].db)?;
            let mut stmt = conn.prepare(sql)?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                    r.get(1)?,
                ))
            })?;
            return Ok(rows.collect::<Result<_, _>>()?);
        };
        pg.psql(DB, sql)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l
                    .rsplit_once('|')
                    .with_context(|| format!("psql said {l:?}"))?;
                Ok((k.to_string(), v.parse()?))
            })
            .collect()
    }
}

fn add(sum: &mut Ticks, t: Ticks) {
    sum.user += t.user;
    sum.sys += t.sys;
}

/// The listening ports of each part.
#[derive(Debug, Clone, Default)]
pub(super) struct Ports {
    pub(super) nodes: Vec<u16>,
    pub(super) nats: Vec<u16>,
    pub(super) postgres: Vec<u16>,
}
