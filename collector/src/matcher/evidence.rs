//! What a verdict rests on: the named facts ([`Fact`]), their values
//! ([`Evidence`]), and which of them a verdict used and which it went
//! without ([`Basis`]). The rules that read them are [`super::diagnose`].

use std::fmt;

use serde::Serialize;

/// The facts a verdict rested on and the facts it went without: a kernel
/// older than 6.2 gives no receive window, older than 5.4 no send window,
/// older than 4.1 no byte positions, and the verdict then rests on what
/// the kernel does give (see docs/kernels.md).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Basis {
    rested_on: u32,
    missing: u32,
}

impl Basis {
    pub(super) fn used(&mut self, fact: Fact) {
        self.rested_on |= fact.bit();
    }

    pub(super) fn lacked(&mut self, fact: Fact) {
        self.missing |= fact.bit();
    }

    /// Uses `fact` if `v` is known, else notes it missing; gives `v`.
    pub(super) fn take<T>(&mut self, fact: Fact, v: Option<T>) -> Option<T> {
        match v {
            Some(_) => self.used(fact),
            None => self.lacked(fact),
        }
        v
    }

    fn names(mask: u32) -> Vec<&'static str> {
        Fact::ALL
            .into_iter()
            .filter(|f| mask & f.bit() != 0)
            .map(Fact::name)
            .collect()
    }

    /// The names of the facts the verdict rested on, in [`Fact`]'s order.
    pub fn rested_on(&self) -> Vec<&'static str> {
        Self::names(self.rested_on)
    }

    /// The names of the facts it would have used and did not have.
    pub fn missing(&self) -> Vec<&'static str> {
        Self::names(self.missing)
    }
}

impl fmt::Debug for Basis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Basis")
            .field("rested_on", &self.rested_on())
            .field("missing", &self.missing())
            .finish()
    }
}

impl Serialize for Basis {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Basis", 2)?;
        st.serialize_field("rested_on", &self.rested_on())?;
        st.serialize_field("missing", &self.missing())?;
        st.end()
    }
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
    AUnacked,
    ASndWnd,
    ASndWscale,
    ASndCwnd,
    ARetransmits,
    ABackoff,
    AProbes,
    AProbeTimer,
    AUnchangedMs,
    ACork,
    BRcvNxt,
    BCopied,
    BRecvq,
    BRcvWnd,
    BRcvWscale,
    BRmemAlloc,
    BRcvbuf,
    BSendq,
    AckedNotSeen,
}

impl Fact {
    pub const ALL: [Fact; 25] = [
        Fact::ASendq,
        Fact::ASndUna,
        Fact::ASndNxt,
        Fact::AWriteSeq,
        Fact::ANotsent,
        Fact::AInflight,
        Fact::AUnacked,
        Fact::ASndWnd,
        Fact::ASndWscale,
        Fact::ASndCwnd,
        Fact::ARetransmits,
        Fact::ABackoff,
        Fact::AProbes,
        Fact::AProbeTimer,
        Fact::AUnchangedMs,
        Fact::ACork,
        Fact::BRcvNxt,
        Fact::BCopied,
        Fact::BRecvq,
        Fact::BRcvWnd,
        Fact::BRcvWscale,
        Fact::BRmemAlloc,
        Fact::BRcvbuf,
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
            Fact::AUnacked => "a_unacked",
            Fact::ASndWnd => "a_snd_wnd",
            Fact::ASndWscale => "a_snd_wscale",
            Fact::ASndCwnd => "a_snd_cwnd",
            Fact::ARetransmits => "a_retransmits",
            Fact::ABackoff => "a_backoff",
            Fact::AProbes => "a_probes",
            Fact::AProbeTimer => "a_probe_timer",
            Fact::AUnchangedMs => "a_unchanged_ms",
            Fact::ACork => "a_cork",
            Fact::BRcvNxt => "b_rcv_nxt",
            Fact::BCopied => "b_copied",
            Fact::BRecvq => "b_recvq",
            Fact::BRcvWnd => "b_rcv_wnd",
            Fact::BRcvWscale => "b_rcv_wscale",
            Fact::BRmemAlloc => "b_rmem_alloc",
            Fact::BRcvbuf => "b_rcvbuf",
            Fact::BSendq => "b_sendq",
            Fact::AckedNotSeen => "acked_not_seen",
        }
    }

    /// The fact named `name`.
    pub fn named(name: &str) -> Option<Fact> {
        Fact::ALL.into_iter().find(|f| f.name() == name)
    }

    pub(super) const fn bit(self) -> u32 {
        1 << self as u8
    }
}

/// The facts that grow with every poll of a held queue.
pub(super) const HELD_FOR: u32 = Fact::AUnchangedMs.bit();

/// The facts that count up while a stall holds, whatever its cause: how
/// long A's queue has been held, and A's zero-window probes, backoff and
/// retransmissions.
pub(super) const COUNTERS: u32 =
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
    pub(super) fn put(&mut self, fact: Fact, v: Option<impl TryInto<i64>>) {
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
    pub(super) fn same_but(&self, other: &Evidence, ignore: u32) -> bool {
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

