//! The query protocol's messages: what an operator asks (a list of
//! episodes, one episode, a flow's two ends, the held-span counts) and what
//! the collector answers, both ways. The collector's query service and the
//! operator's CLI convert here and nowhere else; the domain forms are
//! `tcpstall_common::record`'s.
//!
//! The collector side reads requests into the store's filters
//! (`*_filter_from_wire`, given the collector's now) and writes answers
//! (`*_to_wire`); the CLI side writes requests (`*_query_to_wire`,
//! `*_request_to_wire`) and reads answers (`*_from_wire`), checking them as
//! an agent's messages are checked.
//!
//! GetEpisode's samples go out as the store keeps them: the bytes of the
//! `v1::Sample` an agent sent, in a [`raw::EndSample`], decoded by no one
//! on the way. They carry what the collector's checks normalise away on
//! reading (the agent's `reason`; a fact source beside no value; an owner
//! reason beside an owner), so a reader normalises them the way the
//! collector does: [`episode_sample_from_wire`] through
//! [`sample_from_wire`](super::sample_from_wire).

use std::time::Duration;

use tcpstall_common::record::{
    Episode, EpisodeDetail, EpisodeFilter, EpisodePage, EpisodeQuery, EpisodeSample, FlowEnd,
    FlowEnds, HeldFilter, HeldQuery, HeldSpanCount, HeldSpans, JoinedVia, StoredSample,
    VerdictBasis, MAX_LIST_LIMIT,
};
use tcpstall_common::time::millis_i64;
use tcpstall_common::{FlowTuple, HeldEnd, Side};

use super::{
    flow_from_wire, flow_to_wire, sample_from_wire, sample_to_wire, translation_from_wire,
    translation_to_wire, ConvertError,
};
use crate::{raw, v1};

/// The longest window a request may name; a longer one is this one.
const MAX_WINDOW: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A window back from now in whole seconds, as requests carry it: 0 for
/// none, and at least 1 for any (a window under a second is not "any").
fn window_to_wire(since: Option<Duration>) -> u64 {
    since.map_or(0, |d| d.as_secs().max(1))
}

/// The start (Unix ms) of a window of the last `since_s` seconds before
/// `now_ms`; `None` for 0 (no window).
fn window_from_wire(since_s: u64, now_ms: i64) -> Option<i64> {
    (since_s > 0).then(|| {
        let since = Duration::from_secs(since_s).min(MAX_WINDOW);
        now_ms.saturating_sub(millis_i64(since))
    })
}

/// `""` on the wire is `None`.
fn some(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// The page token after an episode: its place in the list's order (newest
/// first by start, then by id).
fn page_token(started_at_ms: i64, id: i64) -> String {
    format!("{started_at_ms}.{id}")
}

/// The place a [`page_token`] names; `None` for anything else.
fn parse_page_token(token: &str) -> Option<(i64, i64)> {
    let (started, id) = token.split_once('.')?;
    Some((started.parse().ok()?, id.parse().ok()?))
}

/// A list of episodes asked for.
pub fn episode_query_to_wire(q: &EpisodeQuery) -> v1::ListEpisodesRequest {
    v1::ListEpisodesRequest {
        since_s: window_to_wire(q.since),
        host: q.host.clone().unwrap_or_default(),
        diagnosis: q.diagnosis.clone().unwrap_or_default(),
        open_only: q.open_only,
        limit: q.limit,
        page_token: q.page_token.clone().unwrap_or_default(),
    }
}

/// A list request as the store's filter, its window ending at `now_ms`
/// (the collector's clock). A limit above [`MAX_LIST_LIMIT`] and a page
/// token this collector did not give are refused.
pub fn episode_filter_from_wire(
    r: v1::ListEpisodesRequest,
    now_ms: i64,
) -> Result<EpisodeFilter, ConvertError> {
    if r.limit > MAX_LIST_LIMIT {
        return Err(ConvertError::Invalid(format!(
            "limit {} above {MAX_LIST_LIMIT}",
            r.limit
        )));
    }
    let after = match r.page_token.as_str() {
        "" => None,
        token => Some(parse_page_token(token).ok_or_else(|| {
            ConvertError::Invalid(format!(
                "page_token `{token}` is not one this collector gave"
            ))
        })?),
    };
    Ok(EpisodeFilter {
        since_ms: window_from_wire(r.since_s, now_ms),
        host: some(r.host),
        diagnosis: some(r.diagnosis),
        open_only: r.open_only,
        limit: r.limit,
        after,
    })
}

/// One episode asked for, by id.
pub fn episode_request_to_wire(id: i64) -> v1::GetEpisodeRequest {
    v1::GetEpisodeRequest { id }
}

/// The id of the episode asked for.
pub fn episode_request_from_wire(r: &v1::GetEpisodeRequest) -> i64 {
    r.id
}

/// A flow's two ends asked for.
pub fn flow_request_to_wire(flow: FlowTuple) -> v1::GetFlowRequest {
    v1::GetFlowRequest {
        flow: Some(flow_to_wire(flow)),
    }
}

/// The flow asked for.
pub fn flow_request_from_wire(r: &v1::GetFlowRequest) -> Result<FlowTuple, ConvertError> {
    flow_from_wire(r.flow.as_ref())
}

/// Held-span counts asked for.
pub fn held_query_to_wire(q: &HeldQuery) -> v1::ListHeldSpansRequest {
    v1::ListHeldSpansRequest {
        since_s: window_to_wire(q.since),
        host: q.host.clone().unwrap_or_default(),
    }
}

/// A held-span request as the store's filter, its window ending at
/// `now_ms`. The counts are kept by minute, so the window starts at the
/// start of its first minute: a span counted in a minute that began before
/// the window but ended within it is in.
pub fn held_filter_from_wire(r: v1::ListHeldSpansRequest, now_ms: i64) -> HeldFilter {
    HeldFilter {
        since_ms: window_from_wire(r.since_s, now_ms).map(|ms| ms.div_euclid(60_000) * 60_000),
        host: some(r.host),
    }
}

/// An episode on the wire.
pub fn episode_to_wire(e: Episode) -> v1::Episode {
    v1::Episode {
        id: e.id,
        diagnosis: e.diagnosis,
        open: e.open,
        started_at_ms: e.started_at_ms,
        ended_at_ms: e.ended_at_ms.unwrap_or(0),
        duration_ms: e.duration_ms,
        stuck_bytes: e.stuck_bytes,
        a_host: e.a_host,
        a_flow: Some(flow_to_wire(e.a_flow)),
        b_host: e.b_host.unwrap_or_default(),
        peer_note: e.peer_note.unwrap_or_default(),
        summary: e.summary,
        evidence: e.evidence.into_iter().collect(),
        end_reason: e.end_reason.unwrap_or_default(),
        via: e.via.map(via_to_wire),
        rested_on: e.basis.rested_on,
        missing: e.basis.missing,
    }
}

/// The translation that joined an episode's ends, on the wire.
fn via_to_wire(v: JoinedVia) -> v1::JoinedVia {
    v1::JoinedVia {
        host: v.host,
        translation: Some(translation_to_wire(v.translation)),
    }
}

/// The translation that joined an episode's ends, from the wire: a host
/// named, and a whole translation (both tuples, of one family).
fn via_from_wire(v: &v1::JoinedVia) -> Result<JoinedVia, ConvertError> {
    if v.host.is_empty() {
        return Err(ConvertError::Invalid("via: no host".into()));
    }
    let t = v
        .translation
        .as_ref()
        .ok_or(ConvertError::Missing("via.translation"))?;
    Ok(JoinedVia {
        host: v.host.clone(),
        translation: translation_from_wire(t).map_err(|err| in_field("via", err))?,
    })
}

/// An episode from the wire: its flow must be one, and the translation
/// that joined it whole when there is one. An end time of 0 is none (the
/// wire's default), as is an empty peer host, note or reason.
pub fn episode_from_wire(e: v1::Episode) -> Result<Episode, ConvertError> {
    Ok(Episode {
        a_flow: flow_from_wire(e.a_flow.as_ref()).map_err(|err| in_field("episode", err))?,
        via: e
            .via
            .as_ref()
            .map(via_from_wire)
            .transpose()
            .map_err(|err| in_field("episode", err))?,
        id: e.id,
        diagnosis: e.diagnosis,
        summary: e.summary,
        evidence: e.evidence.into_iter().collect(),
        basis: VerdictBasis {
            rested_on: e.rested_on,
            missing: e.missing,
        },
        started_at_ms: e.started_at_ms,
        ended_at_ms: (e.ended_at_ms != 0).then_some(e.ended_at_ms),
        duration_ms: e.duration_ms,
        stuck_bytes: e.stuck_bytes,
        a_host: e.a_host,
        b_host: some(e.b_host),
        peer_note: some(e.peer_note),
        open: e.open,
        end_reason: some(e.end_reason),
    })
}

/// `err` in a message's part `what`.
fn in_field(what: &str, err: ConvertError) -> ConvertError {
    ConvertError::Invalid(format!("{what}: {err}"))
}

/// A page of a list on the wire. `limit` is the most the page could hold
/// ([`EpisodeFilter::effective_limit`]): a full page may have more behind
/// it and gives the token of its last episode; a short one is the last.
pub fn episode_page_to_wire(episodes: Vec<Episode>, limit: u32) -> v1::ListEpisodesResponse {
    let full = episodes.len() >= usize::try_from(limit).unwrap_or(usize::MAX);
    let next_page_token = match episodes.last() {
        Some(last) if full => page_token(last.started_at_ms, last.id),
        _ => String::new(),
    };
    v1::ListEpisodesResponse {
        episodes: episodes.into_iter().map(episode_to_wire).collect(),
        next_page_token,
    }
}

/// A page of a list from the wire; one episode that does not convert
/// refuses the page.
pub fn episode_page_from_wire(r: v1::ListEpisodesResponse) -> Result<EpisodePage, ConvertError> {
    Ok(EpisodePage {
        episodes: r
            .episodes
            .into_iter()
            .map(episode_from_wire)
            .collect::<Result<_, _>>()?,
        next_page_token: some(r.next_page_token),
    })
}

/// A stored sample on the wire: its stored bytes as they are.
pub fn stored_sample_to_wire(s: StoredSample) -> raw::EndSample {
    raw::EndSample {
        side: s.side.as_str().into(),
        host: s.host,
        at_ms: s.at_ms,
        sample: Some(s.sample.into_bytes().into()),
    }
}

/// A stored sample from the wire, decoded and checked as the collector
/// checks an agent's (which normalises what the stored bytes may carry
/// beside the facts: see the module's doc).
pub fn episode_sample_from_wire(s: v1::EndSample) -> Result<EpisodeSample, ConvertError> {
    let side = Side::parse(&s.side)
        .ok_or_else(|| ConvertError::Invalid(format!("side `{}` is neither a nor b", s.side)))?;
    let sample = sample_from_wire(s.sample.as_ref().ok_or(ConvertError::Missing("sample"))?)?;
    Ok(EpisodeSample {
        side,
        host: s.host,
        at_ms: s.at_ms,
        sample,
    })
}

/// An episode with its stored samples on the wire, the samples as stored.
pub fn episode_detail_to_wire(e: Episode, samples: Vec<StoredSample>) -> raw::GetEpisodeResponse {
    raw::GetEpisodeResponse {
        episode: Some(episode_to_wire(e)),
        samples: samples.into_iter().map(stored_sample_to_wire).collect(),
    }
}

/// An episode with its samples from the wire. The episode must be there
/// and convert; a sample that does not is left out and counted
/// ([`EpisodeDetail::unreadable`]), so that one bad sample does not hide
/// the rest of the history.
pub fn episode_detail_from_wire(r: v1::GetEpisodeResponse) -> Result<EpisodeDetail, ConvertError> {
    let episode = episode_from_wire(r.episode.ok_or(ConvertError::Missing("episode"))?)?;
    let sent = r.samples.len();
    let samples: Vec<EpisodeSample> = r
        .samples
        .into_iter()
        .filter_map(|s| episode_sample_from_wire(s).ok())
        .collect();
    Ok(EpisodeDetail {
        episode,
        unreadable: sent - samples.len(),
        samples,
    })
}

/// A flow's two ends on the wire, each sample as a watched one.
pub fn flow_ends_to_wire(f: FlowEnds) -> v1::GetFlowResponse {
    let side = |e: Option<FlowEnd>| match e {
        Some(e) => (
            e.host,
            Some(sample_to_wire(&e.sample, v1::SampleReason::Watched)),
        ),
        None => (String::new(), None),
    };
    let (a_host, a) = side(f.a);
    let (b_host, b) = side(f.b);
    v1::GetFlowResponse {
        a_host,
        a,
        b_host,
        b,
    }
}

/// A flow's two ends from the wire: an end is there when its sample is,
/// and its sample must convert.
pub fn flow_ends_from_wire(r: v1::GetFlowResponse) -> Result<FlowEnds, ConvertError> {
    let side = |what: &str, host: String, s: Option<v1::Sample>| {
        s.map(|s| {
            Ok(FlowEnd {
                host,
                sample: sample_from_wire(&s).map_err(|err| in_field(what, err))?,
            })
        })
        .transpose()
    };
    Ok(FlowEnds {
        a: side("a", r.a_host, r.a)?,
        b: side("b", r.b_host, r.b)?,
    })
}

/// Held-span counts on the wire.
pub fn held_spans_to_wire(h: HeldSpans) -> v1::ListHeldSpansResponse {
    v1::ListHeldSpansResponse {
        counts: h
            .counts
            .into_iter()
            .map(|c| v1::HeldSpanCount {
                a_host: c.a_host,
                b_host: c.b_host.unwrap_or_default(),
                end: c.end.map(HeldEnd::id).unwrap_or_default().into(),
                le_ms: c.le_ms,
                count: c.count,
                episodes: c.episodes,
                total_ms: c.total_ms,
                max_ms: c.max_ms,
            })
            .collect(),
        threshold_ms: u64::try_from(h.threshold.as_millis()).unwrap_or(u64::MAX),
    }
}

/// Held-span counts from the wire. An end this build does not name is
/// kept as `None`, its spans still counted.
pub fn held_spans_from_wire(r: v1::ListHeldSpansResponse) -> HeldSpans {
    HeldSpans {
        counts: r
            .counts
            .into_iter()
            .map(|c| HeldSpanCount {
                end: HeldEnd::from_id(&c.end),
                a_host: c.a_host,
                b_host: some(c.b_host),
                le_ms: c.le_ms,
                count: c.count,
                episodes: c.episodes,
                total_ms: c.total_ms,
                max_ms: c.max_ms,
            })
            .collect(),
        threshold: Duration::from_millis(r.threshold_ms),
    }
}

#[cfg(test)]
mod tests;
