//! Holder processes: each opens a listener on its own loopback address,
//! connects to it N times, accepts every connection, and keeps both ends
//! open until its stdin closes.
//!
//! Or, with [`Placement::Netns`], each listens on the far side of a veth
//! pair in a peer network namespace and connects from a host namespace:
//! the host namespace then holds one socket per connection, as a host
//! talking to other hosts does.
//!
//! One process may hold only 20,000 descriptors, and each connection costs
//! two, so the bench spreads connections over several holders. Each holder
//! listens on a distinct 127.0.1.x address, so the 4-tuples of different
//! holders never compete for the same ephemeral ports. Every socket gets
//! `SO_LINGER` 0: when a holder exits, its connections end with a RST and
//! leave no TIME-WAIT sockets for a later poll to count.
//!
//! Some connections may be held stuck (`--stuck-every`): the connecting
//! end writes until its send buffer is full and the accepting end never
//! reads, so the connecting end's send queue is held (a shut window), as a
//! server's is behind a client that stopped reading. Their buffers are
//! small, so that a thousand of them hold a few tens of megabytes.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, ensure, Context};
use nix::sys::socket::{setsockopt, sockopt};

/// Two descriptors per connection; 9,000 connections stay clear of the
/// 20,000-descriptor limit with room for the listener and stdio.
pub const MAX_PER_HOLDER: usize = 9_000;

/// Bytes left unread in the receive queue of some accepted sockets: a
/// request the server has not read yet.
const UNREAD_BYTES: usize = 64;

/// Arguments of the hidden `hold` subcommand.
#[derive(Debug, clap::Args)]
pub struct HoldArgs {
    /// Address to listen on and connect to: loopback, or with
    /// --listen-netns an address of that namespace.
    #[arg(long)]
    addr: Ipv4Addr,
    /// Network namespace (a path) to listen in; the accepted ends live there.
    #[arg(long, requires = "connect_netns")]
    listen_netns: Option<PathBuf>,
    /// Network namespace (a path) to connect from.
    #[arg(long, requires = "listen_netns")]
    connect_netns: Option<PathBuf>,
    /// Connections to open and hold (both ends in this process).
    #[arg(long)]
    conns: usize,
    /// One connection in this many keeps 64 unread bytes in the accepting
    /// socket's receive queue (0: none).
    #[arg(long, default_value_t = 10)]
    unread_every: usize,
    /// One connection in this many is held stuck: its connecting end's
    /// send queue full, behind an accepting end that never reads (0: none).
    #[arg(long, default_value_t = 0)]
    stuck_every: usize,
}

/// Buffer sizes asked for on stuck connections (the kernel doubles them).
const STUCK_BUF: usize = 4096;

/// Fills `client`'s send queue: writes until the socket takes no more.
fn fill(client: &TcpStream) -> anyhow::Result<usize> {
    setsockopt(client, sockopt::SndBuf, &STUCK_BUF).context("SO_SNDBUF")?;
    client.set_nonblocking(true)?;
    let chunk = [0x53u8; 4096];
    let mut total = 0;
    loop {
        match (&*client).write(&chunk) {
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(total),
            Err(e) => return Err(e).context("filling a stuck connection"),
        }
    }
}

/// Runs a holder: prints `ready N` once every connection is established,
/// then waits for stdin to close.
pub fn hold(args: &HoldArgs) -> anyhow::Result<()> {
    ensure!(
        args.conns <= MAX_PER_HOLDER,
        "{} connections need more than the 20,000 descriptors a process may hold",
        args.conns
    );
    let listener = match (&args.listen_netns, &args.connect_netns) {
        (Some(listen), Some(connect)) => {
            ensure!(
                is_lab(args.addr),
                "{} is not in 198.18.0.0/15, the benchmark range",
                args.addr
            );
            let listener = in_netns(listen, || TcpListener::bind((args.addr, 0)))?;
            // This process's sockets from now on: the connecting ends.
            enter(connect)?;
            listener
        }
        _ => {
            ensure!(
                args.addr.is_loopback(),
                "{} is not a loopback address",
                args.addr
            );
            TcpListener::bind((args.addr, 0))
        }
    }
    .with_context(|| format!("listening on {}", args.addr))?;
    if args.stuck_every > 0 {
        // Inherited by the accepted ends: small windows to fill.
        setsockopt(&listener, sockopt::RcvBuf, &STUCK_BUF).context("SO_RCVBUF")?;
    }
    let target = listener.local_addr()?;
    let mut held = Vec::with_capacity(2 * args.conns);
    for i in 0..args.conns {
        let (client, server) = connect_one(&listener, target)
            .with_context(|| format!("connection {} of {} to {target}", i + 1, args.conns))?;
        if args.stuck_every > 0 && i % args.stuck_every == args.stuck_every / 2 {
            fill(&client)?;
        } else if args.unread_every > 0 && i % args.unread_every == 0 {
            (&client).write_all(&[0x5a; UNREAD_BYTES])?;
        }
        held.push(client);
        held.push(server);
    }
    let mut out = io::stdout().lock();
    writeln!(out, "ready {}", args.conns)?;
    out.flush()?;
    drop(out);
    // Returns at EOF: when the bench closes our stdin or dies.
    io::copy(&mut io::stdin().lock(), &mut io::sink())?;
    drop(held);
    drop(listener);
    Ok(())
}

/// Whether `ip` is in 198.18.0.0/15 (RFC 2544: benchmarking).
pub fn is_lab(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    a == 198 && (b & 0xfe) == 18
}

/// Moves the calling thread into the network namespace at `path`.
pub(crate) fn enter(path: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering {}", path.display()))
}

/// Runs `f` on a thread inside the network namespace at `path`; sockets it
/// creates stay there.
pub(crate) fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(path)?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the thread in {} panicked", path.display()))?
    })
}

/// Connects once and accepts at once, so the accept queue never fills.
fn connect_one(
    listener: &TcpListener,
    target: SocketAddr,
) -> anyhow::Result<(TcpStream, TcpStream)> {
    let client = TcpStream::connect(target).context("connect")?;
    let (server, _) = listener.accept().context("accept")?;
    let abort = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(&client, sockopt::Linger, &abort).context("SO_LINGER")?;
    setsockopt(&server, sockopt::Linger, &abort).context("SO_LINGER")?;
    Ok((client, server))
}

/// Where a holder's two ends live.
#[derive(Debug, Clone, Default)]
pub enum Placement {
    /// Both on this namespace's loopback, each holder on its own 127.0.1.x.
    #[default]
    Loopback,
    /// Listening ends in `peer` on `addr`, connecting ends in `host`.
    Netns {
        host: PathBuf,
        peer: PathBuf,
        addr: Ipv4Addr,
    },
}

/// The holder processes of one bench run. Dropping it closes their stdin,
/// kills them and waits for them, so none outlives the bench.
#[derive(Debug, Default)]
pub struct Holders {
    children: Vec<Child>,
    held: usize,
    placement: Placement,
}

impl Holders {
    /// Holders placed as `placement` says.
    pub fn new(placement: Placement) -> Holders {
        Holders {
            children: Vec::new(),
            held: 0,
            placement,
        }
    }

    /// Connections held so far.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Starts holders until `total` connections are held, `per_holder` at
    /// most in each, and waits until all of them are established.
    pub fn grow_to(
        &mut self,
        total: usize,
        per_holder: usize,
        unread_every: usize,
    ) -> anyhow::Result<()> {
        self.grow_to_stuck(total, per_holder, unread_every, 0)
    }

    /// [`Holders::grow_to`], one connection in `stuck_every` held stuck
    /// (0: none).
    pub fn grow_to_stuck(
        &mut self,
        total: usize,
        per_holder: usize,
        unread_every: usize,
        stuck_every: usize,
    ) -> anyhow::Result<()> {
        ensure!(
            (1..=MAX_PER_HOLDER).contains(&per_holder),
            "--per-holder must be between 1 and {MAX_PER_HOLDER}"
        );
        let exe = std::env::current_exe().context("finding our own executable")?;
        let mut waiting = Vec::new();
        let mut planned = self.held;
        while planned < total {
            let n = (total - planned).min(per_holder);
            let index = self.children.len();
            let Ok(last) = u8::try_from(index + 1) else {
                bail!("more than 254 holder processes; raise --per-holder");
            };
            let mut cmd = Command::new(&exe);
            cmd.arg("hold");
            let addr = match &self.placement {
                Placement::Loopback => Ipv4Addr::new(127, 0, 1, last),
                Placement::Netns { host, peer, addr } => {
                    cmd.arg("--listen-netns").arg(peer);
                    cmd.arg("--connect-netns").arg(host);
                    *addr
                }
            };
            let mut child = cmd
                .arg("--addr")
                .arg(addr.to_string())
                .arg("--conns")
                .arg(n.to_string())
                .arg("--unread-every")
                .arg(unread_every.to_string())
                .arg("--stuck-every")
                .arg(stuck_every.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting holder {}", exe.display()))?;
            let stdout = child.stdout.take();
            // Kept before anything can fail, so Drop reaps it.
            self.children.push(child);
            waiting.push((stdout, n, addr));
            planned += n;
        }
        for (stdout, n, addr) in waiting {
            let Some(stdout) = stdout else {
                bail!("holder on {addr} has no stdout");
            };
            let mut line = String::new();
            BufReader::new(stdout)
                .read_line(&mut line)
                .with_context(|| format!("reading from holder on {addr}"))?;
            if line.trim() != format!("ready {n}") {
                bail!(
                    "holder on {addr} did not get ready (said {:?})",
                    line.trim()
                );
            }
            self.held += n;
        }
        Ok(())
    }
}

impl Drop for Holders {
    fn drop(&mut self) {
        for child in &mut self.children {
            drop(child.stdin.take());
        }
        for child in &mut self.children {
            // A holder that already left makes kill fail; wait reaps it
            // either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
