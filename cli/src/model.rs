//! What the CLI shows, built from the query service's answers (as
//! `tcpstall_proto::convert` gives them: domain types): an episode with the
//! latest sample of each end. Its JSON form is the documented,
//! stable schema of `--json` (docs/cli-json.md): add fields, never rename.

use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;
use tcpstall_common::record::{Episode, EpisodeSample};
use tcpstall_common::{
    AbsoluteSeq, Container, EndSample, FactSource, FlowTuple, OwnerMissing, Positions,
    ProcessOwner, Side, TcpState,
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

/// One end of a stuck pair.
#[derive(Debug, Clone, Serialize)]
pub struct EndView {
    pub host: String,
    pub local: String,
    pub remote: String,
    /// The Community ID of the connection as this end sees it (v1, seed
    /// 0): the key of the same flow in Zeek, Suricata or Elastic data.
    pub community_id: String,
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
}

impl EndView {
    pub fn new(host: &str, flow: FlowTuple, s: Option<&EndSample>) -> EndView {
        EndView {
            host: host.to_string(),
            local: flow.local.to_string(),
            remote: flow.remote.to_string(),
            community_id: flow.community_id(),
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
    pub end_reason: Option<String>,
    pub evidence: std::collections::BTreeMap<String, i64>,
    pub peer: Ends,
}

pub fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Whom a diagnosis blames, in words.
pub fn blame(diagnosis: &str) -> &'static str {
    tcpstall_common::Diagnosis::from_id(diagnosis).map_or("unknown", |d| d.blame())
}

/// Builds the view of an episode from the query service's answer; `a` and
/// `b` are each end's latest sample, if any was stored.
pub fn episode_view(e: &Episode, a: Option<&EndSample>, b: Option<&EndSample>) -> EpisodeView {
    let flow = e.a_flow;
    let b_view = e
        .b_host
        .as_ref()
        .map(|host| EndView::new(host, flow.reversed(), b));
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
        end_reason: e.end_reason.clone(),
        evidence: e.evidence.clone(),
        peer: Ends {
            a: EndView::new(&e.a_host, flow, a),
            b: b_view,
        },
    }
}

/// The latest stored sample of each side of an episode.
pub fn latest_ends(samples: &[EpisodeSample]) -> (Option<&EndSample>, Option<&EndSample>) {
    let latest = |side: Side| {
        samples
            .iter()
            .filter(|s| s.side == side)
            .max_by_key(|s| s.at_ms)
            .map(|s| &s.sample)
    };
    (latest(Side::A), latest(Side::B))
}
