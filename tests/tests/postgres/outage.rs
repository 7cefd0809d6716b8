//! PostgreSQL restarted under a store that writes: what the store held is
//! stored once PostgreSQL is back, and beyond its bound writes are refused
//! and counted exactly.

use std::collections::BTreeSet;
use std::time::Duration;

use tcpstall_collector::store::postgres::SHUTDOWN_GRACE;
use tcpstall_collector::store::{EpisodeFilter, PgConfig};
use tcpstall_common::Side;

use crate::{episode, pg_config, pg_or_skip, sample, Opened, TestResult};

/// Every episode id stored, read with psql (not through the store).
fn stored_ids(pg: &tcpstall_tests::postgres::Postgres) -> BTreeSet<i64> {
    pg.psql("postgres", "SELECT id FROM episodes ORDER BY id")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_held_while_postgres_is_down_are_stored_and_the_excess_is_counted() -> TestResult {
    let mut pg = pg_or_skip!("writes_held_while_postgres_is_down");
    let bound = 50;
    let o = Opened::pg(PgConfig {
        queue: bound,
        ..pg_config(&pg.url("postgres"))
    })
    .await?;
    let s = o.store.clone();
    assert!(s.open_episode(episode(1, "alpha", None, "unknown", 1)));
    s.flush().await?;

    tokio::task::block_in_place(|| pg.stop());
    let mut accepted = BTreeSet::from([1]);
    let mut refused = 0u64;
    for id in 2..=(bound as i64 + 21) {
        let e = episode(id, "alpha", None, "unknown", id);
        if s.open_episode(e) {
            accepted.insert(id);
        } else {
            refused += 1;
        }
        // Let the writer find PostgreSQL gone with writes in hand.
        if id == 5 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    assert_eq!(accepted.len(), bound + 1, "exactly the bound held");
    assert_eq!(refused, 20);
    assert_eq!(s.stats().dropped, 20, "every refusal counted");

    tokio::task::block_in_place(|| pg.start_again());
    tokio::time::timeout(Duration::from_secs(30), s.flush()).await??;
    assert_eq!(stored_ids(&pg), accepted, "every held write stored, once");
    let st = s.stats();
    assert_eq!((st.dropped, st.write_errors), (20, 0), "{st:?}");
    // And the store goes on as before.
    assert!(s.open_episode(episode(1000, "alpha", None, "unknown", 1000)));
    s.flush().await?;
    assert_eq!(stored_ids(&pg).len(), bound + 2);
    o.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_stream_loses_no_accepted_write() -> TestResult {
    let mut pg = pg_or_skip!("postgres_restarted_mid_stream");
    let o = Opened::pg(pg_config(&pg.url("postgres"))).await?;
    let s = o.store.clone();
    // A writer that never stops: an episode with two samples every 2 ms.
    let writing = tokio::spawn({
        let s = s.clone();
        async move {
            let mut accepted = BTreeSet::new();
            for id in 1..=1500i64 {
                let e = episode(id, "alpha", None, "unknown", id);
                let f = e.a_flow;
                let samples = vec![
                    sample(Side::A, "alpha", id, f),
                    sample(Side::A, "alpha", id + 1, f),
                ];
                if s.open_episode(e) && s.add_samples(id, samples) {
                    accepted.insert(id);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            accepted
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| pg.restart());
    let accepted = writing.await?;
    tokio::time::timeout(Duration::from_secs(30), s.flush()).await??;
    let st = s.stats();
    assert_eq!((st.dropped, st.write_errors), (0, 0), "{st:?}");
    assert_eq!(accepted.len(), 1500);
    assert_eq!(stored_ids(&pg), accepted);
    assert_eq!(
        pg.psql("postgres", "SELECT count(*) FROM samples"),
        "3000",
        "a batch applied again after a cut-off COMMIT stores its samples once"
    );
    let listed = s
        .list_episodes(EpisodeFilter {
            limit: 10,
            ..Default::default()
        })
        .await?;
    assert_eq!(listed[0].id, 1500, "reads work after the restart");
    o.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_with_postgres_away_gives_up_after_its_grace_and_counts_the_loss() -> TestResult
{
    let mut pg = pg_or_skip!("a_shutdown_with_postgres_away");
    let o = Opened::pg(pg_config(&pg.url("postgres"))).await?;
    let s = o.store.clone();
    tokio::task::block_in_place(|| pg.stop());
    for id in 1..=10 {
        assert!(s.open_episode(episode(id, "alpha", None, "unknown", id)));
    }
    let started = std::time::Instant::now();
    tokio::time::timeout(SHUTDOWN_GRACE * 3, o.stop()).await?;
    assert!(
        started.elapsed() >= SHUTDOWN_GRACE,
        "it waited for PostgreSQL"
    );
    let st = s.stats();
    assert_eq!((st.write_errors, st.dropped), (10, 0), "{st:?}");
    assert!(!s.open_episode(episode(11, "alpha", None, "unknown", 11)));
    assert_eq!(s.stats().dropped, 1);
    Ok(())
}

/// A rough figure, not a bound: 100,000 samples through one node's writer
/// (`cargo test --release -p tcpstall-tests --test postgres -- --ignored`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn throughput_100k_samples() -> TestResult {
    let pg = pg_or_skip!("throughput_100k_samples");
    let o = Opened::pg(pg_config(&pg.url("postgres"))).await?;
    let s = o.store.clone();
    let started = std::time::Instant::now();
    for id in 1..=1000i64 {
        let e = episode(id, "alpha", None, "unknown", id);
        let f = e.a_flow;
        assert!(s.open_episode(e));
        for poll in 0..10 {
            let batch = (0..10)
                .map(|k| sample(Side::A, "alpha", poll * 10 + k, f))
                .collect();
            assert!(s.add_samples(id, batch));
        }
    }
    s.flush().await?;
    let took = started.elapsed();
    let st = s.stats();
    assert_eq!(st.samples_stored, 100_000);
    eprintln!(
        "100,000 samples in {took:?} ({:.0}/s), {} transactions, longest commit {} µs",
        100_000.0 / took.as_secs_f64(),
        st.transactions,
        st.max_commit_micros
    );
    o.stop().await;
    Ok(())
}
