//! The only crate that sees rdkafka: read exactly `[start, end)` of a partition, the watermarks the
//! planner carves ranges from, and a producer and topic admin for the demo, probes and tests.
//!
//! # Layout
//! - `config`: [`KafkaConfig`]: its TLS and SASL settings, its validation, and the librdkafka
//!   properties of each client, tuned for range reading (each one commented with why).
//! - `reader`: [`RangeReader`], a pool of consumers that read exact ranges by assign + seek, never
//!   committing (the store owns progress); [`PartitionWatermarks`] for the planner.
//! - `producer`: [`Producer`], batches acknowledged by all in-sync replicas ([`OutgoingRecord`]s
//!   carry headers and tombstones).
//! - `admin`: [`create_topic`] (idempotent, waits for leaders) and [`delete_records_before`].
//! - `error`: [`ReadError`] (its variant decides retry or fail) and [`Error`].
//! - `context`: what librdkafka reports beside its calls (errors, log lines, statistics), classified
//!   and routed to tracing.
//! - `refusal`: SASL credentials and TLS checked when a client is made, failing at once when the
//!   brokers refuse them ([`Error::Refused`]).
//! - `outage`: broker outages logged once per cluster (a WARN, summaries, an INFO at the end).
//! - `traffic`: bytes received from the brokers, from librdkafka's statistics ([`RECEIVED_BYTES`],
//!   [`RangeReader::bytes_received`]).
//!
//! Every librdkafka call that blocks runs on tokio's blocking pool and is bounded by
//! [`KafkaConfig::read_timeout`]: a stuck broker yields a retryable error, never a hang.

// librdkafka's FFI stays inside the rdkafka crate; nothing here needs `unsafe`.
#![forbid(unsafe_code)]

mod admin;
mod config;
mod context;
mod error;
mod outage;
mod producer;
mod reader;
mod refusal;
mod traffic;

pub use admin::{add_partitions, create_topic, create_topic_with_config, delete_records_before};
pub use config::{KafkaConfig, SaslMechanism, SecurityProtocol};
pub use error::{Error, ReadError};
pub use producer::{Delivered, OutgoingRecord, Producer, Record};
pub use reader::{
    PartitionWatermarks, RangeContents, RangeReader, Undecodable, PARK_AFTER, UNDECODABLE_PROBES,
};
pub use refusal::check_connection;
pub use traffic::RECEIVED_BYTES;
