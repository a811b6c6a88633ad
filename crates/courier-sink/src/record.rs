//! What the sink remembers: each request as [`Received`], the running [`Stats`], and how a body is read
//! back into elements.

use std::time::SystemTime;

use serde_json::Value;

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
    /// `Idempotency-Key`: `route/partition/start-end`.
    pub idempotency_key: Option<String>,
    /// `X-Courier-Route`.
    pub route: Option<String>,
    /// `X-Courier-Partition`, when present and a number.
    pub partition: Option<i32>,
    /// `X-Courier-Offsets`: `start-end` (see [`offset_bounds`](Self::offset_bounds)).
    pub offsets: Option<String>,
    /// `Content-Type`, which decided how the body was parsed.
    pub content_type: Option<String>,
    /// The batch's elements: the JSON array's items, or one per NDJSON line.
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

/// Reads a body back into elements: NDJSON (one element per non-empty line) when the content type
/// says so, otherwise a JSON array.
pub(crate) fn parse_elements(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Vec<Value>, String> {
    if is_ndjson(content_type) {
        let text =
            std::str::from_utf8(body).map_err(|e| format!("NDJSON body is not UTF-8: {e}"))?;
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| {
                serde_json::from_str(line)
                    .map_err(|e| format!("NDJSON line {} is not JSON: {e}", i + 1))
            })
            .collect()
    } else {
        match serde_json::from_slice(body) {
            Ok(Value::Array(elements)) => Ok(elements),
            Ok(_) => Err("body is JSON but not an array".to_owned()),
            Err(e) => Err(format!("body is not a JSON array: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_both_formats() {
        assert_eq!(
            parse_elements(Some("application/json"), br#"[{"id":1},"x"]"#),
            Ok(vec![json!({"id": 1}), json!("x")])
        );
        assert_eq!(
            parse_elements(
                Some("application/x-ndjson; charset=utf-8"),
                b"{\"id\":1}\n\n2\n"
            ),
            Ok(vec![json!({"id": 1}), json!(2)])
        );
        assert!(parse_elements(None, b"{\"id\":1}").is_err());
        assert!(parse_elements(Some("application/json"), b"[1,").is_err());
        let err = parse_elements(Some("application/x-ndjson"), b"1\nnope\n").expect_err("bad line");
        assert!(err.contains("line 2"), "{err}");
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
            content_type: None,
            elements: vec![],
            body_error: None,
            answer: Answer::Status(200),
        };
        assert_eq!(received.offset_bounds(), Some((10, 20)));
    }
}
