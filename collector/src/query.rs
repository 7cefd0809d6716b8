//! The operators' side of the gRPC edge: episodes from the store, and a
//! flow's two ends from the matcher.

use std::time::Duration;

use tcpstall_common::time::millis_i64;
use tcpstall_common::Clock;
use tcpstall_proto::convert;
use tcpstall_proto::v1;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

use crate::matcher::{FlowView, Question};
use crate::store::{EpisodeFilter, EpisodeRow, HeldFilter, HeldRow, SharedStore, StoredSample};

/// Most episodes one list returns.
pub const MAX_LIST: u32 = 10_000;

#[derive(Debug, Clone)]
pub struct QueryService {
    store: SharedStore,
    matcher: mpsc::Sender<Question>,
    clock: Clock,
}

impl QueryService {
    pub fn new(store: SharedStore, matcher: mpsc::Sender<Question>, clock: Clock) -> QueryService {
        QueryService {
            store,
            matcher,
            clock,
        }
    }

    /// The start of a window of the last `since_s` seconds (0: no window).
    fn since_ms(&self, since_s: u64) -> Option<i64> {
        (since_s > 0).then(|| {
            let since = Duration::from_secs(since_s.min(100 * 365 * 24 * 3600));
            self.clock.now_ms().saturating_sub(millis_i64(since))
        })
    }
}

/// A stored episode on the wire, as of `now_ms` (an open one has lasted
/// until then).
pub fn episode_to_wire(e: &EpisodeRow, now_ms: i64) -> v1::Episode {
    let duration_ms = if e.open {
        u64::try_from(now_ms - e.started_at_ms)
            .unwrap_or(0)
            .max(e.duration_ms)
    } else {
        e.duration_ms
    };
    let summary = e.summary.clone();
    v1::Episode {
        id: e.id,
        diagnosis: e.diagnosis.clone(),
        open: e.open,
        started_at_ms: e.started_at_ms,
        ended_at_ms: e.ended_at_ms.unwrap_or(0),
        duration_ms,
        stuck_bytes: e.stuck_bytes,
        a_host: e.a_host.clone(),
        a_flow: Some(convert::flow_to_wire(e.a_flow)),
        b_host: e.b_host.clone().unwrap_or_default(),
        peer_note: e.peer_note.clone().unwrap_or_default(),
        summary,
        evidence: e.evidence.clone().into_iter().collect(),
        end_reason: e.end_reason.clone().unwrap_or_default(),
    }
}

/// A stored sample on the wire. The stored bytes are not sent as they
/// are: they are the agent's encoding, with its `reason` and whatever it
/// set that the collector's checks normalise away (a source beside no
/// value, an unknown enum value). Going through the `EndSample` sends
/// exactly what was diagnosed, as before the store kept the bytes.
/// `None`: the bytes do not decode (the store checked them when it read
/// them, so a bug).
fn sample_to_wire(s: &StoredSample) -> Option<v1::EndSample> {
    let sample = tcpstall_proto::convert::unpack(&s.sample)?;
    Some(v1::EndSample {
        side: s.side.as_str().into(),
        host: s.host.clone(),
        at_ms: s.at_ms,
        sample: Some(convert::sample_to_wire(
            &sample,
            v1::SampleReason::Unspecified,
        )),
    })
}

/// The page token after an episode: its place in the list's order
/// (newest first by start, then by id).
pub fn page_token(started_at_ms: i64, id: i64) -> String {
    format!("{started_at_ms}.{id}")
}

/// The place a [`page_token`] names; `None` for anything else.
pub fn parse_page_token(token: &str) -> Option<(i64, i64)> {
    let (started, id) = token.split_once('.')?;
    Some((started.parse().ok()?, id.parse().ok()?))
}

/// Held-span counts of the store and of the minute in progress, summed
/// per pair, end and bucket, in the store's order (busiest pairs first)
/// with pairs only in progress after them.
pub fn merge_held(stored: Vec<HeldRow>, pending: Vec<HeldRow>) -> Vec<HeldRow> {
    let mut out = stored;
    let mut at: std::collections::HashMap<(String, String, tcpstall_common::HeldEnd, u64), usize> =
        out.iter()
            .enumerate()
            .map(|(i, r)| ((r.a_host.clone(), r.b_host.clone(), r.end, r.le_ms), i))
            .collect();
    for p in pending {
        let key = (p.a_host.clone(), p.b_host.clone(), p.end, p.le_ms);
        match at.get(&key).and_then(|i| out.get_mut(*i)) {
            Some(r) => {
                r.minute_ms = r.minute_ms.max(p.minute_ms);
                r.count += p.count;
                r.episodes += p.episodes;
                r.total_ms = r.total_ms.saturating_add(p.total_ms);
                r.max_ms = r.max_ms.max(p.max_ms);
            }
            None => {
                at.insert(key, out.len());
                out.push(p);
            }
        }
    }
    out
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

#[tonic::async_trait]
impl v1::query_server::Query for QueryService {
    async fn list_episodes(
        &self,
        request: Request<v1::ListEpisodesRequest>,
    ) -> Result<Response<v1::ListEpisodesResponse>, Status> {
        let r = request.into_inner();
        if r.limit > MAX_LIST {
            return Err(Status::invalid_argument(format!(
                "limit {} above {MAX_LIST}",
                r.limit
            )));
        }
        let since_ms = self.since_ms(r.since_s);
        let after = match r.page_token.as_str() {
            "" => None,
            token => Some(parse_page_token(token).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "page_token `{token}` is not one this collector gave"
                ))
            })?),
        };
        let filter = EpisodeFilter {
            since_ms,
            host: (!r.host.is_empty()).then_some(r.host),
            diagnosis: (!r.diagnosis.is_empty()).then_some(r.diagnosis),
            open_only: r.open_only,
            limit: r.limit,
            after,
        };
        let full = filter.effective_limit();
        let rows = self.store.list_episodes(filter).await.map_err(internal)?;
        let now_ms = self.clock.now_ms();
        // A full page may have more behind it; a short one is the last.
        let next_page_token = match rows.last() {
            Some(last) if rows.len() >= usize::try_from(full).unwrap_or(usize::MAX) => {
                page_token(last.started_at_ms, last.id)
            }
            _ => String::new(),
        };
        Ok(Response::new(v1::ListEpisodesResponse {
            episodes: rows.iter().map(|e| episode_to_wire(e, now_ms)).collect(),
            next_page_token,
        }))
    }

    async fn get_episode(
        &self,
        request: Request<v1::GetEpisodeRequest>,
    ) -> Result<Response<v1::GetEpisodeResponse>, Status> {
        let id = request.into_inner().id;
        let (row, samples) = self
            .store
            .get_episode(id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no episode {id}")))?;
        let samples = samples
            .iter()
            .map(sample_to_wire)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Status::internal(format!("episode {id}: a sample does not decode")))?;
        Ok(Response::new(v1::GetEpisodeResponse {
            episode: Some(episode_to_wire(&row, self.clock.now_ms())),
            samples,
        }))
    }

    async fn list_held_spans(
        &self,
        request: Request<v1::ListHeldSpansRequest>,
    ) -> Result<Response<v1::ListHeldSpansResponse>, Status> {
        let r = request.into_inner();
        let since_ms = self.since_ms(r.since_s);
        // Whole minutes: a span counted in a minute that began before the
        // window but ended within it is in.
        let filter = HeldFilter {
            since_ms: since_ms.map(|ms| ms.div_euclid(60_000) * 60_000),
            host: (!r.host.is_empty()).then_some(r.host),
        };
        // The minute in progress from the matcher, the others from the
        // store: asked in this order, a minute the matcher hands over
        // meanwhile is in the store's answer, never in both.
        let (reply, pending) = oneshot::channel();
        let gone = || Status::unavailable("collector is shutting down");
        self.matcher
            .send(Question::HeldPending {
                filter: filter.clone(),
                reply,
            })
            .await
            .map_err(|_| gone())?;
        let pending = pending.await.map_err(|_| gone())?;
        let (reply, stats) = oneshot::channel();
        self.matcher
            .send(Question::Stats { reply })
            .await
            .map_err(|_| gone())?;
        let stats = stats.await.map_err(|_| gone())?;
        let stored = self.store.list_held(filter).await.map_err(internal)?;
        Ok(Response::new(v1::ListHeldSpansResponse {
            counts: merge_held(stored, pending)
                .into_iter()
                .map(|h| v1::HeldSpanCount {
                    a_host: h.a_host,
                    b_host: h.b_host,
                    end: h.end.id().to_string(),
                    le_ms: h.le_ms,
                    count: h.count,
                    episodes: h.episodes,
                    total_ms: h.total_ms,
                    max_ms: h.max_ms,
                })
                .collect(),
            threshold_ms: u64::try_from(stats.threshold.as_millis()).unwrap_or(u64::MAX),
        }))
    }

    async fn get_flow(
        &self,
        request: Request<v1::GetFlowRequest>,
    ) -> Result<Response<v1::GetFlowResponse>, Status> {
        let flow = convert::flow_from_wire(request.into_inner().flow.as_ref())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (reply, view) = oneshot::channel();
        self.matcher
            .send(Question::Flow { flow, reply })
            .await
            .map_err(|_| Status::unavailable("collector is shutting down"))?;
        let FlowView { a, b } = view
            .await
            .map_err(|_| Status::unavailable("collector is shutting down"))?;
        let side = |x: Option<(String, tcpstall_common::EndSample)>| match x {
            Some((host, s)) => (
                host,
                Some(convert::sample_to_wire(&s, v1::SampleReason::Watched)),
            ),
            None => (String::new(), None),
        };
        let (a_host, a) = side(a);
        let (b_host, b) = side(b);
        Ok(Response::new(v1::GetFlowResponse {
            a_host,
            a,
            b_host,
            b,
        }))
    }
}

/// The query service's guard: with a token configured, every request must
/// carry `authorization: Bearer TOKEN`.
#[derive(Clone)]
pub struct TokenCheck {
    expected: Option<std::sync::Arc<str>>,
}

impl std::fmt::Debug for TokenCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("TokenCheck")
            .field("required", &self.expected.is_some())
            .finish()
    }
}

impl TokenCheck {
    pub fn new(token: Option<String>) -> TokenCheck {
        TokenCheck {
            expected: token.map(|t| std::sync::Arc::from(format!("Bearer {t}"))),
        }
    }

    /// Reads the token from a file: its first line, trimmed; an empty one
    /// is refused (it would let every query in by mistake).
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<TokenCheck> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the query token {}", path.display()))?;
        let token = text.lines().next().unwrap_or("").trim();
        anyhow::ensure!(
            !token.is_empty(),
            "the query token file {} is empty",
            path.display()
        );
        Ok(TokenCheck::new(Some(token.to_string())))
    }
}

/// Equal in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(expected) = &self.expected else {
            return Ok(req);
        };
        let given = req
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if same(given, expected.as_bytes()) {
            Ok(req)
        } else {
            Err(tonic::Status::unauthenticated(
                "this collector's queries need a token (authorization: Bearer TOKEN)",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use tcpstall_common::HeldEnd;

    use super::*;

    fn row(a: &str, end: HeldEnd, le_ms: u64, count: u64, minute_ms: i64) -> HeldRow {
        HeldRow {
            minute_ms,
            a_host: a.into(),
            b_host: "db".into(),
            end,
            le_ms,
            count,
            episodes: 0,
            total_ms: count * 1000,
            max_ms: 1000 + count,
        }
    }

    #[test]
    fn the_minute_in_progress_adds_to_the_stored_ones() {
        let stored = vec![
            row("web-1", HeldEnd::Reset, 10_000, 5, 60_000),
            row("web-2", HeldEnd::Moved, 3_000, 1, 60_000),
        ];
        let pending = vec![
            row("web-1", HeldEnd::Reset, 10_000, 2, 120_000),
            row("web-3", HeldEnd::Closed, 12_000, 1, 120_000),
        ];
        let merged = merge_held(stored, pending);
        assert_eq!(merged.len(), 3);
        let w1 = &merged[0];
        assert_eq!(
            (w1.count, w1.total_ms, w1.max_ms, w1.minute_ms),
            (7, 7000, 1005, 120_000)
        );
        assert_eq!(merged[1].a_host, "web-2", "the store's order kept");
        assert_eq!(merged[2].a_host, "web-3", "then what only the minute has");
    }

    #[test]
    fn page_tokens_round_trip_and_strangers_are_refused() {
        let t = page_token(1_732_000_000_123, 42);
        assert_eq!(parse_page_token(&t), Some((1_732_000_000_123, 42)));
        assert_eq!(
            parse_page_token(&page_token(-1, i64::MAX)),
            Some((-1, i64::MAX))
        );
        for bad in ["", "12", "a.b", "1.2.3", "1.", ".2"] {
            assert_eq!(parse_page_token(bad), None, "{bad:?}");
        }
    }
}

#[cfg(test)]
mod sample_tests {
    use super::*;
    use prost::Message;
    use tcpstall_common::Packed;
    use tcpstall_common::{EndSample, Side};

    /// A sample without TCP_CORK known: a cork source beside it is what
    /// the wire checks drop.
    fn sample() -> EndSample {
        let mut s = crate::test_support::a_end(7, 5000, 3000);
        s.cork = None;
        s.cork_source = None;
        s
    }

    /// The store keeps the agent's bytes, reason and all; GetEpisode sends
    /// what it sent when the store kept the decoded sample.
    #[test]
    fn stored_agent_bytes_go_out_as_the_decoded_sample_did() {
        let s = sample();
        let mut w = convert::sample_to_wire(&s, v1::SampleReason::Suspect);
        // What sample_from_wire drops: a source beside no value.
        w.cork_source = v1::FactSource::Bpf as i32;
        assert_eq!(convert::sample_from_wire(&w).ok(), Some(s.clone()));
        let stored = StoredSample {
            side: Side::A,
            host: "alpha".into(),
            at_ms: 5,
            sample: Packed::from_bytes(w.encode_to_vec()),
        };
        let before = convert::sample_to_wire(&s, v1::SampleReason::Unspecified);
        let sent = sample_to_wire(&stored).and_then(|e| e.sample);
        assert_eq!(sent, Some(before));
    }
}
