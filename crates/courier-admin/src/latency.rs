//! End-to-end latency of the last few minutes, per route, for the status page's p50 and p99.
//!
//! Owns [`LatencyWindow`]: a `metrics` recorder (installed next to Prometheus and StatsD) that keeps the
//! samples of [`END_TO_END_LATENCY`] (one per delivered batch: Kafka timestamp of its oldest message to
//! the destination's acknowledgement) with their time, drops those older than [`WINDOW`], and answers
//! quantiles over what is left. Every other metric is ignored here.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use courier_worker::metrics::END_TO_END_LATENCY;
use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};

/// How far back the quantiles look.
pub const WINDOW: Duration = Duration::from_secs(5 * 60);

/// Samples kept per route at most (the oldest go first): bounds memory whatever the batch rate.
const MAX_SAMPLES: usize = 20_000;

/// Quantiles of one route's end-to-end latency over [`WINDOW`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencySummary {
    pub samples: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

type Samples = Arc<Mutex<VecDeque<(Instant, f64)>>>;

/// End-to-end latency samples per route; clones share them. Install it as (part of) the global
/// recorder, read it with [`LatencyWindow::summaries`].
#[derive(Debug, Clone, Default)]
pub struct LatencyWindow {
    routes: Arc<Mutex<BTreeMap<String, Samples>>>,
}

struct RouteHistogram(Samples);

impl HistogramFn for RouteHistogram {
    fn record(&self, seconds: f64) {
        if !seconds.is_finite() {
            return;
        }
        let now = Instant::now();
        let mut samples = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        samples.push_back((now, seconds.max(0.0)));
        while samples.len() > MAX_SAMPLES
            || samples
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > WINDOW)
        {
            samples.pop_front();
        }
    }
}

impl LatencyWindow {
    /// Records one sample for `route` (what the recorder does for each histogram sample).
    pub fn record(&self, route: &str, latency: Duration) {
        RouteHistogram(self.samples_of(route)).record(latency.as_secs_f64());
    }

    fn samples_of(&self, route: &str) -> Samples {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(routes.entry(route.to_owned()).or_default())
    }

    /// p50, p99 and max per route over the last [`WINDOW`]; routes without samples in it are left out.
    pub fn summaries(&self) -> BTreeMap<String, LatencySummary> {
        let now = Instant::now();
        let routes: Vec<(String, Samples)> = self
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(route, samples)| (route.clone(), Arc::clone(samples)))
            .collect();
        let mut summaries = BTreeMap::new();
        for (route, samples) in routes {
            let mut values: Vec<f64> = samples
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .filter(|(at, _)| now.duration_since(*at) <= WINDOW)
                .map(|(_, value)| *value)
                .collect();
            if values.is_empty() {
                continue;
            }
            values.sort_by(f64::total_cmp);
            let at = |q: f64| {
                // Nearest rank: the smallest sample with at least q of them at or below it.
                let rank = (q * values.len() as f64).ceil() as usize;
                Duration::from_secs_f64(values[rank.clamp(1, values.len()) - 1])
            };
            summaries.insert(
                route,
                LatencySummary {
                    samples: values.len(),
                    p50: at(0.50),
                    p99: at(0.99),
                    max: at(1.0),
                },
            );
        }
        summaries
    }
}

impl Recorder for LatencyWindow {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        if key.name() != END_TO_END_LATENCY {
            return Histogram::noop();
        }
        match key.labels().find(|label| label.key() == "route") {
            Some(route) => {
                Histogram::from_arc(Arc::new(RouteHistogram(self.samples_of(route.value()))))
            }
            None => Histogram::noop(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_per_route_from_what_the_worker_records() {
        let window = LatencyWindow::default();
        metrics::with_local_recorder(&window, || {
            for ms in 1..=100u64 {
                courier_worker::metrics::end_to_end_latency("a", Duration::from_millis(ms));
            }
            courier_worker::metrics::end_to_end_latency("b", Duration::from_secs(3));
            // Another histogram is not mistaken for end-to-end latency.
            metrics::histogram!("courier_batch_latency_seconds", "route" => "c").record(9.0);
        });
        let summaries = window.summaries();
        assert_eq!(summaries.keys().collect::<Vec<_>>(), vec!["a", "b"]);
        let ms = |d: Duration| (d.as_secs_f64() * 1000.0).round() as u64;
        let a = summaries["a"];
        assert_eq!(
            (a.samples, ms(a.p50), ms(a.p99), ms(a.max)),
            (100, 50, 99, 100)
        );
        assert_eq!(ms(summaries["b"].p99), 3000);
    }

    #[tokio::test(start_paused = true)]
    async fn samples_older_than_the_window_drop_out() {
        let window = LatencyWindow::default();
        window.record("a", Duration::from_secs(10));
        tokio::time::advance(WINDOW + Duration::from_secs(1)).await;
        window.record("a", Duration::from_secs(1));
        let a = window.summaries()["a"];
        assert_eq!((a.samples, a.p99.as_secs()), (1, 1));
    }
}
