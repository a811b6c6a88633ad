//! Reading exactly `[start, end)` of one partition, and the watermarks the planner carves ranges from.
//!
//! Owns: [`RangeReader`] (a cheap-to-clone handle to a pool of librdkafka consumers) and
//! [`PartitionWatermarks`].
//!
//! # How a range is read
//! 1. A consumer is taken from the pool (or created, off the runtime). Consumers are reused across ranges:
//!    closing one costs ~100 ms. A consumer that just finished `[a, b)` of the same partition is preferred
//!    for `[b, c)`: it keeps the partition assigned and continues from its prefetched queue, with no
//!    re-assignment (which costs a fetch round trip, ~10 ms at the tail of the log).
//! 2. The partition is checked against cached metadata (one metadata request per topic, refreshed when a
//!    partition is not in the cache), so an unknown topic or partition is a clear error, not a timeout.
//! 3. Otherwise `assign` at `start`: no subscription, no group membership, no commits. The store owns
//!    progress.
//! 4. Messages are polled until one of:
//!    - the message at `end - 1` arrives, or one at `>= end` (gaps from compaction and transaction
//!      markers do not matter: the range is still `[start, end)`); a message past `end` is kept for the
//!      next range of the same partition;
//!    - the consumer reaches the end of the partition (`enable.partition.eof`) and its position is
//!      `>= end` (the tail of the range held only transaction markers or aborted records);
//!    - the end of the partition is below `end` even when asked afresh: [`ReadError::NotYetWritten`];
//!    - the fetch offset is out of range: the watermarks decide between [`ReadError::Retention`]
//!      (`start` below the log start offset) and [`ReadError::NotYetWritten`] (`start` past the end);
//!    - a record batch cannot be decoded (a codec this build lacks, a corrupt batch):
//!      [`ReadError::Undecodable`] at the first offset not read, permanent, before any later message is
//!      taken (so an undecodable batch is never stepped over as if it were a gap);
//!    - the deadline ([`KafkaConfig::read_timeout`]) passes: [`ReadError::Timeout`], retryable.
//! 5. After a success the consumer goes back to the pool still assigned, so it keeps prefetching (at most
//!    `queued.max.messages.kbytes`); after an error it is unassigned first, so nothing stale survives.
//!    A consumer left idle for [`PARK_AFTER`] is unassigned by a background task: an idle worker does not
//!    keep long-polling the brokers (one fetch per `fetch.wait.max.ms` per consumer) or holding memory.
//!
//! # Why a `BaseConsumer` driven on a blocking thread
//! Reading a range is a tight loop over `poll`: on the blocking pool, a `BaseConsumer` hands each message
//! over with no async wake-up or channel hop per message. It was the fastest option in DESIGN.md's
//! measurements (~2.3 M msgs/s on 2 cores against librdkafka's mock broker); here, against the real local
//! broker sharing the same 2 cores, one read of 200,000 messages ran at ~0.8-1.3 M msgs/s. A
//! `StreamConsumer` adds a waker round trip per message and still needs the same end-of-range logic. The
//! async caller only awaits the blocking task.

use std::cmp::max;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use courier_core::{Message, Offset, OffsetRange, Partition};
use rdkafka::consumer::{BaseConsumer as RdBaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::{Offset as RdOffset, TopicPartitionList};
use tracing::{debug, warn};

use crate::config::KafkaConfig;
use crate::context::CourierContext;
use crate::error::{is_timeout, is_undecodable, is_unknown_topic, Error, ReadError};
use crate::outage::{OutageLog, Waiting};
use crate::traffic::{ClientTraffic, Traffic};

/// How long a pooled consumer keeps fetching its partition after its last read, in case the next range of
/// that partition comes soon (the common case: a worker keeping up with a partition, range after range).
/// Then it is unassigned. Measured on the local broker, reads back to back: a continuing read of 1,000
/// messages took ~0.8-1.2 ms, a re-assigned one ~4.4 ms; following the tail (produce 1, read it) cost
/// ~1.5 ms per read on top of the produce; re-reading the last message of the log ~11 ms (a re-assignment
/// waits for the fetch in flight, up to `fetch.wait.max.ms`).
pub const PARK_AFTER: Duration = Duration::from_secs(3);

/// How often the background task looks for consumers to park and serves idle consumers' events.
const PARK_CHECK_EVERY: Duration = Duration::from_secs(1);

/// At most this many queued events (statistics, logs, errors) served per idle consumer and check: a
/// consumer queues about one per second (its statistics), so this drains faster than it fills.
const EVENTS_PER_CHECK: usize = 16;

/// A range reader's consumer.
type BaseConsumer = RdBaseConsumer<CourierContext>;

/// The low and high watermarks of one partition.
///
/// `low` is the log start offset (everything below was deleted by retention). `high` is the end of what a
/// reader can deliver: the high watermark, or under `read_committed` (courier's setting) the last stable
/// offset, which stops before an open transaction. The planner carves ranges up to `high`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionWatermarks {
    pub partition: Partition,
    pub low: Offset,
    pub high: Offset,
}

/// Reads exact offset ranges; a cheap-to-clone handle to a pool of consumers.
///
/// Share one `RangeReader` (clone it) between all delivery tasks of a worker: each concurrent
/// [`read`](Self::read) takes its own consumer from the pool, creating one (off the runtime) when none is
/// idle, and returns it afterwards. The pool therefore grows to the largest number of reads in flight at
/// once and stays there; consumers are closed when the last clone is dropped.
///
/// A consumer that finished a range stays assigned to its partition for [`PARK_AFTER`], and a read that
/// continues exactly where it stopped goes to it, reading from its prefetched queue.
///
/// Every call is bounded by [`KafkaConfig::read_timeout`]. Dropping a `read` future does not stop the
/// blocking read behind it: that read still ends by its deadline and its consumer returns to the pool.
#[derive(Clone)]
pub struct RangeReader {
    inner: Arc<Inner>,
}

struct Inner {
    config: KafkaConfig,
    /// Idle consumers, least recently used first.
    idle: Mutex<Vec<Pooled>>,
    /// Partition counts per topic, from metadata. Partitions can be added to a topic, never removed, so a
    /// cached count is only ever too small: a partition beyond it triggers a refresh.
    partition_counts: Mutex<HashMap<String, i32>>,
    /// Bytes received by every consumer this reader made, closed ones included.
    traffic: Arc<Traffic>,
    /// The cluster's outage log, shared with every other client of the cluster.
    outages: Arc<OutageLog>,
}

impl std::fmt::Debug for RangeReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle = lock(&self.inner.idle);
        f.debug_struct("RangeReader")
            .field("brokers", &self.inner.config.brokers)
            .field("idle_consumers", &idle.len())
            .field(
                "still_assigned",
                &idle.iter().filter(|pooled| pooled.cursor.is_some()).count(),
            )
            .finish()
    }
}

/// A poisoned lock only means another read panicked; the data (a list of idle consumers, a cache) is
/// still consistent.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs a librdkafka call on the blocking pool.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, Error>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task(e.to_string()))
}

impl RangeReader {
    /// Creates a reader and its first consumer (off the runtime: client creation does blocking I/O).
    /// Fails only on an invalid configuration; an unreachable cluster shows up on the first call.
    pub async fn connect(config: KafkaConfig) -> Result<Self, Error> {
        let inner = Arc::new(Inner {
            idle: Mutex::new(Vec::new()),
            partition_counts: Mutex::new(HashMap::new()),
            traffic: Arc::default(),
            outages: OutageLog::for_cluster(&config.brokers),
            config,
        });
        let creator = Arc::clone(&inner);
        let consumer = blocking(move || creator.create_consumer()).await??;
        lock(&inner.idle).push(Pooled {
            consumer,
            cursor: None,
            idle_since: Instant::now(),
        });
        tokio::spawn(park_idle_consumers(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// The configuration this reader was made with.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    /// Bytes this reader's consumers (closed ones included) received from the brokers since the reader
    /// was created, from librdkafka's statistics: the wire cost of reading, prefetch and protocol
    /// overhead included. Also counted in the metric [`RECEIVED_BYTES`](crate::RECEIVED_BYTES).
    ///
    /// The figure lags: a consumer reports every second while it reads, and an idle one once it is
    /// parked ([`PARK_AFTER`]) and served by the next check, so the bytes of a read show up within a few
    /// seconds of its end.
    pub fn bytes_received(&self) -> u64 {
        self.inner.traffic.received()
    }

    /// Reads exactly the messages of `topic`/`partition` with offsets in `range`, in offset order.
    ///
    /// The result may hold fewer than `range.len()` messages (compaction and transaction markers leave
    /// gaps), never a message outside the range, never one twice. See the module docs for every way it
    /// ends.
    pub async fn read(
        &self,
        topic: &str,
        partition: Partition,
        range: OffsetRange,
    ) -> Result<Vec<Message>, ReadError> {
        let inner = Arc::clone(&self.inner);
        let _waiting = inner.outages.waiting(Waiting::RangeRead);
        let topic = topic.to_owned();
        let deadline = Instant::now() + inner.config.read_timeout;
        let result = blocking(move || inner.read(&topic, partition, range, deadline)).await?;
        if broker_answered(&result) {
            self.inner.outages.answered();
        }
        result
    }

    /// The low and high watermarks of every partition of `topic`, by partition.
    pub async fn high_watermarks(&self, topic: &str) -> Result<Vec<PartitionWatermarks>, Error> {
        let topic = topic.to_owned();
        self.metadata_call(move |inner| inner.high_watermarks(&topic))
            .await
    }

    /// How many partitions `topic` has.
    pub async fn partition_count(&self, topic: &str) -> Result<i32, Error> {
        let topic = topic.to_owned();
        self.metadata_call(move |inner| {
            let deadline = Instant::now() + inner.config.read_timeout;
            let consumer = inner.checkout_any()?;
            inner.refresh_partition_count(&consumer, &topic, deadline)
        })
        .await
    }

    /// Runs a metadata or watermark query off the runtime, counted as waiting on the brokers.
    async fn metadata_call<T, F>(&self, call: F) -> Result<T, Error>
    where
        F: FnOnce(&Inner) -> Result<T, Error> + Send + 'static,
        T: Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let _waiting = inner.outages.waiting(Waiting::Metadata);
        let result = blocking(move || call(&inner)).await?;
        if matches!(&result, Ok(_) | Err(Error::UnknownTopic { .. })) {
            self.inner.outages.answered();
        }
        result
    }
}

/// A pooled consumer and, when it still has a partition assigned, where its queue continues.
struct Pooled {
    consumer: BaseConsumer,
    cursor: Option<Cursor>,
    idle_since: Instant,
}

/// A consumer left assigned to `topic`/`partition` after reading a range that ended at `next`: the next
/// thing it hands over is `stash` (a message it already polled, at or past `next`) if any, then
/// messages or markers at or past `next`, in order, with nothing in between skipped.
#[derive(Debug)]
struct Cursor {
    topic: String,
    partition: Partition,
    next: Offset,
    stash: Option<Message>,
    /// The consumer reported the end of the partition and has handed over nothing since: librdkafka does
    /// not report that end again, so a continuing read must check it by itself.
    at_end: bool,
}

impl Cursor {
    fn continues(&self, topic: &str, partition: Partition, start: Offset) -> bool {
        self.partition == partition && self.next == start && self.topic == topic
    }
}

/// A consumer on loan from the pool; it goes back when dropped unless it was spoiled.
struct Loan<'a> {
    inner: &'a Inner,
    pooled: Option<Pooled>,
}

impl Loan<'_> {
    fn get(&self) -> &BaseConsumer {
        // Always `Some` until `drop` or `spoil`, which consume the loan.
        &self
            .pooled
            .as_ref()
            .expect("a loaned consumer is present until the loan ends")
            .consumer
    }

    fn take_cursor(&mut self) -> Option<Cursor> {
        self.pooled.as_mut().and_then(|pooled| pooled.cursor.take())
    }

    fn set_cursor(&mut self, cursor: Option<Cursor>) {
        if let Some(pooled) = self.pooled.as_mut() {
            pooled.cursor = cursor;
        }
    }

    /// Drops the consumer instead of returning it to the pool.
    fn spoil(mut self) {
        self.pooled = None;
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
async fn park_idle_consumers(inner: Weak<Inner>) {
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

/// One `offsets_for_times` query for partitions `0..count` of `topic` at `side`; see
/// `Inner::list_offsets`.
fn query_offsets(
    consumer: &BaseConsumer,
    topic: &str,
    count: i32,
    side: RdOffset,
    wait: Duration,
) -> Result<Vec<Offset>, KafkaError> {
    let mut request = TopicPartitionList::with_capacity(usize::try_from(count).unwrap_or(0));
    for partition in 0..count {
        request.add_partition_offset(topic, partition, side)?;
    }
    let answer = consumer.offsets_for_times(request, wait)?;
    (0..count)
        .map(|partition| {
            let element = answer
                .find_partition(topic, partition)
                .ok_or(KafkaError::OffsetFetch(RDKafkaErrorCode::UnknownPartition))?;
            element.error()?;
            match element.offset() {
                RdOffset::Offset(offset) => Ok(offset),
                // The broker answers every sentinel query with an offset; anything else is a bug.
                _ => Err(KafkaError::OffsetFetch(RDKafkaErrorCode::Fail)),
            }
        })
        .collect()
}

/// A partition's leader moved or is not elected yet: asking again shortly succeeds.
fn is_leader_change(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::FencedLeaderEpoch
                | RDKafkaErrorCode::UnknownLeaderEpoch
        )
    )
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

/// Whether a read's outcome came from a broker's answer (rather than from no answer in time).
fn broker_answered<T>(result: &Result<T, ReadError>) -> bool {
    match result {
        Ok(_) => true,
        Err(error) => matches!(
            error,
            ReadError::Retention { .. }
                | ReadError::NotYetWritten { .. }
                | ReadError::UnknownTopic { .. }
                | ReadError::UnknownPartition { .. }
                | ReadError::Undecodable { .. }
        ),
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

impl Inner {
    /// Unassigns idle consumers and returns them to the pool without a cursor.
    fn park(&self, stale: Vec<Pooled>) {
        for mut pooled in stale {
            pooled.cursor = None;
            match pooled.consumer.unassign() {
                Ok(()) => lock(&self.idle).insert(0, pooled),
                Err(error) => {
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
    fn serve_idle_events(&self) {
        let idle = lock(&self.idle);
        for pooled in idle.iter().filter(|pooled| pooled.cursor.is_none()) {
            serve_events(&pooled.consumer);
        }
    }

    fn create_consumer(&self) -> Result<BaseConsumer, Error> {
        let context = CourierContext::new(
            Arc::clone(&self.outages),
            Some(ClientTraffic::new(Arc::clone(&self.traffic))),
        );
        self.config
            .reader_client_config()
            .create_with_context::<_, BaseConsumer>(context)
            .map_err(Error::Config)
    }

    /// Takes the idle consumer whose cursor continues at `topic`/`partition`/`start`, else the least
    /// recently used one without a cursor, else the least recently used one, else a new one. Runs on the
    /// blocking pool.
    fn checkout(
        &self,
        topic: &str,
        partition: Partition,
        start: Offset,
    ) -> Result<Loan<'_>, Error> {
        let taken = {
            let mut idle = lock(&self.idle);
            let continuing = idle.iter().rposition(|pooled| {
                matches!(&pooled.cursor, Some(cursor) if cursor.continues(topic, partition, start))
            });
            let index = continuing
                .or_else(|| idle.iter().position(|pooled| pooled.cursor.is_none()))
                .or(if idle.is_empty() { None } else { Some(0) });
            index.map(|index| idle.remove(index))
        };
        self.loan(taken)
    }

    /// Any idle consumer, for metadata and watermark queries (they leave the assignment alone).
    fn checkout_any(&self) -> Result<Loan<'_>, Error> {
        let taken = lock(&self.idle).pop();
        self.loan(taken)
    }

    fn loan(&self, taken: Option<Pooled>) -> Result<Loan<'_>, Error> {
        let pooled = match taken {
            Some(pooled) => pooled,
            None => {
                debug!(brokers = %self.config.brokers, "Creating another range-reader consumer.");
                Pooled {
                    consumer: self.create_consumer()?,
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

    fn metadata_error(&self, topic: &str, deadline: Instant, source: KafkaError) -> Error {
        Error::kafka(
            format!("fetching metadata of topic {topic:?}"),
            &self.config.brokers,
            self.config.read_timeout.saturating_sub(remaining(deadline)),
            source,
        )
    }

    /// Asks the cluster how many partitions `topic` has, and caches the answer.
    fn refresh_partition_count(
        &self,
        consumer: &BaseConsumer,
        topic: &str,
        deadline: Instant,
    ) -> Result<i32, Error> {
        let metadata = consumer
            .fetch_metadata(Some(topic), remaining(deadline))
            .map_err(|e| self.metadata_error(topic, deadline, e))?;
        let Some(entry) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Err(Error::UnknownTopic {
                topic: topic.to_owned(),
            });
        };
        if let Some(code) = entry.error() {
            let code = RDKafkaErrorCode::from(code);
            lock(&self.partition_counts).remove(topic);
            if is_unknown_topic(code) {
                return Err(Error::UnknownTopic {
                    topic: topic.to_owned(),
                });
            }
            return Err(self.metadata_error(topic, deadline, KafkaError::MetadataFetch(code)));
        }
        let count = i32::try_from(entry.partitions().len()).unwrap_or(i32::MAX);
        lock(&self.partition_counts).insert(topic.to_owned(), count);
        Ok(count)
    }

    /// Fails unless `partition` exists, asking the cluster only when the cache does not know it.
    fn check_partition(
        &self,
        consumer: &BaseConsumer,
        topic: &str,
        partition: Partition,
        range: OffsetRange,
        deadline: Instant,
    ) -> Result<(), ReadError> {
        let cached = lock(&self.partition_counts).get(topic).copied();
        if matches!(cached, Some(count) if (0..count).contains(&partition)) {
            return Ok(());
        }
        let count = match self.refresh_partition_count(consumer, topic, deadline) {
            Ok(count) => count,
            Err(Error::UnknownTopic { topic }) => return Err(ReadError::UnknownTopic { topic }),
            Err(Error::Timeout { .. }) => {
                return Err(ReadError::Timeout {
                    topic: topic.to_owned(),
                    partition,
                    range,
                    waited: self.config.read_timeout,
                    received: 0,
                    last_error: Some("no answer to a metadata request".to_owned()),
                })
            }
            Err(other) => return Err(other.into()),
        };
        if (0..count).contains(&partition) {
            Ok(())
        } else {
            Err(ReadError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
                partition_count: count,
            })
        }
    }

    /// One metadata request for the partitions, then one ListOffsets request per side (per partition
    /// leader) for all of them: the cost does not grow with the partition count.
    fn high_watermarks(&self, topic: &str) -> Result<Vec<PartitionWatermarks>, Error> {
        let deadline = Instant::now() + self.config.read_timeout;
        let consumer = self.checkout_any()?;
        let count = self.refresh_partition_count(&consumer, topic, deadline)?;
        let low = self.list_offsets(&consumer, topic, count, RdOffset::Beginning, deadline)?;
        let high = self.list_offsets(&consumer, topic, count, RdOffset::End, deadline)?;
        Ok((0..count)
            .zip(low.into_iter().zip(high))
            .map(|(partition, (low, high))| PartitionWatermarks {
                partition,
                low,
                high,
            })
            .collect())
    }

    /// The earliest ([`RdOffset::Beginning`]) or latest ([`RdOffset::End`]) offset of partitions
    /// `0..count` of `topic`, by partition. librdkafka's `offsets_for_times` with these sentinels as
    /// timestamps sends one ListOffsets request per partition leader for all the partitions it leads;
    /// "latest" honours `isolation.level` (the last stable offset under read_committed), like
    /// `fetch_watermarks`.
    ///
    /// A leader that moved (or is not elected yet, on a new topic) fails the whole query; librdkafka
    /// has already dropped its stale metadata by then, so the query is asked again after a short pause,
    /// within the deadline.
    fn list_offsets(
        &self,
        consumer: &BaseConsumer,
        topic: &str,
        count: i32,
        side: RdOffset,
        deadline: Instant,
    ) -> Result<Vec<Offset>, Error> {
        let mut pause = Duration::from_millis(20);
        loop {
            match query_offsets(consumer, topic, count, side, remaining(deadline)) {
                Err(error) if is_leader_change(&error) && remaining(deadline) > pause => {
                    debug!(%topic, %error, "A partition leader moved while listing offsets; asking again.");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                result => {
                    return result.map_err(|source| {
                        let which = if side == RdOffset::Beginning {
                            "earliest"
                        } else {
                            "latest"
                        };
                        Error::kafka(
                            format!("listing the {which} offsets of the partitions of {topic:?}"),
                            &self.config.brokers,
                            self.config.read_timeout,
                            source,
                        )
                    })
                }
            }
        }
    }

    fn read(
        &self,
        topic: &str,
        partition: Partition,
        range: OffsetRange,
        deadline: Instant,
    ) -> Result<Vec<Message>, ReadError> {
        let mut consumer = self.checkout(topic, partition, range.start())?;
        let cursor = consumer.take_cursor();
        if let Err(error) = self.check_partition(&consumer, topic, partition, range, deadline) {
            if cursor.is_some() {
                release(consumer, topic, partition);
            }
            return Err(error);
        }
        let cursor = cursor.filter(|cursor| cursor.continues(topic, partition, range.start()));
        let mut read = RangeRead {
            inner: self,
            consumer: &consumer,
            topic,
            partition,
            range,
            deadline,
            messages: Vec::new(),
            next: range.start(),
            stash: None,
            at_end: false,
            last_error: None,
        };
        let result = read.run(cursor);
        let (stash, at_end) = (read.stash.take(), read.at_end);
        if result.is_ok() {
            // Keep the partition assigned: the next range of this partition continues from here.
            consumer.set_cursor(Some(Cursor {
                topic: topic.to_owned(),
                partition,
                next: range.end(),
                stash,
                at_end,
            }));
            return result;
        }
        // After an error, start the next read from a clean assignment.
        consumer.set_cursor(None);
        release(consumer, topic, partition);
        result
    }
}

/// Unassigns a loaned consumer before it goes back to the pool. A consumer that cannot even unassign is
/// not trusted with another range: it is dropped.
fn release(consumer: Loan<'_>, topic: &str, partition: Partition) {
    if let Err(error) = consumer.unassign() {
        warn!(%topic, partition, %error, "Dropping a range-reader consumer that failed to unassign.");
        consumer.spoil();
    }
}

/// The state of one range read.
struct RangeRead<'a> {
    inner: &'a Inner,
    consumer: &'a BaseConsumer,
    topic: &'a str,
    partition: Partition,
    range: OffsetRange,
    deadline: Instant,
    messages: Vec<Message>,
    /// Every offset below this has been delivered or is known to hold no message.
    next: Offset,
    /// A polled message at or past `end`: the first message of the partition's next range.
    stash: Option<Message>,
    /// The end of the partition was reported and nothing was handed over since.
    at_end: bool,
    /// The last transient error librdkafka reported (it retries those by itself); shown on timeout.
    last_error: Option<String>,
}

/// What to do after one poll.
enum Step {
    Continue,
    Done,
}

impl RangeRead<'_> {
    fn run(&mut self, cursor: Option<Cursor>) -> Result<Vec<Message>, ReadError> {
        // Capacity for the common case: the whole range, up to a sane bound.
        self.messages
            .reserve(usize::try_from(self.range.len().min(65_536)).unwrap_or(0));
        match cursor {
            Some(cursor) => {
                // The consumer continues exactly where this range starts: no re-assignment.
                if let Some(message) = cursor.stash {
                    if let Step::Done = self.accept(message) {
                        return Ok(std::mem::take(&mut self.messages));
                    }
                }
                if cursor.at_end {
                    if let Step::Done = self.on_end_of_partition()? {
                        return Ok(std::mem::take(&mut self.messages));
                    }
                }
            }
            None => {
                let mut assignment = TopicPartitionList::with_capacity(1);
                assignment
                    .add_partition_offset(
                        self.topic,
                        self.partition,
                        RdOffset::Offset(self.range.start()),
                    )
                    .and_then(|()| self.consumer.assign(&assignment))
                    .map_err(|source| self.kafka_error("assigning the partition", source))?;
            }
        }
        loop {
            let wait = remaining(self.deadline);
            if wait.is_zero() {
                return Err(self.timeout());
            }
            let step = match self.consumer.poll(wait) {
                None => Step::Continue,
                Some(Ok(message)) => self.on_message(&message),
                Some(Err(KafkaError::PartitionEOF(partition))) if partition == self.partition => {
                    self.at_end = true;
                    self.on_end_of_partition()?
                }
                Some(Err(error)) => self.on_error(error)?,
            };
            if let Step::Done = step {
                return Ok(std::mem::take(&mut self.messages));
            }
        }
    }

    fn on_message(&mut self, message: &rdkafka::message::BorrowedMessage<'_>) -> Step {
        if message.partition() != self.partition || message.topic() != self.topic {
            // Cannot happen with a single-partition assignment; never deliver it if it does.
            return Step::Continue;
        }
        self.at_end = false;
        if message.offset() < self.next {
            // A message from before this range (an outdated fetch): never deliver one twice.
            return Step::Continue;
        }
        self.accept(Message {
            partition: self.partition,
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            // In the producer's order, duplicates and null values kept: the destination sees them all.
            headers: message.headers().map_or_else(Vec::new, |headers| {
                rdkafka::message::Headers::iter(headers)
                    .map(|header| courier_core::Header {
                        name: header.key.to_owned(),
                        value: header.value.map(<[u8]>::to_vec),
                    })
                    .collect()
            }),
            payload: message.payload().map(<[u8]>::to_vec),
        })
    }

    /// Takes a message at or past `next`, in offset order.
    fn accept(&mut self, message: Message) -> Step {
        if message.offset >= self.range.end() {
            // The first message of the next range: keep it for a continuing read.
            self.stash = Some(message);
            return Step::Done;
        }
        if message.offset < self.next {
            return Step::Continue;
        }
        self.next = message.offset + 1;
        self.messages.push(message);
        if self.next >= self.range.end() {
            Step::Done
        } else {
            Step::Continue
        }
    }

    /// The consumer has handed over everything the broker had up to its end offset (the last stable offset
    /// under read_committed). The consumer's position also counts the transaction markers it stepped over.
    fn on_end_of_partition(&mut self) -> Result<Step, ReadError> {
        if let Some(position) = self.position() {
            self.next = max(self.next, position);
        }
        if self.next >= self.range.end() {
            return Ok(Step::Done);
        }
        // Below `end`: either the rest is not written yet, or it was written after that fetch. Ask afresh.
        let (_, high) = self.watermarks()?;
        if high < self.range.end() {
            return Err(ReadError::NotYetWritten {
                topic: self.topic.to_owned(),
                partition: self.partition,
                range: self.range,
                readable_end: high,
            });
        }
        // Written since: the consumer keeps fetching, keep polling.
        Ok(Step::Continue)
    }

    fn on_error(&mut self, error: KafkaError) -> Result<Step, ReadError> {
        let code = match &error {
            KafkaError::MessageConsumption(code) => Some(*code),
            KafkaError::MessageConsumptionFatal(_) => {
                return Err(self.kafka_error("consuming (fatal client error)", error))
            }
            // End of another partition: not ours (cannot happen with a single-partition assignment).
            KafkaError::PartitionEOF(_) => return Ok(Step::Continue),
            _ => None,
        };
        match code {
            Some(RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange) => {
                Err(self.out_of_range())
            }
            Some(code) if is_unknown_topic(code) => {
                // Deleted while we read? Metadata tells.
                lock(&self.inner.partition_counts).remove(self.topic);
                self.inner.check_partition(
                    self.consumer,
                    self.topic,
                    self.partition,
                    self.range,
                    self.deadline,
                )?;
                Err(self.kafka_error("fetching", error))
            }
            Some(code) if is_undecodable(code) => Err(ReadError::Undecodable {
                topic: self.topic.to_owned(),
                partition: self.partition,
                range: self.range,
                offset: self.next,
                cause: self
                    .consumer
                    .context()
                    .take_undecodable()
                    .unwrap_or_else(|| error.to_string()),
            }),
            Some(RDKafkaErrorCode::TopicAuthorizationFailed) => {
                Err(self.kafka_error("fetching (not authorized to read the topic)", error))
            }
            _ => {
                // Transport and leadership errors: librdkafka reconnects and refetches by itself.
                debug!(topic = %self.topic, partition = self.partition, %error, "Transient error while reading a range.");
                self.last_error = Some(error.to_string());
                Ok(Step::Continue)
            }
        }
    }

    /// The fetch offset is outside the log: deleted by retention, or not written yet.
    fn out_of_range(&mut self) -> ReadError {
        let (low, high) = match self.watermarks() {
            Ok(watermarks) => watermarks,
            Err(error) => return error,
        };
        if self.next < low {
            ReadError::Retention {
                topic: self.topic.to_owned(),
                partition: self.partition,
                requested_start: self.range.start(),
                log_start: low,
            }
        } else if self.next >= high {
            ReadError::NotYetWritten {
                topic: self.topic.to_owned(),
                partition: self.partition,
                range: self.range,
                readable_end: high,
            }
        } else {
            // The log moved between the fetch and the question (a leader change, say): retry.
            self.kafka_error(
                "fetching (offset reported out of range, but within the watermarks now)",
                KafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange),
            )
        }
    }

    /// The application position of our partition: one past the last message or transaction marker the
    /// consumer handed over.
    fn position(&self) -> Option<Offset> {
        let positions = self.consumer.position().ok()?;
        let element = positions.find_partition(self.topic, self.partition)?;
        match element.offset() {
            RdOffset::Offset(offset) => Some(offset),
            _ => None,
        }
    }

    fn watermarks(&self) -> Result<(Offset, Offset), ReadError> {
        let wait = remaining(self.deadline);
        if wait.is_zero() {
            return Err(self.timeout());
        }
        self.consumer
            .fetch_watermarks(self.topic, self.partition, wait)
            .map_err(|source| {
                if is_timeout(&source) {
                    self.timeout()
                } else {
                    self.kafka_error("fetching the partition's watermarks", source)
                }
            })
    }

    fn timeout(&self) -> ReadError {
        ReadError::Timeout {
            topic: self.topic.to_owned(),
            partition: self.partition,
            range: self.range,
            waited: self.inner.config.read_timeout,
            received: self.messages.len(),
            last_error: self.last_error.clone(),
        }
    }

    fn kafka_error(&self, operation: &'static str, source: KafkaError) -> ReadError {
        ReadError::Kafka {
            topic: self.topic.to_owned(),
            partition: self.partition,
            operation,
            source,
        }
    }
}
