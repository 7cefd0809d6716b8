//! `run`'s poll ([`Poller::poll_wanted`]): a base dump of every connection,
//! then the wanted ones by exact request. What it reads of a wanted socket
//! must be what a full dump reads; a socket that queues or goes between
//! the two phases must be neither lost nor invented.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use serde_json::Value;
use tcpstall_agent::diag::Base;
use tcpstall_agent::netns::{self, NetnsSpec};
use tcpstall_agent::suspects::Selector;
use tcpstall_agent::Poller;
use tcpstall_common::{FlowTuple, SampleReason, SocketSample};
use tcpstall_tests::{find, require_root, wait_for, TestNetns};

use crate::{fill, recv, send, Conn};

const DEADLINE: Duration = Duration::from_secs(20);

/// Everything a sample holds but what moves with the clock alone
/// (milliseconds since the last packet, time until the timer fires, the
/// time counters of tcp_info).
pub(crate) fn steady(s: &SocketSample) -> Value {
    let mut info = serde_json::to_value(s.info).expect("tcp_info as JSON");
    if let Some(m) = info.as_object_mut() {
        for k in [
            "last_data_sent",
            "last_ack_sent",
            "last_data_recv",
            "last_ack_recv",
            "busy_time",
            "rwnd_limited",
            "sndbuf_limited",
        ] {
            m.remove(k);
        }
    }
    serde_json::json!({
        "netns": s.netns, "local": s.local.to_string(), "remote": s.remote.to_string(),
        "state": format!("{:?}", s.state), "cookie": s.cookie, "inode": s.inode, "uid": s.uid,
        "rqueue": s.rqueue, "wqueue": s.wqueue, "timer": format!("{:?}", s.timer),
        "timer_retransmits": s.timer_retransmits, "opened": format!("{:?}", s.opened),
        "info": info, "skmem": serde_json::to_value(s.skmem).expect("skmem"),
        "cong": s.cong.map(|c| c.as_str().to_string()), "shutdown": s.shutdown,
    })
}

#[test]
fn wanted_sockets_read_as_a_full_dump_reads_them() {
    // Stuck senders of three kinds (IPv4, IPv6, IPv4 through a dual-stack
    // socket, which the kernel knows as AF_INET6), and an idle connection.
    let mut v4 = Conn::open("127.0.0.1:0");
    let mut v6 = Conn::open("[::1]:0");
    let dual = TcpListener::bind("[::]:0").expect("bind dual-stack");
    let port = dual.local_addr().expect("addr").port();
    let mut mapped_client =
        TcpStream::connect(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
            .expect("connect");
    let (mut mapped_server, _) = dual.accept().expect("accept");
    let mapped_server_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let mapped_client_addr = mapped_client.local_addr().expect("addr");
    let mut idle = Conn::open("127.0.0.1:0");
    send(&mut idle.client, 10);
    recv(&mut idle.server, 10);
    fill(&mut v4.client);
    fill(&mut v6.client);
    // The accepted, mapped end sends: it is the AF_INET6 socket.
    send(&mut mapped_client, 1);
    recv(&mut mapped_server, 1);
    fill(&mut mapped_server);

    let stuck = [
        (v4.client_addr, v4.server_addr),
        (v6.client_addr, v6.server_addr),
        (mapped_server_addr, mapped_client_addr),
    ];
    let ours = |local, remote| stuck.contains(&(local, remote)) || stuck.contains(&(remote, local));
    let here = vec![netns::current().expect("namespace")];
    let mut full = Poller::new(here.clone()).expect("poller");
    let mut two = Poller::new(here).expect("poller");
    let find_all = |all: &[SocketSample]| -> Option<Vec<SocketSample>> {
        stuck.iter().map(|(l, r)| find(all, *l, *r)).collect()
    };
    // A full dump, the two-phase poll, a full dump: when nothing moved
    // between the two full dumps, the two-phase reading must equal both.
    let (got, want) = wait_for("a reading with nothing moving", DEADLINE, || {
        let first = find_all(full.poll().0)?;
        let (all, _, failures) = two.poll_wanted(|_, b| b.wqueue > 0 && ours(b.local, b.remote));
        assert!(failures.is_empty(), "{failures:?}");
        let got = find_all(all)?;
        // Only the wanted sockets come back.
        assert!(all.iter().all(|s| ours(s.local, s.remote)), "{all:?}");
        let second = find_all(full.poll().0)?;
        let first: Vec<Value> = first.iter().map(steady).collect();
        let second: Vec<Value> = second.iter().map(steady).collect();
        (first == second && got.iter().all(|s| s.wqueue > 0)).then_some((got, second))
    });
    for (g, w) in got.iter().zip(&want) {
        assert!(g.info.is_some() && g.skmem.is_some() && g.cong.is_some());
        assert!(g.opened.is_some());
        assert_eq!(&steady(g), w, "the exact reading equals the dump's");
    }
    let stats = two.stats();
    assert!(stats.exact >= 3, "asked one by one: {stats:?}");
    assert!(two.one_walk(), "both families came from one legacy dump");

    // The idle connection and the receiving ends: counted, not returned.
    let mut seen = Vec::new();
    let (all, connections, _) = two.poll_wanted(|_, b| {
        seen.push((b.local, b.remote));
        b.wqueue > 0 && ours(b.local, b.remote)
    });
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(connections, seen.len());
    for (l, r) in [
        (idle.client_addr, idle.server_addr),
        (idle.server_addr, idle.client_addr),
        (v4.server_addr, v4.client_addr),
        (mapped_client_addr, mapped_server_addr),
    ] {
        assert!(seen.contains(&(l, r)), "{l} -> {r} asked about");
        assert!(find(all, l, r).is_none(), "{l} -> {r} not wanted");
    }
}

#[test]
fn many_wanted_sockets_come_from_one_full_dump() {
    let conns: Vec<Conn> = (0..80).map(|_| Conn::open("127.0.0.1:0")).collect();
    let addrs: Vec<(SocketAddr, SocketAddr)> = conns
        .iter()
        .flat_map(|c| {
            [
                (c.client_addr, c.server_addr),
                (c.server_addr, c.client_addr),
            ]
        })
        .collect();
    let mut poller = Poller::new(vec![netns::current().expect("ns")]).expect("poller");
    // Every socket wanted: more than exact requests pay for.
    let (all, connections, failures) = poller.poll_wanted(|_, _| true);
    assert_eq!(all.len(), connections);
    assert!(failures.is_empty());
    for (l, r) in &addrs {
        let s = find(all, *l, *r);
        assert!(
            s.as_ref()
                .is_some_and(|s| s.info.is_some() && s.opened.is_some()),
            "{l} -> {r} in the poll, in full: {s:?}"
        );
    }
    let stats = *poller.stats();
    assert_eq!(stats.exact, 0, "{stats:?}");
    assert_eq!(stats.wanted, stats.connections, "{stats:?}");
}

/// Polls `ns` once with `poller` and the selector, running `between` on
/// each socket the base dump shows (after the kernel read it: what it
/// does, the first phase cannot see).
fn poll_select(
    poller: &mut Poller,
    selector: &mut Selector,
    now: Duration,
    mut between: impl FnMut(&Base),
) -> (Vec<SocketSample>, tcpstall_agent::suspects::Selection) {
    let sel = &*selector;
    let (all, connections, failures) = poller.poll_wanted(|netns, b| {
        between(b);
        sel.wants(netns, b)
    });
    assert!(failures.is_empty(), "{failures:?}");
    let all = all.to_vec();
    let selection = selector.select_wanted(&all, &[], connections, &[], now);
    (all, selection)
}

#[test]
fn a_socket_that_queues_between_the_phases_is_a_suspect_two_polls_later() {
    require_root!();
    let ns = TestNetns::new("between");
    let mut c = ns.enter(|| Conn::open("127.0.0.1:0"));
    send(&mut c.client, 100);
    recv(&mut c.server, 100);
    let spaces = netns::resolve(&[NetnsSpec::Named(ns.name.clone())]).expect("resolve");
    let inode = spaces[0].inode;
    let mut poller = Poller::new(spaces).expect("poller");
    let mut selector = Selector::new([(inode, ns.name.clone())]);
    let (client_addr, server_addr) = (c.client_addr, c.server_addr);
    wait_for("the client's queue to drain", DEADLINE, || {
        let (all, _, _) = poller.poll_wanted(|_, b| b.local == client_addr && b.wqueue == 0);
        find(all, client_addr, server_addr).map(|_| ())
    });
    // Nothing leaves the namespace's loopback any more: what the client
    // writes stays queued, unacknowledged.
    tcpstall_tests::run("ip", &["-n", &ns.name, "link", "set", "lo", "down"]);
    let client = &mut c.client;
    let mut written = None;
    let mut written_at = None;
    let t = |n: u32| Duration::from_secs(100 + 2 * u64::from(n));

    // Poll 1: the client writes right after the base dump read it.
    let (all, out) = poll_select(&mut poller, &mut selector, t(0), |s| {
        if s.local == client_addr && written.is_none() {
            written = Some(s.wqueue);
            written_at = Some(std::time::Instant::now());
            send(client, 1000);
        }
    });
    assert_eq!(written, Some(0), "poll 1 read the queue before the write");
    assert!(
        find(&all, client_addr, server_addr).is_none(),
        "and did not want it"
    );
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(out.connections, 2);

    // Poll 2: queued, read in full, remembered.
    let (all, out) = poll_select(&mut poller, &mut selector, t(1), |_| {});
    let seen = find(&all, client_addr, server_addr).expect("client in poll 2");
    assert_eq!(seen.wqueue, 1000);
    assert!(seen.info.is_some());
    assert!(out.is_empty(), "one poll proves nothing: {out:?}");

    // Poll 3: unchanged, so a suspect, with its positions.
    let (_, out) = poll_select(&mut poller, &mut selector, t(2), |_| {});
    let flow = FlowTuple::new(client_addr, server_addr);
    let suspects: Vec<_> = out
        .samples
        .iter()
        .filter(|(r, s)| *r == SampleReason::Suspect && s.flow == flow)
        .collect();
    assert_eq!(suspects.len(), 1, "{out:?}");
    let pos = &suspects[0].1.pos;
    assert_eq!(pos.sendq, 1000);
    assert_eq!(pos.snd_una, Some(100), "the 100 bytes before the cut");
    assert_eq!(pos.write_seq, Some(1100));
    // Held since the second poll first saw it, and before that as long
    // as the kernel's clocks say (the write came just before that poll,
    // in real time): never longer than since the write, give or take the
    // kernel clocks' tick (a jiffy: 4 ms at HZ=250, 10 ms at HZ=100).
    let since_write = written_at.map_or(0, |w| w.elapsed().as_millis() as u64);
    let unchanged = suspects[0].1.unchanged_ms;
    assert!(
        (2000..=2000 + since_write + 10).contains(&unchanged),
        "held {unchanged} ms at the third poll; written {since_write} ms ago"
    );
}

#[test]
fn a_wanted_socket_gone_between_the_phases_is_left_out() {
    require_root!();
    let ns = TestNetns::new("gone");
    let mut c = ns.enter(|| Conn::open("127.0.0.1:0"));
    send(&mut c.client, 100);
    recv(&mut c.server, 100);
    let spaces = netns::resolve(&[NetnsSpec::Named(ns.name.clone())]).expect("resolve");
    let mut poller = Poller::new(spaces).expect("poller");
    let (client_addr, server_addr) = (c.client_addr, c.server_addr);
    wait_for("both ends", DEADLINE, || {
        let (_, connections, _) = poller.poll_wanted(|_, _| false);
        (connections == 2).then_some(())
    });
    let abort = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let mut client = Some(c.client);
    let (all, connections, failures) = poller.poll_wanted(|_, s| {
        if s.local == client_addr {
            // Closed with a RST after the base dump saw it: gone at once.
            if let Some(sock) = client.take() {
                nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::Linger, &abort)
                    .expect("SO_LINGER");
                drop(sock);
            }
            return true;
        }
        false
    });
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        find(all, client_addr, server_addr).is_none(),
        "a socket gone is not reported from its base message: {all:?}"
    );
    assert_eq!(connections, 2, "counted by the base dump");
    let stats = *poller.stats();
    assert_eq!(
        (stats.wanted, stats.gone_between_phases),
        (1, 1),
        "{stats:?}"
    );
}

#[test]
fn an_exact_request_answers_found_gone_or_fails_whole() {
    use tcpstall_agent::diag::{DiagSocket, Exact, ExactId};
    let c = Conn::open("127.0.0.1:0");
    let mut sock = DiagSocket::open().expect("sock_diag socket");
    let mut stats = tcpstall_agent::diag::ParseStats::default();
    let mut id = None;
    sock.dump_request(
        tcpstall_agent::diag::Dump::full(tcpstall_agent::diag::Family::V4),
        &mut stats,
        |s, payload| {
            // The light reading of the base message agrees with the parser.
            let b = Base::of(payload).expect("base message");
            assert_eq!(
                (b.state, b.local, b.remote, b.cookie, b.wqueue),
                (s.state, s.local, s.remote, s.cookie, s.wqueue)
            );
            if s.local == c.client_addr && s.remote == c.server_addr {
                id = ExactId::of(payload);
            }
        },
    )
    .expect("dump");
    let id = id.expect("the client in the dump");
    // The same 4-tuple with another cookie: a socket that is gone.
    let mut stale = id;
    stale.sockid[40] ^= 0xff;
    let mut answers = Vec::new();
    sock.get_exact(&[id, stale, id], &mut stats, |i, a| answers.push((i, a)))
        .expect("exact requests");
    assert_eq!(answers.len(), 3);
    assert!(matches!(&answers[0], (0, Exact::Found(s)) if s.local == c.client_addr));
    assert_eq!(answers[1], (1, Exact::Gone));
    assert!(matches!(&answers[2], (2, Exact::Found(s)) if s.info.is_some()));
    // A family the kernel does not know: refused, the whole call fails,
    // and the socket still answers the next request.
    let mut bogus = id;
    bogus.family = 99;
    assert!(sock.get_exact(&[bogus], &mut stats, |_, _| {}).is_err());
    let mut again = 0;
    sock.get_exact(&[id], &mut stats, |_, a| {
        again += usize::from(matches!(a, Exact::Found(_)));
    })
    .expect("exact request after a refusal");
    assert_eq!(again, 1);
}
