//! What the cluster says about a topic: its partition count (cached: partitions are only ever added)
//! and the watermarks of all its partitions, in one request per side.

use std::time::{Duration, Instant};

use courier_core::{Offset, OffsetRange, Partition};
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset as RdOffset, TopicPartitionList};
use tracing::debug;

use super::{lock, remaining, BaseConsumer, CachedCount, Inner, PartitionWatermarks};

/// How long the watermark query trusts a cached partition count: partitions added to a topic are seen
/// within this long, and the planner's frequent ticks cost two ListOffsets requests, not a metadata
/// request on top.
const COUNT_MAX_AGE: Duration = Duration::from_secs(5);
use crate::error::{is_unknown_topic, Error, ReadError};

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

impl Inner {
    pub(super) fn metadata_error(
        &self,
        topic: &str,
        deadline: Instant,
        source: KafkaError,
    ) -> Error {
        Error::kafka(
            format!("fetching metadata of topic {topic:?}"),
            &self.config.brokers,
            self.config.read_timeout.saturating_sub(remaining(deadline)),
            source,
        )
    }

    /// Asks the cluster how many partitions `topic` has, and caches the answer.
    pub(super) fn refresh_partition_count(
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
        lock(&self.partition_counts).insert(
            topic.to_owned(),
            CachedCount {
                count,
                fetched_at: Instant::now(),
            },
        );
        Ok(count)
    }

    /// Fails unless `partition` exists, asking the cluster only when the cache does not know it.
    pub(super) fn check_partition(
        &self,
        consumer: &BaseConsumer,
        topic: &str,
        partition: Partition,
        range: OffsetRange,
        deadline: Instant,
    ) -> Result<(), ReadError> {
        let cached = lock(&self.partition_counts).get(topic).map(|c| c.count);
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

    /// One ListOffsets request per side (per partition leader) for all the partitions, and a metadata
    /// request for their count when the cached one is older than [`COUNT_MAX_AGE`]: the cost does not
    /// grow with the partition count.
    pub(super) fn high_watermarks(&self, topic: &str) -> Result<Vec<PartitionWatermarks>, Error> {
        let deadline = Instant::now() + self.config.read_timeout;
        let consumer = self.checkout_for_query()?;
        let cached = lock(&self.partition_counts)
            .get(topic)
            .filter(|c| c.fetched_at.elapsed() < COUNT_MAX_AGE)
            .map(|c| c.count);
        let count = match cached {
            Some(count) => count,
            None => self.refresh_partition_count(&consumer, topic, deadline)?,
        };
        let offsets = self
            .list_offsets(&consumer, topic, count, RdOffset::Beginning, deadline)
            .and_then(|low| {
                let high = self.list_offsets(&consumer, topic, count, RdOffset::End, deadline)?;
                Ok((low, high))
            });
        let (low, high) = match offsets {
            Ok(offsets) => offsets,
            Err(error) => {
                // The topic may be gone or changed: the next query asks the cluster's metadata again.
                lock(&self.partition_counts).remove(topic);
                return Err(error);
            }
        };
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
    pub(super) fn list_offsets(
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
}
