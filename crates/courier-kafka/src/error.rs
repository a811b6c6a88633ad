//! What can go wrong talking to Kafka, worded for the operator who reads it at 2 a.m., and what the
//! caller should do next ([`ReadError::is_retryable`]).
//!
//! Owns: [`ReadError`] (reading a range) and [`Error`] (metadata, admin and producer calls).

use std::time::Duration;

use courier_core::{Offset, OffsetRange, Partition};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Why a range could not be read. Every variant names the topic and partition.
///
/// The variant decides what the worker does with the range: [`ReadError::is_retryable`] errors put it
/// back to `pending` with backoff; the others fail it (listed, alerted on, replayable), with
/// [`ReadError::reason`] as its short reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// Offsets `deleted` of the range were deleted by retention (or `DeleteRecords`) before they were
    /// read: from [`RangeReader::read`](crate::RangeReader::read), which reads all or nothing. Delivery
    /// does not fail on it: it reads with
    /// [`RangeReader::read_surviving`](crate::RangeReader::read_surviving), delivers what Kafka still
    /// holds and records the deleted offsets as a loss.
    #[error(
        "{topic}/{partition}: offsets {deleted} were deleted by Kafka (retention or DeleteRecords) before \
         they were read; the log of the partition starts after them now. No replay can bring them back \
         from Kafka; see docs/runbooks/retention.md."
    )]
    Retention {
        topic: String,
        partition: Partition,
        /// The offsets found deleted (the first run, when there were several).
        deleted: OffsetRange,
    },
    /// The range reaches past what the partition holds (or, under `read_committed`, past the last
    /// stable offset: an open transaction). Retry later: the messages may not be written yet.
    #[error(
        "{topic}/{partition}: range {range} reaches past the readable end of the partition \
         ({readable_end}): those offsets are not written yet, or sit behind an open transaction. \
         Retry later. If it persists, the range was planned past Kafka's high watermark (the topic was \
         recreated, or an unclean leader election truncated it)."
    )]
    NotYetWritten {
        topic: String,
        partition: Partition,
        range: OffsetRange,
        readable_end: Offset,
    },
    /// The topic does not exist (never created, deleted, or a typo in the route).
    #[error(
        "topic {topic:?} does not exist on the cluster: create it, or fix the route's topic name \
         (auto-creation is off on purpose)."
    )]
    UnknownTopic { topic: String },
    /// The topic exists but has no such partition.
    #[error(
        "{topic}/{partition}: the topic has only {partition_count} partition(s): the range names a \
         partition that does not exist. Was the topic recreated with fewer partitions?"
    )]
    UnknownPartition {
        topic: String,
        partition: Partition,
        partition_count: i32,
    },
    /// Offsets of the range lie in a record batch that cannot be decoded: compressed with a codec this
    /// build lacks, or corrupt. Reading it again fails the same way, so it is not retryable. From
    /// [`RangeReader::read`](crate::RangeReader::read), which reads all or nothing; delivery reads with
    /// [`RangeReader::read_surviving`](crate::RangeReader::read_surviving), which steps over the batch and
    /// names its offsets ([`RangeContents::undecodable`](crate::RangeContents::undecodable)).
    #[error(
        "{topic}/{partition}: offsets {offsets} of range {range} lie in a record batch that cannot be \
         decoded ({cause}); reading it again fails the same way. Delivery quarantines those offsets \
         (reason `undecodable`) and delivers the rest of the range; a route with on_poison = \
         \"fail-range\" fails the range at offset {start} instead, once the messages before it went \
         through. 'Not implemented' means the batch is compressed with a codec this build of courier \
         lacks (it reads none, gzip, snappy, lz4 and zstd): upgrade courier, then replay (`courier \
         replay --quarantined`, or the failed range). A decompression or CRC failure means the batch is \
         corrupt on the broker: inspect it with kafka-dump-log.sh; a replay only helps once Kafka serves \
         it differently; see docs/runbooks/failed-ranges.md.",
        start = offsets.start()
    )]
    Undecodable {
        topic: String,
        partition: Partition,
        range: OffsetRange,
        /// The offsets of the range the undecodable batch holds (the first such batch, when several).
        offsets: OffsetRange,
        /// librdkafka's words (codec, batch offset and size), else the error code.
        cause: String,
    },
    /// The read did not finish in time: the broker is down, slow or unreachable. Retryable.
    #[error(
        "{topic}/{partition}: reading {range} did not finish within {waited:?} ({received} message(s) \
         received{}). The broker may be down, overloaded or unreachable; the range will be retried.",
        last_error.as_deref().map(|e| format!("; last error from librdkafka: {e}")).unwrap_or_default()
    )]
    Timeout {
        topic: String,
        partition: Partition,
        range: OffsetRange,
        waited: Duration,
        received: usize,
        last_error: Option<String>,
    },
    /// Kafka answered with an error the reader does not handle by itself. Retryable.
    #[error("{topic}/{partition}: {operation} failed: {source}. The range will be retried.")]
    Kafka {
        topic: String,
        partition: Partition,
        operation: &'static str,
        #[source]
        source: KafkaError,
    },
    /// A consumer could not be created (invalid `extra` property, most likely). Not retryable.
    #[error(transparent)]
    Client(#[from] Error),
}

impl ReadError {
    /// Whether reading the same range again later can succeed.
    ///
    /// - Retryable: [`NotYetWritten`](Self::NotYetWritten), [`Timeout`](Self::Timeout),
    ///   [`Kafka`](Self::Kafka), and [`Client`](Self::Client) errors that are themselves transient.
    /// - Not retryable: [`Retention`](Self::Retention) (the data is gone),
    ///   [`UnknownTopic`](Self::UnknownTopic) and [`UnknownPartition`](Self::UnknownPartition) (a route
    ///   or topic an operator must fix; a replay after the fix reads the range again),
    ///   [`Undecodable`](Self::Undecodable) (the same bytes fail the same way).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Retention { .. }
            | Self::UnknownTopic { .. }
            | Self::UnknownPartition { .. }
            | Self::Undecodable { .. } => false,
            Self::NotYetWritten { .. } | Self::Timeout { .. } | Self::Kafka { .. } => true,
            Self::Client(error) => error.is_retryable(),
        }
    }

    /// A short, stable reason for the range's `last_error` and for metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Retention { .. } => "retention",
            Self::NotYetWritten { .. } => "not_yet_written",
            Self::UnknownTopic { .. } => "unknown_topic",
            Self::UnknownPartition { .. } => "unknown_partition",
            Self::Undecodable { .. } => "undecodable",
            Self::Timeout { .. } => "kafka_timeout",
            Self::Kafka { .. } => "kafka_error",
            Self::Client(_) => "kafka_client",
        }
    }
}

/// Errors of metadata, watermark, admin and producer calls.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// librdkafka rejected the configuration. Not retryable: fix the configuration.
    #[error(
        "the Kafka client configuration was rejected: {0}. Check `brokers` and the `extra` librdkafka \
         properties of the [kafka] section."
    )]
    Config(#[source] KafkaError),
    /// The brokers refused courier's SASL credentials or its TLS handshake. Not retryable: fix the
    /// credentials or certificates.
    #[error(
        "the Kafka brokers at {brokers} refused courier ({identity}): {reason}. Check the user name and \
         the password in that environment variable, that the brokers have credentials for this user with \
         this mechanism (SCRAM credentials are per mechanism), and with TLS that kafka.ssl_ca_location \
         names the CA that signed the brokers' certificates. Runbook: docs/runbooks/kafka-unavailable.md"
    )]
    Refused {
        brokers: String,
        /// [`KafkaConfig::identity`](crate::KafkaConfig::identity): mechanism, user, password variable.
        identity: String,
        reason: String,
    },
    /// The topic does not exist.
    #[error(
        "topic {topic:?} does not exist on the cluster: create it (scripts/kafka.sh create-topic for the \
         local broker), or fix the topic name (auto-creation is off on purpose)."
    )]
    UnknownTopic { topic: String },
    /// The cluster did not answer in time. Retryable.
    #[error(
        "{operation} did not finish within {after:?}: the brokers at {brokers} may be down, overloaded \
         or unreachable. It is safe to retry; `scripts/kafka.sh status` checks the local broker."
    )]
    Timeout {
        operation: String,
        brokers: String,
        after: Duration,
    },
    /// Kafka answered with an error.
    #[error("{operation} failed: {source}")]
    Kafka {
        operation: String,
        #[source]
        source: KafkaError,
    },
    /// A produced message was not acknowledged.
    #[error(
        "a message to {topic} was not acknowledged: {source}. Nothing after it in this batch is known \
         to be written; sending the batch again may duplicate earlier messages."
    )]
    Delivery {
        topic: String,
        #[source]
        source: KafkaError,
    },
    /// The blocking task running a librdkafka call panicked or was cancelled (runtime shutting down).
    #[error("a blocking Kafka task did not complete: {0}")]
    Task(String),
}

impl Error {
    /// Whether the same call can succeed later without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Config(_) | Self::Refused { .. } | Self::UnknownTopic { .. } | Self::Task(_) => {
                false
            }
            Self::Timeout { .. } | Self::Delivery { .. } => true,
            Self::Kafka { source, .. } => !matches!(
                source.rdkafka_error_code(),
                Some(
                    RDKafkaErrorCode::TopicAuthorizationFailed
                        | RDKafkaErrorCode::ClusterAuthorizationFailed
                        | RDKafkaErrorCode::InvalidConfig
                        | RDKafkaErrorCode::InvalidPartitions
                        | RDKafkaErrorCode::InvalidReplicationFactor
                        | RDKafkaErrorCode::InvalidTopic
                )
            ),
        }
    }

    /// Wraps a librdkafka error, recognising timeouts.
    pub(crate) fn kafka(
        operation: impl Into<String>,
        brokers: &str,
        after: Duration,
        source: KafkaError,
    ) -> Self {
        if is_timeout(&source) {
            Self::Timeout {
                operation: operation.into(),
                brokers: brokers.to_owned(),
                after,
            }
        } else {
            Self::Kafka {
                operation: operation.into(),
                source,
            }
        }
    }
}

/// librdkafka's ways of saying "no answer in time".
pub(crate) fn is_timeout(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
        )
    )
}

/// librdkafka's ways of saying "this record batch cannot be decoded": a codec it was built without
/// (`NotImplemented`, or the broker refusing to convert for it), a batch that fails to decompress or its
/// CRC check. The same bytes fail the same way on every read. Seen against the real broker (librdkafka
/// 2.12, courier-kafka's test `steps_over_a_corrupt_batch_...`): a gzip batch whose compressed bytes are
/// corrupt on disk is `BadCompression` ("Decompression (codec 0x1) of message at 5 of 96 bytes failed:
/// Local: Invalid compressed data"), reported at the batch's base offset on every fetch that returns it.
pub(crate) fn is_undecodable(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::NotImplemented
            | RDKafkaErrorCode::BadCompression
            | RDKafkaErrorCode::BadMessage
            | RDKafkaErrorCode::UnsupportedCompressionType
    )
}

/// librdkafka's ways of saying "no such topic or partition".
pub(crate) fn is_unknown_topic(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnknownPartition
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undecodable_records_are_permanent_and_transient_errors_retry() {
        use RDKafkaErrorCode as C;
        for code in [
            C::NotImplemented,
            C::BadCompression,
            C::BadMessage,
            C::UnsupportedCompressionType,
        ] {
            assert!(is_undecodable(code), "{code:?}");
        }
        for code in [
            C::BrokerTransportFailure,
            C::AllBrokersDown,
            C::NotLeaderForPartition,
            C::LeaderNotAvailable,
            C::RequestTimedOut,
            C::OffsetOutOfRange,
        ] {
            assert!(!is_undecodable(code), "{code:?}");
        }

        let range = OffsetRange::new(100, 200).expect("range");
        let error = ReadError::Undecodable {
            topic: "orders".into(),
            partition: 2,
            range,
            offsets: OffsetRange::new(150, 160).expect("span"),
            cause: "Decompression (codec 0x4) of message at 150 of 900 bytes failed: Local: Not \
                    implemented"
                .into(),
        };
        assert!(!error.is_retryable());
        assert_eq!(error.reason(), "undecodable");
        let text = error.to_string();
        for needle in [
            "orders/2",
            "offsets [150, 160)",
            "codec 0x4",
            "failed-ranges.md",
        ] {
            assert!(text.contains(needle), "{needle:?} in {text}");
        }

        let transient = ReadError::Kafka {
            topic: "orders".into(),
            partition: 2,
            operation: "fetching",
            source: KafkaError::MessageConsumption(C::NotLeaderForPartition),
        };
        assert!(transient.is_retryable());
    }
}
