//! The delivery runtime: plan, lease, read, deliver, checkpoint, renew, drain.
