//! `tcpstall-collector`: receives the agents' streams, joins both ends of
//! each flow, detects and diagnoses stuck send queues, stores episodes.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tcpstall_collector::config::{Config, Flags};
use tcpstall_collector::server;

/// jemalloc: the collector frees thousands of small samples per batch and
/// allocates a few large buffers per batch; glibc consolidated its free
/// lists on every large allocation (a quarter of the collector's CPU under
/// load, in `perf`) and kept freed memory fragmented.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Joins both ends of every suspect TCP flow of a fleet, detects send
/// queues stuck past a threshold, diagnoses them and stores them in SQLite.
#[derive(Debug, Parser)]
#[command(name = "tcpstall-collector", version, about)]
struct Cli {
    #[command(flatten)]
    flags: Flags,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the effective settings as a commented TOML file.
    PrintConfig,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcpstall-collector: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(&cli.flags)?;
    if let Some(Command::PrintConfig) = cli.command {
        print!("{}", config.to_toml());
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(server::serve(config, shutdown_signal()))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}
