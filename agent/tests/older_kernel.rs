//! `TCPSTALL_AGENT_TCP_INFO_LEN`: the agent reads `tcp_info` as a kernel
//! that sends that many bytes would (the lab's older kernels, see
//! docs/kernels.md). Its own binary: the setting holds for the process.

use std::ffi::OsStr;

use tcpstall_agent::diag::parse::parse_chunk;
use tcpstall_agent::diag::{read_tcp_info_as, ParseStats};

static DUMP: &[u8] = include_bytes!("fixtures/dump_6.18.bin");

#[test]
fn a_length_no_kernel_sends_is_refused_by_name_then_4_18_s_is_read_as_4_18_sends_it() {
    for bad in ["50", "103", "two hundred", "-1", ""] {
        let err = read_tcp_info_as(OsStr::new(bad))
            .expect_err(bad)
            .to_string();
        assert!(
            err.contains("TCPSTALL_AGENT_TCP_INFO_LEN") && err.contains("at least 104"),
            "{bad}: {err}"
        );
    }
    read_tcp_info_as(OsStr::new("200")).expect("4.18's length");
    let mut stats = ParseStats::default();
    let mut infos = Vec::new();
    let mut at = 0;
    while at + 16 <= DUMP.len() {
        let len = u32::from_ne_bytes(DUMP[at..at + 4].try_into().expect("4 bytes")) as usize;
        let seq = u32::from_ne_bytes(DUMP[at + 8..at + 12].try_into().expect("4 bytes"));
        parse_chunk(&DUMP[at..at + len], seq, &mut stats, |s| {
            infos.extend(s.info)
        });
        at += (len + 3) & !3;
    }
    assert!(
        infos.len() >= 4,
        "the capture's connections: {}",
        infos.len()
    );
    for info in infos {
        assert_eq!(info.len(), 200, "cut to 4.18's length");
        assert!(info.bytes_acked().is_some() && info.notsent_bytes().is_some());
        assert_eq!(
            (info.snd_wnd(), info.rcv_wnd()),
            (None, None),
            "4.18 has no windows"
        );
    }
    assert_eq!(stats, ParseStats::default(), "nothing skipped");
}
