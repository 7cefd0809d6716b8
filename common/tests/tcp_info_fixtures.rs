//! `TcpInfo::parse` against byte-exact `tcp_info` of seven kernel layouts.
//!
//! The fixtures in `fixtures/` are written by `fixtures/gen_tcp_info.py`
//! from its own field table (see `fixtures/README.md`). Every field holds a
//! value derived from its own byte offset, so a field read at the wrong
//! offset gives a number that is visibly someone else's. The expectations
//! below are literals: neither the generator nor the parser computes them.
//!
//! The fixtures are little-endian, as x86_64 and aarch64 kernels write them.
#![cfg(target_endian = "little")]

use proptest::prelude::*;
use tcpstall_common::tcp_info::{KNOWN_LEN, MIN_LEN, PLAIN_FIELDS};
use tcpstall_common::{TcpInfo, TcpInfoError};

/// (kernel, bytes) for every fixture, shortest first.
const FIXTURES: [(&str, &[u8]); 7] = [
    ("3.10", include_bytes!("fixtures/tcp_info_104.bin")),
    ("4.10", include_bytes!("fixtures/tcp_info_192.bin")),
    ("4.18", include_bytes!("fixtures/tcp_info_200.bin")),
    ("4.19", include_bytes!("fixtures/tcp_info_224.bin")),
    ("5.4", include_bytes!("fixtures/tcp_info_232.bin")),
    ("6.7", include_bytes!("fixtures/tcp_info_248.bin")),
    ("6.18", include_bytes!("fixtures/tcp_info_280.bin")),
];

type Accessor = fn(&TcpInfo) -> Option<u64>;

/// One accessor: its name, the length a `tcp_info` needs to hold it (the
/// field's end offset), how to read it, and the value the fixtures hold.
struct Expect {
    name: &'static str,
    needs: usize,
    get: Accessor,
    value: u64,
}

macro_rules! expect {
    ($( $name:ident : $needs:literal = $value:literal ),* $(,)?) => {
        [$(
            Expect {
                name: stringify!($name),
                needs: $needs,
                get: |i: &TcpInfo| i.$name().map(u64::from),
                value: $value,
            },
        )*]
    };
}

/// Every plain accessor. u8: offset + 1; u16: 0x2000 + offset;
/// u32: 0x0100_0000 + offset; u64: 0x0300_0000 + offset in the high half,
/// 0x0400_0000 + offset in the low half.
const PLAIN: [Expect; 64] = expect! {
    state: 1 = 1,
    ca_state: 2 = 2,
    retransmits: 3 = 3,
    probes: 4 = 4,
    backoff: 5 = 5,
    options: 6 = 6,
    rto: 12 = 0x0100_0008,
    ato: 16 = 0x0100_000c,
    snd_mss: 20 = 0x0100_0010,
    rcv_mss: 24 = 0x0100_0014,
    unacked: 28 = 0x0100_0018,
    sacked: 32 = 0x0100_001c,
    lost: 36 = 0x0100_0020,
    retrans: 40 = 0x0100_0024,
    fackets: 44 = 0x0100_0028,
    last_data_sent: 48 = 0x0100_002c,
    last_ack_sent: 52 = 0x0100_0030,
    last_data_recv: 56 = 0x0100_0034,
    last_ack_recv: 60 = 0x0100_0038,
    pmtu: 64 = 0x0100_003c,
    rcv_ssthresh: 68 = 0x0100_0040,
    rtt: 72 = 0x0100_0044,
    rttvar: 76 = 0x0100_0048,
    snd_ssthresh: 80 = 0x0100_004c,
    snd_cwnd: 84 = 0x0100_0050,
    advmss: 88 = 0x0100_0054,
    reordering: 92 = 0x0100_0058,
    rcv_rtt: 96 = 0x0100_005c,
    rcv_space: 100 = 0x0100_0060,
    total_retrans: 104 = 0x0100_0064,
    pacing_rate: 112 = 0x0300_0068_0400_0068,
    max_pacing_rate: 120 = 0x0300_0070_0400_0070,
    bytes_acked: 128 = 0x0300_0078_0400_0078,
    bytes_received: 136 = 0x0300_0080_0400_0080,
    segs_out: 140 = 0x0100_0088,
    segs_in: 144 = 0x0100_008c,
    notsent_bytes: 148 = 0x0100_0090,
    min_rtt: 152 = 0x0100_0094,
    data_segs_in: 156 = 0x0100_0098,
    data_segs_out: 160 = 0x0100_009c,
    delivery_rate: 168 = 0x0300_00a0_0400_00a0,
    busy_time: 176 = 0x0300_00a8_0400_00a8,
    rwnd_limited: 184 = 0x0300_00b0_0400_00b0,
    sndbuf_limited: 192 = 0x0300_00b8_0400_00b8,
    delivered: 196 = 0x0100_00c0,
    delivered_ce: 200 = 0x0100_00c4,
    bytes_sent: 208 = 0x0300_00c8_0400_00c8,
    bytes_retrans: 216 = 0x0300_00d0_0400_00d0,
    dsack_dups: 220 = 0x0100_00d8,
    reord_seen: 224 = 0x0100_00dc,
    rcv_ooopack: 228 = 0x0100_00e0,
    snd_wnd: 232 = 0x0100_00e4,
    rcv_wnd: 236 = 0x0100_00e8,
    rehash: 240 = 0x0100_00ec,
    total_rto: 242 = 0x20f0,
    total_rto_recoveries: 244 = 0x20f2,
    total_rto_time: 248 = 0x0100_00f4,
    received_ce: 252 = 0x0100_00f8,
    delivered_e1_bytes: 256 = 0x0100_00fc,
    delivered_e0_bytes: 260 = 0x0100_0100,
    delivered_ce_bytes: 264 = 0x0100_0104,
    received_e1_bytes: 268 = 0x0100_0108,
    received_e0_bytes: 272 = 0x0100_010c,
    received_ce_bytes: 276 = 0x0100_0110,
};

/// The bitfield accessors. Byte 6 is 0x97: snd_wscale 7 (low nibble),
/// rcv_wscale 9 (high nibble). Byte 7 is 0x05: app_limited 1, then
/// fastopen_client_fail 2. The 6.18 word at 276 is 0x5a3c_1e9e: ecn_mode 2,
/// accecn_opt_seen 3, accecn_fail_mode 9, options2 0x5a3c1e.
const BITFIELDS: [Expect; 8] = [
    Expect {
        name: "snd_wscale",
        needs: 7,
        get: |i| i.snd_wscale().map(u64::from),
        value: 7,
    },
    Expect {
        name: "rcv_wscale",
        needs: 7,
        get: |i| i.rcv_wscale().map(u64::from),
        value: 9,
    },
    Expect {
        name: "delivery_rate_app_limited",
        needs: 8,
        get: |i| i.delivery_rate_app_limited().map(u64::from),
        value: 1,
    },
    Expect {
        name: "fastopen_client_fail",
        needs: 8,
        get: |i| i.fastopen_client_fail().map(u64::from),
        value: 2,
    },
    Expect {
        name: "ecn_mode",
        needs: 280,
        get: |i| i.ecn_mode().map(u64::from),
        value: 2,
    },
    Expect {
        name: "accecn_opt_seen",
        needs: 280,
        get: |i| i.accecn_opt_seen().map(u64::from),
        value: 3,
    },
    Expect {
        name: "accecn_fail_mode",
        needs: 280,
        get: |i| i.accecn_fail_mode().map(u64::from),
        value: 9,
    },
    Expect {
        name: "options2",
        needs: 280,
        get: |i| i.options2().map(u64::from),
        value: 0x5a_3c1e,
    },
];

fn parse(kernel: &str, bytes: &[u8]) -> TcpInfo {
    TcpInfo::parse(bytes).unwrap_or_else(|e| panic!("{kernel} fixture: {e}"))
}

#[test]
fn fixtures_have_the_kernel_sizes_and_share_one_prefix() {
    let sizes: Vec<usize> = FIXTURES.iter().map(|(_, b)| b.len()).collect();
    assert_eq!(sizes, [104, 192, 200, 224, 232, 248, 280]);
    let full = FIXTURES[6].1;
    for (kernel, bytes) in FIXTURES {
        assert_eq!(bytes, &full[..bytes.len()], "{kernel} is not a prefix");
    }
}

#[test]
fn every_plain_accessor_is_checked() {
    let ours: Vec<&str> = PLAIN.iter().map(|e| e.name).collect();
    let theirs: Vec<&str> = PLAIN_FIELDS.iter().map(|(n, _, _)| *n).collect();
    assert_eq!(ours, theirs);
}

#[test]
fn every_plain_field_ends_where_its_accessor_needs() {
    for ((name, offset, size), e) in PLAIN_FIELDS.iter().zip(PLAIN.iter()) {
        assert_eq!(offset + size, e.needs, "{name}");
    }
}

#[test]
fn every_accessor_the_length_covers_is_exact_and_the_rest_are_none() {
    for (kernel, bytes) in FIXTURES {
        let info = parse(kernel, bytes);
        assert_eq!(info.len(), bytes.len(), "{kernel}");
        for e in PLAIN.iter().chain(BITFIELDS.iter()) {
            let got = (e.get)(&info);
            if e.needs <= bytes.len() {
                assert_eq!(
                    got,
                    Some(e.value),
                    "{kernel}: {} ({} bytes)",
                    e.name,
                    bytes.len()
                );
            } else {
                assert_eq!(got, None, "{kernel}: {} past {} bytes", e.name, bytes.len());
            }
        }
    }
}

#[test]
fn kernel_boundaries_fall_where_the_changelog_says() {
    let by_len = |n: usize| FIXTURES.iter().find(|(_, b)| b.len() == n).map(|(_, b)| *b);
    let get = |n: usize| parse("", by_len(n).expect("fixture"));
    // 3.10 (RHEL 7): nothing after total_retrans.
    let i = get(104);
    assert_eq!(i.total_retrans(), Some(0x0100_0064));
    assert_eq!(i.pacing_rate(), None);
    assert_eq!(i.bytes_acked(), None);
    assert_eq!(i.bytes_received(), None);
    assert_eq!(i.notsent_bytes(), None);
    // 4.10: the positions are there, the window is not.
    let i = get(192);
    assert_eq!(i.bytes_acked(), Some(0x0300_0078_0400_0078));
    assert_eq!(i.notsent_bytes(), Some(0x0100_0090));
    assert_eq!(i.sndbuf_limited(), Some(0x0300_00b8_0400_00b8));
    assert_eq!(i.delivered(), None);
    // 4.18: delivered, not bytes_sent.
    let i = get(200);
    assert_eq!(i.delivered_ce(), Some(0x0100_00c4));
    assert_eq!(i.bytes_sent(), None);
    // 4.19: up to reord_seen.
    let i = get(224);
    assert_eq!(i.reord_seen(), Some(0x0100_00dc));
    assert_eq!(i.snd_wnd(), None);
    // 5.4: snd_wnd, not rcv_wnd.
    let i = get(232);
    assert_eq!(i.snd_wnd(), Some(0x0100_00e4));
    assert_eq!(i.rcv_wnd(), None);
    // 6.7: total_rto_time, no AccECN.
    let i = get(248);
    assert_eq!(i.rcv_wnd(), Some(0x0100_00e8));
    assert_eq!(i.total_rto_time(), Some(0x0100_00f4));
    assert_eq!(i.received_ce(), None);
    assert_eq!(i.ecn_mode(), None);
    // 6.18: all of it.
    let i = get(280);
    assert_eq!(i.received_ce_bytes(), Some(0x0100_0110));
    assert_eq!(i.options2(), Some(0x5a_3c1e));
}

#[test]
fn wscale_nibbles_are_not_swapped() {
    // The fixtures have snd 7 / rcv 9; swap the nibbles and the answers swap.
    let mut bytes = FIXTURES[0].1.to_vec();
    assert_eq!(bytes[6], 0x97);
    let i = parse("3.10", &bytes);
    assert_eq!((i.snd_wscale(), i.rcv_wscale()), (Some(7), Some(9)));
    bytes[6] = 0x79;
    let i = parse("3.10", &bytes);
    assert_eq!((i.snd_wscale(), i.rcv_wscale()), (Some(9), Some(7)));
    bytes[6] = 0xe0;
    let i = parse("3.10", &bytes);
    assert_eq!((i.snd_wscale(), i.rcv_wscale()), (Some(0), Some(14)));
}

#[test]
fn byte_7_bits_are_read_apart() {
    let mut bytes = FIXTURES[0].1.to_vec();
    for (byte, app_limited, fastopen) in [
        (0x00, false, 0),
        (0x01, true, 0),
        (0x02, false, 1),
        (0x06, false, 3),
        (0x07, true, 3),
        // Bits above fastopen_client_fail belong to no field.
        (0xf8, false, 0),
    ] {
        bytes[7] = byte;
        let i = parse("3.10", &bytes);
        assert_eq!(
            i.delivery_rate_app_limited(),
            Some(app_limited),
            "{byte:#x}"
        );
        assert_eq!(i.fastopen_client_fail(), Some(fastopen), "{byte:#x}");
    }
}

#[test]
fn accecn_bitfields_take_their_own_bits() {
    let mut bytes = FIXTURES[6].1.to_vec();
    assert_eq!(bytes[276..280], 0x5a3c_1e9eu32.to_le_bytes());
    // Each field set to its maximum alone, the others zero.
    for (word, ecn, seen, fail, opts) in [
        (0x0000_0003u32, 3, 0, 0, 0),
        (0x0000_000c, 0, 3, 0, 0),
        (0x0000_00f0, 0, 0, 15, 0),
        (0xffff_ff00, 0, 0, 0, 0xff_ffff),
    ] {
        bytes[276..280].copy_from_slice(&word.to_le_bytes());
        let i = parse("6.18", &bytes);
        assert_eq!(i.ecn_mode(), Some(ecn), "{word:#x}");
        assert_eq!(i.accecn_opt_seen(), Some(seen), "{word:#x}");
        assert_eq!(i.accecn_fail_mode(), Some(fail), "{word:#x}");
        assert_eq!(i.options2(), Some(opts), "{word:#x}");
    }
}

#[test]
fn a_newer_kernel_with_a_longer_struct_keeps_the_known_fields() {
    let mut bytes = FIXTURES[6].1.to_vec();
    bytes.extend_from_slice(&[0xee; 24]);
    let i = parse("future", &bytes);
    assert_eq!(i.len(), KNOWN_LEN);
    assert_eq!(i, parse("6.18", FIXTURES[6].1));
}

#[test]
fn every_prefix_shorter_than_3_10_is_refused() {
    let full = FIXTURES[6].1;
    for len in 0..MIN_LEN {
        assert_eq!(
            TcpInfo::parse(&full[..len]),
            Err(TcpInfoError::Truncated { len })
        );
    }
}

#[test]
fn every_prefix_from_3_10_on_answers_exactly_what_it_holds() {
    // Not only the kernel sizes: a field cut in half is absent too.
    let full = FIXTURES[6].1;
    for len in MIN_LEN..=full.len() {
        let info = parse("prefix", &full[..len]);
        for e in PLAIN.iter().chain(BITFIELDS.iter()) {
            let want = (e.needs <= len).then_some(e.value);
            assert_eq!((e.get)(&info), want, "{} at {len} bytes", e.name);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parse_is_total_and_ok_iff_at_least_104_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let res = TcpInfo::parse(&bytes);
        prop_assert_eq!(res.is_ok(), bytes.len() >= MIN_LEN);
        if let Ok(info) = res {
            prop_assert_eq!(info.len(), bytes.len().min(KNOWN_LEN));
            for e in PLAIN.iter().chain(BITFIELDS.iter()) {
                prop_assert_eq!((e.get)(&info).is_some(), e.needs <= bytes.len(), "{}", e.name);
            }
        }
    }
}
