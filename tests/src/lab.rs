//! The lab: real hosts as network namespaces ([`net`]), one real
//! `tcpstall-agent run` per host and one real `tcpstall-collector`, talking
//! real gRPC over loopback, an RPC-shaped workload ([`workload`]), and
//! faults put on the hosts with nftables and tc.
//!
//! The agents run in the test's own namespace and read their host with
//! `--netns`, so that they reach the collector on 127.0.0.1 while their
//! host has no address outside 198.18.0.0/15. Dropping a [`Lab`] stops the
//! agents, then the collector, then removes the namespaces, also when the
//! test panics.

pub mod fleet;
pub mod nat;
pub mod net;
pub mod workload;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use tcpstall_proto::convert;
use tcpstall_proto::v1::{self, query_client::QueryClient};

use crate::{wait_for, AgentProcess, CollectorProcess, TestNetns};
use net::{Host, Net};

/// How fast the lab's tools run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// The collector's `--threshold`.
    pub threshold: Duration,
    /// The agents' `--interval`.
    pub interval: Duration,
}

impl Settings {
    /// What most scenarios use, so the suite runs in seconds.
    pub const FAST: Settings = Settings {
        threshold: Duration::from_secs(3),
        interval: Duration::from_millis(500),
    };
    /// The tools' own defaults.
    pub const DEFAULTS: Settings = Settings {
        threshold: Duration::from_secs(10),
        interval: Duration::from_secs(2),
    };

    /// The contract's bound: a fault is detected within the threshold and
    /// two polls.
    pub fn detection_bound(&self) -> Duration {
        self.threshold + 2 * self.interval
    }
}

fn ms_text(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Hosts, their agents and a collector.
#[derive(Debug)]
pub struct Lab {
    // Fields drop in this order: agents, collector, the fleet, then the
    // namespaces.
    _agents: Vec<AgentProcess>,
    pub collector: CollectorProcess,
    /// In fleet mode: the other collector nodes, NATS and the store.
    pub fleet: Option<fleet::Fleet>,
    /// Namespaces some hosts' agents read beside their own (containers).
    _more: Vec<TestNetns>,
    pub net: Net,
    pub settings: Settings,
    rt: tokio::runtime::Runtime,
}

impl Lab {
    /// Builds the hosts, starts the collector and one agent per host, and
    /// waits until every agent has said hello.
    pub fn start(hosts: &[&str], settings: Settings) -> Lab {
        Lab::start_unmonitored(hosts, &[], settings)
    }

    /// As [`Lab::start`], but the hosts named in `unmonitored` run no
    /// agent.
    pub fn start_unmonitored(hosts: &[&str], unmonitored: &[&str], settings: Settings) -> Lab {
        Lab::start_full(Net::new(hosts), unmonitored, settings, &[], Vec::new())
    }

    /// As [`Lab::start`], with the collector a fleet of `shape.nodes`
    /// nodes on a NATS cluster: `collector` is the first node (the one
    /// queried), the others in `fleet`; the hosts' agents stream to the
    /// nodes in turn (host i to node i mod nodes), each given every node's
    /// URL, its own first.
    pub fn start_fleet(hosts: &[&str], settings: Settings, shape: fleet::Shape) -> Lab {
        Lab::start_fleet_on(Net::new(hosts), &[], settings, shape)
    }

    /// As [`Lab::start_fleet`], on hosts built beforehand (as
    /// [`Lab::start_on`]).
    pub fn start_fleet_on(
        net: Net,
        unmonitored: &[&str],
        settings: Settings,
        shape: fleet::Shape,
    ) -> Lab {
        let (collector, fleet) = fleet::Fleet::start(&shape, settings);
        Lab::start_with(
            net,
            unmonitored,
            settings,
            &[],
            Vec::new(),
            collector,
            Some(fleet),
        )
    }

    /// As [`Lab::start_unmonitored`], on hosts built beforehand (another
    /// shape, more addresses, rules: [`nat`]). The agent of a host with
    /// containers also reads theirs; with containers, the agents say hello
    /// in the hosts' order, each after the one before.
    pub fn start_on(net: Net, unmonitored: &[&str], settings: Settings) -> Lab {
        Lab::start_full(net, unmonitored, settings, &[], Vec::new())
    }

    /// As [`Lab::start`], every agent run through `wrapper` (see
    /// [`AgentProcess::start_wrapped`]): to take capabilities away.
    pub fn start_wrapped(hosts: &[&str], settings: Settings, wrapper: &[&str]) -> Lab {
        Lab::start_full(Net::new(hosts), &[], settings, wrapper, Vec::new())
    }

    /// As [`Lab::start`], the agent of each role `more` names also reading
    /// the namespace made for it (once the hosts have their addresses): a
    /// container's namespace, say. The agents say hello in the hosts'
    /// order, each after the one before.
    pub fn start_with_more_netns(
        hosts: &[&str],
        settings: Settings,
        more: impl FnOnce(&Net) -> Vec<(String, TestNetns)>,
    ) -> Lab {
        let net = Net::new(hosts);
        let more = more(&net);
        Lab::start_full(net, &[], settings, &[], more)
    }

    fn start_full(
        net: Net,
        unmonitored: &[&str],
        settings: Settings,
        wrapper: &[&str],
        more: Vec<(String, TestNetns)>,
    ) -> Lab {
        Lab::start_full_with(net, unmonitored, settings, wrapper, more, &[])
    }

    /// As [`Lab::start`], the collector given `extra` arguments besides
    /// the lab's (its web page, say).
    pub fn start_with_collector_args(hosts: &[&str], settings: Settings, extra: &[&str]) -> Lab {
        Lab::start_full_with(Net::new(hosts), &[], settings, &[], Vec::new(), extra)
    }

    fn start_full_with(
        net: Net,
        unmonitored: &[&str],
        settings: Settings,
        wrapper: &[&str],
        more: Vec<(String, TestNetns)>,
        extra: &[&str],
    ) -> Lab {
        let threshold = ms_text(settings.threshold);
        let mut args = vec![
            "--threshold",
            threshold.as_str(),
            "--metrics-listen",
            "127.0.0.1:0",
        ];
        args.extend(extra);
        let collector = CollectorProcess::start(&args);
        Lab::start_with(net, unmonitored, settings, wrapper, more, collector, None)
    }

    fn start_with(
        net: Net,
        unmonitored: &[&str],
        settings: Settings,
        wrapper: &[&str],
        more: Vec<(String, TestNetns)>,
        collector: CollectorProcess,
        fleet: Option<fleet::Fleet>,
    ) -> Lab {
        let mut urls = vec![collector.url()];
        if let Some(f) = &fleet {
            urls.extend(f.nodes.iter().map(CollectorProcess::url));
        }
        let interval = ms_text(settings.interval);
        let monitored: Vec<&Host> = net
            .hosts
            .iter()
            .filter(|h| {
                !unmonitored
                    .iter()
                    .any(|u| h.name.starts_with(&format!("{u}-")))
            })
            .collect();
        let agents = monitored
            .iter()
            .enumerate()
            .map(|(i, h)| {
                // The agents run outside their hosts: each is told which
                // namespace is its host's own (conntrack of its containers,
                // whether it forwards).
                let mut args = vec![
                    "--host",
                    h.name.as_str(),
                    "--netns",
                    h.ns.name.as_str(),
                    "--host-netns",
                    h.ns.name.as_str(),
                    "--interval",
                    interval.as_str(),
                    "--backoff-max",
                    "500ms",
                ];
                for (role, ns) in &more {
                    if h.name.starts_with(&format!("{role}-")) {
                        args.extend(["--netns", ns.name.as_str()]);
                    }
                }
                for c in net.containers.iter().filter(|c| c.on == h.name) {
                    args.extend(["--netns", c.host.ns.name.as_str()]);
                }
                // Its own node first, then the others: where it goes when
                // its node does.
                let own = i % urls.len();
                let url = &urls[own];
                let others: Vec<&String> = urls
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != own)
                    .map(|(_, u)| u)
                    .collect();
                let know_all = fleet.as_ref().is_some_and(|f| f.shape.agents_know_all);
                for u in others.iter().filter(|_| know_all) {
                    args.extend(["--collector", u.as_str()]);
                }
                let agent = AgentProcess::start_wrapped(wrapper, url, &args);
                // With namespaces beyond the hosts' own, the agents say
                // hello one after the other, in the hosts' order: which one
                // announced an address last is then known.
                if !more.is_empty() || !net.containers.is_empty() {
                    wait_for("the agent connected", Duration::from_secs(20), || {
                        std::iter::once(&collector)
                            .chain(fleet.iter().flat_map(|f| f.nodes.iter()))
                            .any(|c| c.logged(&["agent connected", &h.name]))
                            .then_some(())
                    });
                }
                agent
            })
            .collect();
        let names: Vec<String> = monitored.iter().map(|h| h.name.clone()).collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime for queries");
        let lab = Lab {
            _agents: agents,
            collector,
            fleet,
            _more: more.into_iter().map(|(_, ns)| ns).collect(),
            net,
            settings,
            rt,
        };
        wait_for("every agent connected", Duration::from_secs(20), || {
            names
                .iter()
                .all(|h| lab.nodes().any(|c| c.logged(&["agent connected", h])))
                .then_some(())
        });
        lab
    }

    /// Every collector process: the one queried, then the fleet's others.
    pub fn nodes(&self) -> impl Iterator<Item = &CollectorProcess> {
        std::iter::once(&self.collector).chain(self.fleet.iter().flat_map(|f| f.nodes.iter()))
    }

    pub fn host(&self, role: &str) -> &Host {
        self.net.host(role)
    }

    /// The collector's Prometheus figures now, by series (name and
    /// labels).
    pub fn metrics(&self) -> std::collections::HashMap<String, f64> {
        let addr = crate::wait_for(
            "the collector's metrics address",
            Duration::from_secs(10),
            || self.collector.metrics_addr(),
        );
        crate::series(&crate::scrape(addr))
    }

    /// Every episode the collector has, or none while it cannot be asked.
    pub fn episodes(&self) -> Vec<v1::Episode> {
        let url = self.collector.url();
        self.rt.block_on(async move {
            let Ok(mut q) = QueryClient::connect(url).await else {
                return Vec::new();
            };
            q.list_episodes(v1::ListEpisodesRequest::default())
                .await
                .map(|r| r.into_inner().episodes)
                .unwrap_or_default()
        })
    }

    /// One episode with its samples.
    pub fn episode(&self, id: i64) -> v1::GetEpisodeResponse {
        let url = self.collector.url();
        self.rt.block_on(async move {
            let mut q = QueryClient::connect(url)
                .await
                .expect("query the collector");
            q.get_episode(v1::GetEpisodeRequest { id })
                .await
                .expect("get the episode")
                .into_inner()
        })
    }

    /// What the operator's CLI says: `tcpstall --collector URL --json ARGS`.
    pub fn cli(&self, args: &[&str]) -> serde_json::Value {
        let out = std::process::Command::new(crate::binary("tcpstall"))
            .args(["--collector", &self.collector.url(), "--json"])
            .args(args)
            .env_remove("TCPSTALL_COLLECTOR")
            .output()
            .expect("run tcpstall");
        // `report` and `incidents` exit 5 when stuck pairs are open;
        // anything else is a failure.
        assert!(
            out.status.success() || out.status.code() == Some(5),
            "tcpstall {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("tcpstall prints one JSON document")
    }

    /// What the operator's CLI prints: `tcpstall --collector URL ARGS`.
    pub fn cli_text(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(crate::binary("tcpstall"))
            .args(["--collector", &self.collector.url()])
            .args(args)
            .env_remove("TCPSTALL_COLLECTOR")
            .env("NO_COLOR", "1")
            .output()
            .expect("run tcpstall");
        // `report` exits 5 when stuck pairs are open; anything else is a
        // failure.
        assert!(
            out.status.success() || out.status.code() == Some(5),
            "tcpstall {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until an episode of the stuck sender `local` -> `remote` has
    /// diagnosis `want`, polling the collector; returns it and how long
    /// after `fault` it was first seen so.
    pub fn wait_for_diagnosis(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
        want: &str,
        fault: SystemTime,
        within: Duration,
    ) -> (v1::Episode, Duration) {
        let mut last = Vec::new();
        let deadline = std::time::Instant::now() + within;
        loop {
            let eps = self.episodes();
            if let Some(e) = eps
                .iter()
                .find(|e| flow_of(e) == Some((local, remote)) && e.diagnosis == want)
            {
                let after = fault.elapsed().unwrap_or_default();
                return (e.clone(), after);
            }
            last = if eps.is_empty() { last } else { eps };
            assert!(
                std::time::Instant::now() < deadline,
                "no {want} episode for {local} -> {remote} within {within:?}; episodes: {last:#?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The stuck sender's (local, remote) of an episode.
pub fn flow_of(e: &v1::Episode) -> Option<(SocketAddr, SocketAddr)> {
    let f = convert::flow_from_wire(e.a_flow.as_ref()).ok()?;
    Some((f.local, f.remote))
}

/// One evidence number of an episode, panicking with all of them if it is
/// missing.
pub fn evidence(e: &v1::Episode, name: &str) -> i64 {
    *e.evidence
        .get(name)
        .unwrap_or_else(|| panic!("evidence {name} missing: {:?}", e.evidence))
}

/// What one scenario showed, for the docs' table: printed on stderr as one
/// `lab-result` line, and appended to the file named by
/// `TCPSTALL_LAB_RESULTS` when set.
#[derive(Debug)]
pub struct Outcome<'a> {
    pub scenario: &'a str,
    pub expected: &'a str,
    pub observed: &'a str,
    /// After the fault: when the collector opened the episode, and when
    /// the test first saw the right diagnosis.
    pub detected: Option<(Duration, Duration)>,
    pub settings: Settings,
    pub note: String,
}

impl Outcome<'_> {
    pub fn record(&self) {
        let line = format!(
            "lab-result\t{}\t{}\t{}\t{}\t{}/{}\t{}",
            self.scenario,
            self.expected,
            self.observed,
            self.detected.map_or_else(
                || "-".to_string(),
                |(o, s)| format!("{:.2}s/{:.2}s", o.as_secs_f64(), s.as_secs_f64())
            ),
            ms_text(self.settings.threshold),
            ms_text(self.settings.interval),
            self.note
        );
        eprintln!("{line}");
        if let Some(path) = std::env::var_os("TCPSTALL_LAB_RESULTS") {
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(f, "{line}");
            }
        }
    }
}
