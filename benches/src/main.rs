//! `make bench`: how close courier comes to this machine's limit and to what users would otherwise
//! write, measured side by side in one run (these machines are noisy; only same-run ratios mean much).
//!
//! 1. End to end over one topic and one sink: the raw pipe (ceiling), a naive consumer-group forwarder,
//!    and courier with 1, 2, 4 delivery tasks and ranges of 100 and 1000; then latency percentiles at a
//!    fixed offered load of half the pipe's rate.
//! 2. Store capacity: lease + checkpoint round trips per second and lease latency with 1 to 64 tasks,
//!    against pgbench simple-update on the same server.
//! 3. Recovery: a worker crashes holding leases; time until another delivers its ranges, against the TTL.

mod e2e;
mod machine;
mod sink;
mod store;

use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Parser;
use courier_kafka::{create_topic, KafkaConfig, Producer};
use tokio_postgres::NoTls;

pub use courier_store::url::with_database;

#[derive(Debug, Parser)]
#[command(
    about = "courier benchmarks: ratios against the raw pipe, a naive forwarder and pgbench, measured in one run"
)]
struct Args {
    /// Messages in the throughput topic (enough for tens of seconds of work).
    #[arg(long, default_value_t = 400_000)]
    messages: u64,
    /// Partitions of the bench topics.
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// Seconds of offered load for the latency runs and of each store-capacity run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Where to write the markdown report (also printed).
    #[arg(long, default_value = "target/bench/report.md")]
    out: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://courier:courier@127.0.0.1:54329/courier".into());
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let mut report = String::new();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let _ = writeln!(
        report,
        "# courier benchmark report\n\nMachine: {}. Command: `make bench` (`{command}`).\n",
        machine::describe()
    );

    let sink = sink::start().await?;
    eprintln!(
        "bench: producing {} messages over {} partitions",
        args.messages, args.partitions
    );
    let topic = produce_topic(&brokers, args.partitions, args.messages).await?;

    // 1. Throughput.
    let _ = writeln!(
        report,
        "## Throughput: {} messages of ~200 bytes, {} partitions, batches of {}\n",
        args.messages,
        args.partitions,
        e2e::BATCH
    );
    let _ = writeln!(report, "| variant | msgs/s | MB/s | machine CPU s / M msgs | bench process CPU s / M msgs | store txns / 1000 msgs | vs pipe | vs naive |");
    let _ = writeln!(report, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut rows: Vec<(String, f64, f64, f64, f64, Option<f64>)> = Vec::new();
    let total = args.messages;
    sink.counters.reset(false);
    let (rate, mbs, machine_cpu, process_cpu) = measured(
        &sink,
        total,
        e2e::pipe(
            &brokers,
            &topic,
            args.partitions,
            &sink.url,
            4,
            &sink.counters,
            total,
        ),
    )
    .await?;
    rows.push((
        "pipe (4 requests in flight)".into(),
        rate,
        mbs,
        machine_cpu,
        process_cpu,
        None,
    ));
    sink.counters.reset(false);
    let (rate, mbs, machine_cpu, process_cpu) = measured(
        &sink,
        total,
        e2e::naive(&brokers, &topic, &sink.url, &sink.counters, total, None),
    )
    .await?;
    rows.push((
        "naive (consumer group, commit per batch)".into(),
        rate,
        mbs,
        machine_cpu,
        process_cpu,
        None,
    ));
    for range_size in [100u32, 1000] {
        for tasks in [1usize, 2, 4] {
            sink.counters.reset(false);
            eprintln!("bench: courier, {tasks} task(s), ranges of {range_size}");
            let cpu = machine::cpu();
            let run =
                e2e::start_courier(&server, &brokers, &topic, &sink.url, tasks, range_size).await?;
            let before = run.transactions().await?;
            e2e::wait_for(&sink.counters, total, Duration::from_secs(900)).await?;
            let used = cpu.since();
            let (store, database) = (run.store.clone(), run.database.clone());
            run.stop().await?;
            // Counted after the worker stopped, so idle polling after the last message is not billed;
            // PostgreSQL publishes transaction counts at most once a second.
            tokio::time::sleep(Duration::from_millis(1200)).await;
            let transactions = e2e::transactions(&store, &database).await? - before;
            drop(store);
            drop_database(&server, &database).await;
            let bytes = sink
                .counters
                .bytes
                .load(std::sync::atomic::Ordering::SeqCst) as f64;
            rows.push((
                format!("courier, {tasks} task(s), ranges of {range_size}"),
                total as f64 / used.wall_seconds,
                bytes / used.wall_seconds / 1e6,
                used.machine_seconds / total as f64 * 1e6,
                used.process_seconds / total as f64 * 1e6,
                Some(transactions as f64 / total as f64 * 1000.0),
            ));
        }
    }
    let (pipe_rate, naive_rate) = (rows[0].1, rows[1].1);
    for (name, rate, mbs, machine_cpu, process_cpu, txns) in &rows {
        let txns = txns.map_or("-".into(), |t| format!("{t:.2}"));
        let _ = writeln!(report, "| {name} | {rate:.0} | {mbs:.1} | {machine_cpu:.1} | {process_cpu:.1} | {txns} | {:.2}x | {:.2}x |", rate / pipe_rate, rate / naive_rate);
    }
    let best = rows
        .iter()
        .skip(2)
        .filter(|r| r.0.contains("1000"))
        .map(|r| r.1)
        .fold(0.0, f64::max);
    // The latency run uses courier's fastest configuration at range size 1000 from this very run.
    let best_tasks = rows
        .iter()
        .skip(2)
        .filter(|r| r.0.contains("1000"))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .and_then(|r| r.0.split(", ").nth(1))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(1);
    let _ = writeln!(report, "\nTargets: courier >= 0.9x pipe ({:.2}x) and >= 1.0x naive ({:.2}x) at range size 1000 (best task count); <= 2 store transactions per 1000 messages at range size 1000.\n", best / pipe_rate, best / naive_rate);

    // 1b. Latency at a fixed offered load.
    let offered = (pipe_rate / 2.0).max(100.0);
    let _ = writeln!(report, "## End-to-end latency at a fixed offered load of {offered:.0} msgs/s (half the pipe's rate) for {} s\n", args.seconds);
    let _ = writeln!(
        report,
        "| variant | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|"
    );
    for variant in ["pipe", "naive", "courier"] {
        let topic = produce_topic(&brokers, args.partitions, 0).await?;
        let expected = (offered * args.seconds as f64) as u64;
        sink.counters.reset(true);
        let consumer = {
            let (brokers, topic, url, server) = (
                brokers.clone(),
                topic.clone(),
                sink.url.clone(),
                server.clone(),
            );
            let counters = std::sync::Arc::clone(&sink.counters);
            let partitions = args.partitions;
            tokio::spawn(async move {
                match variant {
                    "pipe" => e2e::pipe(&brokers, &topic, partitions, &url, 4, &counters, expected)
                        .await
                        .map(|()| None),
                    "naive" => e2e::naive(&brokers, &topic, &url, &counters, expected, None)
                        .await
                        .map(|()| None),
                    _ => e2e::start_courier(&server, &brokers, &topic, &url, best_tasks, 1000)
                        .await
                        .map(Some),
                }
            })
        };
        tokio::time::sleep(Duration::from_secs(2)).await; // let the consumer join and go idle before load starts
        offer_load(
            &brokers,
            &topic,
            args.partitions,
            offered,
            Duration::from_secs(args.seconds),
        )
        .await?;
        e2e::wait_for(&sink.counters, expected, Duration::from_secs(300)).await?;
        let mut latencies = sink.counters.take_latencies();
        latencies.sort_unstable();
        if let Ok(Ok(Some(run))) = consumer.await {
            let database = run.database.clone();
            run.stop().await?;
            drop_database(&server, &database).await;
        }
        let name = if variant == "courier" {
            format!("courier, {best_tasks} task(s), ranges of 1000")
        } else {
            variant.to_owned()
        };
        let _ = writeln!(
            report,
            "| {name} | {} | {} | {} |",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or(0)
        );
    }

    // 2. Store capacity.
    let _ = writeln!(
        report,
        "\n## Store capacity: lease(1) + checkpoint round trips, {} s per run\n",
        args.seconds
    );
    let _ = writeln!(report, "| contending tasks | round trips/s | store txns/s | lease p50 ms | lease p99 ms |\n|---:|---:|---:|---:|---:|");
    let mut best_round_trips: f64 = 0.0;
    for tasks in [1usize, 8, 32, 64] {
        eprintln!("bench: store capacity with {tasks} task(s)");
        let capacity = store::capacity(&server, tasks, Duration::from_secs(args.seconds)).await?;
        best_round_trips = best_round_trips.max(capacity.round_trips_per_second);
        let _ = writeln!(
            report,
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} |",
            capacity.tasks,
            capacity.round_trips_per_second,
            capacity.round_trips_per_second * 2.0,
            capacity.lease_p50_ms,
            capacity.lease_p99_ms
        );
    }
    match store::pgbench(&server, 8, args.seconds).await {
        Ok(tps) => {
            let _ = writeln!(report, "\npgbench simple-update (-N), 8 clients, same server: {tps:.0} tps. courier's best: {:.0} store txns/s = {:.2}x pgbench.", best_round_trips * 2.0, best_round_trips * 2.0 / tps);
        }
        Err(error) => {
            let _ = writeln!(report, "\npgbench could not run: {error:#}");
        }
    }

    // 3. Recovery.
    let ttl = Duration::from_secs(5);
    let recovery = recovery(&server, &brokers, &sink, ttl).await?;
    let _ = writeln!(
        report,
        "\n## Recovery\n\nA worker crashed holding {} lease(s); another worker delivered all of them {:.2} s after the crash (lease TTL {} s; target <= TTL + 1 s).",
        recovery.0,
        recovery.1.as_secs_f64(),
        ttl.as_secs()
    );

    println!("{report}");
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, &report)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("bench: report written to {}", args.out.display());
    Ok(())
}

/// Runs `work` and turns the sink's counters and the CPU used into (msgs/s, MB/s, machine CPU s per M
/// messages, process CPU s per M messages).
async fn measured(
    sink: &sink::BenchSink,
    total: u64,
    work: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<(f64, f64, f64, f64)> {
    let cpu = machine::cpu();
    work.await?;
    let used = cpu.since();
    let bytes = sink
        .counters
        .bytes
        .load(std::sync::atomic::Ordering::SeqCst) as f64;
    Ok((
        total as f64 / used.wall_seconds,
        bytes / used.wall_seconds / 1e6,
        used.machine_seconds / total as f64 * 1e6,
        used.process_seconds / total as f64 * 1e6,
    ))
}

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

async fn produce_topic(brokers: &str, partitions: i32, messages: u64) -> anyhow::Result<String> {
    let topic = format!("bench-{}", rand::random::<u32>());
    create_topic(brokers, &topic, partitions).await?;
    let producer = Producer::connect(KafkaConfig::new(brokers)).await?;
    let mut id = 0;
    while id < messages {
        let end = (id + 20_000).min(messages);
        producer
            .send_batch(
                &topic,
                (id..end).map(|i| (Some((i % partitions as u64) as i32), None, payload(i))),
            )
            .await?;
        id = end;
    }
    Ok(topic)
}

/// Produces at `rate` messages per second for `duration`, in 10 ms steps.
async fn offer_load(
    brokers: &str,
    topic: &str,
    partitions: i32,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<()> {
    let producer = Producer::connect(KafkaConfig::new(brokers)).await?;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while started.elapsed() < duration {
        tick.tick().await;
        let due =
            (rate * started.elapsed().as_secs_f64()).min(rate * duration.as_secs_f64()) as u64;
        if due > sent {
            producer
                .send_batch(
                    topic,
                    (sent..due).map(|i| (Some((i % partitions as u64) as i32), None, payload(i))),
                )
                .await?;
            sent = due;
        }
    }
    let total = (rate * duration.as_secs_f64()) as u64;
    if total > sent {
        producer
            .send_batch(
                topic,
                (sent..total).map(|i| (Some((i % partitions as u64) as i32), None, payload(i))),
            )
            .await?;
    }
    Ok(())
}

/// A worker crashes (its task is aborted: no drain, no release) while holding leases; another worker
/// runs on. Returns how many leases it held and how long until all of them were delivered.
async fn recovery(
    server: &str,
    brokers: &str,
    sink: &sink::BenchSink,
    ttl: Duration,
) -> anyhow::Result<(usize, Duration)> {
    use courier_worker::{Worker, WorkerConfig};
    let topic = produce_topic(brokers, 4, 8_000).await?;
    sink.counters.reset(false);
    sink.counters
        .delay_ms
        .store(100, std::sync::atomic::Ordering::SeqCst);
    let database = fresh_database(server, "bench_recovery").await?;
    let config = courier_store::StoreConfig::new(with_database(server, &database));
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
    let survivor_task = tokio::spawn(surviving.run(stopped));

    let held: Vec<i64> = loop {
        let owner = crashing_id.clone();
        let ids = store
            .run("bench: held", move |c| {
                Box::pin(async move {
                    let rows = c
                        .query("SELECT id FROM courier_ranges WHERE state = 'leased' AND lease_owner = $1", &[&owner])
                        .await
                        .map_err(|e| courier_store::StoreError::from_db("bench", e))?;
                    Ok(rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>())
                })
            })
            .await?;
        if !ids.is_empty() && sink.counters.messages() > 0 {
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    crash_task.abort();
    let crashed_at = Instant::now();
    loop {
        let ids = held.clone();
        let open: i64 = store
            .run("bench: open", move |c| {
                Box::pin(async move {
                    let row = c
                        .query_one("SELECT count(*) FROM courier_ranges WHERE id = ANY($1) AND state <> 'done'", &[&ids])
                        .await
                        .map_err(|e| courier_store::StoreError::from_db("bench", e))?;
                    Ok(row.get::<_, i64>(0))
                })
            })
            .await?;
        if open == 0 {
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
    drop_database(server, &database).await;
    Ok((held.len(), recovered))
}

pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(((sorted.len() - 1) as f64) * q).round() as usize]
}

pub fn percentile_f64(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[(((sorted.len() - 1) as f64) * q).round() as usize]
}

/// Creates a scratch database on the server and returns its name.
pub async fn fresh_database(server: &str, prefix: &str) -> anyhow::Result<String> {
    let name = format!("{prefix}_{}", rand::random::<u32>());
    let (client, connection) = tokio_postgres::connect(server, NoTls)
        .await
        .with_context(|| "bench: cannot reach PostgreSQL (make postgres)".to_string())?;
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await?;
    Ok(name)
}

pub async fn drop_database(server: &str, name: &str) {
    if let Ok((client, connection)) = tokio_postgres::connect(server, NoTls).await {
        tokio::spawn(connection);
        let _ = client
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await;
    }
}
