//! `courier check-config`: the configuration checked without connecting (every key, the broker list's
//! form, librdkafka's property names, all in [`Config::load`]) and a summary of what it would run;
//! with `--connect`, also checked against the services, one line per check: the store (and how the
//! connection is protected), the schema version, Kafka, each route's topic, each destination. Exits
//! non-zero naming every check that failed.

use std::path::Path;

use anyhow::bail;
use courier_kafka::RangeReader;
use courier_store::{Migrator, Store};

use crate::config::Config;

pub async fn run(path: &Path, connect: bool) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    summary(path, &config)?;
    if !connect {
        return Ok(());
    }
    println!("checks:");
    let mut checks = Checks::default();

    let store = Store::connect(&config.store).await;
    match &store {
        Ok(store) => {
            let security = store
                .describe_security()
                .await
                .unwrap_or_else(|e| format!("protection unknown: {e}"));
            checks.ok("store", format!("{} answers, {security}", store.target()));
        }
        Err(error) => checks.fail("store", error.to_string()),
    }
    match &store {
        Ok(store) => match Migrator::embedded().check_store(store).await {
            Ok(version) => checks.ok("schema", format!("version {}, current", version.applied)),
            Err(error) => checks.fail("schema", error.to_string()),
        },
        Err(_) => checks.skip("schema", "the store did not answer"),
    }

    let kafka = &config.kafka;
    let reachable = match courier_kafka::check_connection(kafka).await {
        Ok(brokers) => {
            checks.ok(
                "kafka",
                format!(
                    "{} answers: {brokers} broker(s), {}",
                    kafka.brokers,
                    kafka.identity()
                ),
            );
            true
        }
        Err(error) => {
            checks.fail("kafka", error.to_string());
            false
        }
    };
    let reader = match reachable {
        true => match RangeReader::connect(kafka.clone()).await {
            Ok(reader) => Some(reader),
            Err(error) => {
                checks.fail("kafka", format!("cannot create a range reader: {error}"));
                None
            }
        },
        false => None,
    };
    for route in config.routes.values() {
        let what = format!("topic {:?} (route {})", route.topic, route.name);
        match &reader {
            Some(reader) => match reader.partition_count(&route.topic).await {
                Ok(count) => checks.ok(&what, format!("{count} partition(s)")),
                Err(error) => checks.fail(&what, error.to_string()),
            },
            None => checks.skip(&what, "the Kafka check failed"),
        }
    }

    for (name, destination) in &config.destinations {
        let what = format!("destination {name}");
        let url = destination.redacted_url();
        // Any HTTP answer means the destination is there; only no answer (refused, DNS, TLS, timeout)
        // fails. HEAD: no body, nothing a receiver could take for a delivery.
        let answer = match reqwest::Client::builder()
            .timeout(destination.timeout)
            .build()
        {
            Ok(client) => client.head(&destination.url).send().await,
            Err(error) => {
                checks.fail(
                    &what,
                    format!("{url}: cannot build an HTTP client: {error}"),
                );
                continue;
            }
        };
        match answer {
            Ok(response) => checks.ok(&what, format!("{url} answers HTTP {}", response.status())),
            // `{:#}`: with its causes (reqwest's own text is only "error sending request").
            Err(error) => checks.fail(
                &what,
                format!("{url}: no HTTP answer: {:#}", anyhow::Error::new(error)),
            ),
        }
    }

    if checks.failed.is_empty() {
        println!("All checks passed.");
        Ok(())
    } else {
        bail!(
            "{} check(s) failed: {} (each line above says why)",
            checks.failed.len(),
            checks.failed.join(", ")
        )
    }
}

/// The checks' lines, as they are printed, and the names of those that failed.
#[derive(Default)]
struct Checks {
    failed: Vec<String>,
}

impl Checks {
    fn ok(&mut self, what: &str, detail: String) {
        println!("  ok    {what}: {detail}");
    }

    fn fail(&mut self, what: &str, detail: String) {
        println!("  FAIL  {what}: {detail}");
        self.failed.push(what.to_owned());
    }

    fn skip(&mut self, what: &str, why: &str) {
        println!("  skip  {what}: not checked, {why}");
    }
}

/// What the configuration would run, without connecting.
fn summary(path: &Path, config: &Config) -> anyhow::Result<()> {
    println!("{} is valid.", path.display());
    println!(
        "  store: {} connections, client deadline {:?}, sslmode {}",
        config.store.pool_size,
        config.store.timeouts.client_deadline,
        config
            .store
            .ssl_mode
            .map_or("from the URL, else prefer".to_owned(), |mode| mode
                .to_string())
    );
    println!(
        "  kafka: {} ({})",
        config.kafka.brokers,
        config.kafka.identity()
    );
    match config.admin.address().map_err(anyhow::Error::msg)? {
        Some(address) => {
            println!("  admin: http://{address}/ (status page, /healthz, /readyz, /metrics)")
        }
        None => println!("  admin: off"),
    }
    println!("  log format: {:?}", config.log.format);
    for route in config.routes.values() {
        println!(
            "  route {}: topic {:?} -> destination {:?} ({}), ranges of {}, ordering {:?}",
            route.name,
            route.topic,
            route.destination,
            config.destinations[&route.destination].redacted_url(),
            route.range_size,
            route.ordering
        );
    }
    Ok(())
}
