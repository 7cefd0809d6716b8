//! The collector's worker threads: as many as `--workers` asks, or one
//! fewer than the CPUs it may use (at least one) when not set.

use std::time::Duration;

use tcpstall_tests::{wait_for, CollectorProcess};

/// The threads of process `pid` that tokio named as its workers.
fn workers_of(pid: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end() == "tokio-rt-worker")
        })
        .count()
}

#[test]
fn the_collector_runs_the_workers_asked_for_or_the_cpus_less_one() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (extra, want) in [
        (&["--workers", "3"][..], 3),
        (&[][..], cpus.saturating_sub(1).max(1)),
    ] {
        let collector = CollectorProcess::start(extra);
        let pid = collector.child.id();
        // Tokio starts all its workers with the runtime: wait for them,
        // then there must be no more.
        let got = wait_for(
            &format!("at least {want} worker threads with {extra:?}"),
            Duration::from_secs(10),
            || {
                let n = workers_of(pid);
                (n >= want).then_some(n)
            },
        );
        assert_eq!(got, want, "worker threads with {extra:?}");
    }
}
