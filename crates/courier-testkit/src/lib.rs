//! Test-only helpers: a database per test, unique topics, a recording HTTP destination.
