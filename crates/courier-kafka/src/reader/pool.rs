//! The pool of librdkafka consumers a [`RangeReader`](super::RangeReader) reads with.
//!
//! Owns: [`Pooled`] consumers (each with the [`Cursor`] of the partition it still has assigned, if
//! any), the [`Loan`] that returns a consumer to the pool when a read ends, and the background task
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
        if self.pooled.take().is_some() {
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
            lock(&self.inner.idle).push(pooled);
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
        let idle = std::mem::take(&mut *lock(&self.idle));
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

    /// An idle consumer for metadata and watermark queries (they leave the assignment alone): one
    /// without a partition if there is one, else any idle one, and a new one only when none is idle.
    /// Never a new one otherwise: a new consumer must connect to the brokers before it can answer, and
    /// the planner asks for watermarks every tick.
    pub(super) fn checkout_any(&self) -> Result<Loan<'_>, Error> {
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
