//! What the BPF `iter/tcp` probe reads straight from a socket's
//! `struct tcp_sock`: absolute sequence numbers, the SACK blocks, both
//! window scales and the Nagle/cork bits. tcp_info has none of the
//! sequence numbers, only counts of bytes; with both in one snapshot
//! (`bytes_acked`, `bytes_received` ride in the same record) each
//! direction's initial sequence number follows, and with it the relative
//! positions of [`crate::Positions`].
//!
//! Sequence numbers are `u32` and wrap: every comparison here is modular,
//! as in the kernel's `before()`/`after()`.

use serde::{Deserialize, Serialize};

use crate::sample::Opened;

/// How many SACK blocks a `tcp_sock` keeps each way.
pub const SACK_BLOCKS: usize = 4;

/// `nonagle` bits, from include/net/tcp.h.
pub const NAGLE_OFF: u8 = 1;
pub const NAGLE_CORK: u8 = 2;
pub const NAGLE_PUSH: u8 = 4;

/// Where a fact came from, carried with it into reports and JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FactSource {
    /// sock_diag's `tcp_info` and queues.
    TcpInfo,
    /// The BPF iter/tcp probe.
    Bpf,
    /// getsockopt on a duplicate of the owner's descriptor (pidfd_getfd).
    Getsockopt,
}

impl FactSource {
    pub fn name(self) -> &'static str {
        match self {
            FactSource::TcpInfo => "tcp_info",
            FactSource::Bpf => "bpf",
            FactSource::Getsockopt => "getsockopt",
        }
    }
}

/// One SACK block: absolute sequence numbers, `end` exclusive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SackBlock {
    pub start: u32,
    pub end: u32,
}

impl SackBlock {
    /// Bytes the block covers (modular).
    pub fn len(&self) -> u32 {
        self.end.wrapping_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `a` comes after `b` in sequence space (the kernel's `after(a, b)`).
pub fn seq_after(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) < 0
}

/// One connection's `tcp_sock`, as the BPF probe read it in one snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelTcp {
    /// The socket cookie: joins this to the sock_diag sample.
    pub cookie: u64,
    /// Kernel TCP state number.
    pub state: u8,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u8,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub snd_una: u32,
    pub snd_nxt: u32,
    pub write_seq: u32,
    pub rcv_nxt: u32,
    pub copied_seq: u32,
    /// rcv_nxt when the current receive window was advertised.
    pub rcv_wup: u32,
    /// Receive window last advertised, bytes.
    pub rcv_wnd: u32,
    /// Send window the peer last advertised, bytes (scaled).
    pub snd_wnd: u32,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    /// `tp->nonagle`: [`NAGLE_OFF`] (TCP_NODELAY), [`NAGLE_CORK`]
    /// (TCP_CORK), [`NAGLE_PUSH`].
    pub nonagle: u8,
    /// `rx_opt.sack_ok`: SACK was negotiated.
    pub sack_ok: bool,
    /// How many of `sacks_sent` are valid (as the kernel counts them).
    pub num_sacks: u8,
    /// `tp->selective_acks`: what this side reports holding above rcv_nxt.
    pub sacks_sent: [SackBlock; SACK_BLOCKS],
    /// `tp->recv_sack_cache`: the blocks the peer last reported.
    pub sacks_recv: [SackBlock; SACK_BLOCKS],
}

impl KernelTcp {
    /// TCP_CORK is set.
    pub fn cork(&self) -> bool {
        self.nonagle & NAGLE_CORK != 0
    }

    /// TCP_NODELAY is set.
    pub fn nodelay(&self) -> bool {
        self.nonagle & NAGLE_OFF != 0
    }

    /// The SACK blocks this side is sending: the first `num_sacks`, those
    /// that are not empty and lie above rcv_nxt.
    pub fn sacks_sent(&self) -> impl Iterator<Item = SackBlock> + '_ {
        let n = usize::from(self.num_sacks).min(SACK_BLOCKS);
        self.sacks_sent[..n]
            .iter()
            .copied()
            .filter(move |b| !b.is_empty() && seq_after(b.start, self.rcv_nxt))
    }

    /// The SACK blocks the peer last reported that still matter: those
    /// ending above snd_una (the cache keeps stale ones, and zeros).
    pub fn sacks_received(&self) -> impl Iterator<Item = SackBlock> + '_ {
        self.sacks_recv
            .iter()
            .copied()
            .filter(move |b| !b.is_empty() && seq_after(b.end, self.snd_una))
    }

    /// Sequence number of the first byte this side sent (its ISN + 1),
    /// from snd_una and bytes_acked of the same snapshot. bytes_acked
    /// counts the SYN on the side that connected.
    pub fn snd_isn1(&self, opened: Opened) -> Option<u32> {
        let syn = u64::from(opened == Opened::Active);
        let acked = self.bytes_acked.checked_sub(syn)?;
        Some(self.snd_una.wrapping_sub(acked as u32))
    }

    /// Sequence number of the first byte the peer sent (its ISN + 1).
    pub fn rcv_isn1(&self) -> u32 {
        self.rcv_nxt.wrapping_sub(self.bytes_received as u32)
    }

    /// Relative position (bytes from the first byte) of a sequence number
    /// of our sending direction: snd_una's relative position extended by
    /// the modular distance, so it stays right past 4 GiB.
    pub fn snd_relative(&self, opened: Opened, seq: u32) -> Option<u64> {
        let una = self
            .bytes_acked
            .checked_sub(u64::from(opened == Opened::Active))?;
        let ahead = seq.wrapping_sub(self.snd_una) as i32;
        una.checked_add_signed(i64::from(ahead))
    }

    /// Relative position of a sequence number of the receiving direction.
    pub fn rcv_relative(&self, seq: u32) -> Option<u64> {
        let ahead = seq.wrapping_sub(self.rcv_nxt) as i32;
        self.bytes_received.checked_add_signed(i64::from(ahead))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp() -> KernelTcp {
        KernelTcp {
            bytes_acked: 101,
            bytes_received: 50,
            snd_una: 1_000_100,
            snd_nxt: 1_000_300,
            write_seq: 1_000_400,
            rcv_nxt: 7,
            copied_seq: 2,
            ..KernelTcp::default()
        }
    }

    #[test]
    fn isns_follow_from_one_snapshot() {
        let t = tcp();
        // Active: bytes_acked 101 = SYN + 100 bytes.
        assert_eq!(t.snd_isn1(Opened::Active), Some(1_000_000));
        assert_eq!(t.snd_isn1(Opened::Passive), Some(999_999));
        // rcv_nxt 7 with 50 received: the peer started at 2^32 - 43.
        assert_eq!(t.rcv_isn1(), 7u32.wrapping_sub(50));
        assert_eq!(t.snd_relative(Opened::Active, t.snd_nxt), Some(300));
        assert_eq!(t.snd_relative(Opened::Active, t.write_seq), Some(400));
        assert_eq!(t.rcv_relative(t.copied_seq), Some(45));
        let zero = KernelTcp::default();
        assert_eq!(zero.snd_isn1(Opened::Active), None);
    }

    #[test]
    fn sacks_sent_honour_num_sacks_and_rcv_nxt() {
        let mut t = tcp();
        t.rcv_nxt = u32::MAX - 10;
        t.sacks_sent = [
            SackBlock { start: 5, end: 10 },  // wrapped, above
            SackBlock { start: 20, end: 30 }, // valid
            SackBlock {
                start: 100,
                end: 200,
            }, // past num_sacks
            SackBlock::default(),
        ];
        t.num_sacks = 2;
        let got: Vec<_> = t.sacks_sent().collect();
        assert_eq!(got, t.sacks_sent[..2].to_vec());
        t.num_sacks = 200; // nonsense from the kernel: clamp, skip empties
        assert_eq!(t.sacks_sent().count(), 3);
        t.rcv_nxt = 25; // blocks now at or below rcv_nxt drop out
        assert_eq!(t.sacks_sent().count(), 1);
    }

    #[test]
    fn sacks_received_ignore_stale_and_empty() {
        let mut t = tcp();
        t.sacks_recv = [
            SackBlock {
                start: 1_000_000,
                end: 1_000_100,
            }, // at snd_una
            SackBlock {
                start: 1_000_200,
                end: 1_000_250,
            },
            SackBlock::default(),
            SackBlock::default(),
        ];
        let got: Vec<_> = t.sacks_received().collect();
        assert_eq!(
            got,
            vec![SackBlock {
                start: 1_000_200,
                end: 1_000_250
            }]
        );
    }

    #[test]
    fn nonagle_bits() {
        let mut t = tcp();
        assert!(!t.cork() && !t.nodelay());
        t.nonagle = NAGLE_CORK;
        assert!(t.cork() && !t.nodelay());
        t.nonagle = NAGLE_OFF | NAGLE_PUSH;
        assert!(!t.cork() && t.nodelay());
    }

    #[test]
    fn seq_after_wraps() {
        assert!(seq_after(5, u32::MAX - 5));
        assert!(!seq_after(u32::MAX - 5, 5));
        assert!(!seq_after(7, 7));
    }
}
