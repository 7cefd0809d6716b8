//! A churning holder: keeps N connections from the host namespace to a
//! listener in the peer namespace, and every second closes the oldest
//! `rate` of them and opens as many new ones. Some new connections stall
//! (`--stall-rate` a second): the host end writes until its send buffer is
//! full and the peer end reads nothing for `--stall-for`, then reads it
//! all, so that the host end's send queue is held that long and drains.
//!
//! Closes are graceful (FIN), one end first and the other a few ticks
//! later, so that they are never simultaneous: on alternate connections
//! the host end closes first (its socket then waits in TIME-WAIT, as a
//! client's does) or the peer end (the host end passes CLOSE-WAIT and
//! LAST-ACK). A host churning connections holds both kinds; the agent dumps
//! them all every poll.
//!
//! The process prints `ready N` once its first N connections are up, then a
//! line of cumulative counters every second: `opened closed begun ended
//! cut failed live` (stalls begun, drained, cut short by their connection's
//! close; connects that failed; connections open). A `quiesce` line on
//! stdin stops new stalls; EOF on stdin ends the process.

use std::collections::VecDeque;
use std::io::{self, BufRead, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use nix::sys::socket::{setsockopt, sockopt};

use crate::holder::{enter, in_netns, is_lab, MAX_PER_HOLDER};

/// How often the loop opens, closes and drains.
const TICK: Duration = Duration::from_millis(20);

/// Between the first end's close and the second's.
const CLOSE_GAP: Duration = Duration::from_millis(100);

/// Buffer sizes asked for on the connections (the kernel doubles them):
/// small windows, so that a stall holds a few kilobytes.
const SMALL_BUF: usize = 4096;

/// Arguments of the hidden `churn-hold` subcommand.
#[derive(Debug, clap::Args)]
pub struct ChurnHoldArgs {
    /// Address in the peer namespace to listen on (198.18.0.0/15).
    #[arg(long)]
    addr: Ipv4Addr,
    /// Network namespace (a path) to listen in.
    #[arg(long)]
    listen_netns: PathBuf,
    /// Network namespace (a path) to connect from: the agent's host.
    #[arg(long)]
    connect_netns: PathBuf,
    /// Connections to keep open.
    #[arg(long)]
    conns: usize,
    /// Connections closed, and as many opened, per second.
    #[arg(long)]
    rate: f64,
    /// New connections that stall, per second.
    #[arg(long)]
    stall_rate: f64,
    /// How long each stall holds the host end's send queue.
    #[arg(long, value_parser = tcpstall_common::duration::parse)]
    stall_for: Duration,
}

/// A stall on one connection.
#[derive(Debug)]
struct Stall {
    written: usize,
    read: usize,
    /// When the peer end starts reading.
    until: Instant,
}

#[derive(Debug)]
struct Conn {
    host: TcpStream,
    peer: TcpStream,
    stall: Option<Stall>,
}

/// The counters a holder prints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub opened: u64,
    pub closed: u64,
    /// Stalls begun.
    pub begun: u64,
    /// Stalls whose peer end read everything.
    pub ended: u64,
    /// Stalls whose connection closed before they ended.
    pub cut: u64,
    /// Connects that failed.
    pub failed: u64,
    pub live: u64,
}

impl Counts {
    fn line(&self) -> String {
        format!(
            "{} {} {} {} {} {} {}",
            self.opened, self.closed, self.begun, self.ended, self.cut, self.failed, self.live
        )
    }

    /// Parses [`Counts::line`].
    pub fn parse(line: &str) -> Option<Counts> {
        let v: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let [opened, closed, begun, ended, cut, failed, live] = v.as_slice() else {
            return None;
        };
        Some(Counts {
            opened: *opened,
            closed: *closed,
            begun: *begun,
            ended: *ended,
            cut: *cut,
            failed: *failed,
            live: *live,
        })
    }

    pub fn add(&mut self, o: &Counts) {
        self.opened += o.opened;
        self.closed += o.closed;
        self.begun += o.begun;
        self.ended += o.ended;
        self.cut += o.cut;
        self.failed += o.failed;
        self.live += o.live;
    }

    /// Stalls still holding.
    pub fn stalling(&self) -> u64 {
        self.begun.saturating_sub(self.ended + self.cut)
    }
}

/// Connects once and accepts at once.
fn connect(listener: &TcpListener, target: SocketAddr) -> io::Result<(TcpStream, TcpStream)> {
    let host = TcpStream::connect(target)?;
    let (peer, _) = listener.accept()?;
    host.set_nonblocking(true)?;
    peer.set_nonblocking(true)?;
    Ok((host, peer))
}

/// Writes until the host end's send buffer takes no more.
fn fill(host: &TcpStream) -> io::Result<usize> {
    setsockopt(host, sockopt::SndBuf, &SMALL_BUF).map_err(io::Error::from)?;
    let chunk = [0x53u8; 4096];
    let mut total = 0;
    loop {
        match (&*host).write(&chunk) {
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(total),
            Err(e) => return Err(e),
        }
    }
}

/// Reads what the peer end has; true once it has read `stall.written`.
fn drain(peer: &TcpStream, stall: &mut Stall) -> bool {
    let mut buf = [0u8; 16384];
    loop {
        match (&*peer).read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => stall.read += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => return true,
        }
    }
    stall.read >= stall.written
}

/// Runs a churning holder until its stdin closes.
pub fn churn_hold(args: &ChurnHoldArgs) -> anyhow::Result<()> {
    ensure!(
        args.conns <= MAX_PER_HOLDER,
        "{} connections need more than the 20,000 descriptors a process may hold",
        args.conns
    );
    ensure!(
        is_lab(args.addr),
        "{} is not in 198.18.0.0/15, the benchmark range",
        args.addr
    );
    ensure!(args.rate >= 0.0 && args.stall_rate >= 0.0, "negative rate");
    let listener = in_netns(&args.listen_netns, || {
        let l = TcpListener::bind((args.addr, 0))?;
        // Inherited by the accepted ends: small windows to fill.
        setsockopt(&l, sockopt::RcvBuf, &SMALL_BUF).map_err(io::Error::from)?;
        Ok::<_, io::Error>(l)
    })?
    .with_context(|| format!("listening on {}", args.addr))?;
    enter(&args.connect_netns)?;
    let target = listener.local_addr()?;

    let mut live: VecDeque<Conn> = VecDeque::with_capacity(args.conns + 64);
    let mut c = Counts::default();
    for i in 0..args.conns {
        let (host, peer) = connect(&listener, target)
            .with_context(|| format!("connection {} of {} to {target}", i + 1, args.conns))?;
        c.opened += 1;
        live.push_back(Conn {
            host,
            peer,
            stall: None,
        });
    }
    c.live = live.len() as u64;
    let mut out = io::stdout().lock();
    writeln!(out, "ready {}", args.conns)?;
    out.flush()?;

    let quiesced = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    {
        let (quiesced, done) = (quiesced.clone(), done.clone());
        std::thread::spawn(move || {
            for line in io::stdin().lock().lines() {
                match line {
                    Ok(l) if l.trim() == "quiesce" => quiesced.store(true, Ordering::Relaxed),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            done.store(true, Ordering::Relaxed);
        });
    }

    let start = Instant::now();
    let mut closing: VecDeque<(Instant, TcpStream)> = VecDeque::new();
    let mut churned = 0u64;
    let mut next_report = start + Duration::from_secs(1);
    let mut next_tick = start;
    while !done.load(Ordering::Relaxed) {
        let now = Instant::now();
        let elapsed = now.duration_since(start).as_secs_f64();
        // Churn: close the oldest, open a new one, as many as are due.
        let due = (args.rate * elapsed) as u64;
        let quiet = quiesced.load(Ordering::Relaxed);
        while churned < due {
            churned += 1;
            if let Some(old) = live.pop_front() {
                if old.stall.is_some() {
                    c.cut += 1;
                }
                // Alternate which end closes first; the other follows
                // [`CLOSE_GAP`] later.
                let (first, second) = if churned.is_multiple_of(2) {
                    (old.host, old.peer)
                } else {
                    (old.peer, old.host)
                };
                drop(first);
                closing.push_back((now + CLOSE_GAP, second));
                c.closed += 1;
            }
            match connect(&listener, target) {
                Ok((host, peer)) => {
                    c.opened += 1;
                    let stall_due = (args.stall_rate * elapsed) as u64;
                    let stall = if !quiet && c.begun < stall_due {
                        c.begun += 1;
                        match fill(&host) {
                            Ok(written) => Some(Stall {
                                written,
                                read: 0,
                                until: now + args.stall_for,
                            }),
                            Err(_) => {
                                // Counted as cut: begun, never held.
                                c.cut += 1;
                                None
                            }
                        }
                    } else {
                        None
                    };
                    live.push_back(Conn { host, peer, stall });
                }
                Err(_) => c.failed += 1,
            }
        }
        // Stalls over: the peer end reads until it has everything.
        for conn in live.iter_mut() {
            if let Some(stall) = &mut conn.stall {
                if now >= stall.until && drain(&conn.peer, stall) {
                    conn.stall = None;
                    c.ended += 1;
                }
            }
        }
        while closing.front().is_some_and(|(at, _)| *at <= now) {
            closing.pop_front();
        }
        c.live = live.len() as u64;
        if now >= next_report {
            writeln!(out, "{}", c.line())?;
            out.flush()?;
            next_report += Duration::from_secs(1);
        }
        next_tick += TICK;
        let left = next_tick.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // Behind: do not try to catch up on ticks, only on what is due.
            next_tick = Instant::now();
        } else {
            std::thread::sleep(left);
        }
    }
    drop(live);
    drop(closing);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_trip_and_refuse_short_lines() {
        let c = Counts {
            opened: 7,
            closed: 6,
            begun: 5,
            ended: 3,
            cut: 1,
            failed: 2,
            live: 9,
        };
        assert_eq!(Counts::parse(&c.line()), Some(c));
        assert_eq!(c.stalling(), 1);
        assert_eq!(Counts::parse("1 2 3"), None);
        assert_eq!(Counts::parse("ready 5"), None);
    }
}
