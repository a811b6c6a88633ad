//! `make bench`: how close courier comes to this machine's limit and to what users would otherwise
//! write, and whether its cost is proportional to its work, measured side by side in one run (these
//! machines are noisy; only same-run ratios mean much). Every figure row names its target and whether it
//! was met. Sections, in the order they run (`--only SECTION`, repeatable, runs a subset):
//!
//! 1. [`routes`]: idle and per-route cost, one worker with 1, 100 and 1,000 routes: time to deliver
//!    every copy, then store transactions/s and CPU while idle.
//! 2. [`kafka_bytes`]: bytes received from Kafka per delivered message, courier against the raw pipe.
//! 3. [`latency`]: end-to-end p50/p99 and store transactions per 1,000 messages at a fixed offered load.
//! 4. [`throughput`]: the matrix: courier's defaults and ranges of 100 / 1,000 / 10,000 with 1 and 8
//!    tasks, against the raw pipe and a naive forwarder.
//! 5. [`store`]: lease + checkpoint round trips with 1 to 64 tasks, against pgbench on the same server.
//! 6. [`recovery`]: a worker crashes holding leases; time until another delivers them, against the TTL.
//!
//! Shared pieces: [`e2e`] (pipe, naive, courier runs), [`load`] (producing), [`db`] (scratch databases
//! and transaction counts), [`sink`], [`machine`] (CPU), [`report`] (tables and targets).

mod db;
mod e2e;
mod kafka_bytes;
mod latency;
mod load;
mod machine;
mod recovery;
mod report;
mod routes;
mod sink;
mod store;
mod throughput;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Section {
    Routes,
    KafkaBytes,
    Latency,
    Throughput,
    Store,
    Recovery,
}

#[derive(Debug, Parser)]
#[command(
    about = "courier benchmarks: ratios against the raw pipe, a naive forwarder and pgbench, measured in one run"
)]
pub struct Args {
    /// Run only this section (repeatable); all of them when absent.
    #[arg(long = "only", value_enum)]
    only: Vec<Section>,
    /// Messages in the throughput topic (enough for seconds of work per variant).
    #[arg(long, default_value_t = 400_000)]
    messages: u64,
    /// Messages in the Kafka-bytes topic (that section is only about a ratio).
    #[arg(long, default_value_t = 40_000)]
    ratio_messages: u64,
    /// Partitions of the throughput, Kafka-bytes and latency topics.
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// Seconds of offered load for the latency runs and of each store-capacity run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Offered load of the latency runs, messages per second.
    #[arg(long, default_value_t = 5_000.0)]
    offered: f64,
    /// Route counts of the idle and per-route section.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 100, 1_000])]
    route_counts: Vec<usize>,
    /// Messages per route (the topic's size) for up to 100 routes.
    #[arg(long, default_value_t = 2_000)]
    messages_per_route: u64,
    /// Messages per route for more than 100 routes.
    #[arg(long, default_value_t = 200)]
    messages_per_route_over_100: u64,
    /// How long the routes section waits for every copy before giving up on a route count, seconds.
    #[arg(long, default_value_t = 300)]
    deliver_limit_seconds: u64,
    /// Length of the idle window after delivery, seconds.
    #[arg(long, default_value_t = 20)]
    idle_seconds: u64,
    /// Where to write the markdown report (also printed).
    #[arg(long, default_value = "target/bench/report.md")]
    out: std::path::PathBuf,
}

/// What every section shares: the services, the sink and the arguments.
pub struct Bench {
    pub server: String,
    pub brokers: String,
    pub sink: sink::BenchSink,
    pub args: Args,
}

impl Bench {
    /// The raw pipe over `topic` into the sink, with the 4 requests in flight every section uses.
    pub fn pipe<'a>(&'a self, topic: &'a str) -> e2e::Pipe<'a> {
        e2e::Pipe {
            brokers: &self.brokers,
            topic,
            partitions: self.args.partitions,
            url: &self.sink.url,
            in_flight: PIPE_IN_FLIGHT,
        }
    }
}

/// Requests the pipe keeps in flight.
pub const PIPE_IN_FLIGHT: usize = 4;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    let sections: Vec<Section> = if args.only.is_empty() {
        Section::value_variants().to_vec()
    } else {
        let mut only = std::mem::take(&mut args.only);
        only.sort_unstable();
        only.dedup();
        only
    };
    let bench = Bench {
        server: courier_core::local::database_url(),
        brokers: courier_core::local::kafka_brokers(),
        sink: sink::start().await?,
        args,
    };
    let mut report = report::Report::default();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    report.line(format_args!(
        "# courier benchmark report\n\nMachine: {}. Command: `{command}`.\n",
        machine::describe()
    ));

    // A failed section is reported and the others still run: one broken measurement should not cost
    // the figures of a quarter-hour run.
    let mut failed = Vec::new();
    for section in sections {
        let started = std::time::Instant::now();
        let result = match section {
            Section::Routes => routes::section(&bench, &mut report).await,
            Section::KafkaBytes => kafka_bytes::section(&bench, &mut report).await,
            Section::Latency => latency::section(&bench, &mut report).await,
            Section::Throughput => throughput::section(&bench, &mut report).await,
            Section::Store => store::section(&bench, &mut report).await,
            Section::Recovery => recovery::section(&bench, &mut report).await,
        };
        eprintln!(
            "bench: {section:?} took {:.0} s",
            started.elapsed().as_secs_f64()
        );
        if let Err(error) = result {
            eprintln!("bench: {section:?} failed: {error:#}");
            report.line(format_args!(
                "\n**Section {section:?} failed**: {error:#}\n"
            ));
            failed.push(section);
        }
    }

    println!("{}", report.text());
    let out = &bench.args.out;
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out, report.text()).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("bench: report written to {}", out.display());
    anyhow::ensure!(failed.is_empty(), "sections failed: {failed:?}");
    Ok(())
}
