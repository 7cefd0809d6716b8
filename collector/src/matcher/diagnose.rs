//! The diagnosis of a stuck send queue, from both ends of the connection.
//!
//! A is the stuck sender, B its peer. Because A's sending direction and B's
//! receiving direction count from the same ISN, A's `snd_una`/`snd_nxt`
//! and B's `rcv_nxt` compare directly; that comparison, with the windows,
//! decides. The rows are docs/design.md's table, checked in its order.

use std::fmt;

use serde::Serialize;
use tcpstall_common::{Diagnosis, EndSample};

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
}

/// The numbers a verdict can rest on. Their names are stored with each
/// episode: a contract with users' scripts, never renamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Fact {
    ASendq,
    ASndUna,
    ASndNxt,
    AWriteSeq,
    ANotsent,
    AInflight,
    ASndWnd,
    ASndWscale,
    ASndCwnd,
    ARetransmits,
    ABackoff,
    AProbes,
    AUnchangedMs,
    ACork,
    BRcvNxt,
    BCopied,
    BRecvq,
    BRcvWnd,
    BRcvWscale,
    BSendq,
    AckedNotSeen,
}

impl Fact {
    pub const ALL: [Fact; 21] = [
        Fact::ASendq,
        Fact::ASndUna,
        Fact::ASndNxt,
        Fact::AWriteSeq,
        Fact::ANotsent,
        Fact::AInflight,
        Fact::ASndWnd,
        Fact::ASndWscale,
        Fact::ASndCwnd,
        Fact::ARetransmits,
        Fact::ABackoff,
        Fact::AProbes,
        Fact::AUnchangedMs,
        Fact::ACork,
        Fact::BRcvNxt,
        Fact::BCopied,
        Fact::BRecvq,
        Fact::BRcvWnd,
        Fact::BRcvWscale,
        Fact::BSendq,
        Fact::AckedNotSeen,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fact::ASendq => "a_sendq",
            Fact::ASndUna => "a_snd_una",
            Fact::ASndNxt => "a_snd_nxt",
            Fact::AWriteSeq => "a_write_seq",
            Fact::ANotsent => "a_notsent",
            Fact::AInflight => "a_inflight",
            Fact::ASndWnd => "a_snd_wnd",
            Fact::ASndWscale => "a_snd_wscale",
            Fact::ASndCwnd => "a_snd_cwnd",
            Fact::ARetransmits => "a_retransmits",
            Fact::ABackoff => "a_backoff",
            Fact::AProbes => "a_probes",
            Fact::AUnchangedMs => "a_unchanged_ms",
            Fact::ACork => "a_cork",
            Fact::BRcvNxt => "b_rcv_nxt",
            Fact::BCopied => "b_copied",
            Fact::BRecvq => "b_recvq",
            Fact::BRcvWnd => "b_rcv_wnd",
            Fact::BRcvWscale => "b_rcv_wscale",
            Fact::BSendq => "b_sendq",
            Fact::AckedNotSeen => "acked_not_seen",
        }
    }

    /// The fact named `name`.
    pub fn named(name: &str) -> Option<Fact> {
        Fact::ALL.into_iter().find(|f| f.name() == name)
    }

    const fn bit(self) -> u32 {
        1 << self as u8
    }
}

/// The facts that grow with every poll of a held queue.
const HELD_FOR: u32 = Fact::AUnchangedMs.bit();

/// The facts that count up while a stall holds, whatever its cause: how
/// long A's queue has been held, and A's zero-window probes, backoff and
/// retransmissions.
const COUNTERS: u32 =
    HELD_FOR | Fact::AProbes.bit() | Fact::ABackoff.bit() | Fact::ARetransmits.bit();

/// A verdict's numbers: a value for each fact known. Inline, not a map: a
/// verdict is made at every report of either end of an open episode, and
/// compared with the last one.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    /// Bit `f` set: fact `f` is known.
    known: u32,
    values: [i64; Fact::ALL.len()],
}

impl Evidence {
    fn put(&mut self, fact: Fact, v: Option<impl TryInto<i64>>) {
        if let Some(v) = v.and_then(|v| v.try_into().ok()) {
            self.values[fact as usize] = v;
            self.known |= fact.bit();
        }
    }

    pub fn fact(&self, fact: Fact) -> Option<i64> {
        (self.known & fact.bit() != 0).then(|| self.values[fact as usize])
    }

    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // for the tests
    /// The value named `name`, if known.
    pub fn get(&self, name: &str) -> Option<i64> {
        Fact::named(name).and_then(|f| self.fact(f))
    }

    /// The known facts with their names, in [`Fact`]'s order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, i64)> + '_ {
        Fact::ALL
            .into_iter()
            .filter_map(|f| Some((f.name(), self.fact(f)?)))
    }

    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // for the tests
    pub fn len(&self) -> usize {
        self.known.count_ones() as usize
    }

    #[cfg_attr(not(feature = "internals"), allow(dead_code))] // for the tests
    pub fn is_empty(&self) -> bool {
        self.known == 0
    }

    /// Whether the two know the same facts with the same values, those in
    /// `ignore` apart.
    fn same_but(&self, other: &Evidence, ignore: u32) -> bool {
        self.known == other.known
            && Fact::ALL.into_iter().all(|f| {
                f.bit() & (ignore | !self.known) != 0
                    || self.values[f as usize] == other.values[f as usize]
            })
    }
}

impl fmt::Debug for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Evidence {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl std::ops::Index<&str> for Evidence {
    type Output = i64;

    /// The value named `name`; panics if it is not known (as a map does).
    fn index(&self, name: &str) -> &i64 {
        match Fact::named(name) {
            Some(f) if self.known & f.bit() != 0 => &self.values[f as usize],
            _ => panic!("no evidence named {name}"),
        }
    }
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
    ev.put(Fact::ASndWnd, p.snd_wnd);
    ev.put(Fact::ASndWscale, p.snd_wscale);
    ev.put(Fact::ASndCwnd, a.snd_cwnd);
    ev.put(Fact::ARetransmits, a.retransmits);
    ev.put(Fact::ABackoff, a.backoff);
    ev.put(Fact::AProbes, a.probes);
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
    ev.put(Fact::BSendq, Some(p.sendq));
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
        Peer::Unjoined { why } => {
            let seen = one_sided(a);
            return verdict(
                Diagnosis::PeerUnmonitored,
                format!("{why}; from A alone: {seen}"),
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
            ev.put(Fact::AckedNotSeen, Some(rcv - una));
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
