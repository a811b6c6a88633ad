//! A recording HTTP destination whose answers can be switched at runtime: the demo, the end-to-end
//! probe, tests and chaos runs deliver batches to it and then judge what it received.
//!
//! # Layout
//! - `server`: the [`Sink`] (an axum server in a background task), its records and the event wait
//!   ([`Sink::wait_until`]) that tests synchronise on instead of sleeping.
//! - [`behaviour`]: how it answers ([`Behaviour`]), sink-wide or per path, so one server can host
//!   several routes' destinations (`/a`, `/b`, ...) that behave differently.
//! - [`record`]: what it remembers ([`Received`], [`Answer`], [`Stats`]) and how requests (a JSON
//!   array or NDJSON of envelopes, or one per-message request) are read back into message envelopes
//!   and their payloads (the elements).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use courier_sink::{Behaviour, Sink};
//!
//! let sink = Sink::start("127.0.0.1:0".parse()?).await?;
//! sink.set_path_behaviour("/b", Behaviour::FailEvery { n: 2, status: 503 });
//! // ... point destinations at sink.url_for("/a") and sink.url_for("/b"), run courier ...
//! sink.wait_until(|s| s.delivered_elements >= 1000, Duration::from_secs(30)).await?;
//! let duplicates = sink.duplicates_by(|element| element["id"].as_u64());
//! sink.shutdown().await;
//! # Ok(()) }
//! ```

// A test server with no need for unsafe: keep it out entirely.
#![forbid(unsafe_code)]

pub mod behaviour;
pub mod record;
mod server;

pub use behaviour::Behaviour;
pub use record::{Answer, Received, Stats};
pub use server::{Sink, SinkError, WaitTimeout, MAX_BODY_BYTES};
