//! Section 2: bytes received from the Kafka brokers per delivered message, courier against the raw pipe.
//!
//! Owns: the bench process's `metrics` recorder ([`install_recorder`]), which keeps only courier's
//! `courier_kafka_received_bytes_total` (the worker owns its range reader, so the counter is how the bench
//! sees its bytes without a change to the worker's API), and the section itself. The pipe counts the same
//! way: librdkafka's per-broker `rxbytes` statistics in its own consumer context ([`crate::e2e::Pipe`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

use crate::e2e::{wait_for, CourierSetup};
use crate::report::{cells, Check, Goal, Report};
use crate::Bench;

/// Bytes courier's range readers reported, once the recorder is installed.
static RECEIVED: OnceLock<Arc<AtomicU64>> = OnceLock::new();

/// Keeps courier's received-bytes counter; every other metric is a no-op, as with no recorder at all.
struct ReceivedBytesRecorder {
    received: Arc<AtomicU64>,
}

impl Recorder for ReceivedBytesRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        if key.name() == courier_kafka::RECEIVED_BYTES {
            Counter::from_arc(Arc::clone(&self.received))
        } else {
            Counter::noop()
        }
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// Installs the recorder for the whole process (once; later calls do nothing).
pub fn install_recorder() -> anyhow::Result<()> {
    if RECEIVED.get().is_some() {
        return Ok(());
    }
    let received = Arc::new(AtomicU64::new(0));
    metrics::set_global_recorder(ReceivedBytesRecorder {
        received: Arc::clone(&received),
    })
    .map_err(|_| anyhow::anyhow!("another metrics recorder is already installed"))?;
    let _ = RECEIVED.set(received);
    Ok(())
}

/// Bytes courier's range readers have received in this process so far.
fn courier_received() -> anyhow::Result<u64> {
    RECEIVED
        .get()
        .map(|r| r.load(Ordering::Relaxed))
        .ok_or_else(|| anyhow::anyhow!("the metrics recorder is not installed"))
}

/// Below this fraction of the pipe's bytes per message, courier's figure is an undercount: each
/// message must cross the wire at least once (5% for noise: the pipe's idle fetches, protocol chatter).
const READ_ONCE_FLOOR: f64 = 0.95;

/// A range reader reports a read's bytes within a few seconds of its end: its consumer keeps the
/// partition for `PARK_AFTER`, then the next park check (every second) serves its last statistics.
const REPORT_LAG: Duration = courier_kafka::PARK_AFTER.saturating_add(Duration::from_secs(2));

/// Waits at least [`REPORT_LAG`], then until the counter has not grown for 3 s (20 s at most).
async fn settle() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut last = (courier_received()?, started);
    while started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = courier_received()?;
        if now != last.0 {
            last = (now, std::time::Instant::now());
        }
        if started.elapsed() >= REPORT_LAG && last.1.elapsed() >= Duration::from_secs(3) {
            break;
        }
    }
    Ok(())
}

pub async fn section(bench: &Bench, report: &mut Report) -> anyhow::Result<()> {
    install_recorder()?;
    let total = bench.args.ratio_messages;
    let partitions = bench.args.partitions;
    let counters = &bench.sink.counters;
    eprintln!("bench: kafka bytes: producing {total} messages over {partitions} partitions");
    let topic = crate::load::produce_topic(&bench.brokers, partitions, total).await?;
    report.line(format_args!(
        "## Kafka bytes received per delivered message: {total} messages, {partitions} partitions\n"
    ));
    report.header(&[
        "variant",
        "bytes received",
        "bytes / msg",
        "vs pipe",
        "target",
        "met",
    ]);

    counters.reset(false);
    let pipe_bytes = bench
        .pipe(&topic)
        .run_counting_bytes(counters, total)
        .await?;
    let pipe_per_message = pipe_bytes as f64 / total as f64;
    report.row(&row("pipe", pipe_bytes, total, 1.0, &Check::none()));

    for range_size in [100u32, 1000] {
        for tasks in [1usize, 8] {
            eprintln!("bench: kafka bytes: courier, {tasks} task(s), ranges of {range_size}");
            counters.reset(false);
            let before = courier_received()?;
            let run = CourierSetup::tuned(&topic, &bench.sink.url, tasks, range_size)?
                .start(&bench.server, &bench.brokers)
                .await?;
            let delivered = wait_for(counters, total, Duration::from_secs(600)).await;
            if delivered.is_ok() {
                settle().await?;
            }
            let bytes = courier_received()? - before;
            run.finish().await?;
            delivered?;
            let ratio = bytes as f64 / total as f64 / pipe_per_message;
            report.row(&row(
                &format!("courier, {tasks} task(s), ranges of {range_size}"),
                bytes,
                total,
                ratio,
                &[
                    Goal::AtMost(1.3).check(ratio, "x pipe"),
                    // The pipe reads every message once: fewer bytes than that means the counter
                    // missed some, and the row proves nothing.
                    Goal::AtLeast(READ_ONCE_FLOOR).check(ratio, "x pipe (read-once floor)"),
                ],
            ));
        }
    }
    report.line(
        "\nCourier's bytes are its range readers' `courier_kafka_received_bytes_total`, read through a \
         metrics recorder in the bench process once the counter has not grown for 3 s (at least 5 s \
         after the last delivery, so every consumer's last statistics are in); the pipe's are its own \
         consumer's librdkafka statistics (`rxbytes` per broker) after one more report past the last \
         message. Both include prefetch and protocol overhead. A courier row below the read-once floor \
         (0.95x the pipe) means the counter missed bytes, not that courier read less than once.\n",
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
