//! One Kafka message as courier carries it from the log to a destination.

use crate::range::{Offset, Partition};

/// A message read from one partition. Payloads are opaque bytes; destinations decide their encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub partition: Partition,
    pub offset: Offset,
    /// Kafka's timestamp in milliseconds since the Unix epoch (create or log-append time), when the
    /// message carries one. End-to-end latency is measured from it.
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}
