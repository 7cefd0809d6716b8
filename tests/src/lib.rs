//! Helpers shared by the end-to-end tests: waiting for a condition with a
//! deadline, test network namespaces that remove themselves, the built
//! binaries, and polling this host the way the agent does.

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
        run("ip", &["netns", "add", &name]);
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
