//! Reading the store: episodes by filter, one episode with its samples,
//! hosts. Runs on the store thread; every stored value is decoded with a
//! typed error, never a panic, since a person may have edited the file.

use rusqlite::types::{Value, ValueRef};
use rusqlite::{params_from_iter, Connection, Row};
use tcpstall_common::record::JoinedVia;
use tcpstall_common::{EndSample, FlowTuple, HeldEnd, Side, Translation};

use crate::store::{
    EpisodeCount, EpisodeFilter, EpisodeRow, HeldFilter, HeldRow, HostRow, StoreError, StoredEpisode,
    StoredSample, VerdictBasis,
};
use tcpstall_common::Packed;
use tcpstall_proto::convert::{pack, unpack};

const EPISODE_COLS: &str = "id, diagnosis, summary, evidence, started_at_ms, duration_ms, \
     stuck_bytes, a_host, a_netns, a_local, a_remote, a_cookie, b_host, peer_note, open, \
     ended_at_ms, end_reason, via_host, via_original, via_reply, via_nat, basis";

/// Socket cookies are u64; SQLite integers are i64. The bits are kept.
pub(crate) fn cookie_to_sql(c: u64) -> i64 {
    i64::from_ne_bytes(c.to_ne_bytes())
}

pub(crate) fn cookie_from_sql(c: i64) -> u64 {
    u64::from_ne_bytes(c.to_ne_bytes())
}

/// An episode's `via_*` columns (schema version 6): the translation that
/// joined its ends, each tuple as `source -> destination`, and what was
/// rewritten as a word; all `None` without one.
pub(crate) struct ViaColumns {
    pub host: Option<String>,
    pub original: Option<String>,
    pub reply: Option<String>,
    pub nat: Option<&'static str>,
}

impl ViaColumns {
    pub fn of(via: Option<&JoinedVia>) -> ViaColumns {
        let Some(v) = via else {
            return ViaColumns {
                host: None,
                original: None,
                reply: None,
                nat: None,
            };
        };
        let t = &v.translation;
        ViaColumns {
            host: Some(v.host.clone()),
            original: Some(t.original.to_string()),
            reply: Some(t.reply.to_string()),
            nat: Some(match (t.src_nat, t.dst_nat) {
                (true, true) => "snat+dnat",
                (true, false) => "snat",
                (false, true) => "dnat",
                (false, false) => "none",
            }),
        }
    }
}

/// `ip:port -> ip:port` as [`ViaColumns`] writes a tuple.
pub(crate) fn tuple_from_sql(s: &str) -> Option<FlowTuple> {
    let (local, remote) = s.split_once(" -> ")?;
    Some(FlowTuple::new(local.parse().ok()?, remote.parse().ok()?))
}

/// The translation of an episode row's `via_*` columns (17 on): none when
/// `via_host` is NULL, else every column must read.
fn via_from_row(row: &Row<'_>, id: i64) -> Result<Option<JoinedVia>, StoreError> {
    let Some(host) = row.get::<_, Option<String>>(17)? else {
        return Ok(None);
    };
    let tuple = |i, column| -> Result<FlowTuple, StoreError> {
        let s: Option<String> = row.get(i)?;
        s.as_deref()
            .and_then(tuple_from_sql)
            .ok_or_else(|| corrupt(id, column, s.as_deref().unwrap_or("NULL")))
    };
    let original = tuple(18, "via_original")?;
    let reply = tuple(19, "via_reply")?;
    let nat: Option<String> = row.get(20)?;
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

/// `select` with the filter's conditions (all but its place and limit),
/// and their arguments.
fn matching(select: &str, f: &EpisodeFilter) -> (String, Vec<Value>) {
    let mut sql = format!("{select} WHERE 1");
    let mut args = Vec::new();
    if let Some(since) = f.since_ms {
        args.push(Value::Integer(since));
        sql += &format!(" AND started_at_ms >= ?{}", args.len());
    }
    if let Some(host) = &f.host {
        args.push(Value::Text(host.clone()));
        let n = args.len();
        sql += &format!(" AND (a_host = ?{n} OR b_host = ?{n})");
    }
    if let Some(d) = &f.diagnosis {
        args.push(Value::Text(d.clone()));
        sql += &format!(" AND diagnosis = ?{}", args.len());
    }
    if f.open_only {
        sql += " AND open = 1";
    }
    (sql, args)
}

pub(super) fn list_episodes(
    conn: &Connection,
    f: &EpisodeFilter,
) -> Result<Vec<EpisodeRow>, StoreError> {
    let (mut sql, mut args) = matching(&format!("SELECT {EPISODE_COLS} FROM episodes"), f);
    if let Some((started_at_ms, id)) = f.after {
        args.push(Value::Integer(started_at_ms));
        args.push(Value::Integer(id));
        let n = args.len();
        sql += &format!(" AND (started_at_ms, id) < (?{}, ?{n})", n - 1);
    }
    args.push(Value::Integer(i64::from(f.effective_limit())));
    sql += &format!(
        " ORDER BY started_at_ms DESC, id DESC LIMIT ?{}",
        args.len()
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(episode_row(row)?);
    }
    Ok(out)
}

/// Counted here, not by `GROUP BY`: SQLite sorts a `GROUP BY` on a
/// computed bucket through a temporary B-tree (775 ms for 30 days of
/// 1,000,000 episodes, BENCHMARKS), while the rows come in start order
/// from the `(started_at_ms, diagnosis)` index alone.
pub(super) fn count_episodes(
    conn: &Connection,
    f: &EpisodeFilter,
    bucket_ms: i64,
) -> Result<Vec<EpisodeCount>, StoreError> {
    let bucket_ms = bucket_ms.max(1);
    let (sql, args) = matching("SELECT started_at_ms, diagnosis FROM episodes", f);
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    // The diagnoses seen, few: a row's is found among them, not allocated.
    let mut names: Vec<String> = Vec::new();
    let mut counts: std::collections::BTreeMap<(i64, usize), u64> = Default::default();
    while let Some(row) = rows.next()? {
        let at: i64 = row.get(0)?;
        let name = row.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
        let k = match names.iter().position(|n| n == name) {
            Some(k) => k,
            None => {
                names.push(name.to_string());
                names.len() - 1
            }
        };
        *counts.entry((at.div_euclid(bucket_ms) * bucket_ms, k)).or_default() += 1;
    }
    let mut out: Vec<EpisodeCount> = counts
        .into_iter()
        .map(|((bucket, k), count)| EpisodeCount {
            bucket_ms: bucket,
            diagnosis: names[k].clone(),
            count,
        })
        .collect();
    out.sort_by(|a, b| (a.bucket_ms, &a.diagnosis).cmp(&(b.bucket_ms, &b.diagnosis)));
    Ok(out)
}

pub(super) fn get_episode(conn: &Connection, id: i64) -> Result<Option<StoredEpisode>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {EPISODE_COLS} FROM episodes WHERE id = ?1"
    ))?;
    let mut rows = stmt.query([id])?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let episode = episode_row(row)?;
    let mut stmt = conn.prepare_cached(
        "SELECT side, host, at_ms, sample, sample_pb FROM samples
          WHERE episode_id = ?1 ORDER BY at_ms, id",
    )?;
    let mut rows = stmt.query([id])?;
    let mut samples = Vec::new();
    while let Some(row) = rows.next()? {
        let side: String = row.get(0)?;
        samples.push(StoredSample {
            side: Side::parse(&side).ok_or_else(|| corrupt(id, "side", &side))?,
            host: row.get(1)?,
            at_ms: row.get(2)?,
            sample: sample(row, id)?,
        });
    }
    Ok(Some((episode, samples)))
}

/// A sample row's sample: the protobuf in `sample_pb` (schema version 2
/// on), else the JSON in `sample` that version 1 wrote. Either must
/// decode to a valid sample.
fn sample(row: &Row<'_>, id: i64) -> Result<Packed, StoreError> {
    let bytes = match row.get_ref(4)? {
        ValueRef::Null => None,
        ValueRef::Blob(b) => Some(b.to_vec()),
        other => {
            let kind = other.data_type();
            return Err(corrupt(
                id,
                "sample_pb",
                &format!("a {kind} value, not a BLOB"),
            ));
        }
    };
    match bytes {
        Some(b) => {
            let p = Packed::from_bytes(b);
            match unpack(&p) {
                Some(_) => Ok(p),
                None => Err(corrupt(id, "sample_pb", &describe(p.as_bytes()))),
            }
        }
        None => {
            let json: String = row.get(3)?;
            let s: EndSample =
                serde_json::from_str(&json).map_err(|_| corrupt(id, "sample", &json))?;
            let p = pack(&s);
            // What a person's edit may hold but the wire cannot carry.
            match unpack(&p) {
                Some(_) => Ok(p),
                None => Err(corrupt(id, "sample", &json)),
            }
        }
    }
}

/// Bytes for an error message: their length and the first few in hex.
pub(crate) fn describe(b: &[u8]) -> String {
    let head: String = b.iter().take(32).map(|x| format!("{x:02x}")).collect();
    let more = if b.len() > 32 { "…" } else { "" };
    format!("{} bytes: {head}{more}", b.len())
}

pub(super) fn list_hosts(conn: &Connection) -> Result<Vec<HostRow>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT host, kernel, agent_version, boot_id, first_seen_ms, last_seen_ms,
                connected
           FROM hosts ORDER BY host",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(HostRow {
            host: r.get(0)?,
            kernel: r.get(1)?,
            agent_version: r.get(2)?,
            boot_id: r.get(3)?,
            first_seen_ms: r.get(4)?,
            last_seen_ms: r.get(5)?,
            connected: r.get::<_, i64>(6)? != 0,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Held spans summed over the filter's minutes, per host pair, end and
/// bucket; the busiest pairs first.
pub(super) fn list_held(conn: &Connection, f: &HeldFilter) -> Result<Vec<HeldRow>, StoreError> {
    let mut sql = String::from(
        "SELECT max(minute_ms), a_host, b_host, end_reason, le_ms, sum(count), sum(episodes),
                sum(total_ms), max(max_ms)
           FROM held_spans WHERE 1",
    );
    let mut args = Vec::new();
    if let Some(since) = f.since_ms {
        args.push(Value::Integer(since));
        sql += &format!(" AND minute_ms >= ?{}", args.len());
    }
    if let Some(host) = &f.host {
        args.push(Value::Text(host.clone()));
        let n = args.len();
        sql += &format!(" AND (a_host = ?{n} OR b_host = ?{n})");
    }
    sql += " GROUP BY a_host, b_host, end_reason, le_ms
             ORDER BY sum(sum(count)) OVER (PARTITION BY a_host, b_host) DESC,
                      a_host, b_host, end_reason, le_ms";
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(args))?;
    let mut out = Vec::new();
    let count = |v: i64, column| {
        u64::try_from(v).map_err(|_| StoreError::CorruptRow {
            table: "held_spans",
            column,
            value: v.to_string(),
        })
    };
    while let Some(row) = rows.next()? {
        let end: String = row.get(3)?;
        out.push(HeldRow {
            minute_ms: row.get(0)?,
            a_host: row.get(1)?,
            b_host: row.get(2)?,
            end: HeldEnd::from_id(&end).ok_or_else(|| StoreError::CorruptRow {
                table: "held_spans",
                column: "end_reason",
                value: end.chars().take(200).collect(),
            })?,
            le_ms: count(row.get(4)?, "le_ms")?,
            count: count(row.get(5)?, "count")?,
            episodes: count(row.get(6)?, "episodes")?,
            total_ms: count(row.get(7)?, "total_ms")?,
            max_ms: count(row.get(8)?, "max_ms")?,
        });
    }
    Ok(out)
}

pub(crate) fn corrupt(id: i64, column: &'static str, value: &str) -> StoreError {
    StoreError::Corrupt {
        id,
        column,
        value: value.chars().take(200).collect(),
    }
}

fn episode_row(row: &Row<'_>) -> Result<EpisodeRow, StoreError> {
    let id: i64 = row.get(0)?;
    let evidence: String = row.get(3)?;
    let duration: i64 = row.get(5)?;
    let stuck: i64 = row.get(6)?;
    let local: String = row.get(9)?;
    let remote: String = row.get(10)?;
    let addr = |column, s: &str| s.parse().map_err(|_| corrupt(id, column, s));
    Ok(EpisodeRow {
        id,
        diagnosis: row.get(1)?,
        summary: row.get(2)?,
        evidence: serde_json::from_str(&evidence)
            .map_err(|_| corrupt(id, "evidence", &evidence))?,
        basis: match row.get::<_, Option<String>>(21)? {
            Some(b) => serde_json::from_str(&b).map_err(|_| corrupt(id, "basis", &b))?,
            None => VerdictBasis::default(),
        },
        started_at_ms: row.get(4)?,
        duration_ms: u64::try_from(duration)
            .map_err(|_| corrupt(id, "duration_ms", &duration.to_string()))?,
        stuck_bytes: u32::try_from(stuck)
            .map_err(|_| corrupt(id, "stuck_bytes", &stuck.to_string()))?,
        a_host: row.get(7)?,
        a_netns: row.get(8)?,
        a_flow: FlowTuple::new(addr("a_local", &local)?, addr("a_remote", &remote)?),
        a_cookie: cookie_from_sql(row.get(11)?),
        b_host: row.get(12)?,
        peer_note: row.get(13)?,
        via: via_from_row(row, id)?,
        open: row.get::<_, i64>(14)? != 0,
        ended_at_ms: row.get(15)?,
        end_reason: row.get(16)?,
    })
}
