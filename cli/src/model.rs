//! What the CLI shows, built from the query service's answers (as
//! `tcpstall_proto::convert` gives them: domain types): an episode with the
//! latest sample of each end, each end at its own addresses (which differ
//! from the other end's view when a NAT joined them). Its JSON form is the
//! documented, stable schema of `--json` (docs/cli-json.md): add fields,
//! never rename.

use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;
use tcpstall_common::incident::{self, Member, Role};
use tcpstall_common::record::{Episode, EpisodeSample, JoinedVia};
use tcpstall_common::{
    AbsoluteSeq, Container, EndSample, FactSource, FlowTuple, OwnerMissing, Positions,
    ProcessOwner, Side, TcpState, Translation,
};

/// The docs/design.md fields of one end for JSON: every one `null` when the
/// end was never sampled, never a made-up 0.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PosJson {
    pub sendq: Option<u32>,
    pub recvq: Option<u32>,
    pub notsent: Option<u32>,
    pub inflight: Option<u32>,
    pub snd_una: Option<u64>,
    pub snd_nxt: Option<u64>,
    pub write_seq: Option<u64>,
    pub rcv_nxt: Option<u64>,
    pub copied: Option<u64>,
    pub snd_wnd: Option<u32>,
    pub rcv_wnd: Option<u32>,
    pub snd_wscale: Option<u8>,
    pub rcv_wscale: Option<u8>,
}

impl From<&Positions> for PosJson {
    fn from(p: &Positions) -> Self {
        PosJson {
            sendq: Some(p.sendq),
            recvq: Some(p.recvq),
            notsent: p.notsent,
            inflight: p.inflight,
            snd_una: p.snd_una,
            snd_nxt: p.snd_nxt,
            write_seq: p.write_seq,
            rcv_nxt: p.rcv_nxt,
            copied: p.copied,
            snd_wnd: p.snd_wnd,
            rcv_wnd: p.rcv_wnd,
            snd_wscale: p.snd_wscale,
            rcv_wscale: p.rcv_wscale,
        }
    }
}

/// One direction of a conntrack entry: its packets' source and
/// destination, `ip:port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirectionJson {
    pub src: String,
    pub dst: String,
}

impl From<FlowTuple> for DirectionJson {
    fn from(f: FlowTuple) -> Self {
        DirectionJson {
            src: f.local.to_string(),
            dst: f.remote.to_string(),
        }
    }
}

/// A connection's conntrack entry as JSON: the direction of its first
/// packet and of the replies, and what a NAT rule rewrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TranslationJson {
    pub original: DirectionJson,
    pub reply: DirectionJson,
    /// The original direction's source was rewritten (SNAT, masquerade).
    pub src_nat: bool,
    /// Its destination was rewritten (DNAT).
    pub dst_nat: bool,
    /// For rendering.
    #[serde(skip)]
    pub entry: Translation,
}

impl From<Translation> for TranslationJson {
    fn from(t: Translation) -> Self {
        TranslationJson {
            original: t.original.into(),
            reply: t.reply.into(),
            src_nat: t.src_nat,
            dst_nat: t.dst_nat,
            entry: t,
        }
    }
}

/// The translation that joined an episode's ends, and the host whose
/// conntrack held it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ViaJson {
    pub host: String,
    #[serde(flatten)]
    pub translation: TranslationJson,
}

impl From<&JoinedVia> for ViaJson {
    fn from(v: &JoinedVia) -> Self {
        ViaJson {
            host: v.host.clone(),
            translation: v.translation.into(),
        }
    }
}

/// One end of a stuck pair.
#[derive(Debug, Clone, Serialize)]
pub struct EndView {
    pub host: String,
    /// This end's own addresses, as its socket has them.
    pub local: String,
    pub remote: String,
    /// The Community ID of the connection as this end sees it (v1, seed
    /// 0): the key of the same flow in Zeek, Suricata or Elastic data.
    pub community_id: String,
    /// The connection's conntrack entry on this end's host when a NAT rule
    /// there rewrote it (from the latest sample that carried one).
    pub translation: Option<TranslationJson>,
    /// Whether a sample of this end exists; without one every number is null.
    pub seen: bool,
    pub state: Option<TcpState>,
    #[serde(flatten)]
    pub json: PosJson,
    /// For rendering; meaningful only when `seen`.
    #[serde(skip)]
    pub pos: Positions,
    pub retransmits: Option<u8>,
    pub backoff: Option<u8>,
    pub probes: Option<u8>,
    /// Segments in flight, and of them lost and retransmitted, by the
    /// kernel's SACK scoreboard.
    pub unacked: Option<u32>,
    pub lost: Option<u32>,
    pub retrans: Option<u32>,
    pub cork: Option<bool>,
    /// The probe that read `cork` (bpf, getsockopt); null when unknown.
    pub cork_source: Option<FactSource>,
    /// TCP_NODELAY where a probe could read it, and which probe.
    pub nodelay: Option<bool>,
    pub nodelay_source: Option<FactSource>,
    /// The process holding the socket (pid, command, unit, cgroup); null
    /// when unknown, and then `owner_unknown` says why when known.
    pub owner: Option<ProcessOwner>,
    pub owner_unknown: Option<OwnerMissing>,
    /// The container (and pod) the owner runs in, read from its cgroup;
    /// null outside containers or when the owner is unknown.
    pub container: Option<Container>,
    /// Absolute sequence numbers, ISNs and SACK blocks (BPF probe only).
    pub absolute: Option<AbsoluteSeq>,
    /// `bpf` when `absolute` is there.
    pub absolute_source: Option<FactSource>,
    /// Where the facts came from.
    pub source: &'static str,
    /// This end's own 4-tuple, for rendering.
    #[serde(skip)]
    pub flow: FlowTuple,
    /// The sample the view was made of, for `diff`'s facts.
    #[serde(skip)]
    pub sample: Option<EndSample>,
}

impl EndView {
    pub fn new(host: &str, flow: FlowTuple, s: Option<&EndSample>) -> EndView {
        EndView {
            host: host.to_string(),
            local: flow.local.to_string(),
            remote: flow.remote.to_string(),
            community_id: flow.community_id(),
            translation: s
                .and_then(|s| s.translation.as_deref())
                .map(|t| TranslationJson::from(*t)),
            seen: s.is_some(),
            state: s.map(|s| s.state),
            json: s.map(|s| PosJson::from(&s.pos)).unwrap_or_default(),
            pos: s.map(|s| s.pos).unwrap_or_default(),
            retransmits: s.and_then(|s| s.retransmits),
            backoff: s.and_then(|s| s.backoff),
            probes: s.and_then(|s| s.probes),
            unacked: s.and_then(|s| s.unacked),
            lost: s.and_then(|s| s.lost),
            retrans: s.and_then(|s| s.retrans),
            cork: s.and_then(|s| s.cork),
            cork_source: s.and_then(|s| s.cork_source),
            nodelay: s.and_then(|s| s.nodelay),
            nodelay_source: s.and_then(|s| s.nodelay_source),
            owner: s.and_then(|s| s.owner.as_deref().cloned()),
            owner_unknown: s.and_then(|s| s.owner_missing),
            container: s
                .and_then(|s| s.owner.as_deref())
                .and_then(|o| o.cgroup.as_deref())
                .and_then(Container::from_cgroup),
            absolute: s.and_then(|s| s.absolute.as_deref().cloned()),
            absolute_source: s.and_then(|s| s.absolute.as_ref()).map(|_| FactSource::Bpf),
            source: "tcp_info",
            flow,
            sample: s.cloned(),
        }
    }

    /// The connection as the far end sees it, this end's address first:
    /// from the far end's own view when there is one, else through this
    /// end's conntrack entry; `None` when neither says.
    pub fn as_seen_by(&self, far: Option<&EndView>) -> Option<FlowTuple> {
        match far {
            Some(f) => Some(f.flow.reversed()),
            None => self
                .translation
                .as_ref()
                .and_then(|t| t.entry.far_side(self.flow))
                .map(FlowTuple::reversed),
        }
    }
}

/// The two ends.
#[derive(Debug, Clone, Serialize)]
pub struct Ends {
    pub a: EndView,
    pub b: Option<EndView>,
}

/// One episode as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct EpisodeView {
    pub id: i64,
    pub diagnosis: String,
    pub open: bool,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub ended_at: Option<String>,
    pub duration_s: f64,
    /// Bytes stuck in A's send queue.
    pub stuck: u32,
    pub summary: String,
    pub blame: &'static str,
    pub peer_note: Option<String>,
    /// The translation that joined B to A (a NAT between them); null when
    /// B was joined by A's addresses reversed, or not joined.
    pub via: Option<ViaJson>,
    pub end_reason: Option<String>,
    pub evidence: std::collections::BTreeMap<String, i64>,
    /// The evidence names the diagnosis rested on, and those it would
    /// have used had the kernel or a probe given them (docs/kernels.md);
    /// both empty from collectors that predate them.
    pub rested_on: Vec<String>,
    pub missing: Vec<String>,
    pub peer: Ends,
    /// The incident it is part of: that incident's first episode's id (its
    /// own when it stands alone), over the episodes the command read; null
    /// where no grouping was done (`export`).
    pub incident: Option<i64>,
    /// `started_at` in milliseconds, for grouping.
    #[serde(skip)]
    pub started_at_ms: i64,
}

/// One incident as `--json` prints it: the episodes of one diagnosis
/// around one host, overlapping in time
/// ([`tcpstall_common::incident`]).
#[derive(Debug, Clone, Serialize)]
pub struct IncidentView {
    /// Its first episode's id.
    pub id: i64,
    /// The incident in words.
    pub title: String,
    pub diagnosis: String,
    /// The host its pairs share.
    pub host: String,
    /// `peer` when that host is B of every pair, `sender` when it is A.
    pub role: Role,
    /// Any of its episodes still open.
    pub open: bool,
    pub started_at: String,
    /// When its last episode ended; null while one is open.
    pub ended_at: Option<String>,
    pub duration_s: f64,
    /// Its episodes (stuck pairs).
    pub pairs: usize,
    /// Distinct hosts on the other side.
    pub hosts: usize,
    /// Bytes stuck over its episodes.
    pub stuck: u64,
    /// Its episodes' ids, earliest first.
    pub episodes: Vec<i64>,
}

/// The incident episode `id` is part of among `around` (the episodes
/// stored around it: the same diagnosis, either host): its id, its
/// episodes and its title.
pub fn incident_around(id: i64, around: &[Episode]) -> Option<(i64, usize, String)> {
    let members: Vec<Member<'_>> = around
        .iter()
        .map(|e| Member {
            id: e.id,
            diagnosis: &e.diagnosis,
            a_host: &e.a_host,
            b_host: e.b_host.as_deref(),
            start_ms: e.started_at_ms,
            end_ms: Member::end_of(e.started_at_ms, e.duration_ms, e.open, now_ms()),
            open: e.open,
            stuck: u64::from(e.stuck_bytes),
        })
        .collect();
    incident::group(&members)
        .into_iter()
        .find(|i| i.members.iter().any(|&m| members[m].id == id))
        .map(|i| (i.id, i.members.len(), i.title()))
}

/// Now, Unix milliseconds (this host's clock).
fn now_ms() -> i64 {
    tcpstall_common::time::unix_ms(std::time::SystemTime::now())
}

/// Groups `eps` into incidents, setting each episode's `incident`.
pub fn incidents(eps: &mut [EpisodeView]) -> Vec<IncidentView> {
    let members: Vec<Member<'_>> = eps
        .iter()
        .map(|e| Member {
            id: e.id,
            diagnosis: &e.diagnosis,
            a_host: &e.peer.a.host,
            b_host: e.peer.b.as_ref().map(|b| b.host.as_str()),
            start_ms: e.started_at_ms,
            end_ms: Member::end_of(
                e.started_at_ms,
                (e.duration_s * 1000.0) as u64,
                e.open,
                now_ms(),
            ),
            open: e.open,
            stuck: u64::from(e.stuck),
        })
        .collect();
    let grouped = incident::group(&members);
    let views: Vec<IncidentView> = grouped
        .iter()
        .map(|i| IncidentView {
            id: i.id,
            title: i.title(),
            diagnosis: i.diagnosis.clone(),
            host: i.host.clone(),
            role: i.role,
            open: i.open,
            started_at: rfc3339(i.start_ms),
            ended_at: (!i.open).then(|| rfc3339(i.end_ms)),
            duration_s: (i.end_ms - i.start_ms) as f64 / 1000.0,
            pairs: i.members.len(),
            hosts: i.others,
            stuck: i.stuck,
            episodes: i.members.iter().map(|&m| members[m].id).collect(),
        })
        .collect();
    for i in &grouped {
        for &m in &i.members {
            eps[m].incident = Some(i.id);
        }
    }
    views
}

pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Whom a diagnosis blames, in words.
pub fn blame(diagnosis: &str) -> &'static str {
    tcpstall_common::Diagnosis::from_id(diagnosis).map_or("unknown", |d| d.blame())
}

/// Builds the view of an episode from the query service's answer and the
/// samples stored with it: each end's numbers from its latest sample, its
/// conntrack entry from the latest that carried one.
pub fn episode_view(e: &Episode, samples: &[EpisodeSample]) -> EpisodeView {
    let (a, b) = latest_ends(samples);
    let flow = e.a_flow;
    let b_view = e.b_host.as_ref().map(|host| {
        let mut v = EndView::new(host, b_flow(e, b), b);
        v.translation = latest_translation(samples, Side::B);
        v
    });
    let mut a_view = EndView::new(&e.a_host, flow, a);
    a_view.translation = latest_translation(samples, Side::A);
    EpisodeView {
        id: e.id,
        diagnosis: e.diagnosis.clone(),
        open: e.open,
        started_at: rfc3339(e.started_at_ms),
        ended_at: e.ended_at_ms.filter(|&ms| !e.open && ms > 0).map(rfc3339),
        duration_s: e.duration_ms as f64 / 1000.0,
        stuck: e.stuck_bytes,
        summary: e.summary.clone(),
        blame: blame(&e.diagnosis),
        peer_note: e.peer_note.clone(),
        via: e.via.as_ref().map(ViaJson::from),
        end_reason: e.end_reason.clone(),
        evidence: e.evidence.clone(),
        rested_on: e.basis.rested_on.clone(),
        missing: e.basis.missing.clone(),
        peer: Ends {
            a: a_view,
            b: b_view,
        },
        incident: None,
        started_at_ms: e.started_at_ms,
    }
}

/// B's own 4-tuple. Joined directly, it is A's reversed; joined through a
/// translation, B's addresses differ from those A talks to: as B's latest
/// sample has them, else as the translation maps A's tuple (A's reversed
/// only when it does not hold A's tuple either).
fn b_flow(e: &Episode, b: Option<&EndSample>) -> FlowTuple {
    let reversed = e.a_flow.reversed();
    match &e.via {
        None => reversed,
        Some(via) => b
            .map(|s| s.flow)
            .or_else(|| via.translation.far_side(e.a_flow))
            .unwrap_or(reversed),
    }
}

/// The latest stored sample of each side of an episode.
fn latest_ends(samples: &[EpisodeSample]) -> (Option<&EndSample>, Option<&EndSample>) {
    let latest = |side: Side| {
        samples
            .iter()
            .filter(|s| s.side == side)
            .max_by_key(|s| s.at_ms)
            .map(|s| &s.sample)
    };
    (latest(Side::A), latest(Side::B))
}

/// The conntrack entry of the latest sample of `side` that carried one.
fn latest_translation(samples: &[EpisodeSample], side: Side) -> Option<TranslationJson> {
    samples
        .iter()
        .filter(|s| s.side == side)
        .filter_map(|s| Some((s.at_ms, *s.sample.translation.as_deref()?)))
        .max_by_key(|(at_ms, _)| *at_ms)
        .map(|(_, t)| t.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuple(local: &str, remote: &str) -> FlowTuple {
        FlowTuple::new(local.parse().expect("addr"), remote.parse().expect("addr"))
    }

    /// A server's stalled send to a client that dialled a service address
    /// its host DNATs to the server; `via` as given.
    fn episode(via: Option<JoinedVia>) -> Episode {
        Episode {
            id: 1,
            diagnosis: "peer_not_reading".into(),
            summary: String::new(),
            evidence: Default::default(),
            basis: Default::default(),
            started_at_ms: 0,
            ended_at_ms: None,
            duration_ms: 0,
            stuck_bytes: 0,
            a_host: "web".into(),
            a_flow: tuple("10.1.0.7:8080", "10.0.0.1:40000"),
            b_host: Some("client".into()),
            peer_note: None,
            via,
            open: true,
            end_reason: None,
        }
    }

    fn dnat() -> Translation {
        Translation {
            original: tuple("10.0.0.1:40000", "10.96.0.10:80"),
            reply: tuple("10.1.0.7:8080", "10.0.0.1:40000"),
            src_nat: false,
            dst_nat: true,
        }
    }

    fn b_addresses(e: &Episode) -> (String, String) {
        let v = episode_view(e, &[]);
        let b = v.peer.b.expect("B's host is known");
        (b.local, b.remote)
    }

    #[test]
    fn b_is_at_its_own_addresses_when_a_translation_joined_it() {
        let own = |l: &str, r: &str| (l.to_string(), r.to_string());
        // Joined directly: A's tuple reversed.
        assert_eq!(
            b_addresses(&episode(None)),
            own("10.0.0.1:40000", "10.1.0.7:8080")
        );
        // Through the client's DNAT, with no sample of B: the entry's
        // other direction.
        let via = JoinedVia {
            host: "client".into(),
            translation: dnat(),
        };
        let joined = episode(Some(via.clone()));
        assert_eq!(b_addresses(&joined), own("10.0.0.1:40000", "10.96.0.10:80"));
        let v = episode_view(&joined, &[]);
        assert_eq!(v.via, Some(ViaJson::from(&via)));
        assert_eq!(
            v.peer.a.as_seen_by(v.peer.b.as_ref()),
            Some(tuple("10.96.0.10:80", "10.0.0.1:40000")),
            "B dials the service address"
        );
        // An entry that holds neither of A's directions says nothing of B.
        let mut elsewhere = via;
        elsewhere.translation.reply = tuple("10.1.0.8:8080", "10.0.0.1:40000");
        assert_eq!(
            b_addresses(&episode(Some(elsewhere))),
            own("10.0.0.1:40000", "10.1.0.7:8080")
        );
    }

    #[test]
    fn a_translation_is_json_of_directions_and_flags() {
        let via = JoinedVia {
            host: "client".into(),
            translation: dnat(),
        };
        let json = serde_json::to_value(ViaJson::from(&via)).expect("JSON");
        assert_eq!(
            json,
            serde_json::json!({
                "host": "client",
                "original": {"src": "10.0.0.1:40000", "dst": "10.96.0.10:80"},
                "reply": {"src": "10.1.0.7:8080", "dst": "10.0.0.1:40000"},
                "src_nat": false,
                "dst_nat": true,
            })
        );
    }
}
