//! Episodes to draw, built from numbers: a small synthetic one for the
//! tests and a realistic one for `docs/plot-example.*` (rendered by
//! `cargo run --example render`, and checked against the committed SVG).

use tcpstall_common::{EndSample, FlowTuple, Positions, TcpState};
use tcpstall_plot::{PlotInput, PlotSample, Side};

/// Some wall-clock instant, in ms.
pub const T0: i64 = 1_760_000_000_000;

fn flow() -> FlowTuple {
    FlowTuple::new(
        "198.18.0.10:7000".parse().expect("addr"),
        "198.18.1.20:51844".parse().expect("addr"),
    )
}

/// One end's sample with the positions given and nothing else known.
pub fn end(side: Side, pos: Positions) -> EndSample {
    EndSample {
        flow: match side {
            Side::A => flow(),
            Side::B => flow().reversed(),
        },
        netns: String::new(),
        state: TcpState::Established,
        cookie: 1,
        inode: 0,
        opened: None,
        pos,
        unchanged_ms: 0,
        timer: None,
        timer_expires_ms: 0,
        retransmits: None,
        probes: None,
        backoff: None,
        ca_state: None,
        rto_us: None,
        rtt_us: None,
        snd_cwnd: None,
        unacked: None,
        lost: None,
        retrans: None,
        total_retrans: None,
        last_data_sent_ms: None,
        last_data_recv_ms: None,
        last_ack_recv_ms: None,
        bytes_retrans: None,
        rmem_alloc: None,
        rcvbuf: None,
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

/// A's sample at `at_ms`: snd_una, snd_nxt, write_seq, snd_wnd.
pub fn a(
    at_ms: i64,
    una: Option<u64>,
    nxt: Option<u64>,
    write: Option<u64>,
    wnd: Option<u32>,
) -> PlotSample {
    let diff = |hi: Option<u64>, lo: Option<u64>| {
        hi.zip(lo)
            .and_then(|(h, l)| h.checked_sub(l))
            .and_then(|d| u32::try_from(d).ok())
    };
    let pos = Positions {
        sendq: diff(write, una).unwrap_or(0),
        notsent: diff(write, nxt),
        inflight: diff(nxt, una),
        snd_una: una,
        snd_nxt: nxt,
        write_seq: write,
        snd_wnd: wnd,
        ..Positions::default()
    };
    PlotSample {
        side: Side::A,
        at_ms,
        sample: end(Side::A, pos),
    }
}

/// B's sample at `at_ms`: rcv_nxt and copied.
pub fn b(at_ms: i64, rcv_nxt: Option<u64>, copied: Option<u64>) -> PlotSample {
    let recvq = rcv_nxt
        .zip(copied)
        .and_then(|(r, c)| r.checked_sub(c))
        .and_then(|d| u32::try_from(d).ok())
        .unwrap_or(0);
    let pos = Positions {
        recvq,
        rcv_nxt,
        copied,
        rcv_wnd: Some(0),
        ..Positions::default()
    };
    PlotSample {
        side: Side::B,
        at_ms,
        sample: end(Side::B, pos),
    }
}

pub const UNA: u64 = 100_000;
pub const WRITE: u64 = UNA + 65_536;
pub const COPIED: u64 = UNA - 40_000;
/// When the synthetic stall starts and ends, relative to [`T0`] (its first sample).
pub const STARTED: i64 = -4_000;
pub const ENDED: i64 = 19_000;

/// B's application stopped reading: A's snd_una is flat with write_seq
/// above it, the window is 0 (its edge is snd_una), B has received exactly
/// snd_una and its application has read less. A polled every 2 s from T0
/// to T0 + 20 s, B every 2 s from T0 + 1 s.
pub fn peer_not_reading() -> PlotInput {
    let mut samples = Vec::new();
    for k in 0..=10 {
        samples.push(a(
            T0 + k * 2_000,
            Some(UNA),
            Some(UNA),
            Some(WRITE),
            Some(0),
        ));
    }
    for k in 0..10 {
        samples.push(b(T0 + 1_000 + k * 2_000, Some(UNA), Some(COPIED)));
    }
    PlotInput {
        title: "episode 7: 198.18.0.10:7000 → 198.18.1.20:51844".to_string(),
        diagnosis: "peer_not_reading".to_string(),
        started_at_ms: T0 + STARTED,
        ended_at_ms: Some(T0 + ENDED),
        a_label: "host-a 198.18.0.10:7000".to_string(),
        b_label: "host-b 198.18.1.20:51844".to_string(),
        samples,
    }
}

/// The size of `docs/plot-example.*`.
pub const EXAMPLE_SIZE: (u32, u32) = (900, 560);

const MIB: u64 = 1024 * 1024;

/// What a real peer_not_reading episode on a long-lived RPC connection
/// looks like as stored: A (the responder) has 2.25 MiB of a reply queued,
/// 700 MiB into the connection; B's client stopped reading with 6 MiB
/// unread, so its window is 0. A polls every 2 s, B's agent 0.9 s later.
/// At 38 s B's application reads again: the window opens, A sends, and the
/// episode ends on that poll.
pub fn realistic() -> PlotInput {
    let base = 700 * MIB;
    let write = base + 2 * MIB + MIB / 4;
    let mut samples = Vec::new();
    for k in 0..19 {
        samples.push(a(
            T0 + k * 2_000,
            Some(base),
            Some(base),
            Some(write),
            Some(0),
        ));
        samples.push(b(T0 + 900 + k * 2_000, Some(base), Some(base - 6 * MIB)));
    }
    samples.push(a(
        T0 + 38_000,
        Some(base + 3 * MIB / 2),
        Some(write),
        Some(write + MIB / 2),
        Some(3 * MIB as u32),
    ));
    PlotInput {
        title: "episode 17: 198.18.0.10:7000 → 198.18.1.20:51844".to_string(),
        diagnosis: "peer_not_reading".to_string(),
        started_at_ms: T0 - 1_200,
        ended_at_ms: Some(T0 + 38_000),
        a_label: "rpc-a-03 198.18.0.10:7000, pid 2214 rpc-server".to_string(),
        b_label: "rpc-b-11 198.18.1.20:51844, pid 9031 rpc-client".to_string(),
        samples,
    }
}
