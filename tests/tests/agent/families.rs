//! IPv6, and IPv4 through a dual-stack IPv6 socket (`::ffff:a.b.c.d`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use tcpstall_agent::view::pair_up;
use tcpstall_common::{SocketSample, TcpState};
use tcpstall_tests::{find, poll, wait_for};

use crate::{recv, send, Conn};

#[test]
fn ipv6_connection_positions_compare() {
    let mut c = Conn::open("[::1]:0");
    send(&mut c.client, 3000);
    recv(&mut c.server, 3000);
    let (a, b) = wait_for("both IPv6 ends", Duration::from_secs(10), || {
        let all = poll(vec![]);
        let a = find(&all, c.client_addr, c.server_addr)?;
        let b = find(&all, c.server_addr, c.client_addr)?;
        (a.wqueue == 0).then_some((a, b))
    });
    assert!(a.local.is_ipv6() && a.remote.is_ipv6());
    assert_eq!(a.positions().snd_una, Some(3000));
    assert_eq!(b.positions().rcv_nxt, Some(3000));
}

#[test]
fn ipv4_mapped_addresses_are_normalised_and_pair() {
    // A dual-stack listener: the accepted socket is AF_INET6 and the kernel
    // reports ::ffff:127.0.0.1 for both its addresses.
    let listener = TcpListener::bind("[::]:0").expect("bind dual-stack");
    let port = listener.local_addr().expect("addr").port();
    let mut client = TcpStream::connect(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
        .expect("connect");
    let (mut server, peer) = listener.accept().expect("accept");
    assert!(peer.is_ipv6(), "the OS hands us a mapped address: {peer}");
    send(&mut client, 500);
    recv(&mut server, 500);
    let client_addr = client.local_addr().expect("client addr");
    let server_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);

    let all = wait_for("the mapped server end", Duration::from_secs(10), || {
        let all = poll(vec![]);
        find(&all, server_addr, client_addr)?;
        find(&all, client_addr, server_addr)?;
        Some(all)
    });
    let b = find(&all, server_addr, client_addr).expect("server end");
    assert!(b.local.is_ipv4() && b.remote.is_ipv4(), "normalised: {b:?}");
    let ours: Vec<&SocketSample> = all
        .iter()
        .filter(|s| s.local.port() == port || s.remote.port() == port)
        .collect();
    let pairs = pair_up(&ours);
    assert_eq!(
        pairs.len(),
        1,
        "one connection, both ends paired: {pairs:?}"
    );
    let (x, y) = pairs[0];
    let y = y.expect("paired");
    assert_eq!(ours[x].local, client_addr, "the connecting side is A");
    assert_eq!(ours[y].local, server_addr);
    assert_eq!(ours[x].positions().snd_una, ours[y].positions().rcv_nxt);
    assert!(ours.iter().all(|s| s.state != TcpState::Listen));
}
