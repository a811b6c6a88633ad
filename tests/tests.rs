//! Every end-to-end test of the courier binary and its crates in one binary (one link instead of one
//! per file; ripgrep's `tests/tests.rs` is the model): real PostgreSQL, Kafka, HTTP destinations and
//! Chromium. Each module is one concern; see its own docs.

mod common;

mod admin;
mod deploy;
mod operations;
mod pipeline;
mod poison;
mod processes;
