//! The records the BPF iter/tcp program writes (`struct tcpstall_rec` in
//! agent/bpf/tcp_iter.bpf.c), parsed from bytes. Pure and total: a record
//! with the wrong magic or length, or a tail too short to be one, is
//! counted and skipped, never a panic.
//!
//! Layout (native byte order, 136 bytes):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `TSB1` (0x31425354) |
//! | 4 | 2 | record length |
//! | 6 | 1 | TCP state |
//! | 7 | 1 | address family |
//! | 8 | 8 | socket cookie |
//! | 16 | 8 | bytes_acked |
//! | 24 | 8 | bytes_received |
//! | 32 | 32 | snd_una, snd_nxt, write_seq, rcv_nxt, copied_seq, rcv_wup, rcv_wnd, snd_wnd (u32 each) |
//! | 64 | 5 | snd_wscale, rcv_wscale, nonagle, num_sacks, sack_ok (u8 each), then 3 bytes padding |
//! | 72 | 32 | SACK blocks sent: 4 × (start, end) |
//! | 104 | 32 | SACK blocks last received: 4 × (start, end) |

use tcpstall_common::kernel_tcp::{KernelTcp, SackBlock, SACK_BLOCKS};

pub const MAGIC: u32 = 0x3142_5354;
pub const RECORD_LEN: usize = 136;

/// What parsing had to skip, since the probe started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RecordStats {
    /// Records parsed.
    pub records: u64,
    /// Records with a wrong magic or length: the rest of that pass is
    /// skipped, since record boundaries are lost.
    pub malformed: u64,
    /// Bytes left at the end of a pass, too few for a record.
    pub truncated_bytes: u64,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_ne_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(a)
}

fn sacks_at(b: &[u8], at: usize) -> [SackBlock; SACK_BLOCKS] {
    let mut out = [SackBlock::default(); SACK_BLOCKS];
    for (i, blk) in out.iter_mut().enumerate() {
        let o = at + i * 8;
        *blk = SackBlock {
            start: u32_at(b, o),
            end: u32_at(b, o + 4),
        };
    }
    out
}

/// One record from exactly [`RECORD_LEN`] bytes; `None` when the magic
/// or the length field is wrong.
pub fn parse_record(b: &[u8; RECORD_LEN]) -> Option<KernelTcp> {
    if u32_at(b, 0) != MAGIC || usize::from(u16_at(b, 4)) != RECORD_LEN {
        return None;
    }
    Some(KernelTcp {
        state: b[6],
        family: b[7],
        cookie: u64_at(b, 8),
        bytes_acked: u64_at(b, 16),
        bytes_received: u64_at(b, 24),
        snd_una: u32_at(b, 32),
        snd_nxt: u32_at(b, 36),
        write_seq: u32_at(b, 40),
        rcv_nxt: u32_at(b, 44),
        copied_seq: u32_at(b, 48),
        rcv_wup: u32_at(b, 52),
        rcv_wnd: u32_at(b, 56),
        snd_wnd: u32_at(b, 60),
        snd_wscale: b[64],
        rcv_wscale: b[65],
        nonagle: b[66],
        num_sacks: b[67],
        sack_ok: b[68] & 1 != 0,
        sacks_sent: sacks_at(b, 72),
        sacks_recv: sacks_at(b, 104),
    })
}

/// Parses one whole pass of the iterator, handing each record to `on`.
pub fn parse_pass(bytes: &[u8], stats: &mut RecordStats, mut on: impl FnMut(KernelTcp)) {
    let mut chunks = bytes.chunks_exact(RECORD_LEN);
    for chunk in chunks.by_ref() {
        let Ok(rec) = <&[u8; RECORD_LEN]>::try_from(chunk) else {
            break;
        };
        match parse_record(rec) {
            Some(t) => {
                stats.records += 1;
                on(t);
            }
            None => {
                stats.malformed += 1;
                return;
            }
        }
    }
    stats.truncated_bytes += chunks.remainder().len() as u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as the program writes it on x86-64 (little-endian): an
    /// established IPv4 connection, cork set, one SACK block each way.
    #[rustfmt::skip]
    const RECORD: [u8; RECORD_LEN] = [
        0x54, 0x53, 0x42, 0x31,             // magic "TSB1"
        136, 0,                             // len
        1,                                  // state ESTABLISHED
        2,                                  // AF_INET
        0x2a, 0, 0, 0, 0, 0, 0, 0,          // cookie 42
        0x65, 0, 0, 0, 0, 0, 0, 0,          // bytes_acked 101
        0x32, 0, 0, 0, 0, 0, 0, 0,          // bytes_received 50
        0x64, 0x42, 0x0f, 0x00,             // snd_una 1_000_036
        0x2c, 0x43, 0x0f, 0x00,             // snd_nxt 1_000_236
        0x90, 0x43, 0x0f, 0x00,             // write_seq 1_000_336
        7, 0, 0, 0,                         // rcv_nxt
        2, 0, 0, 0,                         // copied_seq
        5, 0, 0, 0,                         // rcv_wup
        0x00, 0x00, 0x01, 0x00,             // rcv_wnd 65536
        0x00, 0x80, 0x00, 0x00,             // snd_wnd 32768
        7, 9,                               // snd_wscale, rcv_wscale
        2,                                  // nonagle: TCP_NAGLE_CORK
        1,                                  // num_sacks
        1,                                  // sack_ok
        0, 0, 0,                            // padding
        20, 0, 0, 0, 30, 0, 0, 0,           // sent block 0: 20..30
        0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0,
        0xf4, 0x42, 0x0f, 0x00, 0x00, 0x43, 0x0f, 0x00, // received 1_000_180..1_000_192
        0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0,
    ];

    #[test]
    fn parses_a_record_byte_for_byte() {
        let t = parse_record(&RECORD).expect("valid record");
        assert_eq!(t.cookie, 42);
        assert_eq!((t.state, t.family), (1, 2));
        assert_eq!((t.bytes_acked, t.bytes_received), (101, 50));
        assert_eq!(
            (t.snd_una, t.snd_nxt, t.write_seq),
            (1_000_036, 1_000_236, 1_000_336)
        );
        assert_eq!((t.rcv_nxt, t.copied_seq, t.rcv_wup), (7, 2, 5));
        assert_eq!((t.rcv_wnd, t.snd_wnd), (65536, 32768));
        assert_eq!((t.snd_wscale, t.rcv_wscale), (7, 9));
        assert!(t.cork() && !t.nodelay() && t.sack_ok);
        assert_eq!(
            t.sacks_sent().collect::<Vec<_>>(),
            vec![SackBlock { start: 20, end: 30 }]
        );
        assert_eq!(
            t.sacks_received().collect::<Vec<_>>(),
            vec![SackBlock {
                start: 1_000_180,
                end: 1_000_192
            }]
        );
    }

    #[test]
    fn a_pass_counts_what_it_skips() {
        let mut bytes = RECORD.to_vec();
        bytes.extend_from_slice(&RECORD);
        bytes.extend_from_slice(&RECORD[..10]);
        let mut stats = RecordStats::default();
        let mut n = 0;
        parse_pass(&bytes, &mut stats, |_| n += 1);
        assert_eq!(n, 2);
        assert_eq!(
            stats,
            RecordStats {
                records: 2,
                malformed: 0,
                truncated_bytes: 10
            }
        );

        let mut bad = RECORD;
        bad[4] = 100; // wrong length: boundaries lost, stop the pass
        let mut bytes = bad.to_vec();
        bytes.extend_from_slice(&RECORD);
        let mut stats = RecordStats::default();
        parse_pass(&bytes, &mut stats, |_| {
            panic!("nothing parses after a bad record")
        });
        assert_eq!(stats.malformed, 1);
        assert_eq!(stats.records, 0);
    }

    #[test]
    fn any_bytes_parse_without_panic() {
        let mut stats = RecordStats::default();
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            parse_pass(&bytes, &mut stats, |_| {});
        }
        assert_eq!(stats.records, 0);
    }
}
