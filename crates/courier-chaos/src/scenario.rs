//! The scenario runner: what every fault scenario shares, so that a scenario's file holds only its
//! fault and its checks.
//!
//! Owns [`on_pipeline`]: the report and its timing, a fresh pipeline (topic, database, sink), the
//! workers the scenario starts, and the tear-down that runs whatever happened (workers stopped, sink
//! shut, database dropped) before the scenario's own error, if any, is returned. The shared tail of a
//! fault ("wait for delivery to resume, stop production, wait for everything, judge every message") is
//! [`Pipeline::settle`](crate::pipeline::Pipeline::settle).

use std::time::Instant;

use crate::pipeline::{Pipeline, PipelineSpec};
use crate::report::ScenarioReport;
use crate::workers::WorkerHandle;
use crate::{ChaosError, Options};

/// Runs scenario `name` on a fresh pipeline made from `spec`: `drive` starts production and workers
/// (pushing them to the list it is given), applies the fault and records its checks in the report.
pub(crate) async fn on_pipeline(
    name: &str,
    options: &Options,
    spec: PipelineSpec,
    drive: impl AsyncFnOnce(
        &mut Pipeline,
        &mut ScenarioReport,
        &mut Vec<WorkerHandle>,
    ) -> Result<(), ChaosError>,
) -> Result<ScenarioReport, ChaosError> {
    let started = Instant::now();
    let mut report = ScenarioReport::new(name, None, options.length);
    let mut pipeline = Pipeline::start(&options.services, spec, options.launcher.clone()).await?;
    let mut workers = Vec::new();
    let outcome = drive(&mut pipeline, &mut report, &mut workers).await;
    // Torn down even when the scenario failed: nothing of it outlives its report.
    let finished = pipeline.finish(workers).await;
    outcome?;
    finished?;
    report.elapsed = started.elapsed();
    Ok(report)
}
