//! The circuit breaker that pauses a destination failing continuously, so it stops taking every
//! worker's slots. A pure state machine: the caller passes the time in, which keeps it testable.
//!
//! ```text
//!            N consecutive failures              pause_for elapsed
//!   Closed ─────────────────────────▶ Open ───────────────────────▶ HalfOpen (one probe)
//!     ▲                                 ▲                                │
//!     │            probe fails          └────────────────────────────────┤
//!     └──────────────────────────────────────────────────────────────────┘
//!                                  probe succeeds
//! ```

use std::time::{Duration, Instant};

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Requests flow; consecutive failures are counted.
    Closed,
    /// Paused until `until`, after `failures` consecutive failures: no request is sent.
    Open { until: Instant, failures: u32 },
    /// The pause is over: exactly one probe request is let through; the others are refused until its
    /// outcome is known.
    HalfOpen {
        probe_in_flight: bool,
        failures: u32,
    },
}

/// The breaker's answer to "may I send a request now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send it: the circuit is closed.
    Allowed,
    /// Send it as the single probe of a half-open circuit; report its outcome (or that it was
    /// abandoned) so the breaker can decide.
    Probe,
    /// Do not send. `until` is when the pause ends (`None` while another probe is in flight); the
    /// circuit opened after `failures` consecutive failures.
    Refused {
        until: Option<Instant>,
        failures: u32,
    },
}

/// Closed -> after N consecutive failures open for `pause_for` -> half-open lets exactly one probe
/// through -> its success closes, its failure re-opens.
///
/// A success reported at any time (even by a request sent before the circuit opened) closes the
/// circuit: the destination answered. A threshold of 0 disables the breaker: it never opens.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    threshold: u32,
    pause_for: Duration,
    consecutive_failures: u32,
    state: CircuitState,
}

impl CircuitBreaker {
    /// A closed breaker that opens after `threshold` consecutive failures (0: never) for `pause_for`.
    pub fn new(threshold: u32, pause_for: Duration) -> Self {
        Self {
            threshold,
            pause_for,
            consecutive_failures: 0,
            state: CircuitState::Closed,
        }
    }

    /// The state as of `now`: an open circuit whose pause has ended reads as half-open.
    pub fn state(&self, now: Instant) -> CircuitState {
        match self.state {
            CircuitState::Open { until, failures } if now >= until => CircuitState::HalfOpen {
                probe_in_flight: false,
                failures,
            },
            state => state,
        }
    }

    /// Failures since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// What [`admit`](Self::admit) would answer, without taking the probe.
    pub fn peek(&self, now: Instant) -> Admission {
        match self.state(now) {
            CircuitState::Closed => Admission::Allowed,
            CircuitState::HalfOpen {
                probe_in_flight: false,
                ..
            } => Admission::Probe,
            CircuitState::HalfOpen {
                probe_in_flight: true,
                failures,
            } => Admission::Refused {
                until: None,
                failures,
            },
            CircuitState::Open { until, failures } => Admission::Refused {
                until: Some(until),
                failures,
            },
        }
    }

    /// Asks to send one request at `now`. A [`Admission::Probe`] marks the probe as in flight.
    pub fn admit(&mut self, now: Instant) -> Admission {
        let admission = self.peek(now);
        if admission == Admission::Probe {
            self.state = CircuitState::HalfOpen {
                probe_in_flight: true,
                failures: self.consecutive_failures,
            };
        }
        admission
    }

    /// The destination answered in a way that shows it works: close the circuit.
    pub fn record_success(&mut self) {
        self.consecutive_failures = 0;
        self.state = CircuitState::Closed;
    }

    /// A request failed at `now` in a way that suggests the destination is unwell.
    pub fn record_failure(&mut self, now: Instant) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        match self.state(now) {
            CircuitState::Closed => {
                if self.threshold > 0 && self.consecutive_failures >= self.threshold {
                    self.open(now);
                }
            }
            // A late failure of a request sent before the pause: the pause already covers it.
            CircuitState::Open { .. } => {}
            CircuitState::HalfOpen { .. } => self.open(now),
        }
    }

    /// The probe ended without an outcome (its caller gave up or was cancelled): let another probe
    /// through instead of staying half-open forever.
    pub fn probe_abandoned(&mut self) {
        if let CircuitState::HalfOpen { failures, .. } = self.state {
            self.state = CircuitState::HalfOpen {
                probe_in_flight: false,
                failures,
            };
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = CircuitState::Open {
            until: now + self.pause_for,
            failures: self.consecutive_failures,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAUSE: Duration = Duration::from_secs(10);

    #[test]
    fn opens_after_n_consecutive_failures() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(3, PAUSE);
        for _ in 0..2 {
            assert_eq!(breaker.admit(t0), Admission::Allowed);
            breaker.record_failure(t0);
        }
        assert_eq!(breaker.state(t0), CircuitState::Closed);
        breaker.record_failure(t0);
        assert_eq!(
            breaker.state(t0),
            CircuitState::Open {
                until: t0 + PAUSE,
                failures: 3
            }
        );
        assert_eq!(
            breaker.admit(t0 + PAUSE / 2),
            Admission::Refused {
                until: Some(t0 + PAUSE),
                failures: 3
            }
        );
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(3, PAUSE);
        breaker.record_failure(t0);
        breaker.record_failure(t0);
        breaker.record_success();
        breaker.record_failure(t0);
        breaker.record_failure(t0);
        assert_eq!(breaker.state(t0), CircuitState::Closed);
        assert_eq!(breaker.consecutive_failures(), 2);
    }

    fn opened(t0: Instant) -> CircuitBreaker {
        let mut breaker = CircuitBreaker::new(2, PAUSE);
        breaker.record_failure(t0);
        breaker.record_failure(t0);
        breaker
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through() {
        let t0 = Instant::now();
        let mut breaker = opened(t0);
        let later = t0 + PAUSE;
        assert_eq!(breaker.peek(later), Admission::Probe);
        assert_eq!(breaker.admit(later), Admission::Probe);
        assert_eq!(
            breaker.admit(later),
            Admission::Refused {
                until: None,
                failures: 2
            }
        );
        assert_eq!(
            breaker.state(later),
            CircuitState::HalfOpen {
                probe_in_flight: true,
                failures: 2
            }
        );
    }

    #[test]
    fn a_successful_probe_closes() {
        let t0 = Instant::now();
        let mut breaker = opened(t0);
        assert_eq!(breaker.admit(t0 + PAUSE), Admission::Probe);
        breaker.record_success();
        assert_eq!(breaker.state(t0 + PAUSE), CircuitState::Closed);
        assert_eq!(breaker.admit(t0 + PAUSE), Admission::Allowed);
        assert_eq!(breaker.consecutive_failures(), 0);
    }

    #[test]
    fn a_failed_probe_reopens_for_another_pause() {
        let t0 = Instant::now();
        let mut breaker = opened(t0);
        let t1 = t0 + PAUSE + Duration::from_secs(1);
        assert_eq!(breaker.admit(t1), Admission::Probe);
        breaker.record_failure(t1);
        assert_eq!(
            breaker.state(t1),
            CircuitState::Open {
                until: t1 + PAUSE,
                failures: 3
            }
        );
        assert_eq!(breaker.admit(t1 + PAUSE), Admission::Probe);
    }

    #[test]
    fn an_abandoned_probe_frees_the_slot() {
        let t0 = Instant::now();
        let mut breaker = opened(t0);
        assert_eq!(breaker.admit(t0 + PAUSE), Admission::Probe);
        breaker.probe_abandoned();
        assert_eq!(breaker.admit(t0 + PAUSE), Admission::Probe);
    }

    #[test]
    fn late_failures_do_not_extend_the_pause() {
        let t0 = Instant::now();
        let mut breaker = opened(t0);
        breaker.record_failure(t0 + Duration::from_secs(5));
        assert_eq!(
            breaker.peek(t0 + PAUSE),
            Admission::Probe,
            "the pause still ends at t0 + pause_for"
        );
    }

    #[test]
    fn threshold_zero_never_opens() {
        let t0 = Instant::now();
        let mut breaker = CircuitBreaker::new(0, PAUSE);
        for _ in 0..1000 {
            breaker.record_failure(t0);
        }
        assert_eq!(breaker.admit(t0), Admission::Allowed);
    }
}
