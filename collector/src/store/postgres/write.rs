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

use std::collections::BTreeMap;

use tokio_postgres::{Client, Statement};

use super::super::sqlite::read::{cookie_to_sql, ViaColumns};
use crate::store::queue::Command;
use crate::store::{EpisodeEnd, EpisodeUpdate, NewEpisode, StoredSample};

/// The write statements, prepared on one connection. Each episode and
/// sample statement takes its rows as arrays (`unnest`), so that a
/// transaction's writes are a handful of statements whatever their number:
/// every statement is a round trip, and PostgreSQL's work per statement
/// (executor start, plan, the answer) was most of its work per row.
pub(super) struct Prepared {
    host_seen: Statement,
    host_gone: Statement,
    open: Statement,
    update: Statement,
    close: Statement,
    samples: Statement,
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
                        via_host, via_original, via_reply, via_nat, basis)
                     SELECT id, diagnosis, summary, evidence::jsonb, started_at_ms,
                        duration_ms, stuck_bytes, a_host, a_netns, a_local, a_remote, flow_key,
                        a_cookie, b_host, peer_note, true, community_id,
                        via_host, via_original, via_reply, via_nat, basis
                       FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[],
                                   $5::bigint[], $6::bigint[], $7::bigint[], $8::text[],
                                   $9::text[], $10::text[], $11::text[], $12::text[],
                                   $13::bigint[], $14::text[], $15::text[], $16::text[],
                                   $17::text[], $18::text[], $19::text[], $20::text[],
                                   $21::text[])
                            AS e (id, diagnosis, summary, evidence, started_at_ms,
                                  duration_ms, stuck_bytes, a_host, a_netns, a_local,
                                  a_remote, flow_key, a_cookie, b_host, peer_note,
                                  community_id, via_host, via_original, via_reply, via_nat,
                                  basis)
                     ON CONFLICT DO NOTHING",
                )
                .await?,
            update: c
                .prepare(
                    "UPDATE episodes e SET diagnosis = u.diagnosis, summary = u.summary,
                        evidence = u.evidence::jsonb, b_host = u.b_host,
                        peer_note = u.peer_note, duration_ms = u.duration_ms,
                        stuck_bytes = u.stuck_bytes, via_host = u.via_host,
                        via_original = u.via_original, via_reply = u.via_reply,
                        via_nat = u.via_nat, basis = u.basis
                       FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[],
                                   $5::text[], $6::text[], $7::bigint[], $8::bigint[],
                                   $9::text[], $10::text[], $11::text[], $12::text[],
                                   $13::text[])
                            AS u (id, diagnosis, summary, evidence, b_host, peer_note,
                                  duration_ms, stuck_bytes, via_host, via_original,
                                  via_reply, via_nat, basis)
                      WHERE e.id = u.id
                     RETURNING e.id",
                )
                .await?,
            close: c
                .prepare(
                    "UPDATE episodes e SET open = false, ended_at_ms = c.ended_at_ms,
                        end_reason = c.end_reason, duration_ms = c.duration_ms
                       FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[])
                            AS c (id, ended_at_ms, end_reason, duration_ms)
                      WHERE e.id = c.id
                     RETURNING e.id",
                )
                .await?,
            // Samples of an episode the store does not have (its insert
            // refused, or dropped while the queue was full) are left out
            // and their episodes named, rather than failing the rest.
            samples: c
                .prepare(
                    "WITH s AS (
                         SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[],
                                              $4::bigint[], $5::bytea[])
                                AS s (episode_id, side, host, at_ms, pb)),
                     known AS (
                         SELECT id FROM episodes
                          WHERE id IN (SELECT DISTINCT episode_id FROM s)),
                     added AS (
                         INSERT INTO samples (episode_id, side, host, at_ms, sample_pb)
                         SELECT episode_id, side, host, at_ms, pb FROM s
                          WHERE episode_id IN (SELECT id FROM known)
                         ON CONFLICT DO NOTHING
                         RETURNING 1)
                     SELECT (SELECT count(*) FROM added),
                            array(SELECT DISTINCT episode_id FROM s
                                   WHERE episode_id NOT IN (SELECT id FROM known))",
                )
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

/// What a group of writes did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Applied {
    /// Rows inserted or changed.
    pub(super) rows: u64,
    /// Of them, sample rows.
    pub(super) samples: u64,
    /// Episodes that updates, closes or samples named and the store does
    /// not have: one failed write each (counted), which does not abort
    /// the transaction.
    pub(super) unknown: Vec<i64>,
}

/// The writes of a run, by kind: each kind in one statement.
#[derive(Default)]
struct Group<'a> {
    hosts: Vec<&'a Command>,
    opens: Vec<&'a NewEpisode>,
    /// By id, the last of each: a later update replaces every field an
    /// earlier one set.
    updates: BTreeMap<i64, &'a EpisodeUpdate>,
    closes: BTreeMap<i64, &'a EpisodeEnd>,
    samples: Vec<(i64, &'a [StoredSample])>,
}

/// Applies a run of write commands (held-span counts aside: see
/// [`add_held`]) in a few statements: hosts one by one, in their order;
/// then every episode insert, every update, every close, every sample, a
/// statement each. Within the transaction the order of kinds is all that
/// matters: an episode's samples, update and close follow its insert; an
/// update after its close (which the matcher does not send) would leave
/// the close's duration. Updates and closes go in id order, so that two
/// nodes writing the same episodes (a partition replayed) lock them in one
/// order.
pub(super) async fn apply<'a>(
    c: &Client,
    p: &Prepared,
    cmds: impl Iterator<Item = &'a Command>,
) -> Result<Applied, WriteError> {
    let mut g = Group::default();
    for cmd in cmds {
        match cmd {
            Command::HostSeen(_) | Command::HostGone { .. } => g.hosts.push(cmd),
            Command::OpenEpisode(e) => g.opens.push(e),
            Command::UpdateEpisode(u) => {
                g.updates.insert(u.id, u);
            }
            Command::CloseEpisode { id, end } => {
                g.closes.insert(*id, end);
            }
            Command::AddSamples { id, samples } => g.samples.push((*id, samples)),
            _ => {}
        }
    }
    let mut done = Applied::default();
    for cmd in g.hosts {
        done.rows += match cmd {
            Command::HostSeen(h) => {
                c.execute(
                    &p.host_seen,
                    &[&h.host, &h.kernel, &h.agent_version, &h.boot_id, &h.at_ms],
                )
                .await?
            }
            Command::HostGone { host, at_ms } => c.execute(&p.host_gone, &[host, at_ms]).await?,
            _ => 0,
        };
    }
    if !g.opens.is_empty() {
        done.rows += open(c, p, &g.opens).await?;
    }
    if !g.updates.is_empty() {
        let changed = update(c, p, &g.updates).await?;
        done.note_changed(g.updates.keys(), changed);
    }
    if !g.closes.is_empty() {
        let changed = close(c, p, &g.closes).await?;
        done.note_changed(g.closes.keys(), changed);
    }
    if !g.samples.is_empty() {
        let (rows, unknown) = add_samples(c, p, &g.samples).await?;
        done.rows += rows;
        done.samples += rows;
        done.unknown.extend(unknown);
    }
    Ok(done)
}

impl Applied {
    /// Counts the rows an update or close changed (`changed`: their ids)
    /// and names the asked ids it did not find.
    fn note_changed<'a>(&mut self, asked: impl Iterator<Item = &'a i64>, changed: Vec<i64>) {
        self.rows += changed.len() as u64;
        let changed: std::collections::HashSet<i64> = changed.into_iter().collect();
        self.unknown
            .extend(asked.filter(|id| !changed.contains(id)).copied());
    }
}

async fn open(c: &Client, p: &Prepared, opens: &[&NewEpisode]) -> Result<u64, WriteError> {
    let n = opens.len();
    let mut id = Vec::with_capacity(n);
    let (mut diagnosis, mut summary, mut evidence) = (cap(n), cap(n), cap(n));
    let (mut started, mut duration, mut stuck) = (cap(n), cap(n), cap(n));
    let (mut a_host, mut a_netns, mut a_local, mut a_remote, mut flow_key) =
        (cap(n), cap(n), cap(n), cap(n), cap(n));
    let (mut cookie, mut b_host, mut peer_note, mut community_id) =
        (cap(n), cap(n), cap(n), cap(n));
    let (mut via_host, mut via_original, mut via_reply, mut via_nat) =
        (cap(n), cap(n), cap(n), cap(n));
    let mut basis = cap(n);
    for e in opens {
        let via = ViaColumns::of(e.via.as_ref());
        id.push(e.id);
        diagnosis.push(e.diagnosis.as_str());
        summary.push(e.summary.as_str());
        evidence.push(serde_json::to_string(&e.evidence)?);
        started.push(e.started_at_ms);
        duration.push(int(e.duration_ms));
        stuck.push(i64::from(e.stuck_bytes));
        a_host.push(e.a_host.as_str());
        a_netns.push(e.a_netns.as_str());
        a_local.push(e.a_flow.local.to_string());
        a_remote.push(e.a_flow.remote.to_string());
        flow_key.push(e.a_flow.key().to_string());
        cookie.push(cookie_to_sql(e.a_cookie));
        b_host.push(e.b_host.as_deref());
        peer_note.push(e.peer_note.as_deref());
        community_id.push(e.a_flow.community_id());
        via_host.push(via.host);
        via_original.push(via.original);
        via_reply.push(via.reply);
        via_nat.push(via.nat);
        basis.push(serde_json::to_string(&e.basis)?);
    }
    Ok(c
        .execute(
            &p.open,
            &[
                &id,
                &diagnosis,
                &summary,
                &evidence,
                &started,
                &duration,
                &stuck,
                &a_host,
                &a_netns,
                &a_local,
                &a_remote,
                &flow_key,
                &cookie,
                &b_host,
                &peer_note,
                &community_id,
                &via_host,
                &via_original,
                &via_reply,
                &via_nat,
                &basis,
            ],
        )
        .await?)
}

/// Applies the updates; returns the ids it found.
async fn update(
    c: &Client,
    p: &Prepared,
    updates: &BTreeMap<i64, &EpisodeUpdate>,
) -> Result<Vec<i64>, WriteError> {
    let n = updates.len();
    let mut id = Vec::with_capacity(n);
    let (mut diagnosis, mut summary, mut evidence) = (cap(n), cap(n), cap(n));
    let (mut b_host, mut peer_note, mut duration, mut stuck) = (cap(n), cap(n), cap(n), cap(n));
    let (mut via_host, mut via_original, mut via_reply, mut via_nat) =
        (cap(n), cap(n), cap(n), cap(n));
    let mut basis = cap(n);
    for u in updates.values() {
        let via = ViaColumns::of(u.via.as_ref());
        id.push(u.id);
        diagnosis.push(u.diagnosis.as_str());
        summary.push(u.summary.as_str());
        evidence.push(serde_json::to_string(&u.evidence)?);
        b_host.push(u.b_host.as_deref());
        peer_note.push(u.peer_note.as_deref());
        duration.push(int(u.duration_ms));
        stuck.push(i64::from(u.stuck_bytes));
        via_host.push(via.host);
        via_original.push(via.original);
        via_reply.push(via.reply);
        via_nat.push(via.nat);
        basis.push(serde_json::to_string(&u.basis)?);
    }
    ids_of(
        c.query(
            &p.update,
            &[
                &id,
                &diagnosis,
                &summary,
                &evidence,
                &b_host,
                &peer_note,
                &duration,
                &stuck,
                &via_host,
                &via_original,
                &via_reply,
                &via_nat,
                &basis,
            ],
        )
        .await?,
    )
}

/// Applies the closes; returns the ids it found.
async fn close(
    c: &Client,
    p: &Prepared,
    closes: &BTreeMap<i64, &EpisodeEnd>,
) -> Result<Vec<i64>, WriteError> {
    let n = closes.len();
    let (mut id, mut ended, mut reason, mut duration) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (i, end) in closes {
        id.push(*i);
        ended.push(end.ended_at_ms);
        reason.push(end.end_reason.as_str());
        duration.push(int(end.duration_ms));
    }
    ids_of(
        c.query(&p.close, &[&id, &ended, &reason, &duration])
            .await?,
    )
}

fn ids_of(rows: Vec<tokio_postgres::Row>) -> Result<Vec<i64>, WriteError> {
    rows.iter()
        .map(|r| r.try_get::<_, i64>(0).map_err(WriteError::from))
        .collect()
}

/// Inserts samples, in their order, in one statement; returns the rows
/// inserted and the episodes it left out for want of their row.
async fn add_samples(
    c: &Client,
    p: &Prepared,
    cmds: &[(i64, &[StoredSample])],
) -> Result<(u64, Vec<i64>), WriteError> {
    let n = cmds.iter().map(|(_, s)| s.len()).sum();
    let (mut ids, mut sides, mut hosts, mut at) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut pb = Vec::<&[u8]>::with_capacity(n);
    for (id, samples) in cmds {
        for s in samples.iter() {
            ids.push(*id);
            sides.push(s.side.as_str());
            hosts.push(s.host.as_str());
            at.push(s.at_ms);
            pb.push(s.sample.as_bytes());
        }
    }
    if ids.is_empty() {
        return Ok((0, Vec::new()));
    }
    let row = c
        .query_one(&p.samples, &[&ids, &sides, &hosts, &at, &pb])
        .await?;
    let rows: i64 = row.try_get(0)?;
    let unknown: Vec<i64> = row.try_get(1)?;
    Ok((u64::try_from(rows).unwrap_or(0), unknown))
}

fn cap<T>(n: usize) -> Vec<T> {
    Vec::with_capacity(n)
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
