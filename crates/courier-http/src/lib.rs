//! Deliver one batch to one HTTP destination: the request (or one per message), its idempotency key,
//! the classification of the answer, Retry-After, and the destination's protections (concurrency
//! limit, circuit breaker).
//!
//! # Layout
//! - `config`: [`DestinationConfig`], what an operator writes about a destination, and its checks.
//! - `batch`: the [`Batch`] a request carries, its ids (the per-message [`message_id`], always
//!   stable, and the batch's idempotency key, stable for the same bounds), and the [`batches`] splitter.
//! - `body`: what a destination receives: the message envelope (never lossy) in a JSON array or
//!   NDJSON, or one message's raw body and `X-Courier-*` values for `format = "per-message"`.
//! - `deliver`: the [`Deliverer`] and the [`Delivery`] it returns.
//! - `breaker`: the [`CircuitBreaker`] that pauses a destination failing continuously.
//! - `retry_after`: parsing `Retry-After` (seconds or HTTP-date).
//! - `resolve`: name resolution that answers the special-use `.invalid` domain without asking DNS.
//!
//! The decision "success, retry later, give up" is `courier_core::Disposition`; this crate only maps
//! HTTP and network outcomes onto it: 2xx succeeds; 408, 429 and 5xx other than 501 retry; any other
//! status (3xx and 4xx, redirects are not followed) fails permanently; connect errors, DNS failures,
//! timeouts, resets and unreadable bodies retry.

// Network code with no need for unsafe: keep it out entirely.
#![forbid(unsafe_code)]

mod batch;
mod body;
mod breaker;
mod config;
mod deliver;
mod resolve;
mod retry_after;

pub use batch::{batches, message_id, Batch};
pub use body::encode as encode_body;
pub use breaker::{Admission, CircuitBreaker, CircuitState};
pub use config::{ConfigError, DestinationConfig, Format};
pub use deliver::{BuildError, Deliverer, Delivery};
pub use retry_after::parse_retry_after;
