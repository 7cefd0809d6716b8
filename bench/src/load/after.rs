//! What is read once a `collector-load` run is over: the episodes and
//! samples in the database (SQLite or PostgreSQL), grouped, and the
//! collectors' logs, their warnings and errors counted by message.

use std::collections::BTreeMap;

use super::system::System;

/// Read after the run: the database and the collector's log.
#[derive(Debug, Default)]
pub(super) struct After {
    pub(super) diagnoses: Vec<(String, i64)>,
    pub(super) end_reasons: Vec<(String, i64)>,
    pub(super) samples_by_side: Vec<(String, i64)>,
    pub(super) db_bytes: u64,
    pub(super) log_lines: usize,
    pub(super) warnings: Vec<(String, usize)>,
    pub(super) opened_logged: usize,
}

pub(super) fn after_run(system: &System) -> anyhow::Result<After> {
    let group = |sql: &str| system.group(sql);
    let mut after = After {
        diagnoses: group("SELECT diagnosis, count(*) FROM episodes GROUP BY 1 ORDER BY 2 DESC")?,
        end_reasons: group(
            "SELECT coalesce(end_reason, '(open)'), count(*) FROM episodes GROUP BY 1 ORDER BY 2 DESC",
        )?,
        samples_by_side: group("SELECT side, count(*) FROM samples GROUP BY 1 ORDER BY 1")?,
        db_bytes: system.store_bytes(),
        ..After::default()
    };
    let text = system.logs();
    let mut warnings: BTreeMap<String, usize> = BTreeMap::new();
    for line in text.lines() {
        after.log_lines += 1;
        if line.contains("episode opened") {
            after.opened_logged += 1;
        }
        if line.contains(" WARN ") || line.contains(" ERROR ") {
            *warnings.entry(log_message(line)).or_default() += 1;
        }
    }
    let mut warnings: Vec<(String, usize)> = warnings.into_iter().collect();
    warnings.sort_by_key(|w| std::cmp::Reverse(w.1));
    after.warnings = warnings;
    Ok(after)
}

/// A log line without its time and fields: `LEVEL target: message`.
fn log_message(line: &str) -> String {
    let rest = line.split_once(' ').map_or(line, |(_, r)| r).trim_start();
    let words: Vec<&str> = rest.split(' ').take_while(|w| !w.contains('=')).collect();
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_lose_their_time_and_fields() {
        let l = "2026-11-26T10:00:00.123456Z  WARN tcpstall_collector::gateway::hub: agent's outbound queue is full; watch request dropped host=sim-00001";
        assert_eq!(
            log_message(l),
            "WARN tcpstall_collector::gateway::hub: agent's outbound queue is full; watch request dropped"
        );
    }
}
