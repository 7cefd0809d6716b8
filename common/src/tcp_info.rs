//! `struct tcp_info` as the kernel hands it over, parsed by length.
//!
//! The struct has grown with almost every kernel release since 2.6: 104
//! bytes on upstream 3.10, 192 on 4.10, 200 on 4.18, 224 on 4.19, 232 on
//! 5.4, 240 on 6.2, 248 on 6.7, 280 on 6.18. (RHEL/CentOS 7 kernels
//! backport later fields; a capture from one would pin their length.)
//! The kernel sends the
//! size it knows, so a field exists only when the reply is long enough to
//! hold it. We keep the bytes and answer every accessor with `None` for a
//! field the kernel did not send: an absent field is never confused with a
//! zero. Bytes beyond the layout we know (a kernel newer than ours) are
//! ignored.
//!
//! Values are in host byte order, as the kernel writes them.

use serde::ser::{Serialize, SerializeMap, Serializer};

/// The shortest `tcp_info` any supported kernel sends (3.10, total_retrans).
pub const MIN_LEN: usize = 104;
/// The longest layout this build knows (6.18, the AccECN counters).
pub const KNOWN_LEN: usize = 280;

/// Why a byte string is not a `tcp_info`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TcpInfoError {
    #[error("tcp_info of {len} bytes is shorter than the oldest layout ({MIN_LEN} bytes)")]
    Truncated { len: usize },
}

/// A `tcp_info` of any supported kernel. Cheap to copy around: the bytes
/// are kept as they came and decoded on access.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TcpInfo {
    len: u16,
    raw: [u8; KNOWN_LEN],
}

impl std::fmt::Debug for TcpInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpInfo")
            .field("len", &self.len)
            .field("state", &self.state())
            .field("bytes_acked", &self.bytes_acked())
            .field("bytes_received", &self.bytes_received())
            .field("notsent_bytes", &self.notsent_bytes())
            .field("snd_wnd", &self.snd_wnd())
            .finish_non_exhaustive()
    }
}

/// Reads one little piece of the struct, or `None` past what was sent.
trait Field: Sized {
    const SIZE: usize;
    fn read(bytes: &[u8]) -> Self;
}

macro_rules! field_int {
    ($($t:ty),*) => {$(
        impl Field for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn read(bytes: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(&bytes[..Self::SIZE]);
                <$t>::from_ne_bytes(a)
            }
        }
    )*};
}
field_int!(u8, u16, u32, u64);

impl TcpInfo {
    /// Parses a `tcp_info` of `bytes.len()` bytes (as found in
    /// `INET_DIAG_INFO` or returned by `getsockopt(TCP_INFO)`).
    pub fn parse(bytes: &[u8]) -> Result<Self, TcpInfoError> {
        if bytes.len() < MIN_LEN {
            return Err(TcpInfoError::Truncated { len: bytes.len() });
        }
        let n = bytes.len().min(KNOWN_LEN);
        let mut raw = [0u8; KNOWN_LEN];
        raw[..n].copy_from_slice(&bytes[..n]);
        Ok(TcpInfo {
            // n <= KNOWN_LEN, which fits u16.
            len: n as u16,
            raw,
        })
    }

    /// How many bytes of the known layout the kernel sent.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Never true for a parsed value; present for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn get<T: Field>(&self, offset: usize) -> Option<T> {
        let end = offset + T::SIZE;
        (end <= self.len()).then(|| T::read(&self.raw[offset..end]))
    }

    /// Window scale the peer announced: we shift the windows it sends by this.
    pub fn snd_wscale(&self) -> Option<u8> {
        self.get::<u8>(6).map(|b| b & 0x0f)
    }

    /// Window scale we announced: the peer shifts our windows by this.
    pub fn rcv_wscale(&self) -> Option<u8> {
        self.get::<u8>(6).map(|b| b >> 4)
    }

    /// `tcpi_delivery_rate_app_limited` (4.9+; the bit is zero before).
    pub fn delivery_rate_app_limited(&self) -> Option<bool> {
        self.get::<u8>(7).map(|b| b & 0x01 != 0)
    }

    /// `tcpi_fastopen_client_fail` (5.5+; zero before).
    pub fn fastopen_client_fail(&self) -> Option<u8> {
        self.get::<u8>(7).map(|b| (b >> 1) & 0x03)
    }

    fn accecn_word(&self) -> Option<u32> {
        self.get::<u32>(276)
    }

    /// Negotiated ECN mode (6.18+): 0 disabled, 1 RFC 3168, 2 AccECN, 3 pending.
    pub fn ecn_mode(&self) -> Option<u8> {
        self.accecn_word().map(|w| (w & 0x3) as u8)
    }

    /// AccECN option seen state (6.18+).
    pub fn accecn_opt_seen(&self) -> Option<u8> {
        self.accecn_word().map(|w| ((w >> 2) & 0x3) as u8)
    }

    /// AccECN failure mode bits (6.18+).
    pub fn accecn_fail_mode(&self) -> Option<u8> {
        self.accecn_word().map(|w| ((w >> 4) & 0xf) as u8)
    }

    /// `tcpi_options2` (6.18+), 24 bits of newer option flags.
    pub fn options2(&self) -> Option<u32> {
        self.accecn_word().map(|w| w >> 8)
    }
}

/// Declares the plain fields: accessor, offset, and JSON name in one place,
/// so the parser and the serialiser cannot disagree.
macro_rules! plain_fields {
    ($( $(#[$doc:meta])* $name:ident : $t:ty = $off:literal ; )*) => {
        impl TcpInfo {
            $(
                $(#[$doc])*
                pub fn $name(&self) -> Option<$t> {
                    self.get::<$t>($off)
                }
            )*
        }

        /// Every plain field's name, byte offset and size, in layout
        /// order: a `tcp_info` of `len` bytes holds a field when
        /// `offset + size <= len`.
        pub const PLAIN_FIELDS: &[(&str, usize, usize)] =
            &[$( (stringify!($name), $off, std::mem::size_of::<$t>()) ),*];

        impl TcpInfo {
            fn serialize_plain<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
                $( map.serialize_entry(stringify!($name), &self.$name())?; )*
                Ok(())
            }
        }
    };
}

plain_fields! {
    /// TCP state as the kernel numbers it (1 = ESTABLISHED ...).
    state: u8 = 0;
    /// Congestion avoidance state (0 open, 1 disorder, 2 cwr, 3 recovery, 4 loss).
    ca_state: u8 = 1;
    /// Retransmissions of the head segment without an ACK in between.
    retransmits: u8 = 2;
    /// Unanswered zero-window probes (or keepalives).
    probes: u8 = 3;
    /// Exponential RTO backoff.
    backoff: u8 = 4;
    /// Negotiated options: 1 timestamps, 2 SACK, 4 wscale, 8 ECN, ...
    options: u8 = 5;
    /// Retransmission timeout, microseconds.
    rto: u32 = 8;
    /// Delayed ACK timeout, microseconds.
    ato: u32 = 12;
    snd_mss: u32 = 16;
    rcv_mss: u32 = 20;
    /// Segments sent and not yet acknowledged.
    unacked: u32 = 24;
    /// Segments the peer SACKed.
    sacked: u32 = 28;
    /// Segments considered lost.
    lost: u32 = 32;
    /// Segments retransmitted and still unacknowledged.
    retrans: u32 = 36;
    fackets: u32 = 40;
    /// Milliseconds since we last sent data.
    last_data_sent: u32 = 44;
    /// Never set by Linux.
    last_ack_sent: u32 = 48;
    /// Milliseconds since we last received data.
    last_data_recv: u32 = 52;
    /// Milliseconds since we last received an ACK.
    last_ack_recv: u32 = 56;
    pmtu: u32 = 60;
    rcv_ssthresh: u32 = 64;
    /// Smoothed RTT, microseconds.
    rtt: u32 = 68;
    rttvar: u32 = 72;
    snd_ssthresh: u32 = 76;
    /// Congestion window, segments.
    snd_cwnd: u32 = 80;
    advmss: u32 = 84;
    reordering: u32 = 88;
    rcv_rtt: u32 = 92;
    rcv_space: u32 = 96;
    total_retrans: u32 = 100;
    // 3.15
    pacing_rate: u64 = 104;
    max_pacing_rate: u64 = 112;
    // 4.1
    /// Bytes the peer acknowledged (plus the SYN on the side that opened, plus a FIN).
    bytes_acked: u64 = 120;
    /// Bytes received in order (plus a FIN).
    bytes_received: u64 = 128;
    // 4.2
    segs_out: u32 = 136;
    segs_in: u32 = 140;
    // 4.6
    /// write_seq - snd_nxt: written by the application, not yet sent.
    notsent_bytes: u32 = 144;
    min_rtt: u32 = 148;
    data_segs_in: u32 = 152;
    data_segs_out: u32 = 156;
    // 4.9
    delivery_rate: u64 = 160;
    // 4.10
    busy_time: u64 = 168;
    rwnd_limited: u64 = 176;
    sndbuf_limited: u64 = 184;
    // 4.18
    delivered: u32 = 192;
    delivered_ce: u32 = 196;
    // 4.19
    bytes_sent: u64 = 200;
    bytes_retrans: u64 = 208;
    dsack_dups: u32 = 216;
    reord_seen: u32 = 220;
    // 5.4
    rcv_ooopack: u32 = 224;
    /// The peer's last advertised receive window, scaled, bytes.
    snd_wnd: u32 = 228;
    // 6.2
    /// The receive window we last advertised, scaled, bytes.
    rcv_wnd: u32 = 232;
    rehash: u32 = 236;
    // 6.7
    total_rto: u16 = 240;
    total_rto_recoveries: u16 = 242;
    total_rto_time: u32 = 244;
    // 6.18
    received_ce: u32 = 248;
    delivered_e1_bytes: u32 = 252;
    delivered_e0_bytes: u32 = 256;
    delivered_ce_bytes: u32 = 260;
    received_e1_bytes: u32 = 264;
    received_e0_bytes: u32 = 268;
    received_ce_bytes: u32 = 272;
}

impl Serialize for TcpInfo {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("len", &self.len)?;
        self.serialize_plain(&mut map)?;
        map.serialize_entry("snd_wscale", &self.snd_wscale())?;
        map.serialize_entry("rcv_wscale", &self.rcv_wscale())?;
        map.serialize_entry(
            "delivery_rate_app_limited",
            &self.delivery_rate_app_limited(),
        )?;
        map.serialize_entry("fastopen_client_fail", &self.fastopen_client_fail())?;
        map.serialize_entry("ecn_mode", &self.ecn_mode())?;
        map.serialize_entry("accecn_opt_seen", &self.accecn_opt_seen())?;
        map.serialize_entry("accecn_fail_mode", &self.accecn_fail_mode())?;
        map.serialize_entry("options2", &self.options2())?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorter_than_oldest_layout_is_an_error() {
        for len in [0, 1, 8, 103] {
            assert_eq!(
                TcpInfo::parse(&vec![0xaa; len]),
                Err(TcpInfoError::Truncated { len })
            );
        }
    }

    #[test]
    fn field_beyond_length_is_absent_not_zero() {
        let info = TcpInfo::parse(&[0u8; 104]).expect("104 bytes parse");
        assert_eq!(info.total_retrans(), Some(0));
        assert_eq!(info.pacing_rate(), None);
        assert_eq!(info.bytes_acked(), None);
        assert_eq!(info.snd_wnd(), None);
        assert_eq!(info.ecn_mode(), None);
    }

    #[test]
    fn a_field_cut_in_half_is_absent() {
        // 124 bytes: bytes_acked (120..128) is only half there.
        let info = TcpInfo::parse(&[0x11; 124]).expect("parses");
        assert_eq!(info.max_pacing_rate(), Some(0x1111_1111_1111_1111));
        assert_eq!(info.bytes_acked(), None);
    }

    #[test]
    fn longer_than_known_keeps_known_fields() {
        let mut bytes = vec![0u8; KNOWN_LEN + 40];
        bytes[228..232].copy_from_slice(&65535u32.to_ne_bytes());
        let info = TcpInfo::parse(&bytes).expect("parses");
        assert_eq!(info.len(), KNOWN_LEN);
        assert_eq!(info.snd_wnd(), Some(65535));
    }
}
