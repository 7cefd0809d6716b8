//! The sock_diag parser against a real capture, a live socket, the crate it
//! replaces for attributes, and arbitrary bytes.
//!
//! `fixtures/dump_6.18.bin` is what `tcpstall-agent capture` saved from a
//! fresh network namespace on kernel 6.18 while `fixtures/scenario.py` held
//! a known set of loopback connections (see `fixtures/README.md`). The
//! expectations below follow from that scenario, not from the parser.

use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};

use netlink_packet_core::{NlaBuffer, Parseable, NLMSG_DONE};
use netlink_packet_sock_diag::constants::{
    AF_INET, INET_DIAG_INFO, INET_DIAG_SKMEMINFO, SOCK_DIAG_BY_FAMILY,
};
use netlink_packet_sock_diag::inet::nlas::Nla;
use netlink_packet_sock_diag::inet::InetResponse;
use proptest::prelude::*;
use tcpstall_agent::diag::parse::{parse_chunk, parse_socket};
use tcpstall_agent::diag::{ChunkEnd, DiagSocket, Family, ParseStats};
use tcpstall_agent::poll::opened;
use tcpstall_common::tcp_info::{KNOWN_LEN, MIN_LEN};
use tcpstall_common::{Opened, SocketSample, TcpState};

static DUMP: &[u8] = include_bytes!("fixtures/dump_6.18.bin");
/// Messages in the dump: per family a listener, a client, a server, DONE.
const DUMP_MESSAGES: usize = 8;

// ---------------------------------------------------------------------------
// Splitting the file the way the kernel framed it, independently of the
// parser under test.

/// The netlink messages of `bytes`, each with its header, by `nlmsg_len`.
fn split_messages(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        assert!(
            len >= 16 && at + len <= bytes.len(),
            "bad nlmsg_len at {at}"
        );
        out.push(&bytes[at..at + len]);
        at += (len + 3) & !3;
    }
    out
}

fn nlmsg_type(msg: &[u8]) -> u16 {
    u16::from_ne_bytes(msg[4..6].try_into().expect("2 bytes"))
}

fn nlmsg_seq(msg: &[u8]) -> u32 {
    u32::from_ne_bytes(msg[8..12].try_into().expect("4 bytes"))
}

/// The dumps in the file: each is the messages up to and including DONE.
fn split_dumps(bytes: &[u8]) -> Vec<Vec<&[u8]>> {
    let mut dumps = vec![Vec::new()];
    for msg in split_messages(bytes) {
        let current = dumps.last_mut().expect("one dump at least");
        current.push(msg);
        if nlmsg_type(msg) == NLMSG_DONE {
            dumps.push(Vec::new());
        }
    }
    dumps.retain(|d| !d.is_empty());
    dumps
}

/// Parses the dump as the agent would, one chunk per message, with the seq
/// of each dump's first header. Checks each chunk ends as it should.
fn parse_dump() -> (Vec<SocketSample>, ParseStats) {
    let mut samples = Vec::new();
    let mut stats = ParseStats::default();
    for dump in split_dumps(DUMP) {
        let seq = nlmsg_seq(dump[0]);
        for (i, chunk) in dump.iter().enumerate() {
            let end = parse_chunk(chunk, seq, &mut stats, |s| samples.push(s));
            let last = i + 1 == dump.len();
            assert_eq!(end, if last { ChunkEnd::Done } else { ChunkEnd::More });
        }
    }
    (samples, stats)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn find<'a>(samples: &'a [SocketSample], local: &str, remote: &str) -> &'a SocketSample {
    let (local, remote) = (addr(local), addr(remote));
    let found: Vec<&SocketSample> = samples
        .iter()
        .filter(|s| s.local == local && s.remote == remote)
        .collect();
    assert_eq!(found.len(), 1, "{local} -> {remote}");
    found[0]
}

const V4_CLIENT: (&str, &str) = ("127.0.0.1:50001", "127.0.0.1:40001");
const V4_SERVER: (&str, &str) = ("127.0.0.1:40001", "127.0.0.1:50001");
const V6_CLIENT: (&str, &str) = ("[::1]:50002", "[::1]:40002");
const V6_SERVER: (&str, &str) = ("[::1]:40002", "[::1]:50002");
const CONNECTIONS: [(&str, &str); 4] = [V4_CLIENT, V4_SERVER, V6_CLIENT, V6_SERVER];

// ---------------------------------------------------------------------------
// The captured dump.

#[test]
fn dump_is_two_dumps_of_known_framing() {
    let dumps = split_dumps(DUMP);
    assert_eq!(dumps.len(), 2, "one dump per family");
    assert_eq!(dumps.iter().map(Vec::len).sum::<usize>(), DUMP_MESSAGES);
    // The capture's DiagSocket numbers its requests 1 (IPv4), 2 (IPv6).
    for (dump, seq) in dumps.iter().zip([1, 2]) {
        assert!(dump.iter().all(|m| nlmsg_seq(m) == seq));
        assert_eq!(nlmsg_type(dump[dump.len() - 1]), NLMSG_DONE);
        assert!(dump[..dump.len() - 1]
            .iter()
            .all(|m| nlmsg_type(m) == SOCK_DIAG_BY_FAMILY));
    }
}

#[test]
fn dump_holds_exactly_the_scenario_sockets() {
    let (samples, stats) = parse_dump();
    assert_eq!(stats, ParseStats::default(), "nothing skipped or malformed");
    let got: BTreeSet<(SocketAddr, SocketAddr, TcpState)> = samples
        .iter()
        .map(|s| (s.local, s.remote, s.state))
        .collect();
    let est = TcpState::Established;
    let want: BTreeSet<(SocketAddr, SocketAddr, TcpState)> = [
        ("127.0.0.1:40001", "0.0.0.0:0", TcpState::Listen),
        (V4_CLIENT.0, V4_CLIENT.1, est),
        (V4_SERVER.0, V4_SERVER.1, est),
        ("[::1]:40002", "[::]:0", TcpState::Listen),
        (V6_CLIENT.0, V6_CLIENT.1, est),
        (V6_SERVER.0, V6_SERVER.1, est),
    ]
    .into_iter()
    .map(|(l, r, st)| (addr(l), addr(r), st))
    .collect();
    assert_eq!(got, want);
    assert_eq!(samples.len(), 6, "no socket twice");
    let cookies: HashSet<u64> = samples.iter().map(|s| s.cookie).collect();
    assert_eq!(cookies.len(), 6, "cookies are identities");
    assert!(samples.iter().all(|s| s.cookie != 0 && s.inode != 0));
}

#[test]
fn dump_has_the_scenario_queues_and_byte_counts() {
    let (samples, _) = parse_dump();
    let info = |c: (&str, &str)| {
        let s = find(&samples, c.0, c.1);
        (s, s.info.expect("tcp_info"))
    };

    // IPv4: the client sent 1000 bytes, the server read 400 of them.
    let (c, ci) = info(V4_CLIENT);
    assert_eq!(ci.bytes_acked(), Some(1001), "its SYN + 1000");
    assert_eq!(ci.bytes_sent(), Some(1000));
    assert_eq!(ci.bytes_received(), Some(0));
    assert_eq!((c.rqueue, c.wqueue), (0, 0));
    let (s, si) = info(V4_SERVER);
    assert_eq!(si.bytes_received(), Some(1000));
    assert_eq!(
        si.bytes_acked(),
        Some(0),
        "an accepted socket counts no SYN"
    );
    assert_eq!(si.bytes_sent(), Some(0));
    assert_eq!((s.rqueue, s.wqueue), (600, 0));

    // IPv6: the client sent 2000 and read nothing; the server read 1500
    // and sent 50.
    let (c, ci) = info(V6_CLIENT);
    assert_eq!(ci.bytes_acked(), Some(2001));
    assert_eq!(ci.bytes_sent(), Some(2000));
    assert_eq!(ci.bytes_received(), Some(50));
    assert_eq!((c.rqueue, c.wqueue), (50, 0));
    let (s, si) = info(V6_SERVER);
    assert_eq!(si.bytes_acked(), Some(50));
    assert_eq!(si.bytes_sent(), Some(50));
    assert_eq!(si.bytes_received(), Some(2000));
    assert_eq!((s.rqueue, s.wqueue), (500, 0));

    for conn in CONNECTIONS {
        let (s, i) = info(conn);
        assert_eq!(i.state(), Some(1), "{conn:?} ESTABLISHED in tcp_info too");
        assert_eq!(i.notsent_bytes(), Some(0), "{conn:?} everything was sent");
        assert_eq!(
            i.bytes_retrans(),
            Some(0),
            "{conn:?} loopback loses nothing"
        );
        assert_eq!(i.total_rto(), Some(0), "{conn:?}");
        // A fresh namespace has net.ipv4.tcp_ecn = 2: ECN only when asked.
        assert_eq!(i.ecn_mode(), Some(0), "{conn:?}");
        assert_eq!(s.timer, None, "{conn:?} idle: nothing in flight");
        assert_eq!(s.shutdown, Some(0), "{conn:?} nobody shut down");
    }
    // Each side's view of the other's window and scale agrees once the
    // ACKs have settled: A.snd_wnd is what B last advertised.
    for (a, b) in [(V4_CLIENT, V4_SERVER), (V6_CLIENT, V6_SERVER)] {
        let (ai, bi) = (info(a).1, info(b).1);
        assert_eq!(ai.snd_wnd(), bi.rcv_wnd(), "{a:?}");
        assert_eq!(ai.rcv_wnd(), bi.snd_wnd(), "{a:?}");
        assert_eq!(ai.snd_wscale(), bi.rcv_wscale(), "{a:?}");
        assert_eq!(ai.rcv_wscale(), bi.snd_wscale(), "{a:?}");
    }
}

#[test]
fn dump_has_full_tcp_info_congestion_and_memory_on_every_socket() {
    let (samples, _) = parse_dump();
    for s in &samples {
        let info = s.info.expect("every socket carries INET_DIAG_INFO");
        assert_eq!(info.len(), 280, "{} -> {}", s.local, s.remote);
        // The machine's default congestion control when captured (README).
        let cong = s.cong.expect("INET_DIAG_CONG");
        assert_eq!(cong.as_str(), "bbr");
        let mem = s.skmem.expect("INET_DIAG_SKMEMINFO");
        assert!(mem.rcvbuf.is_some_and(|b| b > 0) && mem.drops == Some(0));
    }
}

#[test]
fn dump_listeners_report_their_backlog_as_wqueue() {
    let (samples, _) = parse_dump();
    let listeners: Vec<&SocketSample> = samples
        .iter()
        .filter(|s| s.state == TcpState::Listen)
        .collect();
    assert_eq!(listeners.len(), 2);
    for l in listeners {
        // listen(8), and both connections were accepted.
        assert_eq!((l.rqueue, l.wqueue), (0, 8), "{}", l.local);
    }
}

#[test]
fn dump_positions_compare_across_the_two_ends() {
    let (mut samples, _) = parse_dump();
    let listeners: HashSet<(u64, u16, IpAddr)> = samples
        .iter()
        .filter(|s| s.state == TcpState::Listen)
        .map(|s| (s.netns, s.local.port(), s.local.ip()))
        .collect();
    samples.retain(|s| s.state != TcpState::Listen);
    for s in samples.iter_mut() {
        s.opened = Some(opened(s, &listeners));
    }
    let pos = |c: (&str, &str)| {
        let s = find(&samples, c.0, c.1);
        (s.opened, s.positions())
    };

    let (c_opened, c) = pos(V4_CLIENT);
    let (s_opened, s) = pos(V4_SERVER);
    assert_eq!(
        (c_opened, s_opened),
        (Some(Opened::Active), Some(Opened::Passive))
    );
    assert_eq!(c.snd_una, Some(1000));
    assert_eq!(s.rcv_nxt, Some(1000));
    assert_eq!(c.snd_una, s.rcv_nxt, "the heart of the product");
    assert_eq!(c.snd_nxt, Some(1000));
    assert_eq!(c.write_seq, Some(1000));
    assert_eq!(s.copied, Some(400));
    assert_eq!(s.snd_una, Some(0));
    assert_eq!(c.rcv_nxt, Some(0));

    let (c_opened, c) = pos(V6_CLIENT);
    let (s_opened, s) = pos(V6_SERVER);
    assert_eq!(
        (c_opened, s_opened),
        (Some(Opened::Active), Some(Opened::Passive))
    );
    assert_eq!((c.snd_una, s.rcv_nxt), (Some(2000), Some(2000)));
    assert_eq!(s.copied, Some(1500));
    assert_eq!((s.snd_una, c.rcv_nxt), (Some(50), Some(50)));
    assert_eq!(s.snd_nxt, Some(50));
    assert_eq!(c.copied, Some(0));
}

#[test]
fn dump_parses_the_same_whatever_the_chunking() {
    let (per_message, _) = parse_dump();
    let mut whole = Vec::new();
    let mut stats = ParseStats::default();
    for dump in split_dumps(DUMP) {
        let seq = nlmsg_seq(dump[0]);
        let first = dump[0].as_ptr() as usize - DUMP.as_ptr() as usize;
        let last = dump[dump.len() - 1];
        let end = last.as_ptr() as usize - DUMP.as_ptr() as usize + last.len();
        let chunk = &DUMP[first..end];
        assert_eq!(
            parse_chunk(chunk, seq, &mut stats, |s| whole.push(s)),
            ChunkEnd::Done
        );
    }
    assert_eq!(stats, ParseStats::default());
    assert_eq!(whole, per_message);

    // Every message answers a request we did not send: none is ours.
    let mut stats = ParseStats::default();
    let mut n = 0;
    let end = parse_chunk(DUMP, 77, &mut stats, |_| n += 1);
    assert_eq!((end, n), (ChunkEnd::More, 0));
    assert_eq!(stats.foreign_messages, DUMP_MESSAGES as u64);
}

#[test]
fn dump_truncated_anywhere_keeps_exactly_the_whole_messages_before_the_cut() {
    let (full, _) = parse_dump();
    let dumps = split_dumps(DUMP);
    for cut in 0..=DUMP.len() {
        let bytes = &DUMP[..cut];
        let mut got = Vec::new();
        let mut stats = ParseStats::default();
        let mut want = 0;
        for dump in &dumps {
            let seq = nlmsg_seq(dump[0]);
            parse_chunk(bytes, seq, &mut stats, |s| got.push(s));
            want += dump
                .iter()
                .filter(|m| nlmsg_type(m) == SOCK_DIAG_BY_FAMILY)
                .filter(|m| m.as_ptr() as usize - DUMP.as_ptr() as usize + m.len() <= cut)
                .count();
        }
        assert_eq!(got.len(), want, "cut at {cut}");
        assert_eq!(got[..], full[..want], "cut at {cut}");
        assert_eq!(stats.malformed_messages, 0, "cut at {cut}");
    }
}

// ---------------------------------------------------------------------------
// A live socket on this kernel.

fn kernel_release() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// `getsockopt(TCP_INFO)` needs `unsafe` (libc), which the workspace
/// forbids (`forbid` cannot be relaxed per file). sock_diag's
/// `INET_DIAG_INFO` is filled by the same `tcp_get_info()` with the same
/// length, so the live check goes through the agent's own reader.
#[test]
fn live_loopback_tcp_info_on_this_kernel() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    let (c_addr, s_addr) = (
        client.local_addr().expect("addr"),
        server.local_addr().expect("addr"),
    );

    let mut diag = DiagSocket::open().expect("sock_diag socket");
    let mut stats = ParseStats::default();
    let mut ours = Vec::new();
    diag.dump(Family::V4, &mut stats, |s| {
        if (s.local == c_addr && s.remote == s_addr) || (s.local == s_addr && s.remote == c_addr) {
            ours.push(s);
        }
    })
    .expect("dump");
    assert_eq!(ours.len(), 2, "both ends of the connection");

    let expect_len = if kernel_release() >= (6, 18) {
        KNOWN_LEN
    } else {
        0
    };
    for s in &ours {
        let info = s.info.expect("tcp_info");
        if expect_len != 0 {
            assert_eq!(info.len(), expect_len, "kernel {:?}", kernel_release());
        } else {
            assert!(info.len() >= MIN_LEN);
        }
        assert_eq!(info.state(), Some(1), "ESTABLISHED");
        assert!(info.snd_mss().is_some_and(|m| m > 0));
        // connect() returned after the SYN-ACK acknowledged our SYN; the
        // accepted end starts past its SYN-ACK (docs/design.md, measured).
        let want_acked = if s.local == c_addr { 1 } else { 0 };
        assert_eq!(info.bytes_acked(), Some(want_acked), "{}", s.local);
    }
}

// ---------------------------------------------------------------------------
// Why we walk the attributes ourselves.

/// An `inet_diag_msg` (72 bytes: an established IPv4 socket
/// 10.0.0.1:1000 -> 10.0.0.2:2000, cookie 0x1122_3344_5566_7788) followed
/// by one attribute.
fn inet_diag_msg_with(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut m = vec![0u8; 72];
    m[0] = AF_INET; // idiag_family
    m[1] = 1; // idiag_state: ESTABLISHED
    m[4..6].copy_from_slice(&1000u16.to_be_bytes()); // idiag_sport
    m[6..8].copy_from_slice(&2000u16.to_be_bytes()); // idiag_dport
    m[8..12].copy_from_slice(&[10, 0, 0, 1]); // idiag_src
    m[24..28].copy_from_slice(&[10, 0, 0, 2]); // idiag_dst
    m[44..48].copy_from_slice(&0x5566_7788u32.to_ne_bytes()); // cookie[0]
    m[48..52].copy_from_slice(&0x1122_3344u32.to_ne_bytes()); // cookie[1]
    m[56..60].copy_from_slice(&7u32.to_ne_bytes()); // idiag_rqueue
    m[60..64].copy_from_slice(&9u32.to_ne_bytes()); // idiag_wqueue
    m[68..72].copy_from_slice(&4242u32.to_ne_bytes()); // idiag_inode
    let len = u16::try_from(4 + value.len()).expect("small attribute");
    m.extend_from_slice(&len.to_ne_bytes()); // nla_len
    m.extend_from_slice(&kind.to_ne_bytes()); // nla_type
    m.extend_from_slice(value);
    m.resize((m.len() + 3) & !3, 0);
    m
}

/// A RHEL 7 (3.10) `tcp_info`: 104 bytes, total_retrans last.
fn tcp_info_3_10() -> Vec<u8> {
    let mut info = vec![0u8; 104];
    info[0] = 1; // tcpi_state
    info[16..20].copy_from_slice(&1448u32.to_ne_bytes()); // tcpi_snd_mss
    info[100..104].copy_from_slice(&3u32.to_ne_bytes()); // tcpi_total_retrans
    info
}

/// The crate gives nothing of a 104-byte `tcp_info`. Built as this
/// workspace builds it (default features), its `Nla` parser does not
/// decode `INET_DIAG_INFO` at all: it hands the bytes back as
/// `Nla::TcpInfo(Vec<u8>)`, one allocation per socket and no field. With
/// its `rich_nlas` feature it decodes into a fixed 232-byte struct (up to
/// `snd_wnd`, nothing newer) and refuses anything shorter, failing the
/// attribute and, through `InetResponse::parse`, the whole message. Both
/// branches are asserted, so the test states the truth in either build;
/// `parse_socket` keeps the socket and every field the kernel sent.
#[test]
fn crate_gives_no_field_of_old_tcp_info() {
    let msg = inet_diag_msg_with(INET_DIAG_INFO, &tcp_info_3_10());
    let attr = &msg[72..];

    let crate_nla = <Nla as Parseable<NlaBuffer<&[u8]>>>::parse(&NlaBuffer::new(attr));
    let crate_msg = InetResponse::parse(&msg[..]);
    match crate_nla {
        // Default features (this workspace): the bytes, undecoded.
        Ok(nla @ Nla::TcpInfo(_)) => {
            assert_eq!(netlink_packet_core::Nla::value_len(&nla), 104);
            assert!(crate_msg.is_ok());
        }
        // `rich_nlas`: shorter than its struct, refused, message and all.
        Err(e) => {
            assert!(e.to_string().contains("INET_DIAG_INFO"), "{e}");
            assert!(crate_msg.is_err());
        }
        Ok(other) => panic!("INET_DIAG_INFO parsed as {other:?}"),
    }

    let mut stats = ParseStats::default();
    let s = parse_socket(&msg, &mut stats).expect("the socket is kept");
    assert_eq!(stats, ParseStats::default());
    assert_eq!(s.local, addr("10.0.0.1:1000"));
    assert_eq!(s.remote, addr("10.0.0.2:2000"));
    assert_eq!(s.cookie, 0x1122_3344_5566_7788);
    assert_eq!((s.rqueue, s.wqueue, s.inode), (7, 9, 4242));
    let info = s.info.expect("a 104-byte tcp_info");
    assert_eq!(info.len(), 104);
    assert_eq!(info.state(), Some(1));
    assert_eq!(info.snd_mss(), Some(1448));
    assert_eq!(info.total_retrans(), Some(3));
    assert_eq!(info.pacing_rate(), None);
    assert_eq!(info.bytes_acked(), None);
    assert_eq!(info.snd_wnd(), None);
}

/// What the crate does refuse in its default build: an
/// `INET_DIAG_SKMEMINFO` shorter than its nine counters (its own FIXME: old
/// kernels lack the last ones), and with it the whole socket message.
/// `parse_socket` keeps the socket and marks the missing counters absent.
#[test]
fn crate_rejects_short_skmeminfo_and_the_whole_message() {
    let counters: Vec<u8> = (1..=8u32).flat_map(u32::to_ne_bytes).collect();
    let msg = inet_diag_msg_with(INET_DIAG_SKMEMINFO, &counters);

    let crate_nla = <Nla as Parseable<NlaBuffer<&[u8]>>>::parse(&NlaBuffer::new(&msg[72..]));
    assert!(crate_nla.is_err());
    assert!(InetResponse::parse(&msg[..]).is_err());

    let mut stats = ParseStats::default();
    let s = parse_socket(&msg, &mut stats).expect("the socket is kept");
    assert_eq!(stats, ParseStats::default());
    let mem = s.skmem.expect("skmeminfo");
    assert_eq!((mem.rmem_alloc, mem.backlog), (Some(1), Some(8)));
    assert_eq!(mem.drops, None);
}

// ---------------------------------------------------------------------------
// Robustness.

/// Sockets `parse_chunk` yields from `bytes` for request `seq`.
fn sockets(bytes: &[u8], seq: u32) -> usize {
    let mut stats = ParseStats::default();
    let mut n = 0;
    parse_chunk(bytes, seq, &mut stats, |_| n += 1);
    n
}

/// A netlink message of type SOCK_DIAG_BY_FAMILY, seq 1, around `payload`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(16 + payload.len()).expect("small");
    let mut m = Vec::with_capacity(payload.len() + 20);
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
    m.extend_from_slice(&1u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(payload);
    m.resize((m.len() + 3) & !3, 0);
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        seq in prop_oneof![Just(0u32), Just(1), Just(2), any::<u32>()],
    ) {
        let mut stats = ParseStats::default();
        let mut n = 0usize;
        parse_chunk(&bytes, seq, &mut stats, |_| n += 1);
        // A socket message is at least a netlink header and inet_diag_msg.
        prop_assert!(n <= bytes.len() / (16 + 72));
        let _ = parse_socket(&bytes, &mut stats);
        let _ = tcpstall_agent::diag::Base::of(&bytes);
        let _ = tcpstall_agent::diag::ExactId::of(&bytes);
    }

    /// The light reading `run`'s poll makes of a base message agrees with
    /// the parser, whatever the header holds.
    #[test]
    fn base_agrees_with_the_parser(
        header in proptest::collection::vec(any::<u8>(), 72..=72),
        family in prop_oneof![Just(2u8), Just(10u8), any::<u8>()],
    ) {
        let mut payload = header;
        payload[0] = family;
        let mut stats = ParseStats::default();
        let parsed = parse_socket(&payload, &mut stats);
        let base = tcpstall_agent::diag::Base::of(&payload);
        prop_assert_eq!(
            base.map(|b| (b.state, b.local, b.remote, b.cookie, b.wqueue)),
            parsed.map(|s| (s.state, s.local, s.remote, s.cookie, s.wqueue))
        );
    }

    #[test]
    fn framed_arbitrary_payloads_are_each_a_socket_or_counted(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..400), 0..12),
    ) {
        let chunk: Vec<u8> = payloads.iter().flat_map(|p| frame(p)).collect();
        let mut stats = ParseStats::default();
        let mut n = 0u64;
        prop_assert_eq!(parse_chunk(&chunk, 1, &mut stats, |_| n += 1), ChunkEnd::More);
        prop_assert_eq!(n + stats.malformed_messages, payloads.len() as u64);
        prop_assert_eq!(stats.truncated_chunks, 0);
    }

    #[test]
    fn a_good_header_with_arbitrary_attributes_keeps_the_socket(
        attrs in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut payload = split_messages(DUMP)[1][16..16 + 72].to_vec();
        payload.extend_from_slice(&attrs);
        let mut stats = ParseStats::default();
        prop_assert!(parse_socket(&payload, &mut stats).is_some());
    }

    #[test]
    fn mutated_dump_never_panics_nor_invents_sockets(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = DUMP.to_vec();
        for (at, xor) in &flips {
            let i = at.index(bytes.len());
            bytes[i] ^= xor;
        }
        for seq in [1, 2, 0, u32::MAX] {
            prop_assert!(sockets(&bytes, seq) <= DUMP_MESSAGES);
            let truncated = &bytes[..cut.index(bytes.len() + 1)];
            prop_assert!(sockets(truncated, seq) <= DUMP_MESSAGES);
        }
        // Fed chunk by chunk at the original message boundaries.
        let mut at = 0;
        let mut n = 0;
        for msg in split_messages(DUMP) {
            let end = at + ((msg.len() + 3) & !3);
            let chunk = &bytes[at..end.min(bytes.len())];
            n += sockets(chunk, 1) + sockets(chunk, 2);
            at = end;
        }
        prop_assert!(n <= DUMP_MESSAGES);
    }
}
