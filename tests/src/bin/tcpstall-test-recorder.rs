//! A recording collector in a process of its own, for the tests that kill
//! the collector an agent streams to (issue 24): a real gRPC Ingest
//! service on `--listen ADDR` that writes one line on stdout for every
//! message an agent sends, as it arrives, so that what a process killed
//! with SIGKILL had received is what it printed:
//!
//! ```text
//! listening 127.0.0.1:40123
//! hello host=web-17
//! batch mono_us=1234 samples=1 dropped_batches=0 dropped_samples=0
//! heartbeat mono_us=1334 dropped_batches=0 dropped_samples=0
//! ```
//!
//! It answers nothing (no Welcome, no requests); an agent streams to it as
//! to a collector of the first protocol version.

use std::io::Write;
use std::process::ExitCode;

use tcpstall_proto::v1::ingest_server::{Ingest, IngestServer};
use tcpstall_proto::v1::{self, agent_message::Body};
use tonic::{Request, Response, Status, Streaming};

struct Service;

/// The line that says `msg`.
fn line(msg: &v1::AgentMessage) -> String {
    match &msg.body {
        Some(Body::Hello(h)) => format!("hello host={}", h.host),
        Some(Body::Batch(b)) => format!(
            "batch mono_us={} samples={} dropped_batches={} dropped_samples={}",
            b.mono_us,
            b.samples.len(),
            b.dropped_batches,
            b.dropped_samples
        ),
        Some(Body::Heartbeat(h)) => format!(
            "heartbeat mono_us={} dropped_batches={} dropped_samples={}",
            h.mono_us, h.dropped_batches, h.dropped_samples
        ),
        Some(_) => "other".to_string(),
        None => "empty".to_string(),
    }
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
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            // The response stream stays open while the agent's does.
            let _tx = tx;
            while let Ok(Some(m)) = inbound.message().await {
                let mut out = std::io::stdout().lock();
                // Written and flushed before the next message is read.
                if writeln!(out, "{}", line(&m))
                    .and_then(|()| out.flush())
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let listen = args
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1))
        .map_or("127.0.0.1:0", String::as_str);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tcpstall-test-recorder: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        println!("listening {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        tonic::transport::Server::builder()
            .add_service(IngestServer::new(Service))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .map_err(std::io::Error::other)
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcpstall-test-recorder: {listen}: {e}");
            ExitCode::FAILURE
        }
    }
}
