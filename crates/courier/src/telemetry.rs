//! Logging to stderr (text or JSON) and metrics (StatsD, Prometheus, the status page's latency window),
//! installed once at startup.
//!
//! Every metric of the `metrics` facade goes to one fanout recorder: StatsD over UDP when `[metrics]`
//! names a host (in the DogStatsD or the plain dialect), the Prometheus recorder behind the admin
//! endpoint's `/metrics` when it is on, and the status page's end-to-end latency window.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use courier_admin::LatencyWindow;
use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use metrics_exporter_statsd::StatsdBuilder;
use metrics_util::layers::FanoutBuilder;
use serde::Deserialize;
use tracing_subscriber::EnvFilter;

use crate::config::{MetricsConfig, StatsdDialect};

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line per event for people; coloured only on a terminal (and never with NO_COLOR set).
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, message and fields at the top level.
    Json,
}

/// The filter when `RUST_LOG` is unset: courier at info, its dependencies at warn.
pub const DEFAULT_FILTER: &str = "warn,courier=info";

/// Installs the stderr logger. `RUST_LOG` decides the level (default [`DEFAULT_FILTER`]).
pub fn install_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(colour_wanted()).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_ansi(false)
            .try_init(),
    };
}

/// Colour only for a person at a terminal: never into a file or a pipe, never with `NO_COLOR` set.
fn colour_wanted() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// What the admin endpoint reads from the installed recorders.
pub struct Telemetry {
    /// `/metrics`; `None` when Prometheus was not asked for.
    pub prometheus: Option<PrometheusHandle>,
    pub latency: LatencyWindow,
}

/// Installs the global recorder: StatsD when `statsd` is set, Prometheus when `prometheus` is true, and
/// always the latency window of the status page.
pub fn install_metrics(
    statsd: Option<&MetricsConfig>,
    prometheus: bool,
) -> anyhow::Result<Telemetry> {
    let latency = LatencyWindow::default();
    let mut fanout = FanoutBuilder::default().add_recorder(latency.clone());
    let mut handle = None;
    if prometheus {
        let recorder = PrometheusBuilder::new().build_recorder();
        handle = Some(recorder.handle());
        fanout = fanout.add_recorder(recorder);
    }
    if let Some(config) = statsd {
        fanout = match config.dialect {
            StatsdDialect::Dogstatsd => fanout.add_recorder(statsd_recorder(config)?),
            StatsdDialect::Plain => {
                fanout.add_recorder(Plain::new(statsd_recorder(config)?, config))
            }
        };
    }
    if metrics::set_global_recorder(fanout.build()).is_err() {
        anyhow::bail!("metrics: a recorder is already installed");
    }
    Ok(Telemetry {
        prometheus: handle,
        latency,
    })
}

fn statsd_recorder(
    config: &MetricsConfig,
) -> anyhow::Result<metrics_exporter_statsd::StatsdRecorder> {
    statsd_builder(config)
        .build(config.prefix.as_deref())
        .with_context(|| {
            format!(
                "metrics: cannot set up StatsD export to {}:{}",
                config.statsd_host, config.statsd_port
            )
        })
}

/// The StatsD exporter for `config`'s host and dialect.
fn statsd_builder(config: &MetricsConfig) -> StatsdBuilder {
    let builder = StatsdBuilder::from(config.statsd_host.clone(), config.statsd_port);
    match config.dialect {
        StatsdDialect::Dogstatsd => {
            let mut builder = builder.histogram_is_distribution();
            for (key, value) in &config.tags {
                builder = builder.with_default_tag(key.clone(), value.clone());
            }
            builder
        }
        // Plain StatsD knows neither tags nor distributions: timers in milliseconds, tags in the name.
        StatsdDialect::Plain => builder.histogram_is_timer(),
    }
}

/// Plain StatsD: every label (then every `[metrics] tags` entry) folded into the metric name as
/// `.key.value`, so nothing is sent as a DogStatsD tag.
struct Plain<R> {
    inner: R,
    tags: Vec<Label>,
}

impl<R> Plain<R> {
    fn new(inner: R, config: &MetricsConfig) -> Self {
        Self {
            inner,
            tags: config
                .tags
                .iter()
                .map(|(key, value)| Label::new(key.clone(), value.clone()))
                .collect(),
        }
    }

    fn fold(&self, key: &Key) -> Key {
        let mut name = key.name().to_owned();
        for label in key.labels().chain(self.tags.iter()) {
            name.push('.');
            name.push_str(&plain_segment(label.key()));
            name.push('.');
            name.push_str(&plain_segment(label.value()));
        }
        Key::from_name(name)
    }
}

/// A name segment that cannot break a StatsD line: anything but letters, digits, `-` and `_` becomes `_`.
fn plain_segment(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl<R: Recorder> Recorder for Plain<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.inner.register_counter(&self.fold(key), metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.inner.register_gauge(&self.fold(key), metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.inner.register_histogram(&self.fold(key), metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a StatsD client would put on the wire, one line per metric.
    #[derive(Clone, Default)]
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl cadence::MetricSink for Capture {
        fn emit(&self, metric: &str) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(metric.to_owned());
            Ok(metric.len())
        }
    }

    /// The lines `record` produces through the recorder `install_metrics` builds for `dialect`.
    fn lines_of(dialect: StatsdDialect, record: impl FnOnce()) -> Vec<String> {
        let config = MetricsConfig {
            statsd_host: "127.0.0.1".into(),
            statsd_port: 8125,
            dialect,
            prefix: Some("p".into()),
            tags: [("env".to_owned(), "ci".to_owned())].into(),
        };
        let capture = Capture::default();
        let recorder = statsd_builder(&config)
            .with_sink(capture.clone())
            .build(config.prefix.as_deref())
            .expect("recorder");
        match dialect {
            StatsdDialect::Dogstatsd => metrics::with_local_recorder(&recorder, record),
            StatsdDialect::Plain => {
                metrics::with_local_recorder(&Plain::new(recorder, &config), record);
            }
        }
        let mut lines = capture
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        lines.sort();
        lines
    }

    fn record() {
        metrics::counter!("courier_ranges_leased_total", "route" => "orders.v2").increment(3);
        metrics::histogram!("courier_batch_latency_seconds", "route" => "orders.v2").record(0.25);
    }

    #[test]
    fn plain_statsd_has_no_tags_labels_go_into_the_name_and_histograms_are_timers() {
        let lines = lines_of(StatsdDialect::Plain, record);
        assert_eq!(
            lines,
            [
                "p.courier_batch_latency_seconds.route.orders_v2.env.ci:250|ms",
                "p.courier_ranges_leased_total.route.orders_v2.env.ci:3|c",
            ],
            "{lines:?}"
        );
    }

    #[test]
    fn dogstatsd_sends_labels_and_default_tags_as_tags() {
        let lines = lines_of(StatsdDialect::Dogstatsd, record);
        assert!(
            lines[0].starts_with("p.courier_batch_latency_seconds:0.25|d|#")
                && lines[0].contains("route:orders.v2")
                && lines[0].contains("env:ci"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("p.courier_ranges_leased_total:3|c|#"),
            "{lines:?}"
        );
    }
}
