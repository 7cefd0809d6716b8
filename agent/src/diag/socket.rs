//! The thin I/O layer: one `NETLINK_SOCK_DIAG` socket, dump requests (per
//! address family, or both families in one walk), exact requests for named
//! sockets, and the receive loops. Parsing lives in [`super::parse`].

use std::io;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr};
use tcpstall_common::SocketSample;

use super::parse::{self, ChunkEnd, ExactId, ParseStats, SOCKID_LEN};

/// The kernel fills at most 32 KiB per dump reply (`netlink_recvmsg` caps
/// its allocation there); twice that leaves room for a larger future cap.
const RECV_BUF: usize = 64 * 1024;

/// Every state from ESTABLISHED (1) to NEW_SYN_RECV (12). Listeners come
/// too: they tell accepted sockets from connected ones.
pub const ALL_STATES: u32 = 0x1ffe;
/// `TCPF_LISTEN`.
pub const LISTEN_STATES: u32 = 1 << 10;
/// Every state but LISTEN: the connections.
pub const CONNECTION_STATES: u32 = ALL_STATES & !LISTEN_STATES;

/// Exact requests sent in one `send`. Each is answered by its own message
/// in our receive queue; 32 replies of about 1 KiB of buffer each stay
/// far below the default receive buffer (208 KiB), so the kernel never has
/// to drop one (it would report `ENOBUFS` if it did).
const EXACT_BATCH: usize = 32;
const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct inet_diag_req_v2)`.
const REQ_V2_LEN: usize = 8 + SOCKID_LEN;
/// `sizeof(struct inet_diag_req)`, the legacy request.
const REQ_LEGACY_LEN: usize = 4 + SOCKID_LEN + 8;
/// `SOCK_DIAG_BY_FAMILY`, the request type of exact requests.
const SOCK_DIAG_BY_FAMILY: u16 = 20;

/// An address family to dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];
}

/// How much the kernel fills in for each socket of a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// tcp_info, memory and congestion control (INFO, MEMINFO, SKMEMINFO,
    /// CONG): everything a sample shows.
    Full,
    /// The base `inet_diag_msg` alone: 4-tuple, state, cookie, inode, uid,
    /// timer and both queues (`idiag_wqueue` is write_seq − snd_una). A
    /// quarter of the bytes, and a quarter less of the kernel's time
    /// (BENCHMARKS.md, "Agent at rest").
    Base,
}

impl Detail {
    /// The `idiag_ext` bits.
    fn extensions(self) -> ExtensionFlags {
        match self {
            Detail::Full => {
                ExtensionFlags::INFO
                    | ExtensionFlags::MEMINFO
                    | ExtensionFlags::SKMEMINFO
                    | ExtensionFlags::CONG
            }
            Detail::Base => ExtensionFlags::empty(),
        }
    }
}

/// Which sockets a dump walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One address family (`SOCK_DIAG_BY_FAMILY`).
    One(Family),
    /// IPv4 and IPv6 in one walk of the socket tables: the legacy
    /// `TCPDIAG_GETSOCK` dump, which the kernel runs with `AF_UNSPEC`
    /// (`inet_diag_dump_compat` in net/ipv4/inet_diag.c). Both families
    /// share one established table, so a dump per family walks it twice.
    Both,
}

/// One dump request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dump {
    pub scope: Scope,
    pub detail: Detail,
    /// `idiag_states`: bit N for TCP state N.
    pub states: u32,
}

impl Dump {
    /// What `snapshot` and `capture` ask for: every socket of a family,
    /// listeners included, with everything.
    pub fn full(family: Family) -> Dump {
        Dump {
            scope: Scope::One(family),
            detail: Detail::Full,
            states: ALL_STATES,
        }
    }
}

/// How one exact request was answered.
// Handed to a callback and never stored: boxing the sample would only
// add an allocation per socket.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Exact {
    /// The socket, with everything ([`Detail::Full`]).
    Found(SocketSample),
    /// `ENOENT`: no socket has this 4-tuple and cookie any more.
    Gone,
    /// A reply that does not parse (counted in the stats).
    Malformed,
}

/// The netlink header and `inet_diag_req_v2` of one request.
fn put_request_v2(
    out: &mut Vec<u8>,
    flags: u16,
    seq: u32,
    family: u8,
    ext: u8,
    states: u32,
    sockid: &[u8; SOCKID_LEN],
) {
    let len = (NLMSG_HDRLEN + REQ_V2_LEN) as u32;
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[family, IPPROTO_TCP, ext, 0]);
    out.extend_from_slice(&states.to_ne_bytes());
    out.extend_from_slice(sockid);
}

/// The netlink header and legacy `inet_diag_req` of a dump of both
/// families. netlink-packet-sock-diag knows only `inet_diag_req_v2`.
pub fn legacy_dump_request(seq: u32, ext: u8, states: u32) -> Vec<u8> {
    let len = (NLMSG_HDRLEN + REQ_LEGACY_LEN) as u32;
    let mut out = Vec::with_capacity(len as usize);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&parse::TCPDIAG_GETSOCK.to_ne_bytes());
    out.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    // Family (ignored: the kernel dumps AF_UNSPEC), src_len, dst_len, ext.
    out.extend_from_slice(&[AF_INET, 0, 0, ext]);
    out.extend_from_slice(&[0; SOCKID_LEN]);
    out.extend_from_slice(&states.to_ne_bytes());
    // idiag_dbs: unused.
    out.extend_from_slice(&0u32.to_ne_bytes());
    out
}

/// The exact request for one socket: `SOCK_DIAG_BY_FAMILY` without
/// `NLM_F_DUMP`, answered by one message (the socket, or `NLMSG_ERROR`).
pub fn exact_request(out: &mut Vec<u8>, seq: u32, id: &ExactId) {
    put_request_v2(
        out,
        NLM_F_REQUEST,
        seq,
        id.family,
        Detail::Full.extensions().bits(),
        ALL_STATES,
        &id.sockid,
    );
}

/// Why a dump failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("sock_diag socket: {0}")]
    Io(#[from] io::Error),
    #[error("the kernel refused the sock_diag dump request: {0}")]
    Refused(io::Error),
}

/// A sock_diag socket, bound to the network namespace it was created in.
#[derive(Debug)]
pub struct DiagSocket {
    sock: Socket,
    buf: Vec<u8>,
    seq: u32,
}

impl DiagSocket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<DiagSocket> {
        let mut sock = Socket::new(NETLINK_SOCK_DIAG)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(DiagSocket {
            sock,
            buf: vec![0; RECV_BUF],
            seq: 0,
        })
    }

    fn request(&mut self, dump: Dump) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let family = match dump.scope {
            Scope::One(family) => family,
            Scope::Both => {
                let out =
                    legacy_dump_request(self.seq, dump.detail.extensions().bits(), dump.states);
                self.sock.send(&out, 0)?;
                return Ok(self.seq);
            }
        };
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = self.seq;
        let (af, id) = match family {
            Family::V4 => (AF_INET, SocketId::new_v4()),
            Family::V6 => (AF_INET6, SocketId::new_v6()),
        };
        let mut msg = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family: af,
                protocol: IPPROTO_TCP,
                extensions: dump.detail.extensions(),
                states: StateFlags::from_bits_retain(dump.states),
                socket_id: id,
            })
            .into(),
        );
        msg.finalize();
        let mut out = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut out);
        self.sock.send(&out, 0)?;
        Ok(self.seq)
    }

    /// Dumps one family with everything ([`Dump::full`]), handing each raw
    /// reply chunk to `on_chunk`, which says how the chunk ended. Used by
    /// captures and benchmarks that want the bytes alone.
    pub fn dump_chunks(
        &mut self,
        family: Family,
        on_chunk: impl FnMut(&[u8], u32) -> ChunkEnd,
    ) -> Result<(), DiagError> {
        self.dump_request_chunks(Dump::full(family), on_chunk)
    }

    /// Runs one dump request, handing each raw reply chunk to `on_chunk`.
    pub fn dump_request_chunks(
        &mut self,
        dump: Dump,
        mut on_chunk: impl FnMut(&[u8], u32) -> ChunkEnd,
    ) -> Result<(), DiagError> {
        let seq = self.request(dump)?;
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            if n == 0 {
                return Err(DiagError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "sock_diag socket closed mid-dump",
                )));
            }
            match on_chunk(&self.buf[..n.min(self.buf.len())], seq) {
                ChunkEnd::More => {}
                ChunkEnd::Done => return Ok(()),
                ChunkEnd::Error(errno) => {
                    return Err(DiagError::Refused(io::Error::from_raw_os_error(-errno)))
                }
            }
        }
    }

    /// Dumps every TCP socket of one family, listeners included.
    pub fn dump(
        &mut self,
        family: Family,
        stats: &mut ParseStats,
        mut on: impl FnMut(SocketSample),
    ) -> Result<(), DiagError> {
        self.dump_request(Dump::full(family), stats, |s, _| on(s))
    }

    /// Runs one dump request, handing every socket with its message
    /// payload (for [`ExactId::of`]) to `on`.
    pub fn dump_request(
        &mut self,
        dump: Dump,
        stats: &mut ParseStats,
        mut on: impl FnMut(SocketSample, &[u8]),
    ) -> Result<(), DiagError> {
        self.dump_request_chunks(dump, |chunk, seq| {
            parse::parse_chunk_raw(chunk, seq, stats, &mut on)
        })
    }

    /// Runs one dump request, handing every socket's message payload,
    /// unparsed, to `on`.
    pub fn dump_payloads(
        &mut self,
        dump: Dump,
        stats: &mut ParseStats,
        mut on: impl FnMut(&[u8]),
    ) -> Result<(), DiagError> {
        self.dump_request_chunks(dump, |chunk, seq| {
            parse::socket_payloads(chunk, seq, stats, &mut on)
        })
    }

    /// Receives a whole dump and only walks the netlink headers to find its
    /// end: the floor any sock_diag reader pays. Returns the bytes received.
    pub fn dump_raw(&mut self, family: Family) -> Result<usize, DiagError> {
        self.dump_request_raw(Dump::full(family))
    }

    /// [`DiagSocket::dump_raw`] of any request.
    pub fn dump_request_raw(&mut self, dump: Dump) -> Result<usize, DiagError> {
        let mut total = 0;
        self.dump_request_chunks(dump, |chunk, seq| {
            total += chunk.len();
            parse::chunk_end(chunk, seq)
        })?;
        Ok(total)
    }

    /// Asks for each socket of `ids` by its exact identity (4-tuple,
    /// interface, cookie), with everything ([`Detail::Full`]), and hands
    /// `on` its index in `ids` and the answer. Every id is answered once.
    /// The kernel refusing a request for another reason than `ENOENT` fails
    /// the whole call: a caller falls back to a dump.
    pub fn get_exact(
        &mut self,
        ids: &[ExactId],
        stats: &mut ParseStats,
        mut on: impl FnMut(usize, Exact),
    ) -> Result<(), DiagError> {
        let mut out = Vec::with_capacity(EXACT_BATCH * (NLMSG_HDRLEN + REQ_V2_LEN));
        for (b, batch) in ids.chunks(EXACT_BATCH).enumerate() {
            let first = b * EXACT_BATCH;
            out.clear();
            let base = self.seq.wrapping_add(1);
            for (i, id) in batch.iter().enumerate() {
                exact_request(&mut out, base.wrapping_add(i as u32), id);
            }
            self.seq = base.wrapping_add(batch.len() as u32 - 1);
            self.sock.send(&out, 0)?;
            let mut answered = [false; EXACT_BATCH];
            let mut left = batch.len();
            while left > 0 {
                let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
                if n == 0 {
                    return Err(DiagError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "sock_diag socket closed mid-request",
                    )));
                }
                for msg in parse::messages(&self.buf[..n.min(self.buf.len())]) {
                    let Ok(msg) = msg else {
                        stats.truncated_chunks += 1;
                        break;
                    };
                    let i = msg.seq.wrapping_sub(base) as usize;
                    if i >= batch.len() || answered[i] {
                        stats.foreign_messages += 1;
                        continue;
                    }
                    let answer = match parse::control(&msg) {
                        Some(ChunkEnd::Error(errno)) if errno == -libc::ENOENT => Exact::Gone,
                        Some(ChunkEnd::Error(errno)) => {
                            return Err(DiagError::Refused(io::Error::from_raw_os_error(-errno)))
                        }
                        // An acknowledgement we did not ask for: no socket.
                        Some(_) => Exact::Malformed,
                        None if msg.kind == SOCK_DIAG_BY_FAMILY => {
                            match parse::parse_socket(msg.payload, stats) {
                                Some(s) => Exact::Found(s),
                                None => Exact::Malformed,
                            }
                        }
                        None => {
                            stats.foreign_messages += 1;
                            continue;
                        }
                    };
                    if answer == Exact::Malformed {
                        stats.malformed_messages += 1;
                    }
                    answered[i] = true;
                    left -= 1;
                    on(first + i, answer);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sockid() -> [u8; SOCKID_LEN] {
        let mut id = [0u8; SOCKID_LEN];
        // sport 8080, dport 40000 (network order), src 198.18.0.1,
        // dst 198.18.0.2, interface 3, cookie 0x1122334455667788.
        id[0..2].copy_from_slice(&8080u16.to_be_bytes());
        id[2..4].copy_from_slice(&40000u16.to_be_bytes());
        id[4..8].copy_from_slice(&[198, 18, 0, 1]);
        id[20..24].copy_from_slice(&[198, 18, 0, 2]);
        id[36..40].copy_from_slice(&3u32.to_ne_bytes());
        id[40..44].copy_from_slice(&0x5566_7788u32.to_ne_bytes());
        id[44..48].copy_from_slice(&0x1122_3344u32.to_ne_bytes());
        id
    }

    #[test]
    fn an_exact_request_carries_the_id_verbatim() {
        let id = ExactId {
            family: AF_INET6,
            sockid: sockid(),
        };
        let mut out = Vec::new();
        exact_request(&mut out, 7, &id);
        assert_eq!(out.len(), 72, "nlmsghdr + inet_diag_req_v2");
        assert_eq!(out[0..4], 72u32.to_ne_bytes());
        assert_eq!(out[4..6], 20u16.to_ne_bytes(), "SOCK_DIAG_BY_FAMILY");
        assert_eq!(
            out[6..8],
            1u16.to_ne_bytes(),
            "NLM_F_REQUEST alone: not a dump"
        );
        assert_eq!(out[8..12], 7u32.to_ne_bytes());
        // family, protocol, ext = MEMINFO|INFO|CONG|SKMEMINFO, pad
        assert_eq!(out[16..20], [AF_INET6, 6, 0x01 | 0x02 | 0x08 | 0x40, 0]);
        assert_eq!(out[20..24], ALL_STATES.to_ne_bytes());
        assert_eq!(out[24..72], id.sockid);
    }

    #[test]
    fn a_legacy_dump_request_has_the_old_layout() {
        let out = legacy_dump_request(9, 0, CONNECTION_STATES);
        assert_eq!(out.len(), 76, "nlmsghdr + inet_diag_req");
        assert_eq!(out[4..6], 18u16.to_ne_bytes(), "TCPDIAG_GETSOCK");
        assert_eq!(
            out[6..8],
            0x301u16.to_ne_bytes(),
            "NLM_F_REQUEST | NLM_F_DUMP"
        );
        assert_eq!(out[8..12], 9u32.to_ne_bytes());
        assert_eq!(out[16..20], [AF_INET, 0, 0, 0]);
        assert!(out[20..68].iter().all(|b| *b == 0), "no socket named");
        assert_eq!(out[68..72], 0x1bfeu32.to_ne_bytes(), "all but LISTEN");
        assert_eq!(out[72..76], [0; 4]);
    }

    #[test]
    fn detail_asks_for_the_extensions() {
        assert_eq!(Detail::Full.extensions().bits(), 0x4b);
        assert_eq!(Detail::Base.extensions().bits(), 0);
    }
}
