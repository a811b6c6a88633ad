//! The destination's DNS fails for a while (incident 8's first domino), then the fix is deployed.
//!
//! A worker delivers a steady trickle; a bad deploy replaces it with one whose destination is
//! `http://courier-chaos.invalid:PORT/` (the deliverer answers `.invalid` names "no such name" locally,
//! RFC 6761: nothing leaves the machine). After the outage window the fix is deployed: that worker is
//! stopped and one with the right URL started. Checks: nothing reached the destination during the
//! outage, the ranges recorded the DNS failure, nothing was lost, and how long recovery took.

use std::time::{Duration, SystemTime};

use crate::judge::FaultWindow;
use crate::pipeline::{Pipeline, PipelineSpec, ROUTE};
use crate::report::ScenarioReport;
use crate::workers::WorkerHandle;
use crate::{scenario, ChaosError, Options};

const RATE: usize = 100;

pub async fn run(options: &Options) -> Result<ScenarioReport, ChaosError> {
    let outage = options
        .length
        .pick(Duration::from_secs(5), Duration::from_secs(60));
    scenario::on_pipeline(
        "dns-outage",
        options,
        PipelineSpec::fast("dns"),
        async |p, report, workers| {
            p.start_trickle(RATE, RATE * (outage.as_secs() as usize + 300));
            workers.push(p.start_worker(&p.good_url()).await?);
            drive(options, p, workers, report, outage).await
        },
    )
    .await
}

async fn drive(
    options: &Options,
    p: &mut Pipeline,
    workers: &mut Vec<WorkerHandle>,
    report: &mut ScenarioReport,
    outage: Duration,
) -> Result<(), ChaosError> {
    let bound = options
        .length
        .pick(Duration::from_secs(60), Duration::from_secs(240));
    p.wait_delivered_elements(
        RATE as u64,
        bound,
        "warm-up: the worker delivers before the fault",
    )
    .await?;

    // The bad deploy: the destination's name no longer resolves.
    let bad_url = format!("http://courier-chaos.invalid:{}/", p.sink.addr().port());
    let fault_started = SystemTime::now();
    redeploy(p, workers, &bad_url, report).await?;
    let requests_before = p.sink.stats().requests;
    // Holding the outage open (not synchronisation).
    tokio::time::sleep(outage).await;
    let requests_during = p.sink.stats().requests - requests_before;

    // The fix is deployed (recovery is measured from the start of the deploy: it includes the rollout).
    let fault_ended = SystemTime::now();
    redeploy(p, workers, &p.good_url(), report).await?;
    let fault = FaultWindow {
        started: fault_started,
        ended: fault_ended,
    };
    let judgement = p
        .settle(report, fault, bound, "first delivery after the fix")
        .await?;

    let store = p.harness().await?;
    let dns_failures = store
        .ranges(ROUTE)
        .await
        .map_err(|e| ChaosError::Setup(format!("reading last_error: {e}")))?
        .iter()
        .filter(|range| {
            range
                .last_error
                .as_deref()
                .is_some_and(|e| e.to_ascii_lowercase().contains("courier-chaos.invalid"))
        })
        .count();
    report.note(format!(
        "outage {:.0} s: {requests_during} request(s) reached the destination; {dns_failures} range(s) recorded the DNS failure in last_error",
        outage.as_secs_f64()
    ));
    report.check(
        "the outage was real",
        requests_during == 0 && dns_failures > 0,
        format!("{requests_during} requests during the outage, {dns_failures} ranges failed on the name"),
    );
    report.judgement = Some(judgement);
    Ok(())
}

/// Records `url` as the route's (the deliberate change), stops the running worker (SIGTERM: drain and
/// release) and starts one delivering to `url`.
async fn redeploy(
    p: &Pipeline,
    workers: &mut Vec<WorkerHandle>,
    url: &str,
    report: &mut ScenarioReport,
) -> Result<(), ChaosError> {
    p.record_url(url).await?;
    for mut old in workers.drain(..) {
        if let Err(how) = old.stop(Duration::from_secs(10)).await {
            report.note(format!("stopping the old worker: {how}"));
        }
    }
    workers.push(p.start_worker(url).await?);
    Ok(())
}
