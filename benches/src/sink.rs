//! A lean HTTP sink for benchmarks: counts messages and bytes, optionally measures end-to-end latency.
//!
//! Unlike courier-sink it keeps nothing, so the sink costs the same little CPU for every variant.
//! Messages are counted by their `{"id":` prefix (every bench message is a flat JSON object that starts
//! so); latency is read from each message's `"sent_at_ms":` field.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;

#[derive(Default)]
pub struct Counters {
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    pub requests: AtomicU64,
    measure_latency: AtomicBool,
    /// Milliseconds every answer waits (a slow destination, for the recovery run).
    pub delay_ms: AtomicU64,
    latencies_ms: Mutex<Vec<u64>>,
}

impl Counters {
    pub fn reset(&self, measure_latency: bool) {
        self.messages.store(0, Ordering::SeqCst);
        self.bytes.store(0, Ordering::SeqCst);
        self.requests.store(0, Ordering::SeqCst);
        self.measure_latency
            .store(measure_latency, Ordering::SeqCst);
        self.delay_ms.store(0, Ordering::SeqCst);
        self.latencies_ms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::SeqCst)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    pub fn take_latencies(&self) -> Vec<u64> {
        std::mem::take(
            &mut *self
                .latencies_ms
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

pub struct BenchSink {
    pub url: String,
    pub counters: Arc<Counters>,
}

pub async fn start() -> anyhow::Result<BenchSink> {
    let counters = Arc::new(Counters::default());
    let app = Router::new()
        .route("/", post(receive))
        // Any path: the routes section gives each route its own destination on this one sink.
        .route("/{*path}", post(receive))
        .with_state(Arc::clone(&counters));
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let url = format!("http://{}/", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(BenchSink { url, counters })
}

async fn receive(State(counters): State<Arc<Counters>>, body: Bytes) -> &'static str {
    let delay = counters.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    // One per envelope, whatever the payloads hold.
    let count = count_occurrences(&body, b"\"payload_encoding\":");
    counters.messages.fetch_add(count, Ordering::SeqCst);
    counters
        .bytes
        .fetch_add(body.len() as u64, Ordering::SeqCst);
    counters.requests.fetch_add(1, Ordering::SeqCst);
    if counters.measure_latency.load(Ordering::SeqCst) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let sent = sent_at(&body);
        let mut latencies = counters
            .latencies_ms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        latencies.extend(sent.into_iter().map(|s| now.saturating_sub(s)));
    }
    "ok"
}

fn count_occurrences(haystack: &[u8], needle: &[u8]) -> u64 {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count() as u64
}

fn sent_at(body: &[u8]) -> Vec<u64> {
    const KEY: &[u8] = b"\"sent_at_ms\":";
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(pos) = body[i..].windows(KEY.len()).position(|w| w == KEY) {
        let start = i + pos + KEY.len();
        let digits: Vec<u8> = body[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .copied()
            .collect();
        if let Ok(value) = std::str::from_utf8(&digits).unwrap_or("").parse() {
            out.push(value);
        }
        i = start;
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_messages_and_reads_timestamps() {
        let body = br#"[{"id":1,"sent_at_ms":100,"pad":"x"},{"id":2,"sent_at_ms":250}]"#;
        assert_eq!(super::count_occurrences(body, b"{\"id\":"), 2);
        assert_eq!(super::sent_at(body), vec![100, 250]);
    }
}
