//! Helpers shared by the end-to-end tests: waiting for a condition with a
//! deadline, test network namespaces that remove themselves, the built
//! binaries, and polling this host the way the agent does; [`lab`] builds
//! namespace hosts with real agents and a collector; [`recorder`] is a
//! collector that records what an agent sends; [`postgres`] is a real
//! PostgreSQL server for a test.

pub mod browser;
pub mod fake;
pub mod lab;
pub mod nats;
pub mod postgres;
pub mod recorder;
pub mod stored;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tcpstall_agent::netns::{self, Netns};
use tcpstall_agent::Poller;
use tcpstall_common::SocketSample;

/// Calls `probe` until it returns `Some`, or panics with `what` after
/// `timeout`. Probes every 20 ms: no bare sleeps in tests.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One poll of the given namespaces (this one when empty).
pub fn poll(namespaces: Vec<Netns>) -> Vec<SocketSample> {
    let namespaces = if namespaces.is_empty() {
        vec![netns::current().expect("current namespace")]
    } else {
        namespaces
    };
    let mut poller = Poller::new(namespaces).expect("poller");
    let (samples, failures) = poller.poll();
    assert!(failures.is_empty(), "namespace failures: {failures:?}");
    samples.to_vec()
}

/// The socket with this local and remote address, if the poll saw it.
pub fn find(
    samples: &[SocketSample],
    local: std::net::SocketAddr,
    remote: std::net::SocketAddr,
) -> Option<SocketSample> {
    samples
        .iter()
        .find(|s| s.local == local && s.remote == remote)
        .cloned()
}

/// Path of a workspace binary built next to this test executable.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace --bins` (the README's test command does)",
        path.display()
    );
    path
}

/// Whether we may create namespaces; tests that need it skip otherwise.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Skips the calling test (returning early) when not root, saying why.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            eprintln!("skipped: needs root to create network namespaces");
            return;
        }
    };
}

/// A network namespace created for one test and removed when dropped,
/// also when the test panics. Its name is unique per process and call.
#[derive(Debug)]
pub struct TestNetns {
    pub name: String,
}

impl TestNetns {
    pub fn new(tag: &str) -> TestNetns {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tcpstall-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        {
            // One `ip netns add` at a time in this process: the first ones
            // on a fresh machine make /run/netns a mount point, and two
            // doing it at once can stack a second mount over a namespace
            // the other just made, hiding it (seen in CI).
            static ADDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
            let _one = ADDING
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            run("ip", &["netns", "add", &name]);
        }
        let ns = TestNetns { name };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(netns::RUN_NETNS).join(&self.name)
    }

    /// Runs `f` on a thread inside this namespace; sockets it creates stay
    /// in the namespace when handed back.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = std::fs::File::open(self.path()).expect("open namespace");
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("setns into test namespace");
                f()
            })
            .join()
            .expect("namespace thread")
        })
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Runs a command, panicking with its output if it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A real `tcpstall-collector` process on a free loopback port with its
/// own database in a temporary directory. Killed when dropped.
#[derive(Debug)]
pub struct CollectorProcess {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    pub dir: std::sync::Arc<tempfile::TempDir>,
    pub db: PathBuf,
    /// Everything the collector logged so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl CollectorProcess {
    /// Starts a collector with a fresh database.
    pub fn start(extra: &[&str]) -> CollectorProcess {
        let dir = std::sync::Arc::new(tempfile::tempdir().expect("temp dir"));
        Self::start_in(dir, "127.0.0.1:0", extra)
    }

    /// Starts a collector on `listen` with the database in `dir` (reused
    /// across restarts).
    pub fn start_in(
        dir: std::sync::Arc<tempfile::TempDir>,
        listen: &str,
        extra: &[&str],
    ) -> CollectorProcess {
        use std::io::BufRead;
        let db = dir.path().join("tcpstall.db");
        let mut child = Command::new(binary("tcpstall-collector"))
            .args(["--listen", listen, "--db"])
            .arg(&db)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("TCPSTALL_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start tcpstall-collector");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(mut l) = keep.lock() {
                    l.push(line.clone());
                }
                if let Some(addr) = line.strip_prefix("tcpstall-collector listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.trim().to_string());
                    }
                }
                if std::env::var_os("TCPSTALL_TEST_LOGS").is_some() {
                    eprintln!("[collector] {line}");
                }
            }
        });
        // A fleet node says it listens once JetStream has taken its stream
        // and buckets: on a loaded machine, a while after its start.
        let addr = match rx.recv_timeout(Duration::from_secs(45)) {
            Ok(addr) => addr.parse().expect("listen address"),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                // The reader thread ends with the pipe; what it kept is
                // the collector's own account of why it did not start.
                let said = log.lock().map(|l| l.join("\n")).unwrap_or_default();
                panic!("collector did not start listening ({e}); it said:\n{said}");
            }
        };
        CollectorProcess {
            child,
            addr,
            dir,
            db,
            log,
        }
    }

    /// Whether some logged line contains all of `parts`.
    pub fn logged(&self, parts: &[&str]) -> bool {
        self.log
            .lock()
            .map(|l| l.iter().any(|line| parts.iter().all(|p| line.contains(p))))
            .unwrap_or(false)
    }

    /// The address of its Prometheus endpoint, once it said where
    /// (started with `--metrics-listen`).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        metrics_addr_in(&self.log, "tcpstall-collector")
    }

    /// The web page's base URL (`http://ADDR/`), once it said where
    /// (started with `--web-listen`).
    pub fn web_url(&self) -> Option<String> {
        let log = self.log.lock().ok()?;
        log.iter().find_map(|line| {
            line.strip_prefix("tcpstall-collector web page on ")
                .map(|u| u.trim().to_string())
        })
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// kill -9.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CollectorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `GET base+path` over plain HTTP/1.1 (one connection, closed after),
/// with `authorization: Bearer TOKEN` when given: the status and the body.
pub fn http_get(base: &str, path: &str, token: Option<&str>) -> (u16, String) {
    http_request(base, "GET", path, token, &[], "")
}

/// `METHOD base+path` over plain HTTP/1.1 with the headers and body given
/// (one connection, closed after): the status and the body.
pub fn http_request(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let host = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut s = std::net::TcpStream::connect(&host).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(t) = token {
        head += &format!("Authorization: Bearer {t}\r\n");
    }
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += &format!("Content-Length: {}\r\n\r\n{body}", body.len());
    s.write_all(head.as_bytes()).expect("request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("answer");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A port free on loopback now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The address in the line `PROGRAM metrics on http://ADDR/metrics` that
/// a binary started with `--metrics-listen` prints, once it is logged.
fn metrics_addr_in(
    log: &std::sync::Mutex<Vec<String>>,
    program: &str,
) -> Option<std::net::SocketAddr> {
    let log = log.lock().ok()?;
    log.iter().find_map(|line| {
        line.strip_prefix(program)?
            .strip_prefix(" metrics on http://")?
            .strip_suffix("/metrics")?
            .parse()
            .ok()
    })
}

/// A wrapper for [`AgentProcess::start_wrapped`]: the agent runs in a
/// mount namespace of its own in which `hosts` is bind-mounted over
/// /etc/hosts, so it resolves names that only the test defines. The host's
/// file is not touched and no other process sees the mount. Needs root.
pub fn own_hosts_file(hosts: &std::path::Path) -> Vec<String> {
    [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([hosts.to_string_lossy().into_owned()])
    .collect()
}

/// A real `tcpstall-agent run` process. Killed when dropped.
#[derive(Debug)]
pub struct AgentProcess {
    pub child: std::process::Child,
    /// Everything the agent logged so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl AgentProcess {
    pub fn start(collector: &str, extra: &[&str]) -> AgentProcess {
        Self::start_wrapped(&[], collector, extra)
    }

    /// As [`AgentProcess::start`], run through `wrapper` (a command and
    /// its arguments, e.g. `setpriv --bounding-set=-sys_ptrace`); none
    /// when empty.
    pub fn start_wrapped(wrapper: &[&str], collector: &str, extra: &[&str]) -> AgentProcess {
        let agent = binary("tcpstall-agent");
        let mut cmd = match wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(&agent);
                c
            }
            None => Command::new(&agent),
        };
        let mut child = cmd
            .args(["run", "--collector", collector])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("TCPSTALL_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            // Plain lines for `logged`, whatever the terminal.
            .env("NO_COLOR", "1")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start tcpstall-agent run");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let keep = log.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stderr)
                    .lines()
                    .map_while(Result::ok)
                {
                    if std::env::var_os("TCPSTALL_TEST_LOGS").is_some() {
                        eprintln!("[agent] {line}");
                    }
                    if let Ok(mut l) = keep.lock() {
                        l.push(line);
                    }
                }
            });
        }
        AgentProcess { child, log }
    }

    /// Whether some logged line contains all of `parts`.
    pub fn logged(&self, parts: &[&str]) -> bool {
        self.log
            .lock()
            .map(|l| l.iter().any(|line| parts.iter().all(|p| line.contains(p))))
            .unwrap_or(false)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The address of its Prometheus endpoint, once it said where
    /// (started with `--metrics-listen`).
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        metrics_addr_in(&self.log, "tcpstall-agent")
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// GET /metrics over plain HTTP/1.1; the body (panics if it fails).
pub fn scrape(addr: SocketAddr) -> String {
    tcpstall_prom::read::scrape(addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("scraping {addr}: {e}"))
}

pub use tcpstall_prom::read::series;

/// Scrapes a metrics endpoint until `ok` holds for its figures, or panics with the
/// last scrape after `within`.
pub fn scrape_until(
    addr: SocketAddr,
    what: &str,
    within: Duration,
    ok: impl Fn(&dyn Fn(&str) -> f64) -> bool,
) -> std::collections::HashMap<String, f64> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let figures = series(&scrape(addr));
        let get = |s: &str| figures.get(s).copied().unwrap_or(f64::NAN);
        if ok(&get) {
            return figures;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}: {figures:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
