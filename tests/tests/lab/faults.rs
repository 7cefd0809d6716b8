//! Each fault, injected inside the hosts, gives exactly one episode with
//! the diagnosis docs/design.md's table names for it, both ends joined, and
//! evidence that matches what was injected.

use std::time::{Duration, SystemTime};

use tcpstall_tests::lab::workload::{Pace, Reader, Rpc, Writer};
use tcpstall_tests::lab::{evidence, Lab, Outcome, Settings};
use tcpstall_tests::{require_root, wait_for};

use crate::{expect_one, expect_one_with_b, latest_a, record, scenario, RESPONSE};

const HOSTS: &[&str] = &["client", "server"];

/// The client asks, the server has read the request and not answered yet.
fn asked(lab: &Lab) -> (Rpc, u64) {
    let mut rpc = Rpc::open(lab.host("client"), lab.host("server"));
    let len = rpc.request(RESPONSE);
    assert_eq!(len, RESPONSE);
    (rpc, len)
}

/// The client's application hangs once it has asked; the server answers.
pub(crate) fn client_stops_reading(lab: &Lab) -> (Rpc, Reader, Writer, SystemTime) {
    let (rpc, len) = asked(lab);
    let reader = rpc.read(Pace::Paused);
    let fault = SystemTime::now();
    let writer = rpc.respond(len);
    (rpc, reader, writer, fault)
}

fn peer_not_reading(settings: Settings, scenario: &str) {
    let lab = Lab::start(HOSTS, settings);
    let (rpc, reader, writer, fault) = client_stops_reading(&lab);

    let (e, _, detected) = expect_one(&lab, &rpc, "peer_not_reading", fault);
    let ev = |n| evidence(&e, n);
    assert_eq!(ev("a_snd_wnd"), 0, "A sees a zero window");
    assert_eq!(ev("b_rcv_wnd"), 0, "B advertises a zero window");
    assert_eq!(e.rested_on, ["a_snd_wnd", "b_rcv_wnd"], "6.2+: the windows");
    assert!(e.missing.is_empty(), "nothing missing: {:?}", e.missing);
    // What kernels without the windows go by holds here too.
    assert_eq!(ev("a_probe_timer"), 1, "A's zero-window probe timer runs");
    assert!(ev("b_rmem_alloc") >= ev("b_rcvbuf") - ev("b_rcvbuf") / 8);
    assert_eq!(reader.got(), 0);
    assert_eq!(ev("b_copied"), 0, "B's application read nothing");
    assert_eq!(
        ev("b_recvq"),
        ev("a_snd_una"),
        "all A got acknowledged sits unread in B"
    );
    assert_eq!(ev("b_rcv_nxt"), ev("a_snd_una"));
    assert_eq!(
        u64::try_from(ev("a_write_seq")).ok(),
        Some(writer.written()),
        "A's write_seq is what the server wrote"
    );
    // The operator sees the same.
    let listed = lab.cli(&["episodes", "--diagnosis", "peer_not_reading"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed:#}");
    assert_eq!(listed[0]["blame"], "B's application", "{listed:#}");
    assert_eq!(
        listed[0]["peer"]["b"]["host"],
        lab.host("client").name.as_str(),
        "{listed:#}"
    );
    record(
        scenario,
        "peer_not_reading",
        &e,
        detected,
        settings,
        format!(
            "B.recvq {} unread, both windows 0, A holds {}",
            ev("b_recvq"),
            ev("a_sendq")
        ),
    );
}

#[test]
fn receiver_that_stops_reading_is_peer_not_reading() {
    require_root!();
    peer_not_reading(Settings::FAST, "client stops reading");
}

#[test]
fn receiver_that_stops_reading_is_peer_not_reading_at_the_defaults() {
    require_root!();
    peer_not_reading(Settings::DEFAULTS, "client stops reading (defaults)");
}

/// Every segment of the server's answer reaches the client's host and
/// dies there (nft counter `data`): lost in the network, as far as the
/// server can tell.
pub(crate) fn server_data_dropped(lab: &Lab) -> (Rpc, Reader, Writer, SystemTime) {
    let (client, server) = (lab.host("client"), lab.host("server"));
    let (rpc, len) = asked(lab);
    let reader = rpc.read(Pace::Full);
    client.nft_rule(
        "input",
        &format!(
            "ip saddr {} tcp sport {}",
            server.addr,
            rpc.server_addr.port()
        ),
        "data",
    );
    let fault = SystemTime::now();
    let writer = rpc.respond(len);
    (rpc, reader, writer, fault)
}

fn data_dropped_on_the_way_is_data_lost(s: Settings) {
    let lab = Lab::start(HOSTS, s);
    let client = lab.host("client");
    let (rpc, reader, _writer, fault) = server_data_dropped(&lab);

    let (e, detail, detected) = expect_one(&lab, &rpc, "data_lost", fault);
    let ev = |n| evidence(&e, n);
    assert_eq!(reader.got(), 0, "nothing of the response arrived");
    let a = latest_a(&detail);
    let (backoff, total) = (a.backoff.unwrap_or(0), a.total_retrans.unwrap_or(0));
    assert!(
        total >= backoff && total > 0,
        "every RTO resent a segment: backoff {backoff}, total_retrans {total}"
    );
    assert_eq!(ev("a_snd_una"), 0, "nothing acknowledged");
    assert_eq!(ev("b_rcv_nxt"), 0, "B waits for exactly A's first byte");
    assert!(ev("a_inflight") > 0, "A has data in flight");
    assert!(
        ev("a_retransmits") > 0 || ev("a_backoff") > 0,
        "A is resending: {:?}",
        e.evidence
    );
    let dropped = client.nft_packets("data");
    assert!(dropped > 0, "the rule dropped the data");
    record(
        &scenario("server's data dropped", s),
        "data_lost",
        &e,
        detected,
        s,
        format!(
            "A.snd_una = B.rcv_nxt = 0, {} in flight, backoff {backoff}, total_retrans {total}; {dropped} segments dropped",
            ev("a_inflight"),
        ),
    );
}

/// Everything the client sends back (its ACKs) dies at the server (nft
/// counter `acks`).
pub(crate) fn client_acks_dropped(lab: &Lab) -> (Rpc, Reader, Writer, SystemTime) {
    let (client, server) = (lab.host("client"), lab.host("server"));
    let (rpc, len) = asked(lab);
    let reader = rpc.read(Pace::Full);
    server.nft_rule(
        "input",
        &format!(
            "ip saddr {} tcp sport {} tcp dport {}",
            client.addr,
            rpc.client_addr.port(),
            rpc.server_addr.port()
        ),
        "acks",
    );
    let fault = SystemTime::now();
    let writer = rpc.respond(len);
    (rpc, reader, writer, fault)
}

fn acks_dropped_on_the_way_back_is_ack_lost(s: Settings) {
    let lab = Lab::start(HOSTS, s);
    let server = lab.host("server");
    let (rpc, reader, _writer, fault) = client_acks_dropped(&lab);

    let (e, _, detected) = expect_one(&lab, &rpc, "ack_lost", fault);
    let ev = |n| evidence(&e, n);
    let received = reader.got();
    assert!(received > 0, "the client got part of the response");
    assert_eq!(ev("a_snd_una"), 0, "no ACK reached the server");
    assert_eq!(
        ev("b_rcv_nxt") - ev("a_snd_una"),
        ev("acked_not_seen"),
        "evidence is consistent"
    );
    assert_eq!(
        u64::try_from(ev("acked_not_seen")).ok(),
        Some(received),
        "B.rcv_nxt - A.snd_una is what the client received"
    );
    assert_eq!(
        ev("acked_not_seen"),
        ev("a_inflight"),
        "... and what A still waits to hear about"
    );
    let dropped = server.nft_packets("acks");
    assert!(dropped > 0, "the rule dropped the ACKs");
    // The operator sees the same.
    let shown = lab.cli(&["show", &e.id.to_string()]);
    assert_eq!(shown["diagnosis"], "ack_lost", "{shown:#}");
    assert_eq!(shown["blame"], "the network from B to A", "{shown:#}");
    assert_eq!(
        shown["evidence"]["acked_not_seen"].as_u64(),
        Some(received),
        "{shown:#}"
    );
    record(
        &scenario("client's ACKs dropped", s),
        "ack_lost",
        &e,
        detected,
        s,
        format!(
            "B.rcv_nxt - A.snd_una = {} = bytes the client read = A in flight; {dropped} ACKs dropped",
            ev("acked_not_seen")
        ),
    );
}

/// The client stops reading until its window closes; then window updates
/// (segments that open it: nft counter `updates`) die at the server, and
/// the client reads all it has.
pub(crate) fn window_updates_dropped(lab: &Lab) -> (Rpc, Reader, Writer, SystemTime) {
    let (client, server) = (lab.host("client"), lab.host("server"));
    let (rpc, len) = asked(lab);
    let reader = rpc.read(Pace::Paused);
    let writer = rpc.respond(len);
    wait_for(
        "the client's window closed",
        Duration::from_secs(10),
        || {
            let s = server.socket(rpc.server_addr, rpc.client_addr)?;
            (s.positions().snd_wnd == Some(0)).then_some(())
        },
    );
    // Only segments that open the window are dropped: zero-window
    // answers still pass.
    server.nft_rule(
        "input",
        &format!(
            "ip saddr {} tcp sport {} tcp window != 0",
            client.addr,
            rpc.client_addr.port()
        ),
        "updates",
    );
    let fault = SystemTime::now();
    reader.resume();
    wait_for(
        "the client read all it had",
        Duration::from_secs(10),
        || {
            let c = client.socket(rpc.client_addr, rpc.server_addr)?;
            (c.rqueue == 0 && reader.got() > 0).then_some(())
        },
    );
    (rpc, reader, writer, fault)
}

fn window_update_dropped_while_closed_is_window_update_lost(s: Settings) {
    let lab = Lab::start(HOSTS, s);
    let server = lab.host("server");
    let (rpc, reader, _writer, fault) = window_updates_dropped(&lab);

    let (e, _, detected) = expect_one(&lab, &rpc, "window_update_lost", fault);
    let ev = |n| evidence(&e, n);
    assert_eq!(ev("a_snd_wnd"), 0, "A still sees the window closed");
    assert!(ev("b_rcv_wnd") > 0, "B has reopened it");
    assert_eq!(ev("b_recvq"), 0, "B's application drained it");
    assert_eq!(
        u64::try_from(ev("b_copied")).ok(),
        Some(reader.got()),
        "B.copied is what the client read"
    );
    assert_eq!(ev("b_rcv_nxt"), ev("a_snd_una"), "nothing in between lost");
    let dropped = server.nft_packets("updates");
    assert!(dropped > 0, "the rule dropped window updates");
    record(
        &scenario("window updates dropped while closed", s),
        "window_update_lost",
        &e,
        detected,
        s,
        format!(
            "A.snd_wnd 0, B.rcv_wnd {}, B.recvq 0; {dropped} updates dropped",
            ev("b_rcv_wnd")
        ),
    );
}

fn peer_that_lost_the_connection_is_half_open(s: Settings) {
    let lab = Lab::start(HOSTS, s);
    let (client, server) = (lab.host("client"), lab.host("server"));
    let (rpc, len) = asked(&lab);
    // The client's host forgets the connection without a word reaching
    // the server: its resets are dropped on the way out.
    client.nft_rule(
        "output",
        &format!(
            "ip daddr {} tcp dport {} tcp flags & rst == rst",
            server.addr,
            rpc.server_addr.port()
        ),
        "resets",
    );
    client.exec(
        "ss",
        &[
            "-K",
            "dst",
            &server.addr.to_string(),
            "dport",
            "=",
            &rpc.server_addr.port().to_string(),
        ],
    );
    wait_for("the client's socket gone", Duration::from_secs(5), || {
        client
            .socket(rpc.client_addr, rpc.server_addr)
            .is_none()
            .then_some(())
    });
    let fault = SystemTime::now();
    let _writer = rpc.respond(len);

    let (e, detail, detected) = expect_one(&lab, &rpc, "half_open", fault);
    assert!(
        e.peer_note.contains("no such socket"),
        "the peer's host says so: {e:#?}"
    );
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
        &scenario("client's socket killed (ss -K), its resets dropped", s),
        "half_open",
        &e,
        detected,
        s,
        format!("{}; {dropped} resets dropped", e.peer_note),
    );
}

/// The server's queue takes nothing: every packet is refused at enqueue,
/// so TCP keeps the data as not sent and probes every half second or so.
pub(crate) fn refusing_qdisc(lab: &Lab) -> (Rpc, Reader, Writer, SystemTime) {
    let server = lab.host("server");
    let (rpc, len) = asked(lab);
    let reader = rpc.read(Pace::Full);
    server.tc(&[
        "qdisc", "replace", "dev", "eth0", "root", "pfifo", "limit", "0",
    ]);
    let fault = SystemTime::now();
    let writer = rpc.respond(len);
    (rpc, reader, writer, fault)
}

#[test]
fn qdisc_that_drops_everything_is_unsent_unblocked() {
    require_root!();
    let s = Settings::FAST;
    let lab = Lab::start(HOSTS, s);
    let server = lab.host("server");
    let (rpc, reader, _writer, fault) = refusing_qdisc(&lab);
    let (e, _, detected) = expect_one(&lab, &rpc, "unsent_unblocked", fault);
    let ev = |n| evidence(&e, n);
    assert_eq!(reader.got(), 0);
    assert_eq!(ev("a_inflight"), 0, "nothing in flight");
    assert!(ev("a_notsent") > 0, "bytes not sent");
    assert_eq!(ev("a_notsent"), ev("a_sendq"), "nothing of it sent");
    assert!(ev("a_snd_wnd") > 0, "the window is open");
    assert_eq!(ev("b_rcv_nxt"), ev("a_snd_una"));
    let stats = server.tc(&["-s", "qdisc", "show", "dev", "eth0"]);
    assert!(
        !stats.contains("dropped 0,"),
        "the qdisc dropped packets: {stats}"
    );
    record(
        "server's qdisc takes nothing (pfifo limit 0)",
        "unsent_unblocked",
        &e,
        detected,
        s,
        format!(
            "A.notsent {} = sendq, in flight 0, window {}",
            ev("a_notsent"),
            ev("a_snd_wnd")
        ),
    );
}

/// At the defaults the same fault ends before the threshold: the kernel
/// gives up on the connection after tcp_retries2 (15) unanswered local
/// probes, about 7 s here, and resets it. No episode then; the hold is
/// counted, ended by `reset`, and the operator sees it by host pair.
#[test]
fn qdisc_that_drops_everything_at_the_defaults_is_reset_by_the_kernel_and_counted() {
    require_root!();
    let s = Settings::DEFAULTS;
    let lab = Lab::start(HOSTS, s);
    let (rpc, _reader, _writer, _) = refusing_qdisc(&lab);
    let server = lab.host("server");
    wait_for(
        "the kernel to give up on the connection",
        Duration::from_secs(20),
        || {
            server
                .socket(rpc.server_addr, rpc.client_addr)
                .is_none()
                .then_some(())
        },
    );
    let reset = "tcpstall_collector_held_seconds_count{ended=\"reset\"}";
    let m = wait_for("the hold counted", Duration::from_secs(5), || {
        let m = lab.metrics();
        (m.get(reset).copied() == Some(1.0)).then_some(m)
    });
    let sum = m
        .get("tcpstall_collector_held_seconds_sum{ended=\"reset\"}")
        .copied()
        .unwrap_or(0.0);
    assert!((5.0..10.0).contains(&sum), "held {sum} s: {m:?}");
    crate::assert_no_episode_for(&lab, s.interval, "a stall the kernel reset at 7 s");
    Outcome {
        scenario: "server's qdisc takes nothing (pfifo limit 0) (defaults)",
        expected: "no episode: reset by the kernel first",
        observed: "none; counted reset",
        detected: None,
        settings: s,
        note: format!("held {sum:.1} s, then tcp_retries2 local probes ended it"),
    }
    .record();
}

fn qdisc_that_holds_packets_looks_like_data_lost(s: Settings) {
    let lab = Lab::start(HOSTS, s);
    let server = lab.host("server");
    let (rpc, len) = asked(&lab);
    let reader = rpc.read(Pace::Full);
    // A queue that takes packets and passes next to nothing: one byte a
    // second once its first 3000-byte burst is spent. TCP counts what it
    // holds as sent, so this is not DESIGN's unsent_unblocked.
    server.tc(&[
        "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", "8bit", "burst", "3000", "limit",
        "1000000",
    ]);
    let fault = SystemTime::now();
    let _writer = rpc.respond(len);

    let (e, detail, detected) = expect_one(&lab, &rpc, "data_lost", fault);
    let ev = |n| evidence(&e, n);
    assert!(
        ev("a_inflight") > 0,
        "what the qdisc holds counts as in flight"
    );
    assert_eq!(
        ev("b_rcv_nxt"),
        ev("a_snd_una"),
        "B waits for A's next byte"
    );
    assert_eq!(
        u64::try_from(ev("b_rcv_nxt")).ok(),
        Some(reader.got()),
        "B got only the burst"
    );
    let stats = server.tc(&["-s", "qdisc", "show", "dev", "eth0"]);
    assert!(
        !stats.contains("backlog 0b"),
        "the packets sit in the server's qdisc: {stats}"
    );
    // What would tell it from loss in the network: RTOs that found the
    // segment still in the host's queue retransmitted nothing.
    let a = latest_a(&detail);
    let (backoff, total) = (a.backoff.unwrap_or(0), a.total_retrans.unwrap_or(0));
    assert!(
        backoff > total,
        "more RTOs ({backoff}) than retransmissions ({total})"
    );
    record(
        &scenario("server's qdisc holds packets (tbf 8bit/s)", s),
        "unsent_unblocked (DESIGN), data_lost (tcp_info)",
        &e,
        detected,
        s,
        format!(
            "{} in flight inside the server's qdisc, B.rcv_nxt = A.snd_una = {}; backoff {backoff} > total_retrans {total}",
            ev("a_inflight"),
            ev("a_snd_una")
        ),
    );
}

fn peer_without_an_agent_is_peer_unmonitored(s: Settings) {
    let lab = Lab::start_unmonitored(HOSTS, &["client"], s);
    let client = lab.host("client");
    let (rpc, len) = asked(&lab);
    let _reader = rpc.read(Pace::Paused);
    let fault = SystemTime::now();
    let _writer = rpc.respond(len);

    let (e, detail, detected) = expect_one_with_b(&lab, &rpc, "peer_unmonitored", fault, "");
    assert!(
        e.evidence.keys().all(|k| !k.starts_with("b_")),
        "nothing of B: {:?}",
        e.evidence
    );
    assert!(!detail.samples.iter().any(|x| x.side == "b"));
    assert_eq!(evidence(&e, "a_snd_wnd"), 0, "A alone: a zero window");
    assert!(
        e.summary.contains(&client.addr.to_string()) && e.summary.contains("zero window"),
        "says whom no agent covers and what A alone shows: {}",
        e.summary
    );
    record(
        &scenario("client runs no agent, stops reading", s),
        "peer_unmonitored",
        &e,
        detected,
        s,
        e.summary.clone(),
    );
}

at_both_settings!(data_dropped_on_the_way_is_data_lost:
    data_dropped_on_the_way_is_data_lost_fast, data_dropped_on_the_way_is_data_lost_at_the_defaults);
at_both_settings!(acks_dropped_on_the_way_back_is_ack_lost:
    acks_dropped_on_the_way_back_is_ack_lost_fast, acks_dropped_on_the_way_back_is_ack_lost_at_the_defaults);
at_both_settings!(window_update_dropped_while_closed_is_window_update_lost:
    window_update_dropped_while_closed_is_window_update_lost_fast,
    window_update_dropped_while_closed_is_window_update_lost_at_the_defaults);
at_both_settings!(peer_that_lost_the_connection_is_half_open:
    peer_that_lost_the_connection_is_half_open_fast, peer_that_lost_the_connection_is_half_open_at_the_defaults);
at_both_settings!(qdisc_that_holds_packets_looks_like_data_lost:
    qdisc_that_holds_packets_looks_like_data_lost_fast,
    qdisc_that_holds_packets_looks_like_data_lost_at_the_defaults);
at_both_settings!(peer_without_an_agent_is_peer_unmonitored:
    peer_without_an_agent_is_peer_unmonitored_fast, peer_without_an_agent_is_peer_unmonitored_at_the_defaults);
