//! The lab's collector as a fleet: several `tcpstall-collector` nodes on a
//! real NATS cluster (JetStream, replicas as asked), sharing a store.

use std::time::Duration;

use super::{ms_text, Settings};
use crate::nats::NatsCluster;
use crate::postgres::Postgres;
use crate::CollectorProcess;

/// How the fleet is made.
#[derive(Debug, Clone)]
pub struct Shape {
    pub nodes: usize,
    pub nats_servers: usize,
    pub partitions: u32,
    /// How long a partition's lease lasts: what a takeover waits at most.
    pub lease: Duration,
    /// The nodes share a real PostgreSQL (`false`: each node its own
    /// SQLite file; what one stores the others do not see).
    pub postgres: bool,
    /// Each agent is given every node's URL (its own first) and moves when
    /// its node goes; `false`: only its own node's.
    pub agents_know_all: bool,
}

impl Shape {
    /// Three nodes on three NATS servers (replicas 3) and one PostgreSQL,
    /// 8 partitions, 3 s leases; each agent knows only its own node.
    pub fn three() -> Shape {
        Shape {
            nodes: 3,
            nats_servers: 3,
            partitions: 8,
            lease: Duration::from_secs(3),
            postgres: true,
            agents_know_all: false,
        }
    }
}

/// The NATS cluster, the store and the nodes beyond the first.
#[derive(Debug)]
pub struct Fleet {
    // Fields drop in this order: the nodes, NATS, PostgreSQL.
    /// Nodes 1.. (node 0 is the lab's `collector`).
    pub nodes: Vec<CollectorProcess>,
    pub nats: NatsCluster,
    pub pg: Option<Postgres>,
    /// The nodes' `--store`.
    pub store: Option<String>,
    pub shape: Shape,
    pub settings: Settings,
}

impl Fleet {
    /// Starts NATS and the nodes; returns node 0 apart. Every node has
    /// taken its share of partitions when this returns.
    pub fn start(shape: &Shape, settings: Settings) -> (CollectorProcess, Fleet) {
        let nats = NatsCluster::start(shape.nats_servers);
        let pg = shape
            .postgres
            .then(|| Postgres::start_for("the fleet lab").expect("PostgreSQL 15 installed"));
        let store = pg.as_ref().map(|pg| pg.create_db("tcpstall"));
        let mut nodes: Vec<CollectorProcess> = (0..shape.nodes)
            .map(|i| Fleet::node_with(&nats, store.as_deref(), shape, settings, i))
            .collect();
        let fleet_nodes = nodes.split_off(1);
        let first = nodes.pop().expect("one node at least");
        let fleet = Fleet {
            nodes: fleet_nodes,
            nats,
            pg,
            store,
            shape: shape.clone(),
            settings,
        };
        fleet.wait_spread(&first);
        (first, fleet)
    }

    /// Starts node `i` (a new process; its name is `node-i`).
    pub fn node(&self, i: usize) -> CollectorProcess {
        Fleet::node_with(
            &self.nats,
            self.store.as_deref(),
            &self.shape,
            self.settings,
            i,
        )
    }

    fn node_with(
        nats: &NatsCluster,
        store: Option<&str>,
        shape: &Shape,
        settings: Settings,
        i: usize,
    ) -> CollectorProcess {
        let mut args: Vec<String> = vec![
            "--threshold".into(),
            ms_text(settings.threshold),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
            "--node-name".into(),
            format!("node-{i}"),
            "--partitions".into(),
            shape.partitions.to_string(),
            "--nats-replicas".into(),
            shape.nats_servers.min(3).to_string(),
            "--lease".into(),
            ms_text(shape.lease),
        ];
        args.extend(nats.args());
        if let Some(store) = store {
            args.extend(["--store".into(), store.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        CollectorProcess::start(&args)
    }

    /// Waits until the partitions are all owned, spread over `first` and
    /// the fleet's nodes.
    pub fn wait_spread(&self, first: &CollectorProcess) {
        let all: Vec<&CollectorProcess> = std::iter::once(first).chain(&self.nodes).collect();
        crate::wait_for(
            "every partition owned",
            self.shape.lease * 4 + Duration::from_secs(10),
            || {
                let owned: Vec<f64> = all.iter().map(|n| owned(n)).collect();
                let total: f64 = owned.iter().sum();
                (total == f64::from(self.shape.partitions) && owned.iter().all(|&o| o > 0.0))
                    .then_some(())
            },
        );
    }
}

/// The partitions node `n` judges now, by its /metrics (0 while it cannot
/// say).
pub fn owned(n: &CollectorProcess) -> f64 {
    let Some(addr) = n.metrics_addr() else {
        return 0.0;
    };
    let Ok(text) = tcpstall_prom::read::scrape(addr, Duration::from_secs(2)) else {
        return 0.0;
    };
    tcpstall_prom::read::series(&text)
        .get("tcpstall_collector_partitions_owned")
        .copied()
        .unwrap_or(0.0)
}
