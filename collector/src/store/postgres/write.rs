//! Each write command as SQL, applied by the writer inside the transaction
//! its turn opened (see `writer`), with statements prepared once per
//! connection.
//!
//! Every write may be applied twice and store the same: a batch whose
//! COMMIT was cut off by a lost connection may have committed, and is
//! applied again on the next connection; and two collector nodes may write
//! the same episode (a partition taken over and replayed). So an episode is
//! inserted with `ON CONFLICT DO NOTHING` (its id, or its flow and start,
//! already stored), an update or close sets what it sets by id, a sample is
//! unique per episode, end, host and time taken, and a host is upserted by
//! name.
//!
//! Held-span counts are the exception: each row adds its figures to the
//! stored ones, so a batch applied twice (a COMMIT whose answer was lost)
//! or a replayed partition may count held spans twice. They are counts for
//! an overview, not evidence; making them exact would need every node to
//! keep what it has already added.

use tokio_postgres::{Client, Statement};

use super::super::sqlite::read::{cookie_to_sql, ViaColumns};
use crate::store::queue::Command;
use std::collections::BTreeMap;

use crate::store::StoredSample;

/// The write statements, prepared on one connection.
pub(super) struct Prepared {
    host_seen: Statement,
    host_gone: Statement,
    open: Statement,
    update: Statement,
    close: Statement,
    samples: Statement,
    known: Statement,
    held: Statement,
}

impl Prepared {
    pub(super) async fn new(c: &Client) -> Result<Prepared, tokio_postgres::Error> {
        Ok(Prepared {
            host_seen: c
                .prepare(
                    "INSERT INTO hosts (host, kernel, agent_version, boot_id,
                                        first_seen_ms, last_seen_ms, connected)
                     VALUES ($1, $2, $3, $4, $5, $5, true)
                     ON CONFLICT (host) DO UPDATE SET
                        kernel = excluded.kernel,
                        agent_version = excluded.agent_version,
                        boot_id = excluded.boot_id,
                        last_seen_ms = greatest(hosts.last_seen_ms, excluded.last_seen_ms),
                        connected = true",
                )
                .await?,
            host_gone: c
                .prepare(
                    "UPDATE hosts SET connected = false,
                            last_seen_ms = greatest(last_seen_ms, $2)
                      WHERE host = $1",
                )
                .await?,
            open: c
                .prepare(
                    "INSERT INTO episodes (id, diagnosis, summary, evidence, started_at_ms,
                        duration_ms, stuck_bytes, a_host, a_netns, a_local, a_remote, flow_key,
                        a_cookie, b_host, peer_note, open, community_id,
                        via_host, via_original, via_reply, via_nat)
                     VALUES ($1, $2, $3, $4::text::jsonb, $5, $6, $7, $8, $9, $10, $11, $12,
                        $13, $14, $15, true, $16, $17, $18, $19, $20)
                     ON CONFLICT DO NOTHING",
                )
                .await?,
            update: c
                .prepare(
                    "UPDATE episodes SET diagnosis = $2, summary = $3, evidence = $4::text::jsonb,
                        b_host = $5, peer_note = $6, duration_ms = $7, stuck_bytes = $8,
                        via_host = $9, via_original = $10, via_reply = $11, via_nat = $12
                      WHERE id = $1",
                )
                .await?,
            close: c
                .prepare(
                    "UPDATE episodes SET open = false, ended_at_ms = $2, end_reason = $3,
                        duration_ms = $4
                      WHERE id = $1",
                )
                .await?,
            samples: c
                .prepare(
                    "INSERT INTO samples (episode_id, side, host, at_ms, sample_pb)
                     SELECT s.episode_id, s.side, s.host, s.at_ms, s.pb
                       FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[],
                                   $5::bytea[])
                            AS s (episode_id, side, host, at_ms, pb)
                     ON CONFLICT DO NOTHING",
                )
                .await?,
            known: c
                .prepare("SELECT id FROM episodes WHERE id = ANY($1::bigint[])")
                .await?,
            held: c
                .prepare(
                    "INSERT INTO held_spans (minute_ms, a_host, b_host, end_reason, le_ms,
                                             count, episodes, total_ms, max_ms)
                     SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[],
                                          $5::bigint[], $6::bigint[], $7::bigint[],
                                          $8::bigint[], $9::bigint[])
                     ORDER BY 1, 2, 3, 4, 5
                     ON CONFLICT (minute_ms, a_host, b_host, end_reason, le_ms) DO UPDATE SET
                        count = held_spans.count + excluded.count,
                        episodes = held_spans.episodes + excluded.episodes,
                        total_ms = held_spans.total_ms + excluded.total_ms,
                        max_ms = greatest(held_spans.max_ms, excluded.max_ms)",
                )
                .await?,
        })
    }
}

/// What one write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Applied {
    /// Rows inserted or changed, and of them sample rows.
    Rows { rows: u64, samples: u64 },
    /// Sample rows inserted, and the episodes of the sample writes not
    /// applied because the store does not have their episode (one each: a
    /// failed write, counted; the rest of the statement applies).
    Samples { rows: u64, unknown: Vec<i64> },
    /// An update or close of an episode the store does not have: a failed
    /// write (counted), which does not abort the transaction.
    UnknownEpisode(i64),
}

/// Applies one write command; any other command does nothing.
pub(super) async fn apply(
    c: &Client,
    p: &Prepared,
    cmd: &Command,
) -> Result<Applied, WriteError> {
    let rows = |rows| Applied::Rows { rows, samples: 0 };
    Ok(match cmd {
        Command::HostSeen(h) => rows(
            c.execute(
                &p.host_seen,
                &[&h.host, &h.kernel, &h.agent_version, &h.boot_id, &h.at_ms],
            )
            .await?,
        ),
        Command::HostGone { host, at_ms } => {
            rows(c.execute(&p.host_gone, &[host, at_ms]).await?)
        }
        Command::OpenEpisode(e) => {
            let via = ViaColumns::of(e.via.as_ref());
            let evidence = serde_json::to_string(&e.evidence)?;
            rows(
                c.execute(
                    &p.open,
                    &[
                        &e.id,
                        &e.diagnosis,
                        &e.summary,
                        &evidence,
                        &e.started_at_ms,
                        &int(e.duration_ms),
                        &i64::from(e.stuck_bytes),
                        &e.a_host,
                        &e.a_netns,
                        &e.a_flow.local.to_string(),
                        &e.a_flow.remote.to_string(),
                        &e.a_flow.key().to_string(),
                        &cookie_to_sql(e.a_cookie),
                        &e.b_host,
                        &e.peer_note,
                        &e.a_flow.community_id(),
                        &via.host,
                        &via.original,
                        &via.reply,
                        &via.nat,
                    ],
                )
                .await?,
            )
        }
        Command::UpdateEpisode(u) => {
            let via = ViaColumns::of(u.via.as_ref());
            let evidence = serde_json::to_string(&u.evidence)?;
            known(
                u.id,
                c.execute(
                    &p.update,
                    &[
                        &u.id,
                        &u.diagnosis,
                        &u.summary,
                        &evidence,
                        &u.b_host,
                        &u.peer_note,
                        &int(u.duration_ms),
                        &i64::from(u.stuck_bytes),
                        &via.host,
                        &via.original,
                        &via.reply,
                        &via.nat,
                    ],
                )
                .await?,
            )
        }
        Command::CloseEpisode { id, end } => known(
            *id,
            c.execute(
                &p.close,
                &[id, &end.ended_at_ms, &end.end_reason, &int(end.duration_ms)],
            )
            .await?,
        ),
        Command::AddSamples { .. } => add_samples(c, p, std::iter::once(cmd)).await?,
        _ => rows(0),
    })
}

/// Inserts the samples of several `AddSamples` commands (others are
/// skipped) in one statement, in their order: the samples of a poll
/// arrive as one command per episode, and one round trip per command
/// would bound the store by the network's latency.
///
/// A command whose episode the store does not have (its insert was
/// refused, or dropped while the store's queue was full) is left out and
/// named, rather than failing the statement on the foreign key: one such
/// write used to fail every write merged with it, then every write was
/// tried alone, and the slower store dropped more episode inserts.
pub(super) async fn add_samples<'a>(
    c: &Client,
    p: &Prepared,
    cmds: impl Iterator<Item = &'a Command>,
) -> Result<Applied, WriteError> {
    let cmds: Vec<(i64, &Vec<StoredSample>)> = cmds
        .filter_map(|cmd| match cmd {
            Command::AddSamples { id, samples } => Some((*id, samples)),
            _ => None,
        })
        .collect();
    let mut asked: Vec<i64> = cmds.iter().map(|(id, _)| *id).collect();
    asked.sort_unstable();
    asked.dedup();
    let known: std::collections::HashSet<i64> = c
        .query(&p.known, &[&asked])
        .await?
        .iter()
        .filter_map(|r| r.try_get::<_, i64>(0).ok())
        .collect();
    let (mut ids, mut sides, mut hosts, mut at, mut pb) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::<&[u8]>::new());
    let mut unknown = Vec::new();
    for (id, samples) in cmds {
        if !known.contains(&id) {
            unknown.push(id);
            continue;
        }
        for s in samples {
            ids.push(id);
            sides.push(s.side.as_str());
            hosts.push(s.host.as_str());
            at.push(s.at_ms);
            pb.push(s.sample.as_bytes());
        }
    }
    let rows = if ids.is_empty() {
        0
    } else {
        c.execute(&p.samples, &[&ids, &sides, &hosts, &at, &pb])
            .await?
    };
    Ok(Applied::Samples { rows, unknown })
}

/// Why a write did not apply.
#[derive(Debug, thiserror::Error)]
pub(super) enum WriteError {
    #[error(transparent)]
    Pg(#[from] tokio_postgres::Error),
    /// The write's own data cannot be written; it never will be.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn known(id: i64, rows: u64) -> Applied {
    if rows == 0 {
        Applied::UnknownEpisode(id)
    } else {
        Applied::Rows { rows, samples: 0 }
    }
}

/// Held-span counts added up by key (minute, hosts, end, bucket):
/// count, episodes, total and longest.
#[derive(Debug, Default)]
pub(super) struct HeldSums(BTreeMap<(i64, String, String, &'static str, u64), [u64; 4]>);

impl HeldSums {
    pub(super) fn new() -> HeldSums {
        HeldSums::default()
    }

    pub(super) fn add(&mut self, rows: Vec<crate::store::HeldRow>) {
        for r in rows {
            let e = self
                .0
                .entry((r.minute_ms, r.a_host, r.b_host, r.end.id(), r.le_ms))
                .or_insert([0; 4]);
            e[0] += r.count;
            e[1] += r.episodes;
            e[2] += r.total_ms;
            e[3] = e[3].max(r.max_ms);
        }
    }
}

/// Adds held-span counts in one statement: a row per key (a statement's
/// upsert may touch a row once), in key order (two nodes' transactions
/// lock the rows they share in one order: no deadlock). One statement
/// rather than one per row: the rows stay locked until the transaction
/// ends, and another node's writer waits on them for as long as this one
/// takes to send them. Returns the rows written.
pub(super) async fn add_held(
    c: &tokio_postgres::Client,
    p: &Prepared,
    held: &HeldSums,
) -> Result<u64, WriteError> {
    let n = held.0.len();
    if n == 0 {
        return Ok(0);
    }
    let (mut minute, mut a, mut b, mut end, mut le) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut count, mut episodes, mut total, mut max) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for ((m, ah, bh, e, l), v) in &held.0 {
        minute.push(*m);
        a.push(ah.as_str());
        b.push(bh.as_str());
        end.push(*e);
        le.push(int(*l));
        count.push(int(v[0]));
        episodes.push(int(v[1]));
        total.push(int(v[2]));
        max.push(int(v[3]));
    }
    Ok(c
        .execute(
            &p.held,
            &[&minute, &a, &b, &end, &le, &count, &episodes, &total, &max],
        )
        .await?)
}
