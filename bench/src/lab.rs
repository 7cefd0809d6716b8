//! The agent-at-rest bench's two hosts: a host network namespace, where
//! the agent reads and the connecting ends live, and a peer namespace with
//! the far ends, joined by a veth pair with 198.18.0.1/30 and 198.18.0.2/30
//! (RFC 2544's benchmarking range, used only inside these namespaces).
//!
//! Both namespaces have names unique to this process and are removed when
//! the [`Lab`] is dropped: on success, on error and on panic. SIGINT and
//! SIGTERM only set a flag ([`interrupted`]) that the bench's waits check,
//! so an interrupted bench returns an error and drops everything too.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tcpstall_agent::netns::RUN_NETNS;

/// The peer's address: the holders listen here.
pub const PEER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const HOST_CIDR: &str = "198.18.0.1/30";
const PEER_CIDR: &str = "198.18.0.2/30";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether SIGINT or SIGTERM came.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// From now on, SIGINT and SIGTERM set [`interrupted`] instead of ending
/// the process (which would leave the namespaces and children behind).
pub fn catch_signals() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("signal runtime")?;
    // Registered here, before the thread starts, so no signal is missed.
    let (mut int, mut term) = rt.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    })?;
    std::thread::spawn(move || {
        rt.block_on(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        eprintln!("tcpstall-bench: interrupted; cleaning up");
        INTERRUPTED.store(true, Ordering::Relaxed);
    });
    Ok(())
}

/// Sleeps for `d`, failing early once interrupted.
pub fn nap(d: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + d;
    loop {
        if interrupted() {
            bail!("interrupted");
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The two namespaces and their veth pair.
#[derive(Debug)]
pub struct Lab {
    /// The agent's host: `ip netns` name.
    pub host: String,
    /// The far ends' host.
    pub peer: String,
    created: Vec<String>,
}

impl Lab {
    /// Creates both namespaces and the veth pair (needs root).
    pub fn new() -> anyhow::Result<Lab> {
        let pid = std::process::id();
        let mut lab = Lab {
            host: format!("tcpstall-idle-host-{pid}"),
            peer: format!("tcpstall-idle-peer-{pid}"),
            created: Vec::new(),
        };
        for name in [lab.host.clone(), lab.peer.clone()] {
            ip(&["netns", "add", &name]).context("creating a network namespace (needs root)")?;
            lab.created.push(name.clone());
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
        }
        // Interface names are at most 15 bytes.
        let (vh, vp) = (
            format!("tsih{}", pid % 100_000),
            format!("tsip{}", pid % 100_000),
        );
        let (host, peer) = (lab.host.clone(), lab.peer.clone());
        ip(&[
            "link", "add", &vh, "netns", &host, "type", "veth", "peer", "name", &vp, "netns", &peer,
        ])?;
        ip(&["-n", &host, "addr", "add", HOST_CIDR, "dev", &vh])?;
        ip(&["-n", &peer, "addr", "add", PEER_CIDR, "dev", &vp])?;
        ip(&["-n", &host, "link", "set", &vh, "up"])?;
        ip(&["-n", &peer, "link", "set", &vp, "up"])?;
        Ok(lab)
    }

    pub fn host_path(&self) -> PathBuf {
        PathBuf::from(RUN_NETNS).join(&self.host)
    }

    pub fn peer_path(&self) -> PathBuf {
        PathBuf::from(RUN_NETNS).join(&self.peer)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The veth pair goes with its namespaces; a namespace goes once no
        // process or socket holds it any more.
        for name in self.created.drain(..) {
            if let Err(e) = ip(&["netns", "del", &name]) {
                eprintln!("tcpstall-bench: removing namespace {name}: {e:#}");
            }
        }
    }
}
