//! The real binaries as child processes: a `tcpstall-collector` with a
//! fresh database in a temporary directory, and a `tcpstall-agent run`.
//! Each is stopped (SIGTERM, then SIGKILL after a grace period) and waited
//! for when its handle is dropped, so none outlives the bench on any exit
//! path.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Where the release binaries are: `--bin-dir`, else the directory of this
/// executable (target/release when run through cargo).
pub fn bin_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match given {
        Some(d) => d.to_path_buf(),
        None => std::env::current_exe()
            .context("finding our own executable")?
            .parent()
            .context("our executable has no directory")?
            .to_path_buf(),
    };
    for name in ["tcpstall-collector", "tcpstall-agent"] {
        if !dir.join(name).exists() {
            bail!(
                "{} is missing; build the binaries first: cargo build --release --workspace --bins",
                dir.join(name).display()
            );
        }
    }
    Ok(dir)
}

/// Stops a child: SIGTERM, up to `grace` to exit, then SIGKILL; always
/// waits, so no zombie is left.
fn stop(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A running `tcpstall-collector`.
#[derive(Debug)]
pub struct Collector {
    child: Child,
    pub addr: SocketAddr,
    pub db: PathBuf,
    pub log: PathBuf,
    // Kept for its Drop: removes the database when the bench ends.
    dir: tempfile::TempDir,
}

impl Collector {
    /// Starts a collector listening on a free loopback port, with a fresh
    /// database in a new temporary directory and its log (`RUST_LOG`
    /// = `log_level`) in a file beside it; waits until it listens.
    pub fn start(bins: &Path, log_level: &str, extra: &[String]) -> anyhow::Result<Collector> {
        let dir = tempfile::Builder::new()
            .prefix("tcpstall-bench-")
            .tempdir()
            .context("temporary directory")?;
        let db = dir.path().join("tcpstall.db");
        let log = dir.path().join("collector.log");
        let log_file = File::create(&log).context("collector log file")?;
        let exe = bins.join("tcpstall-collector");
        let child = Command::new(&exe)
            .args(["--listen", "127.0.0.1:0", "--db"])
            .arg(&db)
            .args(extra)
            .env("RUST_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let mut c = Collector {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            db,
            log,
            dir,
        };
        c.addr = c.wait_listening(Duration::from_secs(30))?;
        Ok(c)
    }

    fn wait_listening(&mut self, timeout: Duration) -> anyhow::Result<SocketAddr> {
        const PREFIX: &str = "tcpstall-collector listening on ";
        let deadline = Instant::now() + timeout;
        loop {
            let file = File::open(&self.log).context("collector log")?;
            for line in BufReader::new(file).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix(PREFIX) {
                    return addr.trim().parse().context("collector's listen address");
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "the collector exited ({status}) before listening:\n{}",
                    self.log_tail(20)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the collector did not listen within {timeout:?}:\n{}",
                    self.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Leaves the temporary directory (database, logs) in place.
    pub fn keep(&mut self) {
        self.dir.disable_cleanup(true);
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last `n` lines of its log.
    /// One scrape of the collector's `/metrics` (started with
    /// `--metrics-listen`): series (with labels) to values.
    pub fn scrape_metrics(&self) -> anyhow::Result<std::collections::HashMap<String, f64>> {
        use std::io::{Read, Write};
        const PREFIX: &str = "tcpstall-collector metrics on http://";
        let file = File::open(&self.log).context("collector log")?;
        let addr: SocketAddr = BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.strip_prefix(PREFIX)?
                    .strip_suffix("/metrics")?
                    .parse()
                    .ok()
            })
            .context("the collector did not say where its metrics are")?;
        let mut conn = std::net::TcpStream::connect(addr).context("connecting to /metrics")?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")?;
        let mut reply = String::new();
        conn.read_to_string(&mut reply)
            .context("reading /metrics")?;
        let (_, body) = reply.split_once("\r\n\r\n").context("not an HTTP reply")?;
        Ok(body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect())
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(5));
    }
}

/// A running `tcpstall-agent run`.
#[derive(Debug)]
pub struct Agent {
    child: Child,
}

impl Agent {
    /// Starts `tcpstall-agent run --collector URL` with `extra` flags, its
    /// log (`RUST_LOG` = `log_level`) in `log`.
    pub fn start(
        bins: &Path,
        collector: &str,
        extra: &[String],
        log_level: &str,
        log: &Path,
    ) -> anyhow::Result<Agent> {
        let exe = bins.join("tcpstall-agent");
        let log_file = File::create(log).context("agent log file")?;
        let child = Command::new(&exe)
            .args(["run", "--collector", collector])
            .args(extra)
            .env("RUST_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        Ok(Agent { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        stop(&mut self.child, Duration::from_secs(5));
    }
}

/// `perf record` of a process for a while, with DWARF call graphs (release
/// builds have no frame pointers) at 199 Hz to keep the file small;
/// stopped and waited for on drop.
#[derive(Debug)]
pub struct Perf(Child);

impl Perf {
    pub fn record(pid: u32, out: &Path, dur: Duration) -> anyhow::Result<Perf> {
        let child = Command::new("perf")
            .args(["record", "--call-graph", "dwarf,16384", "-F", "199"])
            .args(["-p", &pid.to_string(), "-o"])
            .arg(out)
            .args(["--", "sleep", &dur.as_secs().max(1).to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf record")?;
        Ok(Perf(child))
    }

    /// Waits until the recording ends.
    pub fn wait(&mut self) {
        let _ = self.0.wait();
    }
}

impl Drop for Perf {
    fn drop(&mut self) {
        stop(&mut self.0, Duration::from_secs(5));
    }
}
