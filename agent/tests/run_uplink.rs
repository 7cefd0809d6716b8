//! `tcpstall-agent run` against a real gRPC collector on loopback: the real
//! binary as a child process, real sockets, a tiny collector inside the
//! test that records what arrives and can ask for watches.
//!
//! Every wait is on a condition with a deadline; the agent process and the
//! test collector are stopped by guards, so nothing outlives a failure.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tcpstall_proto::convert::{endpoint_from_wire, flow_from_wire, flow_to_wire};
use tcpstall_proto::v1::ingest_server::{Ingest, IngestServer};
use tcpstall_proto::v1::{self, agent_message, collector_message};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

const INTERVAL: Duration = Duration::from_millis(200);
/// Generous: a busy host (parallel builds, a benchmark holding 100k
/// sockets) slows a debug agent's polls to seconds; a healthy run of this
/// file takes a few seconds.
const DEADLINE: Duration = Duration::from_secs(90);

// ------------------------------------------------------------ the collector

/// One stream as the test collector saw it.
#[derive(Debug, Default)]
struct StreamLog {
    /// What arrived, each with the agent's clock (CLOCK_MONOTONIC, µs)
    /// when it did.
    msgs: Vec<(u64, v1::AgentMessage)>,
    /// Sends to the agent; taken when the stream ends.
    tx: Option<mpsc::Sender<Result<v1::CollectorMessage, Status>>>,
    /// How the agent's side ended: Ok for a clean end.
    end: Option<Result<(), String>>,
}

impl StreamLog {
    fn batches(&self) -> impl Iterator<Item = &v1::Batch> {
        self.msgs.iter().filter_map(|(_, m)| match &m.body {
            Some(agent_message::Body::Batch(b)) => Some(b),
            _ => None,
        })
    }

    fn hello(&self) -> Option<&v1::Hello> {
        match self.msgs.first().and_then(|(_, m)| m.body.as_ref()) {
            Some(agent_message::Body::Hello(h)) => Some(h),
            _ => None,
        }
    }
}

/// Everything every stream sent, shared between the server and the test.
#[derive(Debug, Clone, Default)]
struct Recorder(Arc<(Mutex<Vec<StreamLog>>, Condvar)>);

impl Recorder {
    fn lock(&self) -> MutexGuard<'_, Vec<StreamLog>> {
        self.0 .0.lock().expect("recorder lock")
    }

    fn change(&self, f: impl FnOnce(&mut Vec<StreamLog>)) {
        f(&mut self.lock());
        self.0 .1.notify_all();
    }

    /// Waits until `check` finds what it wants in the streams.
    fn wait<T>(&self, what: &str, mut check: impl FnMut(&[StreamLog]) -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        let mut streams = self.lock();
        loop {
            if let Some(v) = check(&streams) {
                return v;
            }
            let now = Instant::now();
            if now >= deadline {
                let summary: Vec<String> = streams
                    .iter()
                    .map(|s| format!("{} messages, end {:?}", s.msgs.len(), s.end))
                    .collect();
                drop(streams);
                panic!("timed out waiting for {what}; streams: {summary:?}");
            }
            streams = self
                .0
                 .1
                .wait_timeout(streams, deadline - now)
                .expect("recorder lock")
                .0;
        }
    }

    /// Sends a message to the agent on the newest stream.
    fn send(&self, body: collector_message::Body) {
        let tx = self
            .lock()
            .last()
            .and_then(|s| s.tx.clone())
            .expect("an open stream");
        tx.try_send(Ok(v1::CollectorMessage { body: Some(body) }))
            .expect("room to send");
    }
}

#[derive(Debug)]
struct Service {
    rec: Recorder,
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
        let (tx, rx) = mpsc::channel(16);
        let mut index = 0;
        self.rec.change(|streams| {
            index = streams.len();
            streams.push(StreamLog {
                tx: Some(tx),
                ..StreamLog::default()
            });
        });
        let rec = self.rec.clone();
        tokio::spawn(async move {
            let end = loop {
                match inbound.message().await {
                    Ok(Some(m)) => {
                        let at = mono_us();
                        rec.change(|s| s[index].msgs.push((at, m)));
                    }
                    Ok(None) => break Ok(()),
                    Err(status) => break Err(status.to_string()),
                }
            };
            rec.change(|s| {
                s[index].end = Some(end);
                s[index].tx = None;
            });
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
}

/// A collector on its own runtime; dropping it is as abrupt as a crash.
struct TestCollector {
    runtime: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
}

impl TestCollector {
    fn start(addr: SocketAddr, rec: &Recorder) -> TestCollector {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("collector runtime");
        // The port of a collector just stopped may take a moment to free.
        let deadline = Instant::now() + DEADLINE;
        let listener = loop {
            match runtime.block_on(tokio::net::TcpListener::bind(addr)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("binding {addr}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("binding {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().expect("bound address");
        let service = IngestServer::new(Service { rec: rec.clone() });
        runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        TestCollector {
            runtime: Some(runtime),
            addr,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TestCollector {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

// ----------------------------------------------------------------- the agent

/// The agent as a child process, killed when dropped.
struct Agent {
    child: Child,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Agent {
    fn start(collector: &str, extra: &[&str]) -> Agent {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tcpstall-agent"))
            .args(["run", "--collector", collector, "--interval", "200ms"])
            .args(extra)
            .env("RUST_LOG", "tcpstall_agent=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcpstall-agent");
        let log: Arc<(Mutex<Vec<String>>, Condvar)> = Arc::default();
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("agent: {line}");
                sink.0.lock().expect("log lock").push(line);
                sink.1.notify_all();
            }
        });
        Agent { child, log }
    }

    /// How many log lines so far contain `needle`.
    fn count_log(&self, needle: &str) -> usize {
        let lines = self.log.0.lock().expect("log lock");
        lines.iter().filter(|l| l.contains(needle)).count()
    }

    /// The number after `key=` in the latest log line containing `needle`.
    fn last_logged_number(&self, needle: &str, key: &str) -> Option<u64> {
        let lines = self.log.0.lock().expect("log lock");
        let line = lines.iter().rfind(|l| l.contains(needle))?;
        let (_, rest) = line.split_once(&format!(" {key}="))?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }

    /// Waits until `n` log lines contain `needle`.
    fn wait_log(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + DEADLINE;
        let mut lines = self.log.0.lock().expect("log lock");
        while lines.iter().filter(|l| l.contains(needle)).count() < n {
            let now = Instant::now();
            assert!(
                now < deadline,
                "timed out waiting for the agent to log {needle:?} {n} times"
            );
            lines = self
                .log
                .1
                .wait_timeout(lines, deadline - now)
                .expect("log lock")
                .0;
        }
    }

    /// Sends SIGTERM and waits for the exit.
    fn terminate(&mut self) -> ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not exit on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ sockets

/// A loopback connection whose receiver never reads: the sender's queue
/// fills and stays stuck.
struct Stall {
    sender: TcpStream,
    receiver: TcpStream,
}

impl Stall {
    fn new() -> Stall {
        use nix::sys::socket::{setsockopt, sockopt};
        // Small fixed buffers: no autotuning, so the queue settles at once
        // and stays put, whatever the rest of the host is doing.
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
        setsockopt(&listener, sockopt::RcvBuf, &16384).expect("SO_RCVBUF");
        let sender = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (receiver, _) = listener.accept().expect("accept");
        setsockopt(&sender, sockopt::SndBuf, &16384).expect("SO_SNDBUF");
        sender.set_nonblocking(true).expect("nonblocking");
        let chunk = [0x5a_u8; 64 * 1024];
        let mut s = &sender;
        loop {
            match s.write(&chunk) {
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("filling the send queue: {e}"),
            }
        }
        Stall { sender, receiver }
    }

    /// The sender's flow, as the sender's host sees it.
    fn sender_flow(&self) -> (SocketAddr, SocketAddr) {
        (
            self.sender.local_addr().expect("addr"),
            self.sender.peer_addr().expect("addr"),
        )
    }

    fn receiver_flow(&self) -> (SocketAddr, SocketAddr) {
        (
            self.receiver.local_addr().expect("addr"),
            self.receiver.peer_addr().expect("addr"),
        )
    }
}

fn flow_of(s: &v1::Sample) -> Option<(SocketAddr, SocketAddr)> {
    Some((
        endpoint_from_wire(s.local.as_ref(), "local").ok()?,
        endpoint_from_wire(s.remote.as_ref(), "remote").ok()?,
    ))
}

fn reason(s: &v1::Sample) -> v1::SampleReason {
    v1::SampleReason::try_from(s.reason).unwrap_or(v1::SampleReason::Unspecified)
}

fn watch_body(flow: (SocketAddr, SocketAddr)) -> collector_message::Body {
    collector_message::Body::Watch(v1::Watch {
        flow: Some(flow_to_wire(tcpstall_common::FlowTuple::new(
            flow.0, flow.1,
        ))),
        reason: "test".into(),
    })
}

/// CLOCK_MONOTONIC, the agent's clock, in microseconds.
fn mono_us() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    Duration::from(ts).as_micros() as u64
}

// -------------------------------------------------------------------- tests

#[test]
fn hello_comes_first_with_this_hosts_identity_and_addresses() {
    let rec = Recorder::default();
    let collector = TestCollector::start("127.0.0.1:0".parse().expect("addr"), &rec);
    let _agent = Agent::start(&collector.url(), &[]);

    let hello = rec.wait("a hello", |streams| streams.first()?.hello().cloned());
    assert_eq!(hello.protocol, tcpstall_proto::PROTOCOL_VERSION);
    let hostname = nix::unistd::gethostname().expect("hostname");
    assert_eq!(
        hello.host,
        hostname.to_string_lossy(),
        "default host is the hostname"
    );
    assert_eq!(hello.agent_version, env!("CARGO_PKG_VERSION"));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert_eq!(hello.kernel, release.trim());
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot_id");
    assert_eq!(hello.boot_id, boot_id.trim());
    assert_eq!(hello.interval_ms, 200);
    assert!(hello.probes.is_some_and(|p| p.sock_diag));

    assert_eq!(hello.namespaces.len(), 1, "{:?}", hello.namespaces);
    let ns = &hello.namespaces[0];
    let own = std::fs::metadata("/proc/self/ns/net")
        .expect("own netns")
        .ino();
    assert_eq!(ns.inode, own);
    assert!(!ns.label.is_empty());
    let mut announced: Vec<IpAddr> = ns
        .addresses
        .iter()
        .map(|ip| tcpstall_proto::convert::ip_from_wire(Some(ip), "ip").expect("valid address"))
        .collect();
    announced.sort_unstable();
    let mut here: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
        .expect("getifaddrs")
        .filter_map(|ifa| {
            let a = ifa.address?;
            a.as_sockaddr_in()
                .map(|v4| IpAddr::V4(v4.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
        })
        .collect();
    here.sort_unstable();
    here.dedup();
    assert_eq!(announced, here, "every address of every interface");
    assert!(announced.contains(&IpAddr::from([127, 0, 0, 1])));

    // Then polls, never another hello.
    rec.wait("three polls after the hello", |streams| {
        (streams[0].msgs.len() >= 4).then_some(())
    });
    let streams = rec.lock();
    for (_, m) in &streams[0].msgs[1..] {
        assert!(
            matches!(
                m.body,
                Some(agent_message::Body::Batch(_) | agent_message::Body::Heartbeat(_))
            ),
            "{m:?}"
        );
    }
}

#[test]
fn a_stuck_sender_is_a_suspect_and_its_watched_peer_shows_the_same_position() {
    let rec = Recorder::default();
    let collector = TestCollector::start("127.0.0.1:0".parse().expect("addr"), &rec);
    let stall = Stall::new();
    let _agent = Agent::start(&collector.url(), &[]);
    let sender = stall.sender_flow();
    let receiver = stall.receiver_flow();
    assert_eq!(receiver, (sender.1, sender.0));

    // Suspect, with unchanged_ms growing exactly as the agent's clock.
    let suspects: Vec<(u64, v1::Sample)> = rec.wait("three suspect samples in a row", |streams| {
        let found: Vec<(u64, v1::Sample)> = streams
            .first()?
            .batches()
            .flat_map(|b| b.samples.iter().map(move |s| (b.mono_us, s)))
            .filter(|(_, s)| flow_of(s) == Some(sender))
            .map(|(t, s)| (t, s.clone()))
            .collect();
        let last = found.get(found.len().checked_sub(3)?..)?;
        last.iter()
            .all(|(_, s)| reason(s) == v1::SampleReason::Suspect)
            .then(|| last.to_vec())
    });
    for (_, s) in &suspects {
        assert!(s.sendq > 0);
        assert!(
            s.unchanged_ms >= 150,
            "at least one poll: {}",
            s.unchanged_ms
        );
    }
    for w in suspects.windows(2) {
        let (t0, a) = &w[0];
        let (t1, b) = &w[1];
        assert_eq!(a.cookie, b.cookie);
        assert_eq!(
            (a.snd_una, a.write_seq, a.sendq),
            (b.snd_una, b.write_seq, b.sendq)
        );
        let grew = b.unchanged_ms as i64 - a.unchanged_ms as i64;
        let elapsed = ((t1 - t0) / 1000) as i64;
        assert!(
            grew > 0,
            "unchanged_ms grows: {} then {}",
            a.unchanged_ms,
            b.unchanged_ms
        );
        assert!(
            (grew - elapsed).abs() <= 1,
            "grew {grew} ms in {elapsed} ms"
        );
    }

    // The collector asks for the peer end (and for a flow nobody has).
    let nobody: (SocketAddr, SocketAddr) = (
        "127.0.0.1:9".parse().expect("addr"),
        "127.0.0.1:10".parse().expect("addr"),
    );
    rec.send(watch_body(receiver));
    rec.send(watch_body(nobody));
    let (suspect, watched, absent) =
        rec.wait("the sender and its watched peer in one batch", |streams| {
            streams.first()?.batches().find_map(|b| {
                let a = b.samples.iter().find(|s| flow_of(s) == Some(sender))?;
                let w = b.samples.iter().find(|s| flow_of(s) == Some(receiver))?;
                Some((a.clone(), w.clone(), b.absent.clone()))
            })
        });
    assert_eq!(reason(&suspect), v1::SampleReason::Suspect);
    assert_eq!(reason(&watched), v1::SampleReason::Watched);
    assert_eq!(watched.sendq, 0);
    assert!(watched.recvq > 0, "the receiver holds unread bytes");
    assert!(suspect.snd_una.is_some());
    // Issue 6: the cork crosses the wire with the probe that read it, where
    // the host allows one (as root, the BPF probe reads both ends).
    if nix::unistd::geteuid().is_root() && tcpstall_agent::probe::TcpIterProbe::built().is_ok() {
        assert_eq!(suspect.cork, Some(false), "{suspect:?}");
        assert_eq!(suspect.cork_source, v1::FactSource::Bpf as i32);
        assert_eq!(watched.cork, Some(false), "{watched:?}");
        assert_eq!(suspect.nodelay, Some(false), "{suspect:?}");
        assert_eq!(suspect.nodelay_source, v1::FactSource::Bpf as i32);
        let (a, w) = (
            suspect.absolute.as_ref().expect("BPF absolute facts"),
            watched.absolute.as_ref().expect("BPF absolute facts"),
        );
        assert_eq!(a.snd_una, w.rcv_nxt, "the same byte in sequence space");
        assert_eq!(a.write_seq.wrapping_sub(a.snd_una), suspect.sendq, "{a:?}");
    }
    // Both ends are this test's sockets, and the agent runs as the same
    // user with no more privilege: it names this process on both.
    for s in [&suspect, &watched] {
        let owner = s.owner.as_ref().expect("owner found");
        assert_eq!(owner.pid, std::process::id(), "{owner:?}");
        assert!(!owner.command.is_empty(), "{owner:?}");
    }
    assert_eq!(
        suspect.snd_una, watched.rcv_nxt,
        "the receiver acknowledged exactly what the sender saw acknowledged"
    );
    let absent: Vec<_> = absent
        .iter()
        .filter_map(|f| flow_from_wire(Some(f)).ok())
        .collect();
    assert_eq!(
        absent,
        vec![tcpstall_common::FlowTuple::new(nobody.0, nobody.1)],
        "a watched flow with no socket is absent"
    );

    // Unwatched: it stops being reported.
    rec.send(collector_message::Body::Unwatch(v1::Unwatch {
        flow: Some(flow_to_wire(tcpstall_common::FlowTuple::new(
            nobody.0, nobody.1,
        ))),
    }));
    let after = mono_us() + 2 * INTERVAL.as_micros() as u64;
    let later = rec.wait("a batch two polls after the unwatch", |streams| {
        streams
            .first()?
            .batches()
            .find(|b| b.mono_us > after)
            .cloned()
    });
    assert!(later.absent.is_empty(), "{:?}", later.absent);

    // Both go (a reset frees them at once): each gets a Closed, once.
    let sender_cookie = suspect.cookie;
    let receiver_cookie = watched.cookie;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&stall.sender, nix::sys::socket::sockopt::Linger, &linger)
        .expect("SO_LINGER");
    drop(stall);
    rec.wait("closed for both ends", |streams| {
        let closed: Vec<u64> = streams
            .first()?
            .batches()
            .flat_map(|b| b.closed.iter().map(|c| c.cookie))
            .collect();
        (closed.contains(&sender_cookie) && closed.contains(&receiver_cookie)).then_some(())
    });
    let watched_gone = tcpstall_common::FlowTuple::new(receiver.0, receiver.1);
    rec.wait("the watched flow reported absent", |streams| {
        streams
            .first()?
            .batches()
            .any(|b| {
                b.absent
                    .iter()
                    .any(|f| flow_from_wire(Some(f)).ok() == Some(watched_gone))
            })
            .then_some(())
    });
    let streams = rec.lock();
    let closings = streams[0]
        .batches()
        .flat_map(|b| b.closed.iter())
        .filter(|c| c.cookie == sender_cookie || c.cookie == receiver_cookie)
        .count();
    assert_eq!(closings, 2, "one Closed each");
}

#[test]
fn idle_and_healthy_connections_are_never_suspects() {
    let rec = Recorder::default();
    let collector = TestCollector::start("127.0.0.1:0".parse().expect("addr"), &rec);

    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let idle = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (idle_peer, _) = listener.accept().expect("accept");
    let bulk = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (bulk_peer, _) = listener.accept().expect("accept");
    let ours: Vec<SocketAddr> = [&idle, &idle_peer, &bulk, &bulk_peer]
        .iter()
        .map(|s| s.local_addr().expect("addr"))
        .collect();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut bulk = bulk.try_clone().expect("clone");
        std::thread::spawn(move || {
            let chunk = [1u8; 16 * 1024];
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match bulk.write_all(&chunk) {
                    Ok(()) => sent += chunk.len() as u64,
                    Err(_) => break,
                }
            }
            sent
        })
    };
    let reader = {
        let mut peer = bulk_peer.try_clone().expect("clone");
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0u64;
            while let Ok(n) = std::io::Read::read(&mut peer, &mut buf) {
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            got
        })
    };

    let _agent = Agent::start(&collector.url(), &[]);
    let start = mono_us();
    let polls = rec.wait("ten polls", |streams| {
        let n = streams
            .first()?
            .msgs
            .iter()
            .filter(|(_, m)| match &m.body {
                Some(agent_message::Body::Batch(b)) => b.mono_us > start,
                Some(agent_message::Body::Heartbeat(h)) => h.mono_us > start,
                _ => false,
            })
            .count();
        (n >= 10).then_some(n)
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    bulk.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let sent = writer.join().expect("writer");
    let got = reader.join().expect("reader");
    assert!(
        sent > 0 && got > 0,
        "the transfer ran: sent {sent}, got {got}"
    );

    let streams = rec.lock();
    assert!(polls >= 10);
    for b in streams[0].batches() {
        for s in &b.samples {
            let Some((local, _)) = flow_of(s) else {
                continue;
            };
            assert!(
                !ours.contains(&local),
                "an idle or healthy connection was sent: {s:?}"
            );
        }
    }
}

#[test]
fn it_reconnects_by_itself_and_reports_what_it_dropped() {
    let rec = Recorder::default();
    let first = TestCollector::start("127.0.0.1:0".parse().expect("addr"), &rec);
    let addr = first.addr;
    // Something stuck, so that every poll is a batch.
    let stall = Stall::new();
    let sender = stall.sender_flow();
    let mut agent = Agent::start(&first.url(), &["--buffer", "2", "--backoff-max", "1s"]);
    rec.wait("the stall as a suspect", |streams| {
        streams
            .first()?
            .batches()
            .any(|b| b.samples.iter().any(|s| flow_of(s) == Some(sender)))
            .then_some(())
    });

    const DROP_LOG: &str = "buffer full: dropping the oldest batch";
    let drop_logs = agent.count_log(DROP_LOG);
    drop(first);
    let (last_before, dropped_before) = {
        let streams = rec.lock();
        let last = streams[0]
            .batches()
            .last()
            .expect("batches on the first stream");
        (last.mono_us, last.dropped_batches)
    };
    // A few polls pass while cut off: the two-batch buffer overflows.
    agent.wait_log(DROP_LOG, drop_logs + 1);
    let second = TestCollector::start(addr, &rec);
    assert_eq!(second.addr, addr);

    let batches: Vec<v1::Batch> = rec.wait("five batches on a new stream", |streams| {
        let s = streams.get(1)?;
        let b: Vec<v1::Batch> = s.batches().cloned().collect();
        (b.len() >= 5).then_some(b)
    });
    let streams = rec.lock();
    let hello = streams[1]
        .hello()
        .expect("the new stream opens with a hello");
    assert_eq!(hello.host, streams[0].hello().expect("hello").host);
    assert_eq!(
        streams[1]
            .msgs
            .iter()
            .filter(|(_, m)| matches!(m.body, Some(agent_message::Body::Hello(_))))
            .count(),
        1
    );
    let hello_at = streams[1].msgs[0].0;
    drop(streams);

    // The buffered batches first, in order, then the live ones.
    assert!(batches[0].mono_us > last_before);
    for w in batches.windows(2) {
        assert!(w[0].mono_us < w[1].mono_us, "in order");
    }
    // The buffer was full (it overflowed) and keeps two: the agent says
    // how many it had when the new stream opened, and those come first,
    // all polled before the new stream existed. (Counting the batches
    // stamped before the hello arrived would also count a live poll whose
    // tick fell between the stream opening and the hello's arrival.)
    let buffered = agent
        .last_logged_number("connected: sending the buffered batches", "buffered")
        .expect("the agent logs what it had buffered");
    assert!(
        (1..=2).contains(&buffered),
        "the buffer's batches are delivered, at most --buffer of them: {buffered}"
    );
    for b in &batches[..buffered as usize] {
        assert!(b.mono_us < hello_at, "a buffered batch was polled before");
    }

    // The loss is counted, carried by every batch, and adds up: each poll
    // between the last batch before and the first after is a dropped one.
    let total = batches[4].dropped_batches;
    let dropped = total - dropped_before;
    assert!(dropped > 0, "batches were dropped");
    assert!(
        batches[4].dropped_samples >= total,
        "each dropped batch held the suspect: {} samples for {total} batches",
        batches[4].dropped_samples
    );
    for b in &batches {
        assert!(
            b.dropped_batches > dropped_before,
            "every batch carries the count"
        );
        assert!(b.dropped_batches <= total);
    }
    // Polls run on a fixed grid, so the gap between the last batch before
    // and the first after counts the polls in between. Every one of them
    // was dropped (counted), or lost in the broken connection (at most
    // the one in flight).
    let gap = batches[0].mono_us - last_before;
    let polls = (gap as f64 / INTERVAL.as_micros() as f64).round() as u64;
    let missing = polls.saturating_sub(1);
    eprintln!(
        "cut off for {gap} us: {missing} polls missing, {dropped} dropped, {buffered} from the buffer; \
         polled at (us after the last batch before) {:?}, hello at {}",
        batches.iter().map(|b| b.mono_us - last_before).collect::<Vec<_>>(),
        hello_at - last_before
    );
    // On a host so busy that polls ran late, the grid miscounts: check
    // the exact count only when the polls kept time.
    let regular = batches.windows(2).all(|w| {
        let d = w[1].mono_us - w[0].mono_us;
        d > INTERVAL.as_micros() as u64 * 3 / 4 && d < INTERVAL.as_micros() as u64 * 5 / 4
    });
    if regular {
        assert!(
            dropped <= missing && missing <= dropped + 1,
            "{missing} polls missing between the streams, {dropped} counted as dropped"
        );
    } else {
        eprintln!("polls did not keep time on this busy host: exact count not checked");
    }

    let status = agent.terminate();
    assert!(status.success(), "{status:?}");
    drop(stall);
}

#[test]
fn sigterm_closes_the_stream_and_exits_zero() {
    let rec = Recorder::default();
    let collector = TestCollector::start("127.0.0.1:0".parse().expect("addr"), &rec);
    let mut agent = Agent::start(&collector.url(), &["--host", "term-test"]);
    rec.wait("a hello and a poll", |streams| {
        (streams.first()?.msgs.len() >= 2).then_some(())
    });
    let status = agent.terminate();
    assert!(status.success(), "exit status {status:?}");
    let end = rec.wait("the stream's end", |streams| streams.first()?.end.clone());
    assert_eq!(end, Ok(()), "the agent closed its side cleanly");
    assert_eq!(rec.lock()[0].hello().expect("hello").host, "term-test");
}
