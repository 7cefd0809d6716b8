//! The thin I/O layer: one `NETLINK_SOCK_DIAG` socket, a dump request per
//! address family, and the receive loop. Parsing lives in [`super::parse`].

use std::io;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr};
use tcpstall_common::SocketSample;

use super::parse::{self, ChunkEnd, ParseStats};

/// The kernel fills at most 32 KiB per dump reply (`netlink_recvmsg` caps
/// its allocation there); twice that leaves room for a larger future cap.
const RECV_BUF: usize = 64 * 1024;

/// Every state from ESTABLISHED (1) to NEW_SYN_RECV (12). Listeners come
/// too: they tell accepted sockets from connected ones.
const ALL_STATES: u32 = 0x1ffe;

/// An address family to dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];
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

    fn request(&mut self, family: Family) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
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
                extensions: ExtensionFlags::INFO
                    | ExtensionFlags::MEMINFO
                    | ExtensionFlags::SKMEMINFO
                    | ExtensionFlags::CONG,
                states: StateFlags::from_bits_retain(ALL_STATES),
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

    /// Dumps one family, handing each raw reply chunk to `on_chunk`, which
    /// says how the chunk ended. Used both by [`DiagSocket::dump`] and by
    /// captures and benchmarks that want the bytes alone.
    pub fn dump_chunks(
        &mut self,
        family: Family,
        mut on_chunk: impl FnMut(&[u8], u32) -> ChunkEnd,
    ) -> Result<(), DiagError> {
        let seq = self.request(family)?;
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
        self.dump_chunks(family, |chunk, seq| {
            parse::parse_chunk(chunk, seq, stats, &mut on)
        })
    }

    /// Receives a whole dump and only walks the netlink headers to find its
    /// end: the floor any sock_diag reader pays. Returns the bytes received.
    pub fn dump_raw(&mut self, family: Family) -> Result<usize, DiagError> {
        let mut total = 0;
        self.dump_chunks(family, |chunk, seq| {
            total += chunk.len();
            parse::chunk_end(chunk, seq)
        })?;
        Ok(total)
    }
}
