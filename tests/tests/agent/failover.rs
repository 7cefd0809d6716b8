//! Issue 24, part 3: an agent given several collectors moves to another
//! when the one it streams to is killed with SIGKILL, and delivers there
//! every poll it kept meanwhile, in order, within its buffer; beyond the
//! buffer the oldest polls are dropped and counted exactly.
//!
//! The collectors are `tcpstall-test-recorder` processes (a real gRPC
//! Ingest service that prints every message as it arrives, so what a
//! killed one had received is what it printed) and the agent is the real
//! binary. It reads a test namespace holding one stuck connection, so that
//! every poll sends exactly one batch of one sample, stamped with the
//! poll's time on the agent's clock: polls are exactly an interval apart,
//! and a missing one is a gap.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tcpstall_tests::{binary, require_root, scrape, series, wait_for, AgentProcess, TestNetns};

use crate::{fill, Conn};

const INTERVAL: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Slack for everything but the backoff: a loopback connection, the
/// Hello, a scheduler's delay.
const CONNECT: Duration = Duration::from_millis(500);
const DEADLINE: Duration = Duration::from_secs(20);

/// A batch as a recorder printed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Batch {
    mono_us: u64,
    samples: u64,
    dropped_batches: u64,
    dropped_samples: u64,
}

/// One line a recorder printed, with when the test read it (on the agent's
/// clock, CLOCK_MONOTONIC).
type Lines = Arc<Mutex<Vec<(Duration, String)>>>;

/// A `tcpstall-test-recorder` process; killed when dropped.
struct Node {
    child: Child,
    addr: SocketAddr,
    lines: Lines,
}

impl Node {
    fn start(listen: &str) -> Node {
        let mut child = Command::new(binary("tcpstall-test-recorder"))
            .args(["--listen", listen])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start tcpstall-test-recorder");
        let stdout = child.stdout.take().expect("stdout");
        let lines: Lines = Arc::default();
        let keep = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let at = tcpstall_agent::run::monotonic();
                if let Ok(mut l) = keep.lock() {
                    l.push((at, line));
                }
            }
        });
        let mut node = Node {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            lines,
        };
        node.addr = wait_for("the recorder listening", DEADLINE, || {
            node.with_lines(|l| {
                l.iter()
                    .find_map(|(_, line)| line.strip_prefix("listening ")?.parse().ok())
            })
        });
        node
    }

    fn with_lines<T>(&self, f: impl FnOnce(&[(Duration, String)]) -> T) -> T {
        f(&self.lines.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// When the first Hello arrived, if one did.
    fn hello(&self) -> Option<Duration> {
        self.with_lines(|l| {
            l.iter()
                .find(|(_, line)| line.starts_with("hello "))
                .map(|(at, _)| *at)
        })
    }

    /// The batches received, in order.
    fn batches(&self) -> Vec<Batch> {
        self.with_lines(|l| {
            l.iter()
                .filter_map(|(_, line)| parse_batch(line.strip_prefix("batch ")?))
                .collect()
        })
    }

    /// kill -9; returns when it is gone.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn parse_batch(fields: &str) -> Option<Batch> {
    let get = |name: &str| -> Option<u64> {
        fields
            .split(' ')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    Some(Batch {
        mono_us: get("mono_us")?,
        samples: get("samples")?,
        dropped_batches: get("dropped_batches")?,
        dropped_samples: get("dropped_samples")?,
    })
}

/// A test namespace with one connection whose reader never reads.
struct Stuck {
    // Dropped before the namespace.
    _conn: Conn,
    ns: TestNetns,
}

fn stuck(tag: &str) -> Stuck {
    let ns = TestNetns::new(tag);
    let mut conn = ns.enter(|| Conn::open("127.0.0.1:0"));
    fill(&mut conn.client);
    Stuck { _conn: conn, ns }
}

/// The agent on `stuck`'s namespace, given every URL in `urls` (plus
/// `extra`).
fn agent(stuck: &Stuck, urls: &[String], buffer: usize, extra: &[&str]) -> AgentProcess {
    let interval = format!("{}ms", INTERVAL.as_millis());
    let backoff = format!("{}ms", BACKOFF_MAX.as_millis());
    let buffer = buffer.to_string();
    let mut args = vec![
        "--netns",
        stuck.ns.name.as_str(),
        "--host",
        "failover-host",
        "--interval",
        &interval,
        "--follow-interval",
        "0s",
        "--backoff-max",
        &backoff,
        "--buffer",
        &buffer,
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    for url in &urls[1..] {
        args.extend(["--collector", url.as_str()]);
    }
    args.extend(extra);
    AgentProcess::start(&urls[0], &args)
}

fn metrics(agent: &AgentProcess) -> std::collections::HashMap<String, f64> {
    let addr = wait_for("the agent's metrics address", DEADLINE, || {
        agent.metrics_addr()
    });
    series(&scrape(addr))
}

/// Waits until one of `nodes` has the agent's Hello and three batches;
/// returns its index.
fn streaming(nodes: &[&Node]) -> usize {
    wait_for("the agent streaming to a collector", DEADLINE, || {
        nodes
            .iter()
            .position(|n| n.hello().is_some() && n.batches().len() >= 3)
    })
}

/// Kills `node` just after it received a batch (so that the next poll is
/// an interval away and nothing is in flight); returns when, on the
/// agent's clock.
fn kill_after_a_batch(node: &mut Node) -> Duration {
    let seen = node.batches().len();
    wait_for("one more batch before the kill", DEADLINE, || {
        (node.batches().len() > seen).then_some(())
    });
    node.kill();
    tcpstall_agent::run::monotonic()
}

/// The polls' times, once each, in the order received (a poll split in
/// several batches has one time).
fn polls(batches: &[Batch]) -> Vec<u64> {
    let mut monos: Vec<u64> = batches.iter().map(|b| b.mono_us).collect();
    monos.dedup();
    monos
}

fn interval_us() -> u64 {
    u64::try_from(INTERVAL.as_micros()).expect("small")
}

/// Asserts that `monos` are exactly one interval apart, from `first`.
fn consecutive(monos: &[u64], first: u64, what: &str) {
    for (i, m) in monos.iter().enumerate() {
        let want = first + interval_us() * u64::try_from(i).expect("small");
        assert_eq!(*m, want, "{what}: poll {i} of {monos:?}");
    }
}

/// kill -9 of the collector an agent streams to: it streams to another
/// of its collectors within its backoff ceiling and a connection's time,
/// and that one gets every poll the dead one did not, in order (the polls
/// taken while it was cut off first), with nothing dropped.
#[test]
fn kill_9_of_the_collector_moves_the_agent_to_another_with_every_poll() {
    require_root!();
    let s = stuck("fo-kill");
    let mut nodes = [
        Node::start("127.0.0.1:0"),
        Node::start("127.0.0.1:0"),
        Node::start("127.0.0.1:0"),
    ];
    let urls: Vec<String> = nodes.iter().map(Node::url).collect();
    let agent = agent(&s, &urls, 64, &[]);

    let a = streaming(&nodes.iter().collect::<Vec<_>>());
    let killed_at = kill_after_a_batch(&mut nodes[a]);
    let others: Vec<&Node> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != a)
        .map(|(_, n)| n)
        .collect();
    let (b, hello) = wait_for("the agent on another collector", DEADLINE, || {
        others
            .iter()
            .enumerate()
            .find_map(|(i, n)| Some((i, n.hello()?)))
    });
    let moved = hello.saturating_sub(killed_at);
    let b = others[b];
    let to_a = polls(&nodes[a].batches());
    let last_a = *to_a.last().expect("polls at the first collector");
    let to_b = wait_for("ten polls at the new collector", DEADLINE, || {
        let p = polls(&b.batches());
        (p.len() >= 10).then_some(p)
    });
    let cut_off = to_b
        .iter()
        .filter(|m| **m < hello.as_micros() as u64)
        .count();
    eprintln!(
        "on the new collector {} ms after the kill; {cut_off} polls taken while cut off, all delivered",
        moved.as_millis()
    );
    assert!(
        moved < BACKOFF_MAX + CONNECT,
        "on another collector after {moved:?}, not within {BACKOFF_MAX:?} + {CONNECT:?}"
    );
    // The first wait after a loss is 200 ms at least: some polls were
    // taken while cut off, and they are the first the new one got.
    assert!(cut_off >= 1, "{to_b:?}");
    consecutive(&to_b, last_a + interval_us(), "the new collector's polls");
    for batch in b.batches() {
        assert_eq!(
            (batch.samples, batch.dropped_batches, batch.dropped_samples),
            (1, 0, 0),
            "{batch:?}"
        );
    }
    let m = metrics(&agent);
    let get = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
    assert_eq!(get("tcpstall_agent_dropped_batches_total"), 0.0, "{m:?}");
    assert_eq!(get("tcpstall_agent_dropped_samples_total"), 0.0, "{m:?}");
    assert_eq!(get("tcpstall_agent_collector_switches_total"), 1.0, "{m:?}");
    assert_eq!(get("tcpstall_agent_connected"), 1.0, "{m:?}");
    let info = format!(
        "tcpstall_agent_collector_info{{url=\"{}\",address=\"{}\"}}",
        b.url(),
        b.addr
    );
    assert_eq!(get(&info), 1.0, "{info} in {m:?}");
    assert!(agent.logged(&["streaming to another collector", &b.url()]));
}

/// An outage longer than the buffer: the oldest polls are dropped, and
/// exactly as many as are missing are counted, in the first batch the
/// next collector gets and in the agent's metrics; the polls kept follow
/// without a gap.
#[test]
fn an_outage_past_the_buffer_drops_the_oldest_polls_and_counts_them_exactly() {
    require_root!();
    const BUFFER: usize = 3;
    let s = stuck("fo-bound");
    let mut first = Node::start("127.0.0.1:0");
    // The second collector's port, free until it starts: refused till then.
    let later = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let urls = [first.url(), format!("http://{later}")];
    let agent = agent(&s, &urls, BUFFER, &[]);
    streaming(&[&first]);
    kill_after_a_batch(&mut first);
    // Cut off until the buffer has overflowed a few times.
    let addr = wait_for("the agent's metrics address", DEADLINE, || {
        agent.metrics_addr()
    });
    tcpstall_tests::scrape_until(addr, "polls dropped", DEADLINE, |get| {
        get("tcpstall_agent_dropped_batches_total") >= 4.0
    });
    let second = Node::start(&later.to_string());
    wait_for("the agent on the second collector", DEADLINE, || {
        second.hello()
    });
    let to_second = wait_for("ten polls at the second collector", DEADLINE, || {
        let b = second.batches();
        (polls(&b).len() >= 10).then_some(b)
    });
    let last_first = *polls(&first.batches()).last().expect("polls at the first");
    let dropped = to_second[0].dropped_batches;
    eprintln!("{dropped} polls dropped beyond the buffer of {BUFFER}");
    assert!(dropped >= 4, "{to_second:?}");
    // The oldest polls are the ones missing, exactly as many as counted.
    consecutive(
        &polls(&to_second),
        last_first + interval_us() * (dropped + 1),
        "the polls kept, then the live ones",
    );
    for batch in &to_second {
        assert_eq!(
            (batch.samples, batch.dropped_batches, batch.dropped_samples),
            (1, dropped, dropped),
            "one sample a poll: {batch:?}"
        );
    }
    let m = metrics(&agent);
    let get = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
    assert_eq!(get("tcpstall_agent_dropped_batches_total"), dropped as f64);
    assert_eq!(get("tcpstall_agent_dropped_samples_total"), dropped as f64);
    assert_eq!(get("tcpstall_agent_collector_switches_total"), 1.0, "{m:?}");
    assert!(agent.logged(&["buffer full: dropping the oldest batch"]));
}

/// A host name with two addresses is two collectors: the agent, killed
/// off one, streams to the other, with every poll. The name is in a hosts
/// file seen by the agent alone: it runs in a mount namespace of its own
/// where that file is bind-mounted over /etc/hosts (the host's file is
/// not touched, and no other process sees the mount).
#[test]
fn a_name_with_two_addresses_is_two_collectors() {
    require_root!();
    const NAME: &str = "collectors.tcpstall.test";
    let s = stuck("fo-dns");
    let mut one = Node::start("127.0.0.2:0");
    let port = one.addr.port();
    let mut two = Node::start(&format!("127.0.0.3:{port}"));
    let dir = tempfile::tempdir().expect("temp dir");
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, format!("127.0.0.2 {NAME}\n127.0.0.3 {NAME}\n"))
        .expect("write the hosts file");
    let url = format!("http://{NAME}:{port}");
    let interval = format!("{}ms", INTERVAL.as_millis());
    let backoff = format!("{}ms", BACKOFF_MAX.as_millis());
    let wrapper = tcpstall_tests::own_hosts_file(&hosts);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let agent = AgentProcess::start_wrapped(
        &wrapper,
        &url,
        &[
            "--plaintext",
            "--netns",
            &s.ns.name,
            "--host",
            "failover-dns",
            "--interval",
            &interval,
            "--follow-interval",
            "0s",
            "--backoff-max",
            &backoff,
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let first = streaming(&[&one, &two]);
    let (dead, live) = if first == 0 {
        (&mut one, &mut two)
    } else {
        (&mut two, &mut one)
    };
    let m = metrics(&agent);
    let info = |n: &Node| {
        format!(
            "tcpstall_agent_collector_info{{url=\"{url}\",address=\"{}\"}}",
            n.addr
        )
    };
    assert_eq!(m.get(&info(dead)), Some(&1.0), "{m:?}");
    let killed_at = kill_after_a_batch(dead);
    let hello = wait_for("the agent on the name's other address", DEADLINE, || {
        live.hello()
    });
    let moved = hello.saturating_sub(killed_at);
    eprintln!(
        "on {}'s other address {} ms after the kill",
        NAME,
        moved.as_millis()
    );
    assert!(moved < BACKOFF_MAX + CONNECT, "{moved:?}");
    let last_dead = *polls(&dead.batches()).last().expect("polls");
    let to_live = wait_for("ten polls at the other address", DEADLINE, || {
        let p = polls(&live.batches());
        (p.len() >= 10).then_some(p)
    });
    consecutive(
        &to_live,
        last_dead + interval_us(),
        "the other address's polls",
    );
    let m = metrics(&agent);
    assert_eq!(m.get(&info(live)), Some(&1.0), "{m:?}");
    assert_eq!(m.get(&info(dead)), None, "one collector at a time");
    assert_eq!(
        m.get("tcpstall_agent_dropped_batches_total"),
        Some(&0.0),
        "{m:?}"
    );
}

/// A collector that hangs (SIGSTOP: its kernel keeps the connection and
/// takes the bytes, but nothing answers) is given up when HTTP/2 pings go
/// unanswered, and the agent moves to the other with every poll.
#[test]
fn a_hung_collector_is_given_up_by_keepalive() {
    require_root!();
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let s = stuck("fo-hung");
    let nodes = [Node::start("127.0.0.1:0"), Node::start("127.0.0.1:0")];
    let urls: Vec<String> = nodes.iter().map(Node::url).collect();
    let agent = agent(&s, &urls, 256, &[]);
    let a = streaming(&[&nodes[0], &nodes[1]]);
    let pid = Pid::from_raw(i32::try_from(nodes[a].child.id()).expect("pid"));
    let seen = nodes[a].batches().len();
    wait_for("one more batch before the stop", DEADLINE, || {
        (nodes[a].batches().len() > seen).then_some(())
    });
    kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    let stopped_at = tcpstall_agent::run::monotonic();
    let b = &nodes[1 - a];
    let hello = wait_for("the agent on the other collector", DEADLINE, || b.hello());
    let moved = hello.saturating_sub(stopped_at);
    eprintln!("off the hung collector after {} ms", moved.as_millis());
    let keepalive = tcpstall_agent::uplink::KEEPALIVE + tcpstall_agent::uplink::KEEPALIVE_TIMEOUT;
    assert!(
        moved < keepalive + BACKOFF_MAX + CONNECT,
        "{moved:?} past {keepalive:?} + {BACKOFF_MAX:?} + {CONNECT:?}"
    );
    // What the hung one had printed before it stopped; its kernel took
    // more (sent, so not the agent's to count): the new one starts after
    // the last poll the agent had not yet handed to the old stream.
    let to_b = wait_for("ten polls at the other collector", DEADLINE, || {
        let p = polls(&b.batches());
        (p.len() >= 10).then_some(p)
    });
    let first = to_b[0];
    consecutive(&to_b, first, "the other collector's polls");
    // Polls handed to the hung one's connection after it stopped reading:
    // sent as far as the agent can tell (no acknowledgement on the wire),
    // so lost and not counted. Said, not asserted.
    let last_a = polls(&nodes[a].batches()).last().copied().unwrap_or(first);
    eprintln!(
        "{} polls went into the hung collector's connection after it stopped",
        (first - last_a) / interval_us() - 1
    );
    let m = metrics(&agent);
    assert_eq!(
        m.get("tcpstall_agent_collector_switches_total"),
        Some(&1.0),
        "{m:?}"
    );
    let _ = kill(pid, Signal::SIGCONT);
}

/// The same with real collectors: two `tcpstall-collector` processes, the
/// one the agent streams to killed with SIGKILL; the other has the agent
/// within the backoff and receives its samples, and the agent dropped
/// nothing.
#[test]
fn kill_9_of_a_real_collector_moves_the_agent_to_the_other() {
    require_root!();
    use tcpstall_tests::CollectorProcess;
    let s = stuck("fo-real");
    let mut nodes = [
        CollectorProcess::start(&["--metrics-listen", "127.0.0.1:0"]),
        CollectorProcess::start(&["--metrics-listen", "127.0.0.1:0"]),
    ];
    let urls: Vec<String> = nodes.iter().map(CollectorProcess::url).collect();
    let agent = agent(&s, &urls, 64, &[]);
    let connected = |n: &CollectorProcess| n.logged(&["agent connected", "failover-host"]);
    let a = wait_for("the agent on a collector", DEADLINE, || {
        nodes.iter().position(connected)
    });
    let samples = |n: &CollectorProcess| {
        let addr = n.metrics_addr().expect("the collector's metrics address");
        series(&scrape(addr))
            .get("tcpstall_collector_samples_received_total")
            .copied()
            .unwrap_or(0.0)
    };
    wait_for("samples at the first collector", DEADLINE, || {
        (samples(&nodes[a]) >= 3.0).then_some(())
    });
    nodes[a].kill();
    let killed = std::time::Instant::now();
    let b = 1 - a;
    wait_for("the agent on the other collector", DEADLINE, || {
        connected(&nodes[b]).then_some(())
    });
    let moved = killed.elapsed();
    eprintln!(
        "on the other tcpstall-collector {} ms after the kill",
        moved.as_millis()
    );
    assert!(moved < BACKOFF_MAX + CONNECT, "{moved:?}");
    wait_for("samples at the other collector", DEADLINE, || {
        (samples(&nodes[b]) >= 10.0).then_some(())
    });
    let m = metrics(&agent);
    let get = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
    assert_eq!(get("tcpstall_agent_collector_switches_total"), 1.0, "{m:?}");
    assert_eq!(get("tcpstall_agent_dropped_batches_total"), 0.0, "{m:?}");
    let info = format!(
        "tcpstall_agent_collector_info{{url=\"{}\",address=\"{}\"}}",
        nodes[b].url(),
        nodes[b].addr
    );
    assert_eq!(get(&info), 1.0, "{info} in {m:?}");
}
