//! The records the store keeps and gives back: domain types only, no
//! proto types. Samples are kept whole, in the
//! [`Packed`](tcpstall_common::Packed) encoding the collector already holds
//! them in. What a query answers with ([`EpisodeRow`], [`StoredSample`],
//! [`HeldRow`]) and asks for ([`EpisodeFilter`], [`HeldFilter`]) crosses
//! the wire, so it lives in `tcpstall_common::record`, re-exported here.

use std::collections::BTreeMap;

use tcpstall_common::record::JoinedVia;
use tcpstall_common::FlowTuple;

pub use tcpstall_common::record::{
    EpisodeCount, EpisodeFilter, EpisodeRow, HeldFilter, HeldRow, StoredSample, VerdictBasis,
};

/// An agent said hello (or is still there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRecord {
    pub host: String,
    pub kernel: String,
    pub agent_version: String,
    pub boot_id: String,
    pub at_ms: i64,
}

/// A host as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRow {
    pub host: String,
    pub kernel: String,
    pub agent_version: String,
    pub boot_id: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub connected: bool,
}

/// An episode that has just opened. The caller allocates `id` (starting at
/// the one [`SqliteStore::open`](super::SqliteStore::open) returned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEpisode {
    pub id: i64,
    /// A [`Diagnosis`](tcpstall_common::Diagnosis) id.
    pub diagnosis: String,
    pub summary: String,
    pub evidence: BTreeMap<String, i64>,
    pub basis: VerdictBasis,
    pub started_at_ms: i64,
    pub duration_ms: u64,
    pub stuck_bytes: u32,
    pub a_host: String,
    pub a_netns: String,
    pub a_flow: FlowTuple,
    pub a_cookie: u64,
    pub b_host: Option<String>,
    pub peer_note: Option<String>,
    /// The translation that joined B to A, when one did.
    pub via: Option<JoinedVia>,
}

/// A new verdict or duration for an open episode; every field replaces the
/// stored one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpisodeUpdate {
    pub id: i64,
    pub diagnosis: String,
    pub summary: String,
    pub evidence: BTreeMap<String, i64>,
    pub basis: VerdictBasis,
    pub b_host: Option<String>,
    pub peer_note: Option<String>,
    /// Replaces the stored one, as `b_host` does: `None` clears it.
    pub via: Option<JoinedVia>,
    pub duration_ms: u64,
    pub stuck_bytes: u32,
}

/// How an episode ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpisodeEnd {
    pub ended_at_ms: i64,
    /// An [`EndReason`](tcpstall_common::EndReason) id.
    pub end_reason: String,
    pub duration_ms: u64,
}
