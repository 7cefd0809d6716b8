//! Arbitrary bytes into the sock_diag parser and `TcpInfo::parse`: neither
//! may panic, and what they return must be consistent with the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpstall_agent::diag::parse::{parse_chunk, parse_socket};
use tcpstall_agent::diag::ParseStats;
use tcpstall_common::tcp_info::{KNOWN_LEN, MIN_LEN};
use tcpstall_common::TcpInfo;

fuzz_target!(|data: &[u8]| {
    // The whole input as one reply chunk, for the seqs a capture uses and
    // for the seq its first header claims.
    let first_seq = data
        .get(8..12)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)
        .unwrap_or(0);
    for seq in [1, 2, first_seq] {
        let mut stats = ParseStats::default();
        let mut n = 0usize;
        parse_chunk(data, seq, &mut stats, |s| {
            n += 1;
            if let Some(info) = s.info {
                assert!(info.len() >= MIN_LEN && info.len() <= KNOWN_LEN);
            }
            let _ = s.positions();
        });
        // Every socket needs a netlink header and an inet_diag_msg.
        assert!(n <= data.len() / (16 + 72));
    }

    // The input as one message payload and as a tcp_info.
    let mut stats = ParseStats::default();
    let _ = parse_socket(data, &mut stats);
    match TcpInfo::parse(data) {
        Ok(info) => {
            assert!(data.len() >= MIN_LEN);
            assert_eq!(info.len(), data.len().min(KNOWN_LEN));
            let _ = (info.bytes_acked(), info.snd_wnd(), info.options2());
        }
        Err(_) => assert!(data.len() < MIN_LEN),
    }
});
