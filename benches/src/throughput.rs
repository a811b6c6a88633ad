//! Section 4: the throughput matrix. One topic drained into one sink by the raw pipe (the ceiling), the
//! naive forwarder, courier with every default, and courier tuned for draining with ranges of 100, 1,000
//! and 10,000 and 1 or 8 delivery tasks: msgs/s, CPU, and store transactions per 1,000 messages and per
//! range.
//!
//! Owns: the section.

use std::time::Duration;

use crate::e2e::{naive, wait_for, CourierSetup};
use crate::machine::CpuUsed;
use crate::report::{cells, Check, Goal, Report};
use crate::Bench;

/// Targets: courier's defaults against the pipe, ranges of 100 against the pipe, and store
/// transactions per range when draining a backlog.
const DEFAULTS_VS_PIPE: f64 = 0.8;
const RANGES_OF_100_VS_PIPE: f64 = 0.6;
const TRANSACTIONS_PER_RANGE: f64 = 1.5;

/// Ranges a drain of `total` messages carves: message `i` is in partition `i % partitions`, and each
/// partition is cut into ranges of `range_size` from offset 0.
fn ranges(total: u64, partitions: i32, range_size: u32) -> u64 {
    let partitions = partitions.max(1) as u64;
    (0..partitions)
        .map(|p| {
            let messages = total / partitions + u64::from(p < total % partitions);
            messages.div_ceil(u64::from(range_size))
        })
        .sum()
}

struct Figures {
    rate: f64,
    megabytes_per_second: f64,
    machine_cpu_per_million: f64,
    process_cpu_per_million: f64,
    postgres_cpu_per_million: f64,
    broker_cpu_per_million: f64,
    broker_bytes_per_message: f64,
}

impl Figures {
    fn new(total: u64, sink_bytes: u64, used: &CpuUsed) -> Self {
        Self {
            rate: total as f64 / used.wall_seconds,
            megabytes_per_second: sink_bytes as f64 / used.wall_seconds / 1e6,
            machine_cpu_per_million: used.machine_seconds / total as f64 * 1e6,
            process_cpu_per_million: used.process_seconds / total as f64 * 1e6,
            postgres_cpu_per_million: used.postgres_seconds / total as f64 * 1e6,
            broker_cpu_per_million: used.broker_seconds / total as f64 * 1e6,
            broker_bytes_per_message: used.broker_bytes_written as f64 / total as f64,
        }
    }
}

pub async fn section(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let (total, partitions) = (bench.args.messages, bench.args.partitions);
    let counters = &bench.sink.counters;
    eprintln!("bench: throughput: producing {total} messages over {partitions} partitions");
    let topic = crate::load::produce_topic(&bench.brokers, partitions, total).await?;
    report.line(format_args!(
        "## Throughput: {total} messages of ~200 bytes, {partitions} partitions, batches of {}\n",
        crate::e2e::BATCH
    ));
    report.header(&[
        "variant",
        "msgs/s",
        "MB/s",
        "machine CPU s / M msgs",
        "bench process CPU s / M msgs",
        "PostgreSQL CPU s / M msgs",
        "broker CPU s / M msgs",
        "broker bytes out / msg",
        "store txns / 1000 msgs",
        "store txns / range",
        "vs pipe",
        "vs naive",
        "target",
        "met",
    ]);
    let mut write = |name: &str,
                     figures: &Figures,
                     txns: Option<(f64, f64)>,
                     base: (f64, f64),
                     checks: &[Check]| {
        let [target, met] = cells(checks);
        let (per_thousand, per_range) = txns.map_or(("-".into(), "-".into()), |(t, r)| {
            (format!("{t:.2}"), format!("{r:.2}"))
        });
        report.row(&[
            name.to_owned(),
            format!("{:.0}", figures.rate),
            format!("{:.1}", figures.megabytes_per_second),
            format!("{:.1}", figures.machine_cpu_per_million),
            format!("{:.1}", figures.process_cpu_per_million),
            format!("{:.1}", figures.postgres_cpu_per_million),
            format!("{:.1}", figures.broker_cpu_per_million),
            format!("{:.0}", figures.broker_bytes_per_message),
            per_thousand,
            per_range,
            format!("{:.2}x", figures.rate / base.0),
            format!("{:.2}x", figures.rate / base.1),
            target,
            met,
        ]);
    };

    eprintln!("bench: throughput: pipe");
    counters.reset(false);
    let cpu = crate::machine::cpu();
    bench.pipe(&topic).run(counters, total).await?;
    let pipe = Figures::new(total, counters.bytes(), &cpu.since());

    eprintln!("bench: throughput: naive");
    counters.reset(false);
    let cpu = crate::machine::cpu();
    naive(&bench.brokers, &topic, &bench.sink.url, counters, total).await?;
    let naive = Figures::new(total, counters.bytes(), &cpu.since());
    let base = (pipe.rate, naive.rate);
    write(
        "pipe (4 requests in flight)",
        &pipe,
        None,
        base,
        &Check::none(),
    );
    write(
        "naive (consumer group, commit per batch)",
        &naive,
        None,
        base,
        &Check::none(),
    );

    let defaults = CourierSetup::defaults(&topic, &bench.sink.url)?;
    let mut variants = vec![(
        format!(
            "courier, defaults ({} tasks, ranges of {})",
            defaults.worker.delivery_tasks,
            defaults.routes.first().map_or(0, |r| r.range_size)
        ),
        defaults,
        Some(DEFAULTS_VS_PIPE),
    )];
    for range_size in [100u32, 1_000, 10_000] {
        for tasks in [1usize, 8] {
            variants.push((
                format!("courier, tuned, {tasks} task(s), ranges of {range_size}"),
                CourierSetup::tuned(&topic, &bench.sink.url, tasks, range_size)?,
                (range_size == 100).then_some(RANGES_OF_100_VS_PIPE),
            ));
        }
    }
    for (name, setup, vs_pipe) in variants {
        eprintln!("bench: throughput: {name}");
        let range_size = setup.routes.first().map_or(1, |r| r.range_size);
        counters.reset(false);
        // Timed from the worker's start, as the store transactions are counted: creating and migrating
        // its scratch database and `Worker::new` (reported by the routes section) are set-up, not
        // delivery, and took up to a third of a 400,000-message drain.
        let run = setup.start(&bench.server, &bench.brokers).await?;
        let cpu = crate::machine::cpu();
        let delivered = wait_for(counters, total, Duration::from_secs(900)).await;
        let used = cpu.since();
        // Counted after the worker stopped and its connections closed: exact, shutdown included.
        let transactions = run.finish().await? as f64;
        delivered?;
        let figures = Figures::new(total, counters.bytes(), &used);
        let per_range = transactions / ranges(total, partitions, range_size) as f64;
        let mut checks = Vec::new();
        if let Some(goal) = vs_pipe {
            checks.push(Goal::AtLeast(goal).check(figures.rate / pipe.rate, "x pipe"));
        }
        checks.push(Goal::AtMost(TRANSACTIONS_PER_RANGE).check(per_range, " txns/range"));
        write(
            &name,
            &figures,
            Some((transactions / total as f64 * 1000.0, per_range)),
            base,
            &checks,
        );
    }
    report.line(
        "\nTuned: tails carved after 50 ms, 64,000 messages carved ahead per partition (64 ranges of \
         1,000, 640 of 100), idle tasks polling every \
         10 ms, up to 8,000 messages in hand per task (8 ranges of 1,000, 80 of 100), as many requests \
         in flight as the pipe (4) or one per task, a pool of tasks + 4 connections. \
         Courier's rows are timed from the worker's start (its database created and migrated, `Worker::new` \
         done) to the last message at the sink. Store transactions are `pg_stat_database` of the worker's \
         database from its start until it stopped and closed its connections (exact); a range is `range size` offsets of one partition.\n",
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_ranges_per_partition() {
        assert_eq!(super::ranges(400_000, 8, 1_000), 400);
        assert_eq!(super::ranges(400_000, 8, 10_000), 40);
        // 10 messages over 4 partitions: 3, 3, 2, 2; ranges of 2 -> 2, 2, 1, 1.
        assert_eq!(super::ranges(10, 4, 2), 6);
    }
}
