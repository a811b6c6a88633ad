//! The messages every section sends: JSON objects of ~200 bytes that carry their id and the time they
//! were produced (the sink counts the first and reads the second for end-to-end latency).
//!
//! Owns: producing a whole topic up front ([`produce_topic`]) and producing at a fixed rate
//! ([`Load`]).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use courier_kafka::{create_topic, KafkaConfig, Producer};

fn payload(id: u64) -> Vec<u8> {
    let sent = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    format!(
        "{{\"id\":{id},\"sent_at_ms\":{sent},\"pad\":\"{}\"}}",
        "x".repeat(150)
    )
    .into_bytes()
}

/// Sends messages `ids` round-robin over the partitions (message `i` to partition `i % partitions`).
async fn send(
    producer: &Producer,
    topic: &str,
    partitions: i32,
    ids: std::ops::Range<u64>,
) -> anyhow::Result<()> {
    producer
        .send_batch(
            topic,
            ids.map(|i| (Some((i % partitions as u64) as i32), None, payload(i))),
        )
        .await?;
    Ok(())
}

/// Creates a fresh topic and writes `messages` messages into it; returns its name.
pub async fn produce_topic(
    brokers: &str,
    partitions: i32,
    messages: u64,
) -> anyhow::Result<String> {
    let topic = format!("bench-{}", rand::random::<u32>());
    create_topic(brokers, &topic, partitions).await?;
    let producer = Producer::connect(KafkaConfig::new(brokers)).await?;
    let mut id = 0;
    while id < messages {
        let end = (id + 20_000).min(messages);
        send(&producer, &topic, partitions, id..end).await?;
        id = end;
    }
    Ok(topic)
}

/// A producer connected ahead of a measured load, so that its start-up (connections, its idempotent
/// producer id, the topic's metadata: about a second on the local broker) is not counted as the
/// latency of the first messages.
pub struct Load {
    producer: Producer,
    topic: String,
    partitions: i32,
}

impl Load {
    /// Connects, and sends nothing yet.
    pub async fn connect(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<Self> {
        let producer = Producer::connect(KafkaConfig::new(brokers)).await?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
            partitions,
        })
    }

    /// Produces at `rate` messages per second for `duration`, in 10 ms steps; returns how many it sent.
    pub async fn offer(&self, rate: f64, duration: Duration) -> anyhow::Result<u64> {
        let (producer, topic, partitions) = (&self.producer, self.topic.as_str(), self.partitions);
        let total = (rate * duration.as_secs_f64()) as u64;
        let started = Instant::now();
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while started.elapsed() < duration {
            tick.tick().await;
            let due = ((rate * started.elapsed().as_secs_f64()) as u64).min(total);
            if due > sent {
                send(producer, topic, partitions, sent..due).await?;
                sent = due;
            }
        }
        if total > sent {
            send(producer, topic, partitions, sent..total).await?;
        }
        Ok(total)
    }
}
