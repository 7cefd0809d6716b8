//! The gateway: the agents' side of the collector.
//!
//! It owns the agents' gRPC streams ([`ingest`], reading frames with
//! [`frames`]): each must open with a Hello, and every message is checked
//! at the edge (`tcpstall_proto::convert`) before anything else sees it.
//! Its task ([`hub`]) keeps the registry of hosts ([`registry`]: a number
//! per host for the collector's life, and which machine's session holds
//! each name now: one machine per name) and the sessions of those streaming
//! now, and hands the matcher's watch requests to the stream of the agent
//! that holds the host. A stream sends its batches straight to the matcher,
//! with its host's number and when its agent took the poll on the
//! collector's clock ([`clock`]).

pub mod clock;
pub mod frames;
pub mod hub;
pub mod ingest;
pub mod registry;

#[cfg(feature = "internals")]
pub use clock::AgentClock;
#[cfg(feature = "internals")]
pub use hub::Pending;
pub use hub::{run, AgentNow, Elsewhere, Gateway, GatewayStats, Input};
pub use ingest::IngestService;
