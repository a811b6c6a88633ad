//! What one request carries: the [`Batch`] handed to the deliverer, the idempotency key derived from its
//! bounds, and [`batches`], which splits a range's messages into requests within the destination's
//! limits.

use courier_core::{Message, Offset, Partition};

/// One request's worth of one range: the messages of `[first_offset, end_offset)` of a partition.
///
/// The bounds, not the messages, name the batch: compaction and transaction markers leave gaps, so
/// `messages` may hold fewer than `end_offset - first_offset` entries (even none), and the
/// idempotency key stays the same whatever the log held when it was read.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub route: &'a str,
    pub partition: Partition,
    /// The first offset this batch covers.
    pub first_offset: Offset,
    /// The offset after the last one this batch covers (exclusive).
    pub end_offset: Offset,
    pub messages: &'a [Message],
}

impl Batch<'_> {
    /// `route/partition/start-end`: stable across retries, workers and replays, so a destination can
    /// drop a batch it has already applied. The one place the key is built.
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}/{}", self.route, self.partition, self.offsets())
    }

    /// `start-end`, the value of the `X-Courier-Offsets` header.
    pub fn offsets(&self) -> String {
        format!("{}-{}", self.first_offset, self.end_offset)
    }
}

/// The size a message counts for against `max_batch_bytes`: its payload bytes plus one separator.
/// The body may come out somewhat larger (quoting of non-JSON payloads, brackets).
pub fn message_size(message: &Message) -> usize {
    message.payload.as_ref().map_or(0, Vec::len) + 1
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
            payload: Some(vec![b'x'; len]),
        }
    }

    #[test]
    fn an_oversized_message_goes_alone() {
        let messages = [message(0, 10), message(1, 1000), message(2, 10)];
        let sizes: Vec<usize> = batches(&messages, 10, 100).map(<[Message]>::len).collect();
        assert_eq!(sizes, [1, 1, 1]);
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
            max_bytes in 1usize..1000,
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
