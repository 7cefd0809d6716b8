//! The agent's conntrack lookups end to end (issue 23): a real
//! `tcpstall-agent run` reading a test namespace that translates with an
//! nftables DNAT, streaming to a collector that records what arrives and
//! asks what a collector would (watch, translate).
//!
//! Every wait is on a condition with a deadline; namespaces, the agent and
//! the recorder are removed by guards, whether the test passes or fails.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use tcpstall_agent::netns::Netns;
use tcpstall_common::{FlowTuple, Translation};
use tcpstall_proto::convert::{
    endpoint_from_wire, flow_from_wire, flow_to_wire, translation_from_wire,
};
use tcpstall_proto::v1::{self, collector_message};
use tcpstall_tests::recorder::{self, Recorder};
use tcpstall_tests::{require_root, run, scrape_until, series, wait_for, AgentProcess, TestNetns};

use crate::conntrack::dnat_namespace;
use crate::fill;

/// Generous: a debug agent on a busy machine polls slowly.
const DEADLINE: Duration = Duration::from_secs(60);
/// The service address, DNATed to a listener on loopback.
const VIP: &str = "198.18.0.1:80";

/// A namespace where [`VIP`] is DNATed to a listener on 127.0.0.1, and a
/// client connected through it (the accepted server socket kept, never
/// read).
struct Dnat {
    ns: TestNetns,
    real: SocketAddr,
    client: TcpStream,
    _server: TcpStream,
    _listener: TcpListener,
    /// The client's socket: `client -> VIP`.
    flow: FlowTuple,
}

fn through_dnat(tag: &str) -> Dnat {
    let vip: SocketAddr = VIP.parse().expect("vip");
    let (ns, listener, real) = dnat_namespace(tag, "ip", "198.18.0.0/24", "127.0.0.1", vip);
    let (client, server) = ns.enter(|| {
        let client = TcpStream::connect(vip).expect("connect to the VIP");
        let (server, _) = listener.accept().expect("accept");
        (client, server)
    });
    let flow = FlowTuple::new(client.local_addr().expect("client addr"), vip);
    Dnat {
        ns,
        real,
        client,
        _server: server,
        _listener: listener,
        flow,
    }
}

/// The DNAT's entry as the client's socket gives it.
fn check_dnat(t: &Translation, d: &Dnat) {
    assert!(t.dst_nat && !t.src_nat, "{t}");
    assert_eq!(t.original, d.flow);
    assert_eq!(t.reply, FlowTuple::new(d.real, d.flow.local));
}

/// An agent polling `ns` every 200 ms, streaming to `rec`, serving its
/// metrics.
fn agent(rec: &Recorder, ns: &TestNetns) -> AgentProcess {
    AgentProcess::start(
        &rec.url(),
        &[
            "--netns",
            &ns.name,
            "--interval",
            "200ms",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )
}

fn metrics(agent: &AgentProcess) -> SocketAddr {
    wait_for("the agent's metrics address", DEADLINE, || {
        agent.metrics_addr()
    })
}

fn flow(f: Option<&v1::FlowTuple>) -> FlowTuple {
    flow_from_wire(f).expect("a valid flow")
}

/// A sample's flow: local -> remote.
fn sample_flow(s: &v1::Sample) -> Option<FlowTuple> {
    let local = endpoint_from_wire(s.local.as_ref(), "local").ok()?;
    let remote = endpoint_from_wire(s.remote.as_ref(), "remote").ok()?;
    Some(FlowTuple::new(local, remote))
}

/// A Lookup as the domain has it: (flow, translation, connected_to, asked).
type Said = (FlowTuple, Option<Translation>, Option<SocketAddr>, bool);

fn said(l: &v1::Lookup) -> Said {
    (
        flow(l.flow.as_ref()),
        l.translation
            .as_ref()
            .map(|t| translation_from_wire(t).expect("a valid translation")),
        l.connected_to
            .as_ref()
            .map(|e| endpoint_from_wire(Some(e), "connected_to").expect("a valid endpoint")),
        l.asked,
    )
}

/// Every Lookup received so far about `f`.
fn lookups_of(msgs: &[v1::AgentMessage], f: FlowTuple) -> Vec<Said> {
    recorder::batches(msgs)
        .flat_map(|b| &b.lookups)
        .map(said)
        .filter(|l| l.0 == f)
        .collect()
}

/// Batches that reported `f` absent.
fn absent_in(msgs: &[v1::AgentMessage], f: FlowTuple) -> usize {
    recorder::batches(msgs)
        .filter(|b| b.absent.iter().any(|a| flow(Some(a)) == f))
        .count()
}

fn watch(rec: &Recorder, f: FlowTuple) {
    rec.send(collector_message::Body::Watch(v1::Watch {
        flow: Some(flow_to_wire(f)),
        ..v1::Watch::default()
    }));
}

fn translate(rec: &Recorder, f: FlowTuple) {
    rec.send(collector_message::Body::Translate(v1::Translate {
        flow: Some(flow_to_wire(f)),
    }));
}

/// Waits for the agent's stream (its Hello).
fn hello(rec: &Recorder) -> v1::Hello {
    rec.wait("the agent's hello", DEADLINE, |m| {
        recorder::hello(m).cloned()
    })
}

/// A client stuck behind its namespace's DNAT (the server never reads) is
/// sent as a suspect with its conntrack entry, looked up once however
/// many polls send it.
#[test]
fn a_stuck_client_behind_a_dnat_is_sent_with_its_translation() {
    require_root!();
    let mut d = through_dnat("xl-stuck");
    fill(&mut d.client);
    let rec = Recorder::start();
    let agent = agent(&rec, &d.ns);
    let suspect_sends = |msgs: &[v1::AgentMessage]| -> Vec<Option<Translation>> {
        recorder::batches(msgs)
            .flat_map(|b| &b.samples)
            .filter(|s| s.reason == v1::SampleReason::Suspect as i32)
            .filter(|s| sample_flow(s) == Some(d.flow))
            .map(|s| {
                s.translation
                    .as_ref()
                    .map(|t| translation_from_wire(t).expect("valid"))
            })
            .collect()
    };
    let sends = rec.wait("the client sent as a suspect six times", DEADLINE, |m| {
        let s = suspect_sends(m);
        (s.len() >= 6).then_some(s)
    });
    for t in &sends {
        let t = t
            .as_ref()
            .expect("every suspect sample carries the translation");
        check_dnat(t, &d);
    }
    let figures = series(&tcpstall_tests::scrape(metrics(&agent)));
    let get = |k: &str| figures.get(k).copied().unwrap_or(f64::NAN);
    assert_eq!(
        get("tcpstall_agent_probe_available{probe=\"conntrack\"}"),
        1.0
    );
    assert_eq!(get("tcpstall_agent_conntrack_unreadable_namespaces"), 0.0);
    assert!(
        get("tcpstall_agent_conntrack_translated_total") >= 1.0,
        "{figures:?}"
    );
    // One lookup in the socket's life (two if its hold restarted once),
    // not one a poll.
    let lookups = get("tcpstall_agent_conntrack_lookups_total");
    assert!(
        (1.0..=2.0).contains(&lookups),
        "{lookups} lookups for {} sends",
        sends.len()
    );
    assert!(agent.logged(&["connection tracking readable"]));
}

/// A watched flow with no socket here that this host's conntrack holds
/// (the server's end as the client sees it: the VIP, before the DNAT)
/// gets one Lookup with the entry, beside its absence, and no more while
/// the answer stays the same.
#[test]
fn a_watched_flow_absent_here_but_held_by_conntrack_gets_its_translation() {
    require_root!();
    let d = through_dnat("xl-absent");
    let rec = Recorder::start();
    let _agent = agent(&rec, &d.ns);
    hello(&rec);
    let w = d.flow.reversed();
    watch(&rec, w);
    let first = rec.wait("a lookup about the watched flow", DEADLINE, |m| {
        lookups_of(m, w).first().copied()
    });
    let (_, t, connected_to, asked) = first;
    check_dnat(&t.expect("the entry"), &d);
    assert_eq!(connected_to, None, "no socket on the VIP");
    assert!(!asked);
    rec.wait("five more absences", DEADLINE, |m| {
        (absent_in(m, w) >= 6).then_some(())
    });
    rec.seen(|m| {
        assert_eq!(
            lookups_of(m, w).len(),
            1,
            "said once while it says the same"
        );
        // The lookup came in the first batch that said the flow absent.
        let first = recorder::batches(m)
            .find(|b| b.absent.iter().any(|a| flow(Some(a)) == w))
            .expect("an absence");
        assert_eq!(first.lookups.len(), 1);
    });
}

/// A watched flow whose local endpoint has exactly one socket, talking to
/// someone else (a translation on the way this host does not hold), gets
/// a Lookup naming that remote; an endpoint a listener shares between two
/// connections says nothing.
#[test]
fn connected_to_names_the_one_socket_on_an_endpoint_not_a_listeners_shared_one() {
    require_root!();
    let ns = TestNetns::new("xl-endpoint");
    let (one, one_conns, shared, _shared_conns) = ns.enter(|| {
        let one = TcpListener::bind("127.0.0.1:0").expect("bind");
        let shared = TcpListener::bind("127.0.0.1:0").expect("bind");
        let connect = |l: &TcpListener| {
            let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
            let (s, _) = l.accept().expect("accept");
            (c, s)
        };
        let one_conns = vec![connect(&one)];
        let shared_conns = vec![connect(&shared), connect(&shared)];
        (one, one_conns, shared, shared_conns)
    });
    let client = one_conns[0].0.local_addr().expect("client addr");
    // The far end as the suspect's host sees it: an address nobody here
    // has (a NAT gateway's, say).
    let far = |port| SocketAddr::from(([198, 18, 0, 77], port));
    let w_one = FlowTuple::new(one.local_addr().expect("addr"), far(5555));
    let w_shared = FlowTuple::new(shared.local_addr().expect("addr"), far(5556));
    let rec = Recorder::start();
    let _agent = agent(&rec, &ns);
    hello(&rec);
    watch(&rec, w_one);
    watch(&rec, w_shared);
    let got = rec.wait("a lookup about the uniquely held endpoint", DEADLINE, |m| {
        lookups_of(m, w_one).first().copied()
    });
    assert_eq!(got, (w_one, None, Some(client), false));
    rec.wait(
        "the shared endpoint's flow absent three times",
        DEADLINE,
        |m| (absent_in(m, w_shared) >= 3).then_some(()),
    );
    rec.seen(|m| {
        assert_eq!(
            lookups_of(m, w_shared),
            Vec::new(),
            "two sockets: nothing said"
        );
    });
}

/// Translate requests are answered once each, at the next poll: with the
/// entry when the flow (or its reverse) is tracked translated, without
/// one when it is not.
#[test]
fn a_translate_request_is_answered_once_found_or_not() {
    require_root!();
    let d = through_dnat("xl-ask");
    let rec = Recorder::start();
    let agent = agent(&rec, &d.ns);
    hello(&rec);
    // The server's socket (the entry's reply direction) and a flow no
    // table holds.
    let server = FlowTuple::new(d.real, d.flow.local);
    let unknown = FlowTuple::new(
        SocketAddr::from(([198, 18, 0, 99], 1)),
        SocketAddr::from(([198, 18, 0, 98], 2)),
    );
    translate(&rec, server);
    translate(&rec, unknown);
    let answered_at = rec.wait("both answers", DEADLINE, |m| {
        let (a, b) = (lookups_of(m, server), lookups_of(m, unknown));
        (!a.is_empty() && !b.is_empty()).then(|| recorder::polls(m))
    });
    rec.wait("five more polls", DEADLINE, |m| {
        (recorder::polls(m) >= answered_at + 5).then_some(())
    });
    rec.seen(|m| {
        let found = lookups_of(m, server);
        assert_eq!(found.len(), 1, "once: {found:?}");
        let (_, t, connected_to, asked) = found[0];
        check_dnat(&t.expect("the entry"), &d);
        assert_eq!((connected_to, asked), (None, true));
        assert_eq!(lookups_of(m, unknown), vec![(unknown, None, None, true)]);
    });
    scrape_until(metrics(&agent), "two requests answered", DEADLINE, |get| {
        get("tcpstall_agent_translate_requests_total{outcome=\"answered\"}") == 2.0
            && get("tcpstall_agent_translate_requests_total{outcome=\"dropped\"}") == 0.0
    });
}

/// The Hello says the agent answers lookups, and whether the host
/// forwards as its own /proc/sys says.
#[test]
fn the_hello_says_it_answers_lookups_and_whether_the_host_forwards() {
    require_root!();
    let ns = TestNetns::new("xl-hello");
    let rec = Recorder::start();
    let _agent = agent(&rec, &ns);
    let h = hello(&rec);
    assert!(h.answers_lookups);
    let host = tcpstall_agent::netns::host().expect("the host's namespace");
    let on = |path: &str| {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.trim().parse::<u32>().is_ok_and(|v| v != 0)
    };
    if host.inode == tcpstall_agent::netns::current().expect("own").inode {
        let forwards =
            on("/proc/sys/net/ipv4/ip_forward") || on("/proc/sys/net/ipv6/conf/all/forwarding");
        assert_eq!(h.forwards, forwards);
    }
}

/// Forwarding is read in the namespace asked about, not the caller's.
#[test]
fn forwarding_is_read_in_the_namespace_asked_about() {
    require_root!();
    let ns = TestNetns::new("xl-fwd");
    let netns = Netns {
        label: ns.name.clone(),
        inode: std::fs::metadata(ns.path())
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .expect("namespace inode"),
        path: Some(ns.path()),
    };
    let set = |key: &str, v: &str| {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &ns.name,
                "sysctl",
                "-qw",
                &format!("{key}={v}"),
            ],
        );
    };
    set("net.ipv4.ip_forward", "0");
    set("net.ipv6.conf.all.forwarding", "0");
    assert!(!tcpstall_agent::translate::forwards(&netns).expect("read"));
    set("net.ipv6.conf.all.forwarding", "1");
    assert!(tcpstall_agent::translate::forwards(&netns).expect("read"));
    set("net.ipv6.conf.all.forwarding", "0");
    set("net.ipv4.ip_forward", "1");
    assert!(tcpstall_agent::translate::forwards(&netns).expect("read"));
}

/// Without CAP_NET_ADMIN ctnetlink refuses every request: the agent says
/// so once, counts it, and goes on sending its suspects without
/// translations.
#[test]
fn without_ctnetlink_the_agent_goes_on_without_translations() {
    require_root!();
    let mut c = crate::Conn::open("127.0.0.1:0");
    fill(&mut c.client);
    let mine = FlowTuple::new(c.client_addr, c.server_addr);
    let rec = Recorder::start();
    // Its own namespace only: entering another needs CAP_SYS_ADMIN, which
    // it keeps; ctnetlink needs CAP_NET_ADMIN, which it does not.
    let agent = AgentProcess::start_wrapped(
        &["setpriv", "--bounding-set=-net_admin", "--inh-caps=-all"],
        &rec.url(),
        &["--interval", "200ms", "--metrics-listen", "127.0.0.1:0"],
    );
    let sent = rec.wait("the stuck client sent three times", DEADLINE, |m| {
        let sent: Vec<bool> = recorder::batches(m)
            .flat_map(|b| &b.samples)
            .filter(|s| sample_flow(s) == Some(mine))
            .map(|s| s.translation.is_some())
            .collect();
        (sent.len() >= 3).then_some(sent)
    });
    assert!(sent.iter().all(|t| !t), "no translation: {sent:?}");
    let figures = series(&tcpstall_tests::scrape(metrics(&agent)));
    let get = |k: &str| figures.get(k).copied().unwrap_or(f64::NAN);
    assert_eq!(
        get("tcpstall_agent_probe_available{probe=\"conntrack\"}"),
        0.0
    );
    assert!(
        get("tcpstall_agent_conntrack_unreadable_namespaces") >= 1.0,
        "{figures:?}"
    );
    assert_eq!(get("tcpstall_agent_conntrack_lookups_total"), 0.0);
    let warned = agent
        .log
        .lock()
        .map(|l| {
            l.iter()
                .filter(|line| line.contains("connection tracking cannot be read"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(warned, 1, "said once");
}
