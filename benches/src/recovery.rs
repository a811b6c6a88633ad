//! Section 6: recovery. A worker crashes holding leases; the time until another worker has delivered
//! them, against the lease TTL.
//!
//! Owns: the section.

use std::time::{Duration, Instant};

use courier_core::RangeState;
use courier_kafka::KafkaConfig;

use crate::report::Report;
use crate::Bench;

/// The lease TTL of both workers; the target is TTL + 1 s.
const TTL: Duration = Duration::from_secs(5);

pub async fn section(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("bench: recovery");
    let (held, recovered) = recovery(&bench.server, &bench.brokers, &bench.sink, TTL).await?;
    let met = recovered <= TTL + Duration::from_secs(1);
    report.line(format_args!(
        "## Recovery\n\nA worker crashed holding {held} lease(s); another worker delivered all of them {:.2} s after the crash (lease TTL {} s; target <= TTL + 1 s: {}).\n",
        recovered.as_secs_f64(),
        TTL.as_secs(),
        if met { "met" } else { "**missed**" }
    ));
    Ok(())
}

/// A worker crashes (its task is aborted: no drain, no release) while holding leases; another worker
/// runs on. Returns how many leases it held and how long until all of them were delivered.
async fn recovery(
    server: &str,
    brokers: &str,
    sink: &crate::sink::BenchSink,
    ttl: Duration,
) -> anyhow::Result<(usize, Duration)> {
    use courier_worker::{Worker, WorkerConfig};
    let topic = crate::load::produce_topic(brokers, 4, 8_000).await?;
    sink.counters.reset(false);
    sink.counters
        .delay_ms
        .store(100, std::sync::atomic::Ordering::SeqCst);
    let database = crate::db::fresh(server, "bench_recovery").await?;
    let config = courier_store::StoreConfig::new(crate::db::with_database(server, &database));
    courier_store::Migrator::embedded().run(&config).await?;
    let store = courier_store::Store::connect(&config).await?;
    let destinations = std::collections::BTreeMap::from([(
        "sink".to_owned(),
        courier_http::DestinationConfig {
            max_batch_messages: 100,
            timeout: Duration::from_secs(2),
            ..courier_http::DestinationConfig::new(&sink.url)
        },
    )]);
    let routes = vec![courier_worker::RouteConfig {
        name: "recovery".into(),
        topic,
        destination: "sink".into(),
        ordering: courier_core::Ordering::None,
        range_size: 500,
        max_attempts: 10,
        start: courier_worker::StartFrom::Earliest,
        on_poison: courier_worker::OnPoison::Quarantine,
        dead_letter_topic: None,
    }];
    let worker_config = WorkerConfig {
        delivery_tasks: 2,
        lease_ttl: ttl,
        renew_every: Duration::from_secs(1),
        poll_interval: Duration::from_millis(20),
        ..WorkerConfig::default()
    };
    let crashing = Worker::new(
        store.clone(),
        KafkaConfig::new(brokers),
        &destinations,
        routes.clone(),
        worker_config.clone(),
    )
    .await?;
    let crashing_id = crashing.id().to_owned();
    let surviving = Worker::new(
        store.clone(),
        KafkaConfig::new(brokers),
        &destinations,
        routes,
        worker_config,
    )
    .await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let crash_task = tokio::spawn(crashing.run(stopped.clone()));
    // The survivor starts once the crashing worker holds leases mid-delivery: started together, it could
    // lease every range first and leave the crashing worker nothing to be holding when it dies.
    let holding_since = Instant::now();
    let held: Vec<i64> = loop {
        let held = store.leases_held_by(&crashing_id).await?;
        if !held.is_empty() && sink.counters.messages() > 0 {
            break held.iter().map(|range| range.id).collect();
        }
        anyhow::ensure!(
            holding_since.elapsed() < Duration::from_secs(60),
            "the crashing worker held no lease with delivery under way within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let survivor_task = tokio::spawn(surviving.run(stopped));
    crash_task.abort();
    let crashed_at = Instant::now();
    loop {
        let now = store.ranges_by_id(&held).await?;
        if now.iter().all(|range| range.state == RangeState::Done) {
            break;
        }
        anyhow::ensure!(
            crashed_at.elapsed() < ttl * 10,
            "the crashed worker's ranges were not delivered within 10 TTLs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered = crashed_at.elapsed();
    let _ = stop.send(true);
    let _ = survivor_task.await;
    sink.counters
        .delay_ms
        .store(0, std::sync::atomic::Ordering::SeqCst);
    drop(store);
    crate::db::discard(server, &database).await;
    Ok((held.len(), recovered))
}
