//! A recording HTTP destination.
