//! `courier.toml`: one file for the store, Kafka, the worker, destinations and routes.
//!
//! Layers, last wins: the compiled-in defaults, the file, then the environment: `DATABASE_URL` and
//! `KAFKA_BROKERS` (the two every deployment sets), and `COURIER__SECTION__KEY=value` for any other
//! key (e.g. `COURIER__WORKER__DELIVERY_TASKS=16`). Unknown keys are refused, naming the key, so a typo
//! never silently falls back to a default. `courier.example.toml` documents every key.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context as _};
use courier_http::DestinationConfig;
use courier_kafka::KafkaConfig;
use courier_store::StoreConfig;
use courier_worker::{RouteConfig, WorkerConfig};
use serde::Deserialize;

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
    #[serde(default)]
    pub destinations: BTreeMap<String, DestinationConfig>,
    #[serde(default)]
    pub routes: BTreeMap<String, RouteConfig>,
}

/// Where metrics go (StatsD over UDP). Without this section metrics are not exported.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// StatsD host, e.g. `127.0.0.1` (the Datadog agent's DogStatsD listens on 8125).
    pub statsd_host: String,
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

impl Config {
    /// Reads, layers and validates the configuration at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
        Self::parse(&text, std::env::vars()).with_context(|| format!("in {}", path.display()))
    }

    /// Parses `text` with the environment `env` layered on top, then validates.
    pub fn parse(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let mut value: toml::Table = toml::from_str(text).context("the file is not valid TOML")?;
        for (key, raw) in env {
            let path: Vec<String> = match key.as_str() {
                "DATABASE_URL" => vec!["store".into(), "url".into()],
                "KAFKA_BROKERS" => vec!["kafka".into(), "brokers".into()],
                _ => match key.strip_prefix("COURIER__") {
                    Some(rest) => rest.split("__").map(str::to_lowercase).collect(),
                    None => continue,
                },
            };
            set_path(&mut value, &path, &raw)
                .with_context(|| format!("environment variable {key}"))?;
        }
        let mut config: Config = value
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("{}", e.message().trim()))
            .context("invalid configuration")?;
        for (name, route) in &mut config.routes {
            route.name = name.clone();
        }
        config.validate()?;
        Ok(config)
    }

    /// Cross-field rules, checked before anything connects.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.store.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        for (name, destination) in &self.destinations {
            destination
                .validate()
                .map_err(|e| anyhow::anyhow!("destinations.{name}: {e}"))?;
        }
        let longest = self
            .destinations
            .values()
            .map(|d| d.timeout)
            .max()
            .unwrap_or_default();
        self.worker
            .validate(longest)
            .map_err(|e| anyhow::anyhow!(e))?;
        for route in self.routes.values() {
            route.validate().map_err(|e| anyhow::anyhow!(e))?;
            if !self.destinations.contains_key(&route.destination) {
                bail!(
                    "routes.{}.destination is {:?}, but there is no [destinations.{}] section (known: {})",
                    route.name,
                    route.destination,
                    route.destination,
                    self.destinations.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            }
        }
        Ok(())
    }

    pub fn route_list(&self) -> Vec<RouteConfig> {
        self.routes.values().cloned().collect()
    }
}

/// Sets `path` in `table` to `raw`, read as a TOML value when it parses as one (numbers, booleans), as a
/// string otherwise.
fn set_path(table: &mut toml::Table, path: &[String], raw: &str) -> anyhow::Result<()> {
    let Some((last, parents)) = path.split_last() else {
        bail!("empty key")
    };
    let mut current = table;
    for key in parents {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(inner) => inner,
            _ => bail!("{key} is not a section"),
        };
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
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

    fn parse(text: &str, env: &[(&str, &str)]) -> anyhow::Result<Config> {
        Config::parse(
            text,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn the_example_config_in_the_repo_is_valid() {
        let text = include_str!("../../../courier.example.toml");
        let config = parse(text, &[]).expect("courier.example.toml must stay valid");
        assert!(!config.routes.is_empty());
    }

    #[test]
    fn environment_overrides_the_file() {
        let config = parse(
            MINIMAL,
            &[
                ("DATABASE_URL", "postgres://x:y@db:5432/c"),
                ("COURIER__WORKER__DELIVERY_TASKS", "3"),
            ],
        )
        .expect("valid");
        assert_eq!(config.store.url, "postgres://x:y@db:5432/c");
        assert_eq!(config.worker.delivery_tasks, 3);
        assert_eq!(config.routes["orders"].name, "orders");
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
