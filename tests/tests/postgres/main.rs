//! The PostgreSQL store against a real PostgreSQL 15 server started per
//! test ([`tcpstall_tests::postgres::Postgres`]): the store's contract run
//! against SQLite and PostgreSQL from one body (`contract`); what only a
//! shared database has, two nodes writing one episode, migrations, nodes
//! opening at once (`fleet`); PostgreSQL restarted under a writing store
//! (`outage`); and a collector process serving queries from it (`e2e`).
//! Without PostgreSQL installed, each test prints a SKIP line and passes.

mod contract;
mod e2e;
mod fleet;
mod outage;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tcpstall_collector::store::{
    EpisodeEnd, NewEpisode, PgConfig, PgStore, SharedStore, SqliteStore, StoreConfig, StoreError,
    StoreUrl, StoredSample,
};
use tcpstall_common::{Clock, FlowTuple, Side};
use tcpstall_proto::convert::pack;
use tcpstall_tests::postgres::Postgres;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A century: retention that never touches the tests' small timestamps.
pub const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Starts a server, or prints SKIP and returns from the test.
#[macro_export]
macro_rules! pg_or_skip {
    ($what:expr) => {
        match tcpstall_tests::postgres::Postgres::start_for($what) {
            Some(pg) => pg,
            None => return Ok(()),
        }
    };
}

/// The PostgreSQL store's settings for `url` (parsed as the collector
/// parses `--store`), with a century's retention.
pub fn pg_config(url: &str) -> PgConfig {
    let StoreUrl::Postgres { config, shown } = url.parse::<StoreUrl>().expect("store url") else {
        panic!("not a postgres url: {url}");
    };
    PgConfig {
        retention: CENTURY,
        reconnect_ceiling: Duration::from_millis(400),
        ..PgConfig::new(*config, shown)
    }
}

/// An open store, as the other roles hold it, and what stops it.
#[derive(Debug)]
pub struct Opened {
    pub store: SharedStore,
    stop: Stopper,
}

#[derive(Debug)]
enum Stopper {
    Thread(std::thread::JoinHandle<()>, tempfile::TempDir),
    Task(tokio::task::JoinHandle<()>),
}

impl Opened {
    pub async fn pg(cfg: PgConfig) -> Result<Opened, StoreError> {
        let (store, task, _) = PgStore::open(cfg).await?;
        Ok(Opened {
            store: Arc::new(store),
            stop: Stopper::Task(task),
        })
    }

    pub fn sqlite(cfg: impl FnOnce(StoreConfig) -> StoreConfig) -> Opened {
        let dir = tempfile::tempdir().expect("temp dir");
        let base = StoreConfig {
            retention: CENTURY,
            ..StoreConfig::new(dir.path().join("tcpstall.db"))
        };
        let (store, thread, _) = SqliteStore::open(cfg(base)).expect("open sqlite");
        Opened {
            store: Arc::new(store),
            stop: Stopper::Thread(thread, dir),
        }
    }

    /// Shuts the store down and waits for its thread or task.
    pub async fn stop(self) {
        self.store.shutdown().await;
        match self.stop {
            Stopper::Thread(t, _dir) => t.join().expect("store thread"),
            Stopper::Task(t) => t.await.expect("store task"),
        }
    }
}

pub fn flow(a: &str, b: &str) -> FlowTuple {
    FlowTuple::new(a.parse().expect("address"), b.parse().expect("address"))
}

/// A flow of its own for each `n`: a shared database keeps one episode per
/// flow and start.
pub fn flow_n(n: i64) -> FlowTuple {
    let port = 20_000 + u16::try_from(n.rem_euclid(40_000)).expect("port");
    flow(&format!("198.18.0.1:{port}"), "[2001:db8::2]:8080")
}

pub fn episode(
    id: i64,
    a_host: &str,
    b_host: Option<&str>,
    diagnosis: &str,
    start: i64,
) -> NewEpisode {
    let mut evidence = BTreeMap::new();
    evidence.insert("a_sendq".to_string(), 4096);
    evidence.insert("b_rcv_nxt".to_string(), -1);
    evidence.insert("big".to_string(), i64::MAX);
    NewEpisode {
        id,
        diagnosis: diagnosis.into(),
        summary: format!("episode {id}: {diagnosis}"),
        evidence,
        basis: Default::default(),
        started_at_ms: start,
        duration_ms: 10_100,
        stuck_bytes: 4096,
        a_host: a_host.into(),
        a_netns: "ns-a".into(),
        a_flow: flow_n(id),
        a_cookie: u64::MAX - 1,
        b_host: b_host.map(str::to_string),
        peer_note: None,
        via: None,
    }
}

pub fn sample(side: Side, host: &str, at_ms: i64, f: FlowTuple) -> StoredSample {
    StoredSample {
        side,
        host: host.into(),
        at_ms,
        sample: pack(&tcpstall_tests::fake::stuck(f, 77, 10_250)),
    }
}

pub fn ended(at: i64) -> EpisodeEnd {
    EpisodeEnd {
        ended_at_ms: at,
        end_reason: "moved".into(),
        duration_ms: 10,
    }
}

/// Opens the store a contract test runs against, as often as it asks.
#[derive(Debug)]
pub enum Maker {
    Sqlite,
    Postgres(Postgres),
}

impl Maker {
    /// A store with a century's retention on `clock` (the system's if
    /// `None`); each SQLite store is a new file, each PostgreSQL store is
    /// on the same database.
    pub async fn open(&self, clock: Option<Clock>) -> Opened {
        let clock = clock.unwrap_or_else(Clock::system);
        match self {
            Maker::Sqlite => Opened::sqlite(|c| StoreConfig { clock, ..c }),
            Maker::Postgres(pg) => Opened::pg(PgConfig {
                clock,
                ..pg_config(&pg.url("postgres"))
            })
            .await
            .expect("open the postgres store"),
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Maker::Postgres(_))
    }
}
