//! A Kafka broker restart under live workers (`scripts/kafka.sh stop`, a pause, `scripts/kafka.sh
//! start`).
//!
//! Only in `courier gameday --full`, only when `KAFKA_BROKERS` is unset and the running broker is the
//! one this checkout's `scripts/kafka.sh` started (its pid file); otherwise skipped with a note. The
//! generator holds its messages while the broker is down (a produce that fails is an unknown fate, not
//! a message in); the workers' reads fail and are retried.

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::env::run_script;
use crate::judge::FaultWindow;
use crate::pg_faults::restart_refused;
use crate::pipeline::PipelineSpec;
use crate::report::ScenarioReport;
use crate::{scenario, ChaosError, Options};

const RATE: usize = 100;

/// Whether the broker was started by `scripts/kafka.sh` of the checkout holding `scripts`.
fn broker_is_ours(scripts: &Path) -> bool {
    let kafka_dir = std::env::var("COURIER_KAFKA_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| scripts.join("../target/kafka"));
    let Ok(pid) = std::fs::read_to_string(kafka_dir.join("kafka.pid")) else {
        return false;
    };
    std::fs::read(format!("/proc/{}/cmdline", pid.trim()))
        .map(|cmdline| String::from_utf8_lossy(&cmdline).contains("kafka.Kafka"))
        .unwrap_or(false)
}

async fn kafka_sh(scripts: &Path, action: &str, bound: Duration) -> Result<(), ChaosError> {
    run_script(scripts, "kafka.sh", action, &[], bound).await
}

pub async fn run(options: &Options) -> Result<ScenarioReport, ChaosError> {
    if let Some(why) = restart_refused(
        options,
        "Kafka",
        options.services.external_kafka,
        "KAFKA_BROKERS",
    ) {
        return Ok(ScenarioReport::skipped(
            "kafka-restart",
            options.length,
            why,
        ));
    }
    let Some(scripts) = options
        .services
        .scripts_dir
        .clone()
        .filter(|s| broker_is_ours(s))
    else {
        return Ok(ScenarioReport::skipped(
            "kafka-restart",
            options.length,
            "the broker on 127.0.0.1:9092 was not started by this checkout's scripts/kafka.sh (no live pid file); not ours to restart",
        ));
    };
    let bound = Duration::from_secs(240);
    scenario::on_pipeline(
        "kafka-restart",
        options,
        PipelineSpec::fast("kafkarestart"),
        async |p, report, workers| {
            p.start_trickle(RATE, RATE * 600);
            workers.push(p.start_worker(&p.good_url()).await?);
            p.wait_delivered_elements(RATE as u64, bound, "warm-up")
                .await?;
            p.pause_trickle(true);
            let fault_started = SystemTime::now();
            kafka_sh(&scripts, "stop", Duration::from_secs(90)).await?;
            // Holding the broker down (not synchronisation).
            tokio::time::sleep(Duration::from_secs(10)).await;
            kafka_sh(&scripts, "start", Duration::from_secs(240)).await?;
            let fault = FaultWindow {
                started: fault_started,
                ended: SystemTime::now(),
            };
            p.pause_trickle(false);
            report.note(format!(
                "broker down and back in {:.1} s (stop, 10 s down, start until it answers)",
                fault
                    .ended
                    .duration_since(fault.started)
                    .unwrap_or_default()
                    .as_secs_f64()
            ));
            let judgement = p
                .settle(
                    report,
                    fault,
                    bound,
                    "first delivery after the broker restart",
                )
                .await?;
            report.judgement = Some(judgement);
            Ok(())
        },
    )
    .await
}
