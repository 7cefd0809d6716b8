//! The diagnosis of a stuck send queue, from both ends of the connection.
//!
//! A is the stuck sender, B its peer. Because A's sending direction and B's
//! receiving direction count from the same ISN, A's `snd_una`/`snd_nxt`
//! and B's `rcv_nxt` compare directly; that comparison, with the windows,
//! decides. The rows are docs/design.md's table, checked in its order; the
//! facts they rest on are [`super::evidence`]'s.

use serde::Serialize;
use tcpstall_common::{Diagnosis, EndSample, TimerKind};

use super::evidence::{COUNTERS, HELD_FOR};
pub use super::evidence::{Basis, Evidence, Fact};

/// What we know of B.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer<'a> {
    /// B's agent reports the reversed 4-tuple.
    Seen(&'a EndSample),
    /// B's address belongs to a monitored host whose agent has no such
    /// socket.
    NoSocket { host: &'a str },
    /// B's host is monitored but has not answered the watch yet.
    Pending { host: &'a str },
    /// No agent announced B's address.
    Unmonitored,
    /// Agents cover B's address, yet none of them could be joined: why
    /// (several hosts hold it and none has the socket, ...). One-sided,
    /// never half-open: B's socket may be on a host that was not asked.
    Unjoined { why: &'a str },
}

/// A diagnosis with the numbers it rests on and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub diagnosis: Diagnosis,
    pub summary: String,
    /// Named numbers (a_snd_una, b_rcv_nxt, ...), stored with the episode.
    pub evidence: Evidence,
    /// Which of them the verdict rested on, and which it would have used
    /// had the kernel (or a probe) given them.
    pub basis: Basis,
}

impl Verdict {
    /// Whether `other` finds the same as this one: the same diagnosis,
    /// words and numbers, apart from those that count up while a stall
    /// holds (how long A's queue has been held, its probes, backoff and
    /// retransmissions). An open episode is written again only when its
    /// verdict is not the same finding; its counters are brought up to
    /// date when it ends, and its duration is the time since it started.
    pub fn same_finding(&self, other: &Verdict) -> bool {
        self.diagnosis == other.diagnosis
            && self.evidence.same_but(&other.evidence, COUNTERS)
            && self.summary == other.summary
            && self.basis == other.basis
    }

    /// Whether `other`'s numbers are this one's, apart from how long A's
    /// queue has been held.
    pub fn same_numbers(&self, other: &Verdict) -> bool {
        self.evidence.same_but(&other.evidence, HELD_FOR)
    }
}

fn a_evidence(a: &EndSample) -> Evidence {
    let mut ev = Evidence::default();
    let p = &a.pos;
    ev.put(Fact::ASendq, Some(p.sendq));
    ev.put(Fact::ASndUna, p.snd_una);
    ev.put(Fact::ASndNxt, p.snd_nxt);
    ev.put(Fact::AWriteSeq, p.write_seq);
    ev.put(Fact::ANotsent, p.notsent);
    ev.put(Fact::AInflight, p.inflight);
    ev.put(Fact::AUnacked, a.unacked);
    ev.put(Fact::ASndWnd, p.snd_wnd);
    ev.put(Fact::ASndWscale, p.snd_wscale);
    ev.put(Fact::ASndCwnd, a.snd_cwnd);
    ev.put(Fact::ARetransmits, a.retransmits);
    ev.put(Fact::ABackoff, a.backoff);
    ev.put(Fact::AProbes, a.probes);
    ev.put(Fact::AProbeTimer, Some(i64::from(a.timer == Some(TimerKind::ZeroWindowProbe))));
    ev.put(Fact::AUnchangedMs, Some(a.unchanged_ms));
    ev.put(Fact::ACork, a.cork.map(i64::from));
    ev
}

fn b_evidence(ev: &mut Evidence, b: &EndSample) {
    let p = &b.pos;
    ev.put(Fact::BRcvNxt, p.rcv_nxt);
    ev.put(Fact::BCopied, p.copied);
    ev.put(Fact::BRecvq, Some(p.recvq));
    ev.put(Fact::BRcvWnd, p.rcv_wnd);
    ev.put(Fact::BRcvWscale, p.rcv_wscale);
    ev.put(Fact::BRmemAlloc, b.rmem_alloc);
    ev.put(Fact::BRcvbuf, b.rcvbuf);
    ev.put(Fact::BSendq, Some(p.sendq));
}

/// Whether A sees a closed window. `snd_wnd` says so from 5.4; before,
/// A's zero-window probing does: its probe timer (`ss`'s `persist`) runs
/// and has backed off. The same timer runs for a queue the host will not
/// take (a qdisc refusing, memory short), but those probes fail at home
/// and back nothing off (`tcp_send_probe0`; they do count in `probes`,
/// which ACKs to real probes reset, so `probes` tells neither); and for a
/// corked or Nagle-held queue only until its first probe, which sends the
/// data.
fn a_window_closed(a: &EndSample, basis: &mut Basis) -> bool {
    if let Some(w) = basis.take(Fact::ASndWnd, a.pos.snd_wnd) {
        return w == 0;
    }
    basis.used(Fact::AProbeTimer);
    if a.timer != Some(TimerKind::ZeroWindowProbe) {
        return false;
    }
    basis.used(Fact::ABackoff);
    a.backoff.unwrap_or(0) > 0
}

/// How B's window stands, by the best fact its kernel gives.
enum BWindow {
    /// `rcv_wnd` (6.2+).
    Advertised(u32),
    /// Receive memory against the receive buffer (SKMEMINFO): see
    /// [`EndSample::receive_buffer_full`].
    Buffer { rmem: u32, rcvbuf: u32, full: bool },
    /// Only the receive queue: bytes unread hold a window closed.
    Queue(u32),
}

impl BWindow {
    fn of(b: &EndSample, basis: &mut Basis) -> BWindow {
        if let Some(w) = basis.take(Fact::BRcvWnd, b.pos.rcv_wnd) {
            return BWindow::Advertised(w);
        }
        match (b.rmem_alloc, b.rcvbuf, b.receive_buffer_full()) {
            (Some(rmem), Some(rcvbuf), Some(full)) => {
                basis.used(Fact::BRmemAlloc);
                basis.used(Fact::BRcvbuf);
                BWindow::Buffer { rmem, rcvbuf, full }
            }
            _ => {
                basis.lacked(Fact::BRmemAlloc);
                basis.used(Fact::BRecvq);
                BWindow::Queue(b.pos.recvq)
            }
        }
    }

    fn closed(&self) -> bool {
        match *self {
            BWindow::Advertised(w) => w == 0,
            BWindow::Buffer { full, .. } => full,
            BWindow::Queue(recvq) => recvq > 0,
        }
    }
}

/// Diagnoses A's stuck send queue given what we know of B. Each row uses
/// the best fact the two kernels give and falls back on what they have
/// (docs/kernels.md); the verdict's [`Basis`] says which.
pub fn diagnose(a: &EndSample, b: Peer<'_>) -> Verdict {
    let mut ev = a_evidence(a);
    let mut basis = Basis::default();
    let pa = &a.pos;
    let verdict = |diagnosis: Diagnosis, summary: String, ev, basis| Verdict {
        diagnosis,
        summary,
        evidence: ev,
        basis,
    };
    let b = match b {
        Peer::Seen(b) => b,
        Peer::NoSocket { host } => {
            basis.used(Fact::ASendq);
            return verdict(
                Diagnosis::HalfOpen,
                format!("{host}'s agent reports no socket for {}: B lost the connection, A still holds {} bytes", a.flow.reversed(), pa.sendq),
                ev,
                basis,
            );
        }
        Peer::Pending { host } => {
            return verdict(
                Diagnosis::Undetermined,
                format!("waiting for {host}'s agent to report its end of {}", a.flow.reversed()),
                ev,
                basis,
            )
        }
        Peer::Unmonitored => {
            let seen = one_sided(a, &mut basis);
            return verdict(
                Diagnosis::PeerUnmonitored,
                format!("no agent covers {}; from A alone: {seen}", a.flow.remote),
                ev,
                basis,
            );
        }
        Peer::Unjoined { why } => {
            let seen = one_sided(a, &mut basis);
            return verdict(
                Diagnosis::PeerUnmonitored,
                format!("{why}; from A alone: {seen}"),
                ev,
                basis,
            );
        }
    };
    b_evidence(&mut ev, b);
    let pb = &b.pos;

    // A's zero window: is B's window really closed?
    if a_window_closed(a, &mut basis) {
        let a_sees = match pa.snd_wnd {
            Some(_) => "A probes a zero window",
            None => "A probes a zero window (its probe timer runs; this kernel gives no snd_wnd)",
        };
        let window = BWindow::of(b, &mut basis);
        let closed = window.closed();
        let b_state = match window {
            BWindow::Advertised(0) => "B's window is closed".to_string(),
            BWindow::Advertised(w) => format!("B advertises {w} bytes"),
            BWindow::Buffer { rmem, rcvbuf, .. } if closed => {
                format!("B's receive buffer is full ({rmem} of {rcvbuf} bytes)")
            }
            BWindow::Buffer { rmem, rcvbuf, .. } => {
                format!("B's receive buffer has room ({rmem} of {rcvbuf} bytes used)")
            }
            BWindow::Queue(_) if closed => "B holds data unread".to_string(),
            BWindow::Queue(_) => "B has read everything".to_string(),
        };
        return if closed {
            verdict(
                Diagnosis::PeerNotReading,
                format!(
                    "{b_state} and its application has {} bytes unread; {a_sees} with {} bytes waiting",
                    pb.recvq, pa.sendq
                ),
                ev,
                basis,
            )
        } else {
            verdict(
                Diagnosis::WindowUpdateLost,
                format!(
                    "{a_sees} but {b_state} with {} unread: B's window update never reached A",
                    pb.recvq
                ),
                ev,
                basis,
            )
        };
    }

    let una = basis.take(Fact::ASndUna, pa.snd_una);
    let rcv = basis.take(Fact::BRcvNxt, pb.rcv_nxt);
    if let (Some(una), Some(rcv)) = (una, rcv) {
        if rcv > una {
            ev.put(Fact::AckedNotSeen, Some(rcv - una));
            basis.used(Fact::AckedNotSeen);
            return verdict(
                Diagnosis::AckLost,
                format!(
                    "B received up to {rcv} but A still waits for an ACK from {una}: {} bytes arrived and their ACKs never came back",
                    rcv - una
                ),
                ev,
                basis,
            );
        }
        if rcv < una {
            return verdict(
                Diagnosis::Undetermined,
                format!("inconsistent ends: B.rcv_nxt {rcv} is below A.snd_una {una}, which TCP cannot do; the two samples may not be the same connection"),
                ev,
                basis,
            );
        }
    }

    // In flight: bytes from 4.6 (notsent), else segments (`unacked`).
    let in_flight = match basis.take(Fact::AInflight, pa.inflight) {
        Some(n) => Some(n > 0),
        None => basis.take(Fact::AUnacked, a.unacked).map(|n| n > 0),
    };
    if in_flight == Some(true) {
        let resending = if a.retransmitting() {
            "A is retransmitting"
        } else {
            "A has not yet retransmitted"
        };
        basis.used(Fact::ARetransmits);
        basis.used(Fact::ABackoff);
        let what = in_flight_text(a);
        return match (una, rcv) {
            (Some(_), Some(rcv)) => verdict(
                Diagnosis::DataLost,
                format!("{what} in flight never arrived: B waits for byte {rcv} which A sent; {resending}"),
                ev,
                basis,
            ),
            _ => {
                basis.used(Fact::BRecvq);
                verdict(
                    Diagnosis::LostInNetwork,
                    format!(
                        "{what} in flight unacknowledged and {resending}, while B's window is open with {} bytes unread: the data A→B or its ACKs B→A are lost; this kernel gives no byte positions (4.1+) to say which",
                        pb.recvq
                    ),
                    ev,
                    basis,
                )
            }
        };
    }

    // Unsent: from 4.6 `notsent`; before, nothing in flight means every
    // queued byte is unsent.
    let notsent = match basis.take(Fact::ANotsent, pa.notsent) {
        Some(n) => Some(n),
        None => (in_flight == Some(false)).then_some(pa.sendq),
    };
    // A window not seen closed is open (`a_window_closed` looked).
    if notsent.unwrap_or(0) > 0 && pa.snd_wnd.unwrap_or(1) > 0 {
        let notsent = notsent.unwrap_or(0);
        basis.take(Fact::ACork, a.cork);
        return if a.cork == Some(true) {
            verdict(
                Diagnosis::Corked,
                format!(
                    "{notsent} bytes unsent with the window open and nothing in flight: TCP_CORK is set"
                ),
                ev,
                basis,
            )
        } else {
            let cork = match a.cork {
                Some(false) => "cork not set",
                _ => "cork unknown",
            };
            verdict(
                Diagnosis::UnsentUnblocked,
                format!(
                    "{notsent} bytes unsent with the window open and nothing in flight ({cork}): A's host is not sending"
                ),
                ev,
                basis,
            )
        };
    }

    verdict(
        Diagnosis::Undetermined,
        format!("no row fits: A {}", one_sided(a, &mut basis)),
        ev,
        basis,
    )
}

/// What A has in flight, in bytes from 4.6 (`notsent`), else in
/// segments (`unacked`).
fn in_flight_text(a: &EndSample) -> String {
    match (a.pos.inflight, a.unacked) {
        (Some(n), _) => format!("{n} bytes"),
        (None, Some(n)) => format!("{n} segments"),
        (None, None) => "data".into(),
    }
}

/// What A alone says, for one-sided verdicts.
fn one_sided(a: &EndSample, basis: &mut Basis) -> String {
    let p = &a.pos;
    if a_window_closed(a, basis) {
        format!("zero window from the peer, {} bytes waiting", p.sendq)
    } else if basis
        .take(Fact::AInflight, p.inflight)
        .or_else(|| basis.take(Fact::AUnacked, a.unacked))
        .unwrap_or(0)
        > 0
    {
        let what = in_flight_text(a);
        basis.used(Fact::ARetransmits);
        format!(
            "{what} in flight unacknowledged, retransmitting: {}",
            a.retransmitting()
        )
    } else if basis.take(Fact::ANotsent, p.notsent).unwrap_or(0) > 0 {
        format!(
            "{} bytes unsent with the window open",
            p.notsent.unwrap_or(0)
        )
    } else {
        basis.used(Fact::ASendq);
        format!("{} bytes queued", p.sendq)
    }
}
