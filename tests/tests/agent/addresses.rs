//! Addresses that change after the agent started (issue 23), with the
//! real agent reading a namespace the test made and a collector inside the
//! test whose Welcome reads announcements or not: an address added or
//! removed is announced at once to a collector that reads them; an older
//! collector (which would refuse the message) gets none, and learns the
//! address from the next Hello. Needs root.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tcpstall_proto::convert::ip_from_wire;
use tcpstall_proto::v1::ingest_server::{Ingest, IngestServer};
use tcpstall_proto::v1::{self, agent_message, collector_message};
use tcpstall_tests::{require_root, run, scrape_until, wait_for, AgentProcess, TestNetns};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

/// Generous: a busy machine slows a debug agent's start.
const DEADLINE: Duration = Duration::from_secs(30);

/// What one stream sent, and the way to end it from the collector's side.
#[derive(Debug, Default)]
struct StreamLog {
    msgs: Vec<v1::AgentMessage>,
    tx: Option<mpsc::Sender<Result<v1::CollectorMessage, Status>>>,
}

impl StreamLog {
    fn hello(&self) -> Option<&v1::Hello> {
        match self.msgs.first()?.body.as_ref()? {
            agent_message::Body::Hello(h) => Some(h),
            _ => None,
        }
    }

    fn announcements(&self) -> Vec<&v1::Addresses> {
        self.msgs
            .iter()
            .filter_map(|m| match &m.body {
                Some(agent_message::Body::Addresses(a)) => Some(a),
                _ => None,
            })
            .collect()
    }
}

type Streams = Arc<Mutex<Vec<StreamLog>>>;

fn lock(streams: &Streams) -> MutexGuard<'_, Vec<StreamLog>> {
    streams.lock().expect("streams lock")
}

/// Says Welcome, as a collector that reads announcements (`reads`) or
/// one from before them, then records what arrives.
#[derive(Debug)]
struct Service {
    streams: Streams,
    reads: bool,
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
        let (tx, rx) = mpsc::channel(4);
        let welcome = v1::CollectorMessage {
            body: Some(collector_message::Body::Welcome(v1::Welcome {
                protocol: tcpstall_proto::PROTOCOL_VERSION,
                collector_version: "test".into(),
                reads_addresses: self.reads,
            })),
        };
        tx.try_send(Ok(welcome))
            .map_err(|_| Status::internal("welcome"))?;
        let index = {
            let mut streams = lock(&self.streams);
            streams.push(StreamLog {
                msgs: Vec::new(),
                tx: Some(tx),
            });
            streams.len() - 1
        };
        let streams = self.streams.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                lock(&streams)[index].msgs.push(m);
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
}

/// The test's collector on its own runtime, stopped when dropped.
struct FakeCollector {
    runtime: Option<tokio::runtime::Runtime>,
    url: String,
    streams: Streams,
}

impl FakeCollector {
    fn start(reads: bool) -> FakeCollector {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("collector runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let streams = Streams::default();
        let service = IngestServer::new(Service {
            streams: streams.clone(),
            reads,
        });
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        FakeCollector {
            runtime: Some(runtime),
            url,
            streams,
        }
    }

    /// Waits until `check` finds what it wants in the streams.
    fn wait<T>(&self, what: &str, check: impl Fn(&[StreamLog]) -> Option<T>) -> T {
        wait_for(what, DEADLINE, || check(&lock(&self.streams)))
    }

    /// Ends stream `i` from the collector's side.
    fn end(&self, i: usize) {
        lock(&self.streams)[i].tx = None;
    }
}

impl Drop for FakeCollector {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// A namespace with one interface up (a veth pair inside it: this kernel
/// may have no dummy interfaces), no address of ours on it yet.
fn host() -> TestNetns {
    let ns = TestNetns::new("addr");
    run(
        "ip",
        &[
            "-n", &ns.name, "link", "add", "a0", "type", "veth", "peer", "name", "a1",
        ],
    );
    run("ip", &["-n", &ns.name, "link", "set", "a0", "up"]);
    ns
}

fn ips(ns: &v1::Namespace) -> Vec<IpAddr> {
    ns.addresses
        .iter()
        .filter_map(|ip| ip_from_wire(Some(ip), "ip").ok())
        .collect()
}

/// The one namespace's addresses of an announcement.
fn announced(a: &v1::Addresses) -> Vec<IpAddr> {
    a.namespaces.iter().flat_map(ips).collect()
}

fn agent(url: &str, ns: &TestNetns) -> AgentProcess {
    AgentProcess::start(
        url,
        &[
            "--host",
            "addr-test",
            "--netns",
            &ns.name,
            "--interval",
            "200ms",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )
}

const ADDED: &str = "198.18.251.7";

#[test]
fn an_address_added_or_removed_is_announced_to_a_collector_that_reads_them() {
    require_root!();
    let ns = host();
    let collector = FakeCollector::start(true);
    let agent = agent(&collector.url, &ns);
    let hello = collector.wait("a hello", |s| s.first()?.hello().cloned());
    assert_eq!(hello.namespaces.len(), 1);
    let added: IpAddr = ADDED.parse().expect("ip");
    assert!(!ips(&hello.namespaces[0]).contains(&added));

    run(
        "ip",
        &[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{ADDED}/24"),
            "dev",
            "a0",
        ],
    );
    let at = Instant::now();
    let first = collector.wait("the added address announced", |s| {
        s.first()?
            .announcements()
            .into_iter()
            .find(|a| announced(a).contains(&added))
            .cloned()
    });
    eprintln!("announced {:?} after the address was added", at.elapsed());
    // Every namespace read, named as in the Hello, every address of it.
    assert_eq!(first.namespaces.len(), 1);
    assert_eq!(first.namespaces[0].label, hello.namespaces[0].label);
    assert_eq!(first.namespaces[0].inode, hello.namespaces[0].inode);
    let mut want = ips(&hello.namespaces[0]);
    want.push(added);
    want.sort_unstable();
    assert_eq!(announced(&first), want);

    run(
        "ip",
        &[
            "-n",
            &ns.name,
            "addr",
            "del",
            &format!("{ADDED}/24"),
            "dev",
            "a0",
        ],
    );
    collector.wait("the removal announced", |s| {
        let all = s.first()?.announcements();
        (all.len() >= 2 && !announced(all[all.len() - 1]).contains(&added)).then_some(())
    });
    let metrics = wait_for("the agent's metrics address", DEADLINE, || {
        agent.metrics_addr()
    });
    scrape_until(metrics, "two announcements counted", DEADLINE, |get| {
        get("tcpstall_agent_address_announcements_total") == 2.0
    });
    assert_eq!(lock(&collector.streams).len(), 1, "one stream throughout");
}

#[test]
fn an_older_collector_gets_no_announcement_and_the_next_hello_has_the_address() {
    require_root!();
    let ns = host();
    let collector = FakeCollector::start(false);
    let agent = agent(&collector.url, &ns);
    collector.wait("a hello", |s| s.first()?.hello().cloned());
    wait_for("the agent welcomed", DEADLINE, || {
        agent
            .logged(&["welcomed", "reads_addresses=false"])
            .then_some(())
    });
    run(
        "ip",
        &[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{ADDED}/24"),
            "dev",
            "a0",
        ],
    );
    wait_for("the agent saw the change", DEADLINE, || {
        agent.logged(&["addresses changed", ADDED]).then_some(())
    });
    // Five more messages (polls) after it: none is an announcement.
    let seen = lock(&collector.streams)[0].msgs.len();
    collector.wait("five more polls", |s| {
        (s[0].msgs.len() >= seen + 5).then_some(())
    });
    assert!(
        lock(&collector.streams)[0].announcements().is_empty(),
        "an older collector gets no announcement"
    );

    // Its next stream's Hello says the address.
    collector.end(0);
    let hello = collector.wait("a second hello", |s| s.get(1)?.hello().cloned());
    let added: IpAddr = ADDED.parse().expect("ip");
    assert!(
        ips(&hello.namespaces[0]).contains(&added),
        "{:?}",
        hello.namespaces
    );
    assert!(lock(&collector.streams)[1].announcements().is_empty());
}
