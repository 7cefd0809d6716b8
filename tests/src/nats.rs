//! A real NATS cluster with JetStream for the fleet tests: `nats-server`
//! processes (Debian's package) on free loopback ports, each with its
//! store in a temporary directory, routed to each other. Killed and
//! removed when dropped, also when a test panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::wait_for;

/// Where Debian installs the server.
const SERVERS: &[&str] = &["/usr/bin/nats-server", "/usr/sbin/nats-server"];

/// The server binary, if installed.
pub fn server_binary() -> Option<PathBuf> {
    SERVERS.iter().map(PathBuf::from).find(|p| p.exists())
}

/// Skips the calling test (returning early) without `nats-server`, saying
/// why.
#[macro_export]
macro_rules! require_nats {
    () => {
        if $crate::nats::server_binary().is_none() {
            eprintln!("skipped: needs nats-server (apt-get install nats-server; .ci/run does)");
            return;
        }
    };
}

/// One server of the cluster.
#[derive(Debug)]
struct Server {
    name: String,
    client_port: u16,
    config: PathBuf,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

/// A NATS cluster of a few servers with JetStream.
#[derive(Debug)]
pub struct NatsCluster {
    servers: Vec<Server>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `n` servers routed to each other and waits until JetStream
    /// has a metadata leader.
    pub fn start(n: usize) -> NatsCluster {
        NatsCluster::start_with(n, "")
    }

    /// As [`NatsCluster::start`], each server's config file ending with
    /// `extra` (TLS, authorization).
    pub fn start_with(n: usize, extra: &str) -> NatsCluster {
        let bin = server_binary().expect("nats-server installed");
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| (crate::free_port(), crate::free_port()))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, c)| format!("nats://127.0.0.1:{c}"))
            .collect();
        let cluster_name = format!(
            "tcpstall-test-{}-{}",
            std::process::id(),
            ports.first().map_or(0, |p| p.0)
        );
        let mut servers = Vec::new();
        for (i, (client, route)) in ports.iter().enumerate() {
            let name = format!("n{i}");
            let store = dir.path().join(&name);
            std::fs::create_dir_all(&store).expect("store dir");
            let cluster = if n > 1 {
                format!(
                    "cluster {{ name: {cluster_name}, listen: 127.0.0.1:{route}, routes: [{}] }}\n",
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{client}\n\
                     jetstream {{ store_dir: \"{}\" }}\n{cluster}{extra}\n",
                    store.display()
                ),
            )
            .expect("write the server's config");
            let mut s = Server {
                name,
                client_port: *client,
                config,
                child: None,
                log: Arc::new(Mutex::new(Vec::new())),
            };
            s.spawn(&bin);
            servers.push(s);
        }
        let cluster = NatsCluster { servers, _dir: dir };
        cluster.wait_ready();
        cluster
    }

    fn wait_ready(&self) {
        wait_for("the NATS servers ready", Duration::from_secs(20), || {
            self.servers
                .iter()
                .filter(|s| s.child.is_some())
                .all(|s| s.logged("Server is ready"))
                .then_some(())
        });
        wait_for(
            "a JetStream metadata leader",
            Duration::from_secs(20),
            || {
                self.servers
                    .iter()
                    .filter(|s| s.child.is_some())
                    .any(|s| s.logged("metadata leader") || self.servers.len() == 1)
                    .then_some(())
            },
        );
    }

    /// Every server's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.client_port))
            .collect()
    }

    /// `--nats URL` for every server, as collector arguments.
    pub fn args(&self) -> Vec<String> {
        self.urls()
            .into_iter()
            .flat_map(|u| ["--nats".to_string(), u])
            .collect()
    }

    /// The process ids of the servers that run (what a benchmark adds up).
    pub fn pids(&self) -> Vec<u32> {
        self.servers
            .iter()
            .filter_map(|s| s.child.as_ref().map(Child::id))
            .collect()
    }

    /// kill -9 of server `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts server `i` again with its store as it was.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let bin = server_binary().expect("nats-server installed");
        self.servers[i].log.lock().map(|mut l| l.clear()).ok();
        self.servers[i].spawn(&bin);
        wait_for(
            "the NATS server ready again",
            Duration::from_secs(20),
            || self.servers[i].logged("Server is ready").then_some(()),
        );
    }

    /// The live server that leads JetStream stream `stream`, as the
    /// servers logged the elections (the last one logged).
    pub fn stream_leader(&self, stream: &str) -> Option<usize> {
        let line = format!("new stream leader for '$G > {stream}'");
        self.servers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.child.is_some())
            .filter_map(|(i, s)| {
                let log = s.log.lock().ok()?;
                let at = log.iter().rposition(|l| l.contains(&line))?;
                // The line's time stamp: "[pid] 2026/12/07 09:56:30.672877 ...".
                let stamp = log[at].split_whitespace().nth(2)?.to_string();
                Some((stamp, i))
            })
            .max()
            .map(|(_, i)| i)
    }

    /// Whether server `i` logged a line containing `text`.
    pub fn logged(&self, i: usize, text: &str) -> bool {
        self.servers[i].logged(text)
    }
}

impl Server {
    fn spawn(&mut self, bin: &Path) {
        use std::io::BufRead;
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nats-server");
        let stderr = child.stderr.take().expect("stderr");
        let log = self.log.clone();
        let name = self.name.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if std::env::var_os("TCPSTALL_TEST_LOGS").is_some() {
                    eprintln!("[nats {name}] {line}");
                }
                if let Ok(mut l) = log.lock() {
                    l.push(line);
                }
            }
        });
        self.child = Some(child);
    }

    fn logged(&self, text: &str) -> bool {
        self.log
            .lock()
            .map(|l| l.iter().any(|line| line.contains(text)))
            .unwrap_or(false)
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}
