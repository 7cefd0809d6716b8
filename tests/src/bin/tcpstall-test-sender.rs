//! A process that holds a stuck sender, for the tests that look at a
//! socket's owner: connects to the address after `--connect`, writes until
//! its send queue takes no more, says `held LOCAL_ADDR` on stdout, and
//! waits for its stdin to close. Every other argument is ignored, as an
//! application's own flags are to tcpstall (the tests put secrets there).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let Some(addr) = args
        .iter()
        .position(|a| a == "--connect")
        .and_then(|i| args.get(i + 1))
    else {
        eprintln!("tcpstall-test-sender: --connect ADDR is required");
        return ExitCode::from(2);
    };
    match hold(addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcpstall-test-sender: {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn hold(addr: &str) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nonblocking(true)?;
    let chunk = [0x53u8; 65536];
    loop {
        match s.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    println!("held {}", s.local_addr()?);
    std::io::stdout().flush()?;
    // Until the test closes our stdin (or dies).
    let mut sink = Vec::new();
    std::io::stdin().read_to_end(&mut sink)?;
    Ok(())
}
