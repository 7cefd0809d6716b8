//! Fleet mode's nodes among themselves (issue 24): real `tcpstall-collector`
//! processes on a real NATS cluster with JetStream. Partitions spread over
//! the nodes within one of even; a node that joins takes its share; a node
//! killed with -9 has its partitions taken within the lease; a host name
//! held through one node is refused to another machine through another.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tcpstall_tests::lab::fleet::{owned, Fleet, Shape};
use tcpstall_tests::lab::Settings;
use tcpstall_tests::{require_nats, series, wait_for, AgentProcess, CollectorProcess};

/// The nodes' partitions now, as each says.
fn spread(nodes: &[&CollectorProcess]) -> Vec<u32> {
    nodes.iter().map(|n| owned(n) as u32).collect()
}

/// Whether `counts` is every partition exactly once, each node within one
/// of an even share.
fn even(counts: &[u32], partitions: u32) -> bool {
    let n = counts.len() as u32;
    counts.iter().sum::<u32>() == partitions
        && counts
            .iter()
            .all(|&c| c >= partitions / n && c <= partitions.div_ceil(n))
}

#[test]
fn partitions_spread_evenly_a_joining_node_takes_its_share_and_a_dead_ones_are_taken_within_the_lease(
) {
    require_nats!();
    let shape = Shape {
        partitions: 12,
        postgres: false,
        ..Shape::three()
    };
    let (first, mut fleet) = Fleet::start(&shape, Settings::FAST);
    let p = shape.partitions;
    let waited = shape.lease * 3;
    {
        let nodes: Vec<&CollectorProcess> = std::iter::once(&first).chain(&fleet.nodes).collect();
        wait_for("12 partitions, 4 a node", waited, || {
            even(&spread(&nodes), p).then_some(())
        });
    }
    // A fourth node: 3 each, the newcomer included.
    let joined = Instant::now();
    fleet.nodes.push(fleet.node(3));
    {
        let nodes: Vec<&CollectorProcess> = std::iter::once(&first).chain(&fleet.nodes).collect();
        wait_for("the new node's share", waited, || {
            let s = spread(&nodes);
            (even(&s, p) && s[3] == 3).then_some(())
        });
    }
    eprintln!(
        "fleet: a joining node had its share after {:?}",
        joined.elapsed()
    );
    // kill -9 of one: its 3 are taken by the other three within the lease
    // (and a round, a third of it, for the others to see it gone).
    fleet.nodes[0].kill();
    let killed = Instant::now();
    let live: Vec<&CollectorProcess> = std::iter::once(&first).chain(&fleet.nodes[1..]).collect();
    wait_for("the dead node's partitions taken", waited, || {
        even(&spread(&live), p).then_some(())
    });
    let took = killed.elapsed();
    eprintln!(
        "fleet: a dead node's partitions were taken after {took:?} (lease {:?})",
        shape.lease
    );
    assert!(
        took <= shape.lease + shape.lease / 3 + Duration::from_secs(2),
        "taken after {took:?}, lease {:?}",
        shape.lease
    );
}

const MACHINE_A: &str = "aaaa0000aaaa0000aaaa0000aaaa0000";
const MACHINE_B: &str = "bbbb1111bbbb1111bbbb1111bbbb1111";

fn figures(n: &CollectorProcess) -> HashMap<String, f64> {
    let addr: SocketAddr = wait_for(
        "the node's metrics address",
        Duration::from_secs(10),
        || n.metrics_addr(),
    );
    series(&tcpstall_tests::scrape(addr))
}

#[test]
fn a_host_name_held_through_one_node_is_refused_to_another_machine_through_another() {
    require_nats!();
    let shape = Shape {
        nodes: 2,
        postgres: false,
        ..Shape::three()
    };
    let (first, fleet) = Fleet::start(&shape, Settings::FAST);
    let second = &fleet.nodes[0];
    let host = format!("fleet-dup-{}", std::process::id());
    let args = |machine: &str| {
        vec![
            "--host".to_string(),
            host.clone(),
            "--machine-id".into(),
            machine.into(),
            "--interval".into(),
            "300ms".into(),
            "--backoff-max".into(),
            "500ms".into(),
        ]
    };
    let a = args(MACHINE_A);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let _a = AgentProcess::start(&first.url(), &a);
    wait_for(
        "machine A's agent on the first node",
        Duration::from_secs(15),
        || {
            first
                .logged(&["agent connected", &host, MACHINE_A])
                .then_some(())
        },
    );
    // The second node knows the name is held once the fleet's registry
    // says so.
    wait_for("the fleet sees the host", Duration::from_secs(15), || {
        (figures(second).get("tcpstall_collector_fleet_hosts") == Some(&1.0)).then_some(())
    });
    let b = args(MACHINE_B);
    let b: Vec<&str> = b.iter().map(String::as_str).collect();
    let agent_b = AgentProcess::start(&second.url(), &b);
    wait_for(
        "machine B refused, both named",
        Duration::from_secs(15),
        || agent_b.logged(&[MACHINE_A, MACHINE_B, &host]).then_some(()),
    );
    assert!(
        second.logged(&["agent refused", MACHINE_A, MACHINE_B]),
        "the second node says why"
    );
    assert!(
        !second.logged(&["agent connected", &host]),
        "machine B never connected"
    );
    let f = figures(second);
    assert!(
        f.get("tcpstall_collector_hellos_refused_total{reason=\"name_taken\"}")
            .is_some_and(|&n| n >= 1.0),
        "counted: {f:?}"
    );
    // The holder is untouched: still the only one the fleet knows.
    assert!(first.logged(&["agent connected", &host, MACHINE_A]));
    assert!(!first.logged(&["agent gone", &host]));
}

/// The nodes bucket gone (its stream deleted) while the leases bucket
/// stays: who is alive cannot be read, but whose a partition is, its lease
/// says. Every node renews what it holds and judges on; nothing is handed
/// over, nothing stopped. (After a NATS server died, a node once stopped
/// its partitions for want of the nodes bucket, and could not start them
/// again for tens of seconds: an episode waited that long to end.)
#[test]
fn a_nodes_bucket_out_of_reach_stops_no_partition() {
    require_nats!();
    let shape = Shape {
        nodes: 2,
        nats_servers: 1,
        partitions: 4,
        postgres: false,
        ..Shape::three()
    };
    let (first, fleet) = Fleet::start(&shape, Settings::FAST);
    let nodes: Vec<&CollectorProcess> = std::iter::once(&first).chain(&fleet.nodes).collect();
    wait_for("4 partitions, 2 a node", shape.lease * 3, || {
        even(&spread(&nodes), shape.partitions).then_some(())
    });
    let url = fleet.nats.urls().remove(0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let answer = rt.block_on(async {
        let client = async_nats::connect(url).await.expect("connect to NATS");
        client
            .request("$JS.API.STREAM.DELETE.KV_tcpstall_nodes", "".into())
            .await
            .expect("JetStream answers")
    });
    let answer = String::from_utf8_lossy(&answer.payload).into_owned();
    assert!(answer.contains("\"success\":true"), "{answer}");
    // Four rounds without the bucket: past the fence (most of a lease)
    // that stops a partition whose lease went unrenewed.
    wait_for(
        "four rounds without the nodes bucket",
        shape.lease * 4,
        || {
            nodes
                .iter()
                .all(|n| n.logged(&["cannot reach the nodes bucket", "rounds=4"]))
                .then_some(())
        },
    );
    assert_eq!(
        spread(&nodes).iter().sum::<u32>(),
        shape.partitions,
        "every partition still judged: {:?}",
        spread(&nodes)
    );
    for n in &nodes {
        assert!(
            !n.logged(&["lease not renewed in time"]),
            "a partition was stopped"
        );
        assert_eq!(
            figures(n).get("tcpstall_collector_partitions_lost_total"),
            Some(&0.0)
        );
    }
}
