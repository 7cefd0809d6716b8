//! Where each side of a connection stands in the byte stream, derived from
//! `tcp_info` and the diag queues.
//!
//! Positions count bytes of sequence space from the first byte after the
//! initial sequence number, as `seq - (ISN + 1)`. A FIN occupies one, as on
//! the wire. Both directions of a flow count from the same ISN on both
//! hosts, so the sender's `snd_una`/`snd_nxt` and the receiver's `rcv_nxt`
//! compare directly.
//!
//! Measured on 6.18 and pinned by the live tests: `bytes_acked` counts the
//! SYN on the side that opened the connection (its SYN is acknowledged by
//! the SYN-ACK through `tcp_ack`), not on the side that accepted it (the
//! child socket starts with `snd_una = ISN + 1`). `bytes_received` never
//! counts the peer's SYN. A FIN adds one to both once it is acknowledged
//! or received.

use serde::{Deserialize, Serialize};

use crate::sample::{Opened, SocketSample};

/// The derived positions of docs/design.md for one socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Positions {
    /// `write_seq - snd_una`: written and not yet acknowledged.
    pub sendq: u32,
    /// `rcv_nxt - copied_seq`: received and not yet read.
    pub recvq: u32,
    /// `write_seq - snd_nxt`: written and not yet sent (4.6+).
    pub notsent: Option<u32>,
    /// `snd_nxt - snd_una`: sent and not yet acknowledged.
    pub inflight: Option<u32>,
    /// First byte not yet acknowledged by the peer.
    pub snd_una: Option<u64>,
    /// Next byte to send.
    pub snd_nxt: Option<u64>,
    /// End of what the application wrote.
    pub write_seq: Option<u64>,
    /// Next byte expected from the peer: what this side acknowledges.
    pub rcv_nxt: Option<u64>,
    /// End of what the application has read.
    pub copied: Option<u64>,
    /// Window the peer last advertised to us, scaled, bytes (5.4+).
    pub snd_wnd: Option<u32>,
    /// Window we last advertised, scaled, bytes (6.2+).
    pub rcv_wnd: Option<u32>,
    /// Shift applied to the peer's windows.
    pub snd_wscale: Option<u8>,
    /// Shift the peer applies to ours.
    pub rcv_wscale: Option<u8>,
}

impl SocketSample {
    /// The stream positions derived from this sample (see [`Positions`]).
    pub fn positions(&self) -> Positions {
        Positions::derive(self)
    }
}

impl Positions {
    /// Derives the positions of one sample. Without `tcp_info` (TIME-WAIT
    /// and request sockets) only the queues are known.
    pub fn derive(s: &SocketSample) -> Positions {
        let mut p = Positions {
            sendq: s.wqueue,
            recvq: s.rqueue,
            ..Positions::default()
        };
        let Some(info) = s.info.as_ref() else {
            return p;
        };
        p.notsent = info.notsent_bytes();
        p.inflight = p.notsent.and_then(|n| s.wqueue.checked_sub(n));
        p.snd_wnd = info.snd_wnd();
        p.rcv_wnd = info.rcv_wnd();
        p.snd_wscale = info.snd_wscale();
        p.rcv_wscale = info.rcv_wscale();

        let syn = match s.opened {
            Some(Opened::Active) => Some(1),
            Some(Opened::Passive) => Some(0),
            None => None,
        };
        p.snd_una = info
            .bytes_acked()
            .zip(syn)
            .and_then(|(acked, syn)| acked.checked_sub(syn));
        p.write_seq = p.snd_una.map(|una| una + u64::from(s.wqueue));
        p.snd_nxt = p
            .write_seq
            .zip(p.notsent)
            .and_then(|(w, n)| w.checked_sub(u64::from(n)))
            .filter(|nxt| Some(*nxt) >= p.snd_una);
        p.rcv_nxt = info.bytes_received();
        p.copied = p.rcv_nxt.and_then(|r| r.checked_sub(u64::from(s.rqueue)));
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::TcpState;
    use crate::tcp_info::TcpInfo;

    fn info(bytes_acked: u64, bytes_received: u64, notsent: u32, len: usize) -> TcpInfo {
        let mut raw = vec![0u8; len];
        raw[120..128].copy_from_slice(&bytes_acked.to_ne_bytes());
        raw[128..136].copy_from_slice(&bytes_received.to_ne_bytes());
        if len >= 148 {
            raw[144..148].copy_from_slice(&notsent.to_ne_bytes());
        }
        TcpInfo::parse(&raw).expect("valid tcp_info")
    }

    fn sample(opened: Option<Opened>, info: Option<TcpInfo>, rq: u32, wq: u32) -> SocketSample {
        SocketSample {
            netns: 1,
            local: "127.0.0.1:1".parse().expect("addr"),
            remote: "127.0.0.1:2".parse().expect("addr"),
            state: TcpState::Established,
            cookie: 7,
            inode: 0,
            uid: 0,
            rqueue: rq,
            wqueue: wq,
            timer: None,
            timer_expires_ms: 0,
            timer_retransmits: 0,
            opened,
            info,
            skmem: None,
            cong: None,
            shutdown: None,
        }
    }

    #[test]
    fn active_side_subtracts_its_syn() {
        let p = sample(Some(Opened::Active), Some(info(1001, 0, 300, 280)), 0, 500).positions();
        assert_eq!(p.snd_una, Some(1000));
        assert_eq!(p.write_seq, Some(1500));
        assert_eq!(p.snd_nxt, Some(1200));
        assert_eq!(p.inflight, Some(200));
        assert_eq!(p.notsent, Some(300));
    }

    #[test]
    fn passive_side_has_no_syn_to_subtract() {
        let p = sample(Some(Opened::Passive), Some(info(1000, 70, 0, 280)), 20, 0).positions();
        assert_eq!(p.snd_una, Some(1000));
        assert_eq!(p.snd_nxt, Some(1000));
        assert_eq!(p.rcv_nxt, Some(70));
        assert_eq!(p.copied, Some(50));
    }

    #[test]
    fn unknown_opener_gives_no_send_positions_but_receive_ones() {
        let p = sample(None, Some(info(5, 9, 0, 280)), 0, 0).positions();
        assert_eq!(p.snd_una, None);
        assert_eq!(p.snd_nxt, None);
        assert_eq!(p.rcv_nxt, Some(9));
    }

    #[test]
    fn syn_not_yet_acknowledged_has_no_snd_una() {
        let p = sample(Some(Opened::Active), Some(info(0, 0, 0, 280)), 0, 0).positions();
        assert_eq!(p.snd_una, None);
    }

    #[test]
    fn old_kernel_without_bytes_acked_gives_none_not_zero() {
        let p = sample(
            Some(Opened::Active),
            Some(TcpInfo::parse(&[0; 104]).expect("104")),
            3,
            4,
        )
        .positions();
        assert_eq!(p.snd_una, None);
        assert_eq!(p.rcv_nxt, None);
        assert_eq!(p.notsent, None);
        assert_eq!(p.snd_wnd, None);
        assert_eq!((p.sendq, p.recvq), (4, 3));
    }

    #[test]
    fn kernel_4_1_has_positions_but_not_snd_nxt() {
        let p = sample(Some(Opened::Passive), Some(info(10, 20, 0, 136)), 5, 6).positions();
        assert_eq!(p.snd_una, Some(10));
        assert_eq!(p.write_seq, Some(16));
        assert_eq!(p.snd_nxt, None);
        assert_eq!(p.copied, Some(15));
    }

    #[test]
    fn without_tcp_info_only_queues() {
        let p = sample(Some(Opened::Active), None, 1, 2).positions();
        assert_eq!(
            p,
            Positions {
                sendq: 2,
                recvq: 1,
                ..Positions::default()
            }
        );
    }

    #[test]
    fn racy_reading_never_underflows() {
        // notsent read after the queue shrank: larger than wqueue.
        let p = sample(Some(Opened::Passive), Some(info(0, 3, 900, 280)), 10, 100).positions();
        assert_eq!(p.inflight, None);
        assert_eq!(p.snd_nxt, None);
        assert_eq!(p.copied, None);
    }
}
