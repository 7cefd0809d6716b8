//! A real PostgreSQL 15 server for a test: its own cluster in a fresh
//! temporary directory, on a free TCP port on 127.0.0.1 with its unix
//! socket in that directory, trust authentication on loopback, and no
//! fsync (a test's data need not survive the machine).
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the
//! cluster belongs to `nobody` and `initdb` and `postgres` run as that user
//! (`Command::uid`/`gid`), in a directory handed to it. [`Postgres::start`]
//! returns `None`, after printing a SKIP line, when the binaries are not
//! installed (`apt-get install postgresql`; `.ci/run` does). Dropping it
//! kills the server and removes the directory, also when the test panics.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, Uid, User};

/// Where Debian's postgresql-15 puts its binaries.
pub const BIN: &str = "/usr/lib/postgresql/15/bin";

/// How long the server may take to accept connections.
const READY: Duration = Duration::from_secs(30);

/// A running (or stopped) test server.
#[derive(Debug)]
pub struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    /// The user the server runs as, when the tests run as root.
    user: Option<(u32, u32)>,
    child: Option<Child>,
    /// Server settings (`name=value`) over the tests' own.
    settings: Vec<String>,
}

impl Postgres {
    /// Makes a cluster and starts its server; `None` (with a SKIP line on
    /// stderr) when PostgreSQL 15 is not installed.
    pub fn start() -> Option<Postgres> {
        Self::start_for("this test")
    }

    /// As [`Postgres::start`]; `what` names the test in the SKIP line.
    pub fn start_for(what: &str) -> Option<Postgres> {
        Self::start_with(what, &[])
    }

    /// As [`Postgres::start_for`], with server settings (`name=value`)
    /// over the tests' own (durability off, small shared buffers): a
    /// benchmark gives PostgreSQL's own default buffers back.
    pub fn start_with(what: &str, settings: &[&str]) -> Option<Postgres> {
        if !Path::new(BIN).join("initdb").exists() {
            eprintln!(
                "SKIP {what}: PostgreSQL 15 is not installed ({BIN}/initdb is missing; \
                 apt-get install postgresql)"
            );
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("tcpstall-pg")
            .tempdir()
            .expect("temp dir");
        let user = if Uid::effective().is_root() {
            let nobody = User::from_name("nobody")
                .expect("look up nobody")
                .expect("a user nobody");
            let ids = (nobody.uid.as_raw(), nobody.gid.as_raw());
            nix::unistd::chown(dir.path(), Some(nobody.uid), Some(nobody.gid))
                .expect("chown the test cluster's directory");
            Some(ids)
        } else {
            None
        };
        let mut pg = Postgres {
            settings: settings.iter().map(|s| s.to_string()).collect(),
            port: crate::free_port(),
            dir,
            user,
            child: None,
        };
        let out = pg
            .command("initdb")
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .args(["--locale=C", "-D"])
            .arg(pg.data())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        pg.start_server();
        Some(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log (stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(Path::new(BIN).join(program));
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid);
        }
        // Its own process group: a Ctrl-C of the tests is not its shutdown.
        c.process_group(0).current_dir(self.dir.path());
        c
    }

    fn start_server(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("server log");
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "synchronous_commit=off", "-c", "shared_buffers=16MB"])
            .args(["-c", "max_connections=40"])
            .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY;
        loop {
            let ready = Command::new(Path::new(BIN).join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", "postgres", "-d", "postgres"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "postgres exited ({status}) before it was ready: {}",
                        std::fs::read_to_string(self.log_path()).unwrap_or_default()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready after {READY:?}: {}",
                std::fs::read_to_string(self.log_path()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's (postmaster's) process id while it runs: its backends
    /// are its children (what a benchmark adds up).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for database `db` as the superuser `postgres`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` and returns its URL.
    pub fn create_db(&self, name: &str) -> String {
        let out = Command::new(Path::new(BIN).join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg(name)
            .output()
            .expect("run createdb");
        assert!(
            out.status.success(),
            "createdb {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(name)
    }

    /// Runs SQL in database `db` with psql; returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(Path::new(BIN).join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Stops the server with a fast shutdown (clients are disconnected)
    /// and waits for it to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
        }
        let deadline = Instant::now() + READY;
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
    }

    /// Starts the stopped server again, on the same port, and waits until
    /// it accepts connections.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.start_server();
    }

    /// [`Postgres::stop`], then [`Postgres::start_again`].
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Immediate shutdown: nothing to keep.
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // The TempDir removes the directory (root may remove nobody's files).
    }
}
