//! `courier demo` (`make demo`): the whole pipeline on local services, watched live.
//!
//! Creates a demo topic, produces events, serves a demo destination on 127.0.0.1, runs a worker against
//! it with a progress bar until every event has arrived, then prints what arrived, how many twice, and
//! how long events took end to end. Everything it starts, it stops.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use courier_core::{local, Ordering};
use courier_http::DestinationConfig;
use courier_kafka::{create_topic, KafkaConfig, Producer};
use courier_sink::Sink;
use courier_store::url::redact;
use courier_store::{Migrator, Store, StoreConfig};
use courier_worker::{RouteConfig, StartFrom, Worker, WorkerConfig, WorkerStats};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tokio::sync::watch;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How many demo events to produce and deliver.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Partitions of the demo topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Delivery tasks of the demo worker.
    #[arg(long, default_value_t = 4)]
    tasks: usize,
    /// Give up if delivery has not finished after this long.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// No progress bar (scripts, tests).
    #[arg(long)]
    quiet: bool,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.events == 0 || args.partitions < 1 || args.tasks == 0 {
        bail!("--events, --partitions and --tasks must all be at least 1");
    }
    let brokers = local::kafka_brokers();
    let store_config = StoreConfig::new(local::database_url());
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let topic = format!("courier-demo-{stamp}");
    let route = format!("demo-{stamp}");

    eprintln!("demo: store {}, kafka {brokers}", redact(&store_config.url));
    Migrator::embedded()
        .run(&store_config)
        .await
        .context("demo: migrating the store")?;
    let store = Store::connect(&store_config).await?;
    create_topic(&brokers, &topic, args.partitions)
        .await
        .context("demo: creating the demo topic (is Kafka up? `make kafka`)")?;

    let sink = Sink::start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("demo: starting the demo destination")?;
    eprintln!(
        "demo: topic {topic} ({} partitions), destination {}",
        args.partitions,
        sink.url_for("/events")
    );

    let producer = Producer::connect(KafkaConfig::new(brokers.clone())).await?;
    let produced_at = Instant::now();
    for chunk in (0..args.events).collect::<Vec<_>>().chunks(1000) {
        let records = chunk.iter().map(|id| {
            let event = json!({ "id": id, "type": "order.created", "sent_at_ms": unix_millis() });
            (
                None,
                Some(id.to_string().into_bytes()),
                event.to_string().into_bytes(),
            )
        });
        producer
            .send_batch(&topic, records)
            .await
            .context("demo: producing events")?;
    }
    eprintln!(
        "demo: produced {} events in {:.1?}",
        args.events,
        produced_at.elapsed()
    );

    let destinations = BTreeMap::from([(
        "demo-sink".to_owned(),
        DestinationConfig::new(sink.url_for("/events")),
    )]);
    let routes = vec![RouteConfig {
        name: route.clone(),
        topic: topic.clone(),
        destination: "demo-sink".into(),
        ordering: Ordering::Partition,
        range_size: 500,
        max_attempts: 10,
        start: StartFrom::Earliest,
        on_poison: courier_worker::OnPoison::Quarantine,
        dead_letter_topic: None,
    }];
    let worker_config = WorkerConfig {
        delivery_tasks: args.tasks,
        plan_interval: Duration::from_millis(100),
        max_tail_age: Duration::from_millis(100),
        ..WorkerConfig::default()
    };
    let worker = Worker::new(
        store.clone(),
        KafkaConfig::new(brokers.clone()),
        &destinations,
        routes,
        worker_config,
    )
    .await?;
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(worker.run(stopped));

    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.events as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} delivered {pos}/{len} events [{bar:40}] {per_sec} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let mut unique = 0;
    while unique < args.events {
        if started.elapsed() > args.timeout {
            let _ = stop.send(true);
            bail!("demo: only {unique} of {} events arrived within {:?}; see `courier status` and the log above", args.events, args.timeout);
        }
        // Woken by every request the destination receives; the timeout only refreshes the bar.
        let _ = sink
            .wait_until(
                |stats| stats.delivered_elements as usize >= args.events,
                Duration::from_millis(250),
            )
            .await;
        unique = sink.count_by(event_id).len();
        let progress = store.partitions(&route).await.unwrap_or_default();
        let lag: i64 = progress.iter().map(|p| p.frontier - p.watermark).sum();
        bar.set_position(unique as u64);
        bar.set_message(format!("(planned but unsettled offsets: {lag})"));
    }
    bar.finish();
    let elapsed = started.elapsed();
    let _ = stop.send(true);
    let stats = running.await.context("demo: worker task")??;

    let counts = sink.count_by(event_id);
    let delivered = counts.len();
    let duplicates: usize = counts.values().map(|n| n.saturating_sub(1)).sum();
    let mut latencies = latencies_ms(&sink);
    latencies.sort_unstable();
    sink.shutdown().await;

    println!();
    println!("courier demo summary");
    println!("  produced            {}", args.events);
    println!(
        "  delivered           {delivered} ({} lost)",
        args.events.saturating_sub(delivered)
    );
    println!("  duplicates          {duplicates}");
    println!(
        "  ranges checkpointed {}",
        WorkerStats::get(&stats.ranges_checkpointed)
    );
    println!(
        "  delivery time       {:.1?} ({:.0} events/s)",
        elapsed,
        delivered as f64 / elapsed.as_secs_f64().max(0.001)
    );
    println!("  end-to-end p50      {} ms", percentile(&latencies, 0.50));
    println!("  end-to-end p99      {} ms", percentile(&latencies, 0.99));
    if delivered != args.events {
        bail!(
            "demo: {} events were not delivered",
            args.events - delivered
        );
    }
    Ok(())
}

fn event_id(element: &Value) -> Option<u64> {
    element.get("id").and_then(Value::as_u64)
}

fn latencies_ms(sink: &Sink) -> Vec<u64> {
    let mut out = Vec::new();
    for request in sink
        .received()
        .into_iter()
        .filter(|r| r.answer.is_success())
    {
        let received = request
            .received_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        for element in &request.elements {
            if let Some(sent) = element.get("sent_at_ms").and_then(Value::as_u64) {
                out.push(received.saturating_sub(sent));
            }
        }
    }
    out
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}
