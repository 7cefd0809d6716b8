//! Measuring: CPU time from `getrusage`, memory from /proc/self/status,
//! and the median and minimum of a series.

use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::time::TimeVal;

/// CPU time, split as the kernel accounts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cpu {
    pub user: Duration,
    pub sys: Duration,
}

impl Cpu {
    /// User plus system time.
    pub fn total(&self) -> Duration {
        self.user + self.sys
    }

    fn since(&self, earlier: &Cpu) -> Cpu {
        Cpu {
            user: self.user.saturating_sub(earlier.user),
            sys: self.sys.saturating_sub(earlier.sys),
        }
    }
}

fn duration(tv: TimeVal) -> Duration {
    let secs = u64::try_from(tv.tv_sec()).unwrap_or(0);
    let micros = u32::try_from(tv.tv_usec()).unwrap_or(0);
    Duration::from_secs(secs) + Duration::from_micros(u64::from(micros))
}

/// CPU time used so far by `who`.
pub fn cpu(who: UsageWho) -> anyhow::Result<Cpu> {
    let usage = getrusage(who).context("getrusage")?;
    Ok(Cpu {
        user: duration(usage.user_time()),
        sys: duration(usage.system_time()),
    })
}

/// One measured run: CPU time of `who` and wall time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Run {
    pub cpu: Cpu,
    pub wall: Duration,
}

/// Runs `f` and measures the CPU time `who` spent meanwhile.
/// `UsageWho::RUSAGE_SELF` for work done by this process (the kernel's
/// share of a netlink dump is done in our `recvmsg`, so it counts as our
/// system time); `UsageWho::RUSAGE_CHILDREN` for a child that `f` starts
/// and waits for. The user/system split is sampled at timer ticks: only
/// the total is exact over a short run.
pub fn timed<T>(who: UsageWho, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(Run, T)> {
    let cpu0 = cpu(who)?;
    let wall0 = Instant::now();
    let out = f()?;
    let wall = wall0.elapsed();
    let cpu1 = cpu(who)?;
    Ok((
        Run {
            cpu: cpu1.since(&cpu0),
            wall,
        },
        out,
    ))
}

/// Resident memory of this process, KiB, as /proc/self/status says.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mem {
    /// VmRSS: resident now.
    pub rss_kib: u64,
    /// VmHWM: the peak resident size so far.
    pub hwm_kib: u64,
}

impl Mem {
    pub fn read() -> anyhow::Result<Mem> {
        let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
        let field = |name: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().strip_suffix("kB"))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("no {name} in /proc/self/status"))
        };
        Ok(Mem {
            rss_kib: field("VmRSS")?,
            hwm_kib: field("VmHWM")?,
        })
    }
}

/// Median and minimum of a series of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub median_ms: f64,
    pub min_ms: f64,
}

impl Summary {
    pub fn of(values: impl IntoIterator<Item = Duration>) -> Summary {
        let mut ms: Vec<f64> = values.into_iter().map(|d| d.as_secs_f64() * 1e3).collect();
        if ms.is_empty() {
            return Summary::default();
        }
        ms.sort_by(f64::total_cmp);
        // The middle value, or the mean of the two middle ones.
        let median_ms = (ms[(ms.len() - 1) / 2] + ms[ms.len() / 2]) / 2.0;
        Summary {
            median_ms,
            min_ms: ms[0],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_even_and_odd_series() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        let s = Summary::of(ms(&[5, 1, 3]));
        assert_eq!((s.median_ms, s.min_ms), (3.0, 1.0));
        let s = Summary::of(ms(&[4, 1, 3, 2]));
        assert_eq!((s.median_ms, s.min_ms), (2.5, 1.0));
        let s = Summary::of(Vec::new());
        assert_eq!((s.median_ms, s.min_ms), (0.0, 0.0));
    }

    #[test]
    fn own_memory_is_readable() {
        let m = Mem::read().expect("/proc/self/status");
        assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib);
    }
}
