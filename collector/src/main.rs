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
/// load, in `perf`) and kept freed memory fragmented. Without the feature
/// (`--no-default-features`) the system allocator serves, for heap
/// profilers that follow malloc.
#[cfg(feature = "jemalloc")]
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
        .worker_threads(config.workers())
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let (tx, reloads) = tokio::sync::mpsc::channel(4);
        tokio::spawn(reload_on_sighup(cli.flags, tx));
        server::serve_reloading(config, shutdown_signal(), reloads).await
    })
}

/// On SIGHUP, reads the settings again (file, then the same flags) and
/// hands them to the server; a file that no longer reads is logged and the
/// running settings kept.
async fn reload_on_sighup(flags: Flags, tx: tokio::sync::mpsc::Sender<Config>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; config reload disabled");
            return;
        }
    };
    while hup.recv().await.is_some() {
        match Config::load(&flags) {
            Ok(c) => {
                if tx.send(c).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload failed; the running settings stay")
            }
        }
    }
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
