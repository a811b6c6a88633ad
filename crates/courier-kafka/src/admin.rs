//! Topic administration for the demo, probes and tests: create a topic and wait until it is usable;
//! delete records (what retention does, on demand).
//!
//! Owns: every use of librdkafka's `AdminClient`. courier itself never creates topics on a hot path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use courier_core::{Offset, Partition};
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset as RdOffset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::context::CourierContext;
use crate::error::Error;
use crate::outage::{OutageLog, Waiting, WaitingGuard};
use crate::reader::blocking;

type Admin = AdminClient<CourierContext>;

/// An admin client for one call, counted as waiting on the brokers while it lives.
struct Session {
    admin: Arc<Admin>,
    outages: Arc<OutageLog>,
    _waiting: WaitingGuard,
}

impl Session {
    async fn open(config: &KafkaConfig) -> Result<Self, Error> {
        crate::refusal::check(config).await?;
        let client_config = config.admin_client_config();
        let outages = OutageLog::for_cluster(&config.brokers);
        let waiting = outages.waiting(Waiting::Admin);
        let context = CourierContext::new(config, Arc::clone(&outages), None);
        let admin = blocking(move || {
            client_config
                .create_with_context::<_, Admin>(context)
                .map(Arc::new)
                .map_err(Error::Config)
        })
        .await??;
        Ok(Self {
            admin,
            outages,
            _waiting: waiting,
        })
    }

    /// Closing a client blocks briefly: do it off the runtime.
    async fn close(self) {
        let admin = self.admin;
        // The client is being discarded either way; a failed close task changes nothing.
        let _closed = blocking(move || drop(admin)).await;
    }
}

fn options(timeout: Duration) -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout))
}

/// Creates `name` with `partitions` partitions (the cluster's default replication factor) unless it
/// exists, then waits until metadata shows every partition with a leader. Idempotent: an existing topic
/// is fine (its partition count is not changed).
pub async fn create_topic(brokers: &str, name: &str, partitions: i32) -> Result<(), Error> {
    create_topic_with_config(&KafkaConfig::new(brokers), name, partitions, &[]).await
}

/// [`create_topic`] with topic-level configuration (`retention.ms`, `cleanup.policy`, ...) and full
/// client settings. The wait is bounded by [`KafkaConfig::read_timeout`].
pub async fn create_topic_with_config(
    config: &KafkaConfig,
    name: &str,
    partitions: i32,
    topic_config: &[(&str, &str)],
) -> Result<(), Error> {
    let timeout = config.read_timeout;
    let deadline = Instant::now() + timeout;
    let session = Session::open(config).await?;
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(-1));
    for (key, value) in topic_config {
        topic = topic.set(key, value);
    }
    let result = session
        .admin
        .create_topics([&topic], &options(timeout))
        .await;
    if result.is_ok() {
        session.outages.answered();
    }
    let created = match result {
        Ok(results) => results.into_iter().try_for_each(|result| match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => Ok(()),
            Err((_, code)) => Err(Error::kafka(
                format!("creating topic {name:?}"),
                &config.brokers,
                timeout,
                KafkaError::AdminOp(code),
            )),
        }),
        Err(error) => Err(Error::kafka(
            format!("creating topic {name:?}"),
            &config.brokers,
            timeout,
            error,
        )),
    };
    let ready = match created {
        Ok(()) => wait_for_partitions(&session, config, name, partitions, deadline).await,
        Err(error) => Err(error),
    };
    session.close().await;
    ready
}

/// Polls metadata until `topic` shows at least `partitions` partitions, each with a leader.
async fn wait_for_partitions(
    session: &Session,
    config: &KafkaConfig,
    topic: &str,
    partitions: i32,
    deadline: Instant,
) -> Result<(), Error> {
    let wanted = usize::try_from(partitions).unwrap_or(0);
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Err(Error::Timeout {
                operation: format!(
                    "waiting for topic {topic:?} to have {partitions} partition(s) with a leader"
                ),
                brokers: config.brokers.clone(),
                after: config.read_timeout,
            });
        }
        // A metadata request is a quick round trip; run it off the runtime all the same.
        let client = Arc::clone(&session.admin);
        let name = topic.to_owned();
        let ready = blocking(move || {
            client
                .inner()
                .fetch_metadata(Some(&name), wait.min(Duration::from_secs(5)))
                .map(|metadata| {
                    metadata.topics().iter().any(|t| {
                        t.name() == name
                            && t.error().is_none()
                            && t.partitions().len() >= wanted
                            && t.partitions()
                                .iter()
                                .all(|p| p.error().is_none() && p.leader() >= 0)
                    })
                })
        })
        .await?;
        if ready.is_ok() {
            session.outages.answered();
        }
        match ready {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(error) if crate::error::is_timeout(&error) => {}
            Err(error) => {
                return Err(Error::kafka(
                    format!("fetching metadata of topic {topic:?}"),
                    &config.brokers,
                    config.read_timeout,
                    error,
                ))
            }
        }
        // Metadata propagates within milliseconds on a healthy cluster.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Deletes every record of `topic`/`partition` below `before` (Kafka's `DeleteRecords`, what retention
/// does by time or size) and returns the partition's new log start offset. For tests and game days:
/// readers of the deleted offsets get [`crate::ReadError::Retention`].
pub async fn delete_records_before(
    config: &KafkaConfig,
    topic: &str,
    partition: Partition,
    before: Offset,
) -> Result<Offset, Error> {
    let operation = format!("deleting records of {topic}/{partition} below offset {before}");
    let session = Session::open(config).await?;
    let mut offsets = TopicPartitionList::new();
    let result = match offsets.add_partition_offset(topic, partition, RdOffset::Offset(before)) {
        Ok(()) => session
            .admin
            .delete_records(&offsets, &options(config.read_timeout))
            .await
            .inspect(|_| session.outages.answered())
            .map_err(|e| Error::kafka(&operation, &config.brokers, config.read_timeout, e)),
        Err(e) => Err(Error::kafka(
            &operation,
            &config.brokers,
            config.read_timeout,
            e,
        )),
    };
    session.close().await;
    let deleted = result?;
    let element = deleted
        .find_partition(topic, partition)
        .ok_or_else(|| Error::Kafka {
            operation: operation.clone(),
            source: KafkaError::AdminOpCreation("the answer did not name the partition".into()),
        })?;
    element
        .error()
        .map_err(|e| Error::kafka(&operation, &config.brokers, config.read_timeout, e))?;
    match element.offset() {
        RdOffset::Offset(low) => Ok(low),
        other => Err(Error::Kafka {
            operation,
            source: KafkaError::AdminOpCreation(format!(
                "unexpected new log start offset {other:?}"
            )),
        }),
    }
}

/// Grows `topic` to `total` partitions (Kafka never shrinks a topic) and waits until every one has a
/// leader. For tests and game days: partitions added to a live topic must be delivered from their first
/// offset.
pub async fn add_partitions(config: &KafkaConfig, topic: &str, total: i32) -> Result<(), Error> {
    let operation = format!("growing topic {topic:?} to {total} partition(s)");
    let timeout = config.read_timeout;
    let deadline = Instant::now() + timeout;
    let session = Session::open(config).await?;
    let grow = NewPartitions::new(topic, usize::try_from(total).unwrap_or(0));
    let result = session
        .admin
        .create_partitions([&grow], &options(timeout))
        .await;
    if result.is_ok() {
        session.outages.answered();
    }
    let created = match result {
        Ok(results) => results.into_iter().try_for_each(|result| match result {
            Ok(_) => Ok(()),
            Err((_, code)) => Err(Error::kafka(
                &operation,
                &config.brokers,
                timeout,
                KafkaError::AdminOp(code),
            )),
        }),
        Err(error) => Err(Error::kafka(&operation, &config.brokers, timeout, error)),
    };
    let ready = match created {
        Ok(()) => wait_for_partitions(&session, config, topic, total, deadline).await,
        Err(error) => Err(error),
    };
    session.close().await;
    ready
}
