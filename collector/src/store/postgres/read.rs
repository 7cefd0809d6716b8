//! Reading the PostgreSQL store: the same queries as SQLite's (`sqlite`'s
//! `read`), with the same filters, order and decoding; every stored value
//! is decoded with a typed error, never a panic.

use tokio_postgres::types::ToSql;
use std::collections::HashMap;

use tokio_postgres::{Client, Row, Statement};
use tcpstall_common::record::JoinedVia;
use tcpstall_common::{FlowTuple, HeldEnd, Packed, Side, Translation};
use tcpstall_proto::convert::unpack;

use super::super::sqlite::read::{cookie_from_sql, corrupt, describe, tuple_from_sql};
use crate::store::{
    EpisodeCount, EpisodeFilter, EpisodeRow, HeldFilter, HeldRow, HostRow, StoreError, StoredEpisode,
    StoredSample, VerdictBasis,
};

const EPISODE_COLS: &str = "id, diagnosis, summary, evidence::text, started_at_ms, duration_ms, \
     stuck_bytes, a_host, a_netns, a_local, a_remote, a_cookie, b_host, peer_note, open, \
     ended_at_ms, end_reason, via_host, via_original, via_reply, via_nat, basis";

/// Read statements prepared on one connection, by their text. A read's
/// text has a few shapes (which filters it has), each parsed once rather
/// than at every read: a text sent as it is costs a round trip and a parse
/// more each time.
#[derive(Default)]
pub(super) struct Cache(std::sync::Mutex<HashMap<String, Statement>>);

/// More shapes than the reads have; a bound all the same.
const CACHED: usize = 128;

impl Cache {
    async fn get(&self, c: &Client, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        let known = self.0.lock().ok().and_then(|m| m.get(sql).cloned());
        if let Some(st) = known {
            return Ok(st);
        }
        let st = c.prepare(sql).await?;
        if let Ok(mut m) = self.0.lock() {
            if m.len() < CACHED {
                m.insert(sql.to_string(), st.clone());
            }
        }
        Ok(st)
    }
}

/// A query's arguments, numbered from `$1` in order.
type Args = Vec<Box<dyn ToSql + Sync + Send>>;

/// `select` with the filter's conditions (all but its place and limit),
/// their arguments after those in `args`.
fn matching(select: &str, f: &EpisodeFilter, mut args: Args) -> (String, Args) {
    let mut sql = format!("{select} WHERE true");
    if let Some(since) = f.since_ms {
        args.push(Box::new(since));
        sql += &format!(" AND started_at_ms >= ${}", args.len());
    }
    if let Some(host) = &f.host {
        args.push(Box::new(host.clone()));
        let n = args.len();
        sql += &format!(" AND (a_host = ${n} OR b_host = ${n})");
    }
    if let Some(d) = &f.diagnosis {
        args.push(Box::new(d.clone()));
        sql += &format!(" AND diagnosis = ${}", args.len());
    }
    if f.open_only {
        sql += " AND open";
    }
    (sql, args)
}

pub(super) async fn list_episodes(
    c: &Client,
    cache: &Cache,
    f: &EpisodeFilter,
) -> Result<Vec<EpisodeRow>, StoreError> {
    let (mut sql, mut args) = matching(&format!("SELECT {EPISODE_COLS} FROM episodes"), f, Vec::new());
    if let Some((started_at_ms, id)) = f.after {
        args.push(Box::new(started_at_ms));
        args.push(Box::new(id));
        let n = args.len();
        sql += &format!(" AND (started_at_ms, id) < (${}, ${n})", n - 1);
    }
    args.push(Box::new(i64::from(f.effective_limit())));
    sql += &format!(
        " ORDER BY started_at_ms DESC, id DESC LIMIT ${}",
        args.len()
    );
    let params: Vec<&(dyn ToSql + Sync)> = args
        .iter()
        .map(|a| a.as_ref() as &(dyn ToSql + Sync))
        .collect();
    c.query(&cache.get(c, &sql).await?, &params)
        .await?
        .iter()
        .map(episode_row)
        .collect()
}

pub(super) async fn count_episodes(
    c: &Client,
    cache: &Cache,
    f: &EpisodeFilter,
    bucket_ms: i64,
) -> Result<Vec<EpisodeCount>, StoreError> {
    let (mut sql, args) = matching(
        "SELECT (started_at_ms / $1) * $1 AS bucket, diagnosis, count(*) FROM episodes",
        f,
        vec![Box::new(bucket_ms.max(1))],
    );
    sql += " GROUP BY bucket, diagnosis ORDER BY bucket, diagnosis";
    let params: Vec<&(dyn ToSql + Sync)> = args
        .iter()
        .map(|a| a.as_ref() as &(dyn ToSql + Sync))
        .collect();
    Ok(c.query(&cache.get(c, &sql).await?, &params)
        .await?
        .iter()
        .map(|r| EpisodeCount {
            bucket_ms: r.get(0),
            diagnosis: r.get(1),
            count: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
        })
        .collect())
}

pub(super) async fn get_episode(
    c: &Client,
    cache: &Cache,
    id: i64,
) -> Result<Option<StoredEpisode>, StoreError> {
    let sql = format!("SELECT {EPISODE_COLS} FROM episodes WHERE id = $1");
    let Some(row) = c.query_opt(&cache.get(c, &sql).await?, &[&id]).await? else {
        return Ok(None);
    };
    let episode = episode_row(&row)?;
    let samples = cache
        .get(
            c,
            "SELECT side, host, at_ms, sample_pb FROM samples
              WHERE episode_id = $1 ORDER BY at_ms, side, host",
        )
        .await?;
    let rows = c.query(&samples, &[&id]).await?;
    let mut samples = Vec::with_capacity(rows.len());
    for row in rows {
        let side: String = row.try_get(0)?;
        let p = Packed::from_bytes(row.try_get::<_, Vec<u8>>(3)?);
        if unpack(&p).is_none() {
            return Err(corrupt(id, "sample_pb", &describe(p.as_bytes())));
        }
        samples.push(StoredSample {
            side: Side::parse(&side).ok_or_else(|| corrupt(id, "side", &side))?,
            host: row.try_get(1)?,
            at_ms: row.try_get(2)?,
            sample: p,
        });
    }
    Ok(Some((episode, samples)))
}

pub(super) async fn list_hosts(c: &Client, cache: &Cache) -> Result<Vec<HostRow>, StoreError> {
    let hosts = cache
        .get(
            c,
            "SELECT host, kernel, agent_version, boot_id, first_seen_ms, last_seen_ms, connected
               FROM hosts ORDER BY host",
        )
        .await?;
    c.query(&hosts, &[])
    .await?
    .iter()
    .map(|r| {
        Ok(HostRow {
            host: r.try_get(0)?,
            kernel: r.try_get(1)?,
            agent_version: r.try_get(2)?,
            boot_id: r.try_get(3)?,
            first_seen_ms: r.try_get(4)?,
            last_seen_ms: r.try_get(5)?,
            connected: r.try_get(6)?,
        })
    })
    .collect()
}

/// Held spans summed over the filter's minutes, per host pair, end and
/// bucket; the busiest pairs first.
pub(super) async fn list_held(
    c: &Client,
    cache: &Cache,
    f: &HeldFilter,
) -> Result<Vec<HeldRow>, StoreError> {
    let mut sql = String::from(
        "SELECT max(minute_ms), a_host, b_host, end_reason, le_ms, sum(count)::bigint,
                sum(episodes)::bigint, sum(total_ms)::bigint, max(max_ms)
           FROM held_spans WHERE true",
    );
    let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    if let Some(since) = f.since_ms {
        args.push(Box::new(since));
        sql += &format!(" AND minute_ms >= ${}", args.len());
    }
    if let Some(host) = &f.host {
        args.push(Box::new(host.clone()));
        let n = args.len();
        sql += &format!(" AND (a_host = ${n} OR b_host = ${n})");
    }
    sql += " GROUP BY a_host, b_host, end_reason, le_ms
             ORDER BY sum(sum(count)) OVER (PARTITION BY a_host, b_host) DESC,
                      a_host, b_host, end_reason, le_ms";
    let params: Vec<&(dyn ToSql + Sync)> = args
        .iter()
        .map(|a| a.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let count = |v: i64, column| {
        u64::try_from(v).map_err(|_| StoreError::CorruptRow {
            table: "held_spans",
            column,
            value: v.to_string(),
        })
    };
    let mut out = Vec::new();
    for row in c.query(&cache.get(c, &sql).await?, &params).await? {
        let end: String = row.try_get(3)?;
        out.push(HeldRow {
            minute_ms: row.try_get(0)?,
            a_host: row.try_get(1)?,
            b_host: row.try_get(2)?,
            end: HeldEnd::from_id(&end).ok_or_else(|| StoreError::CorruptRow {
                table: "held_spans",
                column: "end_reason",
                value: end.chars().take(200).collect(),
            })?,
            le_ms: count(row.try_get(4)?, "le_ms")?,
            count: count(row.try_get(5)?, "count")?,
            episodes: count(row.try_get(6)?, "episodes")?,
            total_ms: count(row.try_get(7)?, "total_ms")?,
            max_ms: count(row.try_get(8)?, "max_ms")?,
        });
    }
    Ok(out)
}

/// The translation of an episode row's `via_*` columns (17 on).
fn via_from_row(row: &Row, id: i64) -> Result<Option<JoinedVia>, StoreError> {
    let Some(host) = row.try_get::<_, Option<String>>(17)? else {
        return Ok(None);
    };
    let tuple = |i, column| -> Result<FlowTuple, StoreError> {
        let s: Option<String> = row.try_get(i)?;
        s.as_deref()
            .and_then(tuple_from_sql)
            .ok_or_else(|| corrupt(id, column, s.as_deref().unwrap_or("NULL")))
    };
    let original = tuple(18, "via_original")?;
    let reply = tuple(19, "via_reply")?;
    let nat: Option<String> = row.try_get(20)?;
    let (src_nat, dst_nat) = match nat.as_deref() {
        Some("snat+dnat") => (true, true),
        Some("snat") => (true, false),
        Some("dnat") => (false, true),
        Some("none") => (false, false),
        other => return Err(corrupt(id, "via_nat", other.unwrap_or("NULL"))),
    };
    Ok(Some(JoinedVia {
        host,
        translation: Translation {
            original,
            reply,
            src_nat,
            dst_nat,
        },
    }))
}

fn episode_row(row: &Row) -> Result<EpisodeRow, StoreError> {
    let id: i64 = row.try_get(0)?;
    let evidence: String = row.try_get(3)?;
    let duration: i64 = row.try_get(5)?;
    let stuck: i64 = row.try_get(6)?;
    let local: String = row.try_get(9)?;
    let remote: String = row.try_get(10)?;
    let addr = |column, s: &str| s.parse().map_err(|_| corrupt(id, column, s));
    Ok(EpisodeRow {
        id,
        diagnosis: row.try_get(1)?,
        summary: row.try_get(2)?,
        evidence: serde_json::from_str(&evidence)
            .map_err(|_| corrupt(id, "evidence", &evidence))?,
        basis: match row.try_get::<_, Option<String>>(21)? {
            Some(b) => serde_json::from_str(&b).map_err(|_| corrupt(id, "basis", &b))?,
            None => VerdictBasis::default(),
        },
        started_at_ms: row.try_get(4)?,
        duration_ms: u64::try_from(duration)
            .map_err(|_| corrupt(id, "duration_ms", &duration.to_string()))?,
        stuck_bytes: u32::try_from(stuck)
            .map_err(|_| corrupt(id, "stuck_bytes", &stuck.to_string()))?,
        a_host: row.try_get(7)?,
        a_netns: row.try_get(8)?,
        a_flow: FlowTuple::new(addr("a_local", &local)?, addr("a_remote", &remote)?),
        a_cookie: cookie_from_sql(row.try_get(11)?),
        b_host: row.try_get(12)?,
        peer_note: row.try_get(13)?,
        via: via_from_row(row, id)?,
        open: row.try_get(14)?,
        ended_at_ms: row.try_get(15)?,
        end_reason: row.try_get(16)?,
    })
}
