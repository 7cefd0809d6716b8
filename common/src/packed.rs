//! A sample kept in memory, or in a store, in its wire encoding.
//!
//! The collector holds the latest sample of every suspect and of every
//! watched peer, and the first sample of every suspect's stall, for the
//! moment one of them becomes an episode. Decoded, an
//! [`EndSample`](crate::EndSample) is about 370 bytes plus its namespace's
//! name; encoded, about 150. Most suspects drain without ever being read
//! back, so they are kept encoded and decoded only when an episode, a
//! re-diagnosis or a query needs them. The encoding is the wire's (a
//! `tcpstall.v1.Sample` message): `tcpstall_proto::convert::{pack, unpack}`
//! make and read it, so that the bytes stored are the bytes a query
//! answers with.

/// An end sample, protobuf-encoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packed(Box<[u8]>);

impl Packed {
    /// Bytes that hold an encoded sample: as they came over the wire or
    /// out of a store, already checked by the caller. A slice is copied
    /// into an allocation of its own, so that what is kept does not hold
    /// the buffer it came in.
    pub fn from_bytes(bytes: impl Into<Box<[u8]>>) -> Packed {
        Packed(bytes.into())
    }

    /// The encoding: a `tcpstall.v1.Sample` message. What the store
    /// writes to `samples.sample_pb`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The encoding, given up: what a query sends as it is, without a copy.
    pub fn into_bytes(self) -> Box<[u8]> {
        self.0
    }

    /// Bytes held on the heap.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
