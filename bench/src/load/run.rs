//! The run of `collector-load`: the collector (or the fleet's nodes and
//! servers) started, every simulated agent connected (spread over the
//! nodes), the idle baseline, the warm-up and the measured window, then
//! the report.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use tcpstall_agent::run::monotonic;
use tokio::sync::{mpsc, watch};
use tonic::transport::{Channel, Endpoint};

use super::after::after_run;
use super::agent::{self, Counters, Shared};
use super::probe;
use super::report::report;
use super::snap::{snap, Measured};
use super::system::System;
use super::LoadArgs;
use crate::procfs;
use crate::procs;

/// Runs the benchmark and prints a markdown report on stdout.
pub(crate) fn run(args: &LoadArgs) -> anyhow::Result<()> {
    args.fleet.check()?;
    ensure!(
        args.agents_per_conn >= 1,
        "--agents-per-conn must be at least 1"
    );
    ensure!(
        args.interval >= Duration::from_millis(50),
        "--interval below 50ms"
    );
    ensure!(args.threads >= 1, "--threads must be at least 1");
    ensure!(args.batch_max >= 1, "--batch-max must be at least 1");
    // Each HTTP/2 connection is one descriptor here and one in the
    // collector; a process may hold 20,000.
    let conns = args.fleet.agents.div_ceil(args.agents_per_conn);
    ensure!(
        conns <= 19_000,
        "{conns} connections exceed the 20,000 descriptors a process may hold; raise --agents-per-conn"
    );
    let bins = procs::bin_dir(args.bin_dir.as_deref())?;
    let threshold = humantime::format_duration(args.threshold).to_string();
    eprintln!("tcpstall-bench: starting the collector ...");
    let mut flags = vec![
        "--threshold".to_string(),
        threshold,
        "--metrics-listen".to_string(),
        "127.0.0.1:0".to_string(),
    ];
    if let Some(max) = args.max_db_bytes {
        flags.extend(["--max-db-bytes".to_string(), max.to_string()]);
    }
    let mut system = System::start(args, &bins, &flags)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .thread_name("bench-rt")
        .enable_all()
        .build()
        .context("starting the generator's runtime")?;
    let measured = runtime.block_on(drive(args, &mut system));
    runtime.shutdown_timeout(Duration::from_secs(5));
    let measured = measured?;
    let after = after_run(&system)?;
    let alive = system.alive();
    if args.keep {
        system.keep();
    }
    report(args, &system, &measured, &after, alive);
    drop(system);
    Ok(())
}

async fn drive(args: &LoadArgs, system: &mut System) -> anyhow::Result<Measured> {
    let pid = system.first().pid();
    let shape = args.shape();
    let shared = Arc::new(Shared {
        counters: Counters::default(),
        load: std::sync::atomic::AtomicBool::new(false),
        shape,
        seed: args.seed,
        buffer: args.buffer,
        batch_max: args.batch_max,
    });
    let endpoints = system
        .nodes
        .iter()
        .map(|c| {
            Ok(Endpoint::from_shared(c.url())?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true))
        })
        .collect::<anyhow::Result<Vec<Endpoint>>>()?;
    // The probes ask the first node: in fleet mode it answers from the
    // shared store, whichever node judged the episode.
    let endpoint = endpoints[0].clone();
    let url = system.first().url();
    let n_conns = args.fleet.agents.div_ceil(args.agents_per_conn) as usize;
    eprintln!(
        "tcpstall-bench: collector pid {pid} on {url} ({} node(s)); opening {n_conns} HTTP/2 connections ...",
        endpoints.len()
    );
    let t0 = Instant::now();
    let mut channels: Vec<Channel> = Vec::with_capacity(n_conns);
    // Connection i goes to node i mod N: the agents spread evenly.
    for i in 0..n_conns {
        channels.push(
            endpoints[i % endpoints.len()]
                .connect()
                .await
                .context("connecting to the collector")?,
        );
    }
    let connect_time = t0.elapsed();

    let (stop_tx, stop_rx) = watch::channel(false);
    let probe_hosts: Vec<u32> = (0..args.probe_hosts.min(args.fleet.agents)).collect();
    let (stall_tx, stall_rx) = mpsc::channel(65_536);
    let query = endpoint.connect().await.context("connecting the probe")?;
    let probe = tokio::spawn(probe::run(
        query,
        probe_hosts.clone(),
        stall_rx,
        args.probe_every,
        (3 * args.deadline()).max(Duration::from_secs(30)),
        stop_rx.clone(),
    ));
    let delay = tokio::spawn(probe::matcher_delay(
        endpoint
            .connect()
            .await
            .context("connecting the delay probe")?,
        Duration::from_millis(500),
        stop_rx.clone(),
    ));
    let mut agents = tokio::task::JoinSet::new();
    for i in 0..args.fleet.agents {
        let channel = channels[(i / args.agents_per_conn) as usize].clone();
        let stalls = probe_hosts.contains(&i).then(|| stall_tx.clone());
        agents.spawn(agent::run(
            i,
            channel,
            shared.clone(),
            stop_rx.clone(),
            stalls,
        ));
    }
    drop(stall_tx);
    drop(channels);
    let c = &shared.counters;
    let deadline = Instant::now() + Duration::from_secs(120);
    while c.welcomed.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed)
        < u64::from(args.fleet.agents)
    {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} agents welcomed after 120 s",
                c.welcomed.load(Ordering::Relaxed),
                args.fleet.agents
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(Err(e)) = agents.try_join_next() {
        bail!("an agent task failed: {e}");
    }
    let failed = c.failed.load(Ordering::Relaxed);
    ensure!(failed == 0, "{failed} simulated agents failed to connect");
    eprintln!(
        "tcpstall-bench: {} agents connected in {:.1} s; {} heartbeat-only polls ...",
        args.fleet.agents,
        connect_time.as_secs_f64(),
        args.idle_polls
    );

    // Idle baseline: connected, heartbeats only.
    let idle_t0 = system.ticks()?;
    let idle_at = Instant::now();
    tokio::time::sleep(args.interval * args.idle_polls).await;
    let idle_cpu = procfs::percent_of_core(
        system.ticks()?.since(&idle_t0).nodes.total(),
        idle_at.elapsed(),
    );
    let idle = system.mem()?;

    eprintln!(
        "tcpstall-bench: load on; warm-up {} ...",
        humantime::format_duration(args.warmup())
    );
    shared.load.store(true, Ordering::Relaxed);
    tokio::time::sleep(args.warmup()).await;
    ensure!(
        system.alive(),
        "a collector died during the warm-up:\n{}",
        system.log_tail(20)
    );

    eprintln!(
        "tcpstall-bench: window of {} starts (collector pid {pid}) ...",
        humantime::format_duration(args.duration)
    );
    let start = snap(system, c).await?;
    let mut perf = match &args.perf {
        Some(out) => Some(procs::Perf::record(pid, out, args.duration)?),
        None => None,
    };
    let mut series = Vec::new();
    let step = args.every.min(args.duration);
    let window_end = start.at + args.duration;
    loop {
        let left = window_end.saturating_sub(monotonic());
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(left.min(step)).await;
        if !system.alive() {
            bail!(
                "a collector died during the window:\n{}",
                system.log_tail(20)
            );
        }
        series.push(snap(system, c).await?);
    }
    let end = series.last().cloned().context("an empty window")?;
    let memory = system.metrics().ok().and_then(|m| {
        let get = |k: &str| m.get(k).copied();
        Some((
            get("tcpstall_collector_tracked_bytes")?,
            get("tcpstall_collector_heap_allocated_bytes")?,
            get("tcpstall_collector_heap_resident_bytes")?,
        ))
    });
    if let Some(p) = perf.as_mut() {
        p.wait();
    }
    eprintln!("tcpstall-bench: window over; stopping the agents ...");
    let _ = stop_tx.send(true);
    let stop_deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(stop_deadline);
    loop {
        tokio::select! {
            r = agents.join_next() => if r.is_none() { break },
            _ = &mut stop_deadline => {
                agents.abort_all();
                break;
            }
        }
    }
    let probed = probe.await.context("the probe task")?;
    let delays = delay.await.context("the delay probe")?;
    Ok(Measured {
        connections: n_conns,
        connect_time,
        idle,
        idle_cpu,
        window_start: start.at,
        window_end: end.at,
        start,
        series,
        end,
        probed,
        delays,
        failed_agents: c.failed.load(Ordering::Relaxed),
        memory,
    })
}
