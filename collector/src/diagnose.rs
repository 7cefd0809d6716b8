//! The diagnosis of a stuck send queue, from both ends of the connection.
//!
//! A is the stuck sender, B its peer. Because A's sending direction and B's
//! receiving direction count from the same ISN, A's `snd_una`/`snd_nxt`
//! and B's `rcv_nxt` compare directly; that comparison, with the windows,
//! decides. The rows are DESIGN.md's table, checked in its order.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use tcpstall_common::EndSample;

/// Diagnosis ids: a contract with users' scripts, never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Diagnosis {
    /// B's window is closed and its application has data unread.
    PeerNotReading,
    /// A sees a zero window that B has reopened: B's update never arrived.
    WindowUpdateLost,
    /// Unsent data, nothing in flight, window open, TCP_CORK set.
    Corked,
    /// Unsent data, nothing in flight, window open, no cork known.
    UnsentUnblocked,
    /// In flight, and B is still waiting for exactly what A resends.
    DataLost,
    /// B acknowledged bytes that A never saw acknowledged.
    AckLost,
    /// B's host is monitored but has no such socket.
    HalfOpen,
    /// No agent covers B's address.
    PeerUnmonitored,
    /// The evidence fits no row (said why in the summary).
    Undetermined,
}

impl Diagnosis {
    pub const ALL: [Diagnosis; 9] = [
        Diagnosis::PeerNotReading,
        Diagnosis::WindowUpdateLost,
        Diagnosis::Corked,
        Diagnosis::UnsentUnblocked,
        Diagnosis::DataLost,
        Diagnosis::AckLost,
        Diagnosis::HalfOpen,
        Diagnosis::PeerUnmonitored,
        Diagnosis::Undetermined,
    ];

    /// The id stored and printed.
    pub fn id(self) -> &'static str {
        match self {
            Diagnosis::PeerNotReading => "peer_not_reading",
            Diagnosis::WindowUpdateLost => "window_update_lost",
            Diagnosis::Corked => "corked",
            Diagnosis::UnsentUnblocked => "unsent_unblocked",
            Diagnosis::DataLost => "data_lost",
            Diagnosis::AckLost => "ack_lost",
            Diagnosis::HalfOpen => "half_open",
            Diagnosis::PeerUnmonitored => "peer_unmonitored",
            Diagnosis::Undetermined => "undetermined",
        }
    }

    /// Its place in [`Diagnosis::ALL`], for counters kept per diagnosis.
    pub fn index(self) -> usize {
        Self::ALL.iter().position(|d| *d == self).unwrap_or(0)
    }

    pub fn from_id(id: &str) -> Option<Diagnosis> {
        Self::ALL.into_iter().find(|d| d.id() == id)
    }

    /// Whom to look at.
    pub fn blame(self) -> &'static str {
        match self {
            Diagnosis::PeerNotReading => "B's application",
            Diagnosis::WindowUpdateLost | Diagnosis::AckLost => "the network from B to A",
            Diagnosis::Corked => "A's application",
            Diagnosis::UnsentUnblocked => "A's host (qdisc, NIC, pacing)",
            Diagnosis::DataLost => "the network from A to B",
            Diagnosis::HalfOpen => "B lost the connection",
            Diagnosis::PeerUnmonitored => "unknown: one-sided evidence only",
            Diagnosis::Undetermined => "unknown",
        }
    }
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

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
}

/// A diagnosis with the numbers it rests on and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub diagnosis: Diagnosis,
    pub summary: String,
    /// Named numbers (a_snd_una, b_rcv_nxt, ...), stored with the episode.
    pub evidence: BTreeMap<&'static str, i64>,
}

/// The evidence that grows with every poll of a held queue.
const HELD_FOR: &str = "a_unchanged_ms";

/// The evidence that counts up while a stall holds, whatever its cause:
/// how long A's queue has been held, and A's zero-window probes, backoff
/// and retransmissions.
const COUNTERS: [&str; 4] = [HELD_FOR, "a_probes", "a_backoff", "a_retransmits"];

impl Verdict {
    /// Whether `other` finds the same as this one: the same diagnosis,
    /// words and numbers, apart from those that count up while a stall
    /// holds (how long A's queue has been held, its probes, backoff and
    /// retransmissions). An open episode is written again only when its
    /// verdict is not the same finding; its counters are brought up to
    /// date when it ends, and its duration is the time since it started.
    pub fn same_finding(&self, other: &Verdict) -> bool {
        fn numbers(v: &Verdict) -> impl Iterator<Item = (&&'static str, &i64)> {
            v.evidence.iter().filter(|(k, _)| !COUNTERS.contains(*k))
        }
        self.diagnosis == other.diagnosis
            && self.summary == other.summary
            && numbers(self).eq(numbers(other))
    }

    /// Whether `other`'s numbers are this one's, apart from how long A's
    /// queue has been held.
    pub fn same_numbers(&self, other: &Verdict) -> bool {
        fn numbers(v: &Verdict) -> impl Iterator<Item = (&&'static str, &i64)> {
            v.evidence.iter().filter(|(k, _)| **k != HELD_FOR)
        }
        numbers(self).eq(numbers(other))
    }
}

fn put(ev: &mut BTreeMap<&'static str, i64>, name: &'static str, v: Option<impl TryInto<i64>>) {
    if let Some(v) = v.and_then(|v| v.try_into().ok()) {
        ev.insert(name, v);
    }
}

fn a_evidence(a: &EndSample) -> BTreeMap<&'static str, i64> {
    let mut ev = BTreeMap::new();
    let p = &a.pos;
    put(&mut ev, "a_sendq", Some(p.sendq));
    put(&mut ev, "a_snd_una", p.snd_una);
    put(&mut ev, "a_snd_nxt", p.snd_nxt);
    put(&mut ev, "a_write_seq", p.write_seq);
    put(&mut ev, "a_notsent", p.notsent);
    put(&mut ev, "a_inflight", p.inflight);
    put(&mut ev, "a_snd_wnd", p.snd_wnd);
    put(&mut ev, "a_snd_wscale", p.snd_wscale);
    put(&mut ev, "a_snd_cwnd", a.snd_cwnd);
    put(&mut ev, "a_retransmits", a.retransmits);
    put(&mut ev, "a_backoff", a.backoff);
    put(&mut ev, "a_probes", a.probes);
    put(&mut ev, HELD_FOR, Some(a.unchanged_ms));
    put(&mut ev, "a_cork", a.cork.map(i64::from));
    ev
}

fn b_evidence(ev: &mut BTreeMap<&'static str, i64>, b: &EndSample) {
    let p = &b.pos;
    put(ev, "b_rcv_nxt", p.rcv_nxt);
    put(ev, "b_copied", p.copied);
    put(ev, "b_recvq", Some(p.recvq));
    put(ev, "b_rcv_wnd", p.rcv_wnd);
    put(ev, "b_rcv_wscale", p.rcv_wscale);
    put(ev, "b_sendq", Some(p.sendq));
}

/// Diagnoses A's stuck send queue given what we know of B.
pub fn diagnose(a: &EndSample, b: Peer<'_>) -> Verdict {
    let mut ev = a_evidence(a);
    let pa = &a.pos;
    let verdict = |diagnosis: Diagnosis, summary: String, ev| Verdict {
        diagnosis,
        summary,
        evidence: ev,
    };
    let b = match b {
        Peer::Seen(b) => b,
        Peer::NoSocket { host } => {
            return verdict(
                Diagnosis::HalfOpen,
                format!("{host}'s agent reports no socket for {}: B lost the connection, A still holds {} bytes", a.flow.reversed(), pa.sendq),
                ev,
            )
        }
        Peer::Pending { host } => {
            return verdict(
                Diagnosis::Undetermined,
                format!("waiting for {host}'s agent to report its end of {}", a.flow.reversed()),
                ev,
            )
        }
        Peer::Unmonitored => {
            let seen = one_sided(a);
            return verdict(
                Diagnosis::PeerUnmonitored,
                format!("no agent covers {}; from A alone: {seen}", a.flow.remote),
                ev,
            );
        }
    };
    b_evidence(&mut ev, b);
    let pb = &b.pos;

    // A's zero window: is B's window really closed?
    if pa.snd_wnd == Some(0) {
        let b_closed = match pb.rcv_wnd {
            Some(w) => w == 0,
            // Before 6.2 the receiver's window is not reported: a full
            // receive queue is the next best sign.
            None => pb.recvq > 0,
        };
        return if b_closed {
            verdict(
                Diagnosis::PeerNotReading,
                format!(
                    "B's window is closed and its application has {} bytes unread; A probes a zero window with {} bytes waiting",
                    pb.recvq, pa.sendq
                ),
                ev,
            )
        } else {
            verdict(
                Diagnosis::WindowUpdateLost,
                format!(
                    "A sees a zero window but B advertises {} bytes with {} unread: B's window update never reached A",
                    pb.rcv_wnd.unwrap_or(0),
                    pb.recvq
                ),
                ev,
            )
        };
    }

    if let (Some(una), Some(rcv)) = (pa.snd_una, pb.rcv_nxt) {
        if rcv > una {
            ev.insert(
                "acked_not_seen",
                i64::try_from(rcv - una).unwrap_or(i64::MAX),
            );
            return verdict(
                Diagnosis::AckLost,
                format!(
                    "B received up to {rcv} but A still waits for an ACK from {una}: {} bytes arrived and their ACKs never came back",
                    rcv - una
                ),
                ev,
            );
        }
        if rcv < una {
            return verdict(
                Diagnosis::Undetermined,
                format!("inconsistent ends: B.rcv_nxt {rcv} is below A.snd_una {una}, which TCP cannot do; the two samples may not be the same connection"),
                ev,
            );
        }
    }

    if pa.inflight.unwrap_or(0) > 0 {
        let resending = if a.retransmitting() {
            "A is retransmitting"
        } else {
            "A has not yet retransmitted"
        };
        return verdict(
            Diagnosis::DataLost,
            format!(
                "{} bytes in flight never arrived: B waits for byte {} which A sent; {resending}",
                pa.inflight.unwrap_or(0),
                opt(pb.rcv_nxt)
            ),
            ev,
        );
    }

    if pa.notsent.unwrap_or(0) > 0 && pa.snd_wnd.unwrap_or(1) > 0 {
        return if a.cork == Some(true) {
            verdict(
                Diagnosis::Corked,
                format!(
                    "{} bytes unsent with the window open and nothing in flight: TCP_CORK is set",
                    pa.notsent.unwrap_or(0)
                ),
                ev,
            )
        } else {
            let cork = match a.cork {
                Some(false) => "cork not set",
                _ => "cork unknown",
            };
            verdict(
                Diagnosis::UnsentUnblocked,
                format!(
                    "{} bytes unsent with the window open and nothing in flight ({cork}): A's host is not sending",
                    pa.notsent.unwrap_or(0)
                ),
                ev,
            )
        };
    }

    verdict(
        Diagnosis::Undetermined,
        format!("no row fits: A {}", one_sided(a)),
        ev,
    )
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "?".into(), |v| v.to_string())
}

/// What A alone says, for one-sided verdicts.
fn one_sided(a: &EndSample) -> String {
    let p = &a.pos;
    if p.snd_wnd == Some(0) {
        format!("zero window from the peer, {} bytes waiting", p.sendq)
    } else if p.inflight.unwrap_or(0) > 0 {
        format!(
            "{} bytes in flight unacknowledged, retransmitting: {}",
            p.inflight.unwrap_or(0),
            a.retransmitting()
        )
    } else if p.notsent.unwrap_or(0) > 0 {
        format!(
            "{} bytes unsent with the window open",
            p.notsent.unwrap_or(0)
        )
    } else {
        format!("{} bytes queued", p.sendq)
    }
}
