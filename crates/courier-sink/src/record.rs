//! What the sink remembers: each request as [`Received`], the running [`Stats`], and how a request is
//! read back into courier's message envelopes (a batch body, or one message's body and
//! `X-Courier-*` headers) and their payloads.

use std::time::SystemTime;

use axum::body::Bytes;
use axum::http::HeaderMap;
use serde_json::{json, Map, Value};

/// How a recorded request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Answered with this status.
    Status(u16),
    /// Never answered ([`Behaviour::Hang`](crate::Behaviour::Hang)).
    NoAnswer,
}

impl Answer {
    /// Whether the answer was a 2xx: only those count as delivered.
    pub fn is_success(self) -> bool {
        matches!(self, Self::Status(200..=299))
    }
}

/// One request the sink received.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// When the request (headers and body) had arrived.
    pub received_at: SystemTime,
    /// The request path, e.g. `/` or `/a`.
    pub path: String,
    /// `Idempotency-Key`: `route/partition/start-end`, or the message id for a per-message request.
    pub idempotency_key: Option<String>,
    /// `X-Courier-Route`.
    pub route: Option<String>,
    /// `X-Courier-Partition`, when present and a number.
    pub partition: Option<i32>,
    /// `X-Courier-Offsets`: `start-end` (see [`offset_bounds`](Self::offset_bounds)).
    pub offsets: Option<String>,
    /// `X-Courier-Replay`, when present and a number: the replay this delivery belongs to.
    pub replay: Option<i64>,
    /// `Content-Type`, which decided how the body was parsed.
    pub content_type: Option<String>,
    /// Every request header as sent.
    pub headers: HeaderMap,
    /// The body as sent (shared with the request's buffer, not copied).
    pub body: Bytes,
    /// The message envelopes: a batch's elements, or for a per-message request (one with
    /// `X-Courier-Id`) the envelope its headers and body stand for (the same fields, see
    /// `courier_http::body`).
    pub envelopes: Vec<Value>,
    /// Each envelope's `payload`: the producer's JSON, a text payload as a string, base64 as a string
    /// (see the envelope's `payload_encoding`), `null` for a tombstone.
    pub elements: Vec<Value>,
    /// Why the body could not be parsed, if it could not (the request is then answered 400).
    pub body_error: Option<String>,
    /// What the sink answered.
    pub answer: Answer,
}

impl Received {
    /// `X-Courier-Offsets` as `(start, end)`, end exclusive.
    pub fn offset_bounds(&self) -> Option<(i64, i64)> {
        let (start, end) = self.offsets.as_deref()?.split_once('-')?;
        Some((start.parse().ok()?, end.parse().ok()?))
    }
}

/// Counters, updated on every request; [`Sink::wait_until`](crate::Sink::wait_until) is woken on each
/// change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Batch requests (POSTs) that arrived. Those neither delivered nor failed are in flight, or were
    /// abandoned by their client during a [`Behaviour::Delay`](crate::Behaviour::Delay).
    pub requests: u64,
    /// Requests answered 2xx.
    pub delivered: u64,
    /// Elements in the requests answered 2xx.
    pub delivered_elements: u64,
    /// Requests answered otherwise, or never ([`Behaviour::Hang`](crate::Behaviour::Hang)).
    pub failed: u64,
    /// Requests being handled right now.
    pub in_flight: u64,
    /// The most requests ever handled at once.
    pub max_in_flight: u64,
}

/// Whether a `Content-Type` announces NDJSON (else the body is read as a JSON array).
fn is_ndjson(content_type: Option<&str>) -> bool {
    let essence = content_type
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_ascii_lowercase());
    matches!(
        essence.as_deref(),
        Some(
            "application/x-ndjson"
                | "application/ndjson"
                | "application/jsonl"
                | "application/x-jsonlines"
        )
    )
}

/// Reads a batch body back into its envelopes: NDJSON (one per non-empty line) when the content type
/// says so, otherwise a JSON array. Every element must be an envelope.
fn parse_batch(content_type: Option<&str>, body: &[u8]) -> Result<Vec<Value>, String> {
    let elements: Vec<Value> = if is_ndjson(content_type) {
        let text =
            std::str::from_utf8(body).map_err(|e| format!("NDJSON body is not UTF-8: {e}"))?;
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| {
                serde_json::from_str(line)
                    .map_err(|e| format!("NDJSON line {} is not JSON: {e}", i + 1))
            })
            .collect::<Result<_, _>>()?
    } else {
        match serde_json::from_slice(body) {
            Ok(Value::Array(elements)) => elements,
            Ok(_) => return Err("body is JSON but not an array".to_owned()),
            Err(e) => return Err(format!("body is not a JSON array: {e}")),
        }
    };
    for (i, element) in elements.iter().enumerate() {
        let is_envelope = element.get("id").is_some_and(Value::is_string)
            && element.get("offset").is_some_and(Value::is_i64)
            && element.get("payload").is_some()
            && element.get("payload_encoding").is_some();
        if !is_envelope {
            return Err(format!(
                "element {i} is not a courier envelope (an object with id, offset, payload and payload_encoding): {element}"
            ));
        }
    }
    Ok(elements)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The envelope a per-message request stands for, built from its `X-Courier-*` headers and raw body
/// the way a receiver would; an error names what is missing or malformed.
fn per_message_envelope(headers: &HeaderMap, body: &[u8]) -> Result<Value, String> {
    let number = |name: &str| -> Result<Value, String> {
        match header(headers, name) {
            None => Ok(Value::Null),
            Some(text) => text
                .parse::<i64>()
                .map(Value::from)
                .map_err(|e| format!("{name} {text:?} is not a number: {e}")),
        }
    };
    let (key, key_encoding) = match (
        header(headers, "x-courier-key"),
        header(headers, "x-courier-key-base64"),
    ) {
        (Some(text), None) => (json!(text), json!("text")),
        (None, Some(base64)) => (json!(base64), json!("base64")),
        (None, None) => (Value::Null, Value::Null),
        (Some(_), Some(_)) => return Err("both X-Courier-Key and X-Courier-Key-Base64".to_owned()),
    };
    let headers_list = match header(headers, "x-courier-headers") {
        None => json!([]),
        Some(text) => {
            serde_json::from_str(text).map_err(|e| format!("X-Courier-Headers is not JSON: {e}"))?
        }
    };
    let tombstone = header(headers, "x-courier-tombstone") == Some("true");
    let content_type = header(headers, "content-type").unwrap_or_default();
    let (payload, payload_encoding) = if tombstone {
        (Value::Null, Value::Null)
    } else if content_type.starts_with("application/json") {
        let payload = serde_json::from_slice(body)
            .map_err(|e| format!("a per-message application/json body is not JSON: {e}"))?;
        (payload, json!("json"))
    } else {
        match std::str::from_utf8(body) {
            Ok(text) if content_type.starts_with("text/") => (json!(text), json!("text")),
            _ => (json!(base64(body)), json!("base64")),
        }
    };
    let mut envelope = Map::new();
    envelope.insert("id".into(), json!(header(headers, "x-courier-id")));
    envelope.insert("topic".into(), json!(header(headers, "x-courier-topic")));
    envelope.insert("partition".into(), number("x-courier-partition")?);
    envelope.insert("offset".into(), number("x-courier-offset")?);
    envelope.insert("timestamp".into(), number("x-courier-timestamp")?);
    envelope.insert("key".into(), key);
    envelope.insert("key_encoding".into(), key_encoding);
    envelope.insert("headers".into(), headers_list);
    envelope.insert("payload".into(), payload);
    envelope.insert("payload_encoding".into(), payload_encoding);
    Ok(Value::Object(envelope))
}

/// RFC 4648 base64 with padding: the sink's own, to keep it free of dependencies for one function.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Reads a request back into envelopes: a per-message request (one with `X-Courier-Id`) is one
/// envelope built from its headers and body; anything else is a batch body.
pub(crate) fn parse_envelopes(headers: &HeaderMap, body: &[u8]) -> Result<Vec<Value>, String> {
    if headers.contains_key("x-courier-id") {
        per_message_envelope(headers, body).map(|envelope| vec![envelope])
    } else {
        parse_batch(header(headers, "content-type"), body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(offset: i64, payload: Value) -> Value {
        json!({"id": format!("r/0/{offset}"), "offset": offset, "payload": payload, "payload_encoding": "json"})
    }

    fn with_content_type(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", value.parse().expect("header value"));
        headers
    }

    #[test]
    fn parses_both_batch_formats_into_envelopes() {
        let array = json!([envelope(0, json!({"id": 1})), envelope(1, json!("x"))]);
        assert_eq!(
            parse_envelopes(
                &with_content_type("application/json"),
                array.to_string().as_bytes()
            ),
            Ok(vec![envelope(0, json!({"id": 1})), envelope(1, json!("x"))])
        );
        let ndjson = format!("{}\n\n{}\n", envelope(0, json!(1)), envelope(1, json!(2)));
        assert_eq!(
            parse_envelopes(
                &with_content_type("application/x-ndjson; charset=utf-8"),
                ndjson.as_bytes()
            ),
            Ok(vec![envelope(0, json!(1)), envelope(1, json!(2))])
        );
        let json = with_content_type("application/json");
        assert!(parse_envelopes(&HeaderMap::new(), b"{\"id\":1}").is_err());
        assert!(parse_envelopes(&json, b"[1,").is_err());
        let bare = parse_envelopes(&json, br#"[{"id": 1}]"#).expect_err("not an envelope");
        assert!(bare.contains("element 0"), "{bare}");
        let err = parse_envelopes(&with_content_type("application/x-ndjson"), b"1\nnope\n")
            .expect_err("bad line");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn a_per_message_request_stands_for_its_envelope() {
        let mut headers = with_content_type("application/octet-stream");
        for (name, value) in [
            ("x-courier-id", "r/2/9"),
            ("x-courier-topic", "t"),
            ("x-courier-partition", "2"),
            ("x-courier-offset", "9"),
            ("x-courier-key-base64", "/w=="),
            (
                "x-courier-headers",
                r#"[{"name":"a","value":null,"encoding":null}]"#,
            ),
        ] {
            headers.insert(name, value.parse().expect("header value"));
        }
        let envelopes = parse_envelopes(&headers, b"\x00\xff\xfe\x01").expect("envelope");
        assert_eq!(
            envelopes,
            [json!({
                "id": "r/2/9", "topic": "t", "partition": 2, "offset": 9, "timestamp": null,
                "key": "/w==", "key_encoding": "base64",
                "headers": [{"name": "a", "value": null, "encoding": null}],
                "payload": "AP/+AQ==", "payload_encoding": "base64",
            })]
        );
    }

    #[test]
    fn base64_matches_rfc_4648_test_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, output) in vectors {
            assert_eq!(base64(input.as_bytes()), output);
        }
    }

    #[test]
    fn offset_bounds_parse() {
        let received = Received {
            received_at: SystemTime::now(),
            path: "/".into(),
            idempotency_key: None,
            route: None,
            partition: None,
            offsets: Some("10-20".into()),
            replay: None,
            content_type: None,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            envelopes: vec![],
            elements: vec![],
            body_error: None,
            answer: Answer::Status(200),
        };
        assert_eq!(received.offset_bounds(), Some((10, 20)));
    }
}
