//! The only crate that sees rdkafka: read exactly [start, end) of a partition, high watermarks, a producer.
