//! A hand-driven agent over real gRPC, for saying what a real agent never
//! would, and for making stored episodes with exact numbers.

use std::time::Duration;

use tcpstall_common::{EndSample, FlowTuple, Opened, Positions, TcpState};
use tcpstall_proto::convert;
use tcpstall_proto::v1::{self, agent_message, ingest_client::IngestClient};
use tokio::sync::mpsc;
use tonic::Streaming;

/// An open agent stream.
#[derive(Debug)]
pub struct FakeAgent {
    pub tx: mpsc::Sender<v1::AgentMessage>,
    pub rx: Streaming<v1::CollectorMessage>,
}

pub fn hello(host: &str, addrs: &[&str]) -> v1::AgentMessage {
    v1::AgentMessage {
        body: Some(agent_message::Body::Hello(v1::Hello {
            protocol: tcpstall_proto::PROTOCOL_VERSION,
            host: host.into(),
            agent_version: "test".into(),
            kernel: "6.18-test".into(),
            boot_id: "boot".into(),
            namespaces: vec![v1::Namespace {
                label: "host".into(),
                inode: 1,
                addresses: addrs
                    .iter()
                    .map(|a| convert::ip_to_wire(a.parse().expect("ip")))
                    .collect(),
            }],
            probes: Some(v1::Probes {
                sock_diag: true,
                ..Default::default()
            }),
            interval_ms: 500,
            ..Default::default()
        })),
    }
}

/// A Hello as [`hello`]'s, from the machine `machine_id`.
pub fn hello_of(host: &str, machine_id: &str, addrs: &[&str]) -> v1::AgentMessage {
    let mut msg = hello(host, addrs);
    if let Some(agent_message::Body::Hello(h)) = &mut msg.body {
        h.machine_id = machine_id.into();
    }
    msg
}

/// Opens a stream and sends `first`.
pub async fn connect(url: &str, first: v1::AgentMessage) -> Result<FakeAgent, tonic::Status> {
    let mut client = IngestClient::connect(url.to_string())
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let (tx, rx) = mpsc::channel(16);
    tx.send(first)
        .await
        .map_err(|_| tonic::Status::internal("send"))?;
    let resp = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?;
    Ok(FakeAgent {
        tx,
        rx: resp.into_inner(),
    })
}

/// A stuck sender: `sendq` bytes queued at `snd_una`, all in flight.
pub fn stuck(flow: FlowTuple, cookie: u64, unchanged_ms: u64) -> EndSample {
    let (una, q) = (10_000u64, 5_000u32);
    EndSample {
        flow,
        netns: "host".into(),
        state: TcpState::Established,
        cookie,
        inode: 1,
        opened: Some(Opened::Passive),
        pos: Positions {
            sendq: q,
            recvq: 0,
            notsent: Some(0),
            inflight: Some(q),
            snd_una: Some(una),
            snd_nxt: Some(una + u64::from(q)),
            write_seq: Some(una + u64::from(q)),
            rcv_nxt: Some(10),
            copied: Some(10),
            snd_wnd: Some(65536),
            rcv_wnd: Some(65536),
            snd_wscale: Some(7),
            rcv_wscale: Some(7),
        },
        unchanged_ms,
        timer: None,
        timer_expires_ms: 0,
        retransmits: Some(3),
        probes: Some(0),
        backoff: Some(3),
        ca_state: Some(4),
        rto_us: None,
        rtt_us: None,
        snd_cwnd: Some(1),
        unacked: None,
        lost: None,
        retrans: None,
        total_retrans: None,
        last_data_sent_ms: None,
        last_data_recv_ms: None,
        last_ack_recv_ms: None,
        bytes_retrans: None,
        rmem_alloc: None,
        rcvbuf: None,
        cork: None,
        cork_source: None,
        nodelay: None,
        nodelay_source: None,
        owner: None,
        owner_missing: None,
        absolute: None,
        translation: None,
    }
}

pub fn batch(mono: Duration, samples: Vec<v1::Sample>) -> v1::AgentMessage {
    v1::AgentMessage {
        body: Some(agent_message::Body::Batch(v1::Batch {
            mono_us: u64::try_from(mono.as_micros()).unwrap_or(u64::MAX),
            connections: 10,
            samples,
            ..Default::default()
        })),
    }
}

pub fn suspect(s: &EndSample) -> v1::Sample {
    convert::sample_to_wire(s, v1::SampleReason::Suspect)
}

/// Waits for the stream's end and returns its status (or OK's absence).
pub async fn ending(agent: &mut FakeAgent) -> Option<tonic::Status> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, agent.rx.message()).await {
            Err(_) => panic!("stream did not end within 10s"),
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => return None,
            Ok(Err(status)) => return Some(status),
        }
    }
}
