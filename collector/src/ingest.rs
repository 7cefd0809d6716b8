//! The agents' side of the gRPC edge: validates what arrives, turns it
//! into domain messages for the aggregator, and streams watch requests
//! back. Nothing here holds state of its own.
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
use tcpstall_common::SampleReason;
use tcpstall_proto::convert::{self, ConvertError};
use tcpstall_proto::raw::{self, agent_message};
use tcpstall_proto::sample_wire;
use tcpstall_proto::server::ingest_server::IngestServer;
use tcpstall_proto::v1::{self, collector_message};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::aggregator::{AgentBatch, ClosedSocket, Command, HostHello, ToAgent};
use crate::frames::{IngestBody, MessageReader, TakeBody};
use crate::packed::Packed;
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
    agg: mpsc::Sender<Command>,
    /// Shared so that a reloaded config reaches streams already open.
    pub max_batch_samples: Arc<std::sync::atomic::AtomicUsize>,
    sessions: Arc<AtomicU64>,
    /// Messages refused since start.
    pub refused: Arc<AtomicU64>,
    /// Agents must present a client certificate naming their host.
    mtls: bool,
    /// Messages longer than this are refused.
    max_message_bytes: usize,
}

impl IngestService {
    pub fn new(
        agg: mpsc::Sender<Command>,
        max_batch_samples: usize,
        max_message_bytes: usize,
    ) -> IngestService {
        IngestService {
            agg,
            max_batch_samples: Arc::new(std::sync::atomic::AtomicUsize::new(max_batch_samples)),
            sessions: Arc::new(AtomicU64::new(1)),
            refused: Arc::new(AtomicU64::new(0)),
            mtls: false,
            max_message_bytes,
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

fn invalid(e: ConvertError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// Validates a Hello.
pub fn hello_from_wire(h: &v1::Hello) -> Result<HostHello, Status> {
    if h.protocol == 0 || h.protocol > tcpstall_proto::PROTOCOL_VERSION {
        return Err(Status::failed_precondition(format!(
            "protocol {} not spoken here (this collector speaks 1..={})",
            h.protocol,
            tcpstall_proto::PROTOCOL_VERSION
        )));
    }
    let host = convert::name_from_wire(&h.host, "host").map_err(invalid)?;
    if host.is_empty() || host.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Status::invalid_argument(
            "host: empty or with spaces or control characters",
        ));
    }
    let mut addresses = Vec::new();
    for ns in &h.namespaces {
        for ip in &ns.addresses {
            addresses
                .push(convert::ip_from_wire(Some(ip), "namespaces.addresses").map_err(invalid)?);
        }
    }
    if addresses.len() > 65_536 {
        return Err(Status::invalid_argument("more than 65536 addresses"));
    }
    let interval = Duration::from_millis(u64::from(h.interval_ms));
    if interval < Duration::from_millis(50) || interval > Duration::from_secs(3600) {
        return Err(Status::invalid_argument(format!(
            "interval_ms {} out of range 50..=3600000",
            h.interval_ms
        )));
    }
    Ok(HostHello {
        host,
        agent_version: convert::name_from_wire(&h.agent_version, "agent_version")
            .map_err(invalid)?,
        kernel: convert::name_from_wire(&h.kernel, "kernel").map_err(invalid)?,
        boot_id: convert::name_from_wire(&h.boot_id, "boot_id").map_err(invalid)?,
        addresses,
        interval,
    })
}

/// Validates a Batch. Each sample is decoded to check it; the encoding it
/// came in is what the aggregator keeps, copied out of the message (each
/// sample is a slice of the message's buffer, which goes with the batch).
pub fn batch_from_wire(b: raw::Batch, max_samples: usize) -> Result<AgentBatch, Status> {
    let n = b.samples.len() + b.closed.len() + b.absent.len();
    if n > max_samples {
        return Err(Status::resource_exhausted(format!(
            "batch of {n} entries, at most {max_samples}"
        )));
    }
    let mut samples = Vec::with_capacity(b.samples.len());
    let mut packed = Vec::with_capacity(b.samples.len());
    for (i, bytes) in b.samples.into_iter().enumerate() {
        let at = |e: &dyn std::fmt::Display| Status::invalid_argument(format!("samples[{i}]: {e}"));
        let w = sample_wire::decode_sample(&bytes).map_err(|e| at(&e))?;
        let reason = convert::reason_from_wire(w.reason, w.held.as_ref()).map_err(|e| at(&e))?;
        let s = convert::sample_from_wire_owned(w).map_err(|e| at(&e))?;
        // What the aggregator may keep; a released sample is kept only as
        // an episode's last, and encoded there if so.
        let released = matches!(reason, SampleReason::Released(_));
        packed.push((!released).then(|| Packed::from_bytes(&bytes[..])));
        samples.push((reason, s));
    }
    let closed = b
        .closed
        .iter()
        .map(|c| {
            Ok(ClosedSocket {
                flow: tcpstall_common::FlowTuple::new(
                    convert::endpoint_from_wire(c.local.as_ref(), "closed.local")?,
                    convert::endpoint_from_wire(c.remote.as_ref(), "closed.remote")?,
                ),
                cookie: c.cookie,
                held: c.held.as_ref().map(convert::held_from_wire).transpose()?,
            })
        })
        .collect::<Result<Vec<_>, ConvertError>>()
        .map_err(invalid)?;
    let absent = b
        .absent
        .iter()
        .map(|f| convert::flow_from_wire(Some(f)))
        .collect::<Result<Vec<_>, ConvertError>>()
        .map_err(invalid)?;
    Ok(AgentBatch {
        mono: Duration::from_micros(b.mono_us),
        connections: b.connections,
        samples,
        packed,
        closed,
        absent,
        dropped_batches: b.dropped_batches,
        dropped_samples: b.dropped_samples,
    })
}

fn to_wire(msg: ToAgent) -> v1::CollectorMessage {
    let body = match msg {
        ToAgent::Watch(flow) => collector_message::Body::Watch(v1::Watch {
            flow: Some(convert::flow_to_wire(flow)),
            reason: "peer of a suspect flow".into(),
        }),
        ToAgent::Unwatch(flow) => collector_message::Body::Unwatch(v1::Unwatch {
            flow: Some(convert::flow_to_wire(flow)),
        }),
    };
    v1::CollectorMessage { body: Some(body) }
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
            Some(agent_message::Body::Hello(h)) => hello_from_wire(&h)
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
        let (to_agent, mut from_agg) = mpsc::channel::<ToAgent>(OUTBOUND_QUEUE);
        let (reply, accepted) = oneshot::channel();
        self.agg
            .send(Command::Hello {
                session,
                hello,
                tx: to_agent,
                reply,
            })
            .await
            .map_err(|_| Status::unavailable("collector is shutting down"))?;
        accepted
            .await
            .map_err(|_| Status::unavailable("collector is shutting down"))?
            .map_err(Status::resource_exhausted)?;

        // Inbound: validate and forward until the stream ends or lies.
        let (out_tx, out_rx) =
            mpsc::channel::<Result<v1::CollectorMessage, Status>>(OUTBOUND_QUEUE);
        let agg = self.agg.clone();
        let max = self.max_batch_samples.clone();
        let refused = self.refused.clone();
        let fail_tx = out_tx.clone();
        tokio::spawn(async move {
            loop {
                let msg = match next_message(&mut inbound).await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(status) => {
                        // A message that could not be decoded (too large,
                        // not protobuf) is refused like an invalid one; a
                        // broken connection is just the end.
                        if matches!(
                            status.code(),
                            Code::ResourceExhausted
                                | Code::OutOfRange
                                | Code::Internal
                                | Code::InvalidArgument
                        ) {
                            refused.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(session, host = %host, %status, "agent message refused; stream closed");
                        } else {
                            tracing::info!(session, host = %host, %status, "agent stream broke");
                        }
                        let _ = fail_tx.send(Err(status)).await;
                        break;
                    }
                };
                // A place in the aggregator's queue first, then the decode:
                // while the collector is behind, each stream waits holding
                // its message as it came (about its wire size), not decoded
                // (about three times that), so the queue's bound is also
                // the bound on decoded batches.
                let Ok(place) = agg.reserve().await else {
                    break;
                };
                let cmd = match msg.body {
                    Some(agent_message::Body::Batch(b)) => {
                        batch_from_wire(b, max.load(Ordering::Relaxed))
                            .map(|batch| Command::Batch { session, batch })
                    }
                    Some(agent_message::Body::Heartbeat(h)) => Ok(Command::Heartbeat {
                        session,
                        dropped_batches: h.dropped_batches,
                    }),
                    Some(agent_message::Body::Hello(_)) => {
                        Err(Status::invalid_argument("a second Hello on one stream"))
                    }
                    None => Err(Status::invalid_argument("empty message")),
                };
                match cmd {
                    Ok(cmd) => place.send(cmd),
                    Err(status) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(session, host = %host, %status, "agent message refused; stream closed");
                        let _ = fail_tx.send(Err(status)).await;
                        break;
                    }
                }
            }
            let _ = agg.send(Command::Gone { session }).await;
        });

        // Outbound: a Welcome, then what the aggregator asks of this agent.
        tokio::spawn(async move {
            let welcome = v1::CollectorMessage {
                body: Some(collector_message::Body::Welcome(v1::Welcome {
                    protocol: tcpstall_proto::PROTOCOL_VERSION,
                    collector_version: env!("CARGO_PKG_VERSION").to_string(),
                })),
            };
            if out_tx.send(Ok(welcome)).await.is_err() {
                return;
            }
            // Watch requests come in bursts (one batch of one agent fans
            // out to many peers); gathered for a moment, a burst leaves in
            // one HTTP/2 write instead of one write per request.
            let mut burst = Vec::new();
            'out: while from_agg.recv_many(&mut burst, OUTBOUND_QUEUE).await > 0 {
                tokio::time::sleep(gather).await;
                while burst.len() < OUTBOUND_QUEUE {
                    match from_agg.try_recv() {
                        Ok(msg) => burst.push(msg),
                        Err(_) => break,
                    }
                }
                for msg in burst.drain(..) {
                    if out_tx.send(Ok(to_wire(msg))).await.is_err() {
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
        use crate::frames::{framed, Chunks};
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

    /// Each sample is read as a slice of its message (no copy per sample),
    /// and what the aggregator keeps is a copy of its own: a kept slice
    /// would hold the whole message's buffer for as long as the suspect
    /// lives.
    #[test]
    fn samples_are_read_in_place_and_kept_as_copies_of_their_own() {
        let ends: Vec<_> = (1..=3)
            .map(|cookie| tcpstall_common::EndSample {
                cookie,
                ..crate::packed::tests::sample()
            })
            .collect();
        let reasons = [
            v1::SampleReason::Suspect,
            v1::SampleReason::Released,
            v1::SampleReason::Watched,
        ];
        let wire: Vec<_> = ends
            .iter()
            .zip(reasons)
            .map(|(e, r)| convert::sample_to_wire(e, r))
            .collect();
        let msg = v1::AgentMessage {
            body: Some(v1::agent_message::Body::Batch(v1::Batch {
                samples: wire,
                ..Default::default()
            })),
        };
        let buffer = tonic::codegen::Bytes::from(msg.encode_to_vec());
        let within = |p: &[u8]| buffer.as_ptr_range().contains(&p.as_ptr());
        let Some(agent_message::Body::Batch(b)) = raw::AgentMessage::decode(buffer.clone())
            .expect("decodes")
            .body
        else {
            panic!("not a batch");
        };
        assert!(b.samples.iter().all(|s| within(s)), "a sample was copied");
        let batch = batch_from_wire(b, 100).expect("a valid batch");
        assert_eq!(batch.samples.len(), 3);
        // A released sample is not kept; the others are, outside the message.
        assert!(batch.packed[1].is_none());
        for i in [0, 2] {
            let packed = batch.packed[i].as_ref().expect("kept");
            assert!(!within(packed.as_bytes()), "sample {i} holds the message");
            let back = packed.unpack().expect("unpacks");
            assert_eq!(back, batch.samples[i].1);
            assert_eq!(back, ends[i]);
        }
    }

    /// A held span comes through on a release and a closing, is ignored
    /// on anything else, and one that cannot be refuses the batch.
    #[test]
    fn held_spans_are_read_checked_and_refused_when_impossible() {
        use tcpstall_common::{HeldEnd, HeldSpan};
        let ms = Duration::from_millis;
        let span = HeldSpan::new(ms(1_000), ms(11_000), ms(11_250), HeldEnd::Reset).expect("span");
        let wire_span = convert::held_to_wire(&span);
        let end = crate::packed::tests::sample();
        let mut released = convert::sample_to_wire(&end, v1::SampleReason::Released);
        released.held = Some(wire_span);
        let mut suspect = convert::sample_to_wire(&end, v1::SampleReason::Suspect);
        suspect.held = Some(wire_span);
        let closed = v1::Closed {
            netns: "host".into(),
            local: Some(convert::endpoint_to_wire(end.flow.local)),
            remote: Some(convert::endpoint_to_wire(end.flow.remote)),
            cookie: 3,
            held: Some(wire_span),
        };
        let raw = |samples: Vec<v1::Sample>, closed: Vec<v1::Closed>| raw::Batch {
            samples: samples
                .iter()
                .map(|s| tonic::codegen::Bytes::from(s.encode_to_vec()))
                .collect(),
            closed,
            ..raw::Batch::default()
        };
        let b = batch_from_wire(
            raw(vec![released.clone(), suspect], vec![closed.clone()]),
            100,
        )
        .expect("valid");
        assert_eq!(b.samples[0].0, SampleReason::Released(Some(span)));
        assert_eq!(
            b.samples[1].0,
            SampleReason::Suspect,
            "a span on the release only"
        );
        assert_eq!(b.closed[0].held, Some(span));
        // Out of order, or with no end named: the batch is refused.
        let mut bad = released;
        bad.held = Some(v1::Held {
            ended_us: 10,
            ..wire_span
        });
        let err = batch_from_wire(raw(vec![bad], vec![]), 100).expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("samples[0]"), "{err}");
        let mut bad = closed;
        bad.held = Some(v1::Held {
            end: 0,
            ..wire_span
        });
        let err = batch_from_wire(raw(vec![], vec![bad]), 100).expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("held"), "{err}");
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
