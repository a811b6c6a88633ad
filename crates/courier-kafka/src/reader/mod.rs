//! Reading exactly `[start, end)` of one partition, and the watermarks the planner carves ranges from.
//!
//! Owns: [`RangeReader`] (a cheap-to-clone handle to a pool of librdkafka consumers) and
//! [`PartitionWatermarks`].
//!
//! # How a range is read
//! 1. Reads of one partition take turns through its *lane*, which keeps a read-ahead window of what was
//!    read last ([`window`], [`WINDOW_BYTES`]): the part of the range the window holds is copied from it.
//!    The rest is read from Kafka by a consumer from the pool (created off the runtime when none is
//!    idle). Consumers are reused across ranges: closing one costs ~100 ms. The consumer that just
//!    finished `[a, b)` of the partition is used for `[b, c)`: it keeps the partition assigned and
//!    continues from its prefetched queue, with no re-assignment (a fetch round trip, ~10 ms at the tail of
//!    the log, and everything it prefetched thrown away). When it stands a little behind the range asked
//!    for (another task leased the ranges in between and has not asked yet), it reads on through the gap
//!    and the window hands the gap to that task: a partition's messages cross the wire about once,
//!    whatever order the worker's tasks ask in, and routes reading the same topic at about the same place
//!    share the reads.
//! 2. The partition is checked against cached metadata (one metadata request per topic, refreshed when a
//!    partition is not in the cache), so an unknown topic or partition is a clear error, not a timeout.
//!    Metadata and watermark queries go through the reader's query consumer, which never has a
//!    partition assigned, so they never wait behind a fetch (`pool::checkout_for_query`).
//! 3. Otherwise `assign` at `start`: no subscription, no group membership, no commits. The store owns
//!    progress.
//! 4. Messages are polled until one of:
//!    - the message at `end - 1` arrives, or one at `>= end` (gaps from compaction and transaction
//!      markers do not matter: the range is still `[start, end)`); a message past `end` is kept for the
//!      next range of the same partition;
//!    - the consumer reaches the end of the partition (`enable.partition.eof`) and its position is
//!      `>= end` (the tail of the range held only transaction markers or aborted records);
//!    - the end of the partition is below `end` even when asked afresh: [`ReadError::NotYetWritten`];
//!    - the fetch offset is out of range: the watermarks decide. Below the log start offset (retention
//!      or `DeleteRecords` deleted them before they were read), the offsets up to the log start are
//!      noted as *deleted* in [`RangeContents::deleted`] (never passed off as a gap) and the read goes on
//!      from the log start: what Kafka still holds of the range is read, and a range wholly below the
//!      log start comes back with no message and all of it deleted. Past the end:
//!      [`ReadError::NotYetWritten`];
//!    - a record batch cannot be decoded (a codec this build lacks, a corrupt batch): the read steps over
//!      exactly that batch and goes on after it, and the batch's offsets in the range are noted as
//!      *undecodable* in [`RangeContents::undecodable`] (never passed off as a gap), so the messages on
//!      both sides of it are read and delivered; [`RangeReader::read`] makes it
//!      [`ReadError::Undecodable`]. Finding where the batch ends takes probes, because librdkafka
//!      (2.12, `rdkafka_msgset_reader.c`) reports a batch that fails to decompress or parse at its
//!      *base* offset, leaves its fetch position there (so it fetches the same batch again and again)
//!      and never says where the batch ends: assigning at any offset inside the batch makes the broker
//!      send the whole batch again, with the same error, while assigning past it yields the next
//!      message. So a probe assigns at `p` and takes the first answer: the same batch's error means
//!      `p` is inside it, anything else (a message at or after `p`, another batch's error, the end of
//!      the partition) that `p` is past it. An exponential then binary search over the rest of the range finds its
//!      end in about `2 log2(batch records)` fetches, each logged, counted
//!      ([`UNDECODABLE_PROBES`], [`Undecodable::probes`]) and bounded by the read's deadline. Which
//!      batch an error is about comes from librdkafka's words ("... of message at 5 of 96 bytes",
//!      `context::batch_offset`); without them every undecodable error counts as the same batch, which
//!      can only widen the span (a readable batch between two bad ones noted undecodable too, still
//!      replayable), never skip an offset unreported. (Only a CRC failure, with `check.crcs` on, makes
//!      librdkafka skip a batch itself, and courier leaves that off.) A batch that runs past the end of
//!      the range ends the read there;
//!    - the deadline ([`KafkaConfig::read_timeout`]) passes: [`ReadError::Timeout`], retryable.
//! 5. After a success the consumer goes back to the pool still assigned, so it keeps prefetching (at most
//!    `queued.max.messages.kbytes`); after an error it is unassigned first, so nothing stale survives,
//!    and after a read out of order (what follows the range was read already: the window holds it, or
//!    another consumer stands past it) too, so it does not fetch those bytes a second time. A read that
//!    continues no consumer gets an unassigned or new one (up to two per partition being read) before
//!    it takes one positioned elsewhere, whose prefetch would be thrown away.
//!    A consumer left idle for [`PARK_AFTER`] is unassigned by a background task, and an unused lane's
//!    window dropped: an idle worker does not keep long-polling the brokers (one fetch per
//!    `fetch.wait.max.ms` per consumer) or holding memory.
//!
//! # Layout
//! - `pool`: the consumers, their loans and the background task that parks idle ones;
//! - `metadata`: partition counts (cached) and watermarks;
//! - `range_read`: one exact read by one consumer, the state machine of step 4;
//! - `window`: the read-ahead window of a lane. It only ever holds offsets that were read: offsets found
//!   deleted or undecodable are left out, so a range served from it later never hides either.
//!
//! # Why a `BaseConsumer` driven on a blocking thread
//! Reading a range is a tight loop over `poll`: on the blocking pool, a `BaseConsumer` hands each message
//! over with no async wake-up or channel hop per message. It was the fastest option in DESIGN.md's
//! measurements (~2.3 M msgs/s on 2 cores against librdkafka's mock broker); here, against the real local
//! broker sharing the same 2 cores, one read of 200,000 messages ran at ~0.8-1.3 M msgs/s. A
//! `StreamConsumer` adds a waker round trip per message and still needs the same end-of-range logic. The
//! async caller only awaits the blocking task.

mod metadata;
mod pool;
mod range_read;
mod window;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use courier_core::{Message, Offset, OffsetRange, Partition};
use rdkafka::consumer::BaseConsumer as RdBaseConsumer;

use crate::config::KafkaConfig;
use crate::context::CourierContext;
use crate::error::{Error, ReadError};
use crate::outage::{OutageLog, Waiting};
use crate::traffic::Traffic;
use pool::Pooled;
use range_read::AfterRead;
use window::Window;

/// How long a pooled consumer keeps fetching its partition after its last read, in case the next range of
/// that partition comes soon (the common case: a worker keeping up with a partition, range after range).
/// Then it is unassigned, and the partition's read-ahead window dropped. Measured on the local broker,
/// reads back to back: a continuing read of 1,000 messages took ~0.8-1.2 ms, a re-assigned one ~4.4 ms;
/// following the tail (produce 1, read it) cost ~1.5 ms per read on top of the produce; re-reading the
/// last message of the log ~11 ms (a re-assignment waits for the fetch in flight, up to
/// `fetch.wait.max.ms`).
pub const PARK_AFTER: Duration = Duration::from_secs(3);

/// Bytes of recently read messages kept per partition being read ([`window`]): what lets a read start
/// behind another task's range and hand it over, and several routes of one topic share one read.
const WINDOW_BYTES: usize = 8 << 20;

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

/// What Kafka still held of a range ([`RangeReader::read_surviving`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RangeContents {
    /// The messages, in offset order, none outside the range, none twice.
    pub messages: Vec<Message>,
    /// Offsets of the range Kafka had deleted (retention, `DeleteRecords`) before they were read, in
    /// order, disjoint. Usually one run at the start of the range; another only if retention moved on
    /// while the range was read. No message of `messages` lies in one.
    pub deleted: Vec<OffsetRange>,
    /// Offsets of the range that lie in record batches that cannot be decoded, in order, disjoint: the
    /// read stepped over each batch (see the module docs) and read on after it. No message of `messages`
    /// lies in one.
    pub undecodable: Vec<Undecodable>,
}

/// Offsets a read stepped over: a record batch that cannot be decoded (a codec this build lacks, a
/// corrupt batch). Permanent: the same bytes fail the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecodable {
    /// The batch's offsets within the range read.
    pub offsets: OffsetRange,
    /// librdkafka's words (codec, batch offset and size), else the error code.
    pub cause: String,
    /// The fetches it took to find where the batch ends.
    pub probes: u32,
}

/// Fetches made to find where an undecodable record batch ends (module docs, step 4).
pub const UNDECODABLE_PROBES: &str = "courier_kafka_undecodable_probes_total";

impl RangeContents {
    /// [`ReadError::Undecodable`] for the read of `range`, naming the first undecodable batch, if any.
    pub fn undecodable_error(
        &self,
        topic: &str,
        partition: Partition,
        range: OffsetRange,
    ) -> Option<ReadError> {
        self.undecodable.first().map(|u| ReadError::Undecodable {
            topic: topic.to_owned(),
            partition,
            range,
            offsets: u.offsets,
            cause: u.cause.clone(),
        })
    }

    /// How many offsets were deleted before they were read.
    pub fn deleted_offsets(&self) -> u64 {
        self.deleted.iter().map(OffsetRange::len).sum()
    }
}

/// Reads exact offset ranges; a cheap-to-clone handle to a pool of consumers.
///
/// Share one `RangeReader` (clone it) between all delivery tasks of a worker: reads of different
/// partitions run concurrently, each on its own consumer from the pool (created off the runtime when none
/// is idle); reads of one partition take turns, so the partition keeps one consumer reading forwards and
/// its messages cross the wire about once (see the module docs). Consumers are closed when the last clone
/// is dropped.
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
    /// Consumers alive, idle or on loan (the pool's size, see `pool::checkout`), not counting the query
    /// consumer.
    consumers: AtomicUsize,
    /// The consumer metadata and watermark queries use, never assigned a partition
    /// (`pool::checkout_for_query`); `None` while a query holds it.
    query: Mutex<Option<Pooled>>,
    /// Partition counts per topic, from metadata. Partitions can be added to a topic, never removed, so a
    /// cached count is only ever too small: a partition beyond it triggers a refresh.
    partition_counts: Mutex<HashMap<String, CachedCount>>,
    /// Per partition being read: reads of one partition take turns, and share what was read.
    lanes: Mutex<HashMap<(String, Partition), SharedLane>>,
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
    /// Creates a reader and its query consumer (off the runtime: client creation does blocking I/O);
    /// reads create theirs as they need them.
    /// Fails on an invalid configuration, and with SASL or TLS configured on brokers that refuse
    /// courier's credentials (`Error::Refused`, at once); an unreachable cluster shows up on the first
    /// call (with SASL or TLS, here, after `read_timeout`).
    pub async fn connect(config: KafkaConfig) -> Result<Self, Error> {
        crate::refusal::check(&config).await?;
        let inner = Arc::new(Inner {
            idle: Mutex::new(Vec::new()),
            consumers: AtomicUsize::new(0),
            query: Mutex::new(None),
            partition_counts: Mutex::new(HashMap::new()),
            lanes: Mutex::new(HashMap::new()),
            traffic: Arc::default(),
            outages: OutageLog::for_cluster(&config.brokers),
            config,
        });
        let creator = Arc::clone(&inner);
        let consumer = blocking(move || creator.create_consumer()).await??;
        *lock(&inner.query) = Some(Pooled {
            consumer,
            cursor: None,
            idle_since: Instant::now(),
        });
        tokio::spawn(pool::park_idle_consumers(Arc::downgrade(&inner)));
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

    /// Reads exactly the messages of `topic`/`partition` with offsets in `range`, in offset order, all
    /// or nothing: an undecodable batch fails it with [`ReadError::Undecodable`], offsets of the range
    /// deleted before they were read with [`ReadError::Retention`] (naming the first run deleted).
    /// Delivery uses
    /// [`read_surviving`](Self::read_surviving) instead.
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
        let contents = self.read_surviving(topic, partition, range).await?;
        if let Some(error) = contents.undecodable_error(topic, partition, range) {
            return Err(error);
        }
        match contents.deleted.first() {
            None => Ok(contents.messages),
            Some(deleted) => Err(ReadError::Retention {
                topic: topic.to_owned(),
                partition,
                deleted: *deleted,
            }),
        }
    }

    /// Reads what Kafka still holds of `range`: its messages as [`read`](Self::read) does, and the
    /// offsets found deleted (retention, `DeleteRecords`) before they were read, exactly. A range partly
    /// below the partition's log start yields the messages from the log start on; one wholly below it,
    /// no message and all of it deleted. A read that meets a record batch it cannot decode steps over
    /// it and names its offsets ([`RangeContents::undecodable`]), with the messages on both sides.
    pub async fn read_surviving(
        &self,
        topic: &str,
        partition: Partition,
        range: OffsetRange,
    ) -> Result<RangeContents, ReadError> {
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
            let consumer = inner.checkout_for_query()?;
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

type SharedLane = Arc<Mutex<Lane>>;

/// A topic's partition count and when the cluster said so.
#[derive(Debug, Clone, Copy)]
struct CachedCount {
    count: i32,
    fetched_at: Instant,
}

/// One partition being read: its read-ahead window. Reads of the partition hold the lane's lock for
/// their whole duration (reads of one partition take turns; the consumer reading it continues from one
/// read to the next).
struct Lane {
    window: Window,
    last_used: Instant,
}

impl Inner {
    /// The lane of `topic`/`partition`, created on first use.
    fn lane(&self, topic: &str, partition: Partition) -> SharedLane {
        let mut lanes = lock(&self.lanes);
        Arc::clone(
            lanes
                .entry((topic.to_owned(), partition))
                .or_insert_with(|| {
                    Arc::new(Mutex::new(Lane {
                        window: Window::new(WINDOW_BYTES),
                        last_used: Instant::now(),
                    }))
                }),
        )
    }

    /// Drops the windows of partitions nobody read for [`PARK_AFTER`] (their consumers are parked too).
    fn drop_idle_lanes(&self) {
        lock(&self.lanes).retain(|_, lane| match lane.try_lock() {
            Ok(lane) => lane.last_used.elapsed() < PARK_AFTER,
            // Being read right now.
            Err(_) => true,
        });
    }

    /// Reads `range` through its partition's lane: what the window holds is copied from it, the rest
    /// read from Kafka (through the gap, when the partition's consumer stands a little behind `range`),
    /// and what was read kept in the window for the reads that follow. Runs on the blocking pool.
    fn read(
        &self,
        topic: &str,
        partition: Partition,
        range: OffsetRange,
        deadline: Instant,
    ) -> Result<RangeContents, ReadError> {
        let lane = self.lane(topic, partition);
        let mut lane = lock(&lane);
        lane.last_used = Instant::now();
        let mut messages = Vec::new();
        let from = match lane.window.serve(range, &mut messages) {
            Some(covered) if covered >= range.end() => {
                return Ok(RangeContents {
                    messages,
                    ..RangeContents::default()
                })
            }
            Some(covered) => covered,
            None => range.start(),
        };
        let Ok(rest) = OffsetRange::new(from, range.end()) else {
            // Cannot happen: the window covered less than the range.
            return Ok(RangeContents {
                messages,
                ..RangeContents::default()
            });
        };
        // The partition's consumer stands a little behind: read on through the gap (another task's range,
        // about to be asked for) rather than re-assigning a consumer and dropping what it prefetched.
        let behind = self
            .cursor_of(topic, partition)
            .filter(|&next| next < from && from - next <= lane.window.reach());
        if let Some(next) = behind {
            if let Ok(through) = OffsetRange::new(next, range.end()) {
                // A read through that met an undecodable batch: read this range alone, so that the
                // offsets it reports undecodable are this range's own.
                let through_read = self
                    .read_exact(topic, partition, through, deadline, AfterRead::KeepReading)
                    .ok()
                    .filter(|read| read.undecodable.is_empty());
                if let Some(read) = through_read {
                    remember(&mut lane.window, through, &read);
                    messages.extend(read.messages.into_iter().filter(|m| m.offset >= from));
                    // Only what was deleted of this range is this range's to report.
                    let deleted = read
                        .deleted
                        .iter()
                        .filter_map(|d| OffsetRange::new(d.start().max(from), d.end()).ok())
                        .collect();
                    return Ok(RangeContents {
                        messages,
                        deleted,
                        undecodable: Vec::new(),
                    });
                }
                // The gap could not be read: read this range alone, so its outcome is its own.
            }
        }
        // Read out of order (a later range of the partition was read first): what follows this range is
        // read already, and a consumer left prefetching it would fetch it again.
        let continuation_read = lane.window.holds(rest.end())
            || self
                .cursor_of(topic, partition)
                .is_some_and(|next| next >= rest.end());
        let after = if continuation_read {
            AfterRead::Stop
        } else {
            AfterRead::KeepReading
        };
        let read = self.read_exact(topic, partition, rest, deadline, after)?;
        remember(&mut lane.window, rest, &read);
        messages.extend(read.messages);
        Ok(RangeContents {
            messages,
            deleted: read.deleted,
            undecodable: read.undecodable,
        })
    }
}

/// Keeps what a read from Kafka of `read` held in the lane's window: only the part after the last
/// offset found deleted or undecodable, so that no later range is served from the window with a deletion
/// or an undecodable batch taken for a gap in the log.
fn remember(window: &mut Window, read: OffsetRange, contents: &RangeContents) {
    let from = contents
        .deleted
        .iter()
        .chain(contents.undecodable.iter().map(|u| &u.offsets))
        .map(OffsetRange::end)
        .fold(read.start(), Offset::max);
    if let Ok(kept) = OffsetRange::new(from, read.end()) {
        let first = contents.messages.partition_point(|m| m.offset < from);
        window.append(kept, &contents.messages[first..]);
    }
}
