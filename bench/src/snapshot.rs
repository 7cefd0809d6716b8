//! `tcpstall-bench snapshot`: the one-shot view against `ss -tinmH`
//! (issue 27), over the same established loopback connections: the CPU of
//! each whole process, `tcpstall-agent snapshot` (the table),
//! `snapshot --json` (with every probe the host allows) and `ss -tinmH`,
//! each run as a child with stdout to /dev/null and measured with
//! `getrusage(RUSAGE_CHILDREN)` deltas, alternated in a rotating order so
//! that the machine's noise hits all three. Run as root for the probes.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context};
use nix::sys::resource::UsageWho;

use crate::holder::{Holders, MAX_PER_HOLDER};
use crate::measure::{timed, Summary};

/// The target: each view at most half of `ss -tinmH`.
const TARGET_VS_SS: f64 = 0.5;

/// Arguments of `tcpstall-bench snapshot`.
#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    /// Established connections to hold, one run per value, comma-separated
    /// and ascending (both ends are held: 2N sockets).
    #[arg(long, value_delimiter = ',', required = true)]
    conns: Vec<usize>,
    /// Measured runs of each view per N, after one warm-up of each.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Connections per holder process.
    #[arg(long, default_value_t = MAX_PER_HOLDER)]
    per_holder: usize,
    /// The agent to run [default: tcpstall-agent beside this binary].
    #[arg(long)]
    agent: Option<PathBuf>,
    /// The `ss` to compare with.
    #[arg(long, default_value = "ss")]
    ss: PathBuf,
}

const VIEWS: [(&str, &[&str]); 3] = [
    ("`tcpstall-agent snapshot`", &["snapshot"]),
    ("`tcpstall-agent snapshot --json`", &["snapshot", "--json"]),
    ("`ss -tinmH`", &["-tinmH"]),
];

/// Runs the benchmark and prints a markdown report on stdout.
pub fn run(args: &SnapshotArgs) -> anyhow::Result<()> {
    ensure!(args.runs > 0, "--runs must be at least 1");
    ensure!(
        args.conns.windows(2).all(|w| w[0] < w[1]) && args.conns.first() > Some(&0),
        "--conns must be positive and ascending"
    );
    let agent = match &args.agent {
        Some(a) => a.clone(),
        None => std::env::current_exe()
            .context("this binary's path")?
            .with_file_name("tcpstall-agent"),
    };
    let programs = [agent.clone(), agent, args.ss.clone()];
    let mut holders = Holders::default();
    println!(
        "| sockets | view | CPU ms, median of {} (min) | against `ss -tinmH` |",
        args.runs
    );
    println!("|---:|---|---:|---:|");
    for &n in &args.conns {
        eprintln!("tcpstall-bench: opening connections up to {n} ...");
        holders.grow_to(n, args.per_holder, 10)?;
        let mut cpu: [Vec<std::time::Duration>; 3] = Default::default();
        for (i, (program, (_, view_args))) in programs.iter().zip(VIEWS).enumerate() {
            // Warm-up: caches, and the check that each view runs.
            view(program, view_args).with_context(|| format!("warming up view {i}"))?;
        }
        for r in 0..args.runs {
            for k in 0..VIEWS.len() {
                let i = (r + k) % VIEWS.len();
                let (run, ()) =
                    timed(UsageWho::RUSAGE_CHILDREN, || view(&programs[i], VIEWS[i].1))?;
                cpu[i].push(run.cpu.total());
            }
        }
        let ss = Summary::of(cpu[2].iter().copied());
        for (i, (name, _)) in VIEWS.iter().enumerate() {
            let s = Summary::of(cpu[i].iter().copied());
            let ratio = s.median_ms / ss.median_ms;
            let verdict = if i == 2 {
                String::new()
            } else if ratio <= TARGET_VS_SS {
                format!("{ratio:.2}× (target ≤ {TARGET_VS_SS}: met)")
            } else {
                format!("{ratio:.2}× (target ≤ {TARGET_VS_SS}: not met)")
            };
            println!(
                "| {} | {name} | {:.1} ({:.1}) | {verdict} |",
                2 * holders.held(),
                s.median_ms,
                s.min_ms
            );
        }
    }
    Ok(())
}

/// One view, waited for, its output thrown away.
fn view(program: &PathBuf, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {}", program.display()))?;
    if !status.success() {
        bail!("{} {args:?}: {status}", program.display());
    }
    Ok(())
}
