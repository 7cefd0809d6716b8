//! Messages whose samples stay in their encoding, each one the bytes of a
//! `v1::Sample`: the agent's `Batch` as the collector reads it, and the
//! `GetEpisodeResponse` the collector answers with.
//!
//! A message field and a `bytes` field share their wire form (tag, length,
//! payload), so these types read exactly what `v1` writes and write exactly
//! what `v1` reads. The collector keeps samples encoded (to unpack only
//! when an episode needs them) and stores them so; reading a batch this way
//! saves it decoding a sample only to encode it again (each is still
//! decoded once, to check it), and answering a GetEpisode this way sends
//! the stored bytes as they are, decoding none. Clients read the answer as
//! `v1` (tonic's generated client) and see a `v1::Sample` in each.
//!
//! Field numbers are `v1`'s; the tests fail when the two part.

use crate::v1;

/// `v1::AgentMessage`, batches' samples left encoded.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct AgentMessage {
    #[prost(oneof = "agent_message::Body", tags = "1, 2, 3, 4")]
    pub body: ::core::option::Option<agent_message::Body>,
}

pub mod agent_message {
    use crate::v1;

    #[derive(Clone, PartialEq, ::prost::Oneof)]
    pub enum Body {
        #[prost(message, tag = "1")]
        Hello(v1::Hello),
        #[prost(message, tag = "2")]
        Batch(super::Batch),
        #[prost(message, tag = "3")]
        Heartbeat(v1::Heartbeat),
        #[prost(message, tag = "4")]
        Addresses(v1::Addresses),
    }
}

/// `v1::Batch` with each sample as the bytes of a `v1::Sample`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct Batch {
    #[prost(uint64, tag = "1")]
    pub mono_us: u64,
    #[prost(uint32, tag = "2")]
    pub connections: u32,
    /// Read from a `Bytes` buffer, each is a slice of it, not a copy.
    #[prost(bytes = "bytes", repeated, tag = "3")]
    pub samples: ::prost::alloc::vec::Vec<::prost::bytes::Bytes>,
    #[prost(message, repeated, tag = "4")]
    pub closed: ::prost::alloc::vec::Vec<v1::Closed>,
    #[prost(uint64, tag = "5")]
    pub dropped_batches: u64,
    #[prost(uint64, tag = "6")]
    pub dropped_samples: u64,
    #[prost(message, repeated, tag = "7")]
    pub absent: ::prost::alloc::vec::Vec<v1::FlowTuple>,
    #[prost(message, repeated, tag = "8")]
    pub lookups: ::prost::alloc::vec::Vec<v1::Lookup>,
}

/// `v1::GetEpisodeResponse`, each sample as the bytes of a `v1::Sample`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct GetEpisodeResponse {
    #[prost(message, optional, tag = "1")]
    pub episode: ::core::option::Option<v1::Episode>,
    #[prost(message, repeated, tag = "2")]
    pub samples: ::prost::alloc::vec::Vec<EndSample>,
}

/// `v1::EndSample` with its sample as the bytes of a `v1::Sample`.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct EndSample {
    /// "a" (the stuck sender) or "b" (its peer).
    #[prost(string, tag = "1")]
    pub side: ::prost::alloc::string::String,
    #[prost(string, tag = "2")]
    pub host: ::prost::alloc::string::String,
    /// Collector's clock when stored, Unix milliseconds.
    #[prost(int64, tag = "3")]
    pub at_ms: i64,
    /// Written as they are: `Some` of empty bytes goes out as an empty
    /// `v1::Sample`, as `v1` would write it.
    #[prost(bytes = "bytes", optional, tag = "4")]
    pub sample: ::core::option::Option<::prost::bytes::Bytes>,
}

#[cfg(test)]
mod tests;
