//! One Kafka message as courier carries it from the log to a destination: everything the record held
//! (key, headers, timestamp, payload) as bytes, so no encoding decision is made before the destination's
//! format makes it.

use crate::range::{Offset, Partition};

/// A message read from one partition. Keys, header values and payloads are opaque bytes; destinations
/// decide their encoding. The topic is the route's, so it is not repeated per message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub partition: Partition,
    pub offset: Offset,
    /// Kafka's timestamp in milliseconds since the Unix epoch (create or log-append time), when the
    /// message carries one. End-to-end latency is measured from it.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    /// The record's headers in the order the producer wrote them. Kafka allows the same name more than
    /// once and a header without a value, so this is a list, not a map.
    pub headers: Vec<Header>,
    /// `None` for a tombstone (a delete marker on a compacted topic; its key names what was deleted).
    pub payload: Option<Vec<u8>>,
}

/// One Kafka record header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    /// `None` when the producer wrote a null value (not the same as an empty one).
    pub value: Option<Vec<u8>>,
}
