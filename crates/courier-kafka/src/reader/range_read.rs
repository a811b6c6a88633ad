//! One exact read of `[start, end)` of a partition by one consumer: the state machine described in the
//! module docs of [`reader`](super), and the [`Cursor`] a consumer keeps for the range that follows.

use std::cmp::max;
use std::time::Instant;

use courier_core::{Message, Offset, OffsetRange, Partition};
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::{Offset as RdOffset, TopicPartitionList};
use tracing::{debug, warn};

use super::pool::Loan;
use super::{lock, remaining, BaseConsumer, Inner, RangeContents, Undecodable, UNDECODABLE_PROBES};
use crate::context::batch_offset;
use crate::error::{is_timeout, is_undecodable, is_unknown_topic, ReadError};

/// A consumer left assigned to `topic`/`partition` after reading a range that ended at `next`: the next
/// thing it hands over is `stash` (a message it already polled, at or past `next`) if any, then
/// messages or markers at or past `next`, in order, with nothing in between skipped.
#[derive(Debug)]
pub(super) struct Cursor {
    pub(super) topic: String,
    pub(super) partition: Partition,
    pub(super) next: Offset,
    stash: Option<Message>,
    /// The consumer reported the end of the partition and has handed over nothing since: librdkafka does
    /// not report that end again, so a continuing read must check it by itself.
    at_end: bool,
}

impl Cursor {
    /// A cursor at `next` with nothing stashed (tests of the pool's choices).
    #[cfg(test)]
    pub(super) fn at(topic: &str, partition: Partition, next: Offset) -> Self {
        Self {
            topic: topic.to_owned(),
            partition,
            next,
            stash: None,
            at_end: false,
        }
    }

    pub(super) fn continues(&self, topic: &str, partition: Partition, start: Offset) -> bool {
        self.partition == partition && self.next == start && self.topic == topic
    }
}

impl Inner {
    /// Reads exactly `range` with a consumer of the pool, preferring the one whose cursor continues at
    /// its start.
    pub(super) fn read_exact(
        &self,
        topic: &str,
        partition: Partition,
        range: OffsetRange,
        deadline: Instant,
        after: AfterRead,
    ) -> Result<RangeContents, ReadError> {
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
            deleted: Vec::new(),
            undecodable: Vec::new(),
            stepped_over: None,
            fetch_stopped: false,
        };
        let result = read.run(cursor).map(|messages| RangeContents {
            messages,
            deleted: std::mem::take(&mut read.deleted),
            undecodable: std::mem::take(&mut read.undecodable),
        });
        let (stash, at_end) = (read.stash.take(), read.at_end);
        if result.is_ok() && !read.fetch_stopped && after == AfterRead::KeepReading {
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
        // After an error (or a fetch stopped out of range), start the next read from a clean assignment;
        // after a read whose continuation was read already, stop the prefetch that would read it again.
        consumer.set_cursor(None);
        release(consumer, topic, partition);
        result
    }
}

/// What a read's consumer does once the range is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterRead {
    /// Keep the partition assigned, prefetching: the next range of the partition continues from here.
    KeepReading,
    /// Unassign: what follows the range was read already (another consumer stands past it, or the
    /// lane's window holds it), so prefetching it would only fetch the same bytes again.
    Stop,
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
    /// Offsets of the range Kafka had deleted (retention, `DeleteRecords`) before they were read, in
    /// order, contiguous runs merged.
    deleted: Vec<OffsetRange>,
    /// Offsets of the range in record batches that cannot be decoded, stepped over, in order.
    undecodable: Vec<Undecodable>,
    /// The base offset of the last undecodable batch stepped over: an error about it is stale.
    stepped_over: Option<Offset>,
    /// The consumer's fetch stopped at an out-of-range offset and was not re-assigned: it cannot continue
    /// into the next range.
    fetch_stopped: bool,
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
                self.on_out_of_range()
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
            Some(code) if is_undecodable(code) => self.on_undecodable(&error),
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

    /// A record batch cannot be decoded: note its offsets in the range as undecodable and read on after
    /// it (module docs, step 4).
    fn on_undecodable(&mut self, error: &KafkaError) -> Result<Step, ReadError> {
        let cause = self
            .consumer
            .context()
            .take_undecodable()
            .unwrap_or_else(|| error.to_string());
        // Without librdkafka's words, the batch is the one holding `next`: everything before it was
        // handed over.
        let batch = batch_offset(&cause).unwrap_or(self.next);
        if self.stepped_over == Some(batch) {
            // Fetched before the re-assignment past it: stale.
            return Ok(Step::Continue);
        }
        // Offsets between `next` and the batch held no message (librdkafka hands over everything before
        // the batch first): a gap, like compaction's.
        let from = batch.max(self.next);
        if from >= self.range.end() {
            // The range ended in a gap before the batch. The fetch stays stuck at the batch.
            self.next = from;
            self.fetch_stopped = true;
            return Ok(Step::Done);
        }
        let (past, probes) = self.end_of_batch(batch, from)?;
        metrics::counter!(UNDECODABLE_PROBES).increment(u64::from(probes));
        let Ok(offsets) = OffsetRange::new(from, past) else {
            // Cannot happen: the search only ever moves past `from`.
            return Err(
                self.kafka_error("stepping over an undecodable record batch", error.clone())
            );
        };
        warn!(
            topic = %self.topic,
            partition = self.partition,
            range = %self.range,
            %offsets,
            probes,
            %cause,
            "A record batch cannot be decoded: stepped over it, reading on after it; its offsets are \
             reported undecodable. Runbook: docs/runbooks/quarantined-messages.md"
        );
        self.undecodable.push(Undecodable {
            offsets,
            cause,
            probes,
        });
        self.stepped_over = Some(batch);
        self.next = past;
        if past >= self.range.end() {
            // The batch runs to the range's end or past it: the fetch stays stuck at it.
            self.fetch_stopped = true;
            return Ok(Step::Done);
        }
        self.assign(past)?;
        Ok(Step::Continue)
    }

    /// The first offset past the undecodable batch that starts at `batch`, searching `(from, end)` for
    /// where it ends (`from` lies in it), or the range's end when the batch runs to it; and how many
    /// probes that took. Exponential then binary search: about `2 log2(records of the batch)` probes.
    fn end_of_batch(&mut self, batch: Offset, from: Offset) -> Result<(Offset, u32), ReadError> {
        let last = self.range.end() - 1;
        let (mut inside, mut step, mut probes) = (from, 1i64, 0u32);
        let mut past = None;
        while past.is_none() && inside < last {
            let probe = inside.saturating_add(step).min(last);
            probes += 1;
            if self.probe_is_inside(batch, probe)? {
                inside = probe;
                step = step.saturating_mul(2);
            } else {
                past = Some(probe);
            }
        }
        let Some(mut past) = past else {
            return Ok((self.range.end(), probes));
        };
        while past - inside > 1 {
            let probe = inside + (past - inside) / 2;
            probes += 1;
            if self.probe_is_inside(batch, probe)? {
                inside = probe;
            } else {
                past = probe;
            }
        }
        Ok((past, probes))
    }

    /// Whether `offset` lies in the undecodable batch that starts at `batch`: assigned there, the
    /// consumer reports that batch's error again. Anything else it hands over first (a message at or
    /// after `offset`, another batch's error, the end of the partition) means `offset` is past it.
    fn probe_is_inside(&mut self, batch: Offset, offset: Offset) -> Result<bool, ReadError> {
        debug!(topic = %self.topic, partition = self.partition, batch, offset, "Probing where an undecodable record batch ends.");
        self.assign(offset)?;
        loop {
            let wait = remaining(self.deadline);
            if wait.is_zero() {
                return Err(self.timeout());
            }
            match self.consumer.poll(wait) {
                Some(Ok(message))
                    if message.partition() == self.partition && message.offset() >= offset =>
                {
                    return Ok(false)
                }
                // Nothing yet, or a message from before the assignment.
                None | Some(Ok(_)) => {}
                Some(Err(KafkaError::PartitionEOF(partition))) if partition == self.partition => {
                    return Ok(false)
                }
                Some(Err(KafkaError::MessageConsumption(code))) if is_undecodable(code) => {
                    let reported = self
                        .consumer
                        .context()
                        .take_undecodable()
                        .and_then(|cause| batch_offset(&cause));
                    match reported {
                        // Without librdkafka's words, take it for the same batch: the span can only
                        // grow, never hide an offset.
                        None => return Ok(true),
                        Some(reported) if reported == batch => return Ok(true),
                        Some(reported) if reported > batch => return Ok(false),
                        // A batch before it: from before the assignment, stale.
                        Some(_) => {}
                    }
                }
                Some(Err(
                    error @ KafkaError::MessageConsumption(
                        RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange,
                    ),
                )) => {
                    // Retention moved on under the read: read the range again, afresh.
                    return Err(self.kafka_error(
                        "probing where an undecodable record batch ends (offset out of range)",
                        error,
                    ));
                }
                Some(Err(error @ KafkaError::MessageConsumptionFatal(_))) => {
                    return Err(self.kafka_error("consuming (fatal client error)", error))
                }
                Some(Err(error)) => {
                    debug!(topic = %self.topic, partition = self.partition, %error, "Transient error while probing an undecodable record batch.");
                    self.last_error = Some(error.to_string());
                }
            }
        }
    }

    /// The fetch offset is outside the log: deleted by retention, or not written yet.
    ///
    /// Deleted: `[next, log start)` is noted as deleted (never passed off as a gap) and reading goes on
    /// from the log start, so what Kafka still holds of the range is delivered. A range wholly below the
    /// log start ends here, all of it deleted.
    fn on_out_of_range(&mut self) -> Result<Step, ReadError> {
        let (low, high) = self.watermarks()?;
        if self.next < low {
            let deleted_to = low.min(self.range.end());
            self.note_deleted(self.next, deleted_to);
            self.next = deleted_to;
            if deleted_to >= self.range.end() {
                self.fetch_stopped = true;
                return Ok(Step::Done);
            }
            debug!(topic = %self.topic, partition = self.partition, range = %self.range, log_start = low, "Offsets of the range were deleted before they were read; reading on from the log start.");
            self.assign(low)?;
            Ok(Step::Continue)
        } else if self.deleted.last().is_some_and(|d| d.end() == self.next) {
            // Reported by the fetch from before the re-assignment at the log start (nothing was read
            // since): stale.
            Ok(Step::Continue)
        } else if self.next >= high {
            Err(ReadError::NotYetWritten {
                topic: self.topic.to_owned(),
                partition: self.partition,
                range: self.range,
                readable_end: high,
            })
        } else {
            // The log moved between the fetch and the question (a leader change, say): retry.
            Err(self.kafka_error(
                "fetching (offset reported out of range, but within the watermarks now)",
                KafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange),
            ))
        }
    }

    /// Records `[from, to)` as deleted, merged with the run before it when they touch (retention moving
    /// on while the range is read).
    fn note_deleted(&mut self, from: Offset, to: Offset) {
        match self.deleted.last_mut() {
            Some(last) if last.end() == from => {
                if let Ok(merged) = OffsetRange::new(last.start(), to) {
                    *last = merged;
                }
            }
            _ => {
                if let Ok(run) = OffsetRange::new(from, to) {
                    self.deleted.push(run);
                }
            }
        }
    }

    /// Assigns the partition at `offset` (replacing any assignment): no subscription, no commits.
    fn assign(&self, offset: Offset) -> Result<(), ReadError> {
        let mut assignment = TopicPartitionList::with_capacity(1);
        assignment
            .add_partition_offset(self.topic, self.partition, RdOffset::Offset(offset))
            .and_then(|()| self.consumer.assign(&assignment))
            .map_err(|source| self.kafka_error("assigning the partition", source))
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
