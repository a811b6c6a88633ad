//! Logging to stderr and metrics to StatsD, installed once at startup.

use anyhow::Context as _;
use metrics_exporter_statsd::StatsdBuilder;
use tracing_subscriber::EnvFilter;

use crate::config::MetricsConfig;

/// `RUST_LOG` decides the level; by default courier logs at info and its dependencies at warn.
pub fn install_logging() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,courier=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Sends every metric of the `metrics` facade to StatsD over UDP.
pub fn install_metrics(config: &MetricsConfig) -> anyhow::Result<()> {
    let mut builder = StatsdBuilder::from(config.statsd_host.clone(), config.statsd_port)
        .histogram_is_distribution();
    for (key, value) in &config.tags {
        builder = builder.with_default_tag(key.clone(), value.clone());
    }
    let recorder = builder.build(config.prefix.as_deref()).with_context(|| {
        format!(
            "metrics: cannot set up StatsD export to {}:{}",
            config.statsd_host, config.statsd_port
        )
    })?;
    metrics::set_global_recorder(recorder).context("metrics: a recorder is already installed")?;
    Ok(())
}
