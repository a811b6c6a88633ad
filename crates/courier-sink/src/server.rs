//! The [`Sink`] itself: an axum server in a background task, its records, and the event wait tests
//! synchronise on.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::behaviour::{Behaviour, Behaviours, Reply};
use crate::record::{parse_envelopes, Answer, Received, Stats};

/// The largest request body accepted (a larger one is answered 413 and not recorded).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// How long [`Sink::shutdown`] waits for open connections to finish before abandoning them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The body [`Behaviour::Garbage`] sends: this many chunks of [`GARBAGE_CHUNK`] bytes (16 GiB).
const GARBAGE_CHUNKS: usize = 256 * 1024;
const GARBAGE_CHUNK: usize = 64 * 1024;

/// Why the sink could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    #[error("the sink could not listen on {addr} ({source}): the port may be in use; pick another or use port 0")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// [`Sink::wait_until`] gave up.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the sink's condition did not hold within {waited:?}; last stats: {last:?}")]
pub struct WaitTimeout {
    pub waited: Duration,
    pub last: Stats,
}

/// A recording HTTP destination on a local port whose answers can be switched at runtime.
///
/// Every `POST` (any path) is a delivery: it is recorded with its headers, body, message envelopes
/// and their payloads (the elements), and answered as the [`Behaviour`] for its path (or the sink-wide
/// one) says. A 2xx answer makes it delivered ([`received`](Self::received)); any other answer, or
/// none, makes it failed ([`failed`](Self::failed)). A request that is not courier envelopes is
/// answered `400` whatever the behaviour. A `GET` (any path) answers the counters as JSON and is not recorded.
///
/// Dropping the sink stops it, as [`shutdown`](Self::shutdown) does, without waiting.
#[derive(Debug)]
pub struct Sink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<std::io::Result<()>>>>,
}

#[derive(Debug)]
struct Shared {
    behaviours: Mutex<Behaviours>,
    delivered: Mutex<Vec<Received>>,
    failed: Mutex<Vec<Received>>,
    stats: watch::Sender<Stats>,
    stop: watch::Receiver<bool>,
    garbage_chunk: Bytes,
}

/// The sink's mutexes are held for a few instructions and never across an await; a panic in a
/// handler cannot leave them inconsistent, so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Sink {
    /// Binds `addr` (port 0 picks a free port) and serves in a background task on the current tokio
    /// runtime, answering [`Behaviour::Ok`] until told otherwise.
    pub async fn start(addr: SocketAddr) -> Result<Self, SinkError> {
        let bind_error = |source| SinkError::Bind { addr, source };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            behaviours: Mutex::new(Behaviours::default()),
            delivered: Mutex::new(Vec::new()),
            failed: Mutex::new(Vec::new()),
            stats: watch::channel(Stats::default()).0,
            stop: stop_rx.clone(),
            garbage_chunk: Bytes::from(vec![b'#'; GARBAGE_CHUNK]),
        });
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(Arc::clone(&shared));
        let mut stop_signal = stop_rx;
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    // An error means the Sink is gone: stop too.
                    let _ = stop_signal.wait_for(|stop| *stop).await;
                })
                .await
        });
        tracing::debug!(%addr, "Sink listening.");
        Ok(Self {
            addr,
            shared,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>/`: POST batches here.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// `http://<addr><path>`, for a destination with its own [`set_path_behaviour`](Self::set_path_behaviour).
    pub fn url_for(&self, path: &str) -> String {
        let path = path.trim_start_matches('/');
        format!("http://{}/{path}", self.addr)
    }

    /// Answers every path without its own behaviour this way from the next request on (restarting the
    /// count of [`Behaviour::FailEvery`]).
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        lock(&self.shared.behaviours).set(behaviour);
    }

    /// Answers requests to exactly `path` (e.g. `/a`) this way from the next request on.
    pub fn set_path_behaviour(&self, path: &str, behaviour: Behaviour) {
        lock(&self.shared.behaviours).set_path(path, behaviour);
    }

    /// Removes every per-path behaviour: all paths follow the sink-wide one again.
    pub fn clear_path_behaviours(&self) {
        lock(&self.shared.behaviours).clear_paths();
    }

    /// The counters now.
    pub fn stats(&self) -> Stats {
        *self.shared.stats.borrow()
    }

    /// The delivered requests (answered 2xx), in the order they were answered.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.delivered).clone()
    }

    /// The failed requests (answered otherwise, or never), in the order they were answered (or, for
    /// [`Behaviour::Hang`], arrived).
    pub fn failed(&self) -> Vec<Received> {
        lock(&self.shared.failed).clone()
    }

    /// Every element of every delivered request, in order.
    pub fn delivered_elements(&self) -> Vec<Value> {
        lock(&self.shared.delivered)
            .iter()
            .flat_map(|received| received.elements.iter().cloned())
            .collect()
    }

    /// How many times each key was delivered, over the delivered elements for which `key` gives one:
    /// e.g. `sink.count_by(|e| e["id"].as_u64())` counts deliveries per message id.
    pub fn count_by<K, F>(&self, key: F) -> HashMap<K, usize>
    where
        K: Eq + Hash,
        F: Fn(&Value) -> Option<K>,
    {
        let mut counts = HashMap::new();
        for received in lock(&self.shared.delivered).iter() {
            for k in received.elements.iter().filter_map(&key) {
                *counts.entry(k).or_insert(0) += 1;
            }
        }
        counts
    }

    /// The keys delivered more than once, with their counts (see [`count_by`](Self::count_by)).
    pub fn duplicates_by<K, F>(&self, key: F) -> HashMap<K, usize>
    where
        K: Eq + Hash,
        F: Fn(&Value) -> Option<K>,
    {
        let mut counts = self.count_by(key);
        counts.retain(|_, count| *count > 1);
        counts
    }

    /// Forgets the recorded requests (the counters stay), e.g. between phases of a long demo.
    pub fn clear(&self) {
        lock(&self.shared.delivered).clear();
        lock(&self.shared.failed).clear();
    }

    /// Waits until `predicate` holds for the counters, re-checking on every change (no polling), for
    /// at most `timeout`. Returns the counters that satisfied it.
    pub async fn wait_until(
        &self,
        predicate: impl Fn(&Stats) -> bool,
        timeout: Duration,
    ) -> Result<Stats, WaitTimeout> {
        let mut stats = self.shared.stats.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            // The sender lives in `self`, so the channel cannot close while we wait.
            stats.wait_for(|s| predicate(s)).await.map(|s| *s).ok()
        })
        .await;
        match waited {
            Ok(Some(stats)) => Ok(stats),
            _ => Err(WaitTimeout {
                waited: timeout,
                last: self.stats(),
            }),
        }
    }

    /// Stops accepting, wakes hanging requests (they are answered 503), and waits up to a few seconds
    /// for open connections to finish. Calling it twice is harmless.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let task = lock(&self.task).take();
        if let Some(mut task) = task {
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => tracing::warn!(%error, "Sink server stopped with an error."),
                Ok(Err(error)) => tracing::warn!(%error, "Sink server task failed."),
                Err(_) => {
                    tracing::warn!(grace = ?SHUTDOWN_GRACE, "Sink connections still open after the grace period; abandoning them.");
                    task.abort();
                }
            }
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Counts a request in flight for as long as it is handled, even if the handler is dropped.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> Self {
        shared.stats.send_modify(|s| {
            s.requests += 1;
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
        });
        Self(Arc::clone(shared))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .stats
            .send_modify(|s| s.in_flight = s.in_flight.saturating_sub(1));
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method == Method::GET || method == Method::HEAD {
        return axum::Json(summary(&shared.stats.borrow())).into_response();
    }
    if method != Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "the sink accepts POSTed batches, and GET for its counters\n",
        )
            .into_response();
    }
    let _in_flight = InFlight::enter(&shared);
    let parsed = parse_envelopes(&headers, &body);
    let mut received = Received {
        received_at: SystemTime::now(),
        path: uri.path().to_owned(),
        idempotency_key: header(&headers, "idempotency-key"),
        route: header(&headers, "x-courier-route"),
        partition: header(&headers, "x-courier-partition").and_then(|p| p.trim().parse().ok()),
        offsets: header(&headers, "x-courier-offsets"),
        replay: header(&headers, "x-courier-replay").and_then(|p| p.trim().parse().ok()),
        content_type: header(&headers, CONTENT_TYPE.as_str()),
        headers,
        // Shared, not copied: the behaviour below reads the body too.
        body: body.clone(),
        envelopes: Vec::new(),
        elements: Vec::new(),
        body_error: None,
        answer: Answer::NoAnswer,
    };
    match parsed {
        Ok(envelopes) => {
            received.elements = envelopes.iter().map(|e| e["payload"].clone()).collect();
            received.envelopes = envelopes;
        }
        Err(error) => received.body_error = Some(error),
    }
    let reply = lock(&shared.behaviours).next(uri.path(), &body);
    let mut stop = shared.stop.clone();

    let garbage = matches!(reply, Reply::Garbage);
    let (status, body, retry_after) = match reply {
        Reply::Hang => {
            record(&shared, received);
            // Never answer, until the sink stops.
            let _ = stop.wait_for(|stop| *stop).await;
            return (StatusCode::SERVICE_UNAVAILABLE, "sink shutting down\n").into_response();
        }
        Reply::DelayThenOk(delay) => {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|stop| *stop) => {
                    return (StatusCode::SERVICE_UNAVAILABLE, "sink shutting down\n").into_response();
                }
            }
            (200, None, None)
        }
        Reply::Garbage => (200, None, None),
        Reply::Status {
            status,
            body,
            retry_after,
        } => (status, body, retry_after),
    };

    // A batch that cannot be read is refused, whatever the behaviour: it would be a courier bug.
    if (200..300).contains(&status) {
        if let Some(error) = received.body_error.clone() {
            received.answer = Answer::Status(400);
            record(&shared, received);
            return (StatusCode::BAD_REQUEST, format!("sink: {error}\n")).into_response();
        }
    }
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    received.answer = Answer::Status(code.as_u16());
    record(&shared, received);

    if garbage {
        let chunk = shared.garbage_chunk.clone();
        let stream = futures::stream::iter(
            (0..GARBAGE_CHUNKS).map(move |_| Ok::<_, Infallible>(chunk.clone())),
        );
        return (
            code,
            [(CONTENT_TYPE, "text/plain")],
            Body::from_stream(stream),
        )
            .into_response();
    }
    let text = body.unwrap_or_else(|| {
        format!(
            "sink: answering {status} as configured for {}\n",
            uri.path()
        )
    });
    let mut response = (code, text).into_response();
    if let Some(value) = retry_after.and_then(|v| v.parse().ok()) {
        response.headers_mut().insert(RETRY_AFTER, value);
    }
    response
}

/// Stores a request under delivered or failed by its answer, then updates the counters (so a waiter
/// woken by the counters finds the record).
fn record(shared: &Shared, received: Received) {
    let delivered = received.answer.is_success();
    let elements = received.elements.len() as u64;
    if delivered {
        lock(&shared.delivered).push(received);
    } else {
        lock(&shared.failed).push(received);
    }
    shared.stats.send_modify(|s| {
        if delivered {
            s.delivered += 1;
            s.delivered_elements += elements;
        } else {
            s.failed += 1;
        }
    });
}

fn summary(stats: &Stats) -> Value {
    json!({
        "requests": stats.requests,
        "delivered": stats.delivered,
        "delivered_elements": stats.delivered_elements,
        "failed": stats.failed,
        "in_flight": stats.in_flight,
        "max_in_flight": stats.max_in_flight,
    })
}
