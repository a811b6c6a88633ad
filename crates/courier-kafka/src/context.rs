//! What librdkafka tells courier on the side of its calls: global errors, its own log lines and
//! statistics, for every client courier makes (range readers' consumers, producers, admin clients).
//!
//! Owns: [`CourierContext`] and the classification of librdkafka's errors and log lines ([`classify`]).
//! rdkafka's default context logs every global error at ERROR; here:
//! - the end of a partition (a range read reached it) is TRACE;
//! - connectivity failures librdkafka recovers from by itself (transport failures, all brokers down,
//!   name resolution, timeouts) go to the cluster's [`OutageLog`]: one WARN per outage, summaries, one
//!   INFO at its end;
//! - errors an operator must act on (authentication, SSL, authorization, configuration, fatal) stay
//!   ERROR; anything else is WARN.
//!
//! librdkafka's own log lines go to tracing under the target `librdkafka`: ERROR and WARNING as such,
//! NOTICE as INFO, INFO as DEBUG, DEBUG (only with the `debug` property) as TRACE. Its connectivity lines
//! (facility `FAIL`, `REQTMOUT`, ...) repeat what the error events say, so they are DEBUG.

use std::sync::{Arc, Mutex};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientContext;

use crate::config::KafkaConfig;
use crate::error::is_undecodable;
use crate::outage::OutageLog;
use crate::reader::lock;
use crate::traffic::ClientTraffic;

/// The context of every librdkafka client courier makes.
pub(crate) struct CourierContext {
    outages: Arc<OutageLog>,
    /// Counts bytes received from statistics (range readers only: they ask for statistics).
    traffic: Option<ClientTraffic>,
    /// librdkafka's words for the last undecodable batch. rdkafka hands the consumer only the error
    /// code; the text (codec, batch offset, size) reaches the context, just before, on the same thread.
    undecodable: Mutex<Option<String>>,
    /// Who this client is to the brokers (`KafkaConfig::identity`), named when they refuse it.
    identity: String,
    /// librdkafka's words for the brokers refusing this client's credentials or certificates, kept
    /// for whoever waits on the client (`crate::refusal`) to fail at once instead of at its deadline.
    refused: Mutex<Option<String>>,
}

impl CourierContext {
    pub(crate) fn new(
        config: &KafkaConfig,
        outages: Arc<OutageLog>,
        traffic: Option<ClientTraffic>,
    ) -> Self {
        Self {
            outages,
            traffic,
            undecodable: Mutex::new(None),
            identity: config.identity(),
            refused: Mutex::new(None),
        }
    }

    /// librdkafka's reason, if the brokers refused this client's credentials or certificates.
    pub(crate) fn take_refusal(&self) -> Option<String> {
        lock(&self.refused).take()
    }

    /// librdkafka's description of the undecodable batch the consumer just reported, if it gave one.
    pub(crate) fn take_undecodable(&self) -> Option<String> {
        lock(&self.undecodable).take()
    }
}

/// The offset librdkafka's description of an undecodable batch names: the batch's base offset
/// ("Decompression (codec 0x1) of message at 5 of 96 bytes failed: ...", "MessageSet at offset 5 (96
/// bytes) failed CRC32C check ..."). rdkafka hands the consumer only the error code, so this is the only
/// way to tell which batch failed: what lets a read step over exactly that batch.
pub(crate) fn batch_offset(description: &str) -> Option<i64> {
    ["of message at ", "at offset "].iter().find_map(|marker| {
        let (_, rest) = description.split_once(marker)?;
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .map_or(rest, |end| &rest[..end]);
        digits.parse().ok()
    })
}

/// What an error from librdkafka means for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A read reached the end of its partition: expected, not an error.
    EndOfPartition,
    /// The brokers cannot be reached or do not answer; librdkafka reconnects and retries by itself.
    Connectivity,
    /// An operator must act: credentials, certificates, permissions, configuration.
    Actionable,
    /// A record batch cannot be decoded; the range read that met it fails with the reason.
    Undecodable,
    /// Anything else: librdkafka or the caller retries.
    Transient,
}

/// Classifies a librdkafka error code.
pub(crate) fn classify(code: Option<RDKafkaErrorCode>) -> Kind {
    use RDKafkaErrorCode as C;
    match code {
        Some(C::PartitionEOF) => Kind::EndOfPartition,
        Some(code) if is_undecodable(code) => Kind::Undecodable,
        Some(
            C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::Resolve
            | C::OperationTimedOut
            | C::RequestTimedOut
            | C::NetworkException
            | C::BrokerNotAvailable,
        ) => Kind::Connectivity,
        Some(
            C::Authentication
            | C::SaslAuthenticationFailed
            | C::UnsupportedSASLMechanism
            | C::IllegalSASLState
            | C::SSL
            | C::ClusterAuthorizationFailed
            | C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::InvalidArgument
            | C::InvalidConfig
            | C::Fatal
            | C::CriticalSystemResource
            | C::UnsupportedVersion
            | C::UnknownProtocol,
        ) => Kind::Actionable,
        _ => Kind::Transient,
    }
}

/// The brokers refused who courier says it is (SASL) or could not be trusted (TLS): no retry helps.
pub(crate) fn is_refusal(code: Option<RDKafkaErrorCode>) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        Some(
            C::Authentication
                | C::SaslAuthenticationFailed
                | C::UnsupportedSASLMechanism
                | C::IllegalSASLState
                | C::SSL
        )
    )
}

/// librdkafka's log facilities for connection failures and timeouts, which it also reports as errors.
fn is_connectivity_facility(facility: &str) -> bool {
    matches!(
        facility,
        "FAIL" | "REQTMOUT" | "CONNECT" | "BROKERFAIL" | "RESOLVE"
    )
}

/// The broker a librdkafka reason starts with (`host:port/id: ...`), if any.
fn broker_of(reason: &str) -> Option<&str> {
    let (broker, _) = reason.split_once(": ")?;
    (!broker.contains(' ') && broker.contains(':')).then_some(broker)
}

impl ClientContext for CourierContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        use RDKafkaLogLevel as L;
        if is_connectivity_facility(facility) {
            tracing::debug!(target: "librdkafka", facility, "{message}");
            return;
        }
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(target: "librdkafka", facility, "{message}")
            }
            L::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
            L::Notice => tracing::info!(target: "librdkafka", facility, "{message}"),
            L::Info => tracing::debug!(target: "librdkafka", facility, "{message}"),
            L::Debug => tracing::trace!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match classify(error.rdkafka_error_code()) {
            Kind::EndOfPartition => tracing::trace!(%error, "Reached the end of a partition."),
            Kind::Connectivity => self.outages.failure(broker_of(reason), reason),
            Kind::Undecodable => {
                // The read that polled it fails with `ReadError::Undecodable`, which says it all.
                tracing::debug!(%error, reason, "librdkafka could not decode a record batch.");
                *lock(&self.undecodable) = Some(reason.to_owned());
            }
            Kind::Actionable => {
                if is_refusal(error.rdkafka_error_code()) {
                    *lock(&self.refused) = Some(reason.to_owned());
                }
                tracing::error!(
                    %error,
                    reason,
                    identity = %self.identity,
                    "Kafka refused courier's client ({}): fix the credentials, certificates, ACLs or \
                     the settings of the [kafka] section; reads fail until then. Runbook: \
                     docs/runbooks/kafka-unavailable.md",
                    self.identity
                )
            }
            Kind::Transient => tracing::warn!(
                %error,
                reason,
                "librdkafka reported an error; reads retry, and a range that cannot be read fails \
                 with its reason."
            ),
        }
    }

    fn stats_raw(&self, statistics: &[u8]) {
        if let Some(traffic) = &self.traffic {
            traffic.on_statistics(statistics);
        }
    }
}

impl ConsumerContext for CourierContext {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recoverable_failures_are_not_errors_and_real_problems_are() {
        use RDKafkaErrorCode as C;
        for code in [C::BrokerTransportFailure, C::AllBrokersDown, C::Resolve] {
            assert_eq!(classify(Some(code)), Kind::Connectivity, "{code:?}");
        }
        for code in [
            C::Authentication,
            C::SSL,
            C::TopicAuthorizationFailed,
            C::Fatal,
        ] {
            assert_eq!(classify(Some(code)), Kind::Actionable, "{code:?}");
        }
        assert_eq!(classify(Some(C::PartitionEOF)), Kind::EndOfPartition);
        assert_eq!(classify(Some(C::NotImplemented)), Kind::Undecodable);
        assert_eq!(classify(Some(C::LeaderNotAvailable)), Kind::Transient);
        assert_eq!(classify(None), Kind::Transient);
    }

    #[test]
    fn finds_the_batch_librdkafka_could_not_decode() {
        assert_eq!(
            batch_offset(
                "Decompression (codec 0x1) of message at 5 of 96 bytes failed: Local: Invalid \
                 compressed data"
            ),
            Some(5)
        );
        assert_eq!(
            batch_offset(
                "MessageSet at offset 1042 (96 bytes) failed CRC32C check (original 0x1 != \
                 calculated 0x2)"
            ),
            Some(1042)
        );
        assert_eq!(batch_offset("Local: Invalid compressed data"), None);
        assert_eq!(batch_offset("of message at -1 of 5 bytes"), None);
    }

    #[test]
    fn names_the_broker_librdkafka_blames() {
        assert_eq!(
            broker_of(
                "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused"
            ),
            Some("127.0.0.1:1/bootstrap")
        );
        assert_eq!(broker_of("1/1 brokers are down"), None);
        assert_eq!(broker_of("Local: Broker transport failure"), None);
    }
}
