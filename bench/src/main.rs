//! tcpstall benchmarks (see BENCHMARKS.md at the repository root).
//!
//! `tcpstall-bench poll --conns 10000,50000` opens that many established
//! loopback connections in helper processes and measures the CPU time of
//! one full poll three ways: tcpstall's poller with parsing and derivation,
//! a raw sock_diag dump that only receives the bytes, and `ss -tinmH`.
//!
//! `tcpstall-bench bpf-poll --conns 20000,50000` measures the BPF
//! iter/tcp pass against the sock_diag pass it enriches.
//!
//! `tcpstall-bench collector-load` simulates many agents over real gRPC
//! against one real `tcpstall-collector` process and measures its CPU,
//! memory, database rows and the time from a stall to its stored episode.
//!
//! `tcpstall-bench agent-idle` runs a real `tcpstall-agent` on a host with
//! many idle connections and measures its CPU and the bytes it sends.
//!
//! `tcpstall-bench agent-churn` runs a real `tcpstall-agent` on a host
//! whose connections are opened and closed a thousand times a second, and
//! follows its CPU, memory and descriptors, and the stalls it reports.
#![forbid(unsafe_code)]

mod agent_idle;
mod bpf_poll;
mod churn;
mod holder;
mod lab;
mod load;
mod measure;
mod poll;
mod procfs;
mod procs;
mod snapshot;
mod web;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The collector's allocator: `collector-inproc` runs the collector's code
/// in this process and must measure it as the collector runs it.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// The BPF iter/tcp pass against the sock_diag pass it enriches, over
    /// N established loopback connections (2N sockets). Needs root.
    BpfPoll(bpf_poll::BpfPollArgs),
    /// Many simulated agents over real gRPC against one real collector:
    /// samples ingested, collector CPU and memory, SQLite rows, and the
    /// time from a stall's start to its stored episode.
    CollectorLoad(load::LoadArgs),
    /// The collector's own work per sample (decode and check, matcher,
    /// store) on the same simulated hosts, in one process, no network.
    CollectorInproc(load::inproc::InprocArgs),
    /// A real agent on a host with many idle connections: its CPU share
    /// and the bytes per second it sends to a real collector.
    AgentIdle(agent_idle::IdleArgs),
    /// A real agent on a host whose connections come and go (opened and
    /// closed every second, some held stalls): its CPU per poll, memory
    /// and descriptors over time, and the stalls made against the held
    /// spans it sent.
    AgentChurn(churn::ChurnArgs),
    /// The web page's answers over a large store: History with each
    /// filter over 1,000,000 episodes, Now with 1,000 open.
    WebPage(web::WebArgs),
    /// The one-shot view (`tcpstall-agent snapshot`, its table and JSON)
    /// against `ss -tinmH` over N established loopback connections.
    Snapshot(snapshot::SnapshotArgs),
    /// Internal: hold churning connections until stdin closes.
    #[command(hide = true)]
    ChurnHold(churn::hold::ChurnHoldArgs),
    /// Internal: hold loopback connections until stdin closes.
    #[command(hide = true)]
    Hold(holder::HoldArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Poll(args) => poll::run(&args),
        Command::BpfPoll(args) => bpf_poll::run(&args),
        Command::CollectorLoad(args) => load::run(&args),
        Command::CollectorInproc(args) => load::inproc::run(&args),
        Command::AgentIdle(args) => agent_idle::run(&args),
        Command::AgentChurn(args) => churn::run(&args),
        Command::WebPage(args) => web::run(&args),
        Command::Snapshot(args) => snapshot::run(&args),
        Command::ChurnHold(args) => churn::hold::churn_hold(&args),
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
