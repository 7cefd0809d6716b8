//! An address two hosts hold, one of them in a container namespace its
//! agent reads (issue 23): every Docker host holds 172.17.0.1, container
//! and pod networks repeat across hosts. Nothing is translated; the
//! collector must ask every holder and join the one with the socket,
//! whichever agent said hello last (the hosts' order in the lab is the
//! order of their hellos). topology.rs has the first of these: the client's
//! address also in another host's container, that host last to say hello,
//! the client stalled.

use std::net::{IpAddr, SocketAddr};

use tcpstall_tests::lab::net::Net;
use tcpstall_tests::lab::Lab;
use tcpstall_tests::require_root;

use super::{network_fault, stalled_reader, Lose, Place, Shape, TranslatedAt, REAL_PORT, S};

/// Who says hello last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    /// The host that holds the address and not the socket.
    Other,
    /// The server (the host with the socket says hello before it, the
    /// other holder first of all).
    Server,
}

fn hosts(last: Last) -> Net {
    Net::new(match last {
        Last::Other => &["client", "server", "other"],
        Last::Server => &["other", "client", "server"],
    })
}

/// The client's own address is also held in a container on the host
/// `other`, whose agent reads it.
fn client_address_in_another_hosts_container(last: Last) -> Shape {
    let mut net = hosts(last);
    net.add_container("other");
    net.container("other").hold_alone(net.host("client").addr);
    finish(net, Place::Host)
}

/// The client runs in a container behind a bridge on its host, routed
/// (no translation: the server routes the containers' network through
/// the client's host, as routed pod networks are); the host `other`
/// holds the container's address in its own namespace.
fn client_in_a_container_its_address_also_on_another_host(last: Last) -> Shape {
    let mut net = hosts(last);
    net.add_container("client");
    let (client, ctr) = (net.host("client"), net.container("client"));
    net.host("other").hold_alone(ctr.addr);
    let [a, b, c, _] = ctr.addr.octets();
    let containers = format!("{a}.{b}.{c}.0/24");
    let via = client.addr.to_string();
    net.host("server")
        .exec("ip", &["route", "add", &containers, "via", &via]);
    finish(net, Place::Container)
}

fn finish(net: Net, client_in: Place) -> Shape {
    let listen = SocketAddr::new(IpAddr::V4(net.host("server").addr), REAL_PORT);
    let lab = Lab::start_on(net, &[], S);
    let b_host = lab.host("client").name.clone();
    Shape {
        lab,
        client_in,
        server_in: Place::Host,
        listen,
        dial: listen,
        also: None,
        client_seen_at: None,
        translated_at: TranslatedAt::Nowhere,
        b_host,
    }
}

#[test]
fn client_address_in_others_container_other_first_stalled_reader_is_peer_not_reading() {
    require_root!();
    let shape = client_address_in_another_hosts_container(Last::Server);
    stalled_reader(
        &shape,
        "client's address also in another host's container (hello first): client stops reading",
    );
}

#[test]
fn client_address_in_others_container_other_last_acks_dropped_is_ack_lost() {
    require_root!();
    let shape = client_address_in_another_hosts_container(Last::Other);
    network_fault(
        &shape,
        Lose::Acks,
        "client's address also in another host's container (hello last): client's ACKs dropped",
    );
}

#[test]
fn client_in_a_container_its_address_on_other_other_last_stalled_reader_is_peer_not_reading() {
    require_root!();
    let shape = client_in_a_container_its_address_also_on_another_host(Last::Other);
    stalled_reader(
        &shape,
        "client in a container, its address also on another host (hello last): client stops reading",
    );
}

#[test]
fn client_in_a_container_its_address_on_other_other_first_data_dropped_is_data_lost() {
    require_root!();
    let shape = client_in_a_container_its_address_also_on_another_host(Last::Server);
    network_fault(
        &shape,
        Lose::Data,
        "client in a container, its address also on another host (hello first): server's data dropped",
    );
}
