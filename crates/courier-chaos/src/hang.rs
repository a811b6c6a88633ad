//! A destination that accepts connections and never answers, for a while, then answers again.
//!
//! With a 1 s destination timeout, every request during the window is abandoned by courier and its
//! range retried (with backoff, and the circuit breaker pausing the destination); once the destination
//! answers again, everything is delivered. Checks: requests were really left hanging, nothing lost,
//! duplicates only in retried ranges, and the time to recover.

use std::time::{Duration, SystemTime};

use courier_sink::{Answer, Behaviour};

use crate::judge::FaultWindow;
use crate::pipeline::{fast_destination, PipelineSpec};
use crate::report::ScenarioReport;
use crate::{scenario, ChaosError, Options};

const RATE: usize = 100;

pub async fn run(options: &Options) -> Result<ScenarioReport, ChaosError> {
    let spec = PipelineSpec {
        destination: fast_destination(Duration::from_secs(1)),
        ..PipelineSpec::fast("hang")
    };
    let window = options
        .length
        .pick(Duration::from_secs(5), Duration::from_secs(30));
    let bound = options
        .length
        .pick(Duration::from_secs(60), Duration::from_secs(240));
    scenario::on_pipeline("hang", options, spec, async |p, report, workers| {
        p.start_trickle(RATE, RATE * (window.as_secs() as usize + 300));
        workers.push(p.start_worker(&p.good_url()).await?);
        p.wait_delivered_elements(RATE as u64, bound, "warm-up: the worker delivers before the fault")
            .await?;
        let fault_started = SystemTime::now();
        p.sink.set_behaviour(Behaviour::Hang);
        // Holding the fault window open (not synchronisation).
        tokio::time::sleep(window).await;
        p.sink.set_behaviour(Behaviour::Ok);
        let fault = FaultWindow {
            started: fault_started,
            ended: SystemTime::now(),
        };
        let judgement = p
            .settle(report, fault, bound, "first delivery after the destination answers again")
            .await?;
        let hung = p
            .sink
            .failed()
            .iter()
            .filter(|r| {
                r.answer == Answer::NoAnswer && r.received_at >= fault.started && r.received_at < fault.ended
            })
            .count();
        report.note(format!(
            "{hung} request(s) accepted and never answered during the {:.0} s window (destination timeout {:.0} s)",
            window.as_secs_f64(),
            p.spec.destination.timeout.as_secs_f64()
        ));
        report.check(
            "the destination really hung",
            hung > 0,
            format!("{hung} requests left without an answer"),
        );
        report.judgement = Some(judgement);
        Ok(())
    })
    .await
}
