//! Dead letters: each quarantined message of a route with a `dead_letter_topic`, written there before its
//! range is checkpointed, with headers that say where it came from and why it was refused.
//!
//! The header names are Kafka Connect's (`errors.deadletterqueue.context.headers.enable`), so tools
//! built for a Connect dead-letter queue read these too; courier's own `courier.*` headers add the route,
//! destination and HTTP status. Written before the checkpoint: if the checkpoint is then fenced, the
//! range is delivered again and its dead letters written again (at least once, like deliveries).

use courier_core::{Header, Partition};
use courier_kafka::{OutgoingRecord, Producer};

use crate::isolate::Refused;

/// The dead letter of one refused message of `topic`/`partition`.
pub(crate) fn record(
    route: &str,
    destination: &str,
    topic: &str,
    partition: Partition,
    refused: &Refused,
) -> OutgoingRecord {
    let text = |name: &str, value: String| Header {
        name: name.to_owned(),
        value: Some(value.into_bytes()),
    };
    // The original headers first, as Kafka Connect keeps them, then where it came from and why.
    let mut headers = refused.message.headers.clone();
    headers.extend([
        text("__connect.errors.topic", topic.to_owned()),
        text("__connect.errors.partition", partition.to_string()),
        text(
            "__connect.errors.offset",
            refused.message.offset.to_string(),
        ),
        text("__connect.errors.connector.name", route.to_owned()),
        text("__connect.errors.stage", "TASK_PUT".to_owned()),
        text(
            "__connect.errors.exception.class.name",
            "courier.DestinationRefused".to_owned(),
        ),
        text("__connect.errors.exception.message", refused.reason.clone()),
        text("courier.route", route.to_owned()),
        text("courier.destination", destination.to_owned()),
    ]);
    if let Some(status) = refused.status {
        headers.push(text("courier.status", status.to_string()));
    }
    OutgoingRecord {
        partition: None,
        key: refused.message.key.clone(),
        payload: refused.message.payload.clone(),
        headers,
    }
}

/// Writes the dead letters; the error says what to check.
pub(crate) async fn write(
    producer: &Producer,
    dead_letter_topic: &str,
    records: &[OutgoingRecord],
) -> Result<(), String> {
    producer
        .send_records(dead_letter_topic, records.iter().cloned())
        .await
        .map(|_| ())
        .map_err(|error| {
            format!(
                "could not write {} quarantined message(s) to dead-letter topic {dead_letter_topic:?} ({error}): \
                 does the topic exist and may courier write to it? The range is retried",
                records.len()
            )
        })
}

#[cfg(test)]
mod tests {
    use courier_core::Message;

    use super::*;

    #[test]
    fn a_dead_letter_names_its_origin_and_the_answer_with_connect_headers() {
        let refused = Refused {
            message: Message {
                partition: 3,
                offset: 73,
                timestamp_ms: None,
                key: Some(b"k".to_vec()),
                headers: vec![Header {
                    name: "trace".into(),
                    value: Some(b"t-1".to_vec()),
                }],
                payload: Some(b"{\"bad\":true}".to_vec()),
            },
            reason: "HTTP 400 Bad Request: missing field".into(),
            status: Some(400),
            undecodable: false,
        };
        let record = record("orders", "billing", "orders-topic", 3, &refused);
        let header = |name: &str| {
            record
                .headers
                .iter()
                .find(|header| header.name == name)
                .and_then(|header| header.value.as_deref())
                .map(|value| String::from_utf8_lossy(value).into_owned())
        };
        assert_eq!(
            header("__connect.errors.topic").as_deref(),
            Some("orders-topic")
        );
        assert_eq!(header("__connect.errors.partition").as_deref(), Some("3"));
        assert_eq!(header("__connect.errors.offset").as_deref(), Some("73"));
        assert_eq!(
            header("__connect.errors.exception.message").as_deref(),
            Some("HTTP 400 Bad Request: missing field")
        );
        assert_eq!(header("courier.route").as_deref(), Some("orders"));
        assert_eq!(header("courier.status").as_deref(), Some("400"));
        assert_eq!(
            header("trace").as_deref(),
            Some("t-1"),
            "the original headers are kept"
        );
        assert_eq!(record.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(record.payload, refused.message.payload);
    }
}
