//! One TCP socket as one poll saw it: identity, queues, and what the kernel
//! told us about it. Everything the kernel may leave out is an `Option`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::tcp_info::TcpInfo;

/// TCP states, numbered as in the kernel's `include/net/tcp_states.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    BoundInactive,
}

impl TcpState {
    /// Every state, in kernel order.
    pub const ALL: [TcpState; 13] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
        TcpState::BoundInactive,
    ];

    /// From the kernel's number; `None` for a number no kernel uses.
    pub fn from_kernel(n: u8) -> Option<TcpState> {
        let i = usize::from(n).checked_sub(1)?;
        Self::ALL.get(i).copied()
    }

    /// The kernel's number for this state.
    pub fn kernel_number(self) -> u8 {
        // ALL has 13 entries, so the index fits a u8.
        Self::ALL.iter().position(|s| *s == self).unwrap_or(0) as u8 + 1
    }

    /// The name `ss` prints (ESTAB, SYN-SENT, ...).
    pub fn ss_name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTAB",
            TcpState::SynSent => "SYN-SENT",
            TcpState::SynRecv | TcpState::NewSynRecv => "SYN-RECV",
            TcpState::FinWait1 => "FIN-WAIT-1",
            TcpState::FinWait2 => "FIN-WAIT-2",
            TcpState::TimeWait => "TIME-WAIT",
            TcpState::Close => "UNCONN",
            TcpState::CloseWait => "CLOSE-WAIT",
            TcpState::LastAck => "LAST-ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::BoundInactive => "BOUND",
        }
    }

    /// The snake_case name used in JSON and accepted by filters.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::Established => "established",
            TcpState::SynSent => "syn_sent",
            TcpState::SynRecv => "syn_recv",
            TcpState::FinWait1 => "fin_wait1",
            TcpState::FinWait2 => "fin_wait2",
            TcpState::TimeWait => "time_wait",
            TcpState::Close => "close",
            TcpState::CloseWait => "close_wait",
            TcpState::LastAck => "last_ack",
            TcpState::Listen => "listen",
            TcpState::Closing => "closing",
            TcpState::NewSynRecv => "new_syn_recv",
            TcpState::BoundInactive => "bound_inactive",
        }
    }

    /// Parses either the JSON name or the `ss` name, case-insensitively.
    pub fn parse(s: &str) -> Option<TcpState> {
        let s = s.to_ascii_lowercase().replace('-', "_");
        Self::ALL.into_iter().find(|st| {
            st.name() == s
                || st.ss_name().to_ascii_lowercase().replace('-', "_") == s
                || (s == "estab" && *st == TcpState::Established)
        })
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.ss_name())
    }
}

/// Which side opened the connection. It decides whether `bytes_acked`
/// counts a SYN (see `Positions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Opened {
    /// This socket called connect(): its SYN is in `bytes_acked`.
    Active,
    /// This socket came out of accept(): no SYN in `bytes_acked`.
    Passive,
}

/// The socket timer the kernel reports in the diag header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    Retransmit,
    Keepalive,
    TimeWait,
    ZeroWindowProbe,
}

/// `INET_DIAG_SKMEMINFO`: the socket's memory accounting (`ss -m`).
/// Older kernels send fewer counters; missing ones are `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SkMemInfo {
    pub rmem_alloc: Option<u32>,
    pub rcvbuf: Option<u32>,
    pub wmem_alloc: Option<u32>,
    pub sndbuf: Option<u32>,
    pub fwd_alloc: Option<u32>,
    pub wmem_queued: Option<u32>,
    pub optmem: Option<u32>,
    pub backlog: Option<u32>,
    pub drops: Option<u32>,
}

/// A congestion control name (`INET_DIAG_CONG`), at most 16 bytes as in
/// the kernel's `TCP_CA_NAME_MAX`; held inline so a poll does not allocate
/// per socket.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CongName {
    len: u8,
    bytes: [u8; 16],
}

impl CongName {
    /// From the attribute payload (NUL-terminated or not). Longer names are
    /// cut at 16 bytes; bytes that are not UTF-8 are replaced on display.
    pub fn new(payload: &[u8]) -> CongName {
        let end = payload
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(payload.len())
            .min(16);
        let mut bytes = [0u8; 16];
        bytes[..end].copy_from_slice(&payload[..end]);
        CongName {
            len: end as u8,
            bytes,
        }
    }

    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.bytes[..usize::from(self.len)])
    }
}

impl fmt::Debug for CongName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl fmt::Display for CongName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl Serialize for CongName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_str())
    }
}

/// One TCP socket from one poll.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketSample {
    /// Inode of the network namespace the socket lives in.
    pub netns: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: TcpState,
    /// The kernel's socket cookie: identity for the socket's whole life.
    pub cookie: u64,
    pub inode: u32,
    pub uid: u32,
    /// `idiag_rqueue`: rcv_nxt - copied_seq for a connection.
    pub rqueue: u32,
    /// `idiag_wqueue`: write_seq - snd_una for a connection.
    pub wqueue: u32,
    pub timer: Option<TimerKind>,
    /// Milliseconds until the timer fires.
    pub timer_expires_ms: u32,
    /// Retransmits as counted by the timer (`idiag_retrans`).
    pub timer_retransmits: u8,
    /// Which side opened; `None` when it cannot be told.
    pub opened: Option<Opened>,
    pub info: Option<TcpInfo>,
    pub skmem: Option<SkMemInfo>,
    pub cong: Option<CongName>,
    /// `INET_DIAG_SHUTDOWN`: 1 = we shut down reading, 2 = writing.
    pub shutdown: Option<u8>,
}

impl SocketSample {
    /// Whether an address is the loopback of its family.
    pub fn is_loopback(&self) -> bool {
        is_loopback(self.local.ip()) && is_loopback(self.remote.ip())
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.is_loopback()
}

/// Turns `::ffff:a.b.c.d` into `a.b.c.d` so that a dual-stack socket and
/// its IPv4 peer name the same addresses.
pub fn normalize_addr(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_kernel_numbers() {
        for n in 1..=13u8 {
            let st = TcpState::from_kernel(n).expect("known state");
            assert_eq!(st.kernel_number(), n);
        }
        assert_eq!(TcpState::from_kernel(0), None);
        assert_eq!(TcpState::from_kernel(14), None);
        assert_eq!(TcpState::from_kernel(1), Some(TcpState::Established));
        assert_eq!(TcpState::from_kernel(10), Some(TcpState::Listen));
    }

    #[test]
    fn states_parse_from_both_spellings() {
        assert_eq!(TcpState::parse("ESTAB"), Some(TcpState::Established));
        assert_eq!(TcpState::parse("established"), Some(TcpState::Established));
        assert_eq!(TcpState::parse("fin-wait-1"), Some(TcpState::FinWait1));
        assert_eq!(TcpState::parse("close_wait"), Some(TcpState::CloseWait));
        assert_eq!(TcpState::parse("bogus"), None);
    }

    #[test]
    fn mapped_v4_is_normalised() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:80".parse().expect("addr");
        assert_eq!(
            normalize_addr(mapped),
            "127.0.0.1:80".parse().expect("addr")
        );
        let v6: SocketAddr = "[::1]:80".parse().expect("addr");
        assert_eq!(normalize_addr(v6), v6);
    }

    #[test]
    fn cong_name_stops_at_nul_and_16_bytes() {
        assert_eq!(CongName::new(b"cubic\0").as_str(), "cubic");
        assert_eq!(CongName::new(b"bbr").as_str(), "bbr");
        assert_eq!(CongName::new(&[b'x'; 40]).as_str().len(), 16);
        assert_eq!(CongName::new(b"").as_str(), "");
    }
}
