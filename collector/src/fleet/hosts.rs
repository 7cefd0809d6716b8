//! The fleet's hosts as every node sees them: the hosts bucket, watched,
//! reduced to the hosts alive now.
//!
//! A host's record is put by the node whose gateway holds its stream, and
//! put again every renewal; a record not renewed within the time to live
//! is of a host whose node died (the bucket's own expiry says nothing to
//! watchers). Age is judged on the NATS servers' clock: a record is alive
//! while it is no older than the newest record seen less the time to
//! live, so nodes' own clocks never enter.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::Operation;
use tokio::sync::watch;
use tokio_stream::StreamExt;

use super::wire::HostRecord;
use super::Bus;

/// The hosts alive now, by name. A record that did not change between two
/// views is the same allocation in both: readers tell what changed by
/// pointer, not by comparing records.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct View {
    pub hosts: BTreeMap<String, Arc<HostRecord>>,
}

/// Every record seen (by its key), with its age, reduced to a [`View`].
#[derive(Debug, Default)]
pub struct Records {
    records: BTreeMap<String, (Arc<HostRecord>, i128)>,
    newest_ns: i128,
}

impl Records {
    /// A record put under `key` at `created_ns` (server time); a renewal
    /// (the same record again) keeps the one held.
    pub fn put(&mut self, key: &str, record: HostRecord, created_ns: i128) {
        self.newest_ns = self.newest_ns.max(created_ns);
        match self.records.get_mut(key) {
            Some((held, at)) if **held == record => *at = created_ns,
            _ => {
                self.records
                    .insert(key.to_string(), (Arc::new(record), created_ns));
            }
        }
    }

    /// A record deleted.
    pub fn delete(&mut self, key: &str, created_ns: i128) {
        self.newest_ns = self.newest_ns.max(created_ns);
        self.records.remove(key);
    }

    /// The hosts alive: records no older than `ttl` before the newest.
    pub fn view(&self, ttl: Duration) -> View {
        let floor = self
            .newest_ns
            .saturating_sub(i128::try_from(ttl.as_nanos()).unwrap_or(i128::MAX));
        View {
            hosts: self
                .records
                .iter()
                .filter(|(_, (_, at))| *at >= floor)
                .map(|(_, (r, _))| (r.name.clone(), Arc::clone(r)))
                .collect(),
        }
    }
}

/// How often the view may be sent at most: a fleet's hosts saying hello
/// at once (a restart) change it thousands of times a second; the readers
/// need only the latest.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);

/// Watches the hosts bucket for ever (again after any failure), sending
/// the view when it changed, at most every [`PUBLISH_EVERY`].
pub async fn run(
    bus: Bus,
    ttl: Duration,
    tx: watch::Sender<Arc<View>>,
    stats: Arc<super::FleetStats>,
) {
    let mut records = Records::default();
    let mut check = tokio::time::interval(PUBLISH_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty = true;
    loop {
        let mut entries = match bus.hosts.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "watching the hosts bucket failed; again in a second");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                entry = entries.next() => {
                    let entry = match entry {
                        Some(Ok(e)) => e,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "the hosts bucket's watch broke; watching again");
                            break;
                        }
                        None => break,
                    };
                    let at = entry.created.unix_timestamp_nanos();
                    match entry.operation {
                        Operation::Put => match serde_json::from_slice::<HostRecord>(&entry.value) {
                            Ok(r) => records.put(&entry.key, r, at),
                            Err(e) => tracing::warn!(key = %entry.key, error = %e, "a host record that does not decode, skipped"),
                        },
                        Operation::Delete | Operation::Purge => records.delete(&entry.key, at),
                    }
                    dirty = true;
                    continue;
                }
                // Also when nothing came: records age.
                _ = check.tick() => {}
            }
            if !dirty && records.records.is_empty() {
                continue;
            }
            dirty = false;
            let view = records.view(ttl);
            stats
                .hosts
                .store(view.hosts.len() as u64, std::sync::atomic::Ordering::Relaxed);
            tx.send_if_modified(|now| {
                if now.hosts == view.hosts {
                    false
                } else {
                    *now = Arc::new(view);
                    true
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, session: u64) -> HostRecord {
        HostRecord {
            name: name.into(),
            node: "n1".into(),
            session,
            machine: None,
            peer: None,
            since_ms: 0,
            interval_ms: 2000,
            answers_lookups: false,
            forwards: false,
            namespaces: Vec::new(),
        }
    }

    #[test]
    fn a_record_not_renewed_within_its_time_to_live_is_of_a_host_gone() {
        let s = 1_000_000_000i128;
        let ttl = Duration::from_secs(10);
        let mut r = Records::default();
        r.put("ha", record("a", 1), 100 * s);
        r.put("hb", record("b", 2), 101 * s);
        assert_eq!(r.view(ttl).hosts.len(), 2);
        // b is renewed, a is not.
        r.put("hb", record("b", 2), 111 * s);
        let v = r.view(ttl);
        assert_eq!(v.hosts.keys().collect::<Vec<_>>(), ["b"]);
        // a says hello again (on another node: another session).
        r.put("ha", record("a", 7), 112 * s);
        assert_eq!(r.view(ttl).hosts["a"].session, 7);
        // A renewal keeps the record it renews: readers see no change.
        let before = Arc::clone(&r.view(ttl).hosts["a"]);
        r.put("ha", record("a", 7), 112 * s + 1);
        assert!(Arc::ptr_eq(&before, &r.view(ttl).hosts["a"]));
        r.delete("hb", 113 * s);
        assert_eq!(r.view(ttl).hosts.keys().collect::<Vec<_>>(), ["a"]);
    }
}
