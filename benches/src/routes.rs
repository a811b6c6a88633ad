//! Section 1: what each route costs, busy and idle. One worker (in this process, every setting at its
//! default) serves N routes on one 4-partition topic, each route to its own destination (its own path on
//! the bench sink); the time to deliver every copy, then an idle window: store transactions per second
//! and the bench process's CPU.
//!
//! Owns: the section. The baseline is the same measurement with one route, in the same run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use courier_http::DestinationConfig;
use courier_worker::WorkerConfig;

use crate::e2e::{default_route, wait_for, CourierSetup};
use crate::report::{cells, Goal, Report};
use crate::Bench;

/// Partitions of the routes' topic.
const PARTITIONS: i32 = 4;

/// Idle targets at 1,000 routes (every row is judged against them: fewer routes must not cost more).
const IDLE_TRANSACTIONS_PER_SECOND: f64 = 20.0;
const IDLE_CPU_PERCENT: f64 = 2.0;

/// One worker serving `routes` routes of `topic`, every setting at its default.
fn setup(topic: &str, sink_url: &str, routes: usize) -> anyhow::Result<CourierSetup> {
    let mut destinations = BTreeMap::new();
    let mut configs = Vec::with_capacity(routes);
    for i in 0..routes {
        let destination = format!("d{i}");
        destinations.insert(
            destination.clone(),
            DestinationConfig::new(format!("{sink_url}routes/{i}")),
        );
        configs.push(default_route(&format!("route-{i}"), topic, &destination)?);
    }
    Ok(CourierSetup {
        worker: WorkerConfig::default(),
        routes: configs,
        destinations,
        pool_size: None,
    })
}

struct Measured {
    routes: usize,
    per_route: u64,
    copies: u64,
    startup: Duration,
    /// `None`: not every copy arrived within `--deliver-limit-seconds` (then nothing is idle to measure).
    delivered: Option<Delivered>,
}

struct Delivered {
    deliver: Duration,
    idle_transactions_per_second: f64,
    idle_cpu_percent: f64,
}

pub async fn section(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let args = &bench.args;
    report.line(format_args!(
        "## Idle and per-route cost: one worker, N routes on one {PARTITIONS}-partition topic, defaults\n"
    ));
    report.header(&[
        "routes",
        "msgs / route",
        "copies delivered",
        "Worker::new s",
        "deliver s",
        "copies/s",
        "idle store txns/s",
        "vs 1 route",
        "idle CPU %",
        "vs 1 route",
        "target",
        "met",
    ]);
    let mut topics: BTreeMap<u64, String> = BTreeMap::new();
    let mut baseline: Option<Measured> = None;
    for &routes in &args.route_counts {
        let per_route = if routes <= 100 {
            args.messages_per_route
        } else {
            args.messages_per_route_over_100
        };
        let topic = match topics.get(&per_route) {
            Some(topic) => topic.clone(),
            None => {
                let topic =
                    crate::load::produce_topic(&bench.brokers, PARTITIONS, per_route).await?;
                topics.insert(per_route, topic.clone());
                topic
            }
        };
        eprintln!("bench: routes: {routes} route(s) of {per_route} messages");
        let measured = measure(bench, &topic, routes, per_route).await?;
        let row = match &measured.delivered {
            Some(delivered) => {
                let base = baseline
                    .as_ref()
                    .and_then(|b: &Measured| b.delivered.as_ref())
                    .unwrap_or(delivered);
                let checks = [
                    Goal::AtMost(IDLE_TRANSACTIONS_PER_SECOND)
                        .check(delivered.idle_transactions_per_second, " txns/s"),
                    Goal::AtMost(IDLE_CPU_PERCENT).check(delivered.idle_cpu_percent, "% CPU"),
                ];
                let [target, met] = cells(&checks);
                [
                    format!("{:.1}", delivered.deliver.as_secs_f64()),
                    format!(
                        "{:.0}",
                        measured.copies as f64 / delivered.deliver.as_secs_f64()
                    ),
                    format!("{:.1}", delivered.idle_transactions_per_second),
                    ratio(
                        delivered.idle_transactions_per_second,
                        base.idle_transactions_per_second,
                    ),
                    format!("{:.2}", delivered.idle_cpu_percent),
                    ratio(delivered.idle_cpu_percent, base.idle_cpu_percent),
                    target,
                    met,
                ]
            }
            None => [
                format!("> {}", args.deliver_limit_seconds),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                format!(
                    "every copy within {} s, then <= {IDLE_TRANSACTIONS_PER_SECOND} txns/s; <= {IDLE_CPU_PERCENT}% CPU",
                    args.deliver_limit_seconds
                ),
                "**no**".into(),
            ],
        };
        let mut cells_of_row = vec![
            measured.routes.to_string(),
            measured.per_route.to_string(),
            measured.copies.to_string(),
            format!("{:.1}", measured.startup.as_secs_f64()),
        ];
        cells_of_row.extend(row);
        report.row(&cells_of_row);
        if baseline.is_none() {
            baseline = Some(measured);
        }
    }
    report.line(format_args!(
        "\nEach route delivers the whole topic to its own destination (path). Deliver: from the worker's \
         start until the sink counted every copy. Idle: a {} s window starting {} s after the last copy \
         (PostgreSQL may publish a busy connection's counts up to 10 s late), with the sink and producer \
         idle: store transactions are `pg_stat_database` (commits + rollbacks) of the worker's database; \
         CPU is the bench process's user + system time (/proc/self/stat) as a percentage of one core, i.e. \
         the worker's own CPU (the idle sink costs nothing), not PostgreSQL's or Kafka's.\n",
        args.idle_seconds,
        crate::db::IDLE_PUBLISH_LAG.as_secs()
    ));
    Ok(())
}

fn ratio(value: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:.1}x", value / base)
    } else {
        "-".into()
    }
}

async fn measure(
    bench: &Bench,
    topic: &str,
    routes: usize,
    per_route: u64,
) -> anyhow::Result<Measured> {
    let counters = &bench.sink.counters;
    counters.reset(false);
    let expected = routes as u64 * per_route;
    let run = setup(topic, &bench.sink.url, routes)?
        .start(&bench.server, &bench.brokers)
        .await?;
    let started = Instant::now();
    let limit = Duration::from_secs(bench.args.deliver_limit_seconds);
    let idle = async {
        if wait_for(counters, expected, limit).await.is_err() {
            return anyhow::Ok(None);
        }
        let deliver = started.elapsed();
        tokio::time::sleep(crate::db::IDLE_PUBLISH_LAG).await;
        let before = run.transactions().await?;
        let cpu = crate::machine::cpu();
        tokio::time::sleep(Duration::from_secs(bench.args.idle_seconds)).await;
        let after = run.transactions().await?;
        let used = cpu.since();
        Ok(Some(Delivered {
            deliver,
            idle_transactions_per_second: (after - before) as f64 / used.wall_seconds,
            idle_cpu_percent: used.process_seconds / used.wall_seconds * 100.0,
        }))
    }
    .await;
    let startup = run.startup;
    run.finish().await?;
    Ok(Measured {
        routes,
        per_route,
        copies: counters.messages(),
        startup,
        delivered: idle?,
    })
}
