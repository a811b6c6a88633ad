//! The pool of librdkafka consumers a [`RangeReader`](super::RangeReader) reads with.
//!
//! Owns: [`Pooled`] consumers (each with the [`Cursor`] of the partition it still has assigned, if
//! any), the reader's query consumer (never assigned: metadata and watermark queries), the [`Loan`]
//! that returns a consumer to the pool or that slot when a read or query ends, and the background task
//! that parks consumers left idle ([`PARK_AFTER`](super::PARK_AFTER)) and serves the events idle
//! consumers queue (statistics, logs, errors).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use courier_core::{Offset, Partition};
use rdkafka::consumer::Consumer;
use tracing::{debug, warn};

use super::range_read::Cursor;
use super::{blocking, lock, BaseConsumer, Inner, PARK_AFTER};
use crate::context::CourierContext;
use crate::error::Error;
use crate::traffic::ClientTraffic;

/// Consumers the pool may hold per partition being read before a read that continues no consumer takes
/// one positioned elsewhere: two, so a read out of order (behind or far ahead of where the partition's
/// consumer stands) leaves that consumer and its prefetch to the read that continues it. Each positioned
/// consumer prefetches at most `queued.max.messages.kbytes`; idle ones are parked after
/// [`PARK_AFTER`](super::PARK_AFTER).
const CONSUMERS_PER_LANE: usize = 2;

/// How often the background task looks for consumers to park and serves idle consumers' events.
const PARK_CHECK_EVERY: Duration = Duration::from_secs(1);

/// At most this many queued events (statistics, logs, errors) served per idle consumer and check: a
/// consumer queues about one per second (its statistics), so this drains faster than it fills.
const EVENTS_PER_CHECK: usize = 16;

/// A pooled consumer and, when it still has a partition assigned, where its queue continues.
pub(super) struct Pooled {
    pub(super) consumer: BaseConsumer,
    pub(super) cursor: Option<Cursor>,
    pub(super) idle_since: Instant,
}

/// A consumer on loan from the pool; it goes back when dropped unless it was spoiled.
pub(super) struct Loan<'a> {
    inner: &'a Inner,
    pooled: Option<Pooled>,
    /// Where it goes back: the idle list, or the query consumer's slot ([`Inner::checkout_for_query`]).
    home: Home,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Home {
    Idle,
    Query,
}

impl Loan<'_> {
    pub(super) fn get(&self) -> &BaseConsumer {
        // Always `Some` until `drop` or `spoil`, which consume the loan.
        &self
            .pooled
            .as_ref()
            .expect("a loaned consumer is present until the loan ends")
            .consumer
    }

    pub(super) fn take_cursor(&mut self) -> Option<Cursor> {
        self.pooled.as_mut().and_then(|pooled| pooled.cursor.take())
    }

    pub(super) fn set_cursor(&mut self, cursor: Option<Cursor>) {
        if let Some(pooled) = self.pooled.as_mut() {
            pooled.cursor = cursor;
        }
    }

    /// Drops the consumer instead of returning it to the pool.
    pub(super) fn spoil(mut self) {
        if self.pooled.take().is_some() && self.home == Home::Idle {
            self.inner.consumers.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Loan<'_> {
    fn drop(&mut self) {
        if let Some(mut pooled) = self.pooled.take() {
            if pooled.cursor.is_none() {
                // What it queued during a metadata call or a failed read (errors above all) is
                // reported now rather than at the next check.
                serve_events(&pooled.consumer);
            }
            pooled.idle_since = Instant::now();
            match self.home {
                Home::Idle => lock(&self.inner.idle).push(pooled),
                Home::Query => *lock(&self.inner.query) = Some(pooled),
            }
        }
    }
}

impl std::ops::Deref for Loan<'_> {
    type Target = BaseConsumer;
    fn deref(&self) -> &BaseConsumer {
        self.get()
    }
}

/// Unassigns consumers that have been idle with a partition assigned for [`PARK_AFTER`], and serves the
/// events queued on unassigned idle consumers. Ends when the last clone of the reader is dropped.
pub(super) async fn park_idle_consumers(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(PARK_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let stale: Vec<Pooled> = {
            let mut idle = lock(&strong.idle);
            let (stale, fresh) = std::mem::take(&mut *idle).into_iter().partition(|pooled| {
                pooled.cursor.is_some() && pooled.idle_since.elapsed() >= PARK_AFTER
            });
            *idle = fresh;
            stale
        };
        // Unassigning waits on librdkafka's threads, and serving events runs the context's callbacks:
        // off the runtime. A failed task only means the runtime is shutting down.
        let _parked = blocking(move || {
            strong.park(stale);
            strong.serve_idle_events();
            strong.drop_idle_lanes();
            strong.outages.check();
        })
        .await;
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing a consumer blocks (~100 ms each): keep that off the async runtime when there is one.
        let mut idle = std::mem::take(&mut *lock(&self.idle));
        idle.extend(lock(&self.query).take());
        if idle.is_empty() {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn_blocking(move || drop(idle));
        }
    }
}

/// Hands the events queued on an unassigned consumer (statistics, logs, errors) to its context.
fn serve_events(consumer: &BaseConsumer) {
    for _ in 0..EVENTS_PER_CHECK {
        // Unassigned, so nothing worth keeping comes back: a message would be a leftover of the previous
        // assignment (the next read assigns afresh at its own start), an error was already passed to the
        // context.
        let _served = consumer.poll(Duration::ZERO);
    }
}

impl Inner {
    /// Unassigns idle consumers and returns them to the pool without a cursor.
    pub(super) fn park(&self, stale: Vec<Pooled>) {
        for mut pooled in stale {
            pooled.cursor = None;
            match pooled.consumer.unassign() {
                Ok(()) => lock(&self.idle).insert(0, pooled),
                Err(error) => {
                    self.consumers.fetch_sub(1, Ordering::Relaxed);
                    warn!(%error, "Dropping an idle range-reader consumer that failed to unassign.")
                }
            }
        }
    }

    /// Serves the events queued on idle consumers without a partition (statistics, logs, errors).
    /// librdkafka hands them over only when a consumer is polled: an idle consumer would otherwise hold
    /// back its logs and errors, and its queue would grow by one statistics report a second for as long
    /// as it stays idle. Consumers still assigned are left alone (a poll could take a message from their
    /// queue); they are served by their next read or once parked.
    pub(super) fn serve_idle_events(&self) {
        let idle = lock(&self.idle);
        for pooled in idle.iter().filter(|pooled| pooled.cursor.is_none()) {
            serve_events(&pooled.consumer);
        }
        drop(idle);
        if let Some(query) = lock(&self.query).as_ref() {
            serve_events(&query.consumer);
        }
    }

    pub(super) fn create_consumer(&self) -> Result<BaseConsumer, Error> {
        let context = CourierContext::new(
            &self.config,
            Arc::clone(&self.outages),
            Some(ClientTraffic::new(Arc::clone(&self.traffic))),
        );
        self.config
            .reader_client_config()
            .create_with_context::<_, BaseConsumer>(context)
            .map_err(Error::Config)
    }

    /// Takes the idle consumer whose cursor continues at `topic`/`partition`/`start`, else the least
    /// recently used one without a cursor, else a new one while the pool holds fewer than
    /// [`CONSUMERS_PER_LANE`] per partition being read, else the least recently used one. Runs on the
    /// blocking pool.
    ///
    /// Why a new consumer before taking a positioned one: taking it re-assigns it and throws away what
    /// it prefetched for the read that would have continued it, which then fetches the same bytes again
    /// (measured from the broker's side: 1.4-1.9x the bytes of one reading when 8 tasks asked for the
    /// ranges of 8 partitions out of order, with one consumer per partition being read).
    pub(super) fn checkout(
        &self,
        topic: &str,
        partition: Partition,
        start: Offset,
    ) -> Result<Loan<'_>, Error> {
        let taken = self.take_idle(|cursor| cursor.continues(topic, partition, start));
        self.loan(taken)
    }

    /// A consumer for metadata and watermark queries (they leave the assignment alone): the reader's
    /// query consumer, which never has a partition assigned; while another query holds it, an idle
    /// one without a partition, else any idle one, and a new one only when none is idle.
    ///
    /// Why a consumer of its own: a broker answers a connection's requests in order, and a consumer
    /// with a partition assigned keeps a fetch waiting at the tail of the log (up to
    /// `fetch.wait.max.ms`) on its connection, so a query it carried waited behind that fetch. The
    /// planner asks for watermarks every tick, and under load every pooled consumer is positioned:
    /// each watermark query took 14-16 ms (two ListOffsets, each behind a fetch) against about 1 ms on
    /// an unassigned consumer, on the path of every message from the log to its destination.
    pub(super) fn checkout_for_query(&self) -> Result<Loan<'_>, Error> {
        if let Some(pooled) = lock(&self.query).take() {
            return Ok(Loan {
                inner: self,
                pooled: Some(pooled),
                home: Home::Query,
            });
        }
        let taken = {
            let mut idle = lock(&self.idle);
            let index = idle
                .iter()
                .position(|pooled| pooled.cursor.is_none())
                .or_else(|| idle.len().checked_sub(1));
            index.map(|index| idle.remove(index))
        };
        self.loan(taken)
    }

    /// The consumer [`checkout`](Self::checkout) takes: the last idle one whose cursor `continues`, else
    /// the least recently used one without a cursor, else none (a new one) while there is room, else the
    /// least recently used one.
    fn take_idle(&self, continues: impl Fn(&Cursor) -> bool) -> Option<Pooled> {
        let lanes = lock(&self.lanes).len();
        let mut idle = lock(&self.idle);
        let continuing = idle
            .iter()
            .rposition(|pooled| pooled.cursor.as_ref().is_some_and(&continues));
        let room = self.consumers.load(Ordering::Relaxed) < lanes.max(1) * CONSUMERS_PER_LANE;
        let index = continuing
            .or_else(|| idle.iter().position(|pooled| pooled.cursor.is_none()))
            .or(if idle.is_empty() || room {
                None
            } else {
                Some(0)
            });
        index.map(|index| idle.remove(index))
    }

    pub(super) fn loan(&self, taken: Option<Pooled>) -> Result<Loan<'_>, Error> {
        let pooled = match taken {
            Some(pooled) => pooled,
            None => {
                debug!(brokers = %self.config.brokers, "Creating another range-reader consumer.");
                let consumer = self.create_consumer()?;
                self.consumers.fetch_add(1, Ordering::Relaxed);
                Pooled {
                    consumer,
                    cursor: None,
                    idle_since: Instant::now(),
                }
            }
        };
        Ok(Loan {
            inner: self,
            pooled: Some(pooled),
            home: Home::Idle,
        })
    }

    /// Where the idle consumer still assigned to `topic`/`partition` continues, if there is one.
    pub(super) fn cursor_of(&self, topic: &str, partition: Partition) -> Option<Offset> {
        lock(&self.idle).iter().find_map(|pooled| {
            pooled
                .cursor
                .as_ref()
                .filter(|c| c.partition == partition && c.topic == topic)
                .map(|c| c.next)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KafkaConfig, RangeReader};

    /// A reader on an address nothing listens on: consumers are created without a broker, and none of
    /// these choices contacts one.
    async fn reader() -> RangeReader {
        RangeReader::connect(KafkaConfig::new("127.0.0.1:1"))
            .await
            .unwrap_or_else(|e| panic!("a reader needs no broker to start: {e}"))
    }

    #[tokio::test]
    async fn queries_use_the_query_consumer_and_leave_positioned_consumers_to_reads() {
        let reader = reader().await;
        let inner = &*reader.inner;
        let positioned = Pooled {
            consumer: inner.create_consumer().expect("a consumer"),
            cursor: Some(Cursor::at("events", 0, 10)),
            idle_since: Instant::now(),
        };
        lock(&inner.idle).push(positioned);

        let query = inner.checkout_for_query().expect("a consumer for a query");
        assert!(query.home == Home::Query, "a query took a pooled consumer");
        assert_eq!(
            lock(&inner.idle).len(),
            1,
            "the positioned consumer stays idle"
        );
        assert!(inner.cursor_of("events", 0) == Some(10));

        // While the query consumer is out, a second query borrows from the pool rather than wait.
        let second = inner
            .checkout_for_query()
            .expect("a consumer for a second query");
        assert!(second.home == Home::Idle);
        drop(second);
        drop(query);
        assert!(
            lock(&inner.query).is_some(),
            "the query consumer went back to its slot"
        );
        assert_eq!(
            lock(&inner.idle).len(),
            1,
            "the borrowed consumer went back to the pool"
        );
    }
}
