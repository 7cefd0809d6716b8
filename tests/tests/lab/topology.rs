//! The harness itself: more than two hosts through a bridge namespace,
//! the collector joining the right peer among them, and namespaces that
//! go away when a test panics.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::SystemTime;

use tcpstall_tests::lab::net::Net;
use tcpstall_tests::lab::workload::{Pace, Rpc};
use tcpstall_tests::lab::{evidence, Lab, Settings};
use tcpstall_tests::{require_root, run, TestNetns};

use crate::{expect_one, record, RESPONSE};

fn in_lab_range(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[0] == 198 && (o[1] == 18 || o[1] == 19)
}

fn three_hosts_through_a_bridge_and_the_right_peer_is_joined(s: Settings) {
    let lab = Lab::start(&["client", "server", "other"], s);
    assert!(lab.net.bridge.is_some(), "three hosts meet on a bridge");
    let (client, server, other) = (lab.host("client"), lab.host("server"), lab.host("other"));
    for h in &lab.net.hosts {
        assert!(in_lab_range(h.addr), "{} has {}", h.name, h.addr);
    }

    // The other host downloads from the server at full speed throughout.
    let mut healthy = Rpc::open(other, server);
    let n = healthy.request(u64::MAX);
    let healthy_reader = healthy.read(Pace::Full);
    let _healthy_writer = healthy.respond(n);

    // The client's ACKs die at the server.
    let mut rpc = Rpc::open(client, server);
    let len = rpc.request(RESPONSE);
    let reader = rpc.read(Pace::Full);
    server.nft_rule(
        "input",
        &format!(
            "ip saddr {} tcp sport {}",
            client.addr,
            rpc.client_addr.port()
        ),
        "acks",
    );
    let fault = SystemTime::now();
    let _writer = rpc.respond(len);

    // One episode (the healthy transfer is none), joined with the client,
    // not the other host.
    let before = healthy_reader.got();
    let (e, _, detected) = expect_one(&lab, &rpc, "ack_lost", fault);
    assert_eq!(
        u64::try_from(evidence(&e, "acked_not_seen")).ok(),
        Some(reader.got())
    );
    assert!(
        healthy_reader.got() > before,
        "the other host's transfer kept going through the bridge"
    );
    record(
        &crate::scenario(
            "three hosts on a bridge: client's ACKs dropped, another host downloading",
            s,
        ),
        "ack_lost",
        &e,
        detected,
        s,
        format!(
            "B = {}; the other host read {} MB meanwhile, no episode",
            e.b_host,
            healthy_reader.got() / 1_000_000
        ),
    );
}

at_both_settings!(three_hosts_through_a_bridge_and_the_right_peer_is_joined:
    three_hosts_through_a_bridge_and_the_right_peer_is_joined_fast,
    three_hosts_through_a_bridge_and_the_right_peer_is_joined_at_the_defaults);

#[test]
fn namespaces_are_removed_when_a_test_panics() {
    require_root!();
    let mut names = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let net = Net::new(&["a", "b", "c"]);
        names.extend(net.hosts.iter().map(|h| h.ns.path()));
        names.extend(net.bridge.as_ref().map(|b| b.path()));
        panic!("a test fails with its hosts up");
    }));
    assert!(result.is_err());
    assert_eq!(names.len(), 4, "three hosts and the bridge");
    for path in &names {
        assert!(!Path::new(path).exists(), "{} left behind", path.display());
    }
}

/// The client's address as two hosts announce it: the client, and the
/// other host, whose agent also reads a container namespace holding the
/// same address (as every Docker host holds 172.17.0.1, and container
/// networks repeat across hosts). The client stops reading: the collector
/// asks both hosts for B's end, the client has the socket, so B is the
/// client — not a half-open blamed on the other host, although the other
/// host's agent said hello last (when the last to announce an address
/// owned it, this was the other host's half-open).
fn an_address_two_hosts_announce_joins_the_host_with_the_socket(s: Settings) {
    let lab = Lab::start_with_more_netns(&["client", "server", "other"], s, |net| {
        let ctr = TestNetns::new("lab");
        let addr = format!("{}/32", net.host("client").addr);
        for args in [
            // (this kernel has no dummy interfaces: a veth pair inside it)
            vec![
                "-n",
                ctr.name.as_str(),
                "link",
                "add",
                "c0",
                "type",
                "veth",
                "peer",
                "name",
                "c1",
            ],
            vec![
                "-n",
                ctr.name.as_str(),
                "addr",
                "add",
                addr.as_str(),
                "dev",
                "c0",
            ],
            vec!["-n", ctr.name.as_str(), "link", "set", "c0", "up"],
        ] {
            run("ip", &args);
        }
        vec![("other".to_string(), ctr)]
    });
    let mut rpc = Rpc::open(lab.host("client"), lab.host("server"));
    let len = rpc.request(RESPONSE);
    let reader = rpc.read(Pace::Paused);
    let fault = SystemTime::now();
    let _writer = rpc.respond(len);
    let (e, _, _) = expect_one(&lab, &rpc, "peer_not_reading", fault);
    assert_eq!(e.peer_note, "", "B joined, nothing missing: {e:#?}");
    assert_eq!(reader.got(), 0);
}

#[test]
fn an_address_two_hosts_announce_is_joined_with_the_one_holding_the_socket() {
    require_root!();
    an_address_two_hosts_announce_joins_the_host_with_the_socket(Settings::FAST);
}
