//! What the matcher keeps: one table of connection ends (each entry the
//! end's detector track and its suspect data), the watches it asked of
//! peers' hosts, the hosts it heard of, and its counters. Behaviour lives
//! beside: `samples` (a batch's samples through the table), `join` (peers
//! and watches), `episode` (an episode's life in the store), `run` (the
//! task and its inputs).

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tcpstall_common::{Diagnosis, EndSample, FlowTuple, Packed, Translation};
use tcpstall_proto::convert::{pack, unpack};
use tokio::sync::mpsc;

use super::detector::Track;
use super::diagnose::{Peer, Verdict};
use super::held::{HeldStats, HeldTally};
use super::owners::Announced;
use super::slab_map::SlabMap;
use super::tuple::Tuple;
use crate::messages::{HostId, ToGateway};
use crate::store::SharedStore;

pub(super) type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The matcher's counters, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub suspects: usize,
    /// Connections the episode detector follows: one track per suspect,
    /// kept in the same entry (the same count as `suspects`).
    pub tracks: usize,
    pub open_episodes: usize,
    pub samples: u64,
    pub episodes_opened: u64,
    pub store_dropped: u64,
    /// Watch and unwatch requests dropped because the gateway's queue was
    /// full (a dropped watch is asked again).
    pub requests_dropped: u64,
    /// Peers joined through a translation (a NAT between the ends): the
    /// suspect's own host's conntrack, the peer host's, or a gateway's.
    pub joined_via_translation: u64,
    /// Translate requests asked of forwarding hosts, and those not asked
    /// for the budget (a direct join failed, see [`super::nat`]).
    pub translate_asked: u64,
    pub translate_skipped: u64,
    /// Peer ends watched now.
    pub watched: usize,
    /// Open episodes, by diagnosis (indexed as [`Diagnosis::ALL`]).
    pub open_by_diagnosis: [usize; Diagnosis::ALL.len()],
    /// Episodes opened since start, by the diagnosis they opened with.
    pub opened_by_diagnosis: [u64; Diagnosis::ALL.len()],
    /// Bytes of what the matcher tracks: its tables (by capacity) and the
    /// samples and episodes they hold. An estimate, to tell its share of
    /// the process's memory from buffers and the allocator's.
    pub tracked_bytes: usize,
    /// Held spans the agents saw end, by how.
    pub held: HeldStats,
    /// The episode threshold now.
    pub threshold: Duration,
    /// Address announcements applied: a host's addresses replaced by what
    /// its agent said they are now.
    pub addresses_applied: u64,
    /// Address announcements ignored: from a stream its host had replaced.
    pub addresses_stale: u64,
}

/// An open episode another node stored, as a takeover finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adopted {
    pub id: i64,
    pub started_at_ms: i64,
    /// When it was last known open: its start and stored length.
    pub last_ms: i64,
}

/// What we know of a watched end.
#[derive(Debug)]
pub(super) enum PeerEnd {
    /// Asked for, nothing heard yet.
    Pending,
    /// Its latest report.
    Seen { at_ms: i64, sample: Packed },
    /// Its agent says it has no such socket (or it closed), first said at
    /// collector time `gone_ms`; the last report from before, if any.
    NoSocket {
        gone_ms: i64,
        last: Option<(i64, Packed)>,
    },
}

impl PeerEnd {
    /// The end reported gone at `now_ms`: the first time is kept, and the
    /// last report from before.
    pub(super) fn gone(self, now_ms: i64) -> PeerEnd {
        match self {
            PeerEnd::Seen { at_ms, sample } => PeerEnd::NoSocket {
                gone_ms: now_ms,
                last: Some((at_ms, sample)),
            },
            gone @ PeerEnd::NoSocket { .. } => gone,
            PeerEnd::Pending => PeerEnd::NoSocket {
                gone_ms: now_ms,
                last: None,
            },
        }
    }
}

/// A flow some host was asked to watch.
#[derive(Debug)]
pub(super) struct Watch {
    /// How many suspects (and queries) need it.
    pub(super) refs: u32,
    pub(super) end: PeerEnd,
    /// The host of the suspect with an open episode this is the peer of
    /// (its 4-tuple is this one reversed, or the one [`Ctx::a_of`] gives
    /// for a translated flow): a peer's report finds its episode at once.
    pub(super) episode_of: Option<HostId>,
    /// When the request was handed to the gateway; `None` if it could not
    /// be, or the gateway could not deliver it.
    pub(super) asked_at_ms: Option<i64>,
}

/// A connection whose queue looks stuck, with what we know of its peer.
/// Kept beside the connection's track in one entry of the table (keyed by
/// its host and 4-tuple, the cookie in the track): one lookup per sample
/// finds both.
#[derive(Debug, Default)]
pub(super) struct Suspect {
    /// The hosts that announced the peer's address when the suspect was
    /// first seen, or since (none: nobody did; several: every one is
    /// asked).
    pub(super) peers: Peers,
    /// Whether they have been asked to watch the peer (see
    /// [`ask_peer_after`]).
    pub(super) asked: bool,
    /// The owners' generation `peers` were found at (`owners`): found
    /// again when it moved.
    pub(super) peers_generation: u32,
    pub(super) latest: Packed,
    pub(super) latest_at_ms: i64,
    /// The stall's first sample, once a later one replaced it as `latest`.
    pub(super) first: Option<Packed>,
    pub(super) first_at_ms: i64,
    pub(super) episode: Option<Box<OpenEpisode>>,
    /// What a translation between the ends changed about the join; `None`
    /// for the most, joined by their 4-tuple reversed.
    pub(super) nat: Option<Box<Nat>>,
}

impl Suspect {
    /// The peer's 4-tuple as its host sees it: this one's reversed, unless
    /// a translation says otherwise.
    pub(super) fn b_flow(&self, flow: Tuple) -> Tuple {
        self.nat
            .as_ref()
            .and_then(|n| n.b_flow)
            .unwrap_or_else(|| flow.reversed())
    }
}

/// A suspect's join through translations (see [`super::nat`]).
#[derive(Debug, Default)]
pub(super) struct Nat {
    /// The peer's 4-tuple as its host sees it, when a translation gave it.
    pub(super) b_flow: Option<Tuple>,
    /// That translation, and the host whose conntrack holds it.
    pub(super) via: Option<(HostId, Translation)>,
    /// How many times the peer was looked for again at a translated
    /// tuple (bounded: translations do not chain forever).
    pub(super) hops: u8,
    /// Why the peer is not joined although monitored hosts were asked: a
    /// translation on the way by a host without an agent.
    pub(super) unjoined: Option<String>,
    /// Forwarding hosts asked to look the flow up, when a direct join
    /// failed.
    pub(super) translate: Option<Translating>,
}

/// A connection end: its host, and its 4-tuple as that host sees it.
pub(super) type End = (HostId, Tuple);

/// What a Translate request out is for.
#[derive(Debug, Clone, Copy)]
pub(super) struct AskedTranslation {
    /// The suspect whose peer it looks for.
    pub(super) suspect: End,
    /// The end it would confirm as the peer: `None` when the flow asked is
    /// the suspect's own.
    pub(super) confirms: Option<End>,
}

/// Translate requests out for one suspect.
#[derive(Debug)]
pub(super) struct Translating {
    pub(super) asked_at_ms: i64,
    /// The hosts still to answer.
    pub(super) waiting: Vec<HostId>,
}

#[derive(Debug)]
pub(super) struct OpenEpisode {
    pub(super) id: i64,
    /// The latest verdict.
    pub(super) verdict: Verdict,
    /// Whether its counters (probes, backoff, retransmissions) moved since
    /// the episode's row was written: written when it ends.
    pub(super) unstored: bool,
    pub(super) stored_a: usize,
    pub(super) stored_b: usize,
    /// When the A and B samples stored last were taken.
    pub(super) last_a_ms: i64,
    pub(super) last_b_ms: i64,
    /// The translation that joined its ends, as its row has it.
    pub(super) via: Option<(HostId, Translation)>,
}

/// The hosts that could hold a suspect's peer end: those that announced
/// the peer's address. Most addresses have one; an address that several
/// agents announce (every Docker host's 172.17.0.1, container networks
/// repeated across hosts, VIPs and anycast) has them all, and each is
/// asked: a socket found anywhere wins over sockets missing elsewhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) enum Peers {
    #[default]
    None,
    One(HostId),
    Many(Box<[HostId]>),
}

impl Peers {
    pub(super) fn hosts(&self) -> &[HostId] {
        match self {
            Peers::None => &[],
            Peers::One(h) => std::slice::from_ref(h),
            Peers::Many(hs) => hs,
        }
    }

    pub(super) fn is_none(&self) -> bool {
        matches!(self, Peers::None)
    }

    /// The one to name where only one can be (the held-span counts' pair).
    pub(super) fn first(&self) -> Option<HostId> {
        self.hosts().first().copied()
    }
}

/// A batch's clocks, for each of its samples.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clocks {
    /// The agent's clock at the poll.
    pub(super) mono: Duration,
    /// The collector's wall clock at the batch.
    pub(super) now_ms: i64,
    /// The poll on the collector's clock.
    pub(super) taken_ms: i64,
    /// See [`ask_peer_after`].
    pub(super) ask_after: Duration,
}

/// The peer of a suspect as known now, owned (samples are kept packed).
#[allow(clippy::large_enum_variant)] // short-lived, on the stack
pub(super) enum PeerNow {
    Seen(EndSample),
    NoSocket(Arc<str>),
    Pending(Arc<str>),
    /// No agent covers the peer's address (this one).
    Unmonitored(IpAddr),
    /// Monitored hosts hold the address, yet the peer is not joined: why.
    Unjoined(String),
}

impl PeerNow {
    pub(super) fn as_peer(&self) -> Peer<'_> {
        match self {
            PeerNow::Seen(s) => Peer::Seen(s),
            PeerNow::NoSocket(h) => Peer::NoSocket { host: h },
            PeerNow::Pending(h) => Peer::Pending { host: h },
            PeerNow::Unmonitored(_) => Peer::Unmonitored,
            PeerNow::Unjoined(why) => Peer::Unjoined { why },
        }
    }
}

/// A connection end the matcher follows: the detector's track of it and
/// what is kept of the suspect, one entry of one table (keyed by its host
/// and 4-tuple; the socket's cookie is in the track).
#[derive(Debug)]
pub(super) struct Entry {
    pub(super) track: Track,
    pub(super) suspect: Suspect,
}

/// A host whose agent streams now.
#[derive(Debug, Clone, Copy)]
pub(super) struct Up {
    /// Its stream: batches of another are stale.
    pub(super) session: u64,
    pub(super) interval: Duration,
    /// Its agent answers Translate requests.
    pub(super) answers_lookups: bool,
    /// Its host forwards packets (may translate others' flows).
    pub(super) forwards: bool,
}

/// The matcher's state; all its methods run on its task.
#[derive(Debug)]
pub struct Matcher {
    /// Every suspect connection end.
    pub(super) table: SlabMap<(HostId, Tuple), Entry>,
    pub(super) threshold: Duration,
    pub(super) ctx: Ctx,
}

/// Everything but the table: what handling a suspect needs beside its
/// entry, which its methods take as an argument.
#[derive(Debug)]
pub(super) struct Ctx {
    pub(super) store: SharedStore,
    pub(super) max_samples: usize,
    /// See [`Matcher::watch_peer_after`]; `None`: [`ask_peer_after`].
    pub(super) watch_peer_after: Option<Duration>,
    /// Where watch requests go.
    pub(super) gateway: mpsc::Sender<ToGateway>,
    /// Every host ever heard of, by its number (for rows and logs; a
    /// host's number never changes).
    pub(super) names: Map<HostId, Arc<str>>,
    /// The hosts whose agents stream now.
    pub(super) up: Map<HostId, Up>,
    /// Non-loopback address -> the hosts that announced it, in the order
    /// they said hello.
    pub(super) owners: Map<IpAddr, Vec<HostId>>,
    /// Each host's own addresses, and the owners' generation (`owners`).
    pub(super) announced: Announced,
    /// The hosts up whose hosts forward packets and whose agents answer
    /// Translate requests: asked when a direct join fails.
    pub(super) translators: Vec<HostId>,
    /// (host, flow as that host sees it) -> what it reports of it.
    pub(super) watched: SlabMap<(HostId, Tuple), Watch>,
    /// A watch of a translated peer end -> the suspect it is the peer of
    /// (host, 4-tuple), whose 4-tuple is not the watch's reversed. Only
    /// translated joins are here.
    pub(super) a_of: Map<(HostId, Tuple), (HostId, Tuple)>,
    /// A Translate request out (asked host, flow asked) -> the suspect it
    /// is for, and the end it would confirm: `None` when the flow asked is
    /// the suspect's own (a forwarding host may hold its translation);
    /// `Some` when it is a socket found on the peer's endpoint, connected
    /// elsewhere (the translator would join the suspect to it).
    pub(super) translating: Map<End, AskedTranslation>,
    pub(super) open_episodes: usize,
    pub(super) next_episode: i64,
    /// Episode ids from each episode's identity (its flow and start)
    /// rather than counted from `next_episode`: fleet mode, where several
    /// nodes and replays may open the same episode.
    pub(super) ids_of_identity: bool,
    /// Held spans that ended before this (collector ms) are not counted:
    /// a partition taken over replays minutes its previous owner stored.
    pub(super) held_from_ms: i64,
    /// Replaying a partition's stream: episodes opened again are not
    /// counted as opened (their first owner counted them).
    pub(super) replaying: bool,
    /// Episodes another node left open, by their A end (host, flow,
    /// socket): one opened again here takes the stored one's id and start
    /// (see [`Matcher::adopt`]).
    pub(super) adopted: Map<(Arc<str>, FlowTuple, u64), Adopted>,
    pub(super) stats: Stats,
    /// Every held span reported ended, counted (a minute's counts go to
    /// the store when it is over).
    pub(super) held: HeldTally<HostId>,
}

impl Ctx {
    /// A host's name, for rows and logs.
    pub(super) fn name(&self, host: HostId) -> Arc<str> {
        self.names
            .get(&host)
            .cloned()
            .unwrap_or_else(|| Arc::from("?"))
    }
}

/// How long a suspect's queue must have been held before its peer's agent
/// is asked to watch the other end, for a suspect whose agent polls every
/// `interval`: late enough that the many queues held for a poll or two
/// cost no request, no peer report and no unwatch, and early enough for
/// the peer's report to be there when the episode opens. The ask comes
/// with a report 2.5 to 1.5 polls before the threshold (2 at the defaults,
/// where reports fall on whole polls); the peer's first report needs the
/// request's gathering (a quarter of a poll) and the next of its polls,
/// which leaves a quarter of a poll or more to spare. A request the
/// collector had to drop is asked again at the next report; if the peer's
/// answer then comes after the threshold, the episode opens `undetermined`
/// ("waiting for ...") and is diagnosed again when it comes. At the
/// defaults (10 s, 2 s) that is 5 s: the suspect's third report (held
/// 6 s). It was 3.5 polls (the second report) until the 1,000-agent
/// benchmark showed what the second reports' requests cost (BENCHMARKS.md).
pub fn ask_peer_after(threshold: Duration, interval: Duration) -> Duration {
    threshold.saturating_sub(interval * 5 / 2)
}

/// Polls of silence after which a suspect is taken as gone.
pub const SILENT_POLLS: u32 = 5;

/// The sample's encoding: the one at hand, or a new one.
pub(super) fn take(slot: &mut Option<Packed>, s: &EndSample) -> Packed {
    slot.take().unwrap_or_else(|| pack(s))
}

/// A's sample: the one at hand, else the suspect's latest, unpacked.
pub(super) fn a_sample<'a>(
    at_hand: Option<&'a EndSample>,
    s: &Suspect,
) -> Option<Cow<'a, EndSample>> {
    match at_hand {
        Some(a) => Some(Cow::Borrowed(a)),
        None => decode(&s.latest).map(Cow::Owned),
    }
}

/// A kept sample back; logged when it no longer decodes (a bug).
pub(super) fn decode(p: &Packed) -> Option<EndSample> {
    let s = unpack(p);
    if s.is_none() {
        tracing::error!(
            bytes = p.len(),
            "a kept sample no longer decodes (a bug); skipped"
        );
    }
    s
}

/// The hosts whose agents own `ip`, as seen from `from` (loopback is the
/// host itself): a function of the table it reads, so that a caller can
/// keep a suspect borrowed meanwhile.
pub(super) fn owners_of(owners: &Map<IpAddr, Vec<HostId>>, from: HostId, ip: IpAddr) -> Peers {
    if ip.is_loopback() {
        return Peers::One(from);
    }
    match owners.get(&ip).map(Vec::as_slice) {
        None | Some([]) => Peers::None,
        Some([one]) => Peers::One(*one),
        Some(many) => Peers::Many(many.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_asked_two_and_a_half_polls_before_the_threshold() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // Defaults: held 5 s, met at the third report (6 s), not the second.
        assert_eq!(ask_peer_after(s(10), s(2)), s(5));
        assert_eq!(ask_peer_after(s(60), s(2)), s(55));
        assert_eq!(ask_peer_after(s(3), ms(500)), ms(1750));
        // A threshold within 2.5 polls: at the first report.
        assert_eq!(ask_peer_after(s(5), s(2)), Duration::ZERO);
        assert_eq!(ask_peer_after(s(4), s(2)), Duration::ZERO);
    }
}
