//! tcpstall benchmarks (see BENCHMARKS.md at the repository root).
//!
//! `tcpstall-bench poll --conns 10000,50000` opens that many established
//! loopback connections in helper processes and measures the CPU time of
//! one full poll three ways: tcpstall's poller with parsing and derivation,
//! a raw sock_diag dump that only receives the bytes, and `ss -tinmH`.
#![forbid(unsafe_code)]

mod holder;
mod measure;
mod poll;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Benchmarks for tcpstall.
#[derive(Debug, Parser)]
#[command(name = "tcpstall-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// CPU time per full poll: tcpstall's poll, a raw dump, and `ss -tinmH`
    /// over N established loopback connections (2N sockets).
    Poll(poll::PollArgs),
    /// Internal: hold loopback connections until stdin closes.
    #[command(hide = true)]
    Hold(holder::HoldArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Poll(args) => poll::run(&args),
        Command::Hold(args) => holder::hold(&args),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tcpstall-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}
