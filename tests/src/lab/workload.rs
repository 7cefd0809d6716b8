//! The lab's traffic, shaped like the RPC in the question: a client sends
//! a request naming the size of the response it wants, the server answers
//! with that many bytes, more than the client's receive window takes at
//! once, so that anything that stops the flow holds the server's send
//! queue.
//!
//! The application ends run on their own threads ([`Writer`], [`Reader`])
//! with short socket timeouts so that they notice when to stop; the test
//! steers them (pause, resume, stop) and reads their counters. Their own
//! pacing waits (a slow reader's) are the workload, not the test waiting.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::net::Host;

/// How long a blocked read or write waits before looking at its flags.
const TICK: Duration = Duration::from_millis(20);

/// One RPC connection between two lab hosts.
#[derive(Debug)]
pub struct Rpc {
    /// The requester's end.
    pub client: TcpStream,
    /// The responder's end: the sender that stalls.
    pub server: TcpStream,
    pub client_addr: SocketAddr,
    pub server_addr: SocketAddr,
    /// The server as the client sees it (what it dialled): `server_addr`
    /// unless a translation on the way rewrote it (a service address, a
    /// port-forward).
    pub client_peer: SocketAddr,
    /// The client as the server sees it: `client_addr` unless a
    /// translation on the way rewrote it (masquerade, a NAT gateway).
    pub server_peer: SocketAddr,
}

impl Rpc {
    /// `client` connects to a listener on `server`; the listener is closed
    /// once the connection is accepted.
    pub fn open(client: &Host, server: &Host) -> Rpc {
        let listener = server.listen();
        let to = listener.local_addr().expect("listener address");
        Rpc::through(client, listener, to)
    }

    /// `client` dials `to`, which leads to `listener` directly or through
    /// translations on the way; the listener is closed once the connection
    /// is accepted. Gives up after a few seconds, saying so, when the way
    /// leads nowhere.
    pub fn through(client: &Host, listener: TcpListener, to: SocketAddr) -> Rpc {
        use nix::sys::socket::{setsockopt, sockopt};
        use nix::sys::time::{TimeVal, TimeValLike};
        let c = client.connect_within(to, Duration::from_secs(5));
        // accept(2) waits no longer than the listener's receive timeout.
        setsockopt(&listener, sockopt::ReceiveTimeout, &TimeVal::seconds(5))
            .expect("SO_RCVTIMEO on the listener");
        let (s, _) = listener
            .accept()
            .unwrap_or_else(|e| panic!("the server to accept the client from {to}: {e}"));
        // The accepted socket inherits the timeout: not the application's.
        s.set_read_timeout(None).expect("no read timeout");
        super::net::pin_congestion_control(&s);
        Rpc {
            client_addr: c.local_addr().expect("client address"),
            server_addr: s.local_addr().expect("server address"),
            client_peer: c.peer_addr().expect("whom the client dialled"),
            server_peer: s.peer_addr().expect("whom the server accepted"),
            client: c,
            server: s,
        }
    }

    /// The client asks for `len` bytes; the server reads the request and
    /// returns the size asked for.
    pub fn request(&mut self, len: u64) -> u64 {
        self.client
            .write_all(&len.to_be_bytes())
            .expect("send the request");
        self.server
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let mut req = [0u8; 8];
        self.server
            .read_exact(&mut req)
            .expect("the server reads the request");
        u64::from_be_bytes(req)
    }

    /// The server starts writing a `len`-byte response.
    pub fn respond(&self, len: u64) -> Writer {
        Writer::spawn(
            self.server.try_clone().expect("clone the server socket"),
            len,
        )
    }

    /// The client's application starts reading the response at `pace`.
    pub fn read(&self, pace: Pace) -> Reader {
        Reader::spawn(
            self.client.try_clone().expect("clone the client socket"),
            pace,
        )
    }
}

/// Writes a response of a given length, as far as the socket takes it,
/// until done or stopped.
#[derive(Debug)]
pub struct Writer {
    written: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// When the first write call was made.
    pub started: Instant,
}

impl Writer {
    fn spawn(mut s: TcpStream, len: u64) -> Writer {
        s.set_write_timeout(Some(TICK)).expect("write timeout");
        let written = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (w, st) = (written.clone(), stop.clone());
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            let chunk = vec![0x52u8; 64 * 1024];
            let mut left = len;
            while left > 0 && !st.load(Ordering::Relaxed) {
                let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
                match s.write(&chunk[..n]) {
                    Ok(k) => {
                        left -= k as u64;
                        w.fetch_add(k as u64, Ordering::Relaxed);
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => break,
                }
            }
        });
        Writer {
            written,
            stop,
            thread: Some(thread),
            started,
        }
    }

    /// Bytes the application has handed to the socket so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How the client's application reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// As fast as the data comes.
    Full,
    /// Not at all until resumed.
    Paused,
    /// `bytes` every `every`: a slow reader that keeps moving.
    Slow { bytes: usize, every: Duration },
}

const FULL: u8 = 0;
const PAUSED: u8 = 1;
const SLOW: u8 = 2;

/// Reads the response on its own thread and counts what it got.
#[derive(Debug)]
pub struct Reader {
    got: Arc<AtomicU64>,
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    /// When the last read returned data.
    last: Arc<Mutex<Option<Instant>>>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    fn spawn(mut s: TcpStream, pace: Pace) -> Reader {
        s.set_read_timeout(Some(TICK)).expect("read timeout");
        let got = Arc::new(AtomicU64::new(0));
        let mode = Arc::new(AtomicU8::new(match pace {
            Pace::Full => FULL,
            Pace::Paused => PAUSED,
            Pace::Slow { .. } => SLOW,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let last = Arc::new(Mutex::new(None));
        let (g, m, st, l) = (got.clone(), mode.clone(), stop.clone(), last.clone());
        let (slow_bytes, every) = match pace {
            Pace::Slow { bytes, every } => (bytes.max(1), every),
            _ => (64 * 1024, Duration::ZERO),
        };
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            while !st.load(Ordering::Relaxed) {
                let mode = m.load(Ordering::Relaxed);
                if mode == PAUSED {
                    std::thread::park_timeout(TICK);
                    continue;
                }
                let want = if mode == SLOW { slow_bytes } else { buf.len() };
                match s.read(&mut buf[..want]) {
                    Ok(0) => break,
                    Ok(n) => {
                        g.fetch_add(n as u64, Ordering::Relaxed);
                        if let Ok(mut l) = l.lock() {
                            *l = Some(Instant::now());
                        }
                        if mode == SLOW {
                            std::thread::park_timeout(every);
                        }
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => break,
                }
            }
        });
        Reader {
            got,
            mode,
            stop,
            last,
            thread: Some(thread),
        }
    }

    /// Bytes the application has read.
    pub fn got(&self) -> u64 {
        self.got.load(Ordering::Relaxed)
    }

    /// When the application last read something.
    pub fn last_read(&self) -> Option<Instant> {
        self.last.lock().ok().and_then(|l| *l)
    }

    /// Stops reading (the application hangs).
    pub fn pause(&self) {
        self.mode.store(PAUSED, Ordering::Relaxed);
    }

    /// Reads everything as fast as it comes.
    pub fn resume(&self) {
        self.mode.store(FULL, Ordering::Relaxed);
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Turns on keepalive with 1 s idle time and 1 s between probes, so that
/// an idle connection exchanges probes during a short test.
pub fn keepalive(s: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(s, sockopt::KeepAlive, &true).expect("SO_KEEPALIVE");
    setsockopt(s, sockopt::TcpKeepIdle, &1).expect("TCP_KEEPIDLE");
    setsockopt(s, sockopt::TcpKeepInterval, &1).expect("TCP_KEEPINTVL");
}

/// Sets or clears TCP_CORK.
pub fn cork(s: &TcpStream, on: bool) {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(s, sockopt::TcpCork, &on).expect("TCP_CORK");
}
