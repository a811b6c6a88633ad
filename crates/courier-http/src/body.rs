//! The request body: how messages become JSON elements, and how elements become a JSON array or NDJSON.
//!
//! # The element rule
//! Each message becomes exactly one JSON element:
//! - a payload that is valid JSON (any JSON value: object, array, string, number, `true`, `null`) is
//!   embedded **verbatim**, byte for byte, so the destination sees what the producer wrote;
//! - any other payload is embedded as a JSON **string** of its bytes read as UTF-8, with invalid
//!   sequences replaced by U+FFFD (lossy);
//! - a message without a payload (a tombstone) is `null`.
//!
//! In NDJSON, an embedded JSON payload that spans several lines is put on one: a line break in valid
//! JSON can only be insignificant whitespace (inside strings it must be escaped), so each `\r` or `\n`
//! byte becomes a space and the value is unchanged.

use courier_core::Message;
use serde::de::IgnoredAny;

use crate::config::Format;

/// Encodes `messages` as one request body in `format`.
pub fn encode(messages: &[Message], format: Format) -> Vec<u8> {
    let estimate: usize = messages
        .iter()
        .map(crate::batch::message_size)
        .sum::<usize>()
        + 2;
    let mut body = Vec::with_capacity(estimate);
    match format {
        Format::Json => {
            body.push(b'[');
            for (i, message) in messages.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                push_element(&mut body, message, false);
            }
            body.push(b']');
        }
        Format::Ndjson => {
            for message in messages {
                push_element(&mut body, message, true);
                body.push(b'\n');
            }
        }
    }
    body
}

/// Whether `bytes` is exactly one JSON value (surrounding whitespace allowed), checked without
/// building it.
fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<IgnoredAny>(bytes).is_ok()
}

fn push_element(body: &mut Vec<u8>, message: &Message, single_line: bool) {
    match message.payload.as_deref() {
        None => body.extend_from_slice(b"null"),
        Some(payload) if is_json(payload) => {
            let start = body.len();
            body.extend_from_slice(payload);
            if single_line {
                for byte in &mut body[start..] {
                    if matches!(*byte, b'\n' | b'\r') {
                        *byte = b' ';
                    }
                }
            }
        }
        Some(payload) => {
            let text = String::from_utf8_lossy(payload);
            // Serialising a string into a Vec cannot fail; fall back to an empty string regardless.
            if serde_json::to_writer(&mut *body, text.as_ref()).is_err() {
                body.extend_from_slice(b"\"\"");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn message(payload: Option<&[u8]>) -> Message {
        Message {
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: None,
            payload: payload.map(<[u8]>::to_vec),
        }
    }

    fn sample() -> Vec<Message> {
        vec![
            message(Some(br#"{"id": 1,  "n": "a"}"#)),
            message(Some(b"plain text")),
            message(Some(b"\xff\xfeoops")),
            message(None),
            message(Some(b"42")),
            message(Some(b"{\n  \"id\": 2\n}")),
            message(Some(b"{\"id\": 3")),
        ]
    }

    fn expected() -> Vec<Value> {
        vec![
            json!({"id": 1, "n": "a"}),
            json!("plain text"),
            json!("\u{fffd}\u{fffd}oops"),
            Value::Null,
            json!(42),
            json!({"id": 2}),
            json!("{\"id\": 3"),
        ]
    }

    #[test]
    fn json_array_embeds_json_and_quotes_the_rest() {
        let body = encode(&sample(), Format::Json);
        let parsed: Vec<Value> = serde_json::from_slice(&body).expect("body is a JSON array");
        assert_eq!(parsed, expected());
        // Verbatim: the producer's spacing survives.
        assert!(body.starts_with(br#"[{"id": 1,  "n": "a"},"#));
    }

    #[test]
    fn ndjson_is_one_element_per_line() {
        let body = encode(&sample(), Format::Ndjson);
        let text = String::from_utf8(body).expect("utf-8");
        assert!(text.ends_with('\n'));
        let lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("each line is JSON"))
            .collect();
        assert_eq!(lines, expected());
    }

    #[test]
    fn empty_batches_encode_to_empty_collections() {
        assert_eq!(encode(&[], Format::Json), b"[]");
        assert_eq!(encode(&[], Format::Ndjson), b"");
    }
}
