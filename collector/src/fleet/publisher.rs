//! The edge's publishes to the samples stream, in order, acknowledged.
//!
//! A partition reads one host's parts in the order its node published
//! them, and the matcher needs them so (a part read after a newer one of
//! the same host would step its connections back in time). Publishes go
//! out as they come, up to [`IN_FLIGHT`] waiting for JetStream's
//! acknowledgement, and the acknowledgements are taken in order. One that
//! fails — a NATS server died and its streams' leaders are being elected
//! again, 4-7 s with NATS 2.9 on three servers — stops everything behind
//! it: the failed bundle and every one after it are published again, in
//! order, until JetStream takes them (each has a message id: a copy of one
//! it had stored already is dropped by JetStream) or until the oldest has
//! waited [`PATIENCE`], when it and its parts are counted lost. Meanwhile
//! nothing new is taken: the edge's queue fills, then the agents' streams
//! wait, then the agents' own bounded buffers hold their polls.

use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::publish::PublishAck;
use async_nats::HeaderMap;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Publishes waiting for their acknowledgement at once.
pub const IN_FLIGHT: usize = 1024;
/// How long a part is published again before it is counted lost.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// One message for the samples stream: a bundle of parts.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
    /// The bundle's length before compression.
    pub plain_bytes: u64,
    /// Batch parts in it.
    pub parts: u64,
}

type Ack = Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>;

struct InFlight {
    msg: Outgoing,
    ack: Ack,
    /// When it was first published.
    since: Instant,
}

/// Runs until `parts` closes and every part is acknowledged or lost.
pub async fn run(
    js: async_nats::jetstream::Context,
    mut parts: mpsc::Receiver<Outgoing>,
    stats: Arc<super::FleetStats>,
) {
    let stats = &stats.edge;
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    let mut open = true;
    while open || !inflight.is_empty() {
        tokio::select! {
            msg = parts.recv(), if open && inflight.len() < IN_FLIGHT => match msg {
                Some(msg) => {
                    let ack = send(&js, &msg).await;
                    inflight.push_back(InFlight { msg, ack, since: Instant::now() });
                }
                None => open = false,
            },
            acked = front(&mut inflight), if !inflight.is_empty() => match acked {
                Ok(()) => {
                    if let Some(done) = inflight.pop_front() {
                        published(stats, &done.msg);
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, waiting = inflight.len(), "a batch part not acknowledged; publishing it and those after it again, in order");
                    recover(&js, &mut inflight, stats).await;
                }
            },
        }
    }
}

fn published(stats: &super::edge::EdgeStats, msg: &Outgoing) {
    stats.parts_published.fetch_add(msg.parts, Ordering::Relaxed);
    stats.bundles_published.fetch_add(1, Ordering::Relaxed);
    stats.bundle_bytes_plain.fetch_add(msg.plain_bytes, Ordering::Relaxed);
    stats.bundle_bytes_sent.fetch_add(msg.payload.len() as u64, Ordering::Relaxed);
}

/// Publishes `msg`; its acknowledgement to come (or the failure to send).
async fn send(js: &async_nats::jetstream::Context, msg: &Outgoing) -> Ack {
    match js
        .publish_with_headers(msg.subject.clone(), msg.headers.clone(), msg.payload.clone())
        .await
    {
        Ok(ack) => Box::pin(ack.into_future()),
        Err(e) => Box::pin(std::future::ready(Err(e))),
    }
}

/// The oldest part's acknowledgement.
async fn front(inflight: &mut VecDeque<InFlight>) -> Result<(), PublishError> {
    match inflight.front_mut() {
        Some(f) => f.ack.as_mut().await.map(|_| ()),
        None => std::future::pending().await,
    }
}

/// Publishes every part in flight again, in order, and takes their
/// acknowledgements in order, until all are taken; the oldest is given up
/// (counted lost) once it has waited [`PATIENCE`].
async fn recover(
    js: &async_nats::jetstream::Context,
    inflight: &mut VecDeque<InFlight>,
    stats: &super::edge::EdgeStats,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        while inflight
            .front()
            .is_some_and(|f| f.since.elapsed() >= PATIENCE)
        {
            if let Some(lost) = inflight.pop_front() {
                stats.parts_failed.fetch_add(lost.msg.parts, Ordering::Relaxed);
                stats.bundles_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(subject = %lost.msg.subject, parts = lost.msg.parts, "a bundle of batch parts lost: not acknowledged within {PATIENCE:?}");
            }
        }
        if inflight.is_empty() {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
        for f in inflight.iter_mut() {
            f.ack = send(js, &f.msg).await;
        }
        let mut failed = false;
        while let Some(f) = inflight.front_mut() {
            match f.ack.as_mut().await {
                Ok(_) => {
                    if let Some(done) = inflight.pop_front() {
                        published(stats, &done.msg);
                    }
                }
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if !failed {
            return;
        }
    }
}
