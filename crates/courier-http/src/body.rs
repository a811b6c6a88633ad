//! What a destination receives: the envelope each message becomes in a batch body (a JSON array or
//! NDJSON), and, for `format = "per-message"`, the raw body and the `X-Courier-*` values of one message.
//! Nothing is ever lossy: bytes that are not UTF-8 are sent as base64 with a marker saying so.
//!
//! # The envelope
//! ```json
//! {"id":"orders/3/1042","topic":"orders","partition":3,"offset":1042,"timestamp":1764489600000,
//!  "key":"customer-7","key_encoding":"text",
//!  "headers":[{"name":"trace-id","value":"abc","encoding":"text"},{"name":"flag","value":null,"encoding":null}],
//!  "payload":{"total":12},"payload_encoding":"json"}
//! ```
//! - `id` is `route/partition/offset`: the same on every attempt, worker and replay.
//! - `timestamp` is Kafka's, in milliseconds since the Unix epoch, or `null`.
//! - `key` and each header `value` are a string (`"text"`: the bytes were UTF-8) or base64
//!   (`"base64"`, RFC 4648 with padding); `null` with a `null` encoding when Kafka has none. Headers keep
//!   the producer's order, repeated names and null values.
//! - `payload` is embedded **verbatim** when it is JSON (`"json"`; any JSON value, in UTF-8), as a
//!   string when it is other UTF-8 text (`"text"`), as base64 otherwise (`"base64"`); a tombstone has
//!   `"payload":null` and `"payload_encoding":null`, and keeps its key.
//!
//! In NDJSON an embedded JSON payload that spans several lines is put on one: a line break in valid
//! JSON can only be insignificant whitespace (inside strings it must be escaped), so each `\r` or `\n`
//! byte becomes a space and the value is unchanged.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use courier_core::{Header, Message};
use serde::de::IgnoredAny;

use crate::batch::Batch;
use crate::config::Format;

/// How a key, header value or payload is written. Every value that is not JSON or UTF-8 is base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Valid JSON in UTF-8, embedded as JSON (payloads only).
    Json,
    /// UTF-8 text, as a JSON string.
    Text,
    /// Anything else, base64-encoded.
    Base64,
}

impl Encoding {
    /// The marker written next to the value (`key_encoding`, `payload_encoding`, a header's `encoding`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Text => "text",
            Self::Base64 => "base64",
        }
    }

    /// How a payload is written: JSON if it is JSON, text if UTF-8, base64 otherwise.
    pub fn of_payload(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            // `from_str`, not `from_slice`: skipping a string does not check its UTF-8, and a payload
            // embedded verbatim must not make the whole body invalid.
            Ok(text) if serde_json::from_str::<IgnoredAny>(text).is_ok() => Self::Json,
            Ok(_) => Self::Text,
            Err(_) => Self::Base64,
        }
    }

    /// How a key or header value is written: text if UTF-8, base64 otherwise.
    pub fn of_text(bytes: &[u8]) -> Self {
        if std::str::from_utf8(bytes).is_ok() {
            Self::Text
        } else {
            Self::Base64
        }
    }
}

/// Encodes `batch`'s messages as one request body of envelopes: a JSON array for [`Format::Json`],
/// one envelope per line for [`Format::Ndjson`]. [`Format::PerMessage`] sends no batch body (see
/// [`per_message_body`]) and is encoded as a JSON array here.
pub fn encode(batch: &Batch<'_>, format: Format) -> Vec<u8> {
    // A capacity, not a limit: raw lengths plus the envelope's fixed part, no UTF-8 scan (base64 and
    // escapes only ever make the body grow once).
    let estimate: usize = batch
        .messages
        .iter()
        .map(|m| {
            crate::batch::ENVELOPE_BYTES
                + m.payload.as_ref().map_or(0, Vec::len)
                + m.key.as_ref().map_or(0, Vec::len)
        })
        .sum::<usize>()
        + 2;
    let mut body = Vec::with_capacity(estimate);
    // Every id of the batch starts with `"route/`: escaped once per batch, not once per message.
    let id_prefix = id_prefix(batch.route);
    let topic = json_string(batch.topic);
    let envelope = |body: &mut Vec<u8>, message: &Message, single_line: bool| {
        push_envelope(body, &id_prefix, &topic, message, single_line);
    };
    match format {
        Format::Json | Format::PerMessage => {
            body.push(b'[');
            for (i, message) in batch.messages.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                envelope(&mut body, message, false);
            }
            body.push(b']');
        }
        Format::Ndjson => {
            for message in batch.messages {
                envelope(&mut body, message, true);
                body.push(b'\n');
            }
        }
    }
    body
}

/// `"route/` as JSON: the id's opening quote and its escaped route, without the closing quote.
fn id_prefix(route: &str) -> Vec<u8> {
    let mut prefix = json_string(route);
    prefix.pop();
    prefix.push(b'/');
    prefix
}

fn json_string(text: &str) -> Vec<u8> {
    let mut json = Vec::with_capacity(text.len() + 2);
    push_string(&mut json, text);
    json
}

fn push_integer(body: &mut Vec<u8>, value: impl itoa::Integer) {
    body.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// One envelope; `id_prefix` and `topic` are already JSON (see [`id_prefix`]).
fn push_envelope(
    body: &mut Vec<u8>,
    id_prefix: &[u8],
    topic: &[u8],
    message: &Message,
    single_line: bool,
) {
    // The id is `route/partition/offset` (`crate::batch::message_id`): digits need no escaping.
    body.extend_from_slice(b"{\"id\":");
    body.extend_from_slice(id_prefix);
    push_integer(body, message.partition);
    body.push(b'/');
    push_integer(body, message.offset);
    body.extend_from_slice(b"\",\"topic\":");
    body.extend_from_slice(topic);
    body.extend_from_slice(b",\"partition\":");
    push_integer(body, message.partition);
    body.extend_from_slice(b",\"offset\":");
    push_integer(body, message.offset);
    body.extend_from_slice(b",\"timestamp\":");
    match message.timestamp_ms {
        Some(ms) => push_integer(body, ms),
        None => body.extend_from_slice(b"null"),
    }
    body.extend_from_slice(b",\"key\":");
    push_text_value(body, message.key.as_deref(), "key_encoding");
    body.extend_from_slice(b",\"headers\":");
    push_headers(body, &message.headers);
    body.extend_from_slice(b",\"payload\":");
    let encoding = message.payload.as_deref().map(|payload| {
        let encoding = Encoding::of_payload(payload);
        push_value(body, payload, encoding, single_line);
        encoding
    });
    if encoding.is_none() {
        body.extend_from_slice(b"null");
    }
    body.extend_from_slice(b",\"payload_encoding\":");
    push_encoding(body, encoding);
    body.push(b'}');
}

/// Headers as a JSON array of `{"name","value","encoding"}`, in order: the envelope's `headers` and
/// the per-message `X-Courier-Headers`.
fn push_headers(body: &mut Vec<u8>, headers: &[Header]) {
    body.push(b'[');
    for (i, header) in headers.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"name\":");
        push_string(body, &header.name);
        body.extend_from_slice(b",\"value\":");
        push_text_value(body, header.value.as_deref(), "encoding");
        body.push(b'}');
    }
    body.push(b']');
}

/// `<value>,"<marker>":<encoding>` for a key or header value (text or base64, or null).
fn push_text_value(body: &mut Vec<u8>, value: Option<&[u8]>, marker: &str) {
    let encoding = value.map(|bytes| {
        let encoding = Encoding::of_text(bytes);
        push_value(body, bytes, encoding, true);
        encoding
    });
    if encoding.is_none() {
        body.extend_from_slice(b"null");
    }
    body.extend_from_slice(b",\"");
    body.extend_from_slice(marker.as_bytes());
    body.extend_from_slice(b"\":");
    push_encoding(body, encoding);
}

fn push_encoding(body: &mut Vec<u8>, encoding: Option<Encoding>) {
    match encoding {
        Some(encoding) => {
            body.push(b'"');
            body.extend_from_slice(encoding.as_str().as_bytes());
            body.push(b'"');
        }
        None => body.extend_from_slice(b"null"),
    }
}

fn push_value(body: &mut Vec<u8>, bytes: &[u8], encoding: Encoding, single_line: bool) {
    match encoding {
        Encoding::Json => {
            let start = body.len();
            body.extend_from_slice(bytes);
            if single_line {
                for byte in &mut body[start..] {
                    if matches!(*byte, b'\n' | b'\r') {
                        *byte = b' ';
                    }
                }
            }
        }
        // `of_text`/`of_payload` said UTF-8; were it not, base64 keeps the bytes anyway.
        Encoding::Text => match std::str::from_utf8(bytes) {
            Ok(text) => push_string(body, text),
            Err(_) => push_base64(body, bytes),
        },
        Encoding::Base64 => push_base64(body, bytes),
    }
}

fn push_base64(body: &mut Vec<u8>, bytes: &[u8]) {
    body.push(b'"');
    body.extend_from_slice(BASE64.encode(bytes).as_bytes());
    body.push(b'"');
}

fn push_string(body: &mut Vec<u8>, text: &str) {
    // Serialising a string into a Vec cannot fail; fall back to an empty string regardless.
    if serde_json::to_writer(&mut *body, text).is_err() {
        body.extend_from_slice(b"\"\"");
    }
}

/// The body of one message in `format = "per-message"`: the payload's bytes as they are (empty for a
/// tombstone), and the `Content-Type` that says what they are (`None` for a tombstone).
pub fn per_message_body(message: &Message) -> (Option<&'static str>, Vec<u8>) {
    match message.payload.as_deref() {
        None => (None, Vec::new()),
        Some(payload) => {
            let content_type = match Encoding::of_payload(payload) {
                Encoding::Json => "application/json",
                Encoding::Text => "text/plain; charset=utf-8",
                Encoding::Base64 => "application/octet-stream",
            };
            (Some(content_type), payload.to_vec())
        }
    }
}

/// Whether `bytes` can travel as an HTTP header value unchanged through any server or proxy: visible
/// ASCII and inner spaces only. Servers trim surrounding whitespace, and bytes above 0x7F are read as
/// Latin-1 by some and refused by others, so anything else goes base64.
pub fn is_header_safe(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| matches!(b, b' ' | b'!'..=b'~'))
        && bytes.first() != Some(&b' ')
        && bytes.last() != Some(&b' ')
}

/// `headers` as the `X-Courier-Headers` value: the envelope's `headers` array, with every character
/// outside visible ASCII escaped (`\uXXXX`), so it is a valid header value and means the same JSON.
pub fn headers_json_ascii(headers: &[Header]) -> String {
    let mut json = Vec::new();
    push_headers(&mut json, headers);
    let text = String::from_utf8_lossy(&json);
    let mut ascii = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, ' '..='~') {
            ascii.push(c);
        } else {
            // Only inside JSON strings (the writer escapes control characters, not DEL or non-ASCII),
            // where an escape means the same character. Beyond the BMP: a surrogate pair.
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                ascii.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    ascii
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn message(offset: i64, payload: Option<&[u8]>) -> Message {
        Message {
            partition: 3,
            offset,
            timestamp_ms: Some(1_764_489_600_000),
            key: None,
            headers: Vec::new(),
            payload: payload.map(<[u8]>::to_vec),
        }
    }

    fn batch(messages: &[Message]) -> Batch<'_> {
        Batch {
            route: "orders-out",
            topic: "orders",
            partition: 3,
            first_offset: 0,
            end_offset: messages.len() as i64,
            replay_id: None,
            messages,
        }
    }

    fn sample() -> Vec<Message> {
        let payloads: [Option<&[u8]>; 7] = [
            Some(br#"{"id": 1,  "n": "a"}"#),
            Some(b"plain text"),
            Some(b"\xff\xfeoops"),
            None,
            Some(b"42"),
            Some(b"{\n  \"id\": 2\n}"),
            // Looks like JSON, but a string holding invalid UTF-8 is not: embedding it verbatim would
            // break the whole body.
            Some(b"\"\xff\""),
        ];
        payloads
            .iter()
            .enumerate()
            .map(|(i, payload)| message(i as i64, *payload))
            .collect()
    }

    /// `(payload, payload_encoding)` of each sample message.
    fn expected_payloads() -> Vec<(Value, Value)> {
        vec![
            (json!({"id": 1, "n": "a"}), json!("json")),
            (json!("plain text"), json!("text")),
            (json!("//5vb3Bz"), json!("base64")),
            (Value::Null, Value::Null),
            (json!(42), json!("json")),
            (json!({"id": 2}), json!("json")),
            (json!("Iv8i"), json!("base64")),
        ]
    }

    fn payloads(envelopes: &[Value]) -> Vec<(Value, Value)> {
        envelopes
            .iter()
            .map(|e| (e["payload"].clone(), e["payload_encoding"].clone()))
            .collect()
    }

    #[test]
    fn json_array_embeds_json_and_never_loses_a_byte() {
        let messages = sample();
        let body = encode(&batch(&messages), Format::Json);
        let envelopes: Vec<Value> = serde_json::from_slice(&body).expect("body is a JSON array");
        assert_eq!(payloads(&envelopes), expected_payloads());
        // Verbatim: the producer's spacing survives.
        let text = String::from_utf8(body).expect("the body is UTF-8");
        assert!(text.contains(r#""payload":{"id": 1,  "n": "a"}"#), "{text}");
        // Base64 gives the original bytes back.
        let encoded = envelopes[2]["payload"].as_str().expect("a base64 string");
        assert_eq!(BASE64.decode(encoded).expect("base64"), b"\xff\xfeoops");
    }

    #[test]
    fn every_envelope_names_its_message() {
        let messages = sample();
        let body = encode(&batch(&messages), Format::Json);
        let envelopes: Vec<Value> = serde_json::from_slice(&body).expect("JSON array");
        assert_eq!(
            envelopes[4],
            json!({
                "id": "orders-out/3/4", "topic": "orders", "partition": 3, "offset": 4,
                "timestamp": 1_764_489_600_000_i64, "key": null, "key_encoding": null, "headers": [],
                "payload": 42, "payload_encoding": "json",
            })
        );
    }

    #[test]
    fn keys_and_headers_are_text_or_base64_in_order_with_duplicates_and_nulls() {
        let mut tombstone = message(0, None);
        tombstone.key = Some(b"customer-7".to_vec());
        tombstone.timestamp_ms = None;
        tombstone.headers = vec![
            Header {
                name: "trace".into(),
                value: Some("ünïcode".as_bytes().to_vec()),
            },
            Header {
                name: "sig".into(),
                value: Some(vec![0, 0xff]),
            },
            Header {
                name: "trace".into(),
                value: None,
            },
            Header {
                name: "empty".into(),
                value: Some(Vec::new()),
            },
        ];
        let mut binary_key = message(1, Some(b"{}"));
        binary_key.key = Some(vec![0xc3, 0x28]);
        let messages = [tombstone, binary_key];
        let body = encode(&batch(&messages), Format::Json);
        let envelopes: Vec<Value> = serde_json::from_slice(&body).expect("JSON array");
        assert_eq!(envelopes[0]["key"], json!("customer-7"));
        assert_eq!(envelopes[0]["key_encoding"], json!("text"));
        assert_eq!(envelopes[0]["payload"], Value::Null);
        assert_eq!(envelopes[0]["timestamp"], Value::Null);
        assert_eq!(
            envelopes[0]["headers"],
            json!([
                {"name": "trace", "value": "ünïcode", "encoding": "text"},
                {"name": "sig", "value": "AP8=", "encoding": "base64"},
                {"name": "trace", "value": null, "encoding": null},
                {"name": "empty", "value": "", "encoding": "text"},
            ])
        );
        assert_eq!(envelopes[1]["key"], json!("wyg="));
        assert_eq!(envelopes[1]["key_encoding"], json!("base64"));
    }

    /// The bytes an envelope value stands for, by its marker; a JSON payload as its parsed value.
    fn decode(value: &Value, encoding: &Value) -> Option<Vec<u8>> {
        match encoding.as_str() {
            None => None,
            Some("text") => Some(value.as_str().expect("text").as_bytes().to_vec()),
            Some("base64") => Some(BASE64.decode(value.as_str().expect("b64")).expect("b64")),
            Some("json") => Some(serde_json::to_vec(value).expect("json")),
            Some(other) => panic!("unknown encoding {other}"),
        }
    }

    fn bytes() -> impl Strategy<Value = Option<Vec<u8>>> {
        // Mostly text (with JSON-looking and control characters), sometimes arbitrary bytes.
        proptest::option::of(prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40),
            "[ -~\\n\\t\\u{7f}é😀\"{}\\[\\]0-9]{0,30}".prop_map(String::into_bytes),
        ])
    }

    proptest! {
        #[test]
        fn no_byte_is_ever_lost(
            key in bytes(),
            payload in bytes(),
            headers in proptest::collection::vec(("[a-zé\\u{7f} -]{0,8}", bytes()), 0..4),
            ndjson in any::<bool>(),
        ) {
            let headers: Vec<Header> =
                headers.into_iter().map(|(name, value)| Header { name, value }).collect();
            let message = Message { key: key.clone(), payload: payload.clone(), headers: headers.clone(), ..message(9, None) };
            let format = if ndjson { Format::Ndjson } else { Format::Json };
            let body = encode(&batch(std::slice::from_ref(&message)), format);
            let envelope: Value = if ndjson {
                prop_assert_eq!(body.iter().filter(|b| **b == b'\n').count(), 1, "one line");
                serde_json::from_slice(&body).expect("one JSON line")
            } else {
                let mut array: Vec<Value> = serde_json::from_slice(&body).expect("a JSON array");
                array.remove(0)
            };
            prop_assert_eq!(decode(&envelope["key"], &envelope["key_encoding"]), key);
            let got: Vec<Header> = envelope["headers"].as_array().expect("list").iter().map(|h| Header {
                name: h["name"].as_str().expect("name").to_owned(),
                value: decode(&h["value"], &h["encoding"]),
            }).collect();
            prop_assert_eq!(got, headers);
            let expected = match (&payload, envelope["payload_encoding"].as_str()) {
                (Some(bytes), Some("json")) => {
                    let value: Value = serde_json::from_slice(bytes).expect("was JSON");
                    Some(serde_json::to_vec(&value).expect("json"))
                }
                _ => payload.clone(),
            };
            prop_assert_eq!(decode(&envelope["payload"], &envelope["payload_encoding"]), expected);
        }

        /// The id, topic and numbers are written by hand (no formatter): they must read back as what
        /// `message_id` and the message say, whatever the names hold.
        #[test]
        fn ids_and_numbers_read_back(
            route in "[a-z\"\\\\/é\u{1}-]{0,12}",
            topic in "[a-z\"\\\\.é\u{1f}-]{0,12}",
            partition in any::<i32>(),
            offset in any::<i64>(),
            timestamp in proptest::option::of(any::<i64>()),
        ) {
            let message = Message { partition, offset, timestamp_ms: timestamp, ..message(0, None) };
            let messages = [message];
            let batch = Batch { route: &route, topic: &topic, ..batch(&messages) };
            let array: Vec<Value> = serde_json::from_slice(&encode(&batch, Format::Json)).expect("a JSON array");
            let envelope = &array[0];
            let id = crate::batch::message_id(&route, partition, offset);
            prop_assert_eq!(envelope["id"].as_str(), Some(id.as_str()));
            prop_assert_eq!(envelope["topic"].as_str(), Some(topic.as_str()));
            prop_assert_eq!(envelope["partition"].as_i64(), Some(i64::from(partition)));
            prop_assert_eq!(envelope["offset"].as_i64(), Some(offset));
            prop_assert_eq!(envelope["timestamp"].as_i64(), timestamp);
        }
    }

    #[test]
    fn ndjson_is_one_envelope_per_line() {
        let messages = sample();
        let body = encode(&batch(&messages), Format::Ndjson);
        let text = String::from_utf8(body).expect("utf-8");
        assert!(text.ends_with('\n'));
        let lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("each line is JSON"))
            .collect();
        assert_eq!(payloads(&lines), expected_payloads());
    }

    #[test]
    fn empty_batches_encode_to_empty_collections() {
        assert_eq!(encode(&batch(&[]), Format::Json), b"[]");
        assert_eq!(encode(&batch(&[]), Format::Ndjson), b"");
    }

    #[test]
    fn a_per_message_body_is_the_payload_as_it_is() {
        let cases: [(Option<&[u8]>, Option<&str>); 4] = [
            (Some(b"{\"a\":1}"), Some("application/json")),
            (Some(b"hello"), Some("text/plain; charset=utf-8")),
            (Some(b"\xff\x00"), Some("application/octet-stream")),
            (None, None),
        ];
        for (payload, content_type) in cases {
            let (kind, body) = per_message_body(&message(0, payload));
            assert_eq!(kind, content_type);
            assert_eq!(body, payload.unwrap_or_default());
        }
    }

    #[test]
    fn header_safe_values_are_visible_ascii_without_edge_spaces() {
        assert!(is_header_safe(b"customer-7 a"));
        assert!(is_header_safe(b""));
        for unsafe_value in [&b" x"[..], b"x ", b"a\nb", b"caf\xc3\xa9", b"\x00", b"a\tb"] {
            assert!(!is_header_safe(unsafe_value), "{unsafe_value:?}");
        }
    }

    #[test]
    fn the_headers_header_is_ascii_json_meaning_the_same() {
        let headers = vec![
            Header {
                name: "ключ".into(),
                value: Some("😀 ok".as_bytes().to_vec()),
            },
            Header {
                name: "bin".into(),
                value: Some(vec![0xff]),
            },
            Header {
                name: "del\u{7f}".into(),
                value: None,
            },
        ];
        let value = headers_json_ascii(&headers);
        assert!(value.bytes().all(|b| matches!(b, b' '..=b'~')), "{value}");
        let parsed: Value = serde_json::from_str(&value).expect("JSON");
        assert_eq!(
            parsed,
            json!([
                {"name": "ключ", "value": "😀 ok", "encoding": "text"},
                {"name": "bin", "value": "/w==", "encoding": "base64"},
                {"name": "del\u{7f}", "value": null, "encoding": null},
            ])
        );
    }
}
