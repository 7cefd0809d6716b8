//! Addresses a host gains or loses after its agent started (issue 23,
//! part 4): the client's host gets a second address once every agent has
//! said hello, and speaks from it (its route's source). Its agent hears of
//! the change from the kernel and announces it, so the collector joins the
//! server's stall with the client — not `peer_unmonitored`, which is what
//! an address known only from the Hello gave. Taken away during the stall,
//! the address is nobody's (`peer_unmonitored`, naming it); given back,
//! the open episode is joined again.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant, SystemTime};

use tcpstall_tests::lab::net::IFACE;
use tcpstall_tests::lab::workload::{Pace, Rpc};
use tcpstall_tests::lab::{Lab, Settings};
use tcpstall_tests::{require_root, run, wait_for};

use crate::{expect_one, record, scenario, RESPONSE};

const HOSTS: &[&str] = &["client", "server"];

/// Another address of the client's /24 (the lab numbers hosts from 1).
fn second_address(lab: &Lab) -> Ipv4Addr {
    let [a, b, c, _] = lab.host("client").addr.octets();
    Ipv4Addr::new(a, b, c, 101)
}

/// Gives the client `ip` and makes it the source of the client's
/// connections into the lab's /24.
fn client_gains(lab: &Lab, ip: Ipv4Addr) {
    let ns = &lab.host("client").ns.name;
    run(
        "ip",
        &["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", IFACE],
    );
    let [a, b, c, _] = ip.octets();
    run(
        "ip",
        &[
            "-n",
            ns,
            "route",
            "replace",
            &format!("{a}.{b}.{c}.0/24"),
            "dev",
            IFACE,
            "src",
            &ip.to_string(),
        ],
    );
}

/// Takes `ip` from the client (with it goes the route it was the source
/// of).
fn client_loses(lab: &Lab, ip: Ipv4Addr) {
    let ns = &lab.host("client").ns.name;
    run(
        "ip",
        &["-n", ns, "addr", "del", &format!("{ip}/24"), "dev", IFACE],
    );
}

/// Address announcements the collector applied so far.
fn applied(lab: &Lab) -> f64 {
    lab.metrics()
        .get("tcpstall_collector_address_updates_total")
        .copied()
        .unwrap_or(0.0)
}

/// Waits until the collector has applied more than `before`
/// announcements; how long that took.
fn learned(lab: &Lab, before: f64, what: &str) -> Duration {
    let at = Instant::now();
    wait_for(what, Duration::from_secs(10), || {
        (applied(lab) > before).then_some(())
    });
    at.elapsed()
}

fn an_address_gained_after_start_is_joined(s: Settings) {
    let lab = Lab::start(HOSTS, s);
    let gained = second_address(&lab);
    let before = applied(&lab);
    client_gains(&lab, gained);
    let took = learned(
        &lab,
        before,
        "the collector to learn the client's new address",
    );

    let mut rpc = Rpc::open(lab.host("client"), lab.host("server"));
    assert_eq!(
        rpc.client_addr.ip(),
        IpAddr::V4(gained),
        "the client speaks from its new address"
    );
    let len = rpc.request(RESPONSE);
    let reader = rpc.read(Pace::Paused);
    let fault = SystemTime::now();
    let _writer = rpc.respond(len);
    let (e, _, detected) = expect_one(&lab, &rpc, "peer_not_reading", fault);
    assert_eq!(e.peer_note, "", "B joined, nothing missing: {e:#?}");
    assert_eq!(reader.got(), 0);
    record(
        &scenario("client's address added after its agent started", s),
        "peer_not_reading",
        &e,
        detected,
        s,
        format!(
            "B = {} at {gained}; the collector had it {:.2}s after `ip addr add`",
            e.b_host,
            took.as_secs_f64()
        ),
    );
}

at_both_settings!(an_address_gained_after_start_is_joined:
    an_address_gained_after_its_agent_started_joins_the_peer,
    an_address_gained_after_its_agent_started_joins_the_peer_at_the_defaults);

#[test]
fn an_address_lost_and_regained_during_a_stall_moves_the_join() {
    require_root!();
    let s = Settings::FAST;
    let lab = Lab::start(HOSTS, s);
    let gained = second_address(&lab);
    let before = applied(&lab);
    client_gains(&lab, gained);
    learned(
        &lab,
        before,
        "the collector to learn the client's new address",
    );
    let mut rpc = Rpc::open(lab.host("client"), lab.host("server"));
    assert_eq!(rpc.client_addr.ip(), IpAddr::V4(gained));
    let len = rpc.request(RESPONSE);
    let _reader = rpc.read(Pace::Paused);
    let fault = SystemTime::now();
    let _writer = rpc.respond(len);
    expect_one(&lab, &rpc, "peer_not_reading", fault);

    // The address goes: no agent covers the server's peer any more.
    let before = applied(&lab);
    client_loses(&lab, gained);
    learned(&lab, before, "the collector to learn the address went");
    let (e, _) = lab.wait_for_diagnosis(
        rpc.server_addr,
        rpc.client_addr,
        "peer_unmonitored",
        SystemTime::now(),
        s.detection_bound(),
    );
    assert_eq!(e.peer_note, format!("no agent covers {gained}"), "{e:#?}");
    assert_eq!(e.b_host, "", "{e:#?}");

    // It comes back: the open episode is joined with the client again.
    let before = applied(&lab);
    client_gains(&lab, gained);
    learned(&lab, before, "the collector to learn the address is back");
    let (e, _) = lab.wait_for_diagnosis(
        rpc.server_addr,
        rpc.client_addr,
        "peer_not_reading",
        SystemTime::now(),
        s.detection_bound(),
    );
    assert_eq!(e.b_host, lab.host("client").name, "{e:#?}");
    assert_eq!(e.peer_note, "", "{e:#?}");
    let eps = lab.episodes();
    assert_eq!(eps.len(), 1, "one episode throughout: {eps:#?}");
    assert!(eps[0].open);
}
