//! Recording the configured routes in the store at start: where a new route begins (its `start` applied
//! to Kafka's watermarks, read once per topic), its delivery settings compared with the recorded ones,
//! and every dead-letter topic checked to exist. A broker or store that is away is waited for until the
//! boot deadline; a topic that does not exist is a configuration error, said once, now.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use courier_http::DestinationConfig;
use courier_kafka::RangeReader;
use courier_store::{RouteSpec, Store, StoreError};

use crate::boot::{BootError, BootRetry, Service};
use crate::config::{RouteConfig, StartFrom, WorkerConfig};
use crate::context::Route;
use crate::error::WorkerError;

/// Records every route of `routes` in the store, reading each topic's watermarks once however many
/// routes read it.
pub(crate) async fn record_routes(
    boot: &BootRetry,
    store: &Store,
    reader: &RangeReader,
    brokers: &str,
    routes: &[Route],
    destinations: &BTreeMap<String, DestinationConfig>,
    config: &WorkerConfig,
) -> Result<(), WorkerError> {
    let mut topics: HashMap<String, Vec<courier_kafka::PartitionWatermarks>> = HashMap::new();
    for route in routes {
        let route = &route.config;
        if let Some(marks) = topics.get(&route.topic) {
            let first = first_partitions(marks, route.start);
            record_route(boot, store, route, destinations, config, &first).await?;
            continue;
        }
        // A route to a topic that does not exist is a configuration error: say so now, not every tick. A
        // broker that does not answer yet is waited for, politely, until the boot deadline.
        let what = format!("read the watermarks of topic {:?}", route.topic);
        let marks = boot
            .run(
                Service::Kafka,
                &what,
                brokers,
                courier_kafka::Error::is_retryable,
                || watermarks(reader, &route.topic, brokers, boot.remaining()),
            )
            .await
            .map_err(|error| match error {
                BootError::Permanent(e) => WorkerError::Config(format!(
                    "routes.{}: topic {:?}: {e}",
                    route.name, route.topic
                )),
                BootError::GaveUp(gave_up) => WorkerError::GaveUp(gave_up),
            })?;
        let first = first_partitions(&marks, route.start);
        record_route(boot, store, route, destinations, config, &first).await?;
        topics.insert(route.topic.clone(), marks);
    }
    Ok(())
}

/// A dead-letter topic that does not exist would fail every range holding a quarantined message: say so
/// now.
pub(crate) async fn check_dead_letter_topics(
    boot: &BootRetry,
    reader: &RangeReader,
    brokers: &str,
    routes: &[Route],
) -> Result<(), WorkerError> {
    for route in routes {
        let route = &route.config;
        let Some(topic) = &route.dead_letter_topic else {
            continue;
        };
        let what = format!("read the watermarks of dead-letter topic {topic:?}");
        boot.run(
            Service::Kafka,
            &what,
            brokers,
            courier_kafka::Error::is_retryable,
            || watermarks(reader, topic, brokers, boot.remaining()),
        )
        .await
        .map_err(|error| match error {
            BootError::Permanent(e) => {
                WorkerError::Config(format!("routes.{}.dead_letter_topic: {e}", route.name))
            }
            BootError::GaveUp(gave_up) => WorkerError::GaveUp(gave_up),
        })?;
    }
    Ok(())
}

/// Where a route begins, should it be new: `start` decides only this.
fn first_partitions(
    marks: &[courier_kafka::PartitionWatermarks],
    start: StartFrom,
) -> Vec<(i32, i64)> {
    marks
        .iter()
        .map(|m| match start {
            StartFrom::Earliest => (m.partition, m.low),
            StartFrom::Latest => (m.partition, m.high),
        })
        .collect()
}

/// Records `route` in the store (with its first partitions, if it is new), retried until the boot
/// deadline while the store is unreachable. Its delivery settings must match the recorded ones (a worker
/// that disagrees would silently take part of the route's messages elsewhere) unless the operator
/// accepted the change for this route.
async fn record_route(
    boot: &BootRetry,
    store: &Store,
    route: &RouteConfig,
    destinations: &BTreeMap<String, DestinationConfig>,
    config: &WorkerConfig,
    first: &[(i32, i64)],
) -> Result<(), WorkerError> {
    let spec = RouteSpec {
        name: route.name.clone(),
        topic: route.topic.clone(),
        destination: route.destination.clone(),
    };
    // The destination was resolved when the deliverers were built.
    let settings = destinations
        .get(&route.destination)
        .map(|destination| route.settings(destination))
        .unwrap_or_default();
    let accept = config.accept_route_changes.contains(&route.name);
    let registration = boot
        .run(
            Service::Store,
            "record the route",
            store.target(),
            StoreError::is_transient,
            || store.register_route(&spec, &settings, first, accept),
        )
        .await?;
    let (adopted, replaced): (Vec<_>, Vec<_>) = registration
        .recorded
        .into_iter()
        .partition(|change| change.recorded.is_none());
    if !adopted.is_empty() {
        tracing::info!(route = %route.name, settings = %courier_store::routes::describe_changes(&adopted), "The store had no value for these delivery settings of the route (recorded before courier compared them): recorded this worker's. Workers that disagree with them will now refuse to start.");
    }
    if !replaced.is_empty() {
        tracing::warn!(route = %route.name, changes = %courier_store::routes::describe_changes(&replaced), "Recorded this worker's delivery settings for the route, as --accept-route-changes asked. Workers still running the old settings deliver with them until restarted; workers started with them now refuse to start.");
    }
    Ok(())
}

/// One boot attempt at `topic`'s watermarks, bounded by what is left of the boot deadline (and at most
/// [`KAFKA_BOOT_ATTEMPT`], so a broker that is away is asked again rather than waited on once).
async fn watermarks(
    reader: &RangeReader,
    topic: &str,
    brokers: &str,
    remaining: Duration,
) -> Result<Vec<courier_kafka::PartitionWatermarks>, courier_kafka::Error> {
    let bound = remaining.min(KAFKA_BOOT_ATTEMPT);
    match tokio::time::timeout(bound, reader.high_watermarks(topic)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(courier_kafka::Error::Timeout {
            operation: format!("reading the watermarks of topic {topic:?}"),
            brokers: brokers.to_owned(),
            after: bound,
        }),
    }
}

/// Longest single attempt at Kafka's metadata during boot.
const KAFKA_BOOT_ATTEMPT: Duration = Duration::from_secs(5);
