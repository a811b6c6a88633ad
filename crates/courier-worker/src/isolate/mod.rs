//! Poison isolation: what happens to a batch the destination refused for good.
//!
//! A refused batch is bisected (`bisect`) so that only the messages the destination refuses on their
//! own are quarantined (returned to the caller, which records them with the range's checkpoint) and the
//! rest of the batch is delivered. A "too large" answer (`too_large_statuses`, default 413) splits the
//! same way, whatever `on_poison` says: halving a batch changes no order.
//!
//! Owns the vocabulary of isolation and the decision whether a refusal is isolated at all: the route's
//! [`Policy`], the [`Refused`] messages and how an [`Isolation`] ended, and [`isolates`]. Nothing is
//! quarantined when the answer is about the request rather than its messages (3xx, 401, 403, 404, 405,
//! 407, 410, 501: credentials or URL), nor when every message of the batch is refused on its own: the
//! destination then refuses the route's data as a whole and the range fails as before, with that
//! reason. A retryable answer (5xx, 429, timeout, circuit open) ends the isolation at once: the range is
//! retried as usual and nothing is quarantined on a transient error.

mod bisect;

use std::time::Duration;

use courier_core::Message;
use courier_http::{Batch, Deliverer, Delivery};

use crate::config::OnPoison;

pub(crate) use bisect::isolate;

/// Extra requests one refused batch may cost before isolation gives up and the range fails. Enough for
/// several bad messages in a batch of a few hundred (2 * log2(500) is 18 per message).
pub(crate) const MAX_EXTRA_REQUESTS: usize = 64;

/// Where batches go: the [`Deliverer`], or a scripted destination in tests.
pub(crate) trait Destination {
    async fn deliver(&self, batch: &Batch<'_>) -> Delivery;
}

impl Destination for Deliverer {
    async fn deliver(&self, batch: &Batch<'_>) -> Delivery {
        Deliverer::deliver(self, batch).await
    }
}

/// How to isolate: the route's policy and the destination's "too large" statuses.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy<'a> {
    pub route: &'a str,
    pub destination: &'a str,
    pub on_poison: OnPoison,
    pub too_large_statuses: &'a [u16],
    pub max_extra_requests: usize,
}

impl<'a> Policy<'a> {
    pub(crate) fn of(route: &'a crate::Route) -> Self {
        Self {
            route: &route.config.name,
            destination: &route.config.destination,
            on_poison: route.config.on_poison,
            too_large_statuses: &route.deliverer.config().too_large_statuses,
            max_extra_requests: MAX_EXTRA_REQUESTS,
        }
    }
}

/// One message the destination refused on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub message: Message,
    /// The destination's answer (status and the start of its body), or why Kafka's record could not be
    /// decoded.
    pub reason: String,
    pub status: Option<u16>,
    /// Kafka's record could not be decoded (the destination never saw it): `message` holds only its
    /// partition and offset, and it gets no dead letter (there are no bytes to write).
    pub undecodable: bool,
}

/// How an isolation ended.
#[derive(Debug)]
pub(crate) enum Isolation {
    /// Every message of the batch was delivered, except `quarantined`.
    Isolated { quarantined: Vec<Refused> },
    /// A transient answer: retry the range as today.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The range fails: the route keeps order (`fail-range`), or isolation ran out of requests.
    Failed { reason: String },
}

/// Whether a batch refused with `refusal` is bisected, rather than failing its range at once: not for an
/// answer about the request rather than its messages (credentials, URL, a redirect), which would refuse
/// every half too, and with `on_poison = "fail-range"` only for "too large".
pub(crate) fn isolates(refusal: &Delivery, policy: &Policy<'_>) -> bool {
    let Some(status) = refusal.status else {
        return false;
    };
    if matches!(status, 300..=399 | 401 | 403 | 404 | 405 | 407 | 410 | 501) {
        return false;
    }
    policy.on_poison == OnPoison::Quarantine || policy.too_large_statuses.contains(&status)
}
