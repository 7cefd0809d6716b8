//! The derived stream positions on live loopback sockets, checked against
//! what the test's own application did (bytes written, bytes read), and the
//! SYN/FIN offsets pinned on this kernel.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use tcpstall_common::{Opened, SocketSample, TcpState};
use tcpstall_tests::{find, poll, wait_for};

use crate::{recv, send, Conn};

const DEADLINE: Duration = Duration::from_secs(10);

/// Both ends of `c` from one poll, once `ready` holds for them.
fn ends(
    c: &Conn,
    what: &str,
    mut ready: impl FnMut(&SocketSample, &SocketSample) -> bool,
) -> (SocketSample, SocketSample) {
    wait_for(what, DEADLINE, || {
        let all = poll(vec![]);
        let client = find(&all, c.client_addr, c.server_addr)?;
        let server = find(&all, c.server_addr, c.client_addr)?;
        ready(&client, &server).then_some((client, server))
    })
}

#[test]
fn receiver_that_stops_reading() {
    let mut c = Conn::open("127.0.0.1:0");
    send(&mut c.client, 1000);
    recv(&mut c.server, 1000);
    // The server's application stops reading; the client writes until its
    // send buffer is full.
    c.client.set_nonblocking(true).expect("nonblocking");
    let chunk = vec![0x42u8; 64 * 1024];
    let mut written: u64 = 1000;
    loop {
        match c.client.write(&chunk) {
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("write: {e}"),
        }
    }
    // Wait until the window is closed and two polls in a row agree.
    let mut last = None;
    let (a, b) = ends(
        &c,
        "the sender to see a zero window, twice alike",
        |a, b| {
            let now = (a.positions(), b.positions());
            let stable = last.replace(now) == Some(now);
            stable && a.positions().snd_wnd == Some(0)
        },
    );
    let (pa, pb) = (a.positions(), b.positions());

    assert_eq!(pa.snd_wnd, Some(0), "sender sees a zero window");
    assert!(
        pa.notsent.unwrap_or(0) > 0,
        "sender holds unsent bytes: {pa:?}"
    );
    assert_eq!(
        pa.write_seq,
        Some(written),
        "write_seq is what the application wrote"
    );
    assert_eq!(
        pa.snd_una, pb.rcv_nxt,
        "sender's snd_una is receiver's rcv_nxt, exactly"
    );
    assert_eq!(
        pb.copied,
        Some(1000),
        "receiver's application read 1000 bytes"
    );
    assert_eq!(
        u64::from(pb.recvq),
        pb.rcv_nxt.expect("rcv_nxt") - 1000,
        "recvq is rcv_nxt - copied"
    );
    assert_eq!(pb.rcv_wnd, Some(0), "receiver advertises a zero window");
    assert_eq!(
        pa.snd_nxt.zip(pa.snd_una).map(|(n, u)| n - u),
        pa.inflight.map(u64::from),
        "in flight is snd_nxt - snd_una"
    );
    assert_eq!(a.timer, Some(tcpstall_common::TimerKind::ZeroWindowProbe));
}

#[test]
fn finished_transfer_is_fully_acknowledged() {
    const M: usize = 1_000_000;
    let mut c = Conn::open("127.0.0.1:0");
    let reader = {
        let mut server = c.server.try_clone().expect("clone");
        std::thread::spawn(move || recv(&mut server, M))
    };
    send(&mut c.client, M);
    reader.join().expect("reader");
    let (a, b) = ends(&c, "the transfer to be acknowledged", |a, _| a.wqueue == 0);
    let (pa, pb) = (a.positions(), b.positions());
    let m = Some(M as u64);
    assert_eq!((pa.snd_una, pa.snd_nxt, pa.write_seq), (m, m, m));
    assert_eq!((pb.rcv_nxt, pb.copied), (m, m));
    assert_eq!((pa.sendq, pa.notsent, pa.inflight), (0, Some(0), Some(0)));
    assert_eq!(pb.recvq, 0);
}

/// The raw counters behind the positions, as the kernel reports them.
fn raw(s: &SocketSample) -> (u64, u64) {
    let info = s.info.as_ref().expect("tcp_info");
    (
        info.bytes_acked().expect("bytes_acked"),
        info.bytes_received().expect("bytes_received"),
    )
}

#[test]
fn syn_offsets_after_active_and_passive_open() {
    let mut c = Conn::open("127.0.0.1:0");
    let (a, b) = ends(&c, "both ends established", |a, b| {
        a.state == TcpState::Established && b.state == TcpState::Established
    });
    assert_eq!(a.opened, Some(Opened::Active));
    assert_eq!(b.opened, Some(Opened::Passive));
    // The connecting side's SYN is acknowledged through bytes_acked; the
    // accepting side starts past its SYN-ACK.
    assert_eq!(raw(&a), (1, 0), "active opener counts its SYN");
    assert_eq!(raw(&b), (0, 0), "passive opener counts nothing");
    for p in [a.positions(), b.positions()] {
        assert_eq!(
            (p.snd_una, p.snd_nxt, p.write_seq),
            (Some(0), Some(0), Some(0))
        );
        assert_eq!((p.rcv_nxt, p.copied), (Some(0), Some(0)));
    }

    send(&mut c.client, 10);
    recv(&mut c.server, 10);
    send(&mut c.server, 20);
    recv(&mut c.client, 20);
    let (a, b) = ends(&c, "data both ways acknowledged", |a, b| {
        a.wqueue == 0 && b.wqueue == 0 && raw(a).0 == 11 && raw(b).0 == 20
    });
    assert_eq!(raw(&a), (11, 20));
    assert_eq!(raw(&b), (20, 10));
    let (pa, pb) = (a.positions(), b.positions());
    assert_eq!((pa.snd_una, pb.rcv_nxt), (Some(10), Some(10)));
    assert_eq!((pb.snd_una, pa.rcv_nxt), (Some(20), Some(20)));
}

#[test]
fn fin_from_the_active_side_counts_one_on_both() {
    let mut c = Conn::open("127.0.0.1:0");
    send(&mut c.client, 10);
    recv(&mut c.server, 10);
    c.client.shutdown(Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    c.server.read_to_end(&mut rest).expect("read to EOF");
    assert!(rest.is_empty());
    let (a, b) = ends(&c, "the FIN acknowledged", |a, b| {
        a.state == TcpState::FinWait2 && b.state == TcpState::CloseWait
    });
    assert_eq!(raw(&a), (12, 0), "SYN + 10 bytes + FIN acknowledged");
    assert_eq!(raw(&b), (0, 11), "10 bytes + FIN received");
    let (pa, pb) = (a.positions(), b.positions());
    assert_eq!(pa.snd_una, Some(11));
    assert_eq!(pa.write_seq, Some(11), "the FIN takes a sequence number");
    assert_eq!(pa.snd_una, pb.rcv_nxt);
    assert_eq!(pb.copied, Some(11), "reading EOF consumes the FIN");
}

#[test]
fn fin_from_the_passive_side_counts_one_on_both() {
    let mut c = Conn::open("127.0.0.1:0");
    send(&mut c.server, 20);
    recv(&mut c.client, 20);
    c.server.shutdown(Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    c.client.read_to_end(&mut rest).expect("read to EOF");
    let (a, b) = ends(&c, "the server's FIN acknowledged", |a, b| {
        a.state == TcpState::CloseWait && b.state == TcpState::FinWait2
    });
    assert_eq!(raw(&b), (21, 0), "20 bytes + FIN acknowledged, no SYN");
    assert_eq!(
        raw(&a),
        (1, 21),
        "client: its SYN acked; 20 bytes + FIN received"
    );
    let (pa, pb) = (a.positions(), b.positions());
    assert_eq!(pb.snd_una, Some(21));
    assert_eq!(pb.snd_una, pa.rcv_nxt);
}

#[test]
fn accepted_socket_stays_passive_after_its_listener_closes() {
    // Servers that hand a socket to a worker and close the listener are
    // common; the SYN offset must not flip with the listener gone.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut client =
        std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (mut server, _) = listener.accept().expect("accept");
    drop(listener);
    send(&mut server, 5000);
    recv(&mut client, 5000);
    let c = (
        client.local_addr().expect("addr"),
        server.local_addr().expect("addr"),
    );
    let (a, b) = wait_for("the server's data acknowledged", DEADLINE, || {
        let all = poll(vec![]);
        let a = find(&all, c.0, c.1)?;
        let b = find(&all, c.1, c.0)?;
        (b.wqueue == 0).then_some((a, b))
    });
    assert_eq!(a.opened, Some(Opened::Active));
    assert_eq!(b.opened, Some(Opened::Passive));
    assert_eq!(b.positions().snd_una, Some(5000));
    assert_eq!(b.positions().snd_una, a.positions().rcv_nxt);
}
