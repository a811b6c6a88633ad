//! `courier.toml`: one file for the store, Kafka, the worker, destinations and routes.
//!
//! Layers, last wins: the compiled-in defaults, the file, then the environment: `DATABASE_URL` and
//! `KAFKA_BROKERS` (the two every deployment sets), and `COURIER__SECTION__KEY=value` for any other
//! key (e.g. `COURIER__WORKER__DELIVERY_TASKS=16`). Unknown keys are refused, naming the key, so a typo
//! never silently falls back to a default. `courier.example.toml` documents every key.
//!
//! An error names the key and where its value came from: `file:line:column` for the file, the variable
//! for the environment (or "the default"), with what to write instead and an example.
//!
//! Owns the sections ([`Config`] and the CLI's own `[log]` and `[metrics]`), reading them in layers and
//! validating them. Its parts:
//! - `env`: the environment layered over the file, remembering which variable set which key;
//! - `explain`: a refused value explained as one line: the key, where its value came from, what to write.

mod env;
mod explain;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use courier_admin::{AdminConfig, ConfiguredRoute, StatusConfig};
use courier_http::DestinationConfig;
use courier_kafka::KafkaConfig;
use courier_store::StoreConfig;
use courier_worker::{RouteConfig, WorkerConfig};
use serde::Deserialize;

use crate::telemetry::LogFormat;
use explain::Source;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub store: StoreConfig,
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// The admin endpoint every worker serves (on by default, on 127.0.0.1).
    #[serde(default)]
    pub admin: AdminConfig,
    /// When `courier status` and the status page say something needs attention.
    #[serde(default)]
    pub status: StatusConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub destinations: BTreeMap<String, DestinationConfig>,
    #[serde(default)]
    pub routes: BTreeMap<String, RouteConfig>,
}

/// How courier logs (to stderr). `--log-format` and `COURIER_LOG_FORMAT` win over it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
}

/// Where metrics go over StatsD (UDP). Without this section metrics are not sent over StatsD (the admin
/// endpoint's `/metrics` serves them to Prometheus either way).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// StatsD host, e.g. `127.0.0.1` (the Datadog agent's DogStatsD listens on 8125).
    pub statsd_host: String,
    /// The line format: `dogstatsd` (labels as `|#key:value` tags, histograms as `|d` distributions;
    /// the Datadog agent, Telegraf's statsd input with datadog extensions) or `plain` (Etsy StatsD: no
    /// tags, labels folded into the name as `.key.value`, histograms as `|ms` timers in milliseconds;
    /// statsd, statsd_exporter, Graphite).
    #[serde(default)]
    pub dialect: StatsdDialect,
    #[serde(default = "default_statsd_port")]
    pub statsd_port: u16,
    /// Prepended to every metric name with a dot, e.g. `myteam` gives `myteam.courier_ranges_leased_total`.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Tags added to every metric, e.g. `{ env = "prod", region = "eu-west-1" }`.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

fn default_statsd_port() -> u16 {
    8125
}

/// The StatsD line format. See [`MetricsConfig::dialect`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatsdDialect {
    #[default]
    Dogstatsd,
    Plain,
}

impl Config {
    /// Reads, layers and validates the configuration at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
        Self::parse_file(&path.display().to_string(), &text, std::env::vars())
    }

    /// Parses `text` with the environment `env` layered on top, then validates.
    #[cfg(test)]
    pub fn parse(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        Self::parse_file("courier.toml", text, env)
    }

    /// [`Config::parse`] of the file `file` (named in errors, with the line and column of a bad value).
    pub fn parse_file(
        file: &str,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let mut value: toml::Table =
            toml::from_str(text).with_context(|| format!("{file} is not valid TOML"))?;
        // Which key each environment variable set, so an error blames the variable, not the file.
        let overrides = env::layer(&mut value, env)?;
        let layered = toml::Value::Table(value);
        let mut config: Config = serde_path_to_error::deserialize(layered.clone())
            .map_err(|error| {
                let source = Source {
                    file,
                    text,
                    overrides: &overrides,
                };
                anyhow::anyhow!(source.explain(&layered, &error))
            })
            .context("invalid configuration")?;
        for (name, route) in &mut config.routes {
            route.name = name.clone();
        }
        let source = Source {
            file,
            text,
            overrides: &overrides,
        };
        config
            .validate()
            .map_err(|error| match source.attribute(&error.to_string()) {
                Some(sources) => anyhow::anyhow!("{error:#} ({sources})"),
                None => error.context(format!("in {file}")),
            })?;
        // librdkafka refuses unknown property names and bad values only when a client is created:
        // create one now, offline, so a typo in [kafka.extra] is reported here with its line.
        config
            .kafka
            .check_properties()
            .map_err(|error| anyhow::anyhow!(source.explain_extra(&config.kafka, &error)))?;
        Ok(config)
    }

    /// Cross-field rules, checked before anything connects.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.store.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        self.kafka.validate().map_err(|e| anyhow::anyhow!(e))?;
        self.admin.validate().map_err(|e| anyhow::anyhow!(e))?;
        self.status.validate().map_err(|e| anyhow::anyhow!(e))?;
        courier_worker::validate_delivery(&self.worker, &self.destinations, self.routes.values())
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(())
    }

    pub fn route_list(&self) -> Vec<RouteConfig> {
        self.routes.values().cloned().collect()
    }

    /// The routes that should be running, as `courier status` and the status page judge them.
    pub fn configured_routes(&self) -> Vec<ConfiguredRoute> {
        self.routes
            .values()
            .map(|route| ConfiguredRoute {
                name: route.name.clone(),
                topic: route.topic.clone(),
                destination: route.destination.clone(),
            })
            .collect()
    }
}

/// The `[log] format` of the file at `path` (with `COURIER__LOG__FORMAT` over it), read before logging
/// is set up; `None` when neither says, or the file cannot be read (loading it properly reports why).
pub fn peek_log_format(path: &Path) -> Option<LogFormat> {
    let from_env = std::env::var("COURIER__LOG__FORMAT").ok();
    let raw = match from_env {
        Some(value) => value,
        None => {
            let text = std::fs::read_to_string(path).ok()?;
            let table: toml::Table = toml::from_str(&text).ok()?;
            table.get("log")?.get("format")?.as_str()?.to_owned()
        }
    };
    match raw.trim() {
        "text" => Some(LogFormat::Text),
        "json" => Some(LogFormat::Json),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const MINIMAL: &str = r#"
        [store]
        url = "postgres://courier:courier@127.0.0.1:54329/courier"
        [kafka]
        brokers = "127.0.0.1:9092"
        [destinations.hooks]
        url = "http://127.0.0.1:8080/hooks"
        [routes.orders]
        topic = "orders"
        destination = "hooks"
    "#;

    pub(super) fn parse(text: &str, env: &[(&str, &str)]) -> anyhow::Result<Config> {
        Config::parse(
            text,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn the_example_config_in_the_repo_is_valid() {
        let text = include_str!("../../../../courier.example.toml");
        let config = parse(text, &[]).expect("courier.example.toml must stay valid");
        assert!(!config.routes.is_empty());
    }

    #[test]
    fn admin_status_and_log_sections_have_defaults_and_are_read() {
        let config = parse(MINIMAL, &[]).expect("valid");
        assert_eq!(
            config.admin.address(),
            Ok(Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9464))))
        );
        assert_eq!(config.status.max_age, std::time::Duration::from_secs(60));
        assert_eq!(config.log.format, LogFormat::Text);
        let text = format!(
            "{MINIMAL}\n[admin]\nlisten = \"\"\n[status]\nmax_lag = 10\n[log]\nformat = \"json\"\n[metrics]\nstatsd_host = \"127.0.0.1\"\ndialect = \"plain\"\n"
        );
        let config = parse(&text, &[]).expect("valid");
        assert_eq!(config.admin.address(), Ok(None));
        assert_eq!(config.status.max_lag, 10);
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(
            config.metrics.map(|m| m.dialect),
            Some(StatsdDialect::Plain)
        );
        let err =
            parse(&format!("{MINIMAL}\n[admin]\nlisten = \"9464\"\n"), &[]).expect_err("no host");
        assert!(format!("{err:#}").contains("admin.listen"), "{err:#}");
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err =
            parse(&format!("{MINIMAL}\n[worker]\ndelivery_taks = 4\n"), &[]).expect_err("typo");
        assert!(format!("{err:#}").contains("delivery_taks"), "{err:#}");
    }

    #[test]
    fn a_route_to_a_missing_destination_is_refused_naming_the_key() {
        let err = parse(
            &MINIMAL.replace("destination = \"hooks\"", "destination = \"hook\""),
            &[],
        )
        .expect_err("missing");
        assert!(
            format!("{err:#}").contains("routes.orders.destination"),
            "{err:#}"
        );
    }

    #[test]
    fn a_server_timeout_not_below_the_client_deadline_is_refused() {
        let text = format!(
            "{MINIMAL}\n[store.timeouts]\nclient_deadline = \"2s\"\nstatement_timeout = \"3s\"\n"
        );
        let err = parse(&text, &[]).expect_err("server outlasts client");
        let message = format!("{err:#}");
        assert!(
            message.contains("statement_timeout") && message.contains("client_deadline"),
            "{message}"
        );
    }

    #[test]
    fn zero_and_negative_ttls_are_refused() {
        let err =
            parse(&format!("{MINIMAL}\n[worker]\nlease_ttl = \"0s\"\n"), &[]).expect_err("zero");
        assert!(format!("{err:#}").contains("lease_ttl"), "{err:#}");
        let err = parse(&format!("{MINIMAL}\n[worker]\nlease_ttl = \"-5s\"\n"), &[])
            .expect_err("negative");
        assert!(
            format!("{err:#}").contains("lease_ttl") || format!("{err:#}").contains("-5s"),
            "{err:#}"
        );
    }

    #[test]
    fn a_malformed_destination_url_is_refused_naming_the_destination() {
        let err = parse(
            &MINIMAL.replace("http://127.0.0.1:8080/hooks", "not a url"),
            &[],
        )
        .expect_err("bad url");
        assert!(format!("{err:#}").contains("destinations.hooks"), "{err:#}");
    }
}
