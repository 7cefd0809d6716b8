//! Episodes written straight into a collector's store, at fixed times with
//! exact numbers: what the CLI and the web page show of an episode,
//! whatever the matcher would have made of it.

use std::path::Path;

use tcpstall_collector::store::{
    EpisodeEnd, NewEpisode, SqliteStore, Store, StoreConfig, StoredSample,
};

/// An episode as the store keeps it: the row, both ends' samples, its end
/// (none: still open).
#[derive(Debug)]
pub struct Stored {
    pub episode: NewEpisode,
    pub samples: Vec<StoredSample>,
    pub end: Option<EpisodeEnd>,
}

/// Writes `episodes` into a store at `db`; returns their ids.
pub async fn populate(db: &Path, episodes: Vec<Stored>) -> Vec<i64> {
    let (store, thread, next) = SqliteStore::open(StoreConfig::new(db)).expect("open the store");
    let mut ids = Vec::new();
    for (id, mut e) in (next..).zip(episodes) {
        e.episode.id = id;
        assert!(store.open_episode(e.episode), "queued");
        assert!(store.add_samples(id, e.samples), "queued");
        if let Some(end) = e.end {
            assert!(store.close_episode(id, end), "queued");
        }
        ids.push(id);
    }
    store.flush().await.expect("written");
    store.shutdown().await;
    thread.join().expect("store thread ends");
    ids
}
