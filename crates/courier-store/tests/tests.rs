//! Every integration test of courier-store in one binary (one link instead of one per file; ripgrep's
//! `tests/tests.rs` is the model). Each module is one concern; see its own docs.

mod changes;
mod concurrency;
mod fixture;
mod losses;
mod migrations;
mod model;
mod protocol;
mod quarantine;
mod routes;
mod timeouts;
mod tls;
