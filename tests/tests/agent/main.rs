//! End-to-end tests of the agent's reading: real sockets on loopback and in
//! namespaces, real sock_diag, the real binary.

mod addresses;
mod bpf;
mod cli;
mod conntrack;
mod failover;
mod families;
mod kernel_filter;
mod namespaces;
mod owner;
mod positions;
mod translate;
mod wanted;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

/// A connected loopback pair: `client` connected, `server` accepted.
#[derive(Debug)]
pub struct Conn {
    pub client: TcpStream,
    pub server: TcpStream,
    pub client_addr: SocketAddr,
    pub server_addr: SocketAddr,
    /// Kept open so the server side counts as accepted.
    pub _listener: TcpListener,
}

impl Conn {
    pub fn open(bind: &str) -> Conn {
        let listener = TcpListener::bind(bind).expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        Conn {
            client_addr: client.local_addr().expect("client addr"),
            server_addr: server.local_addr().expect("server addr"),
            client,
            server,
            _listener: listener,
        }
    }
}

/// Writes exactly `n` bytes.
pub fn send(s: &mut TcpStream, n: usize) {
    s.write_all(&vec![0x5a; n]).expect("write");
}

/// Reads exactly `n` bytes.
pub fn recv(s: &mut TcpStream, n: usize) {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).expect("read");
}

/// Writes to `s` until its send buffer is full: the peer stopped reading,
/// so the queue stays.
pub fn fill(s: &mut TcpStream) {
    s.set_nonblocking(true).expect("nonblocking");
    let chunk = vec![0x42u8; 64 * 1024];
    loop {
        match s.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("write: {e}"),
        }
    }
}
