//! A collector that records what agents send, for tests of an agent's
//! stream: a real gRPC Ingest service on a loopback port, on its own
//! runtime, keeping every message as it arrived, and sending what the test
//! asks (watch, translate) on the newest stream.

use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tcpstall_proto::v1::ingest_server::{Ingest, IngestServer};
use tcpstall_proto::v1::{self, collector_message};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

type ToAgent = mpsc::Sender<Result<v1::CollectorMessage, Status>>;

/// What every stream sent, in order, and the newest stream's sender.
#[derive(Debug, Default)]
struct Log {
    msgs: Vec<v1::AgentMessage>,
    tx: Option<ToAgent>,
}

#[derive(Debug, Clone, Default)]
struct Shared(Arc<(Mutex<Log>, Condvar)>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Log> {
        self.0
             .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn change(&self, f: impl FnOnce(&mut Log)) {
        f(&mut self.lock());
        self.0 .1.notify_all();
    }
}

#[derive(Debug)]
struct Service {
    shared: Shared,
}

#[tonic::async_trait]
impl Ingest for Service {
    type StreamStream =
        tokio_stream::wrappers::ReceiverStream<Result<v1::CollectorMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        self.shared.change(|log| log.tx = Some(tx));
        let shared = self.shared.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                shared.change(|log| log.msgs.push(m));
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
}

/// The recording collector; stopped when dropped.
#[derive(Debug)]
pub struct Recorder {
    runtime: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
    shared: Shared,
}

impl Recorder {
    /// Listens on a free loopback port.
    pub fn start() -> Recorder {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("recorder runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the recorder");
        let addr = listener.local_addr().expect("recorder address");
        let shared = Shared::default();
        let service = IngestServer::new(Service {
            shared: shared.clone(),
        });
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Recorder {
            runtime: Some(runtime),
            addr,
            shared,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends a request to the agent on the newest stream.
    pub fn send(&self, body: collector_message::Body) {
        let tx = self.shared.lock().tx.clone().expect("an agent's stream");
        tx.try_send(Ok(v1::CollectorMessage { body: Some(body) }))
            .expect("room to send");
    }

    /// Hands `f` every message received so far (all streams, in order).
    pub fn seen<T>(&self, f: impl FnOnce(&[v1::AgentMessage]) -> T) -> T {
        f(&self.shared.lock().msgs)
    }

    /// Waits until `check` finds what it wants in every message received
    /// so far (all streams, in order); panics with `what` after `within`.
    pub fn wait<T>(
        &self,
        what: &str,
        within: Duration,
        mut check: impl FnMut(&[v1::AgentMessage]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        let mut log = self.shared.lock();
        loop {
            if let Some(v) = check(&log.msgs) {
                return v;
            }
            let now = Instant::now();
            if now >= deadline {
                let n = log.msgs.len();
                drop(log);
                panic!("timed out after {within:?} waiting for {what} ({n} messages received)");
            }
            log = self
                .shared
                .0
                 .1
                .wait_timeout(log, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// The batches among `msgs`.
pub fn batches(msgs: &[v1::AgentMessage]) -> impl Iterator<Item = &v1::Batch> {
    msgs.iter().filter_map(|m| match &m.body {
        Some(v1::agent_message::Body::Batch(b)) => Some(b),
        _ => None,
    })
}

/// The first Hello among `msgs`.
pub fn hello(msgs: &[v1::AgentMessage]) -> Option<&v1::Hello> {
    msgs.iter().find_map(|m| match &m.body {
        Some(v1::agent_message::Body::Hello(h)) => Some(h),
        _ => None,
    })
}

/// Polls reported among `msgs`: batches and heartbeats (a poll split in
/// several batches counts as each of them).
pub fn polls(msgs: &[v1::AgentMessage]) -> usize {
    msgs.iter()
        .filter(|m| {
            matches!(
                m.body,
                Some(v1::agent_message::Body::Batch(_) | v1::agent_message::Body::Heartbeat(_))
            )
        })
        .count()
}
