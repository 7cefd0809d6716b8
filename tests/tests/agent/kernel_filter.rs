//! `run`'s poll with its first phase in the kernel (issue 27): the BPF
//! filter must let through exactly the sockets sock_diag's base dump would
//! have had chosen, each as the dump describes it, count the same
//! connections, and so give the same samples out; and an agent that may
//! not load BPF must poll with sock_diag and say so.

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use serde_json::Value;
use tcpstall_agent::diag::{Base, ExactId};
use tcpstall_agent::netns::{self, NetnsSpec};
use tcpstall_agent::probe::bpf::TcpIterProbe;
use tcpstall_agent::probe::filter::{KernelFilter, Wants};
use tcpstall_agent::Poller;
use tcpstall_common::{FlowTuple, SocketSample};
use tcpstall_tests::{require_root, scrape, series, wait_for, AgentProcess, TestNetns};

use crate::wanted::steady;
use crate::{fill, recv, send, Conn};

const DEADLINE: Duration = Duration::from_secs(20);

/// What the first phase hands the choice of a socket, field by field.
fn base_fields(b: &Base) -> (String, SocketAddr, SocketAddr, u64, u32) {
    (
        format!("{:?}", b.state),
        b.local,
        b.remote,
        b.cookie,
        b.wqueue,
    )
}

/// The filter, or why this machine cannot run it (the test then skips).
fn filter() -> Option<KernelFilter> {
    if let Err(e) = TcpIterProbe::built() {
        eprintln!("skipped: the agent was built without its BPF object: {e}");
        return None;
    }
    Some(KernelFilter::load().expect("the filter loads as root"))
}

#[test]
fn the_kernel_filter_lets_through_what_the_base_dump_would_choose_field_by_field() {
    require_root!();
    let Some(kernel) = filter() else { return };
    let ns = TestNetns::new("kfilt");
    // In a namespace of its own, so that every socket in it is ours: stuck
    // senders over IPv4, IPv6 and a dual-stack socket (AF_INET6 to the
    // kernel), idle connections followed by cookie, watched by 4-tuple and
    // counted by local endpoint, idle ones nobody wants, and a TIME-WAIT.
    let (mut v4, mut v6, mut idle, _dual, mut mapped_client, mut mapped_server) = ns.enter(|| {
        let v4 = Conn::open("127.0.0.1:0");
        let v6 = Conn::open("[::1]:0");
        let idle: Vec<Conn> = (0..6).map(|_| Conn::open("127.0.0.1:0")).collect();
        let dual = TcpListener::bind("[::]:0").expect("bind dual-stack");
        let port = dual.local_addr().expect("addr").port();
        let client = TcpStream::connect(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
            .expect("connect");
        let (server, _) = dual.accept().expect("accept");
        (v4, v6, idle, dual, client, server)
    });
    fill(&mut v4.client);
    fill(&mut v6.client);
    send(&mut mapped_client, 1);
    recv(&mut mapped_server, 1);
    fill(&mut mapped_server);
    for c in &mut idle {
        send(&mut c.client, 10);
        recv(&mut c.server, 10);
    }
    // The client closes first: its end waits in TIME-WAIT.
    let closed = idle.pop().expect("a connection");
    let closed_client = closed.client_addr;
    drop(closed.client);
    drop(closed.server);

    let spaces = netns::resolve(&[NetnsSpec::Named(ns.name.clone())]).expect("resolve");
    let mut dump = Poller::new(spaces.clone()).expect("poller");
    let mut kernel = Poller::new(spaces).expect("poller").with_filter(kernel);

    // The sockets followed, watched and counted, as `run` would name them.
    let cookie_of =
        |all: &[SocketSample], l: SocketAddr| all.iter().find(|s| s.local == l).map(|s| s.cookie);
    let everything = dump.poll().0.to_vec();
    let tracked = cookie_of(&everything, idle[0].client_addr).expect("a cookie");
    let watched = FlowTuple::new(idle[1].server_addr, idle[1].client_addr);
    let endpoint = idle[2].client_addr;
    let wants = Wants {
        cookies: HashSet::from([tracked]),
        tuples: HashSet::from([watched]),
        endpoints: HashSet::from([endpoint]),
    };
    // `run`'s choice: a send queue, or named.
    let choose = |b: &Base| {
        b.wqueue > 0
            || wants.cookies.contains(&b.cookie)
            || wants.tuples.contains(&FlowTuple::new(b.local, b.remote))
    };

    type Reading = (
        Vec<Value>,
        Vec<ExactId>,
        usize,
        BTreeSet<(String, SocketAddr, SocketAddr, u64, u32)>,
    );
    let read = |p: &mut Poller, filtered: bool| -> Reading {
        let mut seen = BTreeSet::new();
        let mut chooser = |_: u64, b: &Base| {
            // Every socket the dump saw with a queue or a name, and none
            // other from the kernel: what `run` sees of the holders.
            if choose(b) || b.local == endpoint {
                seen.insert(base_fields(b));
            }
            choose(b)
        };
        let (samples, ids, connections, failures) = if filtered {
            p.poll_filtered_ids(&wants, &mut chooser)
        } else {
            p.poll_wanted_ids(&mut chooser)
        };
        assert!(failures.is_empty(), "{failures:?}");
        let mut rows: Vec<(Value, ExactId)> = samples
            .iter()
            .map(steady)
            .zip(ids.iter().copied())
            .collect();
        rows.sort_by_key(|(v, _)| v.to_string());
        let (samples, ids) = rows.into_iter().unzip();
        (samples, ids, connections, seen)
    };
    // The dump, the kernel, the dump: when nothing moved between the two
    // dumps, the kernel's reading must equal both.
    let (by_kernel, by_dump) = wait_for("a reading with nothing moving", DEADLINE, || {
        let first = read(&mut dump, false);
        let got = read(&mut kernel, true);
        let second = read(&mut dump, false);
        (first == second).then_some((got, second))
    });
    assert_eq!(kernel.stats().filtered, 1, "{:?}", kernel.stats());
    assert_eq!(kernel.stats().filter_failures, 0);
    assert_eq!(
        by_kernel.3, by_dump.3,
        "the sockets chosen among, field by field"
    );
    assert_eq!(by_kernel.2, by_dump.2, "connections counted");
    assert_eq!(by_kernel.1, by_dump.1, "how each is asked for alone");
    assert_eq!(by_kernel.0, by_dump.0, "the samples out, field by field");
    // What the namespace holds: 3 stuck senders and their 3 peers, 5 idle
    // connections, the TIME-WAIT end (its peer is gone).
    assert_eq!(by_dump.2, 3 * 2 + 5 * 2 + 1, "{:?}", by_dump.3);
    let out: Vec<&Value> = by_dump.0.iter().collect();
    assert_eq!(
        out.len(),
        5,
        "three stuck, one followed, one watched: {out:#?}"
    );
    assert!(
        by_dump.3.iter().any(|b| b.1 == endpoint),
        "the counted endpoint's holder seen"
    );
    assert!(
        by_dump.3.iter().all(|b| b.1 != closed_client),
        "the TIME-WAIT end counted, not chosen"
    );
    let stats = kernel.filter_stats().expect("a filter");
    assert_eq!((stats.malformed, stats.overflowed), (0, 0), "{stats:?}");
    // It wrote out what was wanted and the listeners, not every socket.
    assert!(stats.written < by_dump.2 as u64 * stats.passes, "{stats:?}");

    // Nothing wanted any more: the maps follow, and only queues come out.
    let none = Wants::default();
    let (samples, _, connections, _) = kernel.poll_filtered_ids(&none, |_, b| b.wqueue > 0);
    assert_eq!(samples.len(), 3, "the stuck senders alone: {samples:?}");
    assert_eq!(connections, by_dump.2);
}

#[test]
fn an_agent_that_may_not_load_bpf_polls_with_sock_diag_and_says_so() {
    require_root!();
    if TcpIterProbe::built().is_err() {
        eprintln!("skipped: the agent was built without its BPF object");
        return;
    }
    // The same agent with every capability, then without CAP_BPF,
    // CAP_PERFMON and CAP_SYS_ADMIN (setpriv drops them from its bounding
    // set before it starts): its metrics say which first phase it ran.
    for (wrapper, kernel) in [
        (vec![], true),
        (
            vec![
                "setpriv",
                "--bounding-set=-bpf,-perfmon,-sys_admin",
                "--inh-caps=-bpf,-perfmon,-sys_admin",
            ],
            false,
        ),
    ] {
        // Nobody listens there: the agent polls and buffers.
        let agent = AgentProcess::start_wrapped(
            &wrapper,
            "http://127.0.0.1:9",
            &[
                "--host",
                "kfilt-host",
                "--interval",
                "200ms",
                "--metrics-listen",
                "127.0.0.1:0",
            ],
        );
        let addr = wait_for("the agent's metrics address", DEADLINE, || {
            agent.metrics_addr()
        });
        let figures = wait_for("a few polls", DEADLINE, || {
            let f = series(&scrape(addr));
            (f.get("tcpstall_agent_polls_total").copied().unwrap_or(0.0) >= 3.0).then_some(f)
        });
        let log = agent.log.lock().map(|l| l.join("\n")).unwrap_or_default();
        let passes = figures
            .get("tcpstall_agent_kernel_filter_passes_total")
            .copied()
            .unwrap_or(-1.0);
        if kernel {
            assert!(
                passes >= 3.0,
                "every poll's first phase in the kernel: {passes}\n{log}"
            );
            assert!(log.contains("kernel filter loaded"), "{log}");
        } else {
            assert_eq!(passes, 0.0, "no BPF, no kernel phase\n{log}");
            assert!(
                log.contains("kernel filter not loaded") && log.contains("CAP_BPF"),
                "it says why: {log}"
            );
        }
        assert_eq!(
            figures
                .get("tcpstall_agent_kernel_filter_failures_total")
                .copied(),
            Some(0.0),
            "{log}"
        );
    }
}
