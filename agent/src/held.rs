//! When a held send queue began: the agent's estimate, made once, at the
//! first look that finds a socket's marks (snd_una, write_seq, a non-empty
//! queue) as they are.
//!
//! The agent's own looks bound the start: after its previous look (which
//! saw other marks, or no queue) and no later than this one. At a 2 s poll
//! that is two seconds of doubt, enough to miss a 10.5 s stall against a
//! 10 s threshold, so the kernel's own clocks narrow it where they can:
//!
//! - Nothing in flight and the peer's window shut (the peer not reading,
//!   a lost window update): no data has left since the last segment that
//!   filled the window, and the ACK that closed it came about one round
//!   trip after it. `tcpi_last_data_sent` dates that segment (zero-window
//!   probes carry no data and do not move it).
//! - Data in flight and the retransmission timer backing off (data or
//!   ACKs lost): the timer was armed when the head segment was last acked
//!   or first sent, and has fired `tcpi_backoff` times since, each time
//!   doubling `tcpi_rto`; with the time left on it, that dates the arming.
//! - `tcpi_busy_time` counts every moment the socket's send queue was
//!   non-empty, so the queue has not been non-empty for longer than that:
//!   a floor under any estimate.
//!
//! Where no clock applies (an open window with unsent bytes, a queue that
//! only grew since the previous look), the estimate is this look itself:
//! it may understate a hold, and overstates it by no more than the kernel
//! clocks' own tick (a jiffy: 4 ms at HZ=250, 10 ms at HZ=100).

use std::time::Duration;

use tcpstall_common::{SocketSample, TimerKind};

/// Backoffs beyond this are not dated: the doubling has met `TCP_RTO_MAX`
/// long before, and a first look never comes that late.
const MAX_BACKOFF: u8 = 12;

/// When the marks `s` shows were first held, seen first at `now` (the
/// agent's monotonic clock). `after`: the agent's previous look at the
/// socket's namespace, which did not see these marks; `write_only`: that
/// look saw the socket queued with the same snd_una, so only a write can
/// have made the marks (and no kernel clock dates a write).
pub fn since(
    s: &SocketSample,
    now: Duration,
    after: Option<Duration>,
    write_only: bool,
) -> Duration {
    let Some(info) = s.info.as_ref() else {
        return now;
    };
    let mut floor = after.unwrap_or(Duration::ZERO);
    if let Some(busy) = info.busy_time() {
        floor = floor.max(now.saturating_sub(Duration::from_micros(busy)));
    }
    if write_only || floor >= now {
        return now;
    }
    let pos = s.positions();
    // The persist timer also runs for a local refusal (a qdisc that takes
    // nothing) under an open window: the window itself decides where the
    // kernel gives it (5.4+).
    let zero_window = match pos.snd_wnd {
        Some(w) => w == 0,
        None => s.timer == Some(TimerKind::ZeroWindowProbe),
    };
    let ago = match pos.inflight {
        Some(0) if zero_window => info.last_data_sent().map(|sent| {
            let sent = Duration::from_millis(u64::from(sent));
            let rtt = Duration::from_micros(u64::from(info.rtt().unwrap_or(0)));
            sent.saturating_sub(rtt)
        }),
        Some(n) if n > 0 && s.timer == Some(TimerKind::Retransmit) => armed_ago(s),
        _ => None,
    };
    match ago {
        Some(ago) => now.saturating_sub(ago).clamp(floor, now),
        None => now,
    }
}

/// How long ago the retransmission timer of `s` was first armed for the
/// segment it guards, from its backoff, its RTO and the time left on it.
/// With no backoff yet the timer may be a tail-loss probe's, which says
/// nothing of the RTO: then the last data sent, which can only be later
/// than the arming.
fn armed_ago(s: &SocketSample) -> Option<Duration> {
    let info = s.info.as_ref()?;
    let n = info.backoff()?;
    if n == 0 {
        return info
            .last_data_sent()
            .map(|ms| Duration::from_millis(u64::from(ms)));
    }
    if n > MAX_BACKOFF {
        return None;
    }
    // The timer fired n times: after base, 2 base, ... 2^(n-1) base, and
    // now runs for 2^n base, of which `expires` is left.
    let base = u64::from(info.rto()?) >> n;
    let run = base.checked_mul((1u64 << (n + 1)) - 1)?;
    let left = u64::from(s.timer_expires_ms).saturating_mul(1000);
    Some(Duration::from_micros(run.saturating_sub(left)))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tcpstall_common::{Opened, TcpInfo, TcpState};

    use super::*;

    /// tcp_info fields the estimate reads, at their kernel offsets.
    #[derive(Default)]
    struct Info {
        backoff: u8,
        rto_us: u32,
        last_data_sent_ms: u32,
        rtt_us: u32,
        notsent: u32,
        busy_us: Option<u64>,
        snd_wnd: u32,
    }

    fn sample(i: Info, wqueue: u32, timer: Option<TimerKind>, expires_ms: u32) -> SocketSample {
        let mut raw = vec![0u8; 232];
        raw[4] = i.backoff;
        raw[8..12].copy_from_slice(&i.rto_us.to_ne_bytes());
        raw[44..48].copy_from_slice(&i.last_data_sent_ms.to_ne_bytes());
        raw[68..72].copy_from_slice(&i.rtt_us.to_ne_bytes());
        raw[144..148].copy_from_slice(&i.notsent.to_ne_bytes());
        raw[168..176].copy_from_slice(&i.busy_us.unwrap_or(u64::MAX / 2).to_ne_bytes());
        raw[228..232].copy_from_slice(&i.snd_wnd.to_ne_bytes());
        let addr = |s: &str| s.parse::<SocketAddr>().expect("address");
        SocketSample {
            netns: 1,
            local: addr("198.18.0.1:80"),
            remote: addr("198.18.0.2:40000"),
            state: TcpState::Established,
            cookie: 1,
            inode: 1,
            uid: 0,
            rqueue: 0,
            wqueue,
            timer,
            timer_expires_ms: expires_ms,
            timer_retransmits: i.backoff,
            opened: Some(Opened::Passive),
            info: Some(TcpInfo::parse(&raw).expect("tcp_info")),
            skmem: None,
            cong: None,
            shutdown: None,
        }
    }

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    /// What a closed window looked like on 6.18 (a reader that stopped),
    /// 316 ms after the response began: last data 224 ms before, window
    /// closed about then; the hold began 92 ms in.
    fn zero_window(last_data_sent_ms: u32) -> SocketSample {
        let i = Info {
            last_data_sent_ms,
            rtt_us: 20,
            notsent: 609_928,
            busy_us: Some(288_000),
            ..Info::default()
        };
        sample(i, 609_928, Some(TimerKind::ZeroWindowProbe), 12)
    }

    #[test]
    fn a_shut_window_is_dated_by_the_last_data_sent() {
        let now = s(100.316);
        let got = since(&zero_window(224), now, Some(s(99.0)), false);
        assert!(got.abs_diff(s(100.092)) < s(0.001), "{got:?}");
    }

    #[test]
    fn the_estimate_never_goes_before_the_previous_look_nor_the_busy_time() {
        let now = s(100.316);
        // The window closed long ago by the kernel's clock, but the
        // previous look saw no such marks 216 ms ago.
        let after = s(100.1);
        assert_eq!(since(&zero_window(5_000), now, Some(after), false), after);
        // Nor before the queue was last non-empty (busy 288 ms).
        let got = since(&zero_window(5_000), now, None, false);
        assert_eq!(got, now - s(0.288));
    }

    #[test]
    fn retransmissions_are_dated_by_the_backoff() {
        // As on 6.18 with every segment of the server's dropped, 914 ms in:
        // backoff 2, RTO 816 ms (base 204), 568 ms left: armed 860 ms ago.
        let i = Info {
            backoff: 2,
            rto_us: 816_000,
            last_data_sent_ms: 248,
            notsent: 62_264,
            busy_us: Some(888_000),
            ..Info::default()
        };
        let a = sample(i, 78_192, Some(TimerKind::Retransmit), 568);
        let got = since(&a, s(100.914), Some(s(99.5)), false);
        assert_eq!(got, s(100.914) - s(0.860));
    }

    #[test]
    fn a_timer_not_yet_backed_off_dates_only_by_the_last_send() {
        let i = Info {
            backoff: 0,
            rto_us: 204_000,
            last_data_sent_ms: 32,
            notsent: 100,
            busy_us: Some(40_000),
            ..Info::default()
        };
        let a = sample(i, 1_000, Some(TimerKind::Retransmit), 5);
        assert_eq!(since(&a, s(10.0), Some(s(8.0)), false), s(9.968));
    }

    #[test]
    fn without_a_clock_that_applies_the_look_itself() {
        let now = s(50.0);
        // Unsent bytes under an open window (a cork, a qdisc that takes
        // nothing): no clock says when they were written.
        let i = Info {
            last_data_sent_ms: 3_000,
            notsent: 500,
            snd_wnd: 65_535,
            busy_us: Some(10_000_000),
            ..Info::default()
        };
        assert_eq!(
            since(&sample(i, 500, None, 0), now, Some(s(48.0)), false),
            now
        );
        // The persist timer of a qdisc's refusal, under an open window.
        let i = Info {
            last_data_sent_ms: 300,
            notsent: 500,
            snd_wnd: 65_535,
            busy_us: Some(10_000_000),
            ..Info::default()
        };
        let refused = sample(i, 500, Some(TimerKind::ZeroWindowProbe), 200);
        assert_eq!(since(&refused, now, Some(s(48.0)), false), now);
        // A queue that only grew since the previous look: a write.
        assert_eq!(since(&zero_window(1_000), now, Some(s(48.0)), true), now);
        // No tcp_info at all.
        let mut bare = zero_window(100);
        bare.info = None;
        assert_eq!(since(&bare, now, Some(s(48.0)), false), now);
        // A busy time shorter than the gap since the previous look is the
        // floor; one of zero leaves only the look.
        let mut i = Info {
            last_data_sent_ms: 1_000,
            notsent: 10,
            ..Info::default()
        };
        i.busy_us = Some(0);
        let q = sample(i, 10, Some(TimerKind::ZeroWindowProbe), 100);
        assert_eq!(since(&q, now, Some(s(48.0)), false), now);
    }

    #[test]
    fn huge_backoffs_and_times_are_not_dated_and_never_panic() {
        let i = Info {
            backoff: 40,
            rto_us: u32::MAX,
            notsent: 0,
            busy_us: Some(u64::MAX),
            ..Info::default()
        };
        let a = sample(i, 10, Some(TimerKind::Retransmit), u32::MAX);
        assert_eq!(since(&a, s(1.0), None, false), s(1.0));
        let i = Info {
            backoff: MAX_BACKOFF,
            rto_us: u32::MAX,
            busy_us: Some(u64::MAX),
            ..Info::default()
        };
        let a = sample(i, 10, Some(TimerKind::Retransmit), 0);
        let got = since(&a, s(1.0), None, false);
        assert!(got <= s(1.0));
    }
}
