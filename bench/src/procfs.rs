//! Another process's CPU time and memory, read from /proc: what the
//! collector and agent benchmarks measure their child processes with.
//!
//! CPU time is `utime + stime` of /proc/PID/stat (fields 14 and 15, in
//! clock ticks): the kernel's account for the whole process, threads that
//! have exited included. Per-thread figures come from
//! /proc/PID/task/TID/stat, grouped by thread name, and say where inside
//! the process the time went. /proc/PID/task/*/schedstat adds the run time
//! in nanoseconds, exact where the tick-sampled split is coarse.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

/// Clock ticks per second (`getconf CLK_TCK`).
pub fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// CPU time as /proc accounts it, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ticks {
    pub user: u64,
    pub sys: u64,
}

impl Ticks {
    pub fn total(&self) -> u64 {
        self.user + self.sys
    }

    pub fn since(&self, earlier: &Ticks) -> Ticks {
        Ticks {
            user: self.user.saturating_sub(earlier.user),
            sys: self.sys.saturating_sub(earlier.sys),
        }
    }

    /// As a duration.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.total() as f64 / clock_ticks() as f64)
    }
}

/// The name and CPU ticks of one /proc stat line (`pid (comm) state ...`).
/// The name may hold spaces and parentheses: it ends at the last `)`.
pub fn parse_stat(line: &str) -> anyhow::Result<(String, Ticks)> {
    let open = line.find('(').context("no '(' in stat")?;
    let close = line.rfind(')').context("no ')' in stat")?;
    if close < open {
        bail!("malformed stat line");
    }
    let comm = line[open + 1..close].to_string();
    // After the name: field 3 (state) is index 0, so utime (14) is 11.
    let rest: Vec<&str> = line[close + 1..].split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        rest.get(i)
            .context("stat line too short")?
            .parse()
            .context("stat field is not a number")
    };
    Ok((
        comm,
        Ticks {
            user: field(11)?,
            sys: field(12)?,
        },
    ))
}

/// CPU ticks of the whole process.
pub fn process_ticks(pid: u32) -> anyhow::Result<Ticks> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    Ok(parse_stat(&text).with_context(|| path)?.1)
}

/// CPU ticks of a process and its children, those alive and those it has
/// waited for: its own utime + stime, its cutime + cstime (children that
/// exited and were reaped), and each live child's utime + stime + cutime +
/// cstime. A server that forks a process per client (PostgreSQL's
/// backends) is measured whole this way: a backend that ends within a
/// window moves from the live sum into the parent's reaped one, so the
/// difference of two readings is the time spent between them.
pub fn tree_ticks(pid: u32) -> anyhow::Result<Ticks> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    let (_, _, mut t) = parse_stat_with_children(&text).with_context(|| path)?;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Ok(t);
    };
    for entry in dir.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may end between the listing and the read: skip it.
        let Ok(text) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        if let Ok((_, ppid, c)) = parse_stat_with_children(&text) {
            if ppid == pid {
                t.user += c.user;
                t.sys += c.sys;
            }
        }
    }
    Ok(t)
}

/// The parent pid and utime + cutime, stime + cstime of a stat line.
fn parse_stat_with_children(line: &str) -> anyhow::Result<(String, u32, Ticks)> {
    let (comm, own) = parse_stat(line)?;
    let close = line.rfind(')').context("no ')' in stat")?;
    let rest: Vec<&str> = line[close + 1..].split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        rest.get(i)
            .context("stat line too short")?
            .parse()
            .context("stat field is not a number")
    };
    let ppid = u32::try_from(field(1)?).context("ppid")?;
    Ok((
        comm,
        ppid,
        Ticks {
            user: own.user + field(13)?,
            sys: own.sys + field(14)?,
        },
    ))
}

/// One thread's CPU: ticks and scheduler run time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThreadCpu {
    pub ticks: Ticks,
    /// Run time from schedstat, nanoseconds.
    pub run_ns: u64,
}

/// Every live thread of `pid` by thread id, with its name.
pub fn threads(pid: u32) -> anyhow::Result<BTreeMap<u32, (String, ThreadCpu)>> {
    let dir = format!("/proc/{pid}/task");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| dir.clone())? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // A thread may exit between the listing and the reads.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (comm, ticks) = parse_stat(&stat)?;
        let run_ns = std::fs::read_to_string(entry.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        out.insert(tid, (comm, ThreadCpu { ticks, run_ns }));
    }
    Ok(out)
}

/// CPU per thread name between two [`threads`] readings, for threads alive
/// at both (a thread that came or went in between is left out).
pub fn threads_since(
    before: &BTreeMap<u32, (String, ThreadCpu)>,
    after: &BTreeMap<u32, (String, ThreadCpu)>,
) -> BTreeMap<String, (usize, Ticks, u64)> {
    let mut by_name: BTreeMap<String, (usize, Ticks, u64)> = BTreeMap::new();
    for (tid, (name, a)) in after {
        let Some((_, b)) = before.get(tid) else {
            continue;
        };
        let e = by_name.entry(name.clone()).or_default();
        let d = a.ticks.since(&b.ticks);
        e.0 += 1;
        e.1.user += d.user;
        e.1.sys += d.sys;
        e.2 += a.run_ns.saturating_sub(b.run_ns);
    }
    by_name
}

/// Resident memory of a process, KiB, from /proc/PID/status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mem {
    /// VmRSS: resident now.
    pub rss_kib: u64,
    /// VmHWM: the peak resident size so far.
    pub hwm_kib: u64,
}

impl Mem {
    pub fn of(pid: u32) -> anyhow::Result<Mem> {
        Self::from_status(Path::new(&format!("/proc/{pid}/status")))
    }

    pub fn from_status(path: &Path) -> anyhow::Result<Mem> {
        let status =
            std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().strip_suffix("kB"))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("no {name} in {}", path.display()))
        };
        Ok(Mem {
            rss_kib: field("VmRSS")?,
            hwm_kib: field("VmHWM")?,
        })
    }
}

/// `ticks` over `wall` as a percentage of one core.
pub fn percent_of_core(ticks: u64, wall: Duration) -> f64 {
    ticks as f64 / clock_ticks() as f64 / wall.as_secs_f64().max(1e-9) * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let line = "4242 (tokio (x) w) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    1234 567 0 0 20 0 3 0 100 1000000 250 18446744073709551615";
        let (comm, t) = parse_stat(line).expect("parses");
        assert_eq!(comm, "tokio (x) w");
        assert_eq!(
            t,
            Ticks {
                user: 1234,
                sys: 567
            }
        );
        assert!(parse_stat("12 (short) S 1 2").is_err());
    }

    #[test]
    fn stat_lines_give_their_parent_and_reaped_children() {
        // cutime 40 and cstime 7 (fields 16 and 17) join utime and stime.
        let line = "4242 (postgres) S 17 4242 4242 0 -1 4194560 1000 0 0 0 \
                    1234 567 40 7 20 0 3 0 100 1000000 250 18446744073709551615";
        let (comm, ppid, t) = parse_stat_with_children(line).expect("parses");
        assert_eq!((comm.as_str(), ppid), ("postgres", 17));
        assert_eq!(
            t,
            Ticks {
                user: 1274,
                sys: 574
            }
        );
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        let t0 = process_ticks(pid).expect("stat");
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let t1 = process_ticks(pid).expect("stat");
        assert!(t1.total() > t0.total(), "60 ms of spinning shows");
        let th = threads(pid).expect("threads");
        assert!(!th.is_empty());
        let m = Mem::of(pid).expect("status");
        assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib);
    }
}
