//! Sample builders shared by the collector's tests.
#![allow(dead_code)]

use tcpstall_common::{EndSample, FlowTuple, Opened, Positions, TcpState};

/// A sender end with `sendq` bytes queued from `snd_una`.
pub fn a_end(cookie: u64, snd_una: u64, sendq: u32) -> EndSample {
    EndSample {
        flow: FlowTuple::new(
            "198.18.0.2:8080".parse().expect("addr"),
            "198.18.0.1:40000".parse().expect("addr"),
        ),
        netns: "host".into(),
        state: TcpState::Established,
        cookie,
        inode: 1,
        opened: Some(Opened::Passive),
        pos: Positions {
            sendq,
            recvq: 0,
            notsent: Some(0),
            inflight: Some(sendq),
            snd_una: Some(snd_una),
            snd_nxt: Some(snd_una + u64::from(sendq)),
            write_seq: Some(snd_una + u64::from(sendq)),
            rcv_nxt: Some(100),
            copied: Some(100),
            snd_wnd: Some(65536),
            rcv_wnd: Some(65536),
            snd_wscale: Some(7),
            rcv_wscale: Some(7),
        },
        unchanged_ms: 0,
        timer: None,
        timer_expires_ms: 0,
        retransmits: Some(0),
        probes: Some(0),
        backoff: Some(0),
        ca_state: Some(0),
        rto_us: Some(204_000),
        rtt_us: Some(100),
        snd_cwnd: Some(10),
        unacked: Some(0),
        lost: Some(0),
        retrans: Some(0),
        total_retrans: Some(0),
        last_data_sent_ms: Some(0),
        last_data_recv_ms: Some(0),
        last_ack_recv_ms: Some(0),
        bytes_retrans: Some(0),
        rmem_alloc: Some(0),
        rcvbuf: Some(131_072),
        cork: None,
        cork_source: None,
        nodelay: None,
        nodelay_source: None,
        owner: None,
        owner_missing: None,
        absolute: None,
        translation: None,
    }
}

/// B, the receiving peer of `a`.
pub fn b_end(a: &EndSample, rcv_nxt: u64, recvq: u32, rcv_wnd: u32) -> EndSample {
    let mut b = a_end(a.cookie + 1000, 100, 0);
    b.flow = a.flow.reversed();
    b.opened = Some(Opened::Active);
    b.pos.rcv_nxt = Some(rcv_nxt);
    b.pos.copied = Some(rcv_nxt - u64::from(recvq));
    b.pos.recvq = recvq;
    b.pos.rcv_wnd = Some(rcv_wnd);
    b
}
