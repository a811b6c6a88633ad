//! A destination that accepts connections and never answers, for a while, then answers again.
//!
//! With a 1 s destination timeout, every request during the window is abandoned by courier and its
//! range retried (with backoff, and the circuit breaker pausing the destination); once the destination
//! answers again, everything is delivered. Checks: requests were really left hanging, nothing lost,
//! duplicates only in retried ranges, and the time to recover.

use std::time::{Duration, Instant, SystemTime};

use courier_sink::{Answer, Behaviour};

use crate::judge::FaultWindow;
use crate::pipeline::{fast_destination, Pipeline, PipelineSpec};
use crate::report::ScenarioReport;
use crate::{ChaosError, Options};

const RATE: usize = 100;

pub async fn run(options: &Options) -> Result<ScenarioReport, ChaosError> {
    let started = Instant::now();
    let mut report = ScenarioReport::new("hang", None, options.length);
    let spec = PipelineSpec {
        destination: fast_destination(Duration::from_secs(1)),
        ..PipelineSpec::fast("hang")
    };
    let window = options
        .length
        .pick(Duration::from_secs(5), Duration::from_secs(30));
    let mut p = Pipeline::start(&options.services, spec, options.launcher.clone()).await?;
    p.start_trickle(RATE, RATE * (window.as_secs() as usize + 300));
    let workers = vec![p.start_worker(&p.good_url()).await?];
    let outcome = async {
        let bound = options.length.pick(Duration::from_secs(60), Duration::from_secs(240));
        p.wait_delivered_elements(RATE as u64, bound, "warm-up: the worker delivers before the fault").await?;
        let fault_started = SystemTime::now();
        p.sink.set_behaviour(Behaviour::Hang);
        // Holding the fault window open (not synchronisation).
        tokio::time::sleep(window).await;
        p.sink.set_behaviour(Behaviour::Ok);
        let fault_ended = SystemTime::now();
        p.wait_progress(1, bound, "first delivery after the destination answers again").await?;
        p.stop_trickle().await?;
        let complete = p.wait_all_delivered(bound).await;
        let hung = p
            .sink
            .failed()
            .iter()
            .filter(|r| r.answer == Answer::NoAnswer && r.received_at >= fault_started && r.received_at < fault_ended)
            .count();
        let judgement = p
            .judge(Some(FaultWindow {
                started: fault_started,
                ended: fault_ended,
            }))
            .await?;
        report.note(format!(
            "{hung} request(s) accepted and never answered during the {:.0} s window (destination timeout {:.0} s)",
            window.as_secs_f64(),
            p.spec.destination.timeout.as_secs_f64()
        ));
        report.check("the destination really hung", hung > 0, format!("{hung} requests left without an answer"));
        report.check(
            "every message delivered",
            complete,
            format!("{} of {} within {bound:?} of the end of the fault", judgement.delivered, judgement.messages_in),
        );
        report.judgement = Some(judgement);
        Ok::<(), ChaosError>(())
    }
    .await;
    let finished = p.finish(workers).await;
    outcome?;
    finished?;
    report.elapsed = started.elapsed();
    Ok(report)
}
