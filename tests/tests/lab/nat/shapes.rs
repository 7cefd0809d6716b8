//! The translations of issue 23, each built inside the lab's hosts, and
//! their scenarios: a stalled reader, a network fault, a healthy transfer
//! (and, behind a service address, a real half-open).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use tcpstall_tests::lab::nat::{ipv6_of, service_network, BRIDGE, IFACE2};
use tcpstall_tests::lab::net::{Net, IFACE};
use tcpstall_tests::lab::{evidence, Lab};
use tcpstall_tests::{require_root, wait_for};

use super::{
    healthy_bulk, network_fault, stalled_reader, to, Lose, Place, Shape, TranslatedAt, REAL_PORT,
    S, SERVICE_PORT,
};
use crate::{expect_one_with_b, record};

/// A service address no host holds, on the client's host DNATed to the
/// server (in the output hook, as kube-proxy does for a node's own
/// processes), routed to the client's interface as a service range is;
/// one for IPv4 and one for IPv6. The client dials the IPv6 one when
/// `v6`.
fn service_on_the_client(v6: bool) -> Shape {
    let mut net = Net::new(&["client", "server"]);
    net.add_ipv6();
    let [a, b, c] = service_network();
    let vip4 = Ipv4Addr::new(a, b, c, 10);
    let vip6 = ipv6_of(vip4);
    let (client, server) = (net.host("client"), net.host("server"));
    let real6 = server.addr6.expect("the server's IPv6 address");
    client.exec(
        "ip",
        &["route", "add", &format!("{a}.{b}.{c}.0/24"), "dev", IFACE],
    );
    client.exec(
        "ip",
        &["-6", "route", "add", &format!("{vip6}/64"), "dev", IFACE],
    );
    client.nat(
        "ip",
        "output",
        &format!("ip daddr {vip4} tcp dport {SERVICE_PORT}"),
        &format!("dnat to {}:{REAL_PORT}", server.addr),
        "service",
    );
    client.nat(
        "ip6",
        "output",
        &format!("ip6 daddr {vip6} tcp dport {SERVICE_PORT}"),
        &format!("dnat to [{real6}]:{REAL_PORT}"),
        "service6",
    );
    let way4 = (
        SocketAddr::new(IpAddr::V4(server.addr), REAL_PORT),
        SocketAddr::new(IpAddr::V4(vip4), SERVICE_PORT),
    );
    let way6 = (
        SocketAddr::new(IpAddr::V6(real6), REAL_PORT),
        SocketAddr::new(IpAddr::V6(vip6), SERVICE_PORT),
    );
    let ((listen, dial), also) = if v6 { (way6, way4) } else { (way4, way6) };
    let lab = Lab::start_on(net, &[], S);
    let b_host = lab.host("client").name.clone();
    Shape {
        lab,
        client_in: Place::Host,
        server_in: Place::Host,
        listen,
        dial,
        also: Some(also),
        client_seen_at: None,
        translated_at: TranslatedAt::B,
        b_host,
    }
}

/// The client's host SNATs what it sends the server to an address it
/// gained once its agent had said hello.
fn masquerade_to_a_new_address() -> Shape {
    let lab = Lab::start(&["client", "server"], S);
    let (client, server) = (lab.host("client"), lab.host("server"));
    let [a, b, c, _] = client.addr.octets();
    let new = Ipv4Addr::new(a, b, c, 100);
    client.add_addr(IpAddr::V4(new), 24);
    client.nat(
        "ip",
        "postrouting",
        &format!("oifname \"{IFACE}\" ip daddr {}", server.addr),
        &format!("snat to {new}"),
        "egress",
    );
    let listen = SocketAddr::new(IpAddr::V4(server.addr), REAL_PORT);
    let b_host = client.name.clone();
    Shape {
        lab,
        client_in: Place::Host,
        server_in: Place::Host,
        listen,
        dial: listen,
        also: None,
        client_seen_at: Some(IpAddr::V4(new)),
        translated_at: TranslatedAt::B,
        b_host,
    }
}

/// The server runs in a container behind a bridge on its host, published
/// on the host's address (`-p 8080:80`): DNAT in the host's prerouting,
/// masquerade of what the containers send elsewhere, as Docker sets it up.
/// The host's agent reads the host's namespace and the container's.
fn port_forward_into_a_container() -> Shape {
    port_forward_into_a_container_on(|net| Lab::start_on(net, &[], S))
}

/// As [`port_forward_into_a_container`], the lab started by `start`.
fn port_forward_into_a_container_on(start: impl FnOnce(Net) -> Lab) -> Shape {
    let mut net = Net::new(&["client", "server"]);
    net.add_container("server");
    let (server, ctr) = (net.host("server"), net.container("server"));
    let [a, b, c, _] = ctr.addr.octets();
    server.nat(
        "ip",
        "prerouting",
        &format!("ip daddr {} tcp dport {REAL_PORT}", server.addr),
        &format!("dnat to {}:{SERVICE_PORT}", ctr.addr),
        "publish",
    );
    server.nat(
        "ip",
        "postrouting",
        &format!("ip saddr {a}.{b}.{c}.0/24 oifname != \"{BRIDGE}\""),
        "masquerade",
        "containers out",
    );
    let dial = SocketAddr::new(IpAddr::V4(server.addr), REAL_PORT);
    let listen = SocketAddr::new(IpAddr::V4(ctr.addr), SERVICE_PORT);
    let lab = start(net);
    let b_host = lab.host("client").name.clone();
    Shape {
        lab,
        client_in: Place::Host,
        server_in: Place::Container,
        listen,
        dial,
        also: None,
        client_seen_at: None,
        translated_at: TranslatedAt::A,
        b_host,
    }
}

/// What a NAT gateway translates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gateway {
    /// It masquerades what it forwards to the server's network (egress
    /// NAT): the client dials the server's own address.
    Masquerades,
    /// It also publishes the server on its own address on the client's
    /// network (a port-forward, as a load balancer or a home router's):
    /// neither end sees the other's address.
    Publishes,
}

/// A gateway between the client's network and the server's; running an
/// agent or not.
fn nat_gateway(nat: Gateway, with_agent: bool) -> Shape {
    nat_gateway_on(nat, with_agent, |net, unmonitored| {
        Lab::start_on(net, unmonitored, S)
    })
}

/// As [`nat_gateway`], the lab started by `start`.
fn nat_gateway_on(
    nat: Gateway,
    with_agent: bool,
    start: impl FnOnce(Net, &[&str]) -> Lab,
) -> Shape {
    let net = Net::routed("client", "gateway", "server");
    let (gateway, server) = (net.host("gateway"), net.host("server"));
    let far = gateway.more_addrs[0];
    gateway.nat(
        "ip",
        "postrouting",
        &format!("oifname \"{IFACE2}\""),
        "masquerade",
        "egress",
    );
    let listen = SocketAddr::new(IpAddr::V4(server.addr), REAL_PORT);
    let (dial, also) = match nat {
        Gateway::Masquerades => (listen, None),
        Gateway::Publishes => {
            gateway.nat(
                "ip",
                "prerouting",
                &format!(
                    "iifname \"{IFACE}\" ip daddr {} tcp dport {SERVICE_PORT}",
                    gateway.addr
                ),
                &format!("dnat to {listen}"),
                "publish",
            );
            let published = SocketAddr::new(IpAddr::V4(gateway.addr), SERVICE_PORT);
            // The server's own address is still reachable, masqueraded.
            (published, Some((listen, listen)))
        }
    };
    let unmonitored: &[&str] = if with_agent { &[] } else { &["gateway"] };
    let lab = start(net, unmonitored);
    let b_host = if with_agent {
        lab.host("client").name.clone()
    } else {
        String::new()
    };
    Shape {
        lab,
        client_in: Place::Host,
        server_in: Place::Host,
        listen,
        dial,
        also,
        client_seen_at: Some(IpAddr::V4(far)),
        translated_at: TranslatedAt::Between,
        b_host,
    }
}

#[test]
fn service_address_dnat_on_the_client_stalled_reader_is_peer_not_reading() {
    require_root!();
    let shape = service_on_the_client(false);
    stalled_reader(
        &shape,
        "service address DNATed on the client: client stops reading",
    );
}

#[test]
fn service_address_dnat_on_the_client_acks_dropped_is_ack_lost() {
    require_root!();
    let shape = service_on_the_client(false);
    network_fault(
        &shape,
        Lose::Acks,
        "service address DNATed on the client: client's ACKs dropped",
    );
}

#[test]
fn service_address_dnat_on_the_client_ipv6_stalled_reader_is_peer_not_reading() {
    require_root!();
    let shape = service_on_the_client(true);
    stalled_reader(
        &shape,
        "IPv6 service address DNATed on the client: client stops reading",
    );
}

#[test]
fn service_address_dnat_on_the_client_ipv6_data_dropped_is_data_lost() {
    require_root!();
    let shape = service_on_the_client(true);
    network_fault(
        &shape,
        Lose::Data,
        "IPv6 service address DNATed on the client: server's data dropped",
    );
}

#[test]
fn masquerade_to_an_address_added_after_the_agent_started_stalled_reader_is_peer_not_reading() {
    require_root!();
    let shape = masquerade_to_a_new_address();
    stalled_reader(
        &shape,
        "client masqueraded to an address added later: client stops reading",
    );
}

#[test]
fn masquerade_to_an_address_added_after_the_agent_started_acks_dropped_is_ack_lost() {
    require_root!();
    let shape = masquerade_to_a_new_address();
    network_fault(
        &shape,
        Lose::Acks,
        "client masqueraded to an address added later: client's ACKs dropped",
    );
}

#[test]
fn port_forward_into_a_container_stalled_reader_is_peer_not_reading() {
    require_root!();
    let shape = port_forward_into_a_container();
    stalled_reader(
        &shape,
        "port-forward into a container on the server: client stops reading",
    );
}

#[test]
fn port_forward_into_a_container_data_dropped_is_data_lost() {
    require_root!();
    let shape = port_forward_into_a_container();
    network_fault(
        &shape,
        Lose::Data,
        "port-forward into a container on the server: server's data dropped",
    );
}

#[test]
fn nat_gateway_with_an_agent_stalled_reader_is_peer_not_reading() {
    require_root!();
    let shape = nat_gateway(Gateway::Masquerades, true);
    stalled_reader(&shape, "NAT gateway with an agent: client stops reading");
}

#[test]
fn nat_gateway_with_an_agent_data_dropped_is_data_lost() {
    require_root!();
    let shape = nat_gateway(Gateway::Masquerades, true);
    network_fault(
        &shape,
        Lose::Data,
        "NAT gateway with an agent: server's data dropped",
    );
}

/// Fleet mode (issue 24): each host's agent on a node of its own; the
/// flow's two 4-tuples (before and after the gateway) fall in different
/// partitions, and the peer found through the gateway's translation
/// reports to the partition that asked for it.
fn in_a_fleet(net: Net, unmonitored: &[&str]) -> Lab {
    Lab::start_fleet_on(
        net,
        unmonitored,
        S,
        tcpstall_tests::lab::fleet::Shape::three(),
    )
}

#[test]
fn nat_gateway_with_an_agent_in_a_fleet_stalled_reader_is_peer_not_reading() {
    require_root!();
    tcpstall_tests::require_nats!();
    let shape = nat_gateway_on(Gateway::Masquerades, true, in_a_fleet);
    stalled_reader(
        &shape,
        "NAT gateway with an agent, in a fleet: client stops reading",
    );
}

#[test]
fn port_forward_into_a_container_in_a_fleet_stalled_reader_is_peer_not_reading() {
    require_root!();
    tcpstall_tests::require_nats!();
    let shape = port_forward_into_a_container_on(|net| in_a_fleet(net, &[]));
    stalled_reader(
        &shape,
        "port-forward into a container on the server, in a fleet: client stops reading",
    );
}

#[test]
fn nat_gateway_without_an_agent_stalled_reader_is_peer_unmonitored() {
    require_root!();
    let shape = nat_gateway(Gateway::Masquerades, false);
    stalled_reader(&shape, "NAT gateway without an agent: client stops reading");
}

#[test]
fn nat_gateway_without_an_agent_acks_dropped_is_peer_unmonitored() {
    require_root!();
    let shape = nat_gateway(Gateway::Masquerades, false);
    network_fault(
        &shape,
        Lose::Acks,
        "NAT gateway without an agent: client's ACKs dropped",
    );
}

#[test]
fn nat_gateway_publishing_the_server_with_an_agent_stalled_reader_is_peer_not_reading() {
    require_root!();
    let shape = nat_gateway(Gateway::Publishes, true);
    stalled_reader(
        &shape,
        "NAT gateway publishing the server, with an agent: client stops reading",
    );
}

#[test]
fn nat_gateway_publishing_the_server_with_an_agent_acks_dropped_is_ack_lost() {
    require_root!();
    let shape = nat_gateway(Gateway::Publishes, true);
    network_fault(
        &shape,
        Lose::Acks,
        "NAT gateway publishing the server, with an agent: client's ACKs dropped",
    );
}

#[test]
fn nat_gateway_publishing_the_server_without_an_agent_stalled_reader_is_peer_unmonitored() {
    require_root!();
    let shape = nat_gateway(Gateway::Publishes, false);
    stalled_reader(
        &shape,
        "NAT gateway publishing the server, without an agent: client stops reading",
    );
}

#[test]
fn healthy_bulk_through_a_service_address_ipv4_and_ipv6_opens_nothing() {
    require_root!();
    let shape = service_on_the_client(false);
    healthy_bulk(
        &shape,
        "healthy bulk through a service address DNATed on the client (IPv4 and IPv6)",
    );
}

#[test]
fn healthy_bulk_masqueraded_to_an_address_added_after_the_agent_started_opens_nothing() {
    require_root!();
    let shape = masquerade_to_a_new_address();
    healthy_bulk(&shape, "healthy bulk masqueraded to an address added later");
}

#[test]
fn healthy_bulk_through_a_port_forward_into_a_container_opens_nothing() {
    require_root!();
    let shape = port_forward_into_a_container();
    healthy_bulk(
        &shape,
        "healthy bulk through a port-forward into a container",
    );
}

#[test]
fn healthy_bulk_through_a_nat_gateway_with_an_agent_opens_nothing() {
    require_root!();
    let shape = nat_gateway(Gateway::Publishes, true);
    healthy_bulk(
        &shape,
        "healthy bulk through a NAT gateway with an agent (published and masqueraded)",
    );
}

#[test]
fn healthy_bulk_through_a_nat_gateway_without_an_agent_opens_nothing() {
    require_root!();
    let shape = nat_gateway(Gateway::Publishes, false);
    healthy_bulk(
        &shape,
        "healthy bulk through a NAT gateway without an agent (published and masqueraded)",
    );
}

/// The client's socket killed (`ss -K`) behind a service address, its
/// resets dropped on the way out so that the server keeps sending: the
/// client's host holds the translation but no socket on either side of
/// it, and that is a real half-open.
#[test]
fn client_socket_killed_behind_a_service_address_is_still_half_open() {
    require_root!();
    let shape = service_on_the_client(false);
    let client = shape.client();
    let (rpc, len) = shape.asked();
    // At the output filter the service address is already translated:
    // the resets go to the server's own address.
    client.nft_rule(
        "output",
        &format!("{} tcp flags & rst == rst", to(rpc.server_addr)),
        "resets",
    );
    client.exec(
        "ss",
        &[
            "-K",
            "dst",
            &rpc.client_peer.ip().to_string(),
            "dport",
            "=",
            &rpc.client_peer.port().to_string(),
        ],
    );
    wait_for("the client's socket gone", Duration::from_secs(5), || {
        client
            .socket(rpc.client_addr, rpc.client_peer)
            .is_none()
            .then_some(())
    });
    let fault = SystemTime::now();
    let _writer = rpc.respond(len);
    let (e, detail, detected) =
        expect_one_with_b(&shape.lab, &rpc, "half_open", fault, &shape.b_host);
    assert!(
        !detail.samples.iter().any(|x| x.side == "b"),
        "no B end to store"
    );
    assert!(
        evidence(&e, "a_inflight") > 0,
        "A keeps sending into nothing"
    );
    let dropped = client.nft_packets("resets");
    assert!(dropped > 0, "resets were sent and dropped");
    record(
        "client's socket killed behind a service address (ss -K), its resets dropped",
        "half_open",
        &e,
        detected,
        S,
        format!("{}; {dropped} resets dropped", e.peer_note),
    );
}
