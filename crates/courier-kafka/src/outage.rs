//! Broker outages, logged once: one WARN when one starts, a summary every [`SUMMARY_EVERY`] while it
//! lasts, one INFO when it ends, instead of librdkafka's error per client per reconnect attempt (dozens
//! a second from one worker while a broker restarts).
//!
//! Owns: [`OutageLog`], the one throttle shared by every client courier makes for a cluster (range
//! readers' consumers, producers, admin clients), found by bootstrap brokers ([`OutageLog::for_cluster`]);
//! the pure state machine behind it ([`OutageState`], events and a clock in, [`Line`]s out); and what
//! waits while the brokers are away ([`Waiting`]).
//!
//! # Start, summaries, end
//! - An outage **starts** with the first connectivity failure librdkafka reports (transport failure, all
//!   brokers down, name resolution, request timeouts; see `context.rs` for the classification) while
//!   none is under way. Later failures only add to it (brokers, counts, the latest cause), at DEBUG.
//! - While it lasts, a **summary** is logged on the first event or check at least [`SUMMARY_EVERY`]
//!   after the previous line: how long, how many failures since, which brokers, what is waiting (range
//!   reads, metadata calls, produce batches, admin calls in flight). Checks come every second from each
//!   range reader's background task, and failures keep coming while a client needs a broker
//!   (librdkafka retries at least every `reconnect.backoff.max.ms`, 10 s by default), so a summary is
//!   never more than a few seconds late.
//! - It **ends** with a successful broker round trip of any client (a range read, metadata or watermark
//!   answer, an acknowledged produce, an admin call) followed by [`QUIET_BEFORE_END`] without a new
//!   failure. The quiet period keeps a partial outage (one broker of several still down, while the
//!   others answer) one outage instead of one per reconnect attempt: a broker still down fails again
//!   within librdkafka's maximum reconnect backoff. The INFO line is logged on the first event or check
//!   after the quiet period and gives the outage's length up to that first success.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::reader::lock;

/// How often an outage under way is summarised.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(30);

/// How long after a successful round trip no failure may come for an outage to be over. librdkafka's
/// default `reconnect.backoff.max.ms` (10 s): a broker still down has failed again by then.
pub const QUIET_BEFORE_END: Duration = Duration::from_secs(10);

/// At most this many broker names are kept per outage (a line stays readable on a large cluster).
const MAX_BROKERS_NAMED: usize = 16;

/// What a log line says; [`OutageLog`] words and levels them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Line {
    /// WARN: the first failure of an outage.
    Started { brokers: Vec<String>, cause: String },
    /// WARN: the outage goes on.
    Continuing {
        lasted: Duration,
        brokers: Vec<String>,
        failures_since_last_line: u64,
        cause: String,
    },
    /// INFO: the brokers answer again.
    Ended { lasted: Duration, failures: u64 },
}

/// The throttle's state machine. Pure: the caller passes the time, so tests drive it with any clock.
#[derive(Debug, Default)]
pub(crate) struct OutageState {
    outage: Option<Outage>,
}

#[derive(Debug)]
struct Outage {
    since: Instant,
    brokers: BTreeSet<String>,
    cause: String,
    failures: u64,
    failures_since_last_line: u64,
    last_line: Instant,
    /// The first successful round trip since the last failure.
    answered_at: Option<Instant>,
}

impl Outage {
    fn brokers(&self) -> Vec<String> {
        self.brokers.iter().cloned().collect()
    }
}

impl OutageState {
    /// A connectivity failure: `broker` when librdkafka named one, `cause` its reason.
    pub(crate) fn failure(
        &mut self,
        now: Instant,
        broker: Option<&str>,
        cause: &str,
    ) -> Option<Line> {
        let Some(outage) = self.outage.as_mut() else {
            let outage = Outage {
                since: now,
                brokers: broker.map(str::to_owned).into_iter().collect(),
                cause: cause.to_owned(),
                failures: 1,
                failures_since_last_line: 0,
                last_line: now,
                answered_at: None,
            };
            let line = Line::Started {
                brokers: outage.brokers(),
                cause: outage.cause.clone(),
            };
            self.outage = Some(outage);
            return Some(line);
        };
        outage.failures += 1;
        outage.failures_since_last_line += 1;
        outage.cause = cause.to_owned();
        outage.answered_at = None;
        if let Some(broker) = broker {
            if outage.brokers.len() < MAX_BROKERS_NAMED {
                outage.brokers.insert(broker.to_owned());
            }
        }
        self.check(now)
    }

    /// A successful broker round trip.
    pub(crate) fn answered(&mut self, now: Instant) -> Option<Line> {
        let outage = self.outage.as_mut()?;
        outage.answered_at.get_or_insert(now);
        self.check(now)
    }

    /// Whether an outage is under way (cheap: callers skip work when there is none).
    pub(crate) fn is_down(&self) -> bool {
        self.outage.is_some()
    }

    /// Time passed: the outage may be over, or due for a summary.
    pub(crate) fn check(&mut self, now: Instant) -> Option<Line> {
        let outage = self.outage.as_mut()?;
        if let Some(answered_at) = outage.answered_at {
            if now.saturating_duration_since(answered_at) < QUIET_BEFORE_END {
                // Probably over: no summary while that is being confirmed.
                return None;
            }
            let line = Line::Ended {
                lasted: answered_at.saturating_duration_since(outage.since),
                failures: outage.failures,
            };
            self.outage = None;
            return Some(line);
        }
        if now.saturating_duration_since(outage.last_line) < SUMMARY_EVERY {
            return None;
        }
        outage.last_line = now;
        Some(Line::Continuing {
            lasted: now.saturating_duration_since(outage.since),
            brokers: outage.brokers(),
            failures_since_last_line: std::mem::take(&mut outage.failures_since_last_line),
            cause: outage.cause.clone(),
        })
    }
}

/// What a caller is waiting on the brokers for; summaries count each kind in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waiting {
    RangeRead = 0,
    Metadata = 1,
    Produce = 2,
    Admin = 3,
}

/// One caller waiting on the brokers, counted until dropped.
pub(crate) struct WaitingGuard {
    log: Arc<OutageLog>,
    what: Waiting,
}

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.log.waiting[self.what as usize].fetch_sub(1, Ordering::Relaxed);
    }
}

/// The throttle of one cluster, shared by all its clients: turns events into [`Line`]s and logs them.
#[derive(Debug)]
pub(crate) struct OutageLog {
    /// The bootstrap brokers, named when librdkafka names none (all brokers down).
    cluster: String,
    state: Mutex<OutageState>,
    /// In flight, by [`Waiting`] kind.
    waiting: [AtomicUsize; 4],
}

/// One [`OutageLog`] per cluster, alive while a client of that cluster is.
static CLUSTERS: LazyLock<Mutex<HashMap<String, Weak<OutageLog>>>> = LazyLock::new(Mutex::default);

impl OutageLog {
    /// The throttle for the cluster bootstrapped from `brokers` (`host:port[,host:port...]`; order and
    /// spaces do not matter).
    pub(crate) fn for_cluster(brokers: &str) -> Arc<Self> {
        let mut names: Vec<&str> = brokers
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .collect();
        names.sort_unstable();
        names.dedup();
        let cluster = names.join(",");
        let mut clusters = lock(&CLUSTERS);
        if let Some(log) = clusters.get(&cluster).and_then(Weak::upgrade) {
            return log;
        }
        clusters.retain(|_, log| log.strong_count() > 0);
        let log = Arc::new(Self {
            cluster: cluster.clone(),
            state: Mutex::default(),
            waiting: Default::default(),
        });
        clusters.insert(cluster, Arc::downgrade(&log));
        log
    }

    /// Counts a caller as waiting on the brokers until the guard is dropped.
    pub(crate) fn waiting(self: &Arc<Self>, what: Waiting) -> WaitingGuard {
        self.waiting[what as usize].fetch_add(1, Ordering::Relaxed);
        WaitingGuard {
            log: Arc::clone(self),
            what,
        }
    }

    /// A connectivity failure librdkafka recovers from by itself.
    pub(crate) fn failure(&self, broker: Option<&str>, cause: &str) {
        let line = lock(&self.state).failure(Instant::now(), broker, cause);
        match line {
            Some(line) => self.emit(line),
            None => tracing::debug!(
                cluster = %self.cluster,
                broker = broker.unwrap_or("-"),
                cause,
                "Kafka connectivity failure (counted in the outage summary)."
            ),
        }
    }

    /// A successful broker round trip.
    pub(crate) fn answered(&self) {
        let line = {
            let mut state = lock(&self.state);
            if !state.is_down() {
                return;
            }
            state.answered(Instant::now())
        };
        if let Some(line) = line {
            self.emit(line);
        }
    }

    /// Logs a summary or the end when due; call regularly.
    pub(crate) fn check(&self) {
        let line = lock(&self.state).check(Instant::now());
        if let Some(line) = line {
            self.emit(line);
        }
    }

    fn emit(&self, line: Line) {
        let cluster = &self.cluster;
        match line {
            Line::Started { brokers, cause } => tracing::warn!(
                %cluster,
                brokers = %named(&brokers, cluster),
                %cause,
                "Kafka broker outage: {} unreachable ({cause}). librdkafka reconnects by itself and \
                 reads retry; a summary follows every {}s while this lasts, and one line when it ends. \
                 If it lasts, check the brokers and the network (`scripts/kafka.sh status` for the \
                 local broker).",
                named(&brokers, cluster),
                SUMMARY_EVERY.as_secs(),
            ),
            Line::Continuing {
                lasted,
                brokers,
                failures_since_last_line,
                cause,
            } => {
                let count = |what: Waiting| self.waiting[what as usize].load(Ordering::Relaxed);
                tracing::warn!(
                    %cluster,
                    brokers = %named(&brokers, cluster),
                    lasted_s = lasted.as_secs(),
                    failures = failures_since_last_line,
                    waiting_reads = count(Waiting::RangeRead),
                    waiting_metadata = count(Waiting::Metadata),
                    waiting_produce = count(Waiting::Produce),
                    waiting_admin = count(Waiting::Admin),
                    %cause,
                    "Kafka broker outage continues after {}: {} unreachable, {failures_since_last_line} \
                     more failure(s) since the last line; waiting: {} range read(s), {} metadata \
                     call(s), {} produce batch(es), {} admin call(s). Last cause: {cause}.",
                    seconds(lasted),
                    named(&brokers, cluster),
                    count(Waiting::RangeRead),
                    count(Waiting::Metadata),
                    count(Waiting::Produce),
                    count(Waiting::Admin),
                )
            }
            Line::Ended { lasted, failures } => tracing::info!(
                %cluster,
                lasted_s = lasted.as_secs(),
                failures,
                "Kafka broker outage over: the brokers answer again after {} ({failures} connectivity \
                 failure(s)).",
                seconds(lasted),
            ),
        }
    }
}

/// The brokers librdkafka named, else the cluster's bootstrap list.
fn named(brokers: &[String], cluster: &str) -> String {
    if brokers.is_empty() {
        format!("all brokers of {cluster}")
    } else {
        brokers.join(", ")
    }
}

fn seconds(duration: Duration) -> String {
    format!("{}s", duration.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn started(brokers: &[&str], cause: &str) -> Option<Line> {
        Some(Line::Started {
            brokers: brokers.iter().map(|b| (*b).to_owned()).collect(),
            cause: cause.to_owned(),
        })
    }

    #[test]
    fn one_warning_per_outage_summaries_while_it_lasts_and_one_line_at_the_end() {
        let t0 = Instant::now();
        let mut state = OutageState::default();
        assert_eq!(state.check(t0), None, "nothing to say while healthy");
        assert_eq!(state.answered(t0), None);

        assert_eq!(
            state.failure(t0, Some("k1:9092/1"), "Connection refused"),
            started(&["k1:9092/1"], "Connection refused")
        );
        // Dozens of failures a second from several clients: silence.
        for i in 0..100_u32 {
            let at = t0 + S * i / 10;
            assert_eq!(state.failure(at, Some("k1:9092/1"), "refused"), None);
            assert_eq!(state.failure(at, None, "1/1 brokers are down"), None);
            assert_eq!(state.check(at), None);
        }
        assert_eq!(
            state.check(t0 + 30 * S),
            Some(Line::Continuing {
                lasted: 30 * S,
                brokers: vec!["k1:9092/1".to_owned()],
                failures_since_last_line: 200,
                cause: "1/1 brokers are down".to_owned(),
            })
        );
        assert_eq!(
            state.check(t0 + 59 * S),
            None,
            "the next summary is due at 60 s"
        );
        assert_eq!(state.failure(t0 + 59 * S, Some("k2:9092/2"), "reset"), None);
        assert_eq!(
            state.failure(t0 + 61 * S, Some("k1:9092/1"), "refused"),
            Some(Line::Continuing {
                lasted: 61 * S,
                brokers: vec!["k1:9092/1".to_owned(), "k2:9092/2".to_owned()],
                failures_since_last_line: 2,
                cause: "refused".to_owned(),
            })
        );

        // A broker answers at 70 s; the end is logged once no failure came for the quiet period.
        assert_eq!(state.answered(t0 + 70 * S), None);
        assert_eq!(state.answered(t0 + 75 * S), None);
        assert_eq!(state.check(t0 + 79 * S), None);
        assert_eq!(
            state.check(t0 + 80 * S),
            Some(Line::Ended {
                lasted: 70 * S,
                failures: 203,
            })
        );
        assert!(!state.is_down());
        assert_eq!(state.check(t0 + 200 * S), None);
        assert_eq!(state.answered(t0 + 200 * S), None);

        // The next failure is a new outage.
        assert_eq!(
            state.failure(t0 + 300 * S, None, "1/1 brokers are down"),
            started(&[], "1/1 brokers are down")
        );
    }

    #[test]
    fn a_failure_after_an_answer_keeps_the_outage_going() {
        let t0 = Instant::now();
        let mut state = OutageState::default();
        assert!(state.failure(t0, Some("k2:9092/2"), "refused").is_some());
        // Another broker answers, but k2 fails again within its reconnect backoff: one outage.
        assert_eq!(state.answered(t0 + S), None);
        assert_eq!(
            state.failure(t0 + 9 * S, Some("k2:9092/2"), "refused"),
            None
        );
        assert_eq!(
            state.check(t0 + 20 * S),
            None,
            "the answer at 1 s no longer counts"
        );
        assert!(matches!(
            state.check(t0 + 30 * S),
            Some(Line::Continuing {
                failures_since_last_line: 1,
                ..
            })
        ));
        assert_eq!(state.answered(t0 + 40 * S), None);
        assert_eq!(
            state.check(t0 + 50 * S),
            Some(Line::Ended {
                lasted: 40 * S,
                failures: 2
            })
        );
    }

    #[test]
    fn clients_of_one_cluster_share_one_throttle() {
        let a = OutageLog::for_cluster("k1:9092, k2:9092");
        let b = OutageLog::for_cluster("k2:9092,k1:9092");
        let other = OutageLog::for_cluster("k3:9092");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &other));
        let read = a.waiting(Waiting::RangeRead);
        let metadata = b.waiting(Waiting::Metadata);
        assert_eq!(
            a.waiting[Waiting::RangeRead as usize].load(Ordering::Relaxed),
            1
        );
        assert_eq!(
            a.waiting[Waiting::Metadata as usize].load(Ordering::Relaxed),
            1
        );
        drop((read, metadata));
        assert_eq!(
            a.waiting[Waiting::RangeRead as usize].load(Ordering::Relaxed),
            0
        );
        assert_eq!(
            a.waiting[Waiting::Metadata as usize].load(Ordering::Relaxed),
            0
        );
    }
}
