//! The agents' streams: each is checked at the edge (`convert`), said
//! hello to the gateway's task, and then sends its batches straight to the
//! matcher, with when its agent took each poll on the collector's clock
//! ([`AgentClock`]), and so its agent's address announcements; the
//! gateway's watch requests go back to its agent.
//!
//! A stream must open with a Hello. A malformed, oversized or impossible
//! message ends that stream with a gRPC status naming what was wrong; the
//! log names the stream and the host. Other streams are untouched.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tcpstall_common::{Clock, ToAgent, Welcome};
use tcpstall_proto::convert::{self, ConvertError};
use tcpstall_proto::raw::{self, agent_message};
use tcpstall_proto::server::ingest_server::IngestServer;
use tcpstall_proto::v1;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::clock::AgentClock;
use super::frames::{IngestBody, MessageReader, TakeBody};
use super::hub::{Input, Refusal};
use crate::messages::ToMatcher;
use crate::tls;

/// Watch requests queued for one agent before new ones are dropped.
const OUTBOUND_QUEUE: usize = 1024;

/// How long the first watch request of a burst waits for the rest: a
/// quarter of the agent's poll interval, within these bounds (500 ms at the
/// default 2 s). Each burst is one write to the agent's connection, and on
/// the collector such a write costs about as much as decoding a batch:
/// gathering for 250 ms instead of 50 ms took the collector from 9.0 to
/// 7.8 µs per sample ingested at 100 agents, 500 ms instead of 250 ms
/// another 3 % at 300 agents (BENCHMARKS.md). A request still reaches the
/// agent before its next poll.
const OUTBOUND_GATHER_MIN: Duration = Duration::from_millis(10);
const OUTBOUND_GATHER_MAX: Duration = Duration::from_millis(500);

/// The gather time for an agent polling every `interval`.
fn outbound_gather(interval: Duration) -> Duration {
    (interval / 4).clamp(OUTBOUND_GATHER_MIN, OUTBOUND_GATHER_MAX)
}

/// The ingest service.
#[derive(Debug, Clone)]
pub struct IngestService {
    gateway: mpsc::Sender<Input>,
    matcher: mpsc::Sender<ToMatcher>,
    clock: Clock,
    /// Shared so that a reloaded config reaches streams already open.
    pub max_batch_samples: Arc<std::sync::atomic::AtomicUsize>,
    sessions: Arc<AtomicU64>,
    /// Messages refused since start.
    pub refused: Arc<AtomicU64>,
    /// Agents must present a client certificate naming their host.
    mtls: bool,
    /// Messages longer than this are refused.
    max_message_bytes: usize,
    /// Which samples' encodings a batch keeps (fleet mode: every one, for
    /// the edge to send on as it came).
    keep: convert::Keep,
}

impl IngestService {
    pub fn new(
        gateway: mpsc::Sender<Input>,
        matcher: mpsc::Sender<ToMatcher>,
        clock: Clock,
        max_batch_samples: usize,
        max_message_bytes: usize,
    ) -> IngestService {
        IngestService {
            gateway,
            matcher,
            clock,
            max_batch_samples: Arc::new(std::sync::atomic::AtomicUsize::new(max_batch_samples)),
            sessions: Arc::new(AtomicU64::new(1)),
            refused: Arc::new(AtomicU64::new(0)),
            mtls: false,
            max_message_bytes,
            keep: convert::Keep::Kept,
        }
    }

    /// Keeps every sample's encoding as it came, for an edge that sends
    /// batches on (fleet mode).
    pub fn keep_every_encoding(self) -> IngestService {
        IngestService {
            keep: convert::Keep::All,
            ..self
        }
    }

    /// The gRPC service, reading its streams' messages itself
    /// ([`crate::frames`]).
    pub fn into_server(self) -> TakeBody<IngestServer<IngestService>> {
        TakeBody::new(IngestServer::new(self))
    }

    /// Requires every agent's stream to carry a verified client
    /// certificate that names the host of its Hello (mutual TLS).
    pub fn require_client_certs(self) -> IngestService {
        IngestService { mtls: true, ..self }
    }
}

/// The next message of an agent's stream, decoded.
async fn next_message<B>(reader: &mut MessageReader<B>) -> Result<Option<raw::AgentMessage>, Status>
where
    B: tonic::codegen::Body<Data = tonic::codegen::Bytes, Error = Status> + Unpin,
{
    match reader.message().await? {
        Some(bytes) => raw::AgentMessage::decode(bytes)
            .map(Some)
            .map_err(|e| Status::internal(format!("not a message: {e}"))),
        None => Ok(None),
    }
}

/// The gRPC status of a message `convert` refused.
fn status(e: ConvertError) -> Status {
    match e {
        ConvertError::Protocol { .. } => Status::failed_precondition(e.to_string()),
        ConvertError::TooMany { .. } => Status::resource_exhausted(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

type Outbound = Pin<Box<dyn Stream<Item = Result<v1::CollectorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl tcpstall_proto::server::ingest_server::Ingest for IngestService {
    type StreamStream = Outbound;

    async fn stream(
        &self,
        request: Request<Streaming<raw::AgentMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let remote: Option<SocketAddr> = request.remote_addr();
        let session = self.sessions.fetch_add(1, Ordering::Relaxed);
        let certs = request.peer_certs();
        let identity = match tls::agent_identity(self.mtls, certs.as_deref().map(Vec::as_slice)) {
            Ok(identity) => identity,
            Err(status) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(session, ?remote, %status, "agent refused: no client certificate");
                return Err(status);
            }
        };
        // The body, set aside for us by `TakeBody`; tonic's reader, given
        // nothing, goes with the request.
        let body = request
            .extensions()
            .get::<IngestBody>()
            .and_then(IngestBody::take)
            .ok_or_else(|| Status::internal("ingest served without its body reader"))?;
        drop(request);
        let mut inbound = MessageReader::new(body, self.max_message_bytes);
        let first = next_message(&mut inbound)
            .await?
            .ok_or_else(|| Status::invalid_argument("stream ended before its Hello"))?;
        let hello = match first.body {
            Some(agent_message::Body::Hello(h)) => convert::hello_from_wire(&h)
                .map_err(status)
                .and_then(|hello| tls::check_host(&identity, &hello.host).map(|()| hello)),
            _ => Err(Status::invalid_argument(
                "the first message must be a Hello",
            )),
        };
        let hello = match hello {
            Ok(h) => h,
            Err(status) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(session, ?remote, %status, "agent refused at hello");
                return Err(status);
            }
        };
        let host = hello.host.clone();
        let gather = outbound_gather(hello.interval);
        let (to_agent, mut from_gateway) = mpsc::channel::<ToAgent>(OUTBOUND_QUEUE);
        let (reply, accepted) = oneshot::channel();
        self.gateway
            .send(Input::Hello {
                session,
                hello: Box::new(hello),
                peer: remote,
                tx: to_agent,
                reply,
            })
            .await
            .map_err(|_| Status::unavailable("collector is shutting down"))?;
        let host_id = accepted
            .await
            .map_err(|_| Status::unavailable("collector is shutting down"))?
            .map_err(|refusal| match refusal {
                Refusal::Full { .. } => Status::resource_exhausted(refusal.to_string()),
                Refusal::Taken(_) => Status::already_exists(refusal.to_string()),
            })?;

        // Inbound: validate and forward until the stream ends or lies.
        let (out_tx, out_rx) =
            mpsc::channel::<Result<v1::CollectorMessage, Status>>(OUTBOUND_QUEUE);
        let gateway = self.gateway.clone();
        let matcher = self.matcher.clone();
        let clock = self.clock.clone();
        let max = self.max_batch_samples.clone();
        let keep = self.keep;
        let refused = self.refused.clone();
        let fail_tx = out_tx.clone();
        tokio::spawn(async move {
            let refuse = |status: Status| {
                refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(session, host = %host, %status, "agent message refused; stream closed");
                let fail_tx = fail_tx.clone();
                async move {
                    let _ = fail_tx.send(Err(status)).await;
                }
            };
            let mut agent_clock = AgentClock::default();
            let mut dropped_batches = 0;
            loop {
                let msg = match next_message(&mut inbound).await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    // A message that could not be decoded (too large, not
                    // protobuf) is refused like an invalid one; a broken
                    // connection is just the end.
                    Err(status)
                        if matches!(
                            status.code(),
                            Code::ResourceExhausted
                                | Code::OutOfRange
                                | Code::Internal
                                | Code::InvalidArgument
                        ) =>
                    {
                        refuse(status).await;
                        break;
                    }
                    Err(status) => {
                        tracing::info!(session, host = %host, %status, "agent stream broke");
                        let _ = fail_tx.send(Err(status)).await;
                        break;
                    }
                };
                let (batch, dropped) = match msg.body {
                    Some(agent_message::Body::Batch(b)) => {
                        let dropped = b.dropped_batches;
                        (Some(b), dropped)
                    }
                    Some(agent_message::Body::Heartbeat(h)) => {
                        (None, convert::heartbeat_from_wire(&h).dropped_batches)
                    }
                    Some(agent_message::Body::Hello(_)) => {
                        refuse(Status::invalid_argument("a second Hello on one stream")).await;
                        break;
                    }
                    // Its addresses changed: checked, then to the matcher
                    // in the stream's order (after the batches before it).
                    Some(agent_message::Body::Addresses(a)) => {
                        let addresses = match convert::addresses_from_wire(&a) {
                            Ok(namespaces) => namespaces,
                            Err(e) => {
                                refuse(status(e)).await;
                                break;
                            }
                        };
                        tracing::debug!(session, host = %host, namespaces = addresses.len(), "addresses announced");
                        let msg = ToMatcher::Addresses {
                            host: host_id,
                            session,
                            addresses,
                        };
                        if matcher.send(msg).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    None => {
                        refuse(Status::invalid_argument("empty message")).await;
                        break;
                    }
                };
                // The agent's count of what it dropped, for the gateway's
                // figures: only when it moves.
                if dropped != dropped_batches {
                    dropped_batches = dropped;
                    let beat = Input::Heartbeat {
                        session,
                        dropped_batches,
                    };
                    if gateway.send(beat).await.is_err() {
                        break;
                    }
                }
                let Some(batch) = batch else { continue };
                // A place in the matcher's queue first, then the decode:
                // while the collector is behind, each stream waits holding
                // its message as it came (about its wire size), not decoded
                // (about three times that), so the queue's bound is also
                // the bound on decoded batches.
                let Ok(place) = matcher.reserve().await else {
                    break;
                };
                match convert::batch_from_wire_keeping(batch, max.load(Ordering::Relaxed), keep) {
                    Ok(batch) => {
                        let taken_ms = agent_clock.taken_ms(batch.mono, clock.now_ms());
                        place.send(ToMatcher::Batch {
                            host: host_id,
                            session,
                            taken_ms,
                            batch,
                        });
                    }
                    Err(e) => {
                        refuse(status(e)).await;
                        break;
                    }
                }
            }
            let _ = gateway.send(Input::Gone { session }).await;
        });

        // Outbound: a Welcome, then what the gateway asks of this agent.
        tokio::spawn(async move {
            let welcome = convert::welcome_to_wire(Welcome {
                protocol: tcpstall_proto::PROTOCOL_VERSION,
                collector_version: env!("CARGO_PKG_VERSION").to_string(),
                reads_addresses: true,
            });
            if out_tx.send(Ok(welcome)).await.is_err() {
                return;
            }
            // Watch requests come in bursts (one batch of one agent fans
            // out to many peers); gathered for a moment, a burst leaves in
            // one HTTP/2 write instead of one write per request.
            let mut burst = Vec::new();
            'out: while from_gateway.recv_many(&mut burst, OUTBOUND_QUEUE).await > 0 {
                tokio::time::sleep(gather).await;
                while burst.len() < OUTBOUND_QUEUE {
                    match from_gateway.try_recv() {
                        Ok(msg) => burst.push(msg),
                        Err(_) => break,
                    }
                }
                for msg in burst.drain(..) {
                    if out_tx
                        .send(Ok(convert::to_agent_to_wire(msg)))
                        .await
                        .is_err()
                    {
                        break 'out;
                    }
                }
            }
        });
        // tonic ends the response at its first error, sending it as status.
        let stream = tokio_stream::wrappers::ReceiverStream::new(out_rx);
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_frame_that_is_not_a_message_is_refused_as_internal() {
        use crate::gateway::frames::{framed, Chunks};
        let heartbeat = raw::AgentMessage {
            body: Some(agent_message::Body::Heartbeat(v1::Heartbeat::default())),
        };
        let mut wire = framed(&heartbeat.encode_to_vec());
        wire.extend(framed(&[0xff; 40]));
        let body = Chunks {
            chunks: [tonic::codegen::Bytes::from(wire)].into(),
            end: None,
        };
        let mut reader = MessageReader::new(body, 1024);
        let first = next_message(&mut reader).await.expect("a message");
        assert_eq!(first, Some(heartbeat));
        // A well-framed message that is not protobuf: refused, not skipped.
        let err = next_message(&mut reader).await.expect_err("garbage");
        assert_eq!(err.code(), Code::Internal, "{err}");
    }

    #[test]
    fn watch_requests_gather_for_a_quarter_of_the_poll_within_bounds() {
        let ms = Duration::from_millis;
        assert_eq!(outbound_gather(Duration::from_secs(2)), ms(500));
        assert_eq!(outbound_gather(ms(800)), ms(200));
        // A fast poller is not kept waiting long, nor a zero interval spun on.
        assert_eq!(outbound_gather(ms(20)), ms(10));
        assert_eq!(outbound_gather(Duration::ZERO), ms(10));
        // A slow poller's requests do not wait longer than the cap.
        assert_eq!(outbound_gather(Duration::from_secs(60)), ms(500));
    }
}
