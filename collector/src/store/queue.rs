//! What the store handles send their store's one writer, and the counters
//! they share with it: the same for every implementation, so that a write,
//! a read and a barrier mean the same in each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

use super::{
    EpisodeEnd, EpisodeCount, EpisodeFilter, EpisodeRow, EpisodeUpdate, HeldFilter, HeldRow, HostRecord,
    HostRow, NewEpisode, StoreError, StoreStatsSnapshot, StoredEpisode, StoredSample,
};

/// The store's counters, shared between the handles and the thread.
#[derive(Debug, Default)]
pub(crate) struct StoreStats {
    pub(crate) dropped: AtomicU64,
    pub(crate) committed_rows: AtomicU64,
    pub(crate) transactions: AtomicU64,
    pub(crate) last_commit_micros: AtomicU64,
    pub(crate) max_commit_micros: AtomicU64,
    pub(crate) write_errors: AtomicU64,
    pub(crate) pruned_episodes: AtomicU64,
    pub(crate) pruned_rows: AtomicU64,
    pub(crate) samples_stored: AtomicU64,
}

impl StoreStats {
    pub(crate) fn snapshot(&self) -> StoreStatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreStatsSnapshot {
            dropped: get(&self.dropped),
            committed_rows: get(&self.committed_rows),
            transactions: get(&self.transactions),
            last_commit_micros: get(&self.last_commit_micros),
            max_commit_micros: get(&self.max_commit_micros),
            write_errors: get(&self.write_errors),
            pruned_episodes: get(&self.pruned_episodes),
            pruned_rows: get(&self.pruned_rows),
            samples_stored: get(&self.samples_stored),
        }
    }

    pub(crate) fn committed(&self, rows: u64, samples: u64, micros: u64) {
        self.committed_rows.fetch_add(rows, Ordering::Relaxed);
        self.samples_stored.fetch_add(samples, Ordering::Relaxed);
        self.transactions.fetch_add(1, Ordering::Relaxed);
        self.last_commit_micros.store(micros, Ordering::Relaxed);
        self.max_commit_micros.fetch_max(micros, Ordering::Relaxed);
    }

    pub(crate) fn write_failed(&self, n: u64) {
        self.write_errors.fetch_add(n, Ordering::Relaxed);
    }

    /// Writes accepted into the queue but behind a shutdown.
    pub(crate) fn dropped_after_shutdown(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn pruned(&self, n: u64) {
        self.pruned_episodes.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn pruned_rows(&self, n: u64) {
        self.pruned_rows.fetch_add(n, Ordering::Relaxed);
    }
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// What the handles ask of the store thread.
#[derive(Debug)]
pub(crate) enum Command {
    HostSeen(HostRecord),
    HostGone {
        host: String,
        at_ms: i64,
    },
    OpenEpisode(Box<NewEpisode>),
    UpdateEpisode(Box<EpisodeUpdate>),
    CloseEpisode {
        id: i64,
        end: EpisodeEnd,
    },
    AddSamples {
        id: i64,
        samples: Vec<StoredSample>,
    },
    AddHeld(Vec<HeldRow>),
    ListEpisodes(EpisodeFilter, Reply<Vec<EpisodeRow>>),
    CountEpisodes(EpisodeFilter, i64, Reply<Vec<EpisodeCount>>),
    ListHeld(HeldFilter, Reply<Vec<HeldRow>>),
    GetEpisode(i64, Reply<Option<StoredEpisode>>),
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    ListHosts(Reply<Vec<HostRow>>),
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    Flush(oneshot::Sender<()>),
    Prune,
    SetLimits {
        retention: Duration,
        max_bytes: Option<u64>,
    },
    Shutdown(oneshot::Sender<()>),
}

impl Command {
    pub(crate) fn is_write(&self) -> bool {
        matches!(
            self,
            Command::HostSeen(_)
                | Command::HostGone { .. }
                | Command::OpenEpisode(_)
                | Command::UpdateEpisode(_)
                | Command::CloseEpisode { .. }
                | Command::AddSamples { .. }
                | Command::AddHeld(_)
        )
    }

    /// A name for logs.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Command::HostSeen(_) => "host_seen",
            Command::HostGone { .. } => "host_gone",
            Command::OpenEpisode(_) => "open_episode",
            Command::UpdateEpisode(_) => "update_episode",
            Command::CloseEpisode { .. } => "close_episode",
            Command::AddSamples { .. } => "add_samples",
            Command::AddHeld(_) => "add_held",
            Command::ListEpisodes(..) => "list_episodes",
            Command::CountEpisodes(..) => "count_episodes",
            Command::ListHeld(..) => "list_held",
            Command::GetEpisode(..) => "get_episode",
            Command::ListHosts(_) => "list_hosts",
            Command::Flush(_) => "flush",
            Command::Prune => "prune",
            Command::SetLimits { .. } => "set_limits",
            Command::Shutdown(_) => "shutdown",
        }
    }
}

