//! Pure parsing of sock_diag dump replies: bytes in, [`SocketSample`]s out.
//!
//! A reply chunk holds netlink messages back to back. Each
//! `SOCK_DIAG_BY_FAMILY` message is an `inet_diag_msg` header (parsed by
//! netlink-packet-sock-diag) followed by attributes. We walk the attributes
//! ourselves: with its default features the crate hands `INET_DIAG_INFO`
//! back as undecoded bytes (one `Vec` per socket), with `rich_nlas` it
//! rejects a `tcp_info` shorter than its struct and knows no field after
//! `snd_wnd`, and either way a short `INET_DIAG_SKMEMINFO` fails the whole
//! message (see the tests `crate_gives_no_field_of_old_tcp_info` and
//! `crate_rejects_short_skmeminfo_and_the_whole_message`).
//!
//! Nothing here panics on any input: a message that does not parse is
//! counted in [`ParseStats`] and skipped, and the rest of the chunk is used.

use std::net::SocketAddr;

use netlink_packet_core::{Parseable, NLMSG_DONE, NLMSG_ERROR, NLM_F_DUMP_INTR};
use netlink_packet_sock_diag::constants::{
    INET_DIAG_CONG, INET_DIAG_INFO, INET_DIAG_MEMINFO, INET_DIAG_SHUTDOWN, INET_DIAG_SKMEMINFO,
    SOCK_DIAG_BY_FAMILY,
};
use netlink_packet_sock_diag::inet::{InetResponseHeader, Timer};
use tcpstall_common::time;
use tcpstall_common::{
    normalize_addr, CongName, SkMemInfo, SocketSample, TcpInfo, TcpState, TimerKind,
};

const NLMSG_HDRLEN: usize = 16;

/// The environment variable that makes the agent read `tcp_info` as a
/// kernel that sends that many bytes would (104 for 3.10, 200 for 4.18,
/// 232 for 5.4 to 6.1, 240 for 6.2): the lab's way to see, on its one
/// kernel, what the collector concludes from an older one's facts
/// (docs/kernels.md). Unset, every byte the kernel sends is read.
pub const TCP_INFO_LEN_ENV: &str = "TCPSTALL_AGENT_TCP_INFO_LEN";

static TCP_INFO_LEN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Reads every `tcp_info` cut to `len` bytes ([`TCP_INFO_LEN_ENV`]'s
/// value), from now on; refuses a length no kernel sends.
pub fn read_tcp_info_as(len: &std::ffi::OsStr) -> anyhow::Result<()> {
    let n: usize = len
        .to_str()
        .and_then(|s| s.parse().ok())
        .filter(|n| *n >= tcpstall_common::tcp_info::MIN_LEN)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{TCP_INFO_LEN_ENV}={}: not a tcp_info length (a number of bytes, at least {})",
                len.to_string_lossy(),
                tcpstall_common::tcp_info::MIN_LEN
            )
        })?;
    let _ = TCP_INFO_LEN.set(n);
    tracing::warn!("reading tcp_info as a kernel that sends {n} bytes would ({TCP_INFO_LEN_ENV})");
    Ok(())
}

/// Counters of what a parse had to skip. Cumulative: a poller keeps one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ParseStats {
    /// Messages that could not be parsed at all and were skipped.
    pub malformed_messages: u64,
    /// Attributes that were malformed (the socket was kept without them).
    pub malformed_attributes: u64,
    /// Chunks whose remaining bytes could not be walked (bad lengths).
    pub truncated_chunks: u64,
    /// Replies the kernel flagged as interrupted (the table changed mid-dump).
    pub interrupted: u64,
    /// Messages answering another request than ours.
    pub foreign_messages: u64,
}

/// One netlink message of a chunk: its header fields and payload.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// Walks the messages of one received chunk. Stops at the first header
/// whose length cannot be right, yielding `Err(())` once for it.
pub fn messages(chunk: &[u8]) -> impl Iterator<Item = Result<Message<'_>, ()>> {
    let mut rest = chunk;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let item = header(rest).ok_or(());
        match item {
            Ok((msg, aligned)) => {
                rest = rest.get(aligned..).unwrap_or(&[]);
                Some(Ok(msg))
            }
            Err(()) => {
                rest = &[];
                Some(Err(()))
            }
        }
    })
}

fn header(buf: &[u8]) -> Option<(Message<'_>, usize)> {
    let h = buf.get(..NLMSG_HDRLEN)?;
    let len = u32::from_ne_bytes(h[0..4].try_into().ok()?) as usize;
    if len < NLMSG_HDRLEN || len > buf.len() {
        return None;
    }
    let msg = Message {
        kind: u16::from_ne_bytes(h[4..6].try_into().ok()?),
        flags: u16::from_ne_bytes(h[6..8].try_into().ok()?),
        seq: u32::from_ne_bytes(h[8..12].try_into().ok()?),
        payload: &buf[NLMSG_HDRLEN..len],
    };
    Some((msg, (len + 3) & !3))
}

/// What a chunk ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkEnd {
    /// More chunks follow.
    More,
    /// `NLMSG_DONE`: the dump is complete.
    Done,
    /// `NLMSG_ERROR` with this (negative) errno: the kernel refused the request.
    Error(i32),
}

/// `NLMSG_DONE` or `NLMSG_ERROR`: how a dump ends; `None` for other
/// messages. An `NLMSG_ERROR` with errno 0 is an acknowledgement: done.
pub fn control(msg: &Message<'_>) -> Option<ChunkEnd> {
    match msg.kind {
        NLMSG_DONE => Some(ChunkEnd::Done),
        NLMSG_ERROR => {
            let errno = msg
                .payload
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .map(i32::from_ne_bytes)
                .unwrap_or(-libc::EPROTO);
            Some(if errno == 0 {
                ChunkEnd::Done
            } else {
                ChunkEnd::Error(errno)
            })
        }
        _ => None,
    }
}

/// How a chunk answering request `seq` ends, from its netlink headers alone.
pub fn chunk_end(chunk: &[u8], seq: u32) -> ChunkEnd {
    messages(chunk)
        .map_while(Result::ok)
        .filter(|m| m.seq == seq)
        .find_map(|m| control(&m))
        .unwrap_or(ChunkEnd::More)
}

/// `TCPDIAG_GETSOCK`: the legacy request type. The kernel answers a
/// legacy dump with messages of the request's type, not
/// `SOCK_DIAG_BY_FAMILY`; their payload is the same `inet_diag_msg`.
pub const TCPDIAG_GETSOCK: u16 = 18;

#[cfg_attr(not(feature = "internals"), allow(dead_code))] // the tests' and benchmarks'
/// Parses one chunk of a dump answering request `seq`, handing every socket
/// (listeners included; `netns` and `opened` left for the caller) to `on`.
pub fn parse_chunk(
    chunk: &[u8],
    seq: u32,
    stats: &mut ParseStats,
    mut on: impl FnMut(SocketSample),
) -> ChunkEnd {
    parse_chunk_raw(chunk, seq, stats, |s, _| on(s))
}

/// [`parse_chunk`], also handing over each socket's message payload (for
/// [`ExactId::of`]).
pub fn parse_chunk_raw(
    chunk: &[u8],
    seq: u32,
    stats: &mut ParseStats,
    mut on: impl FnMut(SocketSample, &[u8]),
) -> ChunkEnd {
    let mut inner = ParseStats::default();
    let end = socket_payloads(chunk, seq, stats, |payload| {
        match parse_socket(payload, &mut inner) {
            Some(sample) => on(sample, payload),
            None => inner.malformed_messages += 1,
        }
    });
    stats.malformed_messages += inner.malformed_messages;
    stats.malformed_attributes += inner.malformed_attributes;
    end
}

/// Walks one chunk of a dump answering request `seq`, handing the payload
/// of every socket's message (an `inet_diag_msg` and its attributes) to
/// `on`, unparsed.
pub fn socket_payloads(
    chunk: &[u8],
    seq: u32,
    stats: &mut ParseStats,
    mut on: impl FnMut(&[u8]),
) -> ChunkEnd {
    for msg in messages(chunk) {
        let Ok(msg) = msg else {
            stats.truncated_chunks += 1;
            break;
        };
        if msg.seq != seq {
            stats.foreign_messages += 1;
            continue;
        }
        if msg.flags & NLM_F_DUMP_INTR != 0 {
            stats.interrupted += 1;
        }
        if let Some(end) = control(&msg) {
            return end;
        }
        match msg.kind {
            SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => on(msg.payload),
            _ => stats.foreign_messages += 1,
        }
    }
    ChunkEnd::More
}

/// The few fields of an `inet_diag_msg` that decide whether a socket is
/// worth reading in full, read straight from its bytes: no attribute walk,
/// no [`SocketSample`] built. Equal to what [`parse_socket`] makes of the
/// same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Base {
    pub state: TcpState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub cookie: u64,
    /// `idiag_wqueue`: write_seq − snd_una (a listener's backlog limit).
    pub wqueue: u32,
}

impl Base {
    /// Reads an `inet_diag_msg` payload; `None` when it is too short or
    /// its family or state is unknown.
    pub fn of(payload: &[u8]) -> Option<Base> {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let h = payload.get(..72)?;
        let state = TcpState::from_kernel(h[1])?;
        let port = |at: usize| u16::from_be_bytes([h[at], h[at + 1]]);
        let ip = |at: usize| -> Option<IpAddr> {
            match u16::from(h[0]) {
                AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
                    h[at],
                    h[at + 1],
                    h[at + 2],
                    h[at + 3],
                ))),
                AF_INET6 => {
                    let b: [u8; 16] = h[at..at + 16].try_into().ok()?;
                    Some(IpAddr::V6(Ipv6Addr::from(b)))
                }
                _ => None,
            }
        };
        let cookie_lo = u32::from_ne_bytes(h[44..48].try_into().ok()?);
        let cookie_hi = u32::from_ne_bytes(h[48..52].try_into().ok()?);
        Some(Base {
            state,
            local: normalize_addr(SocketAddr::new(ip(8)?, port(4))),
            remote: normalize_addr(SocketAddr::new(ip(24)?, port(6))),
            cookie: u64::from(cookie_hi) << 32 | u64::from(cookie_lo),
            wqueue: u32::from_ne_bytes(h[60..64].try_into().ok()?),
        })
    }
}

const AF_INET: u16 = libc::AF_INET as u16;
const AF_INET6: u16 = libc::AF_INET6 as u16;

/// What names one socket to the kernel in an exact request: its family and
/// its `inet_diag_sockid` (ports, addresses, bound interface, cookie)
/// exactly as a dump reported them. Kept verbatim rather than rebuilt from
/// a [`SocketSample`], whose addresses are normalised (an IPv4-mapped
/// socket is AF_INET6 to the kernel) and which has no interface index (a
/// link-local or device-bound socket is found only with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExactId {
    pub family: u8,
    pub sockid: [u8; SOCKID_LEN],
}

/// `struct inet_diag_sockid`: sport, dport, src[4], dst[4], if, cookie[2].
pub const SOCKID_LEN: usize = 48;

impl ExactId {
    /// The id in an `inet_diag_msg` payload (family at 0, sockid at 4).
    pub fn of(payload: &[u8]) -> Option<ExactId> {
        Some(ExactId {
            family: *payload.first()?,
            sockid: payload.get(4..4 + SOCKID_LEN)?.try_into().ok()?,
        })
    }
}

/// Parses one `inet_diag_msg` with its attributes. `None` when the header
/// itself is unusable; bad attributes are counted and left out.
pub fn parse_socket(payload: &[u8], stats: &mut ParseStats) -> Option<SocketSample> {
    const HEADER_LEN: usize = 72;
    let header = InetResponseHeader::parse(payload.get(..HEADER_LEN)?).ok()?;
    let state = TcpState::from_kernel(header.state)?;
    let id = &header.socket_id;
    let cookie_lo = u32::from_ne_bytes(id.cookie[0..4].try_into().ok()?);
    let cookie_hi = u32::from_ne_bytes(id.cookie[4..8].try_into().ok()?);
    // The timer's expiry as tcp_info's other millisecond fields hold it.
    let millis = |d| u32::try_from(time::millis(d)).unwrap_or(u32::MAX);
    let (timer, timer_expires_ms, timer_retransmits) = match header.timer {
        Some(Timer::Retransmit(d, n)) => (Some(TimerKind::Retransmit), millis(d), n),
        Some(Timer::KeepAlive(d)) => (Some(TimerKind::Keepalive), millis(d), 0),
        Some(Timer::TimeWait) => (Some(TimerKind::TimeWait), 0, 0),
        Some(Timer::Probe(d)) => (Some(TimerKind::ZeroWindowProbe), millis(d), 0),
        None => (None, 0, 0),
    };
    let mut sample = SocketSample {
        netns: 0,
        local: normalize_addr(SocketAddr::new(id.source_address, id.source_port)),
        remote: normalize_addr(SocketAddr::new(id.destination_address, id.destination_port)),
        state,
        cookie: u64::from(cookie_hi) << 32 | u64::from(cookie_lo),
        inode: header.inode,
        uid: header.uid,
        rqueue: header.recv_queue,
        wqueue: header.send_queue,
        timer,
        timer_expires_ms,
        timer_retransmits,
        opened: None,
        info: None,
        skmem: None,
        cong: None,
        shutdown: None,
    };
    for nla in attributes(&payload[HEADER_LEN..]) {
        let Ok((kind, value)) = nla else {
            stats.malformed_attributes += 1;
            break;
        };
        match kind {
            INET_DIAG_INFO => match TcpInfo::parse(match TCP_INFO_LEN.get() {
                Some(&n) => &value[..value.len().min(n)],
                None => value,
            }) {
                Ok(info) => sample.info = Some(info),
                Err(_) => stats.malformed_attributes += 1,
            },
            INET_DIAG_SKMEMINFO => match parse_skmeminfo(value) {
                Some(m) => sample.skmem = Some(m),
                None => stats.malformed_attributes += 1,
            },
            INET_DIAG_MEMINFO if sample.skmem.is_none() => match parse_meminfo(value) {
                Some(m) => sample.skmem = Some(m),
                None => stats.malformed_attributes += 1,
            },
            INET_DIAG_CONG => sample.cong = Some(CongName::new(value)),
            INET_DIAG_SHUTDOWN => sample.shutdown = value.first().copied(),
            _ => {}
        }
    }
    Some(sample)
}

/// Walks `struct nlattr`s: (type without its two flag bits, payload).
/// Stops at the first attribute whose length cannot be right, yielding
/// `Err(())` once for it. Written here rather than taken from
/// netlink-packet-core because it runs eight times per socket per poll and
/// the crate's reader is several times slower without LTO (BENCHMARKS.md).
pub fn attributes(buf: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), ()>> {
    const NLA_HDRLEN: usize = 4;
    const NLA_TYPE_MASK: u16 = 0x3fff;
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < NLA_HDRLEN {
            // Trailing padding shorter than a header ends the walk quietly.
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > rest.len() {
            rest = &[];
            return Some(Err(()));
        }
        let value = &rest[NLA_HDRLEN..len];
        rest = rest.get((len + 3) & !3..).unwrap_or(&[]);
        Some(Ok((kind, value)))
    })
}

fn u32_at(value: &[u8], i: usize) -> Option<u32> {
    let b = value.get(i * 4..i * 4 + 4)?;
    Some(u32::from_ne_bytes(b.try_into().ok()?))
}

/// `SK_MEMINFO_*`: rmem_alloc, rcvbuf, wmem_alloc, sndbuf, fwd_alloc,
/// wmem_queued, optmem, backlog, drops. Kernels before 3.x sent fewer.
fn parse_skmeminfo(value: &[u8]) -> Option<SkMemInfo> {
    if value.len() < 4 * 4 {
        return None;
    }
    Some(SkMemInfo {
        rmem_alloc: u32_at(value, 0),
        rcvbuf: u32_at(value, 1),
        wmem_alloc: u32_at(value, 2),
        sndbuf: u32_at(value, 3),
        fwd_alloc: u32_at(value, 4),
        wmem_queued: u32_at(value, 5),
        optmem: u32_at(value, 6),
        backlog: u32_at(value, 7),
        drops: u32_at(value, 8),
    })
}

/// The legacy `inet_diag_meminfo`: rmem, wmem, fmem, tmem.
fn parse_meminfo(value: &[u8]) -> Option<SkMemInfo> {
    Some(SkMemInfo {
        rmem_alloc: Some(u32_at(value, 0)?),
        wmem_queued: Some(u32_at(value, 1)?),
        fwd_alloc: Some(u32_at(value, 2)?),
        wmem_alloc: Some(u32_at(value, 3)?),
        ..SkMemInfo::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_walk_and_stop_at_a_bad_length() {
        // type 2, 4 bytes of value; type 4, 1 byte of value + 3 of padding;
        // then a header claiming 200 bytes.
        let mut buf = vec![8, 0, 2, 0, 1, 2, 3, 4, 5, 0, 4, 0, b'x', 0, 0, 0];
        buf.extend_from_slice(&[200, 0, 9, 0, 0, 0]);
        let got: Vec<_> = attributes(&buf).collect();
        assert_eq!(
            got,
            vec![Ok((2, &[1, 2, 3, 4][..])), Ok((4, &b"x"[..])), Err(())]
        );
        // Flag bits are not part of the type.
        let nested = [4, 0, 2, 0x80];
        assert_eq!(
            attributes(&nested).collect::<Vec<_>>(),
            vec![Ok((2, &[][..]))]
        );
        assert_eq!(attributes(&[1, 2]).count(), 0);
    }

    #[test]
    fn empty_and_garbage_chunks_do_not_panic() {
        let mut stats = ParseStats::default();
        assert_eq!(parse_chunk(&[], 1, &mut stats, |_| {}), ChunkEnd::More);
        assert_eq!(
            parse_chunk(&[1, 2, 3], 1, &mut stats, |_| {}),
            ChunkEnd::More
        );
        assert_eq!(stats.truncated_chunks, 1);
    }

    #[test]
    fn length_smaller_than_header_stops_the_walk() {
        let mut chunk = vec![0u8; 32];
        chunk[0..4].copy_from_slice(&8u32.to_ne_bytes());
        let mut stats = ParseStats::default();
        parse_chunk(&chunk, 0, &mut stats, |_| {});
        assert_eq!(stats.truncated_chunks, 1);
    }

    #[test]
    fn done_and_error_end_the_dump() {
        let mut done = vec![0u8; 20];
        done[0..4].copy_from_slice(&20u32.to_ne_bytes());
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        done[8..12].copy_from_slice(&9u32.to_ne_bytes());
        let mut stats = ParseStats::default();
        assert_eq!(parse_chunk(&done, 9, &mut stats, |_| {}), ChunkEnd::Done);
        // The same message answering another request is not ours.
        assert_eq!(parse_chunk(&done, 8, &mut stats, |_| {}), ChunkEnd::More);
        assert_eq!(stats.foreign_messages, 1);

        let mut err = done.clone();
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err[16..20].copy_from_slice(&(-libc::EINVAL).to_ne_bytes());
        assert_eq!(
            parse_chunk(&err, 9, &mut stats, |_| {}),
            ChunkEnd::Error(-libc::EINVAL)
        );
    }
}
