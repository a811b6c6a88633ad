//! `courier probe`: the customer's view, as a black box. Produces messages with unique ids and timestamps
//! into a route's topic, receives them at a destination the probe itself serves, and reports whether
//! 100% arrived (and which did not), duplicates, and end-to-end latency percentiles. With `--every`, it
//! runs forever and emits its results as metrics for alerting.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use courier_kafka::Producer;
use courier_sink::Sink;
use serde_json::{json, Value};

use crate::config::Config;
use crate::telemetry;

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    #[arg(long, short, env = "COURIER_CONFIG", default_value = "courier.toml")]
    config: PathBuf,
    /// The route to probe; its destination must be the address the probe listens on.
    #[arg(long)]
    route: String,
    /// Where the probe serves its destination.
    #[arg(long, default_value = "127.0.0.1:9911")]
    listen: SocketAddr,
    /// Messages per round.
    #[arg(long, default_value_t = 100)]
    messages: usize,
    /// How long a round waits for every message.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Fail the round when p99 end-to-end latency is above this.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    max_p99: Duration,
    /// Run a round this often, forever, emitting metrics (needs a [metrics] section).
    #[arg(long, value_parser = humantime::parse_duration)]
    every: Option<Duration>,
}

/// One round's findings.
struct Round {
    sent: usize,
    arrived: usize,
    missing: Vec<usize>,
    duplicates: usize,
    latencies_ms: Vec<u64>,
}

impl Round {
    fn percentile(&self, q: f64) -> u64 {
        if self.latencies_ms.is_empty() {
            return 0;
        }
        let index = ((self.latencies_ms.len() as f64 - 1.0) * q).round() as usize;
        self.latencies_ms[index.min(self.latencies_ms.len() - 1)]
    }
}

pub async fn run(args: ProbeArgs) -> anyhow::Result<ExitCode> {
    if args.messages == 0 {
        bail!("--messages must be at least 1");
    }
    let config = Config::load(&args.config)?;
    let Some(route) = config.routes.get(&args.route) else {
        bail!(
            "route {:?} is not in {} (known: {})",
            args.route,
            args.config.display(),
            config.routes.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    };
    let destination = &config.destinations[&route.destination];
    let listen_port = format!(":{}", args.listen.port());
    if !destination.url.contains(&listen_port) {
        bail!(
            "route {} delivers to {}, but the probe listens on {}: point destinations.{}.url at the probe (or pass --listen)",
            route.name,
            destination.url,
            args.listen,
            route.destination
        );
    }
    if args.every.is_some() {
        let Some(metrics) = &config.metrics else {
            bail!("--every emits metrics: add a [metrics] section with statsd_host");
        };
        telemetry::install_metrics(Some(metrics), false)?;
    }
    let sink = Sink::start(args.listen)
        .await
        .with_context(|| format!("probe: cannot listen on {}", args.listen))?;
    let producer = Producer::connect(config.kafka.clone()).await?;

    loop {
        let round = probe_once(&producer, &sink, &route.topic, &args).await?;
        let healthy = round.missing.is_empty()
            && Duration::from_millis(round.percentile(0.99)) <= args.max_p99;
        print_round(&round, &args);
        courier_worker::metrics::probe_round(
            &route.name,
            healthy,
            round.missing.len(),
            round.duplicates,
            &round.latencies_ms,
        );
        match args.every {
            None => {
                sink.shutdown().await;
                return Ok(if healthy {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(crate::cmd_status::ATTENTION)
                });
            }
            Some(every) => tokio::time::sleep(every).await,
        }
    }
}

async fn probe_once(
    producer: &Producer,
    sink: &Sink,
    topic: &str,
    args: &ProbeArgs,
) -> anyhow::Result<Round> {
    sink.clear();
    let probe_id = format!("{:016x}", rand::random::<u64>());
    let records = (0..args.messages).map(|seq| {
        let body = json!({ "probe": probe_id, "seq": seq, "sent_at_ms": unix_millis() });
        (
            None,
            Some(format!("{probe_id}-{seq}").into_bytes()),
            body.to_string().into_bytes(),
        )
    });
    producer
        .send_batch(topic, records)
        .await
        .context("probe: producing")?;

    let ours = |element: &Value| -> Option<u64> {
        (element.get("probe").and_then(Value::as_str) == Some(probe_id.as_str()))
            .then(|| element.get("seq").and_then(Value::as_u64))
            .flatten()
    };
    let started = Instant::now();
    let mut target = args.messages as u64;
    while sink.count_by(ours).len() < args.messages && started.elapsed() < args.timeout {
        let left = args.timeout.saturating_sub(started.elapsed());
        if let Ok(stats) = sink
            .wait_until(|s| s.delivered_elements >= target, left)
            .await
        {
            target = stats.delivered_elements + 1;
        }
    }
    let counts = sink.count_by(ours);
    let arrived: BTreeSet<u64> = counts.keys().copied().collect();
    let missing = (0..args.messages)
        .filter(|seq| !arrived.contains(&(*seq as u64)))
        .collect();
    let duplicates = counts.values().map(|n| n.saturating_sub(1)).sum();
    let mut latencies_ms = Vec::new();
    for request in sink.received() {
        let received = request
            .received_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        for element in request.elements.iter().filter(|e| ours(e).is_some()) {
            if let Some(sent) = element.get("sent_at_ms").and_then(Value::as_u64) {
                latencies_ms.push(received.saturating_sub(sent));
            }
        }
    }
    latencies_ms.sort_unstable();
    Ok(Round {
        sent: args.messages,
        arrived: arrived.len(),
        missing,
        duplicates,
        latencies_ms,
    })
}

fn print_round(round: &Round, args: &ProbeArgs) {
    let verdict = if round.missing.is_empty() {
        "100% arrived"
    } else {
        "MISSING MESSAGES"
    };
    println!(
        "probe {}: {verdict}: {}/{} arrived, {} duplicate(s); end-to-end p50 {} ms, p90 {} ms, p99 {} ms, max {} ms (threshold p99 {} ms)",
        args.route,
        round.arrived,
        round.sent,
        round.duplicates,
        round.percentile(0.50),
        round.percentile(0.90),
        round.percentile(0.99),
        round.latencies_ms.last().copied().unwrap_or(0),
        args.max_p99.as_millis()
    );
    if !round.missing.is_empty() {
        let shown: Vec<String> = round
            .missing
            .iter()
            .take(20)
            .map(ToString::to_string)
            .collect();
        println!(
            "  missing seq: {}{} (after {:?}). Runbook: docs/runbooks/lag.md",
            shown.join(", "),
            if round.missing.len() > 20 {
                ", ..."
            } else {
                ""
            },
            args.timeout
        );
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}
