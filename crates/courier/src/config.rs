//! `courier.toml`: one file for the store, Kafka, the worker, destinations and routes.
//!
//! Layers, last wins: the compiled-in defaults, the file, then the environment: `DATABASE_URL` and
//! `KAFKA_BROKERS` (the two every deployment sets), and `COURIER__SECTION__KEY=value` for any other
//! key (e.g. `COURIER__WORKER__DELIVERY_TASKS=16`). Unknown keys are refused, naming the key, so a typo
//! never silently falls back to a default. `courier.example.toml` documents every key.
//!
//! An error names the key and where its value came from: `file:line:column` for the file, the variable
//! for the environment (or "the default"), with what to write instead and an example.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context as _};
use courier_admin::{AdminConfig, ConfiguredRoute, StatusConfig};
use courier_http::DestinationConfig;
use courier_kafka::KafkaConfig;
use courier_store::StoreConfig;
use courier_worker::{RouteConfig, WorkerConfig};
use serde::Deserialize;

use crate::telemetry::LogFormat;

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
        let mut overrides: Vec<(Vec<String>, String)> = Vec::new();
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
            overrides.push((path, key));
        }
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

/// Where the configuration's values came from: the file (with its text, to point at a line) or the
/// environment variables layered over it.
struct Source<'a> {
    file: &'a str,
    text: &'a str,
    overrides: &'a [(Vec<String>, String)],
}

impl Source<'_> {
    /// A value that does not fit its key, as one line: the key, where the value came from (file:line:column
    /// or the environment variable), what serde said, and what to write instead with an example.
    fn explain(
        &self,
        layered: &toml::Value,
        error: &serde_path_to_error::Error<toml::de::Error>,
    ) -> String {
        use serde_path_to_error::Segment;
        let path: Vec<String> = error
            .path()
            .iter()
            .filter_map(|segment| match segment {
                Segment::Map { key } => Some(key.clone()),
                Segment::Seq { index } => Some(index.to_string()),
                Segment::Enum { variant } => Some(variant.clone()),
                Segment::Unknown => None,
            })
            .collect();
        let key = if path.is_empty() {
            "the top level".to_owned()
        } else {
            path.join(".")
        };
        let message = error.inner().message().trim().to_owned();
        let variable = self
            .overrides
            .iter()
            .rev()
            .find(|(set, _)| *set == path)
            .map(|(_, variable)| variable.as_str());
        let (source, assign) = match variable {
            Some(variable) => (
                format!("environment variable {variable}"),
                format!("{variable}="),
            ),
            None => {
                let leaf = path.last().map_or("key", String::as_str);
                let at = match locate(self.text, &path) {
                    Some(((line, column), _)) => format!("{}:{line}:{column}", self.file),
                    None => self.file.to_owned(),
                };
                (at, format!("{leaf} = "))
            }
        };
        let raw = lookup(layered, &path);
        let quote = |example: &str| {
            if variable.is_some() {
                example.to_owned()
            } else {
                format!("\"{example}\"")
            }
        };
        let bare_number = match raw {
            Some(toml::Value::Integer(_) | toml::Value::Float(_)) => true,
            Some(toml::Value::String(s)) => s.trim().parse::<f64>().is_ok(),
            _ => false,
        };
        let hint = if message.contains("time unit needed")
            || (message.contains("expected a duration") && bare_number)
        {
            let number = match raw {
                Some(toml::Value::Integer(n)) => n.to_string(),
                Some(toml::Value::Float(n)) => n.to_string(),
                Some(toml::Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
                _ => "5".to_owned(),
            };
            format!(
                "add a unit, e.g. {assign}{} (ms, s, m and h work)",
                quote(&format!("{number}s"))
            )
        } else if message.contains("expected a duration")
            || DURATION_ERRORS.iter().any(|m| message.contains(m))
        {
            format!(
                "write a duration with its unit, e.g. {assign}{} or {assign}{}",
                quote("10s"),
                quote("500ms")
            )
        } else if INTEGER_TYPES
            .iter()
            .any(|t| message.ends_with(&format!("expected {t}")))
        {
            format!("write a whole number, e.g. {assign}8")
        } else if message.contains("expected a boolean") {
            format!("write true or false, e.g. {assign}true")
        } else if message.contains("expected a string") {
            format!("write text, e.g. {assign}{}", quote("..."))
        } else {
            "courier.example.toml documents every key".to_owned()
        };
        format!("{key} ({source}): {message}; {hint}")
    }
}

impl Source<'_> {
    /// librdkafka's refusal of the client configuration, blaming the `[kafka.extra]` property it names
    /// (the longest one its message contains) and where that property was set.
    fn explain_extra(&self, kafka: &KafkaConfig, error: &str) -> String {
        let blamed = kafka
            .extra
            .keys()
            .filter(|key| error.contains(key.as_str()))
            .max_by_key(|key| key.len());
        let Some(key) = blamed else {
            return format!("kafka ({}): {error}", self.file);
        };
        let path = ["kafka".to_owned(), "extra".to_owned(), key.clone()];
        let from = match self
            .overrides
            .iter()
            .rev()
            .find(|(set, _)| set[..] == path[..])
        {
            Some((_, variable)) => format!("environment variable {variable}"),
            None => match locate(self.text, &path) {
                Some(((line, column), true)) => format!("{}:{line}:{column}", self.file),
                _ => self.file.to_owned(),
            },
        };
        format!(
            "kafka.extra.\"{key}\" ({from}): {error}; [kafka.extra] takes librdkafka's property names \
             and values (librdkafka's CONFIGURATION.md lists them)"
        )
    }

    /// Where each key a validation message names got its value, e.g. `worker.lease_ttl: environment
    /// variable COURIER__WORKER__LEASE_TTL; worker.renew_every: courier.toml:8:15`, or `None` when the
    /// message names no key. Validation messages start from the key they are about.
    fn attribute(&self, message: &str) -> Option<String> {
        const SECTIONS: &[&str] = &[
            "store",
            "kafka",
            "worker",
            "metrics",
            "admin",
            "status",
            "log",
            "destinations",
            "routes",
        ];
        let mut seen: Vec<&str> = Vec::new();
        let tokens = message
            .split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
            .map(|token| token.trim_end_matches('.'))
            .filter(|token| {
                token
                    .split_once('.')
                    .is_some_and(|(section, _)| SECTIONS.contains(&section))
            });
        for token in tokens {
            // `[destinations.x]` names a section the message suggests writing, not a value set somewhere.
            if !seen.contains(&token) && !message.contains(&format!("[{token}]")) {
                seen.push(token);
            }
        }
        let sources: Vec<String> = seen
            .into_iter()
            .map(|key| {
                let path: Vec<String> = key.split('.').map(str::to_owned).collect();
                let from = match self.overrides.iter().rev().find(|(set, _)| *set == path) {
                    Some((_, variable)) => format!("environment variable {variable}"),
                    None => match locate(self.text, &path) {
                        Some(((line, column), true)) => format!("{}:{line}:{column}", self.file),
                        _ => "the default".to_owned(),
                    },
                };
                format!("{key}: {from}")
            })
            .collect();
        (!sources.is_empty()).then(|| sources.join("; "))
    }
}

/// What `humantime` says about a duration it cannot read (through `humantime_serde`).
const DURATION_ERRORS: &[&str] = &[
    "unknown time unit",
    "expected number at",
    "invalid character at",
    "number is too large",
    "value was empty",
];

/// The integer types serde names in "expected ..." messages.
const INTEGER_TYPES: &[&str] = &[
    "usize", "u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64", "isize",
];

/// The value at `path` of the layered configuration.
fn lookup<'v>(value: &'v toml::Value, path: &[String]) -> Option<&'v toml::Value> {
    path.iter().try_fold(value, |current, key| match current {
        toml::Value::Table(table) => table.get(key),
        toml::Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// Line and column (1-based) in `text` of the value at `path`, or of the deepest table on it that the
/// file has (a missing key is reported at its section); `true` when the file has `path` itself.
fn locate(text: &str, path: &[String]) -> Option<((usize, usize), bool)> {
    let root = toml::de::DeTable::parse(text).ok()?;
    let mut table = root.get_ref();
    let mut span = None;
    let mut found = 0;
    for key in path {
        let Some((_, value)) = table.iter().find(|(k, _)| k.get_ref() == key) else {
            break;
        };
        span = Some(value.span());
        found += 1;
        match value.get_ref() {
            toml::de::DeValue::Table(inner) => table = inner,
            _ => break,
        }
    }
    let offset = span?.start;
    let before = text.get(..offset)?;
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(offset, |newline| offset - newline - 1)
        + 1;
    Some(((line, column), found == path.len()))
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
    fn an_unknown_kafka_extra_property_is_named_with_its_line() {
        let text = MINIMAL.replace(
            "brokers = \"127.0.0.1:9092\"",
            "brokers = \"127.0.0.1:9092\"\n        [kafka.extra]\n        \"socket.keepalive.enable\" = \"true\"\n        \"fetch.wait.max.msec\" = \"5\"",
        );
        let message = format!("{:#}", parse(&text, &[]).expect_err("unknown property"));
        assert!(
            message.contains("kafka.extra.\"fetch.wait.max.msec\" (courier.toml:8:")
                && message.contains("CONFIGURATION.md"),
            "{message}"
        );
    }

    #[test]
    fn kafka_security_errors_name_the_key_and_where_it_was_set() {
        let message = format!(
            "{:#}",
            parse(MINIMAL, &[("KAFKA_BROKERS", "k1:9092,k2")]).expect_err("k2 has no port")
        );
        assert!(
            message.contains("\"k2\", which is not host:port")
                && message.contains("kafka.brokers: environment variable KAFKA_BROKERS"),
            "{message}"
        );
        let text = MINIMAL.replace(
            "brokers = \"127.0.0.1:9092\"",
            "brokers = \"127.0.0.1:9092\"\n        security_protocol = \"sasl_ssl\"\n        sasl_password = \"hunter2\"",
        );
        let message = format!(
            "{:#}",
            parse(&text, &[]).expect_err("a password in the file")
        );
        assert!(
            message.contains("kafka.sasl_password is set")
                && message.contains("kafka.sasl_password: courier.toml:7:")
                && !message.contains("hunter2"),
            "{message}"
        );
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
    fn a_bad_environment_value_names_the_variable_not_the_file() {
        let err = parse(MINIMAL, &[("COURIER__WORKER__DELIVERY_TASKS", "abc")])
            .expect_err("abc is not a number");
        let message = format!("{err:#}");
        assert!(
            message.contains(
                "worker.delivery_tasks (environment variable COURIER__WORKER__DELIVERY_TASKS)"
            ) && message.contains("COURIER__WORKER__DELIVERY_TASKS=8")
                && !message.contains("courier.toml"),
            "{message}"
        );
        let err = parse(MINIMAL, &[("COURIER__DESTINATIONS__HOOKS__TIMEOUT", "5")])
            .expect_err("5 has no unit");
        let message = format!("{err:#}");
        assert!(
            message.contains("destinations.hooks.timeout (environment variable COURIER__DESTINATIONS__HOOKS__TIMEOUT)")
                && message.contains("add a unit, e.g. COURIER__DESTINATIONS__HOOKS__TIMEOUT=5s"),
            "{message}"
        );
    }

    #[test]
    fn a_bad_file_value_names_the_key_its_line_and_column_and_an_example() {
        let text = format!("{MINIMAL}\n[worker]\ndelivery_tasks = \"four\"\n");
        let err = parse(&text, &[]).expect_err("four is not a number");
        let message = format!("{err:#}");
        assert!(
            message.contains("worker.delivery_tasks (courier.toml:13:18)")
                && message.contains("expected usize")
                && message.contains("write a whole number, e.g. delivery_tasks = 8"),
            "{message}"
        );

        let text = MINIMAL.replace(
            "url = \"http://127.0.0.1:8080/hooks\"",
            "url = \"http://127.0.0.1:8080/hooks\"\n        timeout = \"5\"",
        );
        let err = parse(&text, &[]).expect_err("5 has no unit");
        let message = format!("{err:#}");
        assert!(
            message.contains("destinations.hooks.timeout (courier.toml:8:19)")
                && message.contains("add a unit, e.g. timeout = \"5s\""),
            "{message}"
        );

        let text = MINIMAL.replace("[routes.orders]", "[routes.orders]\nrange_size = true");
        let message = format!("{:#}", parse(&text, &[]).expect_err("not a number"));
        assert!(
            message.contains("routes.orders.range_size (courier.toml:9:14)")
                && message.contains("range_size = 8"),
            "{message}"
        );
    }

    #[test]
    fn a_value_refused_by_validation_names_where_each_key_it_names_was_set() {
        let text = format!("{MINIMAL}\n[worker]\nrenew_every = \"15s\"\n");
        let err = parse(&text, &[("COURIER__WORKER__LEASE_TTL", "20s")]).expect_err("too short");
        let message = format!("{err:#}");
        assert!(
            message.contains("worker.lease_ttl: environment variable COURIER__WORKER__LEASE_TTL")
                && message.contains("worker.renew_every: courier.toml:13:15"),
            "{message}"
        );
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
