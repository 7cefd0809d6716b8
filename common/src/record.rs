//! What the collector's store keeps and its query service answers with,
//! and what an operator asks of it.
//!
//! - An episode: [`EpisodeRow`] as stored, [`Episode`] as a query answers
//!   it (an open one has lasted until the answer), a page of them
//!   ([`EpisodePage`]), one with its samples ([`EpisodeDetail`]); the
//!   translation that joined its ends through a NAT ([`JoinedVia`]).
//! - The samples of its two ends: [`StoredSample`] in the encoding the
//!   store keeps (and a query sends as it is), [`EpisodeSample`] decoded
//!   by whoever reads the answer.
//! - Held spans counted by host pair: [`HeldRow`] per minute as stored,
//!   [`HeldSpanCount`] over a window as answered ([`HeldSpans`]).
//! - A flow's two ends now: [`FlowEnds`].
//! - The questions: [`EpisodeQuery`] and [`HeldQuery`] as an operator puts
//!   them (windows back from the collector's now), [`EpisodeFilter`] and
//!   [`HeldFilter`] as the store reads them (absolute times).
//!
//! The wire forms, both ways, are `tcpstall_proto::convert`'s.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::end::EndSample;
use crate::episode::Side;
use crate::flow::{FlowTuple, Translation};
use crate::held::HeldEnd;
use crate::packed::Packed;

/// Episodes one list returns when the question's limit is 0.
pub const DEFAULT_LIST_LIMIT: u32 = 1000;
/// Most episodes one list returns, whatever the question asks.
pub const MAX_LIST_LIMIT: u32 = 10_000;

/// Which facts (evidence names) a verdict rested on, and which it would
/// have used had the kernel or a probe given them: a kernel before 6.2
/// has no `b_rcv_wnd`, before 5.4 no `a_snd_wnd`, before 4.1 no byte
/// positions (docs/kernels.md). Empty on episodes stored before it was
/// kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VerdictBasis {
    pub rested_on: Vec<String>,
    pub missing: Vec<String>,
}

impl VerdictBasis {
    /// Neither list has a name: nothing is known of the basis.
    pub fn is_empty(&self) -> bool {
        self.rested_on.is_empty() && self.missing.is_empty()
    }
}

/// An episode as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpisodeRow {
    pub id: i64,
    pub diagnosis: String,
    pub summary: String,
    pub evidence: BTreeMap<String, i64>,
    pub basis: VerdictBasis,
    pub started_at_ms: i64,
    pub duration_ms: u64,
    pub stuck_bytes: u32,
    pub a_host: String,
    pub a_netns: String,
    pub a_flow: FlowTuple,
    pub a_cookie: u64,
    pub b_host: Option<String>,
    pub peer_note: Option<String>,
    /// The translation that joined B to A, when one did.
    pub via: Option<JoinedVia>,
    pub open: bool,
    pub ended_at_ms: Option<i64>,
    pub end_reason: Option<String>,
}

impl EpisodeRow {
    /// The episode as a query answers it at `now_ms` (the collector's
    /// clock, Unix milliseconds): an open one has lasted until then, or as
    /// long as stored if that is longer.
    pub fn answer(self, now_ms: i64) -> Episode {
        let duration_ms = if self.open {
            u64::try_from(now_ms.saturating_sub(self.started_at_ms))
                .unwrap_or(0)
                .max(self.duration_ms)
        } else {
            self.duration_ms
        };
        Episode {
            id: self.id,
            diagnosis: self.diagnosis,
            summary: self.summary,
            evidence: self.evidence,
            basis: self.basis,
            started_at_ms: self.started_at_ms,
            ended_at_ms: self.ended_at_ms,
            duration_ms,
            stuck_bytes: self.stuck_bytes,
            a_host: self.a_host,
            a_flow: self.a_flow,
            b_host: self.b_host,
            peer_note: self.peer_note,
            via: self.via,
            open: self.open,
            end_reason: self.end_reason,
        }
    }
}

/// An episode as a query answers it. Its words (`diagnosis`, `end_reason`)
/// are kept as the ids the collector gave, so that one a newer collector
/// names is shown as it is rather than refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    pub id: i64,
    /// A [`Diagnosis`](crate::Diagnosis) id.
    pub diagnosis: String,
    pub summary: String,
    pub evidence: BTreeMap<String, i64>,
    /// The evidence the diagnosis rested on, and what it went without.
    pub basis: VerdictBasis,
    /// Unix milliseconds, collector's clock.
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    /// How long the queue had been stuck when it ended, or by the answer.
    pub duration_ms: u64,
    pub stuck_bytes: u32,
    pub a_host: String,
    /// As A sees it.
    pub a_flow: FlowTuple,
    /// `None` when no agent covers the peer.
    pub b_host: Option<String>,
    /// Why the peer end is missing or pending, when it is.
    pub peer_note: Option<String>,
    /// The translation that joined B to A, when their addresses differ
    /// between them (a NAT on the way); `None` when B was found by A's
    /// 4-tuple reversed, or not found.
    pub via: Option<JoinedVia>,
    pub open: bool,
    /// An [`EndReason`](crate::EndReason) id.
    pub end_reason: Option<String>,
}

/// The translation that joined an episode's two ends, when their addresses
/// differ between them (a NAT between A and B): the conntrack entry, and
/// the host whose connection tracking holds it (A's, B's, or a NAT
/// gateway's that runs an agent).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JoinedVia {
    /// Whose conntrack gave it.
    pub host: String,
    pub translation: Translation,
}

/// One page of a list of episodes, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpisodePage {
    pub episodes: Vec<Episode>,
    /// Where the next page starts when more may follow: give it back as
    /// [`EpisodeQuery::page_token`]. Opaque.
    pub next_page_token: Option<String>,
}

/// One end of an episode's connection at one poll, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSample {
    pub side: Side,
    pub host: String,
    /// Collector's clock when stored, Unix milliseconds.
    pub at_ms: i64,
    /// Stored as those bytes (protobuf `tcpstall.v1.Sample`) in
    /// `samples.sample_pb`; rows of schema version 1 held JSON and are
    /// read back into the same encoding. `convert::unpack` gives the
    /// `EndSample`; a query sends the bytes as they are.
    pub sample: Packed,
}

/// A [`StoredSample`] as a reader of the answer has it: decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpisodeSample {
    pub side: Side,
    pub host: String,
    pub at_ms: i64,
    pub sample: EndSample,
}

/// An episode with every sample stored with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpisodeDetail {
    pub episode: Episode,
    /// In the order the collector sent them.
    pub samples: Vec<EpisodeSample>,
    /// Samples sent that did not read as a sample of a side (left out of
    /// `samples`, counted here).
    pub unreadable: usize,
}

/// Which episodes a list returns, newest first, as the store reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpisodeFilter {
    /// Started at or after.
    pub since_ms: Option<i64>,
    /// A's host or B's host.
    pub host: Option<String>,
    pub diagnosis: Option<String>,
    pub open_only: bool,
    /// 0 = [`DEFAULT_LIST_LIMIT`]; capped at [`MAX_LIST_LIMIT`].
    pub limit: u32,
    /// Only episodes after this one in the list's order: (started_at_ms,
    /// id) of the last episode of the previous page.
    pub after: Option<(i64, i64)>,
}

impl EpisodeFilter {
    /// The row limit this filter really gets.
    pub fn effective_limit(&self) -> u32 {
        match self.limit {
            0 => DEFAULT_LIST_LIMIT,
            n => n.min(MAX_LIST_LIMIT),
        }
    }
}

/// How many episodes of one diagnosis started in one time bucket (the web
/// page's chart of episodes per diagnosis over time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpisodeCount {
    /// The bucket's start, ms since the epoch (a multiple of its width).
    pub bucket_ms: i64,
    pub diagnosis: String,
    pub count: u64,
}

/// Which episodes to list, as an operator asks: a window back from the
/// collector's now (its clock, not the asker's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpisodeQuery {
    /// Only episodes that started within this long; `None`: any.
    pub since: Option<Duration>,
    /// Only episodes with this host at either end.
    pub host: Option<String>,
    /// Only this [`Diagnosis`](crate::Diagnosis) id.
    pub diagnosis: Option<String>,
    pub open_only: bool,
    /// 0: the collector's default; at most [`MAX_LIST_LIMIT`].
    pub limit: u32,
    /// Where to go on: a previous page's
    /// [`next_page_token`](EpisodePage::next_page_token), asked with the
    /// same other fields.
    pub page_token: Option<String>,
}

/// Held spans of one host pair that ended one way in one minute, in one
/// duration bucket (the collector's `held` module), as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldRow {
    /// The minute (its first millisecond) they ended in; for a row read
    /// back over a window, the latest such minute.
    pub minute_ms: i64,
    pub a_host: String,
    /// "" when no agent covers the peer.
    pub b_host: String,
    pub end: HeldEnd,
    /// The bucket's upper bound, 0 for the last.
    pub le_ms: u64,
    pub count: u64,
    pub episodes: u64,
    pub total_ms: u64,
    pub max_ms: u64,
}

/// Held spans of one host pair that ended one way, in one duration bucket,
/// within a window: a [`HeldRow`] without its minute, as answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldSpanCount {
    /// The held sender's host.
    pub a_host: String,
    /// Its peer's; `None` when no agent covers the peer.
    pub b_host: Option<String>,
    /// How they ended; `None` for an end this build does not name (a newer
    /// collector's): counted, not named.
    pub end: Option<HeldEnd>,
    /// The bucket's upper bound, milliseconds; 0 for the last (no bound).
    pub le_ms: u64,
    pub count: u64,
    /// Of them, how many were held for the threshold (episodes).
    pub episodes: u64,
    pub total_ms: u64,
    pub max_ms: u64,
}

impl From<HeldRow> for HeldSpanCount {
    fn from(r: HeldRow) -> HeldSpanCount {
        HeldSpanCount {
            a_host: r.a_host,
            b_host: (!r.b_host.is_empty()).then_some(r.b_host),
            end: Some(r.end),
            le_ms: r.le_ms,
            count: r.count,
            episodes: r.episodes,
            total_ms: r.total_ms,
            max_ms: r.max_ms,
        }
    }
}

/// The held-span counts of a window, and the threshold they are measured
/// against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldSpans {
    /// Busiest pairs first.
    pub counts: Vec<HeldSpanCount>,
    /// The collector's episode threshold now.
    pub threshold: Duration,
}

/// Which held spans to count, as the store reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldFilter {
    /// Only minutes from this one on (Unix ms); `None`: all.
    pub since_ms: Option<i64>,
    /// Only pairs with this host at either end.
    pub host: Option<String>,
}

/// Which held spans to count, as an operator asks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldQuery {
    /// Only spans that ended within this long; `None`: all stored.
    pub since: Option<Duration>,
    /// Only pairs with this host at either end.
    pub host: Option<String>,
}

/// One end of a flow as its agent reports it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowEnd {
    pub host: String,
    pub sample: EndSample,
}

/// Both ends of a flow as the agents see it now; an end no agent reports
/// is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowEnds {
    /// The end whose local address is the flow's local.
    pub a: Option<FlowEnd>,
    pub b: Option<FlowEnd>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(open: bool) -> EpisodeRow {
        EpisodeRow {
            id: 3,
            diagnosis: "peer_not_reading".into(),
            summary: "B is not reading".into(),
            evidence: [("b_recvq".to_string(), 4096)].into(),
            basis: Default::default(),
            started_at_ms: 1_000_000,
            duration_ms: 12_000,
            stuck_bytes: 4096,
            a_host: "web-1".into(),
            a_netns: "host".into(),
            a_flow: FlowTuple::new(
                "198.18.0.1:80".parse().expect("addr"),
                "198.18.0.2:4000".parse().expect("addr"),
            ),
            a_cookie: 7,
            b_host: Some("db-7".into()),
            peer_note: None,
            via: None,
            open,
            ended_at_ms: (!open).then_some(1_020_000),
            end_reason: (!open).then(|| "moved".into()),
        }
    }

    #[test]
    fn an_open_episode_has_lasted_until_the_answer_an_ended_one_as_stored() {
        assert_eq!(row(true).answer(1_030_000).duration_ms, 30_000);
        assert_eq!(
            row(true).answer(1_005_000).duration_ms,
            12_000,
            "never shorter than stored"
        );
        assert_eq!(
            row(true).answer(0).duration_ms,
            12_000,
            "a clock behind the start"
        );
        let ended = row(false).answer(9_000_000);
        assert_eq!(ended.duration_ms, 12_000);
        assert_eq!(ended.ended_at_ms, Some(1_020_000));
        assert_eq!(ended.a_flow, row(false).a_flow);
        assert_eq!(ended.evidence, row(false).evidence);
    }

    #[test]
    fn a_held_row_answers_without_its_minute_and_an_empty_peer_is_none() {
        let r = HeldRow {
            minute_ms: 60_000,
            a_host: "web-1".into(),
            b_host: String::new(),
            end: HeldEnd::Reset,
            le_ms: 10_000,
            count: 3,
            episodes: 1,
            total_ms: 27_000,
            max_ms: 10_000,
        };
        let c = HeldSpanCount::from(r);
        assert_eq!(c.b_host, None);
        assert_eq!(c.end, Some(HeldEnd::Reset));
        assert_eq!((c.le_ms, c.count, c.episodes), (10_000, 3, 1));
        assert_eq!((c.total_ms, c.max_ms), (27_000, 10_000));
    }

    #[test]
    fn a_filter_limit_of_0_is_the_default_and_none_passes_the_cap() {
        let f = |limit| EpisodeFilter {
            limit,
            ..Default::default()
        };
        assert_eq!(f(0).effective_limit(), DEFAULT_LIST_LIMIT);
        assert_eq!(f(5).effective_limit(), 5);
        assert_eq!(f(u32::MAX).effective_limit(), MAX_LIST_LIMIT);
    }
}
