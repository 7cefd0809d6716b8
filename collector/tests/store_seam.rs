//! The store is a role behind a trait: the query service runs here against
//! a small in-memory `Store` that records what it is asked, with no SQLite
//! under it. What this pins is the seam itself: the service reaches the
//! store only through `SharedStore`, passes the operator's filter on as
//! the store's, answers from what the store gives back, and turns a store
//! that has stopped into an error, not a panic. The SQLite implementation
//! is tested against real files in `store.rs`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tcpstall_collector::matcher::Question;
use tcpstall_collector::query::QueryService;
use tcpstall_collector::store::{
    BoxFuture, EpisodeCount, EpisodeEnd, EpisodeFilter, EpisodeRow, EpisodeUpdate, HeldFilter,
    HeldRow, HostRecord, HostRow, NewEpisode, SharedStore, Store, StoreError, StoreStatsSnapshot,
    StoredEpisode, StoredSample,
};
use tcpstall_common::record::JoinedVia;
use tcpstall_common::{Clock, FlowTuple, Side, Translation};
use tcpstall_proto::convert::{episode_from_wire, pack, sample_from_wire, unpack};
use tcpstall_proto::server::query_server::Query;
use tcpstall_proto::v1::{self, GetEpisodeRequest, ListEpisodesRequest};
use tokio::sync::mpsc;
use tonic::{Code, Request};

mod support;
use support::{a_end, b_end};

const NOW: i64 = 1_800_000_000_000;

/// A store in memory: episodes given up front, every write and every
/// filter it is asked with recorded.
#[derive(Debug, Default)]
struct Memory {
    episodes: Vec<(EpisodeRow, Vec<StoredSample>)>,
    writes: Mutex<Vec<&'static str>>,
    asked: Mutex<Vec<EpisodeFilter>>,
    stopped: AtomicBool,
}

impl Memory {
    fn write(&self, kind: &'static str) -> bool {
        if self.stopped.load(Ordering::Relaxed) {
            return false;
        }
        self.writes.lock().expect("writes").push(kind);
        true
    }

    fn read<T: Send + 'static>(&self, answer: T) -> BoxFuture<'_, Result<T, StoreError>> {
        let stopped = self.stopped.load(Ordering::Relaxed);
        Box::pin(async move {
            if stopped {
                Err(StoreError::Closed)
            } else {
                Ok(answer)
            }
        })
    }
}

impl Store for Memory {
    fn host_seen(&self, _: HostRecord) -> bool {
        self.write("host_seen")
    }
    fn host_gone(&self, _: &str, _: i64) -> bool {
        self.write("host_gone")
    }
    fn open_episode(&self, _: NewEpisode) -> bool {
        self.write("open_episode")
    }
    fn update_episode(&self, _: EpisodeUpdate) -> bool {
        self.write("update_episode")
    }
    fn close_episode(&self, _: i64, _: EpisodeEnd) -> bool {
        self.write("close_episode")
    }
    fn add_samples(&self, _: i64, _: Vec<StoredSample>) -> bool {
        self.write("add_samples")
    }
    fn add_held(&self, _: Vec<HeldRow>) -> bool {
        self.write("add_held")
    }

    fn list_episodes(
        &self,
        f: EpisodeFilter,
    ) -> BoxFuture<'_, Result<Vec<EpisodeRow>, StoreError>> {
        let rows = self
            .episodes
            .iter()
            .filter(|(e, _)| f.host.as_ref().is_none_or(|h| *h == e.a_host))
            .map(|(e, _)| e.clone())
            .collect();
        self.asked.lock().expect("asked").push(f);
        self.read(rows)
    }

    fn count_episodes(
        &self,
        _: EpisodeFilter,
        _: i64,
    ) -> BoxFuture<'_, Result<Vec<EpisodeCount>, StoreError>> {
        self.read(Vec::new())
    }

    fn get_episode(&self, id: i64) -> BoxFuture<'_, Result<Option<StoredEpisode>, StoreError>> {
        let found = self.episodes.iter().find(|(e, _)| e.id == id).cloned();
        self.read(found)
    }

    fn list_held(&self, _: HeldFilter) -> BoxFuture<'_, Result<Vec<HeldRow>, StoreError>> {
        self.read(Vec::new())
    }

    fn list_hosts(&self) -> BoxFuture<'_, Result<Vec<HostRow>, StoreError>> {
        self.read(Vec::new())
    }

    fn set_limits(&self, _: Duration, _: Option<u64>) -> BoxFuture<'_, bool> {
        let running = !self.stopped.load(Ordering::Relaxed);
        Box::pin(async move { running })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.read(())
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        self.stopped.store(true, Ordering::Relaxed);
        Box::pin(async {})
    }

    fn stats(&self) -> StoreStatsSnapshot {
        StoreStatsSnapshot::default()
    }
}

fn flow() -> FlowTuple {
    FlowTuple::new(
        "198.18.0.2:8080".parse().expect("addr"),
        "198.18.0.1:40000".parse().expect("addr"),
    )
}

/// Episode `id` of `host`, open since 20 s before [`NOW`], with one sample
/// of each end.
fn episode(id: i64, host: &str) -> (EpisodeRow, Vec<StoredSample>) {
    let row = EpisodeRow {
        id,
        diagnosis: "ack_lost".into(),
        summary: "acks lost on the way back".into(),
        evidence: BTreeMap::from([("retrans".into(), 3)]),
        basis: Default::default(),
        started_at_ms: NOW - 20_000,
        duration_ms: 12_000,
        stuck_bytes: 4096,
        a_host: host.into(),
        a_netns: "host".into(),
        a_flow: flow(),
        a_cookie: 7,
        b_host: Some("db".into()),
        peer_note: None,
        via: None,
        open: true,
        ended_at_ms: None,
        end_reason: None,
    };
    let samples = vec![
        StoredSample {
            side: Side::A,
            host: host.into(),
            at_ms: NOW - 8_000,
            sample: pack(&a_end(7, 1_000, 4096)),
        },
        StoredSample {
            side: Side::B,
            host: "db".into(),
            at_ms: NOW - 8_000,
            sample: pack(&b_end(&a_end(7, 1_000, 4096), 1_000, 0, 65536)),
        },
    ];
    (row, samples)
}

/// The query service over `store`, on a clock stopped at [`NOW`]; the
/// matcher's end is kept open and never answers (these calls do not ask
/// it).
fn service(store: SharedStore) -> (QueryService, mpsc::Receiver<Question>) {
    let (matcher, questions) = mpsc::channel(1);
    let (clock, _) = Clock::manual(NOW);
    (QueryService::new(store, matcher, clock), questions)
}

#[tokio::test]
async fn the_query_service_reads_through_the_store_trait() -> Result<(), tonic::Status> {
    // Episode 2's ends were joined through a DNAT on B's host.
    let (mut joined, samples) = episode(2, "web-2");
    let via = JoinedVia {
        host: "db".into(),
        translation: Translation {
            original: FlowTuple::new(
                "198.18.0.1:40000".parse().expect("addr"),
                "198.18.100.1:80".parse().expect("addr"),
            ),
            reply: flow(),
            src_nat: false,
            dst_nat: true,
        },
    };
    joined.via = Some(via.clone());
    let memory = Arc::new(Memory {
        episodes: vec![episode(1, "web-1"), (joined, samples)],
        ..Memory::default()
    });
    let (svc, _matcher) = service(memory.clone());

    let listed = svc
        .list_episodes(Request::new(ListEpisodesRequest {
            host: "web-2".into(),
            limit: 5,
            ..ListEpisodesRequest::default()
        }))
        .await?
        .into_inner();
    assert_eq!(
        listed.episodes.iter().map(|e| e.id).collect::<Vec<_>>(),
        [2]
    );
    // An open episode has lasted until now.
    assert_eq!(listed.episodes[0].duration_ms, 20_000);
    // The translation that joined its ends, as the store gave it.
    let answered = episode_from_wire(listed.episodes[0].clone())
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    assert_eq!(answered.via, Some(via));
    let asked = memory.asked.lock().expect("asked").clone();
    assert_eq!(
        asked,
        [EpisodeFilter {
            host: Some("web-2".into()),
            limit: 5,
            ..EpisodeFilter::default()
        }],
        "the operator's filter reaches the store as the store's"
    );

    let got = svc
        .get_episode(Request::new(GetEpisodeRequest { id: 1 }))
        .await?
        .into_inner();
    assert_eq!(
        got.episode.as_ref().map(|e| (e.id, e.via.is_none())),
        Some((1, true))
    );
    let (_, stored) = episode(1, "web-1");
    assert_eq!(got.samples.len(), stored.len());
    for (wire, kept) in got.samples.iter().zip(&stored) {
        assert_eq!(
            (wire.side.as_str(), wire.host.as_str(), wire.at_ms),
            (kept.side.as_str(), kept.host.as_str(), kept.at_ms)
        );
        // The stored bytes as they are, read as a client reads them.
        assert_eq!(wire.sample.as_deref(), Some(kept.sample.as_bytes()));
        let on_wire = wire
            .sample
            .as_deref()
            .map(|b| v1::Sample::decode(b).map_err(|e| e.to_string()))
            .transpose()
            .and_then(|w| {
                w.as_ref()
                    .map(sample_from_wire)
                    .transpose()
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| tonic::Status::internal(format!("the answer's sample: {e}")))?;
        assert_eq!(on_wire, unpack(&kept.sample), "the stored sample");
    }

    let missing = svc
        .get_episode(Request::new(GetEpisodeRequest { id: 99 }))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(missing, Some(Code::NotFound));
    assert!(
        memory.writes.lock().expect("writes").is_empty(),
        "queries never write"
    );
    Ok(())
}

#[tokio::test]
async fn a_stopped_store_is_an_error_to_the_operator_not_a_panic() {
    let memory = Arc::new(Memory {
        episodes: vec![episode(1, "web-1")],
        ..Memory::default()
    });
    let store: SharedStore = memory.clone();
    let (svc, _matcher) = service(store.clone());
    store.shutdown().await;
    assert!(!store.open_episode(NewEpisode {
        id: 2,
        diagnosis: "ack_lost".into(),
        summary: String::new(),
        evidence: BTreeMap::new(),
        basis: Default::default(),
        started_at_ms: NOW,
        duration_ms: 0,
        stuck_bytes: 0,
        a_host: "web-1".into(),
        a_netns: "host".into(),
        a_flow: flow(),
        a_cookie: 1,
        b_host: None,
        peer_note: None,
        via: None,
    }));
    let code = svc
        .get_episode(Request::new(GetEpisodeRequest { id: 1 }))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(code, Some(Code::Internal));
}
