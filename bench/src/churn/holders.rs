//! The churning holder processes of `agent-churn` ([`super::hold`], one
//! per `--per-holder` connections): started with their share of the rates,
//! their counters read from their stdout, told to stop making stalls.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{bail, ensure, Context};

use super::hold::Counts;
use super::ChurnArgs;
use crate::lab::{self, Lab};

/// The churning holder processes. Dropping them closes their stdin, kills
/// them and waits for them.
pub(super) struct ChurnHolders {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    counts: Vec<Arc<Mutex<Counts>>>,
}

impl ChurnHolders {
    /// Starts enough holders for `args.conns`, each with its share of the
    /// rates, and waits until every one holds its first connections.
    pub(super) fn start(args: &ChurnArgs, lab: &Lab) -> anyhow::Result<ChurnHolders> {
        ensure!(
            (1..=crate::holder::MAX_PER_HOLDER).contains(&args.per_holder),
            "--per-holder must be between 1 and {}",
            crate::holder::MAX_PER_HOLDER
        );
        let exe = std::env::current_exe().context("finding our own executable")?;
        let n = args.conns.div_ceil(args.per_holder).max(1);
        let stall_rate = args.suspect_frac * args.conns as f64 / args.stall_for.as_secs_f64();
        let mut h = ChurnHolders {
            children: Vec::new(),
            stdins: Vec::new(),
            counts: Vec::new(),
        };
        let mut readers = Vec::new();
        for i in 0..n {
            let conns = args.conns / n + usize::from(i < args.conns % n);
            let mut child = Command::new(&exe)
                .arg("churn-hold")
                .arg("--addr")
                .arg(lab::PEER_ADDR.to_string())
                .arg("--listen-netns")
                .arg(lab.peer_path())
                .arg("--connect-netns")
                .arg(lab.host_path())
                .arg("--conns")
                .arg(conns.to_string())
                .arg("--rate")
                .arg((args.rate / n as f64).to_string())
                .arg("--stall-rate")
                .arg((stall_rate / n as f64).to_string())
                .arg("--stall-for")
                .arg(humantime::format_duration(args.stall_for).to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting holder {}", exe.display()))?;
            let stdout = child.stdout.take();
            let stdin = child.stdin.take();
            h.children.push(child);
            h.stdins.extend(stdin);
            readers.push((stdout.context("a holder without stdout")?, conns));
        }
        for (i, (stdout, conns)) in readers.into_iter().enumerate() {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines
                .next()
                .transpose()
                .context("reading from a holder")?
                .unwrap_or_default();
            if first.trim() != format!("ready {conns}") {
                bail!("holder {i} did not get ready (said {:?})", first.trim());
            }
            let counts = Arc::new(Mutex::new(Counts::default()));
            let mine = counts.clone();
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    if let (Some(c), Ok(mut m)) = (Counts::parse(&line), mine.lock()) {
                        *m = c;
                    }
                }
            });
            h.counts.push(counts);
        }
        Ok(h)
    }

    /// Every holder's counters, added up (each as of its last line).
    pub(super) fn counts(&self) -> Counts {
        let mut total = Counts::default();
        for c in &self.counts {
            if let Ok(c) = c.lock() {
                total.add(&c);
            }
        }
        total
    }

    /// Stops new stalls; the ones under way go on to drain.
    pub(super) fn quiesce(&mut self) -> anyhow::Result<()> {
        for s in &mut self.stdins {
            s.write_all(b"quiesce\n").context("telling a holder")?;
            s.flush()?;
        }
        Ok(())
    }

    pub(super) fn alive(&mut self) -> bool {
        self.children
            .iter_mut()
            .all(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for ChurnHolders {
    fn drop(&mut self) {
        self.stdins.clear();
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
