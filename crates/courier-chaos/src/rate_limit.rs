//! A 429 storm: the destination answers `429 Too Many Requests` with `Retry-After: 1` for a while.
//!
//! courier must honour `Retry-After` and share it with every task (through the store): the request rate
//! during the storm has to be far below the rate before it, then delivery recovers with nothing lost.
//! Rates come from the destination's own record (every request's arrival time).

use std::time::{Duration, SystemTime};

use courier_sink::{Behaviour, Received};

use crate::judge::FaultWindow;
use crate::pipeline::{Pipeline, PipelineSpec};
use crate::report::ScenarioReport;
use crate::{scenario, ChaosError, Options};

const RATE: usize = 200;

pub async fn run(options: &Options) -> Result<ScenarioReport, ChaosError> {
    let spec = PipelineSpec {
        range_size: 20,
        ..PipelineSpec::fast("ratelimit")
    };
    let storm = options
        .length
        .pick(Duration::from_secs(5), Duration::from_secs(30));
    scenario::on_pipeline("rate-limit", options, spec, async |p, report, workers| {
        p.start_trickle(RATE, RATE * (storm.as_secs() as usize + 300));
        workers.push(p.start_worker(&p.good_url()).await?);
        drive(options, p, report, storm).await
    })
    .await
}

/// Requests (answered or not) that arrived in `[from, to)`, per second.
fn rate(requests: &[Received], from: SystemTime, to: SystemTime) -> f64 {
    let count = requests
        .iter()
        .filter(|r| r.received_at >= from && r.received_at < to)
        .count();
    count as f64
        / to.duration_since(from)
            .unwrap_or_default()
            .as_secs_f64()
            .max(0.001)
}

async fn drive(
    options: &Options,
    p: &mut Pipeline,
    report: &mut ScenarioReport,
    storm: Duration,
) -> Result<(), ChaosError> {
    let bound = options
        .length
        .pick(Duration::from_secs(60), Duration::from_secs(240));
    p.wait_delivered_elements(
        RATE as u64,
        bound,
        "warm-up: the worker delivers before the storm",
    )
    .await?;
    let before = options
        .length
        .pick(Duration::from_secs(3), Duration::from_secs(10));
    let before_started = SystemTime::now();
    // Measuring the normal rate over a window (not synchronisation).
    tokio::time::sleep(before).await;

    let fault_started = SystemTime::now();
    p.sink
        .set_behaviour(Behaviour::StatusWithRetryAfter(429, 1));
    // Holding the storm open (not synchronisation).
    tokio::time::sleep(storm).await;
    p.sink.set_behaviour(Behaviour::Ok);
    let fault_ended = SystemTime::now();

    let fault = FaultWindow {
        started: fault_started,
        ended: fault_ended,
    };
    let judgement = p
        .settle(report, fault, bound, "first delivery after the storm")
        .await?;
    let mut requests = p.sink.received();
    requests.extend(p.sink.failed());
    let rate_before = rate(&requests, before_started, fault_started);
    let rate_storm = rate(&requests, fault_started, fault_ended);
    let answered_429 = requests
        .iter()
        .filter(|r| r.answer == courier_sink::Answer::Status(429))
        .count();
    report.note(format!(
        "request rate before the storm {rate_before:.1}/s, during it {rate_storm:.1}/s ({answered_429} answered 429 with Retry-After: 1, over {:.0} s)",
        storm.as_secs_f64()
    ));
    report.check(
        "Retry-After honoured: the storm's request rate is far below the normal rate",
        rate_storm <= rate_before / 3.0 && answered_429 > 0,
        format!("{rate_storm:.1}/s during vs {rate_before:.1}/s before (must be at most a third)"),
    );
    report.judgement = Some(judgement);
    Ok(())
}
