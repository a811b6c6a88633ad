//! What one request carries: the [`Batch`] handed to the deliverer, the ids derived from it (the
//! per-message id and the batch's idempotency key), and [`batches`], which splits a range's messages
//! into requests within the destination's limits.

use courier_core::{Message, Offset, Partition};

/// One request's worth of one range: the messages of `[first_offset, end_offset)` of a partition.
///
/// The bounds, not the messages, name the batch: compaction and transaction markers leave gaps, so
/// `messages` may hold fewer than `end_offset - first_offset` entries (even none), and the
/// idempotency key stays the same whatever the log held when it was read.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub route: &'a str,
    /// The route's source topic, written into every envelope.
    pub topic: &'a str,
    pub partition: Partition,
    /// The first offset this batch covers.
    pub first_offset: Offset,
    /// The offset after the last one this batch covers (exclusive).
    pub end_offset: Offset,
    /// The operator's replay this delivery belongs to (`Lease::replay_id`), sent as
    /// `X-Courier-Replay`; `None` for a first delivery and its retries.
    pub replay_id: Option<i64>,
    pub messages: &'a [Message],
}

impl Batch<'_> {
    /// `route/partition/start-end`: the same on every retry, worker and replay that has the same
    /// bounds, so a destination can drop a batch it has already applied. Bounds are not stable across
    /// everything (a window replay carves its own ranges, a retry after compaction may split
    /// differently): destinations that must never apply a message twice dedupe on [`message_id`],
    /// which is. The one place the key is built.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}/{}", self.route, self.partition, self.offsets())
    }

    /// `start-end`, the value of the `X-Courier-Offsets` header.
    pub fn offsets(&self) -> String {
        format!("{}-{}", self.first_offset, self.end_offset)
    }
}

/// `route/partition/offset`: names one message for good, whatever batch, attempt, worker or replay
/// carries it. The envelope's `id`, and the `Idempotency-Key` in `format = "per-message"`.
pub fn message_id(route: &str, partition: Partition, offset: Offset) -> String {
    format!("{route}/{partition}/{offset}")
}

/// An envelope's bytes besides its key, headers and payload: field names, punctuation, numbers, and the
/// id and topic, counting route and topic names of up to 64 bytes each.
pub(crate) const ENVELOPE_BYTES: usize = 320;
/// A header's bytes besides its name and value.
const HEADER_BYTES: usize = 48;

/// The size a message counts for against `max_batch_bytes`: an estimate of its envelope in the body,
/// with keys, header values and payloads that are not UTF-8 counted at their base64 length. JSON
/// escapes inside text are not counted (a few bytes for quotes and control characters).
pub fn message_size(message: &Message) -> usize {
    let value = |bytes: &[u8]| match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(_) => bytes.len().div_ceil(3) * 4,
    };
    let headers: usize = message
        .headers
        .iter()
        .map(|h| HEADER_BYTES + h.name.len() + h.value.as_deref().map_or(0, value))
        .sum();
    ENVELOPE_BYTES
        + headers
        + message.key.as_deref().map_or(0, value)
        + message.payload.as_deref().map_or(0, value)
}

/// Splits `messages` into consecutive, non-empty slices of at most `max_messages` messages and at most
/// `max_bytes` bytes (by [`message_size`]). A single message larger than `max_bytes` goes alone. Each
/// slice is as long as the limits allow (greedy). A `max_messages` of 0 is taken as 1.
pub fn batches(
    messages: &[Message],
    max_messages: usize,
    max_bytes: usize,
) -> impl Iterator<Item = &[Message]> {
    let max_messages = max_messages.max(1);
    let mut rest = messages;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0usize;
        let mut len = 0usize;
        for message in rest.iter().take(max_messages) {
            let size = message_size(message);
            if len > 0 && bytes.saturating_add(size) > max_bytes {
                break;
            }
            bytes = bytes.saturating_add(size);
            len += 1;
        }
        let (head, tail) = rest.split_at(len);
        rest = tail;
        Some(head)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message(offset: Offset, len: usize) -> Message {
        Message {
            partition: 0,
            offset,
            timestamp_ms: None,
            key: None,
            headers: Vec::new(),
            payload: Some(vec![b'x'; len]),
        }
    }

    #[test]
    fn an_oversized_message_goes_alone() {
        let messages = [message(0, 10), message(1, 1000), message(2, 10)];
        let sizes: Vec<usize> = batches(&messages, 10, 1000).map(<[Message]>::len).collect();
        assert_eq!(sizes, [1, 1, 1]);
    }

    #[test]
    fn the_size_estimate_covers_the_envelope_with_binary_counted_as_base64() {
        let mut binary = message(7, 0);
        binary.payload = Some(vec![0xff; 3000]);
        binary.key = Some(vec![0xfe; 30]);
        binary.headers = vec![courier_core::Header {
            name: "trace-id".into(),
            value: Some(vec![0x80; 60]),
        }];
        let mut json = message(8, 0);
        json.payload = Some(br#"{"id": 8, "text": "a"}"#.to_vec());
        json.timestamp_ms = Some(i64::MAX);
        let messages = [binary, json];
        let route = "r".repeat(64);
        let batch = Batch {
            route: &route,
            topic: &"t".repeat(64),
            partition: i32::MAX,
            first_offset: 7,
            end_offset: 9,
            replay_id: None,
            messages: &messages,
        };
        let body = crate::body::encode(&batch, crate::Format::Json);
        let estimate: usize = messages.iter().map(message_size).sum();
        assert!(body.len() <= estimate + 2, "{} > {estimate}", body.len());
        // Base64 is counted (4000 payload bytes), not the raw length.
        assert!(message_size(&messages[0]) > 4000);
    }

    #[test]
    fn no_messages_no_batches() {
        assert_eq!(batches(&[], 10, 10).count(), 0);
    }

    proptest! {
        #[test]
        fn batches_tile_the_messages_within_limits(
            lens in proptest::collection::vec(0usize..300, 0..200),
            max_messages in 0usize..20,
            max_bytes in 1usize..3000,
        ) {
            let messages: Vec<Message> =
                lens.iter().enumerate().map(|(i, &len)| message(i as Offset, len)).collect();
            let mut next = 0usize;
            let parts: Vec<&[Message]> = batches(&messages, max_messages, max_bytes).collect();
            for (i, part) in parts.iter().enumerate() {
                prop_assert!(!part.is_empty());
                // Contiguous: each batch starts where the previous ended.
                prop_assert_eq!(part[0].offset, next as Offset);
                next += part.len();
                prop_assert!(part.len() <= max_messages.max(1));
                let bytes: usize = part.iter().map(message_size).sum();
                prop_assert!(bytes <= max_bytes || part.len() == 1, "{} bytes in {} messages", bytes, part.len());
                // Greedy: the next message would not have fitted.
                if let Some(following) = parts.get(i + 1) {
                    let would_be = bytes + message_size(&following[0]);
                    prop_assert!(part.len() == max_messages.max(1) || would_be > max_bytes);
                }
            }
            // Covers all.
            prop_assert_eq!(next, messages.len());
        }
    }
}
