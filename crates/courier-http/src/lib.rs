//! Deliver one batch to one HTTP destination: request, idempotency key, classification, Retry-After.
