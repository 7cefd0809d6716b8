//! The operators' side of the gRPC edge: episodes from the store, and a
//! flow's two ends from the matcher.
//!
//! What crosses the wire is converted in `tcpstall_proto::convert` (its
//! `query` part); this service maps its errors to gRPC statuses and asks
//! the store and the matcher. GetEpisode answers with the stored
//! samples' bytes as they are (a `raw::GetEpisodeResponse`), decoding
//! none: they are the agents' encodings, so a client reads in them the
//! agent's `reason` and whatever the collector's checks normalise away (a
//! fact source beside no value), and normalises them as the collector
//! does through `convert::sample_from_wire`, as the CLI does.

use tcpstall_common::record::{FlowEnd, FlowEnds, HeldSpanCount, HeldSpans};
use tcpstall_common::Clock;
use tcpstall_proto::convert::{self, ConvertError};
use tcpstall_proto::{raw, v1};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

use crate::matcher::{FlowView, Question};
use crate::store::{HeldRow, SharedStore};

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

/// The gRPC status of a request `convert` refused.
fn invalid(e: ConvertError) -> Status {
    Status::invalid_argument(e.to_string())
}

#[tonic::async_trait]
impl tcpstall_proto::server::query_server::Query for QueryService {
    async fn list_episodes(
        &self,
        request: Request<v1::ListEpisodesRequest>,
    ) -> Result<Response<v1::ListEpisodesResponse>, Status> {
        let filter = convert::episode_filter_from_wire(request.into_inner(), self.clock.now_ms())
            .map_err(invalid)?;
        let limit = filter.effective_limit();
        let rows = self.store.list_episodes(filter).await.map_err(internal)?;
        let now_ms = self.clock.now_ms();
        let episodes = rows.into_iter().map(|e| e.answer(now_ms)).collect();
        Ok(Response::new(convert::episode_page_to_wire(
            episodes, limit,
        )))
    }

    async fn get_episode(
        &self,
        request: Request<v1::GetEpisodeRequest>,
    ) -> Result<Response<raw::GetEpisodeResponse>, Status> {
        let id = convert::episode_request_from_wire(request.get_ref());
        let (row, samples) = self
            .store
            .get_episode(id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no episode {id}")))?;
        Ok(Response::new(convert::episode_detail_to_wire(
            row.answer(self.clock.now_ms()),
            samples,
        )))
    }

    async fn list_held_spans(
        &self,
        request: Request<v1::ListHeldSpansRequest>,
    ) -> Result<Response<v1::ListHeldSpansResponse>, Status> {
        let filter = convert::held_filter_from_wire(request.into_inner(), self.clock.now_ms());
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
        Ok(Response::new(convert::held_spans_to_wire(HeldSpans {
            counts: merge_held(stored, pending)
                .into_iter()
                .map(HeldSpanCount::from)
                .collect(),
            threshold: stats.threshold,
        })))
    }

    async fn get_flow(
        &self,
        request: Request<v1::GetFlowRequest>,
    ) -> Result<Response<v1::GetFlowResponse>, Status> {
        let flow = convert::flow_request_from_wire(request.get_ref()).map_err(invalid)?;
        let (reply, view) = oneshot::channel();
        self.matcher
            .send(Question::Flow { flow, reply })
            .await
            .map_err(|_| Status::unavailable("collector is shutting down"))?;
        let FlowView { a, b } = view
            .await
            .map_err(|_| Status::unavailable("collector is shutting down"))?;
        let end = |x: Option<(String, tcpstall_common::EndSample)>| {
            x.map(|(host, sample)| FlowEnd { host, sample })
        };
        Ok(Response::new(convert::flow_ends_to_wire(FlowEnds {
            a: end(a),
            b: end(b),
        })))
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

    /// Reads the token from a file ([`read_token`]).
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<TokenCheck> {
        Ok(TokenCheck::new(Some(read_token(path)?)))
    }
}

/// The query token in a file: its first line, trimmed; an empty one is
/// refused (it would let every query in by mistake).
pub fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the query token {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim();
    anyhow::ensure!(
        !token.is_empty(),
        "the query token file {} is empty",
        path.display()
    );
    Ok(token.to_string())
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
}

#[cfg(test)]
mod sample_tests {
    use super::*;
    use prost::Message;
    use tcpstall_common::{EndSample, Packed, Side};
    use tcpstall_proto::server::query_server::Query;

    use crate::store::{NewEpisode, SqliteStore, StoreConfig, StoredSample};

    /// A sample without TCP_CORK known: a cork source beside it is what
    /// the wire checks drop.
    fn sample() -> EndSample {
        let mut s = crate::test_support::a_end(7, 5000, 3000);
        s.cork = None;
        s.cork_source = None;
        s
    }

    fn episode(id: i64, s: &EndSample) -> NewEpisode {
        NewEpisode {
            id,
            diagnosis: "peer_not_reading".into(),
            summary: "beta stopped reading".into(),
            evidence: Default::default(),
            basis: Default::default(),
            started_at_ms: 1_000,
            duration_ms: 10_000,
            stuck_bytes: s.pos.sendq,
            a_host: "alpha".into(),
            a_netns: s.netns.clone(),
            a_flow: s.flow,
            a_cookie: s.cookie,
            b_host: None,
            peer_note: None,
            via: None,
        }
    }

    /// The store keeps the agent's bytes, reason and all; GetEpisode sends
    /// those very bytes, decoding none. A client reads in them what the
    /// agent wrote (its reason, a source beside no value) and, converting
    /// them, the sample it read when GetEpisode decoded each stored sample
    /// and encoded it again.
    #[tokio::test]
    async fn get_episode_sends_the_stored_agent_bytes() -> Result<(), Box<dyn std::error::Error>> {
        let s = sample();
        let mut w = convert::sample_to_wire(&s, v1::SampleReason::Suspect);
        // What sample_from_wire drops: a source beside no value.
        w.cork_source = v1::FactSource::Bpf as i32;
        let agents = w.encode_to_vec();

        let dir = tempfile::TempDir::new()?;
        let (store, thread, id) = SqliteStore::open(StoreConfig::new(dir.path().join("t.db")))?;
        let store: crate::store::SharedStore = std::sync::Arc::new(store);
        assert!(store.open_episode(episode(id, &s)));
        assert!(store.add_samples(
            id,
            vec![StoredSample {
                side: Side::A,
                host: "alpha".into(),
                at_ms: 5_000,
                sample: Packed::from_bytes(agents.clone()),
            }]
        ));
        let (matcher, _unused) = mpsc::channel(1);
        let service = QueryService::new(store.clone(), matcher, Clock::from_fn(|| 20_000));
        let answer = service
            .get_episode(Request::new(v1::GetEpisodeRequest { id }))
            .await?
            .into_inner();
        assert_eq!(answer.samples.len(), 1);
        assert_eq!(
            answer.samples[0].sample.as_deref(),
            Some(&agents[..]),
            "the stored bytes, as they are"
        );

        // What a client (the CLI, through tonic's v1 client) reads.
        let read = v1::GetEpisodeResponse::decode(&*answer.encode_to_vec())?;
        let got = read.samples[0].sample.clone().ok_or("a sample")?;
        assert_eq!(got, w, "the agent's encoding, reason and all");
        // What GetEpisode sent when it decoded and encoded again.
        let before = convert::sample_to_wire(&s, v1::SampleReason::Unspecified);
        assert_eq!(convert::sample_from_wire(&got), Ok(s.clone()));
        assert_eq!(convert::sample_from_wire(&before), Ok(s.clone()));
        let detail = convert::episode_detail_from_wire(read)?;
        assert_eq!(detail.samples[0].sample, s);
        assert_eq!(
            detail.episode.duration_ms, 19_000,
            "open, until the service's now"
        );

        store.shutdown().await;
        thread.join().map_err(|_| "the store thread panicked")?;
        Ok(())
    }
}
