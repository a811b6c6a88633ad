//! Section 2: bytes the Kafka broker sent per delivered message, courier against the raw pipe.
//!
//! Owns: the section. Both sides are counted the same way, from the broker's side: what the local
//! broker's process wrote while a variant drained the topic (`wchar` of /proc/PID/io, which counts
//! `sendfile`, how the broker sends log segments to consumers; [`crate::machine`]). That is exact and
//! needs nothing from the client. Counting each client's librdkafka statistics (`rxbytes`), as this
//! section did until round 5, missed whatever a consumer received after its last report before it was
//! closed or parked, and so hid courier's re-reads: it reported 0.56x-0.94x the pipe where the broker
//! sent 1.0x-1.9x.

use std::time::Duration;

use crate::e2e::{wait_for, CourierSetup};
use crate::report::{cells, Check, Goal, Report};
use crate::Bench;

/// The target: courier makes the broker send at most this many times the bytes per message the pipe
/// (one consumer reading every partition once) does.
const READ_ABOUT_ONCE: f64 = 1.3;

/// Below this fraction of the pipe's bytes, the measurement is broken: every message must leave the
/// broker at least once (5% for noise: the pipe's idle fetches, protocol chatter).
const READ_ONCE_FLOOR: f64 = 0.95;

/// What the local broker wrote while `run` ran.
async fn broker_bytes<F: std::future::Future<Output = anyhow::Result<()>>>(
    run: F,
) -> anyhow::Result<u64> {
    let before = crate::machine::broker_bytes_written().ok_or_else(no_local_broker)?;
    run.await?;
    let after = crate::machine::broker_bytes_written().ok_or_else(no_local_broker)?;
    Ok(after.saturating_sub(before))
}

fn no_local_broker() -> anyhow::Error {
    anyhow::anyhow!(
        "the kafka-bytes section counts what the broker sends from its process on this machine, and \
         no local Kafka broker process (kafka.Kafka) was found: start it with scripts/kafka.sh, or skip \
         the section (--only)"
    )
}

pub async fn section(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    let total = bench.args.ratio_messages;
    let partitions = bench.args.partitions;
    let counters = &bench.sink.counters;
    eprintln!("bench: kafka bytes: producing {total} messages over {partitions} partitions");
    let topic = crate::load::produce_topic(&bench.brokers, partitions, total).await?;
    report.line(format_args!(
        "## Bytes the broker sent per delivered message: {total} messages, {partitions} partitions\n"
    ));
    report.header(&[
        "variant",
        "broker bytes out",
        "bytes / msg",
        "vs pipe",
        "target",
        "met",
    ]);

    counters.reset(false);
    let pipe_bytes = broker_bytes(bench.pipe(&topic).run(counters, total)).await?;
    let pipe_per_message = pipe_bytes as f64 / total as f64;
    report.row(&row("pipe", pipe_bytes, total, 1.0, &Check::none()));

    for range_size in [100u32, 1000] {
        for tasks in [1usize, 8] {
            eprintln!("bench: kafka bytes: courier, {tasks} task(s), ranges of {range_size}");
            counters.reset(false);
            let bytes = broker_bytes(async {
                let run = CourierSetup::tuned(&topic, &bench.sink.url, tasks, range_size)?
                    .start(&bench.server, &bench.brokers)
                    .await?;
                let delivered = wait_for(counters, total, Duration::from_secs(600)).await;
                // Stopped before counting: the readers' consumers are closed, nothing more is fetched.
                run.finish().await?;
                delivered
            })
            .await?;
            let ratio = bytes as f64 / total as f64 / pipe_per_message;
            report.row(&row(
                &format!("courier, {tasks} task(s), ranges of {range_size}"),
                bytes,
                total,
                ratio,
                &[
                    Goal::AtMost(READ_ABOUT_ONCE).check(ratio, "x pipe"),
                    Goal::AtLeast(READ_ONCE_FLOOR).check(ratio, "x pipe (read-once floor)"),
                ],
            ));
        }
    }
    report.line(
        "\nBytes are what the local broker process wrote (`wchar` of /proc/PID/io, `sendfile` \
         included) from just before a variant started to just after it stopped: fetch responses \
         above all, prefetch and protocol overhead included, the same count for the pipe and courier. A \
         row below the read-once floor (0.95x the pipe) would mean the count is broken.\n",
    );
    Ok(())
}

fn row(name: &str, bytes: u64, messages: u64, ratio: f64, checks: &[Check]) -> Vec<String> {
    let [target, met] = cells(checks);
    vec![
        name.to_owned(),
        bytes.to_string(),
        format!("{:.1}", bytes as f64 / messages as f64),
        format!("{ratio:.2}x"),
        target,
        met,
    ]
}
