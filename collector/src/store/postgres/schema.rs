//! The PostgreSQL schema and its migrations.
//!
//! `schema_version` holds one row per migration applied. At open, every
//! node takes a transaction-scoped advisory lock ([`MIGRATION_LOCK`])
//! before it reads the version, so that nodes starting at once migrate one
//! after the other: the first applies what is missing, the others find
//! nothing left. All missing steps run in that one transaction (PostgreSQL
//! has transactional DDL), so a crash leaves the database at the version it
//! had. A database whose version is higher than [`MIGRATIONS`] is long was
//! migrated by a newer collector, and is refused rather than misread.
//!
//! Unlike the SQLite file, the database is shared: an episode's id is the
//! caller's (in fleet mode its identity, [`episode_id_of`]), never a
//! sequence's, and an episode is unique by its flow's direction-free key
//! and its start as well, so that two nodes that judged the same flow
//! store it once.
//!
//! [`episode_id_of`]: crate::store::episode_id_of

use tokio_postgres::Client;

use crate::store::StoreError;

/// The advisory lock key migrations run under: "tcpstall" in ASCII.
pub const MIGRATION_LOCK: i64 = 0x7463_7073_7461_6c6c;

/// The schema, one step per version. Append; never edit a released step.
pub const MIGRATIONS: &[&str] = &[
    // 1: hosts, episodes, samples, held-span counts: what SQLite's six
    // versions built, with the fleet's identity constraints.
    "
    CREATE TABLE hosts (
        host          text PRIMARY KEY,
        kernel        text NOT NULL,
        agent_version text NOT NULL,
        boot_id       text NOT NULL,
        first_seen_ms bigint NOT NULL,
        last_seen_ms  bigint NOT NULL,
        connected     boolean NOT NULL
    );
    CREATE TABLE episodes (
        id            bigint PRIMARY KEY,      -- the caller's; in fleet mode the identity's hash
        diagnosis     text NOT NULL,
        summary       text NOT NULL,
        evidence      jsonb NOT NULL,          -- name -> integer
        started_at_ms bigint NOT NULL,
        duration_ms   bigint NOT NULL,
        stuck_bytes   bigint NOT NULL,
        a_host        text NOT NULL,
        a_netns       text NOT NULL,
        a_local       text NOT NULL,           -- ip:port, A's own end
        a_remote      text NOT NULL,           -- ip:port, B's end
        flow_key      text NOT NULL,           -- 'ip:port <-> ip:port', the lower end first
        a_cookie      bigint NOT NULL,         -- u64 bits as i64
        b_host        text,
        peer_note     text,
        open          boolean NOT NULL,
        ended_at_ms   bigint,
        end_reason    text,
        community_id  text,
        via_host      text,                    -- whose conntrack joined B to A
        via_original  text,                    -- 'ip:port -> ip:port'
        via_reply     text,
        via_nat       text CHECK (via_nat IN ('snat', 'dnat', 'snat+dnat', 'none')),
        UNIQUE (flow_key, started_at_ms)
    );
    CREATE INDEX episodes_started ON episodes (started_at_ms, id);
    CREATE INDEX episodes_diagnosis ON episodes (diagnosis);
    CREATE INDEX episodes_ended ON episodes (open, ended_at_ms);
    CREATE INDEX episodes_a_host_started ON episodes (a_host, started_at_ms);
    CREATE INDEX episodes_b_host_started ON episodes (b_host, started_at_ms);
    CREATE INDEX episodes_community_id ON episodes (community_id);
    CREATE TABLE samples (
        id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        episode_id bigint NOT NULL REFERENCES episodes (id) ON DELETE CASCADE,
        side       text NOT NULL CHECK (side IN ('a', 'b')),
        host       text NOT NULL,
        at_ms      bigint NOT NULL,
        sample_pb  bytea NOT NULL,             -- tcpstall.v1.Sample, protobuf
        UNIQUE (episode_id, side, host, at_ms)
    );
    CREATE TABLE held_spans (
        minute_ms   bigint NOT NULL,
        a_host      text NOT NULL,
        b_host      text NOT NULL,
        end_reason  text NOT NULL,
        le_ms       bigint NOT NULL,
        count       bigint NOT NULL,
        episodes    bigint NOT NULL,
        total_ms    bigint NOT NULL,
        max_ms      bigint NOT NULL,
        PRIMARY KEY (minute_ms, a_host, b_host, end_reason, le_ms)
    );
    ",
    // 2: samples keyed by what makes one unique, without the foreign key:
    // the writer inserts only samples whose episode it finds (in the same
    // statement), and pruning deletes an episode's samples with it; the
    // key's check (a trigger per row) and the surrogate id's index were
    // work per row that nothing read.
    "
    ALTER TABLE samples DROP CONSTRAINT samples_episode_id_fkey;
    ALTER TABLE samples DROP COLUMN id;
    ",
    // 3: one diagnosis's recent episodes, newest first (the web page's
    // History, `episodes --diagnosis`): found in the order they are
    // listed, not all of that diagnosis read and sorted.
    "
    CREATE INDEX episodes_diagnosis_started ON episodes (diagnosis, started_at_ms, id);
    DROP INDEX episodes_diagnosis;
    ",
    // 4: the web page's chart counts a window's episodes by diagnosis with
    // an index-only scan.
    "
    CREATE INDEX episodes_started_diagnosis ON episodes (started_at_ms) INCLUDE (diagnosis);
    ",
    // 5: which evidence the verdict rested on and which it went without
    // (a kernel before 6.2 gives no b_rcv_wnd, ...): JSON text
    // {"rested_on": [names], "missing": [names]}; NULL on episodes stored
    // before.
    "
    ALTER TABLE episodes ADD COLUMN basis text;
    ",
];

/// The schema version this code writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the schema to [`SCHEMA_VERSION`] under the advisory lock, or
/// refuses a newer database. `shown` names the store in errors and logs.
pub(crate) async fn migrate(client: &mut Client, shown: &str) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    bigint PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let found: i64 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await?
        .try_get(0)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::PgTooNew {
            store: shown.to_string(),
            found,
            known: SCHEMA_VERSION,
        });
    }
    let done = usize::try_from(found).unwrap_or(0);
    for (i, step) in MIGRATIONS.iter().enumerate().skip(done) {
        let version = i64::try_from(i + 1).unwrap_or(i64::MAX);
        tx.batch_execute(step).await?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&version],
        )
        .await?;
        tracing::info!(store = shown, version, "store schema migrated");
    }
    tx.commit().await?;
    Ok(())
}

/// One more than the highest episode id stored.
pub(crate) async fn next_episode_id(client: &Client) -> Result<i64, StoreError> {
    let max: i64 = client
        .query_one("SELECT coalesce(max(id), 0) FROM episodes", &[])
        .await?
        .try_get(0)?;
    Ok(max.saturating_add(1))
}
