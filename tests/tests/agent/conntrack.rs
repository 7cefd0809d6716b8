//! Conntrack lookups against a real kernel: a DNAT rule in a namespace the
//! test created, a connection through it, and the entry looked up from
//! both of its ends.

use std::net::{SocketAddr, TcpListener, TcpStream};

use tcpstall_agent::conntrack::{Conntrack, Direction};
use tcpstall_common::{FlowTuple, Translation};
use tcpstall_tests::{require_root, run, TestNetns};

/// What one namespace's lookups found.
#[derive(Debug)]
struct Found {
    client: FlowTuple,
    server: FlowTuple,
    real: SocketAddr,
    by_client: Option<Translation>,
    by_server: Option<Translation>,
    by_reply: Option<Translation>,
    missing: Option<Translation>,
}

/// A fresh namespace where `vip` (in `prefix`, routed to loopback from
/// `loopback`) is DNATed to a listener on `loopback`: the shape of
/// kube-proxy on a client's node, in one namespace. Returns the namespace,
/// the listener and its address.
pub fn dnat_namespace(
    tag: &str,
    family: &str,
    prefix: &str,
    loopback: &str,
    vip: SocketAddr,
) -> (TestNetns, TcpListener, SocketAddr) {
    let ns = TestNetns::new(tag);
    let listener = ns.enter(|| TcpListener::bind((loopback, 0)).expect("bind"));
    let real = listener.local_addr().expect("listener addr");
    // A route for the VIP, so that the connect reaches the output hook;
    // the DNAT there reroutes it to loopback.
    run(
        "ip",
        &[
            "-n", &ns.name, "route", "add", prefix, "dev", "lo", "src", loopback,
        ],
    );
    let rules = format!(
        "add table {family} nat; \
         add chain {family} nat output {{ type nat hook output priority -100; }}; \
         add rule {family} nat output {family} daddr {} tcp dport {} dnat to {real}",
        vip.ip(),
        vip.port()
    );
    run("ip", &["netns", "exec", &ns.name, "/usr/sbin/nft", &rules]);
    (ns, listener, real)
}

/// Connects to the VIP of a [`dnat_namespace`] and looks the connection
/// up from both ends, plus a flow that has no entry.
fn through_dnat(family: &str, prefix: &str, loopback: &str, vip: &str) -> Found {
    let vip: SocketAddr = vip.parse().expect("vip");
    let (ns, listener, real) = dnat_namespace("ct", family, prefix, loopback, vip);
    let unused = |port| SocketAddr::new(real.ip(), port);

    ns.enter(|| {
        let client = TcpStream::connect(vip).expect("connect to the VIP");
        let (server, _) = listener.accept().expect("accept");
        let client = FlowTuple::new(client.local_addr().expect("client addr"), vip);
        let server = FlowTuple::new(
            server.local_addr().expect("server addr"),
            server.peer_addr().expect("server peer"),
        );
        let mut ct = Conntrack::open().expect("ctnetlink socket");
        Found {
            client,
            server,
            real,
            by_client: ct.lookup(client).expect("lookup the client's flow"),
            by_server: ct.lookup(server).expect("lookup the server's flow"),
            by_reply: ct
                .get(Direction::Reply, server)
                .expect("get by the reply tuple"),
            missing: ct
                .lookup(FlowTuple::new(unused(1), unused(2)))
                .expect("lookup a flow without an entry"),
        }
    })
}

fn check(f: Found) {
    eprintln!("client {}: {:?}", f.client, f.by_client);
    eprintln!("server {}: {:?}", f.server, f.by_server);
    assert!(!f.client.local.ip().is_unspecified(), "{f:?}");
    let t = f.by_client.expect("the client's flow has an entry");
    assert_eq!(t.original, f.client);
    assert!(t.dst_nat && !t.src_nat, "{t:?}");
    // The reply comes from the real server, to the client as it is.
    assert_eq!(t.reply.local, f.real);
    assert_eq!(t.reply.remote, f.client.local);
    // The server's socket is the reply side of the same entry, found by
    // the same one request.
    assert_eq!(f.server, t.reply);
    assert_eq!(f.by_server, Some(t));
    assert_eq!(f.by_reply, Some(t));
    assert_eq!(f.missing, None);
}

#[test]
fn a_dnat_entry_is_found_from_both_ends_ipv4() {
    require_root!();
    check(through_dnat(
        "ip",
        "198.18.0.0/24",
        "127.0.0.1",
        "198.18.0.1:80",
    ));
}

#[test]
fn a_dnat_entry_is_found_from_both_ends_ipv6() {
    require_root!();
    check(through_dnat(
        "ip6",
        "fd00:18::/64",
        "::1",
        "[fd00:18::1]:80",
    ));
}

/// A source rewrite (SNAT in postrouting, the shape of masquerade): the
/// client's flow is the original, the server's is the reply, whose
/// destination is the translated source.
#[test]
fn an_snat_entry_is_found_from_both_ends() {
    require_root!();
    let ns = TestNetns::new("ct-snat");
    let listener = ns.enter(|| TcpListener::bind("127.0.0.1:0").expect("bind"));
    let real = listener.local_addr().expect("listener addr");
    let rules = format!(
        "add table ip nat; \
         add chain ip nat postrouting {{ type nat hook postrouting priority 100; }}; \
         add rule ip nat postrouting ip daddr {} tcp dport {} snat to 127.0.0.2",
        real.ip(),
        real.port()
    );
    run("ip", &["netns", "exec", &ns.name, "/usr/sbin/nft", &rules]);
    let (client, server, by_client, by_server) = ns.enter(|| {
        let client = TcpStream::connect(real).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let client = FlowTuple::new(client.local_addr().expect("client addr"), real);
        let server = FlowTuple::new(real, server.peer_addr().expect("server peer"));
        let mut ct = Conntrack::open().expect("ctnetlink socket");
        (
            client,
            server,
            ct.lookup(client).expect("lookup the client's flow"),
            ct.lookup(server).expect("lookup the server's flow"),
        )
    });
    eprintln!("client {client}: {by_client:?}");
    eprintln!("server {server}: {by_server:?}");
    let t = by_client.expect("the client's flow has an entry");
    assert!(t.src_nat && !t.dst_nat, "{t:?}");
    assert_eq!(t.original, client);
    assert_eq!(t.reply, server);
    assert_eq!(server.remote.ip().to_string(), "127.0.0.2");
    assert_eq!(by_server, Some(t));
}
