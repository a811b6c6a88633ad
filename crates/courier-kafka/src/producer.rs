//! Writing messages, for the demo, `courier probe` and tests, and quarantined messages to a route's
//! dead-letter topic (the only place the delivery path produces).
//!
//! Owns: [`Producer`], a librdkafka `FutureProducer` with acks from all in-sync replicas and idempotence on.

use std::collections::VecDeque;
use std::sync::Arc;

use courier_core::{Header, Offset, Partition};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header as RdHeader, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer as RdFutureProducer, FutureRecord};

use crate::config::KafkaConfig;
use crate::context::CourierContext;
use crate::error::Error;
use crate::outage::{OutageLog, Waiting};
use crate::reader::blocking;

type FutureProducer = RdFutureProducer<CourierContext>;

/// Where Kafka stored one produced message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: Partition,
    pub offset: Offset,
}

/// One message to produce: `(partition, key, payload)`. `None` as partition lets the partitioner pick
/// (by key hash for keyed messages, at random for the others).
pub type Record = (Option<Partition>, Option<Vec<u8>>, Vec<u8>);

/// One message with everything a Kafka record can hold (headers, a null payload), for
/// [`Producer::send_records`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutgoingRecord {
    /// `None` lets the partitioner pick, as for [`Record`].
    pub partition: Option<Partition>,
    pub key: Option<Vec<u8>>,
    /// Sent in this order; names may repeat, values may be null.
    pub headers: Vec<Header>,
    /// `None` produces a tombstone.
    pub payload: Option<Vec<u8>>,
}

impl From<Record> for OutgoingRecord {
    fn from((partition, key, payload): Record) -> Self {
        Self {
            partition,
            key,
            headers: Vec::new(),
            payload: Some(payload),
        }
    }
}

/// Produces batches and waits until every message is acknowledged.
pub struct Producer {
    inner: Option<FutureProducer>,
    config: KafkaConfig,
    outages: Arc<OutageLog>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("brokers", &self.config.brokers)
            .finish()
    }
}

impl Producer {
    /// Creates the producer off the runtime (client creation does blocking I/O).
    pub async fn connect(config: KafkaConfig) -> Result<Self, Error> {
        crate::refusal::check(&config).await?;
        let client_config = config.producer_client_config();
        let outages = OutageLog::for_cluster(&config.brokers);
        let context = CourierContext::new(&config, Arc::clone(&outages), None);
        let inner = blocking(move || client_config.create_with_context(context))
            .await?
            .map_err(Error::Config)?;
        Ok(Self {
            inner: Some(inner),
            config,
            outages,
        })
    }

    /// Sends every message to `topic` and waits until all are acknowledged (or one fails, or
    /// [`KafkaConfig::read_timeout`] passes for a message). Returns where each landed, in input order.
    ///
    /// Messages sent to the same partition keep their order (idempotent producer).
    pub async fn send_batch<I>(&self, topic: &str, messages: I) -> Result<Vec<Delivered>, Error>
    where
        I: IntoIterator<Item = Record>,
    {
        self.send_records(topic, messages.into_iter().map(OutgoingRecord::from))
            .await
    }

    /// [`send_batch`](Self::send_batch) for records with headers or without a payload (tombstones).
    pub async fn send_records<I>(&self, topic: &str, messages: I) -> Result<Vec<Delivered>, Error>
    where
        I: IntoIterator<Item = OutgoingRecord>,
    {
        let producer = self.producer()?;
        let _waiting = self.outages.waiting(Waiting::Produce);
        let mut delivered = Vec::new();
        let mut in_flight: VecDeque<DeliveryFuture> = VecDeque::new();
        for message in messages {
            loop {
                let mut record = FutureRecord::<Vec<u8>, Vec<u8>>::to(topic);
                if let Some(payload) = &message.payload {
                    record = record.payload(payload);
                }
                if let Some(partition) = message.partition {
                    record = record.partition(partition);
                }
                if let Some(key) = &message.key {
                    record = record.key(key);
                }
                if !message.headers.is_empty() {
                    let headers = message.headers.iter().fold(
                        OwnedHeaders::new_with_capacity(message.headers.len()),
                        |headers, header| {
                            headers.insert(RdHeader {
                                key: &header.name,
                                value: header.value.as_ref(),
                            })
                        },
                    );
                    record = record.headers(headers);
                }
                match producer.send_result(record) {
                    Ok(future) => {
                        in_flight.push_back(future);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        // librdkafka's local queue is full: wait for the oldest message, then retry.
                        match in_flight.pop_front() {
                            Some(oldest) => delivered.push(self.settle(topic, oldest).await?),
                            None => tokio::task::yield_now().await,
                        }
                    }
                    Err((source, _)) => {
                        return Err(Error::Delivery {
                            topic: topic.to_owned(),
                            source,
                        })
                    }
                }
            }
        }
        for future in in_flight {
            delivered.push(self.settle(topic, future).await?);
        }
        Ok(delivered)
    }

    async fn settle(&self, topic: &str, future: DeliveryFuture) -> Result<Delivered, Error> {
        match future.await {
            Ok(Ok(delivery)) => {
                self.outages.answered();
                Ok(Delivered {
                    partition: delivery.partition,
                    offset: delivery.offset,
                })
            }
            Ok(Err((source, _message))) => Err(Error::Delivery {
                topic: topic.to_owned(),
                source,
            }),
            Err(_canceled) => Err(Error::Delivery {
                topic: topic.to_owned(),
                source: KafkaError::Canceled,
            }),
        }
    }

    fn producer(&self) -> Result<&FutureProducer, Error> {
        self.inner
            .as_ref()
            .ok_or_else(|| Error::Task("the producer was already closed".to_owned()))
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        // Closing flushes and joins librdkafka's threads: keep that off the async runtime.
        if let Some(inner) = self.inner.take() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn_blocking(move || drop(inner));
            }
        }
    }
}
