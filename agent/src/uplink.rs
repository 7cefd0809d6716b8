//! The link to the collector: one `tcpstall.v1.Ingest/Stream` at a time,
//! reconnected with jittered exponential backoff, forever, until shutdown.
//!
//! The agent may be given several collectors (several URLs, or a name
//! with several addresses: [`crate::collectors`]). Each attempt takes the
//! next candidate of the [`Rotation`], so a stream that breaks or a
//! collector that cannot be reached sends the agent to another one. The
//! backoff is per attempt, as with one collector: a stream that was up for
//! [`STABLE`] or more is followed by the shortest wait
//! ([`backoff::FIRST_RETRY`], jittered), so an agent whose collector dies
//! is streaming to another within a fraction of a second when that one
//! answers; the jitter keeps the agents of a dead node from all arriving
//! at once, and the ceiling keeps a fleet whose collectors are all down
//! from hammering them. A node killed outright resets its connections at
//! once; a node that vanished (powered off, cut off) or hangs answers
//! nothing, so a connection attempt gives up after [`CONNECT_TIMEOUT`] and
//! an open stream once HTTP/2 keepalive pings go unanswered
//! ([`KEEPALIVE`] and [`KEEPALIVE_TIMEOUT`]). What the agent handed to
//! such a stream before that is lost without being counted: nothing on the
//! wire says what the collector read.
//!
//! The link task owns the connection and nothing else. It reports to the
//! agent's run loop over a bounded channel: a stream is [`LinkEvent::Up`]
//! (with the sender for outgoing messages, the Hello already first in it),
//! the collector asked to watch, unwatch or translate a flow, or the stream is
//! [`LinkEvent::Down`]. The run loop owns the buffer and decides what to
//! send.
//!
//! Messages already handed to a stream that breaks are counted as dropped
//! when the stream lets go of them (see [`Lost`]).
//!
//! The namespaces' addresses are the stream's business too: each Hello
//! says them as they are then, and a stream whose collector's Welcome
//! reads them sends them again whenever they change
//! ([`ToCollector::Addresses`], from [`crate::addresses`]). An older
//! collector would refuse the message, so it never gets one; it learns the
//! addresses at the next Hello.
//!
//! The run loop hands over domain messages ([`ToCollector`]); this is the
//! transport, the one place of the agent that holds the wire's envelopes:
//! tonic's request stream is of `v1::AgentMessage` and its response
//! stream of `v1::CollectorMessage`. Each message is converted by
//! `tcpstall_proto::convert` as it passes, outgoing when tonic takes it
//! from [`Outgoing`], incoming as it is read.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tcpstall_common::{error_chain, FlowTuple, FromCollector, ToAgent, ToCollector};
use tcpstall_proto::convert::{agent_message_to_wire, collector_message_from_wire};
use tcpstall_proto::v1::{self, ingest_client::IngestClient};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::Stream;
use tonic::transport::Endpoint;

use crate::collectors::{Rotation, Target};

pub mod backoff;
use backoff::Backoff;
use crate::hello::Identity;
use crate::metrics::AgentMetrics;

/// A stream that stayed up this long resets the backoff; a shorter one
/// (a collector that accepts and then drops us) continues it.
pub const STABLE: Duration = Duration::from_secs(10);
/// Messages queued towards one stream before the run loop keeps them in
/// its own buffer.
pub const STREAM_QUEUE: usize = 8;
/// How long a shutdown waits for the collector to close its side.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long one connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An HTTP/2 ping goes to the collector after this long without one, and
/// the stream is given up when its answer takes longer than
/// [`KEEPALIVE_TIMEOUT`]: a collector that vanished without resetting the
/// connection is noticed within the sum. A ping is a few bytes; the
/// collector (tonic) does not limit their rate.
pub const KEEPALIVE: Duration = Duration::from_secs(5);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the link tells the run loop.
#[derive(Debug)]
pub enum LinkEvent {
    /// A stream is open; the Hello is already queued first on `tx`.
    Up {
        session: u64,
        tx: mpsc::Sender<ToCollector>,
    },
    /// The collector asks for a flow (local is this host's address).
    Watch(FlowTuple),
    Unwatch(FlowTuple),
    /// The collector asks what connection tracking holds of a flow.
    Translate(FlowTuple),
    /// The stream ended or broke.
    Down {
        session: u64,
    },
}

/// Counts messages a broken stream never sent. Shared between the link's
/// streams and the run loop, which folds the counts into its own.
#[derive(Debug, Default)]
pub struct Lost {
    batches: AtomicU64,
    samples: AtomicU64,
}

impl Lost {
    fn add(&self, samples: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.samples.fetch_add(
            u64::try_from(samples).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The counts since the last call, as (batches, samples).
    pub fn take(&self) -> (u64, u64) {
        (
            self.batches.swap(0, Ordering::Relaxed),
            self.samples.swap(0, Ordering::Relaxed),
        )
    }
}

/// The request stream of one session: domain messages in, wire messages
/// out (tonic's stream type). What the transport takes is converted then,
/// and counted as sent; when it lets go of the stream, whatever is still
/// queued is counted as lost, never converted.
#[derive(Debug)]
struct Outgoing {
    rx: mpsc::Receiver<ToCollector>,
    lost: Arc<Lost>,
    metrics: Arc<AgentMetrics>,
}

impl Stream for Outgoing {
    type Item = v1::AgentMessage;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|next| {
            next.map(|msg| {
                let samples = match &msg {
                    ToCollector::Batch(b) => b.samples.len(),
                    ToCollector::Addresses(_) => {
                        self.metrics.addresses_sent();
                        0
                    }
                    _ => 0,
                };
                let wire = agent_message_to_wire(msg);
                self.metrics
                    .sent(prost::Message::encoded_len(&wire), samples);
                wire
            })
        })
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        self.rx.close();
        while let Ok(msg) = self.rx.try_recv() {
            if let ToCollector::Batch(b) = msg {
                self.lost.add(b.samples.len());
            }
        }
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// The collectors' URLs, as given (at least one).
    pub collectors: Vec<String>,
    /// TLS settings for https:// collectors.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    pub identity: Identity,
    /// The namespaces' addresses as they are now.
    pub addresses: crate::addresses::Current,
    pub backoff_max: Duration,
    /// Where the outgoing streams count what they send.
    pub metrics: Arc<AgentMetrics>,
}

/// Waits until shutdown is asked for (or its sender is gone).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// How a session ended.
enum End {
    /// It never got a stream.
    Failed(String),
    /// The collector refused its Hello: another machine's agent holds this
    /// host name (the collector's message names both machines).
    Refused(String),
    /// It had a stream, which then ended or broke.
    Lost(String),
    Shutdown,
}

impl From<String> for End {
    fn from(error: String) -> End {
        End::Failed(error)
    }
}

/// How an opening stream the collector answered with `status` ended: a
/// refused Hello (ALREADY_EXISTS: the host name is another machine's) is
/// told apart from a failure to reach the collector.
fn refused_or_failed(status: tonic::Status) -> End {
    if status.code() == tonic::Code::AlreadyExists {
        End::Refused(status.message().to_string())
    } else {
        End::Failed(status_text(&status))
    }
}

/// Runs the link until shutdown.
pub async fn run(
    cfg: LinkConfig,
    events: mpsc::Sender<LinkEvent>,
    lost: Arc<Lost>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(backoff::FIRST_RETRY, cfg.backoff_max);
    let mut rotation = Rotation::new(cfg.collectors.clone());
    // The collector of the latest stream, to tell a switch.
    let mut streamed: Option<Target> = None;
    let mut session = 0u64;
    let mut failures = 0u32;
    loop {
        let next = tokio::select! {
            next = rotation.next() => next,
            _ = stopping(&mut shutdown) => return,
        };
        let end = match next {
            Err(error) => {
                failures += 1;
                tracing::warn!(collectors = ?rotation.urls(), failures, %error, "no collector address");
                None
            }
            Ok(target) => {
                session += 1;
                let started = Instant::now();
                let end = one_session(&cfg, &target, &mut streamed, session, &events, &lost, &mut shutdown)
                    .await;
                Some((target, started, end))
            }
        };
        match end {
            None => {}
            Some((_, _, End::Shutdown)) => return,
            Some((target, _, End::Failed(error))) => {
                failures += 1;
                tracing::warn!(collector = %target.url, address = %target.addr, session, failures, %error, "cannot reach the collector");
            }
            Some((target, _, End::Refused(error))) => {
                failures += 1;
                cfg.metrics.hello_refused();
                tracing::error!(collector = %target.url, address = %target.addr, session, failures, %error, "the collector refused this agent's hello: its host name is another machine's; retrying, in case that one goes");
            }
            Some((target, started, End::Lost(error))) => {
                if events.send(LinkEvent::Down { session }).await.is_err() {
                    return;
                }
                let up = started.elapsed();
                if up >= STABLE {
                    backoff.reset();
                    failures = 0;
                }
                failures += 1;
                tracing::warn!(collector = %target.url, address = %target.addr, session, up_ms = up.as_millis() as u64, %error, "disconnected from the collector");
            }
        }
        let delay = backoff.next_delay();
        tracing::info!(delay_ms = delay.as_millis() as u64, failures, "reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopping(&mut shutdown) => return,
        }
    }
}

/// One TCP connection to `addr`, within [`CONNECT_TIMEOUT`].
async fn dial(
    addr: std::net::SocketAddr,
) -> std::io::Result<hyper_util::rt::TokioIo<tokio::net::TcpStream>> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out"))??;
    stream.set_nodelay(true)?;
    Ok(hyper_util::rt::TokioIo::new(stream))
}

async fn one_session(
    cfg: &LinkConfig,
    target: &Target,
    streamed: &mut Option<Target>,
    session: u64,
    events: &mpsc::Sender<LinkEvent>,
    lost: &Arc<Lost>,
    shutdown: &mut watch::Receiver<bool>,
) -> End {
    let mut addresses = cfg.addresses.clone();
    let open = async {
        let mut endpoint =
            Endpoint::from_shared(target.url.clone()).map_err(|e| e.to_string())?;
        if let Some(tls) = &cfg.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| format!("TLS settings: {}", error_chain(&e)))?;
        }
        let endpoint = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        // Dials the candidate's address whatever URI tonic asks for: the
        // URI stays the URL, so TLS checks the URL's name (or
        // --tls-server-name) and the request's authority is the URL's.
        let addr = target.addr;
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_: tonic::codegen::http::Uri| {
                dial(addr)
            }))
            .await
            .map_err(|e| error_chain(&e))?;
        let identity = cfg.identity.clone();
        // The addresses as they are now; a change after this goes in an
        // Addresses message (when the Welcome reads them).
        let namespaces = addresses.borrow_and_update().clone();
        let hello = tokio::task::spawn_blocking(move || identity.hello_with(namespaces))
            .await
            .map_err(|e| format!("gathering the hello: {e}"))?;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        tx.try_send(ToCollector::Hello(hello))
            .map_err(|e| format!("queueing the hello: {e}"))?;
        let outgoing = Outgoing {
            rx,
            lost: lost.clone(),
            metrics: cfg.metrics.clone(),
        };
        let response = IngestClient::new(channel)
            .stream(outgoing)
            .await
            .map_err(refused_or_failed)?;
        Ok::<_, End>((response.into_inner(), tx))
    };
    let (mut inbound, tx) = tokio::select! {
        opened = open => match opened {
            Ok(pair) => pair,
            Err(end) => return end,
        },
        _ = stopping(shutdown) => return End::Shutdown,
    };
    let switched = streamed.as_ref().is_some_and(|before| before != target);
    if switched {
        tracing::info!(collector = %target.url, address = %target.addr, session, from = %streamed.as_ref().map_or(String::new(), |t| t.to_string()), "streaming to another collector");
    } else {
        tracing::info!(collector = %target.url, address = %target.addr, session, "streaming to the collector");
    }
    cfg.metrics.collector(target, switched);
    *streamed = Some(target.clone());
    let up = LinkEvent::Up {
        session,
        tx: tx.clone(),
    };
    if events.send(up).await.is_err() {
        return End::Shutdown;
    }
    // Whether the collector reads address changes (its Welcome says), and
    // whether one is waiting for room on the stream.
    let (mut reads_addresses, mut announce) = (false, false);
    loop {
        let msg = tokio::select! {
            msg = inbound.message() => msg,
            changed = addresses.changed(), if reads_addresses && !announce => {
                // Err: the addresses are no longer followed (shutdown).
                announce = changed.is_ok();
                reads_addresses = changed.is_ok();
                continue;
            }
            permit = tx.reserve(), if announce => {
                announce = false;
                if let Ok(permit) = permit {
                    // The latest: changes since the wake-up go with it.
                    let now = addresses.borrow_and_update().clone();
                    tracing::debug!(session, namespaces = now.len(), "announcing the addresses");
                    permit.send(ToCollector::Addresses(now));
                }
                // Else the stream let go; its end comes from `inbound`.
                continue;
            }
            _ = stopping(shutdown) => break,
        };
        let msg = match msg {
            Ok(Some(msg)) => collector_message_from_wire(msg),
            Ok(None) => return End::Lost("the collector ended the stream".into()),
            Err(status) => return End::Lost(status_text(&status)),
        };
        let event = match msg {
            Ok(Some(FromCollector::Welcome(w))) => {
                tracing::info!(session, protocol = w.protocol, collector_version = %w.collector_version, reads_addresses = w.reads_addresses, "welcomed");
                reads_addresses = w.reads_addresses;
                continue;
            }
            Ok(Some(FromCollector::Request(ToAgent::Watch(flow)))) => {
                tracing::debug!(session, %flow, "watch");
                LinkEvent::Watch(flow)
            }
            Ok(Some(FromCollector::Request(ToAgent::Unwatch(flow)))) => {
                tracing::debug!(session, %flow, "unwatch");
                LinkEvent::Unwatch(flow)
            }
            Ok(Some(FromCollector::Request(ToAgent::Translate(flow)))) => {
                tracing::debug!(session, %flow, "translate");
                LinkEvent::Translate(flow)
            }
            Ok(None) => {
                tracing::debug!(session, "empty or unknown message from the collector");
                continue;
            }
            // The error names the field: watch.flow, unwatch.flow.local...
            Err(e) => {
                tracing::warn!(session, error = %e, "malformed message from the collector ignored");
                continue;
            }
        };
        if events.send(event).await.is_err() {
            return End::Shutdown;
        }
    }
    // The run loop has dropped its sender, and with ours that ends our
    // side of the stream; give the collector a moment to end its.
    drop(tx);
    let drain = async { while let Ok(Some(_)) = inbound.message().await {} };
    let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
    End::Shutdown
}

fn status_text(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(source) = std::error::Error::source(status) {
        text.push_str(&format!(" ({})", error_chain(source)));
    }
    text
}

#[cfg(test)]
mod tests {
    use tcpstall_common::{AgentBatch, Heartbeat, SampleReason};

    use super::*;

    /// A batch of `n` samples.
    fn batch(n: usize) -> ToCollector {
        let s = crate::run::tests::sample(1);
        ToCollector::Batch(AgentBatch {
            samples: vec![(SampleReason::Suspect, s); n],
            ..AgentBatch::default()
        })
    }

    #[tokio::test]
    async fn what_the_transport_takes_is_counted_as_sent() {
        use tokio_stream::StreamExt;
        let metrics = Arc::new(AgentMetrics::default());
        let (tx, rx) = mpsc::channel(4);
        let heartbeat = ToCollector::Heartbeat(Heartbeat {
            mono: Duration::from_micros(5),
            ..Heartbeat::default()
        });
        let wire = [batch(3), heartbeat.clone()].map(agent_message_to_wire);
        let bytes: usize = wire.iter().map(prost::Message::encoded_len).sum();
        tx.try_send(batch(3)).expect("room");
        tx.try_send(heartbeat).expect("room");
        drop(tx);
        let mut out = Outgoing {
            rx,
            lost: Arc::new(Lost::default()),
            metrics: metrics.clone(),
        };
        let mut taken = Vec::new();
        while let Some(m) = out.next().await {
            taken.push(m);
        }
        assert_eq!(taken, wire, "converted as they are taken, in order");
        let text = metrics.render();
        assert!(
            text.contains("tcpstall_agent_sent_messages_total 2\n"),
            "{text}"
        );
        assert!(
            text.contains("tcpstall_agent_sent_samples_total 3\n"),
            "{text}"
        );
        let line = format!("tcpstall_agent_sent_bytes_total {bytes}\n");
        assert!(bytes > 0 && text.contains(&line), "{line} in {text}");
    }

    #[test]
    fn a_dropped_stream_counts_what_it_never_sent() {
        let lost = Arc::new(Lost::default());
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(batch(2)).expect("room");
        tx.try_send(ToCollector::Heartbeat(Heartbeat::default()))
            .expect("room");
        tx.try_send(batch(3)).expect("room");
        drop(Outgoing {
            rx,
            lost: lost.clone(),
            metrics: Arc::new(AgentMetrics::default()),
        });
        assert_eq!(lost.take(), (2, 5), "heartbeats are not batches");
        assert_eq!(lost.take(), (0, 0));
        assert!(tx.try_send(batch(1)).is_err(), "closed");
    }
}
