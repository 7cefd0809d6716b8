//! What only a shared database has: two stores (two collector nodes) on
//! one database, migrations from empty, a newer schema refused, nodes
//! opening at once.

use tcpstall_collector::store::postgres::schema::{MIGRATIONS, SCHEMA_VERSION};
use tcpstall_collector::store::{episode_id_of, EpisodeFilter, StoreError};
use tcpstall_common::Side;

use crate::{ended, episode, pg_config, pg_or_skip, sample, Opened, TestResult};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_writing_one_episode_store_it_once_with_its_samples_once() -> TestResult {
    let pg = pg_or_skip!("two_nodes_writing_one_episode");
    let url = pg.url("postgres");
    let one = Opened::pg(pg_config(&url)).await?;
    let two = Opened::pg(pg_config(&url)).await?;
    let start = 1_700_000_000_000;
    let base = episode(0, "alpha", Some("beta"), "peer_not_reading", start);
    let id = episode_id_of(base.a_flow.key(), start);
    let e = tcpstall_collector::store::NewEpisode { id, ..base };
    let f = e.a_flow;
    let samples = vec![
        sample(Side::A, "alpha", start, f),
        sample(Side::B, "beta", start, f.reversed()),
        sample(Side::A, "alpha", start + 2_000, f),
    ];
    // The node that owned the partition wrote it; the one that took it
    // over replays the same episode and samples, and one more sample.
    for node in [&one, &two] {
        assert!(node.store.open_episode(e.clone()));
        assert!(node.store.add_samples(id, samples.clone()));
    }
    assert!(two
        .store
        .add_samples(id, vec![sample(Side::A, "alpha", start + 4_000, f)]));
    assert!(two.store.close_episode(id, ended(start + 5_000)));
    // The same flow and start under another id (a node of another build)
    // is the same episode too: not stored again.
    let mut other = e.clone();
    other.id = id + 1;
    assert!(one.store.open_episode(other));
    one.store.flush().await?;
    two.store.flush().await?;
    let rows = one.store.list_episodes(EpisodeFilter::default()).await?;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].id, id);
    assert!(
        !rows[0].open,
        "closed by the second node, seen by the first"
    );
    let (_, stored) = one.store.get_episode(id).await?.expect("stored");
    assert_eq!(stored.len(), 4, "each sample once");
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM samples"), "4");
    for node in [&one, &two] {
        let st = node.store.stats();
        assert_eq!((st.dropped, st.write_errors), (0, 0), "{st:?}");
    }
    one.stop().await;
    two.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_database_is_migrated_once_and_a_newer_one_is_refused() -> TestResult {
    let pg = pg_or_skip!("an_empty_database_is_migrated_once");
    let url = pg.create_db("fresh");
    let one = Opened::pg(pg_config(&url)).await?;
    one.stop().await;
    let again = Opened::pg(pg_config(&url)).await?;
    again.stop().await;
    assert_eq!(
        pg.psql("fresh", "SELECT count(*), max(version) FROM schema_version"),
        format!("{SCHEMA_VERSION}|{SCHEMA_VERSION}"),
        "one row per migration, applied once"
    );
    for table in ["episodes", "samples", "held_spans", "hosts"] {
        assert_eq!(
            pg.psql(
                "fresh",
                &format!("SELECT to_regclass('{table}') IS NOT NULL")
            ),
            "t"
        );
    }
    pg.psql(
        "fresh",
        &format!(
            "INSERT INTO schema_version (version) VALUES ({})",
            SCHEMA_VERSION + 1
        ),
    );
    let err = Opened::pg(pg_config(&url)).await.expect_err("refused");
    assert!(
        matches!(err, StoreError::PgTooNew { found, known, .. }
            if found == SCHEMA_VERSION + 1 && known == SCHEMA_VERSION),
        "{err}"
    );
    assert!(err.to_string().contains("--store"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_opening_at_once_migrate_one_after_the_other() -> TestResult {
    let pg = pg_or_skip!("nodes_opening_at_once");
    let url = pg.create_db("race");
    let opens: Vec<_> = (0..6)
        .map(|_| tokio::spawn(Opened::pg(pg_config(&url))))
        .collect();
    let mut stores = Vec::new();
    for o in opens {
        stores.push(o.await??);
    }
    assert_eq!(
        pg.psql("race", "SELECT count(*) FROM schema_version"),
        SCHEMA_VERSION.to_string()
    );
    // Every one of them writes and reads.
    for (i, o) in stores.iter().enumerate() {
        let id = i64::try_from(i)? + 1;
        assert!(o
            .store
            .open_episode(episode(id, "alpha", None, "unknown", id)));
        o.store.flush().await?;
    }
    let n = stores[0]
        .store
        .list_episodes(EpisodeFilter::default())
        .await?
        .len();
    assert_eq!(n, stores.len());
    for o in stores {
        o.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_the_url_never_appears_in_errors() -> TestResult {
    let pg = pg_or_skip!("a_password_in_the_url_never_appears");
    // Trust authentication ignores it: the store opens.
    let ok = format!(
        "postgres://postgres:hunter2-secret@127.0.0.1:{}/postgres",
        pg.port()
    );
    let o = Opened::pg(pg_config(&ok)).await?;
    assert!(!format!("{:?}", pg_config(&ok)).contains("hunter2"));
    o.stop().await;
    // A database that does not exist, and a port nobody listens on.
    for url in [
        format!(
            "postgres://postgres:hunter2-secret@127.0.0.1:{}/nosuchdb",
            pg.port()
        ),
        "postgres://postgres:hunter2-secret@127.0.0.1:1/postgres".to_string(),
    ] {
        let err = Opened::pg(pg_config(&url)).await.expect_err("refused");
        let text = format!("{err} {err:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("postgres:***@127.0.0.1"), "{text}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_one_database_is_migrated_and_keeps_its_samples() -> TestResult {
    let pg = pg_or_skip!("a_version_one_database_is_migrated");
    let url = pg.create_db("v1");
    // A database as the first fleet builds left it: version 1, an episode
    // with two samples.
    pg.psql(
        "v1",
        &format!(
            "CREATE TABLE schema_version (version bigint PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now());
             {}
             INSERT INTO schema_version (version) VALUES (1);",
            MIGRATIONS[0]
        ),
    );
    let start = 1_700_000_000_000;
    let e = episode(7, "alpha", Some("beta"), "peer_not_reading", start);
    let f = e.a_flow;
    pg.psql(
        "v1",
        &format!(
            "INSERT INTO episodes (id, diagnosis, summary, evidence, started_at_ms, duration_ms,
                 stuck_bytes, a_host, a_netns, a_local, a_remote, flow_key, a_cookie, open)
             VALUES (7, 'peer_not_reading', 's', '{{}}', {start}, 10000, 4096, 'alpha', '',
                 '{}', '{}', '{}', 0, true)",
            f.local,
            f.remote,
            f.key()
        ),
    );
    let kept = [
        sample(Side::A, "alpha", start, f),
        sample(Side::B, "beta", start + 1, f.reversed()),
    ];
    for s in &kept {
        let hex: String = s
            .sample
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        pg.psql(
            "v1",
            &format!(
                "INSERT INTO samples (episode_id, side, host, at_ms, sample_pb)
                 VALUES (7, '{}', '{}', {}, '\\x{hex}')",
                s.side.as_str(),
                s.host,
                s.at_ms
            ),
        );
    }
    let o = Opened::pg(pg_config(&url)).await?;
    assert_eq!(
        pg.psql("v1", "SELECT max(version) FROM schema_version"),
        SCHEMA_VERSION.to_string()
    );
    assert_eq!(
        pg.psql(
            "v1",
            "SELECT count(*) FROM information_schema.table_constraints
              WHERE table_name = 'samples' AND constraint_type = 'FOREIGN KEY'"
        ),
        "0",
        "the samples' foreign key is gone"
    );
    let (_, stored) = o.store.get_episode(7).await?.expect("kept");
    assert_eq!(stored, kept.to_vec(), "the samples, whole, in their order");
    // Written after the migration: one new, one already there.
    assert!(o.store.add_samples(
        7,
        vec![kept[0].clone(), sample(Side::A, "alpha", start + 2_000, f)]
    ));
    o.store.flush().await?;
    let (_, stored) = o.store.get_episode(7).await?.expect("kept");
    assert_eq!(stored.len(), 3, "{stored:?}");
    let st = o.store.stats();
    assert_eq!((st.dropped, st.write_errors), (0, 0), "{st:?}");
    o.stop().await;
    Ok(())
}
