//! Section 3: end-to-end latency at a fixed offered load (producer timestamp to sink receipt), and what
//! courier costs the store per message at that load.
//!
//! Owns: the section. Each variant gets a fresh empty topic, is started and left to go idle, then the
//! load is offered; the pipe is the baseline.

use std::time::Duration;

use crate::e2e::{naive, wait_for, CourierRun, CourierSetup};
use crate::report::{cells, percentile, Check, Goal, Report};
use crate::Bench;

const P99_MS: f64 = 100.0;
const TRANSACTIONS_PER_THOUSAND: f64 = 25.0;

/// Tasks and range size of the tuned courier variant (the defaults' task count, so that only the
/// planning settings differ from the defaults row).
const TUNED_TASKS: usize = 8;
const TUNED_RANGE: u32 = 1_000;

#[derive(Clone, Copy)]
enum Variant {
    Pipe,
    Naive,
    CourierDefaults,
    CourierTuned,
}

impl Variant {
    fn name(self) -> String {
        match self {
            Self::Pipe => "pipe (4 requests in flight)".into(),
            Self::Naive => "naive (consumer group, commit per batch)".into(),
            Self::CourierDefaults => "courier, defaults".into(),
            Self::CourierTuned => {
                format!("courier, tuned, {TUNED_TASKS} tasks, ranges of {TUNED_RANGE}")
            }
        }
    }
}

pub async fn section(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let (offered, seconds) = (bench.args.offered, bench.args.seconds);
    report.line(format_args!(
        "## End-to-end latency at a fixed offered load of {offered:.0} msgs/s for {seconds} s\n"
    ));
    report.header(&[
        "variant",
        "p50 ms",
        "p99 ms",
        "max ms",
        "p99 vs pipe",
        "store txns / 1000 msgs",
        "target",
        "met",
    ]);
    let mut pipe_p99 = None;
    for variant in [
        Variant::Pipe,
        Variant::Naive,
        Variant::CourierDefaults,
        Variant::CourierTuned,
    ] {
        eprintln!("bench: latency: {}", variant.name());
        let (latencies, transactions, messages) = measure(bench, variant).await?;
        let p99 = percentile(&latencies, 0.99);
        let base = *pipe_p99.get_or_insert(p99);
        let mut checks = Check::none();
        let per_thousand = transactions.map(|t| t as f64 / messages as f64 * 1000.0);
        if let Some(per_thousand) = per_thousand {
            checks.push(Goal::AtMost(P99_MS).check(p99 as f64, " ms p99"));
            checks.push(
                Goal::AtMost(TRANSACTIONS_PER_THOUSAND).check(per_thousand, " txns / 1000 msgs"),
            );
        }
        let [target, met] = cells(&checks);
        report.row(&[
            variant.name(),
            percentile(&latencies, 0.5).to_string(),
            p99.to_string(),
            latencies.last().copied().unwrap_or(0).to_string(),
            if base > 0 {
                format!("{:.2}x", p99 as f64 / base as f64)
            } else {
                "-".into()
            },
            per_thousand.map_or("-".into(), |t| format!("{t:.2}")),
            target,
            met,
        ]);
    }
    report.line(
        "\nLatency: the producer's timestamp in each message to its arrival at the sink (same clock). \
         Store transactions: courier's database from the worker's start (idle, 2 s before the load) \
         until it stopped after the last message.\n",
    );
    Ok(())
}

/// Offers the load to one variant; returns the sorted latencies (ms), courier's store transactions and
/// the number of messages.
async fn measure(bench: &Bench, variant: Variant) -> anyhow::Result<(Vec<u64>, Option<i64>, u64)> {
    let args = &bench.args;
    let counters = &bench.sink.counters;
    let topic = crate::load::produce_topic(&bench.brokers, args.partitions, 0).await?;
    let expected = (args.offered * args.seconds as f64) as u64;
    let producer = crate::load::Load::connect(&bench.brokers, &topic, args.partitions).await?;
    counters.reset(true);
    let url = bench.sink.url.as_str();
    let courier: Option<CourierRun> = match variant {
        Variant::CourierDefaults => Some(
            CourierSetup::defaults(&topic, url)?
                .start(&bench.server, &bench.brokers)
                .await?,
        ),
        Variant::CourierTuned => Some(
            CourierSetup::tuned(&topic, url, TUNED_TASKS, TUNED_RANGE)?
                .start(&bench.server, &bench.brokers)
                .await?,
        ),
        Variant::Pipe | Variant::Naive => None,
    };
    let consumer = async {
        match variant {
            Variant::Pipe => bench.pipe(&topic).run(counters, expected).await,
            Variant::Naive => naive(&bench.brokers, &topic, url, counters, expected).await,
            Variant::CourierDefaults | Variant::CourierTuned => {
                wait_for(counters, expected, Duration::from_secs(300)).await
            }
        }
    };
    let load = async {
        // Let the consumer join and go idle, and the producer finish starting, before the load starts.
        tokio::time::sleep(Duration::from_secs(2)).await;
        producer
            .offer(args.offered, Duration::from_secs(args.seconds))
            .await
    };
    let (consumed, loaded) = tokio::join!(consumer, load);
    let transactions = match courier {
        Some(run) => Some(run.finish().await?),
        None => None,
    };
    consumed?;
    loaded?;
    let mut latencies = counters.take_latencies();
    latencies.sort_unstable();
    Ok((latencies, transactions, expected))
}
