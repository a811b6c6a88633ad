//! Every integration test of courier-chaos in one binary (one link instead of one per file; ripgrep's
//! `tests/tests.rs` is the model). Each module is one concern; see its own docs.

mod faults;
mod incident8;
mod judge;
