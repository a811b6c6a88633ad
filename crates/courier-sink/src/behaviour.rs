//! How the sink answers: the [`Behaviour`] an operator or a test switches at runtime, for the whole
//! sink or for one path.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// How the sink answers a batch. Only 2xx answers count as delivered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Behaviour {
    /// `200 OK`: the batch is delivered.
    #[default]
    Ok,
    /// Answer this status with a short text body naming it.
    Status(u16),
    /// Answer this status with this body (e.g. a long one, to check how much of it a client keeps).
    StatusWithBody(u16, String),
    /// Answer this status with `Retry-After: <seconds>`.
    StatusWithRetryAfter(u16, u64),
    /// Answer this status with `Retry-After: <HTTP-date>`.
    StatusWithRetryAfterDate(u16, SystemTime),
    /// Wait this long, then answer `200 OK` (the batch counts as delivered when the answer is given,
    /// even if the client gave up waiting: the realistic "applied, but the client timed out" case).
    Delay(Duration),
    /// Accept the request and never answer (until the sink shuts down). Recorded as failed, with
    /// [`Answer::NoAnswer`](crate::Answer::NoAnswer), as soon as it arrives.
    Hang,
    /// Every `n`th request (the `n`th, `2n`th, ...) gets `status`; the others get `200 OK`. Counting
    /// restarts when the behaviour is set. `n = 0` never fails.
    FailEvery { n: u64, status: u16 },
    /// Answer `status` to any batch whose body contains `needle` (a poison message), `200 OK` to the
    /// others.
    RefuseContaining { needle: String, status: u16 },
    /// Answer `413 Payload Too Large` to a body of more than `bytes` bytes, `200 OK` to the others.
    TooLargeOver { bytes: usize },
    /// `200 OK` with a huge (16 GiB, generated as it is sent) body that is not JSON: a client must not
    /// buffer it whole. The batch counts as delivered.
    Garbage,
}

/// What one request is answered, decided when it arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Status {
        status: u16,
        body: Option<String>,
        retry_after: Option<String>,
    },
    DelayThenOk(Duration),
    Hang,
    Garbage,
}

impl Reply {
    fn status(status: u16) -> Self {
        Self::Status {
            status,
            body: None,
            retry_after: None,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Slot {
    behaviour: Behaviour,
    requests: u64,
}

impl Slot {
    fn new(behaviour: Behaviour) -> Self {
        Self {
            behaviour,
            requests: 0,
        }
    }

    fn next(&mut self, body: &[u8]) -> Reply {
        self.requests += 1;
        match &self.behaviour {
            Behaviour::Ok => Reply::status(200),
            Behaviour::Status(status) => Reply::status(*status),
            Behaviour::StatusWithBody(status, body) => Reply::Status {
                status: *status,
                body: Some(body.clone()),
                retry_after: None,
            },
            Behaviour::StatusWithRetryAfter(status, seconds) => Reply::Status {
                status: *status,
                body: None,
                retry_after: Some(seconds.to_string()),
            },
            Behaviour::StatusWithRetryAfterDate(status, at) => Reply::Status {
                status: *status,
                body: None,
                retry_after: Some(httpdate::fmt_http_date(*at)),
            },
            Behaviour::Delay(delay) => Reply::DelayThenOk(*delay),
            Behaviour::Hang => Reply::Hang,
            Behaviour::FailEvery { n, status } => {
                if *n > 0 && self.requests % n == 0 {
                    Reply::status(*status)
                } else {
                    Reply::status(200)
                }
            }
            Behaviour::RefuseContaining { needle, status } => {
                let needle = needle.as_bytes();
                let found = !needle.is_empty() && body.windows(needle.len()).any(|w| w == needle);
                Reply::status(if found { *status } else { 200 })
            }
            Behaviour::TooLargeOver { bytes } => {
                Reply::status(if body.len() > *bytes { 413 } else { 200 })
            }
            Behaviour::Garbage => Reply::Garbage,
        }
    }
}

/// The sink-wide behaviour and the per-path overrides.
#[derive(Debug, Default)]
pub(crate) struct Behaviours {
    default: Slot,
    paths: HashMap<String, Slot>,
}

impl Behaviours {
    pub(crate) fn set(&mut self, behaviour: Behaviour) {
        self.default = Slot::new(behaviour);
    }

    pub(crate) fn set_path(&mut self, path: &str, behaviour: Behaviour) {
        self.paths.insert(path.to_owned(), Slot::new(behaviour));
    }

    pub(crate) fn clear_paths(&mut self) {
        self.paths.clear();
    }

    /// The reply to the next request on `path`, whose body is `body`.
    pub(crate) fn next(&mut self, path: &str, body: &[u8]) -> Reply {
        self.paths
            .get_mut(path)
            .unwrap_or(&mut self.default)
            .next(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_every_counts_per_slot() {
        let mut behaviours = Behaviours::default();
        behaviours.set(Behaviour::FailEvery { n: 2, status: 503 });
        behaviours.set_path("/b", Behaviour::FailEvery { n: 3, status: 500 });
        let statuses = |b: &mut Behaviours, path: &str| -> Vec<u16> {
            (0..6)
                .map(|_| match b.next(path, b"[]") {
                    Reply::Status { status, .. } => status,
                    other => panic!("unexpected {other:?}"),
                })
                .collect()
        };
        assert_eq!(
            statuses(&mut behaviours, "/a"),
            [200, 503, 200, 503, 200, 503]
        );
        assert_eq!(
            statuses(&mut behaviours, "/b"),
            [200, 200, 500, 200, 200, 500]
        );
        behaviours.set(Behaviour::FailEvery { n: 0, status: 503 });
        assert_eq!(statuses(&mut behaviours, "/a"), [200; 6]);
    }

    #[test]
    fn poison_and_size_answers_depend_on_the_body() {
        let mut behaviours = Behaviours::default();
        let status = |b: &mut Behaviours, body: &[u8]| match b.next("/", body) {
            Reply::Status { status, .. } => status,
            other => panic!("unexpected {other:?}"),
        };
        behaviours.set(Behaviour::RefuseContaining {
            needle: "\"poison\"".into(),
            status: 400,
        });
        assert_eq!(status(&mut behaviours, br#"[{"a":1},{"b":"poison"}]"#), 400);
        assert_eq!(status(&mut behaviours, br#"[{"a":1}]"#), 200);
        behaviours.set(Behaviour::TooLargeOver { bytes: 10 });
        assert_eq!(status(&mut behaviours, b"[1,2,3,4,5,6]"), 413);
        assert_eq!(status(&mut behaviours, b"[1,2]"), 200);
    }
}
