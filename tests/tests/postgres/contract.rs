//! The store's contract, one body per behaviour, run against SQLite and
//! against PostgreSQL through the `Store` trait: the two must answer alike.

use std::time::Duration;

use tcpstall_collector::store::{
    EpisodeFilter, EpisodeUpdate, HeldFilter, HeldRow, HostRecord, VerdictBasis,
};
use tcpstall_common::record::JoinedVia;
use tcpstall_common::{Clock, HeldEnd, Side, Translation};

use crate::{ended, episode, flow, sample, Maker, TestResult};

/// Runs each named body against SQLite and PostgreSQL (skipped, with a
/// SKIP line, when PostgreSQL is not installed).
macro_rules! contract {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() -> crate::TestResult {
                super::$name(&crate::Maker::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() -> crate::TestResult {
                let pg = crate::pg_or_skip!(concat!(stringify!($name), " on postgres"));
                super::$name(&crate::Maker::Postgres(pg)).await
            }
        }
    )*};
}

contract!(
    episode_round_trips_with_evidence_via_and_both_sides,
    update_then_close_and_unknown_ids_are_write_errors,
    filters_select_by_since_host_diagnosis_open_and_limit_newest_first,
    counts_by_bucket_and_diagnosis_follow_the_filters,
    pages_after_a_place_cover_every_episode_once_even_on_equal_starts,
    held_span_counts_add_up_by_pair_and_window,
    hosts_are_upserted_and_marked_gone,
    retention_deletes_old_closed_episodes_with_their_samples,
    flush_is_a_barrier_and_shutdown_refuses_later_writes,
    samples_of_an_unknown_episode_are_a_write_error_and_the_rest_land,
);

fn via() -> JoinedVia {
    JoinedVia {
        host: "gw".into(),
        translation: Translation {
            original: flow("10.0.0.1:40000", "192.0.2.10:80"),
            reply: flow("10.1.0.5:8080", "10.0.0.1:40000"),
            src_nat: false,
            dst_nat: true,
        },
    }
}

async fn episode_round_trips_with_evidence_via_and_both_sides(mk: &Maker) -> TestResult {
    let o = mk.open(None).await;
    let s = &o.store;
    let mut e = episode(7, "alpha", Some("beta"), "peer_not_reading", 1_000);
    e.via = Some(via());
    e.peer_note = Some("b is behind a NAT".into());
    e.basis = VerdictBasis {
        rested_on: vec![
            "a_probe_timer".into(),
            "b_rmem_alloc".into(),
            "b_rcvbuf".into(),
        ],
        missing: vec!["a_snd_wnd".into(), "b_rcv_wnd".into()],
    };
    assert!(s.open_episode(e.clone()));
    let f = e.a_flow;
    let samples = vec![
        sample(Side::A, "alpha", 1_000, f),
        sample(Side::B, "beta", 1_000, f.reversed()),
        sample(Side::A, "alpha", 2_000, f),
    ];
    assert!(s.add_samples(7, samples.clone()));
    let (row, got) = s.get_episode(7).await?.expect("stored");
    assert_eq!(row.id, 7);
    assert_eq!(row.evidence, e.evidence);
    assert_eq!(row.basis, e.basis, "the verdict's basis is kept");
    assert_eq!(row.a_flow, e.a_flow);
    assert_eq!(row.a_cookie, e.a_cookie);
    assert_eq!(row.via, e.via);
    assert_eq!(row.peer_note, e.peer_note);
    assert_eq!(row.b_host.as_deref(), Some("beta"));
    assert!(row.open && row.ended_at_ms.is_none() && row.end_reason.is_none());
    assert_eq!(got, samples, "samples in time order, bytes kept");
    assert!(s.get_episode(8).await?.is_none());
    let st = s.stats();
    assert_eq!(st.samples_stored, 3);
    assert_eq!((st.dropped, st.write_errors), (0, 0));
    o.stop().await;
    Ok(())
}

async fn update_then_close_and_unknown_ids_are_write_errors(mk: &Maker) -> TestResult {
    let o = mk.open(None).await;
    let s = &o.store;
    let e = episode(1, "alpha", None, "unknown", 5_000);
    assert!(s.open_episode(e.clone()));
    let mut evidence = e.evidence.clone();
    evidence.insert("b_recvq".into(), 99);
    assert!(s.update_episode(EpisodeUpdate {
        id: 1,
        diagnosis: "peer_not_reading".into(),
        summary: "joined".into(),
        evidence: evidence.clone(),
        basis: VerdictBasis {
            rested_on: vec!["a_snd_wnd".into(), "b_rcv_wnd".into()],
            missing: vec![],
        },
        b_host: Some("beta".into()),
        peer_note: None,
        via: Some(via()),
        duration_ms: 12_000,
        stuck_bytes: 8192,
    }));
    let rows = s.list_episodes(EpisodeFilter::default()).await?;
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(
        (r.diagnosis.as_str(), r.summary.as_str()),
        ("peer_not_reading", "joined")
    );
    assert_eq!(r.evidence, evidence);
    assert_eq!(
        r.basis.rested_on,
        ["a_snd_wnd", "b_rcv_wnd"],
        "an update replaces the basis"
    );
    assert_eq!((r.duration_ms, r.stuck_bytes), (12_000, 8192));
    assert_eq!(r.via, Some(via()));
    assert!(s.close_episode(1, ended(20_000)));
    let (r, _) = s.get_episode(1).await?.expect("stored");
    assert!(!r.open);
    assert_eq!(r.ended_at_ms, Some(20_000));
    assert_eq!(r.end_reason.as_deref(), Some("moved"));
    assert_eq!(r.duration_ms, 10);
    // An update or close of an episode never stored is a write error, and
    // the writes around it still land.
    assert!(s.close_episode(404, ended(1)));
    assert!(s.open_episode(episode(2, "alpha", None, "unknown", 6_000)));
    s.flush().await?;
    assert_eq!(s.stats().write_errors, 1);
    assert!(s.get_episode(2).await?.is_some());
    o.stop().await;
    Ok(())
}

async fn filters_select_by_since_host_diagnosis_open_and_limit_newest_first(
    mk: &Maker,
) -> TestResult {
    let o = mk.open(None).await;
    let s = &o.store;
    let eps = [
        episode(1, "alpha", Some("beta"), "peer_not_reading", 1_000),
        episode(2, "gamma", None, "ack_lost", 2_000),
        episode(3, "beta", Some("gamma"), "peer_not_reading", 3_000),
        episode(4, "alpha", None, "window_zero", 4_000),
        episode(5, "delta", Some("alpha"), "ack_lost", 4_000),
    ];
    for e in &eps {
        assert!(s.open_episode(e.clone()));
    }
    assert!(s.close_episode(2, ended(2_500)));
    assert!(s.close_episode(4, ended(4_500)));
    let ids = |f: EpisodeFilter| async move {
        s.list_episodes(f)
            .await
            .map(|rows| rows.iter().map(|r| r.id).collect::<Vec<_>>())
    };
    assert_eq!(ids(EpisodeFilter::default()).await?, [5, 4, 3, 2, 1]);
    let since = EpisodeFilter {
        since_ms: Some(3_000),
        ..Default::default()
    };
    assert_eq!(ids(since).await?, [5, 4, 3]);
    let host = EpisodeFilter {
        host: Some("alpha".into()),
        ..Default::default()
    };
    assert_eq!(ids(host).await?, [5, 4, 1], "A's host or B's");
    let diagnosis = EpisodeFilter {
        diagnosis: Some("ack_lost".into()),
        ..Default::default()
    };
    assert_eq!(ids(diagnosis).await?, [5, 2]);
    let open = EpisodeFilter {
        open_only: true,
        ..Default::default()
    };
    assert_eq!(ids(open).await?, [5, 3, 1]);
    let limit = EpisodeFilter {
        limit: 2,
        ..Default::default()
    };
    assert_eq!(ids(limit).await?, [5, 4]);
    let all = EpisodeFilter {
        host: Some("gamma".into()),
        diagnosis: Some("peer_not_reading".into()),
        open_only: true,
        since_ms: Some(1),
        ..Default::default()
    };
    assert_eq!(ids(all).await?, [3]);
    o.stop().await;
    Ok(())
}

async fn counts_by_bucket_and_diagnosis_follow_the_filters(mk: &Maker) -> TestResult {
    let o = mk.open(None).await;
    let s = &o.store;
    // Buckets of 1 s: [1000, 2000) holds 1 and 2, [3000, 4000) 3 and 4,
    // [4000, 5000) 5.
    let eps = [
        episode(1, "alpha", Some("beta"), "peer_not_reading", 1_000),
        episode(2, "gamma", None, "peer_not_reading", 1_999),
        episode(3, "beta", Some("gamma"), "ack_lost", 3_000),
        episode(4, "alpha", None, "peer_not_reading", 3_500),
        episode(5, "delta", Some("alpha"), "ack_lost", 4_000),
    ];
    for e in &eps {
        assert!(s.open_episode(e.clone()));
    }
    assert!(s.close_episode(4, ended(3_900)));
    let counts = |f: EpisodeFilter| async move {
        s.count_episodes(f, 1_000).await.map(|rows| {
            rows.into_iter()
                .map(|c| (c.bucket_ms, c.diagnosis, c.count))
                .collect::<Vec<_>>()
        })
    };
    let row = |b: i64, d: &str, n: u64| (b, d.to_string(), n);
    assert_eq!(
        counts(EpisodeFilter::default()).await?,
        [
            row(1_000, "peer_not_reading", 2),
            row(3_000, "ack_lost", 1),
            row(3_000, "peer_not_reading", 1),
            row(4_000, "ack_lost", 1),
        ]
    );
    let filtered = EpisodeFilter {
        since_ms: Some(1_500),
        host: Some("alpha".into()),
        open_only: true,
        // A list's limit and place do not bound a count.
        limit: 1,
        after: Some((0, 0)),
        ..Default::default()
    };
    assert_eq!(counts(filtered).await?, [row(4_000, "ack_lost", 1)]);
    let diagnosis = EpisodeFilter {
        diagnosis: Some("peer_not_reading".into()),
        ..Default::default()
    };
    assert_eq!(
        counts(diagnosis).await?,
        [
            row(1_000, "peer_not_reading", 2),
            row(3_000, "peer_not_reading", 1)
        ]
    );
    o.stop().await;
    Ok(())
}

async fn pages_after_a_place_cover_every_episode_once_even_on_equal_starts(
    mk: &Maker,
) -> TestResult {
    let o = mk.open(None).await;
    let s = &o.store;
    for id in 1..=25 {
        // Five starts, five episodes each.
        assert!(s.open_episode(episode(id, "alpha", None, "unknown", (id % 5) * 1_000)));
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s
            .list_episodes(EpisodeFilter {
                limit: 4,
                after,
                ..Default::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = Some((last.started_at_ms, last.id));
        seen.extend(page.iter().map(|r| (r.started_at_ms, r.id)));
    }
    let mut want: Vec<(i64, i64)> = (1..=25).map(|id| ((id % 5) * 1_000, id)).collect();
    want.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, want, "newest first by start, then id; each once");
    o.stop().await;
    Ok(())
}

fn held(minute_ms: i64, a: &str, b: &str, end: HeldEnd, le_ms: u64, count: u64) -> HeldRow {
    HeldRow {
        minute_ms,
        a_host: a.into(),
        b_host: b.into(),
        end,
        le_ms,
        count,
        episodes: count / 2,
        total_ms: count * 100,
        max_ms: count * 10,
    }
}

async fn held_span_counts_add_up_by_pair_and_window(mk: &Maker) -> TestResult {
    let o = mk.open(None).await;
    let s = &o.store;
    assert!(s.add_held(vec![
        held(60_000, "alpha", "beta", HeldEnd::Drained, 1_000, 4),
        held(60_000, "gamma", "", HeldEnd::Moved, 0, 1),
    ]));
    assert!(s.add_held(vec![
        held(60_000, "alpha", "beta", HeldEnd::Drained, 1_000, 6),
        held(120_000, "alpha", "beta", HeldEnd::Drained, 1_000, 2),
        held(120_000, "alpha", "beta", HeldEnd::Closed, 3_000, 1),
    ]));
    let all = s.list_held(HeldFilter::default()).await?;
    assert_eq!(all.len(), 3, "{all:?}");
    // The busiest pair first; within it by end and bucket.
    let a = &all[0];
    assert_eq!(
        (a.a_host.as_str(), a.end, a.le_ms),
        ("alpha", HeldEnd::Closed, 3_000)
    );
    let d = &all[1];
    assert_eq!((d.a_host.as_str(), d.end), ("alpha", HeldEnd::Drained));
    assert_eq!(
        (d.minute_ms, d.count, d.episodes, d.total_ms, d.max_ms),
        (120_000, 12, 2 + 3 + 1, 1_200, 60),
        "summed over minutes; the latest minute; the longest"
    );
    assert_eq!(all[2].a_host, "gamma");
    let recent = s
        .list_held(HeldFilter {
            since_ms: Some(120_000),
            ..Default::default()
        })
        .await?;
    assert_eq!(recent.iter().map(|r| r.count).sum::<u64>(), 3);
    let beta = s
        .list_held(HeldFilter {
            host: Some("beta".into()),
            ..Default::default()
        })
        .await?;
    assert_eq!(beta.len(), 2, "by B's host too");
    o.stop().await;
    Ok(())
}

async fn hosts_are_upserted_and_marked_gone(mk: &Maker) -> TestResult {
    let o = mk.open(None).await;
    let s = &o.store;
    let hello = |host: &str, kernel: &str, at_ms| HostRecord {
        host: host.into(),
        kernel: kernel.into(),
        agent_version: "0.1.0".into(),
        boot_id: "b1".into(),
        at_ms,
    };
    assert!(s.host_seen(hello("web-1", "6.1", 1_000)));
    assert!(s.host_seen(hello("db-1", "6.1", 1_500)));
    assert!(s.host_seen(hello("web-1", "6.6", 2_000)));
    assert!(s.host_gone("db-1", 3_000));
    let hosts = s.list_hosts().await?;
    assert_eq!(hosts.len(), 2);
    assert_eq!(hosts[0].host, "db-1", "by name");
    assert!(!hosts[0].connected);
    assert_eq!(hosts[0].last_seen_ms, 3_000);
    let web = &hosts[1];
    assert_eq!(
        (web.kernel.as_str(), web.first_seen_ms, web.last_seen_ms),
        ("6.6", 1_000, 2_000)
    );
    assert!(web.connected);
    o.stop().await;
    Ok(())
}

async fn retention_deletes_old_closed_episodes_with_their_samples(mk: &Maker) -> TestResult {
    let now = 100 * 86_400_000;
    let o = mk.open(Some(Clock::from_fn(move || now))).await;
    let s = &o.store;
    let day = 86_400_000;
    // 1: ended 3 days ago; 2: ended an hour ago; 3: open, started 5 days ago.
    for (id, start) in [(1, now - 4 * day), (2, now - day), (3, now - 5 * day)] {
        let e = episode(id, "alpha", None, "unknown", start);
        let f = e.a_flow;
        assert!(s.open_episode(e));
        assert!(s.add_samples(id, vec![sample(Side::A, "alpha", start, f)]));
    }
    assert!(s.close_episode(1, ended(now - 3 * day)));
    assert!(s.close_episode(2, ended(now - 3_600_000)));
    assert!(s.add_held(vec![
        held(now - 3 * day, "alpha", "", HeldEnd::Moved, 0, 1),
        held(now - 60_000, "alpha", "", HeldEnd::Moved, 0, 1),
    ]));
    assert!(s.set_limits(Duration::from_secs(2 * 86_400), None).await);
    let ids: Vec<i64> = s
        .list_episodes(EpisodeFilter::default())
        .await?
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, [2, 3], "the old closed one went; the open one stays");
    assert!(s.get_episode(1).await?.is_none());
    let st = s.stats();
    assert_eq!(st.pruned_episodes, 1);
    // The episode, its sample and the old minute of held spans.
    assert_eq!(st.pruned_rows, 3, "{st:?}");
    assert_eq!(s.list_held(HeldFilter::default()).await?[0].count, 1);
    o.stop().await;
    Ok(())
}

async fn flush_is_a_barrier_and_shutdown_refuses_later_writes(mk: &Maker) -> TestResult {
    let o = mk.open(None).await;
    let s = o.store.clone();
    for id in 1..=200 {
        assert!(s.open_episode(episode(id, "alpha", None, "unknown", id)));
    }
    s.flush().await?;
    assert_eq!(s.stats().committed_rows, 200, "flushed means stored");
    let kept = s.clone();
    o.stop().await;
    assert!(!kept.open_episode(episode(201, "alpha", None, "unknown", 1)));
    assert!(kept.flush().await.is_err());
    assert_eq!(kept.stats().dropped, 1);
    if mk.is_postgres() {
        // Shut down means committed: a new store sees all 200.
        let again = mk.open(None).await;
        let n = again
            .store
            .list_episodes(EpisodeFilter {
                limit: 1000,
                ..Default::default()
            })
            .await?
            .len();
        assert_eq!(n, 200);
        again.stop().await;
    }
    Ok(())
}

async fn samples_of_an_unknown_episode_are_a_write_error_and_the_rest_land(
    mk: &Maker,
) -> TestResult {
    let o = mk.open(None).await;
    let s = &o.store;
    let e = episode(1, "alpha", None, "unknown", 1_000);
    let f = e.a_flow;
    assert!(s.open_episode(e));
    let a = vec![
        sample(Side::A, "alpha", 1_000, f),
        sample(Side::A, "alpha", 1_500, f),
    ];
    let c = vec![sample(Side::A, "alpha", 2_000, f)];
    assert!(s.add_samples(1, a.clone()));
    assert!(s.add_samples(999, vec![sample(Side::A, "alpha", 1_000, f)]));
    assert!(s.add_samples(1, c.clone()));
    s.flush().await?;
    let st = s.stats();
    assert_eq!((st.write_errors, st.samples_stored), (1, 3), "{st:?}");
    let (_, got) = s.get_episode(1).await?.expect("stored");
    assert_eq!(got, [a, c].concat());
    o.stop().await;
    Ok(())
}
