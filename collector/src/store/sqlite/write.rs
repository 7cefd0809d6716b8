//! Each write command as SQL, applied by the store thread inside the
//! transaction its turn opened (see `worker`). Episodes are inserted with
//! the id the caller allocated; an update or close of an episode the
//! store never had is an error; held-span counts add to those stored.

use rusqlite::{params, Connection};

use super::{read, Command};
use crate::store::StoreError;

/// Applies one write command on `c`; returns the rows it changed. Any
/// other command changes nothing.
pub(super) fn apply(c: &Connection, cmd: Command) -> Result<u64, StoreError> {
    let rows = match cmd {
        Command::HostSeen(h) => c
            .prepare_cached(
                "INSERT INTO hosts (host, kernel, agent_version, boot_id,
                                    first_seen_ms, last_seen_ms, connected)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, 1)
                 ON CONFLICT (host) DO UPDATE SET
                    kernel = excluded.kernel,
                    agent_version = excluded.agent_version,
                    boot_id = excluded.boot_id,
                    last_seen_ms = max(last_seen_ms, excluded.last_seen_ms),
                    connected = 1",
            )?
            .execute(params![
                h.host,
                h.kernel,
                h.agent_version,
                h.boot_id,
                h.at_ms
            ])?,
        Command::HostGone { host, at_ms } => c
            .prepare_cached(
                "UPDATE hosts SET connected = 0, last_seen_ms = max(last_seen_ms, ?2)
                  WHERE host = ?1",
            )?
            .execute(params![host, at_ms])?,
        Command::OpenEpisode(e) => {
            let via = read::ViaColumns::of(e.via.as_ref());
            c
            .prepare_cached(
                "INSERT INTO episodes (id, diagnosis, summary, evidence, started_at_ms,
                    duration_ms, stuck_bytes, a_host, a_netns, a_local, a_remote,
                    a_cookie, b_host, peer_note, open, community_id,
                    via_host, via_original, via_reply, via_nat, basis)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, 1, ?15,
                    ?16, ?17, ?18, ?19, ?20)",
            )?
            .execute(params![
                e.id,
                e.diagnosis,
                e.summary,
                serde_json::to_string(&e.evidence)?,
                e.started_at_ms,
                int(e.duration_ms),
                e.stuck_bytes,
                e.a_host,
                e.a_netns,
                e.a_flow.local.to_string(),
                e.a_flow.remote.to_string(),
                read::cookie_to_sql(e.a_cookie),
                e.b_host,
                e.peer_note,
                e.a_flow.community_id(),
                via.host,
                via.original,
                via.reply,
                via.nat,
                serde_json::to_string(&e.basis)?,
            ])?
        }
        Command::UpdateEpisode(u) => {
            let via = read::ViaColumns::of(u.via.as_ref());
            known(
                u.id,
                c.prepare_cached(
                    "UPDATE episodes SET diagnosis = ?2, summary = ?3, evidence = ?4,
                        b_host = ?5, peer_note = ?6, duration_ms = ?7, stuck_bytes = ?8,
                        via_host = ?9, via_original = ?10, via_reply = ?11, via_nat = ?12,
                        basis = ?13
                      WHERE id = ?1",
                )?
                .execute(params![
                    u.id,
                    u.diagnosis,
                    u.summary,
                    serde_json::to_string(&u.evidence)?,
                    u.b_host,
                    u.peer_note,
                    int(u.duration_ms),
                    u.stuck_bytes,
                    via.host,
                    via.original,
                    via.reply,
                    via.nat,
                    serde_json::to_string(&u.basis)?,
                ])?,
            )?
        }
        Command::CloseEpisode { id, end } => known(
            id,
            c.prepare_cached(
                "UPDATE episodes SET open = 0, ended_at_ms = ?2, end_reason = ?3,
                    duration_ms = ?4
                  WHERE id = ?1",
            )?
            .execute(params![
                id,
                end.ended_at_ms,
                end.end_reason,
                int(end.duration_ms)
            ])?,
        )?,
        Command::AddSamples { id, samples } => {
            // `sample` (the JSON of schema version 1) is NOT NULL: ''.
            let mut stmt = c.prepare_cached(
                "INSERT INTO samples (episode_id, side, host, at_ms, sample, sample_pb)
                 VALUES (?1, ?2, ?3, ?4, '', ?5)",
            )?;
            let mut n = 0;
            for s in &samples {
                n += stmt.execute(params![
                    id,
                    s.side.as_str(),
                    s.host,
                    s.at_ms,
                    s.sample.as_bytes()
                ])?;
            }
            n
        }
        Command::AddHeld(rows) => {
            let mut stmt = c.prepare_cached(
                "INSERT INTO held_spans (minute_ms, a_host, b_host, end_reason, le_ms,
                                         count, episodes, total_ms, max_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (minute_ms, a_host, b_host, end_reason, le_ms) DO UPDATE SET
                    count = count + excluded.count,
                    episodes = episodes + excluded.episodes,
                    total_ms = total_ms + excluded.total_ms,
                    max_ms = max(max_ms, excluded.max_ms)",
            )?;
            let mut n = 0;
            for r in &rows {
                n += stmt.execute(params![
                    r.minute_ms,
                    r.a_host,
                    r.b_host,
                    r.end.id(),
                    int(r.le_ms),
                    int(r.count),
                    int(r.episodes),
                    int(r.total_ms),
                    int(r.max_ms),
                ])?;
            }
            n
        }
        _ => 0,
    };
    Ok(rows as u64)
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// An UPDATE that matched no row names an episode the store never had.
fn known(id: i64, rows: usize) -> Result<usize, StoreError> {
    if rows == 0 {
        Err(StoreError::UnknownEpisode { id })
    } else {
        Ok(rows)
    }
}
