//! The [`Deliverer`]: one per destination, it POSTs a batch (as one body of envelopes, or one request
//! per message) with its headers, and turns whatever happens into a [`Delivery`] whose
//! [`Disposition`] decides the range's fate.
//!
//! Before each request it consults, in order: the Retry-After gate (the destination asked everyone to
//! wait), the per-destination concurrency limit (a semaphore held for the whole request), and the
//! circuit breaker (the destination is paused after failing continuously). A refusal sends nothing
//! and is retryable.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use courier_core::Disposition;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use tokio::sync::Semaphore;

use crate::batch::{message_id, Batch};
use crate::body::{encode, headers_json_ascii, is_header_safe, per_message_body};
use crate::breaker::{Admission, CircuitBreaker, CircuitState};
use crate::config::{ConfigError, DestinationConfig, Format};
use crate::resolve::Resolver;
use crate::retry_after::parse_retry_after;

/// At most this many bytes of a response body are read (to let the connection be reused); the rest is
/// never buffered and the connection is closed instead.
pub const BODY_READ_LIMIT: usize = 64 * 1024;

/// At most this many bytes of an error response's body go into the [`Delivery::reason`].
pub const REASON_BODY_BYTES: usize = 512;

/// Longest reason text kept for a network error chain.
const REASON_MAX_CHARS: usize = 1024;

/// Why a [`Deliverer`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the HTTP client for destination {url:?} could not be built ({source}): the TLS library (native-tls, OpenSSL on Linux) may be missing; install libssl and restart")]
    Client {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

/// The outcome of one [`Deliverer::deliver`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// What to do with the range: checkpoint, retry later, or fail it.
    pub disposition: Disposition,
    /// The destination's HTTP status, when it answered.
    pub status: Option<u16>,
    /// How long the request took, from sending until the response was read (zero when nothing was
    /// attempted). Time spent waiting for a concurrency slot is not included.
    pub elapsed: Duration,
    /// A short human reason, fit for the range's `last_error`: the status and at most the first
    /// [`REASON_BODY_BYTES`] bytes of the response body, or the network error.
    pub reason: String,
    /// Whether a request was attempted (even if connecting failed). `false` when the deliverer refused
    /// without trying (circuit open, Retry-After gate, headers that cannot be sent) or the batch was
    /// empty.
    pub attempted: bool,
}

impl Delivery {
    fn unsent(disposition: Disposition, reason: String) -> Self {
        Self {
            disposition,
            status: None,
            elapsed: Duration::ZERO,
            reason,
            attempted: false,
        }
    }

    fn refused(reason: String, retry_after: Option<Duration>) -> Self {
        Self::unsent(
            Disposition::Retry {
                reason: reason.clone(),
                retry_after,
            },
            reason,
        )
    }
}

/// Delivers batches to one destination. Build it once per destination and clone it freely: clones
/// share the HTTP client (and its connection pool), the concurrency limit, the circuit breaker and the
/// Retry-After gate.
#[derive(Debug, Clone)]
pub struct Deliverer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: DestinationConfig,
    url: reqwest::Url,
    client: reqwest::Client,
    headers: HeaderMap,
    slots: Semaphore,
    breaker: Mutex<CircuitBreaker>,
    blocked_until: Mutex<Option<Instant>>,
}

/// The one HTTP client every destination of the process sends with. Building a client loads the
/// system's TLS roots and sets up a TLS context (about 150 ms each, measured): one per destination made a
/// worker with 1,000 destinations take minutes to start. What differs per destination is per request
/// (the timeout) or enforced by the [`Deliverer`] (concurrency, by its semaphore); connections are
/// pooled per host either way. Redirects are not followed (a 3xx fails the range permanently) and
/// environment proxy settings are ignored.
fn shared_client() -> Result<reqwest::Client, reqwest::Error> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(client) = CLIENT.get() {
        return Ok(client.clone());
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Resolver)
        .user_agent(concat!("courier/", env!("CARGO_PKG_VERSION")))
        .pool_max_idle_per_host(IDLE_CONNECTIONS_PER_HOST)
        .build()?;
    Ok(CLIENT.get_or_init(|| client).clone())
}

/// Idle connections kept per destination host (a destination's `max_in_flight` bounds those in use).
const IDLE_CONNECTIONS_PER_HOST: usize = 64;

/// Locks a mutex that is only ever held for a few instructions; a panic elsewhere cannot leave these
/// states half-updated in a way that matters, so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Deliverer {
    /// Validates `config`; requests go out through the process's one client ([`shared_client`]).
    pub fn new(mut config: DestinationConfig) -> Result<Self, BuildError> {
        config.validate()?;
        if config.format == Format::PerMessage {
            // One request per message: batches of one let a failure resume right after the last
            // message delivered instead of resending the batch's earlier ones.
            config.max_batch_messages = 1;
        }
        let url = config.parsed_url()?;
        let headers: HeaderMap = config.header_pairs()?.into_iter().collect();
        let client = shared_client().map_err(|source| BuildError::Client {
            url: config.url.clone(),
            source,
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                slots: Semaphore::new(config.max_in_flight),
                breaker: Mutex::new(CircuitBreaker::new(
                    config.pause_after_failures,
                    config.pause_for,
                )),
                blocked_until: Mutex::new(None),
                url,
                client,
                headers,
                config,
            }),
        })
    }

    /// The destination's settings as in effect (with `format = "per-message"`, `max_batch_messages`
    /// is 1).
    pub fn config(&self) -> &DestinationConfig {
        &self.inner.config
    }

    /// Until when the destination asked to be left alone (the latest `Retry-After` of a 429 or 503,
    /// or [`block_until`](Self::block_until)); `None` once that time has passed.
    pub fn blocked_until(&self) -> Option<Instant> {
        let now = Instant::now();
        lock(&self.inner.blocked_until).filter(|until| *until > now)
    }

    /// Refuses requests until `until` (or later, if already blocked longer): how a Retry-After seen by
    /// another worker, shared through the store, reaches this one.
    pub fn block_until(&self, until: Instant) {
        let mut blocked = lock(&self.inner.blocked_until);
        *blocked = Some(blocked.map_or(until, |current| current.max(until)));
    }

    /// The circuit breaker's state now.
    pub fn circuit_state(&self) -> CircuitState {
        lock(&self.inner.breaker).state(Instant::now())
    }

    /// POSTs `batch` (one request, or with `format = "per-message"` one per message in offset order,
    /// stopping at the first that does not succeed) and classifies the outcome; never panics on
    /// anything the network or the destination does. An empty batch sends nothing and succeeds.
    pub async fn deliver(&self, batch: &Batch<'_>) -> Delivery {
        if batch.messages.is_empty() {
            return Delivery::unsent(
                Disposition::Success,
                "empty batch: nothing to send".to_owned(),
            );
        }
        // Refuse cheaply before queueing for a slot, and again once a slot is held: the gate or the
        // breaker may have closed while this call waited.
        if let Err(refusal) = self.admit(Instant::now(), false) {
            return refusal;
        }
        let Ok(_slot) = self.inner.slots.acquire().await else {
            return Delivery::refused("deliverer closed: no request sent".to_owned(), None);
        };
        let is_probe = match self.admit(Instant::now(), true) {
            Ok(is_probe) => is_probe,
            Err(refusal) => return refusal,
        };
        // From here on a probe must be reported or given back.
        let mut probe = ProbeGuard {
            breaker: &self.inner.breaker,
            armed: is_probe,
        };
        let requests = match self.requests(batch) {
            Ok(requests) => requests,
            Err(reason) => {
                return Delivery::unsent(
                    Disposition::Permanent {
                        reason: reason.clone(),
                    },
                    reason,
                )
            }
        };
        let sent_at = Instant::now();
        let (mut disposition, mut status, mut reason) = (Disposition::Success, None, String::new());
        for request in requests {
            (disposition, status, reason) = self.send(request).await;
            if disposition != Disposition::Success {
                break;
            }
        }
        let elapsed = sent_at.elapsed();
        probe.armed = false;
        self.record(&disposition, status);
        Delivery {
            disposition,
            status,
            elapsed,
            reason,
            attempted: true,
        }
    }

    /// Whether a request may be sent now (`Ok(true)` for a half-open circuit's probe), or the refusal.
    /// Only with `take_probe` is the probe actually taken.
    fn admit(&self, now: Instant, take_probe: bool) -> Result<bool, Delivery> {
        if let Some(until) = lock(&self.inner.blocked_until).filter(|until| *until > now) {
            let wait = until - now;
            return Err(Delivery::refused(
                format!("destination asked to wait (Retry-After): no request sent for another {wait:.1?}"),
                Some(wait),
            ));
        }
        let mut breaker = lock(&self.inner.breaker);
        let admission = if take_probe {
            breaker.admit(now)
        } else {
            breaker.peek(now)
        };
        match admission {
            Admission::Allowed => Ok(false),
            Admission::Probe => Ok(true),
            Admission::Refused { until: Some(until), failures } => Err(Delivery::refused(
                format!("destination paused (circuit open) after {failures} consecutive failures"),
                Some(until.saturating_duration_since(now)),
            )),
            Admission::Refused { until: None, failures } => Err(Delivery::refused(
                format!(
                    "destination paused (circuit half-open, a probe request is in flight) after {failures} consecutive failures"
                ),
                None,
            )),
        }
    }

    /// The requests that deliver `batch`: one for a batch format, one per message for per-message.
    /// An `Err` is a header value that cannot be sent (a route name that is not visible ASCII).
    fn requests(&self, batch: &Batch<'_>) -> Result<Vec<reqwest::RequestBuilder>, String> {
        let format = self.inner.config.format;
        let mut common = self.inner.headers.clone();
        insert(&mut common, "x-courier-route", batch.route.to_owned())?;
        common.insert(
            HeaderName::from_static("x-courier-partition"),
            HeaderValue::from(batch.partition),
        );
        if let Some(replay_id) = batch.replay_id {
            common.insert(
                HeaderName::from_static("x-courier-replay"),
                HeaderValue::from(replay_id),
            );
        }
        let post = |headers: HeaderMap, body: Vec<u8>| {
            self.inner
                .client
                .post(self.inner.url.clone())
                .timeout(self.inner.config.timeout)
                .headers(headers)
                .body(body)
        };
        if format != Format::PerMessage {
            let mut headers = common;
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            );
            insert(&mut headers, "idempotency-key", batch.idempotency_key())?;
            insert(&mut headers, "x-courier-offsets", batch.offsets())?;
            return Ok(vec![post(headers, encode(batch, format))]);
        }
        batch
            .messages
            .iter()
            .map(|message| {
                let mut headers = common.clone();
                let (content_type, body) = per_message_body(message);
                match content_type {
                    Some(content_type) => {
                        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
                    }
                    None => {
                        headers.insert(
                            HeaderName::from_static("x-courier-tombstone"),
                            HeaderValue::from_static("true"),
                        );
                    }
                }
                let id = message_id(batch.route, message.partition, message.offset);
                insert(&mut headers, "idempotency-key", id.clone())?;
                insert(&mut headers, "x-courier-id", id)?;
                insert(&mut headers, "x-courier-topic", batch.topic.to_owned())?;
                headers.insert(
                    HeaderName::from_static("x-courier-offset"),
                    HeaderValue::from(message.offset),
                );
                let offsets = format!("{}-{}", message.offset, message.offset + 1);
                insert(&mut headers, "x-courier-offsets", offsets)?;
                if let Some(ms) = message.timestamp_ms {
                    headers.insert(
                        HeaderName::from_static("x-courier-timestamp"),
                        HeaderValue::from(ms),
                    );
                }
                match message.key.as_deref() {
                    Some(key) if is_header_safe(key) => {
                        insert(
                            &mut headers,
                            "x-courier-key",
                            String::from_utf8_lossy(key).into(),
                        )?;
                    }
                    Some(key) => insert(&mut headers, "x-courier-key-base64", BASE64.encode(key))?,
                    None => {}
                }
                if !message.headers.is_empty() {
                    let json = headers_json_ascii(&message.headers);
                    insert(&mut headers, "x-courier-headers", json)?;
                }
                Ok(post(headers, body))
            })
            .collect()
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (Disposition, Option<u16>, String) {
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(error) => {
                let disposition = classify_error(&error, self.inner.config.timeout);
                let reason = reason_of(&disposition);
                return (disposition, None, reason);
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| {
                parse_retry_after(value, SystemTime::now(), self.inner.config.max_retry_after)
            });
        let mut reason = status_text(status);
        if let Some(wait) = retry_after {
            reason.push_str(&format!(" (Retry-After {wait:?})"));
        }
        let disposition = match read_bounded(&mut response).await {
            Ok(body) => {
                if !status.is_success() && !body.is_empty() {
                    reason.push_str(": ");
                    reason.push_str(&body);
                }
                Disposition::from_http_status(status.as_u16(), reason.clone(), retry_after)
            }
            Err(error) => {
                reason.push_str(&format!(
                    ", then reading the response body failed: {}",
                    error_chain(&error, self.inner.config.timeout)
                ));
                if status.is_success() {
                    // The answer is incomplete: whether the batch was applied is unknown, so send it
                    // again (the idempotency key lets the destination drop the repeat).
                    Disposition::Retry {
                        reason: reason.clone(),
                        retry_after,
                    }
                } else {
                    Disposition::from_http_status(status.as_u16(), reason.clone(), retry_after)
                }
            }
        };
        (disposition, Some(status.as_u16()), reason)
    }

    /// Feeds an outcome to the breaker and the Retry-After gate.
    fn record(&self, disposition: &Disposition, status: Option<u16>) {
        match disposition {
            // A permanent answer is about the batch, not the destination's health: it answered.
            Disposition::Success | Disposition::Permanent { .. } => {
                lock(&self.inner.breaker).record_success()
            }
            Disposition::Retry {
                reason,
                retry_after,
            } => {
                let now = Instant::now();
                {
                    let mut breaker = lock(&self.inner.breaker);
                    let was_open = matches!(breaker.state(now), CircuitState::Open { .. });
                    breaker.record_failure(now);
                    if let (false, CircuitState::Open { until, failures }) =
                        (was_open, breaker.state(now))
                    {
                        tracing::warn!(
                            url = %self.inner.url,
                            failures,
                            pause = ?until.saturating_duration_since(now),
                            last_error = %reason,
                            "Destination paused (circuit open) after consecutive failures."
                        );
                    }
                }
                if let (Some(429 | 503), Some(wait)) = (status, retry_after) {
                    *lock(&self.inner.blocked_until) = Some(now + *wait);
                }
            }
        }
    }
}

/// Sets header `name` (a static lowercase name) to `text`, or says why it cannot be sent.
fn insert(headers: &mut HeaderMap, name: &'static str, text: String) -> Result<(), String> {
    let value = HeaderValue::try_from(text.as_str()).map_err(|_| {
        format!("{name} {text:?} cannot be sent as an HTTP header value: route and topic names must be visible ASCII")
    })?;
    headers.insert(HeaderName::from_static(name), value);
    Ok(())
}

/// Gives a half-open circuit's probe back if the request never reported an outcome (the `deliver`
/// future was dropped mid-request, or the request could not be built).
struct ProbeGuard<'a> {
    breaker: &'a Mutex<CircuitBreaker>,
    armed: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(self.breaker).probe_abandoned();
        }
    }
}

fn reason_of(disposition: &Disposition) -> String {
    match disposition {
        Disposition::Success => String::new(),
        Disposition::Retry { reason, .. } | Disposition::Permanent { reason } => reason.clone(),
    }
}

fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(text) => format!("HTTP {} {text}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    }
}

/// Reads at most [`BODY_READ_LIMIT`] bytes of the body, keeping the first [`REASON_BODY_BYTES`] as a
/// one-line text.
async fn read_bounded(response: &mut reqwest::Response) -> Result<String, reqwest::Error> {
    let mut kept = Vec::with_capacity(REASON_BODY_BYTES);
    let mut read = 0usize;
    let mut truncated = false;
    while let Some(chunk) = response.chunk().await? {
        read += chunk.len();
        let room = REASON_BODY_BYTES - kept.len();
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if chunk.len() > room {
            truncated = true;
        }
        if read >= BODY_READ_LIMIT {
            truncated = true;
            break;
        }
    }
    let mut text: String = String::from_utf8_lossy(&kept)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned();
    if truncated {
        text.push_str(" …");
    }
    Ok(text)
}

/// Network failures are retryable (connect, DNS, timeout, reset, unreadable body); only a request
/// that could not even be built is permanent.
fn classify_error(error: &reqwest::Error, timeout: Duration) -> Disposition {
    let detail = error_chain(error, timeout);
    if error.is_builder() {
        return Disposition::Permanent {
            reason: format!("the request could not be built: {detail}"),
        };
    }
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_dns() {
        "DNS lookup failed"
    } else if error.is_connect() {
        "connect failed"
    } else if error.is_body() || error.is_decode() {
        "reading the response failed"
    } else {
        "request failed"
    };
    Disposition::Retry {
        reason: format!("{what}: {detail}"),
        retry_after: None,
    }
}

/// The error and its sources on one line, bounded, the URL left out (the destination is known).
fn error_chain(error: &reqwest::Error, timeout: Duration) -> String {
    let mut parts = vec![text_without_url(error)];
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        source = cause.source();
    }
    if error.is_timeout() {
        parts.push(format!("no complete answer within the {timeout:?} timeout"));
    }
    let mut text = parts.join(": ");
    if text.chars().count() > REASON_MAX_CHARS {
        text = text.chars().take(REASON_MAX_CHARS).collect::<String>() + " …";
    }
    text
}

/// `reqwest::Error`'s own text without the URL, which the caller already knows.
fn text_without_url(error: &reqwest::Error) -> String {
    let text = error.to_string();
    match error.url() {
        Some(url) => text.replace(&format!(" for url ({url})"), ""),
        None => text,
    }
}
