//! Fleet mode (issue 24): the lab's hosts stream to several collector
//! nodes on a real NATS cluster (three servers, JetStream replicas 3) that
//! share a real PostgreSQL. A stall whose two ends report to different
//! nodes is joined and diagnosed as a single collector does; the node that
//! judges it, a NATS server and PostgreSQL may each go mid-episode without
//! the episode being lost, doubled or left open.

use std::time::{Duration, Instant, SystemTime};

use tcpstall_proto::v1;
use tcpstall_tests::lab::fleet::Shape;
use tcpstall_tests::lab::workload::{Pace, Reader, Rpc};
use tcpstall_tests::lab::{evidence, Lab, Settings};
use tcpstall_tests::{require_nats, require_root, wait_for, CollectorProcess};

use crate::{expect_one, RESPONSE};

const HOSTS: &[&str] = &["client", "server"];

/// The client's agent streams to node 0, the server's to node 1 (unless
/// the agents know every node: then where each starts is theirs to pick).
fn fleet(settings: Settings, shape: Shape) -> Lab {
    let pinned = !shape.agents_know_all;
    let lab = Lab::start_fleet(HOSTS, settings, shape);
    let nodes: Vec<&CollectorProcess> = lab.nodes().collect();
    let (client, server) = (&lab.host("client").name, &lab.host("server").name);
    if pinned {
        assert!(
            nodes[0].logged(&["agent connected", client]),
            "client on node 0"
        );
        assert!(
            nodes[1].logged(&["agent connected", server]),
            "server on node 1"
        );
    }
    lab
}

/// A client that asked and stopped reading, its server answering.
fn stalled(lab: &Lab) -> (Rpc, Reader, SystemTime) {
    let mut rpc = Rpc::open(lab.host("client"), lab.host("server"));
    let len = rpc.request(RESPONSE);
    let reader = rpc.read(Pace::Paused);
    let fault = SystemTime::now();
    let writer = rpc.respond(len);
    std::mem::forget(writer);
    (rpc, reader, fault)
}

/// Every figure of series `name` over the live nodes.
fn each_node(lab: &Lab, name: &str) -> Vec<f64> {
    lab.nodes()
        .filter_map(|n| n.metrics_addr())
        .filter_map(|a| tcpstall_prom::read::scrape(a, Duration::from_secs(5)).ok())
        .map(|t| tcpstall_tests::series(&t).get(name).copied().unwrap_or(0.0))
        .collect()
}

fn peer_not_reading_across_nodes(s: Settings) {
    require_nats!();
    let lab = fleet(s, Shape::three());
    let (rpc, reader, fault) = stalled(&lab);
    let (e, _, _) = expect_one(&lab, &rpc, "peer_not_reading", fault);
    assert_eq!(
        evidence(&e, "b_rcv_wnd"),
        0,
        "B's zero window, from B's node"
    );
    assert_eq!(evidence(&e, "a_snd_wnd"), 0, "A sees it");
    assert_eq!(reader.got(), 0);
    // Any node answers from the shared store: the third, which holds
    // neither agent, says the same.
    let third = &lab.fleet.as_ref().expect("a fleet").nodes[1];
    let out = std::process::Command::new(tcpstall_tests::binary("tcpstall"))
        .args(["--collector", &third.url(), "--json", "episodes"])
        .env_remove("TCPSTALL_COLLECTOR")
        .output()
        .expect("run tcpstall");
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed:#}");
    assert_eq!(listed[0]["id"].as_i64(), Some(e.id), "{listed:#}");
    assert_eq!(listed[0]["diagnosis"], "peer_not_reading", "{listed:#}");
    assert_eq!(
        listed[0]["peer"]["b"]["host"],
        lab.host("client").name.as_str(),
        "{listed:#}"
    );
    // Nothing lost on the way.
    assert!(
        each_node(&lab, "tcpstall_collector_batch_parts_failed_total")
            .iter()
            .all(|&n| n == 0.0)
    );
}

at_both_settings!(peer_not_reading_across_nodes:
    a_stall_whose_ends_report_to_different_nodes_is_peer_not_reading,
    a_stall_whose_ends_report_to_different_nodes_is_peer_not_reading_at_the_defaults);

#[test]
fn acks_lost_between_ends_on_different_nodes_is_ack_lost() {
    require_root!();
    require_nats!();
    let lab = fleet(Settings::FAST, Shape::three());
    let (client, server) = (lab.host("client"), lab.host("server"));
    let mut rpc = Rpc::open(client, server);
    let len = rpc.request(RESPONSE);
    let reader = rpc.read(Pace::Full);
    server.nft_rule(
        "input",
        &format!(
            "ip saddr {} tcp sport {} tcp dport {}",
            client.addr,
            rpc.client_addr.port(),
            rpc.server_addr.port()
        ),
        "acks",
    );
    let fault = SystemTime::now();
    let _writer = rpc.respond(len);
    let (e, _, _) = expect_one(&lab, &rpc, "ack_lost", fault);
    let received = reader.got();
    assert!(received > 0);
    assert_eq!(evidence(&e, "a_snd_una"), 0, "no ACK reached the server");
    assert_eq!(
        u64::try_from(evidence(&e, "acked_not_seen")).ok(),
        Some(received),
        "B.rcv_nxt (from the client's node) - A.snd_una (from the server's) is what the client read"
    );
    assert!(server.nft_packets("acks") > 0);
}

/// The episodes now (any live node answers), checked to be one.
fn the_one(lab: &Lab) -> v1::Episode {
    let eps = lab.episodes();
    assert_eq!(eps.len(), 1, "exactly one episode: {eps:#?}");
    eps.into_iter().next().expect("one")
}

/// Which node logged opening episode `id` (the node judging its flow;
/// again after a takeover, as it replays).
fn judging(lab: &Lab, id: i64) -> Vec<usize> {
    let opened = format!("episode={id}");
    lab.nodes()
        .enumerate()
        .filter(|(_, n)| n.logged(&["episode opened", &opened]))
        .map(|(i, _)| i)
        .collect()
}

/// kill -9 of node `i` (0: the lab's `collector`, the queried one: another
/// node is queried from then on).
fn kill_node(lab: &mut Lab, i: usize) {
    let fleet = lab.fleet.as_mut().expect("a fleet");
    if i == 0 {
        std::mem::swap(&mut lab.collector, &mut fleet.nodes[0]);
        fleet.nodes[0].kill();
    } else {
        fleet.nodes[i - 1].kill();
    }
}

#[test]
fn kill_9_of_the_node_judging_a_stall_hands_it_over_stored_once_and_ended() {
    require_root!();
    require_nats!();
    let shape = Shape {
        agents_know_all: true,
        ..Shape::three()
    };
    let lease = shape.lease;
    let mut lab = fleet(Settings::FAST, shape);
    let (rpc, reader, fault) = stalled(&lab);
    let (e, _, _) = expect_one(&lab, &rpc, "peer_not_reading", fault);
    let owner = judging(&lab, e.id);
    assert_eq!(owner.len(), 1, "one node judges it: {owner:?}");
    let owner = owner[0];
    let was: Vec<String> = lab.nodes().map(CollectorProcess::url).collect();
    kill_node(&mut lab, owner);
    let killed = Instant::now();
    // Another node takes the partition and rebuilds the stall from the
    // stream: it opens the same episode (same id) again.
    let opened = format!("episode={}", e.id);
    let taker = wait_for("another node judging the stall", lease * 3, || {
        lab.nodes()
            .find(|n| n.url() != was[owner] && n.logged(&["episode opened", &opened]))
            .map(CollectorProcess::url)
    });
    let took = killed.elapsed();
    eprintln!("fleet: the stall judged again after {took:?} (lease {lease:?}), by {taker}");
    assert!(
        took <= lease + lease / 3 + Duration::from_secs(2),
        "taken over after {took:?}"
    );
    // The taker holds it open (replayed, the stall is undetermined in its
    // memory until the peer's next report: the store keeps the verdict it
    // had) and has not counted it as opened again.
    let taker_node = lab.nodes().find(|n| n.url() == taker).expect("the taker");
    let addr = taker_node.metrics_addr().expect("metrics");
    let figures = wait_for(
        "the taker holding it open as peer_not_reading",
        lease * 2,
        || {
            let figures = tcpstall_tests::series(&tcpstall_tests::scrape(addr));
            (figures.get("tcpstall_collector_episodes_open{diagnosis=\"peer_not_reading\"}")
                == Some(&1.0))
            .then_some(figures)
        },
    );
    let opened: f64 = figures
        .iter()
        .filter(|(k, _)| k.starts_with("tcpstall_collector_episodes_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(
        opened, 0.0,
        "a replayed opening is not counted again: {figures:?}"
    );
    // Two polls on: still one episode, the same, open, the same verdict.
    let until = Instant::now() + 2 * lab.settings.interval;
    while Instant::now() < until {
        let now = the_one(&lab);
        assert_eq!(now.id, e.id);
        assert!(now.open);
        assert_eq!(now.diagnosis, "peer_not_reading");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The client reads again: the episode ends, once.
    reader.resume();
    let ended = wait_for("the episode ended", Duration::from_secs(15), || {
        let now = the_one(&lab);
        (!now.open).then_some(now)
    });
    assert_eq!(ended.id, e.id);
    assert!(!ended.end_reason.is_empty(), "{ended:#?}");
    assert_eq!(ended.b_host, lab.host("client").name);
    eprintln!("fleet: ended {} after the takeover", ended.end_reason);
}

#[test]
fn kill_9_of_the_nats_server_leading_the_samples_stream_loses_nothing() {
    require_root!();
    require_nats!();
    outage_mid_episode(true, false);
}

#[test]
fn a_postgresql_restart_mid_episode_loses_nothing() {
    require_root!();
    require_nats!();
    outage_mid_episode(false, true);
}

/// A stall followed through a NATS server's death (`nats`) or
/// PostgreSQL's restart (`pg`): one episode, growing, ended once, nothing
/// lost or dropped.
fn outage_mid_episode(nats: bool, pg: bool) {
    // The default lease: longer than JetStream takes to elect new leaders
    // for the dead server's streams (4-7 s here), so no partition changes
    // hands.
    let shape = Shape {
        lease: Duration::from_secs(10),
        ..Shape::three()
    };
    let mut lab = fleet(Settings::FAST, shape);
    let (rpc, reader, fault) = stalled(&lab);
    let (e, _, _) = expect_one(&lab, &rpc, "peer_not_reading", fault);
    let killed = Instant::now();
    if nats {
        // The server leading the samples stream: its partitions' messages
        // wait for a new leader.
        let fleet = lab.fleet.as_mut().expect("a fleet");
        let leader = fleet
            .nats
            .stream_leader("TCPSTALL_SAMPLES")
            .expect("the samples stream has a leader");
        fleet.nats.kill(leader);
        eprintln!("fleet: NATS server {leader} (the samples stream's leader) killed");
    }
    if pg {
        // PostgreSQL restarted under the nodes' writes.
        lab.fleet
            .as_mut()
            .and_then(|f| f.pg.as_mut())
            .expect("PostgreSQL")
            .restart();
    }
    // The stall goes on being followed through the outage: the same one
    // episode, open, growing by what the server's node publishes after.
    let grown = wait_for(
        "the episode followed past the kill",
        Duration::from_secs(20),
        || {
            let now = the_one(&lab);
            assert_eq!((now.id, now.open), (e.id, true), "{now:#?}");
            (now.duration_ms > e.duration_ms + 8_000).then_some(now.duration_ms)
        },
    );
    eprintln!(
        "fleet: episode at {grown} ms {:?} after the outage began",
        killed.elapsed()
    );
    reader.resume();
    // Not `wait_for`: when it does not end, what the nodes said says why
    // (this wait timed out once, under the load of the other fleet tests).
    let deadline = Instant::now() + Duration::from_secs(20);
    let ended = loop {
        let eps = lab.episodes();
        if eps.len() == 1 && !eps[0].open {
            break eps[0].clone();
        }
        if Instant::now() >= deadline {
            panic!(
                "the episode did not end within 20 s of the reader resuming; episodes: \
                 {eps:#?}\nthe nodes said:\n{}",
                nodes_said(&lab)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(ended.id, e.id);
    assert!(
        ended.duration_ms > e.duration_ms,
        "its length counts the time through the outages: {ended:#?}"
    );
    for (name, what) in [
        (
            "tcpstall_collector_batch_parts_failed_total",
            "batch parts lost",
        ),
        (
            "tcpstall_collector_store_writes_dropped_total",
            "store writes dropped",
        ),
    ] {
        let each = each_node(&lab, name);
        assert!(each.iter().all(|&n| n == 0.0), "{what}: {each:?}");
    }
    let samples = lab.episode(e.id).samples.len();
    assert!(samples >= 3, "its samples stored: {samples}");
}

/// How a node goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Going {
    Killed,
    /// SIGTERM: a rolling restart.
    Stopped,
}

#[test]
fn kill_9_of_the_node_a_stuck_end_streams_to_moves_its_agent_and_the_episode_goes_on() {
    require_root!();
    require_nats!();
    the_node_a_stuck_end_streams_to_goes(Going::Killed);
}

#[test]
fn sigterm_of_the_node_a_stuck_end_streams_to_moves_its_agent_and_the_episode_goes_on() {
    require_root!();
    require_nats!();
    the_node_a_stuck_end_streams_to_goes(Going::Stopped);
}

fn the_node_a_stuck_end_streams_to_goes(going: Going) {
    let shape = Shape {
        agents_know_all: true,
        ..Shape::three()
    };
    let mut lab = fleet(Settings::FAST, shape);
    let (rpc, _reader, fault) = stalled(&lab);
    let (e, _, _) = expect_one(&lab, &rpc, "peer_not_reading", fault);
    // The node the server's agent (the stuck end's) streams to.
    let server = lab.host("server").name.clone();
    let at = lab
        .nodes()
        .position(|n| n.logged(&["agent connected", &server]))
        .expect("the server's agent on a node");
    let gone = lab
        .nodes()
        .nth(at)
        .map(CollectorProcess::url)
        .expect("node");
    match going {
        Going::Killed => kill_node(&mut lab, at),
        Going::Stopped => {
            // The queried node stopping: query another from now on.
            let fleet = lab.fleet.as_mut().expect("a fleet");
            let node = if at == 0 {
                std::mem::swap(&mut lab.collector, &mut fleet.nodes[0]);
                &fleet.nodes[0]
            } else {
                &fleet.nodes[at - 1]
            };
            let pid = nix::unistd::Pid::from_raw(i32::try_from(node.child.id()).expect("pid"));
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        }
    }
    let killed = Instant::now();
    let moved = wait_for(
        "the server's agent on another node",
        Duration::from_secs(10),
        || {
            lab.nodes()
                .find(|n| n.url() != gone && n.logged(&["agent connected", &server]))
                .map(CollectorProcess::url)
        },
    );
    let took = killed.elapsed();
    eprintln!("fleet: ({going:?}) the stuck end's agent moved to {moved} after {took:?}");
    // The lab's agents back off at most 500 ms; a kill is seen at once.
    assert!(took <= Duration::from_secs(3), "moved after {took:?}");
    // The same episode goes on: its host did not go (a new session of the
    // same host), B still joined, the stall still growing.
    let grown = wait_for(
        "the episode followed on the new node",
        Duration::from_secs(15),
        || {
            let now = the_one(&lab);
            assert_eq!((now.id, now.open), (e.id, true), "{now:#?}");
            assert_eq!(now.b_host, lab.host("client").name);
            (now.duration_ms > e.duration_ms + 4_000).then_some(now.duration_ms)
        },
    );
    eprintln!("fleet: the episode at {grown} ms, one and open");
    for name in [
        "tcpstall_collector_batch_parts_failed_total",
        "tcpstall_collector_batch_parts_unknown_host_dropped_total",
    ] {
        let each = each_node(&lab, name);
        assert!(each.iter().all(|&n| n == 0.0), "{name}: {each:?}");
    }
}

/// Each node's warnings and its partitions' and episodes' lines, the last
/// 40 of each: what a failed wait prints.
fn nodes_said(lab: &Lab) -> String {
    let fleet_nodes = lab
        .fleet
        .as_ref()
        .map(|f| f.nodes.iter())
        .into_iter()
        .flatten();
    let mut out = String::new();
    for (i, node) in std::iter::once(&lab.collector)
        .chain(fleet_nodes)
        .enumerate()
    {
        let lines = node.log.lock().map(|l| l.clone()).unwrap_or_default();
        let said: Vec<&String> = lines
            .iter()
            .filter(|l| {
                ["WARN", "ERROR", "partition", "episode"]
                    .iter()
                    .any(|w| l.contains(w))
            })
            .collect();
        out += &format!("-- node {i}\n");
        for l in &said[said.len().saturating_sub(40)..] {
            out += l;
            out.push('\n');
        }
        // What it published, read and judged (the next failure says where
        // the samples stopped).
        let counters = node
            .metrics_addr()
            .and_then(|a| tcpstall_prom::read::scrape(a, Duration::from_secs(2)).ok())
            .map(|t| tcpstall_tests::series(&t))
            .unwrap_or_default();
        let mut counters: Vec<_> = counters
            .into_iter()
            .filter(|(k, _)| {
                [
                    "batch_parts",
                    "bundles",
                    "partition",
                    "lease",
                    "nats",
                    "store_writes",
                ]
                .iter()
                .any(|w| k.contains(w))
            })
            .collect();
        counters.sort_by(|a, b| a.0.cmp(&b.0));
        for (k, v) in counters {
            out += &format!("   {k} {v}\n");
        }
    }
    out
}
