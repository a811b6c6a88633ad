//! courier's PostgreSQL store: pool with client-aligned timeouts, once-only migrations, the lease protocol.
