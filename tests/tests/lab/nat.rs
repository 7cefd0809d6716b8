//! Issue 23: both ends joined through NAT. Each shape of translation the
//! issue names, built inside the lab's hosts with nftables: a service
//! address on the client's host DNATed to the server (kube-proxy's shape,
//! IPv4 and IPv6), masquerade on the client's host to an address it gained
//! after its agent started, a port-forward on the server's host into a
//! container behind a bridge, and a NAT gateway between a client network
//! and a server network, with an agent and without one.
//!
//! In each, a client that stops reading is `peer_not_reading` and one
//! network fault is `ack_lost` or `data_lost`, with B joined (the
//! episode's B is the client's host), the translation carried by the
//! samples of the end whose host translated (and by no other), and no
//! other episode; a `half_open` on the way fails at once. Controls: a
//! healthy bulk transfer through each shape opens nothing, and a client
//! whose socket was really killed behind a DNAT is still `half_open`.
//!
//! And an address two hosts hold, one of them in a container namespace
//! its agent reads ([`two_holders`]): B is the host with the socket,
//! whichever agent said hello last.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use tcpstall_common::{FlowTuple, Translation};
use tcpstall_proto::{convert, v1};
use tcpstall_tests::lab::net::Host;
use tcpstall_tests::lab::workload::{Pace, Rpc};
use tcpstall_tests::lab::{evidence, flow_of, Lab, Outcome, Settings};

use crate::{assert_no_episode_for, expect_one_with_b, record, RESPONSE};

mod shapes;
mod two_holders;

const S: Settings = Settings::FAST;

/// The shapes' ports: a service address's port 80 leads to a server on
/// 8080; a container serving on 80 is published on its host's 8080
/// (`-p 8080:80`); untranslated servers listen on 8080.
const REAL_PORT: u16 = 8080;
const SERVICE_PORT: u16 = 80;

/// Where an end's socket is.
#[derive(Debug, Clone, Copy)]
enum Place {
    /// In the namespace of its host.
    Host,
    /// In the first container on its host.
    Container,
}

/// Which end's host holds the connection's translation in its conntrack
/// table: its samples carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TranslatedAt {
    /// The server's host (A's).
    A,
    /// The client's host (B's).
    B,
    /// A host between them (a gateway): neither end's samples carry one.
    Between,
    /// Nowhere: nothing is translated (an address held twice).
    Nowhere,
}

/// A lab whose client (on the host `client`) reaches its server (on the
/// host `server`) through a translation, or to an address some other host
/// holds too.
struct Shape {
    lab: Lab,
    client_in: Place,
    server_in: Place,
    /// Where the server listens.
    listen: SocketAddr,
    /// What the client dials.
    dial: SocketAddr,
    /// Another way through the same translation (the other IP family's
    /// listen and dial), when the shape has one.
    also: Option<(SocketAddr, SocketAddr)>,
    /// The address the server sees the client at, when a translation
    /// rewrites the client's (masquerade).
    client_seen_at: Option<IpAddr>,
    translated_at: TranslatedAt,
    /// B's host as the episode must name it ("" when no agent covers
    /// the address the server sees).
    b_host: String,
}

impl Shape {
    fn end(&self, role: &str, place: Place) -> &Host {
        match place {
            Place::Host => self.lab.host(role),
            Place::Container => self.lab.net.container(role),
        }
    }

    fn client(&self) -> &Host {
        self.end("client", self.client_in)
    }

    fn server(&self) -> &Host {
        self.end("server", self.server_in)
    }

    /// A connection from the client to the server through the shape's
    /// translation, the request asked and read.
    fn asked(&self) -> (Rpc, u64) {
        let mut rpc = self.connect(self.listen, self.dial);
        let len = rpc.request(RESPONSE);
        assert_eq!(len, RESPONSE);
        (rpc, len)
    }

    /// A connection from the client dialling `dial` to the server
    /// listening on `listen`, translated on the way.
    fn connect(&self, listen: SocketAddr, dial: SocketAddr) -> Rpc {
        let listener = self.server().listen_at(listen);
        let rpc = Rpc::through(self.client(), listener, dial);
        assert_eq!(rpc.client_peer, dial, "the client sees what it dialled");
        assert_eq!(rpc.server_addr, listen, "the server its own address");
        let translated = rpc.client_peer != rpc.server_addr || rpc.server_peer != rpc.client_addr;
        assert_eq!(
            translated,
            self.translated_at != TranslatedAt::Nowhere,
            "the shape translates, or not: {rpc:?}"
        );
        if let Some(ip) = self.client_seen_at {
            assert_eq!(
                rpc.server_peer.ip(),
                ip,
                "the server sees the client at {ip}"
            );
        }
        rpc
    }

    /// The conntrack entry of `rpc` on the host that translated it: the
    /// first packet as the client sent it, the replies as the server sends
    /// them (one host translates in every shape).
    fn translation(&self, rpc: &Rpc) -> Translation {
        Translation {
            original: FlowTuple::new(rpc.client_addr, rpc.client_peer),
            reply: FlowTuple::new(rpc.server_addr, rpc.server_peer),
            src_nat: rpc.server_peer != rpc.client_addr,
            dst_nat: rpc.client_peer != rpc.server_addr,
        }
    }
}

/// The translation the samples of `side` carry: the latest one's, the
/// same on all of them that carry one.
fn translation_on(detail: &v1::GetEpisodeResponse, side: &str) -> Option<Translation> {
    let all: Vec<Translation> = detail
        .samples
        .iter()
        .filter(|x| x.side == side)
        .filter_map(|x| x.sample.as_ref()?.translation.as_ref())
        .map(|t| convert::translation_from_wire(t).expect("a well-formed translation"))
        .collect();
    if let Some(first) = all.first() {
        assert!(
            all.iter().all(|t| t == first),
            "one connection, one entry, on every {side} sample: {all:#?}"
        );
    }
    all.last().copied()
}

/// The episode names the translation on the samples of the end whose
/// host made it, and on no other.
fn assert_translation_named(shape: &Shape, rpc: &Rpc, detail: &v1::GetEpisodeResponse) {
    let want = shape.translation(rpc);
    let (a, b) = (translation_on(detail, "a"), translation_on(detail, "b"));
    let (want_a, want_b) = match shape.translated_at {
        TranslatedAt::A => (Some(want), None),
        TranslatedAt::B => (None, Some(want)),
        TranslatedAt::Between | TranslatedAt::Nowhere => (None, None),
    };
    assert_eq!(a, want_a, "A's samples' translation: {detail:#?}");
    if !shape.b_host.is_empty() {
        assert_eq!(b, want_b, "B's samples' translation: {detail:#?}");
    }
    // The episode names the translation that joined its ends and the host
    // whose conntrack held it: A's, B's, or the gateway's (none when the
    // gateway runs no agent, or nothing was translated).
    let by = match shape.translated_at {
        TranslatedAt::A => Some(shape.lab.host("server").name.clone()),
        TranslatedAt::B => Some(shape.lab.host("client").name.clone()),
        TranslatedAt::Between if !shape.b_host.is_empty() => {
            Some(shape.lab.host("gateway").name.clone())
        }
        TranslatedAt::Between | TranslatedAt::Nowhere => None,
    };
    let via = detail.episode.as_ref().and_then(|e| e.via.as_ref());
    let named = via.map(|v| {
        let t = v.translation.as_ref().expect("a via names its translation");
        let t = convert::translation_from_wire(t).expect("a well-formed translation");
        (v.host.clone(), t)
    });
    assert_eq!(
        named,
        by.map(|h| (h, want)),
        "the translation that joined the ends: {detail:#?}"
    );
}

/// What the operator's `tcpstall show --json` says of episode `e`: the
/// same diagnosis, and B on the same host.
fn assert_shown(shape: &Shape, e: &v1::Episode) {
    let shown = shape.lab.cli(&["show", &e.id.to_string()]);
    assert_eq!(shown["diagnosis"], e.diagnosis.as_str(), "{shown:#}");
    if !shape.b_host.is_empty() {
        assert_eq!(
            shown["peer"]["b"]["host"],
            shape.b_host.as_str(),
            "{shown:#}"
        );
    }
}

/// Waits for `want` on the server's flow, failing at once on a
/// `half_open` (a translation read as a lost connection), then asks of it
/// what every fault shows ([`expect_one_with_b`]).
fn expect_never_half_open(
    shape: &Shape,
    rpc: &Rpc,
    want: &str,
    fault: SystemTime,
) -> (v1::Episode, v1::GetEpisodeResponse, crate::Detection) {
    let lab = &shape.lab;
    let within = lab.settings.detection_bound() + Duration::from_secs(5);
    let deadline = Instant::now() + within;
    let flow = (rpc.server_addr, rpc.server_peer);
    loop {
        let eps = lab.episodes();
        if let Some(e) = eps.iter().find(|e| e.diagnosis == "half_open") {
            panic!("a false half_open (wanted {want}): {e:#?}");
        }
        if eps
            .iter()
            .any(|e| flow_of(e) == Some(flow) && e.diagnosis == want)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no {want} episode for {} -> {} within {within:?}; episodes: {eps:#?}",
            flow.0,
            flow.1
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    expect_one_with_b(lab, rpc, want, fault, &shape.b_host)
}

/// The client stops reading the response.
fn stalled_reader(shape: &Shape, scenario: &str) {
    let (rpc, len) = shape.asked();
    let reader = rpc.read(Pace::Paused);
    let fault = SystemTime::now();
    let _writer = rpc.respond(len);
    let want = if shape.b_host.is_empty() {
        "peer_unmonitored"
    } else {
        "peer_not_reading"
    };
    let (e, detail, detected) = expect_never_half_open(shape, &rpc, want, fault);
    assert_eq!(reader.got(), 0);
    assert_eq!(evidence(&e, "a_snd_wnd"), 0, "A sees a zero window");
    if want == "peer_not_reading" {
        assert_eq!(evidence(&e, "b_rcv_wnd"), 0, "B advertises a zero window");
        assert_eq!(evidence(&e, "b_copied"), 0, "B's application read nothing");
        assert_eq!(evidence(&e, "b_rcv_nxt"), evidence(&e, "a_snd_una"));
        assert_eq!(e.peer_note, "", "B joined, nothing missing: {e:#?}");
    } else {
        assert!(
            e.evidence.keys().all(|k| !k.starts_with("b_")),
            "nothing of B: {:?}",
            e.evidence
        );
    }
    assert_translation_named(shape, &rpc, &detail);
    assert_shown(shape, &e);
    record(
        scenario,
        want,
        &e,
        detected,
        S,
        format!("B = {:?}; {}", e.b_host, e.summary),
    );
}

/// What a network fault loses.
#[derive(Debug, Clone, Copy)]
enum Lose {
    /// Everything the client sends, at the server's door: `ack_lost`.
    Acks,
    /// Everything the server sends, at the client's door: `data_lost`.
    Data,
}

/// `nft` words matching packets to `to` (an end's own address: at a
/// host's input hook every translation of the packet's destination is
/// undone, which its source's may not yet be).
fn to(to: SocketAddr) -> String {
    let family = if to.is_ipv4() { "ip" } else { "ip6" };
    format!("{family} daddr {} tcp dport {}", to.ip(), to.port())
}

/// The client reads at full speed while `lose` loses one direction.
fn network_fault(shape: &Shape, lose: Lose, scenario: &str) {
    let (rpc, len) = shape.asked();
    let reader = rpc.read(Pace::Full);
    let (host, rule, mut want) = match lose {
        Lose::Acks => (shape.server(), to(rpc.server_addr), "ack_lost"),
        Lose::Data => (shape.client(), to(rpc.client_addr), "data_lost"),
    };
    host.nft_rule("input", &rule, "fault");
    if shape.b_host.is_empty() {
        want = "peer_unmonitored";
    }
    let fault = SystemTime::now();
    let _writer = rpc.respond(len);
    let (e, detail, detected) = expect_never_half_open(shape, &rpc, want, fault);
    let ev = |n| evidence(&e, n);
    assert_eq!(ev("a_snd_una"), 0, "nothing acknowledged");
    assert!(ev("a_inflight") > 0, "A has data in flight");
    match want {
        "ack_lost" => assert_eq!(
            u64::try_from(ev("acked_not_seen")).ok(),
            Some(reader.got()),
            "B.rcv_nxt - A.snd_una is what the client received"
        ),
        "data_lost" => {
            assert_eq!(reader.got(), 0, "nothing of the response arrived");
            assert_eq!(ev("b_rcv_nxt"), 0, "B waits for exactly A's first byte");
        }
        _ => {}
    }
    let dropped = host.nft_packets("fault");
    assert!(
        dropped > 0,
        "the rule dropped packets: {}",
        host.nft_ruleset()
    );
    assert_translation_named(shape, &rpc, &detail);
    assert_shown(shape, &e);
    record(
        scenario,
        want,
        &e,
        detected,
        S,
        format!("B = {:?}; {dropped} packets dropped", e.b_host),
    );
}

/// Transfers at full speed through the shape (each of its ways) for the
/// threshold, two polls and a second more: no episode.
fn healthy_bulk(shape: &Shape, scenario: &str) {
    let ways = std::iter::once((shape.listen, shape.dial)).chain(shape.also);
    let transfers: Vec<_> = ways
        .map(|(listen, dial)| {
            let mut rpc = shape.connect(listen, dial);
            let len = rpc.request(u64::MAX);
            let reader = rpc.read(Pace::Full);
            let writer = rpc.respond(len);
            (rpc, reader, writer)
        })
        .collect();
    let run = S.detection_bound() + Duration::from_secs(1);
    assert_no_episode_for(&shape.lab, run, scenario);
    let mut rates = Vec::new();
    for (rpc, reader, _) in &transfers {
        let mb = reader.got() as f64 / 1e6;
        assert!(
            mb > 10.0,
            "the transfer {} -> {} ran: {mb:.0} MB in {run:?}",
            rpc.client_addr,
            rpc.client_peer
        );
        rates.push(format!(
            "{:.0} MB/s over {}",
            mb / run.as_secs_f64(),
            if rpc.client_addr.is_ipv4() {
                "IPv4"
            } else {
                "IPv6"
            }
        ));
    }
    Outcome {
        scenario,
        expected: "no episode",
        observed: "none",
        detected: None,
        settings: S,
        note: rates.join(", "),
    }
    .record();
}

/// The shapes' namespaces (a gateway's, containers') go with the lab when
/// a test fails, as the hosts' do.
#[test]
fn shapes_leave_no_namespace_behind_when_a_test_panics() {
    tcpstall_tests::require_root!();
    let mut paths = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut net = tcpstall_tests::lab::net::Net::routed("client", "gateway", "server");
        net.add_container("server");
        net.add_container("server");
        paths.extend(net.hosts.iter().map(|h| h.ns.path()));
        paths.extend(net.containers.iter().map(|c| c.host.ns.path()));
        panic!("a test fails with its shape up");
    }));
    assert!(result.is_err());
    assert_eq!(paths.len(), 5, "three hosts and two containers");
    for path in &paths {
        assert!(!path.exists(), "{} left behind", path.display());
    }
}
