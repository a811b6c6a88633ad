//! courier's domain model, with no I/O.
//!
//! Everything a worker, the store and the tests must agree on lives here, as plain types and pure
//! functions, so it can be property-tested without a database or a broker.
//!
//! # Layout
//! - [`range`]: offsets, partitions, the half-open [`OffsetRange`], range states and kinds.
//! - [`lease`]: the [`Lease`] a worker holds (its fencing [`Epoch`]) and what a checkpoint can answer.
//! - [`local`]: where the local development PostgreSQL and Kafka are, and `DATABASE_URL` /
//!   `KAFKA_BROKERS` over them, for tests, chaos runs, the demo and the benches.
//! - [`message`]: one Kafka message (key, headers, timestamp, payload) as it travels to a destination.
//! - [`plan`]: carving `[frontier, high_watermark)` into ranges.
//! - [`retry`]: what a delivery outcome means (success, retry later, give up) and the backoff policy.

// No I/O and no FFI here: the domain must stay safe to reason about.
#![forbid(unsafe_code)]

pub mod lease;
pub mod local;
pub mod message;
pub mod plan;
pub mod range;
pub mod retry;

pub use lease::{CheckpointOutcome, Epoch, Lease};
pub use message::{Header, Message};
pub use plan::carve;
pub use range::{
    Offset, OffsetRange, Ordering, Partition, RangeError, RangeId, RangeKind, RangeState,
};
pub use retry::{Backoff, Disposition};
